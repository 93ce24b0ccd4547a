"""Foreground mattes of aligned crops, from either backend: MODNet (research weights, ``avatar.face.modnet``) or
MediaPipe's selfie segmentation (weights inside the ``mediapipe`` wheel). Used by ``eval.prepare`` (background
removal) and ``train.prepare`` (the training segs).

Both backends share MODNet's interface: ``matte(images)`` with ``images`` ``(B, 3, H, W)`` float in ``[0, 1]``
-> ``(B, 1, H, W)`` float matte in ``[0, 1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import InputError

__all__ = ["MATTING_BACKENDS", "MediaPipeMatting", "load_matting", "load_modnet", "mattes_uint8"]

MATTING_BACKENDS = ("modnet", "mediapipe")


class MediaPipeMatting:
    """MediaPipe's selfie segmentation behind MODNet's ``matte`` interface (module docstring)."""

    def __init__(self) -> None:
        from avatar.face.mediapipe_face import MediaPipeFaceBackend

        self.backend = MediaPipeFaceBackend(mesh=False)

    def matte(self, images: Any) -> Any:
        import torch

        uint8 = images.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return torch.from_numpy(np.stack([self.backend.matte(im) for im in uint8]))[:, None]


def load_modnet(model: str | None, checkpoint: str | Path | None, device: str) -> tuple[Any, str]:
    """MODNet and where its weights came from: ``checkpoint``, else ``<model>/modnet``, else the cache.
    Raises :class:`FileNotFoundError` (the caller says what to do) when none has them."""
    from avatar.face.modnet import MODNet

    if checkpoint is not None:
        return MODNet.from_pretrained(checkpoint, device=device), str(checkpoint)
    if model and (Path(model) / "modnet").is_dir():
        folder = Path(model) / "modnet"
        return MODNet.from_pretrained(folder, device=device), str(folder)
    return MODNet.from_pretrained(device=device), "modnet-photographic (cache)"


def load_matting(backend: str, model: str | None = None, checkpoint: str | Path | None = None,
                 device: str = "cpu") -> tuple[Any, str]:
    """The matting network of ``backend`` (``modnet`` or ``mediapipe``) and where it came from."""
    if backend not in MATTING_BACKENDS:
        raise InputError(f"matting must be one of {MATTING_BACKENDS}, got {backend!r}")
    if backend == "mediapipe":
        return MediaPipeMatting(), "mediapipe selfie segmentation"
    return load_modnet(model, checkpoint, device)


def mattes_uint8(net: Any, crops: list[np.ndarray]) -> list[np.ndarray]:
    """``(H, W, 3)`` uint8 RGB crops -> ``(H, W)`` uint8 mattes (0 background, 255 foreground)."""
    if not crops:
        return []
    import torch

    with torch.no_grad():
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
        mattes = net.matte(images)[:, 0].float().cpu().numpy()
    return [np.clip(np.rint(m * 255), 0, 255).astype(np.uint8) for m in mattes]
