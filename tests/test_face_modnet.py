"""MODNet: official parameter names and shapes, strict loading of a DataParallel checkpoint, the official
inference resize rule, matte shape/range and compositing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from avatar.face.modnet import MODNet, MODNetConfig, composite, inference_size
from avatar.hub import registry
from avatar.hub.weights import StateDictMismatchError

# Read off ZHKKKe/MODNet src/models/modnet.py and src/models/backbones/{mobilenetv2,wrapper}.py (hr_channels 32,
# MobileNetV2 width 1.0 / expansion 6, enc_channels 16, 24, 32, 96, 1280, SE reduction 4).
OFFICIAL_SHAPES = {
    "backbone.model.features.0.0.weight": (32, 3, 3, 3),
    "backbone.model.features.0.1.running_var": (32,),
    "backbone.model.features.1.conv.0.weight": (32, 1, 3, 3),  # expansion 1: depthwise first
    "backbone.model.features.1.conv.3.weight": (16, 32, 1, 1),
    "backbone.model.features.2.conv.0.weight": (96, 16, 1, 1),
    "backbone.model.features.2.conv.3.weight": (96, 1, 3, 3),
    "backbone.model.features.17.conv.6.weight": (320, 960, 1, 1),
    "backbone.model.features.18.0.weight": (1280, 320, 1, 1),
    "lr_branch.backbone.model.features.0.0.weight": (32, 3, 3, 3),
    "lr_branch.backbone.model.features.18.1.running_mean": (1280,),
    "lr_branch.se_block.fc.0.weight": (320, 1280),
    "lr_branch.se_block.fc.2.weight": (1280, 320),
    "lr_branch.conv_lr16x.layers.0.weight": (96, 1280, 5, 5),
    "lr_branch.conv_lr16x.layers.1.bnorm.weight": (48,),
    "lr_branch.conv_lr8x.layers.0.weight": (32, 96, 5, 5),
    "lr_branch.conv_lr.layers.0.weight": (1, 32, 3, 3),
    "hr_branch.tohr_enc2x.layers.0.weight": (32, 16, 1, 1),
    "hr_branch.conv_enc2x.layers.0.weight": (32, 35, 3, 3),
    "hr_branch.tohr_enc4x.layers.0.weight": (32, 24, 1, 1),
    "hr_branch.conv_enc4x.layers.0.weight": (64, 64, 3, 3),
    "hr_branch.conv_hr4x.0.layers.0.weight": (64, 99, 3, 3),
    "hr_branch.conv_hr4x.2.layers.0.weight": (32, 64, 3, 3),
    "hr_branch.conv_hr2x.0.layers.0.weight": (64, 64, 3, 3),
    "hr_branch.conv_hr2x.3.layers.1.bnorm.running_var": (16,),
    "hr_branch.conv_hr.0.layers.0.weight": (32, 35, 3, 3),
    "hr_branch.conv_hr.1.layers.0.weight": (1, 32, 1, 1),
    "f_branch.conv_lr4x.layers.0.weight": (32, 32, 5, 5),
    "f_branch.conv_f2x.layers.0.weight": (32, 64, 3, 3),
    "f_branch.conv_f.0.layers.0.weight": (16, 35, 3, 3),
    "f_branch.conv_f.0.layers.1.bnorm.weight": (8,),
    "f_branch.conv_f.1.layers.0.weight": (1, 16, 1, 1),
    "f_branch.conv_f.1.layers.0.bias": (1,),
}


def test_official_names_and_shapes() -> None:
    with torch.device("meta"):
        model = MODNet()
    state = model.state_dict()
    # the released checkpoints hold 751 entries (backbone twice: backbone.* and lr_branch.backbone.*)
    assert len(state) == 751
    for name, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    assert {k.split(".")[0] for k in state} == {"backbone", "lr_branch", "hr_branch", "f_branch"}
    backbone = [k for k in state if k.startswith("backbone.")]
    assert len(backbone) * 2 + sum(1 for k in state if not k.startswith(("backbone.", "lr_branch.backbone."))) == 751
    assert {int(k.split(".")[3]) for k in backbone} == set(range(19))
    assert not any("classifier" in k or "inorm" in k for k in state)  # no classifier; InstanceNorm has no tensors
    assert model.backbone.model.taps == (1, 3, 6, 13, 18)
    assert model.lr_branch.backbone is model.backbone
    assert MODNetConfig().enc_channels == (16, 24, 32, 96, 1280)


def _checkpoint(model: MODNet, folder: Path) -> Path:
    """A DataParallel-style state dict (``module.`` keys, the backbone under both names) saved with torch.save."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "modnet_photographic_portrait_matting.ckpt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def test_strict_loading_of_a_dataparallel_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = MODNet.tiny(seed=3)
    for m in source.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = _checkpoint(source, tmp_path / "drive")
    entry = registry.FILES["modnet-photographic"]
    assert entry.source == "gdrive" and entry.url.startswith("https://drive.google.com/") and entry.fmt == "torch"
    # the registry's size is the real ~26 MB file's; a tiny stand-in needs no size check
    monkeypatch.setitem(registry.FILES, "modnet-photographic", dataclasses.replace(entry, size=None))
    loaded = MODNet.from_pretrained(local_dir=tmp_path / "drive", config=MODNetConfig.tiny())
    x = torch.rand(2, 3, 45, 70)
    expected = source.matte(x)
    assert torch.equal(loaded.matte(x), expected)
    assert torch.equal(MODNet.from_pretrained(path, config=MODNetConfig.tiny()).matte(x), expected)
    assert torch.equal(MODNet.from_official(path, config=MODNetConfig.tiny()).matte(x), expected)
    folder = source.save_pretrained(tmp_path / "saved")  # the shared backbone stored once, config alongside
    saved_keys = set(load_file(str(folder / "model.safetensors")))
    assert not any(k.startswith("lr_branch.backbone.") for k in saved_keys)
    assert len(saved_keys) == len(source.state_dict()) - sum(k.startswith("backbone.") for k in saved_keys)
    assert torch.equal(MODNet.from_pretrained(folder).matte(x), expected)

    state = torch.load(path, weights_only=True)
    with pytest.raises(StateDictMismatchError, match="Missing 1: f_branch.conv_f.1.layers.0.bias"):
        MODNet.from_official({k: v for k, v in state.items() if not k.endswith("conv_f.1.layers.0.bias")},
                             config=MODNetConfig.tiny())
    with pytest.raises(StateDictMismatchError, match="Wrong shape"):
        MODNet.from_official(state)  # official sizes expected, tiny given


@pytest.mark.parametrize(("size", "expected"), [
    ((720, 1280), (512, 896)),   # shorter side above 512: shorter -> 512, longer int(1280 / 720 * 512) = 910 -> 896
    ((300, 400), (512, 672)),    # longer side below 512: int(400 / 300 * 512) = 682 -> 672
    ((400, 300), (672, 512)),
    ((500, 600), (480, 576)),    # straddles 512: size kept, rounded down to multiples of 32
    ((512, 512), (512, 512)),
    ((1024, 1000), (524 - 524 % 32, 512)),
])
def test_official_inference_size_rule(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert inference_size(*size) == expected
    with pytest.raises(ValueError, match="too thin"):
        inference_size(600, 20)


def test_matte_shape_range_and_preprocessing() -> None:
    model = MODNet.tiny()
    for h, w in ((37, 51), (70, 33), (64, 64)):
        alpha = model.matte(torch.rand(2, 3, h, w))
        assert alpha.shape == (2, 1, h, w) and torch.isfinite(alpha).all()
        assert alpha.min() >= 0 and alpha.max() <= 1
    # at the network size (tiny ref 64) the resizes are identities: matte = fusion head on (x - 0.5) / 0.5
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        semantic, detail, matte = model(x * 2 - 1, inference=False)
    assert torch.allclose(model.matte(x), matte, atol=1e-6)
    assert semantic.shape == (1, 1, 4, 4) and detail.shape == (1, 1, 64, 64)
    # the matte of a resized input is brought back with 'area'
    y = torch.rand(1, 3, 40, 50)
    with torch.no_grad():
        ref = F.interpolate(model(F.interpolate(y * 2 - 1, size=(64, 64), mode="area"))[2], size=(40, 50),
                            mode="area")
    assert torch.allclose(model.matte(y), ref, atol=1e-6)


def test_composite() -> None:
    images = torch.rand(1, 3, 4, 5)
    zero, one = torch.zeros(1, 1, 4, 5), torch.ones(1, 1, 4, 5)
    assert torch.equal(composite(images, zero, "black"), torch.zeros_like(images))
    assert torch.equal(composite(images, zero, "white"), torch.ones_like(images))
    assert torch.equal(composite(images, one, "white"), images)
    half = composite(images, one / 2, (0.2, 0.4, 0.6))
    assert torch.allclose(half[0, :, 0, 0], images[0, :, 0, 0] / 2 + torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="unknown background"):
        composite(images, one, "green")
