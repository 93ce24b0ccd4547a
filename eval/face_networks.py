"""The face networks the CSIM / AKD / AED / APD metrics need, built from :mod:`avatar.face`.

The prepared frames are 512 Portrait4D crops (``DATA`` and every method's outputs), so the face box is the
fixed box of that crop (:data:`avatar.pipelines.preprocess.ALIGNED_FACE_BOX`, scaled to the image size) rather
than a detection:

* landmarks: 3DFAN (``fan3d-landmarks`` + ``fan3d-depth``), x and y of its 68 points, in image pixels;
* coefficients: Deep3DFaceRecon (``deep3d-recon``, the 2023 weights GOHA used) on the official 224 crop
  (:func:`avatar.face.deep3d.align_image`) fitted to five points of those landmarks.

These are not face_alignment's 2D-FAN with the SFD detector used by OTAvatar/GOHA for AKD, so AKD is flagged
not comparable (``comparable = False``); the coefficient extractor is declared comparable only with the official
Deep3DFaceRecon weights. Missing weights raise :class:`eval.metrics.MissingWeightsError` unless
``allow_random_weights`` (seeded random init, flagged not comparable).

Within a batch the same image tensor is analysed once (CSIM, AKD, AED and APD all ask): call :meth:`clear`
between batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .metrics import MissingWeightsError
from .metrics.face import FaceLandmarks, as_landmarks

__all__ = ["Deep3DCoefficients", "FaceNetworks", "FixedBoxLandmarks", "build_face_networks"]


def _uint8(images: Tensor) -> np.ndarray:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class _Memo:
    def __init__(self) -> None:
        self._memo: dict[tuple, Any] = {}

    def clear(self) -> None:
        self._memo.clear()

    def get(self, x: Tensor, fn: Any) -> Any:
        key = (id(x), x.data_ptr(), tuple(x.shape))
        if key not in self._memo:
            self._memo[key] = (x, fn(x))  # keep x alive so its id is not reused within the batch
        return self._memo[key][1]


class FixedBoxLandmarks:
    """68 landmarks ``(B, 68, 2)`` of 512-crop-like images: 3DFAN on the fixed aligned-crop face box."""

    comparable = False

    def __init__(self, landmarker: nn.Module, weights: str) -> None:
        self.landmarker = landmarker
        self.name = f"3DFAN (x, y) on the fixed box of the aligned 512 crop, {weights} weights"
        self.memo = _Memo()

    def _run(self, images: Tensor) -> FaceLandmarks:
        from avatar.pipelines.preprocess import ALIGNED_FACE_BOX

        arrays = _uint8(images)
        H, W = arrays.shape[1:3]
        box = np.asarray(ALIGNED_FACE_BOX, dtype=np.float64) * np.array([W / 512, H / 512, W / 512, H / 512])
        points = self.landmarker.landmarks_batch(list(arrays), [[box]] * len(arrays))
        pts = torch.from_numpy(np.stack([p[0, :, :2] for p in points]).astype(np.float64))
        return as_landmarks(FaceLandmarks(pts, torch.isfinite(pts).flatten(1).all(1)), len(arrays))

    def __call__(self, images: Tensor) -> FaceLandmarks:
        return self.memo.get(images, self._run)


class Deep3DCoefficients:
    """``{"exp", "angle", "trans", "found"}`` of Deep3DFaceRecon on the 224 crop fitted to the landmarks."""

    def __init__(self, net: nn.Module, landmarks: FixedBoxLandmarks, official: bool) -> None:
        self.net = net
        self.landmarks = landmarks
        self.comparable = official
        self.name = (f"Deep3DFaceRecon ({'official deep3d-recon' if official else 'random'} weights), 224 crop "
                     "from five points of 3DFAN landmarks")
        self.memo = _Memo()

    @torch.no_grad()
    def _run(self, images: Tensor) -> dict[str, Tensor]:
        from avatar.face.deep3d import align_image, split_coefficients, to_input

        lm = self.landmarks(images)
        arrays = _uint8(images)
        crops = []
        for i, arr in enumerate(arrays):
            if bool(lm.found[i]):
                crops.append(to_input(align_image(arr, lm.points[i].numpy()).image))
            else:
                crops.append(torch.zeros(1, 3, 224, 224))
        device = next(self.net.parameters()).device
        coeffs = split_coefficients(self.net(torch.cat(crops).to(device)).float())
        return {"exp": coeffs["exp"].cpu(), "angle": coeffs["angle"].cpu(), "trans": coeffs["trans"].cpu(),
                "found": lm.found.cpu()}

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        return self.memo.get(images, self._run)


@dataclass
class FaceNetworks:
    landmarks: Any
    coefficients: Any

    def clear(self) -> None:
        for fn in (self.landmarks, self.coefficients):
            memo = getattr(fn, "memo", None)
            if memo is not None:
                memo.clear()


def _load(builder: Any, fallback: Any, allow_random_weights: bool, what: str) -> tuple[nn.Module, bool]:
    try:
        return builder(), True
    except Exception as err:  # missing asset: AssetNotFoundError / FileNotFoundError from avatar.hub
        if not allow_random_weights:
            raise MissingWeightsError(f"{what}: official weights not found ({err}); install them or pass "
                                      "--allow-random-weights (results are then NOT COMPARABLE)") from err
        torch.manual_seed(0)
        return fallback().eval(), False


def build_face_networks(device: torch.device | str = "cpu", allow_random_weights: bool = False,
                        need_coefficients: bool = True) -> FaceNetworks:
    """3DFAN landmarks and (when ``need_coefficients``) the Deep3DFaceRecon extractor on ``device``."""
    from avatar.face.deep3d import Deep3DReconNet
    from avatar.face.fan3d import FAN3DLandmarker

    fan, fan_ok = _load(lambda: FAN3DLandmarker.from_pretrained(device=device), FAN3DLandmarker,
                        allow_random_weights, "3DFAN landmarks")
    landmarks = FixedBoxLandmarks(fan.to(device), "official" if fan_ok else "random")
    coefficients = None
    if need_coefficients:
        net, ok = _load(lambda: Deep3DReconNet.from_pretrained(device=device), Deep3DReconNet,
                        allow_random_weights, "Deep3DFaceRecon")
        coefficients = Deep3DCoefficients(net.to(device), landmarks, ok and fan_ok)
    return FaceNetworks(landmarks, coefficients)
