"""``--model``: generate a protocol's outputs with our pipeline into ``RESULTS/predictions/`` (resumable).

One avatar per output folder (its source image, ``create_avatar(aligned=True)``: DATA frames are Portrait4D's 512
crops; a pipeline whose ``aligned_crop`` is another crop, GOHA's, gets ``aligned=False`` and crops them its way),
driven by that folder's driving frames in order. A folder is done when all its frames exist; an unfinished
folder is generated again from its first frame, because relative motion and smoothing depend on the frames
before (so a resumed run writes exactly what an uninterrupted one would). Frames are written to a temporary name
and renamed, so a kill never leaves a half-written PNG.

Reenactment mode (``--reenact-mode auto``): relative motion for same-identity (the reference is the source
frame 0, fed first and dropped) and reconstruction; absolute for the cross-identity protocols (the driver's own
expression and pose, as those papers transfer them).

``<predictions>/.generation.json`` records what generated the folder: the model, whether its weights are random
(``random_init``, sticky: once a random pipeline wrote into the folder it stays marked) and the sizes of frames
that were resized to the ground truth's (``resized_from``). It is written before the first frame, so a resumed
run (which may skip every folder) and a later ``--predictions`` run over the same folder still know the frames
came from random weights.
"""

from __future__ import annotations

import json
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

__all__ = ["GENERATION_FILE", "generate", "pipeline_random_weights", "read_generation", "reenact_mode"]

GENERATION_FILE = ".generation.json"
DATA_CROP = "portrait4d"
"""The crop of the benchmark frames ``eval.prepare`` writes (:attr:`avatar.pipelines.base.AvatarPipeline.aligned_crop`)."""

logger = logging.getLogger(__name__)


def reenact_mode(protocol_key: str, mode: str = "auto") -> str:
    if mode != "auto":
        if mode not in ("relative", "absolute"):
            raise ValueError(f"--reenact-mode must be auto, relative or absolute, got {mode!r}")
        return mode
    return "relative" if protocol_key in ("hdtf/same-identity", "celeba/reconstruction") else "absolute"


def pipeline_random_weights(pipeline: Any, model: str | Path | None = None) -> str | None:
    """Why ``pipeline`` (loaded from ``model``) has random weights, or ``None`` when nothing records it.

    The records: the pipeline's ``random_init`` (:class:`~avatar.pipelines.base.AvatarPipeline`; set by ``tiny``,
    ``random`` and by loading a folder whose ``pipeline.json`` says ``"random_init": true``), its reconstructor's
    ``is_random_init``, and the ``random_init`` field of ``pipeline.json`` when ``model`` is a pipeline folder.
    """
    if model is not None:
        meta_file = Path(model).expanduser() / "pipeline.json"
        if meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            if isinstance(meta, dict) and meta.get("random_init"):
                return f"{meta_file} says random_init: the pipeline has random weights (e.g. `avatar tiny`)"
    if bool(getattr(pipeline, "random_init", False)):
        return "the pipeline says random_init: its weights are random (e.g. `avatar tiny`)"
    if bool(getattr(getattr(pipeline, "reconstructor", None), "is_random_init", False)):
        return "the pipeline's reconstructor has random weights (is_random_init)"
    return None


def read_generation(pred_root: str | Path) -> dict[str, Any]:
    """The ``.generation.json`` of a predictions folder (``{}`` when absent or unreadable)."""
    path = Path(pred_root) / GENERATION_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _record_generation(out_dir: Path, **facts: Any) -> dict[str, Any]:
    """Merge ``facts`` into ``out_dir/.generation.json`` (random weights and rendered sizes only accumulate)."""
    meta = read_generation(out_dir)
    random_reason = facts.pop("random_weights", None)
    if random_reason or meta.get("random_init"):
        meta["random_init"] = True
        meta["random_weights"] = meta.get("random_weights") or random_reason
    else:
        meta["random_init"] = False
    sizes = {tuple(s) for s in meta.get("resized_from", [])} | {tuple(s) for s in facts.pop("resized_from", [])}
    meta["resized_from"] = [list(s) for s in sorted(sizes)]
    meta.update({k: v for k, v in facts.items() if v is not None})
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"{GENERATION_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, out_dir / GENERATION_FILE)
    return meta


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
    model: str | Path | None = None,
) -> dict[str, Any]:
    """Generate the outputs of ``samples`` (grouped by output folder) into ``out_dir``.

    Returns facts for the report (folders generated / skipped, whether frames were resized to the ground-truth
    size because the model renders at another resolution, ``random_weights``: why the frames come from random
    weights, or ``None``; both also from earlier runs into the same folder, through ``.generation.json``).
    """
    from .data import image_size

    out_dir = Path(out_dir)
    _record_generation(out_dir, model=None if model is None else str(model),
                       random_weights=pipeline_random_weights(pipeline, model))
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
        # DATA frames are Portrait4D's 512 crops (eval.prepare): a family that crops its own way (GOHA's EG3D
        # crop) crops them again, as it would a photo
        aligned = getattr(pipeline, "aligned_crop", DATA_CROP) == DATA_CROP
        avatar = pipeline.create_avatar(load_image(source), aligned=aligned)
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
    meta = _record_generation(out_dir, resized_from=sorted(resized))
    resized |= {(int(w), int(h)) for w, h in meta["resized_from"]}  # earlier runs' too (folders reused now)
    notes = []
    if resized:
        notes.append("generated frames rendered at " + ", ".join(f"{w}x{h}" for w, h in sorted(resized))
                     + " were resized (bicubic) to the ground-truth size")
    return {"folders_generated": done, "folders_reused": skipped, "notes": notes,
            "random_weights": meta.get("random_weights") if meta.get("random_init") else None}
