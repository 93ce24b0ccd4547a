"""L1: mean absolute pixel difference between a prediction and its ground truth.

Formula (per frame): ``L1 = data_range * mean(|pred - target|)`` over all pixels and the 3 channels, on images in
[0, 1]; ``data_range=1`` reports it on the [0, 1] scale (the NeRFace script used by GOHA: ``mean|a - b|`` of
``PIL / 255``), ``2`` on the [-1, 1] scale, ``255`` on the uint8 scale. Reported value: mean over frames.

Input: ``(B, 3, H, W)`` in [0, 1] (or uint8). Crop: none (frames as given). Network: none.
Optional ``mask``: see :class:`~eval.metrics.base.ImageOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from .base import ImageMetric, ImageOptions

__all__ = ["L1", "L1Options", "l1"]


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image mean absolute difference ``(B,)`` in float64."""
    return (pred.double() - target.double()).abs().flatten(1).mean(1)


@dataclass(frozen=True)
class L1Options(ImageOptions):
    """Attributes:
    data_range: scale the [0, 1] difference is reported on (1: [0, 1], 2: [-1, 1], 255: uint8).
    """

    data_range: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data_range > 0:
            raise ValueError("data_range must be positive")


class L1(ImageMetric):
    name: ClassVar[str] = "l1"
    higher_is_better: ClassVar[bool] = False
    Options: ClassVar[type] = L1Options
    opts: L1Options

    def _facts(self) -> dict[str, Any]:
        return {"input_range": "[0, 1]", "network": None}

    def per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        return l1(pred, target) * self.opts.data_range
