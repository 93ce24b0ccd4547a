"""GOHA's tri-plane networks and the appearance lifting (NVlabs/GOHA, NeurIPS 2023).

Official code (HEAD ``102abbf``): ``src/models/networks.py`` (``Embed2Plane``, ``IDUpsampler``, ``OSGDecoder``)
and, in ``src/models/model_s2.py``, ``Model.depth2pcd``, ``Model.construct_planes`` and the plane sum of
``Model.forward``. Written from the official code's facts (layer order, shapes, constants); nothing is copied.

A tri-plane is ``(B, 3, C, H, W)``; the planes are, in this order, ``xy``, ``xz`` and ``zy`` (first coordinate
= grid ``x`` = width), as GOHA's ``generate_planes`` and ``construct_planes`` use them. The released model has
``C = 32`` and ``H = W = 256``.

Keys these modules take under the official checkpoint's ``model_state_dict`` (no ``module.`` prefix):

=========================  ===========================================  =====================================
prefix                     module                                       keys
=========================  ===========================================  =====================================
``embedding2neutral.``     :class:`Embed2Plane` ``(256, 96)``           ``up_layers.{0,2,4,6,8}.{weight,bias}``
``embedding2expr.``        :class:`Embed2Plane` ``(256, 96)``           as above
``id_upsampler.``          :class:`IDUpsampler` ``(256, 32)``           ``{up_xy,up_xz,up_zy}.{0,2}.{weight,bias}``,
                                                                        ``{skip_xy,skip_xz,skip_zy}.{weight,bias}``
``expr_upsampler.``        :class:`IDUpsampler` ``(96, 32)``            as above; **never called** upstream
``decoder.``               ``OSGDecoder`` ->                            ``net.{0,2}.{weight,bias}``; see
                           :class:`avatar.render.triplane.TriplaneNeRFDecoder`  :func:`osg_decoder_state_from_official`
``uv`` (top-level buffer)  :func:`lifting_grid` ``(1, 16384, 2)``       owned by the top-level model
=========================  ===========================================  =====================================

:func:`plane_modules` builds the four networks under exactly those names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.render.rays import sample_rays
from avatar.render.triplane import TriplaneNeRFDecoder

__all__ = [
    "PLANE_NAMES",
    "Embed2Plane",
    "GOHAPlanesConfig",
    "IDUpsampler",
    "depth_to_points",
    "lift_features",
    "lifting_grid",
    "make_osg_decoder",
    "nearest_point_indices",
    "opencv_rays",
    "osg_decoder_state_from_official",
    "osg_decoder_state_to_official",
    "plane_modules",
    "project_to_plane",
    "sum_planes",
]

PLANE_NAMES = ("xy", "xz", "zy")
"""GOHA's plane order; ``zy`` means (z, y): z is the plane's width axis, y its height axis."""


@dataclass(frozen=True)
class GOHAPlanesConfig(Config):
    """Sizes of GOHA's plane networks. Defaults are the released checkpoint (``model_s2.Model``)."""

    feature_channels: int = 256
    """Channels of the SegFormer "logits" (the bias-free ``linear_fuse`` output) feeding every plane network."""
    plane_channels: int = 32
    """Channels per plane (``OSGDecoder(32, ...)``)."""
    embed_channels: tuple[int, int] = (256, 128)
    """``Embed2Plane`` widths: the first 3x3 conv, then every later hidden layer."""
    upsampler_hidden: int = 128
    """Width of the transposed conv of each ``IDUpsampler`` branch."""
    expression_upsampler_channels: int = 96
    """Input channels of the unused ``expr_upsampler`` (``IDUpsampler(96, 32)``)."""
    lift_resolution: int = 128
    """Side of the lifting grid (``uv``), of the canonical depth render and of the appearance feature map."""
    decoder_hidden: int = 64
    """Hidden width of the ``OSGDecoder``."""
    decoder_lr_multiplier: float = 1.0
    """``decoder_lr_mul`` of the ``OSGDecoder`` layers."""

    @property
    def triplane_channels(self) -> int:
        """``3 * plane_channels`` (the ``Embed2Plane`` output channels, 96 upstream)."""
        return 3 * self.plane_channels

    @classmethod
    def tiny(cls) -> GOHAPlanesConfig:
        """Structurally identical, very small sizes for tests."""
        return replace(
            cls(),
            feature_channels=8,
            plane_channels=4,
            embed_channels=(8, 6),
            upsampler_hidden=6,
            expression_upsampler_channels=12,
            lift_resolution=8,
            decoder_hidden=8,
        )


# --------------------------------------------------------------------------------------------------
# networks


def _lrelu() -> nn.LeakyReLU:
    # in place: every one follows a convolution, whose backward does not read its output (same values, one
    # feature map less alive)
    return nn.LeakyReLU(0.2, inplace=True)


class Embed2Plane(nn.Module):
    """SegFormer features to a tri-plane (official ``Embed2Plane``; ``embedding2neutral.`` / ``embedding2expr.``).

    ``up_layers``: 3x3 conv (in -> 256), LReLU(0.2), 3x3 conv (256 -> 128), LReLU, 4x4 stride-2 transposed conv
    (128 -> 128, doubles the size), LReLU, 3x3 conv (128 -> 128), LReLU, 3x3 conv (128 -> out). The output is
    viewed as 3 planes of ``out / 3`` channels (channel ``p * out / 3 + c`` is channel ``c`` of plane ``p``).
    Upstream the view is fixed to ``(B, 3, 32, 256, 256)``; here it follows the actual sizes.

    Shapes: ``(B, in, H, W)`` -> ``(B, 3, out / 3, 2H, 2W)``; ``(B, 256, 128, 128) -> (B, 3, 32, 256, 256)``.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 96, hidden: tuple[int, int] = (256, 128)):
        super().__init__()
        if out_channels % 3:
            raise ValueError(f"out_channels must be a multiple of 3 (three planes), got {out_channels}")
        h1, h2 = hidden
        self.up_layers = nn.Sequential(
            nn.Conv2d(in_channels, h1, 3, 1, 1),
            _lrelu(),
            nn.Conv2d(h1, h2, 3, 1, 1),
            _lrelu(),
            nn.ConvTranspose2d(h2, h2, 4, 2, 1),
            _lrelu(),
            nn.Conv2d(h2, h2, 3, 1, 1),
            _lrelu(),
            nn.Conv2d(h2, out_channels, 3, 1, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        """``(B, in, H, W)`` -> ``(B, 3, out / 3, 2H, 2W)``."""
        x = self.up_layers(features)
        b, c, h, w = x.shape
        return x.view(b, 3, c // 3, h, w)


def _upsample_branch(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_channels, hidden, 4, 2, 1), _lrelu(),
                         nn.Conv2d(hidden, out_channels, 3, 1, 1))


class IDUpsampler(nn.Module):
    """Lifted appearance features to a 2x larger tri-plane (official ``IDUpsampler``; ``id_upsampler.``).

    Per plane ``p``: ``skip_p(bilinear(x_p, 2x)) + up_xy(x_p)`` with ``up = ConvT(in -> 128, 4, 2, 1), LReLU(0.2),
    Conv3x3(128 -> out)`` and ``skip_p = Conv1x1(in -> out)``; the bilinear resize uses ``align_corners=False``
    (upstream resizes to a fixed 256x256, i.e. 2x of its 128x128 input).

    **Upstream quirk, kept:** ``up_xy`` serves all three planes; ``up_xz`` and ``up_zy`` are allocated (they are in the
    checkpoint, so they stay here and load strictly) but never used. The ``skip_*`` convs are per plane.
    GOHA also allocates ``expr_upsampler = IDUpsampler(96, 32)`` and never calls it.

    Shapes: ``(B, 3, in, H, W)`` -> ``(B, 3, out, 2H, 2W)``; ``(B, 3, 256, 128, 128) -> (B, 3, 32, 256, 256)``.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 32, hidden: int = 128):
        super().__init__()
        self.up_xy = _upsample_branch(in_channels, out_channels, hidden)
        self.up_xz = _upsample_branch(in_channels, out_channels, hidden)  # unused upstream (quirk)
        self.up_zy = _upsample_branch(in_channels, out_channels, hidden)  # unused upstream (quirk)
        self.skip_xy = nn.Conv2d(in_channels, out_channels, 1, 1, 0)
        self.skip_xz = nn.Conv2d(in_channels, out_channels, 1, 1, 0)
        self.skip_zy = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, planes: Tensor, skip_first: bool = False) -> Tensor:
        """``(B, 3, in, H, W)`` -> ``(B, 3, out, 2H, 2W)``.

        ``skip_first``: the 1x1 skip convolution before the 2x resize instead of after it. Both are linear and the
        bilinear weights of each output pixel sum to 1, so ``skip(resize(x)) = resize(skip(x))`` exactly in real
        arithmetic (float32: equal up to rounding); the resize then moves ``out`` channels instead of ``in`` (32
        instead of 256 at GOHA's sizes: 8 instead of 64 MiB a plane and frame) and the convolution runs at the
        input's size. Upstream's order (``False``) is the reference; the fast path takes ``True``.
        """
        h, w = planes.shape[-2:]
        out = []
        for p, skip in enumerate((self.skip_xy, self.skip_xz, self.skip_zy)):
            x = planes[:, p]
            if skip_first:
                skipped = F.interpolate(skip(x), size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
            else:
                skipped = skip(F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False))
            up = self.up_xy(x)
            in_place = not torch.is_grad_enabled() and torch.result_type(skipped, up) == skipped.dtype
            out.append(skipped.add_(up) if in_place else skipped + up)
        return torch.stack(out, dim=1)


def make_osg_decoder(config: GOHAPlanesConfig | None = None) -> TriplaneNeRFDecoder:
    """GOHA's ``decoder = OSGDecoder(32, {'decoder_lr_mul': 1, 'decoder_output_dim': 32})``.

    :class:`~avatar.render.triplane.TriplaneNeRFDecoder` computes the same function (mean over planes, EG3D
    ``FullyConnectedLayer`` 32 -> 64 with weight gain ``1/sqrt(in)``, Softplus, 64 -> 1 + 32; ``sigma`` raw,
    features ``sigmoid * 1.002 - 0.001``), but splits the last layer into ``out_sigma`` (row 0) and ``out_rgb``
    (rows 1..32) where GOHA has one ``net.2`` of 33 rows: load GOHA's ``decoder.`` keys through
    :func:`osg_decoder_state_from_official`.
    """
    c = config or GOHAPlanesConfig()
    return TriplaneNeRFDecoder(c.plane_channels, c.plane_channels, c.decoder_hidden, c.decoder_lr_multiplier)


def osg_decoder_state_from_official(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Rename GOHA's ``OSGDecoder`` keys for :class:`~avatar.render.triplane.TriplaneNeRFDecoder`.

    ``{prefix}net.2.weight`` ``(1 + C, hidden)`` / ``net.2.bias`` ``(1 + C,)`` become ``out_sigma.*`` (row 0) and
    ``out_rgb.*`` (rows 1..C); ``net.0.*`` and every key outside ``{prefix}net.2.`` are kept as they are. Use
    ``prefix="decoder."`` on the whole GOHA state dict.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(f"{prefix}net.2."):
            leaf = key[len(f"{prefix}net.2."):]
            out[f"{prefix}out_sigma.{leaf}"] = value[:1].clone()
            out[f"{prefix}out_rgb.{leaf}"] = value[1:].clone()
        else:
            out[key] = value
    return out


def osg_decoder_state_to_official(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Inverse of :func:`osg_decoder_state_from_official` (``out_sigma`` + ``out_rgb`` -> ``net.2``)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(f"{prefix}out_rgb."):
            continue
        if key.startswith(f"{prefix}out_sigma."):
            leaf = key[len(f"{prefix}out_sigma."):]
            out[f"{prefix}net.2.{leaf}"] = torch.cat((value, state[f"{prefix}out_rgb.{leaf}"]), 0)
        else:
            out[key] = value
    return out


def plane_modules(config: GOHAPlanesConfig | None = None) -> dict[str, nn.Module]:
    """GOHA's plane networks under their official attribute names (see the module docstring).

    Returns ``embedding2neutral``, ``embedding2expr``, ``id_upsampler``, ``expr_upsampler`` and ``decoder``.
    """
    c = config or GOHAPlanesConfig()
    return {
        "embedding2neutral": Embed2Plane(c.feature_channels, c.triplane_channels, c.embed_channels),
        "embedding2expr": Embed2Plane(c.feature_channels, c.triplane_channels, c.embed_channels),
        "id_upsampler": IDUpsampler(c.feature_channels, c.plane_channels, c.upsampler_hidden),
        "expr_upsampler": IDUpsampler(c.expression_upsampler_channels, c.plane_channels, c.upsampler_hidden),
        "decoder": make_osg_decoder(c),
    }


def sum_planes(canonical: Tensor, expression: Tensor | None = None, appearance: Tensor | None = None) -> Tensor:
    """GOHA's final tri-plane: ``(canonical + expression) + appearance``, a plain sum in that order.

    Upstream the appearance plane is lifted from ``canonical + expression`` (the plane it is then added to).
    All ``(B, 3, C, H, W)``.
    """
    plane = canonical
    if expression is not None:
        plane = plane + expression
    if appearance is not None:
        plane = plane + appearance
    return plane


# --------------------------------------------------------------------------------------------------
# appearance lifting


def lifting_grid(resolution: int = 128, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """GOHA's ``uv`` buffer: the ``(1, R*R, 2)`` lifting grid, cell ``k = i R + j`` at ``(lin[j], lin[i])``.

    ``lin = linspace(-1, 1, R)``: cell centres include the borders (unlike ``grid_sample``'s
    ``align_corners=False`` pixel centres). Official: ``meshgrid(lin, lin, indexing='xy')``, stacked as ``(u, v)``.
    """
    lin = torch.linspace(-1, 1, resolution, device=device, dtype=dtype)
    u, v = torch.meshgrid(lin, lin, indexing="xy")
    return torch.stack((u, v), dim=-1).view(1, -1, 2)


def opencv_rays(cam2world: Tensor, intrinsics: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """EG3D's ``RaySampler`` for OpenCV cameras (x right, y down, looking down ``+z``; normalised intrinsics).

    :func:`avatar.render.rays.sample_rays` uses the other convention (looks down ``-z``, y up), so it is given
    ``cam2world @ diag(1, -1, -1, 1)``: every product and sum is then the same float operation as upstream's,
    only with signs flipped twice, so the rays are bit-identical.

    Returns ``origins`` and unit ``directions``, both ``(B, R*R, 3)``, ray ``i R + j`` through pixel ``(i, j)``.
    """
    flip = torch.ones(4, dtype=cam2world.dtype, device=cam2world.device)  # (1, -1, -1, 1), made on the device
    flip[1:3] = -1.0  # (no host-to-device copy: CUDA-graph capture allows none)
    return sample_rays(cam2world * flip, intrinsics, resolution)


def depth_to_points(cam2world: Tensor, intrinsics: Tensor, depth: Tensor) -> Tensor:
    """Back-project a depth image along the EG3D pixel-centre rays (official ``Model.depth2pcd``).

    GOHA's cameras are EG3D's (OpenCV, normalised intrinsics); the rays are :func:`opencv_rays`.

    Args:
        cam2world: ``(B, 4, 4)``.
        intrinsics: ``(B, 3, 3)``.
        depth: ``(B, 1, R, R)`` ray depth (distance along the unit direction), pixel ``(i, j)`` for ray ``i R + j``.

    Returns:
        ``(B, R*R, 3)`` world points.
    """
    b, resolution = depth.shape[0], depth.shape[-1]
    origins, directions = opencv_rays(cam2world, intrinsics, resolution)
    return (origins.unsqueeze(-2) + depth.reshape(b, -1, 1, 1) * directions.unsqueeze(-2)).reshape(b, -1, 3)


def project_to_plane(points: Tensor, plane: int) -> Tensor:
    """GOHA's lifting coordinates of ``(..., 3)`` points on plane ``plane`` (0 ``xy``, 1 ``xz``, 2 ``zy``): ``2 *``
    the two coordinates (the planes span ``[-0.5, 0.5]^3``, ``box_warp = 1``). Returns ``(..., 2)``."""
    first, second = ((0, 1), (0, 2), (2, 1))[plane]
    return torch.stack((points[..., first], points[..., second]), dim=-1) * 2


@torch.no_grad()
def nearest_point_indices(grid: Tensor, points: Tensor, chunk: int = 256) -> Tensor:
    """Per grid cell, the index of the nearest point: upstream's ``argmin(torch.cdist(uv, pts), -1)``, chunked.

    Upstream computes the full ``(R*R) x N`` distance matrix (16384 x 16384 floats = 1 GiB per plane and batch
    element). This evaluates the same ``torch.cdist`` on ``chunk`` grid cells at a time (``chunk x N`` floats:
    16 MiB at the released size with the default 256), so every distance comes from the same formula
    (``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-30))`` as one matrix product, since ``N > 25``) and the argmin takes the
    first index among equal float32 distances. Near-ties (about 1 cell in 3000 for the sphere-plus-background cloud
    of ``scripts/compare_official_goha_planes.py``, where float64 distances pick another point) are
    decided by that product's rounding, so exact agreement rests on the BLAS computing each element the same way
    whatever the number of rows. On CPU that held for every chunk of at least 2 rows that was tried (all 16384 x
    16384 distances bit-equal at the released size), but a 1-row product (a matrix-vector kernel) rounds
    differently: hence no chunk here has a single row. Another device or BLAS (upstream ran on CUDA) may round
    those near-ties differently, for upstream's full cdist just as for this one.

    Args:
        grid: ``(1, G, 2)`` or ``(B, G, 2)`` cells (:func:`lifting_grid`).
        points: ``(B, N, 2)`` projected points.
        chunk: grid cells per ``cdist`` call (at least 2; a last single cell joins the chunk before it).

    Returns:
        ``(B, G)`` int64 indices into ``N``.
    """
    if chunk < 2:
        raise ValueError(f"chunk must be at least 2 grid cells, got {chunk}")
    b, g = points.shape[0], grid.shape[1]
    grid = grid.to(points.dtype).expand(b, -1, -1)
    starts = list(range(0, g, chunk))
    if len(starts) > 1 and g - starts[-1] == 1:
        starts.pop()  # never a 1-row product: fold a last single cell into the chunk before it
    bounds = list(zip(starts, [*starts[1:], g], strict=True))
    out = []
    for i in range(b):
        pts = points[i]  # (N, 2), as upstream's squeezed single-element batch
        cells = grid[i : i + 1]
        out.append(torch.cat([torch.cdist(cells[:, s:e], pts).argmin(-1) for s, e in bounds], dim=1))
    return torch.cat(out, dim=0)


@torch.no_grad()
def fused_nearest_point_indices(grid: Tensor, points: Tensor) -> Tensor:
    """:func:`nearest_point_indices` by the Triton kernel of :mod:`avatar.models.goha.triton_lifting` (CUDA, or CPU
    under Triton's interpreter): one pass over the points per block of cells, no distance matrix in memory. It
    compares direct squared distances, so near-ties (two points equally near to within float32 rounding) may go to
    the other point than the reference's ``cdist`` picks; elsewhere the indices are the same.

    Args and returns as :func:`nearest_point_indices` (no chunk)."""
    from avatar.models.goha import triton_lifting

    b, g, n = points.shape[0], grid.shape[1], points.shape[1]
    if n == 0:
        raise ValueError("nearest-point lifting needs at least one point")
    cells = grid.float().contiguous()
    if cells.shape[0] not in (1, b):
        raise ValueError(f"the grid is (1, G, 2) or (B, G, 2) for B = {b}, got {tuple(grid.shape)}")
    idx = torch.empty(b, g, dtype=torch.long, device=points.device)
    block = 128
    triton_lifting.nearest_point_kernel[(-(-g // block), b)](
        cells, points.float().contiguous(), idx, g, n, 0 if cells.shape[0] == 1 else g * 2, BLOCK_G=block,
        enable_fp_fusion=False)
    return idx


def lift_features(points: Tensor, features: Tensor, grid: Tensor, chunk: int = 256, *, fused: bool = False) -> Tensor:
    """Splat per-pixel features onto the three planes by nearest point (official ``Model.construct_planes``).

    Point ``n`` (ray ``n`` of the depth image, see :func:`depth_to_points`) carries ``features[:, :, n // W, n % W]``.
    Each cell of the lifting grid takes the feature of the nearest projected point (no distance limit; background
    points included), per plane (:func:`project_to_plane`).

    Args:
        points: ``(B, N, 3)`` world points, ``N = H * W``.
        features: ``(B, C, H, W)``, e.g. the ``id_net`` logits ``(B, 256, 128, 128)``.
        grid: ``(1, R*R, 2)`` from :func:`lifting_grid`.
        chunk: see :func:`nearest_point_indices`.
        fused: the nearest points by :func:`fused_nearest_point_indices` (the Triton kernel; ``chunk`` unused).

    Returns:
        ``(B, 3, C, R, R)`` (``(B, 3, 256, 128, 128)`` upstream), then fed to :class:`IDUpsampler`.
    """
    b, c, h, w = features.shape
    if points.shape[1] != h * w:
        raise ValueError(f"{points.shape[1]} points for a {h}x{w} feature map")
    side = round(grid.shape[1] ** 0.5)
    if side * side != grid.shape[1]:
        raise ValueError(f"the lifting grid must be square, got {grid.shape[1]} cells")
    flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
    planes = []
    for p in range(3):
        projected = project_to_plane(points, p)
        idx = (fused_nearest_point_indices(grid, projected) if fused
               else nearest_point_indices(grid, projected, chunk))  # (B, G)
        gathered = torch.gather(flat, 1, idx.unsqueeze(-1).expand(-1, -1, c))  # (B, G, C)
        planes.append(gathered.view(b, side, side, c).permute(0, 3, 1, 2))
    return torch.stack(planes, dim=1)
