"""Errors about the user's input (defined in :mod:`avatar.errors`, re-exported here for the I/O layer), and
:class:`UnreadableVideoError`, FFmpeg's refusals in plain words.

Each says, in one sentence, what is wrong and what to do; they derive from :class:`avatar.errors.InputError`
(a :class:`ValueError` too), so entry points print them as one line and exit with status 1.
"""

from __future__ import annotations

from avatar.errors import FaceTooSmallError, ImageReadError, InputError, NoFaceError, VideoReadError

__all__ = ["FaceTooSmallError", "ImageReadError", "InputError", "NoFaceError", "UnreadableVideoError",
           "VideoReadError"]


class UnreadableVideoError(VideoReadError):
    """PyAV/FFmpeg cannot open or decode the file: invalid or damaged data, a container or codec this FFmpeg
    build does not know, or no permission to read it. The message says so in plain words (never FFmpeg's
    ``[Errno ...]`` text) and how to convert the file; :attr:`reason` is the short cause (``'invalid data'``)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
