"""Evaluation metrics: PSNR, SSIM, L1, LPIPS, FID, CSIM, AED, APD, AKD behind one interface.

Every metric is a :class:`Metric`: ``update(pred, target, ids=None)`` adds a batch (per-sample values are kept
with their ids), ``compute()`` returns a :class:`MetricResult` (value, mean, count, excluded, options,
``comparable``). Images are ``(B, 3, H, W)`` float in [0, 1] (or uint8) on any device. FID is pooled.

>>> metric = build_metric("ssim", preset="wang2004")
>>> metric.update(pred, target, ids=["vid0/0001", "vid0/0002"])   # doctest: +SKIP
>>> metric.compute().value                                         # doctest: +SKIP

The networks of LPIPS and CSIM (LPIPS, ArcFace) are :mod:`avatar.losses`' (training's losses run the same ones);
the batched face analysis of CSIM / AKD / AED / APD is :mod:`avatar.face.analysis`. Each module documents its
formula, input range, crop and network; protocol variants are options whose defaults follow the papers (see ``../shared/design/eval-protocols.md``), listed by ``metric.options``.

CSIM, AKD, AED, APD and FID split ``update`` into ``target_features(target)`` (what they compute from the reference
alone) and ``update_with_target_features(pred, rows)``, so ``eval.run`` can keep the reference side on disk
(:mod:`eval.reference_cache`); see :mod:`eval.metrics.base`.
"""

from __future__ import annotations

from typing import Any

from avatar.errors import UnknownNameError

from .aed import AED
from .akd import AKD
from .apd import APD
from .base import EmptyMetricError, ImageMetric, Metric, MetricResult, to_unit_images
from .csim import CSIM
from .face import FaceLandmarks
from .fid import FID, frechet_distance, gaussian_statistics
from .l1 import L1
from .lpips import LPIPS
from .psnr import PSNR
from .ssim import SSIM, SSIM_PRESETS
from .weights import MissingWeightsError

__all__ = [
    "AED", "AKD", "APD", "CSIM", "EmptyMetricError", "FID", "FaceLandmarks", "ImageMetric", "L1", "LPIPS",
    "METRICS", "Metric", "MetricResult", "MissingWeightsError", "PSNR", "SSIM", "SSIM_PRESETS",
    "build_metric", "frechet_distance", "gaussian_statistics", "to_unit_images",
]

METRICS: dict[str, type[Metric]] = {
    cls.name: cls for cls in (PSNR, SSIM, L1, LPIPS, FID, CSIM, AED, APD, AKD)
}


def build_metric(name: str, **kwargs: Any) -> Metric:
    """Build a metric by name (case-insensitive): ``build_metric("apd", include_translation=False)``.

    ``kwargs`` are the metric's options plus its constructor arguments (``allow_random_weights``, ``device``,
    ``extractor``, ``landmarks``, ``embedder`` ...). Unknown names or options raise with the known ones listed.
    """
    try:
        cls = METRICS[name.lower()]
    except KeyError:
        raise UnknownNameError(f"unknown metric '{name}'; known: {', '.join(METRICS)}") from None
    return cls(**kwargs)
