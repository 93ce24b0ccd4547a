"""Peak memory of a call counted from the tensors it creates, on any device: where ``torch.cuda`` statistics
do not exist (the CPU) or do not say which tensor holds the memory.

:class:`LiveTensorBytes` is a ``TorchDispatchMode``: every tensor an operator returns while it is active is
counted by its storage (bytes once per storage, however many views share it) until the last tensor on that
storage is freed. Storages that existed before the mode (weights, inputs, anything passed as ``external``) are
never counted. What it does not see: memory an operator allocates and frees inside its kernel (cuDNN or oneDNN
workspaces, a Triton kernel's registers), allocator rounding and fragmentation, and tensors made by kernels that
bypass the dispatcher. On CUDA it is therefore a lower bound of ``torch.cuda.max_memory_allocated`` minus the
memory allocated before the call; the difference is workspace and rounding.

    with LiveTensorBytes(external=model.parameters()) as live:
        model(x)
    live.peak_bytes   # the most bytes held at once by tensors created inside
    live.peak_stack   # the module names (outermost first) running when that peak was reached

:func:`module_peaks` attributes the added peak to every submodule of a model, as
``scripts/gpu_bench/memory_goha.py`` does with the CUDA allocator.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["LiveTensorBytes", "module_peaks"]


def _storage_key(tensor: torch.Tensor) -> tuple[str, int, int] | None:
    """``(device, data pointer, bytes)`` of the tensor's storage; ``None`` where it holds no memory (meta, empty,
    sparse or wrapper tensors)."""
    if tensor.is_meta or tensor.layout != torch.strided:
        return None
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    pointer = storage.data_ptr()
    if pointer == 0:
        return None
    return str(tensor.device), pointer, storage.nbytes()


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of storages created inside the mode while a tensor on them is alive.

    Attributes (bytes): ``live`` now, ``peak_bytes`` the most at once, ``peak_stack`` the names in
    :attr:`stack` at that moment (a caller such as :func:`module_peaks` pushes and pops them), and with
    ``record_tensors`` ``peak_tensors``: ``(bytes, 'operator shape dtype @ module')`` of each storage alive at the
    peak, largest first (a copy per new peak: slower, for analysis). ``external``: tensors whose storages exist
    before the call (weights, inputs); views of them and in-place results on them are not counted.
    """

    def __init__(self, external: Iterable[torch.Tensor] = (), record_tensors: bool = False) -> None:
        super().__init__()
        self.record_tensors = record_tensors
        self._external = {k for t in external if (k := _storage_key(t)) is not None}
        self._holders: dict[tuple[str, int, int], int] = {}
        self._made_by: dict[tuple[str, int, int], str] = {}
        self.live = 0
        self.peak_bytes = 0
        self.peak_stack: tuple[str, ...] = ()
        self.peak_tensors: list[tuple[int, str]] = []
        self.stack: list[str] = []

    def reset_peak(self) -> None:
        """Starts a new peak at the bytes live now."""
        self.peak_bytes = self.live
        self.peak_stack = tuple(self.stack)
        self.peak_tensors = self._live_tensors() if self.record_tensors else []

    def _live_tensors(self) -> list[tuple[int, str]]:
        """``(bytes, 'operator shape dtype @ module')`` of every counted storage alive now, largest first."""
        return sorted(((key[2], self._made_by[key]) for key in self._holders), reverse=True)

    def _release(self, key: tuple[str, int, int]) -> None:
        left = self._holders[key] - 1
        if left:
            self._holders[key] = left
            return
        del self._holders[key]
        del self._made_by[key]
        self.live -= key[2]

    def _hold(self, tensor: torch.Tensor, op: str) -> None:
        key = _storage_key(tensor)
        if key is None or key in self._external:
            return
        if key not in self._holders:
            self._holders[key] = 0
            where = self.stack[-1] if self.stack else "-"
            self._made_by[key] = f"{op} {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')} @ {where}"
            self.live += key[2]
            if self.live > self.peak_bytes:
                self.peak_bytes = self.live
                self.peak_stack = tuple(self.stack)
                if self.record_tensors:
                    self.peak_tensors = self._live_tensors()
        self._holders[key] += 1
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        op = getattr(func, "__name__", str(func))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._hold(leaf, op)
        return out


def module_peaks(model: torch.nn.Module, call: Callable[[], object], external: Iterable[torch.Tensor] = (),
                 record_tensors: bool = False) -> tuple[LiveTensorBytes, dict[str, int]]:
    """Runs ``call()`` once under :class:`LiveTensorBytes` (the model's parameters and buffers and ``external``
    not counted) and returns ``(live, added)``: the counter, whose ``peak_bytes``, ``peak_stack`` (the
    submodules running at the peak, outermost first) and ``peak_tensors`` (with ``record_tensors``) describe the
    whole call, and for every submodule of ``model`` that ran, the largest peak above the bytes live when one of
    its calls started (its outputs and the temporaries of its operators, as :mod:`torch.cuda` would count them
    without workspaces)."""
    held = [*model.parameters(), *model.buffers(), *external]
    added: dict[str, int] = {}
    starts: dict[str, tuple[int, int, tuple[str, ...], list[tuple[int, str]]]] = {}
    handles = []
    with LiveTensorBytes(held, record_tensors) as live:
        def pre(name: str) -> Callable[..., None]:
            def hook(module: torch.nn.Module, inputs: object) -> None:
                # the peak seen so far is kept, the module's own peak starts at the live bytes
                starts[name] = (live.live, live.peak_bytes, live.peak_stack, live.peak_tensors)
                live.stack.append(name)
                live.reset_peak()
            return hook

        def post(name: str) -> Callable[..., None]:
            def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
                start, outer_peak, outer_stack, outer_tensors = starts.pop(name)
                added[name] = max(added.get(name, 0), live.peak_bytes - start)
                live.stack.pop()
                if outer_peak >= live.peak_bytes:
                    live.peak_bytes, live.peak_stack, live.peak_tensors = outer_peak, outer_stack, outer_tensors
            return hook

        for name, module in model.named_modules():
            if name:
                handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
        try:
            call()
        finally:
            for handle in handles:
                handle.remove()
        return live, added
