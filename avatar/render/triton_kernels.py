"""Triton kernels of the fused triplane renderer (:mod:`avatar.render.fused`).

Importing this module needs ``triton``. The kernels run on CUDA, and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is first imported), which is how the CPU tests check them.

* :func:`triplane_field_kernel` - per sample point: bilinear sampling of the three planes (``grid_sample`` with
  ``align_corners=False`` and zero padding, the same tap order and weights), the mean over planes, and the
  ``OSGDecoder`` MLP (FC -> softplus -> density and feature heads, sigmoid feature activation). Reference:
  :func:`avatar.render.triplane.sample_from_planes` + :class:`avatar.render.triplane.TriplaneNeRFDecoder`.
* :func:`ray_march_kernel` - per ray: merges the coarse and the fine samples (each sorted by depth) on the fly
  and composites them front to back with the MipNeRF ray marcher. Reference:
  :func:`avatar.render.triplane.merge_samples` + :func:`avatar.render.triplane.ray_march`.

The kernels use only Triton's built-in operations, no function of ``triton.language.standard`` (``tl.sigmoid``,
``tl.sum``...): those are decorated when ``triton`` is imported, so in a process that imported it before setting
``TRITON_INTERPRET=1`` (the test suite) they would not run under the interpreter.

Layouts (all contiguous, float32): points ``(B, M, 3)``; planes ``(B, 3, H, W, C)`` (channels last, so a
bilinear tap reads ``C`` neighbouring values); sample buffers ``(B * R, S, C)`` / ``(B * R, S)``.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["ray_march_kernel", "triplane_field_kernel"]


@triton.jit
def _log1p(y):
    """``log(1 + y)`` accurate for small ``y`` (Goldberg's correction; Triton's core has no ``log1p``)."""
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * (y / (u - 1.0)))


@triton.jit
def _softplus(x):
    """``torch.nn.functional.softplus`` (beta 1, threshold 20)."""
    return tl.where(x > 20.0, x, _log1p(tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _bilinear_tap(plane_ptr, ix, iy, weight, H, W, C, offs_c, mask_m):
    inside = mask_m & (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    offset = (iy * W + ix).to(tl.int64) * C
    values = tl.load(plane_ptr + offset[:, None] + offs_c[None, :], mask=inside[:, None] & (offs_c < C)[None, :],
                     other=0.0)
    return values * tl.where(inside, weight, 0.0)[:, None]


@triton.jit
def _sample_plane(plane_ptr, gx, gy, H, W, C, offs_c, mask_m):
    """``grid_sample(align_corners=False, padding_mode='zeros')`` of one ``(H, W, C)`` plane at ``(BLOCK_M,)``
    normalised coordinates; taps summed in PyTorch's order (nw, ne, sw, se)."""
    ix = ((gx + 1.0) * W - 1.0) * 0.5
    iy = ((gy + 1.0) * H - 1.0) * 0.5
    fx = tl.floor(ix)
    fy = tl.floor(iy)
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    wx1 = ix - fx
    wy1 = iy - fy
    wx0 = (fx + 1.0) - ix
    wy0 = (fy + 1.0) - iy
    out = _bilinear_tap(plane_ptr, x0, y0, wx0 * wy0, H, W, C, offs_c, mask_m)
    out += _bilinear_tap(plane_ptr, x0 + 1, y0, wx1 * wy0, H, W, C, offs_c, mask_m)
    out += _bilinear_tap(plane_ptr, x0, y0 + 1, wx0 * wy1, H, W, C, offs_c, mask_m)
    out += _bilinear_tap(plane_ptr, x0 + 1, y0 + 1, wx1 * wy1, H, W, C, offs_c, mask_m)
    return out


@triton.jit
def triplane_field_kernel(
    points_ptr, planes_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, rgb_ptr, sigma_ptr,
    M, S, S_TOTAL, S_OFF, H, W, C, OUT, scale,
    C_PAD: tl.constexpr, HID: tl.constexpr, OUT_PAD: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
    EG3D_AXES: tl.constexpr,
):
    """Grid ``(cdiv(M, BLOCK_M), B)``. ``EG3D_AXES``: planes indexed by ``(x, y), (x, z), (z, y)`` (EG3D's
    projection, GOHA's ``plane_axes='xy-xz-zy'``) instead of Portrait4D's ``(x, y), (y, z), (z, x)``. Sample ``m = r * S + s`` of batch element ``b`` is written to row
    ``(b * R + r) * S_TOTAL + S_OFF + s`` of the ``(B * R * S_TOTAL, OUT)`` feature buffer and the sigma buffer.

    ``w1`` is the scaled first layer, transposed and zero-padded ``(C_PAD, HID)``; ``w2`` ``(HID, OUT_PAD)``
    holds the scaled feature head in columns ``0..OUT-1`` and the density head in column ``OUT`` (zeros after);
    padded hidden units have zero weights in and out. ``C_PAD``, ``HID`` and ``OUT_PAD`` are powers of two
    ``>= 16`` (``tl.dot``'s smallest tile).
    """
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    point = points_ptr + b * M * 3 + offs_m.to(tl.int64) * 3
    x = tl.load(point, mask=mask_m, other=0.0) * scale
    y = tl.load(point + 1, mask=mask_m, other=0.0) * scale
    z = tl.load(point + 2, mask=mask_m, other=0.0) * scale
    offs_c = tl.arange(0, C_PAD)
    plane_numel = H * W * C
    base = planes_ptr + b * 3 * plane_numel
    feat = _sample_plane(base, x, y, H, W, C, offs_c, mask_m)
    if EG3D_AXES:  # the (x, y), (x, z), (z, y) planes
        feat += _sample_plane(base + plane_numel, x, z, H, W, C, offs_c, mask_m)
        feat += _sample_plane(base + 2 * plane_numel, z, y, H, W, C, offs_c, mask_m)
    else:  # the (x, y), (y, z), (z, x) planes
        feat += _sample_plane(base + plane_numel, y, z, H, W, C, offs_c, mask_m)
        feat += _sample_plane(base + 2 * plane_numel, z, x, H, W, C, offs_c, mask_m)
    feat = feat / 3.0

    offs_h = tl.arange(0, HID)
    w1 = tl.load(w1_ptr + offs_c[:, None] * HID + offs_h[None, :])
    hidden = tl.dot(feat, w1, input_precision=PRECISION) + tl.load(b1_ptr + offs_h)[None, :]
    hidden = _softplus(hidden)
    offs_o = tl.arange(0, OUT_PAD)
    w2 = tl.load(w2_ptr + offs_h[:, None] * OUT_PAD + offs_o[None, :])
    out = tl.dot(hidden, w2, input_precision=PRECISION) + tl.load(b2_ptr + offs_o)[None, :]

    r = offs_m // S
    row = (b * (M // S) + r) * S_TOTAL + S_OFF + (offs_m - r * S)
    rgb = 1.0 / (1.0 + tl.exp(-out)) * (1 + 2 * 0.001) - 0.001  # sigmoid
    is_rgb = offs_o < OUT
    tl.store(rgb_ptr + row[:, None] * OUT + offs_o[None, :], rgb, mask=mask_m[:, None] & is_rgb[None, :])
    # the density column, stored through a one-column mask (no reduction: see the module docstring)
    tl.store(sigma_ptr + row[:, None] + (offs_o - OUT)[None, :], out, mask=mask_m[:, None] & (offs_o == OUT)[None, :])


@triton.jit
def _next_sample(depth_ptr, row, ic, jf, S1, S2, mask_r):
    """The nearer of the next coarse (``ic``) and next fine (``jf``) sample of each ray; coarse wins ties."""
    zc = tl.load(depth_ptr + row + ic, mask=mask_r & (ic < S1), other=float("inf"))
    zf = tl.load(depth_ptr + row + S1 + jf, mask=mask_r & (jf < S2), other=float("inf"))
    take_coarse = zc <= zf
    index = tl.where(take_coarse, ic, S1 + jf)
    return tl.where(take_coarse, zc, zf), index, take_coarse


@triton.jit
def ray_march_kernel(
    colors_ptr, sigma_ptr, depth_ptr, rgb_ptr, weights_ptr, sorted_ptr, zsum_ptr, total_ptr,
    NR, S1, S2, STRIDE, C,
    C_PAD: tl.constexpr, BLOCK_R: tl.constexpr, FEATURES: tl.constexpr,
):
    """Grid ``(cdiv(NR, BLOCK_R),)`` over ``NR = B * R`` rays, each with ``S1`` coarse then ``S2`` fine samples
    (both sorted) at the start of input rows of ``STRIDE`` samples. Writes the interval weights
    ``(NR, S - 1)`` (``S = S1 + S2``), the merged depths ``(NR, S)``, ``sum(w * depth_mid)`` and ``sum(w)``
    ``(NR,)`` and, when ``FEATURES``, the composited features ``(NR, C)``."""
    pid = tl.program_id(0)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < NR
    S = S1 + S2
    row = offs_r.to(tl.int64) * STRIDE
    out_row = offs_r.to(tl.int64) * S
    offs_c = tl.arange(0, C_PAD)
    mask_rc = mask_r[:, None] & (offs_c < C)[None, :]
    ic = tl.full((BLOCK_R,), 0, tl.int32)
    jf = tl.full((BLOCK_R,), 0, tl.int32)

    z_prev, index, take = _next_sample(depth_ptr, row, ic, jf, S1, S2, mask_r)
    ic += take.to(tl.int32)
    jf += 1 - take.to(tl.int32)
    c_prev = tl.full((BLOCK_R, C_PAD), 0, tl.float32)
    if FEATURES:
        c_prev = tl.load(colors_ptr + (row + index)[:, None] * C + offs_c[None, :], mask=mask_rc, other=0.0)
    s_prev = tl.load(sigma_ptr + row + index, mask=mask_r, other=0.0)
    tl.store(sorted_ptr + out_row, z_prev, mask=mask_r)

    transmittance = tl.full((BLOCK_R,), 1.0, tl.float32)
    acc = tl.full((BLOCK_R, C_PAD), 0, tl.float32)
    zsum = tl.full((BLOCK_R,), 0, tl.float32)
    total = tl.full((BLOCK_R,), 0, tl.float32)
    w_row = offs_r.to(tl.int64) * (S - 1)
    for k in range(1, S):
        z, index, take = _next_sample(depth_ptr, row, ic, jf, S1, S2, mask_r)
        ic += take.to(tl.int32)
        jf += 1 - take.to(tl.int32)
        s = tl.load(sigma_ptr + row + index, mask=mask_r, other=0.0)
        delta = z - z_prev
        density = _softplus((s_prev + s) / 2 - 1.0)
        alpha = 1.0 - tl.exp(-(density * delta))
        weight = alpha * transmittance
        transmittance = transmittance * (1.0 - alpha + 1e-10)
        if FEATURES:
            c = tl.load(colors_ptr + (row + index)[:, None] * C + offs_c[None, :], mask=mask_rc, other=0.0)
            acc += weight[:, None] * ((c_prev + c) / 2)
            c_prev = c
        zsum += weight * ((z_prev + z) / 2)
        total += weight
        tl.store(weights_ptr + w_row + (k - 1), weight, mask=mask_r)
        tl.store(sorted_ptr + out_row + k, z, mask=mask_r)
        z_prev = z
        s_prev = s
    if FEATURES:
        tl.store(rgb_ptr + offs_r.to(tl.int64)[:, None] * C + offs_c[None, :], acc, mask=mask_rc)
    tl.store(zsum_ptr + offs_r, zsum, mask=mask_r)
    tl.store(total_ptr + offs_r, total, mask=mask_r)
