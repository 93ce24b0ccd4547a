"""GOHA's face parser (BiSeNet) and mask logic: official names/shapes, hand-checked masks, morphology borders.

The side-by-side test against the official code runs only when ``GOHA_OFFICIAL`` points at an extracted
NVlabs/GOHA checkout (with ``src/``) and kornia is importable (or ``GOHA_KORNIA`` names a ``--target`` dir
holding kornia 0.5.5, the version GOHA pins).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from avatar.models.goha.parsing import (
    PARSING_MEAN,
    PARSING_STD,
    BiSeNet,
    BiSeNetConfig,
    appearance_blend_mask,
    dilate,
    erode,
    mask_from_labels,
    normalize_for_parsing,
    parsing_labels,
    parsing_mask,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# official state dict (face-parsing.PyTorch BiSeNet(19), as in 79999_iter.pth / GOHA's face_parsing_net.)

_CONVS = {  # conv weights (all bias-free)
    "cp.resnet.conv1": (64, 3, 7, 7),
    "cp.arm16.conv.conv": (128, 256, 3, 3),
    "cp.arm16.conv_atten": (128, 128, 1, 1),
    "cp.arm32.conv.conv": (128, 512, 3, 3),
    "cp.arm32.conv_atten": (128, 128, 1, 1),
    "cp.conv_head32.conv": (128, 128, 3, 3),
    "cp.conv_head16.conv": (128, 128, 3, 3),
    "cp.conv_avg.conv": (128, 512, 1, 1),
    "ffm.convblk.conv": (256, 256, 1, 1),
    "ffm.conv1": (64, 256, 1, 1),
    "ffm.conv2": (256, 64, 1, 1),
    "conv_out.conv.conv": (256, 256, 3, 3),
    "conv_out.conv_out": (19, 256, 1, 1),
    "conv_out16.conv.conv": (64, 128, 3, 3),
    "conv_out16.conv_out": (19, 64, 1, 1),
    "conv_out32.conv.conv": (64, 128, 3, 3),
    "conv_out32.conv_out": (19, 64, 1, 1),
}
_BNS = {  # BatchNorm2d: weight, bias, running_mean, running_var (C,) + num_batches_tracked ()
    "cp.resnet.bn1": 64,
    "cp.arm16.conv.bn": 128,
    "cp.arm16.bn_atten": 128,
    "cp.arm32.conv.bn": 128,
    "cp.arm32.bn_atten": 128,
    "cp.conv_head32.bn": 128,
    "cp.conv_head16.bn": 128,
    "cp.conv_avg.bn": 128,
    "ffm.convblk.bn": 256,
    "conv_out.conv.bn": 256,
    "conv_out16.conv.bn": 64,
    "conv_out32.conv.bn": 64,
}
for _layer, (_cin, _cout) in enumerate(((64, 64), (64, 128), (128, 256), (256, 512)), start=1):
    for _block in (0, 1):
        _p = f"cp.resnet.layer{_layer}.{_block}"
        _in = _cin if _block == 0 else _cout
        _CONVS[f"{_p}.conv1"] = (_cout, _in, 3, 3)
        _CONVS[f"{_p}.conv2"] = (_cout, _cout, 3, 3)
        _BNS[f"{_p}.bn1"] = _cout
        _BNS[f"{_p}.bn2"] = _cout
        if _block == 0 and _layer > 1:  # width or stride changes
            _CONVS[f"{_p}.downsample.0"] = (_cout, _cin, 1, 1)
            _BNS[f"{_p}.downsample.1"] = _cout

OFFICIAL_SHAPES: dict[str, tuple[int, ...]] = {f"{k}.weight": v for k, v in _CONVS.items()}
for _k, _c in _BNS.items():
    OFFICIAL_SHAPES.update({f"{_k}.weight": (_c,), f"{_k}.bias": (_c,), f"{_k}.running_mean": (_c,),
                            f"{_k}.running_var": (_c,), f"{_k}.num_batches_tracked": ()})
OFFICIAL_PARAMETERS = 13_300_416
OFFICIAL_TENSORS = 191


def test_official_table_is_consistent() -> None:
    assert len(OFFICIAL_SHAPES) == OFFICIAL_TENSORS
    n = sum(torch.Size(s).numel() for k, s in OFFICIAL_SHAPES.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n == OFFICIAL_PARAMETERS


def test_state_dict_names_and_shapes_on_meta() -> None:
    with torch.device("meta"):
        net = BiSeNet()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == OFFICIAL_SHAPES
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL_PARAMETERS


def test_loads_under_goha_prefix_strictly() -> None:
    holder = nn.Module()
    holder.face_parsing_net = BiSeNet(BiSeNetConfig.tiny())
    state = {f"face_parsing_net.{k}": torch.zeros_like(v) for k, v in holder.face_parsing_net.state_dict().items()}
    holder.load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="face_parsing_net.conv_out.conv_out.weight"):
        holder.load_state_dict({k: v for k, v in state.items() if "conv_out.conv_out" not in k}, strict=True)


# ----------------------------------------------------------------------------------------------
# the network (tiny)


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (64, 48)])
def test_tiny_forward_shapes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = BiSeNet(BiSeNetConfig.tiny()).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        main = net(x)
        outs = net.forward_all(x)
    assert main.shape == (2, 19, *size)
    assert all(o.shape == (2, 19, *size) for o in outs)
    torch.testing.assert_close(main, outs[0], rtol=0, atol=0)
    assert torch.isfinite(main).all()


def test_normalize_for_parsing() -> None:
    img = torch.stack([torch.full((3, 2, 2), -1.0), torch.full((3, 2, 2), 1.0)])
    out = normalize_for_parsing(img)
    mean, std = torch.tensor(PARSING_MEAN), torch.tensor(PARSING_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 1, 1], (1 - mean) / std)


# ----------------------------------------------------------------------------------------------
# mask logic on hand-made logits (original CelebAMask-HQ indices: 0 bg, 1 skin, 2/3 brows, 4/5 eyes,
# 6 eyeglasses, 7/8 ears, 9 earring, 10 nose, 11 mouth, 12/13 lips, 14 neck, 15 necklace, 16 cloth,
# 17 hair, 18 hat)

MASKED_ORIGINAL = {2, 3, 4, 5, 11, 12, 13}


def _one_hot_logits(cls: int, h: int = 5, w: int = 5) -> torch.Tensor:
    logits = torch.zeros(1, 19, h, w)
    logits[:, cls] = 1.0
    return logits


@pytest.mark.parametrize("cls", [c for c in range(19) if c not in (6, 18)])
def test_which_original_classes_are_masked(cls: int) -> None:
    labels = parsing_labels(_one_hot_logits(cls))
    assert labels.shape == (1, 1, 5, 5) and labels.dtype == torch.long
    assert (labels == (cls if cls < 6 else cls - 1)).all()  # the shift after dropping channel 6
    mask = mask_from_labels(labels)
    assert mask.dtype == torch.long and mask.shape == (1, 1, 5, 5)
    assert bool((mask == 1).all()) == (cls in MASKED_ORIGINAL)
    assert bool((mask == 0).all()) == (cls not in MASKED_ORIGINAL)


@pytest.mark.parametrize("dropped", [6, 18])
def test_eyeglasses_and_hat_never_win(dropped: int) -> None:
    logits = torch.zeros(1, 19, 3, 3)
    logits[:, dropped] = 5.0  # largest, but removed before the argmax
    logits[:, 13] = 1.0  # lower lip (shifted 12) wins instead
    assert (parsing_labels(logits) == 12).all()
    assert (mask_from_labels(parsing_labels(logits)) == 1).all()


def test_ties_take_the_first_class() -> None:
    assert (parsing_labels(torch.zeros(2, 19, 4, 4)) == 0).all()
    logits = torch.zeros(1, 19, 1, 1)
    logits[:, [11, 4]] = 1.0  # mouth (shifted 10) and eye (4) tie -> eye
    assert parsing_labels(logits).item() == 4


def test_eyes_are_dilated_twice_with_7x7_others_not() -> None:
    h = w = 31
    labels = torch.zeros(1, 1, h, w, dtype=torch.long)
    labels[0, 0, 15, 15] = 4  # left eye in the middle
    mask = mask_from_labels(labels)
    expected = torch.zeros(1, 1, h, w, dtype=torch.long)
    expected[..., 9:22, 9:22] = 1  # two 7x7 dilations = one 13x13 square
    assert torch.equal(mask, expected)

    labels = torch.zeros(1, 1, h, w, dtype=torch.long)
    labels[0, 0, 0, 30] = 5  # right eye in a corner: the square is clipped by the image
    labels[0, 0, 30, 0] = 2  # a brow pixel: not dilated
    labels[0, 0, 15, 15] = 10  # mouth: not dilated
    labels[0, 0, 20, 20] = 9  # nose (shifted 9): not masked
    mask = mask_from_labels(labels)
    expected = torch.zeros(1, 1, h, w, dtype=torch.long)
    expected[..., 0:7, 24:31] = 1
    expected[..., 30, 0] = 1
    expected[..., 15, 15] = 1
    assert torch.equal(mask, expected)


def test_parsing_mask_runs_the_net_on_normalised_input() -> None:
    seen: list[torch.Tensor] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        logits = torch.zeros(x.shape[0], 19, *x.shape[2:])
        logits[:, 1] = 1.0  # skin everywhere
        logits[:, 11, :, :4] = 2.0  # mouth on the left columns
        return logits

    img = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = parsing_mask(net, img)
    torch.testing.assert_close(seen[0], normalize_for_parsing(img))
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.long
    assert (mask[..., :4] == 1).all() and (mask[..., 4:] == 0).all()


def test_appearance_blend_mask_erodes_7x7_without_eroding_borders() -> None:
    h = w = 20
    cano = torch.zeros(1, 1, h, w, dtype=torch.long)
    src_keep = torch.ones(1, 1, h, w, dtype=torch.long)
    m = appearance_blend_mask(cano, src_keep)
    assert m.dtype == torch.float32 and (m == 1).all()  # geodesic border: no erosion at the image edge

    src_keep[0, 0, 10, 10] = 0  # a masked source pixel
    cano[0, 0, 0, 0] = 1  # a feature pixel of the canonical render, in the corner
    m = appearance_blend_mask(cano, src_keep)
    expected = torch.ones(1, 1, h, w)
    expected[..., 7:14, 7:14] = 0
    expected[..., 0:4, 0:4] = 0
    assert torch.equal(m, expected)


# ----------------------------------------------------------------------------------------------
# morphology against a brute-force loop (window clipped to the image = kornia's geodesic border)


def _brute(x: torch.Tensor, kh: int, kw: int, reduce: str) -> torch.Tensor:
    b, c, h, w = x.shape
    oh, ow = kh // 2, kw // 2
    out = torch.empty(b, c, h, w, dtype=torch.float64)
    for i, j in itertools.product(range(h), range(w)):
        win = x[:, :, max(i - oh, 0):min(i - oh + kh, h), max(j - ow, 0):min(j - ow + kw, w)].double()
        flat = win.reshape(b, c, -1)
        out[:, :, i, j] = flat.amax(-1) if reduce == "max" else flat.amin(-1)
    return out


@pytest.mark.parametrize("kernel", [7, (3, 5), (4, 4), (2, 3), 1, (9, 9)])
@pytest.mark.parametrize("kind", ["float", "binary"])
def test_morphology_matches_brute_force(kernel: int | tuple[int, int], kind: str) -> None:
    gen = torch.Generator().manual_seed(3)
    if kind == "float":
        x = torch.rand(2, 2, 11, 13, generator=gen) * 4 - 2
    else:
        x = (torch.rand(1, 1, 12, 10, generator=gen) > 0.8).long()
        x[..., 0, 0] = 1
        x[..., -1, -1] = 1
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    got_d, got_e = dilate(x, kernel), erode(x, kernel)
    assert got_d.dtype == got_e.dtype == torch.float32  # int masks come back as float32, as in kornia
    torch.testing.assert_close(got_d.double(), _brute(x, kh, kw, "max"), rtol=0, atol=0)
    torch.testing.assert_close(got_e.double(), _brute(x, kh, kw, "min"), rtol=0, atol=0)


def test_morphology_borders_and_dtypes() -> None:
    ones = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    assert torch.equal(erode(ones), ones)  # zero padding would erode the whole 6x6 image
    assert erode(ones).dtype == torch.float64
    zeros = torch.zeros(1, 1, 6, 6)
    assert torch.equal(dilate(zeros - 1), zeros - 1)  # nor does padding make a negative image grow
    dot = torch.zeros(1, 1, 9, 9)
    dot[..., 8, 8] = 1
    assert dilate(dot, 7).sum() == 16  # 4x4 in the corner
    with pytest.raises(ValueError):
        dilate(torch.zeros(3, 5, 5))


# ----------------------------------------------------------------------------------------------
# side by side with the official code


@pytest.mark.skipif(not os.environ.get("GOHA_OFFICIAL"), reason="GOHA_OFFICIAL (an extracted GOHA checkout) unset")
def test_side_by_side_with_official() -> None:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "compare_official_goha_parsing.py"),
           "--official", os.environ["GOHA_OFFICIAL"], "--image-size", "96", "--batch", "2"]
    if os.environ.get("GOHA_KORNIA"):
        cmd += ["--kornia-path", os.environ["GOHA_KORNIA"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode == 2:
        pytest.skip(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "official code unavailable")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout


def test_parsing_labels_drop_eyeglasses_and_hat_like_a_channel_list() -> None:
    """The slice form (no host-to-device index copy, so CUDA graphs can capture it) = upstream's channel list,
    ties included (first kept channel wins)."""
    from avatar.models.goha.parsing import DROPPED_CLASS, parsing_labels

    logits = torch.randn(3, 19, 8, 8, generator=torch.Generator().manual_seed(0))
    logits[:, :, 0, 0] = 0.0  # all tied
    keep = [c for c in range(18) if c != DROPPED_CLASS]
    assert torch.equal(parsing_labels(logits), logits[:, keep].argmax(dim=1, keepdim=True))
