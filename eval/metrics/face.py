"""What the face networks plugged into the metrics return, and how their outputs are checked.

* A landmark callable maps ``(B, 3, H, W)`` images in [0, 1] to 68 iBUG landmarks in **pixels of the input
  image** (``x`` right, ``y`` down, pixel centres at integer coordinates; face_alignment's convention). It may
  return a :class:`FaceLandmarks` (the result type of :mod:`avatar.face.analysis`), a ``(points, found)``
  tuple, a dict with ``"landmarks"`` (or ``"points"``) and optionally ``"found"``, or a bare ``(B, 68, 2)``
  tensor whose rows are NaN where no face was found.
* A coefficient extractor (Deep3DFaceRecon) maps ``(B, 3, H, W)`` images in [0, 1] to a dict with ``"exp"``
  ``(B, 64)``, ``"angle"`` ``(B, 3)`` (radians) and ``"trans"`` ``(B, 3)``, and optionally ``"found"`` ``(B,)``.

A callable may carry ``comparable = True`` (official network and weights) and ``name`` attributes; the metrics
copy them into their results. A callable without ``comparable = True`` gives results flagged not comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from avatar.face.analysis import FaceLandmarks

__all__ = ["COEFF_SHAPES", "FaceLandmarks", "as_coefficients", "as_landmarks", "declared_comparable", "describe"]

COEFF_SHAPES = {"exp": 64, "angle": 3, "trans": 3}


def as_landmarks(out: Any, batch: int | None = None, num_points: int = 68) -> FaceLandmarks:
    """Normalise a landmark callable's output (see the module docstring); rows with non-finite points count
    as not found. ``batch`` (when given) is checked."""
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
    if points.shape != (batch, num_points, 2):
        raise ValueError(f"landmarks: expected ({batch}, {num_points}, 2), got {tuple(points.shape)}")
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
