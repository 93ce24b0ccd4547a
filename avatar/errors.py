"""Every error the toolkit raises on purpose derives from :class:`AvatarError`.

Entry points (``avatar`` CLI, the app, ``eval``) catch only :class:`AvatarError`: its message is one plain
sentence that says what is wrong and what to do, printed without a traceback. Anything else is a bug and is
shown with its traceback (exit status 2).

Each class also derives from the built-in exception a caller would naturally catch (``ValueError`` for bad
input, ``FileNotFoundError`` for a missing file), so ``except ValueError`` around a library call keeps working.

Hierarchy::

    AvatarError
    +-- InputError (ValueError)                photos, videos, options the toolkit cannot use as given
    |   +-- ImageReadError, VideoReadError, NoFaceError, FaceTooSmallError
    |   +-- InputNotFoundError (FileNotFoundError), UnknownNameError (KeyError), UnknownOptionError (TypeError)
    +-- ConfigError (ValueError)               a configuration with unknown or invalid fields
    +-- ModelNotFoundError (FileNotFoundError) neither a model id, nor one of our folders, nor a Hub repo
    |   +-- UnknownModelIdError (KeyError)     not a registered model id
    +-- AssetNotFoundError (FileNotFoundError) an upstream file is not cached and cannot be fetched now
    +-- AssetVerificationError (RuntimeError)  a fetched file has the wrong size or digest
    +-- FormatError (ValueError)               a file is not in the format it was declared to be
    +-- UnsafePickleError (pickle.UnpicklingError) a pickle asked for a global that is not allowed
    +-- StateDictMismatchError (ValueError)    strict loading: missing, unexpected or mis-shaped tensors
        +-- CheckpointMismatchError            ... of a model family's checkpoint
"""

from __future__ import annotations

import pickle

__all__ = [
    "AssetNotFoundError",
    "AssetVerificationError",
    "AvatarError",
    "CheckpointMismatchError",
    "ConfigError",
    "FaceTooSmallError",
    "FormatError",
    "ImageReadError",
    "InputError",
    "InputNotFoundError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "NoFaceError",
    "StateDictMismatchError",
    "UnknownModelIdError",
    "UnknownNameError",
    "UnknownOptionError",
    "UnknownOptionValueError",
    "UnsafePickleError",
    "VideoReadError",
]


class AvatarError(Exception):
    """Root of the toolkit's own errors: the message is meant for the user, as it is."""


# ---------------------------------------------------------------------------------------------------------
# input


class InputError(AvatarError, ValueError):
    """A photo, video or option the toolkit cannot use as given."""


class ImageReadError(InputError):
    """The file is missing, empty, truncated or not an image."""


class VideoReadError(InputError):
    """The file is missing, empty, truncated, not a video, or has no video frames."""


class NoFaceError(InputError):
    """No face was found in a photo."""


class FaceTooSmallError(InputError):
    """The face is too small in the photo to build an avatar from it."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder named by the user does not exist (also a :class:`FileNotFoundError`)."""


class UnknownNameError(InputError, KeyError):
    """A name the user gave (a protocol, a metric, a dataset id) is not one the toolkit knows (also a
    :class:`KeyError`); the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownOptionError(InputError, TypeError):
    """An option name that the component does not take (also a :class:`TypeError`, as for a bad keyword)."""


class UnknownOptionValueError(InputError):
    """An option got a value it does not take (the message lists the values it takes)."""


class ConfigError(AvatarError, ValueError):
    """A configuration has unknown fields or values a network cannot be built with."""


# ---------------------------------------------------------------------------------------------------------
# models and assets


class MissingDependencyError(AvatarError, ImportError):
    """An optional package that the chosen feature needs is not installed (the message names the extra that
    brings it, also an :class:`ImportError`)."""


class ModelNotFoundError(AvatarError, FileNotFoundError):
    """A name is neither a registered model id, nor a folder written by ``save_pretrained``, nor a Hub repo."""


class UnknownModelIdError(ModelNotFoundError, KeyError):
    """A name looked up in the model registry is not a registered model id (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AssetNotFoundError(AvatarError, FileNotFoundError):
    """An upstream file is not in the cache and cannot be fetched now."""


class AssetVerificationError(AvatarError, RuntimeError):
    """A fetched file does not match its expected size or SHA-256 digest."""


class FormatError(AvatarError, ValueError):
    """The file is not in the format it was declared to be, or is damaged."""


class UnsafePickleError(AvatarError, pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allowlist. Nothing from the file was executed."""


class StateDictMismatchError(AvatarError, ValueError):
    """A state dict does not match the module: missing, unexpected or wrongly shaped tensors (all named)."""


class CheckpointMismatchError(StateDictMismatchError):
    """A model family's checkpoint does not match the model (strict loading)."""
