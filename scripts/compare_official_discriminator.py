"""Side-by-side check of our training discriminator and its losses against the official code (CPU, fp32).

    python scripts/compare_official_discriminator.py --official /path/to/Portrait-4D [--batch 4] [--seed 0]

``--official`` is a checkout of YuDeng/Portrait-4D (its root, or its ``portrait4d/`` folder), never part of
this repository; for example ``git --git-dir=MIRROR archive HEAD | tar -x -C DIR``. What it does:

1. imports the official ``DualDiscriminatorDeform`` (``training/discriminator/dual_discriminator.py``) and the
   GenHead loss (for its ``run_D``). Only ``torch`` and ``numpy`` are needed: the official ``torch_utils`` ops
   take their pure-PyTorch reference paths on CPU (no CUDA extension is built), and ``requests`` (imported by
   ``dnnlib.util`` for URL downloads only) is stubbed when it is not installed, as the Portrait4D comparison
   (``scripts/compare_official_portrait4d.py``) stubs what the network check does not use;
2. builds it exactly as the training loops do (``construct_class_by_name(**D_kwargs, c_dim=25,
   img_resolution=512, img_channels=3)`` with the ``configs/default.yaml`` options), perturbs every parameter
   (the biases are zero-initialised upstream), pickles it inside an EG3D snapshot dict, converts that pickle
   with ``avatar convert``'s code (restricted unpickler, ``--network D``, no code executed) and loads the
   result with :meth:`avatar.losses.discriminator.DualDiscriminator.from_official` (strict; config from the
   recorded ``init_kwargs``), and also loads the official ``state_dict()`` directly;
3. compares on random inputs: the logits (training shapes: raw image and seg at 128, uv at 512; and a resizing
   case: raw and seg at 64, uv at 256), the logits after the GenHead blur (official ``run_D`` with sigma 2.5),
   the R1 input gradients and penalty terms (official formula ``loss_recon_v1.py:455-488``), and the gradients
   of the R1 loss with respect to every discriminator parameter (the double backward of ``Dreg``);
4. repeats the logits check on small variants (architectures ``skip`` and ``orig``, unconditional ``c_dim=0``,
   minibatch-std group 4, ``freeze_layers``), built with the official class.

Every figure is ``max|ours - official| / max|official|``. Exit status 0 when all are below ``--tol`` (1e-5),
1 otherwise, 2 when no usable checkout is given (nothing compared).
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# D as the training loops build it (default.yaml; train_recon_v1.py, train_recon_v2.py, train_genhead.py)
OFFICIAL_D_OPTIONS: dict[str, Any] = {
    "channel_base": 32768,
    "channel_max": 512,
    "num_fp16_res": 4,
    "conv_clamp": 256,
    "disc_c_noise": 0,
    "has_superresolution": True,
    "has_uv": True,
    "has_seg": True,
    "block_kwargs": {"freeze_layers": 0},
    "mapping_kwargs": {},
    "epilogue_kwargs": {"mbstd_group_size": 2},
}
OFFICIAL_COMMON = {"c_dim": 25, "img_resolution": 512, "img_channels": 3}
OFFICIAL_CLASS = "training.discriminator.dual_discriminator.DualDiscriminatorDeform"


def find_code(path: Path) -> Path | None:
    for code in (path / "portrait4d", path):
        if (code / "training" / "discriminator" / "dual_discriminator.py").is_file():
            return code
    return None


def import_official(code: Path) -> types.SimpleNamespace:
    """The official modules this check needs (``requests`` stubbed if missing: only URL downloads use it)."""
    sys.path.insert(0, str(code))
    if importlib.util.find_spec("requests") is None:
        sys.modules["requests"] = types.ModuleType("requests")
    import dnnlib
    from training.discriminator.dual_discriminator import DualDiscriminatorDeform
    from training.loss.loss_genhead import PortraitSynthesisLoss

    return types.SimpleNamespace(dnnlib=dnnlib, D=DualDiscriminatorDeform, run_D=PortraitSynthesisLoss.run_D)


def build_official(off: types.SimpleNamespace, common: dict, options: dict, seed: int) -> torch.nn.Module:
    """As the training loops: ``construct_class_by_name(**D_kwargs, **common_kwargs)``, then every parameter
    perturbed (upstream zero-initialises the biases)."""
    easy = off.dnnlib.EasyDict
    kwargs = easy(
        class_name=OFFICIAL_CLASS, **{k: easy(v) if isinstance(v, dict) else v for k, v in options.items()}
    )
    torch.manual_seed(seed)
    D = off.dnnlib.util.construct_class_by_name(**kwargs, **common).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in D.parameters():
            scale = 0.2 if p.ndim == 1 else 0.05 * float(p.std())
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return D


def make_inputs(batch: int, res: int, raw: int, uv: int, seg: int, seed: int) -> tuple[dict, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def image(channels: int, size: int) -> torch.Tensor:
        low = torch.rand(batch, channels, max(size // 16, 2), max(size // 16, 2), generator=gen) * 2 - 1
        x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
        return (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)

    img = {"image_sr": image(3, res), "image": image(3, raw), "uv": image(3, uv), "seg": image(1, seg)}
    return img, torch.randn(batch, 25, generator=gen)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach() - ref.detach()).abs().max() / ref.detach().abs().max().clamp_min(1e-30))


def official_r1(
    logits: torch.Tensor, leaves: dict, gammas: tuple[float, float, float]
) -> dict[str, torch.Tensor]:
    """The official dual-discrimination R1 (``loss_recon_v1.py:455-488``, has_uv and has_seg), written out."""
    grads = torch.autograd.grad(
        outputs=[logits.sum()],
        inputs=[leaves["image_sr"], leaves["image"], leaves["uv"], leaves["seg"]],
        create_graph=True,
        only_inputs=True,
    )
    r1_penalty = grads[0].square().sum([1, 2, 3]) + grads[1].square().sum([1, 2, 3])
    r1_penalty_uv = grads[2].square().sum([1, 2, 3])
    r1_penalty_seg = grads[3].square().sum([1, 2, 3])
    gamma, gamma_uv, gamma_seg = gammas
    loss = r1_penalty * (gamma / 2) + r1_penalty_uv * (gamma_uv / 2) + r1_penalty_seg * (gamma_seg / 2)
    return {
        "grads": grads,
        "penalty": r1_penalty,
        "penalty_uv": r1_penalty_uv,
        "penalty_seg": r1_penalty_seg,
        "loss": loss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="a YuDeng/Portrait-4D checkout (root or portrait4d/)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (even: minibatch-std groups of 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5, help="largest relative difference accepted")
    parser.add_argument("--skip-param-grads", action="store_true", help="skip the R1 double backward (slow)")
    args = parser.parse_args(argv)
    if args.official is None:
        print("no official checkout given (--official PATH): comparison skipped")
        return 2
    code = find_code(args.official.expanduser().resolve())
    if code is None:
        print(
            f"{args.official} is not a Portrait-4D checkout (no training/discriminator/"
            "dual_discriminator.py): comparison skipped"
        )
        return 2
    off = import_official(code)

    from avatar.hub.convert import convert_file
    from avatar.losses.adversarial import r1_inputs, r1_penalty, run_discriminator
    from avatar.losses.discriminator import DiscriminatorConfig, DualDiscriminator

    figures: dict[str, float] = {}
    official = build_official(off, OFFICIAL_COMMON, OFFICIAL_D_OPTIONS, args.seed)
    print(
        f"official {type(official).__name__}: {sum(p.numel() for p in official.parameters()):,} parameters, "
        f"{len(official.state_dict())} tensors"
    )
    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "snapshot.pkl"
        t = time.perf_counter()
        # the EG3D training loop's snapshot dict (G and G_ema left out: not needed here)
        with open(pkl, "wb") as f:
            pickle.dump(
                {
                    "training_set_kwargs": {"resolution": 512},
                    "D": official,
                    "D_patch": None,
                    "augment_pipe": None,
                },
                f,
            )
        converted = convert_file(pkl, Path(tmp) / "converted", network="D")
        ours = DualDiscriminator.from_official(converted.weights.parent)
        print(
            f"pickled, converted ({converted.num_tensors} tensors, restricted unpickler) and strictly "
            f"loaded in {time.perf_counter() - t:.1f} s; config from init_kwargs == official defaults: "
            f"{ours.config == DiscriminatorConfig()}"
        )
    if ours.config != DiscriminatorConfig():
        print(f"config differs: {ours.config}")
        return 1
    direct = DualDiscriminator.from_official(official.state_dict())
    same = all(
        torch.equal(a, b)
        for a, b in zip(ours.state_dict().values(), direct.state_dict().values(), strict=True)
    )
    print(f"state_dict() route gives the same tensors: {same}")
    print(f"ours: {sum(p.numel() for p in ours.parameters()):,} parameters")

    cases = {"train (raw/seg 128, uv 512)": (128, 512, 128), "resize (raw/seg 64, uv 256)": (64, 256, 64)}
    with torch.no_grad():
        for i, (name, (raw, uv, seg)) in enumerate(cases.items()):
            img, c = make_inputs(args.batch, 512, raw, uv, seg, args.seed + 10 + i)
            t = time.perf_counter()
            ref = official(dict(img), c.clone())
            t_off = time.perf_counter() - t
            t = time.perf_counter()
            mine = ours(img, c)
            t_ours = time.perf_counter() - t
            figures[f"logits, {name}"] = rel(mine, ref)
            print(f"  {name}: official logits {ref.flatten().tolist()} ({t_off:.1f} s), ours {t_ours:.1f} s")
        img, c = make_inputs(args.batch, 512, 128, 512, 128, args.seed + 20)
        host = types.SimpleNamespace(G=types.SimpleNamespace(has_superresolution=True), D=official)
        ref = off.run_D(host, dict(img), c.clone(), blur_sigma=2.5)
        figures["logits, GenHead blur sigma 2.5 (run_D)"] = rel(
            run_discriminator(ours, img, c, blur_sigma=2.5), ref
        )

    # R1: input gradients, penalty terms, and the Dreg gradient w.r.t. every parameter (double backward)
    gammas = (1.0, 10.0, 1.0)
    img, c = make_inputs(args.batch, 512, 128, 512, 128, args.seed + 30)
    official.requires_grad_(True)
    leaves_off = r1_inputs(img)
    off_r1 = official_r1(official(dict(leaves_off), c.clone()), leaves_off, gammas)
    leaves = r1_inputs(img)
    logits = ours(leaves, c)
    grads = torch.autograd.grad(
        logits.sum(),
        [leaves[k] for k in ("image_sr", "image", "uv", "seg")],
        create_graph=False,
        retain_graph=True,
    )
    for k, g, g_ref in zip(("image_sr", "image", "uv", "seg"), grads, off_r1["grads"], strict=True):
        figures[f"R1 grad d/d {k} {tuple(g.shape[1:])}"] = rel(g, g_ref)
    mine_r1 = r1_penalty(logits, leaves, *gammas)
    for k in ("penalty", "penalty_uv", "penalty_seg", "loss"):
        figures[f"R1 {k} per sample"] = rel(getattr(mine_r1, k), off_r1[k])
    print(
        f"  R1 (official, per sample): penalty {off_r1['penalty'].tolist()}, "
        f"uv {off_r1['penalty_uv'].tolist()}, seg {off_r1['penalty_seg'].tolist()}"
    )
    if not args.skip_param_grads:
        t = time.perf_counter()
        names = [n for n, _ in official.named_parameters()]
        # (b4.out.bias does not reach the input gradients: its R1 gradient is None on both sides)
        g_off = torch.autograd.grad(off_r1["loss"].mean(), list(official.parameters()), allow_unused=True)
        mine_params = dict(ours.named_parameters())
        g_mine = torch.autograd.grad(mine_r1.loss.mean(), [mine_params[n] for n in names], allow_unused=True)
        unused = [n for a, b, n in zip(g_mine, g_off, names, strict=True) if a is None or b is None]
        if any((a is None) != (b is None) for a, b in zip(g_mine, g_off, strict=True)):
            print(f"the R1 loss reaches different parameters: {unused}")
            return 1
        worst = max((rel(a, b), n) for a, b, n in zip(g_mine, g_off, names, strict=True) if a is not None)
        print(f"  parameters the R1 loss does not reach (both sides): {', '.join(unused) or 'none'}")
        figures[f"Dreg grad w.r.t. parameters (worst: {worst[1]})"] = worst[0]
        print(f"  Dreg double backward over {len(names)} parameters: {time.perf_counter() - t:.1f} s")
    official.requires_grad_(False)

    # small variants of the official class: other architectures, unconditional, group 4, Freeze-D
    small = {"img_resolution": 64, "channel_base": 256, "channel_max": 32}
    variants = {
        "skip architecture": {"architecture": "skip"},
        "orig architecture": {"architecture": "orig"},
        "c_dim 0": {"c_dim": 0},
        "mbstd group 4, 2 channels": {"epilogue_kwargs": {"mbstd_group_size": 4, "mbstd_num_channels": 2}},
        "freeze_layers 5, conv_clamp None": {"block_kwargs": {"freeze_layers": 5}, "conv_clamp": None},
    }
    for i, (name, change) in enumerate(variants.items()):
        common = {**OFFICIAL_COMMON, "img_resolution": 64, "c_dim": change.get("c_dim", 25)}
        options = {**OFFICIAL_D_OPTIONS, **small, **{k: v for k, v in change.items() if k != "c_dim"}}
        options.pop("img_resolution")
        variant = build_official(off, common, options, args.seed + 40 + i)
        init_kwargs = {**{k: v for k, v in options.items()}, **common}
        mine = DualDiscriminator.from_official(
            variant.state_dict(), config=DiscriminatorConfig.from_official(init_kwargs)
        )
        img, c = make_inputs(args.batch, 64, 16, 64, 16, args.seed + 50 + i)
        c = c[:, : common["c_dim"]] if common["c_dim"] else torch.zeros(args.batch, 0)
        with torch.no_grad():
            figures[f"variant: {name}"] = rel(mine(img, c), variant(dict(img), c.clone()))

    print(f"\n{'check':62s} {'max rel diff':>12s}")
    for name, value in figures.items():
        print(f"{name:62s} {value:12.3e}")
    worst = max(figures.values())
    ok = worst < args.tol
    print(f"\nworst {worst:.3e} {'<' if ok else '>='} tolerance {args.tol:g}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
