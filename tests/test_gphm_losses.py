"""GPHM losses: every term is zero on identical inputs and positive otherwise, the weights multiply, missing
targets are named; the guiding and Gaussian objectives on tiny models. CPU, offline."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from avatar.errors import ConfigError, InputError
from avatar.flame.synthetic import icosphere
from avatar.models.gphm import (
    GPHM,
    GaussianSet,
    GPHMLossConfig,
    GPHMOutput,
    GuidingGeometryModel,
    GuidingLossConfig,
    deformation_loss,
    eikonal_loss,
    front_camera,
    gphm_losses,
    guiding_losses,
    landmark_loss,
    laplacian_loss,
    photometric_loss,
    silhouette_loss,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().mean()


def _output(seed: int = 0, batch: int = 2, n: int = 10, k: int = 4, size: int = 8) -> GPHMOutput:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    gs = GaussianSet(means=r(batch, n, 3), quats=r(batch, n, 4), scales=r(batch, n, 3).exp(),
                     opacities=torch.rand(batch, n, generator=g), features=r(batch, n, 32), landmarks=r(batch, k, 3),
                     expression_offsets=r(batch, n, 3) * 0.01, non_face_offsets=r(batch, n, 3) * 0.01)
    feature_map = r(batch, 32, size, size).tanh()
    return GPHMOutput(feature_map=feature_map, image_raw=feature_map[:, :3], image=r(batch, 3, 2 * size, 2 * size).tanh(),
                      alpha=torch.rand(batch, 1, size, size, generator=g), depth=torch.rand(batch, 1, size, size),
                      landmarks=r(batch, k, 3), gaussians=gs)


# ---- terms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "shape"), [(photometric_loss, (2, 3, 8, 8)), (silhouette_loss, (2, 1, 8, 8)),
                                           (landmark_loss, (2, 5, 3))])
def test_comparison_terms_are_zero_on_identical_inputs_and_positive_otherwise(fn, shape: tuple[int, ...]) -> None:  # noqa: ANN001
    a = torch.rand(*shape)
    assert float(fn(a, a.clone())) == 0.0
    assert float(fn(a, a + 0.1 * torch.rand(*shape) + 0.01)) > 0.0


def test_photometric_loss_resizes_the_target_by_area() -> None:
    pred = torch.rand(1, 3, 4, 4)
    target = pred.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # the same image at twice the size
    assert float(photometric_loss(pred, target)) == pytest.approx(0.0, abs=1e-7)


def test_regularisers_are_zero_at_rest_and_positive_otherwise() -> None:
    zeros = torch.zeros(2, 10, 3)
    assert float(deformation_loss(zeros, zeros)) == 0.0
    assert float(deformation_loss(zeros + 0.1, zeros)) == pytest.approx(0.03)
    assert float(deformation_loss(zeros, zeros - 0.1)) == pytest.approx(0.03)
    v, f = icosphere(2)
    sphere = torch.tensor(v, dtype=torch.float32)[None] * 0.5
    faces = torch.tensor(f)
    assert float(laplacian_loss(torch.zeros_like(sphere), faces)) == 0.0  # everything at one point
    noisy = sphere * (1 + 0.1 * torch.randn(1, sphere.shape[1], 1, generator=torch.Generator().manual_seed(0)))
    assert float(laplacian_loss(noisy, faces)) > 2 * float(laplacian_loss(sphere, faces)) > 0
    # eikonal: the gradient of |x| - r has unit length
    points = torch.randn(50, 3).requires_grad_(True)
    (grad,) = torch.autograd.grad((points.norm(dim=-1) - 0.5).sum(), points)
    assert float(eikonal_loss(grad)) == pytest.approx(0.0, abs=1e-10)
    assert float(eikonal_loss(2 * grad)) == pytest.approx(1.0)


# ---- the Gaussian objective ------------------------------------------------------------------------------------


def test_gphm_losses_zero_on_identical_targets_positive_otherwise() -> None:
    out = _output()
    config = GPHMLossConfig(weight_deformation=0.0, weight_silhouette=0.1)
    # images whose area-downsampled copy is the raw image: use the fine image's own raw channels
    out.image_raw.copy_(torch.nn.functional.interpolate(out.image, size=(8, 8), mode="area"))
    terms = gphm_losses(out, out.image.clone(), out.alpha.clone(), out.landmarks.clone(), config=config,
                        perceptual=_mse)
    assert set(terms) == {"rgb", "perceptual", "raw", "landmark", "silhouette", "total"}
    assert all(float(v) == pytest.approx(0.0, abs=1e-7) for v in terms.values())
    other = _output(seed=1)
    terms = gphm_losses(out, other.image, other.alpha, other.landmarks, config=config, perceptual=_mse)
    assert all(float(v) > 0 for v in terms.values())


def test_gphm_loss_weights_multiply() -> None:
    out, target = _output(), _output(seed=1)
    base = GPHMLossConfig(weight_rgb=1.0, weight_perceptual=0.5, weight_raw=1.0, weight_landmark=10.0,
                          weight_deformation=1.0)
    terms = gphm_losses(out, target.image, landmarks=target.landmarks, config=base, perceptual=_mse)
    weights = {"rgb": 1.0, "perceptual": 0.5, "raw": 1.0, "landmark": 10.0, "deformation": 1.0}
    expected = sum(w * terms[k] for k, w in weights.items())
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)
    doubled = gphm_losses(out, target.image, landmarks=target.landmarks, config=base.replace(weight_landmark=20.0),
                          perceptual=_mse)
    assert float(doubled["total"] - terms["total"]) == pytest.approx(10.0 * float(terms["landmark"]), rel=1e-5)
    off = gphm_losses(out, target.image, config=base.replace(weight_landmark=0.0), perceptual=_mse)
    assert "landmark" not in off  # a zero weight skips the term (and needs no target)


def test_gphm_fitting_objective_and_missing_targets_are_named() -> None:
    out, target = _output(), _output(seed=1)
    fit = gphm_losses(out, target.image, config=GPHMLossConfig.fitting(), perceptual=_mse)
    assert set(fit) == {"rgb", "perceptual", "total"}  # paper 3.5: photometric and perceptual only
    with pytest.raises(InputError, match="perceptual"):
        gphm_losses(out, target.image, config=GPHMLossConfig.fitting())
    with pytest.raises(InputError, match="landmark"):
        gphm_losses(out, target.image, perceptual=_mse)
    with pytest.raises(InputError, match="silhouette"):
        gphm_losses(out, target.image, landmarks=target.landmarks, config=GPHMLossConfig.tiny(), perceptual=_mse)
    with pytest.raises(ConfigError, match="weight_rgb"):
        GPHMLossConfig(weight_rgb=-1.0)
    with pytest.raises(ConfigError, match="nothing to optimise"):
        gphm_losses(out, target.image, config=GPHMLossConfig.fitting(weight_perceptual=0.0).replace(weight_rgb=0.0))


def test_lpips_as_the_perceptual_term() -> None:
    pytest.importorskip("lpips")
    from avatar.losses import LPIPSLoss
    from avatar.losses.lpips import LPIPSNet

    lpips = LPIPSLoss(LPIPSNet.tiny())
    out, target = _output(size=32), _output(seed=1, size=32)  # AlexNet needs 64 x 64 images
    same = gphm_losses(out, out.image.clone(), config=GPHMLossConfig.fitting(), perceptual=lpips)
    assert float(same["perceptual"]) == pytest.approx(0.0, abs=1e-6)
    diff = gphm_losses(out, target.image, config=GPHMLossConfig.fitting(), perceptual=lpips)
    assert float(diff["perceptual"]) > 0


def test_gphm_losses_train_a_tiny_model() -> None:
    model = GPHM.tiny()
    viewmats, ks = front_camera(1, 16, distance=6.0)
    fc = model.config.fields
    out = model(torch.tensor([0]), torch.zeros(1, fc.expression_dim), None, torch.zeros(1, 6), ks, viewmats=viewmats,
                backend="reference")
    terms = gphm_losses(out, torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 16, 16), torch.zeros(1, fc.num_landmarks, 3),
                        config=GPHMLossConfig.tiny(), perceptual=_mse)
    terms["total"].backward()
    assert float(model.points.means.grad.abs().sum()) > 0
    assert float(model.points.landmarks.grad.abs().sum()) > 0


# ---- the guiding objective -------------------------------------------------------------------------------------


def test_guiding_losses_terms_and_weights() -> None:
    model = GuidingGeometryModel.tiny()
    viewmats, ks = front_camera(1, 16, distance=6.0)
    fc = model.config.fields
    g = torch.Generator().manual_seed(0)
    out = model(torch.tensor([1]), torch.randn(1, fc.expression_dim, generator=g),
                torch.randn(1, fc.non_face_dim, generator=g), torch.zeros(1, 6), ks, viewmats=viewmats)
    _, grads = model.sdf.sdf_and_gradient(torch.randn(64, 3, generator=g) * 0.5)
    images, masks, landmarks = torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 16, 16), torch.zeros(1, fc.num_landmarks, 3)
    config = GuidingLossConfig.tiny()
    terms = guiding_losses(out, images, masks, landmarks, config=config, sdf_gradients=grads)
    assert set(terms) == {"rgb", "silhouette", "raw", "landmark", "deformation", "laplacian", "eikonal", "total"}
    assert all(float(v.detach()) > 0 for v in terms.values())
    weights = {"rgb": config.weight_rgb, "silhouette": config.weight_silhouette, "raw": config.weight_raw,
               "landmark": config.weight_landmark, "deformation": config.weight_deformation,
               "laplacian": config.weight_laplacian, "eikonal": config.weight_eikonal}
    assert float(terms["total"].detach()) == pytest.approx(float(sum(w * terms[k].detach() for k, w in weights.items())),
                                                          rel=1e-6)
    same = guiding_losses(out, out.image.detach(), out.mask.detach(), out.landmarks.detach(),
                          config=GuidingLossConfig(weight_raw=0.0, weight_deformation=0.0, weight_laplacian=0.0))
    assert all(float(v.detach()) == 0.0 for v in same.values())
    terms["total"].backward()
    assert float(model.sdf.mlp.hidden[0].weight.grad.abs().sum()) > 0  # images, mask, Laplacian and eikonal reach it
    with pytest.raises(InputError, match="eikonal"):
        guiding_losses(out, images, masks, landmarks, config=config)
