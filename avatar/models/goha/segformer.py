"""GOHA's three SegFormer (MiT-b0) feature branches: ``template_net``, ``id_net`` and ``expr_net``.

Upstream each branch is Hugging Face ``SegformerForSemanticSegmentation`` (``nvidia/segformer-b0-finetuned-ade-
512-512``) whose decode head keeps only the bias-free ``linear_fuse`` (its BatchNorm, ReLU, dropout and classifier
are ``nn.Identity``), so a branch maps an ImageNet-normalised image to 256 features at 1/4 resolution::

    pixel_values (b, C_in, H, W)              C_in = 3 (template_net, expr_net) or 6 (id_net)
      -> 4 MiT stages; stage i: overlapping patch embed (conv k_i, stride s_i, pad k_i // 2, + LayerNorm),
         depth_i pre-norm blocks (efficient self-attention with a k=s=sr_i conv + LayerNorm on the keys/values,
         Mix-FFN fc1 -> 3x3 depth-wise conv -> exact GELU -> fc2), LayerNorm -> (b, hidden_i, H_i, W_i)
      -> head: per stage Linear(hidden_i -> 256), bilinear resize (align_corners=False) to the stage-1 grid,
         concatenated in reverse stage order (stage 4 first), 1x1 conv 1024 -> 256 without bias
    -> (b, 256, H / 4, W / 4)                 (b, 256, 128, 128) for a 512 input

Every LayerNorm uses PyTorch's default eps 1e-5: the model config's ``layer_norm_eps`` (1e-6) is not read by
transformers' SegFormer layers. Dropouts are 0 and stochastic depth (``drop_path_rate`` 0.1) acts only in
training, so it is omitted here (inference is exact; training from these modules has no stochastic depth).

The blocks are :mod:`avatar.nn.attention`'s Mix-Transformer modules (one implementation, shared with
Portrait4D); the container tree carries transformers' names. Inside a block and a patch embedding the names
differ, and transformers stores separate ``key`` / ``value`` projections where ours is one ``kv`` Linear
(``kv = cat(key, value)`` along the output dim). :func:`official_to_native` / :func:`native_to_official` map a
state dict either way:

============================================================  ==========================================
official (transformers 4.x) key, under ``segformer.encoder.``   ours
============================================================  ==========================================
``patch_embeddings.{i}.proj.{weight,bias}``                    same
``patch_embeddings.{i}.layer_norm.*``                          ``patch_embeddings.{i}.norm.*``
``block.{i}.{j}.layer_norm_1.*`` / ``layer_norm_2.*``          ``block.{i}.{j}.norm1.*`` / ``norm2.*``
``block.{i}.{j}.attention.self.query.*``                       ``block.{i}.{j}.attn.q.*``
``block.{i}.{j}.attention.self.{key,value}.*``                 ``block.{i}.{j}.attn.kv.*`` (concatenated)
``block.{i}.{j}.attention.self.sr.*`` / ``.layer_norm.*``      ``block.{i}.{j}.attn.sr.*`` / ``attn.norm.*``
``block.{i}.{j}.attention.output.dense.*``                     ``block.{i}.{j}.attn.proj.*``
``block.{i}.{j}.mlp.dense1.*`` / ``dense2.*``                  ``block.{i}.{j}.mlp.fc1.*`` / ``fc2.*``
``block.{i}.{j}.mlp.dwconv.dwconv.*``                          same
``layer_norm.{i}.*``                                           same
============================================================  ==========================================

and ``decode_head.linear_c.{i}.proj.{weight,bias}``, ``decode_head.linear_fuse.weight`` are the same.

Official checkpoint prefixes (GOHA's ``model_state_dict``): ``template_net.``, ``id_net.``, ``expr_net.``, each
followed by ``segformer.encoder.`` (192 keys for b0) and ``decode_head.`` (9 keys): 201 official keys per
branch, 185 of ours (8 blocks x (key, value) pairs merged). There are no ``decode_head.batch_norm`` /
``classifier`` keys. ``id_net`` differs only by its first patch embedding, ``Conv2d(6, 32, 7, 4, 3)``
(``in_channels=6``); ``expr_net``'s fresh ``Conv2d(3, 32, 7, 4, 3)`` has the default shape. The input
normalisation buffers ``image_mean`` / ``image_std`` belong to the GOHA model, not to a branch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.nn.attention import OverlapPatchEmbed, TransformerBlock, tokens_to_map

__all__ = [
    "MiTEncoder",
    "SegformerBranch",
    "SegformerBranchConfig",
    "SegformerHead",
    "native_to_official",
    "official_to_native",
]


@dataclass(frozen=True)
class SegformerBranchConfig(Config):
    """Sizes of one branch; the defaults are ``nvidia/segformer-b0-finetuned-ade-512-512`` (MiT-b0)."""

    in_channels: int = 3
    """Input channels: 3 for ``template_net`` / ``expr_net``, 6 for ``id_net``."""
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    decoder_hidden_size: int = 256

    def __post_init__(self) -> None:
        n = len(self.hidden_sizes)
        per_stage = ("depths", "num_attention_heads", "sr_ratios", "patch_sizes", "strides", "mlp_ratios")
        bad = [name for name in per_stage if len(getattr(self, name)) != n]
        if n == 0 or bad:
            raise ValueError(f"{', '.join(bad) or 'hidden_sizes'} must have one value per stage ({n} stages)")

    @property
    def num_stages(self) -> int:
        return len(self.hidden_sizes)

    @classmethod
    def tiny(cls) -> SegformerBranchConfig:
        """Two small stages (output at 1/4 of a 32x32 input); same structure as b0 (sr on stage 1 only)."""
        return cls(hidden_sizes=(8, 16), depths=(1, 2), num_attention_heads=(1, 2), sr_ratios=(2, 1),
                   patch_sizes=(7, 3), strides=(4, 2), mlp_ratios=(2, 2), decoder_hidden_size=8)

    def with_in_channels(self, in_channels: int) -> SegformerBranchConfig:
        """The same branch with another input width (``id_net``: 6)."""
        return replace(self, in_channels=in_channels)


class MiTEncoder(nn.Module):
    """Mix-Transformer encoder (transformers' ``SegformerEncoder`` names: ``patch_embeddings``, ``block``,
    ``layer_norm``)."""

    def __init__(self, config: SegformerBranchConfig) -> None:
        super().__init__()
        widths = (config.in_channels, *config.hidden_sizes)
        self.patch_embeddings = nn.ModuleList(
            OverlapPatchEmbed(widths[i], widths[i + 1], patch_size=config.patch_sizes[i], stride=config.strides[i])
            for i in range(config.num_stages)
        )
        self.block = nn.ModuleList(
            nn.ModuleList(
                TransformerBlock(config.hidden_sizes[i], config.num_attention_heads[i],
                                 mlp_ratio=config.mlp_ratios[i], sr_ratio=config.sr_ratios[i])
                for _ in range(config.depths[i])
            )
            for i in range(config.num_stages)
        )
        self.layer_norm = nn.ModuleList(nn.LayerNorm(c) for c in config.hidden_sizes)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """``(b, C_in, H, W)`` -> one map per stage, ``(b, hidden_i, H_i, W_i)`` with ``H_1 = H / stride_1``."""
        x = pixel_values
        stages: list[Tensor] = []
        for embed, blocks, norm in zip(self.patch_embeddings, self.block, self.layer_norm, strict=True):
            tokens, h, w = embed(x)
            for blk in blocks:
                tokens = blk(tokens, h, w)
            x = tokens_to_map(norm(tokens), h, w)
            stages.append(x)
        return stages


class _StageProjection(nn.Module):
    """Per-pixel Linear on a feature map (transformers' ``SegformerMLP``: ``proj``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(b, in_dim, h, w)`` -> ``(b, out_dim, h, w)``.

        Laid out as upstream (tokens, then a ``(b, out_dim, h, w)`` view): the resized maps come out contiguous,
        so ``linear_fuse`` runs the same NCHW kernel (a channels-last concat takes another CPU kernel whose float32
        rounding is a few times larger)."""
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class SegformerHead(nn.Module):
    """The all-MLP decode head up to ``linear_fuse`` (GOHA replaces what follows by identities)."""

    def __init__(self, config: SegformerBranchConfig) -> None:
        super().__init__()
        d = config.decoder_hidden_size
        self.linear_c = nn.ModuleList(_StageProjection(c, d) for c in config.hidden_sizes)
        self.linear_fuse = nn.Conv2d(d * config.num_stages, d, kernel_size=1, bias=False)

    def forward(self, stages: list[Tensor], fold: bool = False) -> Tensor:
        """Stage maps -> ``(b, decoder_hidden_size, H_1, W_1)``.

        ``fold``: the same function without the concatenation. ``linear_fuse`` (1x1, no bias) is a sum over its
        input blocks, each block a linear map that commutes with the bilinear resize (whose weights per pixel sum
        to 1) and composes with the stage's ``Linear``: so each stage gets one folded ``Linear``
        (``W_block @ W_i``, ``W_block @ b_i``) at its own resolution, and the resized results are summed. Equal up to
        float rounding; no ``(b, 4 d, H_1, W_1)`` concatenation (512 MiB at GOHA's batch 8) and about 8 GFLOP a
        512x512 frame less. Upstream's form (``False``) is the reference."""
        size = stages[0].shape[-2:]
        if not fold:
            projected = [
                F.interpolate(proj(x), size=size, mode="bilinear", align_corners=False)
                for x, proj in zip(stages, self.linear_c, strict=True)
            ]
            return self.linear_fuse(torch.cat(projected[::-1], dim=1))
        d = self.linear_fuse.out_channels
        fuse = self.linear_fuse.weight[:, :, 0, 0]  # (d, n d): input blocks in reversed stage order
        n = len(stages)
        out: Tensor | None = None
        for i, (x, stage) in enumerate(zip(stages, self.linear_c, strict=True)):
            block = fuse[:, (n - 1 - i) * d:(n - i) * d]
            b, _, h, w = x.shape
            tokens = F.linear(x.flatten(2).transpose(1, 2), block @ stage.proj.weight, block @ stage.proj.bias)
            y = tokens.transpose(1, 2).reshape(b, d, h, w)
            if (h, w) != tuple(size):
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else (out.add_(y) if torch.result_type(out, y) == out.dtype else out + y)
        assert out is not None
        return out


class SegformerBranch(nn.Module):
    """One GOHA SegFormer branch: ``(b, in_channels, H, W)`` -> ``(b, decoder_hidden_size, H / 4, W / 4)``.

    Attributes ``segformer.encoder`` (:class:`MiTEncoder`) and ``decode_head`` (:class:`SegformerHead`), as in
    transformers. The input is expected ImageNet-normalised (GOHA does that with its ``image_mean``/``image_std``).
    """

    def __init__(self, config: SegformerBranchConfig | None = None) -> None:
        super().__init__()
        self.config = config or SegformerBranchConfig()
        self.segformer = nn.ModuleDict({"encoder": MiTEncoder(self.config)})
        self.decode_head = SegformerHead(self.config)

    def forward(self, pixel_values: Tensor, fold_head: bool = False) -> Tensor:
        """The upstream ``.logits``: ``(b, in_channels, H, W)`` -> ``(b, decoder_hidden_size, H / 4, W / 4)``
        (for b0's first stride 4; in general ``H / strides[0]``). ``fold_head``: the decode head without its
        concatenation (:meth:`SegformerHead.forward`; only where no gradient is recorded)."""
        return self.decode_head(self.segformer["encoder"](pixel_values), fold=fold_head)


# --------------------------------------------------------------------------------------------------
# state-dict names: transformers (official GOHA checkpoint) <-> ours

_OFFICIAL_BLOCK = re.compile(r"^(?P<head>(?:.+\.)?segformer\.encoder\.block\.\d+\.\d+\.)(?P<tail>.+)$")
_OFFICIAL_EMBED = re.compile(r"^(?P<head>(?:.+\.)?segformer\.encoder\.patch_embeddings\.\d+\.)layer_norm\.(?P<p>\w+)$")
_NATIVE_EMBED = re.compile(r"^(?P<head>(?:.+\.)?segformer\.encoder\.patch_embeddings\.\d+\.)norm\.(?P<p>\w+)$")

# official block-relative module -> ours (key/value are handled apart: they merge into attn.kv)
_BLOCK_RENAMES: dict[str, str] = {
    "layer_norm_1": "norm1",
    "layer_norm_2": "norm2",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "mlp.dense1": "mlp.fc1",
    "mlp.dense2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}
_BLOCK_RENAMES_BACK = {v: k for k, v in _BLOCK_RENAMES.items()}
_KEY, _VALUE, _KV = "attention.self.key", "attention.self.value", "attn.kv"


def _split_module(tail: str) -> tuple[str, str]:
    module, _, param = tail.rpartition(".")
    return module, param


def official_to_native(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename transformers' SegFormer keys (any prefix, e.g. GOHA's ``template_net.``) to ours.

    Keys outside ``*segformer.encoder.block.*`` / ``*segformer.encoder.patch_embeddings.*.layer_norm.*`` pass
    through unchanged, so a whole GOHA state can be given. Each ``attention.self.key.<p>`` is concatenated with
    its ``attention.self.value.<p>`` into ``attn.kv.<p>``; a key without its value (or the reverse) raises
    ``KeyError``. Unknown block entries also pass through unchanged (a later strict load names them).
    """
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        m = _OFFICIAL_EMBED.match(name)
        if m:
            out[f"{m['head']}norm.{m['p']}"] = tensor
            continue
        m = _OFFICIAL_BLOCK.match(name)
        if not m:
            out[name] = tensor
            continue
        module, param = _split_module(m["tail"])
        if module == _VALUE:
            if f"{m['head']}{_KEY}.{param}" not in state:
                raise KeyError(f"{name} has no matching {_KEY}.{param}")
        elif module == _KEY:
            partner = f"{m['head']}{_VALUE}.{param}"
            if partner not in state:
                raise KeyError(f"{name} has no matching {_VALUE}.{param}")
            out[f"{m['head']}{_KV}.{param}"] = torch.cat([tensor, state[partner]], dim=0)
        elif module in _BLOCK_RENAMES:
            out[f"{m['head']}{_BLOCK_RENAMES[module]}.{param}"] = tensor
        else:
            out[name] = tensor
    return out


def native_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`official_to_native`: our names -> transformers' (``attn.kv`` split in two halves)."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        m = _NATIVE_EMBED.match(name)
        if m:
            out[f"{m['head']}layer_norm.{m['p']}"] = tensor
            continue
        m = _OFFICIAL_BLOCK.match(name)
        if not m:
            out[name] = tensor
            continue
        module, param = _split_module(m["tail"])
        if module == _KV:
            if tensor.shape[0] % 2:
                raise ValueError(f"{name} has an odd first dimension {tensor.shape[0]}")
            key, value = tensor.chunk(2, dim=0)
            out[f"{m['head']}{_KEY}.{param}"] = key
            out[f"{m['head']}{_VALUE}.{param}"] = value
        elif module in _BLOCK_RENAMES_BACK:
            out[f"{m['head']}{_BLOCK_RENAMES_BACK[module]}.{param}"] = tensor
        else:
            out[name] = tensor
    return out
