"""eval.metrics network metrics: LPIPS vs the lpips package, FID vs pytorch-fid and scipy, CSIM / ArcFace and
face alignment, weight loading, missing-weights errors and the random-weights flag. Offline, random weights."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.losses.arcface import (
    INSIGHTFACE_TEMPLATE_112,
    ArcFaceConfig,
    IResNet,
    five_points_from_68,
    similarity_transform,
    warp_affine,
)
from avatar.losses.lpips import LPIPSConfig, LPIPSNet
from eval.metrics import (
    CSIM,
    FID,
    LPIPS,
    EmptyMetricError,
    MissingWeightsError,
    frechet_distance,
    gaussian_statistics,
)
from eval.metrics.face import FaceLandmarks
from eval.metrics.fid import FID_WEIGHTS_FILE, FIDInception


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (so no real weights on this machine change the outcome)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _images(seed: int, b: int = 3, size: int = 64) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- LPIPS -----------------------------------------------------------------------------------------------


def _lpips_reference(net: str) -> torch.nn.Module:
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    return lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # random trunk, bundled v0.1 linear heads


def _copy_trunk(ref: torch.nn.Module, ours: LPIPSNet) -> None:
    # lpips keeps torchvision's layer indices inside its slices: net.slice<k>.<index>.<param>
    state = {f"features.{k.split('.', 2)[1]}.{k.split('.', 2)[2]}": v for k, v in ref.net.state_dict().items()}
    ours.load_trunk(state)


@pytest.mark.parametrize("net", ["alex", pytest.param("vgg", marks=pytest.mark.slow)])
def test_lpips_matches_lpips_package(net: str, torch_home: Path) -> None:
    ref = _lpips_reference(net)
    with pytest.warns(UserWarning, match="RANDOM"):
        metric = LPIPS(net=net, allow_random_weights=True)
    _copy_trunk(ref, metric.network)
    pred, target = _images(0), _images(1)
    values = metric.update(pred, target)
    with torch.no_grad():
        expected = ref(pred * 2 - 1, target * 2 - 1).flatten().double()
    assert values.abs().min() > 1e-3  # not a degenerate comparison
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-6)
    # the NeRFace/GOHA slip: [0, 1] images fed without mapping
    quirk = LPIPS(net=net, network=metric.network, feed_unit_range=True).update(pred, target)
    with torch.no_grad():
        torch.testing.assert_close(quirk, ref(pred, target).flatten().double(), rtol=0, atol=1e-6)
    assert (quirk - values).abs().max() > 1e-4


def test_lpips_missing_trunk_offline_is_a_clear_error(torch_home: Path) -> None:
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth") as info:
        LPIPS()
    assert "download.pytorch.org" in str(info.value) and "allow_random_weights" in str(info.value)


def test_lpips_random_weights_flag_reaches_the_result(torch_home: Path) -> None:
    with pytest.warns(UserWarning):
        metric = LPIPS(allow_random_weights=True)
    metric.update(_images(2, b=2), _images(3, b=2))
    result = metric.compute()
    assert result.comparable is False and result.options["weights"] == "random"
    assert any("random" in note for note in result.notes)


def test_lpips_loads_trunk_from_torch_hub_cache(torch_home: Path) -> None:
    torch.manual_seed(1)
    donor = LPIPSNet(LPIPSConfig("alex"))
    torch.save(donor.trunk_state_dict(), torch_home / "alexnet-owt-7be5be79.pth")  # torchvision's names
    metric = LPIPS()
    assert metric.weights == "official" and metric.comparable
    for k, v in donor.trunk_state_dict().items():
        torch.testing.assert_close(metric.network.trunk_state_dict()[k], v, rtol=0, atol=0)


# ---- FID -----------------------------------------------------------------------------------------------


def _features(seed: int, n: int, d: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift


def test_frechet_distance_matches_pytorch_fid_and_scipy() -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance
    from scipy import linalg

    a, b = _features(0, 300, 64), _features(1, 400, 64, shift=0.3)
    mu1, s1 = gaussian_statistics(a)
    mu2, s2 = gaussian_statistics(b)
    # our statistics are numpy's (unbiased covariance)
    np.testing.assert_allclose(s1.numpy(), np.cov(a.numpy(), rowvar=False), atol=1e-12)
    ours = frechet_distance(mu1, s1, mu2, s2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = calculate_frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
    assert ours == pytest.approx(theirs, abs=1e-6)
    direct = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2)
                   - 2 * np.trace(linalg.sqrtm(s1.numpy() @ s2.numpy()).real))
    assert ours == pytest.approx(direct, abs=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2, sqrtm="eigh") == pytest.approx(ours, rel=1e-6, abs=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
    assert ours > 1.0


def test_fid_is_pooled_over_updates() -> None:
    metric = FID(network=torch.nn.Identity())
    a, b = _features(2, 90, 16).float(), _features(3, 60, 16, shift=0.5).float()
    for chunk in range(3):
        metric.add_features(a[chunk * 30:(chunk + 1) * 30], b[chunk * 20:(chunk + 1) * 20])
    r = metric.compute()
    mu1, s1 = gaussian_statistics(a)
    mu2, s2 = gaussian_statistics(b)
    assert r.value == pytest.approx(frechet_distance(mu1, s1, mu2, s2), abs=1e-9)
    assert r.aggregation == "pooled" and r.mean is None
    assert r.extra == {"n_pred": 90, "n_target": 60, "feature_dim": 16}
    assert any("compare only at equal N" in note for note in r.notes)
    # the mean of per-chunk FIDs is not the pooled FID
    chunks = [frechet_distance(*gaussian_statistics(a[i * 30:(i + 1) * 30]), *gaussian_statistics(b[i * 20:(i + 1) * 20]))
              for i in range(3)]
    assert abs(float(np.mean(chunks)) - r.value) > 1e-3
    empty = FID(network=torch.nn.Identity())
    empty.add_features(a[:1], b)
    with pytest.raises(EmptyMetricError, match="at least 2"):
        empty.compute()


def test_fid_missing_inception_offline_is_a_clear_error(torch_home: Path) -> None:
    with pytest.raises(MissingWeightsError, match=FID_WEIGHTS_FILE) as info:
        FID()
    assert "github.com/mseitzer/pytorch-fid" in str(info.value)


@pytest.mark.slow
def test_fid_inception_matches_pytorch_fid_with_the_same_file(torch_home: Path) -> None:
    """Random Inception weights written where pytorch-fid looks: both sides load the same file."""
    from pytorch_fid.inception import InceptionV3

    torch.manual_seed(0)
    donor = FIDInception()
    for m in donor.modules():  # magnitude-preserving init so the features are not vanishingly small
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(donor.net.state_dict(), torch_home / FID_WEIGHTS_FILE)
    metric = FID()
    assert metric.weights == "official" and metric.comparable
    images = _images(4, b=1, size=80)
    ours = metric.features(images)
    with torch.no_grad():
        theirs = InceptionV3([3]).eval()(images)[0].flatten(1)
    assert ours.shape == (1, 2048) and theirs.abs().mean() > 0.05
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    (torch_home / FID_WEIGHTS_FILE).unlink()
    with pytest.warns(UserWarning, match="RANDOM"):
        fallback = FID(allow_random_weights=True)
    fallback.add_features(torch.randn(4, 2048), torch.randn(4, 2048))
    assert fallback.compute().comparable is False


# ---- alignment -----------------------------------------------------------------------------------------


def test_similarity_transform_matches_skimage() -> None:
    from skimage.transform import SimilarityTransform

    g = torch.Generator().manual_seed(5)
    src = torch.rand(4, 5, 2, generator=g, dtype=torch.float64) * 200 + 50
    M = similarity_transform(src, INSIGHTFACE_TEMPLATE_112)
    for i in range(4):
        if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            tform = SimilarityTransform.from_estimate(src[i].numpy(), INSIGHTFACE_TEMPLATE_112.numpy())
        else:
            tform = SimilarityTransform()
            tform.estimate(src[i].numpy(), INSIGHTFACE_TEMPLATE_112.numpy())
        np.testing.assert_allclose(M[i].numpy(), tform.params[:2], atol=1e-9)


def test_warp_affine_matches_skimage_warp() -> None:
    from skimage.transform import AffineTransform, warp

    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    angle, scale = 0.3, 0.8
    A = scale * torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    M = torch.cat([A, torch.tensor([[4.0], [-2.0]], dtype=torch.float64)], 1)[None]
    out = warp_affine(img, M, (48, 48))
    full = np.vstack([M[0].numpy(), [0, 0, 1]])
    ref = warp(_hwc(img[0]), AffineTransform(matrix=full).inverse, output_shape=(48, 48), order=1, mode="constant")
    inner = (slice(2, -2), slice(2, -2))  # scikit-image does not interpolate across the border
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy()[inner], ref[inner], atol=1e-9)
    # an integer translation is an exact shift
    shift = torch.tensor([[[1.0, 0, 3], [0, 1.0, 5]]], dtype=torch.float64)
    moved = warp_affine(img, shift, (64, 64))
    torch.testing.assert_close(moved[..., 5:, 3:], img[..., :-5, :-3], rtol=0, atol=1e-12)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


def _landmarks_at_template(b: int, scale: float = 1.0) -> torch.Tensor:
    """68 landmarks whose 5 alignment points sit on the 112 template (times ``scale``)."""
    lm = torch.full((b, 68, 2), 56.0, dtype=torch.float64)
    t = INSIGHTFACE_TEMPLATE_112
    lm[:, 36] = lm[:, 39] = t[0]
    lm[:, 42] = lm[:, 45] = t[1]
    lm[:, 30], lm[:, 48], lm[:, 54] = t[2], t[3], t[4]
    return lm * scale


def test_five_points_from_68() -> None:
    lm = torch.arange(68 * 2, dtype=torch.float64).reshape(1, 68, 2)
    five = five_points_from_68(lm)
    torch.testing.assert_close(five[0, 0], (lm[0, 36] + lm[0, 39]) / 2)
    torch.testing.assert_close(five[0, 1], (lm[0, 42] + lm[0, 45]) / 2)
    torch.testing.assert_close(five[0, 2:], lm[0, [30, 48, 54]])
    torch.testing.assert_close(five_points_from_68(_landmarks_at_template(1))[0], INSIGHTFACE_TEMPLATE_112)


# ---- CSIM / ArcFace ------------------------------------------------------------------------------------


def _tiny_arcface() -> IResNet:
    torch.manual_seed(0)
    net = IResNet(ArcFaceConfig.tiny())
    return net


def test_csim_is_the_cosine_of_arcface_embeddings() -> None:
    net = _tiny_arcface()
    pred, target = _images(7, b=4, size=112), _images(8, b=4, size=112)
    metric = CSIM(embedder=net, align="none", comparable=True)
    values = metric.update(pred, target)
    with torch.no_grad():
        e_p, e_t = net(pred * 2 - 1).double(), net(target * 2 - 1).double()
    hand = (e_p * e_t).sum(1) / (e_p.norm(dim=1) * e_t.norm(dim=1))
    torch.testing.assert_close(values, hand, rtol=0, atol=1e-6)
    assert values.std() > 1e-3
    assert CSIM(embedder=net, align="none").update(target, target).numpy() == pytest.approx([1.0] * 4, abs=1e-6)
    assert metric.compute().comparable


def test_csim_alignment_on_template_landmarks_is_the_identity_warp() -> None:
    net = _tiny_arcface()
    pred, target = _images(9, b=2, size=112), _images(10, b=2, size=112)
    lm = _landmarks_at_template(2)
    aligned = CSIM(embedder=net, landmarks=lambda x: lm).update(pred, target)
    plain = CSIM(embedder=net, align="none").update(pred, target)
    torch.testing.assert_close(aligned, plain, rtol=0, atol=1e-5)
    # the same faces pasted at an offset into larger frames, with shifted landmarks, give the same crops
    canvas_p, canvas_t = torch.zeros(2, 3, 160, 150), torch.zeros(2, 3, 160, 150)
    canvas_p[..., 30:142, 20:132], canvas_t[..., 30:142, 20:132] = pred, target
    shifted = lm + torch.tensor([20.0, 30.0], dtype=torch.float64)
    moved = CSIM(embedder=net, landmarks=lambda x: shifted).update(canvas_p, canvas_t)
    torch.testing.assert_close(moved, plain, rtol=0, atol=1e-5)
    # a wrong crop (landmarks not shifted) does not
    wrong = CSIM(embedder=net, landmarks=lambda x: lm).update(canvas_p, canvas_t)
    assert (wrong - plain).abs().max() > 1e-3


def test_csim_counts_missing_faces_as_exclusions() -> None:
    net = _tiny_arcface()
    pred, target = _images(11, b=3, size=112), _images(12, b=3, size=112)
    lm = _landmarks_at_template(3)

    def landmarks(x: torch.Tensor) -> FaceLandmarks:
        found = torch.tensor([True, True, True]) if x is pred else torch.tensor([True, False, True])
        return FaceLandmarks(lm, found)

    metric = CSIM(embedder=net, landmarks=landmarks)
    values = metric.update(pred, target, ids=["a", "b", "c"])
    assert torch.isnan(values[1]) and torch.isfinite(values[[0, 2]]).all()
    r = metric.compute()
    assert r.count == 2 and r.excluded == 1 and r.exclusions == {"b": "no face found in target"}
    assert r.value == pytest.approx(float(values[[0, 2]].mean()))
    # NaN landmark rows (a detector's "no face") are exclusions too, here on the prediction side
    nan_lm = lm.clone()
    nan_lm[0] = float("nan")
    metric2 = CSIM(embedder=net, landmarks=lambda x: nan_lm if x is pred else lm)
    metric2.update(pred, target)
    assert metric2.compute().exclusions == {0: "no face found in pred"}
    with pytest.raises(ValueError, match="needs target landmarks"):
        CSIM(embedder=net).update(pred, target)


def test_csim_comparable_flag_follows_the_embedder() -> None:
    net = _tiny_arcface()

    def plain(x: torch.Tensor) -> torch.Tensor:
        return net(x)

    assert CSIM(embedder=plain, align="none").comparable is False
    plain.comparable = True  # type: ignore[attr-defined]
    assert CSIM(embedder=plain, align="none").comparable is True


def test_csim_official_arcface_missing_offline_then_random_fallback() -> None:
    with pytest.raises(MissingWeightsError, match="arcface"):
        CSIM(align="none")
    with pytest.warns(UserWarning, match="RANDOM"):
        metric = CSIM(align="none", allow_random_weights=True)
    metric.update(_images(13, b=2, size=112), _images(14, b=2, size=112))
    r = metric.compute()
    assert r.comparable is False and r.options["weights"] == "random"
    json.dumps(r.to_dict())


def test_csim_loads_official_arcface_from_the_asset_cache() -> None:
    """A converted ``arcface-r18`` folder (as ``avatar download`` leaves it) is what CSIM loads."""
    from safetensors.torch import save_file

    from avatar.hub.download import converted_dir
    from avatar.hub.registry import FILES

    torch.manual_seed(3)
    donor = IResNet()
    folder = converted_dir(FILES["arcface-r18"])  # inside the per-test cache of conftest
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text("{}")
    (folder / "manifest.json").write_text("{}")
    metric = CSIM(align="none")
    assert metric.weights == "official" and metric.comparable
    x = _images(15, b=1, size=112)
    with torch.no_grad():
        torch.testing.assert_close(metric.embedder(x * 2 - 1), donor(x * 2 - 1))
