"""StyleGAN2's mapping network (official ``models/stylegan/networks_stylegan2.py::MappingNetwork``).

Shared by the generators (:mod:`avatar.nn.generator`: GenHead's triplane backbone and background) and the
conditioning branch of the discriminator (:mod:`avatar.losses.discriminator`). Parameter and buffer names are the
official ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatar.nn.stylegan2 import FullyConnectedLayer

__all__ = ["MappingNetwork", "fp32_or_f64", "normalize_2nd_moment"]


def fp32_or_f64(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs (upstream casts to float32; float64 serves gradient checks)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``x / sqrt(mean(x^2 along dim) + eps)`` (official ``networks_stylegan2.normalize_2nd_moment``)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()



class MappingNetwork(nn.Module):
    """StyleGAN2 mapping network (official ``networks_stylegan2.MappingNetwork``); the discriminator uses its
    conditioning-only form (``z_dim=0``, ``num_ws=None``, ``w_avg_beta=None``): ``embed`` FC
    ``c_dim -> w_dim``, second-moment normalisation, ``fc0`` ... ``fc{num_layers-1}`` with leaky ReLU and
    ``lr_multiplier``.

    Parameters: ``embed.*`` (when ``c_dim > 0``), ``fc{i}.weight``, ``fc{i}.bias``; buffer ``w_avg``
    ``[w_dim]`` only when ``num_ws`` and ``w_avg_beta`` are both set.
    ``(z [N, z_dim] | None, c [N, c_dim]) -> [N, w_dim]`` (``[N, num_ws, w_dim]`` when ``num_ws`` is set).
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        self.normalize = normalize
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: Tensor | None,
        c: Tensor | None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> Tensor:
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(
                    f"expected z of shape [N, {self.z_dim}], got {None if z is None else tuple(z.shape)}"
                )
            x = normalize_2nd_moment(
                z.to(fp32_or_f64(z.dtype))
            )  # (upstream normalises z whatever `normalize` says)
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(
                    f"expected c of shape [N, {self.c_dim}], got {None if c is None else tuple(c.shape)}"
                )
            y = self.embed(c.to(fp32_or_f64(c.dtype)))
            y = normalize_2nd_moment(y) if self.normalize else y
            x = torch.cat([x, y], dim=1) if x is not None else y
        if x is None:
            raise ValueError("a mapping network with z_dim = c_dim = 0 has no input")
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None and hasattr(self, "w_avg"):
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ValueError("truncation needs the w_avg buffer (num_ws and w_avg_beta set)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
