"""PSNR: peak signal-to-noise ratio between a prediction and its ground truth.

Formula (per frame): ``PSNR = 10 * log10(data_range**2 / MSE)`` with ``MSE`` the mean of ``(pred - target)**2``
over all pixels and the 3 channels of one frame, on images in [0, 1] (``data_range = 1``; identical to 255 on
uint8 images up to quantisation, as in OTAvatar's ``20 log10(255 / RMSE)``). The reported value is the mean of the
per-frame PSNRs (``aggregation="per_frame"``, what the NeRFace script used by GOHA and skimage do), or with
``aggregation="pooled"`` one PSNR of the mean MSE over all frames (torchmetrics' ``dim=None``). A frame identical
to its target has PSNR ``+inf``; it is kept (not clamped) and counted in ``extra["n_infinite"]``.

Input: ``(B, 3, H, W)`` in [0, 1] (or uint8). Crop: none (frames as given; the protocol crops/resizes to 512).
Network: none. Optional ``mask``: see :class:`~eval.metrics.base.ImageOptions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import ImageMetric, ImageOptions, _check_choice

__all__ = ["PSNR", "PSNROptions", "psnr"]


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR ``(B,)`` in float64 of ``(B, C, H, W)`` images (``+inf`` where they are identical)."""
    mse = (pred.double() - target.double()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


@dataclass(frozen=True)
class PSNROptions(ImageOptions):
    """Attributes:
    data_range: peak value of the images the formula assumes (1 for [0, 1]).
    aggregation: ``"per_frame"`` (mean of per-frame PSNR, default) or ``"pooled"`` (PSNR of the mean MSE).
    """

    data_range: float = 1.0
    aggregation: str = "per_frame"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("aggregation", self.aggregation, ("per_frame", "pooled"))
        if not self.data_range > 0:
            raise ValueError("data_range must be positive")


class PSNR(ImageMetric):
    name: ClassVar[str] = "psnr"
    higher_is_better: ClassVar[bool] = True
    Options: ClassVar[type] = PSNROptions
    opts: PSNROptions

    def _facts(self) -> dict[str, Any]:
        return {"input_range": "[0, 1]", "unit": "dB", "network": None}

    def per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        return psnr(pred, target, self.opts.data_range)

    def _aggregate(self, values: Tensor) -> tuple[float, str, dict[str, Any]]:
        _, _, extra = super()._aggregate(values)
        extra["n_infinite"] = int(torch.isinf(values).sum())
        if self.opts.aggregation == "per_frame":
            return float(values.mean()), "mean", extra
        mse = self.opts.data_range**2 * torch.pow(10.0, -values / 10.0)  # +inf PSNR -> MSE 0
        mean_mse = float(mse.mean())
        value = math.inf if mean_mse == 0 else 10.0 * math.log10(self.opts.data_range**2 / mean_mse)
        return value, "pooled", extra
