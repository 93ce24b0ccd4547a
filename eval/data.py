"""The prepared-data layout the benchmark reads, and the checks of a method's frames.

Layout (see ``eval/README.md``)::

    DATA/<video_or_image_id>/<frame:06d>.png         ground truth (HDTF: one folder per video; CelebA: one
                                                     folder per image, holding 000000.png)
    PREDICTIONS/<output_id>/<frame:06d>.png          a method's outputs, named as the protocol says

Ids are sorted in natural order (``img2`` before ``img10``), frames by their integer number.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar.errors import InputError, InputNotFoundError

__all__ = [
    "FRAME_DIGITS", "PredictionCheckError", "check_predictions", "frame_name", "image_size", "list_frames",
    "list_ids", "load_batch", "load_image", "natural_key", "parse_frame",
]

FRAME_DIGITS = 6
_FRAME_RE = re.compile(r"^(\d+)\.png$")


def natural_key(text: str) -> tuple:
    """Sort key that orders the digit runs of ``text`` as numbers (``a2 < a10``)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part != "")


def frame_name(frame: int) -> str:
    return f"{frame:0{FRAME_DIGITS}d}.png"


def parse_frame(name: str) -> int | None:
    m = _FRAME_RE.match(name)
    return int(m.group(1)) if m else None


def list_ids(root: str | Path) -> list[str]:
    """The sub-folders of ``root`` (ids), in natural order; hidden folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: no such data folder")
    return sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)


def list_frames(root: str | Path, item: str) -> list[int]:
    """Frame numbers of ``root/item/<frame:06d>.png``, ascending."""
    folder = Path(root) / item
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: no such folder (expected {Path(root).name}/<id>/<frame:06d>.png)")
    frames = sorted(f for f in (parse_frame(p.name) for p in folder.iterdir()) if f is not None)
    return frames


def load_image(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@functools.lru_cache(maxsize=1)
def _decoder_pool() -> concurrent.futures.ThreadPoolExecutor:
    workers = min(16, max(1, (os.cpu_count() or 1)))
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-decode")


def load_batch(paths: Sequence[str | Path]) -> Tensor:
    """``(B, 3, H, W)`` float32 in [0, 1] (all images must share one size)."""
    arrays = list(_decoder_pool().map(load_image, paths))  # PNG decoding releases the GIL: threads help
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise InputError(f"images of different sizes in one batch: {sorted(sizes)}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x.float().div_(255.0)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (no decoding)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


class PredictionCheckError(InputError):
    """The predictions folder does not match the protocol: missing, extra or mis-sized frames (all listed)."""

    def __init__(self, message: str, missing: list[str], extra: list[str], missized: list[str]) -> None:
        super().__init__(message)
        self.missing, self.extra, self.missized = missing, extra, missized


def _listing(kind: str, items: list[str], limit: int = 20) -> str:
    head = ", ".join(items[:limit])
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {kind}: {head}{more}"


def check_predictions(
    pred_root: str | Path,
    expected: Iterable[tuple[str, Path]],
    allowed: Iterable[str] | None = None,
    report_file: str | Path | None = None,
) -> None:
    """Check ``pred_root`` against the protocol and raise :class:`PredictionCheckError` listing every problem.

    Args:
        expected: ``(sample_id, reference_image)`` for every sample to score; ``pred_root/<sample_id>.png`` must
            exist and have the reference image's size.
        allowed: ids that may exist without being scored now (the whole protocol when ``--limit`` scores a
            part); files outside ``allowed | expected`` are extra. ``None``: only the expected ids.
        report_file: where the full lists are written when the check fails.
    """
    root = Path(pred_root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: no such predictions folder")
    expected = list(expected)
    present: set[str] = set()
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            present.update(f"{folder.name}/{p.name[:-4]}" for p in folder.iterdir()
                           if p.name.endswith(".png") and not p.name.startswith("."))
    want = {sid for sid, _ in expected}
    ok = want | (set(allowed) if allowed is not None else set())
    missing = [sid for sid, _ in expected if sid not in present]
    extra = sorted(present - ok, key=natural_key)
    missized: list[str] = []
    ref_sizes: dict[Path, tuple[int, int]] = {}
    for sid, ref in expected:
        if sid not in present:
            continue
        if ref not in ref_sizes:
            ref_sizes[ref] = image_size(ref)
        got = image_size(root / f"{sid}.png")
        if got != ref_sizes[ref]:
            missized.append(f"{sid}.png ({got[0]}x{got[1]}, expected {ref_sizes[ref][0]}x{ref_sizes[ref][1]})")
    if missing or extra or missized:
        parts = [_listing(k, v) for k, v in (("missing", [f"{m}.png" for m in missing]),
                                              ("extra", [f"{e}.png" for e in extra]),
                                              ("mis-sized", missized)) if v]
        message = f"{root} does not match the protocol: " + "; ".join(parts)
        if report_file is not None:
            path = Path(report_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"missing {m}.png\n" for m in missing) + "".join(f"extra {e}.png\n" for e in extra)
                            + "".join(f"mis-sized {m}\n" for m in missized))
            message += f" (full list in {path})"
        raise PredictionCheckError(message, missing, extra, missized)
