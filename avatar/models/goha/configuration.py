"""Configuration of the GOHA model (official ``src/models/model_s2.py::Model`` with ``configs/s2.yml``).

The defaults are the released model (``logs/s3/checkpoint825000.ckpt``): 512x512 EG3D crops in, three MiT-b0
SegFormer branches (256 features at 128x128), tri-planes of 3 x 32 x 256 x 256, EG3D rendering with 48 + 48
samples between 2.25 and 3.3 in a unit box (``box_warp 1``, planes ``xy``, ``xz``, ``zy``), the appearance
lifting at 128x128, the final render at 224x224 and GFPGANv1Clean to 512x512. The Deep3D regressor of the
expression branch (``deep3d``) is not part of GOHA's checkpoint; its weights come from Deep3DFaceRecon's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from avatar.configuration import Config
from avatar.errors import ConfigError
from avatar.face.deep3d import Deep3DConfig
from avatar.models.goha.gfpgan import GOHASuperResolutionConfig
from avatar.models.goha.parsing import BiSeNetConfig
from avatar.models.goha.planes import GOHAPlanesConfig
from avatar.models.goha.segformer import SegformerBranchConfig
from avatar.render.triplane import RenderingOptions

__all__ = ["GOHA_RENDERING", "GOHAConfig"]

GOHA_RENDERING = RenderingOptions(
    depth_resolution=48, depth_resolution_importance=48, ray_start=2.25, ray_end=3.3, box_warp=1.0,
    clamp_mode="softplus", disparity_space_sampling=False, white_back=False, density_noise=0.0,
    plane_axes="xy-xz-zy",
)
"""GOHA's ``rendering_kwargs`` as they reach the EG3D renderer (the other entries of that dict are unused)."""


def _rendering() -> RenderingOptions:
    return GOHA_RENDERING


@dataclass(frozen=True)
class GOHAConfig(Config):
    """Everything needed to build :class:`avatar.models.goha.GOHA` (defaults: the released model)."""

    image_size: int = 512
    """Side of the input crops (and of ``cano_exemplar``, the parsing masks and the pseudo-render)."""
    segformer: SegformerBranchConfig = field(default_factory=SegformerBranchConfig)
    """The three branches' sizes (``in_channels`` is set per branch: 3, 6, 3)."""
    planes: GOHAPlanesConfig = field(default_factory=GOHAPlanesConfig)
    parsing: BiSeNetConfig = field(default_factory=BiSeNetConfig)
    superresolution: GOHASuperResolutionConfig = field(default_factory=GOHASuperResolutionConfig)
    deep3d: Deep3DConfig = field(default_factory=Deep3DConfig)
    rendering: RenderingOptions = field(default_factory=_rendering)
    render_resolution: int = 224
    """Side of the final volume rendering (``cfg.models.render_resolution``), fed to the super-resolution."""
    cano_render_resolution: int = 128
    """Side of the canonical-plus-expression render that the appearance branch lifts (= features side)."""
    pseudo_render_size: int = 224
    """Side of the 3DMM pseudo-render before its resize to ``image_size`` (official: 224, Deep3D's crop)."""
    deterministic: bool = True
    """Inference default: no stratified jitter, deterministic importance sampling and the stored noise of the
    super-resolution. ``False`` is the official behaviour (fresh random draws in both on every call)."""

    def __post_init__(self) -> None:
        stride = self.segformer.strides[0]
        if self.image_size % stride:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of the first SegFormer stride {stride}")
        features = self.image_size // stride
        if self.cano_render_resolution != features:
            raise ConfigError(
                f"cano_render_resolution ({self.cano_render_resolution}) must equal the SegFormer feature side "
                f"({features} = image_size / {stride}): the appearance lifting pairs each depth ray with one feature")
        if self.planes.lift_resolution != features:
            raise ConfigError(f"planes.lift_resolution ({self.planes.lift_resolution}) must equal the SegFormer "
                              f"feature side ({features})")
        if self.planes.feature_channels != self.segformer.decoder_hidden_size:
            raise ConfigError(f"planes.feature_channels ({self.planes.feature_channels}) must equal "
                              f"segformer.decoder_hidden_size ({self.segformer.decoder_hidden_size})")
        if self.rendering.plane_axes != "xy-xz-zy":
            raise ConfigError("GOHA's planes are EG3D's xy, xz, zy: rendering.plane_axes must be 'xy-xz-zy'")
        for name in ("render_resolution", "pseudo_render_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def plane_resolution(self) -> int:
        """Side of the tri-planes (``2 * cano_render_resolution``: 256)."""
        return 2 * self.cano_render_resolution

    @property
    def noise_mode(self) -> str:
        """The super-resolution's noise for :attr:`deterministic` (``'const'``) or not (``'random'``)."""
        return "const" if self.deterministic else "random"

    @classmethod
    def tiny(cls, **overrides: Any) -> GOHAConfig:
        """Structurally identical, very small (32x32 crops, 16x16 planes, 8x8 renders) for tests."""
        values: dict[str, Any] = dict(
            image_size=32,
            segformer=SegformerBranchConfig.tiny(),
            planes=GOHAPlanesConfig.tiny(),
            parsing=BiSeNetConfig.tiny(),
            superresolution=replace(GOHASuperResolutionConfig.tiny(), out_size=32),
            deep3d=Deep3DConfig.tiny(),
            rendering=replace(GOHA_RENDERING, depth_resolution=6, depth_resolution_importance=6),
            render_resolution=8,
            cano_render_resolution=8,
            pseudo_render_size=32,
        )
        values.update(overrides)
        return cls(**values)

