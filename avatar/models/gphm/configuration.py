"""Configurations of GPHM (Xu et al., "GPHM: Gaussian Parametric Head Model for Monocular Head Avatar
Reconstruction", TPAMI 2025 / GPHMv2; ECCV 2024 "3D Gaussian Parametric Head Model").

Sizes the paper gives (section 3.4): identity codes of 512; every MLP of width 512 with 4 hidden layers, the
injection MLP of width 512 with 8 hidden layers; 32-channel colour features; each motion encoder is 4 blocks of
(stride-1 conv, stride-2 conv) plus an MLP; the refine network is a simple U-Net with 2 downsampling and 2
upsampling convolutions; a 256-resolution tetrahedral grid for DMTet; feature maps and images of 512.

No official code exists and the copy of the paper we built from lost its inline symbols and numbers (equations,
loss weights, thresholds, learning rates). Every choice that is not in the text is written in the docstring of
the field as "Paper silent: chose X because Y".

Canonical space: the head is about 1 unit long (chin to crown), centred near the origin, the face looking at
``+z``, ``y`` up (the toolkit's world axes); the rigid head pose ``R, T`` maps it to the world.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avatar.configuration import Config
from avatar.errors import ConfigError

__all__ = [
    "FieldsConfig",
    "GPHMAvatarConfig",
    "GPHMConfig",
    "GuidingGeometryConfig",
    "MotionEncoderConfig",
    "RefineConfig",
]


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{owner}.{name} must be positive, got {value}; pass a positive value")


@dataclass(frozen=True)
class FieldsConfig(Config):
    """The fields shared by the guiding geometry model and the Gaussian model (paper Eq. 2-4 and 5-10):
    the injection MLP ``F_inj(z_id, f)``, the identity deformation MLP ``F_id``, the expression deformation MLP
    ``F_exp(f_id, z_exp)``, the non-face deformation MLP ``F_nf(f_id, z_nf)`` and the colour MLP ``F_col``.

    Face / non-face blend: ``w_exp = clamp((far - d) / (far - near), 0, 1)``, ``w_nf = 1 - w_exp`` with ``d`` the
    distance of a point to the nearest canonical 3D landmark.
    """

    identity_dim: int = 512
    """Paper: 512."""
    expression_dim: int = 128
    """Paper silent (the size of the facial expression code): chose 128 because it is twice the 64 BFM expression
    coefficients the same authors' Gaussian Head Avatar (GHA) conditions on, leaving room for what BFM misses."""
    non_face_dim: int = 128
    """Paper silent (the size of the non-face motion code): chose 128, the same as the expression code, so both
    encoders share one head shape."""
    point_feature_dim: int = 128
    """Paper silent (the size of the per-vertex feature ``f`` of the mean SDF MLP): chose 128 because GHA's
    geometry MLP outputs 128 feature channels."""
    identity_feature_dim: int = 256
    """Paper silent (the size of the identity-conditioned feature ``f_id``): chose 256, between the point feature
    (128) and the MLP width (512)."""
    width: int = 512
    """Paper: 512 for ``F_id``, ``F_exp``, ``F_nf``, ``F_col`` (and the SDF and attribute MLPs)."""
    hidden_layers: int = 4
    """Paper: 4 hidden layers."""
    injection_width: int = 512
    """Paper: 512."""
    injection_hidden_layers: int = 8
    """Paper: 8 hidden layers."""
    color_dim: int = 32
    """Paper: 32-channel colour, the first 3 channels being RGB."""
    num_landmarks: int = 68
    """Paper silent on the count: chose 68 because the landmarks come from face-alignment/BFM fitting (iBUG 68)."""
    landmark_near: float = 0.1
    """Paper gives the formula's thresholds only as symbols: chose GHA's released ``dist_threshold_near = 0.1``
    (same author, same face/non-face blend), in canonical units (head about 1 unit long)."""
    landmark_far: float = 0.25
    """As ``landmark_near``: GHA's ``dist_threshold_far = 0.25``."""

    def __post_init__(self) -> None:
        _positive("FieldsConfig", identity_dim=self.identity_dim, expression_dim=self.expression_dim,
                  non_face_dim=self.non_face_dim, point_feature_dim=self.point_feature_dim,
                  identity_feature_dim=self.identity_feature_dim, width=self.width,
                  hidden_layers=self.hidden_layers, injection_width=self.injection_width,
                  injection_hidden_layers=self.injection_hidden_layers, num_landmarks=self.num_landmarks)
        if self.color_dim < 3:
            raise ConfigError(f"FieldsConfig.color_dim must be at least 3 (the first 3 channels are RGB), "
                              f"got {self.color_dim}")
        if not 0 <= self.landmark_near < self.landmark_far:
            raise ConfigError(f"FieldsConfig needs 0 <= landmark_near < landmark_far, got near={self.landmark_near} "
                              f"far={self.landmark_far}; make far the larger distance")

    @classmethod
    def tiny(cls) -> FieldsConfig:
        return cls(identity_dim=8, expression_dim=6, non_face_dim=5, point_feature_dim=7, identity_feature_dim=9,
                   width=16, hidden_layers=2, injection_width=16, injection_hidden_layers=2, color_dim=32,
                   num_landmarks=5, landmark_near=0.1, landmark_far=0.25)


@dataclass(frozen=True)
class MotionEncoderConfig(Config):
    """A motion encoder (paper: 4 convolution blocks, each a stride-1 and a stride-2 convolution, plus an MLP).

    The output size is not here: it is the expression (or non-face) code size of :class:`FieldsConfig`.
    """

    channels: tuple[int, ...] = (64, 128, 256, 512)
    """Paper: 4 blocks; silent on widths: chose 64-128-256-512, the doubling-per-downsampling of a ResNet."""
    kernel_size: int = 3
    """Paper silent: chose 3x3, the common choice."""
    pool_size: int = 4
    """Paper silent on how the feature map reaches the MLP: chose an adaptive average pool to 4x4 then flatten,
    so the MLP keeps coarse layout (where the mouth and eyes are) and any input size works."""
    mlp_width: int = 512
    """Paper silent: chose 512 (the width of the paper's other MLPs)."""
    mlp_hidden_layers: int = 1
    """Paper silent: chose 1 hidden layer (a light head on the convolutional features)."""

    def __post_init__(self) -> None:
        if len(self.channels) == 0:
            raise ConfigError("MotionEncoderConfig.channels needs at least one block width")
        _positive("MotionEncoderConfig", kernel_size=self.kernel_size, pool_size=self.pool_size,
                  mlp_width=self.mlp_width, **{f"channels[{i}]": c for i, c in enumerate(self.channels)})
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"MotionEncoderConfig.kernel_size must be odd, got {self.kernel_size}")
        if self.mlp_hidden_layers < 0:
            raise ConfigError(f"MotionEncoderConfig.mlp_hidden_layers must be >= 0, got {self.mlp_hidden_layers}")

    @classmethod
    def tiny(cls) -> MotionEncoderConfig:
        return cls(channels=(4, 4, 8, 8), kernel_size=3, pool_size=2, mlp_width=16, mlp_hidden_layers=1)


@dataclass(frozen=True)
class RefineConfig(Config):
    """The convolutional refine network ``Psi``: a U-Net with 2 downsampling and 2 upsampling convolutions (paper),
    32-channel feature map in, RGB in [-1, 1] out.

    ``upsample`` = image resolution / feature-map resolution. GPHMv2 (the TPAMI text) renders 512 feature maps
    into 512 images (``upsample = 1``, the default); the ECCV version (and the project page) render 256 into 512
    (``upsample = 2``): each factor of 2 adds one (bilinear x2, 3x3 conv) stage after the U-Net.
    """

    in_channels: int = 32
    """Paper: the 32-channel feature map."""
    width: int = 64
    """Paper silent: chose 64 channels at full resolution (128, 256 after the two downsamplings); GHA's
    upsampler uses 32-128 for the same 32-channel input."""
    upsample: int = 1
    """1 (GPHMv2: 512 -> 512) or 2 (ECCV GPHM: 256 -> 512), or 4."""

    def __post_init__(self) -> None:
        _positive("RefineConfig", in_channels=self.in_channels, width=self.width)
        if self.upsample not in (1, 2, 4):
            raise ConfigError(f"RefineConfig.upsample must be 1, 2 or 4 (image / feature resolution), "
                              f"got {self.upsample}")

    @classmethod
    def tiny(cls) -> RefineConfig:
        return cls(in_channels=32, width=8, upsample=2)


def _check_shared(owner: str, fields: FieldsConfig, refine: RefineConfig, feature_resolution: int,
                  num_identities: int) -> None:
    if refine.in_channels != fields.color_dim:
        raise ConfigError(f"{owner}: refine.in_channels ({refine.in_channels}) must equal fields.color_dim "
                          f"({fields.color_dim}), the channels of the rendered feature map")
    if feature_resolution < 4 or feature_resolution % 4:
        raise ConfigError(f"{owner}.feature_resolution must be a multiple of 4 (the refine U-Net halves it twice), "
                          f"got {feature_resolution}")
    if num_identities < 0:
        raise ConfigError(f"{owner}.num_identities must be >= 0, got {num_identities}")


@dataclass(frozen=True)
class GuidingGeometryConfig(Config):
    """The guiding geometry model (paper 3.2): a mean-shape SDF MLP ``F_mean(x) -> (s, f)``, a mesh extracted by
    marching tetrahedra on a grid, deformed by the shared fields, coloured with 32-channel features.
    """

    fields: FieldsConfig = field(default_factory=FieldsConfig)
    expression_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    non_face_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    num_identities: int = 0
    """Rows of the training identity-code table (0: none; codes are then passed in). Paper: one 512-d code per
    training identity; the count is the dataset's, so the training script sets it."""
    sdf_width: int = 512
    """Paper: 512."""
    sdf_hidden_layers: int = 4
    """Paper: 4 hidden layers."""
    positional_freqs: int = 6
    """Paper silent on encoding the SDF MLP's input: chose NeRF positional encoding with 6 frequencies (GHA uses
    4 on a twice larger canonical space; 6 keeps the same finest wavelength here)."""
    grid_resolution: int = 256
    """Paper: 256-resolution tetrahedral grid (cells per side)."""
    grid_bound: float = 1.0
    """Half side of the cube the grid covers. Paper silent: chose 1.0 so a head 1 unit long plus neck and
    shoulders fits (GHA's box is about 3.4 units for a head of about 2)."""
    sphere_radius: float = 0.5
    """The mean SDF is ``|x| - sphere_radius + MLP(x)`` with the MLP's SDF output starting at zero, so an untrained
    model is this sphere and marching tetrahedra finds a surface from the first step. Paper silent on the SDF
    initialisation: chose this analytic sphere prior (Gaussian Head Avatar pre-fits its SDF MLP to a sphere
    instead; the prior needs no pre-fitting stage and gives the same start)."""
    feature_resolution: int = 512
    """Paper (v2): the mesh is rendered into a 512 feature map."""
    zero_init_deformations: bool = True
    """Paper silent on initialising the deformation MLPs: chose zero last layers, so an untrained model is the
    mean shape for every code (training moves away from it by gradient; the earlier layers get gradients once
    the last layer is non-zero, after the first step)."""

    def __post_init__(self) -> None:
        _check_shared("GuidingGeometryConfig", self.fields, self.refine, self.feature_resolution, self.num_identities)
        _positive("GuidingGeometryConfig", sdf_width=self.sdf_width, sdf_hidden_layers=self.sdf_hidden_layers,
                  grid_bound=self.grid_bound, sphere_radius=self.sphere_radius)
        if self.grid_resolution < 2:
            raise ConfigError(f"GuidingGeometryConfig.grid_resolution must be >= 2, got {self.grid_resolution}")
        if self.positional_freqs < 0:
            raise ConfigError(f"GuidingGeometryConfig.positional_freqs must be >= 0, got {self.positional_freqs}")
        if self.sphere_radius >= self.grid_bound:
            raise ConfigError(f"GuidingGeometryConfig.sphere_radius ({self.sphere_radius}) must be inside the grid "
                              f"(grid_bound {self.grid_bound})")

    @property
    def image_resolution(self) -> int:
        return self.feature_resolution * self.refine.upsample

    @classmethod
    def tiny(cls) -> GuidingGeometryConfig:
        return cls(fields=FieldsConfig.tiny(), expression_encoder=MotionEncoderConfig.tiny(),
                   non_face_encoder=MotionEncoderConfig.tiny(), refine=RefineConfig.tiny(), num_identities=3,
                   sdf_width=16, sdf_hidden_layers=2, positional_freqs=2, grid_resolution=12, grid_bound=1.0,
                   sphere_radius=0.5, feature_resolution=16)


@dataclass(frozen=True)
class GPHMConfig(Config):
    """The 3D Gaussian Parametric Head Model (paper 3.2, Eq. 5-11) with the GPHMv2 motion encoders and the refine
    network.

    Activations of the Gaussian attributes (paper: offsets from per-point means; silent on activations): chose
    3DGS's, ``scale = exp(s_mean + ds)``, ``rotation = normalize(r_mean + dr)`` (wxyz), ``opacity =
    sigmoid(o_mean + do)``, because the paper initialises the means "following 3DGS" and GHA does the same.
    """

    fields: FieldsConfig = field(default_factory=FieldsConfig)
    expression_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    non_face_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    num_identities: int = 0
    """As :attr:`GuidingGeometryConfig.num_identities`."""
    num_points: int = 100_000
    """Number of Gaussians. Paper: fixed by the initialisation mesh (the guiding mesh's vertex count); its FLAME
    ablation samples 100,000 points, taken as the default. :meth:`GPHM.initialise_from_mesh` sets it."""
    attribute_width: int = 512
    """Paper: 512."""
    attribute_hidden_layers: int = 4
    """Paper: 4 hidden layers."""
    initial_opacity: float = 0.1
    """Paper: mean attributes initialised as 3DGS does; 3DGS starts opacities at 0.1."""
    initial_semi_axes: tuple[float, float, float] = (0.32, 0.5, 0.4)
    """Semi-axes ``(x, y, z)`` of the synthetic head surface (an ellipsoid) the points of a freshly built model lie
    on, before the guiding mesh (:meth:`GPHM.from_guiding`) or a FLAME-like template
    (:meth:`GPHM.initialise_from_template`) replaces them. Paper silent (its FLAME ablation needs FLAME, which is
    licensed and not available offline): chose an ellipsoid of a head's proportions in canonical units (1 unit
    chin to crown, narrower than deep)."""
    feature_resolution: int = 512
    """Paper (v2): Gaussians are rendered into a 512 feature map (ECCV: 256 with ``refine.upsample = 2``)."""
    zero_init_deformations: bool = True
    """As :attr:`GuidingGeometryConfig.zero_init_deformations`; for the attribute MLP as well, so that a fresh
    model renders the initialisation point cloud with its 3DGS-initialised attributes."""

    def __post_init__(self) -> None:
        _check_shared("GPHMConfig", self.fields, self.refine, self.feature_resolution, self.num_identities)
        _positive("GPHMConfig", num_points=self.num_points, attribute_width=self.attribute_width,
                  attribute_hidden_layers=self.attribute_hidden_layers)
        if len(self.initial_semi_axes) != 3 or min(self.initial_semi_axes) <= 0:
            raise ConfigError(f"GPHMConfig.initial_semi_axes must be three positive lengths (x, y, z), got "
                              f"{self.initial_semi_axes}")
        if not 0 < self.initial_opacity < 1:
            raise ConfigError(f"GPHMConfig.initial_opacity must be in (0, 1), got {self.initial_opacity}")

    @property
    def image_resolution(self) -> int:
        return self.feature_resolution * self.refine.upsample

    @classmethod
    def tiny(cls) -> GPHMConfig:
        return cls(fields=FieldsConfig.tiny(), expression_encoder=MotionEncoderConfig.tiny(),
                   non_face_encoder=MotionEncoderConfig.tiny(), refine=RefineConfig.tiny(), num_identities=3,
                   num_points=64, attribute_width=16, attribute_hidden_layers=2, initial_opacity=0.1,
                   initial_semi_axes=(0.32, 0.5, 0.4), feature_resolution=16)

    @classmethod
    def from_guiding(cls, guiding: GuidingGeometryConfig, **changes: object) -> GPHMConfig:
        """The Gaussian model's config that inherits a guiding model's shared parts (fields, encoders, refine)."""
        base = cls(fields=guiding.fields, expression_encoder=guiding.expression_encoder,
                   non_face_encoder=guiding.non_face_encoder, refine=guiding.refine,
                   num_identities=guiding.num_identities, feature_resolution=guiding.feature_resolution)
        return base.replace(**changes) if changes else base


@dataclass(frozen=True)
class GPHMAvatarConfig(Config):
    """A person-specific avatar fine-tuned from a GPHM (paper 3.5, "Finetune 3D Gaussians"): the identity-specific
    Gaussians (positions, colours, scales, rotations, opacities) are baked from the fitted identity code and become
    free variables; the expression and non-face deformation MLPs, the encoders and the refine network are kept;
    a tiny MLP ``F_dyn(f_id, z_exp)`` adds expression-dependent offsets of colour and attributes (after Gaussian
    Head Avatar). Built by :meth:`GPHM.personalise`.
    """

    fields: FieldsConfig = field(default_factory=FieldsConfig)
    expression_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    non_face_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    num_points: int = 100_000
    """Number of Gaussians (the GPHM's it was baked from)."""
    dynamic_width: int = 256
    """Paper: "a tiny MLP", silent on its size: chose width 256 with 2 hidden layers, the size of Gaussian Head
    Avatar's expression colour MLP that the paper refers to."""
    dynamic_hidden_layers: int = 2
    """See :attr:`dynamic_width`."""
    feature_resolution: int = 512
    """As :attr:`GPHMConfig.feature_resolution`."""

    def __post_init__(self) -> None:
        _check_shared("GPHMAvatarConfig", self.fields, self.refine, self.feature_resolution, 0)
        _positive("GPHMAvatarConfig", num_points=self.num_points, dynamic_width=self.dynamic_width,
                  dynamic_hidden_layers=self.dynamic_hidden_layers)

    @property
    def image_resolution(self) -> int:
        return self.feature_resolution * self.refine.upsample

    @classmethod
    def tiny(cls) -> GPHMAvatarConfig:
        return cls(fields=FieldsConfig.tiny(), expression_encoder=MotionEncoderConfig.tiny(),
                   non_face_encoder=MotionEncoderConfig.tiny(), refine=RefineConfig.tiny(), num_points=64,
                   dynamic_width=16, dynamic_hidden_layers=1, feature_resolution=16)

    @classmethod
    def from_gphm(cls, gphm: GPHMConfig, num_points: int | None = None, **changes: object) -> GPHMAvatarConfig:
        """The avatar config inheriting a GPHM's shared parts."""
        base = cls(fields=gphm.fields, expression_encoder=gphm.expression_encoder,
                   non_face_encoder=gphm.non_face_encoder, refine=gphm.refine,
                   num_points=gphm.num_points if num_points is None else num_points,
                   feature_resolution=gphm.feature_resolution)
        return base.replace(**changes) if changes else base
