"""CUDA-graph replay of a tensor function at fixed shapes (launch overhead off the per-frame path).

A :class:`GraphedFunction` copies its inputs into static buffers, replays the kernels recorded at capture and
returns clones of the static outputs (so results of earlier calls are never overwritten). A
:class:`GraphCache` holds a few of them keyed by the caller (shapes, options, weights), capturing on the first
call of a key and evicting the least recently used one.

Rules for the captured function (PyTorch's): no host synchronisation (``.item()``, ``float(tensor)``, data-
dependent shapes), no CPU-to-GPU copies of unpinned memory, and every tensor it reads besides its inputs (the
weights) must stay at the same address: a cache key should change when the weights move.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

import torch
from torch import Tensor

__all__ = ["GraphCache", "GraphCaptureError", "GraphedFunction", "tensor_addresses"]

logger = logging.getLogger(__name__)


class GraphCaptureError(RuntimeError):
    """A function could not be captured into a CUDA graph (the message says why); the caller runs it eagerly."""

TensorFunction = Callable[..., Mapping[str, Tensor]]


class GraphedFunction:
    """``fn(**inputs) -> {name: tensor}`` captured once into a CUDA graph.

    Args:
        fn: the function; called twice eagerly on a side stream first (Triton compilation, cuBLAS workspaces),
            then once under capture.
        inputs: example CUDA tensors; their shapes, dtypes and strides are those of every later call.
    """

    def __init__(self, fn: TensorFunction, inputs: Mapping[str, Tensor], warmup: int = 2) -> None:
        self.static = {name: t.clone() for name, t in inputs.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(**self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = dict(fn(**self.static))

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        """Copy ``inputs`` (same names and shapes as at capture) in, replay, return cloned outputs."""
        if inputs.keys() != self.static.keys():
            raise ValueError(f"graphed call with inputs {sorted(inputs)}, captured with {sorted(self.static)}")
        for name, t in inputs.items():
            self.static[name].copy_(t)
        self.graph.replay()
        return {name: t.clone() for name, t in self.outputs.items()}


class GraphCache:
    """At most ``max_graphs`` :class:`GraphedFunction` s by key (least recently used evicted; each holds its
    own memory pool, about the peak memory of one call)."""

    def __init__(self, max_graphs: int = 2) -> None:
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[Hashable, GraphedFunction] = OrderedDict()
        self.failed: dict[Hashable, str] = {}  # keys whose capture failed (not tried again), with the reason

    def __call__(self, key: Hashable, fn: TensorFunction, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Replay the graph of ``key`` (captured now if new). Raises :class:`GraphCaptureError` when the capture
        fails, now or in an earlier call with this key."""
        if key in self.failed:
            raise GraphCaptureError(self.failed[key])
        graphed = self.graphs.get(key)
        if graphed is None:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            try:
                graphed = GraphedFunction(fn, inputs)
            except RuntimeError as exc:
                self.failed[key] = f"{type(exc).__name__}: {exc}"
                raise GraphCaptureError(self.failed[key]) from exc
            self.graphs[key] = graphed
        else:
            self.graphs.move_to_end(key)
        return graphed(**inputs)

    def replay_or_none(self, key: Hashable, fn: TensorFunction, inputs: Mapping[str, Tensor],
                       what: str) -> dict[str, Tensor] | None:
        """:meth:`__call__`, or ``None`` when the capture of ``key`` fails (the caller then runs ``fn``'s work
        eagerly): the failure is logged as a warning once per key, naming ``what`` was being captured."""
        known_failure = key in self.failed
        try:
            return self(key, fn, inputs)
        except GraphCaptureError as exc:  # still works, only slower: say so once per key
            if not known_failure:
                logger.warning("CUDA graph capture of %s failed (%s); running without graphs", what, exc)
            return None

    def clear(self) -> None:
        self.graphs.clear()
        self.failed.clear()

    def __deepcopy__(self, memo: dict) -> GraphCache:
        return GraphCache(self.max_graphs)  # graphs belong to one object's weights: a copy starts empty

    def __getstate__(self) -> dict:
        return {"max_graphs": self.max_graphs, "graphs": OrderedDict(), "failed": {}}

    def __len__(self) -> int:
        return len(self.graphs)


def tensor_addresses(module: torch.nn.Module) -> tuple[int, ...]:
    """Addresses of every parameter and buffer: part of a cache key, so that a graph is never replayed after
    the weights moved (``.to()``, a reassigned ``.data``)."""
    return tuple(t.data_ptr() for t in module.parameters()) + tuple(t.data_ptr() for t in module.buffers())
