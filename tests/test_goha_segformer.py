"""GOHA's SegFormer branches: shapes, the official (transformers 4.x) key table, the name map, the head's order."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from avatar.models.goha.segformer import (
    SegformerBranch,
    SegformerBranchConfig,
    native_to_official,
    official_to_native,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# official keys of one b0 branch (transformers 4.x SegformerForSemanticSegmentation, decode head cut after
# linear_fuse) and their shapes, written out by hand from the module definitions
B0_OFFICIAL_KEYS = 201
B0_NATIVE_KEYS = 185  # 8 blocks' key/value pairs (weight and bias) merged
B0_PARAMS = 3_713_632
B0_PARAMS_6CH = 3_718_336
B0_OFFICIAL_TABLE: dict[str, tuple[int, ...]] = {
    "segformer.encoder.patch_embeddings.0.proj.weight": (32, 3, 7, 7),
    "segformer.encoder.patch_embeddings.0.proj.bias": (32,),
    "segformer.encoder.patch_embeddings.0.layer_norm.weight": (32,),
    "segformer.encoder.patch_embeddings.1.proj.weight": (64, 32, 3, 3),
    "segformer.encoder.patch_embeddings.3.proj.weight": (256, 160, 3, 3),
    "segformer.encoder.patch_embeddings.3.layer_norm.bias": (256,),
    "segformer.encoder.block.0.0.layer_norm_1.weight": (32,),
    "segformer.encoder.block.0.0.attention.self.query.weight": (32, 32),
    "segformer.encoder.block.0.0.attention.self.key.weight": (32, 32),
    "segformer.encoder.block.0.0.attention.self.value.bias": (32,),
    "segformer.encoder.block.0.0.attention.self.sr.weight": (32, 32, 8, 8),
    "segformer.encoder.block.0.0.attention.self.layer_norm.weight": (32,),
    "segformer.encoder.block.0.1.attention.output.dense.weight": (32, 32),
    "segformer.encoder.block.1.0.attention.self.sr.weight": (64, 64, 4, 4),
    "segformer.encoder.block.1.1.layer_norm_2.bias": (64,),
    "segformer.encoder.block.2.1.attention.self.sr.weight": (160, 160, 2, 2),
    "segformer.encoder.block.2.1.attention.output.dense.weight": (160, 160),
    "segformer.encoder.block.3.0.attention.self.key.weight": (256, 256),
    "segformer.encoder.block.3.1.mlp.dense1.weight": (1024, 256),
    "segformer.encoder.block.3.1.mlp.dwconv.dwconv.weight": (1024, 1, 3, 3),
    "segformer.encoder.block.3.1.mlp.dense2.weight": (256, 1024),
    "segformer.encoder.block.3.1.mlp.dense2.bias": (256,),
    "segformer.encoder.layer_norm.0.weight": (32,),
    "segformer.encoder.layer_norm.3.bias": (256,),
    "decode_head.linear_c.0.proj.weight": (256, 32),
    "decode_head.linear_c.2.proj.bias": (256,),
    "decode_head.linear_c.3.proj.weight": (256, 256),
    "decode_head.linear_fuse.weight": (256, 1024, 1, 1),
}
B0_OFFICIAL_ABSENT = (
    "segformer.encoder.block.3.0.attention.self.sr.weight",  # sr_ratio 1 on the last stage
    "segformer.encoder.block.3.0.attention.self.layer_norm.weight",
    "decode_head.linear_fuse.bias",
    "decode_head.batch_norm.weight",  # nn.Identity upstream
    "decode_head.batch_norm.running_mean",
    "decode_head.classifier.weight",
)


def _meta_state(config: SegformerBranchConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return SegformerBranch(config).state_dict()


def _random_branch(config: SegformerBranchConfig, seed: int = 0) -> SegformerBranch:
    torch.manual_seed(seed)
    model = SegformerBranch(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("in_channels", [3, 6])
def test_tiny_forward_shapes(in_channels: int) -> None:
    config = SegformerBranchConfig.tiny().with_in_channels(in_channels)
    model = _random_branch(config)
    out = model(torch.randn(2, in_channels, 32, 48))
    assert out.shape == (2, config.decoder_hidden_size, 8, 12)
    assert torch.isfinite(out).all()
    stages = model.segformer["encoder"](torch.randn(1, in_channels, 32, 32))
    assert [tuple(s.shape) for s in stages] == [(1, 8, 8, 8), (1, 16, 4, 4)]


def test_config_checks_stage_lengths() -> None:
    with pytest.raises(ValueError, match="depths"):
        SegformerBranchConfig(depths=(2, 2))
    config = SegformerBranchConfig.tiny()
    assert SegformerBranchConfig.from_dict(config.to_dict()) == config


def test_b0_official_key_table() -> None:
    native = _meta_state(SegformerBranchConfig())
    assert len(native) == B0_NATIVE_KEYS
    official = native_to_official(native)
    assert len(official) == B0_OFFICIAL_KEYS
    for key, shape in B0_OFFICIAL_TABLE.items():
        assert tuple(official[key].shape) == shape, key
    for key in B0_OFFICIAL_ABSENT:
        assert key not in official
    assert set(official_to_native(official)) == set(native)
    assert sum(t.numel() for t in official.values()) == B0_PARAMS
    assert "segformer.encoder.block.0.0.attn.kv.weight" in native  # ours: key and value in one Linear
    assert tuple(native["segformer.encoder.block.0.0.attn.kv.weight"].shape) == (64, 32)


def test_id_net_six_channel_stem() -> None:
    config = SegformerBranchConfig().with_in_channels(6)
    official = native_to_official(_meta_state(config))
    assert len(official) == B0_OFFICIAL_KEYS
    assert tuple(official["segformer.encoder.patch_embeddings.0.proj.weight"].shape) == (32, 6, 7, 7)
    assert sum(t.numel() for t in official.values()) == B0_PARAMS_6CH
    with torch.device("meta"):
        stem = SegformerBranch(config).segformer["encoder"].patch_embeddings[0].proj
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (
        6, 32, (7, 7), (4, 4), (3, 3))


def test_name_map_round_trip_and_goha_prefixes() -> None:
    model = _random_branch(SegformerBranchConfig.tiny())
    native = model.state_dict()
    official = native_to_official(native)
    kv = native["segformer.encoder.block.0.0.attn.kv.weight"]
    key = official["segformer.encoder.block.0.0.attention.self.key.weight"]
    value = official["segformer.encoder.block.0.0.attention.self.value.weight"]
    assert torch.equal(kv, torch.cat([key, value]))  # keys first, as the attention reads them
    back = official_to_native(official)
    assert set(back) == set(native) and all(torch.equal(back[k], native[k]) for k in native)

    # a GOHA state: the three branches under their prefixes, other entries untouched
    goha = {f"{p}.{k}": v for p in ("template_net", "id_net", "expr_net") for k, v in official.items()}
    goha["image_mean"] = torch.zeros(1, 3, 1, 1)
    goha["embedding2neutral.net.0.weight"] = torch.zeros(1)
    converted = official_to_native(goha)
    assert converted["image_mean"] is goha["image_mean"]
    assert "embedding2neutral.net.0.weight" in converted
    for p in ("template_net", "id_net", "expr_net"):
        branch = SegformerBranch(SegformerBranchConfig.tiny())
        branch.load_state_dict({k[len(p) + 1:]: v for k, v in converted.items() if k.startswith(p + ".")})
        assert torch.equal(branch.state_dict()["segformer.encoder.block.1.1.attn.kv.bias"],
                           native["segformer.encoder.block.1.1.attn.kv.bias"])

    broken = dict(official)
    del broken["segformer.encoder.block.0.0.attention.self.value.bias"]
    with pytest.raises(KeyError, match="value.bias"):
        official_to_native(broken)


def test_head_concatenates_stages_in_reverse_order() -> None:
    """Constant stage maps stay constant under bilinear resizing, so the output is linear_fuse applied to the
    projected constants, stage 2 first: with 1-wide projections it is ``w0 * c2 + w1 * c1``."""
    config = SegformerBranchConfig.tiny().replace(decoder_hidden_size=1)
    head = SegformerBranch(config).decode_head
    with torch.no_grad():
        for lin in head.linear_c:
            nn.init.zeros_(lin.proj.bias)
            nn.init.zeros_(lin.proj.weight)
            lin.proj.weight[0, 0] = 1.0
        head.linear_fuse.weight.copy_(torch.tensor([2.0, 5.0]).view(1, 2, 1, 1))
    c1, c2 = 3.0, 7.0
    stages = [torch.full((1, 8, 4, 6), c1), torch.full((1, 16, 2, 3), c2)]
    out = head(stages)
    assert out.shape == (1, 1, 4, 6)
    assert torch.allclose(out, torch.full_like(out, 2.0 * c2 + 5.0 * c1))


def test_folded_head_equals_the_concatenating_one_with_less_memory() -> None:
    """The fast path's decode head (linear_fuse folded into each stage's projection, resized results summed):
    the same function up to rounding, on the same hand case and on random maps, without the concatenation."""
    from avatar.bench.live_memory import LiveTensorBytes

    torch.manual_seed(0)
    branch = SegformerBranch(SegformerBranchConfig.tiny().replace(decoder_hidden_size=24)).eval()
    head = branch.decode_head
    stages = [torch.randn(2, c, 16 // 2**i, 20 // 2**i) for i, c in enumerate(branch.config.hidden_sizes)]
    with torch.no_grad():
        with LiveTensorBytes(stages) as concatenating:
            reference = head(stages)
        with LiveTensorBytes(stages) as folded:
            fast = head(stages, fold=True)
        pixels = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(branch(pixels, fold_head=True), branch(pixels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    assert fast.shape == reference.shape == (2, 24, 16, 20)
    out_bytes = reference.numel() * 4
    # concatenating: every resized projection and their (b, 2 d, h, w) copy (5 outputs' worth here); folded: the
    # running sum, one stage's tokens and their map, and one resized map at most
    assert folded.peak_bytes <= 3 * out_bytes < 5 * out_bytes <= concatenating.peak_bytes


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GOHA_OFFICIAL"), reason="set GOHA_OFFICIAL to an extracted GOHA checkout")
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="the official branches are transformers' SegFormer (pip install transformers)")
def test_matches_the_official_branches() -> None:
    """Runs the comparison script in a subprocess (its transformers 4.x folder must not leak into this one)."""
    args = [sys.executable, str(REPO_ROOT / "scripts" / "compare_official_goha_segformer.py"),
            "--official", os.environ["GOHA_OFFICIAL"], "--image-size", "128"]
    if os.environ.get("GOHA_EXTRA_PATH"):
        args += ["--extra-path", os.environ["GOHA_EXTRA_PATH"]]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
