"""The official Portrait4D preprocessing of one photo or video frame, as a chain of our networks.

Per image (``data_preprocess/lib/inferencer.py``): RetinaFace box (largest face) -> H3R 98 WFLW points (crop 1.5x
the box) and 3DFAN 68 3D points (on the box) -> the 512 crop from five of the 98 points
(:func:`avatar.face.geometry.estimate_align_params`) with both point sets mapped into it; Deep3DFaceRecon on its
own 224 crop of the source image -> BFM->FLAME mapper -> the 437-float FLAME label (camera, shape,
expression, neck + jaw pose); PD-FGC's 548-d motion from the 512 crop and its 68 points.

For video every frame is detected (batched) rather than tracked from the previous landmarks as upstream does, so
that a frame without a face is recognised as such; the crop can be one-euro smoothed (upstream ``use_smooth``).

Two backends find the face and its five alignment points (:data:`PREPROCESS_BACKENDS`):

* ``'official'``: RetinaFace boxes and H3R's 98 WFLW points (research weights, downloaded);
* ``'mediapipe'``: MediaPipe's full-range detector and 478-point mesh with iris
  (:mod:`avatar.face.mediapipe_face`, real weights inside the ``mediapipe`` wheel); the five points come from
  the mesh. 3DFAN, Deep3DFaceRecon, the BFM->FLAME mapper and PD-FGC run the same on both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import ConfigError, InputError
from avatar.face.bfm2flame import BFM2FLAMEMapper, flame_label
from avatar.face.deep3d import Deep3DReconNet, align_image, split_coefficients, to_input
from avatar.face.fan3d import FAN3DLandmarker
from avatar.face.geometry import (
    AlignParams,
    estimate_align_params,
    five_points_from_wflw98,
    transform_landmarks,
    warp_to_aligned,
)
from avatar.face.h3r import H3R, H3RLandmarker
from avatar.face.mediapipe_face import MediaPipeFaceBackend
from avatar.face.retinaface import DetectedFace, RetinaFace
from avatar.face.smoothing import CROP_SCALE_FILTER, CROP_TRANSLATION_FILTER, OneEuroFilter
from avatar.motion.pdfgc import PDFGCEncoder

__all__ = ["ALIGNED_FACE_BOX", "PREPROCESS_BACKENDS", "CropSmoother", "FaceAnalysis", "FacePreprocessor", "align_crop",
           "crop_to_model_input"]

logger = logging.getLogger(__name__)

ALIGNED_FACE_BOX: tuple[float, float, float, float] = (127.0, 190.0, 380.0, 432.0)
"""Tight box ``x1, y1, x2, y2`` of the 98 landmarks in an official 512 crop (mean over the 32 official aligned
examples). Used instead of a detection for photos that are already aligned; upstream passes such landmark
boxes to H3R (crop 1.8x) and 3DFAN when it tracks a face through a video."""
ALIGNED_BOX_RATIO = 1.8

PREPROCESS_BACKENDS: tuple[str, ...] = ("official", "mediapipe")
"""The face backends a preprocessor can use (module docstring)."""


@dataclass
class FaceAnalysis:
    """Everything the reconstructor needs from one image.

    Attributes:
        crop: ``(512, 512, 3)`` uint8, the official aligned crop.
        align: the crop of the source image (``None`` when the input was already aligned).
        box: ``(4,)`` face box in source pixels.
        landmarks: the points the crop was fitted from, in crop pixels: ``(98, 2)`` WFLW points (official backend)
            or the ``(478, 2)`` MediaPipe mesh (mediapipe backend).
        landmarks_3d: ``(68, 2)`` 3DFAN points (x, y) in crop pixels: the PD-FGC crop is built from them.
        label: ``(437,)`` float32 FLAME label: camera 25, shape 300, expression 100, pose 6, eye pose 6.
    """

    crop: np.ndarray
    align: AlignParams | None
    box: np.ndarray
    landmarks: np.ndarray
    landmarks_3d: np.ndarray
    label: Tensor


class CropSmoother:
    """One-euro filter of consecutive crops (translation and scale), the official ``use_smooth`` filters."""

    def __init__(self) -> None:
        self.translation = OneEuroFilter.from_params(CROP_TRANSLATION_FILTER)
        self.scale = OneEuroFilter.from_params(CROP_SCALE_FILTER)

    def __call__(self, params: AlignParams) -> AlignParams:
        t = self.translation(np.array([params.tx, params.ty]))
        s = float(self.scale(np.array(params.scale)))
        return replace(params, tx=float(t[0]), ty=float(t[1]), scale=s)


def align_crop(image: np.ndarray, landmarks: np.ndarray, smoother: CropSmoother | None = None,
               size: int = 512) -> tuple[AlignParams, np.ndarray]:
    """The official aligned crop of one face: the similarity fit of its five alignment points
    (:func:`~avatar.face.geometry.estimate_align_params`), optionally one-euro smoothed across video frames, and
    the ``(size, size, 3)`` uint8 warp. ``landmarks``: ``(98, 2)`` WFLW points or the ``(5, 2)`` points."""
    five = five_points_from_wflw98(landmarks) if len(landmarks) == 98 else np.asarray(landmarks, np.float64)
    params = estimate_align_params(five, (image.shape[1], image.shape[0]), target_size=size)
    if smoother is not None:
        params = smoother(params)
    return params, np.asarray(warp_to_aligned(image, params))


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


class FacePreprocessor:
    """Detector, landmarks, 3DMM, BFM->FLAME and motion networks chained as the official preprocessing.

    Args:
        detector: RetinaFace (``'official'`` backend) or a :class:`~avatar.face.mediapipe_face.MediaPipeFaceBackend`
            (``'mediapipe'``: it also gives the five alignment points, so no H3R is needed).
        landmarker: H3R 98-point landmarker (``None`` with the mediapipe backend).
        landmarker_3d: 3DFAN 68-point landmarker.
        face_recon: Deep3DFaceRecon coefficient regressor.
        bfm2flame: BFM -> FLAME mapper.
        motion_encoder: PD-FGC (``None`` for the static model: no motion needed).
        min_face_size: faces whose box (mean of width and height) is smaller, in source pixels, are refused.
    """

    def __init__(self, detector: RetinaFace | MediaPipeFaceBackend, landmarker: H3RLandmarker | None,
                 landmarker_3d: FAN3DLandmarker, face_recon: Deep3DReconNet, bfm2flame: BFM2FLAMEMapper,
                 motion_encoder: PDFGCEncoder | None, min_face_size: float = 40.0) -> None:
        if isinstance(detector, RetinaFace) and landmarker is None:
            raise ConfigError("the official preprocessing needs the H3R landmarker beside RetinaFace")
        self.detector = detector
        self.landmarker = landmarker
        self.landmarker_3d = landmarker_3d
        self.face_recon = face_recon
        self.bfm2flame = bfm2flame
        self.motion_encoder = motion_encoder
        self.min_face_size = min_face_size
        for module in self.modules().values():  # inference only: batch norms use their running statistics
            if module is not None:
                module.eval()

    @classmethod
    def from_pretrained(cls, preprocess: str = "official", motion: bool = True,
                        local_dir: str | Path | None = None) -> FacePreprocessor:
        """The official preprocessing networks from the asset cache (``avatar download`` fetches them).

        Args:
            preprocess: ``'official'`` (RetinaFace + H3R) or ``'mediapipe'`` (MediaPipe's detector and mesh).
            motion: load PD-FGC too (the static model and GenHead need no motion).
            local_dir: take the upstream files from this folder instead of the network.
        """
        if preprocess not in PREPROCESS_BACKENDS:
            raise InputError(f"preprocess must be one of {', '.join(PREPROCESS_BACKENDS)}, got {preprocess!r}")
        mediapipe = preprocess == "mediapipe"
        return cls(
            MediaPipeFaceBackend() if mediapipe else RetinaFace.from_pretrained(local_dir=local_dir),
            None if mediapipe else H3RLandmarker(H3R.from_pretrained(local_dir=local_dir)),
            FAN3DLandmarker.from_pretrained(local_dir=local_dir),
            Deep3DReconNet.from_pretrained(local_dir=local_dir),
            BFM2FLAMEMapper.from_pretrained(local_dir=local_dir),
            PDFGCEncoder.from_pretrained(local_dir=local_dir) if motion else None,
        )

    @property
    def backend(self) -> str:
        """``'official'`` or ``'mediapipe'``: what finds the faces and their alignment points."""
        return "mediapipe" if isinstance(self.detector, MediaPipeFaceBackend) else "official"

    def modules(self) -> dict[str, nn.Module | None]:
        """The networks (the MediaPipe backend holds no PyTorch weights and is not listed)."""
        detector = self.detector if isinstance(self.detector, nn.Module) else None
        landmarker = self.landmarker.net if self.landmarker is not None else None
        return {"detector": detector, "landmarker": landmarker, "landmarker_3d": self.landmarker_3d,
                "face_recon": self.face_recon, "bfm2flame": self.bfm2flame, "motion_encoder": self.motion_encoder}

    def to(self, device: torch.device | str) -> FacePreprocessor:
        for m in self.modules().values():
            if m is not None:
                m.to(device)
        return self

    # ---- detection -------------------------------------------------------------------------------------
    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces of each image, largest first (batched when the images have one size, e.g. video frames)."""
        return self.detector.detect_batch(images)

    def alignment_points(self, images: list[np.ndarray], faces: list[DetectedFace], aligned: bool = False,
                         ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The five alignment points ``(5, 2)`` and the landmarks they come from (``(98, 2)`` WFLW or the
        ``(478, 2)`` mesh) of one face per image, in source pixels."""
        if self.backend == "mediapipe":
            for face in faces:
                if face.mesh is None:
                    raise InputError("the mediapipe backend needs faces detected with their mesh "
                                     "(MediaPipeFaceBackend(mesh=True))")
            return ([np.asarray(f.landmarks, np.float64) for f in faces],
                    [np.asarray(f.mesh, np.float32)[:, :2] for f in faces])  # type: ignore[index]
        assert self.landmarker is not None
        ratio = ALIGNED_BOX_RATIO if aligned else None
        lm98 = [lm[0] for lm in self.landmarker.landmarks_batch(images, [[f.box] for f in faces], box_ratio=ratio)]
        return [five_points_from_wflw98(lm) for lm in lm98], lm98

    # ---- analysis --------------------------------------------------------------------------------------
    @torch.no_grad()
    def analyze(self, images: list[np.ndarray], faces: list[DetectedFace], smoother: CropSmoother | None = None,
                aligned: bool = False) -> list[FaceAnalysis]:
        """Landmarks, 512 crop and FLAME label of one face per image.

        Args:
            images: ``(H, W, 3)`` uint8 RGB images.
            faces: one detected face per image (source pixels), from :meth:`detect`.
            smoother: smooth the crops of consecutive video frames (called in order).
            aligned: the images are official 512 crops already: keep them as they are.
        """
        if not images:
            return []
        boxes = [np.asarray(f.box, dtype=np.float32) for f in faces]
        five, landmarks = self.alignment_points(images, faces, aligned)
        lm68 = [lm[0] for lm in self.landmarker_3d.landmarks_batch(images, [[b] for b in boxes])]
        d3 = [align_image(img, pts) for img, pts in zip(images, five, strict=True)]
        x = torch.cat([to_input(a.image) for a in d3]).to(_device(self.face_recon))
        coeffs = split_coefficients(self.face_recon(x).float())
        labels = flame_label(self.bfm2flame, coeffs["id"], coeffs["exp"], coeffs["angle"]).cpu()
        out = []
        for i, img in enumerate(images):
            if aligned:
                params, crop = None, img
                lm_crop, l68c = landmarks[i], lm68[i][:, :2]
            else:
                params, crop = align_crop(img, five[i], smoother)
                lm_crop, l68c = transform_landmarks(landmarks[i], params), transform_landmarks(lm68[i], params)
            out.append(FaceAnalysis(np.asarray(crop), params, boxes[i], np.asarray(lm_crop, dtype=np.float32),
                                    np.asarray(l68c, dtype=np.float32), labels[i]))
        return out

    def analyze_batches(self, frames: Iterable[np.ndarray], batch_size: int, max_frames: int | None = None,
                        smoother: CropSmoother | None = None,
                        ) -> Iterator[tuple[list[np.ndarray], list[int], list[FaceAnalysis]]]:
        """Video frames in batches -> ``(frames, indices of the frames with a usable face, their analyses)``: the
        largest face of each frame, refused below ``min_face_size``; crops smoothed across frames with
        ``smoother``."""
        from avatar.pipelines.prefetch import batched_frames

        for chunk in batched_frames(frames, batch_size, max_frames):
            faces = self.detect(chunk)
            good = [i for i, f in enumerate(faces) if f and f[0].size >= self.min_face_size]
            yield chunk, good, self.analyze([chunk[i] for i in good], [faces[i][0] for i in good], smoother)

    @torch.no_grad()
    def motion(self, analyses: list[FaceAnalysis]) -> Tensor | None:
        """PD-FGC motions ``(B, D)`` float32 of the analysed crops (``None`` without a motion encoder)."""
        if self.motion_encoder is None or not analyses:
            return None
        dev = _device(self.motion_encoder)
        crops = torch.tensor(np.stack([a.crop for a in analyses])).to(dev).permute(0, 3, 1, 2).float()
        crops = crops / 127.5 - 1
        lms = torch.from_numpy(np.stack([a.landmarks_3d for a in analyses])).to(dev).float()
        return self.motion_encoder.motion_from_image(crops, lms).float()


def crop_to_model_input(crops: np.ndarray, resolution: int, device: torch.device | str) -> Tensor:
    """``(B, 512, 512, 3)`` uint8 crops -> ``(B, 3, r, r)`` float in ``[-1, 1]`` (antialiased resize if needed)."""
    x = torch.tensor(np.asarray(crops, dtype=np.uint8)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1)
