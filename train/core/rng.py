"""Random number generators: seeding, JSON-able snapshots, and blocks that leave them untouched.

A training run draws from four generators: Python's ``random``, NumPy's legacy global ``RandomState``, torch's
CPU generator and torch's CUDA generators (one per device). A checkpoint stores all four per process
(:func:`capture_rng_state`, plain JSON: the torch states as base64 of their bytes) and a resumed run restores them
(:func:`restore_rng_state`), so the random draws after a resume are the ones an uninterrupted run would make.

:func:`isolated_rng` runs a block (an image snapshot, an export, one dataset sample) and puts every generator back
as it was, so such a block never shifts the random stream of training; with a seed, the block's own draws are a
pure function of that seed.
"""

from __future__ import annotations

import base64
import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "isolated_rng", "restore_rng_state", "seed_everything", "split_seed"]

_MASK63 = (1 << 63) - 1


def _tensor_to_b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _b64_to_tensor(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def _cuda_in_use() -> bool:
    """CUDA generators exist and were touched (reading them would otherwise start CUDA for nothing)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device) with ``seed``.

    NumPy takes 32-bit seeds: it gets ``seed mod 2**32``.
    """
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def split_seed(*words: int) -> tuple[int, int]:
    """Two independent seeds (63-bit for torch and Python, 32-bit for NumPy) derived from ``words``.

    Uses NumPy's ``SeedSequence``, so nearby inputs (consecutive sample positions) give unrelated streams.
    """
    state = np.random.SeedSequence([int(w) & _MASK63 for w in words]).generate_state(3, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & _MASK63, int(state[2])


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states as JSON-able values (see :func:`restore_rng_state`)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": np.asarray(keys).tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": _tensor_to_b64(torch.get_rng_state()),
        "cuda": None,
    }
    if _cuda_in_use():
        state["cuda"] = [_tensor_to_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (the CUDA part only when CUDA is available; a device
    count that differs from the saved one restores the devices both have)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(_b64_to_tensor(state["torch"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for index, text in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_b64_to_tensor(text), index)


@contextlib.contextmanager
def isolated_rng(seed: int | None = None, *, cuda: bool = True) -> Iterator[None]:
    """Run the block, then restore every generator to its state before the block.

    With ``seed``, the block starts from generators seeded by it (Python, NumPy and torch's CPU generator; also
    the CUDA ones when ``cuda``), so its draws depend on the seed only. ``cuda=False`` leaves the CUDA generators
    alone entirely (data-loading code, which must not start CUDA in a worker process).
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if cuda and _cuda_in_use() else None
    try:
        if seed is not None:
            torch_seed, np_seed = split_seed(seed)
            random.seed(torch_seed)
            np.random.seed(np_seed)
            torch.default_generator.manual_seed(torch_seed)
            if cuda_states is not None:
                torch.cuda.manual_seed_all(torch_seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
