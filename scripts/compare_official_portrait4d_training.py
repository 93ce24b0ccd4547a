"""Side-by-side check of our Portrait4D training forward against the official one, on CPU, random weights.

    python scripts/compare_official_portrait4d_training.py --official /path/to/Portrait-4D --extra-path DEPS

What it does (the network is built, randomised, pickled, converted and strictly loaded exactly as in
``scripts/compare_official_portrait4d.py``, whose helpers it uses; pytorch3d modules are stubbed, so the
deformation is the identity on both sides: ``head_pose=None`` here, the official ``_deformer`` a stand-in):

1. ``Gmain``: the official ``G.synthesis`` in train mode, with gradients, exactly as the loss's ``run_G`` calls
   it (motion scale a ``(B, 1, 1)`` tensor), against :meth:`Portrait4D.train_forward`, with the deterministic
   sampling patched into the official renderer (no stratified jitter, ``det=True`` importance sampling); once
   per ``--resolutions`` entry, the first with the v1 half-static motion scale (second half of the batch 0),
   the others with motion scale 1. Prints the max abs difference of every output, then the gradients of a
   scalar of all outputs (a fixed random weighting of each) w.r.t. every parameter: the worst relative
   difference over all parameters (max abs difference / largest official gradient of the tensor; and
   ``||difference|| / ||official||``), and a few named ones. With ``--explicit-attention`` the first case is
   repeated with our explicit-softmax attention (upstream's; ours defaults to PyTorch's fused SDPA kernel), and
   our two attention paths are compared with each other: the fp32 noise floor of these gradients. Later cases
   use ``--later-batch`` samples (memory);
2. the official stochastic sampling (stratified jitter, random importance samples) with the same seed on
   both sides (forward only);
3. ``sample_mixed`` (v1 density regulariser: 1000 uniform points in [-1, 1]^3 + 1000 perturbed copies,
   half-static scale) against :meth:`Portrait4D.sample_density`: sigma, features, and the gradients of the
   regulariser's L1 loss;
4. v2's ``G_fix`` call: eval mode, no grad, ``motion_scale=0``, per-sample ``box_warp_scale``.

The official code needs ``segmentation-models-pytorch==0.3.3``, ``timm``, ``six``, ``pretrainedmodels``,
``efficientnet-pytorch`` and ``einops`` importable (``pip install --no-deps --target DIR ...`` and
``--extra-path DIR``); ``requests`` is stubbed when missing (only URL downloads use it).

Exit status 0 when every output differs by less than ``--tol`` (times the output's largest magnitude when that
exceeds 1) and every gradient by less than ``--grad-tol`` relative to the largest official gradient of its
tensor, 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for _p in (REPO_ROOT, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import compare_official_portrait4d as base  # noqa: E402  (the inference comparison's helpers)

OUTPUT_KEYS = ("image_sr", "image", "image_wobg", "image_feature", "image_feature_wobg", "background_feature",
               "rgb_bg", "image_depth", "T_bg", "seg", "planes", "interval", "all_weights")
LOSS_KEYS = ("image_sr", "image", "image_wobg", "image_feature", "image_feature_wobg", "background_feature",
             "rgb_bg", "image_depth", "seg", "planes")
NAMED_PARAMETERS = (
    "encoder_global.encoder.conv1.weight",
    "encoder_detail.encoder.0.weight",
    "encoder_canonical.maps_neutral.0.weight",
    "encoder_canonical.trans_blocks_neutral.0.attn2.kv.weight",
    "encoder_canonical.trans_blocks_motion.3.attn2.proj.weight",
    "encoder_canonical.proj_y.weight",
    "generator_triplane.conv_last.weight",
    "background.input_conv.0.weight",
    "decoder.net.0.weight",
    "decoder.out_sigma.weight",
    "superresolution.block1.torgb.weight",
)


@contextlib.contextmanager
def maybe(ctx: Callable[[], contextlib.AbstractContextManager] | None) -> Iterator[None]:
    if ctx is None:
        yield
    else:
        with ctx():
            yield


def scalar_of(outputs: dict[str, Tensor], weights: dict[str, Tensor]) -> Tensor:
    """``sum_k mean(output_k * W_k)`` over :data:`LOSS_KEYS` with fixed random ``W_k``."""
    return sum((outputs[k] * weights[k]).mean() for k in LOSS_KEYS)  # type: ignore[return-value]


def take_grads(model: nn.Module) -> dict[str, Tensor | None]:
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def official_outputs(out: dict) -> dict[str, Tensor]:
    res = {k: out[k] for k in OUTPUT_KEYS if k in out}
    res["planes"] = out["planes"][0]  # the official returns a list of one tensor
    return res


class Report:
    def __init__(self, tol: float, grad_tol: float) -> None:
        self.tol, self.grad_tol = tol, grad_tol
        self.worst_output = 0.0
        self.worst_grad = 0.0
        self.failures: list[str] = []

    def outputs(self, case: str, ref: dict[str, Tensor], mine: dict[str, Tensor]) -> None:
        """Max abs difference per output; checked against ``tol * max(1, official |max|)`` (the random-weight
        triplanes reach ~150)."""
        print(f"\n[{case}] outputs")
        print(f"  {'output':20s} {'shape':>22s} {'official |max|':>15s} {'max abs diff':>13s} {'/ max(1, |max|)':>16s}")
        for k, r in ref.items():
            d = (mine[k].detach().float() - r.detach().float()).abs().max().item()
            m = r.detach().abs().max().item()
            scaled = d / max(1.0, m)
            self.worst_output = max(self.worst_output, scaled)
            if not scaled < self.tol:
                self.failures.append(f"{case}: {k} differs by {d:.3e}")
            print(f"  {k:20s} {str(tuple(r.shape)):>22s} {m:15.4g} {d:13.3e} {scaled:16.3e}")

    def grads(self, case: str, ref: dict[str, Tensor | None], mine: dict[str, Tensor | None],
              check: bool = True) -> None:
        if set(ref) != set(mine):
            self.failures.append(f"{case}: parameter names differ")
            return
        worst, worst_name, worst_norm, n_none, n_zero = 0.0, "", 0.0, 0, 0
        rows = []
        for name, g_ref in ref.items():
            g_mine = mine[name]
            if g_ref is None and g_mine is None:
                n_none += 1
                continue
            if (g_ref is None) != (g_mine is None):
                self.failures.append(f"{case}: {name} has a gradient on one side only")
                continue
            assert g_ref is not None and g_mine is not None
            scale = g_ref.abs().max().item()
            diff = (g_mine - g_ref).abs().max().item()
            ref_norm = g_ref.norm().item()
            norm_rel = (g_mine - g_ref).norm().item() / ref_norm if ref_norm > 0 else 0.0
            worst_norm = max(worst_norm, norm_rel)
            if scale == 0:
                n_zero += 1
                rel = 0.0 if diff == 0 else float("inf")
            else:
                rel = diff / scale
            if rel > worst:
                worst, worst_name = rel, name
            if name in NAMED_PARAMETERS:
                rows.append((name, scale, diff, rel, norm_rel))
        if check:
            self.worst_grad = max(self.worst_grad, worst)
        if check and not worst < self.grad_tol:
            self.failures.append(f"{case}: gradient of {worst_name} differs by {worst:.3e} (relative)")
        print(f"[{case}] gradients: {len(ref) - n_none} parameters reached on both sides ({n_none} by neither, "
              f"{n_zero} exactly zero on both); worst relative difference {worst:.3e} ({worst_name}), worst "
              f"relative norm of the difference {worst_norm:.3e}")
        print(f"  {'parameter':58s} {'official |max|':>15s} {'max abs diff':>13s} {'relative':>10s} {'rel. norm':>10s}")
        for name, scale, diff, rel, norm_rel in rows:
            print(f"  {name:58s} {scale:15.4g} {diff:13.3e} {rel:10.3e} {norm_rel:10.3e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="path to a YuDeng/Portrait-4D checkout")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="extra sys.path entry (e.g. a pip --target folder with segmentation-models-pytorch)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--later-batch", type=int, default=1,
                        help="batch of the Gmain cases after the first (NR 128 with gradients at batch 2 needs more "
                             "than 20 GB of memory on CPU)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128],
                        help="neural rendering resolutions of the Gmain cases (the first is half-static)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4, help="max abs difference of any output")
    parser.add_argument("--grad-tol", type=float, default=1e-2,
                        help="max abs gradient difference relative to the tensor's largest official gradient (fp32 "
                             "noise: our SDPA vs our explicit-softmax attention alone moves gradients by up to 5e-3)")
    parser.add_argument("--explicit-attention", action="store_true",
                        help="also run the first Gmain case with our explicit-softmax attention (as upstream); "
                             "about 21 GB of peak memory at batch 2")
    parser.add_argument("--skip", nargs="*", default=[], choices=["stochastic", "sample_mixed", "g_fix"],
                        help="cases to leave out")
    args = parser.parse_args(argv)
    if args.official is None:
        print("no official checkout given (--official PATH): comparison skipped")
        return 2
    for p in args.extra_path:
        sys.path.insert(0, p)
    official_cls = base.import_official(args.official.resolve())  # stubs pytorch3d, and requests when missing

    from avatar.hub.convert import convert_file
    from avatar.models.portrait4d import Portrait4D
    from avatar.models.portrait4d.training import half_static_motion_scale, motion_scale_tensor
    from avatar.nn.attention import set_sdpa

    torch.manual_seed(args.seed)
    with mock.patch("torch.utils.model_zoo.load_url", lambda *a, **k: {}):
        official = official_cls(**base.official_init_kwargs(512))
    base.randomize(official, args.seed)
    print(f"official model: {sum(p.numel() for p in official.parameters()) / 1e6:.2f} M parameters")
    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "portrait4d-random.pkl"
        with open(pkl, "wb") as f:  # the EG3D training loop's snapshot format
            pickle.dump({"G_ema": official, "training_set_kwargs": {"static": False}}, f)
        converted = convert_file(pkl, Path(tmp) / "converted")
        ours = Portrait4D.from_official(converted.weights)
    print(f"converted ({converted.num_tensors} tensors) and strictly loaded")
    official.train().requires_grad_(True)
    ours.train().requires_grad_(True)

    b = args.batch
    x = base.make_inputs(b, 512, args.seed + 1)
    image, motion_app, motion, camera = x["image"], x["motion_app"], x["motion"], x["camera"]
    identity = base._IdentityDeformer()
    det = lambda: base.deterministic_official_renderer(official.renderer)  # noqa: E731
    report = Report(args.tol, args.grad_tol)
    gen = torch.Generator().manual_seed(args.seed + 2)
    t_start = time.perf_counter()

    # 1. Gmain: run_G -> G.synthesis with gradients
    for i, nr in enumerate(args.resolutions):
        n = b if i == 0 else min(b, args.later_batch)
        xi = {k: v[:n] for k, v in x.items()}
        scale = half_static_motion_scale(n) if i == 0 else motion_scale_tensor(1.0, n)
        case = f"Gmain NR {nr}, batch {n}, motion scale {scale.flatten().tolist()}, deterministic"
        t = time.perf_counter()
        with det():
            ref = official_outputs(official.synthesis(xi["image"], xi["image"], xi["motion_app"], xi["motion"],
                                                      xi["camera"], _deformer=identity, neural_rendering_resolution=nr,
                                                      motion_scale=scale.clone()))
        weights = {k: torch.randn(ref[k].shape, generator=gen) for k in LOSS_KEYS}
        scalar_of(ref, weights).backward()
        g_ref = take_grads(official)
        t_off = time.perf_counter() - t
        t = time.perf_counter()
        mine = ours.train_forward(xi["image"], xi["motion_app"], xi["motion"], xi["camera"], nr, motion_scale=scale,
                                  deterministic=True)
        scalar_of(mine, weights).backward()
        g_mine = take_grads(ours)
        print(f"\n== {case}: official {t_off:.0f} s, ours {time.perf_counter() - t:.0f} s (forward + backward)")
        report.outputs(case, {k: v.detach() for k, v in ref.items()}, {k: v.detach() for k, v in mine.items()})
        report.grads(case, g_ref, g_mine)
        if i == 0 and args.explicit_attention:
            # the official attention is an explicit softmax; ours defaults to PyTorch's fused SDPA kernel. The
            # same forward with our explicit path shows how much of the difference is that kernel's rounding.
            set_sdpa(ours, False)
            t = time.perf_counter()
            explicit = ours.train_forward(xi["image"], xi["motion_app"], xi["motion"], xi["camera"], nr,
                                          motion_scale=scale, deterministic=True)
            scalar_of(explicit, weights).backward()
            g_explicit = take_grads(ours)
            set_sdpa(ours, True)
            print(f"\n== {case}, our explicit-softmax attention (as upstream): {time.perf_counter() - t:.0f} s")
            report.outputs(case + ", explicit attention", {k: v.detach() for k, v in ref.items()},
                           {k: v.detach() for k, v in explicit.items()})
            report.grads(case + ", explicit attention", g_ref, g_explicit)
            report.grads(case + ": ours SDPA vs ours explicit (rounding of the attention kernel alone)", g_explicit,
                         g_mine, check=False)
            del explicit, g_explicit
        del ref, mine, g_ref, g_mine, weights

    # 2. official stochastic sampling, same seed
    if "stochastic" not in args.skip:
        nr = args.resolutions[0]
        case = f"Gmain NR {nr}, stochastic sampling, same seed"
        scale = motion_scale_tensor(1.0, b)
        with torch.no_grad():
            torch.manual_seed(args.seed + 3)
            ref = official_outputs(official.synthesis(image, image, motion_app, motion, camera, _deformer=identity,
                                                      neural_rendering_resolution=nr, motion_scale=scale.clone()))
            torch.manual_seed(args.seed + 3)
            mine = ours.train_forward(image, motion_app, motion, camera, nr, motion_scale=scale)
            torch.manual_seed(args.seed + 4)
            other = ours.train_forward(image, motion_app, motion, camera, nr, motion_scale=scale)
        print(f"\n== {case}")
        report.outputs(case, ref, mine)
        d_seed = (other["image"] - mine["image"]).abs().max().item()
        print(f"  (another seed changes `image` by up to {d_seed:.3e}: the sampling really is random)")
        if not d_seed > 0:
            report.failures.append(f"{case}: a different seed gave the same image")
        del ref, mine, other

    # 3. sample_mixed (v1 density regulariser)
    if "sample_mixed" not in args.skip:
        case = "sample_mixed (v1 density regulariser), half-static"
        scale = half_static_motion_scale(b)
        pts = torch.rand((b, 1000, 3), generator=gen) * 2 - 1
        pts = torch.cat([pts, pts + torch.randn(pts.shape, generator=gen) * 0.004 * 1.3], dim=1)
        dirs = torch.randn(pts.shape, generator=gen)
        zeros = [torch.zeros(b, n) for n in (300, 100, 6, 6)]

        def tv(sigma: Tensor) -> Tensor:
            return torch.nn.functional.l1_loss(sigma[:, :1000], sigma[:, 1000:]) * 0.25

        out_ref = official.sample_mixed(image, image, motion_app, motion, pts, dirs, *zeros, motion_scale=scale.clone())
        tv(out_ref["sigma"]).backward()
        g_ref = take_grads(official)
        out_mine = ours.sample_density(image, motion_app, motion, pts, motion_scale=scale, directions=dirs)
        tv(out_mine["sigma"]).backward()
        g_mine = take_grads(ours)
        print(f"\n== {case}: {int((pts.abs() < 0.65).all(-1).sum())} of {pts.shape[0] * pts.shape[1]} points inside "
              "the triplane box")
        keys = ("sigma", "rgb", "triplane_feature")
        report.outputs(case, {k: out_ref[k].detach() for k in keys}, {k: out_mine[k].detach() for k in keys})
        report.grads(case, g_ref, g_mine)
        del out_ref, out_mine, g_ref, g_mine

    # 4. v2 G_fix: eval, no grad, motion_scale 0, per-sample box_warp_scale
    if "g_fix" not in args.skip:
        nr = args.resolutions[0]
        bws = torch.linspace(0.97, 1.0, b).reshape(b, 1, 1)
        case = f"G_fix NR {nr}, eval, motion_scale 0, box_warp_scale {bws.flatten().tolist()}, deterministic"
        official.eval()
        ours.eval()
        with torch.no_grad():
            with det():
                ref = official_outputs(official.synthesis(image, image, motion, motion, camera, _deformer=identity,
                                                          neural_rendering_resolution=nr, motion_scale=0,
                                                          box_warp_scale=bws.clone()))
            mine = ours.train_forward(image, motion, motion, camera, nr, motion_scale=0.0, deterministic=True,
                                      box_warp_scale=bws)
        print(f"\n== {case}")
        report.outputs(case, ref, mine)
        del ref, mine

    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; worst output difference {report.worst_output:.3e} "
          f"(tolerance {args.tol:g}), worst relative gradient difference {report.worst_grad:.3e} "
          f"(tolerance {args.grad_tol:g})")
    for f in report.failures:
        print("FAIL:", f)
    ok = not report.failures
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
