"""Configuration of GenHead (official ``training/generator/triplane.py::PartTriPlaneGeneratorDeform``), and its map
from the official ``init_kwargs`` (``train_genhead.py`` with ``configs/genhead-ffhq512.yaml``).

Released configuration (``genhead-ffhq512.pkl``): ``z 512``, ``c 325 = 25 camera + 300 FLAME shape``, ``w 512``,
2 mapping layers; triplane backbone at 256^2 with ``192 = 6 x 32`` channels (``channel_base 32768``,
``channel_max 512``, float32, no clamping); background generator at 64^2 with 32 channels; OSG decoder 32 -> 64
-> (1 + 32); super-resolution 64 -> 128 -> 512 with constant (all-ones) styles; neural rendering at 64 with 48
stratified + 48 importance samples in a 1.3 box (``'auto-plane'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from avatar.configuration import Config
from avatar.errors import ConfigError
from avatar.nn.stylegan2 import SRConfig
from avatar.render.triplane import RenderingOptions

__all__ = ["GenHeadConfig", "OFFICIAL_IGNORED_KWARGS"]

# Official constructor entries that change nothing here (training-only, deprecated, or fixed by the class).
OFFICIAL_IGNORED_KWARGS = frozenset(
    {"class_name", "img_channels", "random_combine", "dynamic_texture", "flame_full", "masked_sampling",
     "has_patch_sr", "sr_num_fp16_res", "fused_modconv_default", "num_fp16_res", "conv_clamp"}
)


def _sr_default() -> SRConfig:
    return SRConfig(channels=32, use_ws_ones=True)


@dataclass(frozen=True)
class GenHeadConfig(Config):
    """Everything needed to build :class:`avatar.models.genhead.GenHead` (defaults: the released model)."""

    z_dim: int = 512
    w_dim: int = 512
    camera_dim: int = 25
    """Camera label size (cam2world 16 + intrinsics 9)."""
    shape_dim: int = 300
    """FLAME shape coefficients in the mapping condition (``flame_condition``)."""
    exp_dim: int = 100
    mapping_layers: int = 2
    triplane_resolution: int = 256
    plane_features: int = 32
    """Channels per plane; the backbone outputs ``6 * plane_features`` (part triplane, then face triplane)."""
    channel_base: int = 32768
    channel_max: int = 512
    background_resolution: int = 64
    background_channel_base: int = 16384
    background_mapping_layers: int = 8
    background_num_fp16_res: int = 4
    feature_channels: int = 32
    """Decoder output = background channels = super-resolution input."""
    decoder_lr_mul: float = 1.0
    img_resolution: int = 512
    neural_rendering_resolution: int = 64
    has_background: bool = True
    has_superresolution: bool = True
    superresolution: SRConfig = field(default_factory=_sr_default)
    superresolution_noise_mode: str = "none"
    rendering: RenderingOptions = field(default_factory=RenderingOptions)
    c_scale: float = 1.0
    c_gen_conditioning_zero: bool = False
    deformer_box_warp: float = 1.3

    def __post_init__(self) -> None:
        if self.has_superresolution and self.superresolution.channels != self.feature_channels:
            raise ConfigError(f"superresolution.channels ({self.superresolution.channels}) must equal "
                              f"feature_channels ({self.feature_channels})")
        if self.has_superresolution and not self.superresolution.use_ws_ones:
            raise ConfigError("GenHead's super-resolution uses constant styles (use_ws_ones=True)")

    @property
    def c_dim(self) -> int:
        """Mapping condition size: camera + FLAME shape (325 for the released model)."""
        return self.camera_dim + self.shape_dim

    @property
    def triplane_channels(self) -> int:
        return 6 * self.plane_features

    @classmethod
    def tiny(cls, **overrides: Any) -> GenHeadConfig:
        """A small random-weights config for tests (32^2 triplanes, 16^2 background, 16^2 rendering)."""
        values: dict[str, Any] = dict(
            z_dim=16, w_dim=16, mapping_layers=2, triplane_resolution=32, plane_features=8, channel_base=256,
            channel_max=16, background_resolution=16, background_channel_base=128, feature_channels=8,
            neural_rendering_resolution=16,
            superresolution=replace(SRConfig.tiny(), use_ws_ones=True),
            rendering=RenderingOptions(depth_resolution=8, depth_resolution_importance=8),
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_official(cls, init_kwargs: Mapping[str, Any]) -> GenHeadConfig:
        """Read the official ``PartTriPlaneGeneratorDeform(**init_kwargs)`` of a converted checkpoint.

        Unsupported switches (a patch super-resolution, a dynamic texture, no FLAME condition) raise
        :class:`ConfigError` naming the key.
        """
        kw = dict(init_kwargs)
        rk = dict(kw.get("rendering_kwargs") or {})
        sr_kw = dict(kw.get("sr_kwargs") or {})
        for key, bad in (("has_patch_sr", True), ("dynamic_texture", True), ("add_block", True),
                         ("flame_condition", False)):
            if key in kw and bool(kw[key]) == bad:
                raise ConfigError(f"the official GenHead's {key}={kw[key]!r} is not supported by this port")
        triplane_channels = int(kw.get("triplane_channels", 192))
        if triplane_channels % 6:
            raise ConfigError(f"triplane_channels={triplane_channels}: the part-wise generator needs 6 planes")
        c_dim = int(kw.get("c_dim", 325))
        sr_module = str(rk.get("superresolution_module") or "")
        if kw.get("has_superresolution", True) and sr_module and not sr_module.endswith("SuperresolutionHybrid8XDC"):
            raise ConfigError(f"superresolution_module {sr_module!r} is not supported (SuperresolutionHybrid8XDC)")
        sr = SRConfig(channels=32, sr_num_fp16_res=int(kw.get("sr_num_fp16_res", 4)),
                      sr_antialias=bool(rk.get("sr_antialias", True)), use_ws_ones=bool(sr_kw.get("use_ws_ones", True)),
                      fused_modconv_default=sr_kw.get("fused_modconv_default", "inference_only"))
        return cls(
            z_dim=int(kw.get("z_dim", 512)), w_dim=int(kw.get("w_dim", 512)), shape_dim=c_dim - 25,
            mapping_layers=int((kw.get("mapping_kwargs") or {}).get("num_layers", 2)),
            triplane_resolution=int(kw.get("triplane_resolution", 256)), plane_features=triplane_channels // 6,
            channel_base=int(kw.get("channel_base", 32768)), channel_max=int(kw.get("channel_max", 512)),
            decoder_lr_mul=float(rk.get("decoder_lr_mul", 1.0)), img_resolution=int(kw.get("img_resolution", 512)),
            has_background=bool(kw.get("has_background", True)),
            has_superresolution=bool(kw.get("has_superresolution", True)), superresolution=sr,
            superresolution_noise_mode=str(rk.get("superresolution_noise_mode", "none")),
            rendering=RenderingOptions.from_official(rk) if rk else RenderingOptions(),
            c_scale=float(rk.get("c_scale", 1.0)), c_gen_conditioning_zero=bool(rk.get("c_gen_conditioning_zero", False)),
            deformer_box_warp=float((kw.get("deformation_kwargs") or {}).get("box_warp", 1.3)),
        )
