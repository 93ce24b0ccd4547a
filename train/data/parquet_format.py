"""Our default on-disk training data: Parquet shards in a Hugging Face dataset layout.

A dataset is a folder (or a Hub dataset repo with the same files)::

    DATA/README.md                              dataset card; its YAML names the shards for `datasets`/the Hub viewer
    DATA/data/train-00000-of-00004.parquet      shards (any *.parquet under data/, read in sorted order)

``kind = "clips"`` (Portrait4D-v2's video data, one row per clip, any number of frames):

============== ========================================= ===================================================
column         Arrow type                                content
============== ========================================= ===================================================
clip_id        string                                    name of the clip (its video, or the LMDB key)
num_frames     int32                                     N
height, width  int32                                     frame size
frames         list<struct<bytes: binary, path: str>>    N frames, PNG (default) or JPEG files (HF ``Image``)
segs           list<struct<bytes: binary, path: str>>    N foreground mattes, greyscale PNG
labels         list<fixed_size_list<float, 437>>         N FLAME labels (layout in :mod:`train.data.records`)
motions        list<fixed_size_list<float, D>>           N motion embeddings (PD-FGC: D = 548)
source_frames  list<int32>                               index of each frame in its video (null if unknown)
============== ========================================= ===================================================

``kind = "images"`` (the FFHQ / GenHead data, one row per image): ``image_id``, ``height``, ``width``, ``image``
and ``seg`` (HF ``Image`` structs), ``label`` (fixed_size_list<float, 437>), ``motion`` (fixed_size_list<float, D>).

Each shard's Arrow schema carries two metadata entries: ``avatar4d`` (JSON: format name and version, kind,
label and motion dims, image format, and whatever the writer adds, e.g. the preprocessing of
``python -m train.prepare``) and ``huggingface`` (the ``datasets`` features: frames decode as PIL images there).

**Why encoded frames, and why PNG.** A 512x512 RGB frame is 786 kB raw. Measured on the 32 official aligned
crops (``portrait4d/examples/align_images``; OpenCV, one core of the 2-core development machine): PNG (level 3)
339 kB (43 %), decoded in about 8 ms; JPEG quality 95 82 kB (10 %), about 2 ms. Raw frames, as in the official
LMDB, would make the full VFHQ training set (about 10.5 k clips x 50 frames) some 410 GB; PNG makes it about
180 GB, plus a few GB of mattes (greyscale PNG, about 13 kB each). The decoding cost does not matter: a training
item decodes two frames and one matte (about 20 ms), so eight DataLoader workers per GPU give a few hundred items
per second, while a reconstructor step takes a handful of items per GPU. The smaller files also make a Hub upload
and a streamed read two times faster. PNG is the default because it is lossless: a converted official LMDB reads
back bit-identical, and the reconstruction losses never see compression artefacts. ``image_format="jpeg"`` gives
a copy four times smaller where that matters more.

One clip is one row group (``rows_per_group=1``), so a random clip costs one row group read; images go 16 to a
row group. Reading is random access over every shard of a local folder (:class:`ParquetTrainData`; a Hub repo is
downloaded first with ``huggingface_hub.snapshot_download``), or streamed shard by shard (:class:`ShardStream`;
from the Hub each shard is downloaded when it is reached).
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import InputError, InputNotFoundError
from avatar.io.files import create_partial, remove_stale_partials
from train.data.errors import TrainDataError
from train.data.records import (
    IMAGE_FORMATS,
    LABEL_DIM,
    ClipRecord,
    ImageRecord,
    encode_image,
    encode_seg,
)

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "KINDS", "ParquetShardWriter", "ParquetTrainData", "ShardStream",
    "TrainDataWriter", "clip_row", "image_row", "read_shard_meta", "resolve_dataset", "write_dataset_card",
]

FORMAT_NAME = "avatar4d-train-data"
FORMAT_VERSION = 1
KINDS = ("clips", "images")
META_KEY = b"avatar4d"
HF_META_KEY = b"huggingface"
DATA_DIR = "data"
ROWS_PER_GROUP = {"clips": 1, "images": 16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:  # pragma: no cover - pyarrow is in the [train] extra
        from avatar.errors import MissingDependencyError

        raise MissingDependencyError("the Parquet training data needs `pyarrow`: pip install 'avatar4d[train]'") from exc
    return pa


# ---------------------------------------------------------------------------------------------------------
# schema


def _image_type() -> Any:
    pa = _pa()
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


def _seq(feature: dict[str, Any], length: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"feature": feature, "_type": "Sequence"}
    if length is not None:
        out["length"] = length
    return out


def hf_features(kind: str, motion_dim: int) -> dict[str, Any]:
    """The ``datasets`` features of a shard (JSON form, as ``datasets`` stores them in Parquet metadata)."""
    image = {"_type": "Image"}
    if kind == "clips":
        return {"clip_id": _value("string"), "num_frames": _value("int32"), "height": _value("int32"),
                "width": _value("int32"), "frames": _seq(image), "segs": _seq(image),
                "labels": _seq(_seq(_value("float32"), LABEL_DIM)),
                "motions": _seq(_seq(_value("float32"), motion_dim)), "source_frames": _seq(_value("int32"))}
    return {"image_id": _value("string"), "height": _value("int32"), "width": _value("int32"), "image": image,
            "seg": image, "label": _seq(_value("float32"), LABEL_DIM), "motion": _seq(_value("float32"), motion_dim)}


def schema_for(kind: str, motion_dim: int, meta: dict[str, Any] | None = None) -> Any:
    """The Arrow schema of a shard of ``kind``, with the ``avatar4d`` and ``huggingface`` metadata."""
    pa = _pa()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    img = _image_type()
    f32 = pa.float32()
    if kind == "clips":
        fields = [("clip_id", pa.string()), ("num_frames", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
                  ("frames", pa.list_(img)), ("segs", pa.list_(img)),
                  ("labels", pa.list_(pa.list_(f32, LABEL_DIM))), ("motions", pa.list_(pa.list_(f32, motion_dim))),
                  ("source_frames", pa.list_(pa.int32()))]
    else:
        fields = [("image_id", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("image", img),
                  ("seg", img), ("label", pa.list_(f32, LABEL_DIM)), ("motion", pa.list_(f32, motion_dim))]
    info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "label_dim": LABEL_DIM,
            "motion_dim": motion_dim, **(meta or {})}
    hf = {"info": {"features": hf_features(kind, motion_dim)}}
    return pa.schema(fields, metadata={META_KEY: json.dumps(info), HF_META_KEY: json.dumps(hf)})


# ---------------------------------------------------------------------------------------------------------
# rows


def _encoded(frames: np.ndarray | Sequence[bytes], encode: Any) -> list[bytes]:
    if isinstance(frames, np.ndarray):
        return [encode(f) for f in frames]
    return [bytes(f) for f in frames]


def clip_row(images: np.ndarray | Sequence[bytes], segs: np.ndarray | Sequence[bytes], labels: np.ndarray,
             motions: np.ndarray, clip_id: str, height: int | None = None, width: int | None = None,
             source_frames: Sequence[int] | None = None, image_format: str = "png", quality: int = 95,
             ) -> dict[str, Any]:
    """One clip as a row: raw ``(N, H, W, 3)`` frames and ``(N, H, W[, C])`` mattes are encoded
    (``image_format`` for frames, PNG for mattes); already encoded ones (lists of bytes) are kept as they are."""
    labels = np.ascontiguousarray(labels, dtype=np.float32)
    motions = np.ascontiguousarray(motions, dtype=np.float32)
    n = len(labels)
    if isinstance(images, np.ndarray):
        height, width = images.shape[1:3]
    if height is None or width is None:
        raise ValueError("height and width are needed with encoded frames")
    frames = _encoded(images, lambda f: encode_image(f, image_format, quality))
    mattes = _encoded(segs, encode_seg)
    if not (len(frames) == len(mattes) == n == len(motions)) or labels.shape != (n, LABEL_DIM) or motions.ndim != 2:
        raise ValueError(f"a clip needs as many frames, segs, labels ({LABEL_DIM}) and motions: got {len(frames)}, "
                         f"{len(mattes)}, {labels.shape}, {motions.shape}")
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    return {"clip_id": str(clip_id), "num_frames": n, "height": int(height), "width": int(width), "frames": frames,
            "segs": mattes, "labels": labels, "motions": motions,
            "source_frames": None if source_frames is None else np.asarray(source_frames, np.int32)}


def image_row(image: np.ndarray | bytes, seg: np.ndarray | bytes, label: np.ndarray, motion: np.ndarray,
              image_id: str, height: int = 0, width: int = 0, image_format: str = "png", quality: int = 95,
              ) -> dict[str, Any]:
    """One image as a row (arrays are encoded, encoded bytes are kept)."""
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
        image = encode_image(image, image_format, quality)
    if isinstance(seg, np.ndarray):
        seg = encode_seg(seg)
    label = np.ascontiguousarray(label, dtype=np.float32).reshape(-1)
    if label.shape != (LABEL_DIM,):
        raise ValueError(f"a label has {LABEL_DIM} floats, got {label.shape}")
    return {"image_id": str(image_id), "height": int(height), "width": int(width), "image": bytes(image),
            "seg": bytes(seg), "label": label, "motion": np.ascontiguousarray(motion, dtype=np.float32).reshape(-1)}


def _image_array(items: list[bytes]) -> Any:
    pa = _pa()
    return pa.StructArray.from_arrays([pa.array(items, pa.binary()), pa.nulls(len(items), pa.string())],
                                      names=["bytes", "path"])


def _fixed(rows: np.ndarray, dim: int) -> Any:
    pa = _pa()
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(rows, np.float32).reshape(-1)), dim)


def _lists(values: Any, counts: Sequence[int], null: Sequence[bool] | None = None) -> Any:
    pa = _pa()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    mask = None if null is None or not any(null) else pa.array(null)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)


def rows_to_table(rows: Sequence[dict[str, Any]], schema: Any) -> Any:
    """Rows from :func:`clip_row` / :func:`image_row` -> an Arrow table of ``schema`` (built column by column:
    no per-float Python objects)."""
    pa = _pa()
    meta = json.loads(schema.metadata[META_KEY])
    dim = int(meta["motion_dim"])
    for r in rows:
        m = r["motions"] if meta["kind"] == "clips" else r["motion"][None]
        if m.shape[-1] != dim:
            raise ValueError(f"motions of {m.shape[-1]} floats in a dataset of {dim}-d motions")
    if meta["kind"] == "clips":
        counts = [r["num_frames"] for r in rows]
        src = [r["source_frames"] for r in rows]
        cols = {
            "clip_id": pa.array([r["clip_id"] for r in rows], pa.string()),
            "num_frames": pa.array(counts, pa.int32()),
            "height": pa.array([r["height"] for r in rows], pa.int32()),
            "width": pa.array([r["width"] for r in rows], pa.int32()),
            "frames": _lists(_image_array([f for r in rows for f in r["frames"]]), counts),
            "segs": _lists(_image_array([f for r in rows for f in r["segs"]]), counts),
            "labels": _lists(_fixed(np.concatenate([r["labels"] for r in rows]), LABEL_DIM), counts),
            "motions": _lists(_fixed(np.concatenate([r["motions"] for r in rows]), dim), counts),
            "source_frames": _lists(pa.array(np.concatenate([s for s in src if s is not None] or
                                                            [np.zeros(0, np.int32)]).astype(np.int32)),
                                    [0 if s is None else len(s) for s in src], [s is None for s in src]),
        }
    else:
        cols = {
            "image_id": pa.array([r["image_id"] for r in rows], pa.string()),
            "height": pa.array([r["height"] for r in rows], pa.int32()),
            "width": pa.array([r["width"] for r in rows], pa.int32()),
            "image": _image_array([r["image"] for r in rows]),
            "seg": _image_array([r["seg"] for r in rows]),
            "label": _fixed(np.stack([r["label"] for r in rows]), LABEL_DIM),
            "motion": _fixed(np.stack([r["motion"] for r in rows]), dim),
        }
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def row_nbytes(row: dict[str, Any]) -> int:
    if "frames" in row:
        return sum(map(len, row["frames"])) + sum(map(len, row["segs"])) + row["labels"].nbytes + row["motions"].nbytes
    return len(row["image"]) + len(row["seg"]) + row["label"].nbytes + row["motion"].nbytes


# ---------------------------------------------------------------------------------------------------------
# writing


class ParquetShardWriter:
    """One shard, written under a partial name beside ``path`` and moved into place by :meth:`close`."""

    def __init__(self, path: str | Path, kind: str, motion_dim: int, meta: dict[str, Any] | None = None,
                 rows_per_group: int | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path)
        self.schema = schema_for(kind, motion_dim, meta)
        self.rows_per_group = rows_per_group or ROWS_PER_GROUP[kind]
        self._tmp = create_partial(self.path)
        # stored uncompressed: the frames are PNG/JPEG already (zstd would gain ~1 % for the CPU it costs)
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression="NONE", use_dictionary=False,
                                        write_statistics=False)
        self._pending: list[dict[str, Any]] = []
        self.rows = 0
        self.nbytes = 0

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self.rows += 1
        self.nbytes += row_nbytes(row)
        if len(self._pending) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(rows_to_table(self._pending, self.schema), row_group_size=len(self._pending))
            self._pending = []

    def close(self) -> Path:
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def write_dataset_card(root: str | Path, kind: str, motion_dim: int, meta: dict[str, Any] | None = None,
                       extra: str = "") -> Path:
    """``root/README.md``: a Hugging Face dataset card whose YAML points the viewer and ``load_dataset`` at the
    shards (``data/**/*.parquet``)."""
    root = Path(root)
    what = ("one row per video clip: frames, foreground mattes, FLAME labels and motion embeddings per frame"
            if kind == "clips" else "one row per image: image, foreground matte, FLAME label and motion embedding")
    info = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "label_dim": LABEL_DIM,
                       "motion_dim": motion_dim, **(meta or {})}, indent=1)
    text = (f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {DATA_DIR}/**/*.parquet\n"
            f"tags:\n- avatar4d\n- portrait4d\n---\n\n# Portrait4D training data ({kind})\n\n"
            f"Written by avatar4d (`train.data`): {what}. Labels: 437 floats (camera 25, shape 300, expression 100, "
            f"pose 6, eye pose 6); motions: {motion_dim} floats. Load with `train.data.open_train_data(PATH_OR_REPO)`.\n"
            f"{extra}\n```json\n{info}\n```\n")
    path = root / "README.md"
    tmp = create_partial(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class TrainDataWriter:
    """A dataset folder of shards of about ``shard_size_mb`` each: ``root/data/<prefix>-00000-of-00003.parquet``
    (final names given by :meth:`close`) and the dataset card.

    Args:
        root: the dataset folder (created; shards already in ``root/data`` are an error).
        kind: ``'clips'`` or ``'images'``.
        motion_dim: floats per motion (548 for PD-FGC).
        image_format: ``'png'`` (default, lossless) or ``'jpeg'`` for frames given as arrays.
        meta: added to each shard's ``avatar4d`` metadata and the card.
    """

    def __init__(self, root: str | Path, kind: str, motion_dim: int, image_format: str = "png", quality: int = 95,
                 shard_size_mb: float = 512, rows_per_group: int | None = None, meta: dict[str, Any] | None = None,
                 prefix: str = "train") -> None:
        if kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
        if image_format not in IMAGE_FORMATS:
            raise InputError(f"image format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        self.root = Path(root)
        self.data = self.root / DATA_DIR
        if self.data.is_dir() and any(self.data.rglob("*.parquet")):
            raise InputError(f"{self.data} already holds Parquet shards; write into an empty folder")
        self.kind, self.motion_dim = kind, int(motion_dim)
        self.image_format, self.quality = image_format, quality
        self.shard_bytes = max(1, int(shard_size_mb * 2**20))
        self.rows_per_group = rows_per_group
        self.meta = {"image_format": image_format, **(meta or {})}
        self.prefix = prefix
        self._shard: ParquetShardWriter | None = None
        self._written: list[Path] = []
        self.rows = 0

    def _add(self, row: dict[str, Any]) -> None:
        if self._shard is None:
            path = self.data / f".{self.prefix}-{len(self._written):05d}.parquet"
            self._shard = ParquetShardWriter(path, self.kind, self.motion_dim, self.meta, self.rows_per_group)
        self._shard.add(row)
        self.rows += 1
        if self._shard.nbytes >= self.shard_bytes:
            self._written.append(self._shard.close())
            self._shard = None

    def add_clip(self, images: np.ndarray | Sequence[bytes], segs: np.ndarray | Sequence[bytes], labels: np.ndarray,
                 motions: np.ndarray, clip_id: str | None = None, height: int | None = None,
                 width: int | None = None, source_frames: Sequence[int] | None = None) -> None:
        if self.kind != "clips":
            raise InputError("add_clip needs a writer of kind 'clips'")
        self._add(clip_row(images, segs, labels, motions, clip_id if clip_id is not None else f"{self.rows:08d}",
                           height, width, source_frames, self.image_format, self.quality))

    def add_image(self, image: np.ndarray | bytes, seg: np.ndarray | bytes, label: np.ndarray, motion: np.ndarray,
                  image_id: str | None = None, height: int = 0, width: int = 0) -> None:
        if self.kind != "images":
            raise InputError("add_image needs a writer of kind 'images'")
        self._add(image_row(image, seg, label, motion, image_id if image_id is not None else f"{self.rows:08d}",
                            height, width, self.image_format, self.quality))

    def close(self) -> list[Path]:
        """Finish the last shard, give the shards their final names and write the card; returns the shards."""
        if self._shard is not None:
            self._written.append(self._shard.close())
            self._shard = None
        n = len(self._written)
        final = []
        for i, path in enumerate(self._written):
            target = self.data / f"{self.prefix}-{i:05d}-of-{n:05d}.parquet"
            os.replace(path, target)
            final.append(target)
        self._written = final
        write_dataset_card(self.root, self.kind, self.motion_dim, self.meta)
        return final

    def abort(self) -> None:
        if self._shard is not None:
            self._shard.abort()
            self._shard = None
        for path in self._written:
            path.unlink(missing_ok=True)

    def __enter__(self) -> TrainDataWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------------------------------
# reading


def _is_shard(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    return path.is_file() and not any(part.startswith(".") for part in rel.parts)


def find_shards(root: Path) -> list[Path]:
    """The shards of a dataset folder: ``*.parquet`` under ``root/data`` (else anywhere under ``root``), hidden
    (partial) files excluded, sorted by path."""
    base = root / DATA_DIR if (root / DATA_DIR).is_dir() else root
    return sorted(p for p in base.rglob("*.parquet") if _is_shard(p, root))


def read_shard_meta(path: str | Path) -> tuple[dict[str, Any], Any]:
    """``(avatar4d metadata, pyarrow FileMetaData)`` of a shard; :class:`TrainDataError` if it is not one."""
    import pyarrow.parquet as pq

    _pa()
    try:
        md = pq.read_metadata(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise TrainDataError(f"{path} is not a readable Parquet file ({exc}); delete it (or write it again)",
                             path) from None
    schema_meta = md.schema.to_arrow_schema().metadata or {}
    try:
        meta = json.loads(schema_meta[META_KEY])
    except (KeyError, ValueError):
        raise TrainDataError(f"{path} is a Parquet file without avatar4d training-data metadata (not written by "
                             "train.data)", path) from None
    if meta.get("format") != FORMAT_NAME or meta.get("kind") not in KINDS:
        raise TrainDataError(f"{path}: unknown training-data format {meta.get('format')!r} / kind "
                             f"{meta.get('kind')!r}", path)
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise TrainDataError(f"{path} was written by a newer avatar4d (format version {meta['version']}); upgrade",
                             path)
    return meta, md


def resolve_dataset(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local dataset folder as it is, or a Hub dataset repo (``owner/name``) downloaded with
    ``huggingface_hub.snapshot_download`` (shards, JSON and the card only) into the Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if not _REPO_ID.match(name):
        raise InputNotFoundError(f"{name} is neither a folder nor a Hub dataset repo id (owner/name)")
    import huggingface_hub

    try:
        local = huggingface_hub.snapshot_download(repo_id=name, repo_type="dataset", revision=revision,
                                                  allow_patterns=["*.parquet", "*.json", "README.md"])
    except Exception as exc:  # noqa: BLE001 - offline, not found, gated: all mean "cannot use it now"
        raise InputNotFoundError(f"{name} is not a local folder and the Hub dataset repo could not be fetched "
                                 f"({type(exc).__name__}: {exc}); check the name, your login (`hf auth login`) "
                                 "and the network, or give a local folder") from None
    return Path(local)


class ParquetTrainData:
    """Random access to a dataset folder of shards (see the module docstring), or a Hub dataset repo.

    Every shard's footer is read when this is made (row counts, row groups, metadata), so a foreign or damaged
    shard fails at once, naming the file. Rows are read one row group at a time from files opened lazily in each
    process (at most ``max_open`` at once).
    """

    def __init__(self, name_or_path: str | Path, revision: str | None = None, max_open: int = 16) -> None:
        self.root = resolve_dataset(name_or_path, revision)
        if not self.root.is_dir():
            raise InputError(f"{self.root} is a file; give the dataset folder")
        self.shards = find_shards(self.root)
        if not self.shards:
            raise TrainDataError(f"{self.root} holds no Parquet shards (expected {DATA_DIR}/*.parquet)", self.root)
        self.meta: dict[str, Any] = {}
        starts, groups = [0], []
        for shard in self.shards:
            meta, md = read_shard_meta(shard)
            if not self.meta:
                self.meta = meta
            elif (meta["kind"], meta["motion_dim"]) != (self.meta["kind"], self.meta["motion_dim"]):
                raise TrainDataError(f"{shard} holds {meta['kind']} with {meta['motion_dim']}-d motions, but "
                                     f"{self.shards[0]} {self.meta['kind']} with {self.meta['motion_dim']}-d: one "
                                     "dataset mixes two kinds of shard", shard)
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            groups.append(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            starts.append(starts[-1] + md.num_rows)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._groups = groups
        self.max_open = max_open
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    @property
    def kind(self) -> str:
        """``'clips'`` or ``'images'``."""
        return str(self.meta["kind"])

    @property
    def motion_dim(self) -> int:
        return int(self.meta["motion_dim"])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": OrderedDict()}

    def locate(self, index: int) -> tuple[int, int]:
        """Global row ``index`` -> ``(shard number, row in that shard)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range: {self.root} has {len(self)}")
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        return shard, int(index - self._starts[shard])

    def _file(self, shard: int) -> Any:
        import pyarrow.parquet as pq

        if self._pid != os.getpid():  # a forked worker opens its own handles
            self._files, self._pid = OrderedDict(), os.getpid()
        pf = self._files.get(shard)
        if pf is None:
            try:
                pf = pq.ParquetFile(str(self.shards[shard]))
            except Exception as exc:  # noqa: BLE001
                raise TrainDataError(f"{self.shards[shard]} cannot be opened ({exc})", self.shards[shard]) from None
            self._files[shard] = pf
            while len(self._files) > self.max_open:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(shard)
        return pf

    def read_row(self, shard: int, row: int) -> ClipRecord | ImageRecord:
        """Row ``row`` of shard ``shard``, checked."""
        bounds = self._groups[shard]
        group = int(np.searchsorted(bounds, row, side="right") - 1)
        path = self.shards[shard]
        try:
            table = self._file(shard).read_row_group(group).slice(row - int(bounds[group]), 1)
        except TrainDataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged column chunk
            raise TrainDataError(f"{path}, row {row}: the row group cannot be read ({exc})", path, str(row)) from None
        return table_record(table, f"{path}, row {row}", self.kind, self.motion_dim)

    def read(self, index: int, copy: bool = True) -> ClipRecord | ImageRecord:
        """Row ``index`` over all shards, as a :class:`ClipRecord` or :class:`ImageRecord` (frames stay encoded
        until asked for). ``copy`` is accepted for symmetry with :class:`~train.data.OfficialLmdb` (rows are
        always fresh)."""
        return self.read_row(*self.locate(index))

    def __iter__(self) -> Iterator[ClipRecord | ImageRecord]:
        yield from ShardStream(self.root).iter_records()


def _col(table: Any, name: str) -> Any:
    return table.column(name).combine_chunks()


def _struct_bytes(arr: Any) -> list[bytes | None]:
    """The ``bytes`` of an HF ``Image`` struct array (``StructArray.flatten`` honours a slice's offset, which
    ``StructArray.field`` does not)."""
    return arr.flatten()[arr.type.get_field_index("bytes")].to_pylist()


def table_record(table: Any, where: str, kind: str, motion_dim: int) -> ClipRecord | ImageRecord:
    """The record of a one-row table of a shard (checked: frame counts, label and motion sizes, finite labels)."""
    path, _, row_key = where.rpartition(", row ")
    if kind == "clips":
        n, h, w = (int(_col(table, c)[0].as_py() or 0) for c in ("num_frames", "height", "width"))
        clip_id = _col(table, "clip_id")[0].as_py()
        where = f"{where} (clip {clip_id})"
        frames = _struct_bytes(_col(table, "frames").flatten())
        segs = _struct_bytes(_col(table, "segs").flatten())
        labels = _col(table, "labels").flatten().flatten().to_numpy(zero_copy_only=False)
        motions = _col(table, "motions").flatten().flatten().to_numpy(zero_copy_only=False)
        src_col = _col(table, "source_frames")
        source = None if src_col.null_count else src_col.flatten().to_numpy(zero_copy_only=False)
        if n < 1 or h < 1 or w < 1:
            raise TrainDataError(f"{where}: num_frames={n}, height={h}, width={w}; all must be at least 1", path,
                                 row_key)
        counts = {"frames": len(frames), "segs": len(segs), "labels": labels.size // LABEL_DIM,
                  "motions": motions.size // motion_dim}
        if any(c != n for c in counts.values()) or any(f is None for f in frames + segs):
            raise TrainDataError(f"{where}: num_frames is {n} but the row holds {counts} (or an empty frame)",
                                 path, row_key)
        labels = labels.reshape(n, LABEL_DIM)
        if not np.isfinite(labels).all():
            raise TrainDataError(f"{where}: the labels contain NaN or infinity", path, row_key)
        return ClipRecord(frames, segs, labels, motions.reshape(n, motion_dim), h, w, where=where, clip_id=clip_id,
                          source_frames=source, path=path, key=row_key)
    h, w = (int(_col(table, c)[0].as_py() or 0) for c in ("height", "width"))
    image_id = _col(table, "image_id")[0].as_py()
    where = f"{where} (image {image_id})"
    image = _struct_bytes(_col(table, "image"))[0]
    seg = _struct_bytes(_col(table, "seg"))[0]
    label = _col(table, "label").flatten().to_numpy(zero_copy_only=False)
    motion = _col(table, "motion").flatten().to_numpy(zero_copy_only=False)
    if not image or seg is None or label.size != LABEL_DIM or motion.size != motion_dim:
        raise TrainDataError(f"{where}: an empty image or seg, or {label.size} label / {motion.size} motion floats "
                             f"(expected {LABEL_DIM} / {motion_dim})", path, row_key)
    if not np.isfinite(label).all():
        raise TrainDataError(f"{where}: the label contains NaN or infinity", path, row_key)
    return ImageRecord(image, seg, label, motion, h, w, where=where, image_id=image_id, path=path, key=row_key)


class ShardStream:
    """A dataset read shard by shard, row group by row group: a local folder, or a Hub dataset repo whose
    shards are downloaded (``hf_hub_download``, into the Hugging Face cache) only when they are reached.

    ``shards`` lists local paths (a folder) or repo file names (a Hub repo), sorted.
    """

    def __init__(self, name_or_path: str | Path, revision: str | None = None) -> None:
        path = Path(name_or_path).expanduser()
        self.repo_id: str | None = None
        self.revision = revision
        if path.exists():
            self.root: Path | None = path
            self.shards: list[str] = [str(p) for p in find_shards(path)]
        else:
            name = str(name_or_path)
            if not _REPO_ID.match(name):
                raise InputNotFoundError(f"{name} is neither a folder nor a Hub dataset repo id (owner/name)")
            import huggingface_hub

            try:
                files = huggingface_hub.list_repo_files(name, repo_type="dataset", revision=revision)
            except Exception as exc:  # noqa: BLE001
                raise InputNotFoundError(f"the Hub dataset repo {name} could not be listed ({type(exc).__name__}: "
                                         f"{exc}); check the name, your login and the network") from None
            self.root, self.repo_id = None, name
            self.shards = sorted(f for f in files if f.endswith(".parquet") and f.startswith(f"{DATA_DIR}/")
                                 and not any(p.startswith(".") for p in f.split("/")))
        if not self.shards:
            raise TrainDataError(f"{name_or_path} holds no Parquet shards (expected {DATA_DIR}/*.parquet)",
                                 name_or_path)

    def __len__(self) -> int:
        return len(self.shards)

    def local_path(self, shard: int) -> Path:
        """Shard ``shard`` as a local file (downloaded first for a Hub repo)."""
        if self.repo_id is None:
            return Path(self.shards[shard])
        import huggingface_hub

        try:
            return Path(huggingface_hub.hf_hub_download(self.repo_id, self.shards[shard], repo_type="dataset",
                                                        revision=self.revision))
        except Exception as exc:  # noqa: BLE001
            raise InputNotFoundError(f"{self.shards[shard]} of the Hub dataset {self.repo_id} could not be "
                                     f"downloaded ({type(exc).__name__}: {exc})") from None

    def iter_shard(self, shard: int) -> Iterator[tuple[int, ClipRecord | ImageRecord]]:
        """``(row, record)`` of one shard, in order."""
        import pyarrow.parquet as pq

        path = self.local_path(shard)
        meta, _ = read_shard_meta(path)
        pf = pq.ParquetFile(str(path))
        row = 0
        for group in range(pf.num_row_groups):
            try:
                table = pf.read_row_group(group)
            except Exception as exc:  # noqa: BLE001
                raise TrainDataError(f"{path}: row group {group} cannot be read ({exc})", path, str(row)) from None
            for k in range(table.num_rows):
                yield row, table_record(table.slice(k, 1), f"{path}, row {row}", meta["kind"], int(meta["motion_dim"]))
                row += 1

    def iter_records(self, shards: Sequence[int] | None = None) -> Iterator[ClipRecord | ImageRecord]:
        for shard in range(len(self.shards)) if shards is None else shards:
            for _, record in self.iter_shard(shard):
                yield record
