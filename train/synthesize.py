"""GenHead renders -> a synthetic multi-view training dataset (our Parquet format, kind ``clips``), offline.

    python -m train.synthesize --n N --out DATA [--model genhead-ffhq512|DIR|tiny] [--pools registry|DIR|synthetic|none]
                               [--expressions 4] [--views 8] [--seed 0] [--truncation 0.7] [--image-format png|jpeg]
                               [--motion pdfgc|tiny|none] [--device cuda] [--batch-size 8]

Every identity becomes one clip: one row of ``DATA/data/train-id-<seed>.parquet``
(:mod:`train.data.parquet_format`, kind ``clips``), the layout ``python -m train.prepare`` writes, so
:func:`train.data.open_train_data` and :class:`~train.data.ClipPairDataset` (Portrait4D-v2's dataset) read it and
``train/portrait4d.py --data DATA`` trains on it without rendering anything.

**One identity.** Identity ``i`` has the seed ``s = --seed + i`` (its clip id ``id-<s>``); its latent ``z`` and
FLAME shape are those of :func:`avatar.pipelines.genhead.identity_from_seed` (``z`` from ``RandomState(s)``, the
shape row ``s`` of the pools' ``shape_n_c``, or the mean shape; the styles mapped at the frontal camera with
truncation ``--truncation``, default 0.7, cutoff 14). Its other draws come from a CPU generator seeded by ``s``
alone (:func:`draw_identity`), in this order: one VFHQ clip of the pools' dynamic motions, whose ``E``
(``--expressions``) frames spread evenly over the clip give the expressions and eye poses (a clip's own eye
poses, where Portrait4D v1's online engine draws them apart); each jaw opening is replaced by ``U(0, 0.2)`` with
probability 0.5 as the engine does (:data:`~train.recipes.genhead_data.JAW_PROBABILITY`, values then coins); the
neck rotation is zero (as in GenHead's training data: the head pose lives in the camera); then ``V`` (``--views``)
cameras from the engine's LookAt sampler (:func:`~train.recipes.genhead_data.render_cameras` with every camera
random: yaw ``pi/2 + U(-0.78, 0.78)``, pitch ``pi/2 - U(-0.25, 0.65)``, roll ``U(-0.25, 0.25)``, radius ``U(3.65,
4.45)``), with the intrinsics of ``V`` dataset cameras of the pools (the frontal camera's with ``--pools none``).
``--pools none``: the mean shape, neutral expressions and eye poses (only the jaw varies).

**Its frames.** Every (expression, camera) pair, expression-major: frame ``k = e V + v`` shows expression ``e``
from camera ``v``, and ``source_frames[k] = k``. GenHead renders in eval mode with deterministic ray sampling and
``noise_mode='const'`` at its rendering resolution (64 for genhead-ffhq512), super-resolved to 512; the frame is
the 512 image, its seg the rendered opacity ``1 - T_bg`` upsampled bilinearly to 512 (a greyscale PNG, 0-255),
its label (437 floats, :mod:`train.data.records`) the render camera (the neck is zero, so upstream's
``decompose_camera_pose`` is the identity and is not applied), the shape, the expression, pose (neck 0, jaw) and
eye poses, and its motion the PD-FGC embedding of the 512 image, cropped by GenHead's projected landmarks (y up)
as the engine does (``--motion pdfgc``: the official ``pdfgc-motion`` weights, 548 floats; ``tiny``: a random
tiny encoder, 60 floats, for tests and the tiny model, the default with ``--model tiny``). ``--motion none`` is
refused: the format's motions are Arrow fixed-size lists, which cannot be empty.

**Resumable and reproducible.** Each identity's shard is written under a hidden partial name and renamed when
complete; a rerun skips the identities whose shard exists (``--overwrite`` redoes them) and removes partial files
that killed runs left. An identity's content depends on its seed and the settings only (not on ``--n`` or on
what ran before), so a rerun, or a run with another ``--n``, writes the same rows (on the same device and
``--batch-size``). ``DATA/synthesize_report.json`` lists the identities written and skipped and their draws; the
dataset card (``DATA/README.md``) says the data is synthetic (and that the pictures are meaningless when the
generator has random weights, ``--model tiny``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import ConfigError, InputError
from avatar.models.genhead import GenHead
from avatar.models.genhead.pools import FlameParameterPools
from avatar.pipelines.frames import to_uint8
from avatar.pipelines.genhead import GenHeadIdentity, identity_from_seed
from avatar.render.camera import inference_label
from train.core.rng import isolated_rng, split_seed
from train.data.errors import TrainDataError
from train.data.parquet_format import (
    DATA_DIR,
    ParquetShardWriter,
    clip_row,
    read_shard_meta,
    write_dataset_card,
)
from train.data.records import IMAGE_FORMATS, LABEL_DIM
from train.prepare import finished_shard_info, shard_path, write_json
from train.recipes.genhead_data import JAW_MAX, JAW_PROBABILITY, render_cameras

__all__ = ["MOTIONS", "REPORT_FILE", "IdentityDraw", "SynthesizeReport", "clip_id_of", "draw_identity",
           "frame_labels", "main", "render_identity", "synthesize"]

logger = logging.getLogger("train.synthesize")

MOTIONS = ("pdfgc", "tiny", "none")
REPORT_FILE = "synthesize_report.json"
SYNTH_SEED_TAG = 0x5E17
"""Mixed into an identity's seed for its draws, so they differ from the other streams seeded by the same seed."""
SETTINGS_KEYS = ("model", "pools", "expressions", "views", "truncation", "image_format", "motion")
TRUNCATION_CUTOFF = 14
_NECK = slice(0, 3)


def clip_id_of(seed: int) -> str:
    """The clip id (and shard name ``train-<id>.parquet``) of the identity with seed ``seed``: ``id-0000000042``."""
    return f"id-{int(seed):010d}"


# ---------------------------------------------------------------------------------------------------------
# one identity's draws


@dataclass
class IdentityDraw:
    """The random inputs of one identity besides its latent and shape (module docstring).

    Attributes:
        expression: ``(E, 100)``; ``pose`` ``(E, 6)`` (neck zero, jaw); ``eye`` ``(E, 6)``.
        cameras: ``(V, 25)`` the render cameras.
        pool_clip: the VFHQ clip of the dynamic pool; ``pool_frames``: its ``E`` frames (``None`` and ``[]``
            without pools).
        jaw_randomised: ``(E,)`` bool, the expressions whose jaw opening was replaced by ``U(0, 0.2)``.
    """

    expression: Tensor
    pose: Tensor
    eye: Tensor
    cameras: Tensor
    pool_clip: int | None
    pool_frames: list[int]
    jaw_randomised: list[bool]

    def info(self) -> dict[str, Any]:
        """The JSON facts of the draw (report and shard metadata)."""
        return {"pool_clip": self.pool_clip, "pool_frames": self.pool_frames, "jaw_randomised": self.jaw_randomised}


def identity_generator(seed: int) -> torch.Generator:
    """The CPU generator of identity ``seed``'s draws."""
    return torch.Generator().manual_seed(split_seed(SYNTH_SEED_TAG, seed)[0])


def spread_frames(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``range(num_frames)`` (first and last included; repeated when
    ``count > num_frames``)."""
    return [int(i) for i in np.rint(np.linspace(0, num_frames - 1, count)).astype(np.int64)]


def draw_identity(pools: FlameParameterPools | None, seed: int, expressions: int, views: int) -> IdentityDraw:
    """Identity ``seed``'s clip, expressions (jaw randomised, neck zero), eye poses and cameras (module
    docstring), drawn on the CPU from :func:`identity_generator` in a fixed order."""
    g = identity_generator(seed)
    if pools is None:
        motion, clip, frames = torch.zeros(expressions, 112), None, []
        base = inference_label(views)
    else:
        clips, length = pools.dynamic_motion.shape[:2]
        clip = int(torch.randint(0, clips, (1,), generator=g))
        frames = spread_frames(length, expressions)
        motion = pools.dynamic_motion[clip, frames].float().cpu()
        base = pools.cameras[torch.randint(0, len(pools.cameras), (views,), generator=g).to(pools.cameras.device)]
    jaw_random = torch.rand((expressions, 1), generator=g) * JAW_MAX
    keep = torch.rand((expressions, 1), generator=g) < JAW_PROBABILITY  # the engine's coin: keep the pool's jaw
    pose = motion[:, 100:106].clone()
    pose[:, _NECK] = 0
    pose[:, 3:4] = torch.where(keep, pose[:, 3:4], jaw_random)
    cameras, _ = render_cameras(base.float().cpu(), g, swap_probability=1.0)
    return IdentityDraw(motion[:, :100].clone(), pose, motion[:, 106:112].clone(), cameras, clip, frames,
                        [not bool(k) for k in keep[:, 0]])


def frame_labels(draw: IdentityDraw, shape: Tensor) -> np.ndarray:
    """``(E V, 437)`` float32 labels of the frames, expression-major (frame ``e V + v``): camera ``v``, the
    ``shape`` ``(1, 300)``, expression / pose / eye poses ``e``."""
    e, v = draw.expression.shape[0], draw.cameras.shape[0]
    rows = [draw.cameras.repeat(e, 1), shape.float().cpu().reshape(1, -1).expand(e * v, -1)]
    rows += [t.repeat_interleave(v, dim=0) for t in (draw.expression, draw.pose, draw.eye)]
    labels = torch.cat(rows, dim=1).numpy().astype(np.float32)
    assert labels.shape == (e * v, LABEL_DIM)
    return labels


# ---------------------------------------------------------------------------------------------------------
# rendering


def opacity_uint8(t_bg: Tensor, size: int) -> np.ndarray:
    """GenHead's background transmittance ``(B, 1, NR, NR)`` -> the opacity ``1 - T_bg`` upsampled (bilinear) to
    ``(B, size, size)`` uint8 (0 background, 255 head)."""
    alpha = F.interpolate(1 - t_bg.float(), size=(size, size), mode="bilinear", align_corners=False)
    return (alpha[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def render_motions(genhead: GenHead, encoder: nn.Module, images: Tensor, cameras: Tensor, shape: Tensor,
                   expression: Tensor, pose: Tensor, eye: Tensor) -> Tensor:
    """PD-FGC motions ``(B, D)`` of GenHead's images ``(B, 3, 512, 512)``, cropped by its 70 projected FLAME
    landmarks (y up), as :meth:`~train.recipes.genhead_data.GenHeadDataEngine.render` does."""
    corr = genhead.uv_map(cameras, shape, expression, pose, eye)
    if corr.landmarks_2d is None:
        raise ConfigError("GenHead's FLAME has no landmark embedding, which the PD-FGC crops need")
    return encoder.motion_from_image(images, corr.landmarks_2d, reverse_y=True)  # type: ignore[operator]


@dataclass
class RenderedFrames:
    """One identity's frames: ``images`` ``(N, S, S, 3)`` uint8 RGB, ``segs`` ``(N, S, S)`` uint8, ``motions``
    ``(N, D)`` float32."""

    images: np.ndarray
    segs: np.ndarray
    motions: np.ndarray


@torch.no_grad()
def render_identity(genhead: GenHead, encoder: nn.Module, identity: GenHeadIdentity, draw: IdentityDraw,
                    batch_size: int = 8, progress: Any = None) -> RenderedFrames:
    """Render every (expression, camera) frame of ``identity`` (expression-major), ``batch_size`` at a time, in
    eval mode with deterministic sampling and constant noise, inside :func:`~train.core.rng.isolated_rng` (the
    global generators are left alone)."""
    device = identity.ws.device
    e, v = draw.expression.shape[0], draw.cameras.shape[0]
    cameras = draw.cameras.repeat(e, 1).to(device)
    exp, pose, eye = (t.repeat_interleave(v, dim=0).to(device) for t in (draw.expression, draw.pose, draw.eye))
    size = int(genhead.config.img_resolution)
    images, segs, motions = [], [], []
    with isolated_rng(identity.seed):
        for start in range(0, e * v, batch_size):
            sl = slice(start, min(start + batch_size, e * v))
            b = sl.stop - sl.start
            shape = identity.shape.expand(b, -1)
            out = genhead.synthesis(identity.ws.expand(b, -1, -1), identity.z_bg.expand(b, -1), cameras[sl], shape,
                                    exp[sl], pose[sl], eye[sl], noise_mode="const", deterministic=True)
            images.append(to_uint8(out.image))
            segs.append(opacity_uint8(out.t_bg, size))
            motions.append(render_motions(genhead, encoder, out.image, cameras[sl], shape, exp[sl], pose[sl],
                                          eye[sl]).float().cpu().numpy())
            if progress is not None:
                progress.update(b)
    return RenderedFrames(np.concatenate(images), np.concatenate(segs), np.concatenate(motions))


# ---------------------------------------------------------------------------------------------------------
# loading


def load_genhead(model: str, device: torch.device) -> GenHead:
    """``--model``: ``tiny`` (a random tiny GenHead with the synthetic FLAME, seed 0), else
    ``GenHead.from_pretrained`` (a registered id such as ``genhead-ffhq512``, a folder, a Hub repo); in eval mode,
    gradients off. :class:`~avatar.errors.InputError` when it cannot render (no FLAME assets)."""
    if model == "tiny":
        with isolated_rng(0):
            genhead = GenHead.tiny(seed=0)
    else:
        genhead = GenHead.from_pretrained(model)
    if not genhead.can_render:
        raise InputError(f"--model {model} has no FLAME assets, so it cannot render; use genhead-ffhq512 or a "
                         "folder saved by GenHead.save_pretrained")
    return genhead.to(device).eval().requires_grad_(False)


def load_pools(pools: str) -> FlameParameterPools | None:
    """``--pools``: ``registry`` (the official pools through the asset cache), ``synthetic`` (random, seed 0),
    ``none``, or a folder of the four ``.npy`` files."""
    if pools == "none":
        return None
    if pools == "synthetic":
        return FlameParameterPools.synthetic(0)
    if pools == "registry":
        return FlameParameterPools.from_registry()
    return FlameParameterPools.from_folder(pools)


def load_motion_encoder(motion: str, device: torch.device) -> nn.Module:
    """``--motion``: ``pdfgc`` (the official ``pdfgc-motion`` weights) or ``tiny`` (random, seed 0); eval mode."""
    from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder

    if motion == "tiny":
        with isolated_rng(0):
            encoder = PDFGCEncoder(PDFGCConfig.tiny())
    else:
        encoder = PDFGCEncoder.from_pretrained("pdfgc-motion")
    return encoder.to(device).eval().requires_grad_(False)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} needs CUDA, which this machine does not have; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------------------------
# the dataset


@dataclass
class SynthesizeReport:
    """Per run (``DATA/synthesize_report.json``): identities written now and skipped (done before), per
    identity its seed and draws, totals."""

    out: str
    identities: int = 0
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    frames_written: int = 0
    clips: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, info: dict[str, Any]) -> None:
        self.clips[info["clip_id"]] = {k: val for k, val in info.items() if k != "clip_id"}
        self.frames_written += int(info["frames"])


def check_options(n: int, expressions: int, views: int, seed: int, truncation: float, image_format: str,
                  motion: str, batch_size: int, quality: int) -> None:
    """One-sentence :class:`~avatar.errors.InputError` for an option that cannot be used (before any work)."""
    if min(n, expressions, views, batch_size) < 1:
        raise InputError(f"--n, --expressions, --views and --batch-size must be at least 1, got {n}, {expressions}, "
                         f"{views} and {batch_size}")
    if seed < 0 or seed + n > 2**32:
        raise InputError(f"the identity seeds --seed .. --seed + --n - 1 must lie in 0 .. 2**32 - 1, got {seed} .. "
                         f"{seed + n - 1}")
    if not 0.0 <= truncation <= 1.0:
        raise InputError(f"--truncation must be in [0, 1] (1: no truncation), got {truncation}")
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"--image-format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if not 1 <= quality <= 100:
        raise InputError(f"--jpeg-quality must be in 1..100, got {quality}")
    if motion == "none":
        raise InputError("--motion none is impossible: the clips format stores a motion of at least one float per "
                         "frame (Arrow fixed-size lists cannot be empty), so use --motion pdfgc (or tiny for tests)")
    if motion not in MOTIONS:
        raise InputError(f"--motion must be one of {MOTIONS}, got {motion!r}")


def _check_settings(out: Path, skipped: list[str], settings: dict[str, Any]) -> None:
    """An error when identities rendered before have motions of another width (one dataset could not hold
    both); a warning when they used other settings (they are kept)."""
    for clip_id in skipped:
        try:
            meta, _ = read_shard_meta(shard_path(out, clip_id))
        except TrainDataError:
            continue
        if int(meta["motion_dim"]) != settings["motion_dim"]:
            raise InputError(f"{out} holds {meta['motion_dim']}-d motions (--motion {meta.get('motion')}) and --motion "
                             f"{settings['motion']} gives {settings['motion_dim']}-d ones, which one dataset cannot "
                             "mix; use the same --motion or another --out")
        diff = {k: (meta.get(k), settings.get(k)) for k in SETTINGS_KEYS if meta.get(k) != settings.get(k)}
        if diff:
            logger.warning("%s was rendered with other settings (%s); --overwrite redoes every identity", clip_id,
                           ", ".join(f"{k}: {a} now {b}" for k, (a, b) in diff.items()))
            return


def dataset_card_text(settings: dict[str, Any]) -> str:
    """What the dataset card adds: synthetic GenHead renders, and warnings for random weights and pools."""
    text = (f"\nSynthetic data made by `python -m train.synthesize`: every row is one GenHead identity (its seed in "
            f"the clip id) rendered from {settings.get('views')} cameras x {settings.get('expressions')} "
            "expressions (frames expression-major), with its FLAME parameters and cameras in the labels and the "
            f"rendered opacity as the seg; no frame shows a real person. `{REPORT_FILE}` lists the identities and "
            "their draws.\n")
    if settings.get("random_weights"):
        text += ("\n**The generator has random weights (`--model tiny` or an untrained model): the pictures are "
                 "meaningless; use this data to test code only.**\n")
    if settings.get("pools") == "synthetic":
        text += "\nThe FLAME shapes, expressions and camera intrinsics are random (`--pools synthetic`), not fits.\n"
    if settings.get("motion") == "tiny":
        text += "\nThe motions come from a random tiny PD-FGC encoder (`--motion tiny`).\n"
    return text


def _card_settings(out: Path, clip_ids: list[str]) -> dict[str, Any] | None:
    """The settings stored in the first readable shard of ``clip_ids`` (for a card written without rendering)."""
    for clip_id in clip_ids:
        try:
            meta, _ = read_shard_meta(shard_path(out, clip_id))
        except TrainDataError:
            continue
        return {k: val for k, val in meta.items() if k not in ("format", "version", "kind", "label_dim", "identity")}
    return None


def synthesize(out: str | Path, n: int, *, model: str = "genhead-ffhq512", pools: str = "registry",
               expressions: int = 4, views: int = 8, seed: int = 0, truncation: float = 0.7,
               image_format: str = "png", quality: int = 95, motion: str | None = None, device: str = "cpu",
               batch_size: int = 8, overwrite: bool = False, show_progress: bool = True) -> SynthesizeReport:
    """Render ``n`` identities (seeds ``seed .. seed + n - 1``) into the dataset folder ``out`` (module docstring).

    ``motion``: ``None`` is ``tiny`` with ``model='tiny'``, else ``pdfgc``. Raises before any work when an option,
    the model, the pools or the motion encoder cannot be used; identities already rendered are skipped without
    loading anything.
    """
    motion = motion or ("tiny" if model == "tiny" else "pdfgc")
    check_options(n, expressions, views, seed, truncation, image_format, motion, batch_size, quality)
    torch_device = _device(device)
    out = Path(out)
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {"generator": "genhead", "model": str(model), "pools": str(pools),
                                "expressions": expressions, "views": views, "truncation": truncation,
                                "truncation_cutoff": TRUNCATION_CUTOFF, "image_format": image_format,
                                "motion": motion}
    report = SynthesizeReport(out=str(out), identities=n)
    pending = []
    for s in range(seed, seed + n):
        info = None if overwrite else finished_shard_info(shard_path(out, clip_id_of(s)), "identity",
                                                              "rendering its identity again")
        if info is None:
            pending.append(s)
            continue
        report.skipped.append(clip_id_of(s))
        report.add(info)
    if report.skipped:
        logger.info("%d identit(ies) already rendered, skipped (--overwrite to redo)", len(report.skipped))

    t0 = time.perf_counter()
    if pending:
        genhead = load_genhead(model, torch_device)
        flame_pools = load_pools(pools)
        if flame_pools is not None and flame_pools.shapes.shape[1] != genhead.config.shape_dim:
            raise InputError(f"--model {model} takes {genhead.config.shape_dim} shape coefficients and --pools "
                             f"{pools} holds {flame_pools.shapes.shape[1]}")
        encoder = load_motion_encoder(motion, torch_device)
        settings.update(motion_dim=int(encoder.config.motion_dim), random_weights=bool(genhead.is_random_init),
                        resolution=int(genhead.config.img_resolution),
                        render_resolution=int(genhead.config.neural_rendering_resolution))
        _check_settings(out, report.skipped, settings)
        _render_pending(out, pending, genhead, flame_pools, encoder, settings, report, batch_size=batch_size,
                        quality=quality, show_progress=show_progress)
    report.seconds = round(time.perf_counter() - t0, 2)
    report.settings = settings
    write_json(out / REPORT_FILE, asdict(report))
    card = settings if pending else _card_settings(out, report.skipped)
    if card is not None and (report.written or not (out / "README.md").is_file()):
        write_dataset_card(out, "clips", int(card["motion_dim"]), card, extra=dataset_card_text(card))
    logger.info("rendered %d identit(ies) (%d skipped): %d frames in the dataset, in %.1f s", len(report.written),
                len(report.skipped), report.frames_written, report.seconds)
    return report


def _render_pending(out: Path, pending: list[int], genhead: GenHead, pools: FlameParameterPools | None,
                    encoder: nn.Module, settings: dict[str, Any], report: SynthesizeReport, *, batch_size: int,
                    quality: int, show_progress: bool) -> None:
    """Render and write the shard of each identity seed in ``pending`` (the report is updated as they finish)."""
    from tqdm import tqdm

    e, v = int(settings["expressions"]), int(settings["views"])
    bar = tqdm(total=len(pending) * e * v, unit="frame", disable=not show_progress, dynamic_ncols=True)
    try:
        for k, s in enumerate(pending):
            clip_id = clip_id_of(s)
            bar.set_description(f"{clip_id} ({k + 1}/{len(pending)})")
            identity = identity_from_seed(genhead, s, pools, settings["truncation"], TRUNCATION_CUTOFF)
            draw = draw_identity(pools, s, e, v)
            frames = render_identity(genhead, encoder, identity, draw, batch_size, progress=bar)
            info = {"clip_id": clip_id, "seed": s, "frames": e * v, **draw.info()}
            row = clip_row(frames.images, frames.segs, frame_labels(draw, identity.shape), frames.motions, clip_id,
                           source_frames=list(range(e * v)), image_format=settings["image_format"], quality=quality)
            _write_shard(shard_path(out, clip_id), row, settings, info)
            report.written.append(clip_id)
            report.add(info)
    finally:
        bar.close()


def _write_shard(path: Path, row: dict[str, Any], settings: dict[str, Any], info: dict[str, Any]) -> None:
    """One identity's shard, written under a partial name and moved into place (removed if anything fails)."""
    writer = ParquetShardWriter(path, "clips", int(settings["motion_dim"]), {**settings, "identity": info},
                                rows_per_group=1)
    try:
        writer.add(row)
        writer.close()
    except BaseException:
        writer.abort()
        raise


# ---------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from avatar.cli import NON_NEGATIVE_INT, POSITIVE_INT, ArgumentParser

    p = ArgumentParser(prog="python -m train.synthesize", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", required=True, type=POSITIVE_INT, help="number of identities (one clip each)")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder DATA (DATA/data/train-id-*.parquet)")
    p.add_argument("--model", default="genhead-ffhq512",
                   help="GenHead: a model id (default genhead-ffhq512), a folder, or tiny (random, for tests)")
    p.add_argument("--pools", default="registry",
                   help="FLAME parameter pools: registry (the official ones, default), a folder of the four .npy "
                        "files, synthetic (random) or none (mean shape, neutral expressions)")
    p.add_argument("--expressions", type=POSITIVE_INT, default=4, help="expressions per identity (default 4)")
    p.add_argument("--views", type=POSITIVE_INT, default=8, help="cameras per identity (default 8)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of the first identity (default 0)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi of the styles (default 0.7)")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="png", help="frame encoding (default png)")
    p.add_argument("--jpeg-quality", type=POSITIVE_INT, default=95)
    p.add_argument("--motion", choices=MOTIONS, default=None,
                   help="motion embeddings: pdfgc (official weights; default) or tiny (random; default with --model "
                        "tiny); none is refused (the format needs motions)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="frames rendered at once (default 8)")
    p.add_argument("--overwrite", action="store_true", help="render identities that are already in DATA again")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug; tracebacks of errors)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.synthesize``: exit status 0 (done), 1 (an option, the model or the pools cannot be
    used), 2 (a bug), 130 (interrupted)."""
    from avatar.cli import run_guarded
    from avatar.logs import setup_logging

    args = build_parser().parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)

    def work() -> int:
        rep = synthesize(args.out, args.n, model=args.model, pools=args.pools, expressions=args.expressions,
                         views=args.views, seed=args.seed, truncation=args.truncation,
                         image_format=args.image_format, quality=args.jpeg_quality, motion=args.motion,
                         device=args.device, batch_size=args.batch_size, overwrite=args.overwrite,
                         show_progress=not args.no_progress)
        summary = {"out": rep.out, "identities": rep.identities, "written": len(rep.written),
                   "skipped": len(rep.skipped), "frames": rep.frames_written,
                   "report": str(Path(rep.out) / REPORT_FILE)}
        print(json.dumps(summary, indent=1))
        return 0

    return run_guarded(work, verbosity=verbosity, log=logger, command="train.synthesize")


if __name__ == "__main__":
    raise SystemExit(main())
