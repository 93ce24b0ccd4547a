"""3DFAN (FAN + ResNetDepth), Deep3DFaceRecon regressor, BFM->FLAME mapper and PD-FGC motion encoder.

Official-size models are only built on the meta device (names and shapes); everything that runs uses the tiny
configurations with random weights. Expected names/shapes are derived here independently of the modules, from
the official code (face-alignment's FAN/ResNetDepth, Deep3DFaceRecon's ResNet-50 wrapper, PD-FGC's FanEncoder).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor, nn

from avatar.face.bfm2flame import BFM2FLAMEMapper, MapperConfig, flame_label
from avatar.face.deep3d import Deep3DConfig, Deep3DReconNet, align_image, split_coefficients, to_input
from avatar.face.fan3d import (
    FAN,
    DepthConfig,
    FAN3DConfig,
    FAN3DLandmarker,
    FANConfig,
    ResNetDepth,
    crop_face,
    crop_params_from_box,
    decode_heatmaps,
    draw_landmark_heatmaps,
    gaussian_kernel,
    heatmap_to_image,
    official_state,
)
from avatar.face.geometry import (
    BFM_FIVE_POINTS_3D,
    PDFGC_TEMPLATE,
    bfm_angles_to_flame_pose,
    camera_label_from_pose,
    matrix_to_axis_angle,
    pdfgc_affine,
    pdfgc_crop,
    pos_fit,
    similarity_matrix,
    warp_affine,
)
from avatar.hub.download import AssetNotFoundError
from avatar.hub.formats import read_torch_checkpoint, read_torchscript_archive
from avatar.hub.weights import StateDictMismatchError
from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder

OFFICIAL_DIR = Path(os.environ.get("PORTRAIT4D_OFFICIAL_DIR", "/tmp/p4d"))


# ----------------------------------------------------------------------------------------------
# helpers


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BN statistics (so that loading the wrong tensor would show), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith(".weight") and t.ndim == 1:
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.1)
            else:
                fan_in = max(1, t[0].numel()) if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan_in))
    return module.eval()


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _conv_block(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    """face-alignment's ``ConvBlock(in, out)``."""
    d = {**_bn(f"{prefix}.bn1", cin), f"{prefix}.conv1.weight": (cout // 2, cin, 3, 3),
         **_bn(f"{prefix}.bn2", cout // 2), f"{prefix}.conv2.weight": (cout // 4, cout // 2, 3, 3),
         **_bn(f"{prefix}.bn3", cout // 4), f"{prefix}.conv3.weight": (cout // 4, cout // 4, 3, 3)}
    if cin != cout:
        d.update({**_bn(f"{prefix}.downsample.0", cin), f"{prefix}.downsample.2.weight": (cout, cin, 1, 1)})
    return d


def _hourglass(prefix: str, depth: int, f: int) -> dict[str, tuple[int, ...]]:
    d: dict[str, tuple[int, ...]] = {}
    for level in range(1, depth + 1):
        for b in ("b1", "b2", "b3"):
            d.update(_conv_block(f"{prefix}.{b}_{level}", f, f))
    d.update(_conv_block(f"{prefix}.b2_plus_1", f, f))
    return d


def _conv(prefix: str, cout: int, cin: int, k: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    d = {f"{prefix}.weight": (cout, cin, k, k)}
    if bias:
        d[f"{prefix}.bias"] = (cout,)
    return d


def _fan_stem(prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {**_conv(f"{prefix}conv1", 64, 3, 7), **_bn(f"{prefix}bn1", 64), **_conv_block(f"{prefix}conv2", 64, 128),
            **_conv_block(f"{prefix}conv3", 128, 128), **_conv_block(f"{prefix}conv4", 128, 256)}


# ----------------------------------------------------------------------------------------------
# 3DFAN: names and shapes of the official networks (meta device)


def test_fan_official_names_and_shapes_meta() -> None:
    expected = _fan_stem()
    for i in range(4):
        expected.update(_hourglass(f"m{i}", 4, 256))
        expected.update(_conv_block(f"top_m_{i}", 256, 256))
        expected.update({**_conv(f"conv_last{i}", 256, 256, 1), **_bn(f"bn_end{i}", 256), **_conv(f"l{i}", 68, 256, 1)})
        if i < 3:
            expected.update({**_conv(f"bl{i}", 256, 256, 1), **_conv(f"al{i}", 256, 68, 1)})
    with torch.device("meta"):
        fan = FAN()
    assert _shapes(fan) == expected
    assert len(expected) == 1129
    assert sum(p.numel() for p in fan.parameters()) == 23_820_176


def test_depth_official_names_and_shapes_meta() -> None:
    """ResNetDepth is a torchvision ResNet-152 layout with a 71-channel stem and 68 outputs."""
    with torch.device("meta"):
        ref = torchvision.models.resnet152(num_classes=68)
        ref.conv1 = nn.Conv2d(3 + 68, 64, kernel_size=7, stride=2, padding=3, bias=False)
        depth = ResNetDepth()
    assert _shapes(depth) == _shapes(ref)
    assert len(_shapes(depth)) == 932
    assert sum(p.numel() for p in depth.parameters()) == 58_496_388


def test_depth_pools_only_the_top_left_7x7_window() -> None:
    depth = _randomize(ResNetDepth(DepthConfig.tiny()))
    feats: dict[str, Tensor] = {}
    depth.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("x", o))
    x = torch.rand(1, 71, 256, 256)
    with torch.no_grad():
        y = depth(x)
        assert feats["x"].shape[-2:] == (8, 8)
        expected = depth.fc(feats["x"][:, :, :7, :7].mean(dim=(2, 3)))
    torch.testing.assert_close(y, expected)


# ----------------------------------------------------------------------------------------------
# forward passes against independent references (functional FAN from the state dict; torchvision ResNets)

F = torch.nn.functional


def _ref_bn(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def _ref_conv(x: Tensor, sd: dict[str, Tensor], p: str, stride: int = 1, padding: int = 0) -> Tensor:
    return F.conv2d(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"), stride, padding)


def _ref_block(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    a = _ref_conv(F.relu(_ref_bn(x, sd, f"{p}.bn1")), sd, f"{p}.conv1", padding=1)
    b = _ref_conv(F.relu(_ref_bn(a, sd, f"{p}.bn2")), sd, f"{p}.conv2", padding=1)
    c = _ref_conv(F.relu(_ref_bn(b, sd, f"{p}.bn3")), sd, f"{p}.conv3", padding=1)
    res = x
    if f"{p}.downsample.2.weight" in sd:
        res = _ref_conv(F.relu(_ref_bn(x, sd, f"{p}.downsample.0")), sd, f"{p}.downsample.2")
    return torch.cat([a, b, c], 1) + res


def _ref_hourglass(x: Tensor, sd: dict[str, Tensor], p: str, level: int, pdfgc: bool) -> Tensor:
    upper = _ref_block(x, sd, f"{p}.b1_{level}")
    low = _ref_block(F.max_pool2d(x, 2) if pdfgc else F.avg_pool2d(x, 2), sd, f"{p}.b2_{level}")
    low = _ref_hourglass(low, sd, p, level - 1, pdfgc) if level > 1 else _ref_block(low, sd, f"{p}.b2_plus_1")
    low = _ref_block(low, sd, f"{p}.b3_{level}")
    if pdfgc:
        return upper + F.interpolate(low, size=upper.shape[-2:], mode="bilinear", align_corners=False)
    return upper + F.interpolate(low, scale_factor=2, mode="nearest")


def _ref_stem(x: Tensor, sd: dict[str, Tensor], pdfgc: bool) -> Tensor:
    x = F.relu(_ref_bn(_ref_conv(x, sd, "conv1", 2, 3), sd, "bn1"))
    x = _ref_block(x, sd, "conv2")
    x = F.max_pool2d(x, 2) if pdfgc else F.avg_pool2d(x, 2)
    return _ref_block(_ref_block(x, sd, "conv3"), sd, "conv4")


def _ref_fan(x: Tensor, sd: dict[str, Tensor], stacks: int, depth: int) -> Tensor:
    prev = _ref_stem(x, sd, pdfgc=False)
    for i in range(stacks):
        y = _ref_block(_ref_hourglass(prev, sd, f"m{i}", depth, False), sd, f"top_m_{i}")
        y = F.relu(_ref_bn(_ref_conv(y, sd, f"conv_last{i}"), sd, f"bn_end{i}"))
        out = _ref_conv(y, sd, f"l{i}")
        if i < stacks - 1:
            prev = prev + _ref_conv(y, sd, f"bl{i}") + _ref_conv(out, sd, f"al{i}")
    return out


def _ref_fan_use(x: Tensor, sd: dict[str, Tensor], depth: int) -> Tensor:
    y = _ref_block(_ref_hourglass(_ref_stem(x, sd, pdfgc=True), sd, "m0", depth, True), sd, "top_m_0")
    y = _ref_conv(F.relu(_ref_bn(_ref_conv(y, sd, "conv_last0"), sd, "bn_end0")), sd, "l0")
    y = _ref_conv(F.relu(_ref_bn(y, sd, "bn5")), sd, "conv6", 2, 1)
    return F.linear(F.relu(y.flatten(1)), sd["fc.weight"], sd["fc.bias"])


def test_fan_forward_matches_functional_reference() -> None:
    cfg = replace(FANConfig.tiny(), num_modules=3, input_size=64)
    fan = _randomize(FAN(cfg), seed=5)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fan(x), _ref_fan(x, fan.state_dict(), 3, cfg.hourglass_depth))


def test_pdfgc_forward_matches_functional_reference() -> None:
    enc = _randomize(PDFGCEncoder(PDFGCConfig.tiny()), seed=6)
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    sd = enc.model.state_dict()
    with torch.no_grad():
        feat = _ref_fan_use(x, sd, 4)  # 56 -> 28 -> 14 -> 7 -> 3: odd sizes, bilinear back up
        assert enc.model.heatmaps(x).shape == (2, 68, 56, 56)
        torch.testing.assert_close(enc.model(x), feat)
        out = enc(x)

        def head(name: str, v: Tensor) -> Tensor:
            h = getattr(enc, name)
            v = F.relu(F.linear(v, h[0].weight, h[0].bias))
            v = F.batch_norm(v, h[2].running_mean, h[2].running_var, h[2].weight, h[2].bias, False, 0.0, 1e-5)
            return F.linear(v, h[3].weight, h[3].bias)

        def embed(name: str, v: Tensor) -> Tensor:
            return F.linear(F.relu(v), getattr(enc, name)[1].weight, getattr(enc, name)[1].bias)

        torch.testing.assert_close(out.eye, embed("eye_embed", head("to_eye", feat)))
        torch.testing.assert_close(out.emotion, embed("emo_embed", head("to_emo", feat)))
        torch.testing.assert_close(out.headpose, embed("headpose_embed", head("to_headpose", feat)))
        torch.testing.assert_close(out.mouth, head("to_mouth", feat))


def test_resnets_match_torchvision() -> None:
    """Deep3D's backbone and ResNetDepth are torchvision ResNets (Bottleneck, stride on the 3x3 conv)."""
    x = torch.rand(1, 3, 64, 64)
    tv = _randomize(torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 2, 1, 1]), seed=7)
    net = Deep3DReconNet(replace(Deep3DConfig(), layers=(1, 2, 1, 1))).eval()
    net.backbone.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    trunk = nn.Sequential(*list(tv.children())[:-1])
    with torch.no_grad():
        torch.testing.assert_close(net.backbone(x), trunk(x))

    tv.conv1 = nn.Conv2d(71, 64, kernel_size=7, stride=2, padding=3, bias=False)
    tv.fc = nn.Linear(2048, 68)
    tv = _randomize(tv, seed=8)
    depth = ResNetDepth(replace(DepthConfig(), layers=(1, 2, 1, 1), pool_kernel=2, input_size=64)).eval()
    depth.load_state_dict(tv.state_dict())
    xd = torch.rand(1, 71, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(depth(xd), tv(xd))  # 2x2 last map: 2x2 pooling = global pooling


# ----------------------------------------------------------------------------------------------
# 3DFAN: TorchScript archives -> our modules


def _traced_archive(module: nn.Module, example: Tensor, path: Path) -> Tensor:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(path))
        return traced(example)


def test_torchscript_archives_load_into_our_networks(tmp_path: Path) -> None:
    """Archives traced from our own modules (as face-alignment traced FAN and ResNetDepth) are read without
    running their code and load by name. Small sizes keep the tracing cheap: 32x32 crops, 8x8 heatmaps,
    one-level hourglasses (two stacks, so ``bl0``/``al0`` exist), a 1x1 last map in the depth net."""
    fan_cfg = replace(FANConfig.tiny(), hourglass_depth=1, input_size=32)
    depth_cfg = replace(DepthConfig.tiny(), layers=(1, 1, 1, 1), pool_kernel=1, input_size=32)
    fan_src = _randomize(FAN(fan_cfg), seed=1)
    depth_src = _randomize(ResNetDepth(depth_cfg), seed=2)
    x = torch.rand(1, 3, 32, 32)
    xd = torch.rand(1, 71, 32, 32)
    fan_out = _traced_archive(fan_src, x, tmp_path / "3DFAN4-test.zip")
    depth_out = _traced_archive(depth_src, xd, tmp_path / "depth-test.zip")

    fan_w = read_torchscript_archive(tmp_path / "3DFAN4-test.zip")
    depth_w = read_torchscript_archive(tmp_path / "depth-test.zip")
    assert "FAN" in str(fan_w.metadata["root_class"])
    assert set(fan_w.tensors) == set(fan_src.state_dict())

    lm = FAN3DLandmarker(FAN3DConfig(fan=fan_cfg, depth=depth_cfg)).eval()
    lm.load_official(official_state(fan_w.tensors, {f"module.{k}": v for k, v in depth_w.tensors.items()}))  # prefix dropped
    with torch.no_grad():
        torch.testing.assert_close(lm.fan(x), fan_out, rtol=0, atol=0)
        torch.testing.assert_close(lm.depth(xd), depth_out, rtol=0, atol=0)
        assert lm.fan.forward_all(x)[-1].equal(fan_out)
    assert fan_out.shape == (1, 68, 8, 8) and depth_out.shape == (1, 68)
    assert "bl0.weight" in fan_w.tensors and "al0.weight" in fan_w.tensors

    # the model id "fan3d" reads both archives (here from a folder laid out like the Hub repo)
    hub = tmp_path / "hub" / "data_preprocess" / "assets" / "landmark3d"
    hub.mkdir(parents=True)
    (tmp_path / "3DFAN4-test.zip").rename(hub / "3DFAN4-4a694010b9.zip")
    (tmp_path / "depth-test.zip").rename(hub / "depth-6c4283c0e0.zip")
    fetched = FAN3DLandmarker.from_pretrained(local_dir=tmp_path / "hub", config=lm.config)
    assert not fetched.training
    for k, v in lm.state_dict().items():
        assert torch.equal(fetched.state_dict()[k], v), k

    # our own folder, and a pipeline folder written before FAN3DConfig (config.json = [fan, depth])
    saved = FAN3DLandmarker.from_pretrained(lm.save_pretrained(tmp_path / "saved"))
    assert saved.config == lm.config
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps([asdict(fan_cfg), asdict(depth_cfg)]))
    (tmp_path / "saved" / "model.safetensors").rename(legacy / "model.safetensors")
    old = FAN3DLandmarker.from_pretrained(legacy)
    assert old.config == lm.config
    for k, v in lm.state_dict().items():
        assert torch.equal(saved.state_dict()[k], v) and torch.equal(old.state_dict()[k], v), k


def test_fan_strict_loading_errors() -> None:
    lm = FAN3DLandmarker(FAN3DConfig.tiny())
    fan_sd, depth_sd = lm.fan.state_dict(), lm.depth.state_dict()
    missing = {k: v for k, v in fan_sd.items() if k != "l1.weight"}
    with pytest.raises(StateDictMismatchError, match=r"Missing 1: fan\.l1\.weight"):
        lm.load_official(official_state(missing, depth_sd))
    with pytest.raises(StateDictMismatchError, match=r"Unexpected 1: fan\.extra\.weight"):
        lm.load_official(official_state({**fan_sd, "extra.weight": torch.zeros(1)}, depth_sd))
    with pytest.raises(StateDictMismatchError, match=r"Wrong shape 1: depth\.fc\.weight"):
        lm.load_official(official_state(fan_sd, {**depth_sd, "fc.weight": torch.zeros(3, 3)}))


def test_fan3d_from_pretrained_offline_raises() -> None:
    with pytest.raises(AssetNotFoundError):
        FAN3DLandmarker.from_pretrained()


FACE_NETWORKS = [
    ("avatar.face.retinaface:RetinaFace", "retinaface-r50"),
    ("avatar.face.h3r:H3R", "h3r-hrnet-w18-wflw"),
    ("avatar.face.fan3d:FAN3DLandmarker", "fan3d"),
    ("avatar.face.deep3d:Deep3DReconNet", "deep3d-recon"),
    ("avatar.face.bfm2flame:BFM2FLAMEMapper", "bfm2flame-mapper"),
    ("avatar.motion.pdfgc:PDFGCEncoder", "pdfgc-motion"),
    ("avatar.face.modnet:MODNet", "modnet-photographic"),
]


@pytest.mark.parametrize(("dotted", "model_id"), FACE_NETWORKS)
def test_face_networks_share_the_model_base(dotted: str, model_id: str, tmp_path: Path) -> None:
    """Every network: registered under its default id, a Config that round-trips, tiny() seeded, and
    save_pretrained / from_pretrained giving back the same tensors."""
    from avatar.configuration import Config
    from avatar.hub import registry
    from avatar.modeling import ModelMixin

    module, _, name = dotted.partition(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    assert issubclass(cls, ModelMixin) and issubclass(cls.config_class, Config)
    assert cls.default_model_id == model_id and registry.model_class(registry.MODELS[model_id]) is cls
    model = cls.tiny(seed=5)
    assert not model.training and isinstance(model.config, cls.config_class)
    assert cls.config_class.from_dict(model.config.to_dict()) == model.config
    again = cls.tiny(seed=5)
    loaded = cls.from_pretrained(model.save_pretrained(tmp_path / "saved"))
    assert loaded.config == model.config and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v) and torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(AssetNotFoundError):  # offline, nothing cached
        cls.from_pretrained()


# ----------------------------------------------------------------------------------------------
# 3DFAN: geometry and decoding, hand-checked


def test_crop_params_from_box() -> None:
    center, scale = crop_params_from_box([100.0, 100.0, 196.0, 196.0, 0.99])
    np.testing.assert_allclose(center, [148.0, 148.0 - 0.12 * 96.0], rtol=0, atol=1e-4)
    assert scale == pytest.approx(1.0)


def test_decode_heatmaps_hand_checked() -> None:
    hm = torch.zeros(1, 3, 64, 64)
    hm[0, 0, 20, 10] = 1.0  # peak at x=10, y=20
    hm[0, 0, 20, 11], hm[0, 0, 20, 9] = 0.5, 0.2  # right > left  -> +0.25 in x
    hm[0, 0, 21, 10], hm[0, 0, 19, 10] = 0.1, 0.3  # below < above -> -0.25 in y
    hm[0, 1, 5, 0] = 2.0  # on the left border: no sub-pixel step
    hm[0, 1, 5, 1] = 1.0
    hm[0, 2, 40, 30] = 1.0  # equal neighbours: no step
    hm[0, 2, 40, 31] = hm[0, 2, 40, 29] = 0.5
    pts, scores = decode_heatmaps(hm)
    torch.testing.assert_close(pts[0], torch.tensor([[10.75, 20.25], [0.5, 5.5], [30.5, 40.5]]))
    torch.testing.assert_close(scores[0], torch.tensor([1.0, 2.0, 1.0]))


def test_heatmap_to_image_hand_checked() -> None:
    center = np.array([128.0, 128.0], np.float32)
    # scale 1 -> 200 source pixels per 64 heatmap pixels: x_img = 3.125 * x_hm + c - 100, truncated
    out = heatmap_to_image(torch.tensor([[32.25, 32.75], [10.75, 20.25]]), center, 1.0)
    np.testing.assert_array_equal(out, [[128.0, 130.0], [61.0, 91.0]])  # 128.78, 130.34; 61.59, 91.28
    # truncation goes towards zero for negative positions: 3.125 * 10 + 28 - 64 = -4.75 -> -4
    out = heatmap_to_image(torch.tensor([[10.0, 10.0]]), np.array([64.0, 64.0], np.float32), 1.0)
    np.testing.assert_array_equal(out, [[-4.0, -4.0]])


def test_gaussian_kernel_and_heatmap_drawing() -> None:
    g = gaussian_kernel(13)
    assert g.shape == (13, 13) and g.dtype == np.float32
    assert g[6, 6] == 1.0 and g.argmax() == 6 * 13 + 6
    assert g[6, 7] == pytest.approx(math.exp(-((1 / 3.25) ** 2) / 2), rel=1e-6)
    maps = draw_landmark_heatmaps(np.array([[100.3, 50.7], [0.0, 30.0], [3.0, 100.0]], np.float32))
    assert maps.shape == (3, 256, 256)
    # peak one pixel up-left of floor(p), as upstream's 1-based arithmetic does
    assert maps[0].max() == 1.0 and np.unravel_index(maps[0].argmax(), maps[0].shape) == (49, 99)
    assert maps[0].sum() == pytest.approx(float(g.sum()), rel=1e-6)
    assert not maps[1].any()  # x <= 0: skipped
    # clipped at the left border: image columns 0..8 get kernel columns 2..10 -> peak at column 4
    assert np.unravel_index(maps[2].argmax(), maps[2].shape) == (99, 4)
    np.testing.assert_array_equal(maps[2][99, :9], g[6, 2:11])


def test_crop_face_inside_and_outside_the_image() -> None:
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    center, scale = np.array([200.0, 150.0], np.float32), 1.28  # 256 source pixels -> 256 crop pixels
    out = crop_face(image, center, scale)
    # corners: crop pixel 1 -> source 1 + 200 - 128 = 73, crop pixel 256 -> 328 (x); 23 and 278 (y)
    np.testing.assert_array_equal(out, cv2.resize(image[23:278, 73:328], (256, 256), interpolation=cv2.INTER_LINEAR))
    # a crop hanging over the left border: the missing part is black
    white = np.full((300, 400, 3), 255, np.uint8)
    out = crop_face(white, np.array([60.0, 150.0], np.float32), 1.28)
    assert (out[:, :60] == 0).all() and (out[:, 70:] == 255).all()


def test_landmarker_with_planted_heatmaps() -> None:
    lm = _randomize(FAN3DLandmarker(FAN3DConfig.tiny()))
    planted = torch.zeros(1, 68, 64, 64)
    pk = [(10 + (k % 40), 12 + k // 2) for k in range(68)]  # integer peaks (x, y), no neighbours -> +0.5
    for k, (x, y) in enumerate(pk):
        planted[0, k, y, x] = 1.0
    lm.fan.forward = lambda _x: planted  # type: ignore[method-assign]
    seen: dict[str, Tensor] = {}
    lm.depth.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    box = [100.0, 60.0, 196.0, 156.0]
    out = lm(image, [box])
    assert out.shape == (1, 68, 3) and out.dtype == np.float32
    center, scale = crop_params_from_box(box)
    expected_xy = [heatmap_to_image(np.array([[x + 0.5, y + 0.5]]), center, scale)[0] for x, y in pk]
    np.testing.assert_array_equal(out[0, :, :2], np.array(expected_xy))
    # depth input: the crop in [0, 1] and, per landmark, a Gaussian peaking at floor(4 * (p + 0.5)) - 1
    crop = crop_face(image, center, scale)
    torch.testing.assert_close(seen["inp"][0, :3], torch.from_numpy(crop).permute(2, 0, 1).float() / 255)
    for k in (0, 33, 67):
        x, y = pk[k]
        hm = seen["inp"][0, 3 + k]
        assert hm.max() == 1.0 and divmod(int(hm.argmax()), 256) == (4 * y + 2 - 1, 4 * x + 2 - 1)
    torch.testing.assert_close(torch.from_numpy(out[0, :, 2]), seen["out"][0] * (200.0 * scale / 256.0))


# ----------------------------------------------------------------------------------------------
# Deep3DFaceRecon


def test_deep3d_official_names_and_shapes_meta() -> None:
    with torch.device("meta"):
        ref = torchvision.models.resnet50()
        net = Deep3DReconNet()
    expected = {f"backbone.{k}": v for k, v in _shapes(ref).items() if not k.startswith("fc.")}
    for i, n in enumerate((80, 64, 80, 3, 27, 2, 1)):
        expected.update({f"final_layers.{i}.weight": (n, 2048, 1, 1), f"final_layers.{i}.bias": (n,)})
    assert _shapes(net) == expected
    assert len(expected) == 332
    assert sum(p.numel() for p in net.parameters()) == 24_034_625


def test_deep3d_coefficient_split_follows_the_heads() -> None:
    net = _randomize(Deep3DReconNet(Deep3DConfig.tiny()))
    biases = []
    with torch.no_grad():
        for head in net.final_layers:
            head.weight.zero_()
            head.bias.copy_(torch.randn(head.bias.shape))
            biases.append(head.bias.clone())
        out = net(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 257)
    parts = split_coefficients(out)
    assert {k: tuple(v.shape) for k, v in parts.items()} == {
        "id": (2, 80), "exp": (2, 64), "tex": (2, 80), "angle": (2, 3), "gamma": (2, 27), "trans": (2, 3)}
    for name, bias in zip(("id", "exp", "tex", "angle", "gamma"), biases, strict=False):
        torch.testing.assert_close(parts[name][1], bias)
    torch.testing.assert_close(parts["trans"][0], torch.cat([biases[5], biases[6]]))
    idx = split_coefficients(torch.arange(257.0)[None])
    assert idx["exp"][0, 0] == 80 and idx["tex"][0, 0] == 144 and idx["angle"][0, 0] == 224
    assert idx["gamma"][0, 0] == 227 and idx["trans"][0].tolist() == [254, 255, 256]
    with pytest.raises(ValueError):
        split_coefficients(torch.zeros(1, 256))


def test_deep3d_checkpoint_loading_strips_net_recon_and_is_strict() -> None:
    src = _randomize(Deep3DReconNet(Deep3DConfig.tiny()), seed=3)
    ckpt = {f"net_recon.{k}": v for k, v in src.state_dict().items()}
    ckpt["opt_00.state.0.exp_avg"] = torch.zeros(3)
    dst = Deep3DReconNet(Deep3DConfig.tiny()).eval()
    assert dst.load_official(ckpt) == ["opt_00.state.0.exp_avg"]
    x = torch.rand(1, 3, 64, 64)  # the global pooling accepts any size
    with torch.no_grad():
        assert dst(x).equal(src(x))
    with pytest.raises(StateDictMismatchError, match=r"Missing 2: final_layers\.6\.bias, final_layers\.6\.weight"):
        dst.load_official({k: v for k, v in ckpt.items() if "final_layers.6" not in k})
    with pytest.raises(StateDictMismatchError, match=r"Unexpected 1: backbone\.fc\.weight"):
        dst.load_official({**ckpt, "net_recon.backbone.fc.weight": torch.zeros(257, 16)})
    with pytest.raises(StateDictMismatchError, match=r"Wrong shape 1: final_layers\.0\.bias"):
        dst.load_official({**ckpt, "net_recon.final_layers.0.bias": torch.zeros(81)})


def test_deep3d_input_normalisation() -> None:
    img = np.zeros((224, 224, 3), np.uint8)
    img[..., 0], img[0, 0, 2] = 255, 51
    x = to_input(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert x[0, 0].eq(1.0).all() and x[0, 2, 0, 0] == pytest.approx(0.2) and x[0, 1].eq(0).all()


def test_deep3d_pos_fit_and_alignment() -> None:
    s, t = 250.0, np.array([300.0, 200.0])  # y up
    pts = s * BFM_FIVE_POINTS_3D[:, :2] + t
    t_fit, s_fit = pos_fit(pts, BFM_FIVE_POINTS_3D)
    np.testing.assert_allclose(t_fit, t, atol=1e-8)
    assert s_fit == pytest.approx(s)

    h, w = 420, 560
    lm98 = np.zeros((98, 2))
    lm98[[96, 97, 54, 76, 82]] = np.stack([pts[:, 0], h - 1 - pts[:, 1]], axis=1)  # back to y down
    image = np.zeros((h, w, 3), np.uint8)
    cx, cy = int(t[0]), int(h - 1 - t[1])  # the fitted centre, in y-down pixels
    image[cy - 3:cy + 4, cx - 3:cx + 4] = 255
    out = align_image(image, lm98)
    assert out.image.shape == (224, 224, 3) and out.image.dtype == np.uint8
    np.testing.assert_allclose(out.trans_params, [w, h, 102.0 / s, t[0], t[1]])
    ys, xs = np.nonzero(out.image[..., 0] > 128)
    assert abs(xs.mean() - 112) <= 1.5 and abs(ys.mean() - 112) <= 1.5  # the centre lands mid-crop
    # the 5 points in crop coordinates (y up) are the BFM layout at the fixed scale 102, centred on 112
    np.testing.assert_allclose(out.landmarks, 102.0 * BFM_FIVE_POINTS_3D[:, :2] + 112.0, atol=1.0)
    # outside the image the Deep3D crop is black (PIL crop), unlike the edge-padded 512 crop
    corner = np.full((h, w, 3), 200, np.uint8)
    far = align_image(corner, lm98 + np.array([w / 2, 0.0]))  # face centre moved right, crop passes the edge
    assert far.image[112, -1].max() == 0 and far.image[112, 0].min() == 200


# ----------------------------------------------------------------------------------------------
# BFM -> FLAME


def test_mapper_official_names_and_forward() -> None:
    with torch.device("meta"):
        full = BFM2FLAMEMapper()
    assert _shapes(full) == {"maps.0.weight": (512, 144), "maps.0.bias": (512,), "maps.2.weight": (403, 512),
                             "maps.2.bias": (403,)}
    assert sum(p.numel() for p in full.parameters()) == 280_979
    m = _randomize(BFM2FLAMEMapper(MapperConfig.tiny()))
    x_id, x_exp = torch.randn(2, 80), torch.randn(2, 64)
    h = torch.nn.functional.leaky_relu(m.maps[0](torch.cat([x_id, x_exp], 1)), 0.01)
    ref = m.maps[2](h)
    out = m.map(x_id, x_exp)
    torch.testing.assert_close(torch.cat([out["shape"], out["exp"], out["jaw"]], 1), ref)
    assert out["shape"].shape == (2, 300) and out["exp"].shape == (2, 100) and out["jaw"].shape == (2, 3)
    with pytest.raises(StateDictMismatchError, match=r"Missing 1: maps\.2\.bias"):
        m.load_official({k: v for k, v in m.state_dict().items() if k != "maps.2.bias"})


def test_mapper_loads_the_official_file_strictly() -> None:
    path = OFFICIAL_DIR / "data_preprocess/assets/bfm2flame_mapper/model-iter200000.pth"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    m = BFM2FLAMEMapper()
    m.load_official(read_torch_checkpoint(path).tensors)
    assert m.maps[0].weight.abs().sum() > 0


def test_rotvec_conversion_matches_scipy() -> None:
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.uniform(-1.5, 1.5, (16, 3)), [[0, 0, 0], [np.pi - 1e-4, 0.0, 0.0],
                                                               [0.0, np.pi, 0.0], [1e-5, -2e-5, 0.0]]])
    ours = bfm_angles_to_flame_pose(torch.from_numpy(angles)).numpy()
    rz = rotation.from_euler("z", angles[:, 2:3]).as_matrix()
    ry = rotation.from_euler("y", angles[:, 1:2]).as_matrix()
    rx = rotation.from_euler("x", angles[:, 0:1]).as_matrix()
    fix = rotation.from_euler("xyz", [0.08489475, 0.002882, 0.00353599]).as_matrix()
    ref = rotation.from_matrix(fix @ (rz @ ry @ rx)).as_rotvec()
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    # and back: rodrigues(rotvec) reproduces the matrix, also at 180 degrees
    vec = torch.tensor([[0.0, 0.0, math.pi], [0.3, -0.2, 0.1], [1e-7, 0.0, 0.0]], dtype=torch.float64)
    back = matrix_to_axis_angle(_rodrigues64(vec))
    torch.testing.assert_close(_rodrigues64(back), _rodrigues64(vec))


def _rodrigues64(v: Tensor) -> Tensor:
    angle = v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    k = v / angle
    kx, ky, kz = k.unbind(1)
    z = torch.zeros_like(kx)
    skew = torch.stack([z, -kz, ky, kz, z, -kx, -ky, kx, z], 1).view(-1, 3, 3)
    a = angle[:, :, None]
    return torch.eye(3, dtype=v.dtype) + a.sin() * skew + (1 - a.cos()) * skew @ skew


def test_flame_label_layout() -> None:
    label = flame_label(None, torch.randn(2, 80), torch.randn(2, 64), torch.zeros(2, 3))
    assert label.shape == (2, 437) and label.dtype == torch.float32
    assert not label[:, 25:425].any() and not label[:, 428:].any()
    pose = label[0, 425:428]
    torch.testing.assert_close(pose, bfm_angles_to_flame_pose(torch.zeros(1, 3, dtype=torch.float64))[0].float())
    focal = 1 / (2 * math.tan(math.radians(6)))
    torch.testing.assert_close(label[0, 16:25], torch.tensor([focal, 0, 0.5, 0, focal, 0.5, 0, 0, 1.0]))
    ext = label[0, :16].view(4, 4)
    assert ext[3].tolist() == [0, 0, 0, 1]
    # t = R @ (0, 0.01, 4.2): the camera stays 4.2 (+0.01) from the origin
    assert ext[:3, 3].norm() == pytest.approx(math.hypot(0.01, 4.2), rel=1e-5)
    m = _randomize(BFM2FLAMEMapper(MapperConfig.tiny()))
    ids, exps = torch.randn(1, 80), torch.randn(1, 64)
    mapped = flame_label(m, ids, exps, torch.zeros(1, 3))
    torch.testing.assert_close(mapped[0, 25:325], m.map(ids, exps)["shape"][0].detach())
    torch.testing.assert_close(mapped[0, 428:431], m.map(ids, exps)["jaw"][0].detach())


def test_camera_label_matches_official_example_labels() -> None:
    folder = OFFICIAL_DIR / "portrait4d/examples/bfm2flame_params_simplified"
    files = sorted(folder.glob("*.npy"))[:8] if folder.is_dir() else []
    if not files:
        pytest.skip(f"{folder} is absent")
    for f in files:
        label = np.load(f)
        cam = camera_label_from_pose(torch.from_numpy(label[None, 425:428].copy()))
        np.testing.assert_allclose(cam[0].numpy(), label[:25], rtol=0, atol=1e-6)
        assert not label[431:].any()


# ----------------------------------------------------------------------------------------------
# PD-FGC


def _pdfgc_expected() -> dict[str, tuple[int, ...]]:
    d = _fan_stem("model.")
    d.update(_hourglass("model.m0", 4, 256))
    d.update(_conv_block("model.top_m_0", 256, 256))
    d.update({**_conv("model.conv_last0", 256, 256, 1), **_conv("model.l0", 68, 256, 1), **_bn("model.bn_end0", 256),
              **_conv("model.conv6", 1, 68, 3), "model.fc.weight": (512, 784), "model.fc.bias": (512,),
              **_bn("model.bn5", 68)})
    for head in ("to_mouth", "to_headpose", "to_eye", "to_emo"):
        d.update({f"{head}.0.weight": (512, 512), f"{head}.0.bias": (512,), **_bn(f"{head}.2", 512),
                  f"{head}.3.weight": (512, 512), f"{head}.3.bias": (512,)})
    for embed, n in (("mouth_embed", 500), ("headpose_embed", 6), ("eye_embed", 6), ("emo_embed", 30)):
        d.update({f"{embed}.1.weight": (n, 512), f"{embed}.1.bias": (n,)})
    return d


def test_pdfgc_official_names_and_shapes_meta() -> None:
    with torch.device("meta"):
        enc = PDFGCEncoder()
    expected = _pdfgc_expected()
    assert _shapes(enc) == expected
    assert len(expected) == 387
    assert sum(p.numel() for p in enc.parameters()) == 9_035_727
    assert enc.config.motion_dim == 548


def test_pdfgc_motion_layout_and_unused_mouth_embed() -> None:
    enc = _randomize(PDFGCEncoder(replace(PDFGCConfig.tiny(), hourglass_depth=2, input_size=64)))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = enc(x)
        motion = enc.motion(x)
        feat = enc.model(x)
        assert enc.model.heatmaps(x).shape == (2, 68, 16, 16)
        enc.mouth_embed[1].weight.add_(1.0)  # not on the forward path
        again = enc.motion(x)
    assert [tuple(t.shape) for t in out] == [(2, 6), (2, 6), (2, 30), (2, 24)]
    assert motion.shape == (2, 6 + 30 + 24)
    torch.testing.assert_close(motion, torch.cat([out.eye, out.emotion, out.mouth], 1))
    torch.testing.assert_close(out.mouth, enc.to_mouth(feat))
    assert again.equal(motion)


def test_pdfgc_loading_reports_unused_keys_and_is_strict_on_ours() -> None:
    cfg = replace(PDFGCConfig.tiny(), hourglass_depth=2, input_size=64)  # small and cheap; same code
    src = _randomize(PDFGCEncoder(cfg), seed=4)
    ckpt = {**src.state_dict(), "classifier.0.weight": torch.zeros(2, 2), "mouth_fc.bias": torch.zeros(2)}
    dst = PDFGCEncoder(cfg).eval()
    assert dst.load_official({f"module.{k}": v for k, v in ckpt.items()}) == ["classifier.0.weight", "mouth_fc.bias"]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert dst.motion(x).equal(src.motion(x))
    with pytest.raises(StateDictMismatchError, match=r"Missing 1: to_emo\.2\.running_var"):
        dst.load_official({k: v for k, v in ckpt.items() if k != "to_emo.2.running_var"})
    with pytest.raises(StateDictMismatchError, match=r"Wrong shape 1: emo_embed\.1\.bias"):
        dst.load_official({**ckpt, "emo_embed.1.bias": torch.zeros(31)})


def test_similarity_transform_recovers_and_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (3, 2))
    a, s, t = 0.3, 0.45, np.array([12.0, -7.0])
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = similarity_matrix(torch.from_numpy(src)[None], torch.from_numpy(s * src @ rot.T + t)[None])[0].numpy()
    np.testing.assert_allclose(m[:2, :2], s * rot, atol=1e-10)
    np.testing.assert_allclose(m[:2, 2], t, atol=1e-8)
    transform = pytest.importorskip("skimage.transform")
    dst = rng.uniform(0, 224, (3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transform.SimilarityTransform()
        ref.estimate(src, dst)
    ours = similarity_matrix(torch.from_numpy(src)[None], torch.from_numpy(dst)[None])[0].numpy()
    np.testing.assert_allclose(ours, ref.params, atol=1e-9)


def _template_landmarks(scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """68 points whose eye/mouth centres are the motion template mapped by ``p * scale + shift``."""
    lm = np.zeros((68, 2))
    for (lo, hi), target in zip(((36, 42), (42, 48), (60, 68)), np.array(PDFGC_TEMPLATE), strict=True):
        offsets = np.linspace(-3, 3, hi - lo)[:, None] * np.array([[1.0, 0.5]])
        lm[lo:hi] = target * scale + np.array(shift) + offsets - offsets.mean(0)
    return lm


def test_motion_alignment_and_crop() -> None:
    m = pdfgc_affine(torch.from_numpy(_template_landmarks(2.0, (10.0, 4.0)))[None], 448)
    torch.testing.assert_close(m[0], torch.tensor([[0.5, 0.0, -5.0], [0.0, 0.5, -2.0]]), atol=1e-5, rtol=0)
    img = torch.rand(1, 3, 224, 224) * 2.2 - 1.1
    crop = pdfgc_crop(img, torch.from_numpy(_template_landmarks())[None])  # identity warp
    ref = torch.nn.functional.interpolate(img[:, :, :192, 16:208], size=[224, 224], mode="bilinear").clamp(-1, 1)
    torch.testing.assert_close(crop, ref, atol=1e-4, rtol=0)


def test_warp_affine_translation_and_scale() -> None:
    img = torch.rand(1, 2, 12, 16)
    shift = torch.tensor([[[1.0, 0.0, -3.0], [0.0, 1.0, -2.0]]])  # output p = input p - (3, 2)
    out = warp_affine(img, shift, (12, 16))
    torch.testing.assert_close(out[:, :, :10, :13], img[:, :, 2:, 3:], atol=1e-6, rtol=0)
    assert out[:, :, 10:].abs().max() < 1e-5 and out[:, :, :, 13:].abs().max() < 1e-5
    half = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])  # output p = input 2p
    out = warp_affine(img, half, (6, 8))
    torch.testing.assert_close(out, img[:, :, ::2, ::2], atol=1e-6, rtol=0)


def test_batched_landmarkers_equal_one_image_at_a_time() -> None:
    """Video frames go through H3R and 3DFAN as one batch; each image's points equal a call of its own."""
    from avatar.face.h3r import H3R, H3RLandmarker

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [[[30.0, 20.0, 90.0, 85.0]], [], [[10.0, 15.0, 70.0, 70.0], [60.0, 30.0, 120.0, 100.0]]]
    fan = _randomize(FAN3DLandmarker(FAN3DConfig.tiny())).eval()
    h3r = H3RLandmarker(H3R.tiny(0).eval())
    for landmarker, dims in ((fan, 3), (h3r, 2)):
        batched = landmarker.landmarks_batch(images, boxes)
        assert [b.shape[0] for b in batched] == [1, 0, 2] and batched[0].shape[-1] == dims
        for image, image_boxes, got in zip(images, boxes, batched, strict=True):
            if image_boxes:
                np.testing.assert_allclose(got, landmarker(image, image_boxes), rtol=0, atol=1e-3)


def test_batched_heatmap_drawing_equals_the_official_loop() -> None:
    """The vectorised heatmaps equal the per-landmark paste, borders and skipped points included."""
    from avatar.face.fan3d import draw_landmark_heatmaps_torch

    rng = np.random.default_rng(0)
    pts = rng.uniform(-10, 75, size=(3, 40, 2)).astype(np.float32)  # many near and beyond the borders of 64
    pts[0, :4] = [[0.0, 5.0], [5.0, -1.0], [63.9, 64.0], [70.0, 3.0]]
    pts[1, :3] = [[0.5, 0.5], [1.0, 63.0], [66.9, 66.9]]
    got = draw_landmark_heatmaps_torch(torch.from_numpy(pts), size=64)
    expected = np.stack([draw_landmark_heatmaps(p, size=64) for p in pts])
    assert got.shape == (3, 40, 64, 64) and expected.max() == 1.0
    np.testing.assert_array_equal(got.numpy(), expected)
