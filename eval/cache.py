"""Append-only per-sample result cache in ``RESULTS/cache/``: resume without losing or double-counting.

Files:

* ``manifest.json``: protocol, metrics and their options; a resumed run with other options is refused.
* ``samples-r<rank>.jsonl``: one line per scored batch, ``{"batch": [{"id", "v": {metric: value}, "x": {metric:
  reason}, "f": base64 float32 FID features}, ...]}``, written, flushed and fsync'ed per batch, so a kill loses at
  most the batch in flight (a truncated last line is ignored when reading, and cut before appending). A batch is
  cached whole or not at all, so a resumed run scores the same batches as an uninterrupted one.
* ``refs-r<rank>.jsonl``: FID features of reference images, ``{"ref": key, "f": ...}`` (one per image, shared by
  every sample that uses it), the ones this RESULTS folder's aggregation reads; they come from the reference cache
  shared by all runs (:mod:`eval.reference_cache`) when it is on.

Each process writes only its own files; :func:`load` merges all of them. A value is taken once per (sample,
metric): the first record wins, later duplicates are counted and ignored, so nothing is counted twice.
Floats go through JSON as ``repr`` (exact round trip), features as raw float32 bytes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import AvatarError

__all__ = ["CacheMismatchError", "CachedResults", "ShardWriter", "check_manifest", "decode_features",
           "encode_features", "load"]

logger = logging.getLogger(__name__)


class CacheMismatchError(AvatarError, RuntimeError):
    """The cache in RESULTS was made with other options than this run's."""


def encode_features(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def decode_features(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").copy()


def check_manifest(cache_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json``, or compare it with the one there: the protocol must match, and so must the
    options of every metric already cached (new metrics may be added to a cache)."""
    path = Path(cache_dir) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("protocol", "source"):
            if old.get(key) != manifest.get(key):
                raise CacheMismatchError(f"{path}: cached results are for {key}={old.get(key)!r}, this run has "
                                         f"{manifest.get(key)!r}; use another --out or delete {path.parent}")
        merged = dict(old.get("metrics", {}))
        for name, opts in manifest.get("metrics", {}).items():
            if name in merged and merged[name] != opts:
                raise CacheMismatchError(
                    f"{path}: {name} was cached with options {merged[name]} but this run uses {opts}; use another "
                    f"--out or delete {path.parent}")
            merged[name] = opts
        manifest = {**old, **manifest, "metrics": merged}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


class ShardWriter:
    """Appends this process's records; :meth:`write` flushes and fsyncs once per call (per batch)."""

    def __init__(self, cache_dir: str | Path, rank: int = 0) -> None:
        d = Path(cache_dir)
        d.mkdir(parents=True, exist_ok=True)
        for name in (f"samples-r{rank}.jsonl", f"refs-r{rank}.jsonl"):
            _drop_partial_line(d / name)
        self._samples = open(d / f"samples-r{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._refs = open(d / f"refs-r{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, samples: list[dict[str, Any]], refs: dict[str, np.ndarray] | None = None) -> None:
        # references first: a sample line never points to features that are not on disk yet
        if refs:
            self._refs.write("".join(json.dumps({"ref": k, "f": encode_features(v)}) + "\n" for k, v in refs.items()))
            self._sync(self._refs)
        if samples:  # one line per batch: a batch is cached whole or not at all
            self._samples.write(json.dumps({"batch": samples}, allow_nan=False) + "\n")
            self._sync(self._samples)

    @staticmethod
    def _sync(f: Any) -> None:
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        self._samples.close()
        self._refs.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class CachedResults:
    """Everything cached: ``values[id][metric]``, ``exclusions[id][metric]``, ``features[id]``, ``refs[key]``."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)
    exclusions: dict[str, dict[str, str]] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    refs: dict[str, np.ndarray] = field(default_factory=dict)
    duplicates: int = 0
    truncated_lines: int = 0

    def has(self, sample_id: str, metric: str) -> bool:
        if metric == "fid":
            return sample_id in self.features
        return metric in self.values.get(sample_id, {}) or metric in self.exclusions.get(sample_id, {})

    def add(self, rec: dict[str, Any]) -> None:
        sid = rec["id"]
        vals = self.values.setdefault(sid, {})
        excl = self.exclusions.setdefault(sid, {})
        for m, v in rec.get("v", {}).items():
            if m in vals or m in excl:
                self.duplicates += 1
                continue
            vals[m] = float(v)
        for m, r in rec.get("x", {}).items():
            if m in vals or m in excl:
                self.duplicates += 1
                continue
            excl[m] = str(r)
        if "f" in rec:
            if sid in self.features:
                self.duplicates += 1
            else:
                self.features[sid] = decode_features(rec["f"])


def _drop_partial_line(path: Path) -> None:
    """Cut a line left unfinished by a killed run, so that appending starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    logger.warning("%s: dropping an unfinished last line (a killed run); its batch is recomputed", path)
    with open(path, "r+b") as f:
        f.truncate(keep)


def _read_jsonl(path: Path, result: CachedResults) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last line, cut by a kill: its batch is recomputed
                result.truncated_lines += 1
                logger.warning("%s: ignoring a truncated last line (a killed run); it will be recomputed", path)
                continue
            raise
    return out


def load(cache_dir: str | Path) -> CachedResults:
    """Merge every shard in ``cache_dir`` (none: an empty result)."""
    d = Path(cache_dir)
    result = CachedResults()
    if not d.is_dir():
        return result
    for path in sorted(d.glob("refs-r*.jsonl")):
        for rec in _read_jsonl(path, result):
            result.refs.setdefault(rec["ref"], decode_features(rec["f"]))
    for path in sorted(d.glob("samples-r*.jsonl")):
        for rec in _read_jsonl(path, result):
            for sample in rec.get("batch", [rec]):
                result.add(sample)
    return result
