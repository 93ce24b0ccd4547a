"""The data position: the official sampler's endless, shuffled, rank-sharded stream of sample indices, from any start.

:class:`InfiniteSampler` gives the order of the official ``misc.InfiniteSampler`` (EG3D / Portrait4D
``torch_utils/misc.py``) exactly: the indices are shuffled once with ``np.random.RandomState(seed)``, then global
step ``p`` visits ``order[p % N]`` and swaps it with an element up to ``window = rint(N * window_size)`` places
before it, drawn by the same generator. Every process walks this one global stream and process ``r`` of ``W`` takes
the positions ``p`` with ``p % W == r``, as upstream. Each index comes with its ``position`` ``p`` (unique over the
processes): what seeds the sample's random draws.

One step of a run with global batch ``B`` consumes the positions ``[p, p + B)``: the same samples whatever the
number of processes, split among them. A run resumed at position ``p`` (``start``) continues with exactly the
samples an uninterrupted run would have drawn: the window walk mutates the order as it goes, so the sampler replays
it up to ``p`` (the random draws in blocks, about a second per few million positions) before yielding.

**Random augmentation.** With ``seed_samples`` (the default of :func:`make_loader`), each sample is produced by
``dataset[index]`` inside :func:`~train.core.rng.isolated_rng` seeded by ``(seed, position)``
(:func:`sample_seed`): the dataset may use ``random``, ``numpy.random`` and ``torch`` freely, and what it draws
depends on the position only, not on the number of loader workers or processes, nor on whether the run was resumed.
(Worker processes seeded by PyTorch's defaults would restart their random streams at every resume.) A dataset whose
``takes_positions`` attribute is true (:class:`~train.data.ClipPairDataset`) is read with
``dataset[(index, position)]`` instead and draws from the position itself.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from avatar.errors import ConfigError, InputError
from train.core.rng import isolated_rng, split_seed

__all__ = ["InfiniteSampler", "SeededSamples", "ignore_stop_signals", "make_loader", "sample_seed"]

_DRAW_BLOCK = 4096
"""Positions per block of random draws (RandomState gives a block the values of as many single draws)."""


def sample_seed(seed: int, position: int) -> int:
    """The seed of the sample at global ``position`` of a stream seeded by ``seed``."""
    return split_seed(seed, position, 0x5EED)[0]


class InfiniteSampler(Sampler):
    """The official ``misc.InfiniteSampler`` order as ``(index, position)`` pairs, forever, for process ``rank``.

    Args:
        dataset: the dataset (``len(dataset)`` samples) or its length.
        rank, num_replicas: this process and the number of processes; the process gets the global positions
            ``p`` with ``p % num_replicas == rank``.
        shuffle: the official shuffle and window walk (else ``0, 1, ..., N - 1`` repeated).
        seed: the seed of the shuffle (the same on every process; upstream's ``random_seed``).
        window_size: the swap window as a fraction of the dataset (upstream's default 0.5).
        start: the global position to start at (the number of samples all processes consumed before); the
            walk is replayed to it.

    Yields ``(index, position)``: the sample index and its global position in the stream (unique over ranks).
    """

    def __init__(self, dataset: Sized | int, rank: int = 0, num_replicas: int = 1, shuffle: bool = True,
                 seed: int = 0, window_size: float = 0.5, start: int = 0) -> None:
        size = int(dataset) if isinstance(dataset, int | np.integer) else len(dataset)
        if size < 1:
            raise InputError(f"the dataset is empty (size {size})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} of {num_replicas} processes is impossible")
        if not 0 <= window_size <= 1:
            raise ConfigError(f"window_size must be in [0, 1], got {window_size}")
        if start < 0:
            raise ConfigError(f"start position {start} is negative")
        self.size, self.rank, self.num_replicas = size, int(rank), int(num_replicas)
        self.shuffle, self.seed, self.window_size, self.start = bool(shuffle), int(seed), window_size, int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n, step = self.size, self.num_replicas
        order = np.arange(n)
        rnd, window = None, 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(n * self.window_size))
        items: list[int] = order.tolist()
        position = self.start + (self.rank - self.start) % step  # the first of this process's positions >= start
        if window < 2 or rnd is None:  # upstream draws nothing: the order never changes
            while True:
                yield items[position % n], position
                position += step
        block = 0
        while True:
            visited = np.arange(block, block + _DRAW_BLOCK, dtype=np.int64) % n
            swapped = (visited - rnd.randint(window, size=_DRAW_BLOCK)) % n
            pairs = zip(visited.tolist(), swapped.tolist(), strict=True)
            if block + _DRAW_BLOCK <= position:  # replay: nothing of this block is yielded
                for i, j in pairs:
                    items[i], items[j] = items[j], items[i]
            else:
                for p, (i, j) in enumerate(pairs, block):
                    if p == position:
                        yield items[i], position
                        position += step
                    items[i], items[j] = items[j], items[i]
            block += _DRAW_BLOCK


class SeededSamples(Dataset):
    """``dataset`` read with the ``(index, position)`` keys of :class:`InfiniteSampler`.

    With ``seed``, each read runs inside an RNG block seeded by :func:`sample_seed` ``(seed, position)`` (module
    docstring); ``seed=None`` only unpacks the key. The dataset gets ``dataset[(index, position)]`` if its
    ``takes_positions`` attribute is true, else ``dataset[index]``. CUDA generators are not touched (loader
    workers must not start CUDA).
    """

    def __init__(self, dataset: Dataset, seed: int | None = 0) -> None:
        self.dataset, self.seed = dataset, seed
        self.takes_positions = bool(getattr(dataset, "takes_positions", False))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, position = key
        item_key = (index, position) if self.takes_positions else index
        if self.seed is None:
            return self.dataset[item_key]
        with isolated_rng(sample_seed(self.seed, position), cuda=False):
            return self.dataset[item_key]


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Loader workers ignore SIGINT and SIGTERM: Ctrl-C and schedulers signal the whole process group, and a
    worker killed by SIGTERM would make PyTorch raise in the training process in the middle of its graceful stop.
    The training process ends its workers itself (and workers exit when it dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_per_process: int, *, start: int, rank: int = 0, num_replicas: int = 1,
                seed: int = 0, shuffle: bool = True, seed_samples: bool = True, num_workers: int = 0,
                pin_memory: bool = False, prefetch_factor: int | None = 2,
                collate_fn: Callable[[list[Any]], Any] | None = None) -> DataLoader:
    """An endless loader of this process's batches of ``dataset``, starting at global position ``start``.

    The samples come in the official order (:class:`InfiniteSampler` seeded by ``seed``), read through
    :class:`SeededSamples` (seeded by ``seed`` when ``seed_samples``). Each batch holds ``batch_per_process``
    samples; one step of all processes consumes ``batch_per_process * num_replicas`` positions. The loader owns
    its generator (seeded from ``seed``, ``rank`` and ``start``), so creating it never draws from torch's global
    generator.
    """
    if not isinstance(dataset, Sized):
        raise TypeError("make_loader needs a map-style dataset with __len__ and __getitem__")
    sampler = InfiniteSampler(dataset, rank=rank, num_replicas=num_replicas, shuffle=shuffle, seed=seed,
                              start=start)
    generator = torch.Generator().manual_seed(split_seed(seed, rank, start, 0x10AD)[0])
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(SeededSamples(dataset, seed if seed_samples else None), batch_size=batch_per_process,
                      sampler=sampler, num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                      collate_fn=collate_fn, generator=generator,
                      worker_init_fn=ignore_stop_signals if num_workers > 0 else None, **kwargs)
