"""CSIM: cosine similarity of ArcFace identity embeddings of the prediction and a reference face.

Formula (per frame): ``CSIM = <e_p, e_t> / (||e_p|| ||e_t||)`` with ``e = ArcFace(crop)``; the reference
(``target``) is the ground-truth frame for same-identity reenactment and the source image for cross-identity.
Reported value: mean over the frames where the faces were found; frames whose landmarks are missing are excluded
and counted (``failed_face="skip"``, default) or, with ``failed_face="zero"``, scored 0 and counted in the mean as
GAGAvatar's script does (xg-chu/GAGAvatar issue #43; never a default: the result's ``extra`` and notes give the
number of failed faces and the mean without them).

Crop (``align``): each face is warped with a similarity transform from its 5 points (eye centres as the mean of
the eye corners 36/39 and 42/45, nose tip 30, mouth corners 48/54 of 68 landmarks) to the InsightFace 112x112
template (``"each"``, default; needed for cross-identity where the poses differ); ``"target"`` warps both images
with the target's transform (OTAvatar's identity loss, same-identity only); ``"none"`` takes the inputs as
already-aligned crops of ``crop_size``. Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), mapped to [-1, 1] for the
network. Network: ArcFace iresnet-18 trained on MS1MV3, the one of the official Portrait4D repo
(``models/arcface``, ``ms1mv3_arcface_r18_fp16/backbone.pth``), RGB 112x112: :class:`avatar.losses.arcface.IResNet`
(``arcface-r18``), the network of training's identity loss, with its alignment. OTAvatar / GOHA used a different
ArcFace (ronghuaiyang ResNet-18, grayscale 128x128; pass your own ``embedder``, ``(B, 3, S, S)`` in [-1, 1] ->
``(B, D)``, to reproduce it) and GAGAvatar MICA's IResNet-100: ``arcface="r100-mica"``
(:class:`avatar.losses.arcface_mica.MICAArcFace`, model id ``arcface-r100-mica``: the ``arcface`` part of MICA's
``mica.tar``, an InsightFace Glint360K iresnet-100 fine-tuned in MICA; Zielon/MICA ``models/arcface.py``,
GAGAvatar_track ``engines/emica_encoder/MicaEncoder.py``). Values from different networks do not compare.

GAGAvatar's crop (MICA ``datasets/creation/util.py::get_arcface_input``) is InsightFace ``face_align.norm_crop``:
the least-squares similarity (skimage ``SimilarityTransform.estimate``) of the detector's five keypoints to the
same 112x112 template, ``cv2.warpAffine`` bilinear with a black border, RGB, ``(x - 127.5) / 127.5``. ``align="each"``
is that warp; ``five_points="detector"`` takes the five points from the face detector (``landmarks.five_points``:
RetinaFace's in :mod:`eval.face_networks`; SCRFD of antelopev2 in MICA/GAGAvatar) instead of from the 68 landmarks.
For ``crop_size`` other than 112 the template is scaled by ``crop_size / 112`` (InsightFace's ``norm_crop`` shifts it
for multiples of 128; not reproduced).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.losses.arcface import (
    INSIGHTFACE_TEMPLATE_112,
    IResNet,
    five_points_from_68,
    similarity_transform,
    warp_affine,
)

from .base import Metric, _check_choice, to_unit_images
from .face import (
    FAILED_FACE_POLICIES,
    FaceLandmarks,
    FailedFaceMixin,
    as_landmarks,
    declared_comparable,
    describe,
)
from .weights import fetch_weights, network_device, seeded

__all__ = ["ARCFACE_NETWORKS", "CSIM", "CSIMOptions", "build_arcface"]

ARCFACE_NETWORKS: dict[str, tuple[str, str]] = {
    "r18": ("avatar.losses.arcface:IResNet", "ArcFace iresnet-18 (MS1MV3, Portrait4D models/arcface)"),
    "r100-mica": ("avatar.losses.arcface_mica:MICAArcFace",
                  "MICA's ArcFace iresnet-100 (Glint360K, fine-tuned in MICA; GAGAvatar's CSIM)"),
}
"""CSIM's ``arcface`` option: ``name -> (class, description)``; the class's ``from_pretrained()`` loads the registered
weights (``arcface-r18``, ``arcface-r100-mica``)."""


def build_arcface(allow_random_weights: bool = False, arcface: str = "r18") -> tuple[IResNet, bool]:
    """The official ArcFace ``arcface`` (:data:`ARCFACE_NETWORKS`: ``"r18"``, asset ``arcface-r18``, or
    ``"r100-mica"``, asset ``arcface-r100-mica``) through the model registry; returns ``(model, official)``.
    Missing weights raise :class:`~eval.metrics.weights.MissingWeightsError` unless ``allow_random_weights``
    (seeded random init of the same network)."""
    import importlib

    _check_choice("arcface", arcface, ARCFACE_NETWORKS)
    path, what = ARCFACE_NETWORKS[arcface]
    module, cls_name = path.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    model = fetch_weights(cls.from_pretrained, allow_random_weights, f"{what} (CSIM)")
    if model is None:
        with seeded():
            return cls().eval(), False
    return model.eval(), True

Embedder = Callable[[Tensor], Tensor]
LandmarkFn = Callable[[Tensor], Any]


@dataclass(frozen=True)
class CSIMOptions:
    """Attributes:
    align: ``"each"`` (default), ``"target"`` or ``"none"`` (see the module docstring).
    crop_size: side of the aligned crop fed to the network (112 for ArcFace; the template scales with it).
    arcface: the identity network when no ``embedder`` is passed: ``"r18"`` (default; Portrait4D's iresnet-18) or
        ``"r100-mica"`` (MICA's iresnet-100, GAGAvatar's CSIM: xg-chu/GAGAvatar issue #43,
        ``deep3d_engine.mica_model.arcface``; Zielon/MICA ``models/arcface.py``).
    five_points: where the alignment's five points come from: ``"from-68"`` (default; eye centres from the
        corners 36/39, 42/45, nose 30, mouth 48/54 of the 68 landmarks, OTAvatar's identity loss) or
        ``"detector"`` (the face detector's own five keypoints, as InsightFace ``norm_crop`` is used by MICA and
        GAGAvatar: the landmark callable's ``five_points(images)`` or ``(B, 5, 2)`` landmarks).
    failed_face: ``"skip"`` (default: a sample without a face is excluded and counted) or ``"zero"``
        (GAGAvatar's metric code, issue #43: it is scored 0; never a protocol default, see
        :mod:`eval.metrics.face`).
    """

    align: str = "each"
    crop_size: int = 112
    arcface: str = "r18"
    five_points: str = "from-68"
    failed_face: str = "skip"

    def __post_init__(self) -> None:
        _check_choice("align", self.align, ("each", "target", "none"))
        _check_choice("arcface", self.arcface, ARCFACE_NETWORKS)
        _check_choice("five_points", self.five_points, ("from-68", "detector"))
        _check_choice("failed_face", self.failed_face, FAILED_FACE_POLICIES)


class CSIM(FailedFaceMixin, Metric):
    """``update(pred, target, ids=None, pred_landmarks=None, target_landmarks=None)``.

    Landmarks come from ``landmarks`` (a callable, see :mod:`eval.metrics.face`) unless given per batch.
    ``embedder=None`` loads the official ArcFace through the asset layer (random init with
    ``allow_random_weights=True`` when it is missing: ``comparable=False``). A user ``embedder`` counts as
    comparable only if it has ``comparable = True`` (or ``comparable=True`` is passed). Target side
    (:meth:`target_features`): the target's alignment and embedding.
    """

    name: ClassVar[str] = "csim"
    higher_is_better: ClassVar[bool] = True
    Options: ClassVar[type] = CSIMOptions
    has_target_features: ClassVar[bool] = True
    opts: CSIMOptions

    def __init__(
        self,
        *,
        embedder: Embedder | None = None,
        landmarks: LandmarkFn | None = None,
        allow_random_weights: bool = False,
        comparable: bool | None = None,
        device: torch.device | str | None = None,
        batch_size: int = 64,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if embedder is None:
            embedder, official = build_arcface(allow_random_weights, self.opts.arcface)
            self.weights = "official" if official else "random"
            self.network_name = ARCFACE_NETWORKS[self.opts.arcface][1]
            ok = official if comparable is None else comparable
            if not official:
                self._not_comparable("CSIM ran ArcFace with random weights: not comparable to published numbers")
        else:
            self.weights = "user"
            self.network_name = describe(embedder) or "user"
            ok = declared_comparable(embedder) if comparable is None else comparable
        if not ok:
            self._not_comparable("CSIM embedder not declared official (comparable=True): not comparable")
        self.landmark_fn = landmarks
        self.device = torch.device(device) if device is not None else None
        if isinstance(embedder, nn.Module) and self.device is not None:
            embedder = embedder.to(self.device)
        self.embedder = embedder
        self.batch_size = batch_size
        self._dim: int | None = None

    def _facts(self) -> dict[str, Any]:
        return {"input_range": "[0, 1] (mapped to [-1, 1] for the network)", "network": self.network_name,
                "weights": self.weights, "template": "InsightFace 112 (5 points; norm_crop's similarity warp)",
                "five_points_from": ("eye centres = mean of corners 36/39, 42/45; nose 30; mouth 48, 54"
                                     if self.opts.five_points == "from-68" else "the face detector's five keypoints"),
                "landmarks": describe(self.landmark_fn)}

    def _landmarks(self, images: Tensor, given: Any, which: str) -> FaceLandmarks:
        detector = self.opts.five_points == "detector"
        if given is None:
            fn = self.landmark_fn
            if detector:
                fn = getattr(fn, "five_points", fn)
            if fn is None:
                raise ValueError(f"csim with align={self.opts.align!r} needs {which} landmarks: pass a landmarks "
                                 "callable or pred_landmarks/target_landmarks")
            given = fn(images)
        return as_landmarks(given, images.shape[0], 5 if detector else 68)

    def _embed(self, crops: Tensor) -> Tensor:
        device = crops.device
        if isinstance(self.embedder, nn.Module):
            device = network_device(self.embedder, self.device, crops.device)
        out = [self.embedder(crops[i:i + self.batch_size].to(device).float())
               for i in range(0, crops.shape[0], self.batch_size)]
        return torch.cat(out).double()

    def _embedding_dim(self) -> int:
        """``D`` of the embedder (from one black crop, once): the width of the rows of faceless targets."""
        if self._dim is None:
            S = self.opts.crop_size
            device = self.device or torch.device("cpu")
            self._dim = int(self._embed(torch.zeros(1, 3, S, S, device=device)).shape[1])
        return self._dim

    def target_dependencies(self) -> dict[str, Any]:
        aligned = self.opts.align != "none"
        return {"align": self.opts.align, "crop_size": self.opts.crop_size, "arcface": self.opts.arcface,
                "embedder": self.embedder, "landmarks": self.landmark_fn if aligned else None,
                "five_points": self.opts.five_points if aligned else None}

    @torch.no_grad()
    def target_features(self, target: Tensor, landmarks: Any = None) -> dict[str, Tensor]:
        """The target side: ``found`` ``(B,)`` (a face), ``aligned`` ``(B,)`` (a finite transform), ``transform``
        ``(B, 2, 3)`` float64 (to the template; a placeholder where not aligned) and ``embedding`` ``(B, D)``
        float64 (zeros where not found or not aligned). ``landmarks``: the target's, else ``self.landmark_fn``'s."""
        target = to_unit_images(target, "csim target")
        B, S = target.shape[0], self.opts.crop_size
        if self.opts.align == "none":
            if target.shape[-2:] != (S, S):
                raise ValueError(f"csim align='none' needs {S}x{S} crops, got {tuple(target.shape[-2:])} (target)")
            ones = torch.ones(B, dtype=torch.bool)
            eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64).expand(B, 2, 3)
            return {"found": ones, "aligned": ones, "transform": eye.clone(), "embedding": self._embed(target * 2 - 1)}
        template = INSIGHTFACE_TEMPLATE_112.to(target.device) * (S / 112.0)
        lt = self._landmarks(target, landmarks, "target")
        m_t = _transforms(lt, template)
        found = lt.found.cpu()
        aligned = torch.isfinite(m_t).flatten(1).all(1).cpu()
        ok = found & aligned
        if ok.any():
            eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64, device=target.device)
            crops = warp_affine(target, torch.where(ok.to(target.device)[:, None, None], m_t, eye), (S, S))
            idx = torch.nonzero(ok).flatten()
            e_t = self._embed(crops[idx.to(target.device)] * 2 - 1).cpu()
            self._dim = e_t.shape[1]
            embedding = torch.zeros(B, e_t.shape[1], dtype=torch.float64)
            embedding[idx] = e_t
        else:
            embedding = torch.zeros(B, self._embedding_dim(), dtype=torch.float64)
        return {"found": found, "aligned": aligned, "transform": m_t.cpu(), "embedding": embedding}

    @torch.no_grad()
    def update_with_target_features(self, pred: Tensor, target_features: Mapping[str, Tensor],
                                    ids: Sequence[Hashable] | None = None, pred_landmarks: Any = None) -> Tensor:
        """Add a batch from ``pred`` and its targets' rows of :meth:`target_features`; returns the per-sample CSIM
        ``(B,)`` (NaN marks the excluded samples of this batch; 0 with ``failed_face="zero"``)."""
        pred = to_unit_images(pred, "csim pred")
        B, S = pred.shape[0], self.opts.crop_size
        found_t = target_features["found"].cpu().bool().reshape(-1)
        if found_t.numel() != B:
            raise ValueError(f"csim: {B} predictions but {found_t.numel()} targets")
        aligned_t = target_features["aligned"].cpu().bool().reshape(-1)
        if self.opts.align == "none":
            if pred.shape[-2:] != (S, S):
                raise ValueError(f"csim align='none' needs {S}x{S} crops, got {tuple(pred.shape[-2:])} (pred)")
            found_p, m_p, crops_p = torch.ones(B, dtype=torch.bool), None, pred
        else:
            template = INSIGHTFACE_TEMPLATE_112.to(pred.device) * (S / 112.0)
            if self.opts.align == "each":
                lp = self._landmarks(pred, pred_landmarks, "pred")
                found_p, m_p = lp.found.cpu(), _transforms(lp, template)
            else:  # "target": the prediction is cropped with the target's transform
                found_p, m_p = torch.ones(B, dtype=torch.bool), target_features["transform"].to(pred.device)
        aligned_p = torch.ones(B, dtype=torch.bool) if m_p is None else torch.isfinite(m_p).flatten(1).all(1).cpu()
        reasons: list[str | None] = [
            "no face found in target" if not ft else "no face found in pred" if not fp else
            "degenerate landmarks (no alignment)" if not (at and ap) else None
            for ft, fp, at, ap in zip(found_t.tolist(), found_p.tolist(), aligned_t.tolist(), aligned_p.tolist(),
                                      strict=True)]
        keep = found_t & found_p & aligned_t & aligned_p
        if m_p is not None:
            eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64, device=pred.device)
            crops_p = warp_affine(pred, torch.where(keep.to(pred.device)[:, None, None], m_p, eye), (S, S))
        values = torch.full((B,), float("nan"), dtype=torch.float64)
        if keep.any():
            idx = torch.nonzero(keep).flatten()
            e_p = self._embed(crops_p[idx.to(pred.device)] * 2 - 1)
            e_t = target_features["embedding"][idx.to(target_features["embedding"].device)].to(e_p.device)
            values[keep] = F.cosine_similarity(e_p, e_t.double(), dim=1, eps=1e-12).cpu()
        return self._record_faces(values, ids, keep, reasons)

    @torch.no_grad()
    def update(
        self,
        pred: Tensor,
        target: Tensor,
        ids: Sequence[Hashable] | None = None,
        pred_landmarks: Any = None,
        target_landmarks: Any = None,
    ) -> Tensor:
        """Add a batch; returns the per-sample CSIM ``(B,)`` (NaN marks the excluded samples of this batch)."""
        pred = to_unit_images(pred, "csim pred")
        target = to_unit_images(target, "csim target").to(pred.device)
        if target.shape[0] != pred.shape[0]:
            raise ValueError(f"csim: {pred.shape[0]} predictions but {target.shape[0]} targets")
        features = self.target_features(target, landmarks=target_landmarks)
        return self.update_with_target_features(pred, features, ids, pred_landmarks=pred_landmarks)


def _transforms(lm: FaceLandmarks, template: Tensor) -> Tensor:
    """Similarity transforms ``(B, 2, 3)`` to the template from 68 landmarks (their five points) or five
    keypoints; rows without a face get the template itself (a placeholder, never used: those are excluded)."""
    points = lm.points.to(template.device)
    five = points if points.shape[1] == 5 else five_points_from_68(points)
    found = lm.found.to(template.device)[:, None, None]
    return similarity_transform(torch.where(found, five, template.expand_as(five)), template)
