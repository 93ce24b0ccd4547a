"""What the face networks plugged into the metrics return, and how their outputs are checked.

* A landmark callable maps ``(B, 3, H, W)`` images in [0, 1] to 68 iBUG landmarks in **pixels of the input
  image** (``x`` right, ``y`` down, pixel centres at integer coordinates; face_alignment's convention). It may
  return a :class:`FaceLandmarks` (the result type of :mod:`avatar.face.analysis`), a ``(points, found)``
  tuple, a dict with ``"landmarks"`` (or ``"points"``) and optionally ``"found"``, or a bare ``(B, 68, 2)``
  tensor whose rows are NaN where no face was found.
* A coefficient extractor (Deep3DFaceRecon) maps ``(B, 3, H, W)`` images in [0, 1] to a dict with ``"exp"``
  ``(B, 64)``, ``"angle"`` ``(B, 3)`` (radians) and ``"trans"`` ``(B, 3)``, and optionally ``"found"`` ``(B,)``.

A callable may carry ``comparable = True`` (official network and weights) and ``name`` attributes; the metrics
copy them into their results. A callable without ``comparable = True`` gives results flagged not comparable. A
landmark callable may also declare ``landmark_model`` (one of :data:`LANDMARK_MODELS`: which detector + landmark
network it runs; AKD checks it against its ``landmark_model`` option) and a ``five_points(images)`` method
returning the face detector's five keypoints ``(B, 5, 2)`` (CSIM's ``five_points="detector"``).

Failed faces (:class:`FailedFaceMixin`, option ``failed_face`` of CSIM, AKD, AED and APD): ``"skip"`` (default)
excludes a sample whose face was not found and counts it; ``"zero"`` scores it 0 and counts it in the mean, as
GAGAvatar's metric code does (xg-chu/GAGAvatar issue #43: ``if p_kps is None or t_kps is None: return 0, 0, 0, 0,
0`` for CSIM and the motion metrics). The result's ``extra`` says how many samples failed (``failed_faces``) and, with
``"zero"``, the mean over the others (``mean_without_failed_faces``); a note states the effect.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from avatar.errors import InputError
from avatar.face.analysis import FaceLandmarks

from .base import EmptyMetricError, MetricResult

__all__ = [
    "COEFF_SHAPES", "FAILED_FACE_MARK", "FAILED_FACE_POLICIES", "LANDMARK_MODELS", "METRIC_BUILT_LANDMARK_MODELS",
    "FaceLandmarks",
    "FailedFaceMixin", "as_coefficients", "as_landmarks", "check_landmark_model", "declared_comparable", "describe",
]

COEFF_SHAPES = {"exp": 64, "angle": 3, "trans": 3}

LANDMARK_MODELS: dict[str, str] = {
    "retinaface-3dfan": "RetinaFace (largest face) + the 2-D part of 3DFAN's FAN (this toolkit's "
                        "eval.face_networks; Portrait4D's preprocessing networks)",
    "face-alignment-2dfan": "face_alignment's 2D-FAN with its SFD detector (LandmarksType.TWO_D): OTAvatar / GOHA "
                            "(OTAvatar issue #27; OTAvatar_processing LmkDet/extract_kp_videos.py)",
    "insightface-3d68": "InsightFace's 68 landmarks (the 1k3d68 model of the antelopev2 / buffalo_l packs, x and y): "
                        "GAGAvatar (xg-chu/GAGAvatar issue #43)",
}
"""The 68-point landmark networks the protocols name (AKD's ``landmark_model`` option)."""

METRIC_BUILT_LANDMARK_MODELS = ("face-alignment-2dfan", "insightface-3d68")
"""The landmark networks AKD builds itself when it is given no landmark callable
(:func:`eval.face_networks.build_face_alignment_landmarks`, :func:`eval.face_networks.build_insightface_landmarks`);
``"retinaface-3dfan"`` is built by ``eval.run`` as the analysis CSIM, AED and APD share
(:func:`eval.face_networks.build_face_networks`)."""

FAILED_FACE_POLICIES = ("skip", "zero")
FAILED_FACE_MARK = "[failed face, scored 0] "
"""Prefix of the exclusion reason of a sample that ``failed_face="zero"`` counts as 0 (so the cache of ``eval.run``,
which stores exclusions with their reasons, gives back the same result when it feeds them again)."""
FACE_FAILURE_REASONS = ("no face found", "degenerate landmarks")


def check_landmark_model(fn: Callable[..., Any] | None, wanted: str, metric: str) -> None:
    """Raise :class:`~avatar.errors.InputError` when ``fn`` declares a ``landmark_model`` other than ``wanted``
    (a callable that declares none is taken at its word)."""
    declared = getattr(fn, "landmark_model", None) if fn is not None else None
    if declared is not None and declared != wanted:
        raise InputError(
            f"{metric}: landmark_model={wanted!r} ({LANDMARK_MODELS.get(wanted, '?')}) but the landmark callable runs "
            f"{declared!r}; this toolkit builds 'retinaface-3dfan', 'face-alignment-2dfan' and 'insightface-3d68' (AKD "
            f"builds the latter two when given no landmarks callable): pass a landmarks callable that runs {wanted!r} (and declares "
            f"landmark_model={wanted!r}), or leave the option at its default")


class FailedFaceMixin:
    """``failed_face`` handling for face metrics (see the module docstring). The metric's options need a
    ``failed_face`` field; it records with :meth:`_record_faces` instead of ``_record``."""

    name: str
    opts: Any
    higher_is_better: bool
    _ids: list[Hashable]
    _exclusions: dict[Hashable, str]

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self._order: dict[Hashable, int] = {}

    def _take_ids(self, ids: Sequence[Hashable] | None, n: int) -> list[Hashable]:
        out = super()._take_ids(ids, n)  # type: ignore[misc]
        for i in out:
            self._order.setdefault(i, len(self._order))
        return out

    def _record_faces(self, values: Tensor, ids: Sequence[Hashable] | None, keep: Tensor,
                      reasons: Sequence[str | None]) -> Tensor:
        """``_record`` with the face failures (``keep`` False) marked as scored 0 under ``failed_face="zero"``;
        returns ``values`` ``(B,)`` with NaN where excluded (0 where scored 0)."""
        values = values.detach().reshape(-1).to("cpu", torch.float64)
        keep_cpu = keep.reshape(-1).to("cpu").bool()
        zero = self.opts.failed_face == "zero"
        if zero:
            reasons = [FAILED_FACE_MARK + r if r is not None and not k else r
                       for r, k in zip(reasons, keep_cpu.tolist(), strict=True)]
        self._record(torch.where(keep_cpu, values, torch.zeros_like(values)), ids, keep_cpu,  # type: ignore[attr-defined]
                     reasons)
        return torch.where(keep_cpu, values, torch.full_like(values, 0.0 if zero else float("nan")))

    @staticmethod
    def _is_face_failure(reason: str) -> bool:
        return reason.startswith(FAILED_FACE_MARK) or reason.startswith(FACE_FAILURE_REASONS)

    def compute(self) -> MetricResult:
        failed = {i: r for i, r in self._exclusions.items() if self._is_face_failure(r)}
        if self.opts.failed_face == "skip":
            result: MetricResult = super().compute()  # type: ignore[misc]
            result.extra.update({"failed_face": "skip", "failed_faces": len(failed)})
            return result
        zeroed = {i: r for i, r in failed.items() if r.startswith(FAILED_FACE_MARK)}
        kept = self._values_tensor()  # type: ignore[attr-defined]
        ids = list(self._ids) + list(zeroed)
        values = torch.cat([kept, torch.zeros(len(zeroed), dtype=torch.float64)])
        if not ids:
            raise EmptyMetricError(f"{self.name}: no sample was counted ({len(self._exclusions)} excluded)")
        order = sorted(range(len(ids)), key=lambda j: self._order.get(ids[j], j))
        ids = [ids[j] for j in order]
        values = values[torch.tensor(order, dtype=torch.long)]
        value, aggregation, extra = self._aggregate(values)  # type: ignore[attr-defined]
        mean_found = float(kept.mean()) if kept.numel() else None
        extra = {**extra, "failed_face": "zero", "failed_faces": len(zeroed), "mean_without_failed_faces": mean_found}
        notes = list(self.notes)  # type: ignore[attr-defined]
        if zeroed:
            best = "a perfect distance" if not self.higher_is_better else "the lowest similarity"
            others = f"{mean_found:.6g}" if mean_found is not None else "none (every sample failed)"
            notes.append(f"{self.name}: {len(zeroed)} of {len(ids)} samples had no face and were scored 0 ({best}; "
                         f"failed_face='zero', GAGAvatar's evaluation): reported {value:.6g}; mean over the "
                         f"{len(ids) - len(zeroed)} samples with faces: {others}")
        exclusions = {i: r for i, r in self._exclusions.items() if i not in zeroed}
        return MetricResult(
            name=self.name, value=value, mean=float(values.mean()), count=len(ids), excluded=len(exclusions),
            options=self.options, comparable=self.comparable, higher_is_better=self.higher_is_better,  # type: ignore[attr-defined]
            aggregation=aggregation, ids=ids, values=values, exclusions=exclusions, notes=notes, extra=extra)


def as_landmarks(out: Any, batch: int | None = None, num_points: int | tuple[int, ...] = 68) -> FaceLandmarks:
    """Normalise a landmark callable's output (see the module docstring); rows with non-finite points count
    as not found. ``batch`` (when given) is checked; ``num_points`` may list several accepted counts."""
    found: Tensor | None = None
    if isinstance(out, FaceLandmarks):
        points, found = out.points, out.found
    elif isinstance(out, Mapping):
        points = out["landmarks"] if "landmarks" in out else out["points"]
        found = out.get("found")
    elif isinstance(out, tuple | list):
        points, found = out
    else:
        points = out
    points = torch.as_tensor(points)
    batch = points.shape[0] if batch is None and points.ndim == 3 else batch
    counts = (num_points,) if isinstance(num_points, int) else tuple(num_points)
    if points.ndim != 3 or points.shape[0] != batch or points.shape[1] not in counts or points.shape[2] != 2:
        want = " or ".join(f"({batch}, {n}, 2)" for n in counts)
        raise ValueError(f"landmarks: expected {want}, got {tuple(points.shape)}")
    finite = torch.isfinite(points).flatten(1).all(1)
    found = finite if found is None else torch.as_tensor(found, device=points.device).reshape(-1).bool() & finite
    if found.numel() != batch:
        raise ValueError(f"landmarks: 'found' has {found.numel()} entries for a batch of {batch}")
    return FaceLandmarks(points.double(), found)


def as_coefficients(out: Any, batch: int, keys: tuple[str, ...]) -> tuple[dict[str, Tensor], Tensor]:
    """Check an extractor's output: ``({key: (B, D) float64}, found (B,) bool)``.

    A found sample with a non-finite coefficient raises (it would average to NaN); not-found samples are left
    to the caller to exclude.
    """
    if not isinstance(out, Mapping):
        raise TypeError(f"coefficient extractor must return a dict, got {type(out).__name__}")
    coeffs: dict[str, Tensor] = {}
    for k in keys:
        if k not in out:
            raise KeyError(f"coefficient extractor output lacks '{k}' (has {', '.join(map(str, out))})")
        v = torch.as_tensor(out[k]).double()
        if v.shape != (batch, COEFF_SHAPES[k]):
            raise ValueError(f"coefficients '{k}': expected ({batch}, {COEFF_SHAPES[k]}), got {tuple(v.shape)}")
        coeffs[k] = v
    found = out.get("found")
    found_t = (torch.ones(batch, dtype=torch.bool) if found is None
               else torch.as_tensor(found).reshape(-1).bool().cpu())
    if found_t.numel() != batch:
        raise ValueError(f"coefficients: 'found' has {found_t.numel()} entries for a batch of {batch}")
    for k, v in coeffs.items():
        bad = found_t.to(v.device) & ~torch.isfinite(v).all(1)
        if bad.any():
            raise FloatingPointError(f"coefficients '{k}' are not finite for {int(bad.sum())} sample(s) marked found")
    return coeffs, found_t


def declared_comparable(fn: Callable[..., Any] | None) -> bool:
    return bool(getattr(fn, "comparable", False)) if fn is not None else False


def describe(fn: Callable[..., Any] | None) -> str | None:
    if fn is None:
        return None
    return str(getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__)
