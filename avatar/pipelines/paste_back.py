"""Paste-back: a rendered frame of the aligned crop composited back into the original full photo.

Portrait4D (and every model here) renders the 512 aligned crop, not the photo; users want the result in their
photo (asked for in the official repository's issues 16 and 23). The crop is a similarity transform of the photo
(:class:`~avatar.face.geometry.AlignParams`: resize by ``scale``, then a ``target_size`` square at
``crop_box``), so the frame goes back by the inverse similarity, built from
:func:`~avatar.face.geometry.inverse_transform_landmarks` (the same mapping the landmarks use) and applied with
bilinear resampling.

Blending (our choice; the official code has no paste-back): the whole crop is pasted with a feathered border,
``alpha = smoothstep(distance to the crop's edge / (feather * size))``, so the rendered head, hair and shoulders
replace the photo inside the crop and fade into it over the outer ``feather`` of the crop (default 12%). The
photo outside the crop is untouched, pixel for pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar.errors import InputError
from avatar.face.geometry import AlignParams, inverse_transform_landmarks

__all__ = ["PasteBack", "crop_to_photo_matrix", "feather_mask"]


def crop_to_photo_matrix(align: AlignParams) -> np.ndarray:
    """``(2, 3)`` affine map from crop pixels ``(x, y)`` (y down) to photo pixels, the inverse of the crop."""
    size = float(align.target_size)
    crop = np.array([[0.0, 0.0], [size, 0.0], [0.0, size]])
    photo = inverse_transform_landmarks(crop, align)
    # photo = M @ [x, y, 1] for the three corners, solved in float64
    return np.linalg.solve(np.hstack([crop, np.ones((3, 1))]), photo).T


def feather_mask(size: int, feather: float) -> np.ndarray:
    """``(size, size)`` float32 alpha: 1 inside, a smoothstep ramp to 0 over the outer ``feather * size`` pixels."""
    if not 0.0 <= feather <= 0.5:
        raise InputError(f"feather must be between 0 and 0.5 (a fraction of the crop), got {feather}")
    if feather == 0:
        return np.ones((size, size), np.float32)
    centres = np.arange(size, dtype=np.float64) + 0.5
    edge = np.minimum(centres, size - centres)  # distance of each pixel centre to the nearer edge, per axis
    ramp = np.clip(edge / (feather * size), 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)
    return np.outer(ramp, ramp).astype(np.float32)


class PasteBack:
    """Composite frames of one avatar's crop into its photo; the warp of the mask is computed once.

    Args:
        photo: ``(H, W, 3)`` uint8, the photo the avatar was made from (as loaded by ``avatar.io.load_image``).
        align: the avatar's crop (``avatar.align``; ``None`` when the photo was given aligned: nothing to do).
        feather: width of the blended border, as a fraction of the crop's side.
    """

    def __init__(self, photo: np.ndarray, align: AlignParams | None, feather: float = 0.12) -> None:
        if align is None:
            raise InputError("paste-back needs the crop's place in the photo; this avatar was made from an aligned "
                             "512x512 crop (--aligned), so its frames already are the photo")
        photo = np.asarray(photo)
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise InputError(f"paste-back needs an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}")
        if (photo.shape[1], photo.shape[0]) != (align.width, align.height):
            raise InputError(f"the photo is {photo.shape[1]}x{photo.shape[0]} but the avatar was cropped from a "
                             f"{align.width}x{align.height} image; give the photo the avatar was made from")
        self.photo = photo
        self.align = align
        self.matrix = crop_to_photo_matrix(align)
        size = align.target_size
        mask = cv2.warpAffine(feather_mask(size, feather), self.matrix, (align.width, align.height),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        self.alpha = mask[..., None]
        ys, xs = np.nonzero(mask > 0)
        # the photo region the crop touches (frames are blended only there)
        self.box = (0, 0, 0, 0) if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                                                       int(ys.max()) + 1)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """``(r, r, 3)`` uint8 rendered crop (any ``r``: resized to the crop's side) -> ``(H, W, 3)`` uint8."""
        frame = np.asarray(frame)
        size = self.align.target_size
        if frame.ndim != 3 or frame.shape[0] != frame.shape[1] or frame.shape[2] != 3:
            raise InputError(f"paste-back needs a square (r, r, 3) frame, got {frame.shape}")
        if frame.shape[0] != size:
            frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
        out = self.photo.copy()
        x0, y0, x1, y1 = self.box
        if x1 <= x0 or y1 <= y0:
            return out
        shift = self.matrix.copy()
        shift[:, 2] -= (x0, y0)  # warp only the touched region
        warped = cv2.warpAffine(frame, shift, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        a = self.alpha[y0:y1, x0:x1]
        region = self.photo[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(region + a * (warped.astype(np.float32) - region) + 0.5, 0, 255).astype(np.uint8)
        return out
