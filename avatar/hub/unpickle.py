"""A restricted unpickler for the upstream checkpoint formats. It never runs code from a file.

Three pickle dialects appear in the official Portrait4D assets:

* **EG3D persistence pickles** (``portrait4d-*.pkl``, ``genhead-*.pkl``): each persistent network is a call
  to ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` holds the module's
  Python source (``module_src``), its ``class_name`` and its ``state`` (the module ``__dict__``). Loading
  them with :mod:`pickle` would ``exec`` that source. Here the call becomes a :class:`PersistentRecord`
  that keeps the source as text and never runs it.
* **chumpy pickles** (FLAME ``generic_model.pkl``, written by Python 2): ``chumpy.ch.Ch`` objects,
  ``scipy.sparse`` matrices, numpy arrays and ``__builtin__.set``.
* **plain numpy pickles** (``FLAME_masks.pkl``, object ``.npy`` files).

Every class that the formats need is replaced by an inert :class:`ObjectRecord` that only stores the
arguments and state it is given; the only real callables handed to the unpickler are a short allowlist of
data constructors (numpy array reconstruction, ``OrderedDict``, ``set``, torch dtypes, and our own tensor
rebuilders, which read storages with ``torch.load(weights_only=True)``). Any other global is refused with
:class:`UnsafePickleError` naming it, before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from ..errors import UnsafePickleError

__all__ = [
    "ObjectRecord",
    "PersistentRecord",
    "UnsafePickleError",
    "RestrictedUnpickler",
    "restricted_load",
    "restricted_loads",
]




# Module prefixes whose classes may appear as *inert records* (never imported, never instantiated for
# real). These are the namespaces the official checkpoints pickle their layers under.
INERT_CLASS_PREFIXES: tuple[str, ...] = (
    "torch.nn.modules.",
    "torchvision.models.",
    "torchvision.ops.",
    "segmentation_models_pytorch.",
    "timm.",
    "models.",  # Portrait-4D's own `models/` package (deeplabv3, mix_transformer, unet, stylegan, ...)
    "training.",  # Portrait-4D's `training/` package
    "avatar.",  # this library's own layers (checkpoints written from our modules)
    "torch_utils.",
    "dnnlib.",
    "chumpy.",
    "scipy.sparse.",
    "pytorch3d.",  # the FLAME deformer's mesh renderer holds a pytorch3d MeshRasterizer (no tensors)
    "_imported_module_",  # classes defined inside persistence-exec'd modules
    "__torch__.",  # TorchScript archives
)

# Modules whose *any* member is refused even if a prefix above would match (defence in depth).
_ALWAYS_REFUSED_MODULES = frozenset(
    {
        "os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "importlib", "runpy",
        "shutil", "socket", "pickle", "marshal", "types", "ctypes", "code", "codeop", "pty", "commands",
        "torch_utils.persistence._src_to_module",
    }
)

_TORCH_DTYPE_NAMES = frozenset(
    {
        "float16", "float32", "float64", "bfloat16", "half", "float", "double", "uint8", "int8", "int16",
        "int32", "int64", "short", "int", "long", "bool", "complex64", "complex128",
    }
)

_LEGACY_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


_TORCHSCRIPT_LIST_BUILDERS = frozenset({"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"})


def _restore_type_tag(value: Any, _type_str: str) -> Any:
    return value


class ObjectRecord:
    """Inert stand-in for an instance of a class named in a pickle.

    Attributes:
        class_path: ``"module.ClassName"`` as written in the pickle.
        args: positional arguments the pickle passed to the class (``NEWOBJ``/``REDUCE``).
        state: what the pickle's ``BUILD`` opcode passed (usually the instance ``__dict__``).
        items: key/value pairs set on it (dict subclasses such as ``EasyDict``).
        list_items: values appended to it (list subclasses).
    """

    class_path: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ObjectRecord:
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["kwargs"] = kwargs
        obj.__dict__["state"] = None
        obj.__dict__["items"] = {}
        obj.__dict__["list_items"] = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args); __new__ kept them
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<ObjectRecord {self.class_path}>"


@dataclass
class PersistentRecord:
    """Inert stand-in for an EG3D persistent network (``_reconstruct_persistent_obj(meta)``).

    ``module_src`` is the embedded source text. It is kept for inspection and is never executed.
    """

    class_name: str
    module_src: str
    version: int | None
    state: dict[str, Any] = field(repr=False)

    @property
    def class_path(self) -> str:
        return f"<persistent>.{self.class_name}"


class InertDict(dict):
    """Stand-in for dict subclasses such as ``dnnlib.util.EasyDict``: plain data, nothing more."""

    def __setstate__(self, state: Any) -> None:  # EasyDict has no extra attributes worth keeping
        pass


def _numpy_multiarray() -> Any:
    """numpy's ``multiarray`` module under its numpy 1 or numpy 2 name, without deprecation warnings."""
    core = getattr(np, "_core", None)
    return core.multiarray if core is not None else np.core.multiarray


def _persistent_reconstruct(meta: Any) -> PersistentRecord:
    meta = dict(meta.items) if isinstance(meta, ObjectRecord) else dict(meta)
    if meta.get("type", "class") != "class":
        raise UnsafePickleError(f"unsupported persistent object type {meta.get('type')!r}")
    state = meta.get("state")
    if isinstance(state, ObjectRecord):
        state = dict(state.items)
    return PersistentRecord(
        class_name=str(meta.get("class_name")),
        module_src=str(meta.get("module_src", "")),
        version=meta.get("version"),
        state=dict(state or {}),
    )


def _load_storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without code execution: a legacy ``torch.save`` stream of one
    storage, read with ``weights_only=True``."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _as_untyped_and_dtype(storage: Any) -> tuple[Any, Any]:
    import torch

    if isinstance(storage, torch.TypedStorage):
        return storage._untyped_storage, storage.dtype
    if isinstance(storage, _ZipStorageRef):
        return storage.untyped, storage.dtype
    raise UnsafePickleError(f"expected a tensor storage, got {type(storage).__name__}")


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any, *_: Any) -> Any:
    import torch

    untyped, dtype = _as_untyped_and_dtype(storage)
    tensor = torch.empty((0,), dtype=dtype)
    tensor.set_(untyped, storage_offset, tuple(size), tuple(stride))
    return tensor


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    # Parameters become plain tensors: whether a tensor is a parameter or a buffer is kept by the
    # module's `_parameters` / `_buffers` dicts.
    return data


def _torch_size(*args: Any) -> tuple:
    return tuple(*args) if args else ()


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` restricted to inert records and plain builtins."""
    if isinstance(cls, type) and issubclass(cls, ObjectRecord):
        return cls()
    if cls is InertDict:
        return InertDict()
    raise UnsafePickleError(f"copyreg._reconstructor called with a non-record class {cls!r}")


@dataclass
class _ZipStorageRef:
    untyped: Any
    dtype: Any


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that maps globals onto inert records or a small allowlist, and refuses everything else.

    Args:
        file: a binary file object positioned at a pickle stream.
        persistent_loader: optional callable for ``persistent_load`` (TorchScript / zip archives).
        encoding: ``"latin1"`` reads Python 2 pickles (chumpy / FLAME).
    """

    def __init__(self, file: IO[bytes], *, persistent_loader: Any = None, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self._persistent_loader = persistent_loader
        self._record_classes: dict[str, type] = {}
        self.seen_globals: set[str] = set()

    # -- globals -------------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        self.seen_globals.add(full)
        allowed = self._allowed_callable(module, name)
        if allowed is not None:
            return allowed
        if module in _ALWAYS_REFUSED_MODULES or full in _ALWAYS_REFUSED_MODULES:
            raise UnsafePickleError(self._refusal(full))
        if full == "dnnlib.util.EasyDict":
            return InertDict
        if any(full.startswith(prefix) for prefix in INERT_CLASS_PREFIXES):
            return self._record_class(full)
        raise UnsafePickleError(self._refusal(full))

    @staticmethod
    def _refusal(full: str) -> str:
        return (
            f"refused to load the pickle global '{full}': it is not one of the tensor, numpy, container or "
            "network-record types that checkpoint files need. Nothing from the file was executed. If this "
            "file comes from a source you trust, convert it with the tool that wrote it."
        )

    def _record_class(self, full: str) -> type:
        cls = self._record_classes.get(full)
        if cls is None:
            cls = type(full.rsplit(".", 1)[-1], (ObjectRecord,), {"class_path": full, "__module__": __name__})
            self._record_classes[full] = cls
        return cls

    @staticmethod
    def _allowed_callable(module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(np.dtypes, name)
        if module == "_codecs" and name == "encode":
            import _codecs

            return _codecs.encode
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "slice", "complex"):
            return {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex}[name]
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return _reconstructor
        if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
            return _persistent_reconstruct
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_storage_from_bytes
        if module == "torch" and name == "Size":
            return _torch_size
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            import torch

            return getattr(torch, name)
        if module == "torch" and name in _LEGACY_STORAGE_DTYPES:
            import torch

            return getattr(torch, _LEGACY_STORAGE_DTYPES[name])  # only used as a dtype marker
        if module == "torch.jit._pickle" and name in _TORCHSCRIPT_LIST_BUILDERS:
            return list  # TorchScript's typed-list markers: the argument is already a plain list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        if module == "torch" and name == "device":
            return str  # devices are kept as their names
        return None

    # -- persistent ids (zip archives) ---------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_loader is None:
            raise UnsafePickleError(f"unexpected persistent id {pid!r} in a plain pickle")
        return self._persistent_loader(pid)


def restricted_load(file: IO[bytes], **kwargs: Any) -> Any:
    """Read one pickle stream from ``file`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file, **kwargs).load()


def restricted_loads(data: bytes, **kwargs: Any) -> Any:
    """Read a pickle held in memory with :class:`RestrictedUnpickler`."""
    return restricted_load(io.BytesIO(data), **kwargs)


def make_zip_storage_ref(untyped: Any, dtype: Any) -> _ZipStorageRef:
    """Storage reference used by archive readers' ``persistent_load`` (see :mod:`avatar.hub.formats`)."""
    return _ZipStorageRef(untyped, dtype)
