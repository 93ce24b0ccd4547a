"""eval.metrics AED / APD / AKD: hand-checkable cases, plugged-in extractors, exclusions and flags."""

from __future__ import annotations

import pytest
import torch

from eval.metrics import AED, AKD, APD, EmptyMetricError, FaceLandmarks, build_metric


def _coeffs(b: int, exp: float = 0.0, angle: tuple[float, float, float] = (0, 0, 0), trans: float = 0.0,
            found: list[bool] | None = None) -> dict[str, torch.Tensor | list[bool]]:
    out: dict[str, torch.Tensor | list[bool]] = {
        "exp": torch.full((b, 64), exp), "angle": torch.tensor([angle] * b), "trans": torch.full((b, 3), trans)}
    if found is not None:
        out["found"] = found
    return out


# ---- AED / APD -----------------------------------------------------------------------------------------


def test_aed_is_the_mean_l1_of_expression_coefficients() -> None:
    pred = _coeffs(2, exp=0.5)
    pred["exp"][1, :32] = 0.0  # half the entries equal for the second sample
    target = _coeffs(2, exp=0.0)
    metric = AED(comparable=True)
    assert metric.update_coeffs(pred, target).tolist() == pytest.approx([0.5, 0.25])
    assert metric.compute().value == pytest.approx(0.375)
    assert AED(reduction="sum").update_coeffs(pred, target).tolist() == pytest.approx([32.0, 16.0])


def test_apd_with_and_without_translation() -> None:
    pred = _coeffs(1, angle=(0.1, 0.2, 0.3), trans=1.0, exp=9.0)
    target = _coeffs(1, angle=(0.0, 0.0, 0.0), trans=0.0)
    assert APD().update_coeffs(pred, target).item() == pytest.approx((0.6 + 3.0) / 6)
    assert APD(include_translation=False).update_coeffs(pred, target).item() == pytest.approx(0.2)
    assert APD(include_translation=False, reduction="sum").update_coeffs(pred, target).item() == pytest.approx(0.6)
    assert build_metric("apd").options["coefficients"] == ["angle", "trans"]
    assert build_metric("apd", include_translation=False).options["coefficients"] == ["angle"]


class _Extractor:
    """A stand-in Deep3DFaceRecon: coefficients from the image mean; no face where the image is all black."""

    name = "fake-deep3d"
    comparable = True

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        m = images.mean(dim=(1, 2, 3))
        return {"exp": m[:, None].expand(-1, 64) * 2, "angle": m[:, None].expand(-1, 3),
                "trans": m[:, None].expand(-1, 3) * 10, "found": images.flatten(1).amax(1) > 0}


def test_coefficient_metrics_run_the_extractor_and_count_missing_faces() -> None:
    pred = torch.full((3, 3, 8, 8), 0.5)
    target = torch.full((3, 3, 8, 8), 0.25)
    target[1] = 0.0  # no face in the second target
    pred[2] = 0.0  # no face in the third prediction
    aed = AED(extractor=_Extractor())
    values = aed.update(pred, target, ids=["f0", "f1", "f2"])
    assert values[0].item() == pytest.approx(0.5) and torch.isnan(values[1:]).all()
    r = aed.compute()
    assert r.count == 1 and r.excluded == 2 and r.comparable and r.options["extractor"] == "fake-deep3d"
    assert r.exclusions == {"f1": "no face found in target", "f2": "no face found in pred"}
    apd = APD(extractor=_Extractor())
    apd.update(pred[:1], target[:1])
    assert apd.compute().value == pytest.approx((3 * 0.25 + 3 * 2.5) / 6)


def test_coefficient_metrics_refuse_bad_outputs() -> None:
    target = _coeffs(2)
    bad = _coeffs(2)
    bad["exp"][0, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        AED().update_coeffs(bad, target)
    # a NaN in a sample marked "no face" is fine: it is excluded, not averaged
    bad["found"] = [False, True]
    metric = AED()
    metric.update_coeffs(bad, target)
    assert metric.compute().excluded == 1
    with pytest.raises(KeyError, match="trans"):
        APD().update_coeffs({"angle": torch.zeros(2, 3)}, target)
    with pytest.raises(ValueError, match=r"expected \(2, 64\)"):
        AED().update_coeffs({"exp": torch.zeros(2, 50)}, target)
    with pytest.raises(ValueError, match="no coefficient extractor"):
        AED().update(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_coefficient_metrics_are_not_comparable_unless_declared() -> None:
    metric = AED(extractor=lambda x: _Extractor()(x))
    metric.update(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    r = metric.compute()
    assert r.comparable is False and any("not declared official" in n for n in r.notes)
    assert AED(extractor=_Extractor()).comparable and not AED().comparable


# ---- AKD -----------------------------------------------------------------------------------------------


def _lm(b: int, offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 68, 2, generator=g, dtype=torch.float64) * 400 + 50 + torch.tensor(offset, dtype=torch.float64)


def test_akd_l1_and_l2_in_pixels_and_at_a_reference_size() -> None:
    target, pred = _lm(2), _lm(2, offset=(3.0, 4.0))
    assert AKD().update_landmarks(pred, target).tolist() == pytest.approx([3.5, 3.5])
    assert AKD(distance="l2").update_landmarks(pred, target).tolist() == pytest.approx([5.0, 5.0])
    # 512 x 512 frames measured at 256: half the pixels
    assert AKD(reference_size=256).update_landmarks(pred, target, image_size=(512, 512)).tolist() == \
        pytest.approx([1.75, 1.75])
    assert AKD(distance="l2", reference_size=256).update_landmarks(
        pred, target, image_size=(512, 512)).tolist() == pytest.approx([2.5, 2.5])
    with pytest.raises(ValueError, match="image_size"):
        AKD(reference_size=256).update_landmarks(pred, target)
    assert AKD(reference_size=256).options["unit"] == "pixels at 256x256"


def test_akd_excludes_frames_without_a_face() -> None:
    target, pred = _lm(3), _lm(3, offset=(1.0, 1.0))
    pred[1] = float("nan")  # detector returned NaN rows for "no face"
    metric = AKD()
    metric.update_landmarks(pred, FaceLandmarks(target, torch.tensor([True, True, False])), ids=[10, 11, 12])
    r = metric.compute()
    assert r.count == 1 and r.value == pytest.approx(1.0)
    assert r.exclusions == {11: "no face found in pred", 12: "no face found in target"}
    empty = AKD()
    empty.update_landmarks(pred[1:2], target[1:2])
    with pytest.raises(EmptyMetricError):
        empty.compute()


def test_akd_runs_the_landmark_callable_on_both_images() -> None:
    images = torch.zeros(2, 3, 64, 64)
    images[1] = 1.0

    def detector(x: torch.Tensor) -> dict[str, torch.Tensor]:
        # landmarks shift by 2 px in x when the image is bright
        return {"landmarks": _lm(x.shape[0]) + torch.stack([2 * x.mean(dim=(1, 2, 3)), torch.zeros(x.shape[0])], 1)
                [:, None].double()}

    detector.comparable = True  # type: ignore[attr-defined]
    metric = AKD(landmarks=detector)
    assert metric.update(images[1:], images[:1]).item() == pytest.approx(1.0)  # |2| on x, 0 on y -> mean 1
    assert metric.compute().comparable
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(images[:, :, :32], images)
