"""The FLAME parameter pools that Portrait4D v1 draws GenHead's inputs from.

Provenance: ``training/training_loop_recon_v1.py`` of YuDeng/Portrait-4D (the block that loads
``shape_n_c_params_path1/2`` and ``motion_params_path1/2`` before the loop; design note
``portrait4d-training.md`` 3.7 and 4.1). The four official arrays live under ``data/`` of the Hub repo
(registry keys ``pools-ffhq-shape-n-c``, ``pools-vfhq-shape-n-c``, ``pools-ffhq-motion``, ``pools-vfhq-motion``):

* ``*_shape_n_c_params.npy``: rows of ``camera label 25 | FLAME shape 300`` (any leading shape; upstream reshapes
  to ``(-1, 325)``); the FFHQ rows, then the VFHQ rows, form one pool of identities and of dataset cameras.
* ``ffhq_all_motion_params.npy``: rows of ``expression 100 | pose 6 | eye poses 6`` (reshaped to ``(-1, 112)``):
  the *static* motions.
* ``vfhq_all_motion_params.npy``: ``(clips, frames, 112)``: the *dynamic* motions, drawn as two frames of a clip.

As upstream, the neck rotation (``pose[:3]``) of both motion pools is set to zero when they are loaded, so the
head pose lives in the camera only; the dynamic eye poses are also offered flattened to ``(clips * frames, 6)``
(upstream draws them independently of the clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar.errors import InputError, InputNotFoundError

__all__ = ["CAMERA_DIM", "MOTION_DIM", "POOL_FILES", "SHAPE_N_C_DIM", "FlameParameterPools"]

CAMERA_DIM = 25
SHAPE_N_C_DIM = 325
"""Camera label 25 + FLAME shape 300."""
MOTION_DIM = 112
"""FLAME expression 100 + pose 6 (neck 3, jaw 3) + eye poses 6."""
POOL_FILES: dict[str, str] = {
    "pools-ffhq-shape-n-c": "ffhq_all_shape_n_c_params.npy",
    "pools-vfhq-shape-n-c": "vfhq_all_shape_n_c_params.npy",
    "pools-ffhq-motion": "ffhq_all_motion_params.npy",
    "pools-vfhq-motion": "vfhq_all_motion_params.npy",
}
"""Registry key -> file name (``data/<name>`` on the Hub) of the four official pools."""

_EXP, _POSE, _EYE = slice(0, 100), slice(100, 106), slice(106, 112)
_NECK = slice(100, 103)


def _rows(array: np.ndarray | Tensor, width: int, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(array) if not isinstance(array, Tensor) else array).float()
    if t.ndim < 1 or t.shape[-1] != width or t.numel() == 0:
        raise InputError(f"{name}: expected rows of {width} numbers, got an array of shape {tuple(t.shape)}")
    return t.reshape(-1, width)


def _without_neck(motion: Tensor) -> Tensor:
    out = motion.clone()
    out[..., _NECK] = 0
    return out


@dataclass
class FlameParameterPools:
    """The pools of Portrait4D v1's online GenHead data (see the module docstring).

    Attributes:
        shape_n_c: ``(N, 325)`` camera label 25 + FLAME shape 300; FFHQ rows then VFHQ rows.
        static_motion: ``(M, 112)`` FFHQ expression / pose / eye poses, neck rotation zero.
        dynamic_motion: ``(clips, frames, 112)`` VFHQ motions, neck rotation zero.
    """

    shape_n_c: Tensor
    static_motion: Tensor
    dynamic_motion: Tensor

    def __post_init__(self) -> None:
        if self.shape_n_c.ndim != 2 or self.shape_n_c.shape[1] != SHAPE_N_C_DIM or len(self.shape_n_c) == 0:
            raise InputError(f"shape_n_c must be (N, {SHAPE_N_C_DIM}), got {tuple(self.shape_n_c.shape)}")
        if self.static_motion.ndim != 2 or self.static_motion.shape[1] != MOTION_DIM or len(self.static_motion) == 0:
            raise InputError(f"static_motion must be (M, {MOTION_DIM}), got {tuple(self.static_motion.shape)}")
        if self.dynamic_motion.ndim != 3 or self.dynamic_motion.shape[2] != MOTION_DIM or 0 in self.dynamic_motion.shape:
            raise InputError(f"dynamic_motion must be (clips, frames, {MOTION_DIM}), got "
                             f"{tuple(self.dynamic_motion.shape)}")

    # ---- views (upstream's all_c, all_shape_params, all_*_params) ----------------------------------------
    @property
    def cameras(self) -> Tensor:
        """``(N, 25)`` dataset camera labels (``all_c``)."""
        return self.shape_n_c[:, :CAMERA_DIM]

    @property
    def shapes(self) -> Tensor:
        """``(N, 300)`` FLAME shapes (``all_shape_params``)."""
        return self.shape_n_c[:, CAMERA_DIM:]

    @property
    def static_expression(self) -> Tensor:
        return self.static_motion[:, _EXP]

    @property
    def static_pose(self) -> Tensor:
        return self.static_motion[:, _POSE]

    @property
    def static_eye(self) -> Tensor:
        return self.static_motion[:, _EYE]

    @property
    def dynamic_expression(self) -> Tensor:
        """``(clips, frames, 100)``."""
        return self.dynamic_motion[..., _EXP]

    @property
    def dynamic_pose(self) -> Tensor:
        """``(clips, frames, 6)``."""
        return self.dynamic_motion[..., _POSE]

    @property
    def dynamic_eye(self) -> Tensor:
        """``(clips * frames, 6)``: flattened, as upstream draws them independently of the clip."""
        return self.dynamic_motion[..., _EYE].reshape(-1, 6)

    def to(self, device: torch.device | str) -> FlameParameterPools:
        return FlameParameterPools(self.shape_n_c.to(device), self.static_motion.to(device),
                                   self.dynamic_motion.to(device))

    def __repr__(self) -> str:
        return (f"FlameParameterPools(identities={len(self.shape_n_c)}, static={len(self.static_motion)}, "
                f"clips={self.dynamic_motion.shape[0]} x {self.dynamic_motion.shape[1]} frames)")

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, ffhq_shape_n_c: np.ndarray | Tensor, vfhq_shape_n_c: np.ndarray | Tensor,
                    ffhq_motion: np.ndarray | Tensor, vfhq_motion: np.ndarray | Tensor) -> FlameParameterPools:
        """The pools from the four official arrays as stored (upstream's reshapes, concatenation and neck
        zeroing)."""
        shape_n_c = torch.cat([_rows(ffhq_shape_n_c, SHAPE_N_C_DIM, "ffhq_all_shape_n_c_params"),
                               _rows(vfhq_shape_n_c, SHAPE_N_C_DIM, "vfhq_all_shape_n_c_params")])
        static = _rows(ffhq_motion, MOTION_DIM, "ffhq_all_motion_params")
        dynamic = torch.as_tensor(np.asarray(vfhq_motion) if not isinstance(vfhq_motion, Tensor) else vfhq_motion)
        if dynamic.ndim != 3 or dynamic.shape[-1] != MOTION_DIM:
            raise InputError(f"vfhq_all_motion_params: expected (clips, frames, {MOTION_DIM}), got "
                             f"{tuple(dynamic.shape)}")
        return cls(shape_n_c, _without_neck(static), _without_neck(dynamic.float()))

    @classmethod
    def from_folder(cls, folder: str | Path) -> FlameParameterPools:
        """The four ``.npy`` files as downloaded (in ``folder`` or ``folder/data``; see :data:`POOL_FILES`)."""
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise InputNotFoundError(f"the pools folder {root} does not exist")
        paths = []
        for name in POOL_FILES.values():
            path = next((p for p in (root / name, root / "data" / name) if p.is_file()), None)
            if path is None:
                raise InputNotFoundError(f"{root} has no {name} (the official pools: {', '.join(POOL_FILES.values())}"
                                         "; `avatar download --file pools-...` fetches them)")
            paths.append(path)
        try:
            arrays = [np.load(p, allow_pickle=False) for p in paths]
        except ValueError as exc:
            raise InputError(f"cannot read the pools in {root}: {exc}") from exc
        return cls.from_arrays(*arrays)

    @classmethod
    def from_registry(cls, local_dir: str | Path | None = None) -> FlameParameterPools:
        """The official pools through the asset cache (fetched from the Hub once, or taken from ``local_dir``)."""
        from avatar.hub.weights import read_converted_weights

        arrays = [read_converted_weights(key, local_dir=local_dir)["value"] for key in POOL_FILES]
        return cls.from_arrays(*arrays)

    @classmethod
    def synthetic(cls, seed: int = 0, identities: int = 64, static: int = 64, clips: int = 8, frames: int = 10
                  ) -> FlameParameterPools:
        """Small random pools of plausible values for tests and ``--flame synthetic`` smoke runs. **Not data**:
        nothing here comes from FFHQ or VFHQ, and a model trained on it learns nothing useful.

        Cameras look at the head from yaw and pitch within +-20 and +-10 degrees at the inference distance with the
        12-degree intrinsics; shapes and expressions are ``N(0, 0.3^2)``; jaw openings ``U(0, 0.2)``; neck rotations
        ``N(0, 0.1^2)`` (zeroed on loading, as the official ones); eye poses ``N(0, 0.05^2)``. The VFHQ-like
        pool is (``clips``, ``frames``); the identity pool is half FFHQ-like, half VFHQ-like rows."""
        from avatar.render.camera import view_label

        g = torch.Generator().manual_seed(int(seed))

        def uniform(n: int, low: float, high: float) -> Tensor:
            return torch.rand(n, generator=g) * (high - low) + low

        def shape_n_c(n: int) -> Tensor:
            yaw, pitch = uniform(n, -20, 20), uniform(n, -10, 10)
            cams = torch.cat([view_label(float(a), float(b)) for a, b in zip(yaw, pitch, strict=True)])
            return torch.cat([cams, torch.randn(n, 300, generator=g) * 0.3], dim=1)

        def motion(n: int) -> Tensor:
            neck = torch.randn(n, 3, generator=g) * 0.1
            jaw = torch.cat([uniform(n, 0, 0.2)[:, None], torch.randn(n, 2, generator=g) * 0.01], dim=1)
            eye = torch.randn(n, 6, generator=g) * 0.05
            return torch.cat([torch.randn(n, 100, generator=g) * 0.3, neck, jaw, eye], dim=1)

        half = max(identities // 2, 1)
        return cls.from_arrays(shape_n_c(half), shape_n_c(max(identities - half, 1)), motion(static),
                               motion(clips * frames).reshape(clips, frames, MOTION_DIM))
