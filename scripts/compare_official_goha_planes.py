"""Side-by-side check of GOHA's plane networks and appearance lifting against the official code (CPU, float32).

    python scripts/compare_official_goha_planes.py --official /path/to/GOHA [--measure]

``--official`` is an extracted NVlabs/GOHA checkout (the folder holding ``src/``; never part of this repository).
It compares, on the same random weights (copied through the official state-dict names) and the same inputs:

* ``Embed2Plane(256, 96)`` (``embedding2neutral.`` / ``embedding2expr.``), ``IDUpsampler(256, 32)``
  (``id_upsampler.``) and ``IDUpsampler(96, 32)`` (``expr_upsampler.``) with our modules;
* ``OSGDecoder`` (``decoder.``) with :class:`avatar.render.triplane.TriplaneNeRFDecoder` loaded through
  :func:`avatar.models.goha.planes.osg_decoder_state_from_official`;
* ``Model.depth2pcd`` (official ``RaySampler``) with :func:`~avatar.models.goha.planes.depth_to_points`;
* ``Model.construct_planes`` (full ``torch.cdist``) with the chunked :func:`~avatar.models.goha.planes.lift_features`
  (index mismatches counted), for batch 1 and 2, on a sphere-plus-background point cloud seen by an EG3D camera;
* the appearance chain ``construct_planes -> id_upsampler`` and the plane sum.

Only ``Model.depth2pcd`` and ``Model.construct_planes`` of ``model_s2.py`` are called (on a stand-in ``self``), so the
modules it imports but these two do not need (SegFormer, kornia, BiSeNet, GFPGAN, Deep3D) are stubbed.
``--measure`` also runs the official and our lifting at the released size in fresh processes and prints their
time and peak resident memory.

Exit status 0 when every difference is below ``--tol`` (1e-5), 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from avatar.models.goha.planes import (  # noqa: E402
    Embed2Plane,
    GOHAPlanesConfig,
    IDUpsampler,
    depth_to_points,
    lift_features,
    lifting_grid,
    make_osg_decoder,
    nearest_point_indices,
    osg_decoder_state_from_official,
    project_to_plane,
    sum_planes,
)

INTRINSICS = [[4.2647, 0.0, 0.5], [0.0, 4.2647, 0.5], [0.0, 0.0, 1.0]]


from compare_official_portrait4d import _stub  # noqa: E402  (one module stub for every comparison script)


def import_official(checkout: Path) -> tuple[Any, Any, Any]:
    """``(networks module, model_s2.Model, RaySampler)`` from the checkout, unneeded imports stubbed."""
    src = checkout / "src" if (checkout / "src").is_dir() else checkout
    if not (src / "models" / "networks.py").is_file() or not (src / "models" / "model_s2.py").is_file():
        raise SystemExit(f"{checkout} is not a GOHA checkout (src/models/networks.py, model_s2.py missing)")
    sys.path.insert(0, str(src))
    if "requests" not in sys.modules:  # imported by the official dnnlib, used for URLs only
        try:
            import requests  # noqa: F401
        except ImportError:
            _stub("requests")
    _stub("kornia")
    _stub("kornia.morphology")
    sys.modules["kornia"].morphology = sys.modules["kornia.morphology"]  # type: ignore[attr-defined]
    _stub("transformers", SegformerForSemanticSegmentation=object)
    _stub("models.BiSeNet", BiSeNet=object)
    _stub("losses")
    _stub("losses.threeDMM", ExpLoss=object)
    _stub("GFPGAN")
    _stub("GFPGAN.GFPUpsampler", GFPUpsampler=object)
    import models.networks as networks
    from models.model_s2 import Model
    from models.volumetric_rendering.ray_sampler import RaySampler

    return networks, Model, RaySampler


@torch.no_grad()
def randomize(module: nn.Module, seed: int) -> None:
    """Random weights of unit-ish scale, so that no layer is negligible."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in) * (1.0 if p.dim() > 1 else 0.1))


def copy_weights(official: nn.Module, ours: nn.Module, convert: Any = None) -> None:
    state = official.state_dict()
    ours.load_state_dict(convert(state) if convert else state, strict=True)


def max_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        raise SystemExit(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).abs().max().item()


def eg3d_cam2world(position: list[float]) -> Tensor:
    """OpenCV cam2world (x right, y down, looks down +z) at ``position`` looking at the origin."""
    p = torch.tensor(position)
    f = -p / p.norm()
    x = torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0]), f)
    x = x / x.norm()
    y = torch.linalg.cross(f, x)
    m = torch.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, f, p
    return m


def scene(ray_sampler: Any, batch: int, resolution: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cameras around the origin and the depth of a noisy sphere (radius 0.3), background at 3.3 like the
    renderer's clamp to the last sample: ``cam2world (B,4,4)``, ``intrinsics (B,3,3)``, ``depth (B,1,R,R)``."""
    gen = torch.Generator().manual_seed(seed)
    cams = []
    for i in range(batch):
        yaw, pitch = 0.35 * (i + 0.3), -0.1 * (i + 1)
        cams.append(eg3d_cam2world([2.7 * math.sin(yaw) * math.cos(pitch), 2.7 * math.sin(pitch),
                                    2.7 * math.cos(yaw) * math.cos(pitch)]))
    cam2world = torch.stack(cams)
    intrinsics = torch.tensor(INTRINSICS).expand(batch, 3, 3).contiguous()
    origins, dirs = ray_sampler(cam2world, intrinsics, resolution)
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - 0.3**2
    disc = b * b - c
    hit = disc > 0
    t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.full_like(b, 3.3))
    t = t + 0.01 * torch.randn(t.shape, generator=gen) * hit
    return cam2world, intrinsics, t.view(batch, 1, resolution, resolution)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, help="extracted NVlabs/GOHA checkout (holding src/)")
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", action="store_true", help="time and peak memory of both liftings")
    parser.add_argument("--_lift", choices=("official", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.official is None:
        parser.print_usage()
        print("error: --official is required", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    networks, Model, RaySampler = import_official(args.official)
    if args._lift:
        return _measure_one(args._lift, Model, RaySampler)

    torch.manual_seed(args.seed)
    cfg = GOHAPlanesConfig()
    n_in, n_planes, res = cfg.feature_channels, cfg.plane_channels, cfg.lift_resolution
    diffs: dict[str, float] = {}

    # ---- Embed2Plane (the official view is fixed to (b, 3, 32, 256, 256)) --------------------------------
    off = networks.Embed2Plane(n_in, 3 * n_planes)
    ours = Embed2Plane(n_in, 3 * n_planes, cfg.embed_channels)
    randomize(off, args.seed + 1)
    copy_weights(off, ours)
    x = torch.randn(1, n_in, res, res)
    diffs["Embed2Plane(256, 96) (B,3,32,256,256)"] = max_diff(off(x), ours(x))

    # ---- IDUpsampler (the official resize is fixed to 256x256) -------------------------------------------
    for name, c_in in (("id_upsampler", n_in), ("expr_upsampler", cfg.expression_upsampler_channels)):
        off = networks.IDUpsampler(c_in, n_planes)
        ours = IDUpsampler(c_in, n_planes, cfg.upsampler_hidden)
        randomize(off, args.seed + 2)
        copy_weights(off, ours)
        x = torch.randn(2, 3, c_in, res, res)
        diffs[f"{name} IDUpsampler({c_in}, {n_planes})"] = max_diff(off(x), ours(x))

    # ---- OSGDecoder vs TriplaneNeRFDecoder --------------------------------------------------------------
    off_dec = networks.OSGDecoder(n_planes, {"decoder_lr_mul": cfg.decoder_lr_multiplier,
                                             "decoder_output_dim": n_planes})
    our_dec = make_osg_decoder(cfg)
    randomize(off_dec, args.seed + 3)
    copy_weights(off_dec, our_dec, osg_decoder_state_from_official)
    feats = torch.randn(2, 3, 5000, n_planes)
    dirs = torch.randn(2, 5000, 3)
    o, u = off_dec(feats, dirs), our_dec(feats, dirs)
    diffs["OSGDecoder rgb"] = max_diff(o["rgb"], u.rgb)
    diffs["OSGDecoder sigma"] = max_diff(o["sigma"], u.sigma)

    # ---- depth2pcd and construct_planes (the official Model methods on a stand-in self) ------------------
    lift_res = 128  # construct_planes hard-codes the 128x128 grid
    self_ = types.SimpleNamespace(ray_sampler=RaySampler(), uv=lifting_grid(lift_res))
    grid = lifting_grid(lift_res)
    for batch in (1, 2):
        cam2world, intrinsics, depth = scene(self_.ray_sampler, batch, lift_res, args.seed + 4)
        pcd_off = Model.depth2pcd(self_, cam2world, intrinsics, depth)
        pcd_our = depth_to_points(cam2world, intrinsics, depth)
        diffs[f"depth2pcd B={batch}"] = max_diff(pcd_off, pcd_our)
        features = torch.randn(batch, n_in, lift_res, lift_res)
        t0 = time.perf_counter()
        planes_off = Model.construct_planes(self_, pcd_off, features)
        t1 = time.perf_counter()
        planes_our = lift_features(pcd_off, features, grid)
        t2 = time.perf_counter()
        diffs[f"construct_planes B={batch} (B,3,{n_in},128,128)"] = max_diff(planes_off, planes_our)
        mism, rounding = 0, 0
        for p in range(3):
            pts = project_to_plane(pcd_off, p)
            ref = torch.cdist(self_.uv.repeat(batch, 1, 1), pts.squeeze()).argmin(-1)
            idx = nearest_point_indices(grid, pts)
            mism += int((ref != idx).sum())
            exact = torch.cdist(grid.double().expand(batch, -1, -1), pts.double(),
                                compute_mode="donot_use_mm_for_euclid_dist").argmin(-1)
            rounding += int((exact != ref).sum())
        print(f"lifting B={batch}: index mismatches vs official full cdist: {mism} of {3 * batch * lift_res**2}; "
              f"cells where cdist's float32 rounding picks another point than the exact float64 nearest: "
              f"{rounding}; official {t1 - t0:.2f} s, ours {t2 - t1:.2f} s")
        if mism:
            diffs[f"lifting index mismatches B={batch}"] = float(mism)

        # appearance chain and plane sum (model_s2: construct_planes -> id_upsampler; canonical + expr + app)
        off_up = networks.IDUpsampler(n_in, n_planes)
        our_up = IDUpsampler(n_in, n_planes, cfg.upsampler_hidden)
        randomize(off_up, args.seed + 5)
        copy_weights(off_up, our_up)
        app_official = off_up(planes_off)
        app = our_up(planes_our)
        canonical, expr = torch.randn_like(app), torch.randn_like(app)
        diffs[f"appearance chain + sum B={batch}"] = max_diff(canonical + expr + app_official,
                                                            sum_planes(canonical, expr, app))

    worst = 0.0
    for name, d in diffs.items():
        print(f"{name:55s} max |diff| = {d:.3e}")
        worst = max(worst, d)
    ok = worst < args.tol
    print(f"{'OK' if ok else 'FAIL'}: max difference {worst:.3e} (tolerance {args.tol:g})")

    if args.measure:
        for which in ("official", "ours"):
            out = subprocess.run([sys.executable, __file__, "--official", str(args.official), "--_lift", which],
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip())
    return 0 if ok else 1


def _measure_one(which: str, Model: Any, RaySampler: Any) -> int:
    """Released-size lifting (batch 1, 3 planes of 16384 cells x 16384 points, 256 channels) in this process."""
    self_ = types.SimpleNamespace(ray_sampler=RaySampler(), uv=lifting_grid(128))
    cam2world, intrinsics, depth = scene(self_.ray_sampler, 1, 128, 0)
    pcd = Model.depth2pcd(self_, cam2world, intrinsics, depth)
    features = torch.randn(1, 256, 128, 128)
    before = _reset_peak_rss()
    t0 = time.perf_counter()
    if which == "official":
        Model.construct_planes(self_, pcd, features)
    else:
        lift_features(pcd, features, self_.uv)
    dt = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    print(f"{which:8s} lifting, released size, CPU ({torch.get_num_threads()} threads): {dt:.2f} s, "
          f"peak RSS +{(peak - before) / 1024:.0f} MiB over the {before / 1024:.0f} MiB before it")
    return 0


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the peak-RSS mark (``VmHWM``) to the current RSS (Linux ``clear_refs`` 5); returns the RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


if __name__ == "__main__":
    raise SystemExit(main())
