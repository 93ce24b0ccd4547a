"""Head surface of a triplane avatar: density on a regular grid, marching cubes, vertex colours.

The surface is the iso-surface ``sigma = level`` of the **raw** density that the NeRF decoder gives (before the
ray marcher's ``softplus(sigma - 1)``), the way EG3D extracts its shapes (NVlabs/eg3d ``eg3d/gen_samples.py``:
``create_samples(N=shape_res, cube_length=rendering_kwargs['box_warp'])``, raw ``sigma`` from ``G.sample``, then
``shape_utils.convert_sdf_samples_to_ply(..., level=10)``, i.e. ``skimage.measure.marching_cubes`` at level
**10**; ``shape_utils.py``'s own ``--level`` defaults to 10 too). Portrait4D's renderer and decoder are EG3D's,
with the same density activation, so the same level applies (:data:`EG3D_LEVEL`, the default).

Grid (:func:`grid_axis`): ``N`` samples per axis from ``-box_warp / 2`` to ``+box_warp / 2`` inclusive (spacing
``box_warp / (N - 1)``), as EG3D's ``create_samples``; for Portrait4D ``box_warp = 1.3``, so the cube
``[-0.65, 0.65]^3`` that the triplanes span. ``volume[i, j, k]`` is the density at ``(x_i, y_j, z_k)``.
Unlike EG3D's ``gen_samples`` (which sets the outer ``30 N / 256`` layers to -1000 to trim border floaters), only
the outer ``border`` layers (default 1) are forced empty, so that a surface reaching the box (the neck, the
shoulders) is closed by a cap at the box faces and the mesh is watertight.

Coordinates: the renderer's world frame, in its units. The Portrait4D world is FLAME scaled by 3 (FLAME is in
metres, so 1 unit = 1/3 m; :meth:`Mesh.scaled` ``(1 / 3)`` gives metres), origin at the canonical FLAME neck
joint. The inference camera sits at ``(0, 0.01, 4.2)`` with an identity rotation, looking down ``-z`` with ``+y``
up in the image (:mod:`avatar.render.camera`), so ``+y`` is up, ``+z`` points out of the face towards the
viewer and ``+x`` to the image's right (the person's left). That is already glTF's frame (``+Y`` up, the front
of an asset facing ``+Z``, right-handed), so no axis is flipped for any format. The head is in its source
pose: no FLAME head-pose deformation (what :meth:`Portrait4DPipeline.render_views` shows).

Triangles are counter-clockwise seen from outside (normals by the right-hand rule point out of the head).

Vertex colours: the decoder's feature at the vertex, first 3 channels, mapped as the reconstructor maps its
raw image (``2 c - 1`` in ``[-1, 1]``, ``Portrait4D._render_planes``) and converted to uint8 as every output
frame is (:func:`avatar.pipelines.frames.to_uint8`, the official ``x * 127.5 + 128``, clamped): the colours
of the low-resolution raw render (before super-resolution), sRGB-encoded like the images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from avatar.errors import InputError, MissingDependencyError
from avatar.export.defaults import DEFAULT_BORDER, DEFAULT_RESOLUTION, EG3D_LEVEL
from avatar.render.triplane import Field, triplane_field

__all__ = [
    "DEFAULT_BORDER",
    "DEFAULT_CHUNK",
    "DEFAULT_RESOLUTION",
    "EG3D_LEVEL",
    "EmptySurfaceError",
    "Mesh",
    "avatar_field",
    "avatar_mesh",
    "density_grid",
    "extract_mesh",
    "field_colors",
    "grid_axis",
    "marching_cubes",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1 << 18
"""Points evaluated per decoder call: peak memory about 300 MB of plane features and activations (32 channels)."""
DECODER_DIRECTION = (0.0, 0.0, -1.0)
"""Ray direction passed to the decoder at grid points (EG3D passes ``(0, 0, -1)``; the decoder ignores it)."""

SKIMAGE_HINT = "pip install 'avatar4d[app]' (or the [dev] extra), which brings scikit-image"


class EmptySurfaceError(InputError):
    """The density never crosses the iso level inside the box, so there is no surface to export."""


@dataclass
class Mesh:
    """A triangle mesh with optional vertex colours.

    Attributes:
        vertices: ``(V, 3)`` float32 positions (the renderer's world frame and units, module docstring).
        faces: ``(F, 3)`` int64 vertex indices, counter-clockwise seen from outside.
        colors: ``(V, 3)`` uint8 sRGB colours, or ``None``.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)
        if self.colors is not None:
            self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8).reshape(-1, 3)
            if len(self.colors) != len(self.vertices):
                raise ValueError(f"{len(self.colors)} colours for {len(self.vertices)} vertices")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
            raise ValueError("face indices out of range")

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def scaled(self, factor: float) -> Mesh:
        """The same mesh with positions multiplied by ``factor`` (``1 / 3``: Portrait4D world units -> metres)."""
        return Mesh(self.vertices * np.float32(factor), self.faces, self.colors)


# ----------------------------------------------------------------------------------------------------------
# the grid


def grid_axis(resolution: int, box_warp: float) -> np.ndarray:
    """``(N,)`` float64 sample positions along each axis: ``N`` values from ``-box_warp/2`` to ``+box_warp/2``."""
    if resolution < 2:
        raise InputError(f"the grid resolution must be at least 2, got {resolution}")
    return np.linspace(-box_warp / 2, box_warp / 2, resolution)


def _evaluate(field: Field, points: Tensor) -> tuple[Tensor, Tensor]:
    """``(M, 3)`` points -> features ``(M, C)`` and raw densities ``(M,)``."""
    dirs = torch.tensor(DECODER_DIRECTION, dtype=points.dtype, device=points.device).expand_as(points)
    rgb, sigma = field(points[None], dirs[None])
    return rgb[0], sigma[0, :, 0]


@torch.no_grad()
def density_grid(field: Field, resolution: int = DEFAULT_RESOLUTION, box_warp: float = 1.3, *,
                 chunk: int = DEFAULT_CHUNK, device: torch.device | str = "cpu",
                 progress: bool = False) -> np.ndarray:
    """Raw density of a field on the regular grid of :func:`grid_axis`, evaluated in chunks.

    Args:
        field: an :data:`avatar.render.triplane.Field`: ``(points (1, M, 3), directions (1, M, 3))`` ->
            ``(features (1, M, C), raw density (1, M, 1))``, e.g. from :func:`avatar_field`.
        resolution: samples per axis ``N``.
        box_warp: side of the cube.
        chunk: at most this many points per call (whole ``x`` slabs of ``N^2`` points, at least one); only the
            ``(N, N, N)`` float32 result (64 MiB at 256) and one chunk are held at a time.
        device: where the points are made (the field's device).

    Returns:
        ``(N, N, N)`` float32, ``volume[i, j, k]`` the density at ``(x_i, y_j, z_k)``.
    """
    axis = torch.as_tensor(grid_axis(resolution, box_warp), dtype=torch.float32, device=device)
    n = resolution
    slabs = max(1, chunk // (n * n))
    out = np.empty((n, n, n), dtype=np.float32)
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(1, n * n, 2)
    for start in tqdm(range(0, n, slabs), disable=not progress, unit="slab", desc="density",
                      total=math.ceil(n / slabs)):
        xs = axis[start:start + slabs]
        points = torch.cat([xs.reshape(-1, 1, 1).expand(-1, n * n, 1), yz.expand(len(xs), -1, -1)], dim=-1)
        _, sigma = _evaluate(field, points.reshape(-1, 3))
        out[start:start + len(xs)] = sigma.float().reshape(len(xs), n, n).cpu().numpy()
    return out


@torch.no_grad()
def field_colors(field: Field, vertices: np.ndarray, *, chunk: int = DEFAULT_CHUNK,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """``(V, 3)`` uint8 colours of a field at points (module docstring: ``2 c - 1``, then ``to_uint8``)."""
    from avatar.pipelines.frames import to_uint8

    out = np.empty((len(vertices), 3), dtype=np.uint8)
    for start in range(0, len(vertices), chunk):
        points = torch.as_tensor(vertices[start:start + chunk], dtype=torch.float32, device=device)
        rgb, _ = _evaluate(field, points)
        raw = 2 * rgb[:, :3].float() - 1  # the reconstructor's raw image: features * 2 - 1
        out[start:start + len(points)] = to_uint8(raw.t().reshape(1, 3, -1, 1))[0, :, 0]
    return out


# ----------------------------------------------------------------------------------------------------------
# marching cubes


def marching_cubes(volume: np.ndarray, level: float = EG3D_LEVEL, box_warp: float = 1.3, *,
                   border: int = DEFAULT_BORDER) -> Mesh:
    """The iso-surface ``volume = level`` of a :func:`density_grid` (inside: density above ``level``).

    Uses ``skimage.measure.marching_cubes`` (Lewiner, degenerate triangles removed) like EG3D, with the
    triangles turned counter-clockwise seen from outside.

    Args:
        volume: ``(N, N, N)`` densities on the grid of :func:`grid_axis`.
        level: iso level (:data:`EG3D_LEVEL` by default).
        box_warp: side of the cube the grid spans.
        border: the outer ``border`` layers of the grid are set below ``level`` first, so that the surface is
            closed at the box (0: keep them; the surface may then be open where it meets the box).

    Raises:
        MissingDependencyError: scikit-image is not installed.
        EmptySurfaceError: the density does not cross ``level`` inside the border.
    """
    measure = _skimage_measure()
    volume = np.asarray(volume, dtype=np.float32)
    n = volume.shape[0]
    if volume.ndim != 3 or volume.shape != (n, n, n):
        raise ValueError(f"volume must be a cube (N, N, N), got {volume.shape}")
    if border < 0 or n - 2 * border < 2:
        raise InputError(f"the grid of {n} samples per axis leaves nothing inside a border of {border}; "
                         f"use a border between 0 and {max(0, (n - 2) // 2)}")
    inner = volume[border:n - border, border:n - border, border:n - border]
    low, high = float(inner.min()), float(inner.max())
    if not math.isfinite(level) or not low < level < high:
        where = "below" if high <= level else "above"
        raise EmptySurfaceError(
            f"no surface at level {level:g}: the density inside the box is {where} it everywhere (it ranges from "
            f"{low:.4g} to {high:.4g}); pass a level between those values (EG3D uses {EG3D_LEVEL:g})")
    if border:
        volume = volume.copy()
        empty = min(low, level) - 1000.0  # EG3D pads with -1000 at level 10
        for axis in range(3):
            index: list[slice] = [slice(None)] * 3
            index[axis] = slice(0, border)
            volume[tuple(index)] = empty
            index[axis] = slice(n - border, n)
            volume[tuple(index)] = empty
    spacing = box_warp / (n - 1)
    verts, faces, _, _ = measure.marching_cubes(volume, level=level, spacing=(spacing,) * 3,
                                                gradient_direction="descent", allow_degenerate=False)
    # 'descent' (inside greater than outside) orders them by the left-hand rule: reverse for counter-clockwise
    return Mesh(verts - box_warp / 2, faces[:, ::-1])


def _skimage_measure():  # noqa: ANN202 - module
    try:
        from skimage import measure
    except ImportError as exc:
        raise MissingDependencyError(f"mesh export needs scikit-image for marching cubes: {SKIMAGE_HINT} ({exc})",
                                     name="skimage") from None
    return measure


def check_marching_cubes() -> None:
    """Raise :class:`~avatar.errors.MissingDependencyError` now if marching cubes cannot run (scikit-image)."""
    _skimage_measure()


# ----------------------------------------------------------------------------------------------------------
# avatars


def avatar_field(model, state, motion: Tensor | None = None):  # noqa: ANN001, ANN201 - Portrait4D, AvatarState
    """The radiance field of one encoded avatar with a motion: ``(field, box_warp)``.

    Reuses the reconstructor's own steps: its motion blocks + triplane decoder (``Portrait4D._planes``, or the
    cached planes of the static model), then :func:`avatar.render.triplane.triplane_field` (plane sampling and the
    OSG decoder) with the renderer's ``box_warp``; no head-pose deformation.

    Args:
        model: a :class:`~avatar.models.portrait4d.Portrait4D`.
        state: its :class:`~avatar.models.portrait4d.AvatarState` of one avatar.
        motion: ``(1, D)`` PD-FGC motion (the avatar's source motion for its own expression); ignored by the
            static model.
    """
    if state.batch_size != 1:
        raise InputError(f"mesh export takes one avatar at a time, got a state of {state.batch_size}")
    device = model.w_avg.device
    state = state.to(device)
    if state.planes is not None:
        if motion is not None and bool(motion.ne(0).any()):
            logger.warning("this is a static model: its avatar has one shape whatever the motion; motion ignored")
        planes = state.planes
    else:
        if motion is None:
            raise InputError("this avatar's model needs a motion to build its triplanes; pass the avatar's "
                             "source_motion")
        motion = model._check_motion(motion.to(device).reshape(1, -1), 1, "motion")
        planes = model.compiled.get("planes", model._planes)(state, motion, model.fast)
    box_warp = float(model.renderer.options.box_warp)
    return triplane_field(planes, model.decoder, box_warp), box_warp


def extract_mesh(model, state, motion: Tensor | None = None, *,  # noqa: ANN001 - Portrait4D, AvatarState
                 resolution: int = DEFAULT_RESOLUTION, level: float = EG3D_LEVEL, border: int = DEFAULT_BORDER,
                 colors: bool = True, chunk: int = DEFAULT_CHUNK, progress: bool = False) -> Mesh:
    """Head surface of an encoded avatar: :func:`avatar_field` -> :func:`density_grid` -> :func:`marching_cubes`
    -> :func:`field_colors` (see those and the module docstring for the conventions)."""
    check_marching_cubes()  # before the grid is computed
    field, box_warp = avatar_field(model, state, motion)
    device = model.w_avg.device
    volume = density_grid(field, resolution, box_warp, chunk=chunk, device=device, progress=progress)
    mesh = marching_cubes(volume, level, box_warp, border=border)
    if colors:
        mesh.colors = field_colors(field, mesh.vertices, chunk=chunk, device=device)
    logger.debug("mesh: %d vertices, %d faces (level %g, %d^3 grid, box %g)", mesh.num_vertices, mesh.num_faces,
                 level, resolution, box_warp)
    return mesh


def avatar_mesh(pipeline, avatar, motion: Tensor | None = None, **kwargs) -> Mesh:  # noqa: ANN001, ANN003
    """:func:`extract_mesh` of a pipeline's :class:`~avatar.pipelines.portrait4d.Avatar`, in its source expression
    (``avatar.source_motion``) unless ``motion`` ``(1, D)`` is given."""
    from avatar.models.portrait4d import Portrait4D

    model = getattr(pipeline, "reconstructor", None)
    if not isinstance(model, Portrait4D):
        raise InputError(f"mesh export needs a Portrait4D pipeline (a triplane avatar), not {type(pipeline).__name__}")
    check = getattr(pipeline, "_check_avatar", None)
    if check is not None:
        check(avatar)
    if motion is not None and motion.shape[-1] != avatar.source_motion.shape[-1]:
        raise InputError(f"the motion has {motion.shape[-1]} numbers but this avatar's model takes "
                         f"{avatar.source_motion.shape[-1]}; use a motion of the same model")
    return extract_mesh(model, avatar.state, avatar.source_motion if motion is None else motion, **kwargs)
