"""Cameras, rays and the triplane volume renderer against closed forms (fast, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.render import camera as cam
from avatar.render.rays import sample_rays
from avatar.render.triplane import (
    ImportanceRenderer,
    RenderingOptions,
    TriplaneNeRFDecoder,
    composite_background,
    ray_box_limits,
    rays_to_image,
    sample_from_planes,
    sample_importance,
    sample_pdf,
)

STATE_DICT_JSON = Path(__file__).resolve().parents[2] / "shared" / "design" / "portrait4d_psi_state_dict.json"
FOCAL_12 = 1.0 / (2.0 * math.tan(math.radians(6.0)))


# ----------------------------------------------------------------------------------------------------------
# Cameras


def test_fov_focal_and_inference_label() -> None:
    assert cam.focal_from_fov(12.0) == pytest.approx(4.7572, abs=1e-4)
    assert cam.fov_from_focal(cam.focal_from_fov(17.3)) == pytest.approx(17.3)
    t = torch.tensor([8.0, 12.0, 30.0])
    assert torch.allclose(cam.fov_from_focal(cam.focal_from_fov(t)), t)
    assert cam.eg3d_focal_from_fov(18.837) == pytest.approx(4.2634, abs=1e-4)  # EG3D labels say 4.2647

    label = cam.inference_label(3)
    assert label.shape == (3, 25)
    c2w, k = cam.split_label(label)
    assert torch.equal(c2w[:, :3, :3], torch.eye(3).expand(3, 3, 3))
    assert torch.allclose(c2w[:, :3, 3], torch.tensor([0.0, 0.01, 4.2]))
    assert torch.allclose(k[0], torch.tensor([[FOCAL_12, 0, 0.5], [0, FOCAL_12, 0.5], [0, 0, 1.0]]))
    assert torch.allclose(cam.camera_z(c2w), torch.full((3,), -4.2))


def test_label_round_trip_and_rigid_inverse() -> None:
    g = torch.Generator().manual_seed(0)
    c2w = cam.sample_lookat_cam2world(
        math.pi / 2, math.pi / 2, (0.0, 0.0, 0.09), 0.4, 0.3, 0.0, 0.2, radius=4.0, batch_size=6, generator=g
    )
    k = cam.make_intrinsics(torch.linspace(3.0, 6.0, 6))
    label = cam.make_label(c2w, k)
    assert label.shape == (6, 25)
    c2w_back, k_back = cam.split_label(label)
    assert torch.equal(c2w_back, c2w) and torch.equal(k_back, k)
    # A longer FLAME label (437 numbers) keeps its first 25 as the camera.
    long = torch.cat([label, torch.randn(6, 412, generator=g)], dim=1)
    assert torch.equal(cam.split_label(long)[0], c2w)
    eye = cam.invert_rigid(c2w) @ c2w
    assert torch.allclose(eye, torch.eye(4).expand(6, 4, 4), atol=1e-5)


def test_lookat_frontal_is_identity_and_looks_at_target() -> None:
    c2w = cam.lookat_cam2world(math.pi / 2, math.pi / 2, (0.0, 0.0, 0.0), radius=4.2)
    assert torch.allclose(c2w[0, :3, :3], torch.eye(3), atol=1e-6)
    assert torch.allclose(c2w[0, :3, 3], torch.tensor([0.0, 0.0, 4.2]), atol=1e-6)

    yaw = torch.tensor([0.9, 1.3, 2.0, 2.4])
    pitch = torch.tensor([1.2, 1.5, 1.7, 2.0])
    target = torch.tensor([0.02, -0.03, 0.09])
    c2w = cam.lookat_cam2world(yaw, pitch, target, radius=3.8)
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(4, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(4), atol=1e-5)
    assert torch.allclose(pos.norm(dim=-1), torch.full((4,), 3.8), atol=1e-5)  # sphere about the origin
    to_target = torch.nn.functional.normalize(target - pos, dim=-1)
    assert torch.allclose(-rot[:, :, 2], to_target, atol=1e-5)  # camera looks down its -z
    assert torch.allclose(rot[:, 1, 0], torch.zeros(4), atol=1e-6)  # no roll: camera x stays horizontal
    assert (rot[:, 1, 1] > 0).all()  # camera y points up
    # Larger yaw moves the camera towards -x (azimuth measured as upstream: pi/2 is the +z axis).
    assert (pos[1:, 0] < pos[:-1, 0]).all()

    labels = cam.orbit_labels(8)
    assert labels.shape == (8, 25)
    assert torch.allclose(cam.split_label(labels)[0][:, :3, 3].norm(dim=-1), torch.full((8,), 4.2), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Rays


def test_identity_camera_rays_follow_fov() -> None:
    res = 5
    c2w = torch.eye(4)[None]
    k = cam.make_intrinsics(FOCAL_12)
    origins, dirs = sample_rays(c2w, k, res)
    assert origins.shape == dirs.shape == (1, res * res, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, res * res))
    assert torch.equal(origins, torch.zeros_like(origins))
    grid = dirs.reshape(res, res, 3)
    assert torch.allclose(grid[2, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-7)  # image centre
    # Row-major, x to the right, image rows go down (world -y).
    top_left, top_right, bottom_left = grid[0, 0], grid[0, -1], grid[-1, 0]
    assert top_left[0] < 0 < top_right[0] and top_left[1] > 0 > bottom_left[1]
    # Pixel centres sit (R-1)/2 pixels from the axis; extrapolated to the image edge the half-angle is 6 deg.
    for ray in (top_left, top_right, bottom_left):
        for axis in (0, 1):
            tan_centre = abs(ray[axis] / ray[2]).item()
            tan_edge = tan_centre * 0.5 / (0.5 - 0.5 / res)
            assert math.degrees(math.atan(tan_edge)) == pytest.approx(6.0, abs=1e-4)


def test_rays_of_the_inference_camera_and_patches() -> None:
    label = cam.inference_label(2)
    c2w, k = cam.split_label(label)
    origins, dirs = sample_rays(c2w, k, 16)
    assert torch.allclose(origins, torch.tensor([0.0, 0.01, 4.2]).expand_as(origins))
    # A patch of the 16x16 grid reproduces the same rays.
    _, patch = sample_rays(c2w, k, 4, full_resolution=16, patch_offsets=[(3, 5), (10, 0)])
    full = dirs.reshape(2, 16, 16, 3)
    assert torch.equal(patch[0].reshape(4, 4, 3), full[0, 3:7, 5:9])
    assert torch.equal(patch[1].reshape(4, 4, 3), full[1, 10:14, 0:4])


def test_ray_box_limits_closed_form() -> None:
    origins = torch.tensor([[[0.0, 0.01, 4.2], [0.0, 0.0, 4.2], [1.0, 0.2, 0.0]]])
    dirs = torch.nn.functional.normalize(
        torch.tensor([[[0.0, 0.0, -1.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 0.0]]]), dim=-1
    )
    start, end = ray_box_limits(origins, dirs, 1.3)
    assert start[0, :, 0].tolist() == pytest.approx([3.55, -1.0, 0.35], abs=1e-6)
    assert end[0, :, 0].tolist() == pytest.approx([4.85, -2.0, 1.65], abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Triplanes and decoder


def test_sample_from_planes_is_bilinear_on_the_official_axes() -> None:
    h, w, box = 6, 8, 1.3
    cols = torch.arange(w, dtype=torch.float32).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    # Channel 0 = column index, channel 1 = row index, plus 100 * plane index to identify the plane.
    planes = torch.stack([torch.stack([cols + 100 * p, rows + 100 * p]) for p in range(3)])[None]
    pts = torch.tensor([[[0.1, -0.2, 0.3], [-0.25, 0.05, 0.0], [0.2, 0.2, -0.2]]])
    got = sample_from_planes(planes, pts, box)
    assert got.shape == (1, 3, 3, 2)
    g = 2 * pts[0] / box  # grid coordinates in [-1, 1]
    for p, (a, b) in enumerate([(0, 1), (1, 2), (2, 0)]):  # planes xy, yz, zx
        col = ((g[:, a] + 1) * w - 1) / 2  # align_corners=False
        row = ((g[:, b] + 1) * h - 1) / 2
        assert torch.allclose(got[0, p, :, 0], col + 100 * p, atol=1e-5)
        assert torch.allclose(got[0, p, :, 1], row + 100 * p, atol=1e-5)

    # A random plane sampled at a texel centre returns that texel; far outside the box gives zeros.
    rnd = torch.randn(1, 3, 4, h, w)
    i, j = 2, 5
    x = ((2 * j + 1) / w - 1) * box / 2
    y = ((2 * i + 1) / h - 1) * box / 2
    at_texel = sample_from_planes(rnd, torch.tensor([[[x, y, 0.0], [2.0, 2.0, -2.0]]]), box)
    assert torch.allclose(at_texel[0, 0, 0], rnd[0, 0, :, i, j], atol=1e-6)
    assert torch.equal(at_texel[0, :, 1], torch.zeros(3, 4))
    # A list of planes is summed; box_warp_scale shrinks the cube.
    both = sample_from_planes([rnd, 2 * rnd], torch.tensor([[[x, y, 0.0]]]) * 0.9, box, box_warp_scale=0.9)
    assert torch.allclose(both[0, 0, 0], 3 * rnd[0, 0, :, i, j], atol=1e-5)


def test_decoder_state_dict_matches_official() -> None:
    expected = {
        "decoder.net.0.weight": [64, 32],
        "decoder.net.0.bias": [64],
        "decoder.out_sigma.weight": [1, 64],
        "decoder.out_sigma.bias": [1],
        "decoder.out_rgb.weight": [32, 64],
        "decoder.out_rgb.bias": [32],
    }
    if STATE_DICT_JSON.is_file():
        official = json.loads(STATE_DICT_JSON.read_text())
        assert {k: v for k, v in official.items() if k.startswith("decoder.")} == expected
    decoder = TriplaneNeRFDecoder(n_features=32, output_dim=32)
    got = {f"decoder.{k}": list(v.shape) for k, v in decoder.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in decoder.parameters()) == 4257
    # Zero-initialised density head; features squashed into (-0.001, 1.001).
    out = decoder(torch.randn(2, 3, 10, 32) * 10)
    assert out.rgb.shape == (2, 10, 32) and out.sigma.shape == (2, 10, 1)
    assert torch.equal(out.sigma, torch.zeros_like(out.sigma))
    assert out.rgb.min() > -0.001 and out.rgb.max() < 1.001
    # Equalized-lr layers (runtime gain 1/sqrt(fan_in)) and the MipNeRF sigmoid widening, by hand.
    with torch.no_grad():
        decoder.net[0].weight.fill_(1.0)
        decoder.net[0].bias.zero_()
        decoder.out_sigma.weight.fill_(1.0)
        decoder.out_sigma.bias.fill_(0.5)
        decoder.out_rgb.weight.zero_()
        decoder.out_rgb.bias.copy_(torch.linspace(-20, 20, 32))
        out = decoder(torch.ones(1, 3, 1, 32))
    hidden = math.log1p(math.exp(math.sqrt(32)))  # softplus(32 / sqrt(32))
    assert out.sigma.item() == pytest.approx(64 * hidden / 8 + 0.5, rel=1e-5)
    assert out.rgb[0, 0, 0].item() == pytest.approx(-0.001, abs=1e-8)
    assert out.rgb[0, 0, -1].item() == pytest.approx(1.001, abs=1e-7)


# ----------------------------------------------------------------------------------------------------------
# Sampling along rays


def test_sample_pdf_is_the_inverse_cdf() -> None:
    bins = torch.tensor([[0.0, 1.0, 2.0, 4.0, 5.0]])
    weights = torch.tensor([[1.0, 0.0, 3.0, 4.0]])
    u = np.linspace(0, 1, 9)
    got = sample_pdf(bins, weights, 9, deterministic=True)
    w = np.array([1, 0, 3, 4]) + 1e-5  # the sampler's eps
    cdf = np.concatenate([[0.0], np.cumsum(w) / w.sum()])
    # np.interp on a flat CDF segment picks its right end, as the sampler does for u on a bin edge.
    expected = np.interp(u, cdf, bins[0].numpy())
    assert np.allclose(got[0].numpy(), expected, atol=1e-5)
    assert not ((got > 1.001) & (got < 1.999)).any()  # nothing inside the zero-weight bin [1, 2]


def test_importance_samples_follow_the_weights() -> None:
    s, peak = 48, 30
    depths = torch.linspace(3.55, 4.85, s).reshape(1, 1, s, 1).repeat(1, 2, 1, 1)
    weights = torch.zeros(1, 2, s - 1, 1)
    weights[:, :, peak] = 1.0
    mids = 0.5 * (depths[0, 0, 1:, 0] + depths[0, 0, :-1, 0])  # mids[j] is the centre of interval j
    # Upstream pools the S-1 interval weights (max then average, width 2: 0.5, 1, 0.5 around the peak), adds
    # 0.01, and uses the inner S-3 of them as the pdf of the bins [mids[j], mids[j+1]], j = 0..S-3, so the
    # pooled weight of interval j lands on bin j-1: the sampled mass sits half an interval nearer the camera.
    lo, hi = mids[peak - 2].item(), mids[peak + 1].item()
    for det in (True, False):
        torch.manual_seed(0)
        fine = sample_importance(depths, weights, 48, deterministic=det)
        assert fine.shape == (1, 2, 48, 1)
        inside = ((fine >= lo) & (fine <= hi)).float().mean().item()
        # Mass of those three bins: (0.5 + 1 + 0.5 + 3 * 0.01) / (2 + 45 * 0.01) ~ 0.83, for 3 of 45 bins.
        assert inside > 0.75
        core = ((fine >= mids[peak - 1]) & (fine <= mids[peak])).float().mean().item()
        assert core > 0.35  # 1.01 / 2.45 of the mass in the bin just before the peak interval's centre
    uniform = sample_importance(depths, torch.full_like(weights, 0.3), 48, deterministic=True)
    spacing = torch.diff(uniform[0, 0, :, 0])
    assert torch.allclose(spacing, spacing.mean().expand_as(spacing), rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _sphere_field(center: torch.Tensor, radius: float, sigma: float, color: torch.Tensor):
    """Constant density ``sigma`` (after the marcher's softplus(raw - 1)) and colour inside a sphere."""
    raw_inside = 1.0 + math.log(math.expm1(sigma))

    def field(points: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = ((points - center) ** 2).sum(-1, keepdim=True) <= radius**2
        raw = torch.where(inside, raw_inside, -1e4)
        rgb = torch.where(inside, color, torch.zeros_like(color)).expand(*points.shape[:-1], 3)
        return rgb, raw

    return field


def _chords(origins: torch.Tensor, dirs: torch.Tensor, center: torch.Tensor, radius: float):
    """Entry/exit distances of unit rays with a sphere (NaN when missed)."""
    oc = origins - center
    b = (dirs * oc).sum(-1)
    disc = b**2 - ((oc**2).sum(-1) - radius**2)
    root = torch.sqrt(disc.clamp_min(0))
    t0 = torch.where(disc > 0, -b - root, torch.nan)
    t1 = torch.where(disc > 0, -b + root, torch.nan)
    return t0, t1


def _interval_length_at(depths: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Length of the sample interval containing ``t`` (rays x samples), 0 where ``t`` is NaN."""
    idx = torch.searchsorted(depths, torch.nan_to_num(t, nan=0.0)[:, None]).clamp(1, depths.shape[1] - 1)
    length = (depths.gather(1, idx) - depths.gather(1, idx - 1))[:, 0]
    return torch.where(torch.isnan(t), torch.zeros_like(length), length)


@pytest.mark.parametrize("importance", [48, 0])
def test_constant_density_sphere_matches_closed_form(importance: int) -> None:
    res, sigma, radius = 16, 2.5, 0.4
    center = torch.tensor([0.12, -0.08, 0.05])
    color = torch.tensor([0.2, 0.5, 0.9])
    background = torch.tensor([0.7, 0.1, 0.3])
    c2w, k = cam.split_label(cam.inference_label(1))
    origins, dirs = sample_rays(c2w, k, res)
    renderer = ImportanceRenderer(
        RenderingOptions(depth_resolution=48, depth_resolution_importance=importance)
    )
    out = renderer.eval().render_field(
        _sphere_field(center, radius, sigma, color), origins, dirs, cam_z=cam.camera_z(c2w)
    )
    n_samples = 48 + importance
    assert out.all_depths.shape == (1, res * res, n_samples, 1)
    depths = out.all_depths[0, :, :, 0]
    assert torch.allclose(depths[:, 0], torch.full((res * res,), 3.55)) and torch.allclose(
        depths[:, -1], torch.full((res * res,), 4.85)
    )

    t0, t1 = _chords(origins[0], dirs[0], center, radius)
    hit = ~torch.isnan(t0)
    assert 0.3 < hit.float().mean() < 0.95  # some rays miss, most hit
    length = torch.nan_to_num(t1 - t0)
    alpha_true = 1 - torch.exp(-sigma * length)
    # Intervals straddling the surface average a huge negative raw density with the inside one, so they get
    # zero density: the optical depth is short by at most sigma * (entry + exit interval lengths).
    bound = sigma * (_interval_length_at(depths, t0) + _interval_length_at(depths, t1)) + 1e-5
    alpha = out.opacity[0, :, 0]
    assert (alpha <= alpha_true + 1e-5).all()
    assert ((alpha_true - alpha) <= bound).all()
    assert torch.allclose(out.t_bg[0, :, 0], 1 - alpha)
    assert torch.equal(alpha[~hit], torch.zeros_like(alpha[~hit]))
    coarse_spacing = 1.3 / 47
    if importance:
        # The fine samples crowd onto the sphere, so the straddling intervals are shorter than coarse ones
        # (coarse only: the bound is 2 sigma spacing on every hit ray).
        assert bound[hit].mean() < 0.75 * 2 * sigma * coarse_spacing
        window = (t0 - coarse_spacing)[:, None], (t1 + coarse_spacing)[:, None]
        all_in = ((depths >= window[0]) & (depths <= window[1])).sum(1)
        coarse = torch.linspace(3.55, 4.85, 48)[None]  # deterministic coarse depths
        coarse_in = ((coarse >= window[0]) & (coarse <= window[1])).sum(1)
        fine_frac = ((all_in - coarse_in) / importance)[hit]
        assert fine_frac.mean() > 0.75 and fine_frac.mean() > 1.5 * (coarse_in[hit] / 48).mean()

    # Colour: constant inside, so feature = colour * opacity, then the reconstructor's background blend.
    assert torch.allclose(out.features[0], color * alpha[:, None], atol=1e-5)
    image = composite_background(
        rays_to_image(out.features, res, res),
        rays_to_image(out.t_bg, res, res),
        background.reshape(1, 3, 1, 1).expand(1, 3, res, res),
    )
    expected = color[:, None] * alpha_true + background[:, None] * (1 - alpha_true)
    err = (image[0].reshape(3, -1) - expected).abs()
    assert (err <= bound * (color - background).abs()[:, None] + 1e-5).all()

    # Expected depth given a hit: t0 + 1/sigma - L exp(-sigma L) / (1 - exp(-sigma L)); the midpoint
    # quadrature on samples spaced at most one coarse interval is accurate to about that spacing.
    big = hit & (length > 0.2)
    e = torch.exp(-sigma * length[big])
    depth_true = t0[big] + 1 / sigma - length[big] * e / (1 - e)
    assert (out.depth[0, big, 0] - depth_true).abs().max() < coarse_spacing
    assert (out.depth[0, ~hit, 0] == depths.max()).all()  # no weight: clamped to the far end


def test_reconstructor_pipeline_constant_density_and_modes() -> None:
    torch.manual_seed(0)
    c2w, k = cam.split_label(cam.inference_label(2))
    origins, dirs = sample_rays(c2w, k, 8)
    decoder = TriplaneNeRFDecoder()
    planes = torch.zeros(2, 3, 32, 16, 16)
    renderer = ImportanceRenderer()
    assert renderer.options == RenderingOptions.from_official(
        {
            "depth_resolution": 48,
            "depth_resolution_importance": 48,
            "ray_start": "auto-plane",
            "ray_end": "auto-plane",
            "box_warp": 1.3,
            "clamp_mode": "softplus",
            "c_scale": 1.0,
        }
    )
    out = renderer.eval()(planes, decoder, origins, dirs, cam_z=cam.camera_z(c2w))
    # Zero planes + zero-initialised density head: raw sigma 0 everywhere, density softplus(-1) over the
    # 'auto-plane' range |cam_z| +- 0.65 (length 1.3 for every ray).
    alpha = 1 - math.exp(-math.log1p(math.exp(-1.0)) * 1.3)
    assert torch.allclose(out.opacity, torch.full_like(out.opacity, alpha), atol=1e-5)
    rgb = decoder(torch.zeros(1, 3, 1, 32)).rgb[0, 0]
    assert torch.allclose(out.features, rgb * alpha, atol=1e-5)

    # Deterministic in eval mode (and chunking changes nothing); stochastic in train mode.
    planes = torch.randn(2, 3, 32, 16, 16)
    with torch.no_grad():
        decoder.out_sigma.weight.normal_()
    a = renderer(planes, decoder, origins, dirs, cam_z=cam.camera_z(c2w))
    b = renderer(planes, decoder, origins, dirs, cam_z=cam.camera_z(c2w), chunk=24)
    assert torch.allclose(a.features, b.features, atol=1e-6) and torch.equal(a.all_depths, b.all_depths)
    renderer.train()
    c = renderer(planes, decoder, origins, dirs, cam_z=cam.camera_z(c2w))
    assert not torch.equal(a.all_depths, c.all_depths)
    # Upstream quirk kept: in 'auto-plane' mode all rays of a batch element share the jittered coarse depths.
    coarse = renderer.coarse_depths(origins, dirs, cam.camera_z(c2w), deterministic=False)
    assert torch.equal(coarse[:, :1].expand_as(coarse), coarse)
    # A deformer is applied before plane sampling.
    shifted = renderer(
        planes,
        decoder,
        origins,
        dirs,
        cam_z=cam.camera_z(c2w),
        deterministic=True,
        deformer=lambda p: p + 10.0,
    )  # every point leaves the box -> zero features again
    raw = decoder(torch.zeros(1, 3, 1, 32)).sigma.reshape(())
    alpha = 1 - torch.exp(-torch.nn.functional.softplus(raw - 1) * 1.3)
    assert torch.allclose(shifted.opacity, alpha.expand_as(shifted.opacity), atol=1e-5)


def test_eg3d_plane_projection_matches_the_plane_matrices():
    """``plane_axes='xy-xz-zy'`` is EG3D's projection: the points times the inverse of each plane's axis matrix
    (``generate_planes``), first two components kept; the default stays Portrait4D's (x, y), (y, z), (z, x)."""
    from avatar.render.triplane import project_onto_planes

    planes = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                           [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                           [[0, 0, 1], [0, 1, 0], [1, 0, 0]]], dtype=torch.float32)
    pts = torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([(pts @ torch.linalg.inv(p))[..., :2] for p in planes], dim=1).reshape(6, 7, 2)
    torch.testing.assert_close(project_onto_planes(pts, "xy-xz-zy"), expected)
    x, y, z = pts.unbind(-1)
    default = torch.stack([torch.stack(p, -1) for p in ((x, y), (y, z), (z, x))], dim=1).reshape(6, 7, 2)
    assert torch.equal(project_onto_planes(pts), default)
    with pytest.raises(ValueError, match="plane_axes"):
        project_onto_planes(pts, "xyz")


def test_renderer_option_selects_the_plane_projection():
    """A plane whose features vary along one axis is read along the axis the convention names."""
    from avatar.render.triplane import RenderingOptions, sample_from_planes

    ramp = torch.linspace(-1, 1, 8)
    planes = torch.zeros(1, 3, 1, 8, 8)
    planes[0, 1, 0] = ramp[:, None].expand(8, 8)  # plane 1 varies along its height (grid y: 2nd coordinate)
    pts = torch.tensor([[[0.0, 0.4, -0.4]]])  # y = 0.4, z = -0.4
    yz = sample_from_planes(planes, pts, box_warp=2.0)[0, 1, 0, 0]  # Portrait4D: plane 1 = (y, z) -> reads z
    xz = sample_from_planes(planes, pts, box_warp=2.0, plane_axes="xy-xz-zy")[0, 1, 0, 0]  # EG3D: (x, z) -> z
    assert float(yz) < 0 and float(xz) < 0
    planes[0, 1, 0] = ramp[None, :].expand(8, 8)  # now along its width (1st coordinate)
    yz = sample_from_planes(planes, pts, box_warp=2.0)[0, 1, 0, 0]  # reads y = 0.4
    xz = sample_from_planes(planes, pts, box_warp=2.0, plane_axes="xy-xz-zy")[0, 1, 0, 0]  # reads x = 0
    assert float(yz) > 0.2 and abs(float(xz)) < 1e-6
    assert RenderingOptions().plane_axes == "xy-yz-zx"
    assert RenderingOptions.from_dict({**RenderingOptions().to_dict(), "plane_axes": "xy-xz-zy"}).plane_axes == "xy-xz-zy"
