"""Configuration of the Portrait4D reconstructor Psi, and its mapping from the official ``init_kwargs``.

The official checkpoints (``portrait4d-genhead512.pkl``, ``portrait4d-static-genhead512.pkl``,
``portrait4d-v2-vfhq512.pkl``) store ``TriPlaneReconstructorNeutralize(**init_kwargs)``;
:meth:`Portrait4DConfig.from_official` reads those kwargs (as written by ``avatar convert`` into the JSON
sidecar) into this config. Construction from a config downloads nothing. Saving and reading JSON is :class:`avatar.configuration.Config`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from avatar.configuration import Config
from avatar.errors import ConfigError
from avatar.models.portrait4d.encoders import Portrait4DEncoderConfig
from avatar.nn.stylegan2 import SRConfig
from avatar.render.triplane import RenderingOptions

__all__ = ["Portrait4DConfig", "OFFICIAL_IGNORED_KWARGS"]

# Official constructor / G_kwargs entries that do not change inference (training-only or swallowed by
# ``**synthesis_kwargs`` upstream).
OFFICIAL_IGNORED_KWARGS = frozenset(
    {"class_name", "channel_base", "channel_max", "fused_modconv_default", "num_fp16_res", "conv_clamp",
     "add_block", "masked_sampling"}
)


@dataclass(frozen=True)
class Portrait4DConfig(Config):
    """Everything needed to build :class:`avatar.models.Portrait4D`.

    Defaults are the released Portrait4D / Portrait4D-v2 checkpoints at their inference settings
    (neural rendering at 128, super-resolution to 512, background, motion scale 1).
    """

    encoders: Portrait4DEncoderConfig = field(default_factory=Portrait4DEncoderConfig)
    superresolution: SRConfig = field(default_factory=SRConfig)
    rendering: RenderingOptions = field(default_factory=RenderingOptions)
    img_resolution: int = 512
    """Side of the aligned source image and of the super-resolved output."""
    neural_rendering_resolution: int = 128
    """Side of the volume-rendered feature image (upstream inference passes 128)."""
    w_dim: int = 512
    has_background: bool = True
    has_superresolution: bool = True
    motion_scale: float = 1.0
    """Scale of every motion cross-attention; 0 for the static model (Psi_3d)."""
    superresolution_noise_mode: str = "none"
    decoder_lr_mul: float = 1.0
    deformer_box_warp: float = 1.3
    """``deformation_kwargs['box_warp']`` upstream (= the rendering box)."""

    def __post_init__(self) -> None:
        if self.has_superresolution:
            feat = self.superresolution.channels
            if self.has_background and self.encoders.background_out_channels != feat:
                raise ConfigError(
                    f"background_out_channels ({self.encoders.background_out_channels}) must equal the "
                    f"super-resolution input channels ({feat})"
                )
            if self.superresolution.w_dim != self.w_dim:
                raise ConfigError(f"superresolution.w_dim ({self.superresolution.w_dim}) != w_dim ({self.w_dim})")
        elif self.has_background and self.encoders.background_out_channels < 3:
            raise ConfigError("without super-resolution the background needs at least 3 channels")
        if self.neural_rendering_resolution > 128:
            raise ConfigError("neural_rendering_resolution above 128 is a training-only mode upstream")

    # ------------------------------------------------------------------------------------------------------

    @property
    def feature_channels(self) -> int:
        """Channels decoded per sample and composited into the raw feature image (32, or 3 without SR)."""
        return self.superresolution.channels if self.has_superresolution else 3

    @property
    def is_static(self) -> bool:
        return float(self.motion_scale) == 0.0

    @classmethod
    def tiny(cls, **overrides: Any) -> Portrait4DConfig:
        """A structurally identical, very small config for tests: 64x64 input, 16x16 rendering, 12+12 samples."""
        enc = replace(Portrait4DEncoderConfig.tiny(), background_out_channels=8)
        cfg = cls(
            encoders=enc,
            superresolution=replace(SRConfig.tiny(), channels=8, w_dim=16),
            rendering=RenderingOptions(depth_resolution=12, depth_resolution_importance=12),
            img_resolution=64,
            neural_rendering_resolution=16,
            w_dim=16,
        )
        return replace(cfg, **overrides) if overrides else cfg

    @classmethod
    def from_official(cls, init_kwargs: Mapping[str, Any], static: bool = False) -> Portrait4DConfig:
        """Config of an official checkpoint from its ``TriPlaneReconstructorNeutralize`` ``init_kwargs``.

        Args:
            init_kwargs: the ``init_kwargs`` recorded in the checkpoint (``avatar convert`` keeps them).
            static: the checkpoint is the static model (motion scale 0 is a training option upstream,
                not stored in the checkpoint).

        Raises:
            ValueError: an option this port does not implement (e.g. ``flame_full=False``).
        """
        kw = dict(init_kwargs)
        if not kw.get("flame_full", True):
            raise ConfigError("flame_full=False (100 shape / 50 expression FLAME) is not used by any Portrait4D "
                             "checkpoint and is not implemented")
        rk = dict(kw.get("rendering_kwargs") or {})
        sr_kw = dict(kw.get("sr_kwargs") or {})
        dk = dict(kw.get("deformation_kwargs") or {})
        enc = replace(
            Portrait4DEncoderConfig(),
            motion_dim=int(kw.get("mot_dims", 548)),
            num_blocks_neutral=int(kw.get("num_blocks_neutral", 4)),
            num_blocks_motion=int(kw.get("num_blocks_motion", 4)),
            motion_map_layers=int(kw.get("motion_map_layers", 2)),
        )
        w_dim = int(kw.get("w_dim", 512))
        sr = replace(
            SRConfig(),
            w_dim=w_dim,
            sr_num_fp16_res=int(kw.get("sr_num_fp16_res", 0)),
            sr_antialias=bool(rk.get("sr_antialias", True)),
            use_ws_ones=bool(sr_kw.get("use_ws_ones", False)),
            fused_modconv_default=sr_kw.get("fused_modconv_default", "inference_only"),
        )
        rendering = RenderingOptions.from_official(rk)
        return cls(
            encoders=enc,
            superresolution=sr,
            rendering=rendering,
            img_resolution=int(kw.get("img_resolution", 512)),
            neural_rendering_resolution=128,
            w_dim=w_dim,
            has_background=bool(kw.get("has_background", False)),
            has_superresolution=bool(kw.get("has_superresolution", True)),
            motion_scale=0.0 if static else 1.0,
            superresolution_noise_mode=str(rk.get("superresolution_noise_mode", "none")),
            decoder_lr_mul=float(rk.get("decoder_lr_mul", 1.0)),
            deformer_box_warp=float(dk.get("box_warp", rendering.box_warp)),
        )
