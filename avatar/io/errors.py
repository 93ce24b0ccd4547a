"""Errors about the user's input (defined in :mod:`avatar.errors`, re-exported here for the I/O layer).

Each says, in one sentence, what is wrong and what to do; they derive from :class:`avatar.errors.InputError`
(a :class:`ValueError` too), so entry points print them as one line and exit with status 1.
"""

from __future__ import annotations

from avatar.errors import FaceTooSmallError, ImageReadError, InputError, NoFaceError, VideoReadError

__all__ = ["FaceTooSmallError", "ImageReadError", "InputError", "NoFaceError", "VideoReadError"]
