"""GPHM geometry: marching tetrahedra on analytic SDFs, the face / non-face blend weights, the differentiable mesh
renderer, the guiding model's mean mesh. CPU, tiny sizes."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from avatar.flame.synthetic import icosphere
from avatar.models.gphm import (
    GuidingGeometryModel,
    front_camera,
    grid_points,
    grid_tetrahedra,
    marching_tetrahedra,
    region_weights,
    render_mesh_features,
)
from avatar.models.gphm.marching_tets import surface_cells


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a busy machine
    yield
    torch.set_num_threads(threads)


def _extract(sdf_fn, resolution: int = 16, bound: float = 1.0):  # noqa: ANN001, ANN202
    points = grid_points(resolution, bound, dtype=torch.float64)
    sdf = sdf_fn(points)
    tets = grid_tetrahedra(resolution, surface_cells(sdf))
    return marching_tetrahedra(points, tets, sdf)


def _edge_counts(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    directed = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    _, undirected = torch.unique(torch.sort(directed, dim=1).values, dim=0, return_counts=True)
    _, same_way = torch.unique(directed, dim=0, return_counts=True)
    return undirected, same_way


def _signed_volume(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    tri = vertices[faces]
    return float(torch.linalg.det(tri).sum() / 6.0)


def test_sphere_gives_a_closed_outward_mesh_on_the_sphere() -> None:
    radius, res, bound = 0.6, 16, 1.0
    mesh = _extract(lambda p: p.norm(dim=-1) - radius, res, bound)
    spacing = 2 * bound / res
    assert mesh.faces.shape[0] > 100
    undirected, same_way = _edge_counts(mesh.faces)
    assert bool((undirected == 2).all())  # closed: every edge between exactly two triangles
    assert int(same_way.max()) == 1  # consistently oriented: no directed edge twice
    v, e, f = mesh.vertices.shape[0], undirected.numel(), mesh.faces.shape[0]
    assert v - e + f == 2  # a sphere's Euler characteristic
    assert float((mesh.vertices.norm(dim=-1) - radius).abs().max()) < spacing
    assert abs(_signed_volume(mesh.vertices, mesh.faces) - 4 / 3 * math.pi * radius**3) < 0.05 * 4 / 3 * math.pi * radius**3


def test_plane_is_extracted_exactly_with_normals_up() -> None:
    height = 0.1  # a linear SDF is interpolated exactly
    mesh = _extract(lambda p: p[:, 2] - height, 8, 1.0)
    assert torch.allclose(mesh.vertices[:, 2], torch.full_like(mesh.vertices[:, 2], height), atol=1e-12)
    tri = mesh.vertices[mesh.faces]
    normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    assert bool((normals[:, 2] > 0).all())  # towards increasing SDF
    assert abs(float(normals.norm(dim=-1).sum() / 2) - 4.0) < 1e-9  # covers the whole 2 x 2 cross-section


def test_box_gives_a_closed_mesh_of_the_box_volume() -> None:
    half = torch.tensor([0.5, 0.3, 0.4], dtype=torch.float64)

    def box(p: torch.Tensor) -> torch.Tensor:
        q = p.abs() - half
        return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)

    res, bound = 20, 1.0
    mesh = _extract(box, res, bound)
    undirected, same_way = _edge_counts(mesh.faces)
    assert bool((undirected == 2).all()) and int(same_way.max()) == 1
    spacing = 2 * bound / res
    assert float(box(mesh.vertices).abs().max()) < spacing
    assert abs(_signed_volume(mesh.vertices, mesh.faces) - float(8 * half.prod())) < 0.05 * float(8 * half.prod())


def test_face_and_non_face_weights_at_hand_checked_distances() -> None:
    landmarks = torch.zeros(1, 1, 3)
    distances = torch.tensor([0.0, 0.05, 0.1, 0.175, 0.25, 0.4])
    points = torch.stack([distances, torch.zeros(6), torch.zeros(6)], dim=-1)[None]
    w_exp, w_nf = region_weights(points, landmarks, near=0.1, far=0.25)
    assert torch.allclose(w_exp[0, :, 0], torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0, 0.0]))
    assert torch.allclose(w_nf, 1 - w_exp)
    # the nearest landmark decides: a second landmark 0.15 away from the last point
    two = torch.tensor([[[0.0, 0.0, 0.0], [0.55, 0.0, 0.0]]])
    w2, _ = region_weights(points, two, near=0.1, far=0.25)
    assert float(w2[0, -1, 0]) == pytest.approx((0.25 - 0.15) / 0.15)


def _sphere(subdivisions: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    v, f = icosphere(subdivisions)
    return torch.tensor(v, dtype=torch.float64) * radius, torch.tensor(f)


def test_mesh_render_mask_and_its_silhouette_gradient() -> None:
    size = 32
    viewmats, ks = front_camera(1, size, distance=4.0, dtype=torch.float64)
    verts, faces = _sphere(3, 1.0)
    ones = torch.ones(1, verts.shape[0], 1, dtype=torch.float64)
    radius = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    out = render_mesh_features((verts * radius)[None], faces, ones, viewmats, ks, size)
    hard = render_mesh_features((verts * radius)[None].detach(), faces, ones, viewmats, ks, size, antialias=False)
    focal = float(ks[0, 0, 0])
    disc = focal * 0.2 / math.sqrt(16 - 0.04)  # the sphere's outline seen from distance 4, in pixels
    assert float(hard.mask.sum()) == pytest.approx(math.pi * disc**2, rel=0.03)
    assert float(out.mask.detach().sum()) == pytest.approx(math.pi * disc**2, rel=0.03)
    assert float(out.mask.detach().min()) >= 0 and float(out.mask.detach().max()) <= 1
    assert torch.allclose(out.features, out.mask)  # a constant feature of 1 follows the coverage
    (grad,) = torch.autograd.grad(out.mask.sum(), radius)
    # d area / d radius of the outline: 2 pi r_px (d r_px / d radius)
    assert float(grad) == pytest.approx(2 * math.pi * disc * disc / 0.2, rel=0.12)
    assert float(hard.depth.max()) <= 4.0 and float(hard.depth[hard.mask > 0].min()) >= 3.8 - 1e-6


def test_mesh_render_features_are_differentiable_inside() -> None:
    size = 16
    viewmats, ks = front_camera(1, size, distance=4.0, dtype=torch.float64)
    verts, faces = _sphere(2, 0.2)
    verts = verts[None].clone().requires_grad_(True)
    feats = verts.detach()[..., :1].clone().requires_grad_(True)  # x as a feature: varies across the image
    out = render_mesh_features(verts, faces, feats, viewmats, ks, size, antialias=False)
    (out.features.square().sum() + out.depth.sum()).backward()
    assert verts.grad is not None and float(verts.grad.abs().sum()) > 0
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0


def test_untrained_guiding_model_is_its_sphere() -> None:
    model = GuidingGeometryModel.tiny()
    mesh = model.extract_mean_mesh()
    spacing = 2 * model.config.grid_bound / model.config.grid_resolution
    assert float((mesh.vertices.detach().norm(dim=-1) - model.config.sphere_radius).abs().max()) < spacing
    assert mesh.features.shape == (mesh.vertices.shape[0], model.config.fields.point_feature_dim)
    assert mesh.vertices.requires_grad  # carries the SDF's gradient


def test_silhouette_loss_grows_the_guiding_sdf_towards_a_larger_head() -> None:
    """End to end through marching tetrahedra and the antialiased mask: the mean SDF expands to a bigger outline."""
    from avatar.models.gphm import silhouette_loss

    torch.manual_seed(0)
    model = GuidingGeometryModel.tiny(grid_resolution=16)
    viewmats, ks = front_camera(1, 16)
    verts, faces = _sphere(3, 0.62)
    target = render_mesh_features(verts[None].float(), faces, torch.ones(1, verts.shape[0], 1), viewmats, ks, 16,
                                  antialias=False).mask
    opt = torch.optim.Adam(model.sdf.parameters(), lr=3e-3)
    fc = model.config.fields
    radii, losses = [], []
    for _ in range(8):
        out = model(torch.tensor([0]), torch.zeros(1, fc.expression_dim), None, torch.zeros(1, 6), ks, 16,
                    viewmats=viewmats)
        loss = silhouette_loss(out.mask, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        radii.append(float(out.mesh.mean_mesh.vertices.detach().norm(dim=-1).mean()))
    assert radii[-1] > radii[0] + 0.05 and losses[-1] < 0.5 * losses[0]
