"""The official Portrait4D LMDB formats, read as they are and written the same way.

Layout (``generate_lmdb/{vfhq,ffhq}/generate_lmdb.py`` of YuDeng/Portrait-4D): string keys ``'{:08d}'`` (the
record index, ASCII) hold one serialised proto2 record each, and ``'num_samples'`` the record count as an ASCII
integer. Three record types (:mod:`train.data.protowire` has their field numbers), one per LMDB, the ``kind``:

* ``Datum_vfhq``: one VFHQ clip; ``images`` raw uint8 ``num x H x W x 3``, ``segs`` raw uint8 ``num x H x W``
  (the toy ``VFHQ_sub50_512_4`` has one channel; three are accepted), ``labels`` float32 ``num x 437``, ``mots``
  float32 ``num x 548`` (longer motions are cut to 548, as the official loader's ``mots[:, :548]``);
* ``Datum_genhead``: one FFHQ image; ``image`` and ``seg`` are encoded PNG/JPEG files, ``labels`` float32 x 437,
  ``mots`` float32 x 548 (kind ``genhead``);
* ``Datum_new``: GenHead's renders of one subject, the official offline Portrait4D-v1 data (read upstream by
  ``GenHeadReconSegLmdbFolderDatasetV2New``, ``training/dataloader/dataset_recon.py``; kind ``genhead4d``):
  ``num`` = frames x 5 views, all raw: ``images`` uint8 ``num x H x W x 3``, ``segs`` uint8 ``num x H x W [x C]``,
  ``segs_render`` uint8 ``num x 64 x 64 [x C]``, ``depths`` and ``features`` float16 ``num x 64 x 64 x C``,
  ``triplanes`` float16 per frame (``frames x N*35``: xyz + 32 features per point), ``labels`` float32
  ``num x 437``, ``mots`` float32 ``num x 548`` (or more, cut), ``bgs`` float16 ``64 x 64 x C`` (one per record).
  The older ``Datum`` of ``GenHeadReconSegLmdbFolderDatasetV2`` (no ``segs_render`` nor ``bgs``) is not read.

The official loaders open the LMDB lazily inside each DataLoader worker (``readonly=True, lock=False``) and parse
with generated protobuf classes, so a damaged record is an ``AttributeError`` or a reshape error an hour into
training. :class:`OfficialLmdb` opens lazily per process the same way, and checks every record it reads: each
field present, the byte counts consistent with ``num``, ``height``, ``width`` and ``channels`` (``Datum_new``: ``num``
a multiple of 5, whole float16 maps of 64 x 64 and triplane rows), the labels finite; anything else is a
:class:`~train.data.errors.TrainDataError` naming the LMDB folder and the key.

The official loaders also parse ``<NAME>_<resolution>_<count>/`` from the folder name (with a trailing slash);
this reader does not need that, and :func:`official_folder_name` gives the name for LMDBs meant for the official
code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avatar.errors import InputNotFoundError
from train.data.errors import TrainDataError
from train.data.protowire import (
    DATUM_GENHEAD,
    DATUM_NEW,
    DATUM_VFHQ,
    MessageSchema,
    WireError,
    decode_fields,
    decode_message,
)
from train.data.protowire import encode_message as _encode
from train.data.records import (
    LABEL_DIM,
    MOTION_DIM,
    RENDER_SIZE,
    VIEWS_PER_FRAME,
    ClipRecord,
    GenHead4DRecord,
    ImageRecord,
)

__all__ = ["LMDB_KINDS", "OfficialLmdb", "OfficialLmdbWriter", "official_folder_name", "record_key"]

LMDB_KINDS = ("vfhq", "genhead", "genhead4d")
NUM_SAMPLES_KEY = b"num_samples"
SCHEMAS: dict[str, MessageSchema] = {"vfhq": DATUM_VFHQ, "genhead": DATUM_GENHEAD, "genhead4d": DATUM_NEW}
_NEW_ONLY_FIELDS = (12, 13)  # Datum_new's mots and bgs: a Datum_vfhq ends at field 8
_OLD_DATUM_FIELDS = (9, 10, 11)  # the older Datum: features..mots at fields 7..11, no segs_render nor bgs
Kind = Literal["vfhq", "genhead", "genhead4d"]
MAP_SIZE = 1 << 40
"""1 TiB of address space, as upstream (the file only grows to what is written)."""


def _lmdb() -> Any:
    try:
        import lmdb
    except ImportError as exc:  # pragma: no cover - lmdb is in the [train] extra
        from avatar.errors import MissingDependencyError

        raise MissingDependencyError("reading the official LMDB data needs the `lmdb` package: "
                                     "pip install 'avatar4d[train]'") from exc
    return lmdb


def record_key(index: int) -> str:
    """The LMDB key of record ``index``: ``'{:08d}'``."""
    return f"{index:08d}"


def official_folder_name(name: str, resolution: int, count: int) -> str:
    """``<name>_<resolution>_<count>``, the folder name the official loaders parse (e.g. ``VFHQ_sub50_512_4``;
    they need the path with a trailing slash)."""
    return f"{name}_{resolution}_{count}"


def _floats(view: memoryview, rows: int, where: tuple[str, Path, str], name: str, min_cols: int,
            exact: bool) -> np.ndarray:
    text, path, key = where
    nbytes = len(view)
    if nbytes % (4 * rows):
        raise TrainDataError(f"{text}: field '{name}' has {nbytes} bytes, not a whole number of float32 rows for "
                             f"{rows} frame(s)", path, key)
    cols = nbytes // (4 * rows)
    if (exact and cols != min_cols) or cols < min_cols:
        need = f"{min_cols}" if exact else f"at least {min_cols}"
        raise TrainDataError(f"{text}: field '{name}' holds {cols} float32 per frame, expected {need}", path, key)
    arr = np.frombuffer(view, dtype="<f4").reshape(rows, cols)
    return arr[:, :min_cols] if not exact else arr


def _halves(view: memoryview, units: int, where: tuple[str, Path, str], name: str, unit_text: str) -> np.ndarray:
    """A float16 field of ``units`` equal parts (e.g. ``num`` maps of 64 x 64 x C): ``(units, per_unit)``."""
    text, path, key = where
    nbytes = len(view)
    if nbytes == 0 or nbytes % (2 * units):
        raise TrainDataError(f"{text}: field '{name}' has {nbytes} bytes, not {unit_text} x C float16 with C at least "
                             "1 (truncated or mislabelled record)", path, key)
    return np.frombuffer(view, dtype="<f2").reshape(units, -1)


_ENVS: dict[str, list[Any]] = {}  # real path -> [environment, users, pid]
_ENVS_LOCK = threading.Lock()


def _acquire_env(path: Path) -> Any:
    """This process's read-only environment of ``path``, shared by its readers (LMDB allows one environment per
    file and process; ``readonly=True, lock=False`` as upstream). An environment inherited through ``fork`` is
    left alone: the child opens its own."""
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is not None and entry[2] == os.getpid():
            entry[1] += 1
            return entry[0]
        lmdb = _lmdb()
        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=512)
        except lmdb.Error as exc:
            raise TrainDataError(f"{path} cannot be opened as an LMDB ({exc})", path) from None
        _ENVS[key] = [env, 1, os.getpid()]
        return env


def _release_env(path: Path) -> None:
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None or entry[2] != os.getpid():
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _ENVS[key]


class OfficialLmdb:
    """Read-only access to an official LMDB of ``Datum_vfhq``, ``Datum_genhead`` or ``Datum_new`` records.

    Args:
        path: the LMDB folder (``data.mdb`` inside).
        kind: ``'vfhq'``, ``'genhead'``, ``'genhead4d'`` (``Datum_new``), or ``'auto'`` (from the first record:
            field 4 is the ``num`` varint of a ``Datum_vfhq`` and a ``Datum_new``, the ``image`` bytes of a
            ``Datum_genhead``; a ``Datum_new`` has fields 12 and 13, a ``Datum_vfhq`` none above 8).
        motion_dim: motions are cut to this many floats per frame (548, as upstream).

    Opened lazily in the process that first reads a record (a DataLoader worker), never carried through pickling
    or ``fork``: each process opens its own read-only environment (``lock=False``), as the official loaders do.
    """

    def __init__(self, path: str | Path, kind: Literal["auto"] | Kind = "auto", motion_dim: int = MOTION_DIM) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputNotFoundError(f"LMDB folder {self.path} does not exist")
        if not (self.path / "data.mdb").is_file():
            raise TrainDataError(f"{self.path} is not an LMDB folder (no data.mdb inside)", self.path)
        if kind not in ("auto", *LMDB_KINDS):
            raise ValueError(f"kind must be 'auto', 'vfhq', 'genhead' or 'genhead4d', got {kind!r}")
        self.motion_dim = int(motion_dim)
        self._kind = None if kind == "auto" else kind
        self._env: Any = None
        self._txn: Any = None
        self._pid: int | None = None
        self._len: int | None = None

    # ---- environment -----------------------------------------------------------------------------------
    def _begin(self) -> Any:
        if self._txn is None or self._pid != os.getpid():
            self._env = _acquire_env(self.path)  # after fork: this process's own environment
            self._txn = self._env.begin(buffers=True)  # zero-copy views, valid while this read transaction lives
            self._pid = os.getpid()
        return self._txn

    def close(self) -> None:
        """Release this process's environment (records read with ``copy=False`` become invalid)."""
        if self._env is not None and self._pid == os.getpid():
            self._txn.abort()
            _release_env(self.path)
        self._env = self._txn = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None, "_txn": None, "_pid": None}

    def __enter__(self) -> OfficialLmdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- index -----------------------------------------------------------------------------------------
    def _peek(self, key: str) -> bytes | None:
        """One value, read without keeping the environment open (so that the process that builds a dataset
        holds no environment when it forks its DataLoader workers)."""
        if self._txn is not None and self._pid == os.getpid():
            value = self._txn.get(key.encode("ascii"))
            return None if value is None else bytes(value)
        env = _acquire_env(self.path)
        try:
            with env.begin() as txn:
                return txn.get(key.encode("ascii"))
        finally:
            _release_env(self.path)

    def __len__(self) -> int:
        if self._len is None:
            raw = self._peek(NUM_SAMPLES_KEY.decode())
            if raw is None:
                raise TrainDataError(f"{self.path} has no 'num_samples' key: not a Portrait4D LMDB, or its writer "
                                     "was interrupted before it finished", self.path, "num_samples")
            try:
                self._len = int(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise TrainDataError(f"{self.path}: 'num_samples' is {raw[:20]!r}, not an integer",
                                     self.path, "num_samples") from None
            if self._len < 0:
                raise TrainDataError(f"{self.path}: 'num_samples' is negative ({self._len})", self.path,
                                     "num_samples")
        return self._len

    def _where(self, key: str) -> str:
        return f"LMDB {self.path} key '{key}'"

    def raw(self, index: int) -> memoryview:
        """The serialised record ``index`` (a view into the map, valid while this process's reader is open)."""
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"record {index} out of range: {self.path} has {n} (num_samples)")
        key = record_key(index)
        value = self._begin().get(key.encode("ascii"))
        if value is None:
            raise TrainDataError(f"{self._where(key)} is missing although num_samples is {n}: the LMDB is "
                                 "incomplete", self.path, key)
        return value

    @property
    def kind(self) -> str:
        """``'vfhq'`` (clips), ``'genhead'`` (images) or ``'genhead4d'`` (GenHead renders, frames x views)."""
        if self._kind is None:
            if len(self) == 0:
                raise TrainDataError(f"{self.path} holds no records (num_samples is 0)", self.path, "num_samples")
            first = self._peek(record_key(0))
            if first is None:
                raise TrainDataError(f"{self._where(record_key(0))} is missing although num_samples is {len(self)}",
                                     self.path, record_key(0))
            try:
                fields = decode_fields(first)
            except WireError as exc:
                raise TrainDataError(f"{self._where(record_key(0))}: not a protobuf record ({exc})", self.path,
                                     record_key(0)) from None
            wire = fields.get(4, (None, None))[0]
            if wire == 0 and any(n in fields for n in _NEW_ONLY_FIELDS):
                self._kind = "genhead4d"
            elif wire == 0 and any(n in fields for n in _OLD_DATUM_FIELDS):
                raise TrainDataError(f"{self._where(record_key(0))} is an older GenHead 'Datum' record (fields up to "
                                     "11, no segs_render nor bgs: GenHeadReconSegLmdbFolderDatasetV2's format); only "
                                     "Datum_new GenHead data is read", self.path, record_key(0))
            elif wire == 0:
                self._kind = "vfhq"
            elif wire == 2:
                self._kind = "genhead"
            else:
                raise TrainDataError(f"{self._where(record_key(0))} is neither a Datum_vfhq, a Datum_genhead nor a "
                                     "Datum_new record (field 4 is absent or of another type)", self.path,
                                     record_key(0))
        return self._kind

    # ---- records ---------------------------------------------------------------------------------------
    def _fields(self, index: int, schema: MessageSchema) -> tuple[dict[str, Any], str]:
        key = record_key(index)
        where = self._where(key)
        try:
            values = decode_message(schema, self.raw(index))
        except WireError as exc:
            raise TrainDataError(f"{where} is corrupt: {exc}", self.path, key) from None
        missing = [name for name in schema.fields if name not in values]
        if missing:
            numbers = ", ".join(f"'{m}' (field {schema.field_number(m)})" for m in missing)
            raise TrainDataError(f"{where} lacks {numbers} of {schema.name}: the record is incomplete", self.path, key)
        return values, where

    def read(self, index: int, copy: bool = True) -> ClipRecord | ImageRecord | GenHead4DRecord:
        """Record ``index`` as a :class:`ClipRecord` (vfhq), :class:`ImageRecord` (genhead) or
        :class:`GenHead4DRecord` (genhead4d), checked.

        ``copy=False`` returns views into the LMDB map (no copy of a clip's 50 frames), valid until
        :meth:`close`; the datasets use that and copy the frames they return."""
        kind = self.kind
        if kind == "vfhq":
            return self.read_clip(index, copy)
        return self.read_image(index, copy) if kind == "genhead" else self.read_views(index, copy)

    def _wrong_kind(self, wanted: str) -> TrainDataError:
        held = {"vfhq": "Datum_vfhq clips", "genhead": "Datum_genhead images",
                "genhead4d": "Datum_new GenHead renders (frames x 5 views)"}[self.kind]
        return TrainDataError(f"{self.path} holds {held}, not {wanted}", self.path)

    def read_clip(self, index: int, copy: bool = True) -> ClipRecord:
        if self.kind != "vfhq":
            raise self._wrong_kind("clips")
        v, where = self._fields(index, DATUM_VFHQ)
        key = record_key(index)
        num, h, w, c = v["num"], v["height"], v["width"], v["channels"]
        if num < 1 or h < 1 or w < 1:
            raise TrainDataError(f"{where}: num={num}, height={h}, width={w}; all must be at least 1", self.path, key)
        if c != 3:
            raise TrainDataError(f"{where}: channels={c}, expected 3 (RGB frames)", self.path, key)
        pixels = num * h * w
        if len(v["images"]) != pixels * 3:
            raise TrainDataError(f"{where}: 'images' has {len(v['images'])} bytes, expected num x height x width x 3 "
                                 f"= {pixels * 3} (truncated or mislabelled record)", self.path, key)
        seg_bytes = len(v["segs"])
        if seg_bytes not in (pixels, pixels * 3):
            raise TrainDataError(f"{where}: 'segs' has {seg_bytes} bytes, expected num x height x width x 1 or 3 = "
                                 f"{pixels} or {pixels * 3}", self.path, key)
        labels = _floats(v["labels"], num, (where, self.path, key), "labels", LABEL_DIM, exact=True)
        motions = _floats(v["mots"], num, (where, self.path, key), "mots", self.motion_dim, exact=False)
        if not np.isfinite(labels).all():
            raise TrainDataError(f"{where}: the labels contain NaN or infinity", self.path, key)
        images = np.frombuffer(v["images"], dtype=np.uint8).reshape(num, h, w, 3)
        segs = np.frombuffer(v["segs"], dtype=np.uint8).reshape(num, h, w, seg_bytes // pixels)
        if copy:
            images, segs, labels, motions = images.copy(), segs.copy(), labels.copy(), motions.copy()
        return ClipRecord(images, segs, labels, motions, h, w, where=where, path=str(self.path), key=key)

    def read_image(self, index: int, copy: bool = True) -> ImageRecord:
        if self.kind != "genhead":
            raise self._wrong_kind("images")
        v, where = self._fields(index, DATUM_GENHEAD)
        key = record_key(index)
        if not len(v["image"]):
            raise TrainDataError(f"{where}: the 'image' field is empty", self.path, key)
        label = _floats(v["labels"], 1, (where, self.path, key), "labels", LABEL_DIM, exact=True)[0]
        motion = _floats(v["mots"], 1, (where, self.path, key), "mots", self.motion_dim, exact=False)[0]
        if not np.isfinite(label).all():
            raise TrainDataError(f"{where}: the labels contain NaN or infinity", self.path, key)
        image, seg = v["image"], v["seg"]
        if copy:
            image, seg, label, motion = bytes(image), bytes(seg), label.copy(), motion.copy()
        return ImageRecord(image, seg, label, motion, max(v["height"], 0), max(v["width"], 0), where=where,
                           path=str(self.path), key=key)

    def read_views(self, index: int, copy: bool = True) -> GenHead4DRecord:
        """Record ``index`` of a ``Datum_new`` LMDB (kind ``genhead4d``) as a :class:`GenHead4DRecord`, checked:
        ``num`` a positive multiple of 5, ``channels`` 3, ``images`` exactly ``num x H x W x 3`` bytes, ``segs``
        ``num x H x W x 1 or 3``, ``segs_render`` ``num x 64 x 64 x 1 or 3``, ``depths`` / ``features`` whole
        float16 ``num x 64 x 64 x C`` maps, ``triplanes`` the same number of float16 for every frame, ``bgs`` a
        whole float16 ``64 x 64 x C`` map, ``labels`` ``num x 437`` finite float32, ``mots`` at least 548 float32 per
        view (cut to ``motion_dim``)."""
        if self.kind != "genhead4d":
            raise self._wrong_kind("Datum_new GenHead renders")
        v, where = self._fields(index, DATUM_NEW)
        key = record_key(index)
        ctx = (where, self.path, key)
        num, h, w, c = v["num"], v["height"], v["width"], v["channels"]
        if num < VIEWS_PER_FRAME or h < 1 or w < 1:
            raise TrainDataError(f"{where}: num={num}, height={h}, width={w}; num must be at least "
                                 f"{VIEWS_PER_FRAME} (frames x {VIEWS_PER_FRAME} views), height and width at least 1",
                                 self.path, key)
        if num % VIEWS_PER_FRAME:
            raise TrainDataError(f"{where}: num={num} is not a multiple of {VIEWS_PER_FRAME} (frames x "
                                 f"{VIEWS_PER_FRAME} views)", self.path, key)
        if c != 3:
            raise TrainDataError(f"{where}: channels={c}, expected 3 (RGB images)", self.path, key)
        frames, r = num // VIEWS_PER_FRAME, RENDER_SIZE
        pixels, small = num * h * w, num * r * r
        if len(v["images"]) != pixels * 3:
            raise TrainDataError(f"{where}: 'images' has {len(v['images'])} bytes, expected num x height x width x 3 "
                                 f"= {pixels * 3} (truncated or mislabelled record)", self.path, key)
        for name, unit, text in (("segs", pixels, "num x height x width"), ("segs_render", small, f"num x {r} x {r}")):
            if len(v[name]) not in (unit, unit * 3):
                raise TrainDataError(f"{where}: '{name}' has {len(v[name])} bytes, expected {text} x 1 or 3 = {unit} "
                                     f"or {unit * 3}", self.path, key)
        depths = _halves(v["depths"], small, ctx, "depths", f"num x {r} x {r}")
        features = _halves(v["features"], small, ctx, "features", f"num x {r} x {r}")
        background = _halves(v["bgs"], r * r, ctx, "bgs", f"{r} x {r}")
        triplanes = _halves(v["triplanes"], frames, ctx, "triplanes", f"{frames} frame(s) x N points")
        labels = _floats(v["labels"], num, ctx, "labels", LABEL_DIM, exact=True)
        motions = _floats(v["mots"], num, ctx, "mots", self.motion_dim, exact=False)
        if not np.isfinite(labels).all():
            raise TrainDataError(f"{where}: the labels contain NaN or infinity", self.path, key)
        grid = (frames, VIEWS_PER_FRAME)
        out = {
            "images": np.frombuffer(v["images"], dtype=np.uint8).reshape(*grid, h, w, 3),
            "segs": np.frombuffer(v["segs"], dtype=np.uint8).reshape(*grid, h, w, -1),
            "segs_render": np.frombuffer(v["segs_render"], dtype=np.uint8).reshape(*grid, r, r, -1),
            "depths": depths.reshape(*grid, r, r, -1), "features": features.reshape(*grid, r, r, -1),
            "triplanes": triplanes, "labels": labels.reshape(*grid, LABEL_DIM),
            "motions": motions.reshape(*grid, motions.shape[1]), "background": background.reshape(r, r, -1),
        }
        if copy:
            out = {k: a.copy() for k, a in out.items()}
        return GenHead4DRecord(**out, height=h, width=w, where=where, path=str(self.path), key=key)

    def __iter__(self) -> Iterator[ClipRecord | ImageRecord | GenHead4DRecord]:
        for i in range(len(self)):
            yield self.read(i)

    def check(self) -> int:
        """Read and check every record (raw frames of clips and GenHead renders need no decoding); returns the
        count."""
        n = len(self)
        for i in range(n):
            rec = self.read(i, copy=False)
            if isinstance(rec, ImageRecord):
                rec.decode_image()
                rec.decode_seg()
        return n


class OfficialLmdbWriter:
    """Write an official LMDB (``Datum_vfhq`` clips, ``Datum_genhead`` images or ``Datum_new`` GenHead renders),
    readable by the official loaders and by :class:`OfficialLmdb`.

    Records are numbered from 0 in the order they are added; ``num_samples`` is written by :meth:`close` (a
    context manager closes on success; after an exception the LMDB has no ``num_samples`` and reads as
    incomplete). Transactions are committed every ``commit_every`` records, as upstream (200).
    """

    def __init__(self, path: str | Path, kind: Kind, map_size: int = MAP_SIZE, commit_every: int = 200) -> None:
        if kind not in LMDB_KINDS:
            raise ValueError(f"kind must be 'vfhq', 'genhead' or 'genhead4d', got {kind!r}")
        self.path, self.kind, self.commit_every = Path(path), kind, max(1, int(commit_every))
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = _lmdb().open(str(self.path), map_size=map_size)
        self._txn = self._env.begin(write=True)
        self.count = 0

    def _put(self, payload: bytes) -> None:
        self._txn.put(record_key(self.count).encode("ascii"), payload)
        self.count += 1
        if self.count % self.commit_every == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)

    def add_clip(self, images: np.ndarray, segs: np.ndarray, labels: np.ndarray, motions: np.ndarray) -> None:
        """``images`` ``(N, H, W, 3)`` uint8, ``segs`` ``(N, H, W)`` or ``(N, H, W, C)`` uint8, ``labels``
        ``(N, 437)`` and ``motions`` ``(N, D)`` (stored as float32)."""
        if self.kind != "vfhq":
            raise ValueError(f"add_clip writes Datum_vfhq records; this writer was made for {self.kind} records")
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape}")
        n, h, w, _ = images.shape
        segs = np.ascontiguousarray(segs, dtype=np.uint8)
        labels = np.ascontiguousarray(labels, dtype="<f4")
        motions = np.ascontiguousarray(motions, dtype="<f4")
        if segs.shape[:3] != (n, h, w):
            raise ValueError(f"segs {segs.shape} do not match images {images.shape}")
        if labels.shape != (n, LABEL_DIM) or motions.ndim != 2 or len(motions) != n:
            raise ValueError(f"labels must be ({n}, {LABEL_DIM}) and motions ({n}, D); got {labels.shape}, "
                             f"{motions.shape}")
        self._put(_encode(DATUM_VFHQ, {"channels": 3, "height": h, "width": w, "num": n, "images": images,
                                       "segs": segs, "labels": labels, "mots": motions}))

    def add_image(self, image: bytes, seg: bytes, label: np.ndarray, motion: np.ndarray, height: int = 512,
                  width: int = 512) -> None:
        """Encoded ``image`` and ``seg`` files (PNG/JPEG bytes), ``label`` ``(437,)``, ``motion`` ``(D,)``;
        ``height`` and ``width`` are stored as upstream does (its writer always says 512)."""
        if self.kind != "genhead":
            raise ValueError(f"add_image writes Datum_genhead records; this writer was made for {self.kind} records")
        label = np.ascontiguousarray(label, dtype="<f4").reshape(-1)
        if label.shape != (LABEL_DIM,):
            raise ValueError(f"label must have {LABEL_DIM} floats, got {label.shape}")
        self._put(_encode(DATUM_GENHEAD, {"channels": 3, "height": height, "width": width, "image": bytes(image),
                                          "seg": bytes(seg), "labels": label,
                                          "mots": np.ascontiguousarray(motion, dtype="<f4").reshape(-1)}))

    def add_views(self, images: np.ndarray, segs: np.ndarray, segs_render: np.ndarray, depths: np.ndarray,
                  features: np.ndarray, triplanes: np.ndarray, labels: np.ndarray, motions: np.ndarray,
                  background: np.ndarray) -> None:
        """One subject's GenHead renders as a ``Datum_new`` record (F frames x 5 views; ``num`` = 5 F).

        Args:
            images: ``(F, 5, H, W, 3)`` uint8 RGB.
            segs: ``(F, 5, H, W)`` or ``(F, 5, H, W, C)`` uint8.
            segs_render: ``(F, 5, 64, 64)`` or ``(F, 5, 64, 64, C)`` uint8.
            depths, features: ``(F, 5, 64, 64[, C])``, stored as float16.
            triplanes: ``(F, N, 3 + C)`` (xyz, plane features; 35 upstream), stored as float16.
            labels: ``(F, 5, 437)``; ``motions``: ``(F, 5, D)`` (float32).
            background: ``(64, 64[, C])``, stored as float16.
        """
        if self.kind != "genhead4d":
            raise ValueError(f"add_views writes Datum_new records; this writer was made for {self.kind} records")
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 5 or images.shape[1] != VIEWS_PER_FRAME or images.shape[4] != 3:
            raise ValueError(f"images must be (F, {VIEWS_PER_FRAME}, H, W, 3) uint8, got {images.shape}")
        f, _, h, w, _ = images.shape
        r, grid = RENDER_SIZE, (f, VIEWS_PER_FRAME)
        arrays = {"segs": (segs, np.uint8, (*grid, h, w)), "segs_render": (segs_render, np.uint8, (*grid, r, r)),
                  "depths": (depths, "<f2", (*grid, r, r)), "features": (features, "<f2", (*grid, r, r)),
                  "bgs": (background, "<f2", (r, r)), "triplanes": (triplanes, "<f2", (f,)),
                  "labels": (labels, "<f4", (*grid, LABEL_DIM)), "mots": (motions, "<f4", grid)}
        values: dict[str, Any] = {"channels": 3, "height": h, "width": w, "num": f * VIEWS_PER_FRAME,
                                  "images": images}
        for name, (array, dtype, lead) in arrays.items():
            arr = np.ascontiguousarray(array, dtype=dtype)
            exact = name == "labels"
            if arr.shape[:len(lead)] != lead or (exact and arr.ndim != len(lead)):
                raise ValueError(f"{name} must be {lead}{'' if exact else ' + (...)'}, got {arr.shape}")
            values[name] = arr
        self._put(_encode(DATUM_NEW, values))

    def put_raw(self, payload: bytes) -> None:
        """Store an already serialised record as the next one (tests write damaged records with it)."""
        self._put(bytes(payload))

    def close(self, write_count: bool = True) -> int:
        """Write ``num_samples`` (unless ``write_count=False``), commit and close; returns the record count."""
        if self._env is None:
            return self.count
        if write_count:
            self._txn.put(NUM_SAMPLES_KEY, str(self.count).encode("ascii"))
        self._txn.commit()
        self._env.close()
        self._env = self._txn = None
        return self.count

    def __enter__(self) -> OfficialLmdbWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(write_count=exc_type is None)
