"""Training phases (EG3D's lazy-regularisation scheme) and one optimizer step of a phase.

A phase is ``(name, module, optimizer, interval, loss)``: at every step whose number is a multiple of
``interval`` the loop runs the phase: it zeroes the optimizer's gradients, makes the optimizer's parameters (only
those) require grad, calls ``loss(batch, ctx)`` with ``ctx.gain == interval``, back-propagates, averages the
gradients over processes, replaces NaN/inf (``nan_to_num(nan=0, posinf=1e5, neginf=-1e5)``), steps the optimizer
and turns ``requires_grad`` off again. The reconstructor's phases, in order: ``Gmain`` (1), ``Greg``
(``G_reg_interval``), ``Dmain`` (1), ``Dreg`` (``D_reg_interval``) - :func:`lazy_phases` builds such a pair.

There is no DDP wrapper (design note 8.1): a phase touches only part of its module (Greg does not reach the
super-resolution; Dmain freezes G), which DDP would need ``find_unused_parameters`` for; instead the gradients are
flattened into one buffer and averaged with one all-reduce per phase, as the official loop does.

A phase's ``loss`` either returns a scalar loss (the loop back-propagates ``loss.mean() * gain``), or calls
``ctx.backward(term)`` itself for each term (several backward passes, as the official Dmain does for its real
and fake halves) and returns ``None``. It reports what it wants logged with ``ctx.log(name, value)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from train.core.optim import AdamConfig, ParamGroupRule, build_adam

if TYPE_CHECKING:
    from accelerate import Accelerator

    from train.core.state import LoopState

__all__ = ["LossFn", "Phase", "PhaseContext", "lazy_phases", "reduce_gradients", "run_phase"]

LossFn = Callable[[Any, "PhaseContext"], "torch.Tensor | None"]
"""``loss(batch, ctx) -> scalar tensor | None`` (None: the function called ``ctx.backward`` itself)."""


@dataclass(eq=False)
class Phase:
    """One phase of a training step.

    Attributes:
        name: ``Gmain``, ``Greg``, ``Dmain``, ``Dreg``, ``Gboth``, ... (also the key of its logs).
        module: the module it trains (only the parameters of ``optimizer`` get gradients).
        optimizer: its optimizer (shared by the main and reg phases of a module).
        interval: it runs at steps ``0, interval, 2 * interval, ...``; its loss is scaled by ``gain = interval``.
        loss: see :data:`LossFn`.
        group: name of the optimizer in the logs (``LR/<group>/<param group>``); defaults to ``name``.
    """

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    interval: int
    loss: LossFn
    group: str = ""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"phase {self.name}: interval must be at least 1, got {self.interval}")
        self.group = self.group or self.name

    def parameters(self) -> list[nn.Parameter]:
        """The parameters this phase trains (those of its optimizer), in optimizer order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def is_due(self, step: int) -> bool:
        return step % self.interval == 0


@dataclass(eq=False)
class PhaseContext:
    """What a phase's loss gets besides the batch.

    Attributes:
        phase: the phase's name.
        gain: the phase's interval: the factor of its loss.
        state: the loop's counters (``step``, ``cur_nimg``, ``kimg``) before this step.
        accelerator: the run's Accelerator (device, autocast, process index).
    """

    phase: str
    gain: float
    state: LoopState
    accelerator: Accelerator
    _log: Callable[[str, Any], None] = field(repr=False, default=lambda name, value: None)
    backward_calls: int = 0

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def log(self, name: str, value: torch.Tensor | float) -> None:
        """Report a value (a tensor of any shape: its elements are averaged over the tick and the processes)."""
        self._log(name, value)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss.mean() * gain`` (the official ``loss.mean().mul(gain).backward()``)."""
        self.accelerator.backward(loss.mean().mul(self.gain))
        self.backward_calls += 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's mixed-precision context (a no-op with ``mixed_precision='no'``, the official setting)."""
        return self.accelerator.autocast()


def lazy_phases(name: str, module: nn.Module, *, main: LossFn, reg: LossFn | None = None,
                reg_interval: int | None = None, adam: AdamConfig | None = None,
                groups: tuple[ParamGroupRule, ...] = (), exclude: Callable[[str], bool] | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> list[Phase]:
    """The phases of one module under lazy regularisation, sharing one optimizer.

    With ``reg`` and ``reg_interval >= 1``: ``[<name>main (interval 1), <name>reg (interval reg_interval)]`` and an
    Adam built by :func:`~train.core.optim.build_adam` with the lazy-regularisation correction for
    ``reg_interval``. Without: one phase ``<name>both`` (interval 1) that runs ``main`` then ``reg`` (if given)
    with gain 1, and an uncorrected Adam (the official ``reg_interval=None`` case). ``optimizer`` replaces the
    built Adam (then the caller applies the correction, e.g. with :func:`~train.core.optim.lazy_regularized`).
    """
    lazy = reg is not None and bool(reg_interval)
    if optimizer is None:
        optimizer = build_adam(module, adam, reg_interval=reg_interval if lazy else None, groups=groups,
                               exclude=exclude)
    if lazy:
        assert reg is not None and reg_interval is not None
        return [Phase(f"{name}main", module, optimizer, 1, main, group=name),
                Phase(f"{name}reg", module, optimizer, int(reg_interval), reg, group=name)]
    return [Phase(f"{name}both", module, optimizer, 1, _both(main, reg), group=name)]


def _both(main: LossFn, reg: LossFn | None) -> LossFn:
    if reg is None:
        return main

    def both(batch: Any, ctx: PhaseContext) -> None:
        for fn in (main, reg):
            out = fn(batch, ctx)
            if out is not None:
                ctx.backward(out)
        return None

    return both


@contextlib.contextmanager
def _trainable(params: list[nn.Parameter]) -> Iterator[None]:
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)


def reduce_gradients(params: list[nn.Parameter], accelerator: Accelerator) -> None:
    """Average ``params``' gradients over processes through one flat buffer, then ``nan_to_num`` them.

    Parameters without a gradient on every process are left without one (Adam skips them), as in the official
    loop; one that has a gradient on some processes only gets zeros on the others, so all processes reduce the
    same buffer.
    """
    params = [p for p in params if p.numel() > 0]
    world = accelerator.num_processes
    if world > 1:
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=accelerator.device)
        has_grad = accelerator.reduce(has_grad, reduction="sum")
        for p, anywhere in zip(params, has_grad.tolist(), strict=True):
            if anywhere and p.grad is None:
                p.grad = torch.zeros_like(p)
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    if world > 1:
        flat = accelerator.reduce(flat, reduction="mean")  # all-reduce (sum), then / world: the official order
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    for p, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = grad.reshape(p.shape)


def run_phase(phase: Phase, batch: Any, state: LoopState, accelerator: Accelerator,
              log: Callable[[str, Any], None], optimizer: Any = None) -> None:
    """One phase: zero grads, loss with ``gain = interval``, backward, reduce, ``nan_to_num``, optimizer step.

    ``optimizer`` is the object to step (the Accelerate wrapper of ``phase.optimizer``); defaults to the
    phase's own. The value a loss returns is also logged as ``Loss/<phase name>`` (before the gain).
    """
    opt = optimizer if optimizer is not None else phase.optimizer
    params = phase.parameters()
    opt.zero_grad(set_to_none=True)
    ctx = PhaseContext(phase.name, float(phase.interval), state, accelerator, log)
    with _trainable(params):
        out = phase.loss(batch, ctx)
        if out is not None:
            log(f"Loss/{phase.name}", out.detach())
            ctx.backward(out)
    reduce_gradients(params, accelerator)
    opt.step()
