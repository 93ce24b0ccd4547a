"""GenHead's part-wise FLAME deformation and screen-space part masks (small synthetic FLAME, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatar.errors import StateDictMismatchError
from avatar.flame.deformation import FlameHeadPoseDeformer, build_deformer_buffers
from avatar.flame.masks import (
    MASK_KINDS,
    FlamePartMaskRenderer,
    PartMasks,
    RawPartMasks,
    blur_taps,
    part_masks,
)
from avatar.flame.parts import FlamePartDeformer, PartDeformation, eye_bbox_inside, nearest_vertex
from avatar.flame.synthetic import icosphere, synthetic_flame_assets
from avatar.render.camera import inference_label, view_label
from avatar.render.rasterize import render_mesh

B = 2


@pytest.fixture(scope="module")
def assets() -> dict:
    """Synthetic assets whose ``noinmouth`` set leaves out a front cap (so the mouth mask is a visible hole) and
    whose simplified mesh is the full mesh (so every eye triangle is also a head triangle, as FLAME's eyes sit
    inside its head)."""
    out = synthetic_flame_assets(0)
    unit, _ = icosphere(1)
    out["masks"] = dict(out["masks"], noinmouth=np.nonzero(unit[:, 2] < 0.9)[0])
    baris = np.zeros_like(out["simplify"]["baris"])
    baris[:, 0] = 1
    out["simplify"] = dict(out["simplify"], baris=baris)
    return out


@pytest.fixture(scope="module")
def deformer(assets: dict) -> FlamePartDeformer:
    return FlamePartDeformer(build_deformer_buffers(**assets), box_warp=1.3)


@pytest.fixture(scope="module")
def deformer64(assets: dict) -> FlamePartDeformer:
    return FlamePartDeformer(build_deformer_buffers(**assets), box_warp=1.3).double()


@pytest.fixture(scope="module")
def renderer(deformer: FlamePartDeformer, assets: dict) -> FlamePartMaskRenderer:
    return FlamePartMaskRenderer(deformer, assets["masks"])


def _params(seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Non-trivial shape, expression, [neck, jaw] and eye poses, ``(B, .)``."""
    g = torch.Generator().manual_seed(seed)
    shape, exp = torch.randn(B, 300, generator=g), torch.randn(B, 100, generator=g)
    pose, eye = 0.15 * torch.randn(B, 6, generator=g), 0.2 * torch.randn(B, 6, generator=g)
    pose[:, 3] += 0.2  # open the jaw
    return tuple(t.to(dtype) for t in (shape, exp, pose, eye))


def _points(num: int, seed: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.18 * torch.randn(B, num, 3, generator=g)).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# nearest_vertex


def _brute_nearest(points: torch.Tensor, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Double loop over vertices, keeping the first strictly smaller distance."""
    best = torch.full(points.shape[:2], math.inf, dtype=points.dtype)
    index = torch.zeros(points.shape[:2], dtype=torch.int64)
    for v in range(vertices.shape[1]):
        d = ((points - vertices[:, v:v + 1]) ** 2).sum(-1)
        better = d < best
        best, index = torch.where(better, d, best), torch.where(better, torch.full_like(index, v), index)
    return best, index


def test_nearest_vertex_matches_brute_force_for_any_chunk() -> None:
    g = torch.Generator().manual_seed(0)
    points, vertices = torch.randn(B, 37, 3, generator=g), torch.randn(B, 11, 3, generator=g)
    ref_d, ref_i = _brute_nearest(points.double(), vertices.double())
    for chunk in (1, 3, 5, 36, 37, 100, None):
        d, i = nearest_vertex(points, vertices, chunk)
        assert d.shape == (B, 37) and i.dtype == torch.int64
        assert torch.equal(i, ref_i)
        torch.testing.assert_close(d.double(), ref_d, rtol=1e-6, atol=1e-7)


def test_nearest_vertex_ties_go_to_the_lowest_index() -> None:
    # Integer coordinates: every distance is exact, so the ties below are exact too.
    vertices = torch.tensor([[[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [1, 0, 0], [5, 5, 5], [0, -1, 0]]])
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 0, 3], [5, 5, 5], [0.5, 0, 0], [0, 0, 0]]])
    for chunk in (1, 2, 4, None):
        d, i = nearest_vertex(points, vertices, chunk)
        assert i.tolist() == [[0, 0, 0, 4, 0, 0]]
        assert d.tolist() == [[1.0, 0.0, 10.0, 0.0, 0.25, 1.0]]
    ref_d, ref_i = _brute_nearest(points, vertices)
    assert torch.equal(nearest_vertex(points, vertices, 2)[1], ref_i) and torch.equal(ref_d, d)


def test_nearest_vertex_edge_cases() -> None:
    d, i = nearest_vertex(torch.zeros(B, 0, 3), torch.ones(B, 4, 3))
    assert d.shape == (B, 0) and i.shape == (B, 0) and i.dtype == torch.int64
    with pytest.raises(ValueError):
        nearest_vertex(torch.zeros(1, 2, 3), torch.zeros(1, 0, 3))
    with pytest.raises(ValueError):
        nearest_vertex(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), chunk=0)


# ---------------------------------------------------------------------------------------------------------
# Part deformation


def _reference_parts(d: FlamePartDeformer, x_t: torch.Tensor, shape: torch.Tensor, exp: torch.Tensor,
                     pose: torch.Tensor, eye_pose: torch.Tensor, mouth: bool = True) -> dict[str, torch.Tensor]:
    """``closest_point_deformation_separate``, line by line with plain broadcasting."""
    n = len(x_t)
    flame = d.flame_model
    target_shape = flame(shape, exp, pose, eye_pose, False, with_landmarks=False).vertices
    if mouth:
        target_shape_noexp_noeye = flame(shape, torch.zeros_like(exp), pose, torch.zeros_like(eye_pose), False,
                                         with_landmarks=False).vertices
    canonical_shape = d.canonical_shape.repeat(n, 1, 1)
    target_shape_eye = target_shape[:, d.eye_idxs]
    target_shape_face = target_shape[:, d.face_idxs]
    if mouth:
        target_shape_mouth = target_shape_noexp_noeye[:, d.lips_idxs]

    def inside(part: torch.Tensor) -> torch.Tensor:
        center = part.mean(dim=1, keepdim=True)
        size = (part.max(dim=1, keepdim=True)[0] - part.min(dim=1, keepdim=True)[0]) * 1.2
        return ((x_t - center).abs() < (size * 0.5)).all(dim=-1)

    half = len(d.eye_idxs) // 2
    inside_bbox_eye = (inside(target_shape_eye[:, :half]) + inside(target_shape_eye[:, half:])).float()

    def knn1(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = ((x_t[:, :, None] - pts[:, None]) ** 2).sum(-1)
        return dist.min(dim=-1)

    closest_dist_eye, nearest_idx_eye = knn1(target_shape_eye)
    closest_dist_face, nearest_idx_face = knn1(target_shape_face)
    if mouth:
        closest_dist_mouth, nearest_idx_mouth = knn1(target_shape_mouth)
        nearest_idx_mouth = d.lips_idxs[nearest_idx_mouth]
    else:
        closest_dist_mouth = torch.zeros_like(closest_dist_eye)
    region_eye = d.vertices_region_idxs[nearest_idx_eye + d.eye_idxs[0]]
    region_face = d.vertices_region_idxs[nearest_idx_face]

    def aug(mesh: torch.Tensor) -> torch.Tensor:
        return torch.cat([mesh, 1e3 * torch.ones_like(mesh[:, :1])], dim=1)

    def gather(mesh: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return torch.stack([mesh[b][region[b]] for b in range(n)])

    def offset(target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        tgt, can = gather(aug(target), region), gather(aug(canonical_shape), region)
        inv = 1 / (torch.sum((x_t.unsqueeze(-2) - tgt) ** 2, -1) + 1e-10)
        weights = (inv / torch.sum(inv, dim=-1, keepdim=True)).unsqueeze(-1)
        return torch.sum((can - tgt) * weights, dim=-2)

    out = {"eye": x_t + offset(target_shape, region_eye), "face": x_t + offset(target_shape, region_face)}
    if mouth:
        out["mouth"] = x_t + offset(target_shape_noexp_noeye, d.vertices_region_idxs[nearest_idx_mouth])
    else:
        out["mouth"] = torch.zeros_like(x_t)
    out.update(dist_eye=torch.sqrt(closest_dist_eye + 1e-12), dist_face=torch.sqrt(closest_dist_face + 1e-12),
               dist_mouth=torch.sqrt(closest_dist_mouth + 1e-12), inside_bbox_eye=inside_bbox_eye)
    return out


def _assert_parts(out: PartDeformation, ref: dict[str, torch.Tensor], atol: float) -> None:
    for name, value in out._asdict().items():
        torch.testing.assert_close(value.to(ref[name].dtype), ref[name], rtol=0, atol=atol, msg=name)


def test_parts_match_reference_float64(deformer64: FlamePartDeformer) -> None:
    shape, exp, pose, eye = _params(dtype=torch.float64)
    x = _points(600, dtype=torch.float64)
    ref = _reference_parts(deformer64, x, shape, exp, pose, eye)
    out = deformer64.parts(x, shape, exp, pose, eye)
    _assert_parts(out, ref, atol=1e-12)
    assert set(out.inside_bbox_eye.unique().tolist()) == {0.0, 1.0}
    for part in (out.eye, out.face, out.mouth):
        assert (part - x).abs().max() > 1e-3  # the parameters deform every part


def test_parts_float32_match_float64_reference(deformer: FlamePartDeformer, deformer64: FlamePartDeformer) -> None:
    shape, exp, pose, eye = _params()
    x = _points(600)
    ref = _reference_parts(deformer64, x.double(), *(t.double() for t in (shape, exp, pose, eye)))
    out = deformer.parts(x, shape, exp, pose, eye)
    assert not any(t.requires_grad for t in out)
    _assert_parts(out, ref, atol=2e-5)


def test_parts_without_mouth_and_chunked(assets: dict, deformer64: FlamePartDeformer) -> None:
    shape, exp, pose, eye = _params(3, torch.float64)
    x = _points(200, 4, torch.float64)
    out = deformer64.parts(x, shape, exp, pose, eye, mouth=False)
    _assert_parts(out, _reference_parts(deformer64, x, shape, exp, pose, eye, mouth=False), atol=1e-12)
    assert torch.equal(out.mouth, torch.zeros_like(x))
    torch.testing.assert_close(out.dist_mouth, torch.full_like(out.dist_mouth, 1e-6))
    chunked = FlamePartDeformer(build_deformer_buffers(**assets), box_warp=1.3, chunk=7).double()
    for a, b in zip(chunked.parts(x, shape, exp, pose, eye), deformer64.parts(x, shape, exp, pose, eye), strict=True):
        assert torch.equal(a, b)


def test_parts_identity_at_canonical_parameters(deformer: FlamePartDeformer) -> None:
    shape, exp, eye = torch.zeros(B, 300), torch.zeros(B, 100), torch.zeros(B, 6)
    pose = torch.tensor([[0.0, 0, 0, 0.3, 0, 0]]).repeat(B, 1)  # the canonical jaw opening
    x = _points(300)
    out = deformer.parts(x, shape, exp, pose, eye)
    for part in (out.eye, out.face, out.mouth):
        torch.testing.assert_close(part, x, rtol=0, atol=1e-6)


def test_eye_bbox_inside_hand_made_boxes() -> None:
    cube = torch.tensor([[i, j, k] for i in (0.0, 1.0) for j in (0.0, 1.0) for k in (0.0, 1.0)])
    # left eye: unit cube (centre 0.5, box half size 0.6); right eye: the cube moved by 3 along x
    eyes = torch.cat([cube, cube + torch.tensor([3.0, 0, 0])]).unsqueeze(0)
    points = torch.tensor([[[0.5, 0.5, 0.5], [1.09, 0.5, 0.5], [1.11, 0.5, 0.5], [-0.09, 0.5, 0.5],
                            [0.5, 0.5, 1.2], [1.05, 1.05, -0.05], [3.5, 0.5, 0.5], [4.05, 0.5, 0.5],
                            [2.0, 0.5, 0.5], [3.5, 1.2, 0.5]]])
    expected = [1, 1, 0, 1, 0, 1, 1, 1, 0, 0]
    out = eye_bbox_inside(points, eyes)
    assert out.dtype == torch.float32 and out.tolist() == [expected]
    # overlapping boxes count once (the boolean sum is an "or")
    close = torch.cat([cube, cube + torch.tensor([1.0, 0, 0])]).unsqueeze(0)
    assert eye_bbox_inside(torch.tensor([[[1.0, 0.5, 0.5]]]), close).tolist() == [[1.0]]


def test_forward_parts_is_head_pose_warp_then_parts(deformer: FlamePartDeformer) -> None:
    shape, exp, pose, eye = _params(5)
    pose[:, :3] = torch.tensor([0.2, -0.3, 0.1])  # a clear neck rotation
    x = _points(300, 6)
    out = deformer.forward_parts(x, shape, exp, pose, eye)
    x_c = FlameHeadPoseDeformer.forward(deformer, x, shape, exp, pose, eye)
    assert (x_c - x).abs().max() > 1e-2
    no_neck = torch.cat([torch.zeros(B, 3), pose[:, 3:]], dim=-1)
    for a, b in zip(out, deformer.parts(x_c, shape, exp, no_neck, eye), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(out.face, deformer.parts(x_c, shape, exp, pose, eye).face)


def test_part_deformer_needs_the_part_buffers(assets: dict) -> None:
    buffers = build_deformer_buffers(**{**assets, "addition": None})
    with pytest.raises(StateDictMismatchError):
        FlamePartDeformer(buffers)


# ---------------------------------------------------------------------------------------------------------
# Masks


def _labels() -> torch.Tensor:
    return torch.cat([inference_label(1), view_label(20, 10)])


def _camera(points: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """World -> OpenGL camera with ``world2cam = [R^T, -R^T t]`` of the label's cam2world."""
    c2w = label[:, :16].reshape(-1, 4, 4)
    rot, trans = c2w[:, :3, :3], c2w[:, :3, 3:]
    return (points - trans.transpose(1, 2)) @ rot


def _expected_raw(deformer: FlamePartDeformer, masks: dict, params: tuple, label: torch.Tensor, size: int
                  ) -> dict[str, torch.Tensor]:
    verts = deformer.flame_model(*params, False, with_landmarks=False).vertices
    eye = np.sort(np.unique(np.concatenate([masks["right_eyeball"], masks["left_eyeball"]])))
    face = np.sort(np.unique(masks["face"]))
    simplified = (verts[:, deformer.simplify_idxs] * deformer.simplify_baris[None, :, :, None]).sum(-2)
    meshes = {"eye": (verts[:, eye], deformer.masked_eye_faces, True),
              "face_wo_eye": (verts[:, face], deformer.masked_face_wo_eye_faces, True),
              "head": (simplified, deformer.simplify_faces, False),
              "head_wo_mouth": (verts[:, masks["noinmouth"]], deformer.masked_noinmouth_faces, True)}
    return {k: render_mesh(_camera(v, label), f, None, size, fov_deg=12.0, cull_backfaces=c).mask
            for k, (v, f, c) in meshes.items()}


def test_raw_masks_are_render_mesh_of_the_sub_meshes(renderer: FlamePartMaskRenderer, deformer: FlamePartDeformer,
                                                     assets: dict) -> None:
    params, label = _params(), _labels()
    raw = renderer.render_masks(*params, label, half_size=32)
    expected = _expected_raw(deformer, assets["masks"], params, label, 64)
    for kind in MASK_KINDS:
        mask = getattr(raw, kind)
        assert mask.shape == (B, 1, 64, 64) and torch.equal(mask, expected[kind]), kind
        assert mask.sum() > 10, kind
        single = renderer.render_mask(kind, renderer.posed_vertices(*params), label, half_size=32)
        assert torch.equal(single, mask)


def _brute_coverage(cam: torch.Tensor, faces: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of projected triangles (pinhole, 12 degree fov), and a mask of pixels far from every edge."""
    focal = 0.5 / math.tan(math.radians(6.0))
    depth = -cam[..., 2]
    uv = torch.stack([0.5 + focal * cam[..., 0] / depth, 0.5 - focal * cam[..., 1] / depth], -1).double()
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    vv, uu = torch.meshgrid(centres, centres, indexing="ij")
    pix = torch.stack([uu, vv], -1).reshape(-1, 1, 2)  # (S*S, 1, 2)
    tri = uv[faces]  # (F, 3, 2)

    def edge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (b[..., 0] - a[..., 0]) * (pix[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (pix[..., 0] - a[..., 0])

    e = torch.stack([edge(tri[:, 0], tri[:, 1]), edge(tri[:, 1], tri[:, 2]), edge(tri[:, 2], tri[:, 0])], -1)
    inside = ((e > 0).all(-1) | (e < 0).all(-1)).any(-1)
    ambiguous = (e.abs() < 1e-5).any(-1).any(-1)
    return inside.reshape(size, size), ambiguous.reshape(size, size)


def test_head_mask_matches_point_in_triangle(renderer: FlamePartMaskRenderer) -> None:
    params, label = _params(), _labels()
    verts = renderer.posed_vertices(*params)
    head = renderer.render_mask("head", verts, label, half_size=24)
    simplified, faces, cull = renderer.mask_mesh("head", verts)
    assert cull is False
    for b in range(B):
        inside, ambiguous = _brute_coverage(_camera(simplified, label)[b], faces, 48)
        keep = ~ambiguous
        assert inside.sum() > 100 and keep.float().mean() > 0.9
        assert torch.equal(head[b, 0].bool()[keep], inside[keep])


def _reference_post(raw: RawPartMasks, nr: int, ir: int) -> dict[str, torch.Tensor]:
    """The synthesis block with direct torch ops: 2-D outer-product kernels, padded min/max windows."""

    def blur(x: torch.Tensor, sigma: int) -> torch.Tensor:
        k = torch.arange(-3 * sigma, 3 * sigma + 1, dtype=torch.float64) / sigma
        taps = torch.exp2(-(k**2))
        kernel = torch.outer(taps, taps) / taps.sum() ** 2
        return F.conv2d(x.double(), kernel[None, None], padding=3 * sigma).float()

    def window(x: torch.Tensor, fill: float, reduce: str) -> torch.Tensor:
        cols = F.unfold(F.pad(x, (3, 3, 3, 3), value=fill), 7)  # (B, 49, H*W)
        out = cols.amin(1) if reduce == "min" else cols.amax(1)
        return out.reshape(x.shape)

    def resize(x: torch.Tensor, size: int) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    eye = raw.eye * (1 - raw.face_wo_eye)
    mouth = raw.head * (1 - raw.head_wo_mouth)
    mouth_sr = blur(window(window(mouth, math.inf, "min"), -math.inf, "max"), 2)
    mouth_nr = resize(mouth, nr)
    head = resize(raw.head, nr)
    return {"eye": resize(eye, nr), "mouth": mouth_nr, "head": head, "eye_sr": blur(eye, 1),
            "mouth_sr": (mouth_sr + resize(mouth_nr, ir)).clamp(max=1), "head_sr": resize(head, ir)}


def _check_post(out: PartMasks, raw: RawPartMasks, nr: int, ir: int) -> None:
    ref = _reference_post(raw, nr, ir)
    for name, value in out._asdict().items():
        size = ir if name.endswith("_sr") else nr
        assert value.shape == (raw.eye.shape[0], 1, size, size), name
        assert value.min() >= 0 and value.max() <= 1 + 1e-6, name
        torch.testing.assert_close(value, ref[name], rtol=0, atol=2e-6, msg=name)


def test_post_processing_matches_reference(renderer: FlamePartMaskRenderer) -> None:
    params, label = _params(), _labels()
    raw = renderer.render_masks(*params, label, half_size=32)
    out = part_masks(raw, 32, 64)
    _check_post(out, raw, 32, 64)
    assert out.mouth.sum() > 1 and out.mouth_sr.sum() > 10 and out.eye.sum() > 0.5 and out.eye_sr.sum() > 1
    torch.testing.assert_close(out.eye_mouth_sr, out.mouth_sr + out.eye_sr)
    assert all(torch.equal(a, b) for a, b in zip(renderer.render_part_masks(*params, label, 32, 64), out, strict=True))
    # random binary renders exercise the filters and the opening everywhere
    g = torch.Generator().manual_seed(7)
    rand = RawPartMasks(*((torch.rand(3, 1, 40, 40, generator=g) > p).float() for p in (0.6, 0.5, 0.2, 0.7)))
    _check_post(part_masks(rand, 20, 40), rand, 20, 40)


def test_eye_and_mouth_masks_vanish_off_the_head(renderer: FlamePartMaskRenderer) -> None:
    params, label = _params(), _labels()
    raw = renderer.render_masks(*params, label, half_size=32)
    off_head = raw.head == 0
    assert off_head.any() and (raw.eye * (1 - raw.face_wo_eye))[off_head].abs().max() == 0
    assert (raw.head * (1 - raw.head_wo_mouth))[off_head].abs().max() == 0
    out = part_masks(raw, 32, 64)
    # positive linear resampling keeps the pointwise order eye, mouth <= head
    assert (out.eye <= out.head + 1e-6).all() and (out.mouth <= out.head + 1e-6).all()
    assert out.eye[out.head == 0].abs().max() == 0 and out.mouth[out.head == 0].abs().max() == 0


def test_part_masks_resolutions_and_checks(renderer: FlamePartMaskRenderer) -> None:
    raw = renderer.render_masks(*_params(), _labels(), half_size=16)
    out = part_masks(raw, 16, 32, part_resolution=8)
    assert out.eye.shape[-1] == out.mouth.shape[-1] == 8 and out.head.shape[-1] == 16
    assert out.eye_sr.shape[-1] == out.mouth_sr.shape[-1] == out.head_sr.shape[-1] == 32
    with pytest.raises(ValueError):
        part_masks(raw, 16, 64)
    taps = blur_taps(2)
    assert taps.shape == (13,) and abs(float(taps.sum()) - 1) < 1e-6 and torch.equal(taps, taps.flip(0))


def test_mask_renderer_shares_the_deformer(renderer: FlamePartMaskRenderer, deformer: FlamePartDeformer,
                                           assets: dict) -> None:
    assert renderer.flame is deformer.flame_model
    for name in ("simplify_faces", "simplify_baris", "masked_eye_faces", "masked_noinmouth_faces", "noinmouth_idxs"):
        assert getattr(renderer, name) is getattr(deformer, name)
        assert name not in renderer.state_dict()
    eyes = np.sort(np.unique(np.concatenate([assets["masks"]["right_eyeball"], assets["masks"]["left_eyeball"]])))
    assert renderer.eye_vertex_idx.tolist() == eyes.tolist()
    assert renderer.face_wo_eye_vertex_idx.tolist() == np.sort(np.unique(assets["masks"]["face"])).tolist()
    uv = renderer(*_params(), _labels(), half_size=16)  # the inherited correspondence map (official default branch)
    assert uv.uv.shape == (B, 3, 32, 32) and uv.mask.sum() > 0
    rebuilt = FlamePartMaskRenderer.from_assets(assets["masks"], **{k: v for k, v in assets.items() if k != "masks"})
    raw = renderer.render_masks(*_params(), _labels(), half_size=16)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.render_masks(*_params(), _labels(), 16), raw, strict=True))
    bare = FlameHeadPoseDeformer(build_deformer_buffers(**{**assets, "masks": None}))
    with pytest.raises(StateDictMismatchError):
        FlamePartMaskRenderer(bare, assets["masks"])
