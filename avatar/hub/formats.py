"""Readers for each upstream file format. They return tensors and plain metadata, never live objects.

| format (``AssetFormat``) | files | how it is read |
|---|---|---|
| ``persistence-pickle`` | ``portrait4d-*.pkl``, ``genhead-*.pkl`` | :class:`RestrictedUnpickler`; one network's state dict + init kwargs |
| ``chumpy-pickle`` | FLAME ``generic_model.pkl`` | :class:`RestrictedUnpickler` (latin1); ``Ch`` leaves and sparse matrices densified |
| ``numpy-pickle`` | ``FLAME_masks.pkl`` | :class:`RestrictedUnpickler` (latin1); dict of arrays |
| ``npy`` | ``*.npy`` (object arrays allowed) | header parsed by numpy; object payloads through :class:`RestrictedUnpickler` |
| ``torch`` | ``*.pth`` state dicts | ``torch.load(weights_only=True)``; nested dicts flattened with dots |
| ``torchscript`` | 3DFAN ``*.zip`` | ``data.pkl`` through :class:`RestrictedUnpickler`, storages read from the archive; code never run |
| ``text`` / ``mat`` / ``raw`` | ``*.txt``, BFM ``*.mat``, anything else | copied as they are (no code inside) |
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from .unpickle import (
    InertDict,
    ObjectRecord,
    PersistentRecord,
    UnsafePickleError,
    make_zip_storage_ref,
    restricted_load,
    restricted_loads,
)

__all__ = ["ExtractedWeights", "read_asset", "read_persistence_pickle", "read_chumpy_pickle", "read_npy"]




@dataclass
class ExtractedWeights:
    """What a reader got out of one upstream file.

    Attributes:
        tensors: flat name -> tensor (numpy arrays are turned into tensors by the converter).
        metadata: JSON-serialisable facts (class names, init kwargs, non-tensor fields).
    """

    tensors: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# JSON helpers


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """Turn records, numpy scalars, tuples and dicts into JSON data. Tensors and arrays become a summary."""
    if depth > 50:
        return "<too deep>"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else {"__array__": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, InertDict | dict):
        return {str(k): to_jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v, depth + 1) for v in value]
    if isinstance(value, PersistentRecord):
        return {"__class__": value.class_path}
    if isinstance(value, ObjectRecord):
        return {"__class__": value.class_path}
    if isinstance(value, type) and issubclass(value, ObjectRecord):
        return {"__type__": value.class_path}
    if isinstance(value, bytes):
        return {"__bytes__": len(value)}
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return {"__tensor__": list(value.shape), "dtype": str(value.dtype)}
        if isinstance(value, torch.dtype):
            return str(value)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return repr(value)


# --------------------------------------------------------------------------------------------------------
# nn.Module records -> state dict


def _record_state(record: Any) -> dict[str, Any]:
    if isinstance(record, PersistentRecord):
        return record.state
    if isinstance(record, ObjectRecord):
        state = record.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slotstate)
        if state is None:
            state = dict(record.items)
        if not isinstance(state, dict):
            raise FormatError(f"{record.class_path} has a state of type {type(state).__name__}, not a dict")
        return state
    raise FormatError(f"expected a module record, got {type(record).__name__}")


def module_state_dict(record: Any, prefix: str = "") -> dict[str, Any]:
    """Rebuild ``nn.Module.state_dict()`` from a pickled module record: parameters, then persistent
    buffers, then children in order, with dotted names. ``None`` entries are skipped as torch does."""
    state = _record_state(record)
    out: dict[str, Any] = {}
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _module_classes(record: Any, prefix: str = "") -> dict[str, str]:
    state = _record_state(record)
    classes = {prefix.rstrip(".") or "<root>": record.class_path}
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            classes.update(_module_classes(child, f"{prefix}{name}."))
    return classes


# --------------------------------------------------------------------------------------------------------
# readers


def read_persistence_pickle(path: str | Path, network: str = "G_ema") -> ExtractedWeights:
    """Read an EG3D persistence pickle (``{'G', 'D', 'G_ema', ...}``) and extract ``network``.

    Returns the network's state dict (upstream names) and its class name, ``init_args``, ``init_kwargs``
    and the class of every submodule. The embedded module source is never executed.
    """
    with open(path, "rb") as f:
        data = restricted_load(f)
    if isinstance(data, PersistentRecord | ObjectRecord):
        root, available = data, ["<root>"]
    elif isinstance(data, dict):
        available = [str(k) for k in data]
        if network not in data:
            raise FormatError(f"{path}: no network '{network}' in this pickle (it holds {available})")
        root = data[network]
    else:
        raise FormatError(f"{path}: expected a dict of networks, got {type(data).__name__}")
    if not isinstance(root, PersistentRecord | ObjectRecord):
        raise FormatError(f"{path}: '{network}' is a {type(root).__name__}, not a network")
    state = _record_state(root)
    tensors = module_state_dict(root)
    if not tensors:
        raise FormatError(f"{path}: network '{network}' has no parameters or buffers")
    metadata = {
        "format": "persistence-pickle",
        "network": network,
        "networks_in_file": available,
        "class_name": getattr(root, "class_name", root.class_path),
        "init_args": to_jsonable(state.get("_init_args", ())),
        "init_kwargs": to_jsonable(state.get("_init_kwargs", {})),
        "module_classes": _module_classes(root),
    }
    if isinstance(data, dict) and "training_set_kwargs" in data:
        metadata["training_set_kwargs"] = to_jsonable(data["training_set_kwargs"])
    return ExtractedWeights(tensors, metadata)


def _chumpy_value(name: str, value: Any) -> Any:
    """Turn one chumpy-pickle field into a numpy array (or plain data)."""
    if isinstance(value, ObjectRecord):
        path = value.class_path
        state = _record_state(value)
        if path == "chumpy.ch.Ch":
            if "x" not in state:
                raise FormatError(f"chumpy field '{name}' has no 'x' array")
            return np.asarray(state["x"])
        if path.startswith("chumpy."):
            raise FormatError(
                f"chumpy field '{name}' is a {path} expression; only plain Ch leaves can be read without "
                "running chumpy"
            )
        if path.startswith("scipy.sparse.") and path.rsplit(".", 1)[-1] in ("csc_matrix", "csr_matrix"):
            return _densify_compressed(name, path.rsplit(".", 1)[-1][:3], state)
        raise FormatError(f"field '{name}' holds an unsupported object {path}")
    return value


def _densify_compressed(name: str, kind: str, state: dict[str, Any]) -> np.ndarray:
    shape = state.get("_shape", state.get("shape"))
    data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
    if shape is None:
        raise FormatError(f"sparse field '{name}' has no shape")
    rows, cols = (int(s) for s in shape)
    dense = np.zeros((rows, cols), dtype=data.dtype)
    major = cols if kind == "csc" else rows
    if len(indptr) != major + 1:
        raise FormatError(f"sparse field '{name}' has {len(indptr)} index pointers for {major} columns/rows")
    for j in range(major):
        lo, hi = int(indptr[j]), int(indptr[j + 1])
        if kind == "csc":
            dense[indices[lo:hi], j] += data[lo:hi]
        else:
            dense[j, indices[lo:hi]] += data[lo:hi]
    return dense


def _split_arrays(fields: dict[str, Any], fmt: str) -> ExtractedWeights:
    tensors: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    import torch

    for key, value in fields.items():
        if isinstance(value, np.ndarray) and value.dtype != object or isinstance(value, torch.Tensor):
            tensors[str(key)] = value
        else:
            extra[str(key)] = to_jsonable(value)
    return ExtractedWeights(tensors, {"format": fmt, "fields": extra})


def read_chumpy_pickle(path: str | Path) -> ExtractedWeights:
    """Read a chumpy/FLAME model pickle into arrays: ``Ch`` leaves -> their ``x``; sparse -> dense."""
    with open(path, "rb") as f:
        data = restricted_load(f, encoding="latin1")
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a dict of model fields, got {type(data).__name__}")
    return _split_arrays({k: _chumpy_value(str(k), v) for k, v in data.items()}, "chumpy-pickle")


def read_numpy_pickle(path: str | Path) -> ExtractedWeights:
    """Read a pickle of numpy arrays (a dict, possibly nested) such as ``FLAME_masks.pkl``."""
    with open(path, "rb") as f:
        data = restricted_load(f, encoding="latin1")
    return _split_arrays(_flatten_plain(data), "numpy-pickle")


def _flatten_plain(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten_plain(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip(".") or "value": data}


def read_npy(path: str | Path) -> ExtractedWeights:
    """Read a ``.npy`` file. Object arrays (pickled payloads) go through the restricted unpickler."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            raise FormatError(f"{path}: unsupported .npy version {version}")
        _shape, _fortran, dtype = header[version](f)
        if dtype.hasobject:
            payload = restricted_load(f, encoding="latin1")
            array = np.asarray(payload, dtype=object) if not isinstance(payload, np.ndarray) else payload
            if array.shape == () or array.size == 1:
                content = array.reshape(()).item() if array.dtype == object else array
                if isinstance(content, dict):
                    return _split_arrays(_flatten_plain(content), "npy")
            return _split_arrays({"value": array}, "npy")
    return _split_arrays({"value": np.load(path, allow_pickle=False)}, "npy")


def read_torch_checkpoint(path: str | Path) -> ExtractedWeights:
    """Read a ``torch.save`` checkpoint with ``weights_only=True`` and flatten nested dicts with dots."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError with the offending global in the message
        raise UnsafePickleError(
            f"{path}: torch.load(weights_only=True) refused this file ({exc}). It is not a plain state "
            "dict; it was not executed."
        ) from exc
    tensors: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, torch.Tensor):
            tensors[prefix.rstrip(".")] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            extra[prefix.rstrip(".") or "value"] = to_jsonable(value)

    walk(obj, "")
    return ExtractedWeights(tensors, {"format": "torch", "fields": extra})


def read_torchscript_archive(path: str | Path) -> ExtractedWeights:
    """Read the tensors of a TorchScript archive without loading its code.

    The module tree in ``data.pkl`` is rebuilt as inert records; each storage is read from the archive's
    ``data/`` folder. Names follow the attribute path (``conv1.weight``).
    """
    import torch

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{path}: not a TorchScript zip archive ({exc})") from exc
    with archive:
        names = archive.namelist()
        data_pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not data_pkl:
            raise FormatError(f"{path}: no data.pkl inside; not a TorchScript archive")
        root = data_pkl[0][: -len("data.pkl")]

        def load_storage(pid: Any) -> Any:
            if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                raise UnsafePickleError(f"unexpected persistent id {pid!r}")
            _, dtype, key, _location, _numel = pid
            if not isinstance(dtype, torch.dtype):
                raise UnsafePickleError(f"storage with non-dtype marker {dtype!r}")
            raw = archive.read(f"{root}data/{key}")
            untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
            return make_zip_storage_ref(untyped, dtype)

        obj = restricted_load(io.BytesIO(archive.read(data_pkl[0])), persistent_loader=load_storage)

    tensors: dict[str, Any] = {}

    def walk(value: Any, prefix: str, depth: int = 0) -> None:
        if depth > 100:
            raise FormatError(f"{path}: module tree too deep")
        if isinstance(value, torch.Tensor):
            tensors[prefix.rstrip(".")] = value
        elif isinstance(value, ObjectRecord):
            walk(_record_state(value), prefix, depth + 1)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.", depth + 1)

    walk(obj, "")
    return ExtractedWeights(tensors, {"format": "torchscript", "root_class": to_jsonable(obj)})


READERS = {
    "persistence-pickle": read_persistence_pickle,
    "chumpy-pickle": read_chumpy_pickle,
    "numpy-pickle": read_numpy_pickle,
    "npy": read_npy,
    "torch": read_torch_checkpoint,
    "torchscript": read_torchscript_archive,
}


def guess_format(path: str | Path) -> str:
    """Guess a file's format from its content (magic bytes and the globals its pickle names)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:2] == b"PK":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/code/") or "/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "torch"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        if b"torch_utils.persistence" in head or b"_reconstruct_persistent_obj" in head:
            return "persistence-pickle"
        if b"chumpy" in head:
            return "chumpy-pickle"
        if b"torch" in head:
            return "torch"
        return "numpy-pickle"
    raise FormatError(f"{path}: unknown file format (not a pickle, zip archive or .npy file)")


def read_asset(path: str | Path, fmt: str | None = None, **kwargs: Any) -> ExtractedWeights:
    """Read ``path`` with the reader of ``fmt`` (guessed from the content when ``None``)."""
    fmt = fmt or guess_format(path)
    if fmt not in READERS:
        raise FormatError(f"no tensor reader for format '{fmt}'")
    return READERS[fmt](path, **kwargs)


__all__ += ["FormatError", "guess_format", "module_state_dict", "read_numpy_pickle", "read_torch_checkpoint",
            "read_torchscript_archive", "restricted_loads", "to_jsonable"]
