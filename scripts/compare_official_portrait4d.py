"""Side-by-side check of our Portrait4D port against the official implementation, on CPU, random weights.

    python scripts/compare_official_portrait4d.py --official /path/to/Portrait-4D [--batch 2] [--image-size 512]

What it does:

1. imports the official ``TriPlaneReconstructorNeutralize`` from a checkout of YuDeng/Portrait-4D (never part
   of this repository). pytorch3d is only needed by the official FLAME deformer and mesh renderer, so those
   modules are replaced by an identity stand-in (the network check runs with the deformation off; the
   deformation field has its own brute-force tests in ``tests/test_flame.py``). The official code also
   needs ``segmentation-models-pytorch==0.3.3`` and ``timm`` importable (``pip install --target DIR`` and
   ``--extra-path DIR`` work);
2. builds it with the released checkpoints' ``init_kwargs`` and random weights (every zero-initialised
   tensor perturbed, so each layer matters), pickles ``{'G_ema': G}`` exactly as EG3D's training loop does,
   converts that pickle with ``avatar convert`` (restricted unpickler, no code executed), and loads the
   result with :meth:`avatar.models.portrait4d.Portrait4D.from_official` (strict);
3. renders the same random inputs with both, the official renderer patched to the deterministic sampling
   our inference uses (no stratified jitter, ``det=True`` importance sampling), and prints the max abs
   differences of ``image`` (512, SR), ``image_raw`` (128) and ``depth``, for our reference path and our
   cached ``encode`` + ``render`` path.

Exit status 0 when every difference is below ``--tol`` (1e-4), 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import pickle
import sys
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# init_kwargs of the released checkpoints (train_recon_v1.py / train_recon_v2.py defaults).
OFFICIAL_RENDERING_KWARGS = {
    "image_resolution": 512,
    "disparity_space_sampling": False,
    "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": True,
    "gpc_reg_prob": None,
    "c_scale": 1.0,
    "superresolution_noise_mode": "none",
    "density_reg": 0.0,
    "density_reg_p_dist": 0.004,
    "reg_type": "l1",
    "decoder_lr_mul": 1.0,
    "sr_antialias": True,
    "depth_resolution": 48,
    "depth_resolution_importance": 48,
    "ray_start": "auto-plane",
    "ray_end": "auto-plane",
    "box_warp": 1.3,
    "avg_camera_radius": 1.0,
    "avg_camera_pivot": [0, 0, 0.2],
}


def official_init_kwargs(image_size: int) -> dict:
    return {
        "img_resolution": image_size,
        "mot_dims": 548,
        "w_dim": 512,
        "sr_num_fp16_res": 4,
        "has_background": True,
        "has_superresolution": True,
        "flame_full": True,
        "masked_sampling": False,
        "num_blocks_neutral": 4,
        "num_blocks_motion": 4,
        "motion_map_layers": 2,
        "neural_rendering_resolution": 128,
        "deformation_kwargs": {"flame_cfg_path": "models/FLAME/cfg.yaml", "box_warp": 1.3},
        "rendering_kwargs": dict(OFFICIAL_RENDERING_KWARGS),
        "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only",
                      "use_ws_ones": False},
    }


def _stub(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _IdentityDeformer(nn.Module):
    """Stand-in for the official FLAME deformer (it needs pytorch3d and the FLAME model files)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> dict:
        return {"canonical": x}


def import_official(checkout: Path) -> type:
    """Import ``TriPlaneReconstructorNeutralize`` with pytorch3d-dependent modules stubbed."""
    code = checkout / "portrait4d"
    if not (code / "training" / "reconstructor" / "triplane_reconstruct.py").is_file():
        raise SystemExit(f"{checkout} is not a Portrait-4D checkout (portrait4d/training/reconstructor missing)")
    sys.path.insert(0, str(code))
    if importlib.util.find_spec("requests") is None:  # imported by the official dnnlib, used for URLs only
        sys.modules["requests"] = types.ModuleType("requests")
    for name in ("pytorch3d", "pytorch3d._C", "pytorch3d.structures", "pytorch3d.io", "pytorch3d.ops",
                 "pytorch3d.ops.knn", "pytorch3d.renderer"):
        _stub(name, Meshes=object, Pointclouds=object)
    import training  # noqa: F401  (the package itself)
    import training.deformer  # noqa: F401

    # pickled by reference under the official name, as the real checkpoints are (an inert record on reading)
    _IdentityDeformer.__module__ = "training.deformer.deformation"
    _IdentityDeformer.__qualname__ = _IdentityDeformer.__name__ = "DeformationModuleOnlyHead"
    _stub("training.deformer.deformation", DeformationModule=_IdentityDeformer,
          DeformationModuleOnlyHead=_IdentityDeformer)
    try:
        from training.reconstructor.triplane_reconstruct import TriPlaneReconstructorNeutralize
    except ImportError as exc:
        raise SystemExit(f"cannot import the official reconstructor ({exc}); it needs "
                         "segmentation-models-pytorch==0.3.3, timm and six importable (--extra-path)") from exc
    return TriPlaneReconstructorNeutralize


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> None:
    """Perturb every parameter and ``w_avg`` so no layer is a no-op (the official init zeroes several)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        scale = 0.02 if p.ndim > 1 else 0.05
        if name.startswith("decoder.out_sigma"):
            scale = 0.5
        p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.w_avg.copy_(torch.randn(model.w_avg.shape, generator=gen))


@contextlib.contextmanager
def deterministic_official_renderer(renderer: nn.Module):
    """No stratified jitter and ``det=True`` importance sampling, as our inference renders."""
    stratified, pdf = renderer.sample_stratified, renderer.sample_pdf

    def sample_stratified(*args, **kwargs):
        with mock.patch.object(torch, "rand_like", torch.zeros_like):
            return stratified(*args, **kwargs)

    def sample_pdf(bins, weights, n, det=False, eps=1e-5):
        return pdf(bins, weights, n, det=True, eps=eps)

    renderer.sample_stratified, renderer.sample_pdf = sample_stratified, sample_pdf
    try:
        yield
    finally:
        del renderer.sample_stratified, renderer.sample_pdf


def official_cuda_ops(device: torch.device) -> dict[str, bool]:
    """Build upstream's CUDA extensions (``bias_act``, ``upfirdn2d``; compile log printed in full); where one
    does not build, upstream's own fallback (its reference PyTorch op) is used instead of crashing. Returns which
    built."""
    import torch.utils.cpp_extension
    import torch_utils.custom_ops as custom_ops
    import torch_utils.ops.bias_act as bias_act
    import torch_utils.ops.upfirdn2d as upfirdn2d

    custom_ops.verbosity = "full"
    # upstream imports the built extension by name after `cpp_extension.load`; PyTorch 2's `load` no longer
    # leaves it in sys.modules, so the import fails although the build succeeded: register it
    load = torch.utils.cpp_extension.load

    def load_and_register(*a: object, **k: object) -> object:
        module = load(*a, **k)
        sys.modules.setdefault(k.get("name", a[0] if a else ""), module)
        return module

    torch.utils.cpp_extension.load = load_and_register
    built = {}
    for name, module in (("bias_act", bias_act), ("upfirdn2d", upfirdn2d)):
        try:
            ok = bool(module._init()) if device.type == "cuda" else False
        except Exception as exc:  # noqa: BLE001 - the build's own error is printed above by custom_ops
            cause = exc.__cause__ or exc.__context__
            why = f"{type(exc).__name__}: {exc}" + (f"; caused by {type(cause).__name__}: {cause}" if cause else "")
            print(f"upstream's {name} CUDA extension did not build ({why}); upstream runs its reference op", flush=True)
            ok = False
        if not ok:
            module._init = lambda: False  # upstream's dispatch: `impl == 'cuda' and ... and _init()`
        built[name] = ok
    return built


def make_inputs(batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    from avatar.render.camera import focal_from_fov, lookat_cam2world, make_intrinsics, make_label

    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, size // 32, size // 32, generator=gen) * 2 - 1  # smooth-ish image
    image = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    image = (image + 0.1 * torch.randn(image.shape, generator=gen)).clamp(-1, 1)
    yaw = math.pi / 2 + torch.linspace(-0.4, 0.4, batch)
    pitch = math.pi / 2 + torch.linspace(0.15, -0.1, batch)
    c2w = lookat_cam2world(yaw, pitch, (0.0, 0.01, 0.0), 4.2, batch_size=batch)
    camera = make_label(c2w, make_intrinsics(focal_from_fov(12.0), batch))
    return {
        "image": image,
        "motion_app": torch.randn(batch, 548, generator=gen),
        "motion": torch.randn(batch, 548, generator=gen),
        "camera": camera,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="path to a YuDeng/Portrait-4D checkout")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="extra sys.path entry (e.g. a pip --target folder with segmentation-models-pytorch)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.official is None:
        print("no official checkout given (--official PATH): comparison skipped")
        return 2
    for p in args.extra_path:
        sys.path.insert(0, p)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    official_cls = import_official(args.official.resolve())

    from avatar.hub.convert import convert_file
    from avatar.models.portrait4d import Portrait4D

    torch.manual_seed(args.seed)
    kwargs = official_init_kwargs(args.image_size)
    # E_global's constructor fetches ImageNet ResNet-34 weights; they are overwritten by any checkpoint and
    # by `randomize` here, so the download is skipped.
    with mock.patch("torch.utils.model_zoo.load_url", lambda *a, **k: {}):
        official = official_cls(**kwargs).eval().requires_grad_(False)
    randomize(official, args.seed)
    print(f"official model: {sum(p.numel() for p in official.parameters()) / 1e6:.2f} M parameters, "
          f"{len(official.state_dict())} tensors")

    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "portrait4d-random.pkl"
        t = time.perf_counter()
        with open(pkl, "wb") as f:  # the EG3D training loop's snapshot format
            pickle.dump({"G_ema": official, "training_set_kwargs": {"static": False}}, f)
        converted = convert_file(pkl, Path(tmp) / "converted")
        ours = Portrait4D.from_official(converted.weights)
        print(f"pickled, converted ({converted.num_tensors} tensors) and strictly loaded in "
              f"{time.perf_counter() - t:.1f} s")

    x = make_inputs(args.batch, args.image_size, args.seed + 1)
    identity = _IdentityDeformer()
    timings = {}
    with torch.no_grad():
        with deterministic_official_renderer(official.renderer):
            t = time.perf_counter()
            ref = official.synthesis(x["image"], x["image"], x["motion_app"], x["motion"], x["camera"],
                                     _deformer=identity, neural_rendering_resolution=128, motion_scale=1.0)
            timings["official"] = time.perf_counter() - t
        t = time.perf_counter()
        mine_ref = ours.reference_forward(x["image"], x["motion_app"], x["motion"], x["camera"])
        timings["ours (reference)"] = time.perf_counter() - t
        t = time.perf_counter()
        state = ours.encode(x["image"], x["motion_app"])
        mine_fast = ours.render(state, x["motion"], x["camera"])
        timings["ours (encode + render)"] = time.perf_counter() - t

    pairs = {"image": "image_sr", "image_raw": "image", "depth": "image_depth", "alpha": None}
    worst = 0.0
    print(f"\n{'output':10s} {'shape':>20s} {'ref |max|':>10s} {'reference path':>15s} {'cached path':>12s}")
    for ours_key, off_key in pairs.items():
        off_value = (1 - ref["T_bg"]) if off_key is None else ref[off_key]
        d_ref = (mine_ref[ours_key] - off_value).abs().max().item()
        d_fast = (mine_fast[ours_key] - off_value).abs().max().item()
        worst = max(worst, d_ref, d_fast)
        print(f"{ours_key:10s} {str(tuple(off_value.shape)):>20s} {off_value.abs().max().item():10.4g} "
              f"{d_ref:15.3e} {d_fast:12.3e}")
    print("\nCPU seconds for the batch of", args.batch, ":",
          ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    ok = worst < args.tol
    print(f"\nmax abs difference {worst:.3e} {'<' if ok else '>='} tolerance {args.tol:g}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
