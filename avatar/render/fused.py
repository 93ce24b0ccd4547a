"""The fused triplane renderer: the two-pass importance renderer with Triton kernels for the per-sample work.

The reference renderer (:class:`avatar.render.triplane.ImportanceRenderer`) runs each step as PyTorch ops
over ``B x R x S`` samples: three ``grid_sample`` calls (a ``(B, 3, M, 32)`` float32 tensor, 600 MB per
512x512 frame), their permute and mean, the decoder MLP, the sort-and-gather merge of the coarse and fine
samples and the ray marcher's chain of elementwise ops. The fused path does the same maths in two kernels
(:mod:`avatar.render.triton_kernels`):

1. ``triplane_field_kernel`` - plane sampling from channels-last planes + mean + decoder MLP, per sample,
   writing only the decoder outputs (features and raw density) into one per-ray buffer: the coarse samples in
   slots ``0..S1-1``, the fine ones in ``S1..S1+S2-1``;
2. ``ray_march_kernel`` - per ray, merges the two sorted sample lists on the fly (no sort, no gather of the
   feature tensor) and composites them front to back.

With deterministic sampling the rays are marched in chunks whose per-sample buffers stay within
:data:`CHUNK_BYTES` (the same values as one chunk; the peak memory no longer grows with rays x samples).

What stays in PyTorch (small tensors): the stratified depths, the importance sampling from the coarse
weights (:func:`avatar.render.triplane.sample_importance`), the sample points and the deformer, the final
depth division and clamp.

Differences from the reference, all at float32 rounding level: the fine depths are sorted before they are
evaluated (the reference sorts the merged samples after; the result is the same set in the same order, except
that a coarse and a fine sample at exactly equal depth are taken coarse first); the MLP's matrix products use
``PRECISION`` (``'ieee'``: exact float32 FMAs; ``'tf32'``: tensor cores); transmittance is a running product
(the reference's ``cumprod``) and sums run in sample order. ``tests/test_fused_render.py`` checks the kernels
against the reference under Triton's CPU interpreter, and on a GPU when there is one.

Supported: Portrait4D's plane projection (``plane_axes='xy-yz-zx'``), a single ``(B, 3, C, H, W)`` triplane tensor, a :class:`TriplaneNeRFDecoder`, a float
``box_warp_scale``, ``clamp_mode='softplus'``, ``white_back=False`` and no density noise; anything else raises
:class:`FusedRenderingUnsupportedError` (the caller then renders with the reference).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from avatar.render.triplane import (
    ImportanceRenderer,
    RenderOutput,
    TriplaneNeRFDecoder,
    sample_importance,
)

__all__ = [
    "FusedRenderingUnsupportedError",
    "check_fused_setup",
    "decoder_weights",
    "fused_available",
    "fused_ray_march",
    "fused_triplane_field",
    "rays_per_chunk",
    "render_triplanes_fused",
]

Deformer = Callable[[Tensor], Tensor]

BLOCK_M = 64
BLOCK_R = 32

CHUNK_BYTES = 256 * 2**20
"""Default budget of one chunk's per-sample buffers in :func:`render_triplanes_fused` (deterministic sampling)."""


FUSED_PLANE_AXES = ("xy-yz-zx", "xy-xz-zy")
"""The projections the kernels take (:data:`avatar.render.triplane.PLANE_AXES`): Portrait4D's and EG3D's (GOHA)."""


class FusedRenderingUnsupportedError(ValueError):
    """The fused renderer cannot render this call (the reason is the message)."""


@lru_cache(maxsize=1)
def _kernels() -> Any:
    from avatar.render import triton_kernels

    return triton_kernels


@lru_cache(maxsize=1)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton ships with Linux PyTorch wheels
        return False
    return True


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused kernels can run on ``device``: CUDA with Triton, or CPU under Triton's interpreter
    (``TRITON_INTERPRET=1``, slow; for tests)."""
    device = torch.device(device)
    if not _triton_importable():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def decoder_weights(decoder: TriplaneNeRFDecoder) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decoder's weights in the kernel's layout, float32, with the equalised-learning-rate gains applied
    exactly as :class:`EqualizedLinear` does, zero-padded to powers of two ``>= 16``: ``w1`` ``(C_PAD, HID)``,
    ``b1`` ``(HID,)``, ``w2`` ``(HID, OUT_PAD)`` (feature head in columns ``0..OUT-1``, density in column
    ``OUT``) and ``b2`` ``(OUT_PAD,)``."""
    fc, head_rgb, head_sigma = decoder.net[0], decoder.out_rgb, decoder.out_sigma

    def scaled(layer: Any) -> tuple[Tensor, Tensor]:
        w = layer.weight.float() * layer.weight_gain
        b = layer.bias.float()
        return w, (b * layer.bias_gain if layer.bias_gain != 1 else b)

    w1, b1 = scaled(fc)
    w_rgb, b_rgb = scaled(head_rgb)
    w_sigma, b_sigma = scaled(head_sigma)
    hidden, c_in = w1.shape
    out = w_rgb.shape[0]
    c_pad, hid_pad, out_pad = (padded_width(n) for n in (c_in, hidden, out + 1))
    dev = w1.device
    w1_pad = torch.zeros(c_pad, hid_pad, device=dev)
    w1_pad[:c_in, :hidden] = w1.t()
    b1_pad = torch.zeros(hid_pad, device=dev)
    b1_pad[:hidden] = b1
    w2 = torch.zeros(hid_pad, out_pad, device=dev)
    w2[:hidden, :out] = w_rgb.t()
    w2[:hidden, out] = w_sigma[0]
    b2 = torch.zeros(out_pad, device=dev)
    b2[:out] = b_rgb
    b2[out] = b_sigma[0]
    return w1_pad, b1_pad, w2, b2


def padded_width(n: int) -> int:
    """The kernels' tile width for ``n`` channels: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, 1 << max(0, (n - 1).bit_length()))


def check_decoder(decoder: Any) -> None:
    if not isinstance(decoder, TriplaneNeRFDecoder):
        raise FusedRenderingUnsupportedError(f"the fused renderer needs a TriplaneNeRFDecoder, got {type(decoder).__name__}")
    widths = (decoder.net[0].in_features, decoder.hidden_dim, decoder.out_rgb.out_features + 1)
    if max(widths) > 256:
        raise FusedRenderingUnsupportedError(f"the fused kernels take decoder widths up to 256, got {widths}")


def check_fused_setup(opt: Any, deterministic: bool, decoder: Any, precision: str, device: torch.device) -> None:
    """Raise :class:`FusedRenderingUnsupportedError` (``ValueError`` for a bad ``precision``) unless the fused
    kernels cover these rendering options (``deterministic``: the resolved flag), decoder and device."""
    if opt.plane_axes not in FUSED_PLANE_AXES:
        raise FusedRenderingUnsupportedError(f"the fused kernels project with plane_axes {FUSED_PLANE_AXES}, "
                                             f"not {opt.plane_axes!r}")
    if opt.clamp_mode != "softplus" or opt.white_back or (opt.density_noise > 0 and not deterministic):
        raise FusedRenderingUnsupportedError("the fused renderer supports clamp_mode='softplus', no white_back, no density noise")
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    check_decoder(decoder)
    if not fused_available(device):
        raise FusedRenderingUnsupportedError(f"the fused kernels need CUDA and Triton (device: {device})")


def fused_triplane_field(
    planes_hwc: Tensor,
    points: Tensor,
    weights: tuple[Tensor, Tensor, Tensor, Tensor],
    scale: float,
    colors: Tensor,
    sigmas: Tensor,
    slot: int,
    precision: str = "ieee",
    plane_axes: str = "xy-yz-zx",
) -> None:
    """Evaluate the triplane field at ``points`` into slots of the sample buffers (in place).

    Args:
        planes_hwc: ``(B, 3, H, W, C)`` contiguous float32 planes.
        points: ``(B, R * S, 3)`` float32 canonical points, ray-major (``S`` samples of ray 0, then ray 1...).
        weights: from :func:`decoder_weights`.
        scale: ``2 / (box_warp_scale * box_warp)``.
        colors: ``(B, R, S_total, OUT)`` float32 buffer; samples go to ``[..., slot:slot + S, :]``.
        sigmas: ``(B, R, S_total)`` float32 buffer.
        precision: ``'ieee'`` or ``'tf32'`` for the MLP's products.
        plane_axes: ``'xy-yz-zx'`` (Portrait4D) or ``'xy-xz-zy'`` (EG3D, GOHA); see
            :data:`avatar.render.triplane.PLANE_AXES`.
    """
    if plane_axes not in FUSED_PLANE_AXES:
        raise FusedRenderingUnsupportedError(f"the fused kernels project with plane_axes {FUSED_PLANE_AXES}, "
                                             f"not {plane_axes!r}")
    k = _kernels()
    b, _, h, w, c = planes_hwc.shape
    _, r, s_total, out = colors.shape
    m = points.shape[1]
    s = m // r
    w1, b1, w2, b2 = weights
    grid = (triton_cdiv(m, BLOCK_M), b)
    k.triplane_field_kernel[grid](
        points, planes_hwc, w1, b1, w2, b2, colors, sigmas,
        m, s, s_total, slot, h, w, c, out, float(scale),
        C_PAD=w1.shape[0], HID=w1.shape[1], OUT_PAD=w2.shape[1], BLOCK_M=BLOCK_M, PRECISION=precision,
        EG3D_AXES=plane_axes == "xy-xz-zy",
    )


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fused_ray_march(colors: Tensor, sigmas: Tensor, depths: Tensor, n_coarse: int, n_fine: int,
                    features: bool = True, clamp_depth: bool = True) -> RenderOutput:
    """Merge the coarse (slots ``0..n_coarse-1``) and the fine samples (the next ``n_fine`` slots) of each ray
    and composite them.

    Args:
        colors: ``(B, R, S_total, C)``; sigmas, depths: ``(B, R, S_total)``, contiguous, with
            ``S_total >= n_coarse + n_fine``; within each ray the coarse and the fine depths are each sorted.
        features: composite the features too (``False``: weights and depth only, the ``features`` field is
            then empty).
        clamp_depth: clamp the depth to the range of these rays' samples, as the reference does (``False``: the
            caller clamps; a ray with no weight then has depth ``inf``).

    Returns:
        :class:`RenderOutput` as :meth:`ImportanceRenderer.render_field` gives it, over ``n_coarse + n_fine``
        samples.
    """
    k = _kernels()
    b, r, s_total, c = colors.shape
    s = n_coarse + n_fine
    if s > s_total or not (colors.is_contiguous() and sigmas.is_contiguous() and depths.is_contiguous()):
        raise ValueError("fused_ray_march needs contiguous buffers with n_coarse + n_fine <= S_total")
    nr = b * r
    dev = colors.device
    rgb = torch.empty(b, r, c if features else 0, device=dev)
    weights = torch.empty(b, r, s - 1, 1, device=dev)
    merged = torch.empty(b, r, s, 1, device=dev)
    zsum = torch.empty(b, r, 1, device=dev)
    total = torch.empty(b, r, 1, device=dev)
    k.ray_march_kernel[(triton_cdiv(nr, BLOCK_R),)](
        colors, sigmas, depths, rgb, weights, merged, zsum, total, nr, n_coarse, n_fine, s_total, c,
        C_PAD=padded_width(c), BLOCK_R=BLOCK_R, FEATURES=features,
    )
    depth = torch.nan_to_num(zsum / total, float("inf"))
    if clamp_depth:
        depth = torch.clamp(depth, torch.min(merged), torch.max(merged))
    return RenderOutput(rgb, depth, merged, weights, 1 - total)


def rays_per_chunk(batch: int, rays: int, samples: int, channels: int, budget_bytes: int | None) -> int:
    """Rays of each frame per chunk so that the per-sample buffers of one chunk (features, density, depth and
    the sample points: ``channels + 5`` float32 values a sample) stay within ``budget_bytes`` (``None``: no limit,
    one chunk)."""
    if budget_bytes is None:
        return rays
    per_ray = batch * samples * (channels + 5) * 4
    return max(1, min(rays, budget_bytes // per_ray))


def render_triplanes_fused(
    renderer: ImportanceRenderer,
    planes: Tensor,
    decoder: TriplaneNeRFDecoder,
    origins: Tensor,
    directions: Tensor,
    cam_z: Tensor | None = None,
    deformer: Deformer | None = None,
    box_warp_scale: float = 1.0,
    deterministic: bool | None = None,
    precision: str = "ieee",
    chunk_bytes: int | None = None,
    per_sample: bool = True,
) -> RenderOutput:
    """:meth:`ImportanceRenderer.forward` with the fused kernels (same arguments, same :class:`RenderOutput`).

    Args:
        planes: ``(B, 3, C, H, W)`` triplanes.
        decoder: the NeRF decoder whose weights the kernel reads.
        origins, directions: ``(B, R, 3)``.
        precision: ``'ieee'`` (float32) or ``'tf32'`` for the decoder MLP.
        chunk_bytes: with deterministic sampling, march the rays in chunks whose per-sample buffers stay within
            this many bytes (:func:`rays_per_chunk`; ``None``: :data:`CHUNK_BYTES`, ``0``: one chunk). The
            result is the same as in one chunk: the coarse depths are drawn for all rays first and the depth is
            clamped to the range of all rays' samples at the end; only the peak memory changes (at 224x224 with
            96 samples of 32 channels a ray, one chunk needs 0.69 GB a frame). Stochastic sampling always runs in
            one chunk, so that it draws the reference's random numbers.
        per_sample: ``False``: ``all_depths`` and ``weights`` come back with no samples (``(B, R, 0, 1)``), for
            callers that use only the features, depth and background transmittance (GOHA): the chunks' per-sample
            outputs are then never concatenated (two ``(B, R, S, 1)`` tensors and their parts), and the depth is
            still clamped to the range of all rays' samples. The other fields are the same.
    """
    opt = renderer.options
    det = renderer.is_deterministic(deterministic)
    if not isinstance(planes, Tensor) or planes.ndim != 5 or planes.shape[1] != 3:
        raise FusedRenderingUnsupportedError("the fused renderer takes one (B, 3, C, H, W) triplane tensor")
    if isinstance(box_warp_scale, Tensor):
        raise FusedRenderingUnsupportedError("the fused renderer takes a float box_warp_scale")
    check_fused_setup(opt, det, decoder, precision, planes.device)

    b, r, _ = origins.shape
    planes_hwc = planes.float().permute(0, 1, 3, 4, 2).contiguous()
    weights = decoder_weights(decoder)
    scale = 2 / (box_warp_scale * opt.box_warp)
    n_coarse, n_fine = opt.depth_resolution, opt.depth_resolution_importance
    s_total = n_coarse + n_fine
    channels = decoder.out_rgb.out_features
    coarse = renderer.coarse_depths(origins, directions, cam_z, box_warp_scale, det)  # (B, R, S1, 1)
    budget = CHUNK_BYTES if chunk_bytes is None else (chunk_bytes or None)
    step = rays_per_chunk(b, r, s_total, channels, budget if det else None)

    def march(o: Tensor, d: Tensor, z_coarse: Tensor, clamp_depth: bool) -> RenderOutput:
        rc = o.shape[1]
        colors = torch.empty(b, rc, s_total, channels, device=planes.device)
        sigmas = torch.empty(b, rc, s_total, device=planes.device)
        depths = torch.empty(b, rc, s_total, device=planes.device)

        def evaluate(z: Tensor, slot: int) -> None:
            points = (o.unsqueeze(-2) + z * d.unsqueeze(-2)).reshape(b, -1, 3)
            if deformer is not None:
                points = deformer(points)
            fused_triplane_field(planes_hwc, points.float().contiguous(), weights, scale, colors, sigmas, slot,
                                 precision, opt.plane_axes)
            depths[:, :, slot:slot + z.shape[2]] = z[..., 0]

        evaluate(z_coarse, 0)
        if n_fine == 0:
            return fused_ray_march(colors, sigmas, depths, n_coarse, 0, clamp_depth=clamp_depth)
        first = fused_ray_march(colors, sigmas, depths, n_coarse, 0, features=False, clamp_depth=False)
        fine = sample_importance(z_coarse, first.weights, n_fine, det)
        fine = torch.sort(fine, dim=2).values
        evaluate(fine, n_coarse)
        return fused_ray_march(colors, sigmas, depths, n_coarse, n_fine, clamp_depth=clamp_depth)

    if step >= r:
        return _drop_samples(march(origins, directions, coarse, True), per_sample)
    parts, lows, highs = [], [], []
    for i in range(0, r, step):
        part = march(origins[:, i:i + step], directions[:, i:i + step], coarse[:, i:i + step], False)
        lows.append(torch.min(part.all_depths))
        highs.append(torch.max(part.all_depths))
        parts.append(_drop_samples(part, per_sample))
    out = RenderOutput(*(torch.cat([getattr(p, f.name) for p in parts], 1) for f in fields(RenderOutput)))
    out.depth = torch.clamp(out.depth, torch.stack(lows).min(), torch.stack(highs).max())
    return out


def _drop_samples(out: RenderOutput, keep: bool) -> RenderOutput:
    """``out`` as it is, or (``keep=False``) with ``all_depths`` and ``weights`` emptied to ``(B, R, 0, 1)``."""
    if keep:
        return out
    b, r = out.depth.shape[:2]
    empty = out.depth.new_empty(b, r, 0, 1)
    return RenderOutput(out.features, out.depth, empty, empty, out.t_bg)
