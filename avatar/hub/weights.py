"""Reading weight files and loading them strictly: one mechanism for every network of the library.

* :func:`read_weights` - a ``.safetensors`` file, a converted-asset folder holding one, or an upstream ``.pth``
* :func:`read_converted_weights` - the tensors of one registry file, through the download cache
* :func:`strip_key_prefixes` - drop wrapper prefixes (``module.`` of ``DataParallel``) from checkpoint keys
* :func:`load_state_dict_strict` - copy a state dict into a module; any missing, unexpected or mis-shaped
  tensor is an error that names them
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ModelNotFoundError, StateDictMismatchError

__all__ = [
    "StateDictMismatchError",
    "find_official_weights",
    "read_official_metadata",
    "load_state_dict_strict",
    "read_converted_weights",
    "read_weights",
    "strip_key_prefixes",
]




def strip_key_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove each prefix in turn from the keys that start with it (other keys are kept as they are)."""
    out = dict(state_dict)
    for prefix in prefixes:
        out = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}
    return out


def _preview(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    what: str,
    optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
    error: type[StateDictMismatchError] | None = None,
) -> None:
    """Copy ``state_dict`` into ``module`` strictly: every key of the module must be present with the same
    shape and no other key may be there.

    Keys ending in one of ``optional_suffixes`` (BatchNorm step counters, unused at inference) may be
    absent; the module keeps its own value then.

    Raises:
        StateDictMismatchError: with the counts and the first names of the missing, unexpected and
            mis-shaped tensors.
    """
    own = module.state_dict()
    given = {k: (v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))) for k, v in state_dict.items()}
    missing = [k for k in own if k not in given and not k.endswith(optional_suffixes)]
    unexpected = [k for k in given if k not in own]
    wrong_shape = [
        f"{k} {tuple(given[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in given and tuple(given[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = [f"{what}: the state dict does not match the network ({len(own)} tensors expected, "
                 f"{len(given)} given)."]
        if missing:
            parts.append(f"Missing {len(missing)}: {_preview(missing)}.")
        if unexpected:
            parts.append(f"Unexpected {len(unexpected)}: {_preview(unexpected)}.")
        if wrong_shape:
            parts.append(f"Wrong shape {len(wrong_shape)}: {_preview(wrong_shape)}.")
        raise (error or StateDictMismatchError)(" ".join(parts))
    full = {k: given.get(k, v) for k, v in own.items()}
    module.load_state_dict(full, strict=True)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Read a flat state dict from a ``.safetensors`` file, a converted-asset folder holding one, or an
    upstream ``.pth`` (read with ``torch.load(weights_only=True)``; nested dicts flattened with dots)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise ModelNotFoundError(f"{path}: expected exactly one .safetensors file, found {len(found)}")
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from avatar.hub.formats import read_torch_checkpoint

    return {k: torch.as_tensor(v) for k, v in read_torch_checkpoint(path).tensors.items()}


def read_converted_weights(key: str, local_dir: str | Path | None = None) -> dict[str, Tensor]:
    """The tensors of one registry file (:data:`avatar.hub.registry.FILES`), converted to safetensors by
    :func:`avatar.hub.download.ensure_file` (fetched, or taken from ``local_dir``). Offline and not cached,
    this raises :class:`avatar.hub.download.AssetNotFoundError`."""
    from avatar.hub.download import ensure_file

    return read_weights(ensure_file(key, local_dir=local_dir))


_OUR_METADATA_FILES = ("config.json", "manifest.json")


def find_official_weights(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The ``<name>.safetensors`` in ``folder`` whose JSON sidecar (``avatar convert`` output) holds official
    ``init_kwargs``, and that metadata."""
    for meta_path in sorted(folder.glob("*.json")):
        if meta_path.name in _OUR_METADATA_FILES:
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        weights = meta_path.with_suffix(".safetensors")
        if isinstance(meta, dict) and "init_kwargs" in meta and weights.is_file():
            return weights, meta
    raise ModelNotFoundError(
        f"{folder} holds neither config.json + model.safetensors (from save_pretrained) nor a converted official "
        "checkpoint (<name>.safetensors + <name>.json from `avatar convert`)"
    )


def read_official_metadata(folder_or_file: str | Path, official_class: str, what: str) -> tuple[Path, dict[str, Any]]:
    """The ``.safetensors`` of a converted official checkpoint (the folder of ``avatar convert`` output, or the file)
    and its metadata; :class:`~avatar.errors.CheckpointMismatchError` when it holds another class than
    ``official_class`` (``what`` names the expected network in that message)."""
    from ..errors import CheckpointMismatchError

    path = Path(folder_or_file)
    if path.is_file():
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise ModelNotFoundError(f"{meta_path} (the metadata written by `avatar convert`) is missing")
        weights, meta = path, json.loads(meta_path.read_text())
    else:
        weights, meta = find_official_weights(path)
    cls_name = str(meta.get("class_name", ""))
    if cls_name and not cls_name.endswith(official_class):
        raise CheckpointMismatchError(f"{weights} holds a {cls_name}, not {what} ({official_class})")
    return weights, meta
