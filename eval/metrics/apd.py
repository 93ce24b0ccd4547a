"""APD: average pose distance, the L1 distance of Deep3DFaceRecon head-pose coefficients.

Formula (per frame): ``APD = mean_k |pose_p[k] - pose_t[k]|`` where ``pose`` is the 3 rotation angles
(``coeff[224:227]``, radians) followed by the 3 translations (``coeff[254:257]``) with
``include_translation=True`` (default: OTAvatar's definition, whose HDTF protocol and tables GOHA follows), or the 3
angles only with ``include_translation=False`` (GAGAvatar / LAM). ``reduction="sum"`` sums instead of averaging.
Reported value: mean over frames; frames without a face are excluded and counted.

Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), handed to the extractor. Network: Deep3DFaceRecon (plugged in; see
:mod:`eval.metrics.coeffs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .coeffs import CoefficientMetric, CoefficientOptions

__all__ = ["APD", "APDOptions"]


@dataclass(frozen=True)
class APDOptions(CoefficientOptions):
    """Attributes:
    include_translation: compare angles + translation (default, OTAvatar: APD over ``coeff[224:227]`` and
        ``coeff[254:257]``, OTAvatar issue #11 as quoted in aigc3d/LAM issue #11) or, with ``False``, the 3 rotation
        angles only (GAGAvatar issue #36, ``F.l1_loss(pred['pose'][:3], tgt['pose'][:3])``; LAM issue #11: "APD
        metric is only for angles"). This is the "angles-only APD" variant; ``failed_face``: see
        :class:`~eval.metrics.coeffs.CoefficientOptions`.
    """

    include_translation: bool = True


class APD(CoefficientMetric):
    name: ClassVar[str] = "apd"
    keys: ClassVar[tuple[str, ...]] = ("angle", "trans")
    Options: ClassVar[type] = APDOptions
    opts: APDOptions

    def _keys(self) -> tuple[str, ...]:
        return ("angle", "trans") if self.opts.include_translation else ("angle",)
