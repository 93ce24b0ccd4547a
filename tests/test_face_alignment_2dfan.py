"""face_alignment's 2-D landmarks (SFD + 2DFAN4): avatar.face.s3fd, avatar.face.fan2d, the eval landmark callable
and AKD's ``landmark_model="face-alignment-2dfan"``.

Tiny random networks only; the official-size S3FD is built on the meta device (names and shapes, written out here
from face_alignment 1.4.1's ``net_s3fd.py``). Side-by-side numbers against the official package:
``scripts/compare_official_face_alignment.py``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avatar.errors import CheckpointMismatchError, InputError
from avatar.face.fan2d import FaceAlignment2D, FaceAlignment2DConfig, official_state
from avatar.face.fan3d import FAN, FANConfig, crop_face, crop_params_from_box
from avatar.face.s3fd import (
    S3FD,
    S3FDConfig,
    decode_candidates,
    filter_detections,
    nms,
    rig_for_random_weights,
)
from avatar.hub import registry
from avatar.hub.download import AssetNotFoundError
from avatar.hub.formats import read_torch_checkpoint, read_torchscript_archive
from eval.face_networks import FaceAlignmentLandmarks
from eval.metrics import AKD, MissingWeightsError
from eval.metrics.face import LANDMARK_MODELS, as_landmarks

# ---------------------------------------------------------------------------------------------------------
# helpers


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return module.eval()


def _tiny_pipeline(seed: int = 0, level: int = 2) -> FaceAlignment2D:
    model = FaceAlignment2D(FaceAlignment2DConfig.tiny())
    _randomize(model, seed)
    rig_for_random_weights(model.detector, level=level)
    return model.eval()


def _write_official_files(model: FaceAlignment2D, folder: Path) -> Path:
    """The two files as face_alignment publishes them: a torch.save'd state dict and a traced TorchScript archive."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.detector.state_dict(), folder / "s3fd-619a316812.pth")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.fan, torch.rand(1, 3, 256, 256), check_trace=False)
        traced.save(str(folder / "2DFAN4-cd938726ad.zip"))
    return folder


def _faces(seed: int, n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# S3FD network: official names, loading


def _official_s3fd_shapes() -> dict[str, tuple[int, ...]]:
    """face_alignment's ``s3fd`` tensors, written out from net_s3fd.py (every conv has a bias)."""
    convs = {
        "conv1_1": (64, 3, 3), "conv1_2": (64, 64, 3), "conv2_1": (128, 64, 3), "conv2_2": (128, 128, 3),
        "conv3_1": (256, 128, 3), "conv3_2": (256, 256, 3), "conv3_3": (256, 256, 3),
        "conv4_1": (512, 256, 3), "conv4_2": (512, 512, 3), "conv4_3": (512, 512, 3),
        "conv5_1": (512, 512, 3), "conv5_2": (512, 512, 3), "conv5_3": (512, 512, 3),
        "fc6": (1024, 512, 3), "fc7": (1024, 1024, 1), "conv6_1": (256, 1024, 1), "conv6_2": (512, 256, 3),
        "conv7_1": (128, 512, 1), "conv7_2": (256, 128, 3),
        "conv3_3_norm_mbox_conf": (4, 256, 3), "conv3_3_norm_mbox_loc": (4, 256, 3),
        "conv4_3_norm_mbox_conf": (2, 512, 3), "conv4_3_norm_mbox_loc": (4, 512, 3),
        "conv5_3_norm_mbox_conf": (2, 512, 3), "conv5_3_norm_mbox_loc": (4, 512, 3),
        "fc7_mbox_conf": (2, 1024, 3), "fc7_mbox_loc": (4, 1024, 3),
        "conv6_2_mbox_conf": (2, 512, 3), "conv6_2_mbox_loc": (4, 512, 3),
        "conv7_2_mbox_conf": (2, 256, 3), "conv7_2_mbox_loc": (4, 256, 3),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (cout, cin, k) in convs.items():
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)
    shapes.update({"conv3_3_norm.weight": (256,), "conv4_3_norm.weight": (512,), "conv5_3_norm.weight": (512,)})
    return shapes


def test_s3fd_official_names_and_shapes_meta() -> None:
    with torch.device("meta"):
        net = S3FD()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == _official_s3fd_shapes()
    fresh = S3FD(S3FDConfig.tiny())
    assert fresh.conv3_3_norm.weight.eq(10).all() and fresh.conv5_3_norm.weight.eq(5).all()  # L2Norm initial scales


def test_s3fd_level_sizes_and_max_out() -> None:
    net = S3FD.tiny(seed=3)
    with torch.no_grad():
        net.conv3_3_norm_mbox_conf.weight.zero_()
        net.conv3_3_norm_mbox_conf.bias.copy_(torch.tensor([1.0, 5.0, 2.0, 0.5]))
        out = net(torch.randn(1, 3, 64, 80))
    sizes = [tuple(c.shape[-2:]) for c, _ in out]
    # /4, /8, /16, then fc6's padding of 3 with a 3x3 kernel adds 4, then two stride-2 convs
    assert sizes == [(16, 20), (8, 10), (4, 5), (6, 6), (3, 3), (2, 2)]
    assert all(c.shape[1] == 2 and loc.shape[1] == 4 and loc.shape[-2:] == c.shape[-2:] for c, loc in out)
    torch.testing.assert_close(out[0][0][0, :, 0, 0], torch.tensor([5.0, 0.5]))  # background = max of three


def test_s3fd_input_is_bgr_minus_mean() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    x = S3FD.tiny().to_network_input(image)
    assert x.shape == (1, 3, 2, 3) and x.is_contiguous()
    assert x[0, 0, 1, 2] == float(image[1, 2, 2]) - 104.0  # blue
    assert x[0, 2, 0, 1] == float(image[0, 1, 0]) - 123.0  # red


def test_official_files_load_into_ours(tmp_path: Path) -> None:
    """A torch.save'd S3FD state dict and a traced FAN archive (face_alignment's formats) load by name, through the
    restricted readers and through the registry (model id face-alignment-2dfan, files from a local folder)."""
    source = _tiny_pipeline(seed=1)
    folder = _write_official_files(source, tmp_path / "official")
    fan_w = read_torchscript_archive(folder / "2DFAN4-cd938726ad.zip")
    det_w = read_torch_checkpoint(folder / "s3fd-619a316812.pth")
    assert set(fan_w.tensors) == set(source.fan.state_dict())
    loaded = FaceAlignment2D.from_official(official_state(fan_w.tensors, {f"module.{k}": v for k, v in
                                                                          det_w.tensors.items()}),
                                           config=source.config)
    fetched = FaceAlignment2D.from_pretrained(local_dir=folder, config=source.config)
    detector = S3FD.from_pretrained(local_dir=folder, config=source.config.detector)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v) and torch.equal(fetched.state_dict()[k], v), k
    for k, v in source.detector.state_dict().items():
        assert torch.equal(detector.state_dict()[k], v), k
    image = (np.random.default_rng(0).random((72, 64, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(fetched(image), source(image))


def test_strict_loading_names_the_bad_key() -> None:
    net = S3FD.tiny()
    state = net.state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"Missing 1: fc7\.bias"):
        net.load_official({k: v for k, v in state.items() if k != "fc7.bias"})
    with pytest.raises(CheckpointMismatchError, match=r"Unexpected 1: conv8_1\.weight"):
        net.load_official({**state, "conv8_1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"Wrong shape 1: conv3_3_norm\.weight"):
        net.load_official({**state, "conv3_3_norm.weight": torch.zeros(3)})
    model = FaceAlignment2D.tiny()
    fan_sd, det_sd = model.fan.state_dict(), model.detector.state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"Missing 1: fan\.l1\.weight"):
        model.load_official(official_state({k: v for k, v in fan_sd.items() if k != "l1.weight"}, det_sd))
    with pytest.raises(CheckpointMismatchError, match=r"Unexpected 1: detector\.extra"):
        model.load_official(official_state(fan_sd, {**det_sd, "extra": torch.zeros(1)}))


def test_registry_entries() -> None:
    s3fd, fan = registry.FILES["s3fd"], registry.FILES["fan2d-landmarks"]
    assert s3fd.url == "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth" and s3fd.fmt == "torch"
    assert fan.url == "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip"
    assert fan.fmt == "torchscript" and fan.repo == "1adrianb/face-alignment" and "BSD" in fan.licence
    spec = registry.get_model("face-alignment-2dfan")
    assert spec.checkpoint == "fan2d-landmarks" and spec.requires == ("s3fd",)
    assert registry.model_class(spec) is FaceAlignment2D and registry.model_class(registry.get_model("s3fd")) is S3FD
    for cls in (S3FD, FaceAlignment2D):
        with pytest.raises(AssetNotFoundError):  # offline, nothing cached
            cls.from_pretrained()


@pytest.mark.parametrize("cls", [S3FD, FaceAlignment2D])
def test_model_base_round_trip(cls: type, tmp_path: Path) -> None:
    model = cls.tiny(seed=5)
    assert not model.training and cls.config_class.from_dict(model.config.to_dict()) == model.config
    loaded = cls.from_pretrained(model.save_pretrained(tmp_path / "saved"))
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------------------
# detection post-processing, hand-written cases


def test_decode_candidates_hand_checked() -> None:
    prob0 = np.zeros((3, 3), np.float32)
    prob0[1, 2] = 0.9
    prob0[0, 0] = np.float32(0.05)  # not above the threshold
    prob0[2, 0] = 0.06
    loc0 = np.zeros((4, 3, 3), np.float32)
    loc0[:, 2, 0] = [0.5, -1.0, 5 * math.log(2.0), 0.0]
    prob1 = np.full((1, 2), 0.2, np.float32)
    loc1 = np.zeros((4, 1, 2), np.float32)
    out = decode_candidates([(prob0, loc0), (prob1, loc1)], strides=(4, 8))
    assert out.dtype == np.float64 and out.shape == (4, 5)
    # level 0 row-major: (y=1, x=2) then (y=2, x=0); then level 1 (x=0, x=1)
    np.testing.assert_allclose(out[0], [10 - 8, 6 - 8, 10 + 8, 6 + 8, np.float32(0.9)], rtol=0, atol=0)
    # prior (2, 10, 16, 16): centre (2 + 0.5 * 0.1 * 16, 10 - 0.1 * 16), width 16 * 2, height 16
    np.testing.assert_allclose(out[1], [2.8 - 16, 8.4 - 8, 2.8 + 16, 8.4 + 8, np.float32(0.06)], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[2:, :4], [[4 - 16, 4 - 16, 4 + 16, 4 + 16], [12 - 16, 4 - 16, 12 + 16, 4 + 16]])
    assert decode_candidates([(np.zeros((2, 2), np.float32), np.zeros((4, 2, 2), np.float32))], (4,)).shape == (0, 5)


def test_nms_and_filter_hand_checked() -> None:
    dets = np.array([
        [0, 0, 9, 9, 0.9],     # A
        [1, 1, 10, 10, 0.8],   # B: IoU with A 81/119, with D 54/146
        [20, 20, 29, 29, 0.7],  # C: overlaps nothing
        [0, 5, 9, 14, 0.95],   # D: IoU with A 50/150 > 0.3 -> A goes
        [40, 40, 49, 49, 0.45],  # E: kept by NMS, removed by the 0.5 filter
        [41, 40, 50, 49, 0.44],  # F: suppressed by E (NMS runs before the filter)
    ], dtype=np.float64)
    assert nms(dets, 0.3).tolist() == [3, 2, 4]
    np.testing.assert_array_equal(filter_detections(dets, 0.3, 0.5), dets[[3, 2]])
    # IoU exactly at the threshold is kept: a 3x10 box inside a 10x10 one, 30 / 100
    pair = np.array([[0, 0, 9, 9, 0.9], [0, 0, 2, 9, 0.6]])
    assert nms(pair, 0.3).tolist() == [0, 1] and nms(pair, 0.29).tolist() == [0]
    # ties: visited in the reverse of NumPy's default argsort, as upstream
    tied = np.array([[10.0 * i, 0, 10.0 * i + 5, 5, 0.7] for i in range(5)])
    assert nms(tied, 0.3).tolist() == np.argsort(tied[:, 4])[::-1].tolist()
    assert nms(np.zeros((0, 5)), 0.3).shape == (0,) and filter_detections(np.zeros((0, 5))).shape == (0, 5)


def test_rigged_detector_reports_its_priors() -> None:
    det = rig_for_random_weights(S3FD.tiny(seed=2), level=2)
    boxes = det.detect((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    assert len(boxes) >= 1 and np.all(boxes[:, 2] - boxes[:, 0] == 64) and np.all(boxes[:, 3] - boxes[:, 1] == 64)
    assert np.allclose(boxes[:, 4], 1 / (1 + math.exp(-8)), atol=1e-6)
    assert len(rig_for_random_weights(S3FD.tiny(), level=9).detect(np.zeros((32, 32, 3), np.uint8))) == 0


def test_crop_params_for_sfd_boxes_are_float64() -> None:
    box = np.array([10.3, 20.7, 110.9, 140.1, 0.99])
    center, scale = crop_params_from_box(box, 195.0, dtype=torch.float64)
    assert center.dtype == np.float64 and scale == pytest.approx((100.6 + 119.4) / 195.0)
    assert center[0] == box[2] - (box[2] - box[0]) / 2.0
    assert center[1] == (box[3] - (box[3] - box[1]) / 2.0) - (box[3] - box[1]) * 0.12
    image = (np.random.default_rng(2).random((150, 130, 3)) * 255).astype(np.uint8)
    exact = np.array([64.0, 80.0])  # representable: both precisions give the same crop
    np.testing.assert_array_equal(crop_face(image, exact, 1.1), crop_face(image, exact.astype(np.float32), 1.1))


# ---------------------------------------------------------------------------------------------------------
# the pipeline and the eval landmark callable


def test_pipeline_first_face_is_the_first_detection() -> None:
    model = _tiny_pipeline(seed=4)
    rng = np.random.default_rng(3)
    images = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(3)]
    dets = model.detect_batch(images, batch_size=2)
    points, found = model.first_face(images, batch_size=2)
    assert points.shape == (3, 68, 2) and points.dtype == torch.float64 and found.all()
    for image, d, p in zip(images, dets, points, strict=True):
        all_faces = model(image)
        assert all_faces.shape == (len(d), 68, 2) and all_faces.dtype == np.float32
        np.testing.assert_array_equal(all_faces[0], p.numpy())
        np.testing.assert_array_equal(all_faces, np.round(all_faces))  # integer pixels, as upstream
        np.testing.assert_array_equal(d, model.detect_batch([image], batch_size=1)[0])


def test_landmark_callable_declares_its_model_and_shapes() -> None:
    assert "face_alignment" in LANDMARK_MODELS[FaceAlignmentLandmarks.landmark_model]
    fn = FaceAlignmentLandmarks(_tiny_pipeline(seed=5), official=False)
    images = _faces(6, n=3)
    out = fn(images)
    lm = as_landmarks(out, 3)
    assert lm.points.shape == (3, 68, 2) and lm.found.all() and not fn.comparable
    np.testing.assert_array_equal(out.points.numpy(), fn((images * 255).round().to(torch.uint8)).points.numpy())
    assert isinstance(fn.cache_fingerprint(), str)
    assert fn.cache_fingerprint() != FaceAlignmentLandmarks(_tiny_pipeline(seed=6), official=False).cache_fingerprint()
    blind = FaceAlignmentLandmarks(_tiny_pipeline(seed=5, level=9), official=True)  # detects nothing
    none = blind(images)
    assert not none.found.any() and torch.isnan(none.points).all() and blind.comparable
    with pytest.raises(ValueError, match="B, 3, H, W"):
        fn(images[0])


# ---------------------------------------------------------------------------------------------------------
# AKD builds the network


@pytest.fixture
def tiny_official(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FaceAlignment2D:
    """The model id face-alignment-2dfan resolves to tiny official-format files in a local folder."""
    source = _tiny_pipeline(seed=7)
    folder = _write_official_files(source, tmp_path / "official")
    real = FaceAlignment2D.from_pretrained.__func__  # type: ignore[attr-defined]

    def from_pretrained(cls: type, name: object = None, **kwargs: object) -> FaceAlignment2D:
        return real(cls, name, local_dir=folder, config=source.config, **kwargs)

    monkeypatch.setattr(FaceAlignment2D, "from_pretrained", classmethod(from_pretrained))
    return source


def test_akd_builds_face_alignment_landmarks(tiny_official: FaceAlignment2D) -> None:
    akd = AKD(landmark_model="face-alignment-2dfan", device="cpu")
    assert isinstance(akd.landmark_fn, FaceAlignmentLandmarks) and akd.comparable
    assert "2DFAN4" in akd.options["landmarks"] and "face_alignment" in akd.options["landmark_network"]
    pred, target = _faces(1), _faces(2)
    values = akd.update(pred, target, ids=["a", "b"])
    expected = FaceAlignmentLandmarks(tiny_official, official=True)
    lp, lt = expected(pred), expected(target)
    torch.testing.assert_close(values, (lp.points - lt.points).abs().flatten(1).mean(1), rtol=0, atol=0)
    result = akd.compute()
    assert result.count == 2 and result.options["landmark_model"] == "face-alignment-2dfan"
    with pytest.raises(InputError, match="retinaface-3dfan"):
        AKD(landmarks=akd.landmark_fn)  # the default option names another network


def test_akd_face_alignment_without_weights() -> None:
    with pytest.raises(MissingWeightsError, match="face_alignment"):
        AKD(landmark_model="face-alignment-2dfan")
    # random weights (official size; the detector reports its 128-pixel priors): runs end to end, not comparable
    akd = AKD(landmark_model="face-alignment-2dfan", allow_random_weights=True)
    assert not akd.comparable and "random" in akd.options["landmarks"]
    values = akd.update(_faces(3, n=1, size=48), _faces(4, n=1, size=48))
    assert values.shape == (1,) and torch.isfinite(values).all()
    assert AKD(landmark_model="retinaface-3dfan").landmark_fn is None  # the default is passed in by eval.run


def test_scorer_lets_akd_build_its_landmarks(tiny_official: FaceAlignment2D, monkeypatch: pytest.MonkeyPatch) -> None:
    import eval.face_networks
    from eval.protocols import get_protocol
    from eval.scoring import Scorer

    def no_shared_analysis(*args: object, **kwargs: object) -> None:
        raise AssertionError("AKD alone with face-alignment-2dfan needs no RetinaFace / 3DFAN analysis")

    monkeypatch.setattr(eval.face_networks, "build_face_networks", no_shared_analysis)
    protocol = get_protocol("hdtf", "same-identity")
    options = {"akd": {"landmark_model": "face-alignment-2dfan"}}
    scorer = Scorer(protocol, ["akd"], options, device="cpu")
    assert scorer.face is None and isinstance(scorer.metrics["akd"].landmark_fn, FaceAlignmentLandmarks)

    class SharedFace:  # the shared analysis of CSIM: its landmarks are not AKD's
        landmarks = staticmethod(lambda x: torch.zeros(x.shape[0], 68, 2))
        coefficients = None

    embedder = nn.Sequential(nn.Conv2d(3, 4, 8, 8), nn.Flatten(), nn.LazyLinear(8))
    scorer = Scorer(protocol, ["akd", "csim"], options, device="cpu", face=SharedFace(),
                    extra_kwargs={"csim": {"embedder": embedder}})
    assert isinstance(scorer.metrics["akd"].landmark_fn, FaceAlignmentLandmarks)
    assert scorer.metrics["csim"].landmark_fn is SharedFace.landmarks


# ---------------------------------------------------------------------------------------------------------
# real photos (../shared/media)


def test_real_photos_one_at_a_time_and_batched(shared_media: Path) -> None:
    import cv2

    paths = [shared_media / "portraits" / "wild" / "public_domain" / "astronaut.png",
             shared_media / "portraits" / "aligned" / "align_images" / "tom-hanks.jpg"]
    images = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (128, 128)) for p in paths]
    model = _tiny_pipeline(seed=8)
    x = model.detector.to_network_input(images[0])
    reference = torch.from_numpy(images[0][..., ::-1].transpose(2, 0, 1).copy()).float()[None]
    torch.testing.assert_close(x, reference - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1), rtol=0, atol=0)
    single = [model.detect_batch([im], batch_size=1)[0] for im in images]
    batched = model.detect_batch(images, batch_size=2)
    for a, b in zip(single, batched, strict=True):
        assert a.shape == b.shape and len(a) > 0
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)
    points, found = model.first_face(images)
    assert found.all() and torch.isfinite(points).all()


def test_fan2d_reuses_the_fan3d_network() -> None:
    model = FaceAlignment2D.tiny()
    assert type(model.fan) is FAN and model.config.fan == FANConfig.tiny()
    assert FaceAlignment2DConfig().fan == FANConfig()  # 2DFAN4: 4 stacks, 256 features, 68 points, 256 crops
