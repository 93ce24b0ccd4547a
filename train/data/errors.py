"""The error of training data that cannot be used as it is."""

from __future__ import annotations

from avatar.errors import InputError

__all__ = ["TrainDataError"]


class TrainDataError(InputError):
    """A training data file (an official LMDB, a Parquet shard) is corrupt, incomplete or not in the format it
    should be; the message names the file and the record (an :class:`~avatar.errors.InputError`, so a
``ValueError``).

    Attributes:
        path: the LMDB folder or Parquet shard.
        key: the record: an LMDB key (``'00000003'``, ``'num_samples'``) or a shard row; ``None`` for the file.
    """

    def __init__(self, message: str, path: object = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.key = key
