"""Speed of a fitted GPHM avatar (issue 16): driving signals -> Gaussians -> splatting -> refine network, per
stage, for the reference path and the fast inference path (:meth:`GPHMAvatar.enable_fast_inference`).

    python -m avatar.bench gphm [--avatar DIR] [--device cuda] [--resolution 512] [--batch-sizes 1 8]
        [--modes reference fast-fp32 fast-bf16 fast-bf16-graphs] [--iters 30] [--warmup 5] [--no-tf32] [--json OUT]

``--avatar DIR``: a folder written by ``avatar fit`` (the figures to report). Without it the avatar is the
untrained template of a 512 fit (``--num-points`` Gaussians, default 100,000: :func:`head_template`, the
template's own scales, small random network weights so that every MLP moves the points), seen from 2.1 m, which
times the same work but renders nothing meaningful.

Rows: one per (mode, batch): the median milliseconds over ``--iters`` calls (``--warmup`` untimed calls first;
CUDA synchronised around each call) of each stage on its own - ``signals`` (the driving MLPs), ``gaussians``
(``F_exp``, ``F_nf``, ``F_dyn``, activations), ``splat`` (rasterising the 32-channel feature map with depth),
``refine`` (the refine network) - and of the whole call (``total``, what ``avatar reenact`` does per batch);
``fps`` = batch / total. ``fast-bf16-graphs``: ``fast-bf16`` with ``cuda_graphs=True`` (the Gaussians and the
refine network replayed from CUDA graphs; on the CPU the same as ``fast-bf16``). ``max|d|`` is the largest difference of the mode's image from the reference path's on
the same inputs (images in [-1, 1]). TF32 matmuls and convolutions are allowed unless ``--no-tf32`` (the fitting
and evaluation scripts allow them).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from avatar.bench.timing import fmt, time_calls
from avatar.errors import InputError

MODES = ("reference", "fast-fp32", "fast-bf16", "fast-bf16-graphs")
HEAD_DISTANCE_M = 2.1


@dataclass
class GPHMTiming:
    mode: str
    batch: int
    resolution: int
    num_gaussians: int
    signals_ms: float
    gaussians_ms: float
    splat_ms: float
    refine_ms: float
    total_ms: float
    fps: float
    max_abs_diff: float | None


def template_avatar(num_points: int, resolution: int, device: torch.device, seed: int = 0) -> Any:
    """The untrained template avatar of a ``resolution`` fit with ``num_points`` Gaussians (module docstring)."""
    from avatar.fitting.gphm_fit import FitConfig, FittedGPHMAvatar, _template_model
    from avatar.fitting.video_data import intrinsics
    from avatar.models.gphm.signals import DrivingSignalConfig, DrivingSignalEncoder

    gen = torch.Generator().manual_seed(seed)
    model = _template_model(FitConfig(resolution=resolution, num_points=num_points), "cpu", gen)
    avatar = model.personalise(model.new_identity_code(1, generator=gen).detach())
    with torch.no_grad():
        for mlp in (avatar.expression_deform, avatar.non_face_deform, avatar.dynamic):
            mlp.rest.out.weight.normal_(0.0, 1e-3, generator=gen)
    fields = avatar.config.fields
    signals = DrivingSignalEncoder(DrivingSignalConfig().replace(expression_dim=fields.expression_dim,
                                                                 non_face_dim=fields.non_face_dim))
    expressions, poses = driving_signals(16, signals.config.input_dim, seed)
    signals.set_reference(expressions, poses)
    k = torch.from_numpy(intrinsics(resolution)).float()
    return FittedGPHMAvatar(avatar, signals, k, resolution).to(device).eval()


def driving_signals(n: int, input_dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` expression inputs ``(n, input_dim)`` (centimetres, about a face mesh's spread) and world -> camera
    poses ``(n, 4, 4)``: the head ``HEAD_DISTANCE_M`` in front of an OpenCV camera, turned a few degrees."""
    from avatar.models.gphm.pose import axis_angle_to_matrix

    g = torch.Generator().manual_seed(seed + 1)
    expressions = torch.randn(n, input_dim, generator=g) * 0.3 + torch.randn(1, input_dim, generator=g) * 5.0
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # canonical face (y up, facing +z) -> OpenCV camera axes
    poses = torch.eye(4).repeat(n, 1, 1)
    poses[:, :3, :3] = flip @ axis_angle_to_matrix(torch.randn(n, 3, generator=g) * 0.1)
    poses[:, :3, 3] = torch.tensor([0.0, 0.0, HEAD_DISTANCE_M])
    return expressions, poses


def _set_mode(avatar: Any, mode: str) -> None:
    if mode == "reference":
        avatar.avatar.disable_fast_inference()
    else:
        avatar.enable_fast_inference(torch.bfloat16 if mode.startswith("fast-bf16") else None,
                                     cuda_graphs=mode.endswith("-graphs"))


@torch.inference_mode()
def time_mode(avatar: Any, mode: str, batch: int, resolution: int, iters: int, warmup: int,
              reference_image: torch.Tensor | None, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[GPHMTiming,
                                                                                                       torch.Tensor]:
    """Time one row (module docstring); returns it and the mode's image of the whole call."""
    from avatar.fitting.gphm_fit import _similarity
    from avatar.models.gphm.gaussians import render_gaussian_set

    device = avatar.device
    _set_mode(avatar, mode)
    expressions, poses = (t.to(device) for t in inputs)
    ks, size = avatar.feature_intrinsics(batch, resolution)
    pose = _similarity(None, batch, device)
    bg = avatar.background_feature()
    z_exp, z_nf = avatar.signals(expressions, poses)
    gaussians = avatar.avatar.gaussians(z_exp, z_nf)
    splat = render_gaussian_set(gaussians, pose, ks, size, lambda f: f[:, :3], viewmats=poses, background=bg)
    stages = {
        "signals": lambda: avatar.signals(expressions, poses),
        "gaussians": lambda: avatar.avatar.gaussians(z_exp, z_nf),
        "splat": lambda: render_gaussian_set(gaussians, pose, ks, size, lambda f: f[:, :3], viewmats=poses,
                                             background=bg),
        "refine": lambda: avatar.avatar._refine_image(splat.feature_map),
        "total": lambda: avatar.render(expressions, poses, resolution=resolution),
    }
    ms = {name: statistics.median(time_calls(fn, device, iters, warmup)) * 1e3 for name, fn in stages.items()}
    image = avatar.render(expressions, poses, resolution=resolution).image.float()
    diff = None if reference_image is None else float((image - reference_image).abs().max())
    row = GPHMTiming(mode=mode, batch=batch, resolution=resolution, num_gaussians=int(avatar.avatar.means.shape[0]),
                     signals_ms=ms["signals"], gaussians_ms=ms["gaussians"], splat_ms=ms["splat"],
                     refine_ms=ms["refine"], total_ms=ms["total"], fps=batch / (ms["total"] / 1e3),
                     max_abs_diff=diff)
    return row, image


def table(rows: list[GPHMTiming], header: str) -> str:
    lines = [header, "",
             "| mode | batch | Gaussians | signals ms | gaussians ms | splat ms | refine ms | total ms | fps | max|d| |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.mode} | {r.batch} | {r.num_gaussians} | {r.signals_ms:.2f} | {r.gaussians_ms:.2f} | "
                     f"{r.splat_ms:.2f} | {r.refine_ms:.2f} | {r.total_ms:.2f} | {r.fps:.1f} | "
                     f"{fmt(r.max_abs_diff, '.2e')} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[GPHMTiming]:
    """The rows (module docstring); TF32 as asked while it runs, the caller's setting restored after."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        if torch.device(args.device).type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
            torch.backends.cudnn.allow_tf32 = not args.no_tf32
        return _run(args)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _run(args: argparse.Namespace) -> list[GPHMTiming]:
    device = torch.device(args.device)
    if args.avatar is not None:
        from avatar.fitting.gphm_fit import load_gphm_avatar

        avatar = load_gphm_avatar(args.avatar, device=device)
        source = f"avatar {args.avatar}"
    else:
        avatar = template_avatar(args.num_points, args.resolution, device)
        source = f"untrained template, {args.num_points} Gaussians"
    resolution = args.resolution
    up = avatar.avatar.config.refine.upsample
    if resolution % (4 * up):
        raise InputError(f"--resolution must be a multiple of {4 * up} for this avatar, got {resolution}")
    rows = []
    for batch in args.batch_sizes:
        expressions, poses = driving_signals(batch, avatar.signals.config.input_dim, seed=batch)
        if args.avatar is not None:  # around the avatar's own neutral expression and reference pose
            expressions = expressions - expressions.mean(0) + avatar.signals.neutral.cpu()
            poses = avatar.reference_pose().cpu().expand(batch, 4, 4).clone()
        reference = None
        for mode in args.modes:
            row, image = time_mode(avatar, mode, batch, resolution, args.iters, args.warmup, reference,
                                   (expressions, poses))
            if mode == "reference":
                reference = image
            rows.append(row)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (f"GPHM avatar render speed: {name}, torch {torch.__version__}, {source}, {resolution}x{resolution}, "
              f"TF32 {'off' if args.no_tf32 or device.type != 'cuda' else 'on'}, median of {args.iters} calls")
    print(table(rows, header))
    if args.json is not None:
        Path(args.json).write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avatar.cli import NON_NEGATIVE_INT, POSITIVE_INT

    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--avatar", type=Path, default=None, help="a fitted avatar folder (default: the template)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=POSITIVE_INT, default=512)
    parser.add_argument("--num-points", type=POSITIVE_INT, default=100_000, help="template Gaussians (100000)")
    parser.add_argument("--batch-sizes", type=POSITIVE_INT, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--iters", type=POSITIVE_INT, default=30)
    parser.add_argument("--warmup", type=NON_NEGATIVE_INT, default=5)
    parser.add_argument("--no-tf32", action="store_true", help="float32 matmuls and convolutions without TF32")
    parser.add_argument("--json", type=Path, default=None)


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
