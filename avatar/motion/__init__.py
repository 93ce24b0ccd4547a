"""Motion descriptors of the driving frame: PD-FGC's 548-d motion vector (:mod:`avatar.motion.pdfgc`).

Its input crop is :func:`avatar.face.geometry.pdfgc_crop` (re-exported here).
"""

from __future__ import annotations

from avatar.face.geometry import pdfgc_affine, pdfgc_crop
from avatar.motion.pdfgc import FanFeatureExtractor, MotionOutputs, PDFGCConfig, PDFGCEncoder

__all__ = [
    "FanFeatureExtractor",
    "MotionOutputs",
    "PDFGCConfig",
    "PDFGCEncoder",
    "pdfgc_affine",
    "pdfgc_crop",
]
