"""The reference side of the benchmark, computed once per reference image and kept on disk for every later run.

What a metric computes from its reference (target, source or driver) image alone (:meth:`Metric.target_features
<eval.metrics.base.Metric.target_features>`: CSIM's alignment and ArcFace embedding, AKD's landmarks, AED/APD's
Deep3DFaceRecon coefficients, FID's Inception features) depends only on that image and on the metric's
networks and options, not on the method being scored. :class:`ReferenceCache` stores those rows, one file per
(metric spec, image), and :meth:`ReferenceCache.features` returns them for a batch, computing only the missing
ones (on one tensor for all metrics, so the face metrics share one face analysis of each missing image).

Keys (nothing depends on file paths or names):

* image key: the SHA-256 of the reference file's bytes (:meth:`ReferenceCache.key_of`; the same content under
  another folder or name hits, a changed file misses);
* spec: the SHA-256 of :meth:`ReferenceCache.spec_document`: :data:`VERSION` (bumped when the code of a target
  side changes), the metric's name and class, its :meth:`~eval.metrics.base.Metric.target_dependencies` with
  every network replaced by its :func:`fingerprint` (a hash of its weights, buffers, dtypes and config), the
  device type and the torch version. A metric with a network that cannot be fingerprinted (a plain function) is
  not cached: it runs as without a cache.

Layout of the cache folder (``--reference-cache DIR``; default ``$AVATAR_CACHE/eval-references``, i.e.
``~/.cache/avatar4d/eval-references``)::

    v<VERSION>/<metric>-<spec[:32]>/spec.json                  what the spec hashes (for people)
    v<VERSION>/<metric>-<spec[:32]>/<key[:2]>/<key>.safetensors one image's rows; metadata: version, spec, key
    tmp/<host>-<pid>-<random>.part                              files being written

An entry is written to ``tmp/`` and renamed into place (atomic on one file system), so a killed run leaves no
partial entry and concurrent processes (``accelerate launch`` / ``torchrun``) never see one; two processes
writing the same entry both write complete files and the last rename wins. An entry that cannot be read or whose
metadata does not match is treated as missing (and rewritten). Parts left by dead processes of this host, and any
older than a day, are removed when a cache is opened. Formats: safetensors and JSON only (no pickle).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .metrics.base import Metric, TargetFeatures

__all__ = ["VERSION", "ReferenceCache", "ReferenceCacheStats", "default_reference_cache_dir", "file_key",
           "fingerprint", "module_fingerprint", "split_rows", "stack_rows"]

logger = logging.getLogger(__name__)

VERSION = 1
"""Bump when the code of any metric's target side changes its values: older entries are then never read."""
STALE_PART_S = 24 * 3600.0
ENTRY_SUFFIX = ".safetensors"


def default_reference_cache_dir() -> Path:
    """``$AVATAR_CACHE/eval-references`` (default ``~/.cache/avatar4d/eval-references``)."""
    from avatar.hub.download import cache_root

    return cache_root() / "eval-references"


def file_key(path: str | Path) -> str:
    """An image's key: the SHA-256 (hex) of the file's bytes (not of its path or name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# fingerprints of networks


def _digest(parts: Sequence[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach()
    if t.device.type == "meta":
        raise ValueError("a meta tensor has no values to fingerprint")
    return t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _config_text(obj: Any) -> str:
    config = getattr(obj, "config", None)
    if config is None:
        return ""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return json.dumps(dataclasses.asdict(config), sort_keys=True, default=repr)
    return repr(config)


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's class, ``config`` (when it has one), every parameter and buffer (name, dtype, shape,
    bytes: persistent or not) and its training flag. Equal for the same weights on any device."""
    parts: list[bytes | str] = [f"{type(module).__module__}.{type(module).__qualname__}", _config_text(module),
                                f"training={module.training}"]
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    for name in sorted(tensors):
        t = tensors[name]
        parts += [name, f"{t.dtype}{tuple(t.shape)}", _tensor_bytes(t)]
    return _digest(parts)


def _analyzer_fingerprint(analyzer: Any) -> str:
    """A :class:`avatar.face.analysis.FaceAnalyzer`: its three networks, face-size floor and autocast dtype."""
    parts = [module_fingerprint(m) for m in (analyzer.detector, analyzer.fan, analyzer.face_recon)]
    return _digest(["FaceAnalyzer", *parts, f"min_face_size={analyzer.min_face_size!r}",
                    f"autocast={analyzer.autocast}"])


def fingerprint(obj: Any) -> str | None:
    """A string that changes whenever ``obj`` (a network or a callable running one) may compute other values;
    ``None`` when that cannot be told (the caller must not cache what it computes).

    * ``None`` -> ``"none"``; an object with ``cache_fingerprint`` (a string, or a method returning one or None);
    * an ``nn.Module`` -> :func:`module_fingerprint`; a ``FaceAnalyzer`` -> its networks and settings;
    * a bound method -> its object's fingerprint and the method's name; anything else -> ``None``.
    """
    from avatar.face.analysis import FaceAnalyzer

    if obj is None:
        return "none"
    own = getattr(obj, "cache_fingerprint", None)
    if own is not None:
        value = own() if callable(own) else own
        return None if value is None else str(value)
    if isinstance(obj, nn.Module):
        return module_fingerprint(obj)
    if isinstance(obj, FaceAnalyzer):
        return _analyzer_fingerprint(obj)
    owner = getattr(obj, "__self__", None)
    if owner is not None and callable(obj) and not isinstance(owner, type):
        base = fingerprint(owner)
        return None if base is None else _digest([base, getattr(obj, "__qualname__", getattr(obj, "__name__", ""))])
    return None


def _json_value(value: Any) -> Any:
    """``value`` if JSON-able (str, number, bool, None, lists/dicts of them), else a sentinel ``...``."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        items = [_json_value(v) for v in value]
        return ... if any(v is ... for v in items) else items
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        items_d = {k: _json_value(v) for k, v in value.items()}
        return ... if any(v is ... for v in items_d.values()) else items_d
    return ...


# ---------------------------------------------------------------------------------------------------------
# rows


def split_rows(features: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """``{name: (B, ...)}`` -> ``B`` dicts ``{name: (1, ...)}`` on the CPU (a row keeps its batch dimension)."""
    sizes = {name: t.shape[0] for name, t in features.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"target features of different batch sizes: {sizes}")
    n = next(iter(sizes.values()))
    cpu = {name: t.detach().cpu() for name, t in features.items()}
    return [{name: t[i:i + 1].clone() for name, t in cpu.items()} for i in range(n)]


def stack_rows(rows: Sequence[Mapping[str, Tensor]]) -> TargetFeatures:
    """Inverse of :func:`split_rows`: ``B`` rows ``{name: (1, ...)}`` -> ``{name: (B, ...)}``."""
    if not rows:
        raise ValueError("no rows to stack")
    return {name: torch.cat([r[name] for r in rows]) for name in rows[0]}


# ---------------------------------------------------------------------------------------------------------
# the cache


@dataclass
class ReferenceCacheStats:
    """Counts per (metric, reference image): ``hits`` read from disk, ``computed`` (and written), ``unreadable``
    entries treated as missing, ``uncached_metrics`` that could not be cached (no fingerprint)."""

    hits: int = 0
    computed: int = 0
    unreadable: int = 0
    uncached_metrics: list[str] = dataclasses.field(default_factory=list)


class ReferenceCache:
    """Per-image target-side rows of the metrics, on disk (see the module docstring).

    Args:
        root: the cache folder (created).
        device_type: where the networks run (``"cpu"``, ``"cuda"``): part of every spec, since float kernels
            differ in their last bits between devices.
    """

    def __init__(self, root: str | Path, device_type: str = "cpu") -> None:
        self.root = Path(root).expanduser()
        self.device_type = torch.device(device_type).type
        self.stats = ReferenceCacheStats()
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._specs: dict[int, tuple[Metric, str | None]] = {}
        self._keys: dict[tuple[str, int, int, int], str] = {}
        self._write_failed = False
        self._remove_stale_parts()

    # ---- keys ------------------------------------------------------------------------------------------
    def key_of(self, path: str | Path) -> str:
        """SHA-256 (hex) of the file's bytes (memoised per path, size, inode and mtime within this object)."""
        p = Path(path).resolve()
        st = p.stat()
        memo = (str(p), st.st_size, st.st_ino, st.st_mtime_ns)
        if memo not in self._keys:
            self._keys[memo] = file_key(p)
        return self._keys[memo]

    def spec_document(self, metric: Metric) -> dict[str, Any] | None:
        """What the spec of ``metric`` hashes (see the module docstring); ``None`` when a network of it has no
        fingerprint or it has no target side."""
        if not metric.has_target_features:
            return None
        deps: dict[str, Any] = {}
        for name, value in sorted(metric.target_dependencies().items()):
            plain = _json_value(value)
            if plain is ...:
                plain = fingerprint(value)
                if plain is None:
                    return None
                plain = {"fingerprint": plain}
            deps[name] = plain
        cls = type(metric)
        return {"version": VERSION, "metric": metric.name, "class": f"{cls.__module__}.{cls.__qualname__}",
                "dependencies": deps, "device": self.device_type, "torch": torch.__version__}

    def spec(self, metric: Metric) -> str | None:
        """The spec hash of ``metric`` (computed once per metric object), ``None``: not cacheable."""
        memo = self._specs.get(id(metric))
        if memo is not None and memo[0] is metric:
            return memo[1]
        doc = self.spec_document(metric)
        spec = None if doc is None else hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        self._specs[id(metric)] = (metric, spec)
        if doc is None and metric.has_target_features:
            self.stats.uncached_metrics.append(metric.name)
            logger.info("%s: a network it runs has no fingerprint; its reference side is not cached", metric.name)
        elif spec is not None:
            self._write_spec(metric.name, spec, doc)
        return spec

    def cacheable(self, metric: Metric) -> bool:
        return self.spec(metric) is not None

    # ---- entries ---------------------------------------------------------------------------------------
    def _folder(self, metric_name: str, spec: str) -> Path:
        return self.root / f"v{VERSION}" / f"{metric_name}-{spec[:32]}"

    def entry_path(self, metric_name: str, spec: str, key: str) -> Path:
        return self._folder(metric_name, spec) / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def get(self, metric_name: str, spec: str, key: str) -> dict[str, Tensor] | None:
        """The row ``{name: (1, ...)}`` stored for (spec, image key), or ``None`` (absent or unreadable)."""
        from safetensors import safe_open

        path = self.entry_path(metric_name, spec, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if (meta.get("version"), meta.get("spec"), meta.get("key")) != (str(VERSION), spec, key):
                    raise ValueError(f"metadata {meta} does not match")
                return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as exc:  # a damaged file (disk full, crash before the data reached the disk)
            self.stats.unreadable += 1
            logger.warning("%s: unreadable reference cache entry (%s); it is computed again", path, exc)
            return None

    def put(self, metric_name: str, spec: str, key: str, row: Mapping[str, Tensor]) -> None:
        """Store one image's row (written to ``tmp/`` then renamed into place). A write error (read-only or full
        disk) is logged once and the run goes on without writing."""
        from safetensors.torch import save

        if self._write_failed:
            return
        data = save({k: v.detach().cpu().contiguous() for k, v in row.items()},
                    metadata={"version": str(VERSION), "spec": spec, "key": key})
        try:
            self._atomic_write(self.entry_path(metric_name, spec, key), data)
        except OSError as exc:
            self._write_failed = True
            logger.warning("reference cache %s: cannot write (%s); going on without storing reference features",
                           self.root, exc)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = self._tmp / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}.part"
        try:
            with open(part, "wb") as f:
                f.write(data)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)

    def _write_spec(self, metric_name: str, spec: str, doc: dict[str, Any]) -> None:
        path = self._folder(metric_name, spec) / "spec.json"
        if path.is_file():
            return
        try:
            self._atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        except OSError as exc:
            logger.warning("reference cache %s: cannot write %s (%s)", self.root, path.name, exc)

    def _remove_stale_parts(self) -> None:
        host = socket.gethostname()
        now = time.time()
        for part in self._tmp.glob("*.part"):
            name_host, _, rest = part.name.rpartition("-")[0].rpartition("-")
            try:
                old = now - part.stat().st_mtime > STALE_PART_S
                dead = name_host == host and not _pid_alive(int(rest))
            except (OSError, ValueError):
                continue
            if old or dead:
                part.unlink(missing_ok=True)

    # ---- a batch ---------------------------------------------------------------------------------------
    def features(self, metrics: Mapping[str, Metric], keys: Sequence[str],
                 load: Callable[[list[int]], Tensor]) -> dict[str, TargetFeatures]:
        """Target features of ``B`` reference images for each (cacheable) metric: ``{metric: {name: (B, ...)}}``.

        ``keys[i]`` is image ``i``'s key (:meth:`key_of`); ``load(indices)`` returns those images ``(M, 3, H, W)``
        in [0, 1] and is called at most once, for the images some metric misses (each distinct image once). Every
        metric that misses an image computes its rows on that one tensor (the face metrics then share one face
        analysis per image), and the missing rows are stored. Rows are returned on the CPU.
        """
        order = list(dict.fromkeys(keys))
        rows: dict[str, dict[str, dict[str, Tensor]]] = {}
        missing: dict[str, list[str]] = {}
        for name, metric in metrics.items():
            spec = self.spec(metric)
            if spec is None:
                raise ValueError(f"{name}: not cacheable (check ReferenceCache.cacheable first)")
            got = {k: self.get(metric.name, spec, k) for k in order}
            rows[name] = {k: r for k, r in got.items() if r is not None}
            missing[name] = [k for k, r in got.items() if r is None]
            self.stats.hits += len(rows[name])
        todo = list(dict.fromkeys(k for ks in missing.values() for k in ks))
        if todo:
            first = {k: keys.index(k) for k in todo}
            images = load([first[k] for k in todo])
            for name, ks in missing.items():
                if not ks:
                    continue
                metric = metrics[name]
                spec = self.spec(metric)
                assert spec is not None
                want = set(ks)
                for k, row in zip(todo, split_rows(metric.target_features(images)), strict=True):
                    if k in want:
                        self.put(metric.name, spec, k, row)
                        rows[name][k] = row
                self.stats.computed += len(ks)
        return {name: stack_rows([rows[name][k] for k in keys]) for name in metrics}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
