"""Convert one upstream file into ``<name>.safetensors`` + ``<name>.json`` (or a verified copy).

The output is written into a temporary folder beside ``out_dir`` and moved into place only when complete,
so a failed or refused conversion creates nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .formats import ExtractedWeights, FormatError, guess_format, read_asset

__all__ = ["ConvertedFile", "convert_file", "sha256_of", "save_tensors", "COPY_FORMATS"]

logger = logging.getLogger(__name__)

# Formats that hold no executable content: stored as a verified copy.
COPY_FORMATS = frozenset({"text", "raw", "mat"})


@dataclass
class ConvertedFile:
    """Where a conversion put its outputs.

    Attributes:
        weights: the ``.safetensors`` file (``None`` for copied formats).
        metadata: the ``.json`` sidecar with the format, class names, init kwargs and source digest.
        copy: the copied file for formats that are stored as they are.
    """

    weights: Path | None
    metadata: Path
    copy: Path | None = None
    num_tensors: int = 0


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _to_tensor(name: str, value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf" or value.dtype.itemsize > 8:
            raise FormatError(f"array '{name}' has dtype {value.dtype}, which safetensors cannot store")
        if value.dtype.kind == "u" and value.dtype != np.uint8:
            value = value.astype(np.int64)  # torch has no uint32/uint64 tensors in all versions
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    else:
        raise FormatError(f"'{name}' is a {type(value).__name__}, not a tensor")
    return tensor.contiguous()


def save_tensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> int:
    """Write tensors to safetensors, cloning any that share memory (safetensors refuses shared storage)."""
    from safetensors.torch import save_file

    out: dict[str, Any] = {}
    seen_storages: set[int] = set()
    for name, value in tensors.items():
        tensor = _to_tensor(name, value)
        if tensor.numel() == 0:
            out[name] = tensor
            continue
        if tensor.untyped_storage().data_ptr() in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    save_file(out, str(path), metadata=metadata)
    return len(out)


def convert_file(
    src: str | Path,
    out_dir: str | Path,
    *,
    fmt: str | None = None,
    name: str | None = None,
    network: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> ConvertedFile:
    """Convert ``src`` into ``out_dir/<name>.safetensors`` and ``out_dir/<name>.json``.

    Args:
        src: an upstream file (pickle, ``.pth``, ``.npy``, TorchScript zip, text).
        out_dir: output folder; created only when the conversion succeeds.
        fmt: reader format; guessed from the content when ``None``.
        name: output stem; defaults to the source stem.
        network: for persistence pickles, which network to extract (default ``G_ema``).

    Raises:
        UnsafePickleError: the file names a global outside the allowlist (nothing is run or written).
        FormatError: the file is damaged or not of the declared format.
    """
    src = Path(src)
    if not src.is_file():
        raise InputError(f"no such file: {src}")
    out_dir = Path(out_dir)
    name = name or src.name.split(".")[0]
    fmt = fmt or (guess_format(src) if src.suffix not in (".txt", ".mat") else "raw")
    digest = sha256_of(src)
    metadata: dict[str, Any] = {"source_file": src.name, "source_sha256": digest, "source_size": src.stat().st_size}
    metadata.update(extra_metadata or {})

    extracted: ExtractedWeights | None = None
    if fmt not in COPY_FORMATS:
        kwargs = {"network": network} if fmt == "persistence-pickle" and network else {}
        extracted = read_asset(src, fmt, **kwargs)  # raises before anything is written
        metadata.update(extracted.metadata)
    metadata.setdefault("format", fmt)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        result_names: dict[str, str] = {}
        num = 0
        if extracted is not None:
            shapes = {k: list(getattr(v, "shape", ())) for k, v in extracted.tensors.items()}
            metadata["tensors"] = shapes
            num = save_tensors(extracted.tensors, tmp / f"{name}.safetensors", {"format": fmt, "source_sha256": digest})
            result_names["weights"] = f"{name}.safetensors"
        else:
            shutil.copyfile(src, tmp / src.name)
            result_names["copy"] = src.name
        metadata["num_tensors"] = num
        (tmp / f"{name}.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=repr))
        out_dir.mkdir(parents=True, exist_ok=True)
        for entry in tmp.iterdir():
            os.replace(entry, out_dir / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s (%s) -> %s: %d tensors", src.name, fmt, out_dir, num)
    return ConvertedFile(
        weights=out_dir / result_names["weights"] if "weights" in result_names else None,
        metadata=out_dir / f"{name}.json",
        copy=out_dir / result_names["copy"] if "copy" in result_names else None,
        num_tensors=num,
    )
