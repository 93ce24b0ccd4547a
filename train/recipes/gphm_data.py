"""GPHM training samples: an item of :mod:`train.data.gphm` plus the image its motion encoders read.

The models encode the expression (and non-face motion) from images (``encode_expression(images)``). The paper
(3.4) feeds "the image of another view of the current frame, or the synthesized image by LivePortrait with the same
expression"; we feed the **frontal-most view of the same frame** (:class:`ExpressionViews`), because a frontal face
shows the expression best and the choice is deterministic (so that a resumed run reads the same inputs). The
target image of a frontal camera is then its own expression input, which the paper's random other view would
avoid; the frontal choice wins on the views that need it most (profiles, where the face is barely visible).

Which view is frontal-most (the score of a camera is ``dot(unit(centre - head), forward)``, the largest wins):

* :class:`~train.data.gphm.NeRSembleDataset` with FLAME tracking: ``head`` and ``forward`` from the frame's head
  pose (canonical ``+z``, the face's direction, mapped by the rotation). Without tracking: ``head`` is the point
  nearest to every camera's optical axis (least squares; the rig looks at the head) and ``forward`` the mean
  direction from it to the cameras (NeRSemble's rig is an arc in front of the face, so its middle camera wins).
  The frame is (participant, sequence, timestep).
* :class:`~train.data.gphm.SyntheticMultiViewDataset`: the head is at the world origin facing ``+z`` (its head
  pose is the identity); the frame is one expression of one clip, its ``V`` views.
* any other dataset: the image itself (there is no way to know which images show the same frame).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["ExpressionViews", "frontal_index"]

_KEEP = ("image", "mask", "has_mask", "K", "world_to_camera", "head_pose", "identity", "view")


def frontal_index(centres: np.ndarray, head: np.ndarray, forward: np.ndarray) -> int:
    """Index of the camera (``centres (V, 3)`` world positions) most in front of a head at ``head (3,)`` facing
    ``forward (3,)``."""
    rel = centres - head[None]
    rel = rel / np.linalg.norm(rel, axis=1, keepdims=True).clip(1e-12)
    f = forward / max(float(np.linalg.norm(forward)), 1e-12)
    return int(np.argmax(rel @ f))


def _camera_centre(w2c: np.ndarray) -> np.ndarray:
    return -w2c[:3, :3].T @ w2c[:3, 3]


def _rig_head(w2cs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The point nearest to every optical axis, and the mean unit direction from it to the cameras."""
    centres = np.stack([_camera_centre(m) for m in w2cs])
    axes = np.stack([m[2, :3] / np.linalg.norm(m[2, :3]) for m in w2cs])  # OpenCV +z of each camera, in the world
    lhs, rhs = np.zeros((3, 3)), np.zeros(3)
    for c, d in zip(centres, axes, strict=True):
        proj = np.eye(3) - np.outer(d, d)
        lhs += proj
        rhs += proj @ c
    head = np.linalg.lstsq(lhs, rhs, rcond=None)[0] if len(w2cs) > 1 else centres[0] + axes[0]
    rel = centres - head[None]
    forward = (rel / np.linalg.norm(rel, axis=1, keepdims=True).clip(1e-12)).mean(0)
    return head, forward


class ExpressionViews(torch.utils.data.Dataset):
    """``dataset``'s items (tensors only: ``image``, ``mask``, ``has_mask``, ``K``, ``world_to_camera``,
    ``head_pose``, ``identity``, ``view``) plus ``expression_image (3, H, W)`` in [0, 1] (the motion encoders'
    input) and ``expression_index`` (the item it comes from), see the module docstring.

    Args:
        dataset: a :mod:`train.data.gphm` dataset (or any dataset of such items).
        mode: ``"frontal"`` (the frontal-most view of the same frame) or ``"same"`` (the item's own image).
    """

    def __init__(self, dataset: Any, mode: Literal["frontal", "same"] = "frontal") -> None:
        from train.data.gphm import NeRSembleDataset, SyntheticMultiViewDataset

        self.dataset = dataset
        self.mode = mode
        self.kind = "same"
        self._nersemble: list[int] | None = None
        self._synthetic: dict[tuple[int, int], int] = {}
        if mode == "frontal" and isinstance(dataset, NeRSembleDataset):
            self.kind = "nersemble"
            self._nersemble = self._nersemble_sources(dataset)
        elif mode == "frontal" and isinstance(dataset, SyntheticMultiViewDataset):
            self.kind = "synthetic"

    @property
    def identities(self) -> list[Any]:
        return list(getattr(self.dataset, "identities", []))

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def _nersemble_sources(ds: Any) -> list[int]:
        """For every item, the index of its frame's frontal-most item (reads calibration and tracking only)."""
        frames: dict[tuple[int, str, int], list[int]] = {}
        for i, it in enumerate(ds.items):
            frames.setdefault((it.participant, it.sequence, it.timestep), []).append(i)
        rigs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        sources = list(range(len(ds.items)))
        for (pid, seq, t), members in frames.items():
            w2cs = [np.asarray(ds._participants[pid].world_2_cam[ds.items[i].serial], np.float64) for i in members]
            track = ds._tracking.get((pid, seq)) if ds.expression_mode == "flame" else None
            if track is not None:
                pose = track.head_pose[track.rows[t]]
                head, forward = pose[:3, 3], pose[:3, :3] @ np.array([0.0, 0.0, 1.0])
            else:
                if pid not in rigs:
                    rig = [np.asarray(m, np.float64) for m in ds._participants[pid].world_2_cam.values()]
                    rigs[pid] = _rig_head(rig)
                head, forward = rigs[pid]
            best = members[frontal_index(np.stack([_camera_centre(m) for m in w2cs]), head, forward)]
            for i in members:
                sources[i] = best
        return sources

    def _synthetic_source(self, index: int) -> int:
        ds = self.dataset
        row, k = ds.locate(index)
        views = ds.views[row]
        expression = k // views
        key = (row, expression)
        if key not in self._synthetic:
            labels = np.asarray(ds._row(row).labels, np.float64)[expression * views:(expression + 1) * views]
            centres = labels[:, :16].reshape(-1, 4, 4)[:, :3, 3]  # cam2world translation = camera centre
            best = frontal_index(centres, np.zeros(3), np.array([0.0, 0.0, 1.0]))
            self._synthetic[key] = int(ds._starts[row]) + expression * views + best
        return self._synthetic[key]

    def expression_source(self, index: int) -> int:
        """The index of the item whose image is ``index``'s expression input."""
        if self.kind == "nersemble":
            assert self._nersemble is not None
            return self._nersemble[index]
        if self.kind == "synthetic":
            return self._synthetic_source(index)
        return index

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.dataset[index]
        source = self.expression_source(index)
        out = {k: item[k] for k in _KEEP if k in item}
        out["expression_image"] = item["image"] if source == index else self.dataset[source]["image"]
        out["expression_index"] = torch.tensor(source)
        return out
