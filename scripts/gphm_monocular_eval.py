"""GPHM monocular self-reenactment benchmark (issue 16): fit on the first 80 % of each talking-head video, render
the last 20 % from their driving signal, score PSNR / SSIM / LPIPS, time the renderer, draw a still grid.

Subcommands::

    # here (mediapipe runs here, not on the GPU machine): prepare and pack each video into one compact file
    python scripts/gphm_monocular_eval.py pack /work/shared/media/videos/*.mp4 -o packed/
    python scripts/gphm_monocular_eval.py pack PREPARED_DIR ... -o packed/        # already prepared folders
    # the GPU machine: fit, render, score (5 minutes of fitting per video)
    python scripts/gphm_monocular_eval.py run --prepared-dir packed/ --out results/ --minutes 5
    # a CPU smoke test: the videos of ../shared/media, 10 frames each, a tiny model, 3 steps
    python scripts/gphm_monocular_eval.py --tiny --steps 3 --max-frames 10
    # a pack back into a folder that avatar.fitting.PreparedVideo reads
    python scripts/gphm_monocular_eval.py unpack packed/talk1.npz -o prepared/talk1

``run`` is the default subcommand. Its inputs: video files (prepared with mediapipe into ``OUT/prepared``), or
``--prepared-dir DIR`` holding packs (``*.npz`` from ``pack``) and/or prepared folders (``manifest.json``).

The pack (one ``.npz`` per video, :func:`pack_prepared` / :class:`PackedVideo`): frames as JPEG (quality 95,
PIL), mattes as PNG, the per-frame arrays of the preparation (frame index, the 478 mesh landmarks in float16,
the head rotation and translation, the unposed mesh points that give the expression input, the pose scale and
reprojection error) and the manifest as JSON. :class:`PackedVideo` gives the same items as
:class:`~avatar.fitting.video_data.PreparedVideo` (images after JPEG, so within JPEG's error of the folder's).

Protocol: the split is at source frame ``floor(0.8 * frames)`` (``PreparedVideo.split``); with
``--max-frames N`` only the first N frames of each video count. The held-out frames are rendered from their
expression input (mesh landmarks) and prepared head pose, without per-frame pose correction, and compared with
the matted frames ``image * mask + background * (1 - mask)`` (the background the avatar was fitted on, white) at
the fitting resolution. PSNR (mean of per-frame values) and SSIM (Wang et al. 2004, Gaussian window) come from
``eval/metrics``; LPIPS (AlexNet, v0.1) only when its weights load offline, else ``n/a``. Render speed: the
fitted avatar at ``--speed-resolution`` (default 512; the avatar's own with ``--tiny``), driving signals ->
Gaussians -> splatting -> refine network, batch 1 and 8, after warm-up, CUDA-synchronised, median over
``--speed-iters`` calls. Beside the held-out scores, ``train_check``: the last training frames (as many as are
held out) scored the same way, with their prepared poses, with the pose corrections the fit learned, and (with
``--test-pose-steps``) after the same pose refinement, to tell the fit's quality from its generalisation; and
``carried_correction``: the held-out frames rendered with the mean correction of the last training frames (no
held-out image used). The per-frame corrections (learned on the training frames, ``learned_corrections``, and
refined on the held-out ones, ``pose_refined.corrections``) are kept in the results for analysis.
Output: ``OUT/results.json``, a printed table, ``OUT/<video>_grid.png`` (top row the
real held-out frames, bottom row the renders), the avatars in ``WORK/<video>/avatar`` (``--work``, default
``OUT``; an interrupted run continues there when started again).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from avatar.errors import AvatarError, InputError, InputNotFoundError  # noqa: E402

logger = logging.getLogger("gphm_monocular_eval")

PACK_FORMAT = "avatar4d-gphm-pack"
PACK_VERSION = 1
DEFAULT_VIDEOS = Path("/work/shared/media/videos")
TRAIN_FRACTION = 0.8
GRID_FRAMES = 4


# ----------------------------------------------------------------------------------------------------------
# pack / unpack


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


def _concat(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def pack_prepared(prepared_dir: str | Path, out_file: str | Path, *, quality: int = 95,
                  max_frames: int | None = None) -> Path:
    """A :func:`~avatar.fitting.video_data.prepare_video` folder -> one compact ``.npz`` (module docstring)."""
    from avatar.fitting.video_data import PreparedVideo

    ds = PreparedVideo(prepared_dir)
    n = len(ds) if max_frames is None else min(len(ds), max_frames)
    if n == 0:
        raise InputError(f"{prepared_dir} has no frames to pack")
    jpegs, pngs = [], []
    for i in range(n):
        pos = int(ds.indices[i])
        data = ds._chunk_file(ds._locs[pos].chunk)
        member = ds._locs[pos].member
        jpegs.append(_jpeg(data[f"image_{member:04d}"], quality))
        pngs.append(_png(data[f"matte_{member:04d}"]))
    sel = ds.indices[:n]
    arrays = {k: ds._all[k][sel] for k in ("frame_index", "rotation", "translation", "points", "pose_scale",
                                             "reprojection_px")}
    arrays["landmarks"] = ds._all["landmarks"][sel].astype(np.float16)
    manifest = dict(ds.manifest)
    if max_frames is not None:
        last = int(arrays["frame_index"][-1]) + 1
        manifest["video"] = {**manifest["video"], "num_frames": min(int(manifest["video"]["num_frames"]), last)}
    meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "jpeg_quality": quality, "source": str(prepared_dir),
            "manifest": manifest}
    jpeg, jpeg_off = _concat(jpegs)
    png, png_off = _concat(pngs)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), jpeg=jpeg, jpeg_offsets=jpeg_off,
                 matte_png=png, matte_offsets=png_off, **arrays)
    tmp.replace(out)
    return out


class PackedVideo(torch.utils.data.Dataset):
    """A pack read back as a dataset with :class:`~avatar.fitting.video_data.PreparedVideo`'s items, ``split``,
    ``subset``, ``expressions`` and ``median_expression``."""

    def __init__(self, path: str | Path, indices: np.ndarray | None = None) -> None:
        self.path = Path(path)
        try:
            with np.load(self.path) as data:
                self._data = {k: data[k] for k in data.files}
            meta = json.loads(self._data.pop("meta").tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.path} is not a pack of this script ({type(exc).__name__}: {exc}); make it with "
                             "`gphm_monocular_eval.py pack`") from None
        if meta.get("format") != PACK_FORMAT:
            raise InputError(f"{self.path} is not a GPHM pack (format {meta.get('format')!r})")
        self.meta = meta
        self.manifest = meta["manifest"]
        self.resolution = int(self.manifest["resolution"])
        self.num_source_frames = int(self.manifest["video"]["num_frames"])
        self.fps = float(eval_fraction(self.manifest["video"]["fps"]))
        self.K = torch.tensor(self.manifest["K"], dtype=torch.float32)
        n = len(self._data["frame_index"])
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"PackedVideo({str(self.path)!r}, frames={len(self)}, resolution={self.resolution})"

    @property
    def frame_indices(self) -> np.ndarray:
        return self._data["frame_index"][self.indices]

    def subset(self, positions: Any) -> PackedVideo:
        view = object.__new__(PackedVideo)
        view.__dict__.update(self.__dict__)
        view.indices = self.indices[np.asarray(positions, dtype=np.int64)]
        return view

    def split(self, train_fraction: float = TRAIN_FRACTION) -> tuple[PackedVideo, PackedVideo]:
        cut = math.floor(train_fraction * self.num_source_frames)
        return (self.subset(np.flatnonzero(self.frame_indices < cut)),
                self.subset(np.flatnonzero(self.frame_indices >= cut)))

    def expressions(self) -> torch.Tensor:
        from avatar.fitting.video_data import expression_input

        return torch.from_numpy(expression_input(self._data["points"][self.indices]))

    def median_expression(self) -> torch.Tensor:
        return self.expressions().median(dim=0).values

    def blob(self, key: str, pos: int) -> bytes:
        off = self._data[f"{key}_offsets"] if key == "jpeg" else self._data["matte_offsets"]
        buf = self._data["jpeg"] if key == "jpeg" else self._data["matte_png"]
        return buf[off[pos]:off[pos + 1]].tobytes()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from avatar.fitting.video_data import expression_input

        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range: {len(self)} frames")
        pos = int(self.indices[i])
        d = self._data
        image = _decode(self.blob("jpeg", pos))
        matte = _decode(self.blob("matte", pos))
        rot = torch.from_numpy(d["rotation"][pos].astype(np.float32))
        trans = torch.from_numpy(d["translation"][pos].astype(np.float32))
        w2c = torch.eye(4)
        w2c[:3, :3], w2c[:3, 3] = rot, trans
        frame = int(d["frame_index"][pos])
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float() / 255.0,
            "mask": torch.from_numpy(matte)[None].float() / 255.0,
            "landmarks": torch.from_numpy(d["landmarks"][pos].astype(np.float32)),
            "R": rot, "t": trans, "world_to_camera": w2c, "K": self.K.clone(),
            "expression": torch.from_numpy(expression_input(d["points"][pos])),
            "frame_index": torch.tensor(frame), "index": torch.tensor(pos),
            "time": torch.tensor(frame / self.fps),
        }


def eval_fraction(text: str) -> float:
    from fractions import Fraction

    return float(Fraction(text))


def unpack(pack: str | Path, out_dir: str | Path, chunk_size: int = 64) -> Path:
    """A pack -> a folder :class:`~avatar.fitting.video_data.PreparedVideo` reads (images after JPEG)."""
    from avatar.fitting import video_data as vd

    ds = PackedVideo(pack)
    out = Path(out_dir)
    (out / vd.CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
    manifest = dict(ds.manifest)
    chunks = []
    d = ds._data
    n = len(ds)
    for c, start in enumerate(range(0, n, chunk_size)):
        sel = np.arange(start, min(start + chunk_size, n))
        arrays: dict[str, np.ndarray] = {"frame_index": d["frame_index"][sel].astype(np.int64),
                                         "skipped": np.zeros(0, np.int64)}
        for key in ("rotation", "translation", "points", "pose_scale", "reprojection_px", "landmarks"):
            arrays[key] = d[key][sel].astype(np.float32)
        for j, pos in enumerate(sel):
            arrays[f"image_{j:04d}"] = _decode(ds.blob("jpeg", int(pos)))
            arrays[f"matte_{j:04d}"] = _decode(ds.blob("matte", int(pos)))
        name = f"{vd.CHUNKS_DIR}/chunk_{c:05d}.npz"
        np.savez_compressed(out / name, **arrays)
        chunks.append({"index": c, "file": name, "first": int(arrays["frame_index"][0]),
                       "last": int(arrays["frame_index"][-1]) + 1, "frames": len(sel)})
    manifest.update(chunks=chunks, status="complete", frames=n)
    (out / vd.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


# ----------------------------------------------------------------------------------------------------------
# the benchmark


def _open_dataset(path: Path) -> Any:
    from avatar.fitting.video_data import PreparedVideo

    if path.is_file() and path.suffix == ".npz":
        return PackedVideo(path)
    if path.is_dir():
        return PreparedVideo(path)
    raise InputNotFoundError(f"{path} is neither a pack (.npz) nor a prepared folder")


def _inputs(args: argparse.Namespace, out: Path) -> list[tuple[str, Any]]:
    """``(name, dataset)`` per video, limited to ``--max-frames``."""
    items: list[tuple[str, Any]] = []
    if args.prepared_dir is not None:
        root = Path(args.prepared_dir)
        if not root.is_dir():
            raise InputNotFoundError(f"--prepared-dir {root} is not a folder")
        for p in sorted(root.iterdir()):
            if (p.is_file() and p.suffix == ".npz") or (p.is_dir() and (p / "manifest.json").is_file()):
                items.append((p.stem if p.is_file() else p.name, _open_dataset(p)))
        if not items:
            raise InputError(f"--prepared-dir {root} holds no packs (*.npz) and no prepared folders")
    else:
        from avatar.fitting.video_data import prepare_video

        videos = [Path(v) for v in args.videos] or sorted(DEFAULT_VIDEOS.glob("*.mp4"))
        if not videos:
            raise InputNotFoundError(f"no videos given and none in {DEFAULT_VIDEOS}")
        for v in videos:
            if not v.is_file():
                raise InputNotFoundError(f"{v} does not exist or is not a file")
            prep = out / "prepared" / v.stem
            items.append((v.stem, prepare_video(v, prep, resolution=args.prep_resolution, max_frames=args.max_frames,
                                                progress=not args.quiet)))
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        missing = sorted(set(wanted) - {name for name, _ in items})
        if missing:
            raise InputError(f"--only {', '.join(missing)}: no such video among {', '.join(n for n, _ in items)}")
        items = [(name, ds) for name, ds in items if name in wanted]
    if args.max_frames is not None:
        limited = []
        for name, ds in items:
            if len(ds) > args.max_frames:
                ds = ds.subset(np.arange(args.max_frames))
            limited.append((name, ds))
        items = limited
    return items


def _split(ds: Any) -> tuple[Any, Any]:
    """First 80 % of the (possibly limited) frames' time / the rest (``PreparedVideo.split``'s rule)."""
    frames = np.asarray(ds.frame_indices)
    total = min(int(ds.num_source_frames), int(frames.max()) + 1)
    cut = math.floor(TRAIN_FRACTION * total)
    train, test = np.flatnonzero(frames < cut), np.flatnonzero(frames >= cut)
    if len(train) == 0 or len(test) == 0:
        raise InputError(f"{ds}: too few frames to split into training and held-out parts")
    return ds.subset(train), ds.subset(test)


def _targets(ds: Any, resolution: int, background: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch.nn.functional as F

    imgs, exprs, poses = [], [], []
    for i in range(len(ds)):
        item = ds[i]
        img, mask = item["image"], item["mask"]
        if img.shape[-1] != resolution:
            img = F.interpolate(img[None], size=(resolution, resolution), mode="area")[0]
            mask = F.interpolate(mask[None], size=(resolution, resolution), mode="area")[0]
        imgs.append(img * mask + background * (1 - mask))
        exprs.append(item["expression"])
        poses.append(item["world_to_camera"])
    return torch.stack(imgs), torch.stack(exprs), torch.stack(poses)


def _lpips(device: str) -> Any:
    try:
        from eval.metrics.lpips import LPIPS

        return LPIPS(device=device)
    except Exception as exc:  # noqa: BLE001 - weights missing offline (MissingWeightsError), no lpips package
        logger.warning("LPIPS: n/a (%s)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def measure_speed(avatar: Any, expressions: torch.Tensor, poses: torch.Tensor, *, batch: int, resolution: int,
                  iters: int, warmup: int, device: str) -> dict[str, float]:
    """Median milliseconds per call of ``batch`` frames at ``resolution`` (signals -> Gaussians -> splatting ->
    refine), after ``warmup`` calls; frames/s = batch / median."""
    reps = math.ceil(batch / len(expressions))
    ex = expressions.repeat(reps, 1)[:batch].to(device)
    po = poses.repeat(reps, 1, 1)[:batch].to(device)
    for _ in range(warmup):
        avatar.render(ex, po, resolution=resolution)
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        avatar.render(ex, po, resolution=resolution)
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "resolution": resolution, "median_ms": 1000 * med, "frames_per_s": batch / med,
            "iters": iters}


def _grid(real: torch.Tensor, fake: torch.Tensor, path: Path) -> None:
    from PIL import Image

    n = len(real)
    pick = np.unique(np.linspace(0, n - 1, min(GRID_FRAMES, n)).round().astype(int))
    top = torch.cat([real[i] for i in pick], dim=2)
    bottom = torch.cat([fake[i] for i in pick], dim=2)
    grid = torch.cat([top, bottom], dim=1)
    Image.fromarray((grid.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()).save(path)


def _fit_config(args: argparse.Namespace) -> Any:
    from avatar.fitting.gphm_fit import FitConfig

    budget = args.minutes * 60.0
    if args.tiny:
        config = FitConfig.tiny(time_budget_s=budget)
    else:
        config = FitConfig(time_budget_s=budget, resolution=args.resolution)
        if args.num_points is not None:
            config = config.replace(num_points=args.num_points)
    if args.steps is not None:
        config = config.replace(finetune_steps=args.steps, identity_steps=min(config.identity_steps, args.steps))
    if args.batch_size is not None:
        config = config.replace(batch_size=args.batch_size)
    from train.core.cli import apply_overrides

    return apply_overrides(config, args.fit_option or [], flag="--fit-option")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from avatar.fitting.gphm_fit import fit_gphm_avatar, render_frames
    from avatar.runtime import resolve_device

    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out
    config = _fit_config(args)
    inputs = _inputs(args, work)
    lpips = _lpips(device)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                               "torch": torch.__version__, "fit_config": config.to_dict(), "videos": {}}
    for name, ds in inputs:
        train, test = _split(ds)
        logger.info("%s: fitting on %d frames, %d held out", name, len(train), len(test))
        fit = fit_gphm_avatar(train, work / name / "avatar", config=config, device=device, progress=not args.quiet,
                              resume=not args.fresh)
        avatar = fit.avatar.to(device).eval()
        real, exprs, poses = _targets(test, config.resolution, config.background)
        t0 = time.perf_counter()
        fake = render_frames(avatar, exprs, poses, batch_size=8)
        render_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            "train_frames": len(train), "test_frames": len(test), "identity_steps": fit.identity_steps,
            "finetune_steps": fit.finetune_steps, "fit_seconds": round(fit.fit_seconds, 2),
            "load_seconds": round(fit.load_seconds, 2), "stopped_by": fit.stopped_by, "final_loss": fit.final_loss,
            "losses": avatar.manifest.get("fit", {}).get("losses"),
            "num_gaussians": int(avatar.avatar.means.shape[0]), "resolution": config.resolution,
            **_image_scores(fake, real, lpips), "render_heldout_seconds": round(render_s, 3),
        }
        refined_corr = None
        if args.test_pose_steps:
            row["pose_refined"], refined_corr = _score_refined_poses(avatar, real, exprs, poses,
                                                                     args.test_pose_steps, lpips, not args.quiet)
            row["pose_refined"]["corrections"] = _rounded_rows(refined_corr)
        if fit.pose_corrections is not None:
            row["learned_corrections"] = _rounded_rows(fit.pose_corrections)
            row["carried_correction"] = _score_carried_correction(avatar, real, exprs, poses, fit.pose_corrections,
                                                                  refined_corr, lpips)
        row["train_check"] = _score_training_frames(avatar, train, len(test), fit.pose_corrections, config,
                                                    args.test_pose_steps, lpips, not args.quiet)
        speed_res = args.speed_resolution or (config.resolution if args.tiny else 512)
        warmup = 1 if args.tiny else 10
        row["speed"] = [measure_speed(avatar, exprs, poses, batch=b, resolution=speed_res, iters=args.speed_iters,
                                      warmup=warmup, device=device) for b in (1, 8)]
        grid = out / f"{name}_grid.png"
        _grid(real, fake, grid)
        row["grid"] = str(grid)
        results["videos"][name] = row
        _write_json(out / "results.json", results)
    rows = list(results["videos"].values())
    numeric = [r for r in rows if isinstance(r["lpips"], float)]
    results["mean"] = {"psnr": statistics.fmean(r["psnr"] for r in rows),
                       "ssim": statistics.fmean(r["ssim"] for r in rows),
                       "lpips": statistics.fmean(r["lpips"] for r in numeric) if numeric else "n/a"}
    _write_json(out / "results.json", results)
    print(table(results))
    return results


def _score_refined_poses(avatar: Any, real: torch.Tensor, exprs: torch.Tensor, poses: torch.Tensor, steps: int,
                         lpips: Any, progress: bool) -> dict[str, Any]:
    """The held-out frames scored again after :func:`avatar.fitting.gphm_fit.refine_poses` (a diagnostic, not the
    protocol's number: it fits each held-out frame's head pose to that frame's image)."""
    from avatar.fitting.gphm_fit import refine_poses, render_frames

    t0 = time.perf_counter()
    corr = refine_poses(avatar, real, exprs, poses, steps=steps, progress=progress)
    fake = render_frames(avatar, exprs, poses, batch_size=8, corrections=corr)
    return {"steps": steps, "seconds": round(time.perf_counter() - t0, 2), **_image_scores(fake, real, lpips),
            "mean_rotation_deg": float(corr[:, :3].norm(dim=1).mean() * 180 / math.pi),
            "mean_translation_cm": float(corr[:, 3:].norm(dim=1).mean())}, corr


def _rounded_rows(corrections: torch.Tensor) -> list[list[float]]:
    """``(F, 6)`` pose corrections (axis-angle radians, centimetres) as JSON rows, for analysis after the run."""
    return [[round(float(v), 6) for v in row] for row in corrections.float().cpu()]


def _score_carried_correction(avatar: Any, real: torch.Tensor, exprs: torch.Tensor, poses: torch.Tensor,
                              learned: torch.Tensor, refined: torch.Tensor | None, lpips: Any) -> dict[str, Any]:
    """The held-out frames rendered with one correction carried over from training: the mean of the corrections
    the fit learned for its last ``len(real)`` training frames (those nearest in time). It uses no held-out image,
    so unlike ``pose_refined`` it is a protocol-clean way to render new driving frames; it tests whether the pose
    error the refinement finds is a slow drift that the last training frames already show. With ``refined`` (the
    held-out frames' own refined corrections), ``refined_mean_*``: their mean, and ``gap_*``: its distance from the
    carried one (rotation in degrees as the axis-angle difference, translation in centimetres)."""
    from avatar.fitting.gphm_fit import render_frames

    carried = learned[-len(real):].float().mean(dim=0)
    fake = render_frames(avatar, exprs, poses, batch_size=8, corrections=carried.expand(len(real), 6).contiguous())
    out: dict[str, Any] = {**_image_scores(fake, real, lpips),
                           "rotation_deg": [round(float(v) * 180 / math.pi, 3) for v in carried[:3]],
                           "translation_cm": [round(float(v), 3) for v in carried[3:]]}
    if refined is not None:
        mean = refined.float().mean(dim=0)
        out["refined_mean_rotation_deg"] = [round(float(v) * 180 / math.pi, 3) for v in mean[:3]]
        out["refined_mean_translation_cm"] = [round(float(v), 3) for v in mean[3:]]
        out["gap_rotation_deg"] = float((mean[:3] - carried[:3]).norm() * 180 / math.pi)
        out["gap_translation_cm"] = float((mean[3:] - carried[3:]).norm())
    return out


def _image_scores(fake: torch.Tensor, real: torch.Tensor, lpips: Any) -> dict[str, Any]:
    """Mean PSNR, SSIM and LPIPS (``"n/a"`` without its weights) of ``fake`` against ``real``, ``(F, 3, R, R)``."""
    from eval.metrics.psnr import psnr
    from eval.metrics.ssim import ssim

    return {"psnr": float(psnr(fake, real).mean()), "ssim": float(ssim(fake, real).mean()),
            "lpips": float(lpips.per_sample(fake, real).mean()) if lpips is not None else "n/a"}


def _score_training_frames(avatar: Any, train: Any, count: int, corrections: torch.Tensor | None, config: Any,
                           pose_steps: int, lpips: Any, progress: bool) -> dict[str, Any]:
    """The last ``count`` training frames (those nearest the held-out part in time) scored like the held-out
    ones: with their prepared poses (``prepared``, the protocol's rendering), with the pose corrections the fit
    learned for them (``fitted``: what fitting saw), and, with ``pose_steps``, as :func:`_score_refined_poses`
    scores the held-out frames (``refined``). Beside the held-out figures this separates the fit's quality from
    its generalisation, and says whether the pose refinement also moves frames the avatar was fitted on.
    ``learned_mean_rotation_deg`` / ``learned_mean_translation_cm``: the fit's corrections over all its training
    frames."""
    from avatar.fitting.gphm_fit import render_frames

    n = len(train)
    picked = np.arange(max(0, n - count), n)
    real, exprs, poses = _targets(train.subset(picked), config.resolution, config.background)
    out: dict[str, Any] = {"frames": len(picked),
                           "prepared": _image_scores(render_frames(avatar, exprs, poses, batch_size=8), real, lpips)}
    if corrections is not None and len(corrections) == n:
        fitted = render_frames(avatar, exprs, poses, batch_size=8,
                               corrections=corrections[torch.from_numpy(picked)].float())
        out["fitted"] = _image_scores(fitted, real, lpips)
        out["learned_mean_rotation_deg"] = float(corrections[:, :3].norm(dim=1).mean() * 180 / math.pi)
        out["learned_mean_translation_cm"] = float(corrections[:, 3:].norm(dim=1).mean())
    if pose_steps:
        out["refined"], refined = _score_refined_poses(avatar, real, exprs, poses, pose_steps, lpips, progress)
        out["refined"]["corrections"] = _rounded_rows(refined)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def table(results: dict[str, Any]) -> str:
    head = (f"{'video':12s} {'train':>5s} {'test':>4s} {'steps':>11s} {'fit s':>6s} {'PSNR':>6s} {'SSIM':>6s} "
            f"{'LPIPS':>6s} {'b1 ms':>7s} {'b1 fps':>7s} {'b8 ms':>7s} {'b8 fps':>7s}")
    lines = [f"device: {results['device']}", head, "-" * len(head)]

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, float) else str(v).rjust(int(spec.split(".")[0]))

    for name, r in results["videos"].items():
        s1, s8 = r["speed"]
        lines.append(f"{name:12s} {r['train_frames']:5d} {r['test_frames']:4d} "
                     f"{r['identity_steps']:>4d}+{r['finetune_steps']:<6d} {r['fit_seconds']:6.1f} {r['psnr']:6.2f} "
                     f"{r['ssim']:6.4f} {fmt(r['lpips'], '6.4f')} {s1['median_ms']:7.2f} {s1['frames_per_s']:7.1f} "
                     f"{s8['median_ms']:7.2f} {s8['frames_per_s']:7.1f}")
    for name, r in results["videos"].items():
        if "pose_refined" in r:
            pr = r["pose_refined"]
            lines.append(f"{name}: held-out poses refined ({pr['steps']} steps a frame batch, {pr['seconds']} s; "
                         f"diagnostic, not the protocol): PSNR {pr['psnr']:.2f} SSIM {pr['ssim']:.4f} LPIPS "
                         f"{fmt(pr['lpips'], '6.4f').strip()}, mean correction {pr['mean_rotation_deg']:.2f} deg "
                         f"{pr['mean_translation_cm']:.2f} cm")
    for name, r in results["videos"].items():
        cc = r.get("carried_correction")
        if cc:
            gap = (f", {cc['gap_rotation_deg']:.2f} deg {cc['gap_translation_cm']:.2f} cm from the refined mean"
                   if "gap_rotation_deg" in cc else "")
            lines.append(f"{name}: held-out with the last training frames' mean correction (rotation "
                         f"{cc['rotation_deg']} deg, translation {cc['translation_cm']} cm{gap}): PSNR "
                         f"{cc['psnr']:.2f} SSIM {cc['ssim']:.4f}")
    for name, r in results["videos"].items():
        tc = r.get("train_check")
        if tc:
            parts = [f"prepared poses PSNR {tc['prepared']['psnr']:.2f}"]
            if "fitted" in tc:
                parts.append(f"the fit's own corrections {tc['fitted']['psnr']:.2f} (learned: mean "
                             f"{tc['learned_mean_rotation_deg']:.2f} deg {tc['learned_mean_translation_cm']:.2f} cm)")
            if "refined" in tc:
                parts.append(f"refined {tc['refined']['psnr']:.2f} (mean correction "
                             f"{tc['refined']['mean_rotation_deg']:.2f} deg {tc['refined']['mean_translation_cm']:.2f} cm)")
            lines.append(f"{name}: last {tc['frames']} training frames: " + "; ".join(parts))
    if "mean" in results:
        m = results["mean"]
        lines.append(f"{'mean':12s} {'':5s} {'':4s} {'':11s} {'':6s} {m['psnr']:6.2f} {m['ssim']:6.4f} "
                     f"{fmt(m['lpips'], '6.4f')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# command line


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {value}")
    return value


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of minutes above 0, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 24 * 60):
        raise argparse.ArgumentTypeError(f"must be a number of minutes above 0 and at most 1440, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from avatar.cli import ArgumentParser

    parser = ArgumentParser(prog="gphm_monocular_eval.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("pack", help="videos or prepared folders -> one compact .npz per video")
    p.add_argument("inputs", nargs="+", help="videos (prepared here with mediapipe) or prepared folders")
    p.add_argument("-o", "--out", required=True, help="output folder for the packs")
    p.add_argument("--prepared-cache", default=None,
                   help="where videos are prepared (default OUT/../prepared); a finished preparation is reused")
    p.add_argument("--quality", type=_positive_int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--max-frames", type=_positive_int, default=None, help="first N frames only")
    p.add_argument("--resolution", type=_positive_int, default=512, help="crop size of the preparation (512)")
    p = sub.add_parser("unpack", help="a pack -> a prepared folder")
    p.add_argument("pack")
    p.add_argument("-o", "--out", required=True)
    p = sub.add_parser("run", help="fit, render, score (the default)")
    _run_arguments(p)
    return parser


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="*", help=f"videos (default: {DEFAULT_VIDEOS}/*.mp4)")
    p.add_argument("--prepared-dir", default=None, help="a folder of packs (*.npz) and/or prepared folders")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated video names to run (e.g. talk1,talk3; default all)")
    p.add_argument("--out", default="outputs/gphm_monocular_eval",
                   help="output folder for results.json and the grids (default outputs/gphm_monocular_eval)")
    p.add_argument("--work", default=None,
                   help="folder for the avatars (checkpoints, resumable) and prepared videos (default: --out)")
    p.add_argument("--minutes", type=_minutes, default=5.0, help="fitting budget per video (default 5)")
    p.add_argument("--steps", type=_positive_int, default=None, help="fine-tuning steps at most")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="frames per step (default 1; tiny 2)")
    p.add_argument("--fit-option", action="append", metavar="KEY=VALUE",
                   help="any other FitConfig field, e.g. lr_final_factor=0.1 (repeatable)")
    p.add_argument("--num-points", type=_positive_int, default=None, help="Gaussians (default 100000)")
    p.add_argument("--resolution", type=_positive_int, default=512, help="fitting resolution (default 512)")
    p.add_argument("--prep-resolution", type=_positive_int, default=512, help="preparation crop size (512)")
    p.add_argument("--max-frames", type=_positive_int, default=None, help="first N frames of each video")
    p.add_argument("--device", default="auto", help="auto (default), cuda, cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny model at 32x32 (smoke test)")
    p.add_argument("--fresh", action="store_true", help="fit again instead of resuming OUT/<video>/avatar")
    p.add_argument("--speed-resolution", type=_positive_int, default=None,
                   help="render-speed resolution (default 512; with --tiny the avatar's)")
    p.add_argument("--speed-iters", type=_positive_int, default=50, help="timed calls per batch size (50)")
    p.add_argument("--test-pose-steps", type=_positive_int, default=None, metavar="N",
                   help="also score the held-out frames after N steps of per-frame head-pose refinement against "
                        "their own images (refine_poses; a diagnostic of pose error, reported apart)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = [a for a in argv if a in ("-q", "--quiet")][:1]
    argv = [a for a in argv if a not in ("-q", "--quiet")]  # -q is accepted anywhere
    if not argv or argv[0] not in ("pack", "unpack", "run", "-h", "--help"):
        argv = ["run", *argv]
    argv = [*quiet, *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.command is None:
        build_parser().print_help()
        return 1
    try:
        if args.command == "pack":
            _pack_command(args)
        elif args.command == "unpack":
            print(unpack(args.pack, args.out))
        else:
            run(args)
    except AvatarError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted; run the same command again to continue")
        return 130
    return 0


def _pack_command(args: argparse.Namespace) -> None:
    from avatar.fitting.video_data import prepare_video

    out = Path(args.out)
    cache = Path(args.prepared_cache) if args.prepared_cache else out.parent / "prepared"
    for item in args.inputs:
        path = Path(item)
        if path.is_dir():
            folder, name = path, path.name
        elif path.is_file():
            name = path.stem
            folder = cache / name
            prepare_video(path, folder, resolution=args.resolution, progress=not args.quiet)
        else:
            raise InputNotFoundError(f"{path} is neither a video nor a prepared folder")
        packed = pack_prepared(folder, out / f"{name}.npz", quality=args.quality, max_frames=args.max_frames)
        print(f"{packed}  {packed.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
