"""``avatar export AVATAR_DIR --ply OUT.ply``: a fitted GPHM avatar's Gaussians as a standard 3D Gaussian
Splatting PLY (:mod:`avatar.export.ply`), which SuperSplat, the ``splat`` viewer and other 3DGS tools open.

What is written: the avatar's Gaussians at its **neutral expression** (the training frames' median expression
input through the avatar's expression MLP, and the non-face code of the training frames' mean head pose:
:meth:`~avatar.fitting.gphm_fit.FittedGPHMAvatar.neutral_gaussians`), so the dynamic network's colour, scale
and opacity changes for that expression are included.

* **Frame** (``frame``): ``"world"`` (default) - metres in MediaPipe's canonical face frame, the world of the
  avatar's poses (``x`` to the subject's left, ``y`` up, ``z`` out of the face; origin on the face's midline
  about 7.5 cm behind the nose tip): canonical means ``x 0.25 + (0, 0.018, -0.024)``, scales ``x 0.25``,
  rotations unchanged (the map has no rotation). ``"canonical"``: GPHM's canonical units as stored (the head
  about 1 unit long, centred near the origin, same axes).
* **Colour**: the first 3 of the 32 feature channels are RGB in ``[-1, 1]`` (what the renderer's raw image,
  ``image_raw``, shows before the refine network); written as ``(c + 1) / 2`` clipped to ``[0, 1]``, as
  degree-0 SH. The refine network's sharpening and shading are not in the file, so viewers show the raw
  splats, a little softer than ``avatar reenact``'s frames.
* **Extra features** (``extra_features=True``): the other channels (29 of 32) as ``f_extra_0 ..``, raw; tools
  that read properties by name skip them, the SIBR viewer does not (leave them out for SIBR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar.errors import InputError

__all__ = ["FRAMES", "export_gphm_ply", "gphm_gaussians"]

FRAMES = ("world", "canonical")


@torch.no_grad()
def gphm_gaussians(avatar: Any, *, frame: str = "world") -> dict[str, np.ndarray]:
    """The neutral Gaussians of a :class:`~avatar.fitting.gphm_fit.FittedGPHMAvatar` as float64 numpy arrays:
    ``means (N, 3)``, ``quats (N, 4)`` (wxyz), ``scales (N, 3)``, ``opacities (N,)``, ``colors (N, 3)`` in
    ``[0, 1]`` and ``features (N, C - 3)`` (module docstring)."""
    if frame not in FRAMES:
        raise InputError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    g = avatar.neutral_gaussians()
    means, scales = g.means[0].double().cpu(), g.scales[0].double().cpu()
    if frame == "world":
        sim = avatar.canonical_to_world().double()
        lin = sim[:3, :3]
        scale = float(torch.linalg.det(lin).abs() ** (1.0 / 3.0))
        if not torch.allclose(lin, torch.eye(3, dtype=lin.dtype) * scale, atol=1e-9):  # pragma: no cover - fixed map
            raise InputError("the canonical -> world map has a rotation; only a scale and a shift are supported")
        means = means * scale + sim[:3, 3]
        scales = scales * scale
    features = g.features[0].double().cpu()
    return {
        "means": means.numpy(), "quats": g.quats[0].double().cpu().numpy(), "scales": scales.numpy(),
        "opacities": g.opacities[0].double().cpu().clamp(0.0, 1.0).numpy(),
        "colors": ((features[:, :3] + 1.0) / 2.0).clamp(0.0, 1.0).numpy(), "features": features[:, 3:].numpy(),
    }


def export_gphm_ply(avatar: Any, out: str | Path, *, frame: str = "world", extra_features: bool = False,
                    device: str | torch.device = "cpu") -> Path:
    """Write the neutral Gaussians of a fitted GPHM avatar (its folder or a loaded
    :class:`~avatar.fitting.gphm_fit.FittedGPHMAvatar`) to ``out`` as a 3DGS PLY (module docstring); returns the
    path."""
    from avatar.export.ply import write_gaussian_ply
    from avatar.fitting.gphm_fit import FittedGPHMAvatar, load_gphm_avatar

    if not isinstance(avatar, FittedGPHMAvatar):
        avatar = load_gphm_avatar(avatar, device=device)
    g = gphm_gaussians(avatar, frame=frame)
    extra = g["features"] if extra_features and g["features"].shape[1] else None
    return write_gaussian_ply(out, g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                              extra_features=extra)
