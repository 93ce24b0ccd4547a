"""One batched face analysis per image, shared by CSIM, AKD, AED and APD.

:class:`FaceAnalyzer` runs, on a whole ``(B, 3, H, W)`` batch on one device: RetinaFace (largest face) -> FAN 68
landmarks from the detector box -> Deep3DFaceRecon coefficients from the 224 crop fitted to five of those
landmarks. Its result (:class:`FaceBatch`) feeds every face metric without running a network twice::

    fa = FaceAnalyzer.from_preprocessor(pipeline.preprocessor)       # or FaceAnalyzer.random(device)
    p, t = fa(pred), fa(target)
    csim.update(pred, target, pred_landmarks=p.landmarks, target_landmarks=t.landmarks)
    akd.update_landmarks(p.landmarks, t.landmarks)
    aed.update_coeffs(p.coefficients(), t.coefficients()); apd.update_coeffs(p.coefficients(), t.coefficients())

``fa.landmarks`` / ``fa.coefficients`` are also plain callables for the metrics' ``landmarks=`` / ``extractor=``.

Differences from running the preprocessing image by image (``avatar.pipelines.preprocess``), all for batching on
the GPU: the detector input is resized with ``F.interpolate`` (bilinear, half-pixel centres, like OpenCV's
``INTER_LINEAR`` used upstream) from float images instead of ``cv2.resize`` of uint8; the FAN crop is one bilinear
affine warp of the same square (``crop_face``'s integer corners are not reproduced: sub-pixel shifts); landmarks
are truncated to integers like face_alignment's; the Deep3D crop is an antialiased bilinear resize + 224 window
(PIL bilinear upstream). The networks are 3DFAN's FAN (x, y only; no depth network) standing in for
face_alignment's 2D-FAN (same architecture and cost) and the official Deep3DFaceRecon (``deep3d_2023``).
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
from avatar.face.fan3d import CENTER_SHIFT, CROP_BASE, FAN, REFERENCE_SCALE, decode_heatmaps
from avatar.face.geometry import BFM_FIVE_POINTS_3D, estimate_align_params, five_points_from_68, warp_affine
from avatar.face.retinaface import RetinaFace, rig_for_random_weights

from .face import FaceLandmarks

__all__ = ["FaceAnalyzer", "FaceBatch"]


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

    @torch.no_grad()
    def detect(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Largest face per image: boxes ``(B, 4)`` float64 (input pixels) and ``found`` ``(B,)``."""
        cfg = self.detector.config
        B, _, H, W = images.shape
        ratio = cfg.target_height / H
        h, w = cfg.target_height, int(round(W * ratio))
        x = images.to(_device(self.detector)).float() * 255.0
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        mean = torch.tensor(cfg.mean_bgr, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
        x = x.flip(1) - mean
        with self._autocast(x.device):
            loc, scores, lms = self.detector(x)
        return self._largest_faces(loc, scores, lms, (h, w), ratio)

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

    @torch.no_grad()
    def fan_landmarks(self, images: Tensor, boxes: Tensor) -> Tensor:
        """68 points ``(N, 68, 2)`` float64 in input pixels (integers, as face_alignment) from one box each."""
        dev = _device(self.fan)
        res = self.fan.config.input_size
        b = boxes.to(torch.float64)
        cx = b[:, 2] - (b[:, 2] - b[:, 0]) / 2
        cy = b[:, 3] - (b[:, 3] - b[:, 1]) / 2 - (b[:, 3] - b[:, 1]) * CENTER_SHIFT
        size = CROP_BASE * (b[:, 2] - b[:, 0] + b[:, 3] - b[:, 1]) / REFERENCE_SCALE
        k = res / size
        m = torch.zeros(b.shape[0], 2, 3, dtype=torch.float64)
        m[:, 0, 0] = m[:, 1, 1] = k
        m[:, 0, 2] = (size / 2 - cx) * k
        m[:, 1, 2] = (size / 2 - cy) * k
        crops = warp_affine(images.to(dev).float(), m.to(dev), (res, res))
        with self._autocast(dev):
            heat = self.fan(crops)
        pts, _ = decode_heatmaps(heat.float())  # heatmap pixels
        hm = heat.shape[-1]
        scale = (size / hm).to(dev)[:, None, None]
        origin = torch.stack([cx - size / 2, cy - size / 2], 1).to(dev)[:, None, :]
        return (pts.double() * scale + origin).trunc()

    @torch.no_grad()
    def deep3d(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """Deep3DFaceRecon coefficients from the official 224 fit of five of the 68 points."""
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
        with self._autocast(dev):
            coeffs = split_coefficients(self.face_recon(crops).float())
        return {k: coeffs[k].double() for k in ("exp", "angle", "trans")}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> FaceBatch:
        """Analyse ``(B, 3, H, W)`` images in [0, 1]."""
        dev = _device(self.detector)
        t = time.perf_counter()
        boxes, found = self.detect(images)
        t = self._tick("detect", t, dev)
        B = images.shape[0]
        points = torch.full((B, 68, 2), float("nan"), dtype=torch.float64, device=dev)
        coeffs = {k: torch.zeros(B, n, dtype=torch.float64, device=dev) for k, n in (("exp", 64), ("angle", 3),
                                                                                     ("trans", 3))}
        idx = torch.nonzero(found).flatten()
        if idx.numel():
            sub = images[idx.to(images.device)]
            lm = self.fan_landmarks(sub, boxes[idx])
            points[idx.to(dev)] = lm
            t = self._tick("landmarks", t, dev)
            for k, v in self.deep3d(sub, lm).items():
                coeffs[k][idx.to(dev)] = v
            self._tick("coeffs", t, dev)
        return FaceBatch(FaceLandmarks(points, found.to(dev)), coeffs, boxes)

    def landmarks(self, images: Tensor) -> FaceLandmarks:
        """Landmark callable for CSIM / AKD."""
        return self(images).landmarks

    def coefficients(self, images: Tensor) -> Mapping[str, Tensor]:
        """Coefficient extractor for AED / APD."""
        return self(images).coefficients()
