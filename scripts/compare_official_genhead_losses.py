"""Side-by-side check of our GenHead training losses against the official ``PortraitSynthesisLoss`` (CPU, fp32).

    python scripts/compare_official_genhead_losses.py --official /path/to/Portrait-4D --extra-path DEPS [--small]

``DEPS``: a ``pip install --target DEPS omegaconf`` folder (the official FLAME deformer reads its asset paths with
omegaconf). Ours: :class:`train.recipes.genhead_loss.GenHeadLoss` (phases ``g_main``, ``g_reg``, ``d_main``,
``d_reg``), :meth:`~train.recipes.genhead_loss.GenHeadLoss.prepare` and
:class:`~train.recipes.genhead_loss.ConditionSampler`. Official: ``training/loss/loss_genhead.py::
PortraitSynthesisLoss.accumulate_gradients`` and the per-iteration lines of ``training/training_loop_genhead.py``
(written out below: the loop is one function), from a checkout of YuDeng/Portrait-4D (never part of this
repository). What it does:

1. **Networks.** The official ``PartTriPlaneGeneratorDeform`` with the released ``init_kwargs`` (``--small``:
   narrower networks and 64^2 triplanes; ``--depth`` samples per ray; the rendering resolution ``--nr``, set on
   both sides as the training resolution, since the official loss renders the masks at whatever resolution it is
   given), every parameter perturbed, pickled as an EG3D snapshot, converted with ``avatar convert`` and strictly
   loaded into :class:`~avatar.models.genhead.GenHead` (the helpers of ``scripts/compare_official_genhead.py``:
   pytorch3d stand-ins and the synthetic FLAME written in the official file layouts). The official
   ``DualDiscriminatorDeform`` with the training options (``--small``: narrower, same 512 input), perturbed and
   loaded into :class:`~avatar.losses.discriminator.DualDiscriminator` (the helpers of
   ``scripts/compare_official_discriminator.py``). Both generators in train mode.
2. **Data.** A small official FFHQ LMDB (``Datum_genhead`` records: PNG images and segs, 437-float labels with a
   neck rotation) written by :class:`~train.data.OfficialLmdbWriter`, read by the official
   ``PortraitSynthesisSegLmdbFolderDatasetV2`` and by our :class:`~train.data.ImageDataset`. The real batch goes
   through the official loop's lines (``/127.5 - 1``, neck zeroed, online uv by ``G.deformer.renderer``) and
   through our ``prepare``; the generator conditions through the loop's draws (``torch.randn`` for 4 phases x the
   global batch, ``np.random.randint`` per label, ``get_label_all``, neck zeroed, ``decompose_camera_pose``, the
   first ``batch_gpu`` of each phase) and through our ``ConditionSampler``, from the same seeds: both compared.
3. **Phases.** Each phase runs from the same ``torch.manual_seed`` on both sides (global batch ``--global-batch``,
   this process's ``--batch``; ``cur_nimg`` ``--kimg``: blur and GPC fade both active), with the phase's module
   requiring grad, its gradients zeroed first and the official gain. **Nothing random is patched**: our loss
   makes the same draws as the official one, in the same order and with the same shapes (GPC ``rand``, the
   StyleGAN noise of the triplane and background generators, the renderer's stratified jitter and importance
   samples, Greg's points, perturbations and directions), so equal seeds give equal noise. A different order or
   count would show as different values; the ``draws`` line compares the generator state after each phase.

Printed: every logged term of each phase (``training_stats.report`` of the official loss, ``ctx.log`` of ours;
batch means) side by side with ``max|ours - official| / max|official|``; the worst relative gradient difference
over the phase's module (``max |ours - official| / max |official|`` per tensor); the mapping's ``w_avg`` after
Dmain (``update_emas``); the data and draw checks.

Exit status 0 when every term agrees to ``--tol`` (1e-5) and every gradient to ``--grad-tol``, 1 otherwise, 2 when
no checkout is given (nothing compared).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
for _p in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import compare_official_discriminator as disc_base  # noqa: E402  (the discriminator comparison's helpers)
import compare_official_genhead as gen_base  # noqa: E402  (the generator comparison's helpers)

PHASES = (("Gmain", 1), ("Greg", 4), ("Dmain", 1), ("Dreg", 16))
"""The official phases and their gains (lazy regularisation: G every 4, D every 16)."""


def rel(a: Tensor, ref: Tensor) -> float:
    a, ref = torch.as_tensor(a).detach().double(), torch.as_tensor(ref).detach().double()
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    diff = float((a - ref).abs().max()) if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


# ----------------------------------------------------------------------------------------------------------
# data


def write_lmdb(root: Path, n: int, seed: int) -> Path:
    """``n`` FFHQ-like records (512^2 smooth PNG images, disc segs, labels: cameras near the front, FLAME shape,
    expression, neck + jaw, eyes) in an official ``FFHQ_512_<n>`` LMDB folder."""
    import cv2

    from avatar.render.camera import focal_from_fov, lookat_cam2world, make_intrinsics, make_label
    from train.data import OfficialLmdbWriter

    rng = np.random.default_rng(seed)
    path = root / f"FFHQ_512_{n}"
    yy, xx = np.mgrid[0:512, 0:512] / 512
    with OfficialLmdbWriter(path, "genhead") as writer:
        for i in range(n):
            image = np.stack([np.sin(6 * xx + i), np.cos(5 * yy + 0.3 * i), xx * yy + 0.1 * i], -1) % 1 * 255
            seg = ((((xx - 0.5) ** 2 + (yy - 0.45) ** 2) < 0.1 + 0.01 * i) * 255).astype(np.uint8)
            yaw = torch.tensor([np.pi / 2 + rng.uniform(-0.35, 0.35)])
            pitch = torch.tensor([np.pi / 2 + rng.uniform(-0.1, 0.1)])
            c2w = lookat_cam2world(yaw, pitch, (0.0, 0.0, 0.0), 4.0, batch_size=1)
            label = np.zeros(437, np.float32)
            label[:25] = make_label(c2w, make_intrinsics(focal_from_fov(12.0), 1))[0].numpy()
            label[25:325] = rng.normal(size=300)
            label[325:425] = rng.normal(size=100)
            label[425:428] = rng.normal(scale=0.15, size=3)  # a neck rotation: the loop must zero it
            label[428] = rng.uniform(0, 0.3)
            label[431:437] = np.tile(rng.normal(scale=0.1, size=3), 2)
            ok_i, png_i = cv2.imencode(".png", image.astype(np.uint8)[:, :, ::-1])
            ok_s, png_s = cv2.imencode(".png", seg)
            assert ok_i and ok_s
            writer.add_image(png_i.tobytes(), png_s.tobytes(), label, rng.normal(size=548).astype(np.float32))
    return path


@contextlib.contextmanager
def numpy1_fromstring() -> Iterator[None]:
    """The official dataset decodes records with ``np.fromstring(bytes, dtype)``, whose binary mode NumPy 2 removed;
    served by ``np.frombuffer(...).copy()`` (the same array) while the official dataset reads."""
    with mock.patch.object(np, "fromstring", lambda data, dtype: np.frombuffer(data, dtype=dtype).copy()):
        yield


def official_real(training_set: Any, indices: list[int], G: nn.Module) -> dict[str, Tensor]:
    """The official loop's real batch (``training_loop_genhead.py``, "Fetch training data"), written out."""
    items = [training_set[i] for i in indices]
    img, seg, c, shape, exp, pose, eye = (torch.from_numpy(np.stack(x)) for x in zip(*items, strict=True))
    real_img = img.to(torch.float32) / 127.5 - 1
    real_seg = seg.to(torch.float32) / 127.5 - 1
    shape, exp = shape.to(torch.float32), exp.to(torch.float32)
    pose = torch.cat([torch.zeros_like(pose[..., :3]), pose[..., 3:]], dim=-1).to(torch.float32)
    eye = eye.to(torch.float32)
    uv = G.deformer.renderer(shape, exp, pose, eye, c, half_size=int(G.img_resolution / 2))[0]
    return {"image": real_img, "seg": real_seg, "c": c, "uv": uv}


def official_draws(training_set: Any, G: nn.Module, batch_size: int, batch_gpu: int, z_dim: int
                   ) -> dict[str, dict[str, Tensor]]:
    """The official loop's generator draws (``random_combine=False``), written out; per phase the first
    ``batch_gpu`` rows (what one process uses)."""
    n = len(PHASES)
    all_gen_z = torch.randn([n * batch_size, z_dim])
    all_gen_z = [p.split(batch_gpu) for p in all_gen_z.split(batch_size)]
    all_labels = [training_set.get_label_all(np.random.randint(len(training_set))) for _ in range(n * batch_size)]

    def column(k: int) -> list[tuple[Tensor, ...]]:
        t = torch.from_numpy(np.stack([lab[k] for lab in all_labels]))
        if k == 3:  # neck zeroed
            t = torch.cat([torch.zeros_like(t[..., :3]), t[..., 3:]], dim=-1)
        return [p.split(batch_gpu) for p in t.split(batch_size)]

    c_compose, shape, exp, pose, eye = (column(k) for k in range(5))
    out = {}
    for k, (phase, _) in enumerate(PHASES):
        gen_c = G.deformer.flame_deform.decompose_camera_pose(c_compose[k][0], shape[k][0], exp[k][0], pose[k][0])
        out[phase] = {"z": all_gen_z[k][0], "c_compose": c_compose[k][0], "c": gen_c, "shape": shape[k][0],
                      "exp": exp[k][0], "pose": pose[k][0], "eye": eye[k][0]}
    return out


# ----------------------------------------------------------------------------------------------------------
# running a phase


@contextlib.contextmanager
def recorded(module: Any) -> Iterator[dict[str, list[Tensor]]]:
    """Record ``training_stats.report(name, value)`` calls of an official loss module."""
    logs: dict[str, list[Tensor]] = {}

    def report(name: str, value: Any) -> Any:
        logs.setdefault(name, []).append(torch.as_tensor(value).detach().clone().float())
        return value

    with mock.patch.object(module.training_stats, "report", report):
        yield logs


def grads_of(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def run_official(loss: Any, module: nn.Module, loss_module: Any, phase: str, gain: int, real: dict, gen: dict,
                 cur_nimg: int, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, float]:
    module.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    torch.manual_seed(seed)
    t = time.perf_counter()
    try:
        with recorded(loss_module) as logs:
            loss.accumulate_gradients(
                phase=phase, real_img=real["image"], real_seg=real["seg"], real_uv=real["uv"], real_c=real["c"],
                shape_params=gen["shape"], exp_params=gen["exp"], pose_params=gen["pose"],
                eye_pose_params=gen["eye"], gen_z=gen["z"], gen_z_bg=gen["z"], gen_c=gen["c"],
                gen_c_compose=gen["c_compose"], gain=gain, cur_nimg=cur_nimg)
    finally:
        module.requires_grad_(False)
    seconds = time.perf_counter() - t
    return {k: torch.cat([v.reshape(-1) for v in vs]) for k, vs in logs.items()}, grads_of(module), \
        torch.get_rng_state(), seconds


def run_ours(fn: Any, module: nn.Module, phase: str, gain: int, batch: Any, cur_nimg: int, seed: int
             ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, float]:
    from accelerate import Accelerator

    from train.core.phases import PhaseContext
    from train.core.state import LoopState

    logs: dict[str, list[Tensor]] = {}
    ctx = PhaseContext(phase, float(gain), LoopState(cur_nimg=cur_nimg), Accelerator(cpu=True),
                       lambda k, v: logs.setdefault(k, []).append(torch.as_tensor(v).detach().clone().float()))
    module.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    torch.manual_seed(seed)
    t = time.perf_counter()
    try:
        fn(batch, ctx)
    finally:
        module.requires_grad_(False)
    seconds = time.perf_counter() - t
    return {k: torch.cat([v.reshape(-1) for v in vs]) for k, vs in logs.items()}, grads_of(module), \
        torch.get_rng_state(), seconds


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="path to a YuDeng/Portrait-4D checkout")
    parser.add_argument("--extra-path", action="append", default=[], help="extra sys.path entry (omegaconf)")
    parser.add_argument("--batch", type=int, default=2, help="samples per process (even: minibatch-std groups of 2)")
    parser.add_argument("--global-batch", type=int, default=4, help="the global batch the loop draws per phase")
    parser.add_argument("--kimg", type=float, default=100.0, help="cur_nimg / 1000 (blur and GPC fade active)")
    parser.add_argument("--nr", type=int, default=32, help="neural rendering resolution (official training: 64)")
    parser.add_argument("--depth", type=int, default=12, help="stratified = importance samples per ray (official 48)")
    parser.add_argument("--small", action="store_true", help="narrow G and D, 64^2 triplanes (quick run)")
    parser.add_argument("--phases", nargs="+", default=[p for p, _ in PHASES], choices=[p for p, _ in PHASES])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5, help="largest relative difference of a logged term")
    parser.add_argument("--grad-tol", type=float, default=1e-4, help="largest relative gradient difference")
    args = parser.parse_args(argv)
    if args.official is None:
        print("no official checkout given (--official PATH): comparison skipped")
        return 2
    for p in args.extra_path:
        sys.path.insert(0, p)
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")  # the official pb2 modules are old
    official_cls = gen_base.import_official(args.official.resolve())
    import dnnlib  # on the path now (import_official put it there and stubbed what the networks do not use)
    from training.dataloader.dataset import PortraitSynthesisSegLmdbFolderDatasetV2
    from training.loss import loss_genhead as off_loss_module

    from avatar.flame.synthetic import synthetic_genhead_assets
    from avatar.hub.convert import convert_file
    from avatar.losses.discriminator import DiscriminatorConfig, DualDiscriminator
    from avatar.models.genhead import GenHead
    from avatar.models.genhead.convert import read_official
    from train.data import ImageDataset, OfficialLmdb
    from train.genhead import training_labels
    from train.recipes.genhead import recipe
    from train.recipes.genhead_loss import ConditionSampler, GenConditions, GenHeadLoss

    torch.set_num_threads(max(1, torch.get_num_threads()))
    checks: dict[str, float] = {}
    assets = synthetic_genhead_assets(args.seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # ---- networks ------------------------------------------------------------------------------------
        cfg = gen_base.write_flame_files(tmp / "flame", assets)
        kwargs = gen_base.official_init_kwargs(cfg, args.small)
        kwargs["rendering_kwargs"].update(depth_resolution=args.depth, depth_resolution_importance=args.depth)
        torch.manual_seed(args.seed)
        G_off = official_cls(**kwargs).train().requires_grad_(False)
        G_off.neural_rendering_resolution = args.nr
        gen_base.randomize(G_off, args.seed)
        with open(tmp / "genhead.pkl", "wb") as f:
            pickle.dump({"G": G_off, "training_set_kwargs": {}}, f)
        converted = convert_file(tmp / "genhead.pkl", tmp / "converted", network="G")
        config = replace(read_official(converted.weights).config, neural_rendering_resolution=args.nr)
        G = GenHead.from_official(converted.weights, config=config, flame_masks=assets["masks"]).train()
        d_options = dict(disc_base.OFFICIAL_D_OPTIONS)
        if args.small:
            d_options.update(channel_base=8192, channel_max=64)
        D_off = disc_base.build_official(types.SimpleNamespace(dnnlib=dnnlib), disc_base.OFFICIAL_COMMON, d_options, args.seed + 7).train()
        D_off.requires_grad_(False)
        D = DualDiscriminator.from_official(
            D_off.state_dict(), config=DiscriminatorConfig.from_official({**d_options, **disc_base.OFFICIAL_COMMON}))
        D = D.train().requires_grad_(False)
        print(f"G: {sum(p.numel() for p in G_off.parameters()) / 1e6:.2f} M parameters, D: "
              f"{sum(p.numel() for p in D_off.parameters()) / 1e6:.2f} M; NR {args.nr}, {args.depth} + "
              f"{args.depth} samples per ray; batch {args.batch} of a global {args.global_batch}; "
              f"cur_nimg {args.kimg:g} kimg")

        # ---- data ----------------------------------------------------------------------------------------
        lmdb_path = write_lmdb(tmp, 6, args.seed)
        with contextlib.redirect_stdout(io.StringIO()):  # the official dataset prints its path
            training_set = PortraitSynthesisSegLmdbFolderDatasetV2(path=str(lmdb_path) + "/", resolution=512,
                                                                   data_type="ffhq", use_labels=True)
        ours_path = tmp / "ours" / lmdb_path.name  # LMDB opens a folder once per process: a copy for ours
        shutil.copytree(lmdb_path, ours_path)
        dataset = ImageDataset(OfficialLmdb(ours_path))
        indices = list(range(args.batch))
        with numpy1_fromstring():
            real_off = official_real(training_set, indices, G_off)
        r = replace(recipe(nr_initial=args.nr), batch=32)  # the official run's global batch: blur fade 200 kimg
        loss = GenHeadLoss(r, G, D)
        from torch.utils.data import default_collate

        items = default_collate([dataset[i] for i in indices])
        batch = loss.prepare(items, {})
        for key, ours_value in (("image", batch.image), ("seg", batch.seg), ("c", batch.c), ("uv", batch.uv)):
            checks[f"data: real {key} (loop lines vs prepare)"] = rel(ours_value, real_off[key])

        torch.manual_seed(args.seed + 100)
        np.random.seed(args.seed + 100)
        with numpy1_fromstring():
            draws_off = official_draws(training_set, G_off, args.global_batch, args.batch, kwargs["z_dim"])
        torch.manual_seed(args.seed + 100)
        np.random.seed(args.seed + 100)
        sampler = ConditionSampler(training_labels(dataset), len(dataset), G.config.z_dim, args.global_batch,
                                   args.batch, G.deformer.flame_deform.flame_model)
        draws = sampler("cpu")
        for phase, _ in PHASES:
            worst = max(rel(getattr(draws[phase], k), v) for k, v in draws_off[phase].items())
            checks[f"draws: {phase} (z, c_compose, c, shape, exp, pose, eye)"] = worst
        batch.gen = {p: GenConditions(**draws_off[p]) for p, _ in PHASES}  # the same tensors on both sides

        # ---- the phases ----------------------------------------------------------------------------------
        official = off_loss_module.PortraitSynthesisLoss(
            device=torch.device("cpu"), G=G_off, D=D_off, r1_gamma=r.r1_gamma, r1_gamma_uv=r.r1_gamma_uv,
            r1_gamma_seg=r.r1_gamma_seg, blur_init_sigma=r.blur_init_sigma,
            blur_fade_kimg=r.batch * r.blur_fade_kimg / 32, gpc_reg_prob=r.gpc_reg_prob,
            gpc_reg_fade_kimg=r.gpc_reg_fade_kimg, dual_discrimination=True,
            neural_rendering_resolution_initial=args.nr, neural_rendering_resolution_final=None,
            neural_rendering_resolution_fade_kimg=r.nr_fade_kimg, filter_mode="antialiased", style_mixing_prob=0,
            patch_scale=1.0, masked_sampling=0.0)
        cur_nimg = int(args.kimg * 1000)
        print(f"blur sigma {r.blur_sigma(cur_nimg):g}, GPC swapping prob {r.swapping_prob(cur_nimg):g}\n")
        rows: list[tuple[str, str, float, float, float]] = []
        grad_rows: list[tuple[str, float, str, int]] = []
        fns = {"Gmain": loss.g_main, "Greg": loss.g_reg, "Dmain": loss.d_main, "Dreg": loss.d_reg}
        for k, (phase, gain) in enumerate(PHASES):
            if phase not in args.phases:
                continue
            mod_off, mod = (G_off, G) if phase.startswith("G") else (D_off, D)
            seed = args.seed + 1000 + k
            gen = draws_off[phase]
            logs_off, grads_off, rng_off, t_off = run_official(official, mod_off, off_loss_module, phase, gain,
                                                               real_off, gen, cur_nimg, seed)
            logs, grads, rng, t_ours = run_ours(fns[phase], mod, phase, gain, batch, cur_nimg, seed)
            print(f"{phase}: official {t_off:.1f} s, ours {t_ours:.1f} s")
            for name, ref in logs_off.items():
                mine = logs.get(name)
                rows.append((phase, name, float(ref.mean()), float("nan") if mine is None else float(mine.mean()),
                             float("inf") if mine is None or mine.shape != ref.shape else rel(mine, ref)))
            for name in sorted(set(logs) - set(logs_off)):
                rows.append((phase, name + " (ours only)", float("nan"), float(logs[name].mean()), float("inf")))
            checks[f"{phase}: random draws (generator state after the phase)"] = 0.0 if torch.equal(rng, rng_off) \
                else float("inf")
            missing = sorted(set(grads_off) ^ set(grads))
            worst = max(((rel(grads[n], grads_off[n]), n) for n in grads_off if n in grads), default=(0.0, "-"))
            grad_rows.append((phase, float("inf") if missing else worst[0], worst[1], len(grads_off)))
            if missing:
                print(f"  gradients on one side only: {', '.join(missing[:6])}")
            if phase == "Dmain":
                checks["Dmain: mapping w_avg after update_emas"] = rel(G.backbone.mapping.w_avg,
                                                                       G_off.backbone.mapping.w_avg)

    print(f"\n{'phase':6s} {'term':28s} {'official':>14s} {'ours':>14s} {'rel diff':>10s}")
    for phase, name, a, b, d in rows:
        print(f"{phase:6s} {name:28s} {a:14.7g} {b:14.7g} {d:10.2e}")
    print(f"\n{'phase':6s} {'worst gradient (rel diff)':>26s}  {'tensor':s}")
    for phase, d, name, n in grad_rows:
        print(f"{phase:6s} {d:26.2e}  {name} (of {n} tensors with a gradient)")
    print(f"\n{'check':62s} {'rel diff':>10s}")
    for name, d in checks.items():
        print(f"{name:62s} {d:10.2e}")
    worst_term = max([d for *_, d in rows] + list(checks.values()), default=0.0)
    worst_grad = max((d for _, d, _, _ in grad_rows), default=0.0)
    ok = worst_term <= args.tol and worst_grad <= args.grad_tol
    print(f"\nworst term {worst_term:.2e} (tolerance {args.tol:g}), worst gradient {worst_grad:.2e} (tolerance "
          f"{args.grad_tol:g}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
