"""Reading one image file: decoding, EXIF rotation, and the conversion of every PIL mode to RGB(A).

Kept apart from `data` (data sets) so that the modules that read sidecar images (`textdata`) and data
sets can both use it.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from .core import TokbenchError


class BadImage(TokbenchError):
    """A file that is not a readable image."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode a file to an RGB or RGBA PIL image: EXIF rotation applied; grey, 16-bit, palette, CMYK
    and LA converted. Raises `BadImage` for unreadable or truncated files."""
    try:
        with Image.open(path) as im:
            im.load()  # force full decoding now, so truncated files fail here
            img = ImageOps.exif_transpose(im)
            img.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise BadImage(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return to_rgb_or_rgba(img)


def to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        grey = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        return img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if mode in ("LA", "PA", "La", "RGBa"):
        return img.convert("RGBA")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
