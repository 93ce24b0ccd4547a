"""The exponential moving average of a generator's weights (``G_ema``), with the official ramp-up.

Per step, before ``cur_nimg`` is advanced (the official order)::

    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None: ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
    p_ema <- lerp(p, p_ema, beta)          for every parameter
    b_ema <- b                              for every buffer

``batch_size`` is the global batch: ``ema_kimg`` is the half-life in thousands of images. At the very first step
(``cur_nimg = 0`` with a ramp-up) ``beta`` is 0 and the average starts as a copy. At batch 32 and ``ema_kimg`` 10,
``beta`` is 0.99778.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from avatar.configuration import Config
from avatar.errors import ConfigError

__all__ = ["EMA", "EmaConfig", "ema_beta"]


@dataclass(frozen=True)
class EmaConfig(Config):
    """The EMA of the trained generator's weights."""

    kimg: float = 10.0
    """Half-life in thousands of images (official: ``batch * 10 / 32``, so 10 at batch 32)."""
    rampup: float | None = 0.05
    """Ramp-up: the half-life is at most ``cur_nimg * rampup`` (official 0.05; None when resuming a trained run)."""

    def __post_init__(self) -> None:
        if self.kimg < 0:
            raise ConfigError(f"ema.kimg must be at least 0, got {self.kimg}")
        if self.rampup is not None and self.rampup < 0:
            raise ConfigError(f"ema.rampup must be at least 0 or None, got {self.rampup}")


def ema_beta(batch_size: int, cur_nimg: float, ema_kimg: float, rampup: float | None = None) -> float:
    """The EMA decay of one step of ``batch_size`` images taken at ``cur_nimg`` images (see the module docstring)."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


class EMA:
    """``module``'s moving average: :attr:`module` is a frozen deep copy (eval mode, no grads) updated in place.

    Args:
        source: the trained module.
        config: half-life and ramp-up.
        copy_attributes: plain attributes copied from ``source`` at every update (the official loop copies
            ``neural_rendering_resolution`` and ``rendering_kwargs`` to ``G_ema``).
    """

    def __init__(self, source: nn.Module, config: EmaConfig | None = None,
                 copy_attributes: Sequence[str] = ()) -> None:
        self.source = source
        self.config = config or EmaConfig()
        self.copy_attributes = tuple(copy_attributes)
        self.module = copy.deepcopy(source).eval().requires_grad_(False)

    def beta(self, batch_size: int, cur_nimg: float) -> float:
        return ema_beta(batch_size, cur_nimg, self.config.kimg, self.config.rampup)

    @torch.no_grad()
    def update(self, batch_size: int, cur_nimg: float) -> float:
        """One step of the average (``cur_nimg``: images seen before this step); returns the beta used."""
        beta = self.beta(batch_size, cur_nimg)
        for p_ema, p in zip(self.module.parameters(), self.source.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.module.buffers(), self.source.buffers(), strict=True):
            b_ema.copy_(b)
        for name in self.copy_attributes:
            setattr(self.module, name, copy.deepcopy(getattr(self.source, name)))
        return beta
