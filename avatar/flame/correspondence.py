"""FLAME correspondence ("uv") map: the third input of Portrait4D's and GenHead's discriminator.

Official source: ``training/deformer/deformation.py::FlameDeformationModule.renderer`` with its defaults
``only_face=True, cull_backfaces=True, fov=12`` (called as ``G.deformer.renderer(shape, exp, pose, eye_pose, c,
half_size=img_resolution // 2)`` in ``loss_recon_v1/v2.run_G``, ``triplane_reconstruct.py`` and GenHead), drawn
by ``training/deformer/mesh_renderer.py::MeshRenderer`` with pytorch3d; here with
:func:`avatar.render.rasterize.render_mesh` (plain PyTorch, same pixel alignment, see that module).

What is drawn:

* **Mesh**: the posed FLAME mesh ``FLAME(shape, exp, pose = [neck, jaw], eye_pose)`` of the deformer's FLAME
  (scaled x3 and re-centred on the canonical neck joint), restricted to the *face + eyeball* vertices
  ``face_mask = sort(unique(masks['face'] + masks['right_eyeball'] + masks['left_eyeball']))`` of
  ``FLAME_masks.pkl``, with the triangles whose three vertices are all in it (``masked_faces``, re-indexed).
* **Feature** per vertex: the *canonical* mesh ``canonical_shape`` (FLAME of the ``ca_shape/ca_exp/ca_pose``
  parameters: zeros with jaw opened 0.3, scaled x3, minus the canonical neck joint; a deformer buffer) divided
  by ``3 * 0.2``; eyeball vertices (``right_eyeball`` + ``left_eyeball``) get ``z - 0.5``.
* **Camera**: the 25-number label's ``cam2world`` (inverted as ``[R^T, -R^T t]``); the projection is the fixed
  ``FoVPerspectiveCameras(fov=12 deg, znear=0.1, zfar=10)``, *not* the label's intrinsics (the official code
  ignores them for the map; they only scale ``landmarks_2d``). At the Portrait4D focal ``4.7572`` the two agree.
* **Output** ``uv (B, 3, 2*half_size, 2*half_size)`` float, 0 on the background (``mask * image``), values about
  ``[-0.5, 0.5]`` (plus the eyeball offset); the discriminator concatenates it unchanged as channels 6-8 of its
  10-channel 512 input (it resizes only when the size differs). Also the mask ``(B, 1, H, W)`` (1 where the face
  is visible), the depth ``(B, 1, H, W)`` (``-z`` camera, 0 on the background) and ``landmarks_2d (B, L, 2)``:
  the 3D FLAME landmarks projected with the label intrinsics times ``2 * half_size`` **with y pointing up**
  (``v = cy + fy y / Z``, as the official code, whose consumers call ``estimate_norm_pdfgc(reverse_y=True)``),
  ``None`` when the FLAME model has no landmark buffers.

Everything runs without gradients, as in the official code (``@torch.no_grad``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from avatar.errors import StateDictMismatchError
from avatar.render.camera import PORTRAIT4D_FOV_DEG, invert_rigid
from avatar.render.rasterize import DEFAULT_MAX_CANDIDATES, render_mesh

from .deformation import FlameHeadPoseDeformer, build_deformer_buffers, get_face_tri
from .flame import Flame

__all__ = ["CorrespondenceMap", "FlameCorrespondenceRenderer", "correspondence_vertex_sets"]

UV_SCALE = 3 * 0.2
"""Features are ``canonical_shape / (3 * 0.2)`` ("rescale coordinates to increase image contrast")."""
EYEBALL_Z_OFFSET = 0.5
"""Subtracted from the eyeballs' z feature ("change eye region color")."""


class CorrespondenceMap(NamedTuple):
    """uv ``(B, 3, H, W)`` (0 on the background), mask ``(B, 1, H, W)``, depth ``(B, 1, H, W)``, landmarks_2d
    ``(B, L, 2)`` pixels with y up (or ``None``): the official ``renderer`` return ``(uv, mask, depth,
    landmarks_2d)``."""

    uv: Tensor
    mask: Tensor
    depth: Tensor
    landmarks_2d: Tensor | None


def _indices(value: Any) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    return array.astype(np.int64).reshape(-1)


def correspondence_vertex_sets(masks: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """``(face_mask, eye_mask)`` vertex indices from ``FLAME_masks.pkl`` fields, as the official constructor:
    ``sort(unique(face + right_eyeball + left_eyeball))`` and ``sort(unique(right_eyeball + left_eyeball))``."""
    face = np.sort(np.unique(np.concatenate(
        [_indices(masks["face"]), _indices(masks["right_eyeball"]), _indices(masks["left_eyeball"])], 0)))
    eye = np.sort(np.unique(np.concatenate([_indices(masks["right_eyeball"]), _indices(masks["left_eyeball"])], 0)))
    return torch.from_numpy(face), torch.from_numpy(eye)


class FlameCorrespondenceRenderer(nn.Module):
    """Renders the official FLAME correspondence map (``FlameDeformationModule.renderer``, ``only_face=True``).

    Args:
        flame: the deformer's FLAME (scaled x3, re-centred), e.g. ``FlameHeadPoseDeformer.flame_model``; it is
            registered as a submodule (shared, not copied, when taken from a deformer).
        canonical_shape: ``(1, V, 3)`` or ``(V, 3)`` canonical vertices (deformer buffer ``canonical_shape``).
        face_vertices: ``(M,)`` face + eyeball vertex indices (see :func:`correspondence_vertex_sets`).
        eye_vertices: ``(E,)`` eyeball vertex indices.
        faces: ``(F', 3)`` triangles indexing ``face_vertices`` (buffer ``masked_faces``); computed with
            :func:`~avatar.flame.deformation.get_face_tri` when ``None``.
        fov_deg: field of view of the official ``FoVPerspectiveCameras`` (12).
        znear: its near plane (0.1).
        max_candidates: rasteriser chunk size (memory bound).

    Buffers: ``face_vertex_idx (M,)``, ``masked_faces (F', 3)``, ``vertex_features (M, 3)``.
    """

    face_vertex_idx: Tensor
    masked_faces: Tensor
    vertex_features: Tensor

    def __init__(
        self,
        flame: Flame,
        canonical_shape: Tensor,
        face_vertices: Tensor | np.ndarray,
        eye_vertices: Tensor | np.ndarray,
        faces: Tensor | None = None,
        fov_deg: float = PORTRAIT4D_FOV_DEG,
        znear: float = 0.1,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> None:
        super().__init__()
        self.flame = flame
        face_idx = torch.as_tensor(_indices(face_vertices))
        eye_idx = torch.as_tensor(_indices(eye_vertices))
        canonical = torch.as_tensor(canonical_shape).detach().reshape(-1, 3).float()
        num_vertices = int(flame.v_template.shape[0])
        if canonical.shape[0] != num_vertices:
            raise StateDictMismatchError(
                f"canonical_shape has {canonical.shape[0]} vertices, the FLAME model {num_vertices}")
        if face_idx.numel() and (int(face_idx.max()) >= num_vertices or int(face_idx.min()) < 0):
            raise StateDictMismatchError("face vertex indices out of range of the FLAME model")
        if not bool(torch.isin(eye_idx, face_idx).all()):
            raise StateDictMismatchError("eyeball vertices must be part of the face vertex set")
        features = canonical / UV_SCALE
        features[eye_idx, 2] = features[eye_idx, 2] - EYEBALL_Z_OFFSET
        if faces is None:
            faces = get_face_tri(face_idx, flame.faces_tensor)
        faces = torch.as_tensor(faces).long().reshape(-1, 3)
        if faces.numel() and int(faces.max()) >= face_idx.numel():
            raise StateDictMismatchError("masked_faces index past the face vertex set")
        self.register_buffer("face_vertex_idx", face_idx)
        self.register_buffer("masked_faces", faces)
        self.register_buffer("vertex_features", features[face_idx].contiguous())
        self.fov_deg = float(fov_deg)
        self.znear = float(znear)
        self.max_candidates = int(max_candidates)

    # ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_buffers(cls, buffers: Mapping[str, Any], masks: Mapping[str, Any], **kwargs: Any
                     ) -> FlameCorrespondenceRenderer:
        """From deformer buffers (:func:`~avatar.flame.deformation.build_deformer_buffers` output, or a converted
        checkpoint's ``deformer.flame_deform.*`` with the prefix stripped: ``flame_model.*``, ``canonical_shape``
        and, if present, ``masked_faces``) and the ``FLAME_masks.pkl`` fields (which are not in the checkpoint)."""
        if "canonical_shape" not in buffers:
            raise StateDictMismatchError("deformer buffers lack 'canonical_shape' (build them with the FLAME masks)")
        prefix = "flame_model."
        flame = Flame({k[len(prefix):]: v for k, v in buffers.items() if k.startswith(prefix)})
        face_idx, eye_idx = correspondence_vertex_sets(masks)
        faces = buffers.get("masked_faces")
        return cls(flame, torch.as_tensor(buffers["canonical_shape"]), face_idx, eye_idx,
                   None if faces is None else torch.as_tensor(faces), **kwargs)

    @classmethod
    def from_deformer(cls, deformer: FlameHeadPoseDeformer, masks: Mapping[str, Any], **kwargs: Any
                      ) -> FlameCorrespondenceRenderer:
        """Share a :class:`FlameHeadPoseDeformer`'s FLAME model and canonical shape."""
        canonical = getattr(deformer, "canonical_shape", None)
        if canonical is None:
            raise StateDictMismatchError("the deformer has no 'canonical_shape' buffer (built without FLAME masks)")
        face_idx, eye_idx = correspondence_vertex_sets(masks)
        faces = getattr(deformer, "masked_faces", None)
        return cls(deformer.flame_model, canonical, face_idx, eye_idx, faces, **kwargs)

    @classmethod
    def from_assets(cls, masks: Mapping[str, Any], renderer_kwargs: Mapping[str, Any] | None = None,
                    **assets: Any) -> FlameCorrespondenceRenderer:
        """From upstream assets: ``masks`` plus the keyword arguments of
        :func:`~avatar.flame.deformation.build_deformer_buffers` (``generic_model``, ``simplify``, ...)."""
        buffers = build_deformer_buffers(masks=masks, **assets)
        return cls.from_buffers(buffers, masks, **dict(renderer_kwargs or {}))

    # ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def camera_vertices(self, points: Tensor, label: Tensor) -> Tensor:
        """World points ``(B, N, 3)`` -> OpenGL camera space with the label's ``cam2world`` ``(B, 25)``."""
        world2cam = invert_rigid(label[:, :16].reshape(-1, 4, 4).to(points))
        homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
        return torch.bmm(world2cam, homo.permute(0, 2, 1)).permute(0, 2, 1)[..., :3]

    @torch.no_grad()
    def forward(
        self,
        shape_params: Tensor,
        exp_params: Tensor,
        pose_params: Tensor,
        eye_pose_params: Tensor | None,
        label: Tensor,
        half_size: int = 256,
        cull_backfaces: bool = True,
        use_rotation_limits: bool = False,
    ) -> CorrespondenceMap:
        """Correspondence map of the posed FLAME seen by each label's camera.

        Args:
            shape_params: ``(B, 300)``; exp_params ``(B, 100)``; pose_params ``(B, 6)`` neck + jaw;
                eye_pose_params ``(B, 6)`` (``None``: zeros).
            label: ``(B, 25)`` camera labels (``cam2world`` 16 + normalised intrinsics 9).
            half_size: the image is ``2 * half_size`` square (Portrait4D: 256, i.e. 512).
            cull_backfaces: official default ``True``.
            use_rotation_limits: FLAME's tanh rotation limits (official default ``False``).

        Returns:
            :class:`CorrespondenceMap`.
        """
        out = self.flame(shape_params, exp_params, pose_params, eye_pose_params, use_rotation_limits,
                         with_landmarks=True)
        verts = self.camera_vertices(out.vertices[:, self.face_vertex_idx], label)
        b = verts.shape[0]
        features = self.vertex_features.to(verts).unsqueeze(0).expand(b, -1, -1)
        size = 2 * int(half_size)
        mask, depth, uv, _ = render_mesh(verts, self.masked_faces, features, size, fov_deg=self.fov_deg,
                                         cull_backfaces=cull_backfaces, znear=self.znear,
                                         max_candidates=self.max_candidates)
        assert uv is not None
        landmarks_2d = None
        if out.landmarks3d is not None:
            landmarks_2d = self.project_landmarks(out.landmarks3d, label, size)
        return CorrespondenceMap(uv, mask, depth, landmarks_2d)

    @torch.no_grad()
    def project_landmarks(self, landmarks3d: Tensor, label: Tensor, image_size: int) -> Tensor:
        """Official ``landmarks_2d``: ``K * image_size`` (first two rows) times ``(x, y, -z)`` of the camera-space
        landmarks, divided by the last coordinate; pixels with **y up** (``v = S (cy + fy y / -z)``)."""
        cam = self.camera_vertices(landmarks3d, label)
        cam = torch.cat([cam[..., :2], -cam[..., 2:]], dim=-1)
        k = label[:, 16:25].reshape(-1, 3, 3).to(cam).clone()
        k[:, :2] *= image_size
        proj = torch.bmm(k, cam.permute(0, 2, 1)).permute(0, 2, 1)
        proj = proj / proj[..., -1:].clone()
        return proj[..., :2]
