"""Where the metric networks' weights come from, and the clear error when they are missing.

* ArcFace (CSIM) and LPIPS: the networks of :mod:`avatar.losses` (shared with training), loaded through the
  toolkit's asset layer (``arcface-r18``; LPIPS linear heads ``lpips-<net>``, else the copy bundled with the
  ``lpips`` package) and, for the LPIPS trunks (AlexNet / VGG16 ImageNet weights), torchvision's files in the
  torch hub cache (``$TORCH_HOME/hub/checkpoints``).
* FID Inception: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` in the torch hub cache.

Files in the torch hub cache are downloaded by torch on first use when the network is reachable. Offline
(``HF_HUB_OFFLINE=1`` / ``AVATAR_OFFLINE=1``) or on a network error a missing file raises
:class:`MissingWeightsError` naming the file, its URL and where to put it. Networks built with
``allow_random_weights=True`` fall back to a seeded random initialisation instead (results are flagged
``comparable=False``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor, nn

from avatar.errors import AssetNotFoundError
from avatar.hub.download import is_offline
from avatar.losses.weights import torch_hub_checkpoint_path

__all__ = [
    "MissingWeightsError",
    "fetch_weights",
    "is_offline",
    "missing_weights",
    "network_device",
    "seeded",
    "torch_hub_checkpoint_path",
    "torch_hub_state_dict",
]

T = TypeVar("T")
RANDOM_WEIGHTS_HINT = "for a smoke test pass allow_random_weights=True"

RANDOM_SEED = 0


class MissingWeightsError(AssetNotFoundError):
    """A metric network's weights are not available here (an :class:`~avatar.errors.AssetNotFoundError`, so also
    a ``FileNotFoundError``)."""


def missing_weights(load: Callable[[], T], what: str | None = None) -> T:
    """``load()``, with an :class:`~avatar.errors.AssetNotFoundError` (or ``FileNotFoundError``) of the asset layer
    turned into a :class:`MissingWeightsError` (prefixed with ``what``) that says how to run without the weights."""
    try:
        return load()
    except MissingWeightsError:
        raise
    except (AssetNotFoundError, FileNotFoundError) as exc:
        prefix = f"{what}: " if what and not str(exc).startswith(what) else ""
        raise MissingWeightsError(f"{prefix}{str(exc).rstrip('.')}; {RANDOM_WEIGHTS_HINT}") from exc


def torch_hub_state_dict(filename: str, url: str, what: str) -> dict[str, Tensor]:
    """Load ``filename`` from the torch hub cache, downloading it from ``url`` when online
    (:func:`avatar.losses.weights.torch_hub_state_dict`); missing: :class:`MissingWeightsError`."""
    from avatar.losses.weights import torch_hub_state_dict as load

    return missing_weights(lambda: load(filename, url, what))


@contextmanager
def seeded(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Run a block with a fixed CPU RNG seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fetch_weights(load: Callable[[], T], allow_random_weights: bool, what: str) -> T | None:
    """``load()``; when the weights are missing (:class:`MissingWeightsError`, or the asset layer's
    :class:`~avatar.errors.AssetNotFoundError`) return ``None`` (caller keeps a seeded random init) if
    ``allow_random_weights``, with a warning, else raise :class:`MissingWeightsError`."""
    try:
        return missing_weights(load, what)
    except MissingWeightsError as exc:
        if not allow_random_weights:
            raise
        warnings.warn(f"{what}: weights missing, running with RANDOM weights (not comparable): {exc}", stacklevel=3)
        return None


def network_device(module: nn.Module, fixed: torch.device | None, data: torch.device) -> torch.device:
    """The device a metric network runs on: ``fixed`` when given, else the data's (the module follows it)."""
    target = fixed or data
    param = next(iter(module.parameters()), None)
    if param is not None and param.device != target:
        module.to(target)
    return target
