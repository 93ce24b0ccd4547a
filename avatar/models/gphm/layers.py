"""Building blocks of GPHM's networks: plain MLPs, MLPs conditioned on a per-sample code, positional encoding.

Every MLP of the paper is "width W with L hidden layers": ``L`` hidden linear layers of width ``W`` (each followed
by the activation) and one linear output layer, i.e. ``L + 1`` linear layers in all.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ConditionedMLP", "PositionalEncoding", "make_activation"]

ACTIVATIONS = ("relu", "softplus")


def make_activation(name: str) -> nn.Module:
    """``"relu"`` or ``"softplus"`` (beta 100, smooth like ReLU, as implicit-surface networks use it)."""
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":
        return nn.Softplus(beta=100.0)
    raise ValueError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")


class MLP(nn.Module):
    """``in_dim -> [width] * hidden_layers -> out_dim`` with ``activation`` after every hidden layer.

    ``forward(x (..., in_dim)) -> (..., out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int, hidden_layers: int, activation: str = "relu") -> None:
        super().__init__()
        dims = [in_dim] + [width] * hidden_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.act = make_activation(activation)
        self.out = nn.Linear(dims[-1], out_dim)

    def forward(self, x: Tensor, *, fused: bool = False) -> Tensor:
        """``fused`` (inference fast path, CUDA, ReLU): each hidden layer as one GEMM whose epilogue adds the bias
        and applies the ReLU (:meth:`_hidden_fused`) instead of a GEMM and a separate ReLU pass over its output."""
        if fused and x.is_cuda and isinstance(self.act, nn.ReLU) and self.hidden:
            return self.out(self._hidden_fused(x))
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)

    def _hidden_fused(self, x: Tensor) -> Tensor:
        """The hidden layers through ``torch._addmm_activation`` (cuBLASLt's bias + ReLU epilogue) in the autocast
        dtype when CUDA autocast is on (as ``nn.Linear`` would run), else in ``x``'s dtype. The ReLU of the
        rounded sum equals the rounding of the ReLU'd sum, so only the GEMM's own rounding can differ from
        ``relu(linear(x))``. On an H100 profile of the batch-8 GPHM render before this, the ReLU passes (``clamp_min``,
        the conditioned first layers' included, which stay separate) took 3.0 of 25.9 ms
        (``docs/gphm/profile-h100-b8-run4.log``); the fused layers' speed is not measured yet."""
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1]).to(dtype)
        for layer in self.hidden:
            h = torch._addmm_activation(layer.bias.to(dtype), h, layer.weight.to(dtype).t())
        return h.reshape(*lead, h.shape[-1])


class ConditionedMLP(nn.Module):
    """An :class:`MLP` over ``concat(point_features, code)`` where the code is one vector per sample.

    The first layer is split, ``W [f; z] = W_f f + W_z z``, so the code's part is computed once per sample and
    broadcast over the ``N`` points instead of concatenating ``N`` copies of the code (same function, less memory).

    ``forward(points (B, N, point_dim), code (B, code_dim)) -> (B, N, out_dim)``.
    """

    def __init__(self, point_dim: int, code_dim: int, out_dim: int, width: int, hidden_layers: int,
                 activation: str = "relu") -> None:
        super().__init__()
        if hidden_layers < 1:
            raise ValueError("ConditionedMLP needs at least one hidden layer")
        self.point_in = nn.Linear(point_dim, width)
        self.code_in = nn.Linear(code_dim, width, bias=False)
        self.act = make_activation(activation)
        self.rest = MLP(width, out_dim, width, hidden_layers - 1, activation)
        with torch.no_grad():  # the split first layer starts like one nn.Linear(point_dim + code_dim, width)
            bound = 1.0 / math.sqrt(point_dim + code_dim)
            self.point_in.weight.uniform_(-bound, bound)
            self.point_in.bias.uniform_(-bound, bound)
            self.code_in.weight.uniform_(-bound, bound)

    def point_part(self, points: Tensor) -> Tensor:
        """The code-free part of the first layer, ``W_f f + b``: ``(..., N, point_dim) -> (..., N, width)``. It
        does not change while the points and weights do not, so inference computes it once and passes it to
        :meth:`forward` (``point_part=``)."""
        return self.point_in(points)

    def forward(self, points: Tensor | None, code: Tensor, *, point_part: Tensor | None = None,
                fused: bool = False) -> Tensor:
        """``points (B, N, point_dim)`` (or ``None`` with ``point_part (N, width)`` or ``(B, N, width)`` from
        :meth:`point_part`) and ``code (B, code_dim)`` -> ``(B, N, out_dim)``; ``fused``: :meth:`MLP.forward`'s."""
        if point_part is None:
            if points is None:
                raise ValueError("ConditionedMLP needs points or their point_part")
            point_part = self.point_in(points)
        h = point_part + self.code_in(code).unsqueeze(-2)
        return self.rest(self.act(h), fused=fused)


class PositionalEncoding(nn.Module):
    """NeRF's encoding ``[x, sin(2^k pi x), cos(2^k pi x)]_{k < num_freqs}``: ``(..., 3) -> (..., 3 (1 + 2K))``."""

    freqs: Tensor

    def __init__(self, num_freqs: int) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.register_buffer("freqs", (2.0 ** torch.arange(num_freqs)) * math.pi, persistent=False)

    @property
    def out_dim(self) -> int:
        return 3 * (1 + 2 * self.num_freqs)

    def forward(self, x: Tensor) -> Tensor:
        if self.num_freqs == 0:
            return x
        angles = (x.unsqueeze(-1) * self.freqs.to(x)).flatten(-2)  # (..., 3K)
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)
