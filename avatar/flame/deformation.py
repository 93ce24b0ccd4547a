"""Head-pose-only FLAME deformation field of Portrait4D's reconstructor (``FlameDeformationModuleOnlyHead``).

What it computes, for target-space sample points ``x_t (B, P, 3)`` (world units: FLAME x3, origin at the
canonical neck joint):

1. Two FLAME meshes, both reduced to the simplified mesh (``simplify_baricentric2.npy``: ``S = 730``
   vertices, each a barycentric mix of 3 FLAME vertices, ``T = 1394`` faces):
   *target* = FLAME(shape, exp, [neck, jaw], eyes) and *canonical* = FLAME(shape, exp, [0, jaw], eyes).
2. A GNARF surface field on a voxel grid: each grid point ``g`` is attached to its closest target triangle
   (pytorch3d point-to-face squared distance ``d``, min triangle area 5e-3), with the *unclamped*
   plane-projection barycentrics ``w`` of that triangle, and mapped to
   ``g_c = sum(w * tri_c) + <g - sum(w * tri_t), n_t> n_c`` (``n`` unit face normals). The stored field is
   the offset ``g_c - g``.
3. Grids: ``R^3`` cell centres ``((i + 0.5) / R - 0.5) * box_warp`` (``indexing='ij'``, so the tensor
   layout is ``(B, 3, R_x, R_y, R_z)``). With smoothing (the default): an ``R = 24`` field with its squared
   distances, and an ``R = 8`` field box-filtered twice (3x3x3 mean, replicate padding). Without smoothing
   a single ``R = 16`` field is used.
4. Sampling (trilinear ``grid_sample``, ``align_corners=True``, zero padding outside the grid's first/last
   cell centres): ``w = exp(-1000 * relu(d(x) - smooth_th))``, ``x_c = x_t + w * off24(x) + (1 - w) *
   off8_smooth(x)``. ``smooth_th = 3e-3`` is compared with the interpolated *squared* distance.

When no head pose is given the warp is the identity (the official field is then the identity up to
float rounding, since target and canonical meshes coincide).

Buffers carry the official names so a converted checkpoint (``deformer.flame_deform.*``) loads directly;
see :data:`DEFORMER_BUFFERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import StateDictMismatchError

from .flame import Flame, flame_buffers_from_generic
from .geometry import (
    DEFAULT_MIN_TRIANGLE_AREA,
    default_search,
    face_normals,
    nearest_in_chunk,
    point_to_face_coord,
)

__all__ = [
    "DEFORMER_BUFFERS",
    "FlameHeadPoseDeformer",
    "HeadPoseField",
    "box_smooth3d",
    "build_deformer_buffers",
    "get_face_tri",
    "grid_points",
    "sample_grid",
    "world2grid",
]

# Buffers registered by the official FlameDeformationModule, in registration order (its FLAME sub-module's
# buffers live under ``flame_model.``).
DEFORMER_BUFFERS = (
    "masked_faces",
    "masked_eye_faces",
    "masked_lips_faces",
    "masked_face_wo_eye_faces",
    "masked_noinmouth_faces",
    "canonical_shape",
    "canonical_shape_face_only",
    "simplify_idxs",
    "simplify_baris",
    "simplify_faces",
    "simplify_faces_region_idxs",
    "canonical_shape_coarse",
    "eye_idxs",
    "face_idxs",
    "lips_idxs",
    "noinmouth_idxs",
    "vertices_region_idxs",
    "dynamic_idxs",
    "smallface_idxs",
    "masked_smallface_faces",
    "eyelids_idxs",
    "masked_eyelids_faces",
    "if_eye_face_simplify",
)
_REQUIRED = ("simplify_idxs", "simplify_baris", "simplify_faces")
FLAME_SCALE = 3.0
DEFAULT_BOX_WARP = 1.3  # Portrait4D passes rendering_kwargs['box_warp'] (the class default is 1.2)


def _tensor(value: Any) -> Tensor:
    """To a CPU tensor, keeping the numpy dtype (as ``torch.from_numpy`` would)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(value)))


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


# ---------------------------------------------------------------------------------------------------------
# Asset processing (construction time only)


def get_face_tri(mask: Any, faces: Any) -> Tensor:
    """Faces ``(F, 3)`` whose 3 vertices are all in ``mask (M,)``, re-indexed into ``mask`` -> ``(F', 3)``.

    Same result as the reference helper: faces keep their order, a vertex listed twice in ``mask`` maps to
    its last position.
    """
    mask_np, faces_np = _numpy(mask).astype(np.int64).reshape(-1), _numpy(faces).astype(np.int64)
    size = int(max(mask_np.max(initial=-1), faces_np.max(initial=-1))) + 1
    lookup = np.full(size, -1, dtype=np.int64)
    uniq, first_in_reversed = np.unique(mask_np[::-1], return_index=True)
    lookup[uniq] = len(mask_np) - 1 - first_in_reversed
    mapped = lookup[faces_np]
    return torch.from_numpy(np.ascontiguousarray(mapped[(mapped >= 0).all(axis=1)])).reshape(-1, 3)


def _canonical_params(canonical: Mapping[str, Any] | None, n_shape: int, n_exp: int) -> tuple[Tensor, ...]:
    """Canonical (shape, exp, pose) rows, zero-padded to the model sizes. Default: zeros, jaw open 0.3."""
    canonical = canonical or {}
    pose_default = np.array([0, 0, 0, 0.3, 0, 0], dtype=np.float32)
    out = []
    for key, size, default in (("shape", n_shape, None), ("exp", n_exp, None), ("pose", 6, pose_default)):
        value = canonical.get(key, default)
        row = torch.zeros(1, size) if value is None else torch.as_tensor(
            _numpy(value).astype(np.float32)).reshape(1, -1)
        if row.shape[1] < size:
            row = torch.cat([row, torch.zeros([1, size - row.shape[1]])], dim=-1)
        out.append(row)
    return tuple(out)


def _mask_buffers(masks: Mapping[str, Any], faces: Tensor, canonical_shape: Tensor) -> dict[str, Tensor]:
    face_mask = np.sort(np.unique(np.concatenate(
        [_numpy(masks["face"]), _numpy(masks["right_eyeball"]), _numpy(masks["left_eyeball"])], 0)))
    eye_mask = np.sort(np.unique(np.concatenate([_numpy(masks["right_eyeball"]), _numpy(masks["left_eyeball"])], 0)))
    face_wo_eye = np.sort(np.unique(_numpy(masks["face"])))
    return {
        "masked_faces": get_face_tri(face_mask, faces),
        "masked_eye_faces": get_face_tri(eye_mask, faces),
        "masked_lips_faces": get_face_tri(masks["lips"], faces),
        "masked_face_wo_eye_faces": get_face_tri(face_wo_eye, faces),
        "masked_noinmouth_faces": get_face_tri(masks["noinmouth"], faces),
        "canonical_shape": canonical_shape,
        "canonical_shape_face_only": canonical_shape[:, torch.from_numpy(face_mask)],
    }


def _simplified(vertices: Tensor, idxs: Tensor, baris: Tensor) -> Tensor:
    """``(B, V, 3)`` FLAME vertices -> ``(B, S, 3)`` simplified-mesh vertices."""
    return torch.sum(vertices[:, idxs] * baris.unsqueeze(0).unsqueeze(-1), dim=-2)


def _addition_buffers(addition: Mapping[str, Any], masks: Mapping[str, Any] | None, faces: Tensor,
                      simplify: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {"eye_idxs": _tensor(addition["eye_idxs"]), "face_idxs": _tensor(addition["face_idxs"])}
    if masks is not None:
        out["lips_idxs"] = _tensor(masks["lips"])
        out["noinmouth_idxs"] = _tensor(masks["noinmouth"])
    out["vertices_region_idxs"] = _tensor(addition["vertices_region_idxs"])
    out["dynamic_idxs"] = _tensor(addition["dynamic_idxs"])
    out["smallface_idxs"] = _tensor(addition["smallface_idxs"])
    out["masked_smallface_faces"] = get_face_tri(addition["smallface_idxs"], faces)
    out["eyelids_idxs"] = _tensor(addition["eyelids_idxs"])
    out["masked_eyelids_faces"] = get_face_tri(addition["eyelids_idxs"], faces)
    eye_mask = _tensor(addition["eye_mask"])
    s_faces = simplify["simplify_faces"]
    corner_mask = eye_mask[simplify["simplify_idxs"][s_faces]].reshape(len(s_faces), -1)
    out["if_eye_face_simplify"] = torch.sum(corner_mask, -1) != 0
    return out


@torch.no_grad()
def build_deformer_buffers(
    generic_model: Mapping[str, Any],
    simplify: Mapping[str, Any],
    masks: Mapping[str, Any] | None = None,
    addition: Mapping[str, Any] | None = None,
    landmarks: Mapping[str, Any] | None = None,
    canonical: Mapping[str, Any] | None = None,
    flame_full: bool = True,
    scale: float = FLAME_SCALE,
) -> dict[str, Tensor]:
    """Process upstream assets the way the official deformer constructor does.

    Args:
        generic_model: ``generic_model.pkl`` fields (``f``, ``v_template``, ``shapedirs``, ...).
        simplify: ``simplify_baricentric2.npy`` fields ``idxs (S, 3)``, ``baris (S, 3)``, ``faces (T, 3)``,
            ``coarse_face_region_idxs (T, 50)``.
        masks: ``FLAME_masks.pkl`` (``face``, ``left_eyeball``, ``right_eyeball``, ``lips``, ``noinmouth``);
            optional, only needed for state-dict completeness.
        addition: ``flame_addition_info_new_smallface.npy`` fields; optional likewise.
        landmarks: ``landmark_embedding_with_eyes.npy`` fields; optional.
        canonical: ``shape`` / ``exp`` / ``pose`` rows (``ca_*.txt``); default zeros with jaw 0.3.
        flame_full: keep 300 shape + 100 expression components (Portrait4D) instead of 100 + 50.
        scale: FLAME scale factor (3).

    Returns:
        Flat name -> tensor dict: FLAME buffers under ``flame_model.`` and the deformer buffers (the subset
        of :data:`DEFORMER_BUFFERS` the given assets allow).
    """
    flame = Flame(flame_buffers_from_generic(generic_model, landmarks, flame_full))
    flame.rescale_(scale)
    n_exp = 100 if flame_full else 50
    ca_shape, ca_exp, ca_pose = _canonical_params(canonical, flame.num_betas - n_exp, n_exp)
    posed = flame(ca_shape, ca_exp, ca_pose, with_landmarks=False)
    neck = posed.joints[:, 1:2]
    canonical_shape = posed.vertices - neck
    flame.translate_(neck[0])
    faces = flame.faces_tensor
    out: dict[str, Tensor] = {}
    if masks is not None:
        out.update(_mask_buffers(masks, faces, canonical_shape))
    s = {
        "simplify_idxs": _tensor(simplify["idxs"]),
        "simplify_baris": _tensor(simplify["baris"]),
        "simplify_faces": _tensor(simplify["faces"]),
        "simplify_faces_region_idxs": _tensor(simplify["coarse_face_region_idxs"]),
    }
    out.update(s)
    out["canonical_shape_coarse"] = _simplified(canonical_shape, s["simplify_idxs"], s["simplify_baris"])
    if addition is not None:
        out.update(_addition_buffers(addition, masks, faces, s))
    out.update({f"flame_model.{k}": v for k, v in flame.state_dict().items()})
    return out


# ---------------------------------------------------------------------------------------------------------
# Grid helpers


def grid_points(resolution: int, box_warp: float, device: torch.device | str | None = None) -> Tensor:
    """``(R^3, 3)`` cell centres ``((i + 0.5) / R - 0.5) * box_warp``, flattened in ``ij`` order."""
    ar = torch.arange(resolution, dtype=torch.float32, device=device)
    grid = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1) * (1.0 / resolution)
    grid = (grid + (0.5 / resolution) - 0.5) * box_warp
    return grid.reshape(resolution**3, 3)


def world2grid(points: Tensor, grids: Tensor) -> Tensor:
    """World ``(B, P, 3)`` -> normalised ``(B, P, 3)``, first/last cell centre of ``grids (B, 3, R, R, R)``
    at -1/+1 (the ``align_corners=True`` convention)."""
    coords = []
    for axis in range(3):
        last = grids[:, axis, None, -1, -1, -1]  # (B, 1)
        first = grids[:, axis, None, 0, 0, 0]
        coords.append((points[..., axis] - last) / (last - first) * 2 + 1)
    return torch.stack(coords, dim=-1)


def sample_grid(field: Tensor, grids: Tensor, points: Tensor) -> Tensor:
    """Trilinear lookup of ``field (B, C, R, R, R)`` (laid out like ``grids``) at ``points (B, P, 3)``.

    Zero outside the grid; returns ``(B, P, C)``.
    """
    norm = world2grid(points, grids)
    norm = torch.flip(norm.reshape(norm.shape[0], norm.shape[1], 1, 1, 3), dims=[-1])  # (x, y, z) -> (W, H, D)
    out = F.grid_sample(field, norm, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(field.shape[0], field.shape[1], points.shape[1]).permute(0, 2, 1)


def box_smooth3d(field: Tensor, passes: int = 2) -> Tensor:
    """``passes`` x (replicate pad 1 + 3x3x3 mean, per channel) on ``(B, C, R, R, R)``."""
    channels = field.shape[1]
    kernel = torch.ones([channels, 1, 3, 3, 3], device=field.device, dtype=field.dtype) / 27
    for _ in range(passes):
        field = F.conv3d(F.pad(field, (1, 1, 1, 1, 1, 1), "replicate"), kernel, groups=channels)
    return field


@dataclass
class HeadPoseField:
    """Precomputed warp for one set of FLAME parameters.

    grids/offsets: ``(B, 3, R, R, R)`` cell centres and canonical-minus-target offsets of the fine grid;
    dists: ``(B, 1, R, R, R)`` squared distances to the target surface (``None`` without smoothing);
    coarse_grids/coarse_offsets: the smoothed ``8^3`` field (``None`` without smoothing).
    """

    grids: Tensor
    offsets: Tensor
    dists: Tensor | None = None
    coarse_grids: Tensor | None = None
    coarse_offsets: Tensor | None = None


# ---------------------------------------------------------------------------------------------------------


class FlameHeadPoseDeformer(nn.Module):
    """Backward warp from the posed (target) space to the canonical (zero-neck-pose) space.

    Args:
        buffers: flat dict as returned by :func:`build_deformer_buffers` or taken from a converted
            checkpoint with the ``deformer.flame_deform.`` prefix stripped: ``flame_model.*`` FLAME buffers
            (already scaled x3 and re-centred) and at least ``simplify_idxs``, ``simplify_baris``,
            ``simplify_faces``; the other :data:`DEFORMER_BUFFERS` are registered when present.
        box_warp: side of the cube covered by the grids (Portrait4D: 1.3).
        min_triangle_area: the point-to-face area threshold (5e-3).
        max_pairs: memory bound of the closest-triangle search (``None``: by device, see ``closest_triangles``).
    """

    simplify_idxs: Tensor
    simplify_baris: Tensor
    simplify_faces: Tensor

    def __init__(
        self,
        buffers: Mapping[str, Any],
        box_warp: float = DEFAULT_BOX_WARP,
        min_triangle_area: float = DEFAULT_MIN_TRIANGLE_AREA,
        max_pairs: int | None = None,
    ) -> None:
        super().__init__()
        missing = [k for k in _REQUIRED if k not in buffers]
        if missing:
            raise StateDictMismatchError(f"deformer buffers missing: {missing}")
        for name in DEFORMER_BUFFERS:
            if name in buffers:
                self.register_buffer(name, _tensor(buffers[name]))
        prefix = "flame_model."
        self.flame_model = Flame({k[len(prefix):]: v for k, v in buffers.items() if k.startswith(prefix)})
        self.box_warp = float(box_warp)
        self.min_triangle_area = float(min_triangle_area)
        self.max_pairs = max_pairs
        # the closest-triangle search; None: by device (geometry.default_search: the Triton kernel on CUDA)
        self.search: Callable[..., tuple[Tensor, Tensor]] | None = None

    @classmethod
    def from_assets(cls, box_warp: float = DEFAULT_BOX_WARP, **assets: Any) -> FlameHeadPoseDeformer:
        """Build from upstream assets; keyword arguments as :func:`build_deformer_buffers`."""
        return cls(build_deformer_buffers(**assets), box_warp=box_warp)

    def compile_search(self, mode: str | None = None) -> FlameHeadPoseDeformer:
        """``torch.compile`` the chunked PyTorch closest-triangle search (one fused kernel per chunk instead of a
        chain of element-wise ones); each new chunk shape compiles once. Where Triton runs (CUDA) the default
        search is already one fused kernel, without compilation."""
        self.search = torch.compile(nearest_in_chunk, mode=mode, dynamic=False)
        return self

    # -----------------------------------------------------------------------------------------------------

    def simplify(self, vertices: Tensor) -> Tensor:
        """``(B, V, 3)`` FLAME vertices -> ``(B, S, 3)`` simplified-mesh vertices."""
        return _simplified(vertices, self.simplify_idxs, self.simplify_baris)

    @torch.no_grad()
    def head_pose_meshes(
        self, shape: Tensor, exp: Tensor, pose: Tensor, eye_pose: Tensor | None, use_rotation_limits: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Simplified target mesh (full pose) and canonical mesh (neck rotation zeroed), each ``(B, S, 3)``."""
        target = self.flame_model(shape, exp, pose, eye_pose, use_rotation_limits, with_landmarks=False)
        no_neck = torch.cat([torch.zeros_like(pose[..., :3]), pose[..., 3:]], dim=-1)
        canonical = self.flame_model(shape, exp, no_neck, eye_pose, use_rotation_limits, with_landmarks=False)
        return self.simplify(target.vertices), self.simplify(canonical.vertices)

    @torch.no_grad()
    def surface_field(self, points: Tensor, target: Tensor, canonical: Tensor) -> tuple[Tensor, Tensor]:
        """GNARF surface field of ``points (B, P, 3)`` between simplified meshes ``(B, S, 3)``.

        Returns offsets ``(B, P, 3)`` (canonical position minus ``points``) and squared distances ``(B, P)``.
        """
        faces = self.simplify_faces
        search = self.search if self.search is not None else default_search(points.device)
        dists, idxs, bary = point_to_face_coord(points, target, faces, self.min_triangle_area, self.max_pairs,
                                                search)
        close_faces = faces[idxs]  # (B, P, 3)
        batch = torch.arange(points.shape[0], device=points.device).view(-1, 1, 1)
        tris_t = target[batch, close_faces]  # (B, P, 3, 3)
        tris_c = canonical[batch, close_faces]
        surface_c = torch.sum(tris_c * bary.unsqueeze(-1), dim=-2)
        offset = points - torch.sum(tris_t * bary.unsqueeze(-1), dim=-2)
        offset = torch.sum(offset * face_normals(tris_t), dim=-1, keepdim=True) * face_normals(tris_c)
        return surface_c + offset - points, dists

    @torch.no_grad()
    def grid_deformation(self, target: Tensor, canonical: Tensor, resolution: int) -> tuple[Tensor, Tensor, Tensor]:
        """Surface field on the ``resolution^3`` grid.

        Returns grids ``(B, 3, R, R, R)``, offsets ``(B, 3, R, R, R)`` and squared distances ``(B, 1, R, R, R)``.
        """
        batch, r = target.shape[0], resolution
        grids = grid_points(r, self.box_warp, target.device).unsqueeze(0).repeat(batch, 1, 1)  # (B, R^3, 3)
        offsets, dists = self.surface_field(grids, target, canonical)
        return (grids.permute(0, 2, 1).reshape(-1, 3, r, r, r), offsets.permute(0, 2, 1).reshape(-1, 3, r, r, r),
                dists.reshape(-1, 1, r, r, r))

    @torch.no_grad()
    def precompute(
        self,
        shape_params: Tensor,
        exp_params: Tensor,
        pose_params: Tensor | None,
        eye_pose_params: Tensor | None = None,
        use_rotation_limits: bool = False,
        smooth_headpose: bool = True,
    ) -> HeadPoseField | None:
        """Grid fields for one set of FLAME parameters (``(B, 300)``, ``(B, 100)``, ``(B, 6)``, ``(B, 6)``).

        ``None`` (identity warp) when ``pose_params`` is ``None``.
        """
        if pose_params is None:
            return None
        target, canonical = self.head_pose_meshes(shape_params, exp_params, pose_params, eye_pose_params,
                                                  use_rotation_limits)
        if not smooth_headpose:
            grids, offsets, _ = self.grid_deformation(target, canonical, 16)
            return HeadPoseField(grids, offsets)
        grids, offsets, dists = self.grid_deformation(target, canonical, 24)
        coarse_grids, coarse_offsets, _ = self.grid_deformation(target, canonical, 8)
        return HeadPoseField(grids, offsets, dists, coarse_grids, box_smooth3d(coarse_offsets))

    @staticmethod
    @torch.no_grad()
    def warp(field: HeadPoseField | None, x_t: Tensor, smooth_th: float = 3e-3) -> Tensor:
        """Apply a precomputed field to ``x_t (B, P, 3)`` -> canonical points ``(B, P, 3)`` (detached)."""
        if field is None:
            return x_t.detach().clone()
        offset = sample_grid(field.offsets, field.grids, x_t)
        if field.dists is None or field.coarse_grids is None or field.coarse_offsets is None:
            return (offset + x_t).detach()
        smooth = sample_grid(field.coarse_offsets, field.coarse_grids, x_t)
        dists = sample_grid(field.dists, field.grids, x_t)  # (B, P, 1)
        weights = torch.exp(-1000 * F.relu(dists - smooth_th))
        return (weights * offset + (1 - weights) * smooth + x_t).detach()

    def forward(
        self,
        x_t: Tensor,
        shape_params: Tensor,
        exp_params: Tensor,
        pose_params: Tensor | None,
        eye_pose_params: Tensor | None = None,
        use_rotation_limits: bool = False,
        smooth_headpose: bool = True,
        smooth_th: float = 3e-3,
    ) -> Tensor:
        """Target-space points ``x_t (B, P, 3)`` -> canonical-space points ``(B, P, 3)``.

        Args:
            shape_params ``(B, 300)``, exp_params ``(B, 100)``, pose_params ``(B, 6)`` (neck + jaw; ``None``
            gives the identity), eye_pose_params ``(B, 6)``.
        """
        field = self.precompute(shape_params, exp_params, pose_params, eye_pose_params, use_rotation_limits,
                                smooth_headpose)
        return self.warp(field, x_t, smooth_th)
