"""Pipelines: photo / video in, frames out; per-avatar state cached and reusable."""

from avatar.pipelines.portrait4d import (
    Avatar,
    Portrait4DPipeline,
    ReenactedFrame,
    ReenactResult,
    side_by_side,
    to_uint8,
)
from avatar.pipelines.preprocess import FaceAnalysis, FacePreprocessor

__all__ = [
    "Avatar",
    "FaceAnalysis",
    "FacePreprocessor",
    "Portrait4DPipeline",
    "ReenactResult",
    "ReenactedFrame",
    "side_by_side",
    "to_uint8",
]
