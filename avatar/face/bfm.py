"""The BFM 2009 parametric face as Deep3DFaceRecon_pytorch's ``ParametricFaceModel.compute_for_render`` builds it.

GOHA (``src/deep3d_modules/bfm.py``, identical to Deep3DFaceRecon_pytorch's ``models/bfm.py``) turns 257 Deep3D
coefficients (:func:`avatar.face.deep3d.split_coefficients`) into a coloured mesh in camera space:

* **Shape** ``S = mean + B_id id + B_exp exp`` (``(B, N, 3)``), the mean re-centred on its centroid (``recenter``).
* **Texture** ``T = (mean_tex + B_tex tex) / 255`` (``(B, N, 3)``, RGB).
* **Pose** ``R = Rz(c) Ry(b) Rx(a)`` from ``angle = (a, b, c)``
  (:func:`avatar.face.geometry.bfm_angles_to_rotation`); ``S' = R S + trans``, then into the camera:
  ``z_cam = camera_distance (10) - z`` (``x, y`` unchanged, ``y`` up).
* **Projection** ``u = focal x / z_cam + center``, ``v = focal y / z_cam + center`` (focal 1015, center 112 for the
  224 crop); ``v`` grows **upwards** (image row ``= 224 - v``). Landmarks are the projections of the 68
  ``keypoints``.
* **Normals** per face ``normalize((v0 - v1) x (v1 - v2))`` of the *unposed* shape, summed over the (up to 8)
  faces of ``point_buf`` (the padding index ``F`` points at an extra zero normal), normalised, then rotated by ``R``.
* **Colour** 9-band spherical-harmonics lighting: ``gamma (B, 27)`` as ``(3 colours, 9)`` plus ``init_lit =
  (0.8, 0, ..., 0)``; basis ``a = (pi, 2 pi / sqrt 3, 2 pi / sqrt 8)``, ``c = (1 / sqrt(4 pi), sqrt 3 / sqrt(4 pi),
  3 sqrt 5 / sqrt(12 pi))``, ``Y = [a0 c0, -a1 c1 ny, a1 c1 nz, -a1 c1 nx, a2 c2 nx ny, -a2 c2 ny nz,
  a2 c2 / (2 sqrt 3) (3 nz^2 - 1), -a2 c2 nx nz, a2 c2 / 2 (nx^2 - ny^2)]``; ``colour = (Y gamma_rgb) * T``.

The model data come from ``BFM_model_front.mat`` (keys ``meanshape``, ``idBase``, ``exBase``, ``meantex``,
``texBase``, ``point_buf``, ``tri``, ``keypoints``; indices 1-based in the file), which Deep3DFaceRecon_pytorch's
``util/load_mats.py::transferBFM09`` derives from the licensed Basel Face Model ``01_MorphableModel.mat`` and
``Exp_Pca.bin``. It cannot be downloaded: :meth:`ParametricFaceModel.from_folder` reads it from a folder and names
the missing file. All tensors are non-persistent buffers: no state-dict keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import AssetNotFoundError, FormatError
from avatar.face.deep3d import split_coefficients
from avatar.face.geometry import bfm_angles_to_rotation

__all__ = [
    "BFM_DEFAULT_FILE",
    "BFM_KEYS",
    "DEEP3D_CAMERA_DISTANCE",
    "DEEP3D_CENTER",
    "DEEP3D_FOCAL",
    "ParametricFaceModel",
    "sh_basis",
]

BFM_DEFAULT_FILE = "BFM_model_front.mat"
BFM_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "point_buf", "tri", "keypoints")
DEEP3D_FOCAL = 1015.0
DEEP3D_CENTER = 112.0
DEEP3D_CAMERA_DISTANCE = 10.0
INIT_LIT = (0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

_SH_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_SH_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))


def sh_basis(normals: Tensor) -> Tensor:
    """Unit normals ``(..., 3)`` -> the 9 lighting basis values ``(..., 9)`` of Deep3DFaceRecon (order above)."""
    a, c = _SH_A, _SH_C
    nx, ny, nz = normals[..., :1], normals[..., 1:2], normals[..., 2:]
    return torch.cat([
        a[0] * c[0] * torch.ones_like(nx),
        -a[1] * c[1] * ny,
        a[1] * c[1] * nz,
        -a[1] * c[1] * nx,
        a[2] * c[2] * nx * ny,
        -a[2] * c[2] * ny * nz,
        0.5 * a[2] * c[2] / math.sqrt(3.0) * (3 * nz ** 2 - 1),
        -a[2] * c[2] * nx * nz,
        0.5 * a[2] * c[2] * (nx ** 2 - ny ** 2),
    ], dim=-1)


class ParametricFaceModel(nn.Module):
    """BFM09 face model of Deep3DFaceRecon (``N`` vertices, ``F`` faces).

    Buffers (non-persistent): ``mean_shape (3N,)``, ``id_base (3N, 80)``, ``exp_base (3N, 64)``, ``mean_tex (3N,)``
    (0-255), ``tex_base (3N, 80)``, ``point_buf (N, 8)`` (0-based; ``F`` = padding), ``face_buf (F, 3)``,
    ``keypoints (68,)``.
    """

    def __init__(self, model: Mapping[str, Any], recenter: bool = True, camera_distance: float = DEEP3D_CAMERA_DISTANCE,
                 focal: float = DEEP3D_FOCAL, center: float = DEEP3D_CENTER) -> None:
        """``model``: the arrays of ``BFM_model_front.mat`` under its key names, indices 1-based as in the file."""
        super().__init__()
        missing = [k for k in BFM_KEYS if k not in model]
        if missing:
            raise FormatError(f"BFM model lacks the arrays {missing} (expected {list(BFM_KEYS)})")

        def f32(key: str) -> Tensor:
            return torch.as_tensor(np.asarray(model[key], dtype=np.float32))

        def idx(key: str) -> Tensor:
            return torch.as_tensor(np.asarray(model[key]).astype(np.int64) - 1)

        mean_shape = f32("meanshape").reshape(-1, 3)
        if recenter:
            mean_shape = torch.as_tensor(
                (mean_shape.numpy() - np.mean(mean_shape.numpy(), axis=0, keepdims=True)).astype(np.float32))
        self.register_buffer("mean_shape", mean_shape.reshape(-1), persistent=False)
        self.register_buffer("id_base", f32("idBase"), persistent=False)
        self.register_buffer("exp_base", f32("exBase"), persistent=False)
        self.register_buffer("mean_tex", f32("meantex").reshape(-1), persistent=False)
        self.register_buffer("tex_base", f32("texBase"), persistent=False)
        self.register_buffer("point_buf", idx("point_buf"), persistent=False)
        self.register_buffer("face_buf", idx("tri"), persistent=False)
        self.register_buffer("keypoints", idx("keypoints").reshape(-1), persistent=False)
        self.register_buffer("init_lit", torch.tensor(INIT_LIT, dtype=torch.float32), persistent=False)
        self.camera_distance = float(camera_distance)
        self.focal = float(focal)
        self.center = float(center)

    @classmethod
    def from_folder(cls, folder: str | Path, name: str = BFM_DEFAULT_FILE, **kwargs: Any) -> ParametricFaceModel:
        """Read ``folder/name`` (``BFM_model_front.mat``). Raises :class:`AssetNotFoundError` naming the file."""
        path = Path(folder) / name
        if not path.is_file():
            raise AssetNotFoundError(
                f"the BFM face model file {name} is missing from {Path(folder)}: it cannot be downloaded (Basel Face "
                "Model licence). Make it with Deep3DFaceRecon_pytorch's util/load_mats.py::transferBFM09 from "
                "01_MorphableModel.mat and Exp_Pca.bin, and put it in that folder")
        from scipy.io import loadmat

        return cls(loadmat(str(path)), **kwargs)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model's arrays under the ``BFM_model_front.mat`` names (1-based indices, the mean shape as held:
        recentred unless built with ``recenter=False``): ``ParametricFaceModel(m.to_arrays(), recenter=False)``
        rebuilds it."""
        def arr(t: Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        return {"meanshape": arr(self.mean_shape).reshape(1, -1), "idBase": arr(self.id_base),
                "exBase": arr(self.exp_base), "meantex": arr(self.mean_tex).reshape(1, -1),
                "texBase": arr(self.tex_base), "point_buf": arr(self.point_buf) + 1, "tri": arr(self.face_buf) + 1,
                "keypoints": arr(self.keypoints).reshape(1, -1) + 1}

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0] // 3

    def compute_shape(self, id_coeff: Tensor, exp_coeff: Tensor) -> Tensor:
        """``id (B, 80)``, ``exp (B, 64)`` -> model-space shape ``(B, N, 3)``."""
        shape = id_coeff @ self.id_base.T + exp_coeff @ self.exp_base.T + self.mean_shape
        return shape.reshape(id_coeff.shape[0], -1, 3)

    def compute_texture(self, tex_coeff: Tensor) -> Tensor:
        """``tex (B, 80)`` -> albedo ``(B, N, 3)`` RGB in [0, 1] (for in-range coefficients)."""
        tex = (tex_coeff @ self.tex_base.T + self.mean_tex) / 255.0
        return tex.reshape(tex_coeff.shape[0], -1, 3)

    def compute_norm(self, shape: Tensor) -> Tensor:
        """Vertex normals ``(B, N, 3)`` of ``shape (B, N, 3)`` (area-unweighted mean of the adjacent face normals)."""
        v0, v1, v2 = (shape[:, self.face_buf[:, k]] for k in range(3))
        face_norm = F.normalize(torch.cross(v0 - v1, v1 - v2, dim=-1), dim=-1, p=2)
        face_norm = torch.cat([face_norm, face_norm.new_zeros(face_norm.shape[0], 1, 3)], dim=1)
        return F.normalize(face_norm[:, self.point_buf].sum(dim=2), dim=-1, p=2)

    def compute_color(self, texture: Tensor, normals: Tensor, gamma: Tensor) -> Tensor:
        """Albedo ``(B, N, 3)``, posed normals ``(B, N, 3)``, ``gamma (B, 27)`` -> lit colour ``(B, N, 3)``."""
        light = (gamma.reshape(-1, 3, 9) + self.init_lit).permute(0, 2, 1)  # (B, 9, 3)
        return (sh_basis(normals) @ light) * texture

    def rotation(self, angles: Tensor) -> Tensor:
        """``angle (B, 3)`` -> ``R (B, 3, 3)`` applied as ``R p`` (the official keeps ``R^T`` for ``p @ R^T``)."""
        return bfm_angles_to_rotation(angles)

    def to_camera(self, points: Tensor) -> Tensor:
        """Posed model points ``(B, N, 3)`` -> camera space (``z`` = distance in front of the camera)."""
        return torch.cat([points[..., :2], self.camera_distance - points[..., 2:]], dim=-1)

    def to_image(self, points: Tensor) -> Tensor:
        """Camera-space points ``(B, N, 3)`` -> ``(u, v)`` pixels ``(B, N, 2)`` (``v`` up)."""
        k = points.new_tensor([[self.focal, 0.0, self.center], [0.0, self.focal, self.center], [0.0, 0.0, 1.0]])
        proj = points @ k.T
        return proj[..., :2] / proj[..., 2:]

    def compute_for_render(self, coeffs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``coeffs (B, 257)`` -> ``vertex (B, N, 3)`` camera space, ``texture (B, N, 3)``, ``color (B, N, 3)``,
        ``landmark (B, 68, 2)`` (pixels of the 224 crop, ``v`` up)."""
        c = split_coefficients(coeffs)
        shape = self.compute_shape(c["id"], c["exp"])
        rot_t = self.rotation(c["angle"]).transpose(1, 2)
        vertex = self.to_camera(shape @ rot_t + c["trans"].unsqueeze(1))
        landmark = self.to_image(vertex)[:, self.keypoints]
        texture = self.compute_texture(c["tex"])
        color = self.compute_color(texture, self.compute_norm(shape) @ rot_t, c["gamma"])
        return vertex, texture, color, landmark
