"""Weights that come from the torch hub cache rather than the asset layer (torchvision's ImageNet trunks of LPIPS)."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar.errors import AssetNotFoundError

__all__ = ["TRUNKS", "torch_hub_checkpoint_path", "torch_hub_state_dict"]

TRUNKS: dict[str, dict[str, Any]] = {
    "alex": {"filename": "alexnet-owt-7be5be79.pth", "url": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"},
    "vgg": {"filename": "vgg16-397923af.pth", "url": "https://download.pytorch.org/models/vgg16-397923af.pth"},
}
"""The LPIPS trunks (:mod:`avatar.losses.lpips`; registered as ``lpips-alex`` / ``lpips-vgg``, the package's
``squeeze`` has no asset here): torchvision's ImageNet file and its URL."""


def torch_hub_checkpoint_path(filename: str) -> Path:
    """Where torch keeps ``filename``: ``$TORCH_HOME/hub/checkpoints/filename``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torch_hub_state_dict(filename: str, url: str, what: str, local_dir: str | Path | None = None) -> dict[str, Tensor]:
    """Load ``filename`` from ``local_dir`` (when given and holding it) or the torch hub cache, downloading it from
    ``url`` when online.

    Raises:
        AssetNotFoundError: missing offline (``HF_HUB_OFFLINE`` / ``AVATAR_OFFLINE``) or on a network error; the
            message names the file, its URL and where to put it.
    """
    from avatar.hub.download import is_offline

    if local_dir is not None and (Path(local_dir) / filename).is_file():
        return torch.load(Path(local_dir) / filename, map_location="cpu", weights_only=True)
    path = torch_hub_checkpoint_path(filename)
    how = (f"{what} needs '{filename}' in the torch hub cache ({path}). Download {url} on a machine with "
           f"network access and put it there (or set TORCH_HOME to a folder holding hub/checkpoints/{filename})")
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if is_offline():
        raise AssetNotFoundError(how + " (offline mode is on).")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except (urllib.error.URLError, OSError, TimeoutError, RuntimeError) as exc:
        raise AssetNotFoundError(how + f" (download failed: {exc}).") from exc
