"""CSIM: cosine similarity of ArcFace identity embeddings of the prediction and a reference face.

Formula (per frame): ``CSIM = <e_p, e_t> / (||e_p|| ||e_t||)`` with ``e = ArcFace(crop)``; the reference
(``target``) is the ground-truth frame for same-identity reenactment and the source image for cross-identity.
Reported value: mean over the frames where the faces were found; frames whose landmarks are missing are excluded
and counted (never scored 0, unlike GAGAvatar's script).

Crop (``align``): each face is warped with a similarity transform from its 5 points (eye centres as the mean of
the eye corners 36/39 and 42/45, nose tip 30, mouth corners 48/54 of 68 landmarks) to the InsightFace 112x112
template (``"each"``, default; needed for cross-identity where the poses differ); ``"target"`` warps both images
with the target's transform (OTAvatar's identity loss, same-identity only); ``"none"`` takes the inputs as
already-aligned crops of ``crop_size``. Input: ``(B, 3, H, W)`` in [0, 1] (or uint8), mapped to [-1, 1] for the
network. Network: ArcFace iresnet-18 trained on MS1MV3, the one of the official Portrait4D repo
(``models/arcface``, ``ms1mv3_arcface_r18_fp16/backbone.pth``), RGB 112x112: :class:`avatar.losses.arcface.IResNet`
(``arcface-r18``), the network of training's identity loss, with its alignment. OTAvatar / GOHA used a different
ArcFace (ronghuaiyang ResNet-18, grayscale 128x128) and GAGAvatar MICA's IResNet-100: pass your own ``embedder``
(``(B, 3, S, S)`` in [-1, 1] -> ``(B, D)``) to reproduce those; values from different networks do not compare.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
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
from .face import FaceLandmarks, as_landmarks, declared_comparable, describe
from .weights import fetch_weights, network_device, seeded

__all__ = ["CSIM", "CSIMOptions", "build_arcface"]


def build_arcface(allow_random_weights: bool = False) -> tuple[IResNet, bool]:
    """The official iresnet-18 (``IResNet.from_pretrained()``, asset ``arcface-r18``); returns ``(model, official)``.
    Missing weights raise :class:`~eval.metrics.weights.MissingWeightsError` unless ``allow_random_weights``
    (seeded random init)."""
    model = fetch_weights(IResNet.from_pretrained, allow_random_weights, "ArcFace iresnet-18 (CSIM)")
    if model is None:
        with seeded():
            return IResNet().eval(), False
    return model.eval(), True

Embedder = Callable[[Tensor], Tensor]
LandmarkFn = Callable[[Tensor], Any]


@dataclass(frozen=True)
class CSIMOptions:
    """Attributes:
    align: ``"each"`` (default), ``"target"`` or ``"none"`` (see the module docstring).
    crop_size: side of the aligned crop fed to the network (112 for ArcFace; the template scales with it).
    """

    align: str = "each"
    crop_size: int = 112

    def __post_init__(self) -> None:
        _check_choice("align", self.align, ("each", "target", "none"))


class CSIM(Metric):
    """``update(pred, target, ids=None, pred_landmarks=None, target_landmarks=None)``.

    Landmarks come from ``landmarks`` (a callable, see :mod:`eval.metrics.face`) unless given per batch.
    ``embedder=None`` loads the official ArcFace through the asset layer (random init with
    ``allow_random_weights=True`` when it is missing: ``comparable=False``). A user ``embedder`` counts as
    comparable only if it has ``comparable = True`` (or ``comparable=True`` is passed).
    """

    name: ClassVar[str] = "csim"
    higher_is_better: ClassVar[bool] = True
    Options: ClassVar[type] = CSIMOptions
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
            embedder, official = build_arcface(allow_random_weights)
            self.weights = "official" if official else "random"
            self.network_name = "ArcFace iresnet-18 (MS1MV3, Portrait4D models/arcface)"
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

    def _facts(self) -> dict[str, Any]:
        return {"input_range": "[0, 1] (mapped to [-1, 1] for the network)", "network": self.network_name,
                "weights": self.weights, "template": "InsightFace 112 (5 points)",
                "five_points": "eye centres = mean of corners 36/39, 42/45; nose 30; mouth 48, 54",
                "landmarks": describe(self.landmark_fn)}

    def _landmarks(self, images: Tensor, given: Any, which: str) -> FaceLandmarks:
        if given is None:
            if self.landmark_fn is None:
                raise ValueError(f"csim with align={self.opts.align!r} needs {which} landmarks: pass a landmarks "
                                 "callable or pred_landmarks/target_landmarks")
            given = self.landmark_fn(images)
        return as_landmarks(given, images.shape[0])

    def _embed(self, crops: Tensor) -> Tensor:
        device = crops.device
        if isinstance(self.embedder, nn.Module):
            device = network_device(self.embedder, self.device, crops.device)
        out = [self.embedder(crops[i:i + self.batch_size].to(device).float())
               for i in range(0, crops.shape[0], self.batch_size)]
        return torch.cat(out).double()

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
        B = pred.shape[0]
        if target.shape[0] != B:
            raise ValueError(f"csim: {B} predictions but {target.shape[0]} targets")
        S = self.opts.crop_size
        keep = torch.ones(B, dtype=torch.bool)
        reasons: list[str | None] = [None] * B
        if self.opts.align == "none":
            if pred.shape[-2:] != (S, S) or target.shape[-2:] != (S, S):
                raise ValueError(f"csim align='none' needs {S}x{S} crops, got {tuple(pred.shape[-2:])} and "
                                 f"{tuple(target.shape[-2:])}")
            crops_p, crops_t = pred, target
        else:
            template = INSIGHTFACE_TEMPLATE_112.to(pred.device) * (S / 112.0)
            lt = self._landmarks(target, target_landmarks, "target")
            found_t = lt.found.cpu()
            m_t = _transforms(lt, template)
            if self.opts.align == "each":
                lp = self._landmarks(pred, pred_landmarks, "pred")
                found_p = lp.found.cpu()
                m_p = _transforms(lp, template)
            else:
                found_p, m_p = torch.ones(B, dtype=torch.bool), m_t
            ok_m = (torch.isfinite(m_p).flatten(1).all(1) & torch.isfinite(m_t).flatten(1).all(1)).cpu()
            for i in range(B):
                if not found_t[i]:
                    reasons[i] = "no face found in target"
                elif not found_p[i]:
                    reasons[i] = "no face found in pred"
                elif not ok_m[i]:
                    reasons[i] = "degenerate landmarks (no alignment)"
            keep = found_t & found_p & ok_m
            eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64, device=pred.device)
            k = keep.to(pred.device)[:, None, None]
            m_p, m_t = torch.where(k, m_p, eye), torch.where(k, m_t, eye)  # placeholders for excluded samples
            crops_p = warp_affine(pred, m_p, (S, S))
            crops_t = warp_affine(target, m_t, (S, S))
        values = torch.full((B,), float("nan"), dtype=torch.float64)
        if keep.any():
            idx = torch.nonzero(keep).flatten().to(pred.device)
            e_p = self._embed(crops_p[idx] * 2 - 1)
            e_t = self._embed(crops_t[idx] * 2 - 1)
            values[keep] = F.cosine_similarity(e_p, e_t, dim=1, eps=1e-12).cpu()
        self._record(torch.nan_to_num(values, nan=0.0), ids, keep, reasons)
        return values


def _transforms(lm: FaceLandmarks, template: Tensor) -> Tensor:
    """Similarity transforms ``(B, 2, 3)`` to the template; rows without a face get the template itself
    (a placeholder, never used: those samples are excluded)."""
    five = five_points_from_68(lm.points.to(template.device))
    found = lm.found.to(template.device)[:, None, None]
    return similarity_transform(torch.where(found, five, template.expand_as(five)), template)
