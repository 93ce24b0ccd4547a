"""Pipelines: photo / video in, frames out; per-avatar state cached and reusable.

* :mod:`.base` - :class:`AvatarPipeline`, the interface of every family's pipeline
* :mod:`.auto` - :func:`load_pipeline`: model id or folder -> the right pipeline
* :mod:`.results` - per-call results (:class:`ReenactStream`, :class:`ReenactResult`, :class:`ReenactedFrame`)
* :mod:`.portrait4d` - :class:`Portrait4DPipeline` and its :class:`Avatar`
* :mod:`.goha` - ``GOHAPipeline`` and its ``GOHAAvatar`` (imported on use: ``load_pipeline("goha")``)
* :mod:`.preprocess`, :mod:`.relative`, :mod:`.prefetch`, :mod:`.frames` - shared steps
"""

from avatar.pipelines.auto import load_pipeline
from avatar.pipelines.base import AvatarLike, AvatarPipeline
from avatar.pipelines.frames import side_by_side, to_uint8
from avatar.pipelines.portrait4d import Avatar, Portrait4DPipeline
from avatar.pipelines.preprocess import FaceAnalysis, FacePreprocessor
from avatar.pipelines.results import ReenactedFrame, ReenactResult, ReenactStream

__all__ = [
    "Avatar",
    "AvatarLike",
    "AvatarPipeline",
    "FaceAnalysis",
    "FacePreprocessor",
    "Portrait4DPipeline",
    "ReenactResult",
    "ReenactStream",
    "ReenactedFrame",
    "load_pipeline",
    "side_by_side",
    "to_uint8",
]
