"""StyleGAN2 ops and the Portrait4D super-resolution module, checked against direct (loop) maths."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avatar.nn.stylegan2 import (
    SRConfig,
    SuperresolutionHybrid8XDC,
    SynthesisBlock,
    constant_ws,
    modulated_conv2d,
)
from avatar.nn.upfirdn import bias_act, downsample2d, setup_filter, upfirdn2d, upsample2d

STATE_DICT_JSON = Path(__file__).resolve().parents[2] / "shared" / "design" / "portrait4d_psi_state_dict.json"

# Official `superresolution.*` entries of the Portrait4D reconstructor (prefix stripped).
EXPECTED_SR_SHAPES: dict[str, list[int]] = {
    "block0.resample_filter": [4, 4],
    "block0.conv0.weight": [256, 32, 3, 3],
    "block0.conv0.noise_strength": [],
    "block0.conv0.bias": [256],
    "block0.conv0.resample_filter": [4, 4],
    "block0.conv0.noise_const": [256, 256],
    "block0.conv0.affine.weight": [32, 512],
    "block0.conv0.affine.bias": [32],
    "block0.conv1.weight": [256, 256, 3, 3],
    "block0.conv1.noise_strength": [],
    "block0.conv1.bias": [256],
    "block0.conv1.resample_filter": [4, 4],
    "block0.conv1.noise_const": [256, 256],
    "block0.conv1.affine.weight": [256, 512],
    "block0.conv1.affine.bias": [256],
    "block0.torgb.weight": [3, 256, 1, 1],
    "block0.torgb.bias": [3],
    "block0.torgb.affine.weight": [256, 512],
    "block0.torgb.affine.bias": [256],
    "block1.resample_filter": [4, 4],
    "block1.conv0.weight": [128, 256, 3, 3],
    "block1.conv0.noise_strength": [],
    "block1.conv0.bias": [128],
    "block1.conv0.resample_filter": [4, 4],
    "block1.conv0.noise_const": [512, 512],
    "block1.conv0.affine.weight": [256, 512],
    "block1.conv0.affine.bias": [256],
    "block1.conv1.weight": [128, 128, 3, 3],
    "block1.conv1.noise_strength": [],
    "block1.conv1.bias": [128],
    "block1.conv1.resample_filter": [4, 4],
    "block1.conv1.noise_const": [512, 512],
    "block1.conv1.affine.weight": [128, 512],
    "block1.conv1.affine.bias": [128],
    "block1.torgb.weight": [3, 128, 1, 1],
    "block1.torgb.bias": [3],
    "block1.torgb.affine.weight": [128, 512],
    "block1.torgb.affine.bias": [128],
}


# ----------------------------------------------------------------------------------------------------------
# Direct reference implementations (explicit loops, float64 NumPy).


def _loop_upfirdn2d(
    x: np.ndarray, f2d: np.ndarray, up, down, pads, flip_filter: bool, gain: float
) -> np.ndarray:
    """upfirdn2d by explicit index loops: zero-insert, pad/crop, true 2-D convolution, decimate."""
    (upx, upy), (downx, downy), (x0, x1, y0, y1) = up, down, pads
    n, c, h, w = x.shape
    big = np.zeros((n, c, h * upy, w * upx))
    for i, j in itertools.product(range(h), range(w)):
        big[:, :, i * upy, j * upx] = x[:, :, i, j]
    hp, wp = h * upy + y0 + y1, w * upx + x0 + x1
    padded = np.zeros((n, c, hp, wp))
    for i, j in itertools.product(range(hp), range(wp)):
        si, sj = i - y0, j - x0
        if 0 <= si < big.shape[2] and 0 <= sj < big.shape[3]:
            padded[:, :, i, j] = big[:, :, si, sj]
    fh, fw = f2d.shape
    k = f2d * gain if flip_filter else f2d[::-1, ::-1] * gain  # correlation kernel
    out = np.zeros((n, c, hp - fh + 1, wp - fw + 1))
    for i, j in itertools.product(range(out.shape[2]), range(out.shape[3])):
        out[:, :, i, j] = (padded[:, :, i : i + fh, j : j + fw] * k).sum(axis=(2, 3))
    return out[:, :, ::downy, ::downx]


def _loop_modconv(x, weight, styles, demodulate, up, f, noise):
    """Modulated conv, one sample at a time with an explicitly built per-sample weight."""
    outs = []
    for n in range(x.shape[0]):
        wn = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            d = [1 / math.sqrt(float((wn[o] ** 2).sum()) + 1e-8) for o in range(wn.shape[0])]
            wn = wn * torch.tensor(d, dtype=wn.dtype).reshape(-1, 1, 1, 1)
        pad = weight.shape[-1] // 2
        if up == 1:
            y = F.conv2d(x[n : n + 1], wn, padding=pad)
        else:  # zero-insert + pad once + FIR (gain up^2), then a 'valid' true convolution (flip_weight=False)
            fw = f.shape[-1]
            p0, p1 = pad + (fw + up - 1) // 2, pad + (fw - up) // 2
            xu = upfirdn2d(x[n : n + 1], f, up=up, padding=[p0, p1, p0, p1], gain=up**2)
            y = F.conv2d(xu, wn.flip([2, 3]))
        outs.append(y)
    y = torch.cat(outs)
    return y + noise if noise is not None else y


# ----------------------------------------------------------------------------------------------------------
# upfirdn2d and friends.

UPFIRDN_CASES = [
    # up, down, padding, flip_filter, gain, taps/separable
    (1, 1, 0, False, 1.0, "2d"),
    (2, 1, [2, 1, 2, 1], False, 4.0, "2d"),
    (1, 2, [1, 1, 1, 1], True, 1.0, "2d"),
    (3, 2, [1, 2, 0, 3], False, 0.5, "2d"),
    ([2, 1], [1, 2], [3, -1, -1, 2], True, 2.0, "2d"),
    (2, 2, 1, False, 1.0, "sep"),
    (1, 1, [-1, 0, 2, -2], True, 1.0, "asym"),
]


@pytest.mark.parametrize(("up", "down", "padding", "flip", "gain", "kind"), UPFIRDN_CASES)
def test_upfirdn2d_matches_loop(up, down, padding, flip, gain, kind) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    if kind == "sep":
        f = setup_filter(torch.rand(8, generator=g) + 0.1)
        assert f.ndim == 1
        f2d = torch.outer(f.double(), f.double()).numpy()
    elif kind == "asym":
        f = torch.rand(2, 3, generator=g)
        f2d = f.double().numpy()
    else:
        f = setup_filter([1, 3, 3, 1])
        f2d = f.double().numpy()
    got = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)

    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    pads = padding if isinstance(padding, list) else [padding] * 4
    want = _loop_upfirdn2d(x.numpy(), f2d, pair(up), pair(down), pads, flip, gain)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_setup_filter() -> None:
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    np.testing.assert_allclose(f.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0)
    assert setup_filter([1] * 8).shape == (8,)
    assert torch.allclose(setup_filter([1, 2], gain=4, normalize=False), torch.tensor([[4.0, 8], [8, 16]]))


def test_up_down_sample_shapes_and_dc_gain() -> None:
    f = setup_filter([1, 3, 3, 1])
    x = torch.full((1, 2, 8, 8), 0.7)
    y = upsample2d(x, f)
    assert y.shape == (1, 2, 16, 16)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 0.7))
    z = downsample2d(x, f)
    assert z.shape == (1, 2, 4, 4)
    torch.testing.assert_close(z[..., 1:-1, 1:-1], torch.full_like(z[..., 1:-1, 1:-1], 0.7))


# ----------------------------------------------------------------------------------------------------------
# bias_act.

_SELU_A, _SELU_L = 1.6732632423543772, 1.0507009873554805
_SCALAR_ACTS = {
    "linear": (lambda v, a: v, 1.0),
    "relu": (lambda v, a: max(v, 0.0), math.sqrt(2)),
    "lrelu": (lambda v, a: v if v >= 0 else a * v, math.sqrt(2)),
    "tanh": (lambda v, a: math.tanh(v), 1.0),
    "sigmoid": (lambda v, a: 1 / (1 + math.exp(-v)), 1.0),
    "elu": (lambda v, a: v if v > 0 else math.exp(v) - 1, 1.0),
    "selu": (lambda v, a: _SELU_L * (v if v > 0 else _SELU_A * (math.exp(v) - 1)), 1.0),
    "softplus": (lambda v, a: math.log1p(math.exp(v)), 1.0),
    "swish": (lambda v, a: v / (1 + math.exp(-v)), math.sqrt(2)),
}


@pytest.mark.parametrize("act", sorted(_SCALAR_ACTS))
@pytest.mark.parametrize(("alpha", "gain", "clamp", "dim"), [(None, None, None, 1), (0.1, 3.0, 1.5, 2)])
def test_bias_act_matches_elementwise(act, alpha, gain, clamp, dim) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 2
    b = torch.randn(x.shape[dim], generator=g, dtype=torch.float64)
    got = bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    func, def_gain = _SCALAR_ACTS[act]
    a = 0.2 if alpha is None else alpha
    k = def_gain if gain is None else gain
    want = torch.empty_like(x)
    for idx in itertools.product(*(range(s) for s in x.shape)):
        v = func(float(x[idx]) + float(b[idx[dim]]), a) * k
        want[idx] = v if clamp is None else min(max(v, -clamp), clamp)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bias_act_no_bias_and_clamp_actually_clamps() -> None:
    x = torch.tensor([-5.0, -0.5, 0.5, 5.0])
    y = bias_act(x, act="lrelu", clamp=2.0)
    torch.testing.assert_close(
        y, torch.tensor([-5 * 0.2 * math.sqrt(2), -0.1 * math.sqrt(2), 0.5 * math.sqrt(2), 2.0])
    )


# ----------------------------------------------------------------------------------------------------------
# modulated_conv2d.


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("with_noise", [False, True])
def test_modulated_conv2d_matches_per_sample_loop(fused, demodulate, up, with_noise) -> None:
    g = torch.Generator().manual_seed(2)
    n, i, o, h = 3, 4, 5, 6
    x = torch.randn(n, i, h, h, generator=g, dtype=torch.float64)
    weight = torch.randn(o, i, 3, 3, generator=g, dtype=torch.float64)
    styles = torch.randn(n, i, generator=g, dtype=torch.float64) + 1
    f = setup_filter([1, 3, 3, 1]).double()
    noise = torch.randn(n, 1, h * up, h * up, generator=g, dtype=torch.float64) if with_noise else None
    got = modulated_conv2d(
        x,
        weight,
        styles,
        noise=noise,
        up=up,
        padding=1,
        resample_filter=f,
        demodulate=demodulate,
        flip_weight=(up == 1),
        fused_modconv=fused,
    )
    want = _loop_modconv(x, weight, styles, demodulate, up, f, noise)
    assert got.shape == (n, o, h * up, h * up)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_modulated_conv2d_1x1_torgb_path() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 4, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 6, 1, 1, generator=g, dtype=torch.float64)
    styles = torch.randn(2, 6, generator=g, dtype=torch.float64)
    want = torch.einsum("oi,ni,nihw->nohw", weight[:, :, 0, 0], styles, x)
    for fused in (True, False):
        got = modulated_conv2d(x, weight, styles, demodulate=False, fused_modconv=fused)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# SuperresolutionHybrid8XDC.


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_official_sr_state_dict_names_and_shapes() -> None:
    sr = SuperresolutionHybrid8XDC()
    assert _shapes(sr) == EXPECTED_SR_SHAPES
    assert list(sr.state_dict()) == list(EXPECTED_SR_SHAPES)  # same order as upstream, too
    assert sum(p.numel() for p in sr.parameters()) == pytest.approx(1.65e6, rel=0.01)


def test_official_sr_state_dict_matches_design_json() -> None:
    if not STATE_DICT_JSON.is_file():
        pytest.skip(f"{STATE_DICT_JSON} is absent")
    table = json.loads(STATE_DICT_JSON.read_text())
    prefix = "superresolution."
    want = {k[len(prefix) :]: v for k, v in table.items() if k.startswith(prefix)}
    assert want, "no superresolution.* entries in the JSON"
    assert _shapes(SuperresolutionHybrid8XDC()) == want
    assert table["w_avg"] == [512]


def test_official_sr_loads_a_state_dict_strictly() -> None:
    src = SuperresolutionHybrid8XDC()
    dst = SuperresolutionHybrid8XDC()
    dst.load_state_dict(src.state_dict(), strict=True)
    for (ka, a), (kb, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)


@pytest.fixture(scope="module")
def tiny_sr() -> SuperresolutionHybrid8XDC:
    torch.manual_seed(0)
    sr = SuperresolutionHybrid8XDC.tiny().eval()
    with torch.no_grad():
        for name, p in sr.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    return sr


def test_tiny_sr_forward_shape_from_raw_128(tiny_sr: SuperresolutionHybrid8XDC) -> None:
    cfg = SRConfig.tiny()
    x = torch.randn(2, cfg.channels, 128, 128)
    ws = constant_ws(torch.randn(cfg.w_dim), batch_size=2)
    assert ws.shape == (2, 1, cfg.w_dim)
    with torch.no_grad():
        out = tiny_sr(x[:, :3], x, ws)
    assert out.shape == (2, 3, 512, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0


def test_tiny_sr_resizes_other_inputs_to_128(tiny_sr: SuperresolutionHybrid8XDC) -> None:
    cfg = SRConfig.tiny()
    x = torch.randn(1, cfg.channels, 64, 64)
    ws = torch.randn(1, 2, cfg.w_dim)
    with torch.no_grad():
        out = tiny_sr(x[:, :3], x, ws)
        x128 = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False, antialias=True)
        ref = tiny_sr(x128[:, :3], x128, ws)
    assert out.shape == (1, 3, 512, 512)
    torch.testing.assert_close(out, ref)


def test_tiny_sr_style_and_noise_semantics(tiny_sr: SuperresolutionHybrid8XDC) -> None:
    cfg = SRConfig.tiny()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, cfg.channels, 128, 128, generator=g)
    ws = torch.randn(1, 3, cfg.w_dim, generator=g)
    with torch.no_grad():
        base = tiny_sr(x[:, :3], x, ws)
        # only the last style is used
        torch.testing.assert_close(tiny_sr(x[:, :3], x, ws[:, -1:]), base)
        # fused and non-fused modulation agree
        torch.testing.assert_close(tiny_sr(x[:, :3], x, ws, fused_modconv=False), base, rtol=1e-4, atol=1e-4)
        # 'none' is deterministic; 'const' and 'random' add noise
        assert not torch.allclose(tiny_sr(x[:, :3], x, ws, noise_mode="const"), base)
        assert not torch.allclose(tiny_sr(x[:, :3], x, ws, noise_mode="random"), base)
        # ws_super replaces ws
        other = torch.randn(1, 1, cfg.w_dim, generator=g)
        torch.testing.assert_close(tiny_sr(x[:, :3], x, other), tiny_sr(x[:, :3], x, ws, ws_super=other))
    ones = dataclasses.replace(SRConfig.tiny(), use_ws_ones=True).build()
    ones.load_state_dict(tiny_sr.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ones(x[:, :3], x, ws), ones(x[:, :3], x, -ws))
        torch.testing.assert_close(ones(x[:, :3], x, ws), tiny_sr(x[:, :3], x, torch.ones_like(ws)))


def test_synthesis_block_rejects_bad_shapes() -> None:
    block = SynthesisBlock(4, 4, w_dim=8, resolution=16, img_channels=3, is_last=True)
    ws = torch.randn(1, 3, 8)
    x, img = block(torch.randn(1, 4, 8, 8), None, ws)
    assert x.shape == (1, 4, 16, 16) and img is not None and img.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError):
        block(torch.randn(1, 4, 16, 16), None, ws)
    with pytest.raises(ValueError):
        block(torch.randn(1, 4, 8, 8), None, torch.randn(1, 2, 8))


# ----------------------------------------------------------------------------------------------------------
# fp16 execution (upstream runs the SR in fp16 on CUDA with conv_clamp=256).


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv2d_fp16_prenormalization_is_scale_free(fused, up) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 6, generator=g)
    weight = torch.randn(5, 4, 3, 3, generator=g) * 30
    styles = torch.randn(2, 4, generator=g) * 100  # would overflow fp16 without the max-abs rescaling
    f = setup_filter([1, 3, 3, 1])
    kwargs = dict(up=up, padding=1, resample_filter=f, flip_weight=(up == 1), fused_modconv=fused)
    ref = modulated_conv2d(x.double(), weight.double(), styles.double(), **kwargs)
    half = modulated_conv2d(x.half(), weight, styles, **kwargs)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.double(), ref, rtol=0, atol=1e-2)


def test_fp16_sr_uses_conv_clamp_and_stays_fp32_on_cpu() -> None:
    cfg = dataclasses.replace(SRConfig.tiny(), sr_num_fp16_res=4)
    sr = cfg.build()
    assert sr.block0.use_fp16 and sr.block0.conv0.conv_clamp == 256 and sr.block1.torgb.conv_clamp == 256
    assert SRConfig.tiny().build().block0.conv0.conv_clamp is None
    x = torch.randn(1, cfg.channels, 8, 8)
    assert sr.block0._dtype(x.device, force_fp32=False) == torch.float32  # CPU: always float32, as upstream


@pytest.mark.gpu
def test_fp16_sr_on_cuda_close_to_fp32() -> None:
    torch.manual_seed(0)
    sr = SuperresolutionHybrid8XDC().cuda().eval()
    x = torch.rand(2, 32, 128, 128, device="cuda") * 2 - 1
    ws = constant_ws(torch.randn(512, device="cuda"), 2)
    with torch.no_grad():
        half = sr(x[:, :3], x, ws)
        full = sr(x[:, :3], x, ws, force_fp32=True)
    assert half.dtype == torch.float32 and half.shape == (2, 3, 512, 512)
    assert (half - full).abs().max() < 0.05 * full.abs().max()


@pytest.mark.parametrize("separable", [False, True])
def test_depthwise_fir_matches_its_reference_to_the_second_derivative(separable: bool) -> None:
    """The FIR fast path (own backward, any order) against grouped convolutions differentiated by autograd:
    values, gradients and gradients of gradients (float64), and torch's gradcheck / gradgradcheck."""
    from avatar.nn.upfirdn import depthwise_fir, depthwise_fir_reference

    gen = torch.Generator().manual_seed(0)
    f = torch.rand(4, generator=gen, dtype=torch.float64) if separable else \
        torch.rand(4, 3, generator=gen, dtype=torch.float64)
    x0 = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 3, 1, 1, generator=gen, dtype=torch.float64)
    results = []
    for fir in (depthwise_fir, depthwise_fir_reference):
        x = x0.clone().requires_grad_(True)
        ww = w.clone().requires_grad_(True)
        y = fir(torch.nn.functional.conv2d(x, ww), f)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(g.square().sum(), ww)  # R1-style: d/dweights of |dy/dx|^2
        results.append((y.detach(), g.detach(), gw))
    for ours, ref in zip(*results, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])  # bit for bit
    x = x0[:1, :2, :6, :6].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: depthwise_fir(t, f), (x,))
    assert torch.autograd.gradgradcheck(lambda t: depthwise_fir(t, f), (x,))


def test_depthwise_fir_double_backward_does_not_loop_over_channels() -> None:
    """PyTorch's double backward of a grouped convolution runs one convolution per group; the fast path's
    second derivative is a couple of filterings whatever the channel count (the discriminator's R1 pass)."""
    from torch.profiler import ProfilerActivity, profile

    from avatar.nn.upfirdn import depthwise_fir

    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 64, 12, 12, requires_grad=True)
    w = torch.randn(64, 64, 1, 1, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = depthwise_fir(torch.nn.functional.conv2d(x, w), f)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        g.square().sum().backward()
    calls = sum(e.count for e in prof.key_averages() if e.key == "aten::convolution")
    assert calls < 20, calls  # the grouped-convolution double backward: > 64


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("up", "demodulate"), [(1, True), (2, True), (1, False)])
def test_modulated_conv_with_one_shared_style_matches_repeated_styles(fused, up, demodulate):
    """Styles of batch 1 (Portrait4D's constant w_avg) give what the same style repeated per sample gives."""
    from avatar.nn.stylegan2 import modulated_conv2d
    from avatar.nn.upfirdn import setup_filter

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    style = torch.randn(1, 5, generator=g, dtype=torch.float64)
    kwargs = dict(up=up, padding=1, resample_filter=setup_filter([1, 3, 3, 1]).double() if up > 1 else None,
                  demodulate=demodulate, flip_weight=up == 1, fused_modconv=fused)
    shared = modulated_conv2d(x, weight, style, **kwargs)
    repeated = modulated_conv2d(x, weight, style.expand(3, -1), **kwargs)
    torch.testing.assert_close(shared, repeated, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="shape mismatch"):
        modulated_conv2d(x, weight, style.expand(2, -1), **kwargs)
