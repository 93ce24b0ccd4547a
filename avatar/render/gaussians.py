"""Rasterisation of 3D Gaussians into N-channel feature maps (the GPHM Gaussian head model's renderer).

Two backends compute the same image:

* ``"gsplat"`` - ``gsplat.rasterization`` (tile-based CUDA kernels; ``packed=False``, ``rasterize_mode="classic"``,
  ``tile_size=16``, ``render_mode="RGB"`` or ``"RGB+D"``). CUDA tensors only.
* ``"reference"`` - pure PyTorch, any device, differentiable by autograd. It transcribes gsplat 1.5.3's forward
  arithmetic (listed below), so the two agree to about ``1e-4`` (float32; gsplat builds with ``-use_fast_math``,
  whose ``__expf`` differs from ``exp`` in the last bits), except at the rare pixels where a Gaussian lies within
  float rounding of the ``1/255`` alpha threshold or of the transmittance stop, and so is counted by one backend
  only. CPU users get this one.
* ``"auto"`` (default) - gsplat when the tensors are on a CUDA device (and not float64) and gsplat loads, else
  the reference (a gsplat that is installed but fails to load is logged once as a warning, then skipped).

Conventions
-----------
* One camera per scene, ``B`` scenes of ``N`` Gaussians each (pad scenes with zero-opacity Gaussians to a common
  ``N``; they are culled, see below).
* ``means (B, N, 3)`` world points; ``quats (B, N, 4)`` rotations as ``w, x, y, z``, normalised here (they need
  not be unit); ``scales (B, N, 3)`` standard deviations along the rotated axes, already activated (positive);
  ``opacities (B, N)`` in ``[0, 1]``; ``features (B, N, C)``, any ``C >= 1`` (RGB, SH-free feature vectors...).
* ``viewmats (B, 4, 4)`` world -> camera in the **OpenCV** convention: ``x`` right, ``y`` down, ``z`` forward;
  the camera-space ``z`` is the depth. ``Ks (B, 3, 3)`` pinhole intrinsics in pixels (``fx, fy, cx, cy``; the skew
  ``K[0, 1]`` is ignored, as gsplat's CUDA projection ignores it). Pixel ``(row i, col j)`` has its centre at
  ``(u, v) = (j + 0.5, i + 0.5)``, so ``cx = W / 2`` puts the optical axis on the image centre.
* Outputs are channels-first: ``features (B, C, H, W)``, ``alpha (B, 1, H, W)`` and ``depth (B, 1, H, W)``.

The forward model (gsplat 1.5.3, ``ProjectionEWA3DGSFused.cu`` and ``RasterizeToPixels3DGSFwd.cu``)
---------------------------------------------------------------------------------------------------------
1. ``Sigma = R S S^T R^T`` with ``R`` from the normalised quaternion and ``S = diag(scales)``
   (:func:`gaussian_covariances`).
2. World -> camera: ``t = W mu + w``, ``Sigma_c = W Sigma W^T`` (``W, w`` the rotation and translation of the
   view matrix). A Gaussian is culled when ``t_z < near_plane`` or ``t_z > far_plane``.
3. Perspective (EWA) projection: ``mean2d = (fx t_x / t_z + cx, fy t_y / t_z + cy)``; ``Sigma_2d = J Sigma_c J^T``
   with ``J = [[fx / t_z, 0, -fx x' / t_z^2], [0, fy / t_z, -fy y' / t_z^2]]``, where ``x' = t_z clamp(t_x / t_z,
   -(cx / fx + 0.3 tan_x), (W - cx) / fx + 0.3 tan_x)`` and ``tan_x = W / (2 fx)`` (same for ``y``): the Jacobian is
   evaluated no further than 1.3x the half field of view outside the image (for a centred principal point).
4. Classic mode: ``Sigma_2d += eps2d I`` (no antialiasing compensation); culled when ``det <= 0``;
   ``conic = Sigma_2d^-1`` stored as ``(a, b, c)`` for ``[[a, b], [b, c]]``.
5. Radii (gsplat >= 1.5: opacity-aware and per axis, not ``ceil(3 sqrt(lambda_max))`` of older releases):
   Gaussians with ``opacity < 1/255`` are culled; ``extent = min(3.33, sqrt(2 ln(255 opacity)))``;
   ``radius_x = ceil(extent sqrt(Sigma_2d[0, 0]))``, ``radius_y = ceil(extent sqrt(Sigma_2d[1, 1]))`` - the
   bounding box of the ellipse where ``alpha >= 1/255``. Culled when the box lies off the image
   (``mean_x + radius_x <= 0``, ``mean_x - radius_x >= W``, same for ``y``). Culled Gaussians have radius 0.
6. Each surviving Gaussian is evaluated at every pixel of every 16x16 tile its box touches (tile range
   ``floor((mean - r) / 16) .. ceil((mean + r) / 16)``, clamped to the image).
7. Per pixel, Gaussians front to back by camera depth ``t_z`` (ties: lower index first):
   ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` with ``d = mean2d - pixel_centre``,
   ``alpha = min(0.999, opacity exp(-sigma))``; skipped when ``sigma < 0`` or ``alpha < 1/255``;
   ``T' = T (1 - alpha)``; if ``T' <= 1e-4`` the pixel stops **without** this Gaussian; else
   ``out += alpha T feature`` and ``T = T'``.
8. ``alpha_image = 1 - T``; ``features = out + T background``; ``depth = sum alpha_i T_i t_z,i`` (gsplat's
   ``"RGB+D"``: the alpha-weighted depth, *not* divided by ``alpha_image``; ``"RGB+ED"`` would divide it).

The reference backend
---------------------
Steps 1-5 are :func:`gaussian_footprint` (public; differentiable where gsplat is). Compositing bins the visible
Gaussians into 16x16 tiles exactly as gsplat does (step 6: one list per tile, front to back), then evaluates
every tile densely at all its 256 pixels against its own list, many tiles at once, in rounds of ``K`` list
entries. Within a round the transmittance is a ``cumprod`` and the stop rule of step 7 becomes
``T_before * cumprod(1 - alpha) > 1e-4`` (the included Gaussians are a prefix, since ``T`` never grows); pixels
that stopped contribute nothing afterwards and tiles whose pixels all stopped (or whose list ended) leave the
working set, so ``K`` grows as tiles finish. A round holds about ``_CHUNK_ELEMENTS`` (pixel, Gaussian) pairs,
so memory is bounded by a few tensors of that size whatever ``N`` and the image size; with autograd on, each
round is wrapped in :func:`torch.utils.checkpoint.checkpoint` (recomputed during backward), so training memory
is bounded the same way plus the per-round inputs. The reference is differentiable w.r.t. ``means``, ``quats``,
``scales``, ``opacities``, ``features``, ``background`` (and ``viewmats``/``Ks``); radii, culling, tile
membership, sorting and the stop rule are piecewise constant, as in gsplat (where ``alpha`` is clamped at
0.999 the reference's gradient is 0, as in gsplat's backward). It is meant for CPUs, tests and small scenes: on
one CPU thread, 20k head-sized Gaussians with 32 channels at 128x128 take about 0.7 s forward and 3 s forward +
backward (``python -m avatar.bench gaussians --device cpu ...``); it runs on CUDA tensors too, much slower than
gsplat.

gsplat: what a user must have
-----------------------------
Targeted: ``gsplat==1.5.3``, the PyPI release: ``pip install "avatar4d[gsplat]"`` installs it with ``ninja``,
``jaxtyping``, ``rich`` and ``packaging`` (gsplat 1.5.3 imports ``packaging`` without declaring it). The PyPI
wheel is pure Python: it ships the CUDA sources and **JIT-compiles its extension on the first call** that needs
it (``torch.utils.cpp_extension`` with ninja; about 1-2 minutes with 16 cores, ``MAX_JOBS`` parallel jobs,
default 10), then caches it under ``~/.cache/torch_extensions/<python>_<cuda>/gsplat_cuda`` (or
``$TORCH_EXTENSIONS_DIR``) and loads the cached build in later processes. That build needs:

* an NVIDIA GPU of compute capability >= 7.0 (gsplat uses ``cg::labeled_partition``); with a CUDA 13 toolkit,
  >= 7.5 (CUDA 13 no longer compiles for Volta and older);
* the CUDA toolkit (``nvcc`` and headers) of the **same major version** as torch's CUDA (``torch.version.cuda``;
  torch refuses a different major), found through ``CUDA_HOME`` (or ``nvcc`` on ``PATH``/``/usr/local/cuda``);
* a host C++17 compiler (``g++``) that this ``nvcc`` supports, and ``ninja`` on ``PATH``;
* ``TORCH_CUDA_ARCH_LIST``: unset, torch builds for the GPUs it sees (fine on the machine that runs it, with a
  warning); set it to the GPUs you will run on to build once for them, e.g. ``"9.0"`` for H100/H200,
  ``"8.0;8.6;8.9;9.0"`` for a cache shared by A100/RTX 30xx/40xx/H100 (each extra arch lengthens the build).
  A build without the running GPU's arch fails at the first kernel launch ("no kernel image is available").

Known to work: torch 2.11.0+cu130 with nvcc 13.0 on an H100 built gsplat 1.5.3 unchanged (no patches, no extra
flags; 76 s with 16 cores). Older reports of 1.5.3 failing to build with CUDA 13.x exist, so on other CUDA 13
setups try ``VERBOSE=1 python -c "from gsplat.cuda._backend import _C"`` first to see the compiler output.
Build knobs gsplat reads: ``MAX_JOBS``, ``FAST_COMPILE=1`` (``-O0``), ``NO_FAST_MATH=1``, ``VERBOSE=1``. Use
:func:`gsplat_available` to trigger the build up front; a failed build makes ``backend="gsplat"`` raise
:class:`GaussianRasterizationUnavailableError` with the reason, and ``backend="auto"`` fall back to the reference
with one warning.

gsplat 1.6 (``main``, not on PyPI as of writing) keeps the call used here but differs in ways that matter:
``MAX_ALPHA`` is 0.99 instead of 0.999 (so it will not match this reference where ``alpha > 0.99``), it needs
``torch>=2.7``, ``tile_size`` defaults to ``None`` (auto; we pass 16), and SH colours change layout (unused
here: features are post-activation values). A gsplat other than 1.5.x is used with a warning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from avatar.errors import InputError, MissingDependencyError, UnknownOptionValueError

__all__ = [
    "ALPHA_THRESHOLD",
    "GSPLAT_VERSION",
    "MAX_ALPHA",
    "TILE_SIZE",
    "TRANSMITTANCE_THRESHOLD",
    "GaussianFootprint",
    "GaussianRasterizationUnavailableError",
    "GaussianRenderOutput",
    "gaussian_covariances",
    "gaussian_footprint",
    "gsplat_available",
    "quaternion_to_rotation",
    "rasterize_gaussians",
]

logger = logging.getLogger(__name__)

GSPLAT_VERSION = "1.5.3"
"""The gsplat release whose arithmetic the reference backend follows."""
ALPHA_THRESHOLD = 1.0 / 255.0
"""A Gaussian whose alpha at a pixel is below this is skipped there (and one whose opacity is below it is culled)."""
MAX_ALPHA = 0.999
"""Per-pixel alpha clamp of gsplat 1.5.3 (1.6 uses 0.99)."""
TRANSMITTANCE_THRESHOLD = 1e-4
"""A pixel stops, excluding the Gaussian that would bring its transmittance to this or below."""
TILE_SIZE = 16
"""gsplat's tile edge in pixels (passed to gsplat; the reference applies the same tile test)."""
GAUSSIAN_EXTENT = 3.33
"""Largest radius, in standard deviations of the 2D marginal, of a Gaussian's bounding box."""
INSTALL_HINT = (
    "pip install avatar4d[gsplat] (gsplat==1.5.3 with ninja, jaxtyping, rich, packaging); its CUDA extension is "
    "built on first use, which needs a CUDA toolkit whose nvcc matches torch's CUDA version (torch.version.cuda) "
    "and a GPU of compute capability 7.0 or newer"
)

Backend = Literal["auto", "reference", "gsplat"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "gsplat")

_CHUNK_ELEMENTS = 1 << 20  # reference: about this many (pixel, Gaussian) pairs evaluated at once
_MIN_ROUND = 32  # reference: list entries per tile evaluated at once, at least


class GaussianRasterizationUnavailableError(MissingDependencyError):
    """The gsplat backend cannot run here: gsplat (or a dependency) is not installed, its CUDA extension did not
    build or load, the GPU is too old, or the tensors are not on a CUDA device. The message says which, and what
    to install (also an :class:`ImportError`); ``backend="reference"`` works everywhere."""


@dataclass
class GaussianRenderOutput:
    """What :func:`rasterize_gaussians` returns."""

    features: Tensor
    """``(B, C, H, W)`` composited features, background included: ``sum_i alpha_i T_i f_i + T background``."""
    alpha: Tensor
    """``(B, 1, H, W)`` accumulated opacity ``1 - T`` (``T`` the transmittance left after the last Gaussian)."""
    depth: Tensor | None = None
    """``(B, 1, H, W)`` alpha-weighted depth ``sum_i alpha_i T_i z_i`` (camera ``z``), **not** normalised by
    ``alpha``: divide by ``alpha.clamp_min(eps)`` for the expected depth of the covered part. ``None`` unless
    ``return_depth``. The background contributes 0."""
    radii: Tensor | None = None
    """``(B, N)`` int32 pixel radius of each Gaussian's screen box (the larger of gsplat's per-axis radii);
    0 means culled (behind ``near_plane``, beyond ``far_plane``, opacity below 1/255, off screen)."""


@dataclass
class GaussianFootprint:
    """Screen-space footprint of Gaussians seen by one camera per scene (:func:`gaussian_footprint`)."""

    means2d: Tensor
    """``(B, N, 2)`` projected centres in pixels (``u`` right, ``v`` down; pixel ``(i, j)`` is centred at
    ``(j + 0.5, i + 0.5)``). Meaningless where not ``visible``."""
    depths: Tensor
    """``(B, N)`` camera-space ``z`` of the centres (the compositing order and the depth output)."""
    covars2d: Tensor
    """``(B, N, 2, 2)`` screen covariances, ``eps2d`` already added to the diagonal."""
    conics: Tensor
    """``(B, N, 3)`` the inverse screen covariance ``[[a, b], [b, c]]`` as ``(a, b, c)``."""
    radii: Tensor
    """``(B, N, 2)`` int32 per-axis radii of the screen bounding box in pixels (``x``, ``y``); 0 where culled."""
    visible: Tensor
    """``(B, N)`` bool: not culled (``radii > 0`` on both axes)."""


# ---------------------------------------------------------------------------------------------------------
# projection


def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` given as ``w, x, y, z`` (normalised first,
    so any non-zero scale works). ``R @ v`` rotates ``v``."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def gaussian_covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R S S^T R^T`` ``(..., 3, 3)`` of Gaussians with rotations ``quats (..., 4)`` (``wxyz``)
    and standard deviations ``scales (..., 3)``."""
    m = quaternion_to_rotation(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def gaussian_footprint(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor | None,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> GaussianFootprint:
    """Project Gaussians to the screen as gsplat 1.5.3's ``fully_fused_projection`` does (pinhole, classic mode).

    Shapes: ``means (B, N, 3)``, ``quats (B, N, 4)``, ``scales (B, N, 3)``, ``opacities (B, N)`` or ``None``
    (then the box extent is the full 3.33 standard deviations and no Gaussian is culled for its opacity),
    ``viewmats (B, 4, 4)`` world -> camera (OpenCV), ``Ks (B, 3, 3)``. See the module docstring, steps 1-5.
    ``means2d``, ``depths``, ``covars2d`` and ``conics`` are differentiable w.r.t. the inputs; radii and
    visibility are not. Entries of culled Gaussians are finite but meaningless.
    """
    rot = viewmats[:, None, :3, :3]  # (B, 1, 3, 3)
    means_c = (rot @ means[..., None]).squeeze(-1) + viewmats[:, None, :3, 3]
    covars_c = rot @ gaussian_covariances(quats, scales) @ rot.transpose(-1, -2)
    x, y, z = means_c.unbind(-1)
    with torch.no_grad():
        in_depth = (z >= near_plane) & (z <= far_plane)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))  # culled ones must not put inf/nan in the gradients
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rz = 1.0 / z_safe
    rz2 = rz * rz
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(rz)
    jac = torch.stack([fx * rz, zero, -fx * tx * rz2, zero, fy * rz, -fy * ty * rz2], dim=-1).unflatten(-1, (2, 3))
    covars2d = jac @ covars_c @ jac.transpose(-1, -2)
    covars2d = covars2d + eps2d * torch.eye(2, dtype=covars2d.dtype, device=covars2d.device)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    a, b, c = covars2d[..., 0, 0], 0.5 * (covars2d[..., 0, 1] + covars2d[..., 1, 0]), covars2d[..., 1, 1]
    det = a * c - b * b
    with torch.no_grad():
        det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        visible = in_depth & det_ok
        if opacities is None:
            extent = torch.full_like(z, GAUSSIAN_EXTENT)
        else:
            op = opacities.detach().to(z.dtype)
            visible &= op >= ALPHA_THRESHOLD
            ratio = (op / ALPHA_THRESHOLD).clamp_min(1.0)
            extent = torch.sqrt(2.0 * torch.log(ratio)).clamp_max(GAUSSIAN_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c.detach().clamp_min(0)))
        u, v = means2d.detach().unbind(-1)
        visible &= (rx > 0) | (ry > 0)  # gsplat's radius_clip = 0
        visible &= (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
        radii = torch.stack([rx, ry], dim=-1).masked_fill(~visible[..., None], 0).to(torch.int32)
        visible &= (radii > 0).all(-1)  # what gsplat's tile intersection rasterises
    return GaussianFootprint(means2d=means2d, depths=z, covars2d=covars2d, conics=conics, radii=radii,
                             visible=visible)


# ---------------------------------------------------------------------------------------------------------
# reference compositing


def _tile_ranges(means2d: Tensor, radii: Tensor, tiles_x: int, tiles_y: int) -> tuple[Tensor, ...]:
    """Tile range ``[x0, x1) x [y0, y1)`` of each Gaussian, as gsplat's ``isect_tiles`` computes it (its float ->
    unsigned casts saturate negative values to 0)."""
    m = means2d.detach() / TILE_SIZE
    r = radii.to(m.dtype) / TILE_SIZE
    lo = torch.floor(m - r).clamp_min(0).to(torch.int64)
    hi = torch.ceil(m + r).clamp_min(0).to(torch.int64)
    return (lo[:, 0].clamp_max(tiles_x), hi[:, 0].clamp_max(tiles_x),
            lo[:, 1].clamp_max(tiles_y), hi[:, 1].clamp_max(tiles_y))


def _tile_intersections(fp: GaussianFootprint, width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
    """gsplat's tile binning for all ``B`` images at once: returns ``gauss (M,)`` flat Gaussian indices
    (``b * N + i``), grouped by image tile (``b * tiles + tile_row * tiles_x + tile_col``) and, within a tile,
    front to back (camera depth; ties by index, as gsplat's stable radix sort), with ``counts (B * tiles,)`` and
    ``offsets (B * tiles,)`` of each tile's run."""
    bsz, n = fp.depths.shape
    tiles_x, tiles_y = -(-width // TILE_SIZE), -(-height // TILE_SIZE)
    n_tiles = tiles_x * tiles_y
    device = fp.depths.device
    ids = fp.visible.reshape(-1).nonzero().squeeze(1)
    depths = fp.depths.detach().reshape(-1)[ids]
    ids = ids[torch.sort(depths, stable=True).indices]
    ids = ids[torch.sort(ids // n, stable=True).indices]  # by image, then depth, then index
    x0, x1, y0, y1 = _tile_ranges(fp.means2d.detach().reshape(-1, 2)[ids], fp.radii.reshape(-1, 2)[ids],
                                  tiles_x, tiles_y)
    nx = x1 - x0
    per_gauss = nx * (y1 - y0)
    rank = torch.repeat_interleave(torch.arange(ids.numel(), device=device), per_gauss)
    first = torch.cumsum(per_gauss, 0) - per_gauss
    local = torch.arange(rank.numel(), device=device) - first[rank]
    nx_r = nx[rank]
    tile = (ids[rank] // n) * n_tiles + (y0[rank] + local // nx_r) * tiles_x + x0[rank] + local % nx_r
    order = torch.sort(tile, stable=True).indices  # pairs were made in depth order: stable keeps it per tile
    counts = torch.bincount(tile, minlength=bsz * n_tiles)
    return ids[rank[order]], counts, torch.cumsum(counts, 0) - counts


def _composite_round(
    px: Tensor, py: Tensor, trans: Tensor, alive: Tensor, valid: Tensor,
    means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The next ``K`` Gaussians of ``A`` tiles of ``P`` pixels each, front to back.

    ``px, py (A, P)`` pixel centres, ``trans (A, P)`` transmittance so far, ``alive (A, P)`` pixels still
    compositing, ``valid (A, K)`` real list entries; ``means2d (A, K, 2)``, ``conics (A, K, 3)``,
    ``opacities (A, K)``, ``colors (A, K, D)``. Returns the added colour ``(A, P, D)``, the new transmittance
    ``(A, P)`` and which pixels stopped here ``(A, P)`` (bool)."""
    dx = means2d[:, None, :, 0] - px[..., None]  # (A, P, K)
    dy = means2d[:, None, :, 1] - py[..., None]
    a, b, c = (conics[:, None, :, i] for i in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (opacities[:, None, :] * torch.exp(-sigma)).clamp_max(MAX_ALPHA)
    ok = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & valid[:, None, :] & alive[..., None]
    alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
    t_incl = trans[..., None] * torch.cumprod(1 - alpha, dim=-1)  # T after each Gaussian, were all counted
    keep = t_incl > TRANSMITTANCE_THRESHOLD  # a prefix, since T never grows: the stop rule
    t_excl = torch.cat([trans[..., None], t_incl[..., :-1]], dim=-1)
    weights = torch.where(keep, alpha * t_excl, torch.zeros_like(alpha))
    n_keep = keep.sum(-1)
    last = t_incl.gather(-1, (n_keep - 1).clamp_min(0)[..., None]).squeeze(-1)
    t_after = torch.where(n_keep > 0, last, trans)
    return weights @ colors, t_after, n_keep < keep.shape[-1]


def _composite(fp: GaussianFootprint, opacities: Tensor, colors: Tensor, width: int, height: int,
               background: Tensor | None) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of all images: returns ``(features (B, H, W, D), T (B, H, W))``.

    Every tile is evaluated at all its pixels against its own list, in rounds of ``K`` list entries (``K`` grows
    as tiles finish, so each round holds about ``_CHUNK_ELEMENTS`` (pixel, Gaussian) pairs); tiles are taken in
    groups so that a round never holds more, whatever ``N`` and the image size."""
    bsz, n = opacities.shape
    dim = colors.shape[-1]
    device, dtype = colors.device, colors.dtype
    tiles_x, tiles_y = -(-width // TILE_SIZE), -(-height // TILE_SIZE)
    n_tiles, p = tiles_x * tiles_y, TILE_SIZE * TILE_SIZE
    gauss, counts, offsets = _tile_intersections(fp, width, height)
    means2d, conics = fp.means2d.reshape(bsz * n, 2), fp.conics.reshape(bsz * n, 3)
    op, col = opacities.reshape(bsz * n), colors.reshape(bsz * n, dim)
    local = torch.arange(p, device=device)
    lx, ly = local % TILE_SIZE, local // TILE_SIZE
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, op, col))

    out = col.new_zeros(bsz * n_tiles, p, dim)
    trans = col.new_ones(bsz * n_tiles, p)
    busy = counts.nonzero().squeeze(1)
    group = max(1, _CHUNK_ELEMENTS // (p * _MIN_ROUND))
    results = []
    for g0 in range(0, busy.numel(), group):
        tiles = busy[g0:g0 + group]
        tile_in_image = tiles % n_tiles
        cols = (tile_in_image % tiles_x)[:, None] * TILE_SIZE + lx
        rows = (tile_in_image // tiles_x)[:, None] * TILE_SIZE + ly
        px, py = cols.to(dtype) + 0.5, rows.to(dtype) + 0.5
        alive = (cols < width) & (rows < height)
        cnt, off = counts[tiles], offsets[tiles]
        g_out = col.new_zeros(tiles.numel(), p, dim)
        g_trans = col.new_ones(tiles.numel(), p)
        act = torch.arange(tiles.numel(), device=device)
        start = 0
        while act.numel() > 0:
            k = max(_MIN_ROUND, _CHUNK_ELEMENTS // (act.numel() * p))
            k = min(k, int(cnt[act].max()) - start)
            j = start + torch.arange(k, device=device)
            valid = j < cnt[act, None]
            idx = gauss[(off[act, None] + j).clamp_max(gauss.numel() - 1)]  # (A, K)
            args = (px[act], py[act], g_trans[act], alive[act], valid, means2d[idx], conics[idx], op[idx], col[idx])
            if grad:
                delta, t_after, stopped = torch.utils.checkpoint.checkpoint(_composite_round, *args,
                                                                            use_reentrant=False)
            else:
                delta, t_after, stopped = _composite_round(*args)
            g_out = g_out.index_add(0, act, delta)
            g_trans = g_trans.index_copy(0, act, t_after)
            alive[act] &= ~stopped
            start += k
            act = act[(cnt[act] > start) & alive[act].any(1)]
        results.append((tiles, g_out, g_trans))
    if results:
        tiles = torch.cat([r[0] for r in results])
        out = out.index_copy(0, tiles, torch.cat([r[1] for r in results]))
        trans = trans.index_copy(0, tiles, torch.cat([r[2] for r in results]))

    def to_image(t: Tensor) -> Tensor:  # (B * tiles, P, ...) -> (B, H, W, ...)
        t = t.reshape(bsz, tiles_y, tiles_x, TILE_SIZE, TILE_SIZE, *t.shape[2:]).transpose(2, 3)
        return t.reshape(bsz, tiles_y * TILE_SIZE, tiles_x * TILE_SIZE, *t.shape[5:])[:, :height, :width]

    image, trans = to_image(out), to_image(trans)
    if background is not None:
        image = image + trans[..., None] * background[:, None, None, :]
    return image, trans


def _rasterize_reference(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, features: Tensor,
                         viewmats: Tensor, Ks: Tensor, width: int, height: int, background: Tensor | None,
                         near_plane: float, far_plane: float, eps2d: float, return_depth: bool) -> GaussianRenderOutput:
    fp = gaussian_footprint(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane=near_plane,
                            far_plane=far_plane, eps2d=eps2d)
    c = features.shape[-1]
    colors = torch.cat([features, fp.depths[..., None]], dim=-1) if return_depth else features
    if background is not None and return_depth:
        background = F.pad(background, (0, 1))  # the depth channel has background 0
    image, trans = _composite(fp, opacities, colors, width, height, background)
    image = image.permute(0, 3, 1, 2)  # (B, D, H, W)
    return GaussianRenderOutput(features=image[:, :c], alpha=(1 - trans)[:, None],
                                depth=image[:, c:] if return_depth else None, radii=fp.radii.amax(-1))

# ---------------------------------------------------------------------------------------------------------
# gsplat


_gsplat_state: dict[str, object] = {}


def _load_gsplat() -> Callable[..., tuple[Tensor, Tensor, dict]]:
    """``gsplat.rasterization`` with its CUDA extension loaded (built on the first call of the process), or
    :class:`GaussianRasterizationUnavailableError`. The outcome is remembered for the process."""
    if "error" in _gsplat_state:
        raise GaussianRasterizationUnavailableError(_gsplat_state["error"])
    if "fn" in _gsplat_state:
        return _gsplat_state["fn"]  # type: ignore[return-value]
    try:
        import gsplat
    except ImportError as exc:
        message = f"the gsplat backend needs gsplat, which does not import ({exc}): {INSTALL_HINT}"
    else:
        try:
            from gsplat.cuda._backend import _C  # builds the CUDA extension the first time (1-2 minutes)
        except ImportError as exc:  # e.g. the undeclared `packaging`, or `rich`
            message = f"gsplat is installed but a dependency of its CUDA backend is missing ({exc}): {INSTALL_HINT}"
        except Exception as exc:  # a failed JIT build raises RuntimeError / CalledProcessError / OSError
            message = (f"gsplat could not build or load its CUDA extension ({type(exc).__name__}: {exc}); "
                       f"run with VERBOSE=1 to see the compiler, and check: {INSTALL_HINT}")
        else:
            if _C is None:
                message = f"gsplat found no CUDA toolkit (nvcc), so its CUDA extension was not built: {INSTALL_HINT}"
            else:
                version = getattr(gsplat, "__version__", "?")
                if not version.startswith("1.5."):
                    logger.warning("gsplat %s is installed; avatar targets gsplat %s (1.6 clamps alpha at 0.99 "
                                   "instead of 0.999, so it differs from the reference backend there)",
                                   version, GSPLAT_VERSION)
                _gsplat_state["fn"] = gsplat.rasterization
                return gsplat.rasterization
    _gsplat_state["error"] = message
    raise GaussianRasterizationUnavailableError(message)


def gsplat_available(device: torch.device | str | None = None) -> bool:
    """Whether ``backend="gsplat"`` can run on ``device`` (default: the current CUDA device). May build gsplat's
    CUDA extension (1-2 minutes, once). Never raises."""
    try:
        _check_gsplat_device(torch.device(device) if device is not None else torch.device("cuda"))
        _load_gsplat()
    except GaussianRasterizationUnavailableError:
        return False
    return True


def _check_gsplat_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise GaussianRasterizationUnavailableError(
            f"backend='gsplat' needs CUDA tensors, got tensors on {device.type}: move them to a CUDA device, or use "
            f"backend='reference' (or 'auto', which picks it off CUDA). gsplat runs on NVIDIA GPUs only: {INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise GaussianRasterizationUnavailableError(
            f"backend='gsplat' needs a CUDA device, and torch sees none (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}): {INSTALL_HINT}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (7, 0):
        raise GaussianRasterizationUnavailableError(
            f"gsplat needs a GPU of compute capability 7.0 or newer; {torch.cuda.get_device_name(device)} is "
            f"{major}.{minor}: use backend='reference'")


def _rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, features: Tensor,
                      viewmats: Tensor, Ks: Tensor, width: int, height: int, background: Tensor | None,
                      near_plane: float, far_plane: float, eps2d: float, return_depth: bool) -> GaussianRenderOutput:
    _check_gsplat_device(means.device)
    rasterization = _load_gsplat()

    def f32(t: Tensor) -> Tensor:
        return t.float().contiguous()

    colors, alphas, meta = rasterization(
        f32(means), f32(quats), f32(scales), f32(opacities), f32(features), f32(viewmats)[:, None], f32(Ks)[:, None],
        width, height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, packed=False, tile_size=TILE_SIZE,
        backgrounds=None if background is None else f32(background)[:, None],
        render_mode="RGB+D" if return_depth else "RGB", rasterize_mode="classic")
    dtype, c = features.dtype, features.shape[-1]
    image = colors[:, 0].permute(0, 3, 1, 2).to(dtype)  # (B, C [+1], H, W)
    radii = meta["radii"][:, 0]
    if radii.dim() == 3:  # gsplat >= 1.5: per axis
        radii = radii.amax(-1)
    return GaussianRenderOutput(features=image[:, :c], alpha=alphas[:, 0].permute(0, 3, 1, 2).to(dtype),
                                depth=image[:, c:] if return_depth else None, radii=radii.to(torch.int32))


# ---------------------------------------------------------------------------------------------------------
# entry point


def _check_inputs(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, features: Tensor,
                  viewmats: Tensor, Ks: Tensor, width: int, height: int, background: Tensor | None,
                  near_plane: float, far_plane: float, eps2d: float, backend: str, check_values: bool = True) -> None:
    if backend not in BACKENDS:
        raise UnknownOptionValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    named = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "features": features,
             "viewmats": viewmats, "Ks": Ks}
    if background is not None:
        named["background"] = background
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != means.device:
            raise InputError(f"all tensors must be on one device: means is on {means.device}, {name} on {t.device}")
    if means.dim() != 3 or means.shape[-1] != 3:
        raise InputError(f"means must have shape (B, N, 3) (one scene per camera), got {tuple(means.shape)}")
    bsz, n = means.shape[:2]
    if features.dim() != 3 or features.shape[-1] < 1:
        raise InputError(f"features must have shape (B, N, C) with C >= 1, got {tuple(features.shape)}")
    expected = {"quats": (bsz, n, 4), "scales": (bsz, n, 3), "opacities": (bsz, n),
                "features": (bsz, n, features.shape[-1]), "viewmats": (bsz, 4, 4), "Ks": (bsz, 3, 3)}
    if background is not None:
        expected["background"] = (bsz, features.shape[-1])
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            letters = {"quats": "(B, N, 4)", "scales": "(B, N, 3)", "opacities": "(B, N)", "features": "(B, N, C)",
                       "viewmats": "(B, 4, 4)", "Ks": "(B, 3, 3)", "background": "(B, C)"}[name]
            raise InputError(f"{name} must have shape {letters} = {shape} to match means {tuple(means.shape)} and "
                             f"features {tuple(features.shape)}, got {tuple(named[name].shape)}")
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"{name} must be a positive whole number of pixels, got {size!r}")
    if not (0 < near_plane < far_plane):
        raise InputError(f"need 0 < near_plane < far_plane, got near_plane={near_plane}, far_plane={far_plane}")
    if not eps2d >= 0:
        raise InputError(f"eps2d must be >= 0, got {eps2d}")
    if not check_values:
        return
    # one device sync for both value checks
    if not bool(((scales > 0).all() & ((opacities >= 0) & (opacities <= 1)).all()).item()):
        if not bool((scales > 0).all()):
            bad = scales[~(scales > 0)]
            raise InputError(f"scales must be positive standard deviations (activate them, e.g. exp), got "
                             f"{bad.numel()} entries <= 0 or NaN, e.g. {bad[0].item()}")
        bad = opacities[~((opacities >= 0) & (opacities <= 1))]
        raise InputError(f"opacities must lie in [0, 1] (activate them, e.g. sigmoid), got {bad.numel()} entries "
                         f"outside or NaN, e.g. {bad[0].item()}")


def rasterize_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    return_depth: bool = False,
    backend: Backend = "auto",
    check_values: bool = True,
) -> GaussianRenderOutput:
    """Splat ``B`` scenes of ``N`` Gaussians with ``C``-channel features, one camera per scene.

    Args:
        means: ``(B, N, 3)`` world positions.
        quats: ``(B, N, 4)`` rotations ``w, x, y, z`` (normalised here).
        scales: ``(B, N, 3)`` standard deviations (already activated, positive).
        opacities: ``(B, N)`` in ``[0, 1]``.
        features: ``(B, N, C)``, any ``C >= 1``.
        viewmats: ``(B, 4, 4)`` world -> camera, OpenCV axes (``x`` right, ``y`` down, ``z`` forward = depth).
        Ks: ``(B, 3, 3)`` intrinsics in pixels (skew ignored).
        width, height: image size in pixels.
        background: ``(B, C)`` added where transmittance is left (``features + T background``); ``None`` = 0.
        near_plane, far_plane: Gaussians whose centre depth is outside ``[near_plane, far_plane]`` are culled.
        eps2d: added to the screen covariance's diagonal (gsplat's classic-mode low-pass filter).
        return_depth: also return the accumulated depth ``sum_i alpha_i T_i z_i`` (camera ``z``; gsplat's
            ``"RGB+D"``), **not** the expected depth of ``"RGB+ED"``: divide by ``alpha`` for that.
        backend: ``"auto"``, ``"reference"`` (pure PyTorch) or ``"gsplat"`` (CUDA); see the module docstring.
        check_values: check that scales are positive and opacities in ``[0, 1]`` (one device synchronisation);
            ``False`` for callers whose values are activated by construction (a fast inference path).

    Returns:
        :class:`GaussianRenderOutput` with ``features (B, C, H, W)``, ``alpha (B, 1, H, W)``,
        ``depth (B, 1, H, W)`` or ``None``, ``radii (B, N)`` int32 (0 = culled). The gsplat backend computes in
        float32 and returns the dtype of ``features``.

    Raises:
        UnknownOptionValueError: an unknown ``backend``.
        InputError: tensors of the wrong shape, dtype or device, non-positive scales, opacities outside
            ``[0, 1]``, a bad image size or plane.
        GaussianRasterizationUnavailableError: ``backend="gsplat"`` off CUDA, or gsplat missing or not built.
    """
    _check_inputs(means, quats, scales, opacities, features, viewmats, Ks, width, height, background, near_plane,
                  far_plane, eps2d, backend, check_values)
    args = (means, quats, scales, opacities, features, viewmats, Ks, width, height, background, near_plane,
            far_plane, eps2d, return_depth)
    if backend == "gsplat":
        return _rasterize_gsplat(*args)
    if backend == "auto" and means.device.type == "cuda" and features.dtype != torch.float64:
        try:
            _check_gsplat_device(means.device)
            _load_gsplat()
        except GaussianRasterizationUnavailableError as exc:
            if not _gsplat_state.get("warned"):
                _gsplat_state["warned"] = True
                logger.warning("Gaussian rasterisation falls back to the (slow) PyTorch reference: %s", exc)
        else:
            return _rasterize_gsplat(*args)
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in args[:7]])
    tensors = [t.to(dtype) for t in args[:7]]
    bg = None if background is None else background.to(dtype)
    return _rasterize_reference(*tensors, width, height, bg, near_plane, far_plane, eps2d, return_depth)

