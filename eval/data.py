"""The prepared-data layout the benchmark reads, and the checks of a method's frames.

Layout (see ``eval/README.md``)::

    DATA/<video_or_image_id>/<frame:06d>.png         ground truth (HDTF: one folder per video; CelebA: one
                                                     folder per image, holding 000000.png)
    PREDICTIONS/<output_id>/<frame>.png|.jpg         a method's outputs, named as the protocol says

Ids are sorted in natural order (``img2`` before ``img10``), frames by their integer number. The ground truth is
always ``<frame:06d>.png``; a method's frames may be named ``000123.png``, ``123.png``, ``frame_123.jpg`` ... (PNG
or JPEG, mixed): :func:`check_predictions` maps each to its frame by the last number in its name, drops the source
frame a method wrote with its outputs (:func:`unscored_source_frames`) and, when asked, resizes other sizes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.errors import InputError, InputNotFoundError

__all__ = [
    "FRAME_DIGITS", "IMAGE_SUFFIXES", "PredictionCheckError", "PredictionFiles", "check_predictions", "frame_name",
    "image_size", "list_frames", "list_ids", "load_batch", "load_image", "natural_key", "parse_frame",
    "parse_prediction_frame", "unscored_source_frames",
]

FRAME_DIGITS = 6
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Image files a predictions folder may hold (any case)."""
_FRAME_RE = re.compile(r"^(\d+)\.png$")
_PREDICTION_FRAME_RE = re.compile(r"^(.*?)(\d+)\.(?:png|jpe?g)$", re.IGNORECASE)


def natural_key(text: str) -> tuple:
    """Sort key that orders the digit runs of ``text`` as numbers (``a2 < a10``)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part != "")


def frame_name(frame: int) -> str:
    return f"{frame:0{FRAME_DIGITS}d}.png"


def parse_frame(name: str) -> int | None:
    m = _FRAME_RE.match(name)
    return int(m.group(1)) if m else None


def parse_prediction_frame(name: str) -> int | None:
    """The frame number of a method's output file: the last run of digits of a PNG or JPEG name (``000123.png``,
    ``123.jpg``, ``frame_123.png``, ``out-0123.JPEG`` -> 123), or ``None`` (no number, or not an image)."""
    m = _PREDICTION_FRAME_RE.match(name)
    return int(m.group(2)) if m else None


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


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; resized (bicubic, as generated frames are) to ``size`` ``(width, height)`` when it
    is given and differs."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if size is not None and rgb.size != tuple(size):
            rgb = rgb.resize(tuple(size), Image.BICUBIC)
        return np.asarray(rgb)


@functools.lru_cache(maxsize=1)
def _decoder_pool() -> concurrent.futures.ThreadPoolExecutor:
    workers = min(16, max(1, (os.cpu_count() or 1)))
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-decode")


def load_batch(paths: Sequence[str | Path], sizes: Sequence[tuple[int, int] | None] | None = None) -> Tensor:
    """``(B, 3, H, W)`` float32 in [0, 1] (all images must share one size, after resizing image ``i`` to
    ``sizes[i]`` ``(width, height)`` where that is not ``None``)."""
    sizes = list(sizes) if sizes is not None else [None] * len(paths)
    # PNG / JPEG decoding releases the GIL: threads help
    arrays = list(_decoder_pool().map(load_image, paths, sizes))
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
    """The predictions folder does not match the protocol: missing, extra, mis-sized, ambiguous or unreadable frame
    names (all listed)."""

    def __init__(self, message: str, missing: list[str], extra: list[str], missized: list[str],
                 ambiguous: list[str] | None = None, unrecognised: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing, self.extra, self.missized = missing, extra, missized
        self.ambiguous = ambiguous or []
        self.unrecognised = unrecognised or []


def _listing(kind: str, items: list[str], limit: int = 20) -> str:
    head = ", ".join(items[:limit])
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {kind}: {head}{more}"


SOURCE_FRAME_REASON = "the source frame (the avatar is made from it; the protocol does not score it)"
LIMIT_REASON = "part of the protocol but outside the scored subset (--limit)"
UNSAMPLED_REASON = "a ground-truth frame the protocol does not sample (it scores a subset of each video's frames)"


def unscored_source_frames(samples: Iterable[Any], all_ids: Iterable[str]) -> dict[str, str]:
    """Output ids a method may write that the protocol does not score, with the reason: ``{id: reason}``.

    * the source frame of their own output folder (HDTF same-identity: frame 0 of each video): a sample's source
      counts when it is ``DATA/<output_id>/<frame>.png`` (the same folder as the outputs) and ``<output_id>/<frame>``
      is not an output of the protocol; a protocol whose outputs include the source frame (cross-identity,
      reconstruction) gets nothing here;
    * the other ground-truth frames of an output folder (``DATA/<output_id>/``) that are not outputs, for protocols
      that score a sample of each video's frames (a method that ran on every frame wrote them too).

    Every protocol's samples say this themselves (nothing here is specific to one protocol).
    """
    ids = set(all_ids)
    out: dict[str, str] = {}
    folders: dict[str, Path] = {}
    for s in samples:
        src = Path(s.source)
        frame = parse_frame(src.name)
        target = getattr(s, "target", None)
        if target is not None and Path(target).parent.name == s.output_id:
            folders.setdefault(s.output_id, Path(target).parent)
        if frame is None or src.parent.name != s.output_id:
            continue
        sid = f"{s.output_id}/{frame:0{FRAME_DIGITS}d}"
        if sid not in ids:
            out[sid] = SOURCE_FRAME_REASON
    # protocols that sample some frames of each video: a method that wrote every frame has the others too
    for output_id, folder in folders.items():
        for frame in list_frames(folder.parent, folder.name):
            sid = f"{output_id}/{frame:0{FRAME_DIGITS}d}"
            if sid not in ids and sid not in out:
                out[sid] = UNSAMPLED_REASON
    return out


@dataclass
class PredictionFiles:
    """The files of a checked predictions folder (:func:`check_predictions`), and what was done with them.

    Attributes:
        root: the predictions folder.
        files: sample id -> the file scored for it (any accepted name: ``000123.png``, ``123.jpg``, ...).
        resize: sample id -> ``(width, height)`` it is resized to when it is loaded (``--resize``).
        dropped: reason -> the files present that are not scored (the source frame, outside ``--limit`` ...).
        renamed: how many scored files are not named ``<frame:06d>.png``.
        formats: file extension -> how many scored files have it.
        resized_from: ``"WxH -> WxH"`` -> how many scored files are resized so.
        other_files: files that are not images, left alone.
    """

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    resize: dict[str, tuple[int, int]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    renamed: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    resized_from: dict[str, int] = field(default_factory=dict)
    other_files: int = 0

    def path(self, sample_id: str) -> Path:
        """The file of ``sample_id`` (``<root>/<id>.png`` when the folder was not checked for it)."""
        return self.files.get(sample_id, self.root / f"{sample_id}.png")

    def size(self, sample_id: str) -> tuple[int, int] | None:
        """The size ``sample_id`` is resized to when loaded, or ``None`` (loaded as it is)."""
        return self.resize.get(sample_id)

    @property
    def dropped_count(self) -> int:
        return sum(len(v) for v in self.dropped.values())

    def notes(self) -> list[str]:
        """Sentences for the report's notes (none when the folder holds exactly the protocol's frames)."""
        notes = []
        for reason, files in self.dropped.items():
            notes.append(f"{_plural(len(files), 'file')} of the predictions folder not scored: {reason} "
                         f"(e.g. {', '.join(files[:3])})")
        if self.renamed:
            notes.append(f"{_plural(self.renamed, 'prediction')} not named <frame:06d>.png were matched to their "
                         "frame by the number in their name")
        lossy = sum(n for ext, n in self.formats.items() if ext in (".jpg", ".jpeg"))
        if lossy:
            notes.append(f"{_plural(lossy, 'prediction')} are JPEG files: compression artefacts lower PSNR/SSIM/"
                         "LPIPS/L1 a little against PNG outputs")
        for change, n in self.resized_from.items():
            notes.append(f"{_plural(n, 'prediction')} resized {change} (bicubic) to the protocol's size (--resize)")
        return notes

    def facts(self) -> dict[str, Any]:
        """JSON-able summary for ``metrics.json`` (``predictions``)."""
        return {
            "folder": str(self.root), "scored_files": len(self.files),
            "dropped": [{"reason": reason, "count": len(files), "files": files[:50]}
                        for reason, files in self.dropped.items()],
            "dropped_count": self.dropped_count, "renamed": self.renamed, "formats": dict(self.formats),
            "resized": dict(self.resized_from), "other_files_ignored": self.other_files,
        }


def _plural(count: int, one: str) -> str:
    return f"{count:,} {one if count == 1 else one + 's'}"


def _scan_predictions(root: Path) -> tuple[dict[str, list[Path]], list[str], int]:
    """``{id: [files]}`` of every numbered image under ``root/<folder>/``, image names without a number, and the
    count of non-image files (ignored)."""
    by_id: dict[str, list[Path]] = {}
    unrecognised: list[str] = []
    other = 0
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: natural_key(p.name)):
        for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                other += 1
                continue
            frame = parse_prediction_frame(path.name)
            if frame is None:
                unrecognised.append(f"{folder.name}/{path.name}")
                continue
            by_id.setdefault(f"{folder.name}/{frame:0{FRAME_DIGITS}d}", []).append(path)
    return by_id, unrecognised, other


def check_predictions(
    pred_root: str | Path,
    expected: Iterable[tuple[str, Path]],
    allowed: Iterable[str] | None = None,
    report_file: str | Path | None = None,
    *,
    ignored: Mapping[str, str] | None = None,
    resize: bool = False,
) -> PredictionFiles:
    """Check ``pred_root`` against the protocol; return its files, or raise :class:`PredictionCheckError` listing
    every problem.

    A frame is ``pred_root/<output_id>/<name>`` where ``<name>`` is ``000123.png``, ``123.png``, ``frame_123.jpg``
    ... (PNG or JPEG; the number is the last run of digits): it is matched to the sample ``<output_id>/000123``. Two
    files with the same number in one folder are ambiguous (an error listing them).

    Args:
        expected: ``(sample_id, reference_image)`` for every sample to score; a file must exist for each, of the
            reference image's size (or any size with ``resize``: it is then resized to it when loaded).
        allowed: ids that may exist without being scored now (the whole protocol when ``--limit`` scores a
            part); files outside ``allowed | expected | ignored`` are extra. ``None``: only the expected ids.
        report_file: where the full lists are written when the check fails.
        ignored: ids that may exist and are never scored, with the reason (:func:`unscored_source_frames`): the
            files found are listed in :attr:`PredictionFiles.dropped`.
        resize: accept other sizes (resized to the reference's size, bicubic, when loaded) instead of failing.
    """
    root = Path(pred_root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: no such predictions folder")
    expected = list(expected)
    ignored = dict(ignored or {})
    by_id, unrecognised, other = _scan_predictions(root)
    rel = {sid: [f"{p.parent.name}/{p.name}" for p in paths] for sid, paths in by_id.items()}
    want = {sid for sid, _ in expected}
    ok = want | (set(allowed) if allowed is not None else set()) | set(ignored)
    missing = [sid for sid, _ in expected if sid not in by_id]
    extra = sorted((sid for sid in by_id if sid not in ok), key=natural_key)
    ambiguous = [f"{sid}: {', '.join(rel[sid])}" for sid in sorted(by_id, key=natural_key) if len(by_id[sid]) > 1]
    found = PredictionFiles(root, other_files=other)
    for sid in sorted(by_id, key=natural_key):
        if sid not in want and sid in ok and len(by_id[sid]) == 1:
            reason = ignored.get(sid, LIMIT_REASON)
            found.dropped.setdefault(reason, []).extend(rel[sid])
    missized: list[str] = []
    ref_sizes: dict[Path, tuple[int, int]] = {}
    for sid, ref in expected:
        if sid not in by_id or len(by_id[sid]) > 1:
            continue
        path = by_id[sid][0]
        found.files[sid] = path
        ext = path.suffix.lower()
        found.formats[ext] = found.formats.get(ext, 0) + 1
        if path.name != frame_name(int(sid.rsplit("/", 1)[1])):
            found.renamed += 1
        if ref not in ref_sizes:
            ref_sizes[ref] = image_size(ref)
        got, want_size = image_size(path), ref_sizes[ref]
        if got != want_size:
            if resize:
                found.resize[sid] = want_size
                change = f"{got[0]}x{got[1]} -> {want_size[0]}x{want_size[1]}"
                found.resized_from[change] = found.resized_from.get(change, 0) + 1
            else:
                missized.append(f"{rel[sid][0]} ({got[0]}x{got[1]}, expected {want_size[0]}x{want_size[1]})")
    if missing or extra or missized or ambiguous or unrecognised:
        parts = [_listing(k, v) for k, v in (("missing", [f"{m}.png" for m in missing]),
                                              ("extra", [f for e in extra for f in rel[e]]),
                                              ("mis-sized", missized),
                                              ("ambiguous (several files with one frame number)", ambiguous),
                                              ("images without a frame number in their name", unrecognised)) if v]
        message = f"{root} does not match the protocol: " + "; ".join(parts)
        if missized:
            message += ("; pass --resize to resize the mis-sized frames to the protocol's size (the reference "
                        "images' size)")
        if report_file is not None:
            path = Path(report_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"missing {m}.png\n" for m in missing)
                            + "".join(f"extra {f}\n" for e in extra for f in rel[e])
                            + "".join(f"mis-sized {m}\n" for m in missized)
                            + "".join(f"ambiguous {a}\n" for a in ambiguous)
                            + "".join(f"no frame number {u}\n" for u in unrecognised))
            message += f" (full list in {path})"
        raise PredictionCheckError(message, missing, extra, missized, ambiguous, unrecognised)
    return found
