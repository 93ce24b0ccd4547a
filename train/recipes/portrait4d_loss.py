"""The Portrait4D reconstructor's training losses: Gmain, Greg, Dmain, Dreg of v1, static and v2.

Official source: ``training/loss/loss_recon_v1.py`` and ``loss_recon_v2.py`` (``AnimatablePortraitReconLoss``),
with the per-step data preparation of ``training_loop_recon_v{1,2}.py``; the facts are collected in
``shared/design/portrait4d-training.md`` sections 1.3-1.7 and 6. Nothing here is copied; the formulas are.

:meth:`Portrait4DLoss.prepare` turns a collated batch (the clip-pair dataset's dict, uint8 images) into a
:class:`ReconBatch` once per step (images in [-1, 1], ``c_recon`` from :func:`~avatar.flame.camera_pose.
decompose_camera_pose`, the FLAME correspondence map and landmarks of the driving FLAME at ``c_recon``: the real
``uv`` of D, the fake ``uv`` and the ArcFace / PD-FGC landmarks, which the official code renders twice with the same
arguments). The four phase losses then follow the official order of random draws, so the same seed gives the same
numbers as the official code (``scripts/compare_official_portrait4d_losses.py``):

* **Gmain** - v2's motion augmentation (when on), ``run_G`` (conditioning draws, Psi's stochastic render),
  ``sum LPIPS`` + ``sum L1`` over (SR, raw, raw without background, background) + ``0.3 seg`` + ArcFace identity
  (from ``id_start_kimg``) + v1's depth / feature / triplane distillation (before ``distill_end_kimg``, when the
  batch carries GenHead targets) + ``0.01 softplus(-D(fake))`` (from ``discrimination_kimg``).
* **Greg** - ``l1`` (v1, static): density of 1000 points in ``[-1, 1]^3`` against perturbed copies; ``G_fix_img``
  (v2): LPIPS between Psi and the frozen static model G_fix at a random camera, each masked by its own seg.
* **Dmain** - ``softplus(D(fake))`` then ``softplus(-D(real))``, two backward passes as upstream.
* **Dreg** - R1 with gammas 1 (SR and raw), 10 (uv), 1 (seg).

Deviations, none of which changes a loss value or gradient:

* The motion augmentation is skipped in Dreg, which does not use the motions (upstream renders G_fix there for
  nothing, one extra G_fix forward per 16 steps); the random stream after a Dreg phase differs from upstream's.
* ``gen_img`` carries only what D reads; the real uv / landmarks are rendered once per step (see above).
* Blur of D's inputs is implemented but every reconstructor recipe has it off (``blur_init_sigma`` 0).

``--mixed-precision bf16`` (not in the official code, which runs fp32 with fp16 blocks in D and the
super-resolution) runs each phase under autocast.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.flame.camera_pose import decompose_camera_pose
from avatar.flame.correspondence import FlameCorrespondenceRenderer
from avatar.losses.adversarial import (
    blur_images,
    blur_sigma_schedule,
    discriminator_fake_loss,
    discriminator_real_loss,
    r1_inputs,
    r1_penalty,
    run_discriminator,
)
from avatar.losses.arcface import flame_alignment_matrices, warp_affine
from avatar.losses.discriminator import filtered_resizing
from avatar.models.portrait4d.modeling import HeadPose, Portrait4D
from avatar.models.portrait4d.training import (
    plane_features,
    sample_density,
    train_forward,
    training_conditioning,
    zero_head_pose,
)
from avatar.render.camera import sample_lookat_cam2world
from train.core.phases import PhaseContext
from train.recipes.portrait4d import Portrait4DRecipe

__all__ = ["SR_RESOLUTION", "Portrait4DLoss", "ReconBatch", "eye_closure_box_scale", "regularizer_cameras"]

SR_RESOLUTION = 512
"""Side of Psi's super-resolved output (``SuperresolutionHybrid8XDC``: 128 -> 256 -> 512 in every config): the
size of targets, uv maps, landmarks and D's input. The official input size equals it; the tiny test configs take
smaller inputs, and their data is resized on the fly (targets up to this size, sources down to the input size)."""


@dataclass
class ReconBatch:
    """One step's data, prepared (images ``(B, 3, S, S)`` in [-1, 1], ``S`` = the generator's resolution).

    Attributes:
        source_image, driving_image: appearance and motion frames; ``target_image``: the reconstruction target
            (v2: the driving frame). ``target_seg`` ``(B, 3, S, S)`` foreground matte in [-1, 1].
        c_compose: ``(B, 25)`` the target's camera label (whole head rotation in the camera; D's conditioning);
            ``c_recon``: the same with the neck rotation moved into FLAME (Psi's camera).
        shape, exp, pose, eye: FLAME parameters (source shape; driving expression, neck + jaw, eyes).
        source_motion, driving_motion: ``(B, 548)`` PD-FGC motions.
        uv: ``(B, 3, S, S)`` FLAME correspondence map at ``c_recon``; landmarks ``(B, 70, 2)`` projected FLAME
            landmarks (pixels of ``S``, y up).
        seg_render, depth, feature, feature_bg, triplane: v1's GenHead targets (``None`` for video data).
    """

    source_image: Tensor
    driving_image: Tensor
    target_image: Tensor
    target_seg: Tensor
    c_compose: Tensor
    c_recon: Tensor
    shape: Tensor
    exp: Tensor
    pose: Tensor
    eye: Tensor
    source_motion: Tensor
    driving_motion: Tensor
    uv: Tensor
    landmarks: Tensor
    seg_render: Tensor | None = None
    depth: Tensor | None = None
    feature: Tensor | None = None
    feature_bg: Tensor | None = None
    triplane: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.source_image.shape[0]

    def head_pose(self) -> HeadPose:
        return HeadPose(pose=self.pose, expression=self.exp, eye_pose=self.eye, shape=self.shape)

    def select(self, index: slice) -> ReconBatch:
        """The samples ``index`` (for image grids)."""
        return ReconBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                             for f in fields(self)})


def _images(x: Tensor) -> Tensor:
    """uint8 (the loader's) -> float in [-1, 1] (``x / 127.5 - 1``); float input is taken as already scaled."""
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


def regularizer_cameras(c: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random novel-view labels ``(B, 25)`` of v2's G_fix regulariser and motion augmentation (the intrinsics of
    ``c``): yaw ``pi/2 + U(-0.78, 0.78)``, pitch ``pi/2 - (U(-0.45, 0.45) + 0.2)``, roll ``U(-0.25, 0.25)``,
    pivot ``3 (U(-.01, .01), U(-.01, .01), U(.02, .04))``, radius ``U(3.65, 4.45)``: eight ``torch.rand``
    draws in upstream's order, then the LookAt sampler's three (zero-std) ``randn`` draws."""
    b, dev = c.shape[0], c.device

    def rand() -> Tensor:
        return torch.rand((b, 1), device=dev, generator=generator)

    yaw = rand() * 0.78 * 2 - 0.78
    pitch = rand() * 0.45 * 2 - 0.45 + 0.2
    roll = rand() * 0.25 * 2 - 0.25
    px, py, pz = rand() * 0.02 - 0.01, rand() * 0.02 - 0.01, rand() * 0.02 - 0.01 + 0.03
    pivot = torch.cat([px * 3, py * 3, pz * 3], dim=-1)
    radius = rand() * 0.8 + 3.65
    cam2world = sample_lookat_cam2world(math.pi / 2 + yaw, math.pi / 2 - pitch, pivot, radius=radius, roll_mean=roll,
                                   batch_size=b, device=dev, generator=generator)
    return torch.cat([cam2world.reshape(-1, 16), c[:, 16:25].reshape(-1, 9)], dim=-1)


def eye_closure_box_scale(landmarks: Tensor) -> Tensor:
    """v2's ``g_fix_reg_img_aug`` box scale ``(B, 1, 1)``: ``clamp(0.97 + 0.1 r, 0.97, 1)`` with ``r`` the mean
    eyelid opening (37-41, 38-40, 43-47, 44-46) over the eye widths (36-39, 42-45), clamped to ``[0, 0.3]``, of
    landmarks rendered at the canonical camera: a closed-eye head is drawn smaller."""
    def dist(a: list[int], b: list[int]) -> Tensor:
        return torch.sqrt(((landmarks[:, a] - landmarks[:, b]) ** 2).sum(-1) + 1e-10).mean(1)

    ratio = (dist([37, 38, 43, 44], [41, 40, 47, 46]) / dist([36, 42], [39, 45])).clamp(0, 0.3)
    return (ratio * 0.3 / 3 + 0.97).clamp(0.97, 1).reshape(-1, 1, 1)


def _in_autocast(phase: Callable[[Any, ReconBatch, PhaseContext], None]
                 ) -> Callable[[Any, ReconBatch, PhaseContext], None]:
    """Run a phase under the run's mixed-precision context (``--mixed-precision bf16``; a no-op in the official
    fp32 setting)."""
    @functools.wraps(phase)
    def wrapped(self: Any, batch: ReconBatch, ctx: PhaseContext) -> None:
        with ctx.autocast():
            phase(self, batch, ctx)

    return wrapped


def _wobg(image: Tensor, seg: Tensor) -> Tensor:
    """``image`` masked by ``(seg + 1) / 2``, in [0, 1] arithmetic, back to [-1, 1]."""
    return ((image + 1) * 0.5 * (seg + 1) * 0.5) * 2 - 1


def _background(image: Tensor, seg: Tensor) -> Tensor:
    return ((image + 1) * 0.5 * (1 - (seg + 1) * 0.5)) * 2 - 1


class Portrait4DLoss:
    """The four phase losses of one recipe (see the module docstring).

    Args:
        recipe: the training recipe (thresholds, weights, NR schedule, regulariser type).
        G: the reconstructor being trained; ``D``: the dual discriminator.
        renderer: the FLAME correspondence renderer sharing G's FLAME (uv maps, landmarks).
        lpips: LPIPS network ``(x, y) -> (B,)`` (VGG); ``arcface``: identity network ``(B, 3, s, s) -> (B, 512)``.
        G_fix: v2's frozen static model (its regulariser and motion augmentation); ``pdfgc``: the PD-FGC
            encoder (v2's motion augmentation).
        motion_scale, swapping_prob, half_static: the loss's ``run_G`` options (official: 1 / None / False for
            v2; v1: ``half_static`` True; static: motion scale 0).
        deterministic: deterministic volume rendering instead of the official random sampling (tests).
        gradient_checkpointing: recompute Psi's encoders, rendering and super-resolution in the backward pass
            instead of keeping their activations (less memory, the same numbers).
    """

    def __init__(self, recipe: Portrait4DRecipe, G: Portrait4D, D: nn.Module, renderer: FlameCorrespondenceRenderer,
                 lpips: nn.Module, arcface: nn.Module | None = None, G_fix: Portrait4D | None = None,
                 pdfgc: nn.Module | None = None, *, motion_scale: float = 1.0, swapping_prob: float | None = None,
                 half_static: bool = False, deterministic: bool = False, gradient_checkpointing: bool = False) -> None:
        self.recipe = recipe
        self.G, self.D, self.G_fix = G, D, G_fix
        self.renderer, self.lpips, self.arcface, self.pdfgc = renderer, lpips, arcface, pdfgc
        self.motion_scale, self.swapping_prob, self.half_static = motion_scale, swapping_prob, half_static
        self.deterministic = deterministic
        self.gradient_checkpointing = gradient_checkpointing
        if recipe.reg_type == "G_fix_img" and G_fix is None:
            raise ValueError(f"recipe {recipe.name}: the G_fix_img regulariser needs G_fix (the static model)")
        if recipe.mot_aug_prob and (G_fix is None or pdfgc is None):
            raise ValueError(f"recipe {recipe.name}: motion augmentation needs G_fix and the PD-FGC encoder")
        if recipe.losses.identity and arcface is None:
            raise ValueError(f"recipe {recipe.name}: the identity loss needs an ArcFace network")

    # ---- schedules ----------------------------------------------------------------------------------------
    def resolution(self, cur_nimg: float) -> int:
        return self.recipe.neural_rendering_resolution(cur_nimg)

    def adversarial(self, cur_nimg: float) -> bool:
        return cur_nimg >= self.recipe.discrimination_kimg * 1e3

    def blur_sigma(self, cur_nimg: float) -> float:
        return blur_sigma_schedule(cur_nimg, self.recipe.blur_init_sigma, self.recipe.blur_fade_kimg)

    @property
    def image_size(self) -> int:
        """Side of targets, uv maps and landmark pixels (:data:`SR_RESOLUTION`)."""
        return SR_RESOLUTION

    def _sized(self, x: Tensor, size: int) -> Tensor:
        return x if x.shape[-1] == size else filtered_resizing(x, size)

    # ---- data ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, batch: Mapping[str, Any]) -> ReconBatch:
        """A collated dataset batch -> :class:`ReconBatch` (the per-step part of the official loop)."""
        def get(key: str) -> Tensor | None:
            value = batch.get(key)
            return None if value is None or (isinstance(value, Tensor) and value.ndim <= 1 and key in _V1_KEYS) \
                else value

        c_compose = batch["c"].float()
        shape, exp = batch["shape"].float(), batch["exp"].float()
        pose, eye = batch["pose"].float(), batch["eye"].float()
        flame = self.renderer.flame
        c_recon = decompose_camera_pose(flame, c_compose, shape, exp, pose)
        out = self.renderer(shape, exp, pose, eye, c_recon, half_size=self.image_size // 2)
        if out.landmarks_2d is None:
            raise ValueError("the FLAME model has no landmark embedding: the identity and motion losses need it")
        size, inputs = self.image_size, int(self.G.config.img_resolution)
        driving = _images(batch["driving_image"])
        target = self._sized(_images(batch["target_image"]) if "target_image" in batch else driving, size)
        seg = _images(batch["driving_seg"] if "driving_seg" in batch else batch["target_seg"])
        if seg.shape[1] == 1:
            seg = seg.repeat(1, 3, 1, 1)
        seg = self._sized(seg, size)
        extras = {k: (None if (v := get(k)) is None else v.float()) for k in _V1_KEYS}
        if extras["seg_render"] is not None:
            extras["seg_render"] = _images(batch["seg_render"])
        return ReconBatch(
            source_image=self._sized(_images(batch["source_image"]), inputs),
            driving_image=self._sized(driving, inputs), target_image=target,
            target_seg=seg, c_compose=c_compose, c_recon=c_recon, shape=shape, exp=exp, pose=pose, eye=eye,
            source_motion=batch["source_motion"].float(), driving_motion=batch["driving_motion"].float(),
            uv=batch["uv"].float() if batch.get("uv") is not None else out.uv, landmarks=out.landmarks_2d,
            **extras)

    # ---- shared pieces ------------------------------------------------------------------------------------
    def _run_generator(self, batch: ReconBatch, motions: Tensor, camera: Tensor, nr: int,
               head_pose: HeadPose) -> dict[str, Tensor]:
        """The official ``run_G``: conditioning draws, then Psi's render (with gradients when G trains)."""
        image, motion_app, scale = training_conditioning(
            batch.source_image, batch.driving_image, batch.source_motion, motions, self.motion_scale,
            self.swapping_prob, self.half_static)
        return train_forward(self.G, image, motion_app, motions, camera, nr, head_pose=head_pose,
                             motion_scale=scale, deterministic=self.deterministic,
                             gradient_checkpointing=self.gradient_checkpointing)

    @torch.no_grad()
    def augment_motion(self, batch: ReconBatch, nr: int) -> Tensor:
        """v2's ``aug_mot_with_G_fix``: the driving motion re-extracted from a G_fix novel view of the driving
        frame (probability ``mot_aug_prob``), else the dataset's."""
        assert self.G_fix is not None and self.pdfgc is not None
        camera = regularizer_cameras(batch.c_recon)
        out = train_forward(self.G_fix, batch.driving_image, batch.driving_motion, batch.driving_motion, camera, nr,
                            head_pose=batch.head_pose(), motion_scale=0.0, deterministic=self.deterministic)
        landmarks = self.renderer(batch.shape, batch.exp, batch.pose, batch.eye, camera,
                                  half_size=self.image_size // 2).landmarks_2d
        augmented = self.pdfgc.motion_from_image(out["image_sr"], landmarks, reverse_y=True)
        keep = torch.rand((augmented.shape[0], 1), device=augmented.device)
        return torch.where(keep < 1 - self.recipe.mot_aug_prob, batch.driving_motion, augmented)

    def _motions(self, batch: ReconBatch, nr: int) -> Tensor:
        return self.augment_motion(batch, nr) if self.recipe.mot_aug_prob else batch.driving_motion

    def real_inputs(self, batch: ReconBatch, nr: int, cur_nimg: float) -> dict[str, Tensor]:
        """D's real input: target at full size, target at NR (blurred as D's SR input), uv, seg (channel mean)
        at NR."""
        seg_render = self._seg_render(batch, nr)
        raw = filtered_resizing(batch.target_image, nr)
        sigma = self.blur_sigma(cur_nimg)
        if sigma > 0:
            raw = blur_images(raw, sigma)
        return {"image_sr": batch.target_image, "image": raw, "uv": batch.uv,
                "seg": seg_render.mean(dim=1, keepdim=True)}

    def _seg_render(self, batch: ReconBatch, nr: int) -> Tensor:
        source = batch.seg_render if batch.seg_render is not None else batch.target_seg
        return filtered_resizing(source, nr)

    def identity(self, generated: Tensor, target: Tensor, landmarks: Tensor) -> Tensor:
        """``mean(1 - cos(ArcFace(warp(gen)), ArcFace(warp(target))))`` on crops aligned by the FLAME landmarks
        (the same warp for both; inputs clamped to [-1, 1]; the target's embedding without gradients)."""
        assert self.arcface is not None
        size = int(getattr(getattr(self.arcface, "config", None), "input_size", 112))
        matrices = flame_alignment_matrices(landmarks, target.shape[-1], size)
        gen_id = self.arcface(warp_affine(generated, matrices, (size, size)).clamp(-1, 1))
        with torch.no_grad():
            real_id = self.arcface(warp_affine(target, matrices, (size, size)).clamp(-1, 1))
        return (1 - F.cosine_similarity(gen_id, real_id, dim=-1)).mean()

    # ---- phases -------------------------------------------------------------------------------------------
    @_in_autocast
    def g_main(self, batch: ReconBatch, ctx: PhaseContext) -> None:
        """Gmain (design note 1.4)."""
        cur_nimg, w = ctx.state.cur_nimg, self.recipe.losses
        nr = self.resolution(cur_nimg)
        motions = self._motions(batch, nr)
        gen = self._run_generator(batch, motions, batch.c_recon, nr, batch.head_pose())
        target = batch.target_image
        real_raw = filtered_resizing(target, nr)
        seg_render = self._seg_render(batch, nr)
        real_wobg = _wobg(real_raw, seg_render)
        real_bg = _background(real_raw, seg_render)
        feature_bg = None if batch.feature_bg is None else filtered_resizing(batch.feature_bg, nr)
        if feature_bg is None:  # v2: Psi's background where the target is background
            bg_pair = (_background(gen["rgb_bg"], seg_render), real_bg)
        else:  # v1: GenHead's background
            bg_pair = (gen["rgb_bg"], feature_bg[:, :3])
        pairs = [(gen["image_sr"], target), (gen["image"], real_raw), (gen["image_wobg"], real_wobg), bg_pair]
        lpips = sum(self.lpips(a, b) for a, b in pairs)
        l1 = sum((a - b).abs().mean() for a, b in pairs)
        ctx.log("Loss/G/lrecon_lpips", lpips.detach())
        ctx.log("Loss/G/lrecon_l1", l1.detach())
        total = lpips * w.lpips + l1 * w.l1
        if w.identity and self.arcface is not None:
            l_id = self.identity(gen["image_sr"], target, batch.landmarks)
            ctx.log("Loss/G/l_id", l_id.detach())
            if cur_nimg >= self.recipe.id_start_kimg * 1e3:
                total = total + l_id * w.identity
        seg = (seg_render - gen["seg"]).abs().mean()
        ctx.log("Loss/G/lrecon_seg", seg.detach())
        total = total + seg * w.seg
        distill = cur_nimg < self.recipe.distill_end_kimg * 1e3
        if distill and batch.depth is not None:
            real_seg_raw = filtered_resizing(batch.target_seg, nr)
            depth = ((batch.depth - gen["image_depth"]) * (real_seg_raw[:, 0:1] + 1) * 0.5).abs().mean()
            ctx.log("Loss/G/lrecon_depth", depth.detach())
            total = total + depth * w.depth
        if distill and batch.feature is not None and feature_bg is not None:
            feature = _wobg(batch.feature, seg_render[:, 0:1])
            l_feat = (feature - gen["image_feature_wobg"]).abs().mean() + \
                (feature_bg - gen["background_feature"]).abs().mean()
            ctx.log("Loss/G/lrecon_feature", l_feat.detach())
            total = total + l_feat * w.feature
        if distill and batch.triplane is not None:
            points = batch.triplane[..., :3]
            feats = plane_features(self.G, gen["planes"], points, head_pose=batch.head_pose())
            l_tri = (batch.triplane[..., 3:] - feats).abs().mean()
            ctx.log("Loss/G/lrecon_triplane", l_tri.detach())
            total = total + l_tri * w.triplane
        loss = total.mean()
        if self.adversarial(cur_nimg):
            fake = {"image_sr": gen["image_sr"], "image": gen["image"], "uv": batch.uv, "seg": gen["seg"]}
            logits = run_discriminator(self.D, fake, batch.c_compose, blur_sigma=self.blur_sigma(cur_nimg))
            g_adv = F.softplus(-logits)
            ctx.log("Loss/scores/fake", logits.detach())
            ctx.log("Loss/signs/fake", logits.detach().sign())
            ctx.log("Loss/G/loss", g_adv.detach())
            loss = loss + g_adv.mean() * w.adversarial
        ctx.backward(loss)

    @_in_autocast
    def g_reg(self, batch: ReconBatch, ctx: PhaseContext) -> None:
        """Greg: the ``l1`` density regulariser (v1, static) or the ``G_fix_img`` multi-view one (v2)."""
        w = self.recipe.losses.density_reg
        if not w:
            return
        nr = self.resolution(ctx.state.cur_nimg)
        motions = self._motions(batch, nr)
        if self.recipe.reg_type == "l1":
            b = batch.batch_size
            initial = torch.rand((b, 1000, 3), device=batch.c_recon.device) * 2 - 1
            perturbed = initial + torch.randn_like(initial) * self.recipe.density_reg_p_dist * \
                self.G.renderer.options.box_warp
            points = torch.cat([initial, perturbed], dim=1)
            image, motion_app, scale = training_conditioning(
                batch.source_image, batch.driving_image, batch.source_motion, motions, self.motion_scale,
                self.swapping_prob, self.half_static)
            directions = torch.randn_like(points)
            sigma = sample_density(self.G, image, motion_app, motions, points, head_pose=batch.head_pose(),
                                   motion_scale=scale, directions=directions)["sigma"]
            loss = F.l1_loss(sigma[:, :1000], sigma[:, 1000:2000]) * w
            ctx.log("Loss/G/TVloss", loss.detach())
        else:
            assert self.G_fix is not None
            camera = regularizer_cameras(batch.c_recon)
            zeros = zero_head_pose(batch.batch_size, batch.c_recon.device)
            out = self._run_generator(batch, motions, camera, nr, zeros)
            with torch.no_grad():
                box_scale: float | Tensor = 1.0
                if self.recipe.g_fix_reg_img_aug:
                    canonical = torch.eye(4, device=camera.device).unsqueeze(0).repeat(batch.batch_size, 1, 1)
                    canonical[:, 2, 3] = 4
                    c_ca = torch.cat([canonical.reshape(-1, 16), batch.c_recon[:, 16:25]], dim=-1)
                    lms = self.renderer(batch.shape, batch.exp, batch.pose, batch.eye, c_ca,
                                        half_size=self.image_size // 2).landmarks_2d
                    box_scale = eye_closure_box_scale(lms)
                fix = train_forward(self.G_fix, batch.driving_image, motions, motions, camera, nr, head_pose=zeros,
                                    motion_scale=0.0, deterministic=self.deterministic, box_warp_scale=box_scale)
            size = self.image_size
            gen = _wobg(out["image_sr"], filtered_resizing(out["seg"], size))
            ref = _wobg(fix["image_sr"], filtered_resizing(fix["seg"], size))
            loss = self.lpips(gen, ref).mean() * w
            ctx.log("Loss/G/Regloss_G_fix_img", loss.detach())
        ctx.backward(loss)

    @_in_autocast
    def d_main(self, batch: ReconBatch, ctx: PhaseContext) -> None:
        """Dmain: ``softplus(D(fake))`` and ``softplus(-D(real))``, one backward each."""
        cur_nimg = ctx.state.cur_nimg
        if not self.adversarial(cur_nimg):
            return
        nr = self.resolution(cur_nimg)
        motions = self._motions(batch, nr)
        sigma = self.blur_sigma(cur_nimg)
        with torch.no_grad():
            gen = self._run_generator(batch, motions, batch.c_recon, nr, batch.head_pose())
        fake = {"image_sr": gen["image_sr"], "image": gen["image"], "uv": batch.uv, "seg": gen["seg"]}
        fake_logits = run_discriminator(self.D, fake, batch.c_compose, blur_sigma=sigma)
        ctx.log("Loss/scores/fake", fake_logits.detach())
        ctx.log("Loss/signs/fake", fake_logits.detach().sign())
        loss_fake = discriminator_fake_loss(fake_logits)
        ctx.backward(loss_fake)
        real = {k: v.detach() for k, v in self.real_inputs(batch, nr, cur_nimg).items()}
        real_logits = run_discriminator(self.D, real, batch.c_compose, blur_sigma=sigma)
        ctx.log("Loss/scores/real", real_logits.detach())
        ctx.log("Loss/signs/real", real_logits.detach().sign())
        loss_real = discriminator_real_loss(real_logits)
        ctx.log("Loss/D/loss", (loss_fake + loss_real).detach())
        ctx.backward(loss_real)

    @_in_autocast
    def d_reg(self, batch: ReconBatch, ctx: PhaseContext) -> None:
        """Dreg: R1 on the real inputs (gradients w.r.t. the raw image and seg at NR, the uv at full size)."""
        cur_nimg = ctx.state.cur_nimg
        if not self.adversarial(cur_nimg):
            return
        nr = self.resolution(cur_nimg)
        inputs = r1_inputs(self.real_inputs(batch, nr, cur_nimg))
        logits = run_discriminator(self.D, inputs, batch.c_compose, blur_sigma=self.blur_sigma(cur_nimg))
        ctx.log("Loss/scores/real", logits.detach())
        ctx.log("Loss/signs/real", logits.detach().sign())
        w = self.recipe.losses
        r1 = r1_penalty(logits, inputs, w.r1_gamma, w.r1_gamma_uv, w.r1_gamma_seg)
        ctx.log("Loss/r1_penalty", r1.penalty.detach())
        ctx.log("Loss/D/reg", r1.loss.detach())
        ctx.backward(r1.loss)


_V1_KEYS = ("seg_render", "depth", "feature", "feature_bg", "triplane")
"""Optional batch keys of v1's GenHead targets (absent, or the dataset's 0-d placeholders, for video data)."""
