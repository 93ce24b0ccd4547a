"""Adversarial losses of Portrait4D (v1, v2) and GenHead training: the non-saturating logistic loss, R1 with
per-input gammas, and the blur of the images the discriminator sees.

Every formula is the official one; the source lines are those of YuDeng/Portrait-4D (HEAD da5eec6) under
``portrait4d/training/loss/``: ``loss_recon_v1.py`` (v2: ``loss_recon_v2.py``, GenHead: ``loss_genhead.py``,
the same code at the lines given in brackets). ``D(x)`` is the logit ``[N, 1]`` of
:class:`~avatar.losses.discriminator.DualDiscriminator`.

* Generator (``Gmain``): ``softplus(-D(fake))`` per sample, mean over the batch
  (``loss_recon_v1.py:352``, v2 ``:322``, GenHead ``:240``): :func:`generator_loss`.
* Discriminator (``Dmain``): ``softplus(D(fake))`` (``:425``, v2 ``:421``, GenHead ``:370``) +
  ``softplus(-D(real))`` (``:449``, v2 ``:445``, GenHead ``:399``), each averaged over the batch (two backward
  passes upstream; the sum of the two means here): :func:`discriminator_loss`.
* R1 (``Dreg``, every 16 steps upstream, lazy regularisation): with ``g_k = d(sum_n D(real)_n) / d(input_k)``,
  per sample ``n``

      ``R1_n = gamma / 2 * (|g_sr,n|^2 + |g_raw,n|^2)``
      ``     + gamma_uv / 2 * |g_uv,n|^2 + gamma_seg / 2 * |g_seg,n|^2``

  where ``|.|^2`` sums the squares over channels and pixels (``:476-488``, v2 ``:472-484``, GenHead
  ``:432-444``); the loss is the batch mean of ``R1_n`` (``:493``). The gradients are taken with respect to
  the discriminator's *inputs as given*: ``image_sr`` and ``uv`` at 512, the raw ``image`` and ``seg`` at the
  neural rendering resolution (before the discriminator's own resizing); with a blur, ``image_sr``'s gradient is
  taken with respect to the *blurred* image, not through the blur (upstream's ``run_D`` stores its blurred copy in
  the caller's dict, whose entries R1 then differentiates, as in EG3D): blur the R1 leaf first and call
  :func:`run_discriminator` without blur, as GenHead's Dreg does (``train/recipes/genhead_loss.py``; Portrait4D
  has no blur). Defaults ``gamma = 1``, ``gamma_uv = 10``, ``gamma_seg = 1``
  (``configs/default.yaml``: ``gamma``, ``gamma_uv``, ``gamma_seg``): :func:`r1_penalty`.
* Blur (``run_D``, ``:200-212``; GenHead ``:109-121``): ``image_sr`` is filtered with the separable kernel
  ``f_k = 2^(-(k / sigma)^2)``, ``k = -floor(3 sigma) .. floor(3 sigma)``, normalised to sum 1 (upfirdn
  ``filter2d``, zero padding); nothing when ``floor(3 sigma) = 0``.
  The real raw target and its seg are blurred with the same kernel at the neural rendering resolution before
  they are fed (``:250-255``; GenHead ``:166-171``):
  :func:`blur_images`, :func:`run_discriminator`.
* Blur schedule (GenHead ``loss_genhead.py:147``): ``sigma = max(1 - cur_nimg / (blur_fade_kimg * 1e3), 0) *
  blur_init_sigma`` (0 when ``blur_fade_kimg = 0``); GenHead: ``blur_init_sigma = 10``, ``blur_fade_kimg =
  batch * 200 / 32`` (``train_genhead.py:259-261``); Portrait4D v1/v2: ``blur_sigma = 0``, no blur
  (``loss_recon_v1.py:223``): :func:`blur_sigma_schedule`.

A D step, as upstream::

    fake = run_discriminator(D, G_out, c, blur_sigma=sigma)             # G_out detached or under no_grad
    real_in = r1_inputs(real)                                           # leaves that require grad (Dreg)
    real_logits = run_discriminator(D, real_in, c, blur_sigma=sigma)
    loss = discriminator_loss(fake, real_logits) + r1_penalty(real_logits, real_in).loss.mean()
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.nn.upfirdn import filter2d

__all__ = [
    "R1Penalty",
    "blur_filter",
    "blur_images",
    "blur_sigma_schedule",
    "discriminator_fake_loss",
    "discriminator_loss",
    "discriminator_real_loss",
    "generator_loss",
    "r1_inputs",
    "r1_penalty",
    "run_discriminator",
]

R1_GAMMA = 1.0
R1_GAMMA_UV = 10.0
R1_GAMMA_SEG = 1.0


# ----------------------------------------------------------------------------------------------------------
# Blur.


def blur_sigma_schedule(cur_nimg: float, blur_init_sigma: float, blur_fade_kimg: float) -> float:
    """``max(1 - cur_nimg / (blur_fade_kimg * 1e3), 0) * blur_init_sigma``, 0 when ``blur_fade_kimg <= 0``
    (``loss_genhead.py:147``). ``cur_nimg`` counts images, not steps."""
    if blur_fade_kimg <= 0:
        return 0.0
    return max(1 - cur_nimg / (blur_fade_kimg * 1e3), 0.0) * blur_init_sigma


def blur_filter(sigma: float, device: torch.device | str | None = None) -> Tensor | None:
    """The separable blur kernel of ``run_D`` (``loss_recon_v1.py:201-206``): ``2 * floor(3 sigma) + 1``
    taps ``2^(-(k / sigma)^2)`` normalised to sum 1, float32; ``None`` when ``floor(3 sigma) = 0``
    (no blur)."""
    size = math.floor(sigma * 3)
    if size <= 0:
        return None
    f = torch.arange(-size, size + 1, device=device, dtype=torch.float32).div(sigma).square().neg().exp2()
    return f / f.sum()


def blur_images(x: Tensor, sigma: float) -> Tensor:
    """Blur ``[N, C, H, W]`` with :func:`blur_filter` (same size out, zero padding); ``x`` itself when no
    blur."""
    f = blur_filter(sigma, device=x.device)
    return x if f is None else filter2d(x, f)


def run_discriminator(
    D: nn.Module,
    img: Mapping[str, Tensor],
    c: Tensor,
    blur_sigma: float = 0.0,
    update_emas: bool = False,
    **kwargs: Any,
) -> Tensor:
    """``D(img, c)`` after blurring ``img['image_sr']`` with ``blur_sigma`` (official ``run_D``,
    ``loss_recon_v1.py:200-212``, for a generator with super-resolution, as in every Portrait4D and GenHead
    config). ``img`` is not modified (upstream replaces the entry of the caller's dict, which matters for R1:
    see the module docstring); gradients flow through the blur. Returns the logits ``[N, 1]``.

    (Upstream's branch for a generator without super-resolution blurs ``img['image']``, which its
    discriminator then does not read: it reads ``image_sr`` in both modes. That branch is dead in every
    config; here the image the discriminator reads, ``image_sr``, is always the one blurred.)"""
    img = dict(img)
    if blur_sigma > 0:
        img["image_sr"] = blur_images(img["image_sr"], blur_sigma)
    return D(img, c, update_emas=update_emas, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Logistic losses.


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: the batch mean of ``softplus(-D(fake))`` (``loss_recon_v1.py:352``)."""
    return F.softplus(-fake_logits).mean()


def discriminator_fake_loss(fake_logits: Tensor) -> Tensor:
    """``softplus(D(fake))`` per sample (``loss_recon_v1.py:425``), same shape as the logits."""
    return F.softplus(fake_logits)


def discriminator_real_loss(real_logits: Tensor) -> Tensor:
    """``softplus(-D(real))`` per sample (``loss_recon_v1.py:449``), same shape as the logits."""
    return F.softplus(-real_logits)


def discriminator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    """``mean(softplus(D(fake))) + mean(softplus(-D(real)))``: the two ``Dmain`` terms (``:425`` and
    ``:449``), each averaged over its batch as the two upstream backward passes do."""
    return discriminator_fake_loss(fake_logits).mean() + discriminator_real_loss(real_logits).mean()


# ----------------------------------------------------------------------------------------------------------
# R1.


@dataclass
class R1Penalty:
    """The R1 terms of one batch, each ``[N]`` (per sample), as upstream reports them.

    Attributes:
        loss: ``gamma / 2 * penalty + gamma_uv / 2 * penalty_uv + gamma_seg / 2 * penalty_seg``
            (``Loss/D/reg``); take ``loss.mean()`` for the ``Dreg`` loss.
        penalty: ``|g_sr|^2 + |g_raw|^2`` (``Loss/r1_penalty``).
        penalty_uv: ``|g_uv|^2``.
        penalty_seg: ``|g_seg|^2``.
    """

    loss: Tensor
    penalty: Tensor
    penalty_uv: Tensor
    penalty_seg: Tensor


def r1_inputs(img: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies of the real inputs that require grad (``loss_recon_v1.py:435-438``), for
    :func:`r1_penalty`."""
    return {k: v.detach().requires_grad_(True) for k, v in img.items()}


def r1_penalty(
    real_logits: Tensor,
    inputs: Mapping[str, Tensor],
    gamma: float = R1_GAMMA,
    gamma_uv: float = R1_GAMMA_UV,
    gamma_seg: float = R1_GAMMA_SEG,
) -> R1Penalty:
    """R1 of the dual discriminator with per-input gammas (``loss_recon_v1.py:455-488``; formula in the module
    docstring).

    Args:
        real_logits: ``D(inputs)`` ``[N, 1]`` of real images, computed from ``inputs``.
        inputs: the leaves the logits were computed from (:func:`r1_inputs`): ``image_sr``
            ``[N, 3, 512, 512]``, ``image`` ``[N, 3, r, r]``, ``uv`` ``[N, 3, 512, 512]``, ``seg``
            ``[N, 1, r, r]``. A missing key, or an input the logits do not depend on, contributes 0
            (upstream's ``zeros_like`` for a discriminator without uv or seg).
        gamma: weight of the ``image_sr`` and ``image`` terms (``--gamma``, 1).
        gamma_uv: weight of the ``uv`` term (``--gamma_uv``, 10).
        gamma_seg: weight of the ``seg`` term (``--gamma_seg``, 1).

    Returns:
        :class:`R1Penalty` of ``[N]`` tensors, differentiable (``create_graph=True``) for the ``Dreg``
        backward.
    """
    keys = [k for k in ("image_sr", "image", "uv", "seg") if k in inputs]
    if not keys:
        raise ValueError(f"r1_penalty: none of image_sr, image, uv, seg in the inputs ({', '.join(inputs)})")
    leaves = [inputs[k] for k in keys]
    if not all(t.requires_grad for t in leaves):
        raise ValueError(
            "r1_penalty: the inputs must require grad (build them with r1_inputs before running D)"
        )
    grads = torch.autograd.grad(
        outputs=[real_logits.sum()], inputs=leaves, create_graph=True, allow_unused=True
    )
    n = real_logits.shape[0]
    zero = real_logits.new_zeros([n])
    sq = {
        k: (g.square().sum(dim=[1, 2, 3]) if g is not None else zero)
        for k, g in zip(keys, grads, strict=True)
    }
    penalty = sq.get("image_sr", zero) + sq.get("image", zero)
    penalty_uv = sq.get("uv", zero)
    penalty_seg = sq.get("seg", zero)
    loss = penalty * (gamma / 2) + penalty_uv * (gamma_uv / 2) + penalty_seg * (gamma_seg / 2)
    return R1Penalty(loss=loss, penalty=penalty, penalty_uv=penalty_uv, penalty_seg=penalty_seg)
