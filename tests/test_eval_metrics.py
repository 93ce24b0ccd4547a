"""eval.metrics: common interface, registry, PSNR / SSIM / L1 against scikit-image and hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from eval.metrics import (
    L1,
    METRICS,
    PSNR,
    SSIM,
    EmptyMetricError,
    Metric,
    build_metric,
)


def _pair(seed: int = 0, b: int = 3, h: int = 40, w: int = 48, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)
    pred = (target + noise * torch.randn(b, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, target


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


# ---- registry and options ------------------------------------------------------------------------------


def test_registry_lists_every_metric_and_builds_by_name() -> None:
    assert set(METRICS) == {"psnr", "ssim", "l1", "lpips", "fid", "csim", "aed", "apd", "akd"}
    assert all(issubclass(cls, Metric) and cls.name == name for name, cls in METRICS.items())
    m = build_metric("SSIM", preset="nerface")
    assert isinstance(m, SSIM) and m.options["data_range"] == 2.0 and m.options["window"] == "uniform"
    with pytest.raises(KeyError, match="known: psnr"):
        build_metric("ms-ssim")
    with pytest.raises(TypeError, match="unknown option.*windw"):
        build_metric("ssim", windw="gaussian")
    with pytest.raises(ValueError, match="aggregation"):
        build_metric("psnr", aggregation="median")


def test_options_are_json_dicts_with_documented_defaults() -> None:
    defaults = {name: cls.default_options() for name, cls in METRICS.items()}
    json.dumps(defaults)
    assert defaults["ssim"]["window"] == "gaussian" and defaults["ssim"]["win_size"] == 11
    assert defaults["ssim"]["sigma"] == 1.5 and defaults["ssim"]["use_sample_covariance"] is False
    assert defaults["ssim"]["data_range"] == 1.0
    assert defaults["psnr"]["aggregation"] == "per_frame" and defaults["psnr"]["data_range"] == 1.0
    assert defaults["lpips"]["net"] == "alex" and defaults["lpips"]["feed_unit_range"] is False
    assert defaults["apd"]["include_translation"] is True
    assert defaults["akd"] == {"distance": "l1", "reference_size": None, "landmark_model": "retinaface-3dfan",
                               "failed_face": "skip"}
    assert defaults["csim"]["align"] == "each"
    assert defaults["psnr"]["background"] == "black"


# ---- PSNR ----------------------------------------------------------------------------------------------


def test_psnr_matches_skimage_per_frame() -> None:
    pred, target = _pair()
    metric = PSNR()
    values = metric.update(pred, target)
    ref = [peak_signal_noise_ratio(_hwc(target[i]), _hwc(pred[i]), data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(values.numpy(), ref, rtol=0, atol=1e-10)
    result = metric.compute()
    assert result.value == pytest.approx(float(np.mean(ref)), abs=1e-10)
    assert result.count == 3 and result.excluded == 0 and result.comparable


def test_psnr_accepts_uint8_and_float32_like_skimage() -> None:
    pred, target = _pair(1)
    p8, t8 = (pred * 255).round().to(torch.uint8), (target * 255).round().to(torch.uint8)
    values = PSNR().update(p8, t8)
    ref = [peak_signal_noise_ratio(_hwc(t8[i]), _hwc(p8[i]), data_range=255) for i in range(3)]
    np.testing.assert_allclose(values.numpy(), ref, atol=1e-5)


def test_psnr_pooled_aggregation_differs_from_per_frame_mean() -> None:
    pred, target = _pair(2)
    pred[0] = (target[0] + 0.3).clamp(0, 1)  # one bad frame: the two aggregations disagree
    per_frame, pooled = PSNR(), PSNR(aggregation="pooled")
    per_frame.update(pred, target)
    pooled.update(pred, target)
    mse = (pred - target).square().flatten(1).mean(1)
    assert per_frame.compute().value == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), abs=1e-9)
    r = pooled.compute()
    assert r.aggregation == "pooled"
    assert r.value == pytest.approx(10 * math.log10(1 / float(mse.mean())), abs=1e-9)
    assert r.mean == pytest.approx(per_frame.compute().value)
    assert abs(r.value - r.mean) > 0.5


def test_psnr_identical_frame_is_infinite_and_counted() -> None:
    pred, target = _pair(3, b=2)
    metric = PSNR()
    metric.update(target.clone(), target)
    r = metric.compute()
    assert math.isinf(r.value) and r.extra["n_infinite"] == 2


# ---- SSIM ----------------------------------------------------------------------------------------------

SKIMAGE_SETTINGS = {
    "wang2004": dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0),
    "skimage": dict(win_size=7, data_range=1.0),
    "nerface": dict(win_size=7, data_range=2.0),
}


@pytest.mark.parametrize("preset", list(SKIMAGE_SETTINGS))
def test_ssim_matches_skimage(preset: str) -> None:
    pred, target = _pair(4)
    values = SSIM(preset=preset).update(pred, target)
    ref = [structural_similarity(_hwc(pred[i]), _hwc(target[i]), channel_axis=2, **SKIMAGE_SETTINGS[preset])
           for i in range(3)]
    np.testing.assert_allclose(values.numpy(), ref, rtol=0, atol=1e-10)


def test_ssim_float32_gray_and_overrides_match_skimage() -> None:
    pred, target = _pair(5)
    # float32 inputs, grayscale, uniform window of 9 with population covariance
    metric = SSIM(channels="gray", window="uniform", win_size=9, use_sample_covariance=False)
    values = metric.update(pred.float(), target.float())
    w = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64).reshape(1, 3, 1, 1)
    pg, tg = (pred.float().double() * w).sum(1), (target.float().double() * w).sum(1)
    ref = [structural_similarity(pg[i].numpy(), tg[i].numpy(), win_size=9, use_sample_covariance=False,
                                 data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(values.numpy(), ref, atol=1e-6)
    # a Gaussian window chosen over a uniform preset gets its size from sigma, not from the preset
    assert SSIM(preset="skimage", window="gaussian").options["win_size"] == 11


def test_ssim_identical_is_one_and_too_small_image_raises() -> None:
    _, target = _pair(6)
    assert SSIM().update(target, target).numpy() == pytest.approx([1.0] * 3, abs=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        SSIM().update(target[..., :8, :8], target[..., :8, :8])


# ---- L1, masks, input checks -----------------------------------------------------------------------------


def test_l1_hand_values_and_scale() -> None:
    pred = torch.full((2, 3, 8, 8), 0.25)
    target = torch.full((2, 3, 8, 8), 0.75)
    target[1, :, :4] = 0.25  # half the pixels equal
    assert L1().update(pred, target).tolist() == pytest.approx([0.5, 0.25])
    assert L1(data_range=2).update(pred, target).tolist() == pytest.approx([1.0, 0.5])


def test_mask_composites_background() -> None:
    target = torch.rand(1, 3, 8, 8)
    pred = target.clone()
    pred[..., :, 4:] = torch.rand(1, 3, 8, 4)  # differs only on the right half
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1  # foreground = left half
    both = L1()
    assert both.update(pred, target, mask=mask).item() == pytest.approx(0.0, abs=1e-12)
    assert both.compute().extra["n_masked"] == 1
    # only the target composited on black: the prediction's right half is compared with black
    only_target = L1(mask_applies_to="target").update(pred, target, mask=mask).item()
    assert only_target == pytest.approx(pred[..., :, 4:].abs().sum().item() / pred.numel(), rel=1e-6)
    white = L1(mask_applies_to="target", background="white").update(pred, target, mask=mask).item()
    assert white == pytest.approx((1 - pred[..., :, 4:]).abs().sum().item() / pred.numel(), rel=1e-6)


def test_input_checks() -> None:
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        PSNR().update(x * 2 - 1, x)
    with pytest.raises(ValueError, match="differ in shape"):
        PSNR().update(x, x[:, :, :8])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PSNR().update(x[0], x[0])
    with pytest.raises(ValueError, match="non-finite"):
        PSNR().update(x * float("nan"), x)


# ---- accumulation, ids, exclusions ---------------------------------------------------------------------


def test_per_sample_ids_breakdown_and_cache_round_trip() -> None:
    pred, target = _pair(7, b=4)
    metric = L1()
    ids = [("vidA", 0), ("vidA", 1), ("vidB", 0), ("vidB", 1)]
    metric.update(pred[:2], target[:2], ids=ids[:2])
    metric.update(pred[2:], target[2:], ids=ids[2:])
    metric.add_exclusions([("vidB", 2)], "frame missing from the method's output")
    r = metric.compute()
    per = r.per_sample()
    assert list(per) == ids and r.count == 4 and r.excluded == 1
    assert r.exclusions == {("vidB", 2): "frame missing from the method's output"}
    groups = r.breakdown(lambda sid: sid[0])
    assert groups["vidA"]["mean"] == pytest.approx((per[ids[0]] + per[ids[1]]) / 2)
    assert groups["vidB"]["count"] == 2 and groups["vidB"]["excluded"] == 1
    # cached values fed back give the same result
    again = L1()
    again.add_values(list(per.values()), list(per))
    assert again.compute().value == pytest.approx(r.value, abs=1e-15)
    json.dumps(r.to_dict(per_sample=True))
    with pytest.raises(ValueError, match="duplicate"):
        metric.update(pred[:1], target[:1], ids=[("vidA", 0)])


def test_empty_or_all_excluded_metric_raises_instead_of_zero() -> None:
    metric = PSNR()
    with pytest.raises(EmptyMetricError, match="no sample"):
        metric.compute()
    metric.add_exclusions(["a", "b"], "no face")
    with pytest.raises(EmptyMetricError, match="2 excluded"):
        metric.compute()


def test_nan_value_is_refused() -> None:
    metric = L1()
    with pytest.raises(FloatingPointError, match="NaN"):
        metric.add_values([0.1, float("nan")], ["a", "b"])
