"""Device and dtype names as users type them (CLI flags, app environment variables) -> torch objects."""

from __future__ import annotations

import torch

from avatar.errors import InputError

__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda...`` without a GPU raises with what to use."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name} was asked for but no CUDA device is available; use cpu")
    return name


def resolve_dtype(name: str = "float32") -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` -> the torch dtype; anything else raises listing these."""
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None
