"""RetinaFace detector and H3R 98-point landmarks (avatar.face.retinaface, avatar.face.h3r).

Golden numbers below were produced once by the official classes (YuDeng/Portrait-4D,
``data_preprocess/lib/models/fd/models/retinaface.py`` with the ResNet-50 config of
``configs/pipeline_config1.yaml``, and ``lib/models/ldmk/hrnet.py`` ``LandmarkDetector``'s backbone + head) filled
with the deterministic weights of :func:`_det_fill`; the official code is not needed to run these tests.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from avatar.face._detect_utils import as_uint8_rgb, nms_plus_one
from avatar.face.h3r import (
    H3R,
    H3RConfig,
    H3RLandmarker,
    box_from_landmarks,
    crop_from_box,
    crop_to_image,
    decode_heatmaps,
    expand_boxes,
    image_to_crop,
    integer_crop_box,
)
from avatar.face.retinaface import (
    DetectedFace,
    ResNetBody,
    RetinaFace,
    RetinaFaceConfig,
    decode_boxes,
    decode_landmarks,
    official_key_map,
    prior_boxes,
)
from avatar.hub.weights import StateDictMismatchError

# --------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """The networks here are small: on shared CPUs, OpenMP hand-offs between threads cost more than the maths."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

_I = torch.arange(2 * 4099, dtype=torch.float64)
_X = _I * _I * 0.7548776662466927 + _I * 0.5698402909980532
_TABLE = (2.0 * (_X - torch.floor(_X)) - 1.0).float()


def _det_fill(module: nn.Module) -> None:
    """Deterministic, platform-independent weights (a quadratic Weyl sequence, rotated per tensor name)."""
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            n = t.numel()
            offset = zlib.crc32(name.encode()) % 4099
            base = _TABLE[offset:offset + 4099].repeat(n // 4099 + 1)[:n]
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                value = 1 + 0.5 * base.abs()
            elif name.endswith("running_mean"):
                value = 0.1 * base
            elif t.ndim == 1 and name.endswith("weight"):
                value = 1 + 0.1 * base
            elif t.ndim == 1:
                value = 0.1 * base
            else:
                value = base * (3.0 / (n // t.shape[0])) ** 0.5
            t.data.copy_(value.reshape(t.shape))


def _det_input(n: int, h: int, w: int) -> torch.Tensor:
    return (torch.sin(torch.arange(n * 3 * h * w, dtype=torch.float64) * 0.37) * 2).float().reshape(n, 3, h, w)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _conv_bn_keys(out: dict[str, tuple[int, ...]], prefix: str, cout: int, cin: int, k: int) -> None:
    """Expected keys of an official ``Sequential(Conv2d(bias=False), BatchNorm2d, ...)`` at ``prefix``."""
    out[f"{prefix}.0.weight"] = (cout, cin, k, k)
    _bn_keys(out, f"{prefix}.1", cout)


def _bn_keys(out: dict[str, tuple[int, ...]], prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.{name}"] = (c,)
    out[f"{prefix}.num_batches_tracked"] = ()


# --------------------------------------------------------------------------------------------------------
# RetinaFace: anchors, decoding, NMS


def test_prior_boxes_hand_checked() -> None:
    # 24 x 40 input: level 1 (step 8) has 3 x 5 cells, level 2 (16) ceil -> 2 x 3, level 3 (32) 1 x 2; 2 sizes each
    priors = prior_boxes(24, 40)
    assert priors.shape == (2 * (15 + 6 + 2), 4)
    # first cell of level 1, both sizes
    torch.testing.assert_close(priors[0], torch.tensor([4 / 40, 4 / 24, 16 / 40, 16 / 24]))
    torch.testing.assert_close(priors[1], torch.tensor([4 / 40, 4 / 24, 32 / 40, 32 / 24]))
    # row 1, col 2 of level 1: index (1 * 5 + 2) * 2
    torch.testing.assert_close(priors[14], torch.tensor([20 / 40, 12 / 24, 16 / 40, 16 / 24]))
    # level 2 starts after 30 anchors; its last cell (row 1, col 2), second size
    torch.testing.assert_close(priors[30 + 11], torch.tensor([40 / 40, 24 / 24, 128 / 40, 128 / 24]))
    # level 3, second column, 512 anchor
    torch.testing.assert_close(priors[-1], torch.tensor([48 / 40, 16 / 24, 512 / 40, 512 / 24]))
    assert prior_boxes(24, 40, clip=True).max() <= 1.0


def test_decode_boxes_and_landmarks_hand_checked() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    torch.testing.assert_close(decode_boxes(torch.zeros(1, 4), priors), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    # centre moves by loc * 0.1 * size; width doubles when loc_w * 0.2 = ln 2
    loc = torch.tensor([[1.0, -1.0, math.log(2) / 0.2, 0.0]])
    torch.testing.assert_close(decode_boxes(loc, priors), torch.tensor([[0.32, 0.26, 0.72, 0.66]]))
    pred = torch.tensor([[1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0, 2.0, 2.0]])
    expected = torch.tensor([[[0.52, 0.5], [0.5, 0.54], [0.48, 0.5], [0.5, 0.46], [0.54, 0.58]]])
    torch.testing.assert_close(decode_landmarks(pred, priors), expected)


def test_nms_uses_plus_one_areas_and_score_order() -> None:
    from torchvision.ops import nms

    a, b = [0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]
    boxes = torch.tensor([a, b])
    scores = torch.tensor([0.9, 0.8])
    # "+1" areas: 10 x 10 each, overlap 5 x 10 -> IoU 1/3; plain areas: 81 each, overlap 36 -> IoU 0.286
    assert nms_plus_one(boxes, scores, 0.3).tolist() == [0]
    assert nms(boxes, scores, 0.3).tolist() == [0, 1]  # the convention matters at this threshold
    assert nms_plus_one(boxes, scores, 0.4).tolist() == [0, 1]
    # higher score wins whatever the input order; ties keep the input order
    assert nms_plus_one(boxes, torch.tensor([0.5, 0.8]), 0.3).tolist() == [1]
    assert nms_plus_one(boxes, torch.tensor([0.7, 0.7]), 0.3).tolist() == [0]
    assert nms_plus_one(boxes.flip(0), torch.tensor([0.7, 0.7]), 0.3).tolist() == [0]
    assert nms_plus_one(torch.zeros(0, 4), torch.zeros(0), 0.4).tolist() == []


def test_nms_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    xy = rng.integers(0, 60, (40, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.integers(2, 30, (40, 2))], axis=1).astype(np.float32)
    scores = rng.permutation(40).astype(np.float32) / 40

    def iou(p: np.ndarray, q: np.ndarray) -> float:
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]) + 1)
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]) + 1)
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return w * h / (area(p) + area(q) - w * h)

    kept: list[int] = []
    for i in np.argsort(-scores):
        if all(iou(boxes[i], boxes[j]) <= 0.4 for j in kept):
            kept.append(int(i))
    assert nms_plus_one(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).tolist() == kept
    assert 3 < len(kept) < 40


# --------------------------------------------------------------------------------------------------------
# RetinaFace: pre-/post-processing and end to end


def test_preprocess_resize_rule_and_bgr_mean() -> None:
    model = RetinaFace.tiny()
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[...] = (10, 20, 30)  # RGB
    x, ratio = model.preprocess(image)
    assert ratio == 2.0 and x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    # channel 0 is blue: 30 - 104; then green 20 - 117; red 10 - 123
    assert x[0, :, 5, 7].tolist() == [-74.0, -97.0, -113.0]
    # non-integer factor: height -> 64 exactly, width rounded (77 * 1.28 = 98.56 -> 99)
    x, ratio = model.preprocess(np.zeros((50, 77, 3), dtype=np.uint8))
    assert x.shape == (1, 3, 64, 99) and ratio == pytest.approx(1.28)
    # torch input, channels first, floating point in [0, 1]
    t = torch.zeros(3, 32, 48)
    t[0], t[1], t[2] = 10 / 255, 20 / 255, 30 / 255
    assert torch.equal(model.preprocess(t)[0], model.preprocess(image)[0])


def _scripted_outputs(model: RetinaFace, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """Raw outputs for an ``h x w`` network input with four hand-placed candidates."""
    priors = model.priors(h, w)
    n = priors.shape[0]
    loc, land = torch.zeros(n, 4), torch.zeros(n, 10)
    scores = torch.zeros(n, 2)
    scores[:, 1] = 0.1
    small = 2 * (1 * (w // 8) + 2)  # level 1, row 1, col 2, 16 px anchor: centre (20, 12)
    scores[small, 1] = 0.99
    scores[small + 2, 1] = 0.9  # next column, same size: centre (28, 12); in the image IoU 561 / 1617 = 0.35
    scores[small + 1, 1] = 0.95  # same cell, 32 px anchor: contains the 16 px one, IoU 1089 / 4225
    big = n - 1  # last level-3 anchor (512 px)
    scores[big, 1] = 0.85
    scores[0, 1] = 0.8  # not above the threshold
    land[small] = torch.tensor([1.0, 0.0] * 5)
    return loc, scores, land


def test_postprocess_threshold_nms_scaling_and_size_order() -> None:
    model = RetinaFace.tiny()
    h, w, ratio = 64, 96, 0.5  # an image of 128 x 192 pixels
    faces = model.postprocess(*_scripted_outputs(model, h, w), (h, w), ratio)
    assert [round(f.score, 2) for f in faces] == [0.85, 0.95, 0.99, 0.9]  # largest first
    big, mid, small, right = faces
    # 16 px anchor at (20, 12) in the 96 x 64 input -> corners (12, 4, 28, 20) / 0.5
    np.testing.assert_allclose(small.box, [24, 8, 56, 40], atol=1e-4)
    np.testing.assert_allclose(right.box, [40, 8, 72, 40], atol=1e-4)
    np.testing.assert_allclose(mid.box, [8, -8, 72, 56], atol=1e-4)
    # last level-3 cell: centre (80, 48), 512 px
    np.testing.assert_allclose(big.box, [-352, -416, 672, 608], atol=1e-3)
    # landmark offset (1, 0) * 0.1 * 16 px = 1.6 px in the input -> 3.2 px in the image
    np.testing.assert_allclose(small.landmarks, [[(20 + 1.6) / 0.5, 12 / 0.5]] * 5, atol=1e-4)
    assert small.landmarks.shape == (5, 2) and small.box.dtype == np.float32
    assert big.size == pytest.approx(1024.0)

    strict = RetinaFace(RetinaFaceConfig.tiny()).with_thresholds(nms=0.3)
    faces = strict.postprocess(*_scripted_outputs(strict, h, w), (h, w), ratio)
    assert [round(f.score, 2) for f in faces] == [0.85, 0.95, 0.99]  # IoU 0.35 > 0.3 suppresses the 0.9 box


def _rig_heads(model: RetinaFace) -> None:
    """Zero the heads; only level 3's 512 px anchors get a face score (softmax(-10, 10) ~ 1)."""
    with torch.no_grad():
        for heads in (model.ClassHead, model.BboxHead, model.LandmarkHead):
            for head in heads:
                head.conv1x1.weight.zero_()
                head.conv1x1.bias.zero_()
        for level, head in enumerate(model.ClassHead):
            bias = torch.tensor([10.0, -10.0] * 2)
            if level == 2:
                bias[2:] = torch.tensor([-10.0, 10.0])  # anchor slot 1 (512 px), classes (background, face)
            head.conv1x1.bias.copy_(bias)


def test_detect_end_to_end_with_scripted_heads() -> None:
    model = RetinaFace.tiny()
    _rig_heads(model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    faces = model.detect(image)
    # four equal-score 512 px anchors overlap heavily: the first one (cell (0, 0), centre (16, 16) in the
    # 96 x 64 input) survives NMS; zero regressions decode to the anchor; image scale 1/2
    assert len(faces) == 1 and isinstance(faces[0], DetectedFace)
    np.testing.assert_allclose(faces[0].box, [(16 - 256) / 2, (16 - 256) / 2, (16 + 256) / 2, (16 + 256) / 2])
    np.testing.assert_allclose(faces[0].landmarks, np.full((5, 2), 8.0))
    assert faces[0].score > 0.999

    batch = model.detect_batch([image, image[:, :40], torch.from_numpy(image)])
    assert len(batch) == 3 and all(len(faces) == 1 for faces in batch)
    np.testing.assert_allclose(batch[0][0].box, faces[0].box)
    np.testing.assert_allclose(batch[2][0].box, faces[0].box)
    # 32 x 40 image -> 64 x 80 input; same anchor, same scale
    np.testing.assert_allclose(batch[1][0].box, faces[0].box)

    model.with_thresholds(confidence=1.0)  # softmax(-10, 10) rounds to 1.0 in float32
    assert model.detect(image) == []


def test_tiny_forward_shapes_and_batching() -> None:
    model = RetinaFace.tiny()
    loc, scores, land = model(torch.randn(2, 3, 64, 96))
    anchors = 2 * (8 * 12 + 4 * 6 + 2 * 3)
    assert loc.shape == (2, anchors, 4) and scores.shape == (2, anchors, 2) and land.shape == (2, anchors, 10)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, anchors))
    assert model.priors(64, 96).shape == (anchors, 4)

    model.with_thresholds(confidence=0.3)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 60, 3), dtype=np.uint8) for _ in range(2)]
    images.append(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    batch = model.detect_batch(images)
    for image, faces in zip(images, batch, strict=True):
        single = model.detect(image)
        assert len(single) == len(faces) > 0
        sizes = [f.size for f in faces]
        assert sizes == sorted(sizes, reverse=True)
        for a, b in zip(single, faces, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            assert a.landmarks.shape == (5, 2)


def test_resnet_body_matches_torchvision_bottleneck_resnet() -> None:
    from torchvision.models.resnet import Bottleneck as TVBottleneck
    from torchvision.models.resnet import ResNet

    torch.manual_seed(0)
    reference = ResNet(TVBottleneck, [1, 1, 1, 1]).eval()
    body = ResNetBody(64, (1, 1, 1, 1)).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert list(state) == list(body.state_dict())
    body.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c2, c3, c4 = body(x)
        r = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        r2 = reference.layer2(reference.layer1(r))
        r3 = reference.layer3(r2)
        r4 = reference.layer4(r3)
    for mine, ref in ((c2, r2), (c3, r3), (c4, r4)):
        torch.testing.assert_close(mine, ref)


# --------------------------------------------------------------------------------------------------------
# RetinaFace: official names, counts and loading


def _expected_retinaface_shapes() -> dict[str, tuple[int, ...]]:
    """Derived from the official code: ``body`` = torchvision resnet50 minus ``avgpool/fc`` (IntermediateLayerGetter
    with return layers layer2-4); FPN / SSH conv+BN blocks; 1x1 heads with 2 anchors per cell."""
    from torchvision.models import resnet50

    with torch.device("meta"):
        tv = resnet50()
    out = {f"body.{k}": tuple(v.shape) for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    for i, cin in zip((1, 2, 3), (512, 1024, 2048), strict=True):
        _conv_bn_keys(out, f"fpn.output{i}", 256, cin, 1)
    for i in (1, 2):
        _conv_bn_keys(out, f"fpn.merge{i}", 256, 256, 3)
    for s in (1, 2, 3):
        _conv_bn_keys(out, f"ssh{s}.conv3X3", 128, 256, 3)
        _conv_bn_keys(out, f"ssh{s}.conv5X5_1", 64, 256, 3)
        for name in ("conv5X5_2", "conv7X7_2", "conv7x7_3"):
            _conv_bn_keys(out, f"ssh{s}.{name}", 64, 64, 3)
    for head, values in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for level in range(3):
            out[f"{head}.{level}.conv1x1.weight"] = (2 * values, 256, 1, 1)
            out[f"{head}.{level}.conv1x1.bias"] = (2 * values,)
    return out


def test_official_retinaface_names_shapes_and_counts_on_meta() -> None:
    with torch.device("meta"):
        model = RetinaFace(RetinaFaceConfig.resnet50())
    shapes = _shapes(model)
    assert shapes == _expected_retinaface_shapes()
    families: dict[str, int] = {}
    for k in shapes:
        families[k.split(".")[0]] = families.get(k.split(".")[0], 0) + 1
    assert families == {"body": 318, "fpn": 30, "ssh1": 30, "ssh2": 30, "ssh3": 30,
                        "ClassHead": 6, "BboxHead": 6, "LandmarkHead": 6}
    assert len(shapes) == 456
    # parameters: resnet50 without fc 23,508,032 + FPN 2,099,712 + 3 SSH 1,661,184 + heads 24,672
    assert sum(p.numel() for p in model.parameters()) == 27_293_600
    assert sum(p.numel() for p in model.body.parameters()) == 25_557_032 - 2_049_000
    assert model.config.activation_slope == 0.0  # out_channels 256 > 64: plain ReLU as upstream


def test_official_size_retinaface_matches_official_outputs() -> None:
    with torch.device("meta"):
        model = RetinaFace(RetinaFaceConfig.resnet50())
    model = model.to_empty(device="cpu").eval()
    _det_fill(model)
    with torch.no_grad():
        loc, scores, land = model(_det_input(1, 64, 64))
    assert loc.shape == (1, 168, 4)
    idx = [0, 17, 100, 150, 167]
    golden_loc = [[0.15411974, -0.11916997, -0.09358521, -0.00748493], [0.3506251, -0.21921167, -0.01675105, -0.21137504],
                  [-0.25424644, 0.05401049, 0.25791526, -0.19315219], [0.40087226, -2.29566598, -0.50742173, 0.15554832],
                  [-1.17404783, -0.69784391, -0.12090947, 0.5693298]]
    torch.testing.assert_close(loc[0, idx], torch.tensor(golden_loc), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(scores[0, idx, 1], torch.tensor([0.49373814, 0.73111141, 0.5790602, 0.67761016,
                                                                0.57757384]), atol=1e-4, rtol=1e-4)
    golden_land = [[0.16358426, 0.03476143], [0.15204182, 0.1541039], [0.41694477, 0.42889833],
                   [-0.50428468, 0.30675888], [0.11624514, 0.15743433]]
    torch.testing.assert_close(land[0, idx, :2], torch.tensor(golden_land), atol=2e-4, rtol=1e-4)
    assert loc.abs().mean().item() == pytest.approx(0.32262722, rel=1e-4)
    assert land.abs().mean().item() == pytest.approx(0.28076542, rel=1e-4)


def test_retinaface_strict_loading_and_prefixes(tmp_path) -> None:
    source = RetinaFace.tiny(seed=1)
    state = source.state_dict()
    # the upstream file is a DataParallel state dict: every key starts with "module."
    loaded = RetinaFace.from_official({f"module.{k}": v for k, v in state.items()}, config=RetinaFaceConfig.tiny())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    # a {'state_dict': ...} checkpoint, flattened by the asset reader, is accepted too
    assert set(official_key_map({f"state_dict.module.{k}": v for k, v in state.items()})) == set(state)
    # BatchNorm step counters may be absent
    RetinaFace.from_official({k: v for k, v in state.items() if "num_batches" not in k},
                           config=RetinaFaceConfig.tiny())

    missing = {k: v for k, v in state.items() if k != "ssh2.conv7x7_3.0.weight"}
    with pytest.raises(StateDictMismatchError, match=r"Missing 1: ssh2\.conv7x7_3\.0\.weight"):
        RetinaFace.from_official(missing, config=RetinaFaceConfig.tiny())
    with pytest.raises(StateDictMismatchError, match=r"Unexpected 1: body\.fc\.weight"):
        RetinaFace.from_official({**state, "body.fc.weight": torch.zeros(3)}, config=RetinaFaceConfig.tiny())
    wrong = dict(state)
    wrong["ClassHead.0.conv1x1.bias"] = torch.zeros(6)
    with pytest.raises(StateDictMismatchError, match=r"Wrong shape 1: ClassHead\.0\.conv1x1\.bias \(6,\) != \(4,\)"):
        RetinaFace.from_official(wrong, config=RetinaFaceConfig.tiny())
    with pytest.raises(StateDictMismatchError, match="Missing"), torch.device("meta"):
        RetinaFace.from_official(state)  # official config vs tiny weights

    # files: an upstream-style .pth and a .safetensors conversion
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "Resnet50_Final.pth")
    from_pth = RetinaFace.from_official(tmp_path / "Resnet50_Final.pth", config=RetinaFaceConfig.tiny())
    from safetensors.torch import save_file

    folder = tmp_path / "converted"
    folder.mkdir()
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(folder / "Resnet50_Final.safetensors"))
    from_dir = RetinaFace.from_official(folder, config=RetinaFaceConfig.tiny())
    for k, v in state.items():
        assert torch.equal(from_pth.state_dict()[k], v) and torch.equal(from_dir.state_dict()[k], v)


# --------------------------------------------------------------------------------------------------------
# H3R: heatmap decoding


def _log_gaussian(h: int, w: int, x0: float, y0: float, sigma: float = 1.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return (-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2)).float()


def test_decode_heatmaps_integer_peak_is_exact() -> None:
    maps = torch.stack([_log_gaussian(64, 64, 20, 30), _log_gaussian(64, 64, 5, 60)])[None]  # (1, 2, 64, 64)
    points = decode_heatmaps(maps, topk=9, stride=4.0)
    assert points.shape == (1, 2, 2)
    # the 3 x 3 neighbourhood is symmetric around the peak: cell (row 30, col 20) -> (80, 120) input pixels
    torch.testing.assert_close(points[0], torch.tensor([[80.0, 120.0], [20.0, 240.0]]))


def test_decode_heatmaps_subpixel_peak_softmax_of_top9() -> None:
    # peak at x = 20.25: the top 9 cells are the 3 x 3 block around (20, 30); weights are softmax(scores) =
    # the Gaussian itself, separable, so x = 20 + sum(dx g(dx - 0.25)) / sum(g(dx - 0.25)), y = 30 exactly
    maps = _log_gaussian(64, 64, 20.25, 30)[None, None]
    g = {dx: math.exp(-((dx - 0.25) ** 2) / 2) for dx in (-1, 0, 1)}
    x = 20 + (g[1] - g[-1]) / sum(g.values())
    points = decode_heatmaps(maps)
    torch.testing.assert_close(points[0, 0], torch.tensor([4 * x, 120.0]), atol=1e-4, rtol=0)
    assert 80.0 < points[0, 0, 0].item() < 81.0  # sub-pixel, toward the true peak (81), biased to the cell

    # only the top 9 cells count: a far-away value below the 9th score changes nothing, one above it does
    low = maps.clone()
    low[0, 0, 5, 5] = maps.flatten().topk(10).values[-1] - 1
    torch.testing.assert_close(decode_heatmaps(low), points)
    high = maps.clone()
    high[0, 0, 5, 5] = maps.flatten().topk(9).values[-1] + 0.1
    assert decode_heatmaps(high)[0, 0, 1].item() < 119.0


# --------------------------------------------------------------------------------------------------------
# H3R: crops and the round trip


def test_expand_boxes_and_integer_crop() -> None:
    boxes = np.array([[10.0, 20.0, 29.0, 59.0]])  # w = 19, h = 39
    side = math.sqrt(20 * 40) * 1.5
    np.testing.assert_allclose(expand_boxes(boxes, 1.5), [[19.5 - side / 2, 39.5 - side / 2,
                                                            19.5 + side / 2, 39.5 + side / 2]])
    assert integer_crop_box([-3.7, 2.9, 10.2, 11.99]) == (-3, 2, 10, 11)  # truncation toward zero
    with pytest.raises(ValueError):
        integer_crop_box([5, 5, 5.5, 9])
    pts = np.array([[[1.0, 5.0], [4.0, 2.0], [3.0, 9.0]]])
    np.testing.assert_allclose(box_from_landmarks(pts), [[1.0, 2.0, 4.0, 9.0]])


def test_crop_zero_pads_and_maps_points_both_ways() -> None:
    image = np.full((100, 150, 3), 200, dtype=np.uint8)
    crop = crop_from_box(image, (-50, -20, 50, 80), 50)  # left half outside: zeros
    assert crop.shape == (50, 50, 3) and crop.dtype == np.uint8
    assert crop[20:, :20].max() == 0 and crop[20:, 30:].min() == 200 and crop[:5].max() == 0
    box = (-10, 7, 110, 207)  # 120 wide, 200 high
    points = np.array([[0.0, 0.0], [33.3, 81.9], [149.0, 99.0]])
    np.testing.assert_allclose(crop_to_image(image_to_crop(points, box, 256), box, 256), points, atol=1e-4)
    np.testing.assert_allclose(crop_to_image(np.array([[64.0, 128.0]]), box, 256), [[-10 + 30, 7 + 100]])


def test_crop_content_round_trip_of_a_bright_dot() -> None:
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[120:123, 170:173] = 255  # dot centred at (171, 121)
    landmarker = H3RLandmarker(H3R.tiny())
    boxes = np.array([[130.0, 80.0, 230.0, 190.0]])
    x, crop_boxes = landmarker.prepare(image, boxes)
    assert x.shape == (1, 3, 64, 64)
    # the crop is normalised with the ImageNet mean/std: black -> -mean/std
    torch.testing.assert_close(x[0, :, 0, 0], -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225]))
    brightness = x[0].sum(0)
    row, col = divmod(int(brightness.argmax()), 64)
    # pixel centres: crop pixel c covers image [x0 + c * s, x0 + (c + 1) * s)
    back = crop_to_image(np.array([[col + 0.5, row + 0.5]]), crop_boxes[0], 64)[0] - 0.5
    assert np.abs(back - [171, 121]).max() <= 2.5  # within one crop pixel (2.6 image px)


class _PeakNet(nn.Module):
    """Stand-in network: log-Gaussian heatmaps peaked at given cells, decoded the official way."""

    def __init__(self, cells: torch.Tensor) -> None:
        super().__init__()
        self.config = replace(H3RConfig.tiny(), num_points=len(cells))
        self.cells = cells  # (P, 2) x, y in heatmap cells
        self.dummy = nn.Parameter(torch.zeros(1))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.inputs.append(x)
        side = self.config.input_size // self.config.stride
        maps = torch.stack([_log_gaussian(side, side, float(cx), float(cy)) for cx, cy in self.cells])
        maps = maps[None].expand(x.shape[0], -1, -1, -1)
        return maps, decode_heatmaps(maps, self.config.topk, self.config.stride)


def test_landmarker_maps_network_points_back_to_the_image() -> None:
    # box (100, 50, 179, 129): w = h = 79 -> square side sqrt(80 * 80) * 1.5 = 120 around (139.5, 89.5)
    # -> crop (79.5, 29.5, 199.5, 149.5) -> integer crop (79, 29, 199, 149), 120 px for a 64 px input
    cells = torch.tensor([[3, 4], [10, 2], [14, 13], [1, 14]])  # full 3 x 3 neighbourhoods
    net = _PeakNet(cells)
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    points = H3RLandmarker(net)(image, [[100.0, 50.0, 179.0, 129.0]])
    expected = cells.numpy() * 4 * (120 / 64) + np.array([79, 29])
    assert points.shape == (1, 4, 2)
    np.testing.assert_allclose(points[0], expected, atol=1e-4)
    # two boxes: one batch, each face mapped with its own crop; box ratio 1.8 as when tracking
    points = H3RLandmarker(net)(image, np.array([[100.0, 50.0, 179.0, 129.0], [0.0, 0.0, 39.0, 19.0]]), box_ratio=1.8)
    assert net.inputs[-1].shape == (2, 3, 64, 64)
    side = math.sqrt(40 * 20) * 1.8
    crop = integer_crop_box([19.5 - side / 2, 9.5 - side / 2, 19.5 + side / 2, 9.5 + side / 2])
    np.testing.assert_allclose(points[1], cells.numpy() * 4 * np.array([crop[2] - crop[0], crop[3] - crop[1]]) / 64
                               + np.array(crop[:2]), atol=1e-4)
    assert H3RLandmarker(net)(image, np.zeros((0, 4))).shape == (0, 4, 2)


# --------------------------------------------------------------------------------------------------------
# H3R: network, official names, counts, loading


def _expected_h3r_shapes() -> dict[str, tuple[int, ...]]:
    """The official ``LandmarkDetector``: HRNet-W18 (modules 1/1/4/3, 4 blocks per branch, widths 18/36/72/144,
    Bottleneck layer1 of 4 x 64 planes) + BinaryHeadBlock(270 -> 270 -> 2 x 98)."""
    out: dict[str, tuple[int, ...]] = {}
    b = "backbone."
    out[b + "conv1.weight"] = (64, 3, 3, 3)
    _bn_keys(out, b + "bn1", 64)
    out[b + "conv2.weight"] = (64, 64, 3, 3)
    _bn_keys(out, b + "bn2", 64)
    cin = 64
    for i in range(4):
        p = f"{b}layer1.{i}."
        for name, shape in (("conv1", (64, cin, 1, 1)), ("conv2", (64, 64, 3, 3)), ("conv3", (256, 64, 1, 1))):
            out[p + name + ".weight"] = shape
            _bn_keys(out, p + "bn" + name[-1], shape[0])
        if i == 0:
            _conv_bn_keys(out, p + "downsample", 256, 64, 1)
        cin = 256
    widths = (18, 36, 72, 144)
    _conv_bn_keys(out, b + "transition1.0", 18, 256, 3)
    _conv_bn_keys(out, b + "transition1.1.0", 36, 256, 3)
    _conv_bn_keys(out, b + "transition2.2.0", 72, 36, 3)
    _conv_bn_keys(out, b + "transition3.3.0", 144, 72, 3)
    for stage, modules in ((2, 1), (3, 4), (4, 3)):
        for m in range(modules):
            p = f"{b}stage{stage}.{m}."
            for br in range(stage):
                for blk in range(4):
                    for conv in (1, 2):
                        out[f"{p}branches.{br}.{blk}.conv{conv}.weight"] = (widths[br], widths[br], 3, 3)
                        _bn_keys(out, f"{p}branches.{br}.{blk}.bn{conv}", widths[br])
            for i in range(stage):
                for j in range(stage):
                    if j > i:
                        _conv_bn_keys(out, f"{p}fuse_layers.{i}.{j}", widths[i], widths[j], 1)
                    for k in range(i - j):
                        cout = widths[i] if k == i - j - 1 else widths[j]
                        _conv_bn_keys(out, f"{p}fuse_layers.{i}.{j}.{k}", cout, widths[j], 3)
    out["heatmap_head.head.layers.0.weight"] = (270, 270, 1, 1)
    _bn_keys(out, "heatmap_head.head.layers.1", 270)
    out["heatmap_head.head.layers.3.weight"] = (196, 270, 1, 1)
    return out


def test_official_h3r_names_shapes_and_counts_on_meta() -> None:
    with torch.device("meta"):
        model = H3R(H3RConfig.hrnet_w18())
    shapes = _shapes(model)
    assert shapes == _expected_h3r_shapes()
    assert len(shapes) == 1837
    assert sum(p.numel() for p in model.parameters()) == 9_688_620
    assert sum(b.numel() for b in model.buffers()) == 34_782  # 17,391 BN channels x (mean, var) + counters
    head = sum(p.numel() for p in model.heatmap_head.parameters())
    assert head == 270 * 270 + 2 * 270 + 196 * 270


def test_official_size_h3r_matches_official_outputs() -> None:
    with torch.device("meta"):
        model = H3R(H3RConfig.hrnet_w18())
    model = model.to_empty(device="cpu").eval()
    _det_fill(model)
    with torch.no_grad():
        heatmaps, points = model(_det_input(1, 64, 64))
    assert heatmaps.shape == (1, 98, 16, 16) and points.shape == (1, 98, 2)
    assert heatmaps.abs().mean().item() == pytest.approx(303.54285, rel=1e-4)
    values = heatmaps[0, [0, 50, 97], [3, 8, 15], [5, 0, 12]]
    torch.testing.assert_close(values, torch.tensor([-579.21472, 368.99774, -193.45908]), atol=0.05, rtol=1e-4)
    golden = [[7.16e-07, 59.952141], [59.851109, 0.00567632], [23.711308, 44.000183], [13.830116, 44.000217]]
    torch.testing.assert_close(points[0, [0, 1, 50, 97]], torch.tensor(golden), atol=2e-3, rtol=0)


def test_tiny_h3r_forward_and_landmarker_shapes() -> None:
    net = H3R.tiny()
    heatmaps, points = net(torch.randn(2, 3, 64, 64))
    assert heatmaps.shape == (2, 98, 16, 16) and points.shape == (2, 98, 2)
    assert points.min() >= 0 and points.max() <= 60  # 4 x cell index, cells 0..15
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    out = H3RLandmarker(net)(image, np.array([[30.0, 20.0, 80.0, 75.0], [-20.0, -10.0, 20.0, 30.0]]))
    assert out.shape == (2, 98, 2) and np.isfinite(out).all()
    with pytest.raises(ValueError):
        H3RConfig(input_size=100)


def test_h3r_strict_loading(tmp_path) -> None:
    state = H3R.tiny(seed=2).state_dict()
    loaded = H3R.from_official(state, config=H3RConfig.tiny())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    # upstream loads model.pth with strict=True and no prefix handling: a "module." prefix is an error
    with pytest.raises(StateDictMismatchError, match="Unexpected"):
        H3R.from_official({f"module.{k}": v for k, v in state.items()}, config=H3RConfig.tiny())
    dropped = {k: v for k, v in state.items() if k != "heatmap_head.head.layers.3.weight"}
    with pytest.raises(StateDictMismatchError, match=r"Missing 1: heatmap_head\.head\.layers\.3\.weight"):
        H3R.from_official(dropped, config=H3RConfig.tiny())
    torch.save(state, tmp_path / "model.pth")
    from_file = H3R.from_official(tmp_path / "model.pth", config=H3RConfig.tiny())
    assert all(torch.equal(from_file.state_dict()[k], v) for k, v in state.items())


def test_image_conversion() -> None:
    rgb = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(as_uint8_rgb(rgb), rgb)
    assert np.array_equal(as_uint8_rgb(torch.from_numpy(rgb).permute(2, 0, 1)), rgb)
    assert np.array_equal(as_uint8_rgb(torch.from_numpy(rgb).float() / 255), rgb)
    with pytest.raises(TypeError):
        as_uint8_rgb(rgb.astype(np.float32))
    with pytest.raises(ValueError):
        as_uint8_rgb(np.zeros((4, 4), dtype=np.uint8))


def test_batched_postprocess_equals_one_image_at_a_time() -> None:
    """Random raw outputs for three images (different resize factors, one with no candidate): the batched
    post-processing gives exactly the faces of a per-image loop over the official steps."""
    from avatar.face.retinaface import decode_boxes, decode_landmarks

    model = RetinaFace.tiny().with_thresholds(confidence=0.7)
    h, w = 64, 96
    a = model.priors(h, w).shape[0]
    gen = torch.Generator().manual_seed(0)
    loc, lms = torch.randn(3, a, 4, generator=gen) * 0.5, torch.randn(3, a, 10, generator=gen)
    scores = torch.softmax(torch.randn(3, a, 2, generator=gen) * 2, dim=-1)
    scores[1, :, 1] = 0.0  # no face in image 1
    ratios = [0.5, 1.0, 0.25]
    batched = model.postprocess_batch(loc, scores, lms, (h, w), ratios)
    priors = model.priors(h, w)
    for i, ratio in enumerate(ratios):
        boxes = decode_boxes(loc[i], priors) * torch.tensor([w, h, w, h]) / ratio
        points = decode_landmarks(lms[i], priors) * torch.tensor([w, h]) / ratio
        s = scores[i, :, 1]
        cand = [k for k in torch.argsort(-s, stable=True).tolist() if s[k] > 0.7]
        kept = [cand[j] for j in nms_plus_one(boxes[cand], s[cand], model.config.nms_threshold).tolist()] if cand else []
        kept.sort(key=lambda k: -float((boxes[k, 2] - boxes[k, 0] + boxes[k, 3] - boxes[k, 1]) / 2))
        got = batched[i]
        assert len(got) == len(kept) and (i != 1 or not got)
        for face, k in zip(got, kept, strict=True):
            np.testing.assert_allclose(face.box, boxes[k].numpy(), rtol=1e-6, atol=1e-4)
            np.testing.assert_allclose(face.landmarks, points[k].numpy(), rtol=1e-6, atol=1e-4)
            assert face.score == pytest.approx(float(s[k]))
    assert sum(len(f) for f in batched) > 2
    single = model.postprocess(loc[2], scores[2], lms[2], (h, w), ratios[2])
    assert [f.score for f in single] == [f.score for f in batched[2]]
