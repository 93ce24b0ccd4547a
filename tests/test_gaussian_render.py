"""The Gaussian rasteriser (avatar.render.gaussians): the PyTorch reference against closed forms and a naive
per-pixel compositor, its gradients, culling, batching and errors; gsplat against the reference on CUDA; the bench.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import avatar.render.gaussians as G
from avatar.errors import InputError, UnknownOptionValueError
from avatar.render import GaussianRenderOutput, gaussian_footprint, gsplat_available, rasterize_gaussians
from avatar.render.gaussians import GaussianRasterizationUnavailableError


def _camera(b: int, f: float, cx: float, cy: float, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    viewmats = torch.eye(4, dtype=dtype).repeat(b, 1, 1)
    Ks = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype).repeat(b, 1, 1)
    return viewmats, Ks


def _axis_angle_quat_and_matrix(axis: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(w, x, y, z) quaternion and the Rodrigues rotation matrix of the same rotation (independent formulas)."""
    k = axis / np.linalg.norm(axis)
    quat = np.array([math.cos(angle / 2), *(math.sin(angle / 2) * k)])
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    return quat, rot


def _pixel_centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return u, v


def _random_scene(b: int, n: int, c: int, width: int, height: int, seed: int, dtype=torch.float32,
                  device: str = "cpu") -> dict:
    """Random scenes in front of a camera (some Gaussians behind it, near the image border or off screen)."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(b, n, 2, generator=g) - 0.5) * 1.4
    z = 1.0 + 2.0 * torch.rand(b, n, 1, generator=g)
    means = torch.cat([xy * z, z], dim=-1)
    means[:, : n // 20, 2] *= -1  # behind the camera
    scales = 0.02 * torch.exp(0.6 * torch.randn(b, n, 3, generator=g))
    scene = {
        "means": means,
        "quats": torch.randn(b, n, 4, generator=g),
        "scales": scales,
        "opacities": torch.rand(b, n, generator=g),
        "features": torch.randn(b, n, c, generator=g),
    }
    f = 0.9 * width
    viewmats, Ks = _camera(b, f, width / 2, height / 2)
    scene |= {"viewmats": viewmats, "Ks": Ks}
    out = {k: v.to(dtype=dtype, device=device) for k, v in scene.items()}
    return out | {"width": width, "height": height}


# ---------------------------------------------------------------------------------------------------------
# (a) one Gaussian against the closed form


@pytest.mark.parametrize("case", ["isotropic", "anisotropic", "off_axis_tilted"])
def test_one_gaussian_footprint_matches_closed_form(case: str) -> None:
    width, height, f, cx, cy = 48, 40, 60.0, 24.0, 20.0
    opacity, feature = 0.8, np.array([0.25, -1.5])
    if case == "isotropic":
        mean, axis, angle, scales = np.array([0.0, 0.0, 2.0]), np.array([0.0, 0.0, 1.0]), 0.0, np.full(3, 0.15)
    elif case == "anisotropic":  # axes turned in the image plane
        mean, axis, angle, scales = np.array([0.0, 0.0, 2.0]), np.array([0.0, 0.0, 1.0]), 0.6, np.array([0.3, 0.1, 0.2])
    else:  # off the optical axis, turned out of the image plane: the full J W Sigma W^T J^T
        mean, axis, angle, scales = np.array([0.3, -0.2, 2.5]), np.array([1.0, 2.0, -0.5]), 1.1, np.array([0.25, 0.1, 0.3])
    quat, rot = _axis_angle_quat_and_matrix(axis, angle)
    # a camera that is not the identity (turned about its z axis, moved); the world Gaussian is placed so that its
    # camera-space mean and axes are `mean` and `rot`
    cam_rot = _axis_angle_quat_and_matrix(np.array([0.0, 0.0, 1.0]), 0.4)[1]
    t = np.array([0.1, 0.0, 0.5])
    world_mean = cam_rot.T @ (mean - t)
    world_rot = cam_rot.T @ rot
    # its quaternion: the Hamilton product q(cam_rot^T) q(rot), so that R(q) = cam_rot^T rot
    w1, x1, y1, z1 = _axis_angle_quat_and_matrix(np.array([0.0, 0.0, 1.0]), -0.4)[0]
    w2, x2, y2, z2 = quat
    q = np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                  w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])

    viewmat = np.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = cam_rot, t
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    as_t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)[None]  # noqa: E731
    out = rasterize_gaussians(as_t([world_mean]), as_t([2.0 * q]), as_t([scales]), as_t([opacity]),
                              as_t([feature]), as_t(viewmat), as_t(K), width, height, return_depth=True,
                              backend="reference")

    # closed form, in camera space
    sigma3 = world_rot @ np.diag(scales**2) @ world_rot.T
    sigma_c = cam_rot @ sigma3 @ cam_rot.T
    x, y, z = mean
    jac = np.array([[f / z, 0, -f * x / z**2], [0, f / z, -f * y / z**2]])
    sigma2 = jac @ sigma_c @ jac.T + 0.3 * np.eye(2)
    centre = np.array([f * x / z + cx, f * y / z + cy])
    u, v = _pixel_centres(width, height)
    d = np.stack([u - centre[0], v - centre[1]], axis=-1)
    maha = np.einsum("...i,ij,...j->...", d, np.linalg.inv(sigma2), d)
    alpha = opacity * np.exp(-0.5 * maha)
    alpha[alpha < 1 / 255] = 0.0
    assert alpha.max() > 0.5 and (alpha > 0).sum() > 20  # the test sees a real footprint

    np.testing.assert_allclose(out.alpha[0, 0].numpy(), alpha, atol=1e-12)
    np.testing.assert_allclose(out.features[0].numpy(), alpha[None] * feature[:, None, None], atol=1e-12)
    np.testing.assert_allclose(out.depth[0, 0].numpy(), alpha * z, atol=1e-12)
    extent = min(3.33, math.sqrt(2 * math.log(opacity * 255)))
    assert out.radii[0, 0].item() == max(math.ceil(extent * math.sqrt(sigma2[0, 0])),
                                         math.ceil(extent * math.sqrt(sigma2[1, 1])))
    fp = gaussian_footprint(as_t([world_mean]), as_t([q]), as_t([scales]), as_t([opacity]), as_t(viewmat), as_t(K),
                            width, height)
    np.testing.assert_allclose(fp.covars2d[0, 0].numpy(), sigma2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fp.means2d[0, 0].numpy(), centre, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fp.conics[0, 0].numpy(), np.linalg.inv(sigma2)[[0, 0, 1], [0, 1, 1]], rtol=1e-10, atol=1e-14)


def test_jacobian_is_clamped_outside_the_view_as_gsplat() -> None:
    # far off to the side (|x/z| beyond 1.3x the half field of view): J uses the clamped x/z, the mean does not
    width = height = 32
    f, z = 40.0, 1.0
    x = 1.5  # x/z = 1.5 > lim = (32 - 16) / 40 + 0.3 * 16 / 40 = 0.52
    means = torch.tensor([[[x, 0.0, z]]], dtype=torch.float64)
    quats = torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64)
    scales = torch.tensor([[[0.2, 0.2, 0.2]]], dtype=torch.float64)
    viewmats, Ks = _camera(1, f, 16.0, 16.0)
    fp = gaussian_footprint(means, quats, scales, None, viewmats, Ks, width, height)
    lim = 16 / f + 0.3 * 16 / f
    jac = np.array([[f / z, 0, -f * lim / z], [0, f / z, 0]])
    want = jac @ np.diag([0.04] * 3) @ jac.T + 0.3 * np.eye(2)
    np.testing.assert_allclose(fp.covars2d[0, 0].numpy(), want, rtol=1e-12)
    assert fp.means2d[0, 0, 0].item() == pytest.approx(f * x + 16.0)


# ---------------------------------------------------------------------------------------------------------
# (b) depth order, and a naive compositor on random scenes


def _two_gaussians(z_red: float, z_green: float, opacity: float = 0.7) -> GaussianRenderOutput:
    # both on the optical axis with scales proportional to depth: the same screen footprint whatever the order
    means = torch.tensor([[[0.0, 0.0, z_red], [0.0, 0.0, z_green]]], dtype=torch.float64)
    scales = 0.1 * torch.tensor([[[z_red] * 3, [z_green] * 3]], dtype=torch.float64)
    quats = torch.tensor([[[1.0, 0, 0, 0], [1.0, 0, 0, 0]]], dtype=torch.float64)
    features = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    opacities = torch.full((1, 2), opacity, dtype=torch.float64)
    viewmats, Ks = _camera(1, 50.0, 16.5, 16.5)  # the mean lands on pixel (16, 16)'s centre
    return rasterize_gaussians(means, quats, scales, opacities, features, viewmats, Ks, 32, 32, backend="reference")


def test_depth_order_decides_the_colour() -> None:
    red_front, green_front = _two_gaussians(2.0, 3.0), _two_gaussians(3.0, 2.0)
    a = 0.7
    centre = red_front.features[0, :, 16, 16]
    torch.testing.assert_close(centre, torch.tensor([a, (1 - a) * a, 0.0], dtype=torch.float64))
    torch.testing.assert_close(green_front.features[0, :, 16, 16], torch.tensor([(1 - a) * a, a, 0.0],
                                                                               dtype=torch.float64))
    # everywhere: swapping the depths swaps the red and green channels, alpha does not change
    torch.testing.assert_close(red_front.features[0, [1, 0, 2]], green_front.features[0])
    torch.testing.assert_close(red_front.alpha, green_front.alpha)
    assert red_front.features[0, 0].sum() > red_front.features[0, 1].sum()


def test_transmittance_stop_excludes_the_gaussian_that_would_cross_it() -> None:
    # opacity 0.95 on one pixel: T = 0.05, 0.0025, 1.25e-4, then 6.25e-6 <= 1e-4, so the 4th and later are skipped
    n = 6
    means = torch.zeros(1, n, 3, dtype=torch.float64)
    means[..., 2] = 1.0 + torch.arange(n, dtype=torch.float64)
    scales = means[..., 2:].expand(1, n, 3) * 0.2
    quats = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(1, n, 4)
    features = torch.arange(1.0, n + 1, dtype=torch.float64).reshape(1, n, 1)
    viewmats, Ks = _camera(1, 40.0, 8.5, 8.5)
    out = rasterize_gaussians(means, quats, scales, torch.full((1, n), 0.95, dtype=torch.float64), features,
                              viewmats, Ks, 16, 16, backend="reference")
    weights = [0.95, 0.05 * 0.95, 0.0025 * 0.95]
    assert out.features[0, 0, 8, 8].item() == pytest.approx(sum(w * (i + 1) for i, w in enumerate(weights)))
    assert out.alpha[0, 0, 8, 8].item() == pytest.approx(1 - 1.25e-4)


def _naive_composite(scene: dict, background: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, all visible Gaussians whose tile range holds the pixel's tile, front to back, one at a time."""
    width, height = scene["width"], scene["height"]
    fp = gaussian_footprint(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmats"],
                            scene["Ks"], width, height)
    u, v = (torch.tensor(a, dtype=torch.float64) for a in _pixel_centres(width, height))
    tile_u, tile_v = (u // 16).long(), (v // 16).long()
    feats, alphas = [], []
    for b in range(scene["means"].shape[0]):
        out = torch.zeros(height, width, scene["features"].shape[-1], dtype=torch.float64)
        trans = torch.ones(height, width, dtype=torch.float64)
        done = torch.zeros(height, width, dtype=torch.bool)
        order = sorted(fp.visible[b].nonzero().squeeze(1).tolist(), key=lambda i: (fp.depths[b, i].item(), i))
        for i in order:
            mx, my = fp.means2d[b, i].tolist()
            rx, ry = fp.radii[b, i].tolist()
            x0, x1 = max(0, math.floor((mx - rx) / 16)), max(0, math.ceil((mx + rx) / 16))
            y0, y1 = max(0, math.floor((my - ry) / 16)), max(0, math.ceil((my + ry) / 16))
            in_tiles = (tile_u >= x0) & (tile_u < x1) & (tile_v >= y0) & (tile_v < y1)
            ca, cb, cc = fp.conics[b, i].tolist()
            dx, dy = mx - u, my - v
            sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            alpha = torch.clamp(scene["opacities"][b, i] * torch.exp(-sigma), max=0.999)
            use = in_tiles & (sigma >= 0) & (alpha >= 1 / 255) & ~done
            next_t = trans * (1 - alpha)
            stop = use & (next_t <= 1e-4)
            done |= stop
            use &= ~stop
            out += torch.where(use, alpha * trans, 0.0)[..., None] * scene["features"][b, i]
            trans = torch.where(use, next_t, trans)
        if background is not None:
            out = out + trans[..., None] * background[b]
        feats.append(out.permute(2, 0, 1))
        alphas.append(1 - trans)
    return torch.stack(feats), torch.stack(alphas)[:, None]


@pytest.mark.parametrize("small_rounds", [False, True])
def test_reference_matches_a_naive_per_pixel_compositor(monkeypatch: pytest.MonkeyPatch, small_rounds: bool) -> None:
    if small_rounds:  # many rounds of few list entries and many tile groups: the chunking must not matter
        monkeypatch.setattr(G, "_CHUNK_ELEMENTS", 256 * 8)
        monkeypatch.setattr(G, "_MIN_ROUND", 3)
    scene = _random_scene(2, 80, 3, 40, 24, seed=1, dtype=torch.float64)
    scene["opacities"][0, :40] = 0.99  # some pixels reach the transmittance stop
    scene["scales"][0, :40] *= 15
    background = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]], dtype=torch.float64)
    out = rasterize_gaussians(**scene, background=background, backend="reference")
    want_features, want_alpha = _naive_composite(scene, background)
    assert (out.alpha > 1 - 2e-4).sum() > 50 and (out.alpha == 0).any()  # stopped pixels, empty pixels
    torch.testing.assert_close(out.features, want_features, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.alpha, want_alpha, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# (c) gradients


def test_gradients_flow_and_match_finite_differences() -> None:
    scene = _random_scene(1, 4, 2, 16, 16, seed=3, dtype=torch.float64)
    scene["means"] = torch.tensor([[[0.05, 0.0, 1.5], [-0.1, 0.05, 1.8], [0.0, -0.08, 2.0], [0.12, 0.1, 1.6]]],
                                  dtype=torch.float64)
    scene["scales"] = torch.full((1, 4, 3), 0.08, dtype=torch.float64) * torch.tensor([1.0, 0.7, 1.3])
    scene["opacities"] = torch.tensor([[0.6, 0.5, 0.8, 0.4]], dtype=torch.float64)
    names = ("means", "quats", "scales", "opacities", "features")
    inputs = tuple(scene[k].clone().requires_grad_(True) for k in names)
    background = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)

    def render(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kw = dict(zip(names, args[:5], strict=True))
        out = rasterize_gaussians(**kw, viewmats=scene["viewmats"], Ks=scene["Ks"], width=16, height=16,
                                  background=args[5], return_depth=True, backend="reference")
        return out.features, out.alpha, out.depth

    assert torch.autograd.gradcheck(render, (*inputs, background), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    features, alpha, depth = render(*inputs, background)
    (features.sum() + alpha.sum() + depth.sum()).backward()
    for name, t in zip((*names, "background"), (*inputs, background), strict=True):
        assert t.grad is not None and t.grad.abs().sum() > 0 and torch.isfinite(t.grad).all(), name


def test_gradients_are_finite_with_culled_gaussians_and_checkpointing() -> None:
    scene = _random_scene(1, 200, 4, 32, 32, seed=4)
    leaves = {k: scene[k].clone().requires_grad_(True) for k in ("means", "scales", "opacities", "features")}
    out = rasterize_gaussians(**(scene | leaves), backend="reference")
    out.features.square().mean().backward()
    assert (out.radii == 0).any()
    for name, t in leaves.items():
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name
    # the culled ones get no gradient
    assert leaves["features"].grad[out.radii == 0].abs().max() == 0


# ---------------------------------------------------------------------------------------------------------
# (d) background, (e) culling, (f) batches


def test_background_is_composited_behind_with_the_remaining_transmittance() -> None:
    scene = _random_scene(2, 60, 3, 32, 20, seed=5, dtype=torch.float64)
    background = torch.tensor([[1.0, 2.0, -3.0], [0.5, 0.0, 1.0]], dtype=torch.float64)
    plain = rasterize_gaussians(**scene, backend="reference", return_depth=True)
    with_bg = rasterize_gaussians(**scene, backend="reference", background=background, return_depth=True)
    want = plain.features + (1 - plain.alpha) * background[:, :, None, None]
    torch.testing.assert_close(with_bg.features, want)
    torch.testing.assert_close(with_bg.alpha, plain.alpha)
    torch.testing.assert_close(with_bg.depth, plain.depth)  # the background adds no depth
    empty = scene | {"opacities": torch.zeros_like(scene["opacities"])}
    out = rasterize_gaussians(**empty, backend="reference", background=background)
    torch.testing.assert_close(out.features, background[:, :, None, None].expand_as(out.features))
    assert out.alpha.abs().max() == 0 and (out.radii == 0).all()


def test_gaussians_behind_the_camera_or_outside_near_far_are_culled() -> None:
    def render(z: float, **kw: float) -> GaussianRenderOutput:
        means = torch.tensor([[[0.0, 0.0, z]]], dtype=torch.float64)
        viewmats, Ks = _camera(1, 30.0, 8.0, 8.0)
        return rasterize_gaussians(means, torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64),
                                   torch.full((1, 1, 3), 0.05 * abs(z), dtype=torch.float64),
                                   torch.full((1, 1), 0.9, dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64),
                                   viewmats, Ks, 16, 16, backend="reference", **kw)

    assert render(2.0).alpha.max() > 0.5 and render(2.0).radii.item() > 0
    for out in (render(-2.0), render(0.5, near_plane=1.0), render(5.0, far_plane=4.0), render(0.001)):
        assert out.radii.item() == 0 and out.alpha.abs().max() == 0 and out.features.abs().max() == 0
    # off screen (its box misses the image) and a transparent one
    viewmats, Ks = _camera(1, 30.0, 8.0, 8.0)
    fp = gaussian_footprint(torch.tensor([[[3.0, 0.0, 1.0], [0.0, 0.0, 1.0]]]), torch.tensor([[[1.0, 0, 0, 0]] * 2]),
                            torch.full((1, 2, 3), 0.01), torch.tensor([[0.9, 0.5 / 255]]), viewmats.float(),
                            Ks.float(), 16, 16)
    assert not fp.visible.any() and (fp.radii == 0).all()


def test_a_batch_renders_each_camera_as_alone() -> None:
    scene = _random_scene(2, 50, 4, 24, 18, seed=6, dtype=torch.float64)
    scene["viewmats"][1, :3, 3] = torch.tensor([0.1, -0.05, 0.3], dtype=torch.float64)  # a different camera
    scene["Ks"][1, 0, 0] = 20.0
    background = torch.randn(2, 4, dtype=torch.float64)
    both = rasterize_gaussians(**scene, background=background, return_depth=True, backend="reference")
    for b in range(2):
        one = {k: (v[b:b + 1] if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
        alone = rasterize_gaussians(**one, background=background[b:b + 1], return_depth=True, backend="reference")
        for name in ("features", "alpha", "depth", "radii"):
            torch.testing.assert_close(getattr(both, name)[b:b + 1], getattr(alone, name), rtol=0, atol=1e-12)
    assert not torch.equal(both.features[0], both.features[1])


def test_auto_backend_on_cpu_is_the_reference_and_dtypes_are_kept() -> None:
    scene = _random_scene(1, 40, 3, 20, 20, seed=7)
    auto = rasterize_gaussians(**scene)
    ref = rasterize_gaussians(**scene, backend="reference")
    assert auto.features.dtype == torch.float32 and auto.radii.dtype == torch.int32
    torch.testing.assert_close(auto.features, ref.features, rtol=0, atol=0)
    assert auto.depth is None and auto.features.shape == (1, 3, 20, 20) and auto.alpha.shape == (1, 1, 20, 20)


# ---------------------------------------------------------------------------------------------------------
# (g) errors


def test_bad_inputs_give_clear_errors() -> None:
    scene = _random_scene(1, 10, 3, 16, 16, seed=8)

    def call(**changes: object) -> None:
        rasterize_gaussians(**(scene | changes), backend="reference")

    with pytest.raises(InputError, match=r"means must have shape \(B, N, 3\)"):
        call(means=scene["means"][0])
    with pytest.raises(InputError, match=r"quats must have shape \(B, N, 4\)"):
        call(quats=scene["quats"][..., :3])
    with pytest.raises(InputError, match=r"features must have shape"):
        call(features=scene["features"][:, :5])
    with pytest.raises(InputError, match=r"viewmats must have shape \(B, 4, 4\)"):
        call(viewmats=scene["viewmats"][:, :3])
    with pytest.raises(InputError, match=r"background must have shape \(B, C\)"):
        call(background=torch.zeros(1, 4))
    with pytest.raises(InputError, match="scales must be positive"):
        call(scales=scene["scales"].clone().index_fill_(1, torch.tensor([3]), 0.0))
    with pytest.raises(InputError, match="scales must be positive"):
        call(scales=-scene["scales"])
    with pytest.raises(InputError, match=r"opacities must lie in \[0, 1\]"):
        call(opacities=scene["opacities"] + 1.0)
    with pytest.raises(InputError, match="one device"):
        call(features=scene["features"].to("meta"))
    with pytest.raises(InputError, match="floating-point"):
        call(opacities=(scene["opacities"] > 0.5).long())
    with pytest.raises(InputError, match="width must be a positive whole number"):
        call(width=0)
    with pytest.raises(InputError, match="near_plane"):
        call(near_plane=2.0, far_plane=1.0)
    with pytest.raises(UnknownOptionValueError, match="backend must be one of"):
        rasterize_gaussians(**scene, backend="cuda")  # type: ignore[arg-type]


def test_gsplat_backend_on_cpu_says_why_and_how_to_install() -> None:
    scene = _random_scene(1, 10, 3, 16, 16, seed=9)
    with pytest.raises(GaussianRasterizationUnavailableError, match="pip install avatar4d\\[gsplat\\]") as info:
        rasterize_gaussians(**scene, backend="gsplat")
    assert isinstance(info.value, ImportError) and "CUDA" in str(info.value)
    assert gsplat_available("cpu") is False


def test_missing_gsplat_is_reported_with_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_gsplat(name: str, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if name == "gsplat" or name.startswith("gsplat."):
            raise ImportError("No module named 'gsplat'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(G, "_gsplat_state", {})
    monkeypatch.setattr(builtins, "__import__", no_gsplat)
    with pytest.raises(GaussianRasterizationUnavailableError, match="does not import.*pip install avatar4d"):
        G._load_gsplat()
    with pytest.raises(GaussianRasterizationUnavailableError):  # remembered
        G._load_gsplat()


def test_gsplat_call_plumbing_with_a_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gsplat wrapper's arguments and output layout, on the CPU: a stand-in with gsplat 1.5.3's signature and
    return layout (``[B, C=1, H, W, D]``, per-axis radii in ``meta``) computed by the reference."""
    calls = []

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane, far_plane,
                      eps2d, packed, tile_size, backgrounds, render_mode, rasterize_mode):  # noqa: ANN001, ANN202
        b = means.shape[0]
        assert viewmats.shape == (b, 1, 4, 4) and Ks.shape == (b, 1, 3, 3) and colors.dim() == 3
        assert (packed, tile_size, rasterize_mode) == (False, 16, "classic") and means.dtype == torch.float32
        calls.append(render_mode)
        fp = gaussian_footprint(means, quats, scales, opacities, viewmats[:, 0], Ks[:, 0], width, height,
                                near_plane=near_plane, far_plane=far_plane, eps2d=eps2d)
        bgs = None if backgrounds is None else backgrounds[:, 0]
        if render_mode == "RGB+D":
            colors = torch.cat([colors, fp.depths[..., None]], dim=-1)
            bgs = None if bgs is None else torch.cat([bgs, torch.zeros(b, 1)], dim=-1)
        out = G._rasterize_reference(means, quats, scales, opacities, colors, viewmats[:, 0], Ks[:, 0], width, height,
                                     bgs, near_plane, far_plane, eps2d, False)
        return (out.features.permute(0, 2, 3, 1)[:, None], out.alpha.permute(0, 2, 3, 1)[:, None],
                {"radii": fp.radii[:, None]})

    monkeypatch.setattr(G, "_load_gsplat", lambda: rasterization)
    monkeypatch.setattr(G, "_check_gsplat_device", lambda device: None)
    scene = _random_scene(2, 60, 5, 36, 20, seed=10, dtype=torch.float64)
    background = torch.randn(2, 5, dtype=torch.float64)
    for depth in (False, True):
        got = rasterize_gaussians(**scene, background=background, return_depth=depth, backend="gsplat")
        want = rasterize_gaussians(**scene, background=background, return_depth=depth, backend="reference")
        assert got.features.dtype == torch.float64 and got.radii.dtype == torch.int32
        for name in ("features", "alpha", "depth", "radii"):
            a, b = getattr(got, name), getattr(want, name)
            if name == "depth" and not depth:
                assert a is None and b is None
                continue
            assert a.shape == b.shape, name
            torch.testing.assert_close(a, b.to(a.dtype), atol=1e-5, rtol=1e-5)
    assert calls == ["RGB", "RGB+D"]


# ---------------------------------------------------------------------------------------------------------
# (h) gsplat against the reference (CUDA)


def _gsplat_ready() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("gsplat", reason="gsplat is not installed (pip install avatar4d[gsplat])")
    if not gsplat_available("cuda"):  # installed but not built: a failure, with the reason
        with pytest.raises(GaussianRasterizationUnavailableError) as info:
            G._load_gsplat()
        pytest.fail(f"gsplat is installed but unusable: {info.value}")


def _assert_close_mostly(got: torch.Tensor, want: torch.Tensor, atol: float, what: str) -> None:
    """Close everywhere but a few pixels: a Gaussian within float32 rounding of the 1/255 alpha threshold or of the
    1e-4 transmittance stop may be counted by one backend and not the other (gsplat uses fast-math exp)."""
    diff = (got.float() - want.float()).abs()
    bad = (diff > atol).float().mean().item()
    assert diff.mean().item() < atol / 10, f"{what}: mean |diff| {diff.mean().item():.2e}"
    assert bad < 1e-3, f"{what}: {bad:.2%} of the values differ by more than {atol} (max {diff.max().item():.2e})"
    assert diff.max().item() < 0.05, f"{what}: max |diff| {diff.max().item():.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gsplat_matches_the_reference_on_random_scenes(seed: int) -> None:
    _gsplat_ready()
    width, height, channels = 128, 96, 32
    scene = _random_scene(2, 2000, channels, width, height, seed=seed, device="cuda")
    # large opaque ones too: pixels reach the transmittance stop and the 0.999 alpha clamp
    scene["opacities"][:, :400] = torch.tensor([0.995, 1.0], device="cuda").repeat(200)
    scene["scales"][:, :400] *= 3
    background = torch.randn(2, channels, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
    leaves = ("means", "scales", "opacities", "features")
    outs, grads = {}, {}
    for backend in ("gsplat", "reference"):
        inputs = scene | {k: scene[k].clone().requires_grad_(True) for k in leaves}
        out = rasterize_gaussians(**inputs, background=background, return_depth=True, backend=backend)
        assert out.features.shape == (2, channels, height, width) and out.features.dtype == torch.float32
        (out.features * torch.linspace(-1, 1, channels, device="cuda")[:, None, None]).sum().backward()
        outs[backend] = out
        grads[backend] = {k: inputs[k].grad for k in leaves}
    got, want = outs["gsplat"], outs["reference"]
    mismatch = (got.radii != want.radii).float().mean().item()
    assert mismatch < 1e-3, f"radii differ for {mismatch:.2%} of the Gaussians"
    assert (want.radii > 0).float().mean() > 0.4 and (want.alpha > 1 - 2e-4).float().mean() > 0.005  # dense
    _assert_close_mostly(got.features, want.features, 1e-3, "features")
    _assert_close_mostly(got.alpha, want.alpha, 1e-3, "alpha")
    _assert_close_mostly(got.depth / 3, want.depth / 3, 1e-3, "depth / 3")  # depths are up to 3
    for k in leaves:  # the same function, so the same gradients up to float32 noise
        g, w = grads["gsplat"][k], grads["reference"][k]
        rel = ((g - w).norm() / w.norm()).item()
        assert rel < 2e-2, f"gradient of {k}: relative L2 difference {rel:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gsplat_one_gaussian_and_auto_backend() -> None:
    _gsplat_ready()
    means = torch.tensor([[[0.1, -0.05, 2.0]]], device="cuda")
    quats = torch.tensor([[[0.9, 0.2, -0.3, 0.1]]], device="cuda")
    scales = torch.tensor([[[0.2, 0.1, 0.15]]], device="cuda")
    opacities = torch.tensor([[0.8]], device="cuda")
    features = torch.tensor([[[1.0, -2.0, 0.5]]], device="cuda")
    viewmats, Ks = (t.float().cuda() for t in _camera(1, 40.0, 24.0, 16.0))
    args = (means, quats, scales, opacities, features, viewmats, Ks, 48, 32)
    got = rasterize_gaussians(*args, backend="gsplat", return_depth=True)
    auto = rasterize_gaussians(*args, return_depth=True)
    want = rasterize_gaussians(*args, backend="reference", return_depth=True)
    for out in (got, auto):
        torch.testing.assert_close(out.alpha, want.alpha, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.features, want.features, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.depth, want.depth, atol=1e-5, rtol=0)
        assert torch.equal(out.radii, want.radii)


# ---------------------------------------------------------------------------------------------------------
# the bench


def test_gaussians_bench_runs_tiny_on_cpu(tmp_path, capsys) -> None:
    from avatar.bench import main

    rows_file = tmp_path / "rows.json"
    status = main(["gaussians", "--device", "cpu", "--num-gaussians", "100", "--resolution", "16", "--channels", "4",
                   "--batch-sizes", "1", "2", "--backends", "gsplat", "reference", "--iters", "2", "--warmup", "1",
                   "--json", str(rows_file)])
    assert status == 0
    text = capsys.readouterr().out
    rows = json.loads(rows_file.read_text())
    assert [(r["backend"], r["batch"]) for r in rows] == [("reference", 1), ("reference", 2)]
    assert all(r["ms_per_call"] > 0 and r["fps"] > 0 for r in rows)
    assert "| reference | 100 | 16x16 | 4 | 2 | forward |" in text
    assert "gsplat not timed: it needs a CUDA device" in text


def test_gaussians_bench_times_the_reference_smaller_above_the_limit(tmp_path, capsys) -> None:
    from avatar.bench import main

    rows_file = tmp_path / "rows.json"
    status = main(["gaussians", "--device", "cpu", "--num-gaussians", "1000", "--resolution", "48", "--channels", "2",
                   "--batch-sizes", "1", "--backends", "reference", "--iters", "1", "--warmup", "0", "--backward",
                   "--reference-limit", "1e5", "--reference-num-gaussians", "100", "--reference-resolution", "16",
                   "--json", str(rows_file)])
    assert status == 0
    text = capsys.readouterr().out
    rows = json.loads(rows_file.read_text())
    assert [(r["num_gaussians"], r["resolution"], r["passes"]) for r in rows] == [(100, 16, "forward+backward")]
    assert "reference not timed at 1000 Gaussians x 48^2" in text
