"""Triplane sampling, the NeRF decoder and the two-pass importance volume renderer of Portrait4D.

Numerically this follows the upstream renderer used by the Portrait4D reconstructor (EG3D's
``ImportanceRenderer`` with Portrait4D's ``'auto-plane'`` depth range, deformer hook and background
transmittance):

1. coarse depths: ``depth_resolution`` stratified samples between ``ray_start`` and ``ray_end``;
2. the field (deformer -> triplanes -> decoder) is evaluated at the coarse points;
3. ``depth_resolution_importance`` fine depths are drawn by inverse-CDF from the (max/avg-pooled) coarse
   weights and evaluated too;
4. coarse and fine samples are merged, sorted, and composited with the MipNeRF-style ray marcher
   (interval midpoints, ``softplus(sigma - 1)`` density); ``t_bg = 1 - sum(weights)`` is the background
   transmittance the reconstructor multiplies with its background image.

Randomness: upstream always jitters the stratified depths and draws importance samples with ``torch.rand``.
Here ``deterministic=True`` uses the un-jittered ``linspace`` depths and ``u = linspace(0, 1)`` for the
inverse CDF (the project's inference convention); by default it is deterministic in ``eval()`` mode and
stochastic in ``train()`` mode.

Shapes: ``B`` batch, ``R`` rays per batch element, ``S`` samples per ray, ``C`` feature channels,
``P = 3`` planes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config

__all__ = [
    "DecoderOutput",
    "EqualizedLinear",
    "Field",
    "ImportanceRenderer",
    "MarchOutput",
    "PLANE_AXES",
    "RenderOutput",
    "RenderingOptions",
    "TriplaneNeRFDecoder",
    "composite_background",
    "merge_samples",
    "project_onto_planes",
    "ray_box_limits",
    "ray_march",
    "rays_to_image",
    "sample_from_planes",
    "sample_importance",
    "sample_pdf",
    "sample_stratified",
    "triplane_field",
]

Planes = Tensor | Sequence[Tensor]
"""``(B, 3, C, H, W)`` triplanes, or a list of such tensors whose samples are summed."""

Field = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(points (B, M, 3), directions (B, M, 3)) -> (features (B, M, C), raw density (B, M, 1))``."""

Deformer = Callable[[Tensor], Tensor]
"""Maps observed-space points ``(B, M, 3)`` to canonical-space points ``(B, M, 3)``."""


# ----------------------------------------------------------------------------------------------------------
# Triplane sampling


PLANE_AXES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "xy-yz-zx": ((0, 1), (1, 2), (2, 0)),
    "xy-xz-zy": ((0, 1), (0, 2), (2, 1)),
}
"""The coordinate pairs each plane is indexed by, per convention: ``'xy-yz-zx'`` is Portrait4D's (and GenHead's)
projection; ``'xy-xz-zy'`` is EG3D's ``generate_planes`` + ``project_onto_planes`` (the inverse plane matrices
applied to the points, first two components kept), which GOHA uses."""


def project_onto_planes(coordinates: Tensor, plane_axes: str = "xy-yz-zx") -> Tensor:
    """Project points onto the three planes.

    Upstream Portrait4D projects onto the ``(x, y)``, ``(y, z)`` and ``(z, x)`` planes, in that order (its
    ``generate_planes`` axis matrices are passed in but not used by the projection); EG3D and GOHA onto
    ``(x, y)``, ``(x, z)``, ``(z, y)`` (``plane_axes='xy-xz-zy'``, see :data:`PLANE_AXES`). The first component
    indexes the plane's width (grid ``x``), the second its height (grid ``y``).

    Args:
        coordinates: ``(N, M, 3)``.
        plane_axes: a key of :data:`PLANE_AXES`.

    Returns:
        ``(N * 3, M, 2)``, plane-major within each batch element.
    """
    if plane_axes not in PLANE_AXES:
        raise ValueError(f"plane_axes must be one of {sorted(PLANE_AXES)}, got {plane_axes!r}")
    n, m, _ = coordinates.shape
    axes = coordinates.unbind(-1)  # (no list indexing: its CPU index tensor would break CUDA graph capture)
    planes = torch.stack([torch.stack((axes[a], axes[b]), dim=-1) for a, b in PLANE_AXES[plane_axes]], dim=1)
    return planes.reshape(n * 3, m, 2)


def sample_from_planes(
    planes: Planes,
    coordinates: Tensor,
    box_warp: float,
    box_warp_scale: float | Tensor = 1.0,
    mode: str = "bilinear",
    plane_axes: str = "xy-yz-zx",
) -> Tensor:
    """Bilinearly sample triplane features at world points.

    Points are scaled by ``2 / (box_warp_scale * box_warp)`` so the planes span the cube of side
    ``box_warp * box_warp_scale`` centred at the origin; ``grid_sample`` uses ``align_corners=False`` and zero
    padding, so points outside the cube get (fading to) zero features.

    Args:
        planes: ``(N, 3, C, H, W)`` or a sequence of those (their samples are summed).
        coordinates: ``(N, M, 3)`` world points.
        box_warp: side length of the cube spanned by the planes (1.3 for Portrait4D).
        box_warp_scale: float or ``(N, 1, 1)`` tensor.
        plane_axes: the projection convention (:func:`project_onto_planes`).

    Returns:
        ``(N, 3, M, C)`` features per plane.
    """
    plane_list = [planes] if isinstance(planes, Tensor) else list(planes)
    _, m, _ = coordinates.shape
    scaled = (2 / (box_warp_scale * box_warp)) * coordinates
    grid = project_onto_planes(scaled, plane_axes).unsqueeze(1)  # (N*3, 1, M, 2)
    out: Tensor | None = None
    for p in plane_list:
        n, n_planes, c, h, w = p.shape
        feats = F.grid_sample(
            p.reshape(n * n_planes, c, h, w),
            grid.to(p.dtype),
            mode=mode,
            padding_mode="zeros",
            align_corners=False,
        )
        feats = feats.permute(0, 3, 2, 1).reshape(n, n_planes, m, c)
        out = feats if out is None else out + feats
    if out is None:
        raise ValueError("no planes given")
    return out


# ----------------------------------------------------------------------------------------------------------
# NeRF decoder


class EqualizedLinear(nn.Module):
    """StyleGAN2 ``FullyConnectedLayer`` (linear activation): runtime weight scaling ``lr_mul / sqrt(in)``.

    Parameters ``weight`` ``(out, in)`` (initialised ``N(0, 1) / lr_multiplier``) and ``bias`` ``(out,)``.
    """

    def __init__(
        self, in_features: int, out_features: int, lr_multiplier: float = 1.0, bias_init: float = 0.0
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        """``(K, in) -> (K, out)``."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        return torch.addmm(b.unsqueeze(0), x, w.t())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class DecoderOutput(NamedTuple):
    """Per-sample decoder output."""

    rgb: Tensor
    """``(N, M, C_out)`` features in ``(-0.001, 1.001)``; the first 3 channels are the raw RGB."""
    sigma: Tensor
    """``(N, M, 1)`` raw density (before the ray marcher's ``softplus(sigma - 1)``)."""


class TriplaneNeRFDecoder(nn.Module):
    """Upstream ``OSGDecoder``: mean over planes -> FC + Softplus -> density and feature heads.

    State-dict names match the official ``decoder.*`` keys: ``net.0.{weight,bias}`` ``(64, 32)``/``(64,)``,
    ``out_sigma.{weight,bias}`` ``(1, 64)``/``(1,)`` (zero-initialised) and ``out_rgb.{weight,bias}``
    ``(32, 64)``/``(32,)`` for Portrait4D (32 features feeding the super-resolution net).
    """

    def __init__(
        self, n_features: int = 32, output_dim: int = 32, hidden_dim: int = 64, lr_multiplier: float = 1.0
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.net = nn.Sequential(EqualizedLinear(n_features, hidden_dim, lr_multiplier), nn.Softplus())
        self.out_sigma = EqualizedLinear(hidden_dim, 1, lr_multiplier)
        self.out_rgb = EqualizedLinear(hidden_dim, output_dim, lr_multiplier)
        with torch.no_grad():
            self.out_sigma.weight.zero_()
            self.out_sigma.bias.zero_()

    def forward(self, sampled_features: Tensor, ray_directions: Tensor | None = None) -> DecoderOutput:
        """Decode plane features.

        Args:
            sampled_features: ``(N, 3, M, C)`` from :func:`sample_from_planes`.
            ray_directions: ``(N, M, 3)``; unused (no view dependence), kept for the upstream signature.

        Returns:
            :class:`DecoderOutput` with ``rgb`` ``(N, M, C_out)`` and ``sigma`` ``(N, M, 1)``.
        """
        x = sampled_features.mean(1)
        n, m, c = x.shape
        h = self.net(x.reshape(n * m, c))
        rgb = self.out_rgb(h).view(n, m, -1)
        sigma = self.out_sigma(h).view(n, m, -1)
        rgb = torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        return DecoderOutput(rgb, sigma)


def triplane_field(
    planes: Planes,
    decoder: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    box_warp: float,
    box_warp_scale: float | Tensor = 1.0,
    deformer: Deformer | None = None,
    plane_axes: str = "xy-yz-zx",
) -> Field:
    """The radiance field of a triplane: optional deformation to canonical space, plane sampling, decoding.

    Returns:
        A :data:`Field` mapping ``(B, M, 3)`` points and directions to ``(B, M, C)`` features and
        ``(B, M, 1)`` raw densities.
    """

    def field(points: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        canonical = deformer(points) if deformer is not None else points
        feats = sample_from_planes(planes, canonical, box_warp, box_warp_scale, plane_axes=plane_axes)
        rgb, sigma = decoder(feats, directions)
        return rgb, sigma

    return field


# ----------------------------------------------------------------------------------------------------------
# Depth samples


@dataclass
class RenderingOptions(Config):
    """Rendering options; defaults are those of the Portrait4D reconstructor (``train_recon_v*.py``)."""

    depth_resolution: int = 48
    """Stratified (coarse) samples per ray."""
    depth_resolution_importance: int = 48
    """Importance (fine) samples per ray; 0 disables the fine pass."""
    ray_start: float | str = "auto-plane"
    """Near bound: a distance, ``'auto'`` (ray/box intersection) or ``'auto-plane'`` (``|cam_z| - box/2``)."""
    ray_end: float | str = "auto-plane"
    """Far bound, as ``ray_start``."""
    box_warp: float = 1.3
    """Side length of the cube spanned by the triplanes."""
    clamp_mode: str = "softplus"
    """Density activation; only ``'softplus'`` (``softplus(sigma - 1)``) exists upstream."""
    disparity_space_sampling: bool = False
    """Sample uniformly in inverse depth instead of depth."""
    white_back: bool = False
    """Add ``1 - opacity`` to the composited features."""
    density_noise: float = 0.0
    """Std of Gaussian noise added to raw densities (stochastic mode only)."""
    plane_axes: str = "xy-yz-zx"
    """How points project onto the three planes (:data:`PLANE_AXES`): Portrait4D's ``'xy-yz-zx'`` or EG3D's
    ``'xy-xz-zy'`` (GOHA)."""

    @classmethod
    def from_official(cls, kwargs: Mapping[str, Any]) -> RenderingOptions:
        """Build from an upstream ``rendering_kwargs`` dict, ignoring unrelated keys (``from_dict`` is strict)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})


def ray_box_limits(origins: Tensor, directions: Tensor, box_side: float) -> tuple[Tensor, Tensor]:
    """Slab intersection of rays with the axis-aligned cube ``[-box_side/2, box_side/2]^3``.

    Args:
        origins, directions: ``(..., 3)``.

    Returns:
        ``t_min``, ``t_max`` of shape ``(..., 1)``; rays that miss get ``-1`` and ``-2``.
    """
    shape = origins.shape[:-1]
    o = origins.detach().reshape(-1, 3)
    d = directions.detach().reshape(-1, 3)
    half = box_side / 2
    inv = 1 / d
    neg = inv < 0
    near_plane = torch.where(neg, half, -half)
    far_plane = torch.where(neg, -half, half)
    t_near = (near_plane - o) * inv  # (K, 3)
    t_far = (far_plane - o) * inv
    valid = torch.ones(o.shape[0], dtype=torch.bool, device=o.device)
    tmin, tmax = t_near[:, 0], t_far[:, 0]
    for axis in (1, 2):
        valid = valid & ~((tmin > t_far[:, axis]) | (t_near[:, axis] > tmax))
        tmin = torch.maximum(tmin, t_near[:, axis])
        tmax = torch.minimum(tmax, t_far[:, axis])
    tmin = torch.where(valid, tmin, torch.full_like(tmin, -1.0))
    tmax = torch.where(valid, tmax, torch.full_like(tmax, -2.0))
    return tmin.reshape(*shape, 1), tmax.reshape(*shape, 1)


def _linspace(start: Tensor, stop: Tensor, num: int) -> Tensor:
    """``(num, *start.shape)`` evenly spaced values, ``start + k / (num - 1) * (stop - start)``."""
    steps = torch.arange(num, dtype=torch.float32, device=start.device) / (num - 1)
    steps = steps.reshape(-1, *([1] * start.dim()))
    return start[None] + steps * (stop - start)[None]


def sample_stratified(
    origins: Tensor,
    ray_start: float | Tensor,
    ray_end: float | Tensor,
    num: int,
    disparity_space: bool = False,
    deterministic: bool = False,
) -> Tensor:
    """Coarse depths: ``linspace(start, end, num)`` plus (unless deterministic) ``U(0, 1) * spacing`` jitter.

    The jitter can push the last sample past ``ray_end`` by up to one spacing, as upstream.

    Args:
        origins: ``(B, R, 3)``; gives ``B``, ``R``, device.
        ray_start, ray_end: floats, or tensors ``(B, R, 1)`` (per ray) or ``(B, 1, 1)`` (per batch element).
        num: samples per ray.

    Returns:
        ``(B, R, num, 1)`` for float bounds, otherwise ``(B, R', num, 1)`` with ``R'`` the bounds' ray dim
        (so ``(B, 1, num, 1)`` for per-batch bounds: every ray of an element shares the same depths).
    """
    b, r, _ = origins.shape
    if disparity_space:
        base = torch.linspace(0, 1, num, device=origins.device).reshape(1, 1, num, 1).repeat(b, r, 1, 1)
        if not deterministic:
            base = base + torch.rand_like(base) * (1 / (num - 1))
        lo = ray_start.unsqueeze(-1) if isinstance(ray_start, Tensor) else ray_start
        hi = ray_end.unsqueeze(-1) if isinstance(ray_end, Tensor) else ray_end
        return 1.0 / (1.0 / lo * (1.0 - base) + 1.0 / hi * base)
    if isinstance(ray_start, Tensor) or isinstance(ray_end, Tensor):
        start = torch.as_tensor(ray_start, device=origins.device)
        end = torch.as_tensor(ray_end, device=origins.device)
        start, end = torch.broadcast_tensors(start, end)
        depths = _linspace(start, end, num).permute(1, 2, 0, 3)
        if not deterministic:
            depths = depths + torch.rand_like(depths) * ((end - start) / (num - 1))[..., None]
        return depths
    depths = torch.linspace(ray_start, ray_end, num, device=origins.device).reshape(1, 1, num, 1)
    depths = depths.repeat(b, r, 1, 1)
    if not deterministic:
        depths = depths + torch.rand_like(depths) * ((ray_end - ray_start) / (num - 1))
    return depths


def sample_pdf(
    bins: Tensor, weights: Tensor, num: int, deterministic: bool = False, eps: float = 1e-5
) -> Tensor:
    """Inverse-CDF sampling of a piecewise-constant density over bins.

    Args:
        bins: ``(K, n + 1)`` bin edges (only the first ``n + 1`` are used).
        weights: ``(K, n)`` non-negative bin weights.
        num: samples per row.
        deterministic: use ``u = linspace(0, 1, num)`` instead of ``u ~ U(0, 1)``.

    Returns:
        ``(K, num)`` samples.
    """
    k, n = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # (K, n + 1)
    if deterministic:
        u = torch.linspace(0, 1, num, device=bins.device, dtype=cdf.dtype).expand(k, num)
    else:
        u = torch.rand(k, num, device=bins.device, dtype=cdf.dtype)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, n)
    idx = torch.stack([below, above], -1).view(k, 2 * num)
    cdf_g = torch.gather(cdf, 1, idx).view(k, num, 2)
    bins_g = torch.gather(bins, 1, idx).view(k, num, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def sample_importance(depths: Tensor, weights: Tensor, num: int, deterministic: bool = False) -> Tensor:
    """Fine depths drawn from the coarse weights (no gradient).

    The ``S - 1`` interval weights are smoothed with a width-2 max-pool then a width-2 average-pool, get
    ``+0.01``, and the inner ``S - 3`` of them define a piecewise-constant pdf over the bins delimited by the
    midpoints of consecutive coarse depths, exactly as upstream (EG3D). Upstream's ``[1:-1]`` slice was
    written for per-sample weights; applied to per-interval weights it puts the pooled weight of interval
    ``j`` on the bin ``[mid_{j-1}, mid_j]``, i.e. half an interval nearer the camera, and never uses the last
    bin. This is kept for parity.

    Args:
        depths: ``(B, R, S, 1)`` sorted coarse depths.
        weights: ``(B, R, S - 1, 1)`` coarse weights from :func:`ray_march`.
        num: fine samples per ray.

    Returns:
        ``(B, R, num, 1)`` fine depths.
    """
    with torch.no_grad():
        b, r, s, _ = depths.shape
        z = depths.reshape(b * r, s)
        w = weights.reshape(b * r, -1).unsqueeze(1).float()
        w = F.max_pool1d(w, 2, 1, padding=1)
        w = F.avg_pool1d(w, 2, 1).squeeze(1) + 0.01
        z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
        fine = sample_pdf(z_mid, w[:, 1:-1], num, deterministic=deterministic)
    return fine.detach().reshape(b, r, num, 1)


def merge_samples(
    depths1: Tensor, colors1: Tensor, densities1: Tensor, depths2: Tensor, colors2: Tensor, densities2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate two sample sets along the sample dim and sort by depth.

    Args:
        depths*: ``(B, R, S_i, 1)``; colors*: ``(B, R, S_i, C)``; densities*: ``(B, R, S_i, 1)``.

    Returns:
        Sorted ``depths`` ``(B, R, S, 1)``, ``colors`` ``(B, R, S, C)``, ``densities`` ``(B, R, S, 1)``.
    """
    depths = torch.cat([depths1, depths2], dim=-2)
    colors = torch.cat([colors1, colors2], dim=-2)
    densities = torch.cat([densities1, densities2], dim=-2)
    _, order = torch.sort(depths, dim=-2)
    depths = torch.gather(depths, -2, order)
    colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
    densities = torch.gather(densities, -2, order.expand(-1, -1, -1, 1))
    return depths, colors, densities


# ----------------------------------------------------------------------------------------------------------
# Ray marching


class MarchOutput(NamedTuple):
    """Output of :func:`ray_march`."""

    rgb: Tensor
    """``(B, R, C)`` composited features."""
    depth: Tensor
    """``(B, R, 1)`` expected depth, clamped to the global min/max sample depth."""
    weights: Tensor
    """``(B, R, S - 1, 1)`` per-interval weights."""
    t_bg: Tensor
    """``(B, R, 1)`` background transmittance ``1 - sum(weights)``."""


def ray_march(
    colors: Tensor, densities: Tensor, depths: Tensor, clamp_mode: str = "softplus", white_back: bool = False
) -> MarchOutput:
    """MipNeRF-style compositing over the ``S - 1`` intervals between consecutive samples.

    Each interval uses the mean colour and mean raw density of its two end samples, density
    ``softplus(raw - 1)``, ``alpha = 1 - exp(-density * delta)`` and transmittance ``prod(1 - alpha + 1e-10)``.

    Args:
        colors: ``(B, R, S, C)``; densities: ``(B, R, S, 1)`` raw; depths: ``(B, R, S, 1)`` sorted.
    """
    if clamp_mode != "softplus":
        raise ValueError("only clamp_mode='softplus' is supported")
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    densities_mid = F.softplus(densities_mid - 1)
    alpha = 1 - torch.exp(-(densities_mid * deltas))
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(shifted, -2)[:, :, :-1]
    rgb = torch.sum(weights * colors_mid, -2)
    total = weights.sum(2)
    depth = torch.sum(weights * depths_mid, -2) / total
    depth = torch.nan_to_num(depth, float("inf"))
    depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_back:
        rgb = rgb + 1 - total
    return MarchOutput(rgb, depth, weights, 1 - total)


# ----------------------------------------------------------------------------------------------------------
# Renderer


@dataclass
class RenderOutput:
    """Per-ray rendering results."""

    features: Tensor
    """``(B, R, C)`` composited decoder features (without background)."""
    depth: Tensor
    """``(B, R, 1)`` expected depth along the (unit) ray."""
    all_depths: Tensor
    """``(B, R, S, 1)`` sorted sample depths (coarse + fine)."""
    weights: Tensor
    """``(B, R, S - 1, 1)`` compositing weights."""
    t_bg: Tensor
    """``(B, R, 1)`` background transmittance."""

    @property
    def opacity(self) -> Tensor:
        """``(B, R, 1)`` accumulated opacity ``1 - t_bg``."""
        return self.weights.sum(2)


class ImportanceRenderer(nn.Module):
    """Two-pass (stratified + importance) volume renderer of Portrait4D."""

    def __init__(self, options: RenderingOptions | None = None):
        super().__init__()
        self.options = options if options is not None else RenderingOptions()
        # The per-pass steps, replaceable by compiled versions (see :meth:`compile_steps`).
        self.march_fn: Callable[..., MarchOutput] = ray_march
        self.importance_fn: Callable[..., Tensor] = sample_importance
        self.merge_fn: Callable[..., tuple[Tensor, Tensor, Tensor]] = merge_samples

    def compile_steps(self, mode: str | None = None) -> ImportanceRenderer:
        """``torch.compile`` the ray marcher, the importance sampler and the sample merge (elementwise-heavy
        steps that fuse well); the maths is unchanged."""
        self.march_fn = torch.compile(ray_march, mode=mode, dynamic=False)
        self.importance_fn = torch.compile(sample_importance, mode=mode, dynamic=False)
        self.merge_fn = torch.compile(merge_samples, mode=mode, dynamic=False)
        return self

    def is_deterministic(self, deterministic: bool | None) -> bool:
        """The sampling mode of a call: ``deterministic`` when given, else ``not self.training``."""
        return (not self.training) if deterministic is None else deterministic

    def coarse_depths(
        self,
        origins: Tensor,
        directions: Tensor,
        cam_z: Tensor | None = None,
        box_warp_scale: float | Tensor = 1.0,
        deterministic: bool = False,
    ) -> Tensor:
        """Stratified depths ``(B, R, depth_resolution, 1)`` for the configured depth range.

        Args:
            origins, directions: ``(B, R, 3)``.
            cam_z: ``(B,)`` camera-space z of the world origin; needed for ``'auto-plane'``.
            box_warp_scale: float or ``(B, 1, 1)``; widens the ``'auto-plane'`` range.
        """
        opt = self.options
        n = opt.depth_resolution
        mode = opt.ray_start if opt.ray_start == opt.ray_end else None
        if mode == "auto":
            start, end = ray_box_limits(origins, directions, opt.box_warp)
            valid = end > start
            if bool(valid.any()):
                start_valid = start[valid]
                start = torch.where(valid, start, start_valid.min())
                end = torch.where(valid, end, start_valid.max())  # upstream fills with max *start*
            return sample_stratified(origins, start, end, n, opt.disparity_space_sampling, deterministic)
        if mode == "auto-plane":
            if cam_z is None:
                raise ValueError("ray_start='auto-plane' needs cam_z")
            z = cam_z.reshape(-1, 1, 1).abs()
            half = box_warp_scale * opt.box_warp / 2
            depths = sample_stratified(
                origins, z - half, z + half, n, opt.disparity_space_sampling, deterministic
            )
            return depths.repeat(1, origins.shape[1] // depths.shape[1], 1, 1)
        if isinstance(opt.ray_start, str) or isinstance(opt.ray_end, str):
            raise ValueError(f"unsupported ray_start/ray_end: {opt.ray_start!r}/{opt.ray_end!r}")
        return sample_stratified(
            origins, float(opt.ray_start), float(opt.ray_end), n, opt.disparity_space_sampling, deterministic
        )

    def _evaluate(
        self, field: Field, origins: Tensor, directions: Tensor, depths: Tensor, deterministic: bool
    ) -> tuple[Tensor, Tensor]:
        """Field at ``origins + depths * directions``: colours ``(B, R, S, C)``, raw densities ``(B, R, S, 1)``."""
        b, r, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(b, -1, 3)
        dirs = directions.unsqueeze(-2).expand(-1, -1, s, -1).reshape(b, -1, 3)
        rgb, sigma = field(points, dirs)
        if self.options.density_noise > 0 and not deterministic:
            sigma = sigma + torch.randn_like(sigma) * self.options.density_noise
        return rgb.reshape(b, r, s, rgb.shape[-1]), sigma.reshape(b, r, s, 1)

    def render_field(
        self,
        field: Field,
        origins: Tensor,
        directions: Tensor,
        cam_z: Tensor | None = None,
        box_warp_scale: float | Tensor = 1.0,
        deterministic: bool | None = None,
    ) -> RenderOutput:
        """Render any radiance field along rays.

        Args:
            field: see :data:`Field`.
            origins, directions: ``(B, R, 3)``; directions unit length.
            cam_z: ``(B,)``, for ``'auto-plane'`` (see :func:`avatar.render.camera.camera_z`).
            box_warp_scale: float or ``(B, 1, 1)``.
            deterministic: no jitter / ``det`` importance sampling; ``None`` means ``not self.training``.
        """
        det = self.is_deterministic(deterministic)
        opt = self.options
        depths = self.coarse_depths(origins, directions, cam_z, box_warp_scale, det)
        colors, densities = self._evaluate(field, origins, directions, depths, det)
        if opt.depth_resolution_importance > 0:
            coarse = self.march_fn(colors, densities, depths, opt.clamp_mode, opt.white_back)
            fine = self.importance_fn(depths, coarse.weights, opt.depth_resolution_importance, det)
            colors_f, densities_f = self._evaluate(field, origins, directions, fine, det)
            depths, colors, densities = self.merge_fn(depths, colors, densities, fine, colors_f, densities_f)
        out = self.march_fn(colors, densities, depths, opt.clamp_mode, opt.white_back)
        return RenderOutput(out.rgb, out.depth, depths, out.weights, out.t_bg)

    def forward(
        self,
        planes: Planes,
        decoder: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
        origins: Tensor,
        directions: Tensor,
        cam_z: Tensor | None = None,
        deformer: Deformer | None = None,
        box_warp_scale: float | Tensor = 1.0,
        deterministic: bool | None = None,
        chunk: int | None = None,
        fused: str | None = None,
        per_sample: bool = True,
    ) -> RenderOutput:
        """Render triplanes (upstream ``DeformImportanceRendererNew.forward``).

        Args:
            planes: ``(B, 3, C, H, W)`` (or a list of them, summed).
            decoder: e.g. :class:`TriplaneNeRFDecoder`.
            origins, directions: ``(B, R, 3)``.
            cam_z, box_warp_scale, deterministic: see :meth:`render_field`.
            deformer: observed -> canonical point map applied before plane sampling.
            chunk: render at most this many rays per call (like upstream's ``chunk``; in stochastic
                ``'auto-plane'`` mode each chunk draws its own depth jitter, as upstream).
            fused: ``None`` renders with the PyTorch ops above (the reference); ``'ieee'`` or ``'tf32'`` with
                the Triton kernels of :mod:`avatar.render.fused` (float32 or TF32 decoder products; raises
                :class:`avatar.render.fused.FusedRenderingUnsupportedError` for what they do not cover).
            per_sample: ``False`` lets the fused renderer return ``all_depths`` and ``weights`` without samples
                (``render_triplanes_fused``'s ``per_sample``; less memory); the PyTorch path always returns them.
        """
        render: Callable[[Tensor, Tensor], RenderOutput]
        if fused is not None:
            from avatar.render.fused import render_triplanes_fused

            def render(o: Tensor, d: Tensor) -> RenderOutput:
                return render_triplanes_fused(self, planes, decoder, o, d, cam_z, deformer,  # type: ignore[arg-type]
                                              box_warp_scale, deterministic, fused,  # type: ignore[arg-type]
                                              per_sample=per_sample)
        else:
            field = triplane_field(planes, decoder, self.options.box_warp, box_warp_scale, deformer,
                                   self.options.plane_axes)

            def render(o: Tensor, d: Tensor) -> RenderOutput:
                return self.render_field(field, o, d, cam_z, box_warp_scale, deterministic)

        if chunk is None or chunk >= origins.shape[1]:
            return render(origins, directions)
        parts = [render(o, d) for o, d in zip(origins.split(chunk, dim=1), directions.split(chunk, dim=1), strict=True)]
        return RenderOutput(
            *(torch.cat([getattr(p, f.name) for p in parts], 1) for f in fields(RenderOutput))
        )


# ----------------------------------------------------------------------------------------------------------
# Images and background


def rays_to_image(values: Tensor, height: int, width: int) -> Tensor:
    """``(B, H*W, C)`` per-ray values (row-major rays) -> ``(B, C, H, W)`` image."""
    b, _, c = values.shape
    return values.permute(0, 2, 1).reshape(b, c, height, width)


def composite_background(features: Tensor, t_bg: Tensor, background: Tensor | None) -> Tensor:
    """Reconstructor background composition ``features + t_bg * background`` (all in ``[0, 1]`` space).

    Args:
        features: ``(B, C, H, W)`` rendered features (``RenderOutput.features`` as an image).
        t_bg: ``(B, 1, H, W)`` background transmittance.
        background: ``(B, C, H, W)`` background features after ``sigmoid`` (upstream resizes them bilinearly to
            the render resolution first), or ``None`` for no background.

    Returns:
        ``(B, C, H, W)``; the reconstructor then maps to ``[-1, 1]`` with ``2 x - 1``.
    """
    if background is None:
        return features
    return features + t_bg * background
