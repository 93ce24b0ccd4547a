"""avatar.losses: the perceptual networks (ArcFace iresnet, LPIPS) as ModelMixin networks, and the identity and
LPIPS losses training calls (values, gradients, frozen networks). Offline, random or tiny weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avatar.errors import AssetNotFoundError, CheckpointMismatchError, ConfigError
from avatar.hub import registry
from avatar.losses import (
    ArcFaceConfig,
    IdentityLoss,
    IResNet,
    LPIPSConfig,
    LPIPSLoss,
    LPIPSNet,
    align_faces,
    identity_loss,
    lpips_loss,
)
from avatar.losses.arcface import INSIGHTFACE_TEMPLATE_112
from avatar.modeling import ModelMixin


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (so no real weights on this machine change the outcome)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _images(seed: int, b: int = 2, size: int = 64) -> torch.Tensor:
    """``(b, 3, size, size)`` in [-1, 1]."""
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _smooth_images(seed: int, b: int = 2, size: int = 112) -> torch.Tensor:
    """``(b, 3, size, size)`` in [-1, 1] without pixel-level detail (resampling barely changes them)."""
    coarse = torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def _template_landmarks(b: int, scale: float = 1.0) -> torch.Tensor:
    """68 landmarks whose five alignment points sit on the 112 template (times ``scale``)."""
    lm = torch.zeros(b, 68, 2, dtype=torch.float64)
    t = INSIGHTFACE_TEMPLATE_112 * scale
    lm[:, 36] = lm[:, 39] = t[0]
    lm[:, 42] = lm[:, 45] = t[1]
    lm[:, 30], lm[:, 48], lm[:, 54] = t[2], t[3], t[4]
    return lm


# ---- the networks share the model base ---------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "model_id"), [(IResNet, "arcface-r18"), (LPIPSNet, "lpips-alex")])
def test_perceptual_networks_share_the_model_base(cls: type, model_id: str, tmp_path: Path, torch_home: Path) -> None:
    assert issubclass(cls, ModelMixin)
    spec = registry.MODELS[model_id]
    assert cls.default_model_id == model_id and registry.model_class(spec) is cls and spec.family == "perceptual"
    model = cls.tiny(seed=5)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert cls.config_class.from_dict(model.config.to_dict()) == model.config
    again = cls.tiny(seed=5)
    loaded = cls.from_pretrained(model.save_pretrained(tmp_path / "saved"))
    assert loaded.config == model.config and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v) and torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(AssetNotFoundError):  # offline, nothing cached
        cls.from_pretrained()


def test_configs_refuse_what_cannot_be_built() -> None:
    with pytest.raises(ConfigError, match="squeeze"):
        LPIPSConfig("squeeze")
    with pytest.raises(ConfigError, match="divisible"):
        ArcFaceConfig(input_size=100)
    with pytest.raises(ConfigError, match="unknown"):
        ArcFaceConfig.from_dict({"layers": [1, 1, 1, 1], "depth": 3})


def test_arcface_loads_the_official_names_strictly() -> None:
    donor = IResNet.tiny(seed=1)
    official = {f"module.{k}": (v.half() if v.is_floating_point() else v) for k, v in donor.state_dict().items()}
    net = IResNet.from_official(official, config=ArcFaceConfig.tiny())  # fp16 DataParallel file: cast, unwrapped
    rounded = {k: (v.half().float() if v.is_floating_point() else v) for k, v in donor.state_dict().items()}
    for k, v in net.state_dict().items():
        assert v.dtype == donor.state_dict()[k].dtype and torch.equal(v, rounded[k]), k
    broken = dict(donor.state_dict())
    del broken["layer2.0.conv1.weight"]
    broken["head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"layer2\.0\.conv1\.weight.*head\.weight"):
        IResNet.from_official(broken, config=ArcFaceConfig.tiny())


# ---- LPIPS: the lpips package's network ---------------------------------------------------------------------


def _package_reference(net: str) -> torch.nn.Module:
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    return lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # random trunk, bundled v0.1 linear heads


@pytest.mark.parametrize("net", ["alex", pytest.param("vgg", marks=pytest.mark.slow)])
def test_lpips_is_the_package_network_with_our_loading(net: str) -> None:
    ref = _package_reference(net)
    ours = LPIPSNet(LPIPSConfig(net))
    trunk = {f"features.{k.split('.', 2)[1]}.{k.split('.', 2)[2]}": v for k, v in ref.net.state_dict().items()}
    heads = {k: v for k, v in ref.state_dict().items() if k.startswith("lin") and not k.startswith("lins")}
    ours.load_official({**trunk, **heads, "classifier.1.weight": torch.zeros(1)})  # torchvision's whole file
    x, y = _images(1, b=3), _images(2, b=3)
    with torch.no_grad():
        expected = ref(x, y).flatten()
    assert expected.min() > 1e-3
    torch.testing.assert_close(ours(x, y), expected, rtol=0, atol=0)  # the same network, the same numbers
    torch.testing.assert_close(ours((x + 1) / 2, (y + 1) / 2, normalize=True), expected, rtol=0, atol=1e-6)
    assert set(ours.trunk_state_dict()) == set(trunk)
    with pytest.raises(CheckpointMismatchError, match="lin4"):
        ours.load_official({**trunk, **{k: v for k, v in heads.items() if not k.startswith("lin4")}})


def test_lpips_from_pretrained_takes_the_heads_and_the_torch_hub_trunk(torch_home: Path, tmp_path: Path) -> None:
    donor = LPIPSNet.tiny(seed=3)
    torch.save(donor.trunk_state_dict(), torch_home / "alexnet-owt-7be5be79.pth")
    net = LPIPSNet.from_pretrained("lpips-alex")  # heads: not cached offline -> the lpips package's copy
    for k, v in donor.trunk_state_dict().items():
        assert torch.equal(net.trunk_state_dict()[k], v)
    ref = _package_reference("alex")
    for k in range(5):
        assert torch.equal(getattr(net, f"lin{k}").model[1].weight, getattr(ref, f"lin{k}").model[1].weight)
    (torch_home / "alexnet-owt-7be5be79.pth").unlink()
    with pytest.raises(AssetNotFoundError, match="alexnet-owt-7be5be79.pth"):
        LPIPSNet.from_pretrained("lpips-alex")
    local = tmp_path / "local"
    local.mkdir()
    torch.save(donor.trunk_state_dict(), local / "alexnet-owt-7be5be79.pth")
    assert LPIPSNet.from_pretrained("lpips-alex", local_dir=local).config.net == "alex"


# ---- losses -----------------------------------------------------------------------------------------------


def test_identity_loss_is_one_minus_the_cosine_and_its_gradient_reaches_the_prediction() -> None:
    net = IResNet.tiny(seed=0)
    pred = _images(3, size=112).requires_grad_(True)
    target = _images(4, size=112)
    values = identity_loss(net, pred, target, reduction="none")
    with torch.no_grad():
        e_p, e_t = net(pred), net(target)
    torch.testing.assert_close(values, 1 - torch.nn.functional.cosine_similarity(e_p, e_t), rtol=0, atol=1e-6)
    loss = identity_loss(net, pred, target)
    assert loss.ndim == 0 and loss.item() == pytest.approx(values.mean().item())
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert identity_loss(net, target, target).item() == pytest.approx(0.0, abs=1e-6)
    # [0, 1] images with normalize=True give the same loss
    same = identity_loss(net, (pred.detach() + 1) / 2, (target + 1) / 2, normalize=True)
    assert same.item() == pytest.approx(loss.item(), abs=1e-6)


def test_identity_loss_aligns_with_landmarks_differentiably() -> None:
    net = IResNet.tiny(seed=0)
    pred, target = _smooth_images(5), _smooth_images(6)
    plain = identity_loss(net, pred, target, reduction="none")
    assert plain.min() > 0.05
    # faces twice as large in 224 frames, with landmarks on the scaled template: the same crops (up to resampling)
    big_p = torch.nn.functional.interpolate(pred, scale_factor=2, mode="bilinear", align_corners=False)
    big_t = torch.nn.functional.interpolate(target, scale_factor=2, mode="bilinear", align_corners=False)
    lm = _template_landmarks(2, scale=2.0) + 0.5  # pixel centres of the upsampled frame
    big_p.requires_grad_(True)
    aligned = identity_loss(net, big_p, big_t, target_landmarks=lm, reduction="none")
    torch.testing.assert_close(aligned, plain, rtol=0, atol=0.01)  # an 8-pixel misalignment moves it by 0.05
    aligned.sum().backward()
    assert big_p.grad is not None and big_p.grad.abs().sum() > 0
    crops = align_faces(big_t, lm)
    assert crops.shape == (2, 3, 112, 112)
    # no landmarks and a larger input: resized to the network's input
    resized = identity_loss(net, big_p.detach(), big_t, reduction="none")
    torch.testing.assert_close(resized, plain, rtol=0, atol=0.01)


def test_lpips_loss_is_the_mean_distance_and_differentiable() -> None:
    net = LPIPSNet.tiny(seed=0)
    pred = _images(7).requires_grad_(True)
    target = _images(8)
    loss = lpips_loss(net, pred, target)
    with torch.no_grad():
        per = net(pred, target)
    assert loss.ndim == 0 and loss.item() == pytest.approx(per.mean().item(), rel=1e-6)
    torch.testing.assert_close(lpips_loss(net, pred, target, reduction="none").detach(), per)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert lpips_loss(net, target, target).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="reduction"):
        lpips_loss(net, pred, target, reduction="sum")


def test_loss_modules_keep_their_networks_frozen_in_eval_mode(torch_home: Path) -> None:
    id_loss = IdentityLoss(IResNet.tiny(seed=0))
    lp_loss = LPIPSLoss(LPIPSNet.tiny(seed=0))
    wrapper = torch.nn.ModuleDict({"id": id_loss, "lpips": lp_loss}).train()  # a training loop's .train()
    assert wrapper.training and not id_loss.network.training and not lp_loss.network.training
    x = _images(9, size=112).requires_grad_(True)
    y = _images(10, size=112)
    first = lp_loss(x, y)
    torch.testing.assert_close(lp_loss(x, y), first)  # no dropout, no batch statistics
    (first + id_loss(x, y)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in wrapper.parameters())
    with pytest.raises(AssetNotFoundError):
        IdentityLoss.from_pretrained()
    with pytest.raises(AssetNotFoundError, match="vgg16"):
        LPIPSLoss.from_pretrained()
