"""The metric variants of the 2024-2026 papers (issue 18), each against a hand-computed or brute-force reference:
CSIM's MICA ArcFace iresnet-100 and norm_crop alignment, AKD's landmark network, angles-only APD, grayscale SSIM
and GAGAvatar's "failed face counts as 0"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.errors import InputError
from avatar.face.analysis import FaceLandmarks
from avatar.losses.arcface import INSIGHTFACE_TEMPLATE_112, IResNet
from avatar.losses.arcface_mica import MICAArcFace, MICAArcFaceConfig
from eval.metrics import AED, AKD, APD, CSIM, SSIM, build_metric
from eval.metrics.csim import _transforms
from eval.metrics.face import FAILED_FACE_MARK
from eval.reference_cache import ReferenceCache

# ---- helpers ------------------------------------------------------------------------------------------------


def _umeyama_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s R src + t`` in closed form (complex-number form of Umeyama in 2-D)."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    zs0, zd0 = zs - zs.mean(), zd - zd.mean()
    a = (np.conj(zs0) * zd0).sum() / (np.abs(zs0) ** 2).sum()  # a = s * exp(i theta)
    t = zd.mean() - a * zs.mean()
    return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]])


def _five_points_68(five: torch.Tensor) -> torch.Tensor:
    """68 landmarks whose eye corners, nose tip and mouth corners give exactly ``five`` ``(B, 5, 2)``."""
    lm = torch.zeros(five.shape[0], 68, 2, dtype=torch.float64)
    off = torch.tensor([3.0, 0.0], dtype=torch.float64)
    lm[:, 36], lm[:, 39] = five[:, 0] - off, five[:, 0] + off
    lm[:, 42], lm[:, 45] = five[:, 1] - off, five[:, 1] + off
    lm[:, 30], lm[:, 48], lm[:, 54] = five[:, 2], five[:, 3], five[:, 4]
    return lm


class _Embed(torch.nn.Module):
    """A deterministic embedder on 112 crops: the mean colour per quadrant (12-d)."""

    comparable = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) + 2.0


def _faces(seed: int, n: int = 4, size: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


FIVE = torch.tensor([[44.0, 52.0], [84.0, 51.0], [64.0, 74.0], [48.0, 95.0], [80.0, 94.0]], dtype=torch.float64)


# ---- CSIM: MICA's ArcFace iresnet-100 -----------------------------------------------------------------------


def _official_iresnet100_names() -> dict[str, tuple[int, ...]]:
    """The state-dict table of InsightFace ``arcface_torch`` ``iresnet100`` / MICA ``Arcface`` (names and shapes),
    written out from the architecture: stem, 4 stages of (3, 13, 30, 3) IBasicBlocks (the first of each with a
    1x1 stride-2 downsample), bn2, fc (512*7*7 -> 512), features (BatchNorm1d)."""
    out: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int, d1: bool = False) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{k}"] = (c,)
        out[f"{prefix}.num_batches_tracked"] = ()

    out["conv1.weight"] = (64, 3, 3, 3)
    bn("bn1", 64)
    out["prelu.weight"] = (64,)
    cin = 64
    for i, (n, w) in enumerate(zip((3, 13, 30, 3), (64, 128, 256, 512), strict=True)):
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            bn(f"{p}.bn1", cin)
            out[f"{p}.conv1.weight"] = (w, cin, 3, 3)
            bn(f"{p}.bn2", w)
            out[f"{p}.prelu.weight"] = (w,)
            out[f"{p}.conv2.weight"] = (w, w, 3, 3)
            bn(f"{p}.bn3", w)
            if j == 0:
                out[f"{p}.downsample.0.weight"] = (w, cin, 1, 1)
                bn(f"{p}.downsample.1", w)
            cin = w
    bn("bn2", 512)
    out["fc.weight"], out["fc.bias"] = (512, 512 * 7 * 7), (512,)
    bn("features", 512)
    return out


def test_mica_arcface_has_the_official_iresnet100_state_dict_on_meta() -> None:
    with torch.device("meta"):
        net = MICAArcFace()
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == _official_iresnet100_names()
    n_params = sum(p.numel() for p in net.parameters())
    assert 65_000_000 < n_params < 66_000_000  # iresnet-100: about 65.2 M parameters
    assert net.config.layers == (3, 13, 30, 3)


def test_mica_arcface_loads_mica_tar_layout_strictly_and_names_bad_keys() -> None:
    torch.manual_seed(0)
    cfg = MICAArcFaceConfig.tiny()
    src = MICAArcFace(cfg)
    for p in src.parameters():
        p.data.normal_()
    state = {f"arcface.{k}": v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    state["flameModel.regressor.output.weight"] = torch.zeros(300, 300)  # MICA's shape regressor: skipped
    net = MICAArcFace.from_official(state, config=cfg)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(net(x), MICAArcFace.from_official(
        {k[len("arcface."):]: v for k, v in state.items() if k.startswith("arcface.")}, config=cfg)(x))
    bad = dict(state)
    del bad["arcface.layer2.1.conv1.weight"]
    with pytest.raises(Exception, match=r"layer2\.1\.conv1\.weight"):
        MICAArcFace.from_official(bad, config=cfg)


def test_csim_arcface_option_builds_the_r100_and_records_it() -> None:
    pytest.importorskip("avatar.losses.arcface_mica")
    with pytest.warns(UserWarning, match="RANDOM"):
        metric = CSIM(arcface="r100-mica", allow_random_weights=True, align="none")
    assert isinstance(metric.embedder, MICAArcFace) and metric.embedder.config.layers == (3, 13, 30, 3)
    assert metric.options["arcface"] == "r100-mica" and "iresnet-100" in metric.options["network"]
    assert metric.target_dependencies()["arcface"] == "r100-mica" and not metric.comparable
    assert CSIM.default_options()["arcface"] == "r18"
    with pytest.raises(InputError, match="arcface"):
        CSIM(arcface="r50", embedder=_Embed())


def test_r18_and_r100_differ_only_in_stage_depths() -> None:
    assert MICAArcFaceConfig().widths == IResNet().config.widths and IResNet().config.layers == (2, 2, 2, 2)


# ---- CSIM: norm_crop alignment -------------------------------------------------------------------------------


def test_alignment_is_the_least_squares_similarity_to_the_insightface_template() -> None:
    g = torch.Generator().manual_seed(3)
    five = FIVE[None] + torch.randn(3, 5, 2, generator=g, dtype=torch.float64) * 2.0
    lm = FaceLandmarks(five, torch.ones(3, dtype=torch.bool))
    m = _transforms(lm, INSIGHTFACE_TEMPLATE_112)
    for i in range(3):
        want = _umeyama_2d(five[i].numpy(), INSIGHTFACE_TEMPLATE_112.numpy())
        np.testing.assert_allclose(m[i].numpy(), want, atol=1e-9)
    # the same five points through the 68-landmark route (five_points="from-68")
    m68 = _transforms(FaceLandmarks(_five_points_68(five), lm.found), INSIGHTFACE_TEMPLATE_112)
    torch.testing.assert_close(m68, m)
    skimage = pytest.importorskip("skimage.transform")
    t = skimage.SimilarityTransform()
    t.estimate(five[0].numpy(), INSIGHTFACE_TEMPLATE_112.numpy())
    np.testing.assert_allclose(m[0].numpy(), t.params[:2], atol=1e-9)


def test_aligned_crop_matches_cv2_warp_affine_like_norm_crop() -> None:
    cv2 = pytest.importorskip("cv2")
    from avatar.losses.arcface import warp_affine

    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(xx / 9), 0.5 + 0.4 * torch.cos(yy / 7), (xx + yy) / 254])[None]
    m = _transforms(FaceLandmarks(FIVE[None], torch.ones(1, dtype=torch.bool)), INSIGHTFACE_TEMPLATE_112)
    ours = warp_affine(img.double(), m, (112, 112))[0].permute(1, 2, 0).numpy()
    ref = cv2.warpAffine(img[0].permute(1, 2, 0).double().numpy(), m[0].numpy(), (112, 112),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    # compare where the whole bilinear footprint lies inside the image (outside, both are black but blend the
    # border differently); cv2 rounds the interpolation weights to 1/32
    mt = np.vstack([m[0].numpy(), [0, 0, 1]])
    ys, xs = np.mgrid[0:112, 0:112]
    src = np.linalg.inv(mt) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    inside = ((src[:2] >= 1) & (src[:2] <= 126)).all(0).reshape(112, 112)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(ours[inside], ref[inside], atol=5e-3)
    assert np.abs(ours[inside] - ref[inside]).mean() < 1e-3


def test_five_points_detector_uses_the_detector_keypoints() -> None:
    pred, target = _faces(1), _faces(2)
    five = FIVE[None].expand(4, 5, 2).clone()

    class Landmarks:
        comparable = True

        def __call__(self, images: torch.Tensor) -> FaceLandmarks:
            return FaceLandmarks(torch.full((images.shape[0], 68, 2), float("nan")), torch.zeros(images.shape[0],
                                                                                                  dtype=torch.bool))

        def five_points(self, images: torch.Tensor) -> FaceLandmarks:
            return FaceLandmarks(five[: images.shape[0]], torch.ones(images.shape[0], dtype=torch.bool))

    det = CSIM(embedder=_Embed(), landmarks=Landmarks(), five_points="detector")
    v_det = det.update(pred, target)
    ref = CSIM(embedder=_Embed(), five_points="from-68")
    v_68 = ref.update(pred, target, pred_landmarks=_five_points_68(five), target_landmarks=_five_points_68(five))
    torch.testing.assert_close(v_det, v_68)
    assert det.target_dependencies()["five_points"] == "detector"
    with pytest.raises(ValueError, match=r"\(4, 68, 2\)"):
        CSIM(embedder=_Embed()).update(pred, target, pred_landmarks=five, target_landmarks=five)


# ---- failed faces: skip (default) vs zero (GAGAvatar) --------------------------------------------------------


def _csim_with_one_failure(failed_face: str) -> tuple[CSIM, torch.Tensor]:
    pred, target = _faces(1), _faces(2)
    lm = _five_points_68(FIVE[None].expand(4, 5, 2).clone())
    found = torch.tensor([True, False, True, True])
    metric = CSIM(embedder=_Embed(), failed_face=failed_face)
    values = metric.update(pred, target, ids=["a", "b", "c", "d"], pred_landmarks=(lm, found),
                           target_landmarks=(lm, torch.ones(4, dtype=torch.bool)))
    return metric, values


def test_failed_face_zero_changes_the_mean_exactly_as_expected() -> None:
    skip, v_skip = _csim_with_one_failure("skip")
    zero, v_zero = _csim_with_one_failure("zero")
    assert torch.isnan(v_skip[1]) and v_zero[1] == 0
    torch.testing.assert_close(v_zero[[0, 2, 3]], v_skip[[0, 2, 3]])
    r_skip, r_zero = skip.compute(), zero.compute()
    found = v_skip[[0, 2, 3]]
    assert r_skip.count == 3 and r_skip.excluded == 1 and r_skip.value == pytest.approx(float(found.mean()))
    assert r_zero.count == 4 and r_zero.excluded == 0 and r_zero.value == pytest.approx(float(found.sum()) / 4)
    assert r_zero.ids == ["a", "b", "c", "d"] and r_zero.values[1] == 0
    assert r_skip.extra["failed_faces"] == 1 and r_skip.extra["failed_face"] == "skip"
    assert r_zero.extra["failed_faces"] == 1 and r_zero.extra["mean_without_failed_faces"] == pytest.approx(
        r_skip.value)
    assert any("scored 0" in n for n in r_zero.notes) and not any("scored 0" in n for n in r_skip.notes)
    assert CSIM.default_options()["failed_face"] == "skip"


def test_failed_face_zero_survives_the_cache_route_of_eval_run() -> None:
    """eval.scoring caches kept values and exclusions (with reasons) and feeds them back with add_values /
    add_exclusions: the zero policy must give the same result that way."""
    direct, _ = _csim_with_one_failure("zero")
    want = direct.compute()
    again = CSIM(embedder=_Embed(), failed_face="zero")
    kept = dict(zip(direct._ids, direct._values_tensor().tolist(), strict=True))
    assert direct._exclusions == {"b": FAILED_FACE_MARK + "no face found in pred"}
    again.add_values(torch.tensor([kept["a"]], dtype=torch.float64), ["a"])
    again.add_exclusions(["b"], direct._exclusions["b"])
    again.add_values(torch.tensor([kept["c"], kept["d"]], dtype=torch.float64), ["c", "d"])
    got = again.compute()
    assert got.value == pytest.approx(want.value) and got.count == 4 and got.ids == want.ids
    # a caller's own exclusion (not a face failure) stays an exclusion under "zero"
    again.add_exclusions(["e"], "missing frame")
    r = again.compute()
    assert r.count == 4 and r.excluded == 1 and r.extra["failed_faces"] == 1


def test_failed_face_zero_for_the_motion_metrics() -> None:
    exp_p, exp_t = torch.zeros(3, 64, dtype=torch.float64), torch.ones(3, 64, dtype=torch.float64)
    z3 = torch.zeros(3, 3, dtype=torch.float64)
    pred = {"exp": exp_p, "angle": z3 + 0.5, "trans": z3, "found": torch.tensor([True, True, False])}
    target = {"exp": exp_t, "angle": z3, "trans": z3 + 1.0}
    for cls, per_found in ((AED, 1.0), (APD, 0.75)):
        skip, zero = cls(comparable=True), cls(comparable=True, failed_face="zero")
        skip.update_coeffs(pred, target)
        zero.update_coeffs(pred, target)
        assert skip.compute().value == pytest.approx(per_found)
        assert zero.compute().value == pytest.approx(per_found * 2 / 3)
        assert zero.compute().extra["failed_faces"] == 1
    lm = torch.zeros(3, 68, 2, dtype=torch.float64)
    akd = AKD(comparable=True, failed_face="zero")
    akd.update_landmarks((lm + 2, torch.tensor([True, False, True])), lm)
    assert akd.compute().value == pytest.approx(4 / 3) and akd.compute().count == 3


# ---- APD angles only ------------------------------------------------------------------------------------------


def test_apd_angles_only_against_a_manual_l1() -> None:
    g = torch.Generator().manual_seed(7)
    pa, ta = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    pt, tt = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    exp = torch.zeros(5, 64, dtype=torch.float64)
    pred, target = {"exp": exp, "angle": pa, "trans": pt}, {"exp": exp, "angle": ta, "trans": tt}
    angles = APD(comparable=True, include_translation=False)
    both = APD(comparable=True)
    v_angles = angles.update_coeffs(pred, target)
    v_both = both.update_coeffs(pred, target)
    for i in range(5):
        assert float(v_angles[i]) == pytest.approx(sum(abs(float(pa[i, k] - ta[i, k])) for k in range(3)) / 3)
        manual = [abs(float(pa[i, k] - ta[i, k])) for k in range(3)] + [abs(float(pt[i, k] - tt[i, k]))
                                                                       for k in range(3)]
        assert float(v_both[i]) == pytest.approx(sum(manual) / 6)
    assert APD.default_options()["include_translation"] is True
    assert angles.target_dependencies()["coefficients"] == ["angle"]
    assert both.target_dependencies()["coefficients"] == ["angle", "trans"]


# ---- grayscale SSIM ------------------------------------------------------------------------------------------


def test_grayscale_ssim_matches_skimage_on_the_luma() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(11)
    pred = torch.rand(2, 3, 40, 36, generator=g, dtype=torch.float64)
    target = (pred * 0.7 + 0.3 * torch.rand(2, 3, 40, 36, generator=g, dtype=torch.float64)).clamp(0, 1)
    w = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64).reshape(1, 3, 1, 1)
    gp, gt = (pred * w).sum(1), (target * w).sum(1)
    for preset in ("gagavatar", "wang2004"):
        kwargs = {} if preset == "gagavatar" else {"channels": "gray"}
        v = SSIM(preset=preset, **kwargs).update(pred, target)
        for i in range(2):
            ref = metrics.structural_similarity(gp[i].numpy(), gt[i].numpy(), gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, data_range=1.0)
            assert float(v[i]) == pytest.approx(ref, abs=1e-10)
    assert SSIM.default_options()["channels"] == "rgb"
    assert build_metric("ssim", preset="gagavatar").options["channels"] == "gray"
    assert build_metric("ssim", preset="gagavatar", channels="rgb").options["channels"] == "rgb"


def test_gray_weights_are_torchvisions_rgb_to_grayscale() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    w = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64).reshape(1, 3, 1, 1)
    torch.testing.assert_close(tvf.rgb_to_grayscale(x), (x * w).sum(1, keepdim=True))


# ---- AKD landmark network -------------------------------------------------------------------------------------


def test_akd_landmark_model_is_checked_against_the_callable_and_keys_the_cache() -> None:
    class InsightFace68:
        comparable = True
        landmark_model = "insightface-3d68"

        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            return torch.zeros(images.shape[0], 68, 2, dtype=torch.float64) + images.mean()

    assert AKD.default_options()["landmark_model"] == "retinaface-3dfan"
    with pytest.raises(InputError, match="insightface-3d68"):
        AKD(landmarks=InsightFace68())  # the default names another network
    akd = AKD(landmarks=InsightFace68(), landmark_model="insightface-3d68")
    assert akd.comparable and "InsightFace" in akd.options["landmark_network"]
    assert akd.target_dependencies()["landmark_model"] == "insightface-3d68"
    pred, target = _faces(1, 2, 32), _faces(2, 2, 32)
    v = akd.update(pred, target)
    torch.testing.assert_close(v, (pred.mean() - target.mean()).abs().double().expand(2), rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="landmark_model"):
        AKD(landmark_model="dlib")
    plain = AKD(landmarks=lambda x: torch.zeros(x.shape[0], 68, 2), landmark_model="face-alignment-2dfan")
    assert plain.options["landmark_model"] == "face-alignment-2dfan"  # an undeclared callable is taken at its word


def test_reference_cache_spec_changes_with_the_target_side_options(tmp_path) -> None:
    cache = ReferenceCache(tmp_path)

    class Lm:
        cache_fingerprint = "toy-landmarks-v1"

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 68, 2)

    lm = Lm()
    specs = {name: cache.spec(m) for name, m in {
        "akd": AKD(landmarks=lm), "akd-2dfan": AKD(landmarks=lm, landmark_model="face-alignment-2dfan"),
        "akd-zero": AKD(landmarks=lm, failed_face="zero"),
    }.items()}
    assert specs["akd"] != specs["akd-2dfan"]
    assert specs["akd"] is not None and specs["akd"] == specs["akd-zero"]  # failed_face: pair only
    emb = _Embed()
    csim = {k: cache.spec(CSIM(embedder=emb, landmarks=lm, **o)) for k, o in {
        "base": {}, "r100": {"arcface": "r100-mica"}, "det": {"five_points": "detector"},
        "zero": {"failed_face": "zero"}}.items()}
    assert csim["base"] is not None and len({csim["base"], csim["r100"], csim["det"]}) == 3
    assert csim["base"] == csim["zero"]
