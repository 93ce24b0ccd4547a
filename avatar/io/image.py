"""Reading photos robustly: any PIL mode, EXIF orientation, 16-bit, huge files -> ``(H, W, 3)`` uint8 RGB."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avatar.io.errors import ImageReadError

__all__ = ["DEFAULT_MAX_SIDE", "load_image", "to_rgb_uint8"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 4096
"""Photos larger than this (either side) are downscaled on load; the 512 crop never needs more."""


def _array_to_uint8(a: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8 (16-bit ranges divided by 257, floats in [0, 1] scaled by 255)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        top = int(a.max()) if a.size else 0
        if top > 255:  # 16-bit data (PIL opens 16-bit PNG as "I;16" or "I")
            return np.clip(a.astype(np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    raise ImageReadError(f"unsupported pixel type {a.dtype}; give an 8- or 16-bit RGB or grayscale image")


def to_rgb_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image (any mode) or a numpy array ``(H, W)``, ``(H, W, 1|3|4)`` -> ``(H, W, 3)`` uint8 RGB.

    Transparent pixels are composited over white; grayscale is repeated on three channels; CMYK and palette
    images are converted by PIL; 16-bit values are reduced to 8 bits.
    """
    if isinstance(image, Image.Image):
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return to_rgb_uint8(np.asarray(image))
        if mode == "P" and "transparency" in image.info or mode in ("LA", "La", "PA"):
            image = image.convert("RGBA")
        if image.mode == "RGBA":
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, image).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageReadError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    a = _array_to_uint8(a)
    if a.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(a, 3, axis=2))
    if a.shape[2] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        rgb = a[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)
        return np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    return np.ascontiguousarray(a)


def _downscale(rgb: np.ndarray, max_side: int | None, what: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    logger.info("%s is %dx%d; downscaled to %dx%d", what, w, h, *size)
    return np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))


def load_image(
    source: str | Path | Image.Image | np.ndarray, max_side: int | None = DEFAULT_MAX_SIDE
) -> np.ndarray:
    """Read a photo as ``(H, W, 3)`` uint8 RGB, upright (EXIF orientation applied), at most ``max_side``.

    Args:
        source: a path, a PIL image or a numpy array (see :func:`to_rgb_uint8`).
        max_side: downscale (Lanczos) so that neither side exceeds this; ``None`` keeps the size.

    Raises:
        ImageReadError: missing, empty, truncated or unreadable file, or an absurdly large one.
    """
    if isinstance(source, np.ndarray):
        return _downscale(to_rgb_uint8(source), max_side, "the image")
    if isinstance(source, Image.Image):
        return _downscale(to_rgb_uint8(ImageOps.exif_transpose(source) or source), max_side, "the image")
    path = Path(source)
    if not path.is_file():
        raise ImageReadError(f"{path} does not exist or is not a file; check the path")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path} is empty (0 bytes); give a JPEG or PNG photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max_side is not None and img.format == "JPEG":
                    img.draft("RGB", (max_side, max_side))  # decode at a reduced scale: fast, little memory
                img.load()
                img = ImageOps.exif_transpose(img) or img
                rgb = to_rgb_uint8(img)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path} is too large to decode safely ({exc}); downscale it first") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path} is not an image PIL can read; give a JPEG, PNG or WebP photo") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path} cannot be decoded ({exc}); the file may be truncated or corrupt") from None
    return _downscale(rgb, max_side, str(path))
