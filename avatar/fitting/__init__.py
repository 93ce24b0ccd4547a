"""Fitting a person-specific avatar to a monocular video (GPHM section 3.5).

* :mod:`.video_data` - a talking-head video -> per-frame training data with the mediapipe backend: the fixed
  head crop, matte, 478 mesh landmarks, head pose in an OpenCV camera with fixed intrinsics and the expression
  input, stored in resumable chunks (:func:`prepare_video`, :class:`PreparedVideo`)
* :mod:`.gphm_fit` - a person's GPHM Gaussian head avatar fitted to a prepared video, resumably, within a time
  budget (:func:`fit_gphm_avatar`, :class:`FitConfig`, :class:`FitResult`), read back and rendered
  (:func:`load_gphm_avatar`, :class:`FittedGPHMAvatar`, :func:`render_frames`); :func:`is_gphm_avatar_dir`
  tells an avatar folder
* :mod:`.driving` - a driving video -> per-frame expression input and head pose, without storing crops
  (:func:`extract_driving_signals`, :class:`DrivingSignals`, :func:`map_to_avatar`)
* :mod:`.reenact` - ``avatar reenact AVATAR_DIR DRIVING.mp4``: a fitted avatar driven by a video, with the
  driving audio (:func:`reenact_video`)

Names are imported on first use (the video preparation imports torch, OpenCV and, when run, mediapipe).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"PreparedVideo": "video_data", "prepare_video": "video_data", "FitConfig": "gphm_fit",
          "FitResult": "gphm_fit", "FittedGPHMAvatar": "gphm_fit", "fit_gphm_avatar": "gphm_fit",
          "load_gphm_avatar": "gphm_fit", "render_frames": "gphm_fit", "is_gphm_avatar_dir": "gphm_fit",
          "DrivingSignals": "driving", "extract_driving_signals": "driving", "map_to_avatar": "driving",
          "ReenactResult": "reenact", "reenact_video": "reenact"}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
