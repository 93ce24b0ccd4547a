"""Mix-Transformer (SegFormer-style) building blocks used by Portrait4D's reconstructor.

Tokens are laid out as ``(B, N, C)`` with ``N = H * W`` in row-major order, so a token sequence
can be folded back to a ``(B, C, H, W)`` map with ``tokens.transpose(1, 2).reshape(B, C, H, W)``.

Modules and their parameter names (they follow the upstream state dict):

* :class:`SelfAttention` -- ``q``, ``kv``, ``proj`` and, for ``sr_ratio > 1``, the spatial
  reduction ``sr`` (strided conv) + ``norm`` (LayerNorm) applied to the key/value tokens.
* :class:`CrossAttention` -- same names; queries from the image tokens, keys/values from a
  context token sequence (the motion tokens).
* :class:`MixFFN` -- ``fc1``, ``dwconv.dwconv`` (depth-wise 3x3), GELU, ``fc2``.
* :class:`TransformerBlock` -- ``norm1``, ``attn``, ``norm2``, ``mlp``.
* :class:`CrossTransformerBlock` -- ``norm1``, ``attn1``, ``norm2``, ``attn2``, ``norm3``, ``mlp``.
* :class:`OverlapPatchEmbed` -- ``proj`` (strided conv) + ``norm``.

Every attention module has a ``use_sdpa`` flag: ``True`` (default) runs
:func:`torch.nn.functional.scaled_dot_product_attention`, ``False`` runs an explicit
``softmax(q k^T * scale) v`` reference path. :func:`set_sdpa` flips it for a whole model.
Dropout and stochastic depth are omitted: the upstream configuration uses rate 0 everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CrossAttention",
    "CrossTransformerBlock",
    "DWConvTokens",
    "MixFFN",
    "OverlapPatchEmbed",
    "SelfAttention",
    "TransformerBlock",
    "init_mit_weights",
    "multihead_attention",
    "set_sdpa",
    "tokens_to_map",
]


def tokens_to_map(x: Tensor, H: int, W: int) -> Tensor:
    """Fold tokens ``(B, H*W, C)`` into a feature map ``(B, C, H, W)`` (contiguous)."""
    B, N, C = x.shape
    if N != H * W:
        raise ValueError(f"token count {N} does not match H*W = {H}*{W}")
    return x.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()


def init_mit_weights(m: nn.Module) -> None:
    """The upstream MiT initialisation, meant for ``module.apply``.

    Linear: truncated normal (std 0.02, cut at +-2), zero bias. LayerNorm: weight 1, bias 0.
    Conv2d: normal(0, sqrt(2 / fan_out)) with ``fan_out = kh * kw * out_channels / groups``, zero bias.
    """
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        if m.weight is not None:
            nn.init.ones_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, use_sdpa: bool = True) -> Tensor:
    """Scaled dot-product attention without masking.

    Args:
        q: queries ``(B, heads, N, d)``.
        k: keys ``(B, heads, M, d)``.
        v: values ``(B, heads, M, d)``.
        scale: logit scale (``d ** -0.5`` unless overridden).
        use_sdpa: ``True`` uses :func:`F.scaled_dot_product_attention`; ``False`` the explicit
            ``softmax(q @ k^T * scale) @ v`` reference, which materialises the ``(N, M)`` matrix.

    Returns:
        ``(B, heads, N, d)``.
    """
    if use_sdpa:
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] > FUSED_MAX_HEAD_DIM:
            return _half_attention_chunked(q, k, v, scale)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale
    attn = attn.softmax(dim=-1)
    return attn @ v


FUSED_MAX_HEAD_DIM = 256
"""Largest head dim of PyTorch's flash kernels; wider heads (the triplane block's 512) fall back to the
memory-efficient kernel, which is slower on Hopper than two half-precision GEMMs around a softmax."""


def _half_attention_chunked(q: Tensor, k: Tensor, v: Tensor, scale: float, max_logits: int = 1 << 28) -> Tensor:
    """Half-precision attention as ``softmax(q k^T * scale) v`` over query chunks (logits stay in
    ``q.dtype``; the softmax accumulates in float32 inside the kernel). At most ``max_logits`` logits live
    at once."""
    b, h, n, _ = q.shape
    chunk = max(1, min(n, max_logits // max(1, b * h * k.shape[-2])))
    with torch.autocast(device_type=q.device.type, enabled=False):
        outs = []
        for qc in q.split(chunk, dim=2):
            logits = torch.matmul(qc, k.transpose(-2, -1)).mul_(scale)
            outs.append(torch.matmul(torch.softmax(logits, dim=-1), v))
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]


def set_sdpa(module: nn.Module, enabled: bool) -> nn.Module:
    """Select the SDPA (``True``) or explicit-softmax (``False``) path in every attention submodule."""
    for m in module.modules():
        if isinstance(m, _MiTAttention):
            m.use_sdpa = enabled
    return module


class _MiTAttention(nn.Module):
    """Shared part of self- and cross-attention: ``q``, ``kv``, ``proj`` and optional ``sr``/``norm``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kv_in_dim: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if sr_ratio > 1 and kv_in_dim != dim:
            raise ValueError("spatial reduction needs the key/value input width to equal dim")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # Upstream uses ``qk_scale or head_dim ** -0.5`` (so 0 / None both mean the default).
        self.scale: float = qk_scale or self.head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.use_sdpa = True

        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(kv_in_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.apply(init_mit_weights)

    def _attend(self, x: Tensor, src: Tensor, src_hw: tuple[int, int]) -> Tensor:
        """Queries from ``x`` ``(B, N, dim)``; keys/values from ``src`` ``(B, M, kv_in_dim)`` laid out
        on the ``src_hw`` grid (only used for spatial reduction). Returns ``(B, N, dim)``."""
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(B, N, h, d).transpose(1, 2)
        if self.sr_ratio > 1:
            src = self.sr(tokens_to_map(src, *src_hw)).flatten(2).transpose(1, 2)
            src = self.norm(src)
        kv = self.kv(src).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        out = multihead_attention(q, kv[0], kv[1], self.scale, self.use_sdpa)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, sr_ratio={self.sr_ratio}, use_sdpa={self.use_sdpa}"


class SelfAttention(_MiTAttention):
    """Multi-head self-attention with optional spatial reduction of keys/values (SegFormer "efficient
    self-attention").

    With ``sr_ratio = r > 1`` the key/value tokens come from a ``r x r``-strided conv of the token map
    followed by LayerNorm, so there are ``(H/r) * (W/r)`` of them.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        sr_ratio: int = 1,
    ) -> None:
        super().__init__(dim, num_heads, dim, qkv_bias=qkv_bias, qk_scale=qk_scale, sr_ratio=sr_ratio)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """``x``: ``(B, H*W, dim)`` -> ``(B, H*W, dim)``."""
        return self._attend(x, x, (H, W))


class CrossAttention(_MiTAttention):
    """Multi-head cross-attention: image tokens attend to a context token sequence.

    Args:
        dim: width of the query tokens (and of the output).
        num_heads: number of heads (``dim`` must be divisible by it).
        context_hw: the context tokens' grid ``(H_y, W_y)`` (used only for spatial reduction).
        context_dim: width of the context tokens; upstream leaves it at ``dim``.
        zero_init_proj: zero the output projection so the block is an identity at init. Upstream's
            ``CrossAttention`` does this, but the enclosing block re-initialises every Linear
            afterwards, so the effective upstream init is *not* zero; the reconstructor therefore
            passes ``False`` unless asked otherwise.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        context_hw: tuple[int, int] = (8, 8),
        context_dim: int | None = None,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        sr_ratio: int = 1,
        zero_init_proj: bool = False,
    ) -> None:
        super().__init__(
            dim, num_heads, context_dim or dim, qkv_bias=qkv_bias, qk_scale=qk_scale, sr_ratio=sr_ratio
        )
        self.context_hw: tuple[int, int] = (int(context_hw[0]), int(context_hw[1]))
        if zero_init_proj:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x``: ``(B, N, dim)`` queries; ``y``: ``(B, H_y*W_y, context_dim)`` context -> ``(B, N, dim)``."""
        return self._attend(x, y, self.context_hw)


class DWConvTokens(nn.Module):
    """Depth-wise 3x3 conv applied to tokens ``(B, H*W, C)`` viewed as a ``(B, C, H, W)`` map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """``(B, H*W, C)`` -> ``(B, H*W, C)``.

        The tokens are viewed as a channels-last map (no copy); cuDNN's NHWC depth-wise kernels then avoid
        the two layout transposes of an NCHW round trip. Same maths as the NCHW view.
        """
        B, N, C = x.shape
        if N != H * W:
            raise ValueError(f"token count {N} does not match H*W = {H}*{W}")
        y = self.dwconv(x.reshape(B, H, W, C).permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1).reshape(B, N, C)


class MixFFN(nn.Module):
    """SegFormer Mix-FFN: ``fc2(GELU(dwconv3x3(fc1(x))))`` (exact-erf GELU)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConvTokens(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.apply(init_mit_weights)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """``(B, H*W, dim)`` -> ``(B, H*W, dim)``."""
        return self.fc2(self.act(self.dwconv(self.fc1(x), H, W)))


def _residual(x: Tensor, update: Tensor, scale: float | Tensor) -> Tensor:
    if isinstance(scale, (int, float)) and scale == 1:
        return x + update
    return x + update * scale


class TransformerBlock(nn.Module):
    """Pre-norm MiT block: ``x += scale * attn(LN(x)); x += mlp(LN(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, sr_ratio=sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))
        self.apply(init_mit_weights)

    def forward(self, x: Tensor, H: int, W: int, scale: float | Tensor = 1.0) -> Tensor:
        """``x``: ``(B, H*W, dim)`` -> ``(B, H*W, dim)``."""
        x = _residual(x, self.attn(self.norm1(x), H, W), scale)
        return x + self.mlp(self.norm2(x), H, W)


class CrossTransformerBlock(nn.Module):
    """MiT block with a leading cross-attention to context tokens (Portrait4D's motion blocks).

    Order: ``x += scale * attn2(LN2(x), y)``; ``x += attn1(LN1(x))``; ``x += mlp(LN3(x))``.
    ``scale = 0`` switches the cross-attention off (it is then not computed at all, which gives the
    same result as multiplying a finite update by zero).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_hw: tuple[int, int] = (8, 8),
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        sr_ratio: int = 1,
        zero_init_cross: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, sr_ratio=sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(
            dim,
            num_heads,
            context_hw=context_hw,
            context_dim=context_dim,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            sr_ratio=sr_ratio,
        )
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))
        # Upstream re-initialises every Linear here, which undoes CrossAttention's zero init.
        self.apply(init_mit_weights)
        if zero_init_cross:
            nn.init.zeros_(self.attn2.proj.weight)
            nn.init.zeros_(self.attn2.proj.bias)

    def forward(self, x: Tensor, y: Tensor, H: int, W: int, scale: float | Tensor = 1.0) -> Tensor:
        """``x``: ``(B, H*W, dim)`` image tokens; ``y``: ``(B, H_y*W_y, context_dim)`` -> ``(B, H*W, dim)``.

        ``scale`` may be a float or a tensor broadcastable to ``(B, 1, 1)``.
        """
        if not (isinstance(scale, (int, float)) and scale == 0):
            x = _residual(x, self.attn2(self.norm2(x), y), scale)
        x = x + self.attn1(self.norm1(x), H, W)
        return x + self.mlp(self.norm3(x), H, W)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``Conv(k, stride, pad=k//2)`` then LayerNorm over channels."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(init_mit_weights)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """``(B, C_in, H_in, W_in)`` -> tokens ``(B, H*W, embed_dim)``, ``H``, ``W``."""
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), int(H), int(W)
