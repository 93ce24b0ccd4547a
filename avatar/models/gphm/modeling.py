"""GPHM's networks: the guiding geometry model, the Gaussian parametric head model and a person's avatar.

* :class:`GuidingGeometryModel` - training stage 1 (paper 3.2 "Guiding Geometry Model", Eq. 1-4): mean SDF ->
  marching-tetrahedra mesh -> identity / expression / non-face deformation -> 32-channel colours -> differentiable
  mesh rendering -> refine network.
* :class:`GPHM` - training stage 2 (paper 3.2 "3D Gaussian Parametric Head Model", Eq. 5-11): the Gaussian model,
  initialised from stage 1 (:meth:`GPHM.from_guiding`) or from a template surface.
* :class:`GPHMAvatar` - a person fitted from a monocular video (paper 3.5), baked from a fitted identity code
  (:meth:`GPHM.personalise`).

Inputs shared by all three (``B`` samples):

* identity: ``(B, D_id)`` codes, or ``(B,)`` indices into the model's training code table (``num_identities``);
* expression: ``(B, D_exp)`` codes, or face crops ``(B, 3, H, W)`` in [-1, 1] that the expression encoder turns
  into codes; non-face motion likewise (``None``: zero codes);
* head pose (canonical -> world, applied last): ``(R (B, 3, 3), T (B, 3))``, ``(B, 4, 4)`` or ``(B, 6)``
  [axis-angle, translation]. A ``(B, 4, 4)`` similarity ``[s R | t]`` works as well (a dataset in metres with the
  canonical head about 1 unit long): positions, Gaussian covariances and landmarks all follow ``s R x + t``;
* camera: ``Ks (B, 3, 3)`` pixel intrinsics of the feature map (pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``)
  and ``viewmats (B, 4, 4)`` world -> camera in OpenCV axes (``x`` right, ``y`` down, ``z`` forward); ``None``:
  the world is the camera frame. :func:`front_camera` makes a frontal camera for the canonical head (``y`` up,
  face towards ``+z``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from avatar.errors import ConfigError, InputError
from avatar.modeling import ModelMixin
from avatar.models.gphm.codes import IdentityCodebook, new_identity_code, resolve_identity
from avatar.models.gphm.configuration import GPHMAvatarConfig, GPHMConfig, GuidingGeometryConfig
from avatar.models.gphm.encoders import MotionEncoder
from avatar.models.gphm.fields import DeformationFields, region_weights
from avatar.models.gphm.gaussians import (
    GaussianPoints,
    GaussianSet,
    GPHMOutput,
    activate_attributes,
    render_gaussian_set,
    rigid_matrix,
)
from avatar.models.gphm.geometry import MeanMesh, MeanShapeSDF, extract_mean_mesh
from avatar.models.gphm.layers import MLP, ConditionedMLP
from avatar.models.gphm.mesh_render import render_mesh_features
from avatar.models.gphm.refinement import RefineNet
from avatar.models.gphm.sampling import front_cap, sample_surface
from avatar.nn.cuda_graphs import GraphCache, tensor_addresses

__all__ = [
    "GPHM",
    "GPHMAvatar",
    "GPHMFastInference",
    "GuidingGeometryModel",
    "GuidingMesh",
    "GuidingRenderOutput",
    "front_camera",
]

Pose = Tensor | tuple[Tensor, Tensor]


def front_camera(batch_size: int, image_size: int, *, distance: float = 6.0, fov_deg: float = 12.0,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """A camera on the canonical ``+z`` axis looking at the origin (the face), upright: ``viewmats (B, 4, 4)``
    (OpenCV world -> camera: ``diag(1, -1, -1)`` then ``z += distance``) and ``Ks (B, 3, 3)`` in pixels for a
    square ``image_size`` image, principal point at its centre.

    Defaults: Portrait4D's 12-degree field of view from 6 units, a frame ``2 * 6 * tan 6deg = 1.26`` units wide,
    which fits the canonical head (about 1 unit chin to crown)."""
    focal = 0.5 * image_size / math.tan(math.radians(0.5 * fov_deg))
    view = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype))
    view[2, 3] = distance
    k = torch.tensor([[focal, 0.0, image_size / 2], [0.0, focal, image_size / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return view.expand(batch_size, 4, 4).to(device), k.expand(batch_size, 3, 3).to(device)


def _motion_code(value: Tensor | None, encoder: MotionEncoder, dim: int, batch: int, what: str,
                 ref: Tensor) -> Tensor:
    """Codes ``(B, dim)`` as given, images ``(B, 3, H, W)`` encoded, ``None`` zeros."""
    if value is None:
        return ref.new_zeros(batch, dim)
    if value.dim() == 4:
        value = encoder(value)
    if value.shape != (batch, dim):
        raise InputError(f"{what} codes are ({batch}, {dim}) (or (B, 3, H, W) images to encode), got "
                         f"{tuple(value.shape)}")
    return value


def _check_landmarks(param: Tensor, landmarks: Tensor) -> None:
    if landmarks.shape != param.shape:
        raise InputError(f"canonical landmarks must be {tuple(param.shape)}, got {tuple(landmarks.shape)}")


def _nonzero_heads(heads: list[nn.Linear]) -> None:
    with torch.no_grad():  # tiny models: non-zero deformation heads so that tests see every path
        for head in heads:
            head.weight.normal_(0.0, 0.05)
            head.bias.normal_(0.0, 0.01)


# ---------------------------------------------------------------------------------------------------------
# stage 1: the guiding geometry model


@dataclass
class GuidingMesh:
    """The deformed, coloured guiding meshes of one call, in canonical space (before the head pose)."""

    vertices: Tensor
    """``(B, V, 3)`` canonical positions: mean + identity + weighted expression and non-face displacements."""
    faces: Tensor
    """``(F, 3)`` long, shared by the batch."""
    colors: Tensor
    """``(B, V, 32)`` colour features (first 3: RGB)."""
    landmarks: Tensor
    """``(B, K, 3)`` canonical 3D landmarks, deformed like the vertices."""
    expression_offsets: Tensor
    """``(B, V, 3)`` weighted expression displacements (Eq. 16)."""
    non_face_offsets: Tensor
    """``(B, V, 3)`` weighted non-face displacements (Eq. 16)."""
    mean_mesh: MeanMesh
    """The mean mesh the call started from."""


@dataclass
class GuidingRenderOutput:
    """A rendered guiding mesh (channels first; ``H, W`` the feature-map size)."""

    feature_map: Tensor
    """``(B, 32, H, W)`` rasterised colour features (0 for background)."""
    image_raw: Tensor
    """``(B, 3, H, W)`` the first three channels (Eq. 14)."""
    image: Tensor
    """``(B, 3, H u, W u)`` refined RGB in [-1, 1]."""
    mask: Tensor
    """``(B, 1, H, W)`` coverage in [0, 1], differentiable at the silhouette (Eq. 13)."""
    depth: Tensor
    """``(B, 1, H, W)`` camera depth (0 for background)."""
    landmarks: Tensor
    """``(B, K, 3)`` world 3D landmarks (Eq. 15)."""
    mesh: GuidingMesh


class GuidingGeometryModel(ModelMixin):
    """GPHM's guiding geometry model (paper 3.2, Eq. 1-4; training stage 1). Build with a
    :class:`~avatar.models.gphm.configuration.GuidingGeometryConfig`; downloads nothing.

    Submodules: ``identity_codes`` (or ``None``), ``sdf`` (``F_mean``), ``fields`` (``F_inj``, ``F_id``, ``F_exp``,
    ``F_nf``, ``F_col``), ``expression_encoder``, ``non_face_encoder``, ``refine`` (``Psi``); parameter
    ``landmarks (K, 3)`` (canonical mean-space landmarks; set them to the mean of the dataset's landmarks with
    :meth:`set_landmarks` before training, as the paper does).

    One training step::

        out = model(identity_indices, face_images, non_face_images, (R, T), Ks, viewmats=viewmats)
        terms = guiding_losses(out, batch_images, batch_masks, batch_landmarks, config=GuidingLossConfig())
        terms["total"].backward()

    The mean mesh is re-extracted on every call (its vertices carry the SDF's gradient); pass ``mean_mesh=`` to
    reuse one within a step.
    """

    config_class = GuidingGeometryConfig
    config: GuidingGeometryConfig

    def __init__(self, config: GuidingGeometryConfig) -> None:
        super().__init__()
        self.config = config
        fc = config.fields
        self.identity_codes = IdentityCodebook(config.num_identities, fc.identity_dim) if config.num_identities else None
        self.sdf = MeanShapeSDF(config)
        self.fields = DeformationFields(fc, zero_init_deformations=config.zero_init_deformations)
        self.expression_encoder = MotionEncoder(config.expression_encoder, fc.expression_dim)
        self.non_face_encoder = MotionEncoder(config.non_face_encoder, fc.non_face_dim)
        self.refine = RefineNet(config.refine)
        self.landmarks = nn.Parameter(front_cap(fc.num_landmarks, config.sphere_radius))

    def _init_tiny(self) -> None:
        _nonzero_heads(self.fields.deformation_heads())

    @torch.no_grad()
    def set_landmarks(self, landmarks: Tensor) -> None:
        """Set the canonical landmarks ``(K, 3)`` (paper: the mean of the dataset's estimated 3D landmarks)."""
        _check_landmarks(self.landmarks, landmarks)
        self.landmarks.copy_(landmarks)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by the paper's learning-rate groups (3.4): ``identity_codes``, ``networks``, ``landmarks``."""
        codes = list(self.identity_codes.parameters()) if self.identity_codes is not None else []
        special = {id(p) for p in codes} | {id(self.landmarks)}
        return {"identity_codes": codes, "networks": [p for p in self.parameters() if id(p) not in special],
                "landmarks": [self.landmarks]}

    # ---- codes ---------------------------------------------------------------------------------------

    def identity_code(self, identity: Tensor) -> Tensor:
        """``identity``: codes ``(B, D_id)`` or indices ``(B,)`` into ``identity_codes`` -> ``(B, D_id)``."""
        return resolve_identity(identity, self.identity_codes, self.config.fields.identity_dim)

    def new_identity_code(self, batch_size: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        """A fresh, optimisable ``(batch_size, D_id)`` identity code (see :func:`~.codes.new_identity_code`)."""
        ref = self.landmarks
        return new_identity_code(self.config.fields.identity_dim, batch_size, generator=generator, device=ref.device,
                                 dtype=ref.dtype)

    def encode_expression(self, face_images: Tensor) -> Tensor:
        """Face crops ``(B, 3, H, W)`` in [-1, 1] -> expression codes ``(B, D_exp)``."""
        return self.expression_encoder(face_images)

    def encode_non_face(self, non_face_images: Tensor) -> Tensor:
        """Images with the face masked out ``(B, 3, H, W)`` in [-1, 1] -> non-face motion codes ``(B, D_nf)``."""
        return self.non_face_encoder(non_face_images)

    # ---- mesh ----------------------------------------------------------------------------------------

    def extract_mean_mesh(self, resolution: int | None = None) -> MeanMesh:
        """The mean-shape mesh by marching tetrahedra on ``resolution^3`` cubes (default ``grid_resolution``);
        differentiable w.r.t. the SDF MLP. Raises :class:`~avatar.errors.InputError` when the SDF has no surface."""
        res = self.config.grid_resolution if resolution is None else resolution
        return extract_mean_mesh(self.sdf, res, self.config.grid_bound, device=self.landmarks.device,
                                 dtype=self.landmarks.dtype)

    def mesh(self, identity: Tensor, expression: Tensor, non_face: Tensor | None = None, *,
             mean_mesh: MeanMesh | None = None) -> GuidingMesh:
        """Deformed, coloured canonical meshes (Eq. 2-4).

        Args:
            identity: ``(B, D_id)`` codes or ``(B,)`` indices.
            expression: ``(B, D_exp)`` codes or ``(B, 3, H, W)`` face crops.
            non_face: ``(B, D_nf)`` codes, ``(B, 3, H, W)`` non-face images, or ``None`` (zeros).
            mean_mesh: a mesh from :meth:`extract_mean_mesh` to reuse (default: extracted now).
        """
        fc = self.config.fields
        z_id = self.identity_code(identity)
        batch = z_id.shape[0]
        z_exp = _motion_code(expression, self.expression_encoder, fc.expression_dim, batch, "expression", z_id)
        z_nf = _motion_code(non_face, self.non_face_encoder, fc.non_face_dim, batch, "non-face motion", z_id)
        mesh = self.extract_mean_mesh() if mean_mesh is None else mean_mesh
        lmk = self.landmarks.unsqueeze(0)
        out = self.fields(mesh.vertices.unsqueeze(0), mesh.features.unsqueeze(0), lmk, z_id, z_exp, z_nf)
        assert out.colors is not None
        _, lmk_features = self.sdf(self.landmarks)
        lmk_out = self.fields(lmk, lmk_features.unsqueeze(0), lmk, z_id, z_exp, z_nf, with_colors=False)
        return GuidingMesh(vertices=out.canonical, faces=mesh.faces, colors=out.colors, landmarks=lmk_out.canonical,
                           expression_offsets=out.expression_offsets, non_face_offsets=out.non_face_offsets,
                           mean_mesh=mesh)

    def render(self, mesh: GuidingMesh, pose: Pose, Ks: Tensor, image_size: int | None = None, *,  # noqa: N803
               viewmats: Tensor | None = None, antialias: bool = True) -> GuidingRenderOutput:
        """Pose the meshes (``R v + T``), rasterise them into ``image_size`` feature maps (default
        ``feature_resolution``) with :func:`~avatar.models.gphm.mesh_render.render_mesh_features` (differentiable
        w.r.t. the vertices, silhouette included) and refine them."""
        size = self.config.feature_resolution if image_size is None else image_size
        bsz = mesh.vertices.shape[0]
        head = rigid_matrix(pose, bsz).to(mesh.vertices)
        if viewmats is None:
            viewmats = torch.eye(4, dtype=head.dtype, device=head.device).expand(bsz, 4, 4)
        world = mesh.vertices @ head[:, :3, :3].transpose(1, 2) + head[:, None, :3, 3]
        out = render_mesh_features(world, mesh.faces, mesh.colors, viewmats.to(head), Ks.to(head), size,
                                   antialias=antialias)
        landmarks = mesh.landmarks @ head[:, :3, :3].transpose(1, 2) + head[:, None, :3, 3]
        return GuidingRenderOutput(feature_map=out.features, image_raw=out.features[:, :3],
                                   image=self.refine(out.features), mask=out.mask, depth=out.depth,
                                   landmarks=landmarks, mesh=mesh)

    def forward(self, identity: Tensor, expression: Tensor, non_face: Tensor | None, pose: Pose,
                Ks: Tensor, image_size: int | None = None, *, viewmats: Tensor | None = None,  # noqa: N803
                mean_mesh: MeanMesh | None = None, antialias: bool = True) -> GuidingRenderOutput:
        """:meth:`mesh` then :meth:`render` (one training step's forward pass)."""
        mesh = self.mesh(identity, expression, non_face, mean_mesh=mean_mesh)
        return self.render(mesh, pose, Ks, image_size, viewmats=viewmats, antialias=antialias)


# ---------------------------------------------------------------------------------------------------------
# stage 2: the Gaussian parametric head model


class GPHM(ModelMixin):
    """The 3D Gaussian Parametric Head Model (paper 3.2, Eq. 5-11; training stage 2). Build with a
    :class:`~avatar.models.gphm.configuration.GPHMConfig`; downloads nothing.

    Parts: ``identity_codes`` (an ``nn.Embedding`` of ``num_identities`` codes, or ``None``), ``points``
    (:class:`~avatar.models.gphm.gaussians.GaussianPoints`: mean positions, bound features ``f``, mean attributes,
    canonical landmarks), ``fields`` (``F_inj``, ``F_id``, ``F_exp``, ``F_nf``, ``F_col``), ``attributes``
    (``F_attr``), ``expression_encoder`` (``E_exp``), ``non_face_encoder`` (``E_nf``), ``refine`` (``Psi``).

    Initialisation: :meth:`from_guiding` (the paper's: points = the guiding mean mesh's vertices, features = its
    SDF features, codes / landmarks / shared networks inherited), or :meth:`initialise_from_template` (the paper's
    FLAME ablation: points sampled on a template surface, zero features); a model built from a config alone
    starts on a synthetic head-shaped ellipsoid.

    Fitting a person from a monocular video (paper 3.5), with ``frames`` giving face crops, non-face images,
    head poses, cameras and target images (all images in [-1, 1]; ``gphm_losses`` from
    :mod:`avatar.models.gphm.losses`)::

        gphm = GPHM.from_pretrained("path/or/hub-repo")
        lpips = LPIPSLoss.from_pretrained("lpips-vgg")        # avatar.losses
        gphm.requires_grad_(False)
        code = gphm.new_identity_code()                       # 1. identity fitting: only the code moves
        opt = torch.optim.Adam([code], lr=1e-3)
        for step in range(100):
            f = frames.sample()
            out = gphm(code, f.face, f.non_face, f.pose, f.Ks, viewmats=f.viewmats)
            gphm_losses(out, f.image, perceptual=lpips, config=GPHMLossConfig.fitting())["total"].backward()
            opt.step(); opt.zero_grad()
        avatar = gphm.personalise(code.detach())               # 2. bake the person's Gaussians, add F_dyn
        groups = avatar.finetune_parameters(few_shot=False)   # Gaussians; F_exp, F_dyn, refine
        opt = torch.optim.Adam([{"params": groups["gaussians"], "lr": 1e-4},
                                {"params": groups["networks"], "lr": 1e-5}])
        for step in range(2000):
            f = frames.sample()
            out = avatar(f.face, f.non_face, f.pose, f.Ks, viewmats=f.viewmats)
            gphm_losses(out, f.image, perceptual=lpips, config=GPHMLossConfig.fitting())["total"].backward()
            opt.step(); opt.zero_grad()
        avatar.save_pretrained("my-avatar")                   # 3. reenact: avatar(driving_face, driving_non_face, ...)

    (The learning rates above are placeholders: our copy of the paper lost its numbers.)
    """

    config_class = GPHMConfig
    config: GPHMConfig

    def __init__(self, config: GPHMConfig) -> None:
        super().__init__()
        self.config = config
        fc = config.fields
        self.identity_codes = IdentityCodebook(config.num_identities, fc.identity_dim) if config.num_identities else None
        self.points = GaussianPoints(config.num_points, fc.point_feature_dim, fc.num_landmarks,
                                     config.initial_semi_axes, config.initial_opacity)
        self.fields = DeformationFields(fc, zero_init_deformations=config.zero_init_deformations)
        self.attributes = MLP(fc.identity_feature_dim, 8, config.attribute_width, config.attribute_hidden_layers)
        if config.zero_init_deformations:
            nn.init.zeros_(self.attributes.out.weight)
            nn.init.zeros_(self.attributes.out.bias)
        self.expression_encoder = MotionEncoder(config.expression_encoder, fc.expression_dim)
        self.non_face_encoder = MotionEncoder(config.non_face_encoder, fc.non_face_dim)
        self.refine = RefineNet(config.refine)

    def _init_tiny(self) -> None:
        _nonzero_heads([*self.fields.deformation_heads(), self.attributes.out])
        with torch.no_grad():
            self.points.point_features.normal_(0.0, 1.0)
            self.points.landmark_features.normal_(0.0, 1.0)

    def _prepare_load(self, state: Mapping[str, Tensor]) -> None:
        means = state.get("points.means")
        if means is not None and means.dim() == 2 and means.shape[0] != self.points.num_points:
            self.points.resize(int(means.shape[0]))
            self.config = self.config.replace(num_points=int(means.shape[0]))

    @property
    def num_points(self) -> int:
        return self.points.num_points

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by the paper's learning-rate groups (3.4): ``identity_codes``, ``networks``, ``landmarks``,
        ``means``, ``point_features``, ``scales``, ``rotations``, ``opacities``."""
        p = self.points
        groups = {"identity_codes": list(self.identity_codes.parameters()) if self.identity_codes is not None else [],
                  "landmarks": [p.landmarks, p.landmark_features], "means": [p.means],
                  "point_features": [p.point_features], "scales": [p.log_scales], "rotations": [p.rotations],
                  "opacities": [p.opacity_logits]}
        taken = {id(x) for group in groups.values() for x in group}
        groups["networks"] = [x for x in self.parameters() if id(x) not in taken]
        return groups

    # ---- initialisation ------------------------------------------------------------------------------

    def _set_num_points(self) -> None:
        self.config = self.config.replace(num_points=self.points.num_points)

    @torch.no_grad()
    def set_landmarks(self, landmarks: Tensor, features: Tensor | None = None) -> None:
        """Set the canonical landmarks ``(K, 3)`` (and optionally their bound features ``(K, C)``)."""
        _check_landmarks(self.points.landmarks, landmarks)
        self.points.landmarks.copy_(landmarks)
        if features is not None:
            _check_landmarks(self.points.landmark_features, features)
            self.points.landmark_features.copy_(features)

    @torch.no_grad()
    def initialise_from_mesh(self, vertices: Tensor, features: Tensor | None = None) -> None:
        """Points at ``vertices (N, 3)`` with bound features ``features (N, C)`` (zeros when ``None``); attributes
        as 3DGS initialises them. ``config.num_points`` follows. Build optimisers afterwards."""
        self.points.set_points(vertices, features)
        self._set_num_points()

    @torch.no_grad()
    def initialise_from_template(self, vertices: Tensor, faces: Tensor, num_points: int | None = None, *,
                                 generator: torch.Generator | None = None) -> None:
        """The paper's FLAME initialisation (ablation, 4.2): ``num_points`` (default ``config.num_points``) points
        sampled uniformly on a template surface ``vertices (V, 3)``, ``faces (F, 3)`` in canonical units, with
        zero features. With FLAME: ``Flame(...)`` fitted to the mean landmarks, its vertices scaled to the
        canonical head size; offline, :func:`avatar.flame.synthetic.icosphere` gives a stand-in surface."""
        n = self.config.num_points if num_points is None else num_points
        points = sample_surface(vertices.to(self.points.means), faces, n, generator=generator)
        self.initialise_from_mesh(points)

    @classmethod
    def from_guiding(cls, guiding: GuidingGeometryModel, *, mean_mesh: MeanMesh | None = None,
                     **config_changes: object) -> GPHM:
        """The paper's initialisation of stage 2 from a trained guiding model (3.2): Gaussian positions = the mean
        mesh's vertices, bound features = their SDF features, identity codes, canonical landmarks (with their SDF
        features), ``F_inj``, ``F_id``, ``F_exp``, ``F_nf``, ``F_col``, encoders and refine network copied;
        ``F_attr`` new (zero last layer when ``zero_init_deformations``); mean attributes as 3DGS."""
        with torch.no_grad():
            mesh = guiding.extract_mean_mesh() if mean_mesh is None else mean_mesh
            config = GPHMConfig.from_guiding(guiding.config, num_points=int(mesh.vertices.shape[0]), **config_changes)
            model = cls(config).to(guiding.landmarks)
            model.fields.load_state_dict(guiding.fields.state_dict())
            model.expression_encoder.load_state_dict(guiding.expression_encoder.state_dict())
            model.non_face_encoder.load_state_dict(guiding.non_face_encoder.state_dict())
            model.refine.load_state_dict(guiding.refine.state_dict())
            if guiding.identity_codes is not None and model.identity_codes is not None:
                model.identity_codes.load_state_dict(guiding.identity_codes.state_dict())
            model.initialise_from_mesh(mesh.vertices.detach(), mesh.features.detach())
            _, lmk_features = guiding.sdf(guiding.landmarks)
            model.set_landmarks(guiding.landmarks.detach(), lmk_features.detach())
        return model

    # ---- codes ---------------------------------------------------------------------------------------

    def identity_code(self, identity: Tensor) -> Tensor:
        """``identity``: codes ``(B, D_id)`` (used as given) or indices ``(B,)`` (looked up) -> ``(B, D_id)``."""
        return resolve_identity(identity, self.identity_codes, self.config.fields.identity_dim)

    def new_identity_code(self, batch_size: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        """A fresh, optimisable ``(batch_size, D_id)`` identity code for fitting a new person (paper 3.5)."""
        ref = self.points.means
        return new_identity_code(self.config.fields.identity_dim, batch_size, generator=generator, device=ref.device,
                                 dtype=ref.dtype)

    def encode_expression(self, face_images: Tensor) -> Tensor:
        """Face crops ``(B, 3, H, W)`` in [-1, 1] -> expression codes ``(B, D_exp)`` (``E_exp``)."""
        return self.expression_encoder(face_images)

    def encode_non_face(self, non_face_images: Tensor) -> Tensor:
        """Images with the face masked out ``(B, 3, H, W)`` in [-1, 1] -> non-face motion codes ``(B, D_nf)``."""
        return self.non_face_encoder(non_face_images)

    # ---- Gaussians and rendering ---------------------------------------------------------------------

    def gaussians(self, identity_code: Tensor, expression_code: Tensor,
                  non_face_code: Tensor | None = None) -> GaussianSet:
        """Canonical Gaussians (Eq. 5-11).

        Args:
            identity_code: ``(B, D_id)`` codes or ``(B,)`` indices.
            expression_code: ``(B, D_exp)`` codes (or ``(B, 3, H, W)`` face crops, encoded).
            non_face_code: ``(B, D_nf)`` codes (or non-face images, encoded; ``None``: zeros).

        Returns:
            :class:`~avatar.models.gphm.gaussians.GaussianSet` with ``means (B, N, 3)``, unit ``quats (B, N, 4)``
            (wxyz), positive ``scales (B, N, 3)``, ``opacities (B, N)`` in (0, 1), ``features (B, N, 32)``.
        """
        fc = self.config.fields
        z_id = self.identity_code(identity_code)
        batch = z_id.shape[0]
        z_exp = _motion_code(expression_code, self.expression_encoder, fc.expression_dim, batch, "expression", z_id)
        z_nf = _motion_code(non_face_code, self.non_face_encoder, fc.non_face_dim, batch, "non-face motion", z_id)
        p = self.points
        lmk = p.landmarks.unsqueeze(0)
        out = self.fields(p.means.unsqueeze(0), p.point_features.unsqueeze(0), lmk, z_id, z_exp, z_nf)
        assert out.colors is not None
        delta = self.attributes(out.identity_features)  # (B, N, 8)
        scales, quats, opacities = activate_attributes(p.log_scales + delta[..., 0:3], p.rotations + delta[..., 3:7],
                                                       p.opacity_logits + delta[..., 7])
        lmk_out = self.fields(lmk, p.landmark_features.unsqueeze(0), lmk, z_id, z_exp, z_nf, with_colors=False)
        return GaussianSet(means=out.canonical, quats=quats, scales=scales, opacities=opacities, features=out.colors,
                           landmarks=lmk_out.canonical, expression_offsets=out.expression_offsets,
                           non_face_offsets=out.non_face_offsets)

    def render(self, gaussians: GaussianSet, pose: Pose, Ks: Tensor, image_size: int | None = None, *,  # noqa: N803
               viewmats: Tensor | None = None, background: Tensor | None = None,
               backend: str = "auto") -> GPHMOutput:
        """Render canonical Gaussians posed by ``pose`` (canonical -> world) through the camera ``Ks`` (+
        ``viewmats``) into ``image_size`` feature maps (default ``feature_resolution``) with
        :func:`avatar.render.gaussians.rasterize_gaussians`, then refine them (``backend``: ``"auto"``,
        ``"reference"`` (pure PyTorch) or ``"gsplat"``). Returns
        :class:`~avatar.models.gphm.gaussians.GPHMOutput` (``feature_map``, ``image_raw``, ``image``, ``alpha``,
        ``depth``, world ``landmarks``)."""
        size = self.config.feature_resolution if image_size is None else image_size
        return render_gaussian_set(gaussians, pose, Ks, size, self.refine, viewmats=viewmats, background=background,
                                   backend=backend)

    def forward(self, identity: Tensor, expression: Tensor, non_face: Tensor | None, pose: Pose, Ks: Tensor,  # noqa: N803
                image_size: int | None = None, *, viewmats: Tensor | None = None, background: Tensor | None = None,
                backend: str = "auto") -> GPHMOutput:
        """:meth:`gaussians` then :meth:`render` (one training or fitting step's forward pass)."""
        return self.render(self.gaussians(identity, expression, non_face), pose, Ks, image_size, viewmats=viewmats,
                           background=background, backend=backend)

    # ---- person-specific avatar ----------------------------------------------------------------------

    @torch.no_grad()
    def personalise(self, identity_code: Tensor, **config_changes: object) -> GPHMAvatar:
        """Bake a fitted identity into a :class:`GPHMAvatar` (paper 3.5, "Finetune 3D Gaussians"): the neutral
        positions ``x + F_id(f_id)``, colours ``F_col(f_id)`` and attributes (pre-activation, Eq. 11) become the
        avatar's free variables; ``f_id``, the region weights, ``F_exp``, ``F_nf``, the encoders and the refine
        network are copied; ``F_inj``, ``F_id``, ``F_col``, ``F_attr`` and the code are not needed any more. A
        fresh avatar renders exactly what this model renders for the code (its ``F_dyn`` starts at zero).

        Args:
            identity_code: ``(1, D_id)`` code (or a ``(1,)`` index).
        """
        z_id = self.identity_code(identity_code)
        if z_id.shape[0] != 1:
            raise InputError(f"personalise bakes one identity: pass a (1, {self.config.fields.identity_dim}) code, "
                             f"got {tuple(z_id.shape)}")
        fc, p = self.config.fields, self.points
        config = GPHMAvatarConfig.from_gphm(self.config, num_points=self.num_points, **config_changes)
        avatar = GPHMAvatar(config).to(p.means)
        f_id = self.fields.injection(p.point_features.unsqueeze(0), z_id)
        lmk_f_id = self.fields.injection(p.landmark_features.unsqueeze(0), z_id)
        delta = self.attributes(f_id)[0]
        lmk = p.landmarks.unsqueeze(0)
        w_exp, _ = region_weights(p.means.unsqueeze(0), lmk, fc.landmark_near, fc.landmark_far)
        lmk_w, _ = region_weights(lmk, lmk, fc.landmark_near, fc.landmark_far)
        a = avatar
        a.means.copy_(p.means + self.fields.identity_deform(f_id)[0])
        a.colors.copy_(self.fields.color(f_id)[0])
        a.log_scales.copy_(p.log_scales + delta[:, 0:3])
        a.rotations.copy_(p.rotations + delta[:, 3:7])
        a.opacity_logits.copy_(p.opacity_logits + delta[:, 7])
        a.identity_features.copy_(f_id[0])
        a.expression_weights.copy_(w_exp[0])
        a.landmarks.copy_(p.landmarks + self.fields.identity_deform(lmk_f_id)[0])
        a.landmark_identity_features.copy_(lmk_f_id[0])
        a.landmark_expression_weights.copy_(lmk_w[0])
        a.expression_deform.load_state_dict(self.fields.expression_deform.state_dict())
        a.non_face_deform.load_state_dict(self.fields.non_face_deform.state_dict())
        a.expression_encoder.load_state_dict(self.expression_encoder.state_dict())
        a.non_face_encoder.load_state_dict(self.non_face_encoder.state_dict())
        a.refine.load_state_dict(self.refine.state_dict())
        return a.train(self.training)


# ---------------------------------------------------------------------------------------------------------
# a person's avatar (paper 3.5)


def _tensors(gaussians: GaussianSet) -> dict[str, Tensor]:
    """A :class:`GaussianSet`'s fields by name (the outputs of its CUDA graph)."""
    return {f.name: getattr(gaussians, f.name) for f in fields(gaussians)}


def _version_of(t: Tensor) -> int:
    """The in-place version counter (``-1`` for an inference-mode tensor, which has none and cannot change)."""
    try:
        return int(t._version)
    except RuntimeError:
        return -1


@dataclass(frozen=True)
class GPHMFastInference:
    """How :class:`GPHMAvatar` runs without gradients once :meth:`GPHMAvatar.enable_fast_inference` is called."""

    dtype: torch.dtype | None = torch.bfloat16
    """Autocast dtype of the MLPs and the refine network; ``None``: float32 (only the cached first layer)."""
    cuda_graphs: bool = False
    """On CUDA, replay :meth:`GPHMAvatar.gaussians` (after the motion codes) and the refine network from CUDA
    graphs captured per shape (the splatting between them stays eager: gsplat's sizes depend on the data)."""


class GPHMAvatar(ModelMixin):
    """A person-specific Gaussian head avatar fine-tuned from a GPHM (paper 3.5); built by
    :meth:`GPHM.personalise`, saved and loaded like every network (:meth:`save_pretrained` /
    :meth:`from_pretrained`).

    Free variables (``N`` Gaussians): ``means (N, 3)`` neutral canonical positions, ``colors (N, 32)``,
    ``log_scales (N, 3)``, ``rotations (N, 4)``, ``opacity_logits (N,)``, ``landmarks (K, 3)``; fixed per-point
    inputs (buffers, saved with the weights) ``identity_features (N, D)`` (``f_id``) and ``expression_weights (N, 1)``
    (``w_exp``; ``w_nf = 1 - w_exp``, computed at baking time from the mean positions, as in the GPHM).
    Networks: ``expression_deform`` (``F_exp``), ``non_face_deform`` (``F_nf``), ``dynamic`` (``F_dyn(f_id, z_exp)
    -> (dc, ds, dq, do)``, zero last layer), the two encoders, ``refine``.

    Reenactment: ``avatar(driving_face_crops, driving_non_face_images, pose, Ks, viewmats=...)`` (paper: the
    non-face code may also be held fixed, e.g. at a training frame's, to ignore the neck).

    Fast inference (:meth:`enable_fast_inference`, used only where no gradient is recorded): the code-free part
    of the first layer of ``F_exp``, ``F_nf`` and ``F_dyn`` (``W_f f_id + b``, ``N x width`` per network) is
    computed once and reused until the points or those weights change (an exact rewrite: the per-frame work drops
    by that layer); ``F_exp`` runs only on the points with ``w_exp > 0`` and ``F_nf`` only on those with
    ``w_exp < 1`` (the clamped blend is exactly 0 or 1 on most points, about 37 % and 49 % of a 100k template
    head, and a zero weight multiplies the displacement away: the same sum without those rows); and the three
    MLPs and the refine network run under autocast in ``dtype`` (bf16 by default; ``None`` keeps float32), the
    refine network on channels-last maps. Positions, attribute activations and
    splatting stay float32. The reference is the same methods without it; the tests bound the difference.
    """

    config_class = GPHMAvatarConfig
    config: GPHMAvatarConfig
    identity_features: Tensor
    expression_weights: Tensor
    landmark_identity_features: Tensor
    landmark_expression_weights: Tensor

    def __init__(self, config: GPHMAvatarConfig) -> None:
        super().__init__()
        self.config = config
        fc = config.fields
        n, k = config.num_points, fc.num_landmarks
        self.means = nn.Parameter(torch.zeros(n, 3))
        self.colors = nn.Parameter(torch.zeros(n, fc.color_dim))
        self.log_scales = nn.Parameter(torch.zeros(n, 3))
        self.rotations = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1))
        self.opacity_logits = nn.Parameter(torch.zeros(n))
        self.register_buffer("identity_features", torch.zeros(n, fc.identity_feature_dim))
        self.register_buffer("expression_weights", torch.zeros(n, 1))
        self.landmarks = nn.Parameter(torch.zeros(k, 3))
        self.register_buffer("landmark_identity_features", torch.zeros(k, fc.identity_feature_dim))
        self.register_buffer("landmark_expression_weights", torch.zeros(k, 1))
        self.expression_deform = ConditionedMLP(fc.identity_feature_dim, fc.expression_dim, 3, fc.width,
                                                fc.hidden_layers)
        self.non_face_deform = ConditionedMLP(fc.identity_feature_dim, fc.non_face_dim, 3, fc.width, fc.hidden_layers)
        self.dynamic = ConditionedMLP(fc.identity_feature_dim, fc.expression_dim, fc.color_dim + 8,
                                      config.dynamic_width, config.dynamic_hidden_layers)
        nn.init.zeros_(self.dynamic.rest.out.weight)
        nn.init.zeros_(self.dynamic.rest.out.bias)
        self.expression_encoder = MotionEncoder(config.expression_encoder, fc.expression_dim)
        self.non_face_encoder = MotionEncoder(config.non_face_encoder, fc.non_face_dim)
        self.refine = RefineNet(config.refine)
        self.fast_inference: GPHMFastInference | None = None
        self._point_cache: tuple[tuple[tuple[int, int], ...], dict[str, Tensor]] | None = None
        self._graphs = GraphCache(max_graphs=4)  # fast path: Gaussians and refine network, two batch sizes each

    _PER_POINT = ("means", "colors", "log_scales", "rotations", "opacity_logits", "identity_features",
                  "expression_weights")

    def _init_tiny(self) -> None:
        with torch.no_grad():
            self.means.normal_(0.0, 0.3)
            self.colors.normal_(0.0, 0.5)
            self.log_scales.fill_(-3.0)
            self.identity_features.normal_(0.0, 1.0)
            self.expression_weights.uniform_(0.0, 1.0)
            self.landmarks.normal_(0.0, 0.3)

    def _prepare_load(self, state: Mapping[str, Tensor]) -> None:
        means = state.get("means")
        if means is not None and means.dim() == 2 and means.shape[0] != self.means.shape[0]:
            n = int(means.shape[0])
            for name in self._PER_POINT:
                old = getattr(self, name)
                new = old.new_zeros(n, *old.shape[1:])
                setattr(self, name, nn.Parameter(new) if isinstance(old, nn.Parameter) else new)
            self.config = self.config.replace(num_points=n)

    def finetune_parameters(self, few_shot: bool = False) -> dict[str, list[nn.Parameter]]:
        """The paper's fine-tuning groups (3.5): ``gaussians`` (positions, colours, scales, rotations, opacities,
        one learning rate) and ``networks`` (another learning rate): ``F_exp``, ``F_dyn`` and the refine network.

        Paper: three networks are fine-tuned, their symbols lost in our copy; chose ``F_exp``, ``F_dyn`` and
        ``Psi`` because the few-shot remark names "the facial expression MLP and refine network" and ``F_dyn`` is
        the stage's new network; ``F_nf`` and the encoders stay as trained. ``few_shot``: the paper turns the
        expression MLP and the refine network off; chose to leave ``networks`` empty (``F_dyn`` frozen as well,
        at zero), because a handful of images cannot constrain expression-dependent appearance either.
        """
        gaussians = [self.means, self.colors, self.log_scales, self.rotations, self.opacity_logits]
        networks = [*self.expression_deform.parameters(), *self.dynamic.parameters(), *self.refine.parameters()]
        return {"gaussians": gaussians, "networks": [] if few_shot else networks}

    def encode_expression(self, face_images: Tensor) -> Tensor:
        """Face crops ``(B, 3, H, W)`` in [-1, 1] -> expression codes ``(B, D_exp)``."""
        return self.expression_encoder(face_images)

    def encode_non_face(self, non_face_images: Tensor) -> Tensor:
        """Non-face images ``(B, 3, H, W)`` in [-1, 1] -> non-face motion codes ``(B, D_nf)``."""
        return self.non_face_encoder(non_face_images)

    # ---- fast inference ------------------------------------------------------------------------------------
    def enable_fast_inference(self, dtype: torch.dtype | None = torch.bfloat16, *,
                              cuda_graphs: bool = False) -> GPHMAvatar:
        """Turn the fast inference path on (class docstring): ``dtype`` is the autocast dtype of the MLPs and the
        refine network (``torch.bfloat16``, ``torch.float16``, or ``None`` for float32); ``cuda_graphs``: on CUDA,
        the Gaussians (from the motion codes on) and the refine network are replayed from CUDA graphs, one per
        input shape (:mod:`avatar.nn.cuda_graphs`; a failed capture runs eagerly after one warning). Returns
        ``self``."""
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise ConfigError(f"enable_fast_inference: dtype must be torch.bfloat16, torch.float16 or None, got {dtype}")
        self.fast_inference = GPHMFastInference(dtype=dtype, cuda_graphs=bool(cuda_graphs))
        self._point_cache = None
        self._graphs.clear()
        return self

    def disable_fast_inference(self) -> GPHMAvatar:
        """Back to the reference path (the default). Returns ``self``."""
        self.fast_inference = None
        self._point_cache = None
        self._graphs.clear()
        return self

    def _graph_replay(self, what: str, fn: Any, inputs: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """``fn(**inputs)`` replayed from a CUDA graph when the fast path has ``cuda_graphs`` on and the inputs are
        on CUDA; ``None`` otherwise or when the capture failed (the caller then runs eagerly). The graph key holds
        the inputs' shapes, strides and dtypes, the autocast and TF32 state, the weights' addresses and the cached
        first-layer parts' key (a graph never reads stale weights or stale parts)."""
        fast = self.fast_inference
        first = next(iter(inputs.values()))
        if (fast is None or not fast.cuda_graphs or first.device.type != "cuda" or torch.is_grad_enabled()
                or torch.cuda.is_current_stream_capturing()):
            return None
        self._point_parts()  # computed (with its host synchronisation) before any capture
        key = (what, tuple((k, tuple(v.shape), v.stride(), v.dtype, v.device) for k, v in inputs.items()),
               fast.dtype, torch.is_autocast_enabled(first.device.type), torch.get_autocast_dtype(first.device.type),
               torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, tensor_addresses(self),
               self._point_cache[0] if self._point_cache is not None else None)
        return self._graphs.replay_or_none(key, fn, inputs, f"GPHMAvatar.{what}")

    def _fast_active(self) -> bool:
        return self.fast_inference is not None and not torch.is_grad_enabled()

    def _autocast(self, like: Tensor) -> contextlib.AbstractContextManager[object]:
        dtype = None if self.fast_inference is None else self.fast_inference.dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(like.device.type, dtype=dtype)

    def _point_parts(self) -> dict[str, Tensor]:
        """The cached code-free first-layer parts, recomputed when a point feature or first-layer weight changed
        (storage or in-place version)."""
        sources = (self.identity_features, self.landmark_identity_features, self.expression_weights,
                   *(t for m in (self.expression_deform, self.non_face_deform, self.dynamic)
                     for t in (m.point_in.weight, m.point_in.bias)))
        key = tuple((t.data_ptr(), _version_of(t)) for t in sources)
        if self._point_cache is not None and self._point_cache[0] == key:
            return self._point_cache[1]
        w_exp = self.expression_weights[:, 0]
        exp_rows = (w_exp > 0).nonzero().squeeze(1)  # the rows F_exp moves (w_exp dx_exp is 0 elsewhere)
        nf_rows = (w_exp < 1).nonzero().squeeze(1)  # the rows F_nf moves ((1 - w_exp) dx_nf is 0 elsewhere)
        with self._autocast(self.identity_features):
            parts = {
                "exp": self.expression_deform.point_part(self.identity_features.index_select(0, exp_rows)),
                "nf": self.non_face_deform.point_part(self.identity_features.index_select(0, nf_rows)),
                "exp_rows": exp_rows,
                "nf_rows": nf_rows,
                "dyn": self.dynamic.point_part(self.identity_features),
                "lm_exp": self.expression_deform.point_part(self.landmark_identity_features),
                "lm_nf": self.non_face_deform.point_part(self.landmark_identity_features),
            }
        self._point_cache = (key, parts)
        return parts

    def _refine_image(self, features: Tensor) -> Tensor:
        if not self._fast_active():
            return self.refine(features)
        graphed = self._graph_replay("refine", lambda features: {"image": self._refine_fast(features)},
                                     {"features": features})
        return graphed["image"] if graphed is not None else self._refine_fast(features)

    def _refine_fast(self, features: Tensor) -> Tensor:
        # cuDNN's autotuner for the U-Net's convolutions (fixed shapes per batch size; scoped to this call)
        with self._autocast(features), torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                                                   benchmark=features.is_cuda,
                                                                   deterministic=torch.backends.cudnn.deterministic,
                                                                   allow_tf32=torch.backends.cudnn.allow_tf32):
            image = self.refine(features.contiguous(memory_format=torch.channels_last))
        return image.float()

    # ---- the Gaussians ---------------------------------------------------------------------------------------
    def gaussians(self, expression_code: Tensor, non_face_code: Tensor | None = None) -> GaussianSet:
        """Canonical Gaussians of the person for ``expression_code (B, D_exp)`` (or face crops) and
        ``non_face_code (B, D_nf)`` (or non-face images; ``None``: zeros)."""
        fc = self.config.fields
        ref = self.means
        batch = expression_code.shape[0]
        z_exp = _motion_code(expression_code, self.expression_encoder, fc.expression_dim, batch, "expression", ref)
        z_nf = _motion_code(non_face_code, self.non_face_encoder, fc.non_face_dim, batch, "non-face motion", ref)
        fast = self._fast_active()
        if fast:
            graphed = self._graph_replay("gaussians", lambda z_exp, z_nf: _tensors(self._gaussians(z_exp, z_nf, True)),
                                         {"z_exp": z_exp, "z_nf": z_nf})
            if graphed is not None:
                return GaussianSet(**graphed)
        return self._gaussians(z_exp, z_nf, fast)

    def _gaussians(self, z_exp: Tensor, z_nf: Tensor, fast: bool) -> GaussianSet:
        """:meth:`gaussians` from the motion codes ``(B, D_exp)``, ``(B, D_nf)``; ``fast``: the fast path."""
        fc = self.config.fields
        batch = z_exp.shape[0]
        parts = self._point_parts() if fast else {}

        def displacement(mlp: ConditionedMLP, f: Tensor | None, z: Tensor, key: str, n: int) -> Tensor:
            """``(B, n, 3)`` float32; on the fast path only the cached rows (``key + '_rows'``) are computed."""
            with self._autocast(z) if fast else contextlib.nullcontext():
                dx = mlp(f, z, point_part=parts.get(key), fused=fast).float()
            rows = parts.get(key + "_rows")
            if rows is None:
                return dx
            return dx.new_zeros(batch, n, dx.shape[-1]).index_copy_(1, rows, dx)

        def deform(positions: Tensor, f_id: Tensor, w_exp: Tensor, prefix: str) -> tuple[Tensor, Tensor, Tensor]:
            f = None if fast else f_id.unsqueeze(0).expand(batch, -1, -1)
            n = positions.shape[0]
            d_exp = w_exp * displacement(self.expression_deform, f, z_exp, prefix + "exp", n)
            d_nf = (1.0 - w_exp) * displacement(self.non_face_deform, f, z_nf, prefix + "nf", n)
            return positions + d_exp + d_nf, d_exp, d_nf

        means, d_exp, d_nf = deform(self.means, self.identity_features, self.expression_weights, "")
        landmarks, _, _ = deform(self.landmarks, self.landmark_identity_features, self.landmark_expression_weights,
                                 "lm_")
        if fast:
            with self._autocast(self.means):
                dyn = self.dynamic(None, z_exp, point_part=parts["dyn"], fused=True).float()
        else:
            dyn = self.dynamic(self.identity_features.unsqueeze(0).expand(batch, -1, -1), z_exp)
        c = fc.color_dim
        scales, quats, opacities = activate_attributes(self.log_scales + dyn[..., c:c + 3],
                                                       self.rotations + dyn[..., c + 3:c + 7],
                                                       self.opacity_logits + dyn[..., c + 7])
        return GaussianSet(means=means, quats=quats, scales=scales, opacities=opacities, features=self.colors + dyn[..., :c],
                           landmarks=landmarks, expression_offsets=d_exp, non_face_offsets=d_nf)

    def render(self, gaussians: GaussianSet, pose: Pose, Ks: Tensor, image_size: int | None = None, *,  # noqa: N803
               viewmats: Tensor | None = None, background: Tensor | None = None,
               backend: str = "auto") -> GPHMOutput:
        """As :meth:`GPHM.render` (with the fast path's refine network when it is on)."""
        size = self.config.feature_resolution if image_size is None else image_size
        return render_gaussian_set(gaussians, pose, Ks, size, self._refine_image, viewmats=viewmats,
                                   background=background, backend=backend, check_values=not self._fast_active())

    def forward(self, expression: Tensor, non_face: Tensor | None, pose: Pose, Ks: Tensor,  # noqa: N803
                image_size: int | None = None, *, viewmats: Tensor | None = None, background: Tensor | None = None,
                backend: str = "auto") -> GPHMOutput:
        """:meth:`gaussians` then :meth:`render`."""
        return self.render(self.gaussians(expression, non_face), pose, Ks, image_size, viewmats=viewmats,
                           background=background, backend=backend)
