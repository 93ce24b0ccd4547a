"""Speed of the Gaussian rasteriser (:func:`avatar.render.gaussians.rasterize_gaussians`): gsplat against the
PyTorch reference, on random head-sized scenes.

    python -m avatar.bench gaussians [--device cuda] [--num-gaussians 100000] [--resolution 512] [--channels 32]
        [--batch-sizes 1 8] [--backends gsplat reference] [--iters 20] [--warmup 3] [--backward] [--json OUT]

One row per (backend, scene size, batch): the median over ``--iters`` timed calls (after ``--warmup`` untimed
ones; CUDA is synchronised around every call) of the time of one call rendering ``batch`` images, that time per
image, and images per second. The scene: ``--num-gaussians`` Gaussians per image with ``--channels`` feature
channels in a ball of radius 0.15 one unit in front of a square ``--resolution`` pinhole camera (the ball fills
about two thirds of the frame), log-normal scales that make the splats overlap as on a head, random rotations and
opacities; every image of a batch is a different scene.

The reference backend is dense per tile and meant for CPUs and tests: above ``--reference-limit`` Gaussians x
pixels per image it is not timed at the full size; it is timed instead at ``--reference-num-gaussians`` x
``--reference-resolution`` (every backend is then also timed at that size, so the rows compare), and a note
says so. Where both backends run at a size, gsplat's rows give their largest difference from the reference.
The first gsplat call of a process may JIT-build gsplat's CUDA extension (1-2 minutes): it happens before any
timing and its duration is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from avatar.bench.timing import time_calls
from avatar.errors import InputError

BACKENDS = ("gsplat", "reference")


@dataclass
class GaussianTiming:
    backend: str
    num_gaussians: int
    resolution: int
    channels: int
    batch: int
    passes: str
    ms_per_call: float
    ms_per_frame: float
    fps: float
    max_abs_diff: float | None = None
    """gsplat rows: largest |features - reference features| at the same size and batch (when both ran)."""


def random_scene(batch: int, num_gaussians: int, resolution: int, channels: int, device: torch.device,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` random head-sized scenes and their cameras (see the module docstring), as keyword arguments of
    :func:`rasterize_gaussians` (``width``/``height`` included)."""
    g = torch.Generator().manual_seed(seed)
    b, n = batch, num_gaussians
    direction = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g), dim=-1)
    means = 0.15 * direction * torch.rand(b, n, 1, generator=g) ** (1 / 3)
    size = 0.15 / n ** (1 / 3)  # about the spacing of the centres
    scales = size * torch.exp(0.5 * torch.randn(b, n, 3, generator=g))
    quats = torch.randn(b, n, 4, generator=g)
    opacities = torch.sigmoid(torch.randn(b, n, generator=g))
    features = torch.randn(b, n, channels, generator=g)
    viewmats = torch.eye(4).repeat(b, 1, 1)
    viewmats[:, 2, 3] = 1.0
    focal = 2.2 * resolution
    Ks = torch.tensor([[focal, 0.0, resolution / 2], [0.0, focal, resolution / 2], [0.0, 0.0, 1.0]]).repeat(b, 1, 1)
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "features": features,
               "viewmats": viewmats, "Ks": Ks}
    return {**{k: v.to(device) for k, v in tensors.items()}, "width": resolution, "height": resolution}


def _median_ms(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    return statistics.median(time_calls(fn, device, iters)) * 1e3


def _call(scene: dict[str, torch.Tensor], backend: str, backward: bool) -> Callable[[], torch.Tensor]:
    from avatar.render.gaussians import rasterize_gaussians

    grads = ("means", "scales", "opacities", "features")
    if backward:
        scene = {k: v.detach().requires_grad_(True) if k in grads else v for k, v in scene.items()}

    def run() -> torch.Tensor:
        if not backward:
            with torch.no_grad():
                return rasterize_gaussians(**scene, backend=backend).features
        for k in grads:
            scene[k].grad = None
        out = rasterize_gaussians(**scene, backend=backend).features
        out.square().mean().backward()
        return out.detach()

    return run


def run(args: argparse.Namespace, notes: list[str]) -> list[GaussianTiming]:
    from avatar.render import gaussians as splat

    device = torch.device(args.device)
    backends = list(dict.fromkeys(args.backends))
    if "gsplat" in backends and device.type != "cuda":
        notes.append(f"gsplat not timed: it needs a CUDA device (--device {args.device})")
        backends.remove("gsplat")
    if "gsplat" in backends:
        t = time.perf_counter()
        try:
            splat._check_gsplat_device(device)
            splat._load_gsplat()  # builds gsplat's CUDA extension on the first call of a machine
        except splat.GaussianRasterizationUnavailableError as exc:
            notes.append(f"gsplat not timed: {exc}")
            backends.remove("gsplat")
        else:
            notes.append(f"gsplat ready in {time.perf_counter() - t:.1f} s before timing (its CUDA extension is "
                         "built on the first call of a machine, then loaded from torch's extension cache)")
    full = (args.num_gaussians, args.resolution)
    sizes = [full]
    ref_sizes = [full]
    if "reference" in backends and args.num_gaussians * args.resolution**2 > args.reference_limit:
        small = (min(args.num_gaussians, args.reference_num_gaussians), min(args.resolution, args.reference_resolution))
        ref_sizes = [small]
        sizes.append(small)
        notes.append(f"reference not timed at {full[0]} Gaussians x {full[1]}^2 (above --reference-limit "
                     f"{args.reference_limit:.3g} Gaussians x pixels per image); all backends timed at {small[0]} x "
                     f"{small[1]}^2 as well")
    passes = "forward+backward" if args.backward else "forward"
    rows = []
    for n, res in dict.fromkeys(sizes):
        for batch in args.batch_sizes:
            scene = random_scene(batch, n, res, args.channels, device, seed=args.seed)
            outputs = {}
            for backend in backends:
                if backend == "reference" and (n, res) not in ref_sizes:
                    continue
                fn = _call(scene, backend, args.backward)
                for _ in range(args.warmup):
                    fn()
                ms = _median_ms(fn, args.iters, device)
                outputs[backend] = fn()
                rows.append(GaussianTiming(backend, n, res, args.channels, batch, passes, ms, ms / batch,
                                           1e3 * batch / ms))
            if "gsplat" in outputs and "reference" in outputs:
                diff = (outputs["gsplat"].float() - outputs["reference"].float()).abs().max().item()
                for r in rows:
                    if (r.backend, r.num_gaussians, r.resolution, r.batch) == ("gsplat", n, res, batch):
                        r.max_abs_diff = diff
            del scene, outputs
    return rows


def format_table(rows: list[GaussianTiming]) -> str:
    lines = ["| backend | Gaussians | resolution | channels | batch | pass | ms / call | ms / frame | frames/s | "
             "max abs diff vs reference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
        lines.append(f"| {r.backend} | {r.num_gaussians} | {r.resolution}x{r.resolution} | {r.channels} | {r.batch} | "
                     f"{r.passes} | {r.ms_per_call:.3f} | {r.ms_per_frame:.3f} | {r.fps:.1f} | {diff} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avatar.cli import NON_NEGATIVE_INT, POSITIVE_INT

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-gaussians", type=POSITIVE_INT, default=100_000, help="Gaussians per image")
    parser.add_argument("--resolution", type=POSITIVE_INT, default=512, help="square image size in pixels")
    parser.add_argument("--channels", type=POSITIVE_INT, default=32, help="feature channels per Gaussian")
    parser.add_argument("--batch-sizes", type=POSITIVE_INT, nargs="+", default=[1, 8], help="images per call")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--iters", type=POSITIVE_INT, default=20, help="timed calls per row (median)")
    parser.add_argument("--warmup", type=NON_NEGATIVE_INT, default=3, help="untimed calls before each row")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (features -> means, "
                        "scales, opacities, features) instead of forward only")
    parser.add_argument("--reference-limit", type=float, default=4e8,
                        help="largest Gaussians x pixels per image at which the reference is timed (default 4e8)")
    parser.add_argument("--reference-num-gaussians", type=POSITIVE_INT, default=20_000,
                        help="Gaussians of the smaller size timed instead, above the limit")
    parser.add_argument("--reference-resolution", type=POSITIVE_INT, default=128,
                        help="resolution of the smaller size timed instead, above the limit")
    parser.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    parser.add_argument("--json", help="also write the rows as JSON to this file")


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device} asked for, but no CUDA device is available; use --device cpu")
    if not (math.isfinite(args.reference_limit) and args.reference_limit > 0):
        raise InputError(f"--reference-limit must be a positive number, got {args.reference_limit}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    try:
        import gsplat

        gsplat_version = getattr(gsplat, "__version__", "?")
    except Exception:  # noqa: BLE001 - only reported
        gsplat_version = "not installed"
    print(f"{where}; torch {torch.__version__} (CUDA {torch.version.cuda}); gsplat {gsplat_version}\n", flush=True)
    notes: list[str] = []
    rows = run(args, notes)
    print(format_table(rows))
    for note in notes:
        print(f"\nnote: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0
