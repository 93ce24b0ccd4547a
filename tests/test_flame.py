"""FLAME, point-to-triangle geometry and the head-pose deformation field (small synthetic FLAME, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar.flame import (
    DEFORMER_BUFFERS,
    Flame,
    FlameHeadPoseDeformer,
    batch_rodrigues,
    blend_shapes,
    closest_point_barycentric,
    closest_triangles,
    get_face_tri,
    grid_points,
    lbs,
    plane_barycentric,
    point_to_face_coord,
    point_triangle_sq_dist,
    sample_grid,
    vertices2landmarks,
)
from avatar.flame.deformation import box_smooth3d, world2grid
from avatar.flame.synthetic import synthetic_flame_assets


@pytest.fixture(scope="module")
def assets() -> dict:
    return synthetic_flame_assets()


@pytest.fixture(scope="module")
def deformer(assets: dict) -> FlameHeadPoseDeformer:
    return FlameHeadPoseDeformer.from_assets(box_warp=1.3, **assets)


def _params(batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 300, generator=g), torch.randn(batch, 100, generator=g), 0.2 * torch.randn(
        batch, 6, generator=g)


# ---------------------------------------------------------------------------------------------------------
# Geometry


def _ref_closest_point(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact closest point of triangle abc to p (Voronoi-region case analysis, float64)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = ab @ ap, ac @ ap
    if d1 <= 0 and d2 <= 0:
        return a
    bp = p - b
    d3, d4 = ab @ bp, ac @ bp
    if d3 >= 0 and d4 <= d3:
        return b
    vc = d1 * d4 - d3 * d2
    if vc <= 0 and d1 >= 0 and d3 <= 0:
        return a + d1 / (d1 - d3) * ab
    cp = p - c
    d5, d6 = ab @ cp, ac @ cp
    if d6 >= 0 and d5 <= d6:
        return c
    vb = d5 * d2 - d1 * d6
    if vb <= 0 and d2 >= 0 and d6 <= 0:
        return a + d2 / (d2 - d6) * ac
    va = d3 * d6 - d5 * d4
    if va <= 0 and (d4 - d3) >= 0 and (d5 - d6) >= 0:
        return b + (d4 - d3) / ((d4 - d3) + (d5 - d6)) * (c - b)
    denom = 1.0 / (va + vb + vc)
    return a + ab * vb * denom + ac * vc * denom


def _ref_sq_dist(p: np.ndarray, tri: np.ndarray) -> float:
    q = _ref_closest_point(p, *tri)
    return float((p - q) @ (p - q))


def _region_points(tri: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Points whose closest feature is the interior, each edge and each vertex of ``tri``."""
    a, b, c = tri
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n)
    centroid = tri.mean(0)
    out = []
    w = rng.dirichlet([2, 2, 2])
    out.append(w @ tri + n * rng.normal())  # interior
    for u, v in ((a, b), (b, c), (c, a)):  # edges
        e = (v - u) / np.linalg.norm(v - u)
        outward = np.cross(e, n)
        if outward @ (centroid - u) > 0:
            outward = -outward
        out.append(u + rng.uniform(0.2, 0.8) * (v - u) + outward * rng.uniform(0.1, 1) + n * rng.normal())
    for vtx in (a, b, c):  # vertices
        out.append(vtx + (vtx - centroid) * rng.uniform(0.5, 2) + n * rng.normal())
    out.append(rng.normal(size=3) * 2)  # anywhere
    return out


def test_point_triangle_distance_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    pts, tris = [], []
    for _ in range(60):
        tri = rng.normal(size=(3, 3))
        for p in _region_points(tri, rng):
            pts.append(p)
            tris.append(tri)
    p = torch.tensor(np.array(pts))
    t = torch.tensor(np.array(tris))
    got = point_triangle_sq_dist(p, t[:, 0], t[:, 1], t[:, 2], min_triangle_area=0.0)
    ref = torch.tensor([_ref_sq_dist(pp, tt) for pp, tt in zip(pts, tris, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-10)  # pytorch3d adds 1e-8 to |normal|
    # the closest point rebuilt from the returned barycentrics realises the same distance
    bary = closest_point_barycentric(p, t[:, 0], t[:, 1], t[:, 2], min_triangle_area=0.0)
    q = (bary.unsqueeze(-1) * t).sum(-2)
    torch.testing.assert_close(((p - q) ** 2).sum(-1), ref, rtol=1e-7, atol=1e-10)
    assert bool(((bary >= -1e-9) & (bary <= 1 + 1e-9)).all())
    # float32 agrees to float32 precision
    got32 = point_triangle_sq_dist(p.float(), *(t[:, k].float() for k in range(3)), min_triangle_area=0.0)
    torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-5)


def test_small_triangles_use_edge_distance_like_pytorch3d() -> None:
    tri = torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, 0.05, 0.0]])  # area 1.25e-3 < 5e-3
    p = torch.tensor([0.01, 0.01, 0.02])
    plane = point_triangle_sq_dist(p, *tri, min_triangle_area=0.0)
    p3d = point_triangle_sq_dist(p, *tri)
    assert plane == pytest.approx(0.02**2, rel=1e-5)
    assert p3d == pytest.approx(0.01**2 + 0.02**2, rel=1e-5)  # nearest edge, not the plane
    big = tri * 10  # area 0.125: back to the plane distance
    assert point_triangle_sq_dist(p, *big) == pytest.approx(0.02**2, rel=1e-5)


def test_closest_triangles_chunked_matches_dense() -> None:
    g = torch.Generator().manual_seed(3)
    verts = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
    faces = torch.randint(0, 30, (25, 3), generator=g)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    points = torch.randn(2, 57, 3, generator=g, dtype=torch.float64) * 1.5
    dists, idxs = closest_triangles(points, verts, faces, min_triangle_area=0.0, max_pairs=7 * len(faces))
    for b in range(2):
        tris = verts[b][faces].numpy()
        dense = np.array([[_ref_sq_dist(p, t) for t in tris] for p in points[b].numpy()])
        np.testing.assert_allclose(dists[b].numpy(), dense.min(1), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(dense[np.arange(len(dense)), idxs[b].numpy()], dense.min(1), rtol=1e-6)
    # the deformer's call: official barycentrics are the plane projection's, unclamped
    d2, i2, bary = point_to_face_coord(points, verts, faces, min_triangle_area=0.0)
    assert torch.equal(i2, idxs)
    torch.testing.assert_close(d2, dists)
    tris = verts[torch.arange(2)[:, None, None], faces[i2]]  # (B, P, 3, 3)
    n = torch.nn.functional.normalize(torch.cross(tris[..., 1, :] - tris[..., 0, :],
                                                  tris[..., 2, :] - tris[..., 0, :], dim=-1), dim=-1)
    proj = points - ((points - tris[..., 0, :]) * n).sum(-1, keepdim=True) * n
    torch.testing.assert_close((bary.unsqueeze(-1) * tris).sum(-2), proj)
    torch.testing.assert_close(bary.sum(-1), torch.ones_like(bary[..., 0]))


def test_plane_barycentric_unclamped() -> None:
    tri = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    bary = plane_barycentric(torch.tensor([[2.0, 0.5, 7.0]]), tri[None])
    torch.testing.assert_close(bary, torch.tensor([[-1.5, 2.0, 0.5]]))


# ---------------------------------------------------------------------------------------------------------
# Rodrigues and LBS


def test_rodrigues_matches_closed_form() -> None:
    a = 0.7
    c, s = math.cos(a), math.sin(a)
    expected = {
        (a, 0.0, 0.0): [[1, 0, 0], [0, c, -s], [0, s, c]],
        (0.0, a, 0.0): [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        (0.0, 0.0, a): [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    vecs = torch.tensor(list(expected), dtype=torch.float64)
    torch.testing.assert_close(batch_rodrigues(vecs), torch.tensor(list(expected.values()), dtype=torch.float64),
                               atol=1e-7, rtol=0)
    g = torch.Generator().manual_seed(0)
    rv = torch.randn(20, 3, generator=g, dtype=torch.float64)
    skew = torch.zeros(20, 3, 3, dtype=torch.float64)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -rv[:, 2], rv[:, 1], -rv[:, 0]
    skew = skew - skew.transpose(1, 2)
    torch.testing.assert_close(batch_rodrigues(rv), torch.linalg.matrix_exp(skew), atol=1e-7, rtol=0)
    torch.testing.assert_close(batch_rodrigues(torch.zeros(2, 3)), torch.eye(3).expand(2, 3, 3))


def test_lbs_identity_pose_is_template_plus_blendshapes(assets: dict) -> None:
    flame = Flame.from_generic_model(assets["generic_model"])
    shape, exp, _ = _params(3)
    betas = torch.cat([shape, exp], 1)
    verts, joints = lbs(betas, torch.zeros(3, 15), flame.v_template[None].expand(3, -1, -1), flame.shapedirs,
                        flame.posedirs, flame.J_regressor, flame.parents, flame.lbs_weights)
    shaped = flame.v_template + blend_shapes(betas, flame.shapedirs)
    torch.testing.assert_close(verts, shaped, atol=1e-7, rtol=0)
    torch.testing.assert_close(joints, torch.einsum("bvk,jv->bjk", shaped, flame.J_regressor), atol=1e-7, rtol=0)
    out = flame(shape, exp)  # pose/eye pose default to zeros
    torch.testing.assert_close(out.vertices, shaped, atol=1e-7, rtol=0)


def test_lbs_neck_rotation_is_rigid_about_neck_joint(assets: dict) -> None:
    flame = Flame.from_generic_model(assets["generic_model"])
    shape, exp, pose = _params(2)
    eye = 0.1 * torch.randn(2, 6)
    no_neck = torch.cat([torch.zeros(2, 3), pose[:, 3:]], 1)
    rest = flame(shape, exp, no_neck, eye)
    posed = flame(shape, exp, pose, eye)
    rot = batch_rodrigues(pose[:, :3])
    neck = rest.joints[:, 1:2]
    expected = torch.einsum("bij,bvj->bvi", rot, rest.vertices - neck) + neck
    torch.testing.assert_close(posed.vertices, expected, atol=1e-6, rtol=0)


def test_flame_buffers_and_landmarks(assets: dict) -> None:
    model = assets["generic_model"]
    flame = Flame.from_generic_model(model, assets["landmarks"])
    nv = len(model["v_template"])
    assert flame.parents.tolist() == [-1, 0, 1, 1, 1] and flame.parents.dtype == torch.int64
    assert flame.neck_kin_chain.tolist() == [1, 0]
    assert flame.faces_tensor.dtype == torch.int64 and flame.faces_tensor.shape == (80, 3)
    assert flame.shapedirs.shape == (nv, 3, 400) and flame.posedirs.shape == (36, nv * 3)
    np.testing.assert_allclose(flame.posedirs.numpy(), model["posedirs"].reshape(-1, 36).T.astype(np.float32))
    small = Flame.from_generic_model(model, flame_full=False)
    assert small.shapedirs.shape == (nv, 3, 150)
    torch.testing.assert_close(small.shapedirs[..., 100:], flame.shapedirs[..., 300:350])
    shape, exp, pose = _params(2)
    out = flame(shape, exp, pose)
    assert out.landmarks2d is not None and out.landmarks2d.shape == (2, 17 + 6, 3)
    assert out.landmarks3d is not None and out.landmarks3d.shape == (2, 8, 3)
    f = flame.faces_tensor[flame.full_lmk_faces_idx[0]]
    manual = (out.vertices[:, f] * flame.full_lmk_bary_coords[0][None, :, :, None]).sum(-2)
    torch.testing.assert_close(out.landmarks3d, manual)
    lmk = vertices2landmarks(out.vertices, flame.faces_tensor, flame.full_lmk_faces_idx.repeat(2, 1),
                             flame.full_lmk_bary_coords.repeat(2, 1, 1))
    torch.testing.assert_close(lmk, manual)


# ---------------------------------------------------------------------------------------------------------
# Deformer construction


def test_deformer_buffers_match_official_registration(deformer: FlameHeadPoseDeformer, assets: dict) -> None:
    nv, nf = len(assets["generic_model"]["v_template"]), 80
    flame_keys = ["faces_tensor", "v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights",
                  "lmk_faces_idx", "lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
                  "full_lmk_faces_idx", "full_lmk_bary_coords", "neck_kin_chain", "global_limits", "neck_limits",
                  "jaw_limits", "eye_limits", "eye_pose", "neck_pose"]
    state = deformer.state_dict()
    assert set(state) == set(DEFORMER_BUFFERS) | {f"flame_model.{k}" for k in flame_keys}
    assert [k for k in state if not k.startswith("flame_model.")] == list(DEFORMER_BUFFERS)
    s = len(assets["simplify"]["idxs"])
    expect = {
        "canonical_shape": ((1, nv, 3), torch.float32),
        "canonical_shape_face_only": ((1, 42, 3), torch.float32),  # face + both eyeballs = all 42 here
        "simplify_idxs": ((s, 3), torch.int64), "simplify_baris": ((s, 3), torch.float32),
        "simplify_faces": ((nf, 3), torch.int64), "simplify_faces_region_idxs": ((nf, 50), torch.int64),
        "canonical_shape_coarse": ((1, s, 3), torch.float32), "if_eye_face_simplify": ((nf,), torch.bool),
        "vertices_region_idxs": ((nv, 10), torch.int64),
        "flame_model.v_template": ((nv, 3), torch.float32), "flame_model.shapedirs": ((nv, 3, 400), torch.float32),
        "flame_model.posedirs": ((36, 3 * nv), torch.float32), "flame_model.J_regressor": ((5, nv), torch.float32),
        "flame_model.lbs_weights": ((nv, 5), torch.float32), "flame_model.parents": ((5,), torch.int64),
        "flame_model.eye_pose": ((1, 6), torch.float32), "flame_model.neck_pose": ((1, 3), torch.float32),
        "flame_model.neck_limits": ((3, 2), torch.float32),
    }
    for name, (shape, dtype) in expect.items():
        assert tuple(state[name].shape) == shape and state[name].dtype == dtype, name
    for name in DEFORMER_BUFFERS:
        if name.startswith("masked_"):
            assert state[name].dtype == torch.int64 and state[name].shape[1] == 3, name
    # rebuilding from the flat state (as from a converted checkpoint) gives the same module
    again = FlameHeadPoseDeformer(state)
    for k, v in again.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_get_face_tri_matches_dict_semantics() -> None:
    faces = np.array([[0, 1, 2], [2, 3, 4], [1, 2, 4], [5, 6, 0]])
    mask = np.array([4, 2, 1, 0, 2])  # vertex 2 twice: last position wins
    ref = []
    pos = {int(m): i for i, m in enumerate(mask)}
    for f in faces:
        if all(int(v) in pos for v in f):
            ref.append([pos[int(v)] for v in f])
    got = get_face_tri(mask, faces)
    assert got.dtype == torch.int64 and got.tolist() == ref == [[3, 2, 4], [2, 4, 0]]


def test_scale_and_recentering(deformer: FlameHeadPoseDeformer, assets: dict) -> None:
    model = assets["generic_model"]
    v3 = torch.tensor(model["v_template"], dtype=torch.float32) * 3
    neck = torch.tensor(model["J_regressor"], dtype=torch.float32)[1] @ v3
    flame = deformer.flame_model
    torch.testing.assert_close(flame.v_template, v3 - neck, atol=1e-6, rtol=0)
    torch.testing.assert_close(flame.shapedirs, torch.tensor(model["shapedirs"], dtype=torch.float32) * 3)
    ca_pose = torch.tensor([[0, 0, 0, 0.3, 0, 0]])
    out = flame(torch.zeros(1, 300), torch.zeros(1, 100), ca_pose)
    torch.testing.assert_close(out.joints[:, 1], torch.zeros(1, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(deformer.canonical_shape, out.vertices, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Grids and the deformation field


def test_grid_layout_and_sampling() -> None:
    r, bw = 6, 1.3
    pts = grid_points(r, bw)
    assert pts.shape == (r**3, 3)
    torch.testing.assert_close(pts[0], torch.full((3,), (0.5 / r - 0.5) * bw))
    torch.testing.assert_close(pts[1], torch.tensor([pts[0, 0], pts[0, 1], pts[0, 2] + bw / r]))  # k fastest = z
    torch.testing.assert_close(pts[r * r], torch.tensor([pts[0, 0] + bw / r, pts[0, 1], pts[0, 2]]))  # i = x
    grids = pts.T.reshape(1, 3, r, r, r)
    ends = world2grid(torch.stack([pts[0], pts[-1]])[None], grids)
    torch.testing.assert_close(ends, torch.tensor([[[-1.0] * 3, [1.0] * 3]]))
    field = torch.randn(1, 3, r, r, r, generator=torch.Generator().manual_seed(0))
    got = sample_grid(field, grids, pts[None])
    torch.testing.assert_close(got, field.reshape(1, 3, -1).permute(0, 2, 1), atol=1e-5, rtol=0)
    outside = sample_grid(field, grids, torch.full((1, 1, 3), 5.0))
    assert torch.equal(outside, torch.zeros(1, 1, 3))
    lin = torch.einsum("ij,bjxyz->bixyz", torch.randn(3, 3), grids)  # a linear field survives smoothing inside
    smooth = box_smooth3d(lin)
    torch.testing.assert_close(smooth[..., 2:-2, 2:-2, 2:-2], lin[..., 2:-2, 2:-2, 2:-2], atol=1e-5, rtol=0)
    assert not torch.allclose(smooth[..., 0, 0, 0], lin[..., 0, 0, 0], atol=1e-3)


def test_deformation_identity_without_head_pose(deformer: FlameHeadPoseDeformer) -> None:
    shape, exp, pose = _params(2)
    x = (torch.rand(2, 500, 3, generator=torch.Generator().manual_seed(5)) - 0.5) * 1.6
    assert torch.equal(deformer(x, shape, exp, None), x)
    pose[:, :3] = 0  # jaw only: target and canonical meshes coincide
    eye = 0.1 * torch.randn(2, 6)
    out = deformer(x, shape, exp, pose, eye)
    torch.testing.assert_close(out, x, atol=2e-5, rtol=0)
    out16 = deformer(x, shape, exp, pose, eye, smooth_headpose=False)
    torch.testing.assert_close(out16, x, atol=2e-5, rtol=0)


def test_deformation_undoes_rigid_neck_rotation(deformer: FlameHeadPoseDeformer) -> None:
    shape, exp, pose = _params(2)
    pose[:, :3] = torch.tensor([[0.25, -0.3, 0.1], [-0.2, 0.35, -0.15]])
    eye = 0.1 * torch.randn(2, 6)
    flame = deformer.flame_model
    posed = flame(shape, exp, pose, eye)
    rest = flame(shape, exp, torch.cat([torch.zeros(2, 3), pose[:, 3:]], 1), eye)
    neck = rest.joints[:, 1:2]
    rot = batch_rodrigues(pose[:, :3])
    # points on and around the posed surface, all inside the region where the 8^3 smoothing is exact
    g = torch.Generator().manual_seed(7)
    near = deformer.simplify(posed.vertices) + 0.02 * torch.randn(2, 42, 3, generator=g)
    box = (torch.rand(2, 300, 3, generator=g) - 0.5) * 0.44
    x_t = torch.cat([posed.vertices, near, box], 1)
    assert float(x_t.abs().max()) < 0.235
    expected = torch.einsum("bji,bpj->bpi", rot, x_t - neck) + neck  # R^T (x - j) + j
    field = deformer.precompute(shape, exp, pose, eye)
    assert field is not None and field.dists is not None
    assert field.offsets.shape == (2, 3, 24, 24, 24) and field.dists.shape == (2, 1, 24, 24, 24)
    assert field.coarse_offsets is not None and field.coarse_offsets.shape == (2, 3, 8, 8, 8)
    out = deformer.warp(field, x_t)
    torch.testing.assert_close(out, expected, atol=5e-5, rtol=0)
    torch.testing.assert_close(deformer(x_t, shape, exp, pose, eye), out)
    # the mesh vertices of the posed head land on the canonical (un-rotated) head
    torch.testing.assert_close(out[:, :42], rest.vertices, atol=5e-5, rtol=0)
    # the fine field alone is the rigid inverse everywhere in the grid (any triangle gives it)
    grid = field.grids.reshape(2, 3, -1).permute(0, 2, 1)
    fine = field.offsets.reshape(2, 3, -1).permute(0, 2, 1) + grid
    torch.testing.assert_close(fine, torch.einsum("bji,bpj->bpi", rot, grid - neck) + neck, atol=5e-5, rtol=0)
    # squared distances on the grid are true squared point-surface distances (0 only on the surface)
    assert float(field.dists.min()) >= 0.0


def test_far_points_use_the_smoothed_field(deformer: FlameHeadPoseDeformer) -> None:
    shape, exp, pose = _params(1)
    field = deformer.precompute(shape, exp, pose)
    assert field is not None and field.coarse_grids is not None and field.coarse_offsets is not None
    x = torch.tensor([[[0.55, -0.5, 0.5], [-0.5, 0.52, -0.45]]])  # far from the r = 0.15 head
    smooth = sample_grid(field.coarse_offsets, field.coarse_grids, x)
    torch.testing.assert_close(deformer.warp(field, x), x + smooth, atol=1e-6, rtol=0)


def test_surface_field_on_the_grid_matches_brute_force(deformer: FlameHeadPoseDeformer) -> None:
    """The 8^3 grid field (offsets and squared distances) against a float64 loop over every triangle: closest
    triangle by exact point-triangle distance, unclamped plane barycentrics, GNARF normal offset."""
    shape, exp, pose = _params(1, seed=4)
    pose = torch.zeros_like(pose)
    pose[:, 1] = 0.4  # neck yaw
    target, canonical = deformer.head_pose_meshes(shape, exp, pose, None)
    grids, offsets, dists = deformer.grid_deformation(target, canonical, 8)
    faces = deformer.simplify_faces.numpy()
    tgt, can = target[0].double().numpy(), canonical[0].double().numpy()
    points = grids[0].reshape(3, -1).T.double().numpy()
    want_off = np.zeros_like(points)
    want_d = np.zeros(len(points))
    def seg_sq(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
        return float(np.sum((a + t * (b - a) - p) ** 2))

    def sq_dist(p: np.ndarray, tri: np.ndarray) -> float:  # pytorch3d: triangles under 5e-3 area -> edges only
        if 0.5 * np.linalg.norm(np.cross(tri[1] - tri[0], tri[2] - tri[0])) < 5e-3:
            return min(seg_sq(p, tri[0], tri[1]), seg_sq(p, tri[1], tri[2]), seg_sq(p, tri[2], tri[0]))
        return _ref_sq_dist(p, tri)

    for i, p in enumerate(points):
        d = [sq_dist(p, tgt[f]) for f in faces]
        j = int(np.argmin(d))
        t, c = tgt[faces[j]], can[faces[j]]
        n_t = np.cross(t[1] - t[0], t[2] - t[0])
        n_t /= np.linalg.norm(n_t)
        n_c = np.cross(c[1] - c[0], c[2] - c[0])
        n_c /= np.linalg.norm(n_c)
        proj = p - np.dot(p - t[0], n_t) * n_t
        w = np.linalg.lstsq(t.T, proj, rcond=None)[0]  # barycentrics of the plane projection (unclamped)
        want_off[i] = w @ c + np.dot(p - w @ t, n_t) * n_c - p
        want_d[i] = d[j]
    np.testing.assert_allclose(offsets[0].reshape(3, -1).T.double().numpy(), want_off, atol=2e-5)
    np.testing.assert_allclose(dists[0].reshape(-1).double().numpy(), want_d, rtol=1e-4, atol=1e-8)
    assert np.abs(want_off).max() > 1e-2  # the neck rotation really moves the field


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.compile of the field search)")
def test_compiled_field_search_matches_eager_on_cuda() -> None:
    from avatar.flame.deformation import FlameHeadPoseDeformer, build_deformer_buffers

    deformer = FlameHeadPoseDeformer(build_deformer_buffers(**synthetic_flame_assets(0, subdivisions=2))).cuda()
    gen = torch.Generator().manual_seed(0)
    shape, exp = torch.randn(4, 300, generator=gen).cuda() * 0.5, torch.randn(4, 100, generator=gen).cuda() * 0.5
    pose = (torch.randn(4, 6, generator=gen) * 0.2).cuda()
    eager = deformer.precompute(shape, exp, pose)
    compiled = deformer.compile_search().precompute(shape, exp, pose)
    torch.testing.assert_close(compiled.offsets, eager.offsets, atol=1e-4, rtol=0)
    torch.testing.assert_close(compiled.dists, eager.dists, atol=1e-4, rtol=1e-4)
