"""The geometry of GPHM's guiding model (paper 3.2, Eq. 1): the mean-shape SDF MLP and its mesh.

* :class:`MeanShapeSDF` - ``F_mean(x) -> (s, f)`` over positionally encoded points, on top of an analytic sphere
  prior (``s = |x| - r + MLP_s(x)``, the MLP's SDF row starting at zero; see
  :attr:`~avatar.models.gphm.configuration.GuidingGeometryConfig.sphere_radius`);
* :func:`extract_mean_mesh` - marching tetrahedra (:mod:`~avatar.models.gphm.marching_tets`) on a
  ``grid_resolution^3`` cube grid split into tetrahedra, per-vertex features ``f`` interpolated like the positions.
  The paper uses DMTet; DMTet's learnable grid-vertex offsets are not in the paper's text, so the grid is not
  deformed here (paper silent: chose the fixed grid, the part of DMTet the text describes: "convert the implicit
  SDF through DMTet into an explicit mesh").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avatar.errors import InputError
from avatar.models.gphm.configuration import GuidingGeometryConfig
from avatar.models.gphm.layers import MLP, PositionalEncoding
from avatar.models.gphm.marching_tets import grid_points, grid_tetrahedra, marching_tetrahedra, surface_cells

__all__ = ["MeanMesh", "MeanShapeSDF", "extract_mean_mesh"]


class MeanShapeSDF(nn.Module):
    """``F_mean``: ``forward(points (..., 3)) -> (sdf (...), features (..., C))``.

    Softplus (beta 100) activations (paper silent: chose the smooth ReLU of implicit-surface networks (IDR,
    NPHM), whose gradients stay defined for the SDF's normals and the eikonal term)."""

    def __init__(self, config: GuidingGeometryConfig) -> None:
        super().__init__()
        self.sphere_radius = config.sphere_radius
        self.encoding = PositionalEncoding(config.positional_freqs)
        self.mlp = MLP(self.encoding.out_dim, 1 + config.fields.point_feature_dim, config.sdf_width,
                       config.sdf_hidden_layers, activation="softplus")
        with torch.no_grad():
            self.mlp.out.weight[0].zero_()
            self.mlp.out.bias[0].zero_()

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mlp(self.encoding(points))
        return points.norm(dim=-1) - self.sphere_radius + out[..., 0], out[..., 1:]

    def sdf_and_gradient(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """``points (..., 3)`` -> ``sdf (...)`` and ``d sdf / d x (..., 3)`` (with a graph, for the eikonal term)."""
        with torch.enable_grad():
            x = points if points.requires_grad else points.detach().requires_grad_(True)
            sdf, _ = self(x)
            (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
        return sdf, grad


@dataclass
class MeanMesh:
    """The mean-shape mesh (shared by every identity and expression)."""

    vertices: Tensor
    """``(V, 3)`` canonical mean-space positions (differentiable w.r.t. the SDF MLP)."""
    faces: Tensor
    """``(F, 3)`` long, counter-clockwise seen from outside."""
    features: Tensor
    """``(V, C)`` per-vertex features ``f`` of ``F_mean``."""


def extract_mean_mesh(sdf_net: MeanShapeSDF, resolution: int, bound: float, *, chunk: int = 65536,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> MeanMesh:
    """Marching tetrahedra on the mean SDF: a gradient-free pass over the whole ``(R + 1)^3`` grid picks the cubes
    the surface crosses, a second pass evaluates ``F_mean`` (with gradients) on their corners only.

    Raises:
        InputError: the SDF has no zero crossing inside the grid (nothing to extract).
    """
    points = grid_points(resolution, bound, device=device, dtype=dtype)
    with torch.no_grad():
        sdf_all = torch.cat([sdf_net(points[i:i + chunk])[0] for i in range(0, points.shape[0], chunk)])
    cells = surface_cells(sdf_all)
    if cells.shape[0] == 0:
        raise InputError("the mean SDF has no surface inside the grid: the SDF left the grid or collapsed; lower the "
                         "learning rate or enlarge grid_bound")
    tets = grid_tetrahedra(resolution, cells)
    used, local = torch.unique(tets, return_inverse=True)
    sdf, features = sdf_net(points[used])
    mesh = marching_tetrahedra(points[used], local.reshape(-1, 4), sdf, features, inside=sdf_all[used] < 0)
    assert mesh.features is not None
    return MeanMesh(mesh.vertices, mesh.faces, mesh.features)
