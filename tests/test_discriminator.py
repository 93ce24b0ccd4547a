"""The training discriminator (official DualDiscriminatorDeform) and the adversarial losses.

The numerical match with the official code itself (logits, R1 gradients, the Dreg double backward: identical
on CPU) is ``scripts/compare_official_discriminator.py --official CHECKOUT``; these tests check the contract,
the official sizes, and each formula against a brute-force or hand computation.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fake_upstream import fake_modules, make_persistent
from safetensors.torch import load_file, save_file
from torch import nn

from avatar.errors import CheckpointMismatchError, ConfigError, ModelNotFoundError
from avatar.hub.convert import convert_file
from avatar.losses import (
    DiscriminatorConfig,
    DualDiscriminator,
    blur_filter,
    blur_images,
    blur_sigma_schedule,
    discriminator_loss,
    filtered_resizing,
    generator_loss,
    r1_inputs,
    r1_penalty,
    run_discriminator,
)
from avatar.losses.adversarial import discriminator_fake_loss, discriminator_real_loss
from avatar.losses.discriminator import MappingNetwork, MinibatchStdLayer


def _inputs(
    batch: int = 4,
    res: int = 64,
    raw: int = 16,
    uv: int = 64,
    seg: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=g) * 2 - 1).to(dtype)

    img = {
        "image_sr": r(batch, 3, res, res),
        "image": r(batch, 3, raw, raw),
        "uv": r(batch, 3, uv, uv),
        "seg": r(batch, 1, seg, seg),
    }
    return img, torch.randn(batch, 25, generator=g).to(dtype)


@pytest.fixture(scope="module")
def tiny() -> DualDiscriminator:
    D = DualDiscriminator.tiny(seed=0)
    with torch.no_grad():  # upstream zero-initialises the biases: make every one of them count
        for p in D.parameters():
            if p.ndim == 1:
                p.normal_(0.0, 0.2)
    return D


# ------------------------------------------------------------------------------------------------- network


def test_tiny_forward_shapes_and_resizing(tiny: DualDiscriminator) -> None:
    assert tiny.config.input_channels == 10 and tiny.config.block_resolutions == (64, 32, 16, 8)
    img, c = _inputs()
    logits = tiny(img, c)
    assert logits.shape == (4, 1) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # uv and seg at another size are resized to 64 first; the raw image to the size of image_sr
    x = tiny.assemble_input(img)
    assert x.shape == (4, 10, 64, 64)
    assert torch.equal(x[:, :3], img["image_sr"])
    up = F.interpolate(img["image"], size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(x[:, 3:6], up) and torch.equal(x[:, 6:9], img["uv"])
    img32 = {**img, "uv": F.interpolate(img["uv"], size=(32, 32), mode="bilinear", antialias=True)}
    assert tiny(img32, c).shape == (4, 1)
    # per-sample logits depend on the other samples of its minibatch-std group only
    assert not torch.allclose(tiny(img, c)[:2], tiny({k: v[:2] for k, v in img.items()}, c[:2]))


def test_bad_inputs_are_named(tiny: DualDiscriminator) -> None:
    img, c = _inputs()
    with pytest.raises(ValueError, match="lacks uv"):
        tiny({k: v for k, v in img.items() if k != "uv"}, c)
    with pytest.raises(ValueError, match=r"image_sr of shape \[N, 3, 64, 64\], got \(4, 3, 32, 32\)"):
        tiny({**img, "image_sr": img["image_sr"][:, :, :32, :32], "image": img["image"]}, c)
    with pytest.raises(ValueError, match=r"c of shape \[N, 25\]"):
        tiny(img, c[:, :12])
    with pytest.raises(ValueError, match="not divisible by the group size"):
        tiny({k: v[:3] for k, v in img.items()}, c[:3])


def test_official_configuration_on_meta_has_31_36_m_parameters() -> None:
    with torch.device("meta"):
        D = DualDiscriminator(DiscriminatorConfig())
    state = D.state_dict()
    assert all(t.is_meta for t in state.values())  # nothing allocated
    assert sum(p.numel() for p in D.parameters()) == 31_360_000
    assert len(state) == 92
    # per-module figures of the design note (portrait4d-training.md, section 2)
    count = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in D.named_children()}
    assert {k: round(v, 3) for k, v in count.items()} == {
        "b512": 0.120,
        "b256": 0.476,
        "b128": 1.901,
        "b64": 4.982,
        "b32": 4.982,
        "b16": 4.982,
        "b8": 4.982,
        "mapping": 2.115,
        "b4": 6.822,
    }
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["resample_filter"] == (4, 4)
    assert shapes["b512.fromrgb.weight"] == (64, 10, 1, 1) and shapes["b512.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["b512.skip.weight"] == (128, 64, 1, 1) and "b512.skip.bias" not in shapes
    assert "b256.fromrgb.weight" not in shapes and shapes["b8.conv1.weight"] == (512, 512, 3, 3)
    assert shapes["mapping.embed.weight"] == (512, 25) and shapes["mapping.fc7.weight"] == (512, 512)
    assert "mapping.w_avg" not in shapes
    assert shapes["b4.conv.weight"] == (512, 513, 3, 3) and shapes["b4.fc.weight"] == (512, 8192)
    assert shapes["b4.out.weight"] == (512, 512)
    assert [res for res in D.config.block_resolutions if getattr(D, f"b{res}").use_fp16] == [
        512,
        256,
        128,
        64,
    ]
    assert D.b512.conv1.conv_clamp == 256 and D.b512.skip.conv_clamp is None and D.b4.conv.conv_clamp == 256
    assert D.b4.mbstd.group_size == 2 and D.mapping.fc0.weight_gain == pytest.approx(0.01 / math.sqrt(512))


def test_strict_loading_names_the_bad_keys(tiny: DualDiscriminator) -> None:
    state = dict(tiny.state_dict())
    del state["b32.conv0.bias"]
    state["b4.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match="b32.conv0.bias") as info:
        DualDiscriminator.from_official(state, config=DiscriminatorConfig.tiny())
    assert "b4.extra.weight" in str(info.value)
    with pytest.raises(CheckpointMismatchError, match=r"b4.fc.weight \(32, 500\) != \(32, 512\)"):
        state = dict(tiny.state_dict())
        state["b4.fc.weight"] = torch.zeros(32, 500)
        DualDiscriminator.from_official(state, config=DiscriminatorConfig.tiny())


def test_save_pretrained_round_trip(tiny: DualDiscriminator, tmp_path: Path) -> None:
    folder = tiny.save_pretrained(tmp_path / "d")
    again = DualDiscriminator.from_pretrained(folder)
    assert again.config == tiny.config and not again.training
    for k, v in tiny.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    img, c = _inputs(seed=3)
    assert torch.equal(again(img, c), tiny(img, c))
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop("mapping.fc3.bias")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="mapping.fc3.bias"):
        DualDiscriminator.from_pretrained(folder)


def _official_options(**changes: object) -> dict:
    opts = dict(
        c_dim=25,
        img_resolution=64,
        img_channels=3,
        channel_base=256,
        channel_max=32,
        num_fp16_res=4,
        conv_clamp=256,
        disc_c_noise=0,
        has_superresolution=True,
        has_uv=True,
        has_seg=True,
        block_kwargs={"freeze_layers": 0},
        mapping_kwargs={},
        epilogue_kwargs={"mbstd_group_size": 2},
    )
    opts.update(changes)
    return opts


def test_converted_snapshot_loads_with_its_recorded_config(tiny: DualDiscriminator, tmp_path: Path) -> None:
    """``avatar convert SNAPSHOT --network D``: the restricted unpickler reads the D of an EG3D snapshot, the
    recorded init_kwargs give the config, the tensors load strictly."""
    source = DualDiscriminator(DiscriminatorConfig.tiny())
    source.load_state_dict(tiny.state_dict())
    with fake_modules() as mods:
        kwargs = mods.EasyDict(
            {k: mods.EasyDict(v) if isinstance(v, dict) else v for k, v in _official_options().items()}
        )
        make_persistent(
            source, "DualDiscriminatorDeform", "# source text, never executed\n", kwargs, mods.reconstruct
        )
        with open(tmp_path / "snapshot.pkl", "wb") as f:
            pickle.dump({"D": source, "G_ema": nn.Linear(2, 2), "training_set_kwargs": mods.EasyDict()}, f)
    convert_file(tmp_path / "snapshot.pkl", tmp_path / "converted", network="D")
    loaded = DualDiscriminator.from_official(tmp_path / "converted")
    assert loaded.config == DiscriminatorConfig.tiny() and not loaded.is_random_init
    img, c = _inputs(seed=5)
    assert torch.equal(loaded(img, c), tiny(img, c))
    convert_file(tmp_path / "snapshot.pkl", tmp_path / "g", network="G_ema")
    with pytest.raises(ModelNotFoundError, match="not the discriminator"):
        DualDiscriminator.from_official(tmp_path / "g")


def _write_snapshot(path: Path, source: DualDiscriminator) -> None:
    """An EG3D training snapshot as the released pickles are: ``G``, ``D``, ``G_ema`` (+ data kwargs)."""
    with fake_modules() as mods:
        kwargs = mods.EasyDict(
            {k: mods.EasyDict(v) if isinstance(v, dict) else v for k, v in _official_options().items()}
        )
        make_persistent(
            source, "DualDiscriminatorDeform", "# source text, never executed\n", kwargs, mods.reconstruct
        )
        with open(path, "wb") as f:
            pickle.dump({"G": nn.Linear(2, 2), "D": source, "G_ema": nn.Linear(2, 2),
                         "training_set_kwargs": mods.EasyDict()}, f)


def test_released_snapshot_discriminator_is_a_model_id(
    tiny: DualDiscriminator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DualDiscriminator.from_pretrained("portrait4d-static-D", local_dir=...)`` (what ``train/portrait4d.py
    --init-discriminator portrait4d-static-D`` runs): the registry's D entry points at the same pickle as the
    generator's id, the D inside it is converted into the cache and loads strictly; a generator id is refused."""
    import hashlib

    from avatar.hub import download as dl
    from avatar.hub import registry

    spec = registry.MODELS["portrait4d-static-D"]
    entry = registry.FILES[spec.checkpoint]
    assert entry.network == "D" and entry.path == registry.FILES["portrait4d-static-genhead512"].path
    assert {registry.FILES[registry.MODELS[m].checkpoint].path for m in ("portrait4d-v2-D", "portrait4d-v1-D")} == {
        registry.FILES["portrait4d-v2-vfhq512"].path, registry.FILES["portrait4d-genhead512"].path}
    source = DualDiscriminator(DiscriminatorConfig.tiny())
    source.load_state_dict(tiny.state_dict())
    hub = tmp_path / "hub"
    hub.mkdir()
    _write_snapshot(hub / entry.path, source)
    data = (hub / entry.path).read_bytes()
    fake = dataclasses.replace(entry, size=len(data), size_exact=True, sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(registry, "FILES", {**registry.FILES, entry.key: fake})
    monkeypatch.setattr(dl, "FILES", registry.FILES)
    loaded = DualDiscriminator.from_pretrained("portrait4d-static-D", local_dir=hub)
    assert loaded.config == DiscriminatorConfig.tiny() and not loaded.is_random_init and not loaded.training
    img, c = _inputs(seed=5)
    assert torch.equal(loaded(img, c), tiny(img, c))
    with pytest.raises(ModelNotFoundError, match="'portrait4d-static' is a"):
        DualDiscriminator.from_pretrained("portrait4d-static")


def test_config_from_official_init_kwargs() -> None:
    assert (
        DiscriminatorConfig.from_official(
            _official_options(img_resolution=512, channel_base=32768, channel_max=512)
        )
        == DiscriminatorConfig()
    )
    cfg = DiscriminatorConfig.from_official(
        _official_options(
            block_kwargs={"freeze_layers": 3, "fp16_channels_last": False},
            mapping_kwargs={"num_layers": 2},
            epilogue_kwargs={"mbstd_group_size": 4, "mbstd_num_channels": 2},
        )
    )
    assert (cfg.freeze_layers, cfg.mapping_layers, cfg.mbstd_group_size, cfg.mbstd_num_channels) == (
        3,
        2,
        4,
        2,
    )
    with pytest.raises(ConfigError, match=r"block_kwargs\['activation'\]"):
        DiscriminatorConfig.from_official(_official_options(block_kwargs={"activation": "relu"}))
    with pytest.raises(ConfigError, match="sr_antialias"):
        DiscriminatorConfig.from_official(_official_options(sr_antialias=True))
    with pytest.raises(ConfigError, match="power of two"):
        DiscriminatorConfig(img_resolution=96)


def test_freeze_layers_and_unconditional() -> None:
    D = DualDiscriminator(DiscriminatorConfig.tiny().replace(freeze_layers=2))
    frozen = sorted(n for n, p in D.named_parameters() if not p.requires_grad)
    assert frozen == ["b64.conv0.bias", "b64.conv0.weight", "b64.fromrgb.bias", "b64.fromrgb.weight"]
    U = DualDiscriminator(DiscriminatorConfig.tiny().replace(c_dim=0))
    assert not hasattr(U, "mapping") and U.b4.out.weight.shape == (1, 32)
    img, _ = _inputs()
    assert U(img, torch.zeros(4, 0)).shape == (4, 1)


def test_disc_c_noise_leaves_the_callers_label_alone() -> None:
    D = DualDiscriminator(DiscriminatorConfig.tiny().replace(disc_c_noise=1.0))
    img, c = _inputs()
    before = c.clone()
    torch.manual_seed(0)
    a = D(img, c)
    torch.manual_seed(1)
    b = D(img, c)
    assert torch.equal(c, before) and not torch.equal(a, b)


def test_minibatch_std_matches_brute_force() -> None:
    x = torch.randn(6, 4, 3, 2, dtype=torch.float64)
    for group, channels in ((2, 1), (3, 2), (None, 1), (4, 1), (6, 4)):
        n = x.shape[0]
        g = n if group is None else min(group, n)
        if n % g:
            with pytest.raises(ValueError, match="not divisible"):
                MinibatchStdLayer(group, channels)(x)
            continue
        out = MinibatchStdLayer(group, channels)(x)
        assert out.shape == (6, 4 + channels, 3, 2) and torch.equal(out[:, :4], x)
        groups = n // g
        c = 4 // channels
        for i in range(n):
            members = [j for j in range(n) if j % groups == i % groups]  # upstream's reshape(G, -1, ...)
            assert len(members) == g
            for f in range(channels):
                xs = x[members][:, f * c : (f + 1) * c]  # [G, c, H, W]
                std = (xs.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
                assert torch.allclose(out[i, 4 + f], std.expand(3, 2)), (group, channels, i, f)


def test_mapping_network_matches_hand_computation() -> None:
    m = MappingNetwork(z_dim=0, c_dim=5, w_dim=4, num_ws=None, num_layers=2, w_avg_beta=None).double()
    c = torch.randn(3, 5, dtype=torch.float64)
    y = c @ m.embed.weight.t() / math.sqrt(5) + m.embed.bias
    y = y / (y.square().mean(1, keepdim=True) + 1e-8).sqrt()
    for layer in (m.fc0, m.fc1):
        y = F.leaky_relu(y @ (layer.weight * 0.01 / math.sqrt(4)).t() + layer.bias * 0.01, 0.2) * math.sqrt(2)
    assert torch.allclose(m(None, c), y)
    assert not hasattr(m, "w_avg")


def test_filtered_resizing_modes() -> None:
    x = torch.randn(2, 3, 32, 32)
    want = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(filtered_resizing(x, 16), want)
    assert torch.allclose(filtered_resizing(x, 32), x, atol=1e-6)  # same size: identity
    plain = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(filtered_resizing(x, 16, "none"), plain)
    assert torch.allclose(filtered_resizing(x, 16, 0.25), 0.75 * plain + 0.25 * want)
    assert filtered_resizing(x, 16, "classic").shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="filter_mode"):
        filtered_resizing(x, 16, "bicubic")


# ------------------------------------------------------------------------------------------------- losses


def test_logistic_losses_against_hand_computation() -> None:
    fake = torch.tensor([[0.0], [2.0], [-1.0]])
    real = torch.tensor([[1.0], [-3.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert generator_loss(fake).item() == pytest.approx((sp(0.0) + sp(-2.0) + sp(1.0)) / 3, rel=1e-6)
    assert discriminator_fake_loss(fake).flatten().tolist() == pytest.approx([sp(0.0), sp(2.0), sp(-1.0)])
    assert discriminator_real_loss(real).flatten().tolist() == pytest.approx([sp(-1.0), sp(3.0)])
    want = (sp(0.0) + sp(2.0) + sp(-1.0)) / 3 + (sp(-1.0) + sp(3.0)) / 2
    assert discriminator_loss(fake, real).item() == pytest.approx(want, rel=1e-6)


class _LinearD(nn.Module):
    """``D(x)_n = sum_k <w_k, x_k[n]>``: every input gradient is ``w_k`` (analytic R1)."""

    def __init__(self, img: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.w = nn.ParameterDict(
            {k: nn.Parameter(torch.randn(v.shape[1:], dtype=torch.float64)) for k, v in img.items()}
        )

    def forward(
        self, img: dict[str, torch.Tensor], c: torch.Tensor, update_emas: bool = False
    ) -> torch.Tensor:
        return sum((img[k] * w).sum(dim=[1, 2, 3]) for k, w in self.w.items())[:, None]


def test_r1_penalty_analytic_case() -> None:
    img, c = _inputs(batch=3, dtype=torch.float64)
    D = _LinearD(img)
    leaves = r1_inputs(img)
    out = r1_penalty(D(leaves, c), leaves, gamma=2.0, gamma_uv=3.0, gamma_seg=5.0)
    sq = {k: float(w.detach().square().sum()) for k, w in D.w.items()}
    assert out.penalty.tolist() == pytest.approx([sq["image_sr"] + sq["image"]] * 3)
    assert out.penalty_uv.tolist() == pytest.approx([sq["uv"]] * 3)
    assert out.penalty_seg.tolist() == pytest.approx([sq["seg"]] * 3)
    want = (sq["image_sr"] + sq["image"]) + 1.5 * sq["uv"] + 2.5 * sq["seg"]
    assert out.loss.tolist() == pytest.approx([want] * 3)
    # differentiable for the Dreg backward: d(loss)/dw_uv = gamma_uv * w_uv (per sample, summed over 3)
    out.loss.sum().backward()
    assert torch.allclose(D.w["uv"].grad, 3 * 3.0 * D.w["uv"].detach())
    # a key the logits do not use, or an absent key, contributes 0; inputs must require grad
    leaves = r1_inputs({k: v for k, v in img.items() if k != "seg"})
    out = r1_penalty((leaves["image_sr"] * D.w["image_sr"]).sum(dim=[1, 2, 3])[:, None], leaves)
    assert out.penalty_uv.abs().max() == 0 and out.penalty_seg.abs().max() == 0
    assert out.penalty.tolist() == pytest.approx([sq["image_sr"]] * 3)
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(D(img, c), img)


def test_r1_gradients_of_the_discriminator_match_finite_differences(tiny: DualDiscriminator) -> None:
    """Gradients w.r.t. each input at its own size (raw and seg at 16, uv at 32: through the resizing)."""
    D = DualDiscriminator(tiny.config)
    D.load_state_dict(tiny.state_dict())
    D = D.double()
    img, c = _inputs(batch=2, raw=16, uv=32, seg=16, seed=7, dtype=torch.float64)
    leaves = r1_inputs(img)
    logits = D(leaves, c)
    out = r1_penalty(logits, leaves, gamma=1.0, gamma_uv=10.0, gamma_seg=1.0)
    grads = torch.autograd.grad(logits.sum(), list(leaves.values()), retain_graph=True)
    g = dict(zip(leaves, grads, strict=True))
    assert (
        g["image"].shape == (2, 3, 16, 16)
        and g["uv"].shape == (2, 3, 32, 32)
        and g["seg"].shape == (2, 1, 16, 16)
    )
    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    with torch.no_grad():
        for k in leaves:
            v = torch.randn(img[k].shape, generator=gen, dtype=torch.float64)
            plus = D({**img, k: img[k] + eps * v}, c).sum()
            minus = D({**img, k: img[k] - eps * v}, c).sum()
            assert float((plus - minus) / (2 * eps)) == pytest.approx(float((g[k] * v).sum()), rel=1e-5), k
    per = {k: t.square().sum(dim=[1, 2, 3]) for k, t in g.items()}
    assert torch.allclose(out.penalty, per["image_sr"] + per["image"])
    assert torch.allclose(out.loss, 0.5 * out.penalty + 5.0 * per["uv"] + 0.5 * per["seg"])
    out.loss.mean().backward()  # the double backward reaches the weights
    assert D.b64.fromrgb.weight.grad is not None and D.b64.fromrgb.weight.grad.abs().sum() > 0


def test_blur_kernel_schedule_and_run_discriminator(tiny: DualDiscriminator) -> None:
    assert blur_filter(0.3) is None  # floor(3 * 0.3) = 0: no blur
    f = blur_filter(1.0)
    taps = torch.tensor([2.0 ** -(k * k) for k in range(-3, 4)])
    assert torch.allclose(f, taps / taps.sum())
    x = torch.randn(2, 3, 12, 12)
    k2 = (f[:, None] * f[None, :])[None, None].repeat(3, 1, 1, 1)
    assert torch.allclose(blur_images(x, 1.0), F.conv2d(x, k2, padding=3, groups=3), atol=1e-6)
    assert blur_images(x, 0.2) is x
    assert blur_sigma_schedule(0, 10, 200) == 10 and blur_sigma_schedule(100_000, 10, 200) == pytest.approx(5)
    assert blur_sigma_schedule(300_000, 10, 200) == 0 and blur_sigma_schedule(5, 10, 0) == 0
    img, c = _inputs()
    before = {k: v.clone() for k, v in img.items()}
    got = run_discriminator(tiny, img, c, blur_sigma=2.0)
    assert all(torch.equal(img[k], before[k]) for k in img)  # the caller's dict is left alone
    assert torch.equal(got, tiny({**img, "image_sr": blur_images(img["image_sr"], 2.0)}, c))
    assert torch.equal(run_discriminator(tiny, img, c), tiny(img, c))


@pytest.mark.gpu
def test_fp16_blocks_on_cuda(tiny: DualDiscriminator) -> None:
    D = DualDiscriminator(tiny.config).cuda()
    D.load_state_dict(tiny.state_dict())
    img, c = _inputs()
    img, c = {k: v.cuda() for k, v in img.items()}, c.cuda()
    x, _ = D.b64(None, D.assemble_input(img))
    assert x.dtype == torch.float16
    x32, _ = D.b64(None, D.assemble_input(img), force_fp32=True)
    assert x32.dtype == torch.float32
    half, full = D(img, c), D(img, c, force_fp32=True)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert torch.allclose(half, full, rtol=0.05, atol=0.05 * float(full.abs().max()))
    assert torch.allclose(
        full.cpu(), tiny({k: v.cpu() for k, v in img.items()}, c.cpu()), rtol=1e-4, atol=1e-4
    )
    leaves = r1_inputs(img)
    out = r1_penalty(D(leaves, c), leaves)
    out.loss.mean().backward()
    assert torch.isfinite(out.loss).all() and D.b64.fromrgb.weight.grad is not None
