"""Input and output at the edges: photos, videos (PyAV) and the input errors users see."""

from avatar.io.errors import (
    FaceTooSmallError,
    ImageReadError,
    InputError,
    NoFaceError,
    UnreadableVideoError,
    VideoReadError,
)
from avatar.io.image import load_image, to_rgb_uint8
from avatar.io.video import VideoInfo, VideoReader, VideoWriter, pick_video_codec, probe_video

__all__ = [
    "FaceTooSmallError",
    "ImageReadError",
    "InputError",
    "NoFaceError",
    "UnreadableVideoError",
    "VideoInfo",
    "VideoReadError",
    "VideoReader",
    "VideoWriter",
    "load_image",
    "pick_video_codec",
    "probe_video",
    "to_rgb_uint8",
]
