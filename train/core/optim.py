"""Adam with EG3D's lazy-regularisation correction and per-group learning-rate scales.

A module regularised every ``I`` steps (``G_reg_interval``, ``D_reg_interval``) gets one optimizer shared by its
"main" and "reg" phases, built with ``lr * I/(I+1)`` and ``betas ** (I/(I+1))`` (the lazy-regularisation
correction: over ``I + 1`` optimizer steps it moves about as far as ``I`` uncorrected ones would). Parameter
groups picked by name predicates (the official ``G_cross`` group, ``cross_lr_scale``) then multiply their learning
rate by their scale, after the correction.

Official values (design note ``portrait4d-training.md`` 1.2), lr 1e-4 and betas (0.9, 0.999):
``I = 16`` -> lr 9.412e-5, betas (0.90560, 0.99906); ``I = 4`` -> lr 8.0e-5, betas (0.91917, 0.99920).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from avatar.configuration import Config
from avatar.errors import ConfigError

__all__ = ["AdamConfig", "ParamGroupRule", "build_adam", "lazy_ratio", "lazy_regularized"]


@dataclass(frozen=True)
class AdamConfig(Config):
    """Adam's settings before the lazy-regularisation correction."""

    lr: float = 1e-4
    """Learning rate (the official reconstructor and its discriminator: 1e-4; GenHead: G 0.0025, D 0.002)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2) (reconstructor: (0.9, 0.999); GenHead: (0, 0.99))."""
    eps: float = 1e-8
    """Adam's epsilon (reconstructor: 1e-5)."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"lr must be above 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be above 0, got {self.eps}")


@dataclass(frozen=True)
class ParamGroupRule:
    """Parameters whose name ``match`` accepts form the group ``name`` with learning rate ``lr * lr_scale``."""

    name: str
    match: Callable[[str], bool]
    lr_scale: float = 1.0


def lazy_ratio(interval: int | None) -> float:
    """``I / (I + 1)`` for a regularisation interval ``I``; 1 when there is none (``None`` or 0)."""
    if not interval:
        return 1.0
    if interval < 0:
        raise ConfigError(f"a regularisation interval must be at least 1, got {interval}")
    return interval / (interval + 1)


def lazy_regularized(config: AdamConfig, interval: int | None) -> tuple[float, tuple[float, float]]:
    """The corrected ``(lr, betas)`` of an optimizer whose module is regularised every ``interval`` steps."""
    ratio = lazy_ratio(interval)
    return config.lr * ratio, (config.betas[0] ** ratio, config.betas[1] ** ratio)


def build_adam(params: nn.Module | Iterable[tuple[str, nn.Parameter]], config: AdamConfig | None = None, *,
               reg_interval: int | None = None, groups: Sequence[ParamGroupRule] = (),
               exclude: Callable[[str], bool] | None = None) -> torch.optim.Adam:
    """Adam over ``params`` (a module, or ``(name, parameter)`` pairs) with the lazy-regularisation correction.

    Each parameter joins the first rule of ``groups`` that matches its name, else the group ``"base"``; names
    ``exclude`` accepts are left out (the official loop leaves out names containing ``"bn"``). Groups that get no
    parameter are dropped. Every group dict carries ``name`` and ``lr_scale`` besides Adam's keys.
    """
    config = config or AdamConfig()
    named = list(params.named_parameters() if isinstance(params, nn.Module) else params)
    buckets: dict[str, list[nn.Parameter]] = {"base": [], **{rule.name: [] for rule in groups}}
    if len(buckets) != len(groups) + 1:
        raise ConfigError(f"parameter group names must be unique and not 'base': {[r.name for r in groups]}")
    for name, param in named:
        if exclude is not None and exclude(name):
            continue
        rule = next((r for r in groups if r.match(name)), None)
        buckets["base" if rule is None else rule.name].append(param)
    if not any(buckets.values()):
        raise ConfigError("the optimizer has no parameter to train")
    lr, betas = lazy_regularized(config, reg_interval)
    scales = {"base": 1.0, **{rule.name: rule.lr_scale for rule in groups}}
    param_groups = [{"params": plist, "name": name, "lr_scale": scales[name], "lr": lr * scales[name]}
                    for name, plist in buckets.items() if plist]
    return torch.optim.Adam(param_groups, lr=lr, betas=betas, eps=config.eps)
