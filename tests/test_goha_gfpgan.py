"""GOHA's super-resolution network (GFPGAN v1 clean): official names and shapes, noise modes, hand-checked layers.

The side-by-side check against the official code runs only when ``GOHA_OFFICIAL`` points at an extracted
NVlabs/GOHA checkout (``scripts/compare_official_goha_gfpgan.py``); nothing else here needs it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avatar.models.goha.gfpgan import (
    GOHASuperResolution,
    GOHASuperResolutionConfig,
    ModulatedConv2d,
    ResBlock,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Channels per resolution of GOHA's GFPGANv1Clean(out_size=512, channel_multiplier=2, narrow=1), read off the
# official channel tables: the U-Net uses half of the StyleGAN2 decoder's widths.
UNET = {4: 256, 8: 256, 16: 256, 32: 256, 64: 256, 128: 128, 256: 64, 512: 32}
DEC = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
LEVELS = [8, 16, 32, 64, 128, 256, 512]


def _conv(table: dict, name: str, o: int, i: int, k: int, bias: bool = True) -> None:
    table[f"{name}.weight"] = (o, i, k, k)
    if bias:
        table[f"{name}.bias"] = (o,)


def _modconv(table: dict, name: str, o: int, i: int, k: int) -> None:
    table[f"{name}.modulation.weight"] = (i, 512)
    table[f"{name}.modulation.bias"] = (i,)
    table[f"{name}.weight"] = (1, o, i, k, k)


def official_table() -> dict[str, tuple[int, ...]]:
    """The official ``neural_layers.*`` entries of GOHA's checkpoint (prefix stripped) and their shapes."""
    t: dict[str, tuple[int, ...]] = {}
    g = "gfpgan"
    _conv(t, f"{g}.conv_body_first", UNET[512], 3, 1)
    for k, r in enumerate(reversed(LEVELS)):  # 512 -> 256, ..., 8 -> 4
        cin, cout = UNET[r], UNET[r // 2]
        _conv(t, f"{g}.conv_body_down.{k}.conv1", cin, cin, 3)
        _conv(t, f"{g}.conv_body_down.{k}.conv2", cout, cin, 3)
        _conv(t, f"{g}.conv_body_down.{k}.skip", cout, cin, 1, bias=False)
    _conv(t, f"{g}.final_conv", 256, 256, 3)
    for k, r in enumerate(LEVELS):  # 4 -> 8, ..., 256 -> 512
        cin, cout = UNET[r // 2], UNET[r]
        _conv(t, f"{g}.conv_body_up.{k}.conv1", cin, cin, 3)
        _conv(t, f"{g}.conv_body_up.{k}.conv2", cout, cin, 3)
        _conv(t, f"{g}.conv_body_up.{k}.skip", cout, cin, 1, bias=False)
        _conv(t, f"{g}.toRGB.{k}", 3, cout, 1)
        for head in ("condition_scale", "condition_shift"):
            _conv(t, f"{g}.{head}.{k}.0", cout, cout, 3)
            _conv(t, f"{g}.{head}.{k}.2", cout, cout, 3)
    t[f"{g}.final_linear.weight"] = (16 * 512, 256 * 4 * 4)
    t[f"{g}.final_linear.bias"] = (16 * 512,)
    d = f"{g}.stylegan_decoder"
    for j in range(1, 16, 2):
        t[f"{d}.style_mlp.{j}.weight"] = (512, 512)
        t[f"{d}.style_mlp.{j}.bias"] = (512,)
    t[f"{d}.constant_input.weight"] = (1, 512, 4, 4)
    _modconv(t, f"{d}.style_conv1.modulated_conv", 512, 512, 3)
    t[f"{d}.style_conv1.weight"] = (1,)
    t[f"{d}.style_conv1.bias"] = (1, 512, 1, 1)
    _modconv(t, f"{d}.to_rgb1.modulated_conv", 3, 512, 1)
    t[f"{d}.to_rgb1.bias"] = (1, 3, 1, 1)
    for k, r in enumerate(LEVELS):
        for j, cin in ((2 * k, DEC[r // 2]), (2 * k + 1, DEC[r])):
            _modconv(t, f"{d}.style_convs.{j}.modulated_conv", DEC[r], cin, 3)
            t[f"{d}.style_convs.{j}.weight"] = (1,)
            t[f"{d}.style_convs.{j}.bias"] = (1, DEC[r], 1, 1)
        _modconv(t, f"{d}.to_rgbs.{k}.modulated_conv", 3, DEC[r], 1)
        t[f"{d}.to_rgbs.{k}.bias"] = (1, 3, 1, 1)
    for i, r in enumerate([4] + [r for r in LEVELS for _ in range(2)]):
        t[f"{d}.noises.noise{i}"] = (1, 1, r, r)
    return t


def test_official_names_and_shapes_on_meta() -> None:
    with torch.device("meta"):
        model = GOHASuperResolution()
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    table = official_table()
    assert sorted(set(table) - set(state)) == []  # missing
    assert sorted(set(state) - set(table)) == []  # unexpected
    assert {k: v for k, v in state.items() if table[k] != v} == {}
    assert sum(p.numel() for p in model.parameters()) == 86_444_252
    assert len([k for k in state if ".noises." in k]) == 15


def test_tiny_shapes_and_strict_round_trip() -> None:
    torch.manual_seed(0)
    model = GOHASuperResolution.tiny().eval()
    cfg = model.config
    assert cfg.num_layers == 9 and cfg.num_latent == 10
    img = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        out, rgbs = model(img, return_rgbs=True)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert [tuple(r.shape[-2:]) for r in rgbs] == [(8, 8), (16, 16), (32, 32), (64, 64)]
    other = GOHASuperResolutionConfig.from_dict(cfg.to_dict()).build()
    other.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(other(img), out)


def _noisy_tiny() -> GOHASuperResolution:
    """Tiny module with non-zero noise strengths (they start at zero, as upstream)."""
    torch.manual_seed(1)
    model = GOHASuperResolution.tiny().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.shape == (1,):  # StyleConv noise strengths
                p.fill_(0.5)
    return model


@torch.no_grad()
def test_default_is_deterministic_stored_noise() -> None:
    model = _noisy_tiny()
    img = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.manual_seed(123)
    a = model(img)
    torch.manual_seed(456)
    b = model(img)
    assert torch.equal(a, b)  # independent of the global RNG
    assert torch.equal(a, model(img, noise=model.stored_noise()))
    torch.testing.assert_close(a[1:2], model(img[1:2]), atol=1e-5, rtol=0)  # independent of the batch
    assert (a - model(img, noise_mode="none")).abs().max() > 1e-3  # the noise matters here


@torch.no_grad()
def test_random_and_none_modes() -> None:
    model = _noisy_tiny()
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(7)
    r1 = model(img, noise_mode="random")
    r2 = model(img, noise_mode="random")
    torch.manual_seed(7)
    r3 = model(img, noise_mode="random")
    assert not torch.allclose(r1, r2) and torch.equal(r1, r3)
    # the official draw: one (b, 1, r, r) normal_() per StyleConv, in layer order
    torch.manual_seed(7)
    draws = [torch.empty(2, 1, s[-2], s[-1]).normal_() for s in model.config.noise_shapes()]
    assert torch.equal(model(img, noise=draws), r1)
    zeros = [torch.zeros(s) for s in model.config.noise_shapes()]
    assert torch.allclose(model(img, noise_mode="none"), model(img, noise=zeros), atol=1e-6)
    no_noise = GOHASuperResolution(model.config.replace(noise_mode="none")).eval()
    no_noise.load_state_dict(model.state_dict())
    assert torch.equal(no_noise(img), model(img, noise_mode="none"))


def test_bad_noise_arguments() -> None:
    model = GOHASuperResolution.tiny()
    img = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="noise_mode"):
        model(img, noise_mode="fixed")
    with pytest.raises(ValueError, match="9 tensors"):
        model(img, noise=[torch.zeros(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="noise_mode"):
        GOHASuperResolutionConfig(noise_mode="fixed")
    with pytest.raises(ValueError, match="power of two"):
        GOHASuperResolutionConfig(out_size=500)


@torch.no_grad()
def test_input_resize_is_bilinear_align_corners() -> None:
    model = _noisy_tiny()
    img = torch.rand(1, 3, 23, 23) * 2 - 1
    resized = F.interpolate(img, size=(64, 64), mode="bilinear", align_corners=True)
    assert torch.equal(model(img), model(resized))  # a 64x64 input is passed through unchanged


@torch.no_grad()
def test_modulated_conv_matches_direct_formula() -> None:
    torch.manual_seed(2)
    for demodulate, upsample in ((True, False), (True, True), (False, False)):
        layer = ModulatedConv2d(5, 4, 3, 6, demodulate=demodulate, upsample=upsample)
        x, style = torch.randn(2, 5, 6, 6), torch.randn(2, 6)
        out = layer(x, style)
        # the non-fused form (modulation on the input, demodulation on the output) is the same function
        torch.testing.assert_close(layer(x, style, fused=False), out, atol=1e-5, rtol=1e-5)
        for n in range(2):
            s = style[n] @ layer.modulation.weight.T + layer.modulation.bias  # (in,)
            w = layer.weight[0] * s[None, :, None, None]  # (out, in, 3, 3)
            if demodulate:
                w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
            xn = x[n : n + 1]
            if upsample:
                xn = F.interpolate(xn, scale_factor=2, mode="bilinear", align_corners=False)
            torch.testing.assert_close(out[n : n + 1], F.conv2d(xn, w, padding=1), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_input_modulated_super_resolution_equals_the_fused_one() -> None:
    sr = GOHASuperResolution.tiny().eval()
    torch.manual_seed(4)
    img = torch.rand(3, 3, 24, 24) * 2 - 1
    fused = sr(img)
    batched = sr(img, fused_modconv=False)
    assert batched.shape == fused.shape == (3, 3, 64, 64)
    torch.testing.assert_close(batched, fused, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sr(img[1:2], fused_modconv=False), fused[1:2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sft_half", [True, False])
@pytest.mark.parametrize("fused_modconv", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_in_place_inference_equals_the_recorded_forward_bit_for_bit(sft_half: bool, fused_modconv: bool,
                                                                    bf16: bool) -> None:
    """Without autograd the StyleConv epilogue and the SFT run in place (less memory); the values are those of
    the out-of-place operations that autograd records, under bf16 autocast too (where the out-of-place sums
    promote to float32, the in-place forms are not taken)."""
    torch.manual_seed(1)
    model = GOHASuperResolution(GOHASuperResolutionConfig.tiny().replace(sft_half=sft_half)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.shape == (1,):
                p.fill_(0.5)
    img = torch.rand(2, 3, 24, 24) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        recorded = model(img, fused_modconv=fused_modconv)
        assert recorded.requires_grad
        with torch.no_grad():
            in_place = model(img, fused_modconv=fused_modconv)
        assert in_place.dtype == recorded.dtype and torch.equal(in_place, recorded.detach())
        torch.manual_seed(5)
        draws = [torch.randn(2, 1, s[-2], s[-1]) for s in model.config.noise_shapes()]
        recorded = model(img, noise=draws, fused_modconv=fused_modconv)
        with torch.no_grad():
            assert torch.equal(model(img, noise=draws, fused_modconv=fused_modconv), recorded.detach())


@torch.no_grad()
def test_resblock_by_hand() -> None:
    torch.manual_seed(3)
    block = ResBlock(3, 2, 0.5)
    x = torch.randn(1, 3, 8, 8)
    lrelu = torch.nn.LeakyReLU(0.2)
    # bilinear 0.5x with align_corners=False averages each 2x2 cell
    main = lrelu(block.conv2(F.avg_pool2d(lrelu(block.conv1(x)), 2)))
    torch.testing.assert_close(block(x), main + block.skip(F.avg_pool2d(x, 2)), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sft_modulates_the_second_half_of_the_channels() -> None:
    model = _noisy_tiny()
    gfpgan = model.gfpgan
    for heads in (gfpgan.condition_scale, gfpgan.condition_shift):  # scale = shift = 0 everywhere
        for head in heads:
            head[2].weight.zero_()
            head[2].bias.zero_()
    seen: list[torch.Tensor] = []
    hook = gfpgan.stylegan_decoder.style_convs[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model(torch.rand(1, 3, 64, 64))
    hook.remove()
    half = seen[0].shape[1] // 2
    assert seen[0][:, half:].abs().max() == 0 and seen[0][:, :half].abs().max() > 0


def test_config_values() -> None:
    cfg = GOHASuperResolutionConfig()
    assert (cfg.out_size, cfg.num_style_feat, cfg.channel_multiplier, cfg.num_mlp) == (512, 512, 2, 8)
    assert cfg.sft_half and cfg.different_w and cfg.input_is_latent and cfg.noise_mode == "const"
    assert cfg.unet_channels() == {**UNET, 1024: 16} and cfg.decoder_channels()[512] == 64
    assert [s[-1] for s in cfg.noise_shapes()] == [4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512]
    assert math.isclose(GOHASuperResolutionConfig.tiny().narrow, 1 / 32)


@pytest.mark.skipif(not os.environ.get("GOHA_OFFICIAL"), reason="GOHA_OFFICIAL (extracted NVlabs/GOHA) not set")
def test_side_by_side_with_official_tiny() -> None:
    script = REPO_ROOT / "scripts" / "compare_official_goha_gfpgan.py"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--official", os.environ["GOHA_OFFICIAL"]],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
