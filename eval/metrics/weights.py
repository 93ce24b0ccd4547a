"""Where the metric networks' weights come from, and the clear error when they are missing.

* ArcFace (CSIM): the toolkit's asset layer (:func:`avatar.hub.download.ensure_file`, key ``arcface-r18``).
* LPIPS linear heads: the ``lpips`` package's bundled ``weights/v0.1/<net>.pth`` (or the asset layer's
  ``lpips-<net>`` when the package is absent); LPIPS trunks (AlexNet / VGG16 ImageNet weights): torchvision's
  files in the torch hub cache (``$TORCH_HOME/hub/checkpoints``).
* FID Inception: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` in the torch hub cache.

Files in the torch hub cache are downloaded by torch on first use when the network is reachable. Offline
(``HF_HUB_OFFLINE=1`` / ``AVATAR_OFFLINE=1``) or on a network error a missing file raises
:class:`MissingWeightsError` naming the file, its URL and where to put it. Networks built with
``allow_random_weights=True`` fall back to a seeded random initialisation instead (results are flagged
``comparable=False``).
"""

from __future__ import annotations

import importlib.util
import urllib.error
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from avatar.hub.download import is_offline

__all__ = [
    "MissingWeightsError",
    "asset_state_dict",
    "is_offline",
    "fetch_weights",
    "lpips_package_weights",
    "network_device",
    "seeded",
    "torch_hub_state_dict",
]

RANDOM_SEED = 0


class MissingWeightsError(FileNotFoundError):
    """A metric network's weights are not available here."""


def torch_hub_checkpoint_path(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torch_hub_state_dict(filename: str, url: str, what: str) -> dict[str, Tensor]:
    """Load ``filename`` from the torch hub cache, downloading it from ``url`` when online."""
    path = torch_hub_checkpoint_path(filename)
    how = (f"{what} needs '{filename}' in the torch hub cache ({path}). Download {url} on a machine with "
           f"network access and put it there (or set TORCH_HOME to a folder holding hub/checkpoints/{filename}); "
           "for a smoke test pass allow_random_weights=True")
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if is_offline():
        raise MissingWeightsError(how + " (offline mode is on)")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except (urllib.error.URLError, OSError, TimeoutError, RuntimeError) as exc:
        raise MissingWeightsError(how + f" (download failed: {exc})") from exc


def asset_state_dict(key: str, what: str) -> dict[str, Tensor]:
    """Tensors of the converted upstream file ``key`` from the asset layer (fetched when online)."""
    from avatar.hub.download import AssetNotFoundError, ensure_file

    try:
        folder = ensure_file(key)
    except AssetNotFoundError as exc:
        raise MissingWeightsError(f"{what}: {exc} For a smoke test pass allow_random_weights=True.") from exc
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise MissingWeightsError(f"{what}: expected one .safetensors file in {folder}, found {len(files)}")
    from safetensors.torch import load_file

    return load_file(str(files[0]))


def lpips_package_weights(net: str) -> Path | None:
    """Path of the ``lpips`` package's bundled v0.1 linear-head weights for ``net``, or ``None``."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


@contextmanager
def seeded(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Run a block with a fixed CPU RNG seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fetch_weights(
    load: Callable[[], dict[str, Tensor]], allow_random_weights: bool, what: str
) -> dict[str, Tensor] | None:
    """``load()``; on :class:`MissingWeightsError` return ``None`` (caller keeps a seeded random init) when
    ``allow_random_weights``, with a warning, else re-raise."""
    try:
        return load()
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
