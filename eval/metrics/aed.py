"""AED: average expression distance, the L1 distance of Deep3DFaceRecon expression coefficients.

Formula (per frame): ``AED = mean_k |exp_p[k] - exp_t[k]|`` over the 64 BFM expression coefficients
(``coeff[80:144]`` of Deep3DFaceRecon's 257) of the prediction and the target (ground-truth frame for
same-identity, the driving frame for cross-identity); ``reduction="sum"`` sums instead. Reported value: mean over
frames; frames where the extractor found no face (in either image) are excluded and counted. This is the avatar
papers' AED (OTAvatar / GOHA / GAGAvatar), not FOMM's identity-embedding "AED".

Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), handed to the extractor, which does its own detection and 224 crop.
Network: Deep3DFaceRecon (plugged in; see :mod:`eval.metrics.coeffs`). Which weights matter: OTAvatar used the
original release, GOHA the 2023-04 update (``epoch_20.pth``, asset key ``deep3d-recon``); say which in the report.
"""

from __future__ import annotations

from typing import ClassVar

from .coeffs import CoefficientMetric, CoefficientOptions

__all__ = ["AED", "AEDOptions"]

AEDOptions = CoefficientOptions


class AED(CoefficientMetric):
    name: ClassVar[str] = "aed"
    keys: ClassVar[tuple[str, ...]] = ("exp",)
