"""Side-by-side check of GOHA's super-resolution network (``neural_layers``) against the official code, on CPU.

    python scripts/compare_official_goha_gfpgan.py --official /path/to/GOHA [--tiny] [--batch 2] [--input-size 224]

What it does:

1. imports the official ``src/GFPGAN/GFPUpsampler.py`` (and through it ``gfpganv1_clean_arch.py`` /
   ``stylegan2_clean_arch.py``) from an extracted NVlabs/GOHA checkout (never part of this repository).
   ``basicsr`` is replaced by a stand-in: the architecture only takes ``ARCH_REGISTRY.register`` (a no-op here),
   ``default_init_weights`` (Kaiming init, written here) and two image helpers it never calls from it;
2. builds the official ``GFPGANv1Clean`` with GOHA's arguments (or, with ``--tiny``, our tiny config's) and
   random weights: every tensor is perturbed (so the zero-initialised noise strengths and biases matter), then
   ``GFPUpsampler`` is constructed with ``torch.load`` patched to return those weights as ``params_ema`` (what
   its constructor loads strictly); our :class:`GOHASuperResolution` loads the same ``state_dict`` strictly;
3. runs the same random (b, 3, 224, 224) input in float32 through both, with the noise fed identically:
   * ``const``: our default vs the official ``forward(img, noise=<stored noises.noise{i}>)``;
   * ``none``: ours without noise vs the official with all-zero noise;
   * ``explicit``: the same random per-sample noise list passed to both;
   * ``random``: ours ``noise_mode="random"`` vs the official default (fresh ``normal_()`` draws), each after
     ``torch.manual_seed`` with the same seed (the draws match when order and shapes do);
   and prints the max abs difference of the image (and of the U-Net's intermediate images for ``const``).

Exit status 0 when every difference is below ``--tol`` (1e-5), 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import types
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from avatar.models.goha.gfpgan import (  # noqa: E402
    GOHASuperResolution,
    GOHASuperResolutionConfig,
    official_kwargs,
)


def _default_init_weights(module_list: object, scale: float = 1, bias_fill: float = 0, **kwargs: object) -> None:
    """basicsr.archs.arch_util.default_init_weights: Kaiming-normal conv/linear weights * scale, bias filled."""
    modules = module_list if isinstance(module_list, list) else [module_list]
    for module in modules:
        for m in module.modules():  # type: ignore[attr-defined]
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, **kwargs)  # type: ignore[arg-type]
                m.weight.data *= scale
                if m.bias is not None:
                    m.bias.data.fill_(bias_fill)


from compare_official_portrait4d import _stub  # noqa: E402  (one module stub for every comparison script)


def import_official(checkout: Path) -> types.ModuleType:
    """Import ``GFPGAN.GFPUpsampler`` from ``checkout/src`` with ``basicsr`` stubbed."""
    src = checkout / "src"
    if not (src / "GFPGAN" / "GFPUpsampler.py").is_file():
        raise SystemExit(f"{src / 'GFPGAN' / 'GFPUpsampler.py'} not found: pass the extracted GOHA checkout")
    registry = types.SimpleNamespace(register=lambda *a, **k: (lambda cls: cls))
    _stub("basicsr")
    _stub("basicsr.utils", img2tensor=None, tensor2img=None)
    _stub("basicsr.utils.registry", ARCH_REGISTRY=registry)
    _stub("basicsr.archs")
    _stub("basicsr.archs.arch_util", default_init_weights=_default_init_weights)
    try:
        import cv2  # noqa: F401
    except ImportError:
        _stub("cv2")
    sys.path.insert(0, str(src))
    return importlib.import_module("GFPGAN.GFPUpsampler")


def perturb_(module: nn.Module, generator: torch.Generator, scale: float) -> None:
    """Add ``scale`` * N(0, 1) to every parameter (buffers, i.e. the stored noise, stay N(0, 1))."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, default=os.environ.get("GOHA_OFFICIAL"),
                        help="extracted NVlabs/GOHA checkout (default: $GOHA_OFFICIAL)")
    parser.add_argument("--tiny", action="store_true", help="our tiny config instead of GOHA's 512 network")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=224, help="GOHA feeds its 224x224 render")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--perturb", type=float, default=0.02, help="std of the noise added to every parameter")
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    if args.official is None:
        print("no official checkout: pass --official or set GOHA_OFFICIAL", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    official_module = import_official(args.official)

    config = GOHASuperResolutionConfig.tiny() if args.tiny else GOHASuperResolutionConfig()
    torch.manual_seed(args.seed)
    gfpgan = official_module.GFPGANv1Clean(**official_kwargs(config))
    perturb_(gfpgan, torch.Generator().manual_seed(args.seed + 1), args.perturb)
    if args.tiny:  # GFPUpsampler hard-codes 512: wrap the tiny network the same way by hand
        official = nn.Module()
        official.gfpgan = gfpgan

        def run_official(img: torch.Tensor, noise: list[torch.Tensor] | None) -> tuple:
            x = F.interpolate(img, size=(config.out_size, config.out_size), mode="bilinear", align_corners=True)
            return official.gfpgan(x, noise=noise)
    else:
        with mock.patch.object(official_module.torch, "load", return_value={"params_ema": gfpgan.state_dict()}):
            official = official_module.GFPUpsampler("<random weights>")

        def run_official(img: torch.Tensor, noise: list[torch.Tensor] | None) -> tuple:
            return official(img, noise=noise)
    official.eval()

    ours = GOHASuperResolution(config).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    print(f"config: {'tiny' if args.tiny else 'GOHA (512)'}; {len(ours.state_dict())} tensors, "
          f"{sum(p.numel() for p in ours.parameters()):,} parameters loaded strictly")

    gen = torch.Generator().manual_seed(args.seed + 2)
    b = args.batch
    img = torch.rand(b, 3, args.input_size, args.input_size, generator=gen) * 2 - 1
    stored = [t.clone() for t in ours.stored_noise()]
    zeros = [torch.zeros_like(t) for t in stored]
    explicit = [torch.randn(b, 1, t.shape[-2], t.shape[-1], generator=gen) for t in stored]

    results: dict[str, float] = {}
    t0 = time.perf_counter()
    ref, ref_rgbs = run_official(img, stored)
    out, rgbs = ours(img, return_rgbs=True)
    results["const (stored noise) image"] = max_diff(out, ref)
    results["const intermediate rgbs"] = max(max_diff(a, r) for a, r in zip(rgbs, ref_rgbs, strict=True))
    scale = ref.abs().max().item()
    results["none (no noise) image"] = max_diff(ours(img, noise_mode="none"), run_official(img, zeros)[0])
    results["explicit noise image"] = max_diff(ours(img, noise=explicit), run_official(img, explicit)[0])
    torch.manual_seed(args.seed + 3)
    ref_random = run_official(img, None)[0]
    torch.manual_seed(args.seed + 3)
    out_random = ours(img, noise_mode="random")
    results["random (same seed) image"] = max_diff(out_random, ref_random)
    noise_effect = max_diff(out, ours(img, noise_mode="none"))
    elapsed = time.perf_counter() - t0

    print(f"input {tuple(img.shape)} -> output {tuple(out.shape)}, max |official| {scale:.3f}, "
          f"noise changes the output by up to {noise_effect:.3f} ({elapsed:.1f} s)")
    ok = True
    for name, diff in results.items():
        good = math.isfinite(diff) and diff < args.tol
        ok &= good
        print(f"  {name:32s} max abs diff {diff:.3e}  {'ok' if good else 'FAIL'}")
    print("PASS" if ok else f"FAIL (tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
