"""``--model``: generate a protocol's outputs with our pipeline into ``RESULTS/predictions/`` (resumable).

One avatar per output folder (its source image, ``create_avatar(aligned=True)``: DATA frames are 512 crops),
driven by that folder's driving frames in order. A folder is done when all its frames exist; an unfinished
folder is generated again from its first frame, because relative motion and smoothing depend on the frames
before (so a resumed run writes exactly what an uninterrupted one would). Frames are written to a temporary name
and renamed, so a kill never leaves a half-written PNG.

Reenactment mode (``--reenact-mode auto``): relative motion for same-identity (the reference is the source
frame 0, fed first and dropped) and reconstruction; absolute for the cross-identity protocols (the driver's own
expression and pose, as those papers transfer them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import load_image
from .protocols.pairs import Sample

if TYPE_CHECKING:  # the pipelines are imported by the caller (eval.run loads one with load_pipeline)
    from avatar.pipelines.base import AvatarPipeline

__all__ = ["generate", "reenact_mode"]

logger = logging.getLogger(__name__)


def reenact_mode(protocol_key: str, mode: str = "auto") -> str:
    if mode != "auto":
        if mode not in ("relative", "absolute"):
            raise ValueError(f"--reenact-mode must be auto, relative or absolute, got {mode!r}")
        return mode
    return "relative" if protocol_key in ("hdtf/same-identity", "celeba/reconstruction") else "absolute"


def _write_png(path: Path, image: np.ndarray, size: tuple[int, int] | None) -> None:
    from PIL import Image

    im = Image.fromarray(image)
    if size is not None and im.size != size:
        im = im.resize(size, Image.BICUBIC)
    tmp = path.with_name(f".{path.name}.tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, path)


def generate(
    pipeline: AvatarPipeline,
    samples: Sequence[Sample],
    out_dir: str | Path,
    *,
    mode: str,
    batch_size: int = 8,
    head_pose: str = "neck",
    progress: Any = None,
) -> dict[str, Any]:
    """Generate the outputs of ``samples`` (grouped by output folder) into ``out_dir``.

    Returns facts for the report (folders generated / skipped, whether frames were resized to the ground-truth
    size because the model renders at another resolution).
    """
    from .data import image_size

    out_dir = Path(out_dir)
    folders: dict[str, list[Sample]] = {}
    for s in samples:
        folders.setdefault(s.output_id, []).append(s)
    done = skipped = 0
    resized: set[tuple[int, int]] = set()
    for folder, group in folders.items():
        paths = [out_dir / f"{s.id}.png" for s in group]
        if all(p.exists() for p in paths):
            skipped += 1
            if progress is not None:
                progress.update(len(group))
            continue
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        source = group[0].source
        size = image_size(group[0].target or source)
        avatar = pipeline.create_avatar(load_image(source), aligned=True)
        lead = mode == "relative" and all(s.driver != source for s in group)
        drivers = ([source] if lead else []) + [s.driver for s in group]

        def frames(drivers: list[Path] = drivers) -> Iterator[np.ndarray]:
            for d in drivers:
                yield load_image(d)

        it = pipeline.iter_reenact(avatar, frames(), relative=(mode == "relative"), head_pose=head_pose,
                                   smooth=len(drivers) > 1, batch_size=batch_size)
        k = 0
        for frame in it:
            if lead and frame.index == 0:
                continue
            img = frame.image
            if (img.shape[1], img.shape[0]) != size:
                resized.add((img.shape[1], img.shape[0]))
            _write_png(paths[k], img, size)
            k += 1
            if progress is not None:
                progress.update(1)
        if k != len(paths):
            raise RuntimeError(f"{folder}: the pipeline returned {k} frames for {len(paths)} drivers")
        done += 1
    notes = []
    if resized:
        notes.append("generated frames rendered at " + ", ".join(f"{w}x{h}" for w, h in sorted(resized))
                     + " were resized (bicubic) to the ground-truth size")
    return {"folders_generated": done, "folders_reused": skipped, "notes": notes}
