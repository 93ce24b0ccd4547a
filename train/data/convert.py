"""Convert an official Portrait4D LMDB (or one of our datasets) into our Parquet training data.

    python -m train.data.convert LMDB_DIR --out DIR [--image-format png|jpeg] [--shard-size-mb 512] [--limit N]

``LMDB_DIR`` is an official LMDB folder (``VFHQ_sub50_512_4/``: ``Datum_vfhq`` clips -> kind ``clips``;
``FFHQ_512_50/``: ``Datum_genhead`` images -> kind ``images``), or one of our Parquet datasets (a folder or a Hub
dataset repo), which is re-sharded (e.g. the one-shard-per-video output of ``python -m train.prepare``; its frames
are copied, ``--image-format`` does not re-encode them).

Raw VFHQ frames are encoded as PNG (lossless: the frames, mattes, labels and motions read back bit-identical) or
JPEG; FFHQ images and already encoded frames are copied as they are. Every record is checked while it is read, so a
damaged LMDB stops the conversion with its key. ``DIR`` appears only when the conversion is complete (it is
written under a hidden partial name beside it); ``--overwrite`` replaces an existing ``DIR``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avatar.errors import InputError
from avatar.io.files import apply_umask
from train.data.datasets import open_train_data
from train.data.official_lmdb import OfficialLmdb
from train.data.parquet_format import TrainDataWriter, find_shards
from train.data.records import IMAGE_FORMATS, ClipRecord, ImageRecord

__all__ = ["convert", "main"]

logger = logging.getLogger("train.data.convert")


def _image_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from an encoded image's header (no decoding)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.height, im.width


def convert(src: str | Path, out: str | Path, *, image_format: str = "png", quality: int = 95,
            shard_size_mb: float = 512, limit: int | None = None, overwrite: bool = False,
            show_progress: bool = True) -> dict[str, Any]:
    """Convert ``src`` (module docstring) into the dataset folder ``out``; returns a summary."""
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"image format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; choose another --out or pass --overwrite")
    source = open_train_data(src)
    total = len(source) if limit is None else min(limit, len(source))
    if total == 0:
        raise InputError(f"{src} holds no records; nothing to convert")
    meta: dict[str, Any] = {"source": str(src)}
    if isinstance(source, OfficialLmdb):
        if source.kind not in ("vfhq", "genhead"):
            raise InputError(f"{src} holds {source.kind} records (GenHead 4D renders, Datum_new); our Parquet format "
                             "has no kind for them: train on the LMDB as it is (train/portrait4d.py --data "
                             f"{src})")
        kind = "clips" if source.kind == "vfhq" else "images"
        meta["source_format"] = f"official LMDB ({'Datum_vfhq' if kind == 'clips' else 'Datum_genhead'})"
        if kind == "images":  # the FFHQ files are copied as they are
            meta["image_format"] = "as in the source LMDB (PNG/JPEG files)"
    else:
        kind = source.kind
        # frames are copied as they are: the source's own format, and the settings it was made with
        meta = {**{k: v for k, v in source.meta.items() if k not in ("format", "version", "kind", "label_dim",
                                                                     "motion_dim", "clip")}, **meta,
                "source_format": "avatar4d Parquet dataset"}
    motion_dim = source.motion_dim
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    from tqdm import tqdm

    t0 = time.perf_counter()
    frames = 0
    try:
        with TrainDataWriter(tmp, kind, motion_dim, image_format=image_format, quality=quality,
                             shard_size_mb=shard_size_mb, meta=meta) as writer:
            for i in tqdm(range(total), desc="convert", unit=kind[:-1], disable=not show_progress,
                          dynamic_ncols=True):
                record = source.read(i, copy=False)
                if isinstance(record, ClipRecord):
                    segs = record.segs
                    if hasattr(segs, "ndim") and segs.ndim == 4 and segs.shape[3] == 1:
                        segs = segs[..., 0]
                    name = record.clip_id if record.clip_id is not None else f"{i:08d}"
                    writer.add_clip(record.images, segs, record.labels, record.motions, name, record.height,
                                    record.width, record.source_frames)
                    frames += record.num_frames
                else:
                    assert isinstance(record, ImageRecord)
                    if isinstance(record.image, bytes | bytearray | memoryview):
                        h, w = _image_size(bytes(record.image))
                    else:
                        h, w = record.image.shape[:2]
                    name = record.image_id if record.image_id is not None else f"{i:08d}"
                    writer.add_image(record.image, record.seg, record.label, record.motion, name, h, w)
                    frames += 1
        shards = len(find_shards(tmp))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            shutil.rmtree(old, ignore_errors=True)
        apply_umask(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    summary = {"source": str(src), "out": str(out), "kind": kind, "rows": total, "frames": frames, "shards": shards,
               "bytes": size, "image_format": image_format, "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("converted %d %s (%d frames) into %d shard(s), %.1f MB, in %.1f s", total, kind, frames, shards,
                size / 1e6, summary["seconds"])
    return summary


def build_parser() -> argparse.ArgumentParser:
    from avatar.cli import POSITIVE_INT, ArgumentParser

    p = ArgumentParser(prog="python -m train.data.convert", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="official LMDB folder, or one of our Parquet datasets (folder or Hub repo id)")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder to write")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="png",
                   help="how raw frames are encoded: png (lossless, default) or jpeg")
    p.add_argument("--jpeg-quality", type=POSITIVE_INT, default=95)
    p.add_argument("--shard-size-mb", type=float, default=512, help="about this many MB per shard (default 512)")
    p.add_argument("--limit", type=POSITIVE_INT, help="convert only the first N records")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 (done), 1 (the input cannot be used), 2 (a bug), 130 (interrupted)."""
    from avatar.cli import run_guarded
    from avatar.logs import setup_logging

    args = build_parser().parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)

    def work() -> int:
        if args.shard_size_mb <= 0 or args.jpeg_quality > 100:
            raise InputError("--shard-size-mb must be positive and --jpeg-quality at most 100")
        summary = convert(args.src, args.out, image_format=args.image_format, quality=args.jpeg_quality,
                          shard_size_mb=args.shard_size_mb, limit=args.limit, overwrite=args.overwrite,
                          show_progress=not args.no_progress)
        print(json.dumps(summary, indent=1))
        return 0

    return run_guarded(work, verbosity=verbosity, log=logger, command="train.data.convert")


if __name__ == "__main__":
    raise SystemExit(main())
