"""Face alignment for identity networks: 5 points from 68 landmarks, similarity transform, affine warp.

Pixel convention everywhere: ``x`` to the right, ``y`` down, integer coordinates at pixel centres (the
convention of OpenCV, scikit-image and face_alignment), so ``(0, 0)`` is the centre of the top-left pixel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avatar.face.geometry import similarity_matrix, warp_affine

__all__ = ["INSIGHTFACE_TEMPLATE_112", "five_points_from_68", "similarity_transform", "warp_affine", "align_faces"]

# InsightFace / ArcFace 112x112 reference points: left eye, right eye, nose tip, left and right mouth corner
# (image left/right). Used by arcface_torch, Portrait4D's identity loss and OTAvatar's CSIM.
INSIGHTFACE_TEMPLATE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)


def five_points_from_68(lm: Tensor) -> Tensor:
    """``(B, 68, 2)`` iBUG-68 landmarks -> ``(B, 5, 2)``: the two eye centres (mean of each eye's corners,
    36/39 and 42/45), the nose tip (30) and the mouth corners (48, 54), in the template's order."""
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"expected (B, 68, 2) landmarks, got {tuple(lm.shape)}")
    return torch.stack([(lm[:, 36] + lm[:, 39]) / 2, (lm[:, 42] + lm[:, 45]) / 2, lm[:, 30], lm[:, 48], lm[:, 54]], 1)


def similarity_transform(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity mapping ``src`` ``(B, N, 2)`` to ``dst`` as ``(B, 2, 3)`` float64 (Umeyama, the
    estimate of ``skimage.transform.SimilarityTransform``): :func:`avatar.face.geometry.similarity_matrix`."""
    return similarity_matrix(src, dst)[:, :2]


def align_faces(images: Tensor, landmarks68: Tensor, size: int = 112) -> Tensor:
    """ArcFace crops ``(B, C, size, size)``: similarity from the 5 points of ``landmarks68`` (pixels of
    ``images``) to the InsightFace template (scaled by ``size / 112``), then :func:`warp_affine`."""
    template = INSIGHTFACE_TEMPLATE_112.to(landmarks68.device) * (size / 112.0)
    M = similarity_transform(five_points_from_68(landmarks68), template)
    return warp_affine(images, M, (size, size))
