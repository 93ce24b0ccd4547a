"""GenHead's training losses: Gmain, Greg, Dmain and Dreg of the official ``PortraitSynthesisLoss``.

Official source: ``training/loss/loss_genhead.py::PortraitSynthesisLoss.accumulate_gradients`` (with ``run_G``,
``run_D`` and ``loss_utils.lossfun_distortion``), ``training/generator/triplane.py::PartTriPlaneGeneratorDeform.
sample_mixed`` and the per-iteration data preparation of ``training/training_loop_genhead.py`` (YuDeng/Portrait-4D
HEAD da5eec6; facts in ``shared/design/portrait4d-training.md`` section 5.3). Nothing is copied; the formulas are.

Per step (:class:`ConditionSampler`, :meth:`GenHeadLoss.prepare`): the real batch is mapped to ``[-1, 1]``, its
neck pose zeroed and its FLAME correspondence map (D's real ``uv``) rendered online at its camera; then, as the
official loop does, ``z`` for every phase (``torch.randn([4 * batch, z_dim])``) and, with ``random_combine=False``,
``(c, shape, exp, pose, eye)`` of ``4 * batch`` random training samples (``np.random.randint`` each, neck zeroed,
``c`` decomposed with :func:`~avatar.flame.camera_pose.decompose_camera_pose`, which returns ``c_compose`` for a
zero neck): one draw per phase per iteration, each process keeping the first ``batch / processes`` of each phase's
slice. The phases (``cur_nimg`` before the step):

* **Gmain** - ``run_G`` (FLAME uv of the generated sample; GPC: ``[c_compose, shape]`` rolled by one sample where
  ``rand(B, 1) < swapping_prob``; mapping; synthesis with random StyleGAN noise and stochastic ray sampling);
  ``softplus(-D(fake))`` with D's input ``[SR (blurred), raw, uv, seg]`` conditioned on ``c_compose``; plus the six
  part regularisers (:func:`part_regularizers`). One backward of the sum of the batch means.
* **Greg** - density TV: GPC with one scalar draw for the batch, mapping; 1000 points ``U[-1, 1]^3`` and their
  copies perturbed by ``N(0, (p_dist * box_warp)^2)``; :func:`sample_mixed` gives the eye, face and mouth densities;
  ``sum_k L1(sigma_k(x), sigma_k(x')) * density_reg / 3``.
* **Dmain** - ``run_G`` (``update_emas``: the mapping's ``w_avg`` moves), ``softplus(D(fake))`` (one backward), then
  ``softplus(-D(real))`` (a second backward); the real input is the 512 image, the raw image and the seg resized to
  NR with the antialiased filter and blurred with D's sigma, the seg's channel mean, and the online uv.
* **Dreg** - R1 on the same real input: gammas 1 (SR and raw), 10 (uv), 1 (seg); gradients w.r.t. the 512 image
  *as D reads it, blurred* (upstream's ``run_D`` puts the blurred image into the dict whose entries the R1
  gradients are then taken for, as in EG3D), the uv, and the NR raw image and seg (blurred before they are fed).

Every ``torch`` random draw is made in the official order with the same shapes (GPC, StyleGAN noise of the triplane
and background generators, the renderer's jitter and importance samples, Greg's points and directions), so the
same seed gives the same numbers as the official code (``scripts/compare_official_genhead_losses.py``).

Deviations, none of which changes a value or a gradient: the fake ``head_mask`` that ``run_G`` renders and never
uses is not rendered; the real preprocessing runs in the D phases only (upstream: at the top of every phase); Dmain's
generator pass runs under ``no_grad`` (upstream: with gradients on but G frozen); the real uv is rendered once per
step at the process's batch (upstream: the same, before the phases); data that is not at the generator's output
size (512 upstream, which asserts it) is resized to it with the antialiased filter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.flame.camera_pose import decompose_camera_pose
from avatar.losses.adversarial import blur_images, r1_inputs, r1_penalty, run_discriminator
from avatar.losses.discriminator import filtered_resizing
from avatar.models.genhead import GenHead, GenHeadOutput
from avatar.render.triplane import sample_from_planes
from train.core.phases import PhaseContext
from train.data.records import CAMERA, EXPRESSION, EYE_POSE, POSE, SHAPE
from train.recipes.genhead import GenHeadRecipe, PartRegularizerWeights

__all__ = ["PHASES", "ConditionSampler", "GenConditions", "GenHeadBatch", "GenHeadLoss", "gpc_conditioning",
           "lossfun_distortion", "part_regularizers", "sample_mixed", "zero_neck"]

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
"""The official phase list (lazy regularisation of G and D), the order of the per-phase draws."""


def zero_neck(pose: Tensor) -> Tensor:
    """``(B, 6)`` neck + jaw pose with the neck rotation zeroed (the camera carries the whole head rotation)."""
    return torch.cat([torch.zeros_like(pose[..., :3]), pose[..., 3:]], dim=-1)


def _unit_range(x: Tensor) -> Tensor:
    """uint8 (the loader's) -> float in [-1, 1] (``x / 127.5 - 1``); float input is taken as already scaled."""
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


@dataclass
class GenConditions:
    """One phase's generator inputs (``B`` = the process's batch).

    Attributes:
        z: ``(B, z_dim)`` latent, also the background latent (upstream ``gen_z_bg = gen_z``).
        c_compose: ``(B, 25)`` the drawn sample's camera label: GPC's conditioning and D's.
        c: ``(B, 25)`` the render camera (``c_compose`` with the neck rotation moved out; equal for a zero neck).
        shape, exp, pose, eye: FLAME ``(B, 300)``, ``(B, 100)``, ``(B, 6)`` (neck zeroed), ``(B, 6)``.
    """

    z: Tensor
    c_compose: Tensor
    c: Tensor
    shape: Tensor
    exp: Tensor
    pose: Tensor
    eye: Tensor

    @property
    def batch_size(self) -> int:
        return self.z.shape[0]

    def select(self, index: slice) -> GenConditions:
        return GenConditions(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass
class GenHeadBatch:
    """One step's data (images ``(B, 3, S, S)`` in [-1, 1], ``S`` = the generator's output size).

    Attributes:
        image, seg: the real image and its foreground matte (3 channels).
        c: ``(B, 25)`` the real camera (D's conditioning).
        shape, exp, pose, eye: the real FLAME parameters (neck zeroed).
        uv: ``(B, 3, S, S)`` FLAME correspondence map of the real parameters at ``c`` (D's real uv).
        gen: the generator's conditions per phase name (:data:`PHASES`).
    """

    image: Tensor
    seg: Tensor
    c: Tensor
    shape: Tensor
    exp: Tensor
    pose: Tensor
    eye: Tensor
    uv: Tensor
    gen: dict[str, GenConditions]

    @property
    def batch_size(self) -> int:
        return self.image.shape[0]

    def conditions(self, phase: str) -> GenConditions:
        """The draws of ``phase`` (``Gboth`` / ``Dboth``, without lazy regularisation, take the main phase's)."""
        if phase in self.gen:
            return self.gen[phase]
        main = phase[0] + "main"
        if main in self.gen:
            return self.gen[main]
        raise KeyError(f"no generator conditions for phase {phase!r} (have {', '.join(self.gen)})")


LabelFn = Callable[[int], np.ndarray]
"""``index -> (437,)`` float32 label of a training sample (layout: :mod:`train.data.records`)."""


class ConditionSampler:
    """The official per-iteration generator draws (``training_loop_genhead.py``, ``random_combine=False``).

    Each call draws ``z`` for all phases (``torch.randn([P * batch_size, z_dim])`` on the device; P = 4 phases),
    then ``P * batch_size`` sample indices (``np.random.randint(num_labels)``, one call each, the global numpy
    generator) and returns, per phase, the first ``batch_per_process`` rows of the phase's slice: labels split into
    ``c, shape, exp, pose, eye``, the neck zeroed, the render camera decomposed. Only the rows kept are read.

    Args:
        labels: ``index -> (437,)`` label; ``num_labels``: the number of training samples.
        z_dim: the generator's latent size.
        batch_size: the global batch (upstream draws that many per phase on every process).
        batch_per_process: the rows kept per phase.
        flame: the generator's FLAME (for the camera decomposition); None skips it (``c = c_compose``).
        phases: the run's phase names, in order (upstream draws for every phase of its list, due or not).
    """

    def __init__(self, labels: LabelFn, num_labels: int, z_dim: int, batch_size: int, batch_per_process: int,
                 flame: nn.Module | None = None, phases: tuple[str, ...] = PHASES) -> None:
        if num_labels < 1:
            raise ValueError("the condition sampler needs at least one training sample")
        if not 0 < batch_per_process <= batch_size:
            raise ValueError(f"batch_per_process must be in 1..{batch_size}, got {batch_per_process}")
        self.labels, self.num_labels = labels, int(num_labels)
        self.z_dim, self.batch_size, self.batch_per_process = int(z_dim), int(batch_size), int(batch_per_process)
        self.flame, self.phases = flame, tuple(phases)

    def __call__(self, device: torch.device | str) -> dict[str, GenConditions]:
        n, b, keep = len(self.phases), self.batch_size, self.batch_per_process
        all_z = torch.randn([n * b, self.z_dim], device=device)
        indices = [np.random.randint(self.num_labels) for _ in range(n * b)]
        out: dict[str, GenConditions] = {}
        for k, phase in enumerate(self.phases):
            rows = np.stack([np.asarray(self.labels(i), dtype=np.float32) for i in indices[k * b:k * b + keep]])
            lab = torch.from_numpy(rows).to(device)
            c_compose, shape, exp = lab[:, CAMERA], lab[:, SHAPE], lab[:, EXPRESSION]
            pose, eye = zero_neck(lab[:, POSE]), lab[:, EYE_POSE]
            c = c_compose if self.flame is None else decompose_camera_pose(self.flame, c_compose, shape, exp, pose)
            out[phase] = GenConditions(all_z[k * b:k * b + keep], c_compose, c, shape, exp, pose, eye)
        return out


# ----------------------------------------------------------------------------------------------------------
# pieces of the official loss


def gpc_conditioning(c_compose: Tensor, shape: Tensor, swapping_prob: float | None,
                     per_sample: bool = True) -> tuple[Tensor, Tensor]:
    """Generator pose conditioning: ``[c_compose, shape]`` rolled by one sample (``torch.roll(x, 1, 0)``) where
    ``rand < swapping_prob`` (one draw per sample, ``rand(B, 1)``, in Gmain / Dmain; one scalar ``rand([])`` for
    the batch in Greg), zeros when ``swapping_prob`` is None. Returns the mapping's ``(camera, shape)`` parts."""
    cond = torch.cat([c_compose, shape], dim=-1)
    if swapping_prob is None:
        cond = torch.zeros_like(cond)
    else:
        swapped = torch.roll(cond, 1, 0)
        draw = torch.rand((cond.shape[0], 1), device=cond.device) if per_sample else \
            torch.rand([], device=cond.device)
        cond = torch.where(draw < swapping_prob, swapped, cond)
    return cond[:, :c_compose.shape[-1]], cond[:, c_compose.shape[-1]:]


def lossfun_distortion(t: Tensor, w: Tensor) -> Tensor:
    """mip-NeRF 360's distortion loss ``iint w_i w_j |t_i - t_j|`` per ray (``loss_utils.lossfun_distortion`` with
    ``reduction=None``): ``t (..., S)`` sample depths, ``w (..., S - 1)`` interval weights -> ``(...)``."""
    ut = (t[..., 1:] + t[..., :-1]) / 2
    dut = torch.abs(ut[..., :, None] - ut[..., None, :])
    loss_inter = torch.sum(w * torch.sum(w[..., None, :] * dut, dim=-1), dim=-1)
    loss_intra = torch.sum(w ** 2 * (t[..., 1:] - t[..., :-1]), dim=-1) / 3
    return loss_inter + loss_intra


def part_regularizers(out: GenHeadOutput, weights: PartRegularizerWeights) -> dict[str, Tensor]:
    """GenHead's six part regularisers of a synthesis at the training resolution, each ``(B, 1)`` (already
    weighted; the loss adds their batch means). Names are the official ``Loss/G/*`` keys.

    With ``e`` / ``m`` the eye / mouth mask ``(B, 1, NR, NR)`` and per ray ``r`` and sample ``s``:
    ``loss_face_eye = 10 mean_{r,s} softplus(sigma_face,rs [in eye box]) e_r``; ``loss_eye_density = 100
    mean_r distortion_r e_r``; ``loss_eye_T = 100 mean T_bg e``; the mouth terms likewise with ``m`` (the face
    density on every sample of the ray). A term is zero where its mask is empty.
    """
    b = out.t_bg.shape[0]
    r = out.render
    dist = lossfun_distortion(r.all_depths.squeeze(-1), r.weights.squeeze(-1))  # (B, R)
    terms: dict[str, Tensor] = {}
    for part, mask, density, (w_face, w_density, w_t) in (
            ("eye", out.masks.eye, r.face_density_in_eye, (weights.face_eye, weights.eye_density, weights.eye_t)),
            ("mouth", out.masks.mouth, r.face_density_in_mouth,
             (weights.face_mouth, weights.mouth_density, weights.mouth_t))):
        m = mask[:, 0]
        terms[f"loss_face_{part}"] = (F.softplus(density) * m.reshape(b, -1, 1, 1)).mean(dim=[1, 2, 3])[:, None] * \
            w_face
        terms[f"loss_{part}_density"] = (dist * m.reshape(b, -1)).mean(dim=1, keepdim=True) * w_density
        terms[f"loss_{part}_T"] = (out.t_bg * mask).mean(dim=[1, 2, 3])[:, None] * w_t
    return terms


def sample_mixed(G: GenHead, points: Tensor, directions: Tensor, shape: Tensor, exp: Tensor, pose: Tensor,
                 eye: Tensor, ws: Tensor, noise_mode: str = "random") -> tuple[Tensor, Tensor, Tensor]:
    """Raw densities ``(B, N, 1)`` of the part triplane at the eye-deformed points, the face triplane at the
    face-deformed points and the part triplane at the mouth-deformed points (official ``sample_mixed`` with
    ``use_deform=True``: triplanes of ``ws``, then the part deformation of ``points (B, N, 3)``, then the shared
    decoder; ``directions`` are unused by the decoder, as upstream)."""
    planes = G.triplanes(ws, noise_mode=noise_mode)  # (B, 6, C, H, W)
    deformed = G.part_deformation(shape, exp, pose, eye)(points)
    box = G.renderer.options.box_warp
    part, face = planes[:, 0:3], planes[:, 3:6]
    out = []
    for plane, where in ((part, deformed.eye), (face, deformed.face), (part, deformed.mouth)):
        _, sigma = G.decoder(sample_from_planes(plane, where, box), directions)
        out.append(sigma)
    return out[0], out[1], out[2]


# ----------------------------------------------------------------------------------------------------------
# the loss


class GenHeadLoss:
    """The four phase losses of GenHead's training (see the module docstring).

    Args:
        recipe: the training recipe (schedules, weights).
        G: the generator being trained (train mode: stochastic ray sampling, as upstream).
        D: the dual discriminator.
        deterministic: ray sampling without jitter (tests); None follows G's mode (the official: random).
        noise_mode: StyleGAN noise of the triplane and background generators (official training: ``'random'``).
    """

    def __init__(self, recipe: GenHeadRecipe, G: GenHead, D: nn.Module, *, deterministic: bool | None = None,
                 noise_mode: str = "random") -> None:
        self.recipe, self.G, self.D = recipe, G, D
        self.deterministic, self.noise_mode = deterministic, noise_mode
        nr_train = int(G.config.neural_rendering_resolution)
        if recipe.nr_final is not None or recipe.nr_initial != nr_train:
            raise ValueError(f"GenHead trains at its training resolution {nr_train} (the official recipe's NR is "
                             f"fixed); got nr_initial={recipe.nr_initial}, nr_final={recipe.nr_final}")

    # ---- schedules ----------------------------------------------------------------------------------------
    def resolution(self, cur_nimg: float) -> int:
        return self.recipe.neural_rendering_resolution(cur_nimg)

    def swapping_prob(self, cur_nimg: float) -> float | None:
        return self.recipe.swapping_prob(cur_nimg)

    def blur_sigma(self, cur_nimg: float) -> float:
        return self.recipe.blur_sigma(cur_nimg)

    @property
    def image_size(self) -> int:
        return int(self.G.config.img_resolution)

    # ---- data ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, batch: Mapping[str, Any], gen: dict[str, GenConditions]) -> GenHeadBatch:
        """A collated :class:`~train.data.ImageDataset` batch and the step's generator draws -> :class:`GenHeadBatch`
        (the real part of the official loop's per-iteration preparation)."""
        size = self.image_size

        def sized(x: Tensor) -> Tensor:
            return x if x.shape[-1] == size else filtered_resizing(x, size)

        seg = _unit_range(batch["seg"])
        if seg.shape[1] == 1:
            seg = seg.repeat(1, 3, 1, 1)
        c = batch["c"].float()
        shape, exp = batch["shape"].float(), batch["exp"].float()
        pose, eye = zero_neck(batch["pose"].float()), batch["eye"].float()
        uv = self.G.uv_map(c, shape, exp, pose, eye).uv
        return GenHeadBatch(sized(_unit_range(batch["image"])), sized(seg), c, shape, exp, pose, eye, uv, gen)

    def real_inputs(self, batch: GenHeadBatch, nr: int, sigma: float) -> dict[str, Tensor]:
        """D's real input: the image at full size, the image and seg resized to ``nr`` (antialiased) and blurred with
        ``sigma``, the seg's channel mean, the uv."""
        raw = filtered_resizing(batch.image, nr)
        seg = filtered_resizing(batch.seg, nr)
        raw, seg = blur_images(raw, sigma), blur_images(seg, sigma)
        return {"image_sr": batch.image, "uv": batch.uv, "image": raw, "seg": seg.mean(dim=1, keepdim=True)}

    # ---- shared pieces ------------------------------------------------------------------------------------
    def run_generator(self, cond: GenConditions, swapping_prob: float | None, nr: int,
                      update_emas: bool = False) -> tuple[GenHeadOutput, Tensor]:
        """The official ``run_G``: the uv map of the generated sample, GPC, mapping and synthesis."""
        with torch.no_grad():
            uv = self.G.uv_map(cond.c, cond.shape, cond.exp, cond.pose, cond.eye).uv
        camera, shape = gpc_conditioning(cond.c_compose, cond.shape, swapping_prob)
        ws = self.G.mapping(cond.z, camera, shape, update_emas=update_emas)
        out = self.G.synthesis(ws, cond.z, cond.c, cond.shape, cond.exp, cond.pose, cond.eye, nr,
                               noise_mode=self.noise_mode, deterministic=self.deterministic, update_emas=update_emas)
        return out, uv

    def _discriminate(self, out: GenHeadOutput, uv: Tensor, c: Tensor, sigma: float) -> Tensor:
        fake = {"image_sr": out.image, "image": out.image_raw, "uv": uv, "seg": out.seg}
        return run_discriminator(self.D, fake, c, blur_sigma=sigma)

    # ---- phases -------------------------------------------------------------------------------------------
    def g_main(self, batch: GenHeadBatch, ctx: PhaseContext) -> None:
        """Gmain: ``softplus(-D(fake))`` plus the six part regularisers."""
        cur_nimg = ctx.state.cur_nimg
        cond = batch.conditions(ctx.phase)
        with ctx.autocast():
            out, uv = self.run_generator(cond, self.swapping_prob(cur_nimg), self.resolution(cur_nimg))
            logits = self._discriminate(out, uv, cond.c_compose, self.blur_sigma(cur_nimg))
            ctx.log("Loss/scores/fake", logits.detach())
            ctx.log("Loss/signs/fake", logits.detach().sign())
            g_loss = F.softplus(-logits)
            ctx.log("Loss/G/loss", g_loss.detach())
            regs = part_regularizers(out, self.recipe.parts)
            for name, value in regs.items():
                ctx.log(f"Loss/G/{name}", value.detach())
            loss = g_loss.mean()
            for name in ("loss_face_eye", "loss_face_mouth", "loss_mouth_density", "loss_mouth_T",
                         "loss_eye_density", "loss_eye_T"):  # the official order of the sum
                loss = loss + regs[name].mean()
        ctx.backward(loss)

    def g_reg(self, batch: GenHeadBatch, ctx: PhaseContext) -> None:
        """Greg: the density TV of :func:`sample_mixed`'s eye, face and mouth densities, averaged."""
        r = self.recipe
        if not r.density_reg:
            return
        cond = batch.conditions(ctx.phase)
        with ctx.autocast():
            camera, shape = gpc_conditioning(cond.c_compose, cond.shape, self.swapping_prob(ctx.state.cur_nimg),
                                             per_sample=False)
            ws = self.G.mapping(cond.z, camera, shape)
            n = r.density_reg_points
            initial = torch.rand((ws.shape[0], n, 3), device=ws.device) * 2 - 1
            perturbed = initial + torch.randn_like(initial) * r.density_reg_p_dist * self.G.renderer.options.box_warp
            points = torch.cat([initial, perturbed], dim=1)
            sigmas = sample_mixed(self.G, points, torch.randn_like(points), cond.shape, cond.exp, cond.pose,
                                  cond.eye, ws, self.noise_mode)
            tv = sum(F.l1_loss(s[:, :n], s[:, n:2 * n]) * r.density_reg / len(sigmas) for s in sigmas)
            assert isinstance(tv, Tensor)
        ctx.log("Loss/G/TVloss", tv.detach())
        ctx.backward(tv)

    def d_main(self, batch: GenHeadBatch, ctx: PhaseContext) -> None:
        """Dmain: ``softplus(D(fake))`` then ``softplus(-D(real))``, one backward each."""
        cur_nimg = ctx.state.cur_nimg
        cond = batch.conditions(ctx.phase)
        nr, sigma = self.resolution(cur_nimg), self.blur_sigma(cur_nimg)
        with ctx.autocast():
            with torch.no_grad():
                out, uv = self.run_generator(cond, self.swapping_prob(cur_nimg), nr, update_emas=True)
            fake_logits = self._discriminate(out, uv, cond.c_compose, sigma)
            ctx.log("Loss/scores/fake", fake_logits.detach())
            ctx.log("Loss/signs/fake", fake_logits.detach().sign())
            loss_fake = F.softplus(fake_logits)
        ctx.backward(loss_fake)
        with ctx.autocast():
            real = {k: v.detach() for k, v in self.real_inputs(batch, nr, sigma).items()}
            real_logits = run_discriminator(self.D, real, batch.c, blur_sigma=sigma)
            ctx.log("Loss/scores/real", real_logits.detach())
            ctx.log("Loss/signs/real", real_logits.detach().sign())
            loss_real = F.softplus(-real_logits)
        ctx.log("Loss/D/loss", (loss_fake + loss_real).detach())
        ctx.backward(loss_real)

    def d_reg(self, batch: GenHeadBatch, ctx: PhaseContext) -> None:
        """Dreg: R1 on the real input (gradients w.r.t. the blurred image and the uv at full size, the raw image and
        seg at NR)."""
        r = self.recipe
        if not r.r1_gamma:  # upstream skips Dreg when the image gamma is 0 (whatever the uv and seg gammas)
            return
        cur_nimg = ctx.state.cur_nimg
        nr, sigma = self.resolution(cur_nimg), self.blur_sigma(cur_nimg)
        with ctx.autocast():
            inputs = r1_inputs(self.real_inputs(batch, nr, sigma))
            # upstream's run_D replaces image_sr in the caller's dict by its blurred copy, so the R1 gradient is
            # taken with respect to the blurred image D reads (not through the blur): the same here
            inputs["image_sr"] = blur_images(inputs["image_sr"], sigma)
            logits = run_discriminator(self.D, inputs, batch.c)
            ctx.log("Loss/scores/real", logits.detach())
            ctx.log("Loss/signs/real", logits.detach().sign())
            r1 = r1_penalty(logits, inputs, r.r1_gamma, r.r1_gamma_uv, r.r1_gamma_seg)
        ctx.log("Loss/r1_penalty", r1.penalty.detach())
        ctx.log("Loss/D/reg", r1.loss.detach())
        ctx.backward(r1.loss)
