"""Pure-PyTorch triangle rasteriser (pytorch3d MeshRasterizer semantics) and the FLAME correspondence map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar.flame import FlameCorrespondenceRenderer, FlameHeadPoseDeformer, build_deformer_buffers
from avatar.flame.correspondence import correspondence_vertex_sets
from avatar.flame.synthetic import synthetic_flame_assets
from avatar.render.camera import focal_from_fov, make_intrinsics, make_label, view_label
from avatar.render.rasterize import (
    fov_ndc_scale,
    interpolate_vertex_attributes,
    ndc_pixel_centers,
    project_to_ndc,
    rasterize_mesh,
    rasterize_ndc,
    render_mesh,
)

FOCAL = 0.5 / math.tan(math.radians(6.0))  # 4.7572, the Portrait4D label focal


# ---------------------------------------------------------------------------------------------------------
# Brute-force reference: every pixel centre x every face, plain Python floats (float64).


def brute_force(verts: np.ndarray, faces: np.ndarray, h: int, w: int, f: float, cull: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One mesh ``verts (V, 3)`` (OpenGL camera space), pinhole ``u = 0.5 + f x / Z``, ``v = 0.5 - f y / Z``
    (``Z = -z``), pixel centres ``((j + 0.5) / W, (i + 0.5) / H)``; strict point-in-triangle, perspective-correct
    barycentrics ``(l_k / Z_k) / sum``, depth ``1 / sum(l_k / Z_k)``, nearest face wins (lowest index on ties).
    A face is front-facing when counter-clockwise on screen, i.e. clockwise in (u, v-down) coordinates."""
    z = [-float(p[2]) for p in verts]
    uv = [(0.5 + f * float(p[0]) / zz, 0.5 - f * float(p[1]) / zz) for p, zz in zip(verts, z, strict=True)]
    ids = np.full((h, w), -1, dtype=np.int64)
    depth = np.full((h, w), -1.0)
    bary = np.full((h, w, 3), -1.0)
    for i in range(h):
        pv = (i + 0.5) / h
        for j in range(w):
            pu = (j + 0.5) / w
            best = math.inf
            for fi, (a, b, c) in enumerate(faces):
                (ua, va), (ub, vb), (uc, vc) = uv[a], uv[b], uv[c]
                area = (ub - ua) * (vc - va) - (vb - va) * (uc - ua)
                if area == 0 or (cull and area > 0):
                    continue
                l0 = ((ub - pu) * (vc - pv) - (vb - pv) * (uc - pu)) / area
                l1 = ((uc - pu) * (va - pv) - (vc - pv) * (ua - pu)) / area
                l2 = ((ua - pu) * (vb - pv) - (va - pv) * (ub - pu)) / area
                if min(l0, l1, l2) <= 0:
                    continue
                q = (l0 / z[a], l1 / z[b], l2 / z[c])
                d = 1.0 / sum(q)
                if d < best:
                    best = d
                    ids[i, j] = fi
                    depth[i, j] = d
                    bary[i, j] = [qq * d for qq in q]
    return ids, depth, bary


def random_mesh(seed: int, num_verts: int = 30, num_faces: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Random overlapping triangles of both orientations in front of the camera (depths 3-5)."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(num_verts, 2, generator=g) - 0.5) * 0.7
    z = -(3.0 + 2.0 * torch.rand(num_verts, 1, generator=g))
    verts = torch.cat([xy, z], dim=1).double()
    faces = torch.stack([torch.randperm(num_verts, generator=g)[:3] for _ in range(num_faces)])
    return verts, faces


def _label_k(batch: int) -> torch.Tensor:
    return make_intrinsics(FOCAL, batch, dtype=torch.float64)


@pytest.mark.parametrize("cull", [False, True])
def test_matches_brute_force_on_random_meshes(cull: bool) -> None:
    h, w = 20, 24
    meshes = [random_mesh(s) for s in (0, 1)]
    faces = meshes[0][1]
    verts = torch.stack([meshes[0][0], meshes[1][0]])  # two meshes, shared faces
    frags = rasterize_mesh(verts, faces, (h, w), intrinsics=_label_k(2), cull_backfaces=cull)
    assert frags.pix_to_face.shape == (2, h, w) and frags.bary_coords.shape == (2, h, w, 3)
    total_hits = 0
    for b in range(2):
        ids, depth, bary = brute_force(verts[b].numpy(), faces.numpy(), h, w, FOCAL, cull)
        np.testing.assert_array_equal(frags.pix_to_face[b].numpy(), ids)
        np.testing.assert_allclose(frags.bary_coords[b].numpy(), bary, atol=1e-5)
        np.testing.assert_allclose(frags.zbuf[b].numpy(), depth, rtol=1e-6, atol=1e-6)
        total_hits += int((ids >= 0).sum())
        # occlusion happens: some covered pixels have several candidate faces
        assert len(np.unique(ids[ids >= 0])) > 3
    assert total_hits > 100


def test_float32_and_fov_camera_match_reference() -> None:
    """The official FoVPerspectiveCameras(fov=12) path, in float32, gives the same pixels as the label pinhole."""
    verts, faces = random_mesh(3)
    h = w = 24
    frags = rasterize_mesh(verts.float().unsqueeze(0), faces, h, fov_deg=12.0, cull_backfaces=True)
    ids, depth, bary = brute_force(verts.numpy(), faces.numpy(), h, w, FOCAL, True)
    np.testing.assert_array_equal(frags.pix_to_face[0].numpy(), ids)
    np.testing.assert_allclose(frags.bary_coords[0].numpy(), bary, atol=1e-5)
    np.testing.assert_allclose(frags.zbuf[0].numpy(), depth, rtol=1e-5, atol=1e-5)
    assert fov_ndc_scale(12.0) == pytest.approx(2 * FOCAL, rel=1e-6)


def test_chunking_does_not_change_the_result() -> None:
    verts, faces = random_mesh(4, num_faces=40)
    verts = verts.unsqueeze(0)
    ref = rasterize_mesh(verts, faces, 32, intrinsics=_label_k(1))
    for chunk in (1, 7, 100):
        out = rasterize_mesh(verts, faces, 32, intrinsics=_label_k(1), max_candidates=chunk)
        assert torch.equal(out.pix_to_face, ref.pix_to_face)
        assert torch.equal(out.bary_coords, ref.bary_coords) and torch.equal(out.zbuf, ref.zbuf)


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_depth_ties_go_to_the_lowest_face_index(chunk: int) -> None:
    """Coincident triangles: equal depth everywhere, the first face wins (pytorch3d's naive/CPU kernels)."""
    tri = torch.tensor([[[-0.2, -0.2, -4.0], [0.3, -0.2, -4.0], [-0.2, 0.3, -4.0]]], dtype=torch.float64)
    verts = torch.cat([tri, tri], dim=1)
    faces = torch.tensor([[3, 4, 5], [0, 1, 2]])
    frags = rasterize_mesh(verts, faces, 16, intrinsics=_label_k(1), max_candidates=chunk)
    hit = frags.pix_to_face >= 0
    assert hit.any() and bool((frags.pix_to_face[hit] == 0).all())


def test_pixel_centres_on_a_shared_edge_are_not_covered() -> None:
    """pytorch3d's strict rule: all barycentrics > 0, so a centre exactly on an edge belongs to neither face."""
    xs, ys = ndc_pixel_centers(4)
    assert xs.tolist() == [0.75, 0.25, -0.25, -0.75] and ys.tolist() == [0.75, 0.25, -0.25, -0.75]
    # a square split along the vertical line x_ndc = 0.25 (the centres of column 1)
    v = torch.tensor([[[0.9, -0.9, 2.0], [0.25, -0.9, 2.0], [0.25, 0.9, 2.0], [-0.9, 0.9, 2.0], [-0.9, -0.9, 2.0],
                       [0.9, 0.9, 2.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 5], [1, 4, 3], [1, 3, 2]])
    frags = rasterize_ndc(v, faces, 4)
    covered = frags.pix_to_face[0] >= 0
    assert not covered[:, 1].any()
    assert covered[:, [0, 2, 3]].all()


def test_backface_culling_and_orientation() -> None:
    """A counter-clockwise triangle (seen from the camera) is a front face; reversed it is culled."""
    tri = torch.tensor([[[-0.2, -0.2, -4.0], [0.3, -0.2, -4.0], [-0.2, 0.3, -4.0]]])
    front = torch.tensor([[0, 1, 2]])
    back = torch.tensor([[0, 2, 1]])
    assert (rasterize_mesh(tri, front, 16, cull_backfaces=True).pix_to_face >= 0).any()
    assert not (rasterize_mesh(tri, back, 16, cull_backfaces=True).pix_to_face >= 0).any()
    both = rasterize_mesh(tri, back, 16, cull_backfaces=False)
    assert torch.equal(both.pix_to_face >= 0, rasterize_mesh(tri, front, 16).pix_to_face >= 0)


def test_faces_behind_the_near_plane_are_dropped() -> None:
    tri = torch.tensor([[[-0.01, -0.01, -0.04], [0.02, -0.01, -0.04], [-0.01, 0.02, -0.04]]])
    assert not (rasterize_mesh(tri, torch.tensor([[0, 1, 2]]), 8).pix_to_face >= 0).any()


# ---------------------------------------------------------------------------------------------------------
# Closed forms


def _pixel_rays(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised ray slopes ``x/Z``, ``y/Z`` of the pixel centres for the label focal."""
    u = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    v = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xn = ((u - 0.5) / FOCAL).view(1, w).expand(h, w)
    yn = (-(v - 0.5) / FOCAL).view(h, 1).expand(h, w)
    return xn, yn


def test_analytic_fronto_parallel_triangle() -> None:
    """Right triangle at depth d facing the camera: coverage, depth and barycentrics in closed form."""
    h = w = 64
    d, x0, y0, a = 4.0, -0.2013, -0.1871, 0.4377
    verts = torch.tensor([[[x0, y0, -d], [x0 + a, y0, -d], [x0, y0 + a, -d]]], dtype=torch.float64)
    frags = rasterize_mesh(verts, torch.tensor([[0, 1, 2]]), h, intrinsics=_label_k(1), cull_backfaces=True)
    xn, yn = _pixel_rays(h, w)
    x, y = xn * d, yn * d
    s, t = (x - x0) / a, (y - y0) / a
    margins = torch.stack([s, t, 1 - s - t]).abs().min()
    assert margins > 1e-6  # no pixel centre on an edge: the closed form is unambiguous
    inside = (s > 0) & (t > 0) & (s + t < 1)
    assert torch.equal(frags.pix_to_face[0] >= 0, inside)
    assert 0.5 * (a * FOCAL * w / d) ** 2 == pytest.approx(int(inside.sum()), rel=0.1)  # sampling
    torch.testing.assert_close(frags.zbuf[0][inside], torch.full_like(s[inside], d))
    expected = torch.stack([1 - s - t, s, t], dim=-1)[inside]
    torch.testing.assert_close(frags.bary_coords[0][inside], expected)
    assert bool((frags.zbuf[0][~inside] == -1).all()) and bool((frags.bary_coords[0][~inside] == -1).all())


def test_analytic_tilted_plane_depth() -> None:
    """Plane z = -d + k x: the depth along each pixel ray is d / (1 + k x/Z) (perspective-correct z-buffer)."""
    h = w = 32
    d, k = 4.0, 1.5
    pts = [(-0.3, -0.25), (0.3, -0.25), (0.0, 0.3)]
    verts = torch.tensor([[[x, y, -d + k * x] for x, y in pts]], dtype=torch.float64)
    frags = rasterize_mesh(verts, torch.tensor([[0, 1, 2]]), h, intrinsics=_label_k(1))
    hit = frags.pix_to_face[0] >= 0
    assert hit.sum() > 100
    xn, _ = _pixel_rays(h, w)
    torch.testing.assert_close(frags.zbuf[0][hit], (d / (1 + k * xn))[hit], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_attribute_interpolation_is_exact(dtype: torch.dtype) -> None:
    """An attribute affine in the 3D position, interpolated, equals that function of the visible surface point
    recovered from the pixel ray and the z-buffer (needs perspective-correct barycentrics)."""
    h, w = 24, 28
    verts, faces = random_mesh(5)
    verts = verts.unsqueeze(0).to(dtype)
    frags = rasterize_mesh(verts, faces, (h, w), intrinsics=make_intrinsics(FOCAL, 1, dtype=dtype))
    mat = torch.tensor([[0.3, -1.2, 2.0, 0.5], [1.1, 0.4, -0.7, 0.2], [0.0, 2.5, 1.3, -0.4]], dtype=dtype)
    attrs = verts @ mat[:, :3].T + mat[:, 3]
    out = interpolate_vertex_attributes(frags, faces, attrs)[0]
    hit = frags.pix_to_face[0] >= 0
    assert hit.sum() > 50
    xn, yn = _pixel_rays(h, w)
    z = frags.zbuf[0].double()
    points = torch.stack([xn * z, yn * z, -z], dim=-1)
    expected = points @ mat[:, :3].T.double() + mat[:, 3].double()
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out[hit].double(), expected[hit], rtol=tol, atol=tol)
    assert bool((out[~hit] == 0).all())


def test_render_mesh_layout_and_background() -> None:
    verts, faces = random_mesh(6)
    verts = torch.stack([verts, verts + torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64)]).float()
    feats = torch.randn(2, verts.shape[1], 5)
    out = render_mesh(verts, faces, feats, 20)
    assert out.mask.shape == (2, 1, 20, 20) and out.depth.shape == (2, 1, 20, 20)
    assert out.image is not None and out.image.shape == (2, 5, 20, 20)
    bg = out.mask == 0
    assert bg.any() and (~bg).any()
    assert bool((out.depth[bg] == 0).all()) and bool((out.image * bg == 0).all())
    assert bool((out.depth[~bg] > 3).all())
    # the two meshes differ: the batch is rasterised per element
    assert not torch.equal(out.mask[0], out.mask[1])


def test_project_to_ndc_conventions() -> None:
    """Official: pytorch3d view = (-x, y, -z) -> +X_ndc is the image left, +Y_ndc its top."""
    p = torch.tensor([[[0.1, 0.2, -4.0]]])
    ndc = project_to_ndc(p, 64)
    s = fov_ndc_scale(12.0)
    torch.testing.assert_close(ndc[0, 0], torch.tensor([-s * 0.1 / 4, s * 0.2 / 4, 4.0]))
    # the label pinhole maps to the same NDC point
    k = make_intrinsics(FOCAL, 1)
    torch.testing.assert_close(project_to_ndc(p, 64, intrinsics=k), ndc, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# FLAME correspondence map


@pytest.fixture(scope="module")
def assets() -> dict:
    return synthetic_flame_assets()


@pytest.fixture(scope="module")
def corr(assets: dict) -> FlameCorrespondenceRenderer:
    return FlameCorrespondenceRenderer.from_assets(**assets)


def _canonical_params(batch: int) -> tuple[torch.Tensor, ...]:
    pose = torch.zeros(batch, 6)
    pose[:, 3] = 0.3  # the canonical jaw opening (ca_pose)
    return torch.zeros(batch, 300), torch.zeros(batch, 100), pose, torch.zeros(batch, 6)


def test_correspondence_features_follow_the_official_formula(corr: FlameCorrespondenceRenderer, assets: dict) -> None:
    buffers = build_deformer_buffers(**assets)
    masks = assets["masks"]
    face_mask = np.sort(np.unique(np.concatenate([masks["face"], masks["right_eyeball"], masks["left_eyeball"]])))
    eye_mask = np.sort(np.unique(np.concatenate([masks["right_eyeball"], masks["left_eyeball"]])))
    feature = buffers["canonical_shape"].repeat(1, 1, 1) / (3 * 0.2)
    feature[:, eye_mask, 2] = feature[:, eye_mask, 2] - 0.5
    torch.testing.assert_close(corr.vertex_features, feature[0, face_mask], rtol=0, atol=0)
    assert torch.equal(corr.masked_faces, buffers["masked_faces"])
    face_idx, eye_idx = correspondence_vertex_sets(masks)
    assert face_idx.tolist() == face_mask.tolist() and eye_idx.tolist() == eye_mask.tolist()


def test_correspondence_map_shape_background_and_layout(corr: FlameCorrespondenceRenderer) -> None:
    label = view_label(15.0, 5.0).repeat(2, 1)
    out = corr(*_canonical_params(2), label, half_size=256)
    assert out.uv.shape == (2, 3, 512, 512) and out.mask.shape == (2, 1, 512, 512)
    assert out.depth.shape == (2, 1, 512, 512) and out.uv.dtype == torch.float32
    bg = out.mask == 0
    assert bg.any() and (~bg).any()
    assert bool((out.uv * bg == 0).all()) and bool((out.depth[bg] == 0).all())
    assert out.uv.abs().max() < 1.0
    assert out.landmarks_2d is not None and out.landmarks_2d.shape == (2, 8, 2)


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (25.0, -10.0)])
def test_correspondence_pixels_are_the_canonical_surface(corr: FlameCorrespondenceRenderer, yaw: float,
                                                         pitch: float) -> None:
    """With the canonical FLAME parameters the posed mesh is the canonical mesh, so every covered pixel, unprojected
    with its depth through the label camera, is the 3D point whose x, y equal 0.6 * (uv x, y) (z: minus the
    interpolated eyeball offset, in [-0.3, 0]). Checks pixel alignment (no mirroring), depth and barycentrics."""
    size = 96
    label = view_label(yaw, pitch)
    out = corr(*_canonical_params(1), label, half_size=size // 2)
    hit = out.mask[0, 0] > 0
    assert hit.sum() > 200
    u = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    f = float(focal_from_fov(12.0))
    xn = ((u - 0.5) / f).view(1, size).expand(size, size)
    yn = (-(u - 0.5) / f).view(size, 1).expand(size, size)
    z = out.depth[0, 0].double()
    cam = torch.stack([xn * z, yn * z, -z, torch.ones_like(z)], dim=-1)
    world = (cam @ label[0, :16].reshape(4, 4).double().T)[..., :3]
    uv = out.uv[0].permute(1, 2, 0).double() * 0.6
    torch.testing.assert_close(uv[hit][:, :2], world[hit][:, :2], rtol=0, atol=2e-5)
    dz = uv[hit][:, 2] - world[hit][:, 2]
    assert bool((dz <= 2e-5).all()) and bool((dz >= -0.3 - 2e-5).all())
    assert (dz < -0.01).any()  # some eyeball pixels


def test_correspondence_vertex_projection_shows_the_vertex_feature(corr: FlameCorrespondenceRenderer) -> None:
    """Posed (neck + jaw + expression) FLAME: a visible vertex's projected pixel shows about that vertex's feature."""
    size = 128
    g = torch.Generator().manual_seed(0)
    shape, exp = torch.randn(1, 300, generator=g), torch.randn(1, 100, generator=g)
    pose = torch.tensor([[0.2, -0.3, 0.1, 0.25, 0.0, 0.0]])
    label = view_label(-20.0, 10.0)
    out = corr(shape, exp, pose, None, label, half_size=size // 2)
    verts = corr.flame(shape, exp, pose, None, with_landmarks=False).vertices[:, corr.face_vertex_idx]
    cam = corr.camera_vertices(verts, label)[0]
    depth = -cam[:, 2]
    col = ((0.5 + FOCAL * cam[:, 0] / depth) * size).floor().long()
    row = ((0.5 - FOCAL * cam[:, 1] / depth) * size).floor().long()
    checked = 0
    for k in range(cam.shape[0]):
        i, j = int(row[k]), int(col[k])
        if not (0 <= i < size and 0 <= j < size) or out.mask[0, 0, i, j] == 0:
            continue
        if abs(float(out.depth[0, 0, i, j]) - float(depth[k])) > 0.01:
            continue  # occluded
        checked += 1
        torch.testing.assert_close(out.uv[0, :, i, j], corr.vertex_features[k], rtol=0, atol=0.04)
    assert checked >= 8


def test_correspondence_ignores_label_intrinsics_but_landmarks_use_them(corr: FlameCorrespondenceRenderer) -> None:
    """Official: the map uses FoVPerspectiveCameras(fov=12); landmarks_2d use K * 2 half_size, y up."""
    label = view_label(10.0, 0.0)
    wide = make_label(label[:, :16].reshape(1, 4, 4), make_intrinsics(3.0, 1))
    a = corr(*_canonical_params(1), label, half_size=32)
    b = corr(*_canonical_params(1), wide, half_size=32)
    assert torch.equal(a.uv, b.uv)
    assert a.landmarks_2d is not None and b.landmarks_2d is not None
    assert not torch.allclose(a.landmarks_2d, b.landmarks_2d)
    lmk3d = corr.flame(*_canonical_params(1)).landmarks3d
    assert lmk3d is not None
    cam = corr.camera_vertices(lmk3d, label)[0]
    u = (0.5 + FOCAL * cam[:, 0] / -cam[:, 2]) * 64
    v_down = (0.5 - FOCAL * cam[:, 1] / -cam[:, 2]) * 64
    torch.testing.assert_close(a.landmarks_2d[0], torch.stack([u, 64 - v_down], dim=-1), rtol=1e-5, atol=1e-4)


def test_correspondence_from_deformer_shares_flame(assets: dict, corr: FlameCorrespondenceRenderer) -> None:
    deformer = FlameHeadPoseDeformer(build_deformer_buffers(**assets))
    shared = FlameCorrespondenceRenderer.from_deformer(deformer, assets["masks"])
    assert shared.flame is deformer.flame_model
    label = view_label(0.0, 0.0)
    torch.testing.assert_close(shared(*_canonical_params(1), label, half_size=24).uv,
                               corr(*_canonical_params(1), label, half_size=24).uv)
    no_canonical = FlameHeadPoseDeformer(build_deformer_buffers(**{**assets, "masks": None}))
    with pytest.raises(ValueError, match="canonical_shape"):
        FlameCorrespondenceRenderer.from_deformer(no_canonical, assets["masks"])
