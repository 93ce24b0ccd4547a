"""GenHead speed: ours against the official generator, same weights, same inputs, same GPU, one run.

    python scripts/bench_genhead.py --official /path/to/Portrait-4D --extra-path DEPS --device cuda \
        [--pytorch3d-src DIR --pytorch3d-build DIR] [--iters 10] [--breakdown | --breakdown-only] [--json out.json]

The official generator is built and loaded into ours exactly as ``scripts/compare_official_genhead.py`` does
(random weights, the synthetic FLAME stand-in; timings do not depend on weight values, and the stand-in's
simplified mesh and vertex counts are smaller than FLAME's, which the table states). pytorch3d: its own kernels
through ``scripts/pytorch3d_kernels`` when ``--pytorch3d-src`` is given, else the Python stand-ins of the
comparison script (then the official row is not upstream's speed, and the table says so).

Rows (median over ``--iters`` timed iterations after warm-up; CUDA synchronised):

* ``sample 512, batch 1``: mapping + synthesis at 64^2 with super-resolution to 512^2 (``gen_images_genhead.py``);
* ``v1 data step, 12 images``: Portrait4D v1's per-GPU GenHead work per training step (4 subjects x 3 views):
  mapping + synthesis of 12 images + the uv map and landmarks (``gen_data_by_G_syn`` without PD-FGC, which is
  the same network on both sides), reported as images/s and triples/s.

``--breakdown`` then times ours stage by stage (each stage alone, given its inputs; fused fields on CUDA) at
batches 1 and 12: mapping, the part masks, the tri-plane synthesis, the background, the part deformation set-up,
the part render, the super-resolution, the uv map, and the whole ``sample`` (``--breakdown-batches`` to choose).

Official rows run upstream's code as it is (fp32, stochastic sampling); ours run :class:`GenHead` in eval mode
(deterministic sampling: the same work), fp32, on CUDA also with ``enable_fast_inference('ieee')`` (the part and
face fields through the fused Triton field kernel), and with ``--bf16`` also under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def _time(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_row(name: str, batch: int, official: torch.nn.Module, ours: torch.nn.Module, device: torch.device,
              iters: int, bf16: bool) -> list[dict]:
    """Time one row: the official generator, ours in fp32 (and under bf16 autocast), same inputs."""
    import compare_official_genhead as cmp

    x = {k: v.to(device) for k, v in cmp.make_inputs(batch, 1).items()}
    flame = (x["shape"], x["exp"], x["pose"], x["eye"])
    c_cond = torch.cat([x["camera"], x["shape"]], dim=-1)
    with_uv = batch > 1

    @torch.no_grad()
    def run_official() -> None:
        ws = official.mapping(x["z"], c_cond, truncation_psi=0.95, truncation_cutoff=14)
        official.synthesis(ws, x["z"], x["camera"], official._deformer(*flame), neural_rendering_resolution=64,
                           noise_mode="const", smpl_param=flame)
        if with_uv:
            official.deformer.renderer(*flame, x["camera"], half_size=256)

    @torch.no_grad()
    def run_ours() -> None:
        ours.sample(x["z"], *flame, x["camera"], truncation_psi=0.95, truncation_cutoff=14)
        if with_uv:
            ours.uv_map(x["camera"], *flame)

    def run_ours_bf16() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            run_ours()

    def run_ours_fused() -> None:
        ours.enable_fast_inference("ieee")
        try:
            run_ours()
        finally:
            ours.disable_fast_inference()

    variants = [("official fp32", run_official), ("ours fp32", run_ours)]
    if device.type == "cuda":
        variants.append(("ours fp32, fused fields", run_ours_fused))
    if bf16:
        variants.append(("ours bf16 autocast", run_ours_bf16))
    rows, base = [], None
    for label, fn in variants:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sec = _time(fn, device, iters)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        base = sec if base is None else base
        rows.append({"row": name, "variant": label, "ms": 1e3 * sec, "images_per_s": batch / sec,
                     "triples_per_s": batch / 3 / sec if batch > 1 else None, "speedup": base / sec,
                     "peak_gib": mem})
    return rows


def stage_calls(ours: torch.nn.Module, x: dict[str, torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The stages of ``ours.sample`` (+ the uv map) as separate calls, each given its inputs computed once here:
    where a GenHead frame's time goes."""
    from avatar.models.genhead.rendering import render_parts
    from avatar.render.camera import camera_z, split_label
    from avatar.render.rays import sample_rays

    flame = (x["shape"], x["exp"], x["pose"], x["eye"])
    cam = x["camera"]
    nr = ours.config.neural_rendering_resolution
    b = cam.shape[0]
    ws = ours.mapping(x["z"], cam, x["shape"], 0.95, 14)
    masks = ours.render_masks(cam, *flame)
    planes = ours.triplanes(ws)
    deform = ours.part_deformation(*flame)
    cam2world, intrinsics = split_label(cam)
    origins, directions = sample_rays(cam2world, intrinsics, nr)
    eye, mouth = masks.eye[:, 0].reshape(b, -1, 1), masks.mouth[:, 0].reshape(b, -1, 1)

    def render() -> object:
        return render_parts(ours.renderer, planes, ours.decoder, deform, origins, directions, camera_z(cam2world),
                            eye, mouth, fused=ours._fused(planes))

    out = ours.sample(x["z"], *flame, cam, truncation_psi=0.95, truncation_cutoff=14)
    return {
        "mapping": lambda: ours.mapping(x["z"], cam, x["shape"], 0.95, 14),
        "part masks (FLAME + rasteriser)": lambda: ours.render_masks(cam, *flame),
        "tri-planes (StyleGAN2 synthesis)": lambda: ours.triplanes(ws),
        "background generator": lambda: ours.background(x["z"], None, noise_mode="const"),
        "part deformation set-up (FLAME meshes, head-pose grids)": lambda: ours.part_deformation(*flame),
        "part render (deformation + fields + compositing)": render,
        "super-resolution": lambda: ours.superresolution(out.image_raw, out.features, ws, noise_mode="const"),
        "uv map + landmarks": lambda: ours.uv_map(cam, *flame),
        "all of sample": lambda: ours.sample(x["z"], *flame, cam, truncation_psi=0.95, truncation_cutoff=14),
    }


def breakdown(ours: torch.nn.Module, batch: int, device: torch.device, iters: int) -> list[dict]:
    """Median ms of each stage of ours (fused fields on CUDA), one at a time, at ``batch``."""
    import compare_official_genhead as cmp

    x = {k: v.to(device) for k, v in cmp.make_inputs(batch, 1).items()}
    if device.type == "cuda":
        ours.enable_fast_inference("ieee")
    rows = []
    print(f"\nours, stage by stage at batch {batch} (each timed alone; median ms):", flush=True)
    try:
        with torch.no_grad():
            for name, fn in stage_calls(ours, x).items():
                rows.append({"batch": batch, "stage": name, "ms": 1e3 * _time(fn, device, iters)})
                print(f"{name:58s} {rows[-1]['ms']:9.2f}", flush=True)
    finally:
        ours.disable_fast_inference()
    return rows


def main(argv: list[str] | None = None) -> int:
    import compare_official_genhead as cmp

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--extra-path", action="append", default=[])
    parser.add_argument("--pytorch3d-src", type=Path, default=None)
    parser.add_argument("--pytorch3d-build", type=Path, default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also time ours under bf16 autocast")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time ours stage by stage (fused fields on CUDA) at --breakdown-batches")
    parser.add_argument("--breakdown-only", action="store_true",
                        help="only the stage breakdown (no official rows: a quick check, e.g. on a CPU)")
    parser.add_argument("--breakdown-batches", type=int, nargs="+", default=[1, 12])
    args = parser.parse_args(argv)
    for p in args.extra_path:
        sys.path.insert(0, p)
    real_p3d = args.pytorch3d_src is not None
    if real_p3d:
        from pytorch3d_kernels import p3d_shim

        p3d_shim.install(sys.modules, source=args.pytorch3d_src, build=args.pytorch3d_build)
    official_cls = cmp.import_official(args.official.resolve(), stand_ins=not real_p3d)

    from avatar.flame.synthetic import synthetic_genhead_assets
    from avatar.hub.convert import convert_file
    from avatar.models.genhead import GenHead

    device = torch.device(args.device)
    assets = synthetic_genhead_assets(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cmp.write_flame_files(Path(tmp) / "flame", assets)
        official = official_cls(**cmp.official_init_kwargs(cfg, args.small)).eval().requires_grad_(False)
        cmp.randomize(official, 0)
        pkl = Path(tmp) / "g.pkl"
        import pickle

        with open(pkl, "wb") as f:
            pickle.dump({"G_ema": official, "training_set_kwargs": {}}, f)
        ours = GenHead.from_official(convert_file(pkl, Path(tmp) / "c").weights, flame_masks=assets["masks"])
    official, ours = official.to(device), ours.to(device).eval()
    import compare_official_portrait4d

    cuda_ops = compare_official_portrait4d.official_cuda_ops(device)  # upstream's bias_act/upfirdn2d, or its ref ops

    rows = []
    for name, batch in (("sample 512, batch 1", 1), ("v1 data step, 12 images", 12)):
        if not args.breakdown_only:
            rows += bench_row(name, batch, official, ours, device, args.iters, args.bf16)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"GenHead on {gpu}; pytorch3d on the official side: {'its own kernels' if real_p3d else 'Python stand-ins'}"
          f"; networks {'--small' if args.small else 'official size'}; synthetic FLAME stand-in "
          f"({len(assets['generic_model']['v_template'])} vertices); upstream's CUDA extensions built: {cuda_ops}\n")
    print(f"{'row':26s} {'variant':20s} {'ms':>9s} {'images/s':>9s} {'triples/s':>10s} {'x official':>10s} {'GiB':>6s}")
    for r in rows:
        tri = f"{r['triples_per_s']:10.1f}" if r["triples_per_s"] else f"{'':10s}"
        print(f"{r['row']:26s} {r['variant']:20s} {r['ms']:9.1f} {r['images_per_s']:9.1f} {tri} "
              f"{r['speedup']:10.2f} {r['peak_gib']:6.2f}")
    stages = []
    if args.breakdown or args.breakdown_only:
        for batch in args.breakdown_batches:
            stages += breakdown(ours, batch, device, args.iters)
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "real_pytorch3d": real_p3d, "official_cuda_ops": cuda_ops,
                                         "rows": rows, "stages": stages}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
