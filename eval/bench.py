"""Speed of the full HDTF same-identity metric set (PSNR, SSIM, CSIM, AED, APD, AKD, LPIPS, L1, FID) in frames/s.

    python -m eval.bench [--device cuda] [--batch-size 64] [--frames 1024] [--dtype fp32|bf16] [--gpus N] [--json F]
    avatar bench metrics ...     # the same command

One "frame" is one generated 512x512 frame scored against its ground-truth frame with every metric: both images
go through the face analysis (RetinaFace -> FAN-68 -> Deep3DFaceRecon, :class:`avatar.face.analysis.FaceAnalyzer`,
shared by CSIM/AKD/AED/APD through :class:`eval.face_networks.FaceNetworks` as in ``eval.run``), ArcFace (CSIM),
LPIPS-Alex and the FID Inception (features of both sets). Rows: one per stage (the face-analysis stages for pred +
target, then each metric's own work), ``total`` (median time of one whole batch with nothing cached) and ``total,
target side cached`` (median time of the same batch scored the way ``eval.run`` scores it when the references are
in its reference cache, :mod:`eval.reference_cache`: the reference PNG files are hashed, every cacheable metric's
target rows are read from a cache folder on disk, filled by one untimed pass, and each metric scores the pair from
them with ``update_with_target_features``, so the face analysis, ArcFace and Inception run on the predictions
only; PSNR, SSIM, L1 and LPIPS run as in ``total``). The cached pass reads the same batch's entries every time, so
from the page cache; neither total counts decoding PNG frames. FID's Frechet distance (one 2048x2048 matrix square
root per evaluation, not per frame) is timed once and reported apart.

Per-row time is the median over timed batches of (stage time / batch size); every stage is synchronised on the
device. Inputs are synthetic (smooth random images at uint8 levels and a noisy copy). Networks are the official
architectures at full size with **random weights** (ArcFace iresnet-18, LPIPS-Alex, FID Inception v3,
RetinaFace-R50, FAN 4-stack, Deep3DFaceRecon R50): speed does not depend on the weight values (the random detector
is biased to report faces of a realistic size so that every stage runs); the reported metric values are
meaningless. ``--dtype bf16`` runs the networks under autocast (changes reported values; fp32 is the default and
the reference). On CUDA, PyTorch's default lets cuDNN convolutions use TF32.

Measured, full set: one H200, ``--batch-size 128 --frames 1024``: fp32 183 frames/s; fp32 ``--channels-last`` 205;
bf16 ``--channels-last`` 281; the face analysis (RetinaFace-R50 at 640, FAN, Deep3D) of both images was ~78 % of
the time, the detector alone ~43 %. (The "target side cached" figures of that run were then an estimate, the total
minus the target-side stages; the cached row has not been timed on a GPU since it runs the real cached path.)
With the cached path, on the development machine's CPU (2 threads, fp32, ``--device cpu --batch-size 4 --frames
8``): 0.34 frames/s full set, 0.71 target side cached (2955 / 1407 ms per frame).

``--gpus N`` runs N processes, one per GPU, each on ``frames / N`` frames at the same time, and reports the summed
throughput (``accelerate launch`` is not needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

FALLBACK_METRICS = ("psnr", "ssim", "csim", "aed", "apd", "akd", "lpips", "l1", "fid")


def same_identity_metrics() -> tuple[str, ...]:
    """The HDTF same-identity metric list from :mod:`eval.protocols` (fallback: the published column order)."""
    try:
        from eval.protocols import get_protocol

        return tuple(get_protocol("hdtf", "same-identity").metrics)
    except Exception:  # pragma: no cover - protocols module absent or changed
        return FALLBACK_METRICS


@dataclass
class Row:
    stage: str
    ms_per_frame: float
    fps: float
    share: float = 0.0


@dataclass
class BenchResult:
    device: str
    device_name: str
    batch_size: int
    frames: int
    dtype: str
    metrics: list[str]
    rows: list[Row] = field(default_factory=list)
    total_fps: float = 0.0
    total_fps_cached_target: float = 0.0
    fid_compute_s: float | None = None
    gpus: int = 1
    per_gpu_fps: list[float] = field(default_factory=list)
    weights: str = "random (official architectures)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_frames(n: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random ``target`` images in [0, 1] and ``pred`` = target + noise (clamped)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 32, size // 32, generator=g)
    target = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return pred.to(device), target.to(device)


def build_metrics(names: tuple[str, ...], device: torch.device, analyzer: Any) -> dict[str, Any]:
    """The metrics with random-weight networks at official size (nothing is downloaded); ``analyzer``: anything
    with ``landmarks`` and ``coefficients`` callables (a ``FaceAnalyzer``, or ``eval.face_networks.FaceNetworks``
    sharing one analysis per image tensor, as ``eval.run`` does)."""
    import warnings

    from avatar.losses import IResNet, LPIPSConfig, LPIPSNet
    from eval.metrics import AED, AKD, APD, CSIM, FID, L1, LPIPS, PSNR, SSIM
    from eval.metrics.fid import FIDInception
    from eval.metrics.weights import seeded

    out: dict[str, Any] = {}
    with warnings.catch_warnings(), seeded():
        warnings.simplefilter("ignore")
        for n in names:
            if n == "psnr":
                out[n] = PSNR()
            elif n == "ssim":
                out[n] = SSIM()
            elif n == "l1":
                out[n] = L1()
            elif n == "lpips":
                out[n] = LPIPS(network=LPIPSNet(LPIPSConfig("alex")), device=device, batch_size=1 << 30)
            elif n == "fid":
                out[n] = FID(network=FIDInception(), device=device, batch_size=1 << 30)
            elif n == "csim":
                out[n] = CSIM(embedder=IResNet().to(device), landmarks=analyzer.landmarks, device=device,
                              batch_size=1 << 30)
            elif n == "akd":
                out[n] = AKD(landmarks=analyzer.landmarks)
            elif n == "aed":
                out[n] = AED(extractor=analyzer.coefficients)
            elif n == "apd":
                out[n] = APD(extractor=analyzer.coefficients)
            else:
                raise KeyError(f"unknown metric {n!r}")
    return out


def _autocast_module(module: torch.nn.Module, dtype: torch.dtype | None, device: torch.device) -> None:
    if dtype is None:
        return
    fwd = module.forward

    def wrapped(*a: Any, **k: Any) -> Any:
        with torch.autocast(device.type, dtype=dtype):
            return fwd(*a, **k).float()

    module.forward = wrapped  # type: ignore[method-assign]


def _timed(stage: str, fn: Callable[[], Any], rec: dict[str, float], dev: torch.device) -> Any:
    """``fn()``, its synchronised wall time added to ``rec[stage]``."""
    _sync(dev)
    t = time.perf_counter()
    out = fn()
    _sync(dev)
    rec[stage] = rec.get(stage, 0.0) + time.perf_counter() - t
    return out


def _full_pass(ms: dict[str, Any], face: Any, pred: torch.Tensor, target: torch.Tensor, timings: dict[str, float],
               dev: torch.device) -> dict[str, float]:
    """One batch with nothing cached, per stage: the face analysis of pred and target (shared by the face
    metrics, as in ``eval.run``), then each metric's ``update`` (FID: the features of both sets)."""
    rec: dict[str, float] = {}
    timings.clear()
    face.clear()
    if any(n in ms for n in ("csim", "akd", "aed", "apd")):
        _timed("face analysis (pred)", lambda: face.shared(pred), rec, dev)
        _timed("face analysis (target)", lambda: face.shared(target), rec, dev)
        for k, v in timings.items():
            rec[f"  {k} (pred + target)"] = v
    for n, m in ms.items():
        if n == "fid":
            fpred = _timed("fid Inception (pred)", lambda m=m: m.features(pred), rec, dev)
            ftgt = _timed("fid Inception (target)", lambda m=m: m.features(target), rec, dev)
            m.add_features(fpred, ftgt)
        else:
            _timed("csim (align + ArcFace)" if n == "csim" else n, lambda m=m: m.update(pred, target), rec, dev)
    return rec


def _cached_pass(ms: dict[str, Any], face: Any, pred: torch.Tensor, target: torch.Tensor, files: list[Any],
                 cache: Any, dev: torch.device) -> None:
    """One batch the way ``eval.run`` scores it when the references are in the reference cache: the reference
    files are hashed, every cacheable metric's target rows are read from disk, and the pairs are scored from them
    (networks run on ``pred`` only); the other metrics run ``update`` (they need the target pixels)."""
    from eval.reference_cache import file_key

    def never(idx: list[int]) -> torch.Tensor:
        raise RuntimeError(f"reference cache miss for {len(idx)} image(s) in the timed cached pass")

    face.clear()
    cacheable = {n: m for n, m in ms.items() if cache.cacheable(m)}
    rows = cache.features(cacheable, [file_key(f) for f in files], never) if cacheable else {}
    for n, m in ms.items():
        if n in rows:
            m.update_with_target_features(pred, rows[n])
        else:
            m.update(pred, target)


def _reference_files(target: torch.Tensor, folder: Any) -> list[Any]:
    """``target`` (uint8 levels) written as PNG files ``folder/<i>.png``, as ``eval.run`` reads references."""
    from pathlib import Path

    from PIL import Image

    arrays = (target * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    paths = []
    for i, a in enumerate(arrays):
        paths.append(Path(folder) / f"{i:06d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def run_bench(device: str = "cpu", batch_size: int = 8, frames: int = 16, dtype: str = "fp32", warmup: int = 1,
              size: int = 512, metrics: tuple[str, ...] | None = None, fid_compute: bool = True,
              channels_last: bool = False, quiet: bool = False, analyzer: Any = None) -> BenchResult:
    """Time the metric set on ``frames`` synthetic frames in batches of ``batch_size`` (see the module docstring)."""
    import tempfile

    from avatar.face.analysis import FaceAnalyzer
    from eval.face_networks import FaceNetworks
    from eval.reference_cache import ReferenceCache

    dev = torch.device(device)
    names = tuple(metrics or same_identity_metrics())
    timings: dict[str, float] = {}
    if analyzer is None:
        analyzer = FaceAnalyzer.random(dev)
    analyzer.timings = timings
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    analyzer.autocast = amp
    face = FaceNetworks.from_analyzer(analyzer)
    ms = build_metrics(names, dev, face)
    for key in ("lpips", "fid"):
        if key in ms:
            _autocast_module(ms[key].network, amp, dev)
    if "csim" in ms:
        _autocast_module(ms["csim"].embedder, amp, dev)
    if channels_last:
        for mod in (analyzer.detector, analyzer.fan, analyzer.face_recon,
                    *(getattr(m, "network", None) or getattr(m, "embedder", None) for m in ms.values()
                      if hasattr(m, "network") or hasattr(m, "embedder"))):
            if isinstance(mod, torch.nn.Module):
                mod.to(memory_format=torch.channels_last)
    pred, target = synthetic_frames(batch_size, size, dev)
    target = (target * 255).round() / 255  # uint8 levels: the PNG references hold exactly this tensor
    iters = max(1, math.ceil(frames / batch_size))
    per_iter: list[dict[str, float]] = []
    cached: list[float] = []

    def say(what: str, it: int, seconds: float) -> None:
        if not quiet:
            print(f"  {what} batch {it + 1}/{warmup + iters}{' (warm-up)' if it < warmup else ''}: {seconds:.3f} s",
                  file=sys.stderr, flush=True)

    for it in range(warmup + iters):
        rec = _full_pass(ms, face, pred, target, timings, dev)
        if it >= warmup:
            per_iter.append(rec)
        say("full", it, sum(v for k, v in rec.items() if not k.startswith(" ")))
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        files = _reference_files(target, tmp)
        cache = ReferenceCache(f"{tmp}/cache", device_type=dev.type)
        cacheable = {n: m for n, m in ms.items() if cache.cacheable(m)}
        if cacheable:  # untimed: fill the cache, as a first eval.run on these references does
            face.clear()
            cache.features(cacheable, [cache.key_of(f) for f in files], lambda idx: target[torch.tensor(idx)])
        for it in range(warmup + iters):
            rec = {}
            _timed("cached", lambda: _cached_pass(ms, face, pred, target, files, cache, dev), rec, dev)
            if it >= warmup:
                cached.append(rec["cached"])
            say("target side cached", it, rec["cached"])

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    res = BenchResult(device=str(dev), device_name=name, batch_size=batch_size, frames=iters * batch_size,
                      dtype=dtype, metrics=list(names))
    stages = list(per_iter[0])
    totals = [sum(v for k, v in r.items() if not k.startswith(" ")) for r in per_iter]
    total_ms = statistics.median(totals) / batch_size * 1e3
    for s in stages:
        v = statistics.median(r.get(s, 0.0) for r in per_iter) / batch_size * 1e3
        res.rows.append(Row(s, v, 1e3 / v if v > 0 else math.inf, v / total_ms))
    cached_ms = statistics.median(cached) / batch_size * 1e3
    res.rows.append(Row("total", total_ms, 1e3 / total_ms, 1.0))
    res.rows.append(Row("total, target side cached", cached_ms, 1e3 / cached_ms, cached_ms / total_ms))
    res.total_fps, res.total_fps_cached_target = 1e3 / total_ms, 1e3 / cached_ms
    if fid_compute and "fid" in ms:
        t = time.perf_counter()
        ms["fid"].compute()
        res.fid_compute_s = time.perf_counter() - t
    return res


def format_table(res: BenchResult) -> str:
    lines = [f"# {res.device_name}: batch {res.batch_size}, {res.frames} timed frames, {res.dtype}, "
             f"weights {res.weights}" + (f", {res.gpus} GPUs" if res.gpus > 1 else ""),
             f"| {'stage':<34} | {'ms/frame':>9} | {'frames/s':>9} | {'share':>6} |",
             f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 8}|"]
    for r in res.rows:
        lines.append(f"| {r.stage:<34} | {r.ms_per_frame:9.3f} | {r.fps:9.1f} | {r.share:6.1%} |")
    if res.gpus > 1:
        lines.append(f"| {'total, all GPUs':<34} | {1e3 / res.total_fps:9.3f} | {res.total_fps:9.1f} |        |")
    if res.fid_compute_s is not None:
        lines.append(f"FID Frechet distance (once per evaluation): {res.fid_compute_s:.2f} s")
    return "\n".join(lines)


def _worker(rank: int, kwargs: dict[str, Any], queue: Any, barrier: Any) -> None:
    torch.cuda.set_device(rank)
    barrier.wait()
    res = run_bench(device=f"cuda:{rank}", quiet=rank > 0, **kwargs)
    queue.put((rank, asdict(res)))


def run_multi_gpu(gpus: int, **kwargs: Any) -> BenchResult:
    """One process per GPU, all at once; throughput is the sum over GPUs (each times its own batches)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(gpus)
    kwargs = {**kwargs, "frames": max(1, kwargs.get("frames", 16) // gpus)}
    procs = [ctx.Process(target=_worker, args=(r, kwargs, queue, barrier)) for r in range(gpus)]
    for p in procs:
        p.start()
    results = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    first = results[0]
    rows = [Row(**r) for r in first.pop("rows")]
    res = BenchResult(**{**first, "rows": rows})
    res.gpus = gpus
    res.per_gpu_fps = [results[r]["total_fps"] for r in range(gpus)]
    res.total_fps = sum(res.per_gpu_fps)
    res.total_fps_cached_target = sum(results[r]["total_fps_cached_target"] for r in range(gpus))
    res.frames = sum(results[r]["frames"] for r in range(gpus))
    return res


def main(argv: list[str] | None = None) -> int:
    """``python -m eval.bench`` / ``avatar bench metrics``: exit status 0, 1 (the input cannot be used), 2 (a bug)."""
    from avatar.cli import NON_NEGATIVE_INT, POSITIVE_INT, ArgumentParser, run_guarded
    from avatar.errors import InputError
    from avatar.logs import setup_logging

    p = ArgumentParser(prog="python -m eval.bench", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=None, help="frames per batch (default 64 on CUDA, 4 on CPU)")
    p.add_argument("--frames", type=POSITIVE_INT, default=None, help="timed frames (default 1024 on CUDA, 8 on CPU)")
    p.add_argument("--warmup", type=NON_NEGATIVE_INT, default=1, help="untimed batches first")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast for the networks (fp32 default; others change the reported values)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the networks")
    p.add_argument("--metrics", help="comma-separated subset (default: the HDTF same-identity set)")
    p.add_argument("--gpus", type=POSITIVE_INT, default=1, help="processes, one per CUDA device")
    p.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads")
    p.add_argument("--no-fid-compute", action="store_true", help="skip timing the final Frechet distance")
    p.add_argument("--json", help="write the result as JSON to this file")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug; tracebacks of errors)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    args = p.parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)
    cuda = args.device.startswith("cuda")
    if args.gpus > 1 and (not cuda or torch.cuda.device_count() < args.gpus):
        p.error(f"--gpus {args.gpus} needs that many CUDA devices ({torch.cuda.device_count()} here)")

    def work() -> int:
        if cuda and not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
        for option, value in (("--batch-size", args.batch_size), ("--frames", args.frames), ("--gpus", args.gpus),
                              ("--threads", args.threads)):
            if value is not None and value < 1:
                raise InputError(f"{option} must be at least 1, got {value}")
        names = tuple(m.strip().lower() for m in args.metrics.split(",")) if args.metrics else None
        unknown = [m for m in names or () if m not in FALLBACK_METRICS]
        if unknown:
            raise InputError(f"--metrics: unknown metric(s) {', '.join(unknown)}; known: {', '.join(FALLBACK_METRICS)}")
        if args.threads:
            torch.set_num_threads(args.threads)
        kwargs = dict(batch_size=args.batch_size or (64 if cuda else 4), frames=args.frames or (1024 if cuda else 8),
                      dtype=args.dtype, warmup=args.warmup, channels_last=args.channels_last, metrics=names,
                      fid_compute=not args.no_fid_compute)
        res = run_multi_gpu(args.gpus, **kwargs) if args.gpus > 1 else run_bench(device=args.device, **kwargs)
        print(format_table(res))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(asdict(res), f, indent=1)
        return 0

    return run_guarded(work, verbosity=verbosity, log=logging.getLogger("eval.bench"), command="eval.bench")


if __name__ == "__main__":
    raise SystemExit(main())
