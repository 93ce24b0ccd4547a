"""Shared machinery of AED and APD: distances between Deep3DFaceRecon coefficients of two images.

The coefficient extractor is plugged in (see :mod:`eval.metrics.face`): a callable mapping ``(B, 3, H, W)``
images in [0, 1] to ``{"exp": (B, 64), "angle": (B, 3), "trans": (B, 3)}`` (+ optional ``"found"``), e.g. a
Deep3DFaceRecon wrapper that detects 5 points and aligns the face to 224 (``align_img``) itself. Coefficients
computed elsewhere can be fed with :meth:`CoefficientMetric.update_coeffs`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Metric, _check_choice, to_unit_images
from .face import FAILED_FACE_POLICIES, FailedFaceMixin, as_coefficients, declared_comparable, describe

__all__ = ["CoefficientMetric", "CoefficientOptions"]

Extractor = Callable[[Tensor], Mapping[str, Any]]


@dataclass(frozen=True)
class CoefficientOptions:
    """Attributes:
    reduction: over the coefficient entries of one frame: ``"mean"`` (default; ``F.l1_loss``'s mean, as the
        OTAvatar/GAGAvatar authors describe) or ``"sum"``.
    failed_face: ``"skip"`` (default: a frame without a face in either image is excluded and counted) or
        ``"zero"`` (GAGAvatar's metric code, xg-chu/GAGAvatar issue #43, returns 0 for AED and APD then: the frame
        counts as a perfect 0 distance; never a default, see :mod:`eval.metrics.face`).
    """

    reduction: str = "mean"
    failed_face: str = "skip"

    def __post_init__(self) -> None:
        _check_choice("reduction", self.reduction, ("mean", "sum"))
        _check_choice("failed_face", self.failed_face, FAILED_FACE_POLICIES)


class CoefficientMetric(FailedFaceMixin, Metric):
    """``update(pred, target, ids=None)`` runs the extractor on both; ``update_coeffs`` takes coefficients.
    Target side (:meth:`target_features`): the target's coefficients and ``found``."""

    keys: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[bool] = False
    Options: ClassVar[type] = CoefficientOptions
    has_target_features: ClassVar[bool] = True

    def __init__(self, *, extractor: Extractor | None = None, comparable: bool | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.extractor = extractor
        ok = declared_comparable(extractor) if comparable is None else comparable
        if not ok:
            self._not_comparable(f"{self.name}: the coefficient extractor is not declared official "
                                 "(comparable=True): not comparable")

    def _keys(self) -> tuple[str, ...]:
        return self.keys

    def _facts(self) -> dict[str, Any]:
        return {"network": "Deep3DFaceRecon (BFM 2009) coefficients", "extractor": describe(self.extractor),
                "coefficients": list(self._keys())}

    def distance(self, pred: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        """Per-sample L1 distance ``(B,)`` over the concatenated coefficients of :meth:`_keys`."""
        p = torch.cat([pred[k] for k in self._keys()], 1)
        t = torch.cat([target[k].to(p.device) for k in self._keys()], 1)
        d = (p - t).abs()
        return d.mean(1) if self.opts.reduction == "mean" else d.sum(1)

    def _extractor(self) -> Extractor:
        if self.extractor is None:
            raise ValueError(f"{self.name}: no coefficient extractor; pass extractor=... or use update_coeffs()")
        return self.extractor

    def target_dependencies(self) -> dict[str, Any]:
        # reduction and failed_face: pair only
        return {"coefficients": list(self._keys()), "extractor": self.extractor}

    @torch.no_grad()
    def target_features(self, target: Tensor) -> dict[str, Tensor]:
        """The target's coefficients of :meth:`_keys` (``(B, D)`` float64) and ``found`` ``(B,)`` bool."""
        target = to_unit_images(target, f"{self.name} target")
        coeffs, found = as_coefficients(self._extractor()(target), target.shape[0], self._keys())
        return {**coeffs, "found": found}

    @torch.no_grad()
    def update_with_target_features(self, pred: Tensor, target_features: Mapping[str, Tensor],
                                    ids: Sequence[Hashable] | None = None) -> Tensor:
        """Add a batch from ``pred`` and its targets' rows of :meth:`target_features`; returns ``(B,)`` (NaN marks
        excluded samples)."""
        pred = to_unit_images(pred, f"{self.name} pred")
        n_target = target_features["found"].shape[0]
        if pred.shape[0] != n_target:
            raise ValueError(f"{self.name}: {pred.shape[0]} predictions but {n_target} targets")
        return self.update_coeffs(self._extractor()(pred), target_features, ids)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, ids: Sequence[Hashable] | None = None) -> Tensor:
        """Add a batch of images; returns the per-sample values ``(B,)`` (NaN marks excluded samples)."""
        self._extractor()
        pred = to_unit_images(pred, f"{self.name} pred")
        target = to_unit_images(target, f"{self.name} target")
        if pred.shape[0] != target.shape[0]:
            raise ValueError(f"{self.name}: {pred.shape[0]} predictions but {target.shape[0]} targets")
        return self.update_with_target_features(pred, self.target_features(target), ids)

    def update_coeffs(self, pred: Mapping[str, Any], target: Mapping[str, Any],
                      ids: Sequence[Hashable] | None = None) -> Tensor:
        """Add coefficients computed elsewhere (dicts as the extractor returns them, ``"found"`` optional)."""
        B = torch.as_tensor(pred[self._keys()[0]]).shape[0]
        pc, found_p = as_coefficients(pred, B, self._keys())
        tc, found_t = as_coefficients(target, B, self._keys())
        values = self.distance(pc, tc).cpu()
        keep = found_p & found_t
        reasons = [None if k else ("no face found in target" if not ft else "no face found in pred")
                   for k, ft in zip(keep.tolist(), found_t.tolist(), strict=True)]
        return self._record_faces(values, ids, keep, reasons)
