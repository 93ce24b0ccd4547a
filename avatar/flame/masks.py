"""GenHead's screen-space part masks: eye, mouth and head masks from rasterised FLAME sub-meshes.

Official source: ``training/deformer/deformation.py::FlameDeformationModule.renderer`` (branches ``eye_mask``,
``face_woeye``, ``noinmouth`` and the default simplified-mesh branch) drawn by
``training/deformer/mesh_renderer.py::MeshRenderer`` (pytorch3d), and the ``with torch.no_grad():`` block of
``training/generator/triplane.py::PartTriPlaneGeneratorDeform.synthesis`` that turns four renders into the
masks the part-wise volume renderer uses. Rasterisation is :func:`avatar.render.rasterize.render_mesh` (plain
PyTorch, same pixel alignment); the camera is the label's ``cam2world`` with the fixed 12 degree
``FoVPerspectiveCameras`` (see :mod:`avatar.flame.correspondence`, whose renderer this one extends).

Raw renders, each a ``(B, 1, S, S)`` 0/1 mask, ``S = 2 * half_size`` (GenHead: ``half_size = img_resolution /
2``), of the posed ``FLAME(shape, exp, pose = [neck, jaw], eye_pose)`` (full pose, neck included):

* ``eye``: eyeball vertices ``sort(unique(right_eyeball + left_eyeball))`` with ``masked_eye_faces``, culling on;
* ``face_wo_eye``: face vertices ``sort(unique(face))`` with ``masked_face_wo_eye_faces``, culling on;
* ``head``: the *simplified* mesh (``simplify_idxs / baris / faces``), culling **off**;
* ``head_wo_mouth``: ``noinmouth`` vertices (unsorted, as ``FLAME_masks.pkl`` lists them; the deformer buffer
  ``noinmouth_idxs``) with ``masked_noinmouth_faces``, culling on.

Post-processing (:func:`part_masks`), ``NR`` the neural rendering resolution, ``IR`` the image resolution:

* ``eye = eye_raw * (1 - face_wo_eye_raw)``; ``eye_sr = filter2d(eye, g_1)``; ``eye`` resized to ``NR``;
* ``mouth = head_raw * (1 - head_wo_mouth_raw)``; ``mouth_sr = maxpool7(-maxpool7(-mouth))`` (an opening: a
  7x7 erosion then dilation, stride 1, padding 3), ``filter2d(., g_2)``; ``mouth`` resized to ``NR``;
  ``mouth_sr = min(mouth_sr + resize(mouth_NR, IR), 1)``;
* ``head`` resized to ``NR``, ``head_sr = resize(head_NR, IR)``.

``g_s`` is the normalised separable kernel ``2^(-(k/s)^2)``, ``k = -3s..3s`` (upstream ``upfirdn2d.filter2d``
with a 1-D filter filters rows then columns, zero padding, same size); every resize is bilinear,
``align_corners=False``, ``antialias=True``. Upstream stores ``mouth_sr + eye_sr`` as its output
``'mouth_mask_sr'`` and samples patch rays with ``[eye_sr + mouth_sr, head_sr]``; :class:`PartMasks` keeps
``eye_sr`` and ``mouth_sr`` apart and offers the sum as :attr:`PartMasks.eye_mouth_sr`.

Quirk kept: upstream resizes ``eye`` and ``mouth`` to the generator's *attribute* ``neural_rendering_resolution``
but ``head`` to the call's argument; they differ only when an evaluation call passes another resolution
(``part_resolution`` below). Not reproduced: ``eye_blink_params`` (GenHead never passes it). Everything runs
without gradients (``@torch.no_grad``), as upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avatar.errors import StateDictMismatchError
from avatar.nn.upfirdn import filter2d
from avatar.render.camera import PORTRAIT4D_FOV_DEG
from avatar.render.rasterize import DEFAULT_MAX_CANDIDATES, render_mesh

from .correspondence import FlameCorrespondenceRenderer, correspondence_vertex_sets
from .deformation import FlameHeadPoseDeformer

__all__ = [
    "MASK_KINDS",
    "FlamePartMaskRenderer",
    "MaskKind",
    "PartMasks",
    "RawPartMasks",
    "blur_taps",
    "face_wo_eye_vertex_set",
    "part_masks",
]

MaskKind = Literal["eye", "face_wo_eye", "head", "head_wo_mouth"]
MASK_KINDS: tuple[MaskKind, ...] = ("eye", "face_wo_eye", "head", "head_wo_mouth")
_CULL: dict[str, bool] = {"eye": True, "face_wo_eye": True, "head": False, "head_wo_mouth": True}
"""Back-face culling of each render in ``synthesis`` (the head is drawn with ``cull_backfaces=False``)."""
_SHARED = ("masked_eye_faces", "masked_face_wo_eye_faces", "masked_noinmouth_faces", "noinmouth_idxs",
           "simplify_idxs", "simplify_baris", "simplify_faces")
EYE_BLUR_SIGMA = 1
MOUTH_BLUR_SIGMA = 2
MOUTH_POOL = 7


class RawPartMasks(NamedTuple):
    """The four renders, each ``(B, 1, S, S)`` 0/1: eye (eyeballs), face_wo_eye (face without eyeballs), head
    (simplified mesh, no culling), head_wo_mouth (``noinmouth`` vertices)."""

    eye: Tensor
    face_wo_eye: Tensor
    head: Tensor
    head_wo_mouth: Tensor


class PartMasks(NamedTuple):
    """GenHead's masks: eye / mouth / head ``(B, 1, NR, NR)`` (``eye``/``mouth`` at ``part_resolution``),
    eye_sr / mouth_sr / head_sr ``(B, 1, IR, IR)``; values in ``[0, 1]``."""

    eye: Tensor
    mouth: Tensor
    head: Tensor
    eye_sr: Tensor
    mouth_sr: Tensor
    head_sr: Tensor

    @property
    def eye_mouth_sr(self) -> Tensor:
        """``mouth_sr + eye_sr``: what upstream returns as ``'mouth_mask_sr'`` and samples patch rays with."""
        return self.mouth_sr + self.eye_sr


def face_wo_eye_vertex_set(masks: Mapping[str, Any]) -> Tensor:
    """``sort(unique(masks['face']))`` (official ``face_wo_eye_mask``), int64."""
    face = masks["face"]
    array = face.detach().cpu().numpy() if isinstance(face, Tensor) else np.asarray(face)
    return torch.from_numpy(np.sort(np.unique(array.astype(np.int64).reshape(-1))))


def blur_taps(sigma: int, device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D taps ``2^(-(k / sigma)^2)``, ``k = -3 sigma .. 3 sigma`` (float32, separable filter)."""
    size = sigma * 3
    f = torch.arange(-size, size + 1, device=device).div(sigma).square().neg().exp2()
    return f / f.sum()


def _resize(x: Tensor, size: int) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _opening(x: Tensor, kernel: int = MOUTH_POOL) -> Tensor:
    """``maxpool(-maxpool(-x))``: erosion then dilation (stride 1, same size)."""
    eroded = -F.max_pool2d(-x, kernel, stride=1, padding=kernel // 2)
    return F.max_pool2d(eroded, kernel, stride=1, padding=kernel // 2)


@torch.no_grad()
def part_masks(
    raw: RawPartMasks,
    neural_rendering_resolution: int,
    image_resolution: int,
    part_resolution: int | None = None,
) -> PartMasks:
    """Upstream ``synthesis`` post-processing of the four renders (see the module docstring).

    Args:
        raw: :class:`RawPartMasks` of size ``image_resolution`` (upstream renders at ``img_resolution / 2``
            half size; ``eye_sr`` keeps the render size, so the two must agree).
        neural_rendering_resolution: ``NR``, the size of ``head``.
        image_resolution: ``IR``, the size of the ``*_sr`` masks.
        part_resolution: size of ``eye`` and ``mouth`` (upstream: the generator's ``neural_rendering_resolution``
            attribute); default ``neural_rendering_resolution``.

    Returns:
        :class:`PartMasks`.
    """
    size = raw.eye.shape[-1]
    if size != image_resolution or raw.eye.shape[-2] != image_resolution:
        raise ValueError(f"renders are {tuple(raw.eye.shape[-2:])}, expected image_resolution {image_resolution}")
    part_res = neural_rendering_resolution if part_resolution is None else part_resolution
    eye = raw.eye * (1 - raw.face_wo_eye)
    eye_sr = filter2d(eye, blur_taps(EYE_BLUR_SIGMA, eye.device))
    eye = _resize(eye, part_res)
    mouth = raw.head * (1 - raw.head_wo_mouth)
    mouth_sr = filter2d(_opening(mouth), blur_taps(MOUTH_BLUR_SIGMA, mouth.device))
    mouth = _resize(mouth, part_res)
    mouth_sr = (mouth_sr + _resize(mouth, image_resolution)).clamp(max=1)
    head = _resize(raw.head, neural_rendering_resolution)
    head_sr = _resize(head, image_resolution)
    return PartMasks(eye, mouth, head, eye_sr, mouth_sr, head_sr)


class FlamePartMaskRenderer(FlameCorrespondenceRenderer):
    """Upstream ``FlameDeformationModule.renderer``: the correspondence map (inherited ``forward``) plus the four
    mask renders GenHead uses.

    Args:
        deformer: shares its ``flame_model`` (a submodule here too) and its buffers ``canonical_shape``,
            ``masked_faces``, ``masked_eye_faces``, ``masked_face_wo_eye_faces``, ``masked_noinmouth_faces``,
            ``noinmouth_idxs``, ``simplify_idxs/baris/faces`` (the latter seven registered by reference as
            non-persistent buffers: they stay the deformer's state; build this renderer after loading it).
        masks: ``FLAME_masks.pkl`` fields ``face``, ``left_eyeball``, ``right_eyeball`` (not in a checkpoint).
        fov_deg, znear, max_candidates: as :class:`~avatar.flame.correspondence.FlameCorrespondenceRenderer`.

    Buffers added: ``eye_vertex_idx (E,)`` eyeball vertices, ``face_wo_eye_vertex_idx (M,)`` face vertices.
    """

    eye_vertex_idx: Tensor
    face_wo_eye_vertex_idx: Tensor
    masked_eye_faces: Tensor
    masked_face_wo_eye_faces: Tensor
    masked_noinmouth_faces: Tensor
    noinmouth_idxs: Tensor
    simplify_idxs: Tensor
    simplify_baris: Tensor
    simplify_faces: Tensor

    def __init__(
        self,
        deformer: FlameHeadPoseDeformer,
        masks: Mapping[str, Any],
        fov_deg: float = PORTRAIT4D_FOV_DEG,
        znear: float = 0.1,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> None:
        missing = [k for k in ("canonical_shape", *_SHARED) if getattr(deformer, k, None) is None]
        if missing:
            raise StateDictMismatchError(f"deformer buffers missing for the part masks: {missing}")
        face_idx, eye_idx = correspondence_vertex_sets(masks)
        super().__init__(deformer.flame_model, deformer.canonical_shape, face_idx, eye_idx,
                         getattr(deformer, "masked_faces", None), fov_deg, znear, max_candidates)
        face_wo_eye = face_wo_eye_vertex_set(masks)
        self.register_buffer("eye_vertex_idx", eye_idx)
        self.register_buffer("face_wo_eye_vertex_idx", face_wo_eye)
        for name in _SHARED:
            self.register_buffer(name, getattr(deformer, name), persistent=False)
        for faces, vertex_set in ((self.masked_eye_faces, eye_idx), (self.masked_face_wo_eye_faces, face_wo_eye),
                                  (self.masked_noinmouth_faces, self.noinmouth_idxs)):
            if faces.numel() and int(faces.max()) >= vertex_set.numel():
                raise StateDictMismatchError("masked faces index past their vertex set (masks do not match)")

    @classmethod
    def from_deformer(cls, deformer: FlameHeadPoseDeformer, masks: Mapping[str, Any], **kwargs: Any
                      ) -> FlamePartMaskRenderer:
        """Same as the constructor (kept for the parent's interface)."""
        return cls(deformer, masks, **kwargs)

    @classmethod
    def from_buffers(cls, buffers: Mapping[str, Any], masks: Mapping[str, Any], **kwargs: Any
                     ) -> FlamePartMaskRenderer:
        """From deformer buffers (:func:`~avatar.flame.deformation.build_deformer_buffers` output or a converted
        ``deformer.flame_deform.*`` state with the prefix stripped) and the ``FLAME_masks.pkl`` fields."""
        return cls(FlameHeadPoseDeformer(buffers), masks, **kwargs)

    # ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def posed_vertices(self, shape: Tensor, exp: Tensor, pose: Tensor | None, eye_pose: Tensor | None,
                       use_rotation_limits: bool = False) -> Tensor:
        """``(B, V, 3)`` FLAME vertices with the full pose (neck included)."""
        return self.flame(shape, exp, pose, eye_pose, use_rotation_limits, with_landmarks=False).vertices

    def mask_mesh(self, kind: MaskKind, vertices: Tensor) -> tuple[Tensor, Tensor, bool]:
        """The sub-mesh of one render: selected vertices ``(B, N, 3)``, faces ``(F, 3)``, upstream culling."""
        if kind == "eye":
            return vertices[:, self.eye_vertex_idx], self.masked_eye_faces, _CULL[kind]
        if kind == "face_wo_eye":
            return vertices[:, self.face_wo_eye_vertex_idx], self.masked_face_wo_eye_faces, _CULL[kind]
        if kind == "head":
            simplified = torch.sum(vertices[:, self.simplify_idxs] * self.simplify_baris[None, :, :, None], dim=-2)
            return simplified, self.simplify_faces, _CULL[kind]
        if kind == "head_wo_mouth":
            return vertices[:, self.noinmouth_idxs], self.masked_noinmouth_faces, _CULL[kind]
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")

    @torch.no_grad()
    def render_mask(self, kind: MaskKind, vertices: Tensor, label: Tensor, half_size: int = 32,
                    cull_backfaces: bool | None = None) -> Tensor:
        """One render ``(B, 1, 2 half_size, 2 half_size)`` of posed ``vertices (B, V, 3)`` seen by ``label (B, 25)``;
        ``cull_backfaces=None`` uses upstream's choice for ``kind``."""
        verts, faces, cull = self.mask_mesh(kind, vertices)
        cull = cull if cull_backfaces is None else cull_backfaces
        out = render_mesh(self.camera_vertices(verts, label), faces, None, 2 * int(half_size), fov_deg=self.fov_deg,
                          cull_backfaces=cull, znear=self.znear, max_candidates=self.max_candidates)
        return out.mask

    @torch.no_grad()
    def render_masks(
        self,
        shape: Tensor,
        exp: Tensor,
        pose: Tensor | None,
        eye_pose: Tensor | None,
        label: Tensor,
        half_size: int = 32,
        use_rotation_limits: bool = False,
    ) -> RawPartMasks:
        """The four renders of ``synthesis`` (one FLAME evaluation; upstream evaluates it once per render).

        Args:
            shape ``(B, S)``, exp ``(B, E)``, pose ``(B, 6)`` neck + jaw, eye_pose ``(B, 6)`` (``None``: zeros),
            label ``(B, 25)``; half_size: GenHead passes ``img_resolution / 2``.
        """
        vertices = self.posed_vertices(shape, exp, pose, eye_pose, use_rotation_limits)
        return RawPartMasks(*(self.render_mask(kind, vertices, label, half_size) for kind in MASK_KINDS))

    @torch.no_grad()
    def render_part_masks(
        self,
        shape: Tensor,
        exp: Tensor,
        pose: Tensor | None,
        eye_pose: Tensor | None,
        label: Tensor,
        neural_rendering_resolution: int,
        image_resolution: int,
        use_rotation_limits: bool = False,
        part_resolution: int | None = None,
    ) -> PartMasks:
        """Renders at ``half_size = image_resolution // 2`` and post-processes (:func:`part_masks`)."""
        raw = self.render_masks(shape, exp, pose, eye_pose, label, image_resolution // 2, use_rotation_limits)
        return part_masks(raw, neural_rendering_resolution, image_resolution, part_resolution)
