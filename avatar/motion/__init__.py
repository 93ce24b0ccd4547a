"""Motion descriptors of the driving frame: PD-FGC's 548-d motion vector (:mod:`avatar.motion.pdfgc`)."""

from __future__ import annotations

from avatar.motion.pdfgc import (
    MOTION_TEMPLATE_224,
    MotionOutputs,
    PDFGCConfig,
    PDFGCEncoder,
    motion_alignment_matrix,
    motion_crop,
)

__all__ = [
    "MOTION_TEMPLATE_224",
    "MotionOutputs",
    "PDFGCConfig",
    "PDFGCEncoder",
    "motion_alignment_matrix",
    "motion_crop",
]
