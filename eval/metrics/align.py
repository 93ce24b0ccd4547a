"""Face alignment for identity networks: 5 points from 68 landmarks, similarity transform, affine warp.

Pixel convention everywhere: ``x`` to the right, ``y`` down, integer coordinates at pixel centres (the
convention of OpenCV, scikit-image and face_alignment), so ``(0, 0)`` is the centre of the top-left pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` to ``dst``.

    Umeyama (1991), batched: ``src``, ``dst`` ``(B, N, 2)`` (``dst`` may be ``(N, 2)``) -> ``(B, 2, 3)`` float64
    with ``dst ~= M[:, :, :2] @ src + M[:, :, 2]``. Same estimate as ``skimage.transform.SimilarityTransform``.
    Degenerate ``src`` (all points equal) gives non-finite entries.
    """
    src = src.double()
    dst = dst.double().to(src.device).expand_as(src)
    n = src.shape[1]
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.transpose(1, 2) @ s_c / n  # (B, 2, 2)
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.ones_like(S)
    d[:, -1] = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    R = U @ torch.diag_embed(d) @ Vh
    var_s = s_c.square().sum((1, 2)) / n
    scale = (S * d).sum(1) / var_s
    A = scale[:, None, None] * R
    t = mu_d.transpose(1, 2) - A @ mu_s.transpose(1, 2)
    return torch.cat([A, t], 2)


def warp_affine(images: Tensor, M: Tensor, size: tuple[int, int]) -> Tensor:
    """Warp ``(B, C, H, W)`` images with ``M`` ``(B, 2, 3)`` (input pixel -> output pixel) to ``size = (h, w)``.

    Bilinear, zeros outside the input (like ``cv2.warpAffine`` with a black border), pixel-centre convention.
    """
    B, _, H, W = images.shape
    h, w = size
    M = M.to(images.device, torch.float64)
    A_inv = torch.linalg.inv(M[:, :, :2])
    t_inv = -(A_inv @ M[:, :, 2:])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=images.device),
                            torch.arange(w, dtype=torch.float64, device=images.device), indexing="ij")
    out_xy = torch.stack([xs, ys], -1).reshape(1, -1, 2)  # (1, h*w, 2)
    in_xy = out_xy @ A_inv.transpose(1, 2) + t_inv.transpose(1, 2)  # (B, h*w, 2)
    scale = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], dtype=torch.float64, device=images.device)
    grid = (in_xy * scale - 1).reshape(B, h, w, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def align_faces(images: Tensor, landmarks68: Tensor, size: int = 112) -> Tensor:
    """ArcFace crops ``(B, C, size, size)``: similarity from the 5 points of ``landmarks68`` (pixels of
    ``images``) to the InsightFace template (scaled by ``size / 112``), then :func:`warp_affine`."""
    template = INSIGHTFACE_TEMPLATE_112.to(landmarks68.device) * (size / 112.0)
    M = similarity_transform(five_points_from_68(landmarks68), template)
    return warp_affine(images, M, (size, size))
