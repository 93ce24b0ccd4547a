"""Speed of the Portrait4D reconstructor Psi: the official code, our reference path and our fast path.

    python -m avatar.bench psi [--device cuda] [--frames 200] [--batch-sizes 1 8] [--renderers torch ieee tf32]
        [--official PORTRAIT4D_CHECKOUT --extra-path DEPS] [--cuda-graph] [--compile] [--model ID_OR_DIR]

Rows:

* ``official fp32`` (with ``--official``): the official ``TriPlaneReconstructorNeutralize.synthesis()`` built
  from a YuDeng/Portrait-4D checkout with random weights (as ``scripts/compare_official_portrait4d.py`` builds
  it: FLAME deformation off, its sampling made deterministic); our model then loads the same weights through
  the checkpoint converter, so every row's difference is measured against the official output;
* ``reference fp32``: :meth:`Portrait4D.reference_forward` for every frame - every encoder recomputed from the
  source image, float32, as the official ``synthesis()`` does (deformation off);
* ``fast bf16 [renderer]``: the source encoded once (:meth:`Portrait4D.encode`), then :meth:`Portrait4D.render`
  per batch of driving frames with bf16 autocast and fused attention; the volume renderer is PyTorch's ops
  (``torch``) or the fused Triton kernels (``ieee``: float32 decoder products, ``tf32``); ``--cuda-graph`` adds
  the same path replayed from a CUDA graph, ``--compile`` uses ``torch.compile``.

Per-frame time is the median over timed iterations of (iteration time / batch size). FLOPs per frame are
counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention) on one batch;
"of bf16 peak" is achieved FLOP/s over the GPU's dense bf16 peak. Every fast row also reports its max abs and
relative (L2) difference from the reference on the same frames. Weights are random unless ``--model`` is
given: the timings do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from avatar.bench.timing import fmt as _fmt
from avatar.bench.timing import sync as _sync
from avatar.bench.timing import time_calls as _time
from avatar.errors import InputError
from avatar.models.portrait4d import AvatarState, Portrait4D, Portrait4DConfig
from avatar.render.camera import orbit_labels

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "RTX 4090": 165.2}
OFFICIAL_H200_MS = 35.5  # the official code, fp32, batch 1, everything recomputed, deformation off (issue text)


@dataclass
class Row:
    path: str
    batch: int
    ms_per_frame: float
    fps: float
    peak_mem_gib: float | None
    gflop_per_frame: float
    peak_fraction: float | None
    max_abs_diff: float | None = None
    rel_l2_diff: float | None = None
    iterations: int = 0


def count_flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def bf16_peak(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def build_model(model: str | None, device: torch.device, tiny: bool) -> Portrait4D:
    if model:
        return Portrait4D.from_pretrained(model, device=device)
    torch.manual_seed(0)
    net = Portrait4D(Portrait4DConfig.tiny() if tiny else Portrait4DConfig())
    with torch.no_grad():  # a non-trivial density so the renderer's work is realistic
        net.decoder.out_sigma.weight.normal_(0, 0.3)
        net.w_avg.normal_()
    return net.to(device).eval()


@dataclass
class Official:
    """The official reconstructor and the call that renders one batch with it."""

    model: torch.nn.Module
    render: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], dict]
    cuda_ops: dict[str, bool]
    """Which of upstream's CUDA extensions built (where one did not, upstream runs its reference op)."""


def build_official(checkout: Path, extra_paths: list[str], device: torch.device) -> tuple[Official, Portrait4D]:
    """The official reconstructor with random weights, and our model loaded from the same weights through the
    converter (needs the repository's ``scripts/`` folder and the official code's dependencies)."""
    import pickle
    import sys
    import tempfile
    from unittest import mock

    scripts = Path(__file__).resolve().parents[2] / "scripts"
    if not (scripts / "compare_official_portrait4d.py").is_file():
        raise InputError(f"--official needs this repository's scripts/ folder ({scripts} not found)")
    for p in [str(scripts), *extra_paths]:
        if p not in sys.path:
            sys.path.insert(0, p)
    import compare_official_portrait4d as cmp

    from avatar.hub.convert import convert_file

    official_cls = cmp.import_official(checkout.resolve())
    with mock.patch("torch.utils.model_zoo.load_url", lambda *a, **k: {}):
        official = official_cls(**cmp.official_init_kwargs(512)).eval().requires_grad_(False)
    cmp.randomize(official, 0)
    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "portrait4d-random.pkl"
        with open(pkl, "wb") as f:
            pickle.dump({"G_ema": official, "training_set_kwargs": {"static": False}}, f)
        ours = Portrait4D.from_official(convert_file(pkl, Path(tmp) / "converted").weights)
    official = official.to(device)
    cuda_ops = cmp.official_cuda_ops(device)
    identity = cmp._IdentityDeformer()

    def render(image: torch.Tensor, motion_app: torch.Tensor, motion: torch.Tensor, camera: torch.Tensor) -> dict:
        with torch.no_grad(), cmp.deterministic_official_renderer(official.renderer):
            out = official.synthesis(image, image, motion_app, motion, camera, _deformer=identity,
                                     neural_rendering_resolution=128, motion_scale=1.0)
        return {"image": out["image_sr"]}

    return Official(official, render, cuda_ops), ours.to(device).eval()


def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    official = None
    if args.official is not None:
        official, model = build_official(args.official, args.extra_path, device)
    else:
        model = build_model(args.model, device, args.tiny)
    cfg = model.config
    size, dim = cfg.img_resolution, cfg.encoders.motion_dim
    gen = torch.Generator().manual_seed(1)
    image = (torch.rand(1, 3, size, size, generator=gen) * 2 - 1).to(device)
    motion_app = torch.randn(1, dim, generator=gen).to(device)
    max_batch = max(args.batch_sizes)
    motions = torch.randn(max_batch, dim, generator=gen).to(device)
    cameras = orbit_labels(max_batch).to(device)
    peak = bf16_peak(device, args.peak_tflops)
    rows: list[Row] = []

    def record(path: str, batch: int, fn: Callable[[], dict], iters: int, ref: dict | None,
               flop_fn: Callable[[], object] | None = None) -> dict:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        times = _time(fn, device, iters, args.warmup)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        flops = count_flops(flop_fn or fn) / batch  # (a graph replay shows no operators: count the eager call)
        ms = statistics.median(times) / batch * 1e3
        row = Row(path, batch, ms, 1e3 / ms, mem, flops / 1e9, (flops / (ms / 1e3) / peak) if peak else None,
                  iterations=iters)
        if ref is not None:
            a, b = out["image"][:1].float(), ref["image"].float()
            row.max_abs_diff = float((a - b).abs().max())
            row.rel_l2_diff = float((a - b).norm() / b.norm())
        rows.append(row)
        print(format_row(row), flush=True)
        return out

    print(header(), flush=True)
    iters_ref = max(3, args.frames // 8) if device.type == "cuda" else max(1, args.frames // 100)
    ref = None
    if official is not None:
        missing = [name for name, ok in official.cuda_ops.items() if not ok]
        label = "official fp32" + (f" (upstream's reference {'/'.join(missing)})" if missing else "")
        ref = record(label, 1, lambda: official.render(image, motion_app, motions[:1], cameras[:1]), iters_ref, None)
        official.model.cpu()
    ours_ref = record("reference fp32", 1,
                      lambda: model.reference_forward(image, motion_app, motions[:1], cameras[:1]), iters_ref, ref)
    ref = ref or ours_ref

    label = args.dtype + (f" + compile({args.compile_mode})" if args.compile else "")
    graphs = [False, True] if args.cuda_graph and device.type == "cuda" else [False]
    for renderer in args.renderers:
        for graphed in graphs:
            model.enable_fast_inference(torch.bfloat16 if args.dtype == "bf16" else None,
                                        channels_last=not args.no_channels_last,
                                        sr_fused_modconv=False if args.sr_unfused else None,
                                        fused_rendering=None if renderer == "torch" else renderer, cuda_graphs=graphed)
            if args.compile and not model.compiled:
                model.compile_fast_path(mode=args.compile_mode)
            state: AvatarState = model.encode(image, motion_app)
            for b in args.batch_sizes:
                iters = max(3, args.frames // b) if device.type == "cuda" else max(1, args.frames // (100 * b))

                def eager(b: int = b, st: AvatarState = state) -> dict:
                    return model._render_frames(st, motions[:b], model._check_camera(cameras[:b], b), None, None,
                                                True, None)

                record(f"fast {label} [{renderer}]" + (" + CUDA graph" if graphed else ""), b,
                       lambda b=b, st=state: model.render(st, motions[:b], cameras[:b]), iters, ref, flop_fn=eager)
            model._graphs.clear()
    if args.breakdown:
        breakdown(model, state, motions, cameras, max(args.batch_sizes), device, args.frames)
    if args.profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        b = max(args.batch_sizes)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model.render(state, motions[:b], cameras[:b])
            _sync(device)
        print(f"\nfast path ({args.renderers[-1]} renderer), batch {b}, top CUDA kernels:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.profile))
    t = time.perf_counter()
    for _ in range(3):
        model.encode(image, motion_app)
    _sync(device)
    print(f"\nencode (source-only work, once per avatar): {(time.perf_counter() - t) / 3 * 1e3:.1f} ms")
    return rows


@torch.no_grad()
def breakdown(model: Portrait4D, state: AvatarState, motions: torch.Tensor, cameras: torch.Tensor, batch: int,
              device: torch.device, frames: int) -> None:
    """Median ms per frame of the fast path's stages: motion blocks + triplane decoder, volume rendering
    (rays, two passes, compositing), super-resolution."""
    st = state.expand(batch)
    planes = model._planes(st, motions[:batch], model.fast)
    sr = model.superresolution
    r = model.config.neural_rendering_resolution
    feats = torch.rand(batch, model.config.feature_channels, r, r, device=device) * 2 - 1
    ws = torch.randn(batch, 1, model.config.w_dim, device=device)
    iters = max(3, frames // batch)

    def render_only() -> None:
        model.superresolution = None
        try:
            model._render_planes(planes, st.background, cameras[:batch], None, None, True, None, model.fast,
                                 reference=False)
        finally:
            model.superresolution = sr

    stages = {
        "motion blocks + triplane decoder": lambda: model._planes(st, motions[:batch], model.fast),
        "volume rendering + compositing": render_only,
    }
    if sr is not None:
        stages["super-resolution"] = lambda: sr(feats[:, :3], feats, ws, fused_modconv=model.fast.sr_fused_modconv)
    renderer = model.fast.fused_rendering or "torch"
    print(f"\nstage breakdown (fast path, {renderer} renderer, batch {batch}):\n| stage | ms / frame |\n|---|---|")
    for name, fn in stages.items():
        ms = statistics.median(_time(fn, device, iters, 2)) / batch * 1e3
        print(f"| {name} | {ms:.2f} |", flush=True)


def header() -> str:
    return ("| path | batch | ms / frame | frames/s | peak GPU mem (GiB) | GFLOP / frame | of bf16 peak "
            "| max abs diff vs ref | rel L2 diff |\n|---|---|---|---|---|---|---|---|---|")


def format_row(r: Row) -> str:
    return (f"| {r.path} | {r.batch} | {r.ms_per_frame:.2f} | {r.fps:.1f} | {_fmt(r.peak_mem_gib, '.2f')} "
            f"| {r.gflop_per_frame:.1f} | {_fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, '.1f')}"
            f"{'' if r.peak_fraction is None else ' %'} | {_fmt(r.max_abs_diff, '.2e')} | {_fmt(r.rel_l2_diff, '.2e')} |")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avatar.cli import NON_NEGATIVE_INT, POSITIVE_INT

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="model id or folder (default: random weights of the official config)")
    parser.add_argument("--tiny", action="store_true", help="tiny random config (smoke test)")
    parser.add_argument("--frames", type=POSITIVE_INT, default=200, help="driving frames timed per row (GPU)")
    parser.add_argument("--warmup", type=NON_NEGATIVE_INT, default=3)
    parser.add_argument("--batch-sizes", type=POSITIVE_INT, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--renderers", nargs="+", choices=["torch", "ieee", "tf32"], default=["torch", "ieee"],
                        help="volume renderers of the fast rows: PyTorch ops, or the fused Triton kernels with float32 "
                             "(ieee) or TF32 decoder products")
    parser.add_argument("--cuda-graph", action="store_true", help="also time each fast row replayed from a CUDA graph")
    parser.add_argument("--official", type=Path, metavar="CHECKOUT",
                        help="a YuDeng/Portrait-4D checkout: time the official code in the same run (same weights)")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="sys.path entry for the official code's dependencies (segmentation-models-pytorch...)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the per-frame networks")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                        help="torch.compile mode ('reduce-overhead' adds CUDA graphs)")
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's dense bf16 peak")
    parser.add_argument("--breakdown", action="store_true", help="time the fast path's stages separately")
    parser.add_argument("--no-channels-last", action="store_true", help="fast path without NHWC conv weights")
    parser.add_argument("--sr-unfused", action="store_true",
                        help="fast path with the SR's modulated convs as batched convs (default: upstream's grouped conv)")
    parser.add_argument("--profile", type=NON_NEGATIVE_INT, default=0, metavar="N", help="print the N costliest CUDA kernels")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")


def main(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device} asked for, but no CUDA device is available; use --device cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default, stated for the reference row
    rows = run(args)
    base = rows[0]  # the official row when timed, else our reference path
    fast = [r for r in rows if r.path.startswith("fast")]
    if fast:
        best = min(fast, key=lambda r: r.ms_per_frame)
        gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        print(f"\n{gpu}: fastest row '{best.path}' at batch {best.batch}: {best.fps:.1f} frames/s = "
              f"{base.ms_per_frame / best.ms_per_frame:.1f}x the '{base.path}' row of this run")
        if not base.path.startswith("official"):
            print(f"(the official code was not timed: --official CHECKOUT; the issue's figure for it on one H200 is "
                  f"{OFFICIAL_H200_MS} ms/frame)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0
