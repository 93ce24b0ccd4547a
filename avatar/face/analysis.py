"""Batched face analysis: the fast path of :mod:`avatar.face` for many images on one device.

:class:`FaceAnalyzer` runs, on a whole ``(B, 3, H, W)`` batch: RetinaFace (largest face) -> FAN 68 landmarks from
the detector box -> Deep3DFaceRecon coefficients from the 224 crop fitted to five of those landmarks. Its result
(:class:`FaceBatch`) feeds every face metric of ``eval`` (CSIM, AKD, AED, APD) without running a network twice::

    fa = FaceAnalyzer.from_preprocessor(pipeline.preprocessor)       # or FaceAnalyzer.random(device)
    p, t = fa(pred), fa(target)
    csim.update(pred, target, pred_landmarks=p.landmarks, target_landmarks=t.landmarks)
    akd.update_landmarks(p.landmarks, t.landmarks)
    aed.update_coeffs(p.coefficients(), t.coefficients()); apd.update_coeffs(p.coefficients(), t.coefficients())

``fa.landmarks`` / ``fa.coefficients`` are also plain callables for the metrics' ``landmarks=`` / ``extractor=``.

Reference: the same networks image by image, as the preprocessing does it (:mod:`avatar.pipelines.preprocess`):
``RetinaFace.detect`` -> ``FAN3DLandmarker.landmarks_batch`` (x, y) -> ``avatar.face.deep3d.align_image`` ->
``Deep3DReconNet``. The steps are the public functions of those modules (:meth:`RetinaFace.to_network_input` and
:meth:`RetinaFace.postprocess_batch`, :func:`~avatar.face.fan3d.crop_params_from_box`,
:func:`~avatar.face.fan3d.decode_heatmaps`, :func:`~avatar.face.geometry.estimate_align_params`,
:func:`~avatar.face.deep3d.split_coefficients`); what differs, all for batching on the GPU from float images:

* detector input: resized with ``F.interpolate`` (bilinear, half-pixel centres, like OpenCV's ``INTER_LINEAR``)
  from float images instead of ``cv2.resize`` of uint8 (the same input up to float rounding when no resize is
  needed and the images hold uint8 levels, so the same boxes to ~1e-4 pixel);
* FAN crop: one bilinear affine warp of the official square (centre and scale of ``crop_params_from_box``, side
  ``CROP_BASE * scale``: the crop matrix the decoding inverts) instead of ``crop_face``, which copies the window
  between the truncated corners of that square and resizes it with ``cv2.resize``; the two crops are offset by
  less than ``side / 256 + 1`` source pixels (one to two crop pixels; a heatmap maximum moves only when it was
  within that of a cell border). The heatmaps are decoded as upstream and mapped back with the inverse crop
  matrix in one vectorised float64 step, truncated to integers like face_alignment's (``heatmap_to_image`` gives
  the same integers on the same heatmaps, up to the rounding of its pseudo-inverse);
* Deep3D crop: an antialiased bilinear resize + 224 window of the same :class:`~avatar.face.geometry.AlignParams`
  (PIL bilinear upstream: a few grey levels).

The networks are 3DFAN's FAN (x, y only; no depth network) standing in for face_alignment's 2D-FAN (same
architecture and cost) and the official Deep3DFaceRecon (``deep3d_2023``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.face.deep3d import DEEP3D_RESCALE_FACTOR, DEEP3D_TARGET_SIZE, Deep3DReconNet, split_coefficients
from avatar.face.fan3d import CROP_BASE, FAN, crop_params_from_box, decode_heatmaps
from avatar.face.geometry import BFM_FIVE_POINTS_3D, estimate_align_params, five_points_from_68, warp_affine
from avatar.face.retinaface import RetinaFace, rig_for_random_weights

__all__ = ["FaceAnalyzer", "FaceBatch", "FaceLandmarks"]

COEFF_DIMS: tuple[tuple[str, int], ...] = (("exp", 64), ("angle", 3), ("trans", 3))
"""The Deep3DFaceRecon coefficient groups a :class:`FaceBatch` keeps (what the expression / pose metrics use)."""


@dataclass
class FaceLandmarks:
    """``points`` ``(B, K, 2)`` in pixels; ``found`` ``(B,)`` bool (False: no face, the points are ignored)."""

    points: Tensor
    found: Tensor


@dataclass
class FaceBatch:
    """Per image: ``landmarks`` (68 points in input pixels + ``found``), ``coeffs`` (``exp`` ``(B, 64)``,
    ``angle`` ``(B, 3)``, ``trans`` ``(B, 3)``, float64; zeros where no face) and ``boxes`` ``(B, 4)``."""

    landmarks: FaceLandmarks
    coeffs: dict[str, Tensor]
    boxes: Tensor

    @property
    def found(self) -> Tensor:
        return self.landmarks.found

    def coefficients(self) -> dict[str, Tensor]:
        """The coefficient-extractor dict AED/APD take (with ``found``)."""
        return {**self.coeffs, "found": self.landmarks.found}


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class FaceAnalyzer:
    """Batched detector + landmarks + 3DMM coefficients (see the module docstring).

    Args:
        detector: RetinaFace; fan: the 68-point FAN; face_recon: Deep3DFaceRecon.
        min_face_size: faces whose box (mean of width and height, input pixels) is smaller count as not found.
        comparable: whether these are the official networks and weights (copied into the metric results).
        timings: when a dict is given, seconds per stage (``detect``, ``landmarks``, ``coeffs``) are added to it
            (with a device synchronisation per stage).
    """

    name = "RetinaFace + FAN-68 + Deep3DFaceRecon (batched)"

    def __init__(self, detector: RetinaFace, fan: FAN, face_recon: Deep3DReconNet, *, min_face_size: float = 0.0,
                 comparable: bool = False, timings: dict[str, float] | None = None) -> None:
        self.detector = detector.eval()
        self.fan = fan.eval()
        self.face_recon = face_recon.eval()
        self.min_face_size = min_face_size
        self.comparable = comparable
        self.timings = timings
        self.autocast: torch.dtype | None = None

    @classmethod
    def from_preprocessor(cls, pre: Any, **kwargs: Any) -> FaceAnalyzer:
        """The networks of a :class:`~avatar.pipelines.preprocess.FacePreprocessor` (its 3DFAN's FAN)."""
        kwargs.setdefault("min_face_size", float(getattr(pre, "min_face_size", 0.0)))
        return cls(pre.detector, pre.landmarker_3d.fan, pre.face_recon, **kwargs)

    @classmethod
    def random(cls, device: torch.device | str = "cpu", seed: int = 0, **kwargs: Any) -> FaceAnalyzer:
        """Official-size networks with random weights (for speed measurements: the cost does not depend on the
        weights). The detector's heads are set so that it reports faces of a realistic size (anchors of 256 px on
        its stride-32 level, at most 5 candidates per image, as a trained detector has around one face) instead of
        random boxes; everything else is the random network."""
        from avatar.face.fan3d import FANConfig

        torch.manual_seed(seed)
        det = rig_for_random_weights(RetinaFace(), level=2, anchor=0, top_k=5)  # 256 px faces, 5 candidates
        fan, recon = FAN(FANConfig()), Deep3DReconNet()
        out = cls(det, fan, recon, **kwargs)
        return out.to(device)

    def to(self, device: torch.device | str) -> FaceAnalyzer:
        for m in (self.detector, self.fan, self.face_recon):
            m.to(device)
        return self

    # ---- stages --------------------------------------------------------------------------------------
    def _tick(self, key: str, t0: float, device: torch.device) -> float:
        if self.timings is None:
            return t0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + now - t0
        return now

    def _autocast(self, device: torch.device) -> Any:
        return torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None)

    def detector_input(self, images: Tensor) -> tuple[Tensor, float]:
        """``(B, 3, H, W)`` in [0, 1] -> the detector's ``(B, 3, h, w)`` input (``h = target_height``, BGR minus
        the official mean, :meth:`RetinaFace.to_network_input`) and the resize factor ``h / H``."""
        _, _, H, W = images.shape
        ratio = self.detector.config.target_height / H
        h, w = self.detector.config.target_height, int(round(W * ratio))
        x = images.to(_device(self.detector)).float() * 255.0
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.detector.to_network_input(x.permute(0, 2, 3, 1)), ratio

    @torch.no_grad()
    def detect(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Largest face per image: boxes ``(B, 4)`` float64 (input pixels) and ``found`` ``(B,)``."""
        x, ratio = self.detector_input(images)
        with self._autocast(x.device):
            loc, scores, lms = self.detector(x)
        return self._largest_faces(loc, scores, lms, (x.shape[-2], x.shape[-1]), ratio)

    def _largest_faces(self, loc: Tensor, scores: Tensor, landmarks: Tensor, hw: tuple[int, int],
                       ratio: float) -> tuple[Tensor, Tensor]:
        """The largest face of each image (:meth:`RetinaFace.postprocess_batch`, the official steps with one copy
        to the CPU per batch): boxes ``(B, 4)`` float64 and ``found`` ``(B,)`` (a face of ``min_face_size``)."""
        faces = self.detector.postprocess_batch(loc, scores, landmarks, hw, [ratio] * loc.shape[0])
        boxes = torch.zeros(loc.shape[0], 4, dtype=torch.float64)
        found = torch.zeros(loc.shape[0], dtype=torch.bool)
        for i, image_faces in enumerate(faces):
            if image_faces and image_faces[0].size >= self.min_face_size:
                boxes[i] = torch.from_numpy(image_faces[0].box.astype(np.float64))
                found[i] = True
        return boxes, found

    def fan_crops(self, images: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The FAN input of each box: crops ``(N, 3, S, S)`` (one bilinear affine warp of the official square), and
        the crop centres ``(N, 2)`` and sides ``(N,)`` float64 in input pixels."""
        dev = _device(self.fan)
        res = self.fan.config.input_size
        params = [crop_params_from_box(b) for b in boxes.tolist()]  # float32 centre, as upstream
        center = torch.tensor(np.stack([c for c, _ in params]), dtype=torch.float64).reshape(-1, 2)
        size = CROP_BASE * torch.tensor([s for _, s in params], dtype=torch.float64)
        k = res / size
        m = torch.zeros(len(params), 2, 3, dtype=torch.float64)
        m[:, 0, 0] = m[:, 1, 1] = k
        m[:, :, 2] = (size[:, None] / 2 - center) * k[:, None]
        crops = warp_affine(images.to(dev).float(), m.to(dev), (res, res))
        return crops, center, size

    @torch.no_grad()
    def fan_landmarks(self, images: Tensor, boxes: Tensor) -> Tensor:
        """68 points ``(N, 68, 2)`` float64 in input pixels (integers, as face_alignment) from one box each."""
        crops, center, size = self.fan_crops(images, boxes)
        dev = crops.device
        with self._autocast(dev):
            heat = self.fan(crops)
        pts, _ = decode_heatmaps(heat.float())  # heatmap pixels
        scale = (size / heat.shape[-1]).to(dev)[:, None, None]
        origin = (center - size[:, None] / 2).to(dev)[:, None, :]
        return (pts.double() * scale + origin).trunc()

    def deep3d_crops(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """Deep3DFaceRecon's ``(N, 3, 224, 224)`` input in [0, 1]: the official fit of five of the 68 points
        (:func:`~avatar.face.geometry.estimate_align_params` with the plain BFM template), an antialiased bilinear
        resize and the 224 window (black outside)."""
        dev = _device(self.face_recon)
        S = DEEP3D_TARGET_SIZE
        H, W = images.shape[-2:]
        five = five_points_from_68(landmarks.cpu().numpy())
        crops = images.new_zeros(images.shape[0], 3, S, S, device=dev, dtype=torch.float32)
        for i in range(images.shape[0]):
            p = estimate_align_params(five[i], (W, H), S, DEEP3D_RESCALE_FACTOR, template=BFM_FIVE_POINTS_3D)
            w, h = p.resized_size
            left, top, _, _ = p.crop_box
            img = F.interpolate(images[i:i + 1].to(dev).float(), size=(max(h, 1), max(w, 1)), mode="bilinear",
                                antialias=p.scale < 1, align_corners=False)
            x0, y0 = max(left, 0), max(top, 0)
            x1, y1 = min(left + S, w), min(top + S, h)
            if x1 > x0 and y1 > y0:
                crops[i, :, y0 - top:y1 - top, x0 - left:x1 - left] = img[0, :, y0:y1, x0:x1]
        return crops

    @torch.no_grad()
    def deep3d(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """Deep3DFaceRecon coefficients ``exp``, ``angle``, ``trans`` (float64) from :meth:`deep3d_crops`."""
        crops = self.deep3d_crops(images, landmarks)
        with self._autocast(crops.device):
            coeffs = split_coefficients(self.face_recon(crops).float())
        return {k: coeffs[k].double() for k, _ in COEFF_DIMS}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> FaceBatch:
        """Analyse ``(B, 3, H, W)`` images in [0, 1]."""
        dev = _device(self.detector)
        t = time.perf_counter()
        boxes, found = self.detect(images)
        t = self._tick("detect", t, dev)
        B = images.shape[0]
        points = torch.full((B, 68, 2), float("nan"), dtype=torch.float64, device=dev)
        coeffs = {k: torch.zeros(B, n, dtype=torch.float64, device=dev) for k, n in COEFF_DIMS}
        idx = torch.nonzero(found).flatten()
        if idx.numel():
            sub = images[idx.to(images.device)]
            lm = self.fan_landmarks(sub, boxes[idx])
            points[idx.to(dev)] = lm.to(dev)
            t = self._tick("landmarks", t, dev)
            for k, v in self.deep3d(sub, lm).items():
                coeffs[k][idx.to(dev)] = v.to(dev)
            self._tick("coeffs", t, dev)
        return FaceBatch(FaceLandmarks(points, found.to(dev)), coeffs, boxes)

    def landmarks(self, images: Tensor) -> FaceLandmarks:
        """Landmark callable for CSIM / AKD."""
        return self(images).landmarks

    def coefficients(self, images: Tensor) -> Mapping[str, Tensor]:
        """Coefficient extractor for AED / APD."""
        return self(images).coefficients()
