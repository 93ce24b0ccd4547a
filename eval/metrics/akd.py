"""AKD: average keypoint distance between the 68 facial landmarks of the prediction and the target.

Formula (per frame), with ``p``, ``t`` the ``(68, 2)`` landmarks in pixels:

* ``distance="l1"`` (default): ``mean |p - t|`` over the 68 x 2 coordinates (FOMM's ``pose-evaluation`` ``cmp.py``
  and OTAvatar's "L1 between the 68 keypoints");
* ``distance="l2"``: ``mean_k ||p_k - t_k||_2`` (mean Euclidean distance per point).

Pixel scale: landmarks are in pixels of the images as given (512x512 in the CelebA/HDTF protocols); with
``reference_size=S`` coordinates are first rescaled by ``S / W`` (x) and ``S / H`` (y), e.g. 256 to compare with
FOMM-style numbers. Reported value: mean over frames; frames where no face was found (in either image) are
excluded and counted (OTAvatar's preprocessing instead reused the previous frame's landmarks).

Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), same size for pred and target, handed to the landmark callable
(see :mod:`eval.metrics.face` for its output contract). Which landmark network the protocol names is the option
``landmark_model`` (:data:`~eval.metrics.face.LANDMARK_MODELS`): ``"retinaface-3dfan"`` (default: this toolkit's
RetinaFace + 3DFAN's FAN), ``"face-alignment-2dfan"`` (OTAvatar / GOHA: face_alignment's 2D-FAN + SFD) or
``"insightface-3d68"`` (GAGAvatar: InsightFace's 68 landmarks, issue #43). The metric does not build the network:
it checks that the landmark callable declares the same ``landmark_model`` (a callable declaring none is taken at
its word) and records the choice. Given no callable, AKD builds ``"face-alignment-2dfan"`` itself
(:func:`eval.face_networks.build_face_alignment_landmarks`: :mod:`avatar.face.s3fd` + :mod:`avatar.face.fan2d`, the
first face as OTAvatar's ``extract_kp_videos.py`` takes it; official weights: ``avatar download
face-alignment-2dfan``) and ``"insightface-3d68"`` (:func:`eval.face_networks.build_insightface_landmarks`:
:mod:`avatar.face.insightface_onnx`, InsightFace's ONNX graphs in onnxruntime; files: ``avatar download --file
insightface-det-10g --file insightface-1k3d68``, no random stand-in); ``"retinaface-3dfan"`` is passed in by
``eval.run`` (the analysis CSIM, AED and APD share). ``failed_face="zero"`` scores a frame without a face 0
(GAGAvatar's script; never a default; see :mod:`eval.metrics.face`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Metric, _check_choice, to_unit_images
from .face import (
    FAILED_FACE_POLICIES,
    LANDMARK_MODELS,
    METRIC_BUILT_LANDMARK_MODELS,
    FaceLandmarks,
    FailedFaceMixin,
    as_landmarks,
    check_landmark_model,
    declared_comparable,
    describe,
)

__all__ = ["AKD", "AKDOptions"]


@dataclass(frozen=True)
class AKDOptions:
    """Attributes:
    distance: ``"l1"`` (default) or ``"l2"`` (see the module docstring).
    reference_size: rescale coordinates to this image side before measuring (``None``: pixels as given).
    landmark_model: the 68-point landmark network (:data:`~eval.metrics.face.LANDMARK_MODELS`):
        ``"retinaface-3dfan"`` (default, the toolkit's), ``"face-alignment-2dfan"`` (OTAvatar issue #27, GOHA) or
        ``"insightface-3d68"`` (GAGAvatar issue #43).
    failed_face: ``"skip"`` (default) or ``"zero"`` (GAGAvatar issue #43: a frame without a face counts as 0).
    """

    distance: str = "l1"
    reference_size: int | None = None
    landmark_model: str = "retinaface-3dfan"
    failed_face: str = "skip"

    def __post_init__(self) -> None:
        _check_choice("distance", self.distance, ("l1", "l2"))
        _check_choice("landmark_model", self.landmark_model, LANDMARK_MODELS)
        _check_choice("failed_face", self.failed_face, FAILED_FACE_POLICIES)
        if self.reference_size is not None and self.reference_size <= 0:
            raise ValueError("reference_size must be positive")


class AKD(FailedFaceMixin, Metric):
    """``update(pred, target, ids=None)`` runs ``landmarks`` on both images; ``update_landmarks(pred_lm,
    target_lm, ids, image_size)`` takes landmarks computed elsewhere. Target side (:meth:`target_features`): the
    target's landmarks ``points`` ``(B, 68, 2)`` float64, ``found`` ``(B,)`` and the image ``size`` ``(B, 2)``
    (H, W).

    With ``landmark_model="face-alignment-2dfan"`` and no ``landmarks``, the network is built here on ``device``
    (official weights from the asset cache; missing: :class:`~eval.metrics.MissingWeightsError` unless
    ``allow_random_weights``, then seeded random networks and ``comparable=False``); so is
    ``"insightface-3d68"`` (the buffalo_l ONNX files; missing: :class:`~eval.metrics.MissingWeightsError`, with or
    without ``allow_random_weights``; onnxruntime absent: :class:`~avatar.errors.MissingDependencyError`)."""

    name: ClassVar[str] = "akd"
    higher_is_better: ClassVar[bool] = False
    Options: ClassVar[type] = AKDOptions
    has_target_features: ClassVar[bool] = True
    opts: AKDOptions

    def __init__(self, *, landmarks: Callable[[Tensor], Any] | None = None, comparable: bool | None = None,
                 allow_random_weights: bool = False, device: torch.device | str | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        if landmarks is None and self.opts.landmark_model in METRIC_BUILT_LANDMARK_MODELS:
            # imported here: eval.face_networks imports eval.metrics
            from ..face_networks import build_face_alignment_landmarks, build_insightface_landmarks

            build = build_insightface_landmarks if self.opts.landmark_model == "insightface-3d68" \
                else build_face_alignment_landmarks
            landmarks = build(device if device is not None else "cpu", allow_random_weights)
        check_landmark_model(landmarks, self.opts.landmark_model, "akd")
        self.landmark_fn = landmarks
        ok = declared_comparable(landmarks) if comparable is None else comparable
        if not ok:
            self._not_comparable("akd: the landmark detector is not declared official (comparable=True): "
                                 "not comparable")

    def _facts(self) -> dict[str, Any]:
        unit = f"pixels at {self.opts.reference_size}x{self.opts.reference_size}" if self.opts.reference_size \
            else "pixels of the input images"
        return {"unit": unit, "num_points": 68, "landmarks": describe(self.landmark_fn),
                "landmark_network": LANDMARK_MODELS[self.opts.landmark_model]}

    def _landmark_fn(self) -> Callable[[Tensor], Any]:
        if self.landmark_fn is None:
            raise ValueError("akd: no landmark callable; pass landmarks=... or use update_landmarks()")
        return self.landmark_fn

    def target_dependencies(self) -> dict[str, Any]:
        # distance, reference_size and failed_face act on the pair only
        return {"landmarks": self.landmark_fn, "landmark_model": self.opts.landmark_model}

    @torch.no_grad()
    def target_features(self, target: Tensor) -> dict[str, Tensor]:
        """``points`` ``(B, 68, 2)`` float64 (input pixels), ``found`` ``(B,)`` bool, ``size`` ``(B, 2)`` (H, W)."""
        target = to_unit_images(target, "akd target")
        lt = as_landmarks(self._landmark_fn()(target), target.shape[0])
        size = torch.tensor([list(target.shape[-2:])] * target.shape[0], dtype=torch.int64)
        return {"points": lt.points, "found": lt.found, "size": size}

    @torch.no_grad()
    def update_with_target_features(self, pred: Tensor, target_features: Mapping[str, Tensor],
                                    ids: Sequence[Hashable] | None = None) -> Tensor:
        """Add a batch from ``pred`` and its targets' rows of :meth:`target_features`; returns ``(B,)`` (NaN marks
        excluded samples)."""
        pred = to_unit_images(pred, "akd pred")
        H, W = pred.shape[-2:]
        sizes = target_features["size"].reshape(-1, 2).tolist()
        if len(sizes) != pred.shape[0] or any(tuple(s) != (H, W) for s in sizes):
            raise ValueError(f"akd: pred {tuple(pred.shape)} and target sizes {sizes[:3]} differ in shape")
        target = FaceLandmarks(target_features["points"], target_features["found"])
        return self.update_landmarks(self._landmark_fn()(pred), target, ids, (H, W))

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, ids: Sequence[Hashable] | None = None) -> Tensor:
        """Add a batch of images; returns the per-sample values ``(B,)`` (NaN marks excluded samples)."""
        self._landmark_fn()
        pred = to_unit_images(pred, "akd pred")
        target = to_unit_images(target, "akd target")
        if pred.shape != target.shape:
            raise ValueError(f"akd: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        return self.update_with_target_features(pred, self.target_features(target), ids)

    def update_landmarks(self, pred: Any, target: Any, ids: Sequence[Hashable] | None = None,
                         image_size: tuple[int, int] | None = None) -> Tensor:
        """Add landmarks (any form :func:`~eval.metrics.face.as_landmarks` accepts). ``image_size = (H, W)`` is
        needed with ``reference_size``."""
        lp = as_landmarks(pred)
        lt = as_landmarks(target, lp.points.shape[0])
        p, t = lp.points, lt.points.to(lp.points.device)
        if self.opts.reference_size is not None:
            if image_size is None:
                raise ValueError("akd: reference_size needs the image_size (H, W) the landmarks refer to")
            H, W = image_size
            s = torch.tensor([self.opts.reference_size / W, self.opts.reference_size / H], dtype=p.dtype,
                             device=p.device)
            p, t = p * s, t * s
        d = (p - t).abs().flatten(1).mean(1) if self.opts.distance == "l1" else (p - t).norm(dim=2).mean(1)
        keep = (lp.found.cpu() & lt.found.cpu())
        d = torch.where(keep.to(d.device), d, torch.zeros_like(d)).cpu()
        reasons = [None if k else ("no face found in target" if not ft else "no face found in pred")
                   for k, ft in zip(keep.tolist(), lt.found.cpu().tolist(), strict=True)]
        return self._record_faces(d, ids, keep, reasons)

