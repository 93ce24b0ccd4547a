"""Errors about the user's input: each says, in one sentence, what is wrong and what to do.

They derive from :class:`ValueError`, so the command line prints them as one line and exits with status 1.
"""

from __future__ import annotations

__all__ = ["FaceTooSmallError", "ImageReadError", "InputError", "NoFaceError", "VideoReadError"]


class InputError(ValueError):
    """A photo or video the toolkit cannot use as given."""


class ImageReadError(InputError):
    """The file is missing, empty, truncated or not an image."""


class VideoReadError(InputError):
    """The file is missing, empty, truncated, not a video, or has no video frames."""


class NoFaceError(InputError):
    """No face was found in a photo."""


class FaceTooSmallError(InputError):
    """The face is too small in the photo to build an avatar from it."""
