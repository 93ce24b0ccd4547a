"""The Gaussian side of GPHM (paper 3.2, Eq. 5-11): the mean point cloud with its bound per-point features and
mean attributes, the attribute activations, the canonical :class:`GaussianSet` both GPHM models produce, and the
rendering of a set (rigid head pose, camera, rasteriser, refine network).

For ``N`` Gaussians with mean positions ``x`` and bound features ``f`` (learnable, paper Eq. 5):

1. ``f_id = F_inj(z_id, f)``; ``x_can = x + F_id(f_id) + w_exp F_exp(f_id, z_exp) + w_nf F_nf(f_id, z_nf)``
   (:class:`~avatar.models.gphm.fields.DeformationFields`, shared with the guiding model);
2. ``c = F_col(f_id)``: 32 colour channels, the first 3 RGB (no activation. Paper silent: chose none, so the
   first channels can match images in [-1, 1] directly (Eq. 14) and the other channels stay free features);
3. ``(ds, dq, do) = F_attr(f_id)`` (Eq. 11, offsets from the per-point means ``s, q, o``);
   ``scale = exp(s + ds)``, ``quat = normalize(q + dq)`` (wxyz), ``opacity = sigmoid(o + do)``. Paper silent on
   the activations: chose 3DGS's, because the paper initialises the means "following 3DGS";
4. rendering: the rigid head pose ``R, T`` (canonical -> world) comes last. It is folded into the camera
   (``viewmat @ [R | T]``), which is the same image as moving the Gaussians (rotating the means and
   quaternions) and lets the rasteriser carry the pose's gradient.

Canonical 3D landmarks ``L`` (learnable, paper 3.3) go through step 1 with their own bound features (paper
silent on the features of landmark points in the Gaussian stage: chose learnable per-landmark features,
initialised from the guiding model's SDF MLP at ``L`` as the point features are, because the Gaussian model has
no SDF MLP to query), giving the landmarks of the landmark loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avatar.errors import InputError
from avatar.models.gphm.pose import pose_to_rt
from avatar.models.gphm.sampling import fibonacci_sphere, front_cap, knn_mean_sq_distance

__all__ = [
    "GPHMOutput",
    "GaussianPoints",
    "GaussianSet",
    "activate_attributes",
    "ellipsoid_points",
    "inverse_sigmoid",
    "render_gaussian_set",
    "rigid_matrix",
]


@dataclass
class GaussianSet:
    """Canonical Gaussians of one call (``B`` samples, ``N`` Gaussians, ``K`` landmarks); the head pose is not
    applied (:func:`render_gaussian_set` applies it)."""

    means: Tensor
    """``(B, N, 3)`` canonical positions."""
    quats: Tensor
    """``(B, N, 4)`` unit quaternions, ``wxyz``."""
    scales: Tensor
    """``(B, N, 3)`` positive standard deviations along the local axes."""
    opacities: Tensor
    """``(B, N)`` in (0, 1)."""
    features: Tensor
    """``(B, N, C)`` colour features, ``C = 32`` in the paper (first 3: RGB in the [-1, 1] range of the images)."""
    landmarks: Tensor
    """``(B, K, 3)`` canonical 3D landmarks, deformed like the points."""
    expression_offsets: Tensor
    """``(B, N, 3)`` weighted expression displacements ``w_exp dx_exp`` (regularised, paper Eq. 16)."""
    non_face_offsets: Tensor
    """``(B, N, 3)`` weighted non-face displacements ``w_nf dx_nf`` (regularised, paper Eq. 16)."""

    @property
    def batch_size(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.means.shape[1])


@dataclass
class GPHMOutput:
    """A rendered :class:`GaussianSet` (channels first; ``H, W`` the feature-map size)."""

    feature_map: Tensor
    """``(B, C, H, W)`` splatted colour features (background included)."""
    image_raw: Tensor
    """``(B, 3, H, W)`` the first three channels: the coarse RGB image of Eq. 14, in [-1, 1]."""
    image: Tensor
    """``(B, 3, H u, W u)`` the refine network's image in [-1, 1] (``u = refine.upsample``)."""
    alpha: Tensor
    """``(B, 1, H, W)`` accumulated opacity (the rendered mask)."""
    depth: Tensor
    """``(B, 1, H, W)`` expected camera depth of the covered part (alpha-normalised; 0 where nothing is seen)."""
    landmarks: Tensor
    """``(B, K, 3)`` world 3D landmarks (``R L + T``), compared with the data's in the landmark loss."""
    gaussians: GaussianSet
    """The canonical set that was rendered."""


def inverse_sigmoid(p: float) -> float:
    return math.log(p / (1.0 - p))


def ellipsoid_points(n: int, semi_axes: tuple[float, float, float], *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(n, 3)`` points spread over an ellipsoid with semi-axes ``(a_x, a_y, a_z)`` (a golden-spiral sphere scaled
    per axis): the synthetic head surface a GPHM starts from when no mesh initialises it."""
    return fibonacci_sphere(n, 1.0, dtype=dtype) * torch.tensor(semi_axes, dtype=dtype)


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    p = 1.6075  # Knud Thomsen's approximation (within about 1%)
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def activate_attributes(log_scales: Tensor, rotations: Tensor, opacity_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """3DGS's activations: ``exp``, ``normalize`` (wxyz) and ``sigmoid`` of pre-activation scales ``(..., 3)``,
    rotations ``(..., 4)`` and opacities ``(...)``."""
    quats = rotations / rotations.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.exp(log_scales), quats, torch.sigmoid(opacity_logits)


class GaussianPoints(nn.Module):
    """The per-point parameters of the Gaussian model (``N`` points, ``C`` bound feature channels, ``K`` landmarks):
    ``means (N, 3)``, ``point_features (N, C)``, ``log_scales (N, 3)``, ``rotations (N, 4)`` (wxyz, unnormalised),
    ``opacity_logits (N,)``, ``landmarks (K, 3)``, ``landmark_features (K, C)``.

    A fresh set lies on a synthetic head surface (:func:`ellipsoid_points`) with zero features and attributes as
    3DGS initialises them (scale: the point spacing, identity rotation, opacity ``initial_opacity``); the guiding
    mesh (:meth:`set_points`) or a template mesh replaces it before training, as the paper does.
    """

    def __init__(self, num_points: int, feature_dim: int, num_landmarks: int, semi_axes: tuple[float, float, float],
                 initial_opacity: float) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.initial_opacity = initial_opacity
        spacing = math.sqrt(_ellipsoid_area(*semi_axes) / num_points)
        self.means = nn.Parameter(ellipsoid_points(num_points, semi_axes))
        self.point_features = nn.Parameter(torch.zeros(num_points, feature_dim))
        self.log_scales = nn.Parameter(torch.full((num_points, 3), math.log(spacing)))
        self.rotations = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(num_points, 1))
        self.opacity_logits = nn.Parameter(torch.full((num_points,), inverse_sigmoid(initial_opacity)))
        # paper: landmarks start at the dataset's mean landmarks (set_landmarks); a cap on the face side until then
        self.landmarks = nn.Parameter(front_cap(num_landmarks, 1.0) * torch.tensor(semi_axes))
        self.landmark_features = nn.Parameter(torch.zeros(num_landmarks, feature_dim))

    @property
    def num_points(self) -> int:
        return int(self.means.shape[0])

    @torch.no_grad()
    def set_points(self, positions: Tensor, features: Tensor | None = None) -> None:
        """Replace the point cloud: ``positions (N, 3)``, ``features (N, C)`` (zeros when ``None``, as the paper's
        FLAME initialisation does); attributes as 3DGS initialises them (scale ``sqrt`` of the mean squared
        distance to the 3 nearest points, identity rotation, opacity ``initial_opacity``). Creates new
        ``nn.Parameter`` objects: build optimisers afterwards."""
        c = self.feature_dim
        if positions.dim() != 2 or positions.shape[1] != 3 or positions.shape[0] < 2:
            raise InputError(f"the point cloud is (N, 3) with N >= 2, got {tuple(positions.shape)}")
        n = positions.shape[0]
        if features is None:
            features = positions.new_zeros(n, c)
        if tuple(features.shape) != (n, c):
            raise InputError(f"point features must be ({n}, {c}) to match the points and the config, got "
                             f"{tuple(features.shape)}")
        ref = self.means
        positions = positions.detach().to(ref)
        self.means = nn.Parameter(positions.clone())
        self.point_features = nn.Parameter(features.detach().to(ref).clone())
        dist2 = knn_mean_sq_distance(positions, k=3).clamp(min=1e-7)
        self.log_scales = nn.Parameter(torch.log(torch.sqrt(dist2)).unsqueeze(-1).repeat(1, 3))
        self.rotations = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).to(ref).repeat(n, 1))
        self.opacity_logits = nn.Parameter(torch.full((n,), inverse_sigmoid(self.initial_opacity)).to(ref))

    @torch.no_grad()
    def resize(self, num_points: int) -> None:
        """Re-create the per-point parameters with ``num_points`` rows (their values are overwritten next, e.g. by a
        strict load)."""
        ref = self.means
        self.means = nn.Parameter(ref.new_zeros(num_points, 3))
        self.point_features = nn.Parameter(ref.new_zeros(num_points, self.feature_dim))
        self.log_scales = nn.Parameter(ref.new_zeros(num_points, 3))
        self.rotations = nn.Parameter(ref.new_zeros(num_points, 4))
        self.opacity_logits = nn.Parameter(ref.new_zeros(num_points))


def rigid_matrix(pose: Tensor | tuple[Tensor, Tensor], batch_size: int) -> Tensor:
    """A head pose as ``(B, 4, 4)``: from ``(R (B, 3, 3), T (B, 3))``, ``(B, 4, 4)`` or ``(B, 6)``
    [axis-angle, translation]. ``R`` may carry a uniform scale (a similarity ``s R``): the rasteriser transforms
    covariances with the full block, so scaled poses render correctly."""
    if isinstance(pose, tuple | list):
        if len(pose) != 2:
            raise InputError("a head pose given as a tuple is (R (B, 3, 3), T (B, 3))")
        rot, trans = pose
        if rot.shape != (batch_size, 3, 3) or trans.shape != (batch_size, 3):
            raise InputError(f"a head pose (R, T) is R ({batch_size}, 3, 3) and T ({batch_size}, 3), got "
                             f"{tuple(rot.shape)} and {tuple(trans.shape)}")
    else:
        rot, trans = pose_to_rt(pose, batch_size)
    top = torch.cat([rot, trans.unsqueeze(-1)], dim=-1)
    bottom = torch.eye(4, dtype=top.dtype, device=top.device)[3:].expand(batch_size, 1, 4)  # made on the device
    return torch.cat([top, bottom], dim=1)


def render_gaussian_set(gaussians: GaussianSet, pose: Tensor | tuple[Tensor, Tensor], Ks: Tensor,  # noqa: N803
                        image_size: int | tuple[int, int], refine: Callable[[Tensor], Tensor], *, viewmats: Tensor | None = None,
                        background: Tensor | None = None, backend: str = "auto", near_plane: float = 0.01,
                        far_plane: float = 1e10, check_values: bool = True) -> GPHMOutput:
    """Pose, splat and refine a :class:`GaussianSet` (one camera per sample).

    Args:
        gaussians: canonical Gaussians, batch ``B``.
        pose: the head pose (canonical -> world), ``(R (B, 3, 3), T (B, 3))``, ``(B, 4, 4)`` or ``(B, 6)``.
        Ks: ``(B, 3, 3)`` pixel intrinsics of the feature map.
        image_size: feature-map size ``S`` or ``(H, W)``.
        refine: the refine network, or any callable feature map -> image.
        viewmats: ``(B, 4, 4)`` world -> camera, OpenCV axes; ``None``: identity (the world is the camera frame).
        background: ``(B, C)`` or ``(C,)`` feature behind the head (``None``: zeros).
        backend: :func:`avatar.render.gaussians.rasterize_gaussians` backend.
        check_values: :func:`~avatar.render.gaussians.rasterize_gaussians`'s check of the scales and opacities
            (one device synchronisation; the fast inference path skips it: its values are activated).
    """
    from avatar.render.gaussians import rasterize_gaussians

    bsz = gaussians.batch_size
    h, w = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    head = rigid_matrix(pose, bsz).to(gaussians.means)
    if viewmats is None:
        viewmats = torch.eye(4, dtype=head.dtype, device=head.device).expand(bsz, 4, 4)
    if viewmats.shape != (bsz, 4, 4) or Ks.shape != (bsz, 3, 3):
        raise InputError(f"cameras are viewmats ({bsz}, 4, 4) and Ks ({bsz}, 3, 3), got {tuple(viewmats.shape)} and "
                         f"{tuple(Ks.shape)}")
    combined = viewmats.to(head) @ head
    if background is not None and background.dim() == 1:
        background = background.expand(bsz, -1)
    out = rasterize_gaussians(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
                              gaussians.features, combined, Ks.to(head), w, h, background=background,
                              near_plane=near_plane, far_plane=far_plane, return_depth=True,
                              backend=backend, check_values=check_values)  # type: ignore[arg-type]
    assert out.depth is not None
    covered = out.alpha > 1e-6
    depth = torch.where(covered, out.depth / out.alpha.clamp_min(1e-6), torch.zeros_like(out.depth))
    landmarks = gaussians.landmarks @ head[:, :3, :3].transpose(1, 2) + head[:, None, :3, 3]
    return GPHMOutput(feature_map=out.features, image_raw=out.features[:, :3], image=refine(out.features),
                      alpha=out.alpha, depth=depth, landmarks=landmarks, gaussians=gaussians)
