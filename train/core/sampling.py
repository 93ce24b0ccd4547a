"""The data position: an endless, shuffled, seeded, rank-sharded stream of sample indices that can start anywhere.

The stream is the official ``InfiniteSampler``'s idea (every process walks one shared shuffled order, process
``r`` of ``W`` taking the positions ``r, r + W, r + 2W, ...``) with one change that makes resuming exact and
instant: instead of a window shuffle that mutates the order as it goes (whose state after ``n`` samples can only
be rebuilt by replaying ``n`` steps), each pass ("epoch") over the dataset is its own permutation seeded by
``(seed, epoch)``. Global position ``p`` is then sample ``perm(p // N)[p % N]``, a pure function of ``p``: a run
resumed at position ``p`` continues with exactly the samples an uninterrupted run would have drawn. The order of
samples is not something the official training depends on; this is the only difference.

One step of a run with global batch ``B`` consumes the positions ``[p, p + B)``: the same samples whatever the
number of processes, split among them.

**Random augmentation.** With ``seed_samples`` (the default of :func:`make_loader`), each sample is produced by
``dataset[index]`` inside :func:`~train.core.rng.isolated_rng` seeded by ``(seed, position)``: the dataset may
use ``random``, ``numpy.random`` and ``torch`` freely, and what it draws depends on the position only, not on the
number of loader workers or processes, nor on whether the run was resumed. (Worker processes seeded by PyTorch's
defaults would restart their random streams at every resume.)
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from train.core.rng import isolated_rng, split_seed

__all__ = ["InfiniteSampler", "SeededSamples", "ignore_stop_signals", "make_loader", "sample_seed"]


def sample_seed(seed: int, position: int) -> int:
    """The seed of the sample at global ``position`` of a stream seeded by ``seed``."""
    return split_seed(seed, position, 0x5EED)[0]


class InfiniteSampler(Sampler):
    """Indices of a dataset of ``size`` samples, forever, for process ``rank`` of ``num_replicas``.

    Args:
        size: the number of samples (``len(dataset)``).
        rank, num_replicas: this process and the number of processes.
        shuffle: a new permutation per pass (else ``0, 1, ..., N - 1`` repeated).
        seed: the seed of the permutations (the same on every process).
        start: the global position to start at (the number of samples all processes consumed before).
        with_seeds: yield ``(index, sample_seed)`` pairs (for :class:`SeededSamples`) instead of indices.
    """

    def __init__(self, size: int, rank: int = 0, num_replicas: int = 1, shuffle: bool = True, seed: int = 0,
                 start: int = 0, with_seeds: bool = False) -> None:
        if size < 1:
            raise ValueError(f"the dataset is empty (size {size})")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        if start < 0:
            raise ValueError(f"start position {start} is negative")
        self.size, self.rank, self.num_replicas = int(size), int(rank), int(num_replicas)
        self.shuffle, self.seed, self.start, self.with_seeds = bool(shuffle), int(seed), int(start), with_seeds

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of pass ``epoch`` (int64 indices)."""
        if not self.shuffle:
            return np.arange(self.size, dtype=np.int64)
        generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        return generator.permutation(self.size).astype(np.int64)

    def index_at(self, position: int) -> int:
        """The sample index at global ``position``."""
        epoch, offset = divmod(position, self.size)
        return int(self.order(epoch)[offset])

    def __iter__(self) -> Iterator[Any]:
        position = self.start + self.rank
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            this_epoch, offset = divmod(position, self.size)
            if this_epoch != epoch:
                epoch, order = this_epoch, self.order(this_epoch)
            index = int(order[offset])
            yield (index, sample_seed(self.seed, position)) if self.with_seeds else index
            position += self.num_replicas


class SeededSamples(Dataset):
    """``dataset`` read with ``(index, seed)`` keys: ``dataset[index]`` inside an RNG block seeded by ``seed``.

    See the module docstring. CUDA generators are not touched (loader workers must not start CUDA).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with isolated_rng(seed, cuda=False):
            return self.dataset[index]


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

    Each batch holds ``batch_per_process`` samples; one step of all processes consumes
    ``batch_per_process * num_replicas`` positions. The loader owns its generator (seeded from ``seed``, ``rank``
    and ``start``), so creating it never draws from torch's global generator.
    """
    if not isinstance(dataset, Sized):
        raise TypeError("make_loader needs a map-style dataset with __len__ and __getitem__")
    sampler = InfiniteSampler(len(dataset), rank=rank, num_replicas=num_replicas, shuffle=shuffle, seed=seed,
                              start=start, with_seeds=seed_samples)
    generator = torch.Generator().manual_seed(split_seed(seed, rank, start, 0x10AD)[0])
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(SeededSamples(dataset) if seed_samples else dataset, batch_size=batch_per_process,
                      sampler=sampler, num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                      collate_fn=collate_fn, generator=generator,
                      worker_init_fn=ignore_stop_signals if num_workers > 0 else None, **kwargs)

