"""Speed and memory of GOHA's reenactment: the official ``Model`` against ours, same weights, same GPU, one run.

    python -m avatar.bench goha [--device cuda] [--frames 64] [--batch-sizes 1 8] [--dtypes fp32 bf16] [--tf32 [off|conv|all]]
        [--fused off ieee tf32] [--cuda-graphs off on]
        [--sr-modconv fused input] [--lifting cdist triton] [--sr-frames all 1 2] [--memory-cap-gib G]
        [--breakdown] [--cudnn-benchmark] [--official GOHA_CHECKOUT --extra-path DEPS] [--tiny]

Rows:

* ``official fp32`` (with ``--official``): the official ``Model.forward(data, mode='full_rec_tar')`` built from an
  NVlabs/GOHA checkout with random weights, exactly as ``scripts/compare_official_goha.py`` builds it (its
  stochastic sampling and GFPGAN noise fixed, the nvdiffrast pseudo-render replaced by one fixed render); batch 1
  (the official ``get_sudo`` is only correct for batch 1). It recomputes the source's branches for every frame, as
  the official demo and ``test_celeba_cross.py`` do. Our model loads the same weights from a file in the official
  checkpoint format, so every row's difference is measured against the official output;
* ``ours <dtype>, source cached``: :meth:`GOHA.encode_source` once, then :meth:`GOHA.reenact` per batch of driving
  frames, given the same pseudo-render (the 3DMM pseudo-render - Deep3D + rasteriser - is left out of every row,
  official included); ``bf16`` runs under CUDA bf16 autocast;
* ``ours <dtype> + fused <precision>, source cached`` (``--fused ieee tf32``): the same with
  :meth:`GOHA.enable_fast_inference` (the fused Triton volume renderer, the CUDA lifting chunk);
* ``... + Triton lifting`` (``--lifting triton``): ``enable_fast_inference(fused_lifting=True)``, the
  nearest-point lifting by a Triton kernel instead of the chunked ``cdist``;
* ``... + SR input modulation`` (``--sr-modconv input``): ``enable_fast_inference(sr_fused_modconv=False)``, the
  super-resolution's modulated convolutions as one shared-weight convolution over the batch;
* ``... + SR N frames a call`` (``--sr-frames N``): ``enable_fast_inference(sr_frames=N)``, the super-resolution
  over at most N frames at a time, so that its activations stop growing with the batch;
* ``... + CUDA graphs`` (``--cuda-graphs on``): the per-frame work replayed from a CUDA graph
  (``enable_fast_inference(cuda_graphs=True)``; the first call of each batch size captures it, before the timed
  calls; a failed capture is logged and the row is then eager);
* ``... + engines chosen under G GiB`` (``--memory-cap-gib G``, CUDA): before the row is timed, one call with the
  process capped at G GiB (:func:`avatar.bench.memory_cap.engines_under_cap`), so that the convolution engines
  cuDNN caches have workspaces that fit; the timed calls run without the cap. The choice is cached per
  convolution shape for the whole process, so a shape an earlier row already ran keeps that row's engine: the
  official row runs first and uncapped, and shares its batch-1 shapes with ours at batch 1 (GFPGAN, the SegFormer
  branches, BiSeNet), so only our rows at other batch sizes are chosen entirely under the cap (and the
  super-resolution of ``--sr-frames 1`` rows runs at those batch-1 shapes: ``memory_goha.py``, which runs no
  official model, gives the clean picture);
* ``ours fp32, encode + reenact``: both per frame, the official's amount of work.

``--breakdown`` then times the stages of the per-frame work one by one (eager, first ``--fused`` setting, the
Triton lifting if ``--lifting`` names it, each ``--dtypes`` entry, the largest batch or ``--breakdown-batch``): median ms per frame and the peak memory each stage adds above what is
allocated when it starts (activations, cuDNN workspaces), to show where time and memory go.

Per-frame time is the median over timed iterations of (iteration time / batch). Peak memory is
``torch.cuda.max_memory_allocated`` during that row (weights included). Differences are max abs over the SR image
(``high_res``, 512) and the 224 render (``rgb_low_res``) against the official output of the same frame; the SR is
also given relative to the official SR's max abs value, since random GFPGAN weights give outputs far above 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from avatar.bench.memory_cap import engines_under_cap
from avatar.bench.timing import fmt as _fmt
from avatar.bench.timing import time_calls as _time
from avatar.errors import InputError

FRONT = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0]


@dataclass
class Row:
    path: str
    batch: int
    ms_per_frame: float
    fps: float
    peak_mem_gib: float | None
    sr_max_abs_diff: float | None = None
    sr_rel_diff: float | None = None
    render_max_abs_diff: float | None = None
    iterations: int = 0


def cameras(n: int, device: torch.device) -> torch.Tensor:
    """``n`` GOHA (EG3D) cameras on the toolkit's orbit (:func:`avatar.render.camera.orbit_labels` mapped by
    :func:`avatar.pipelines.goha.goha_cameras`, as ``GOHAPipeline.render_views`` does)."""
    from avatar.pipelines.goha import goha_cameras
    from avatar.render.camera import orbit_labels

    return goha_cameras(orbit_labels(n)).to(device)


def smooth_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random images in [-1, 1] with the background at -1 outside an ellipse (a matted crop)."""
    low = torch.rand(n, 3, 9, 9, generator=gen) * 2 - 1
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return img.masked_fill(((xx / 0.75) ** 2 + (yy / 0.9) ** 2 > 1).expand_as(img), -1.0)


def build_models(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """Our GOHA and (with ``--official``) the official Model with the same random weights."""
    from avatar.models.goha import GOHA, GOHAConfig

    if args.official is None:
        model = GOHA.tiny() if args.tiny else GOHA(GOHAConfig())
        return None, model.to(device).eval()
    if args.tiny:
        raise InputError("--official times the released size: drop --tiny")
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    if not (scripts / "compare_official_goha.py").is_file():
        raise InputError(f"--official needs this repository's scripts/ folder ({scripts} not found)")
    for extra in reversed(args.extra_path):
        sys.path.insert(0, str(extra))
    sys.path.insert(0, str(scripts))
    import compare_official_goha as cmp

    official = cmp.build_official(args.official.resolve(), torch.Generator().manual_seed(0))
    cmp.make_deterministic(official)
    deep3d = {f"net_recon.{k}": v for k, v in GOHA(GOHAConfig()).exp_loss_fn.net_recon.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint825000.ckpt"
        torch.save({"iter": cmp.ITERATION, "model_state_dict": official.state_dict()}, path)
        ours = GOHA.from_official(path, deep3d=deep3d)
    return (cmp, official.to(device).eval()), ours.to(device).eval()


def run(args: argparse.Namespace) -> list[Row]:
    """The rows; gradients off, TF32 and cuDNN autotuning as asked while it runs, restored after (the caller's
    settings)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    try:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "all"
        torch.backends.cudnn.allow_tf32 = args.tf32 in ("conv", "all")
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        with torch.no_grad():
            return _run(args)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def _run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA device is visible; use --device cpu")
    official, model = build_models(args, device)
    c = model.config
    gen = torch.Generator().manual_seed(1)
    s = c.image_size
    src_img = smooth_images(1, s, gen).to(device)
    drive_img = smooth_images(1, s, gen).to(device)
    pseudo = smooth_images(1, s, gen).to(device)  # one pseudo-render for every frame (see the docstring)
    cams = cameras(max(*args.batch_sizes, args.breakdown_batch or 0) * 2, device)
    src_cam = torch.tensor([FRONT], device=device)
    iters = args.frames if device.type == "cuda" else max(1, min(args.frames, 2))
    rows: list[Row] = []

    def peak_reset() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def peak() -> float | None:
        return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    ref_image = ref_raw = None
    if official is not None:
        cmp, off = official
        cmp.FixedPseudoRender.sudo = F.interpolate(pseudo, size=(224, 224), mode="bilinear",
                                                   align_corners=False)
        data = {"img_src": src_img, "pose_src": src_cam, "img_target": drive_img, "pose_target": cams[:1]}

        def official_frame() -> dict:
            return off(data, mode="full_rec_tar", iteration=cmp.ITERATION, exp_transfer=True)

        peak_reset()
        # the official row gets more warm-up and calls than ours: its median moved from 165 to 97 ms between two
        # H100 machine starts with 8 calls after 2 warm-ups (docs/goha/README.md)
        times = _time(official_frame, device, max(1, iters // 2), args.warmup + 3)
        ms = statistics.median(times) * 1e3
        rows.append(Row("official fp32, per frame (forward)", 1, ms, 1e3 / ms, peak(), iterations=len(times)))
        ref = official_frame()
        ref_image, ref_raw = ref["high_res"].float(), ref["rgb_low_res"].float()
        off.cpu()
        del off
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # our model loads the official pseudo-render resized as the official get_expr_plane does
        pseudo = F.interpolate(cmp.FixedPseudoRender.sudo, size=(s, s), mode="bilinear", align_corners=False)

    def diffs(out: Any) -> tuple[float | None, float | None, float | None]:
        if ref_image is None:
            return None, None, None
        sr = (out.image[:1].float() - ref_image).abs().max().item()
        return sr, sr / max(ref_image.abs().max().item(), 1e-12), (out.image_raw[:1].float() - ref_raw).abs().max().item()

    combos = [(dtype, fused, graphs == "on", modconv, lifting, None if sr_frames == "all" else int(sr_frames))
              for fused in args.fused for graphs in args.cuda_graphs for modconv in args.sr_modconv
              for lifting in args.lifting for sr_frames in args.sr_frames for dtype in args.dtypes]
    for dtype, fused, graphs, modconv, lifting, sr_frames in combos:
        reference = fused == "off" and not graphs and modconv == "fused" and sr_frames is None
        if reference:
            model.disable_fast_inference()
        else:
            model.enable_fast_inference(None if fused == "off" else fused, cuda_graphs=graphs,
                                        sr_fused_modconv=modconv == "fused", fused_lifting=lifting == "triton",
                                        sr_frames=sr_frames)
        name = (f"ours {dtype}" + ("" if fused == "off" else f" + fused {fused}")
                + ("" if modconv == "fused" else " + SR input modulation")
                + ("" if sr_frames is None else f" + SR {sr_frames} frame{'s' if sr_frames > 1 else ''} a call")
                + (" + Triton lifting" if model._lift_fused(device) else "")
                + (" + CUDA graphs" if graphs and device.type == "cuda" else ""))
        source = model.encode_source(src_img, src_cam, with_coefficients=False)
        for b in args.batch_sizes:
            src_b = source.expand(b)
            cam_b = cams[:b]
            pseudo_b = pseudo.expand(b, -1, -1, -1)

            def frame(src_b: Any = src_b, cam_b: torch.Tensor = cam_b, pseudo_b: torch.Tensor = pseudo_b,
                      bf16: bool = dtype == "bf16") -> Any:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    return model.reenact(src_b, cam_b, pseudo_render=pseudo_b)

            capped = args.memory_cap_gib is not None and device.type == "cuda"
            if capped and engines_under_cap(frame, device, args.memory_cap_gib) is None:
                print(f"{name}, batch {b}: does not fit under {args.memory_cap_gib} GiB; no row", flush=True)
                continue
            peak_reset()
            times = _time(frame, device, max(1, iters // b), args.warmup)
            ms = statistics.median(times) * 1e3 / b
            sr, rel, raw = diffs(frame())
            label = (name + (" (capture failed: eager)" if graphs and model._graphs.failed else "")
                     + (f" + engines chosen under {args.memory_cap_gib:g} GiB" if capped else ""))
            rows.append(Row(f"{label}, source cached", b, ms, 1e3 / ms, peak(), sr, rel, raw, len(times)))
    if args.breakdown:
        breakdown(model, model.encode_source(src_img, src_cam, with_coefficients=False), cams, pseudo, args,
                  device, iters)
    model.disable_fast_inference()

    def full_frame() -> Any:
        src = model.encode_source(src_img, src_cam, with_coefficients=False)
        return model.reenact(src, cams[:1], pseudo_render=pseudo)

    peak_reset()
    times = _time(full_frame, device, max(1, iters // 4), args.warmup)
    ms = statistics.median(times) * 1e3
    sr, rel, raw = diffs(full_frame())
    rows.append(Row("ours fp32, encode + reenact per frame", 1, ms, 1e3 / ms, peak(), sr, rel, raw, len(times)))
    return rows


def stage_calls(model: Any, src: Any, cam: torch.Tensor, pseudo: torch.Tensor) -> dict[str, Any]:
    """The stages of :meth:`GOHA._reenact_frames` as separate calls, each given its inputs computed once here
    (under the caller's autocast), and the whole call last."""
    from avatar.models.goha.planes import depth_to_points, lift_features, sum_planes
    from avatar.render.camera import split_label

    c = model.config
    expression = model.expression_plane(pseudo)
    base = sum_planes(src.canonical_plane, expression)
    feats, depth = model.render(base, src.camera, c.cano_render_resolution)
    pixel_values = model.appearance_pixels(src, feats)
    id_features = model.id_net(pixel_values, fold_head=model._fast_forms())
    points = depth_to_points(*split_label(src.camera), depth)
    chunk = model._lift_chunk(cam.device)
    fused = model._lift_fused(cam.device)
    lifted = lift_features(points, id_features, model.uv, chunk, fused=fused)
    plane = sum_planes(src.canonical_plane, expression, model.id_upsampler(lifted, model._fast_forms()))
    rgb = model.render(plane, cam)[0][:, :3]
    return {
        "expression branch (expr_net + embedding2expr)": lambda: model.expression_plane(pseudo),
        f"render at the source camera ({c.cano_render_resolution}^2)":
            lambda: model.render(base, src.camera, c.cano_render_resolution),
        "id_net input (BiSeNet parsing of that render, blend)": lambda: model.appearance_pixels(src, feats),
        "appearance encoder (id_net)": lambda: model.id_net(pixel_values, fold_head=model._fast_forms()),
        "nearest-point lifting" + (" (Triton)" if fused else f" (cdist, {chunk} cells a block)"):
            lambda: lift_features(points, id_features, model.uv, chunk, fused=fused),
        "IDUpsampler": lambda: model.id_upsampler(lifted, model._fast_forms()),
        f"final render ({c.render_resolution}^2)": lambda: model.render(plane, cam),
        "super-resolution (GFPGANv1Clean)": lambda: model.neural_layers(rgb, noise_mode="const"),
        "super-resolution, modulation on the inputs": lambda: model.neural_layers(rgb, noise_mode="const",
                                                                                 fused_modconv=False),
        "super-resolution, one frame a call": lambda: model._super_resolve(rgb, True, frames=1),
        "all of reenact (eager)": lambda: model.reenact(src, cam, pseudo_render=pseudo),
    }


def breakdown(model: Any, source: Any, cams: torch.Tensor, pseudo: torch.Tensor, args: argparse.Namespace,
              device: torch.device, iters: int) -> None:
    """Print, per dtype, each stage of :meth:`GOHA._reenact_frames` timed alone at the largest batch: median ms per
    frame and the peak memory it adds (GiB above the memory allocated before the stage; CUDA only)."""
    fused = args.fused[0]
    if fused == "off" and "triton" not in args.lifting:
        model.disable_fast_inference()
    else:  # the Triton lifting whenever --lifting names it
        model.enable_fast_inference(None if fused == "off" else fused, fused_lifting="triton" in args.lifting)
    b = args.breakdown_batch or max(args.batch_sizes)
    src = source.expand(b)
    for dtype in args.dtypes:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            stages = stage_calls(model, src, cams[:b], pseudo.expand(b, -1, -1, -1))
            print(f"\nstage breakdown ({dtype}, renderer {fused}, batch {b}):\n"
                  "| stage | ms / frame | added peak GiB |\n|---|---|---|")
            for name, fn in stages.items():
                before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                ms = statistics.median(_time(fn, device, max(2, iters // b), 1)) / b * 1e3
                added = (torch.cuda.max_memory_allocated(device) - before) / 2**30 if device.type == "cuda" else None
                print(f"| {name} | {ms:.2f} | {_fmt(added, '.2f')} |", flush=True)
            del stages


def format_table(rows: list[Row]) -> str:
    lines = ["| path | batch | ms / frame | frames/s | peak GPU mem (GiB) | SR max abs diff | SR rel diff "
             "| 224 render max abs diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.path} | {r.batch} | {r.ms_per_frame:.2f} | {r.fps:.1f} | {_fmt(r.peak_mem_gib, '.2f')} "
                     f"| {_fmt(r.sr_max_abs_diff, '.2e')} | {_fmt(r.sr_rel_diff, '.2e')} "
                     f"| {_fmt(r.render_max_abs_diff, '.2e')} |")
    base = next((r for r in rows if r.path.startswith("official")), None)
    if base is not None:
        lines.append("")
        for r in rows[1:]:
            mem = "" if not (r.peak_mem_gib and base.peak_mem_gib) else \
                f", peak memory {r.peak_mem_gib / base.peak_mem_gib:.2f}x the official's"
            lines.append(f"{r.path} (batch {r.batch}): {base.ms_per_frame / r.ms_per_frame:.2f}x the official "
                         f"frames/s{mem}")
    return "\n".join(lines)


def _sr_frames(text: str) -> str:
    """``--sr-frames`` values: ``all`` or a positive number of frames."""
    if text == "all" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected 'all' or a positive number of frames, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avatar.cli import NON_NEGATIVE_INT, POSITIVE_INT

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random config (smoke test, no --official)")
    parser.add_argument("--frames", type=POSITIVE_INT, default=64, help="driving frames timed per row (GPU)")
    parser.add_argument("--warmup", type=NON_NEGATIVE_INT, default=2)
    parser.add_argument("--batch-sizes", type=POSITIVE_INT, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--fused", nargs="+", choices=["off", "ieee", "tf32"], default=["off"],
                        help="our volume renderer: PyTorch ('off') and/or the fused Triton kernels (CUDA), one row "
                             "set each")
    parser.add_argument("--cuda-graphs", nargs="+", choices=["on", "off"], default=["off"],
                        help="replay reenact()'s per-frame work from CUDA graphs ('on') and/or not ('off', "
                             "GOHA.enable_fast_inference's default), one row set each")
    parser.add_argument("--sr-modconv", nargs="+", choices=["fused", "input"], default=["fused"],
                        help="super-resolution modulated convolutions: upstream's grouped per-sample weights "
                             "('fused') and/or the modulation on the inputs ('input'), one row set each")
    parser.add_argument("--sr-frames", nargs="+", type=_sr_frames, default=["all"],
                        help="fast rows' frames per super-resolution call: 'all' (the batch, default) and/or a "
                             "number (enable_fast_inference(sr_frames=N)), one row set each")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="CUDA: before timing each of our rows, one call with the process capped at this many "
                             "GiB, so that cuDNN's cached convolution engines have workspaces that fit "
                             "(avatar.bench.memory_cap); a row whose call does not fit is left out")
    parser.add_argument("--lifting", nargs="+", choices=["cdist", "triton"], default=["triton"],
                        help="fast rows' nearest-point lifting: the Triton kernel (default, as "
                             "enable_fast_inference) or the chunked cdist")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the per-frame stages one by one (ms and added peak memory)")
    parser.add_argument("--breakdown-batch", type=POSITIVE_INT, default=None,
                        help="batch of --breakdown (default: the largest of --batch-sizes)")
    parser.add_argument("--tf32", nargs="?", choices=["off", "conv", "all"], default="off", const="all",
                        help="TF32 for both sides: off (default: float32 convolutions and matmuls), conv (PyTorch's "
                             "own default, which the official code runs under: cuDNN convolutions in TF32, matmuls "
                             "in float32), all (--tf32 alone: convolutions and matmuls)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its convolution algorithms per shape (torch.backends.cudnn.benchmark; "
                             "every row, official included)")
    parser.add_argument("--official", type=Path, metavar="CHECKOUT",
                        help="an NVlabs/GOHA checkout: time the official Model in the same run (same weights)")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="sys.path entry for the official code's dependencies (transformers 4.x, kornia 0.5.5)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    rows = run(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"GOHA reenactment on {name} (torch {torch.__version__}, TF32 {args.tf32})")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0
