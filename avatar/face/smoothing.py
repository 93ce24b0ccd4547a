"""One-euro filtering of per-frame crop parameters and head poses for video.

The one-euro filter (Casiez et al., CHI 2012) is an exponential smoother whose cut-off frequency grows with
the (smoothed) speed of the signal: slow jitter is removed strongly, fast motion is followed with little lag.
For a time step ``te`` and cut-off ``fc`` the smoothing weight is ``a = r / (r + 1)`` with
``r = 2 pi fc te``; each step computes

``dx = (x - x_prev) / te``, ``dx_hat = a(d_cutoff) dx + (1 - a) dx_hat_prev``,
``fc = min_cutoff + beta |dx_hat|``, ``x_hat = a(fc) x + (1 - a) x_hat_prev``.

The first sample initialises the state (derivative 0) and is returned unchanged. Every channel of a vector
signal is filtered independently (its own derivative and cut-off), which is what the official per-scalar
filters do. As in the official code, time is the frame index unless timestamps are given, so cut-offs are in
cycles per frame.

Official usage (``data_preprocess/cropping/crop_images_portrait_model.py``): the crop translation ``t`` is
filtered with ``min_cutoff=0.001, beta=0.05`` and the crop scale ``s`` (after ``s = 180 / fitted scale``)
with ``min_cutoff=0.0001, beta=0.005``, both with ``d_cutoff=1``; smoothing is off by default
(``use_crop_smooth=False``). The official code does not smooth poses; :data:`POSE_FILTER` is our choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from avatar.face.geometry import AlignParams

__all__ = [
    "CROP_SCALE_FILTER",
    "CROP_TRANSLATION_FILTER",
    "POSE_FILTER",
    "OneEuroFilter",
    "OneEuroParams",
    "one_euro_filter",
    "smooth_align_params",
    "smooth_poses",
    "smoothing_factor",
]

Signal = TypeVar("Signal", np.ndarray, Tensor)


@dataclass(frozen=True)
class OneEuroParams:
    """Filter parameters: ``min_cutoff`` and ``d_cutoff`` in cycles per time unit, ``beta`` per signal unit."""

    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0


CROP_TRANSLATION_FILTER = OneEuroParams(min_cutoff=0.001, beta=0.05, d_cutoff=1.0)
"""Official filter of the crop translation ``(tx, ty)`` (source pixels)."""

CROP_SCALE_FILTER = OneEuroParams(min_cutoff=0.0001, beta=0.005, d_cutoff=1.0)
"""Official filter of the crop resize factor ``s``."""

POSE_FILTER = OneEuroParams(min_cutoff=0.05, beta=5.0, d_cutoff=1.0)
"""Our filter for rotation vectors (radians) per frame: not official (the official code does not smooth poses).

At rest the cut-off is 0.05 cycles/frame (weight 0.24); a head turning at 0.04 rad/frame (1 rad/s at 25 fps)
raises it to about 0.25 (weight 0.61).
"""


def smoothing_factor(time_step: float | Signal, cutoff: float | Signal) -> float | Signal:
    """Exponential-smoothing weight ``r / (r + 1)``, ``r = 2 pi cutoff time_step`` (elementwise)."""
    r = 2 * math.pi * cutoff * time_step
    return r / (r + 1)


class OneEuroFilter:
    """Stateful one-euro filter of a numpy array or torch tensor of any fixed shape (channels independent).

    Args:
        min_cutoff, beta, d_cutoff: see :class:`OneEuroParams` (defaults: the reference filter's).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.params = OneEuroParams(float(min_cutoff), float(beta), float(d_cutoff))
        self.reset()

    @classmethod
    def from_params(cls, params: OneEuroParams) -> OneEuroFilter:
        return cls(params.min_cutoff, params.beta, params.d_cutoff)

    def reset(self) -> None:
        """Forget the state: the next sample starts a new sequence."""
        self.x_prev: np.ndarray | Tensor | None = None
        self.dx_prev: np.ndarray | Tensor | None = None
        self.t_prev: float = 0.0

    def __call__(self, x: Signal, t: float | None = None) -> Signal:
        """Filter one sample ``x`` taken at time ``t`` (default: previous time + 1; first sample: 0)."""
        if self.x_prev is None:
            self.x_prev = x
            self.dx_prev = x * 0
            self.t_prev = 0.0 if t is None else float(t)
            return x
        t = self.t_prev + 1.0 if t is None else float(t)
        te = t - self.t_prev
        if te <= 0:
            raise ValueError(f"timestamps must increase (got {t} after {self.t_prev})")
        p = self.params
        a_d = smoothing_factor(te, p.d_cutoff)
        dx_hat = a_d * ((x - self.x_prev) / te) + (1 - a_d) * self.dx_prev
        a = smoothing_factor(te, p.min_cutoff + p.beta * abs(dx_hat))
        x_hat = a * x + (1 - a) * self.x_prev
        self.x_prev, self.dx_prev, self.t_prev = x_hat, dx_hat, t
        return x_hat


def one_euro_filter(
    signal: Signal,
    params: OneEuroParams = OneEuroParams(),  # noqa: B008 - frozen dataclass, immutable default
    timestamps: Sequence[float] | None = None,
) -> Signal:
    """Filter a whole sequence ``(T, ...)`` (numpy or torch) along its first axis; returns the same shape."""
    filt = OneEuroFilter.from_params(params)
    times: Sequence[float | None] = [None] * len(signal) if timestamps is None else timestamps
    if len(times) != len(signal):
        raise ValueError(f"{len(times)} timestamps for {len(signal)} samples")
    out = [filt(signal[i], times[i]) for i in range(len(signal))]
    return torch.stack(out) if isinstance(signal, Tensor) else np.stack(out)


def smooth_align_params(
    params: Sequence[AlignParams],
    translation: OneEuroParams = CROP_TRANSLATION_FILTER,
    scale: OneEuroParams = CROP_SCALE_FILTER,
) -> list[AlignParams]:
    """Smooth the crops of consecutive video frames as the official ``use_smooth`` option does.

    The translation ``(tx, ty)`` and the resize factor ``s`` are filtered separately; image sizes are kept.
    (The official translation smoother keeps stale state across videos processed in one run; here each call
    is one independent sequence.)
    """
    if not params:
        return []
    t = one_euro_filter(np.array([[p.tx, p.ty] for p in params], dtype=np.float64), translation)
    s = one_euro_filter(np.array([p.scale for p in params], dtype=np.float64), scale)
    return [
        replace(p, tx=float(ti[0]), ty=float(ti[1]), scale=float(si))
        for p, ti, si in zip(params, t, s, strict=True)
    ]


def smooth_poses(poses: Signal, params: OneEuroParams = POSE_FILTER) -> Signal:
    """Smooth ``(T, D)`` per-frame rotation vectors (e.g. FLAME neck/jaw poses), componentwise.

    Componentwise filtering of rotation vectors is adequate for the small frame-to-frame changes of a
    talking head (far from the ``pi`` wrap-around).
    """
    return one_euro_filter(poses, params)
