"""The Triton closest-triangle search (avatar.flame.triton_search) against the chunked PyTorch search.

On CPU through Triton's interpreter (conftest's ``triton_interpreter``); the ``gpu`` test runs the compiled
kernel on the FLAME head-pose field.
"""

from __future__ import annotations

import pytest
import torch

from avatar.flame.geometry import closest_triangles, default_search, fused_closest_triangles, nearest_in_chunk
from avatar.flame.synthetic import synthetic_flame_assets


def _mesh_and_points(seed: int, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    verts = torch.randn(batch, 40, 3, generator=g)
    faces = torch.randint(0, 40, (36, 3), generator=g)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    verts[:, :6] *= 0.05  # a few triangles under the 5e-3 area threshold (edge distance instead of the plane)
    points = torch.randn(batch, 150, 3, generator=g) * 1.5
    return points, verts, faces


@pytest.mark.parametrize(("seed", "min_area"), [(0, 5e-3), (1, 0.0)])
def test_matches_the_pytorch_search(triton_interpreter, seed, min_area):
    points, verts, faces = _mesh_and_points(seed)
    want_d, want_i = closest_triangles(points, verts, faces, min_area, search=nearest_in_chunk)
    got_d, got_i = fused_closest_triangles(points, verts, faces, min_area)
    assert got_i.dtype == torch.long and got_d.shape == want_d.shape
    torch.testing.assert_close(got_d, want_d, rtol=1e-5, atol=1e-7)
    differ = got_i != want_i
    if bool(differ.any()):  # only at ties: the other triangle is as close to float32 rounding
        tris = verts[torch.arange(2)[:, None], faces[got_i]]
        from avatar.flame.geometry import point_triangle_sq_dist

        alt = point_triangle_sq_dist(points, tris[..., 0, :], tris[..., 1, :], tris[..., 2, :], min_area)
        torch.testing.assert_close(alt[differ], want_d[differ], rtol=1e-5, atol=1e-7)
    assert float(differ.float().mean()) < 0.02
    # through closest_triangles with the kernel as its search, per-mesh faces too
    d2, i2 = closest_triangles(points, verts, faces.expand(2, -1, -1), min_area, search=fused_closest_triangles)
    assert torch.equal(i2, got_i) and torch.equal(d2, got_d)


def test_default_search_by_device(triton_interpreter, monkeypatch):
    assert default_search("cpu") is fused_closest_triangles  # under the interpreter
    monkeypatch.delenv("TRITON_INTERPRET")
    assert default_search("cpu") is nearest_in_chunk


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_head_pose_field_matches_the_pytorch_search():
    from avatar.flame.deformation import FlameHeadPoseDeformer, build_deformer_buffers

    deformer = FlameHeadPoseDeformer(build_deformer_buffers(**synthetic_flame_assets(0, subdivisions=2))).cuda()
    gen = torch.Generator().manual_seed(0)
    shape, exp = torch.randn(4, 300, generator=gen).cuda() * 0.5, torch.randn(4, 100, generator=gen).cuda() * 0.5
    pose = (torch.randn(4, 6, generator=gen) * 0.2).cuda()
    fused = deformer.precompute(shape, exp, pose)  # default on CUDA: the Triton search
    deformer.search = nearest_in_chunk
    eager = deformer.precompute(shape, exp, pose)
    torch.testing.assert_close(fused.offsets, eager.offsets, atol=1e-4, rtol=0)
    torch.testing.assert_close(fused.dists, eager.dists, atol=1e-5, rtol=1e-4)


# ---- nearest vertex (GenHead's part fields) --------------------------------------------------------------------


def test_nearest_vertex_kernel_is_bitwise_the_pytorch_search(triton_interpreter):
    from avatar.flame.parts import default_vertex_search, fused_nearest_vertex, nearest_vertex

    g = torch.Generator().manual_seed(4)
    verts = torch.randn(2, 57, 3, generator=g)
    verts[:, 30] = verts[:, 7]  # an exact tie: the lower index wins on both sides
    points = torch.cat([torch.randn(2, 300, 3, generator=g), verts[:, :20] + 1e-3], dim=1)
    want_d, want_i = nearest_vertex(points, verts, chunk=64)
    got_d, got_i = fused_nearest_vertex(points, verts)
    assert got_i.dtype == torch.long and torch.equal(got_i, want_i) and torch.equal(got_d, want_d)
    assert not (got_i == 30).any()
    assert default_vertex_search("cpu") is fused_nearest_vertex  # under the interpreter
    empty_d, empty_i = fused_nearest_vertex(points[:, :0], verts)
    assert empty_d.shape == (2, 0) and empty_i.shape == (2, 0)
    with pytest.raises(ValueError, match="at least one vertex"):
        fused_nearest_vertex(points, verts[:, :0])


def test_part_fields_with_the_kernel_equal_the_pytorch_search(triton_interpreter):
    from avatar.flame.deformation import build_deformer_buffers
    from avatar.flame.parts import FlamePartDeformer, nearest_vertex

    deformer = FlamePartDeformer(build_deformer_buffers(**synthetic_flame_assets(0)), box_warp=1.3)
    gen = torch.Generator().manual_seed(1)
    shape, exp = torch.randn(2, 300, generator=gen), torch.randn(2, 100, generator=gen)
    pose, eye = 0.15 * torch.randn(2, 6, generator=gen), 0.2 * torch.randn(2, 6, generator=gen)
    x = torch.randn(2, 200, 3, generator=gen) * 0.18
    fused = deformer.parts(x, shape, exp, pose, eye)
    deformer.vertex_search = nearest_vertex
    reference = deformer.parts(x, shape, exp, pose, eye)
    for name, a, b in zip(fused._fields, fused, reference, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_gpu_nearest_vertex_kernel_is_bitwise_the_pytorch_search():
    from avatar.flame.parts import default_vertex_search, fused_nearest_vertex, nearest_vertex

    g = torch.Generator().manual_seed(0)
    verts = torch.randn(4, 2000, 3, generator=g).cuda() * 0.1
    points = torch.randn(4, 50_000, 3, generator=g).cuda() * 0.15
    want_d, want_i = nearest_vertex(points, verts)
    got_d, got_i = fused_nearest_vertex(points, verts)
    assert default_vertex_search("cuda") is fused_nearest_vertex
    assert torch.equal(got_i, want_i) and torch.equal(got_d, want_d)
