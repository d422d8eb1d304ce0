"""Named resize/crop protocols: how a source image becomes a tokenizer's square input.

The protocol changes the numbers (clean-fid's lesson), so every result records its name. A protocol
takes a PIL image as loaded (mode RGB or RGBA, EXIF rotation applied) and the target side in pixels,
and returns an RGB PIL image of exactly that size. Families with an official preprocessing of their
own register it here from their module (`@register_protocol("chameleon", ...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .core import TokbenchError

ProtocolFn = Callable[[Image.Image, int], Image.Image]


@dataclass(frozen=True)
class Protocol:
    name: str
    fn: ProtocolFn
    description: str


_PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(name: str, description: str) -> Callable[[ProtocolFn], ProtocolFn]:
    def deco(fn: ProtocolFn) -> ProtocolFn:
        _PROTOCOLS[name] = Protocol(name, fn, description)
        return fn

    return deco


def get_protocol(name: str) -> Protocol:
    if name not in _PROTOCOLS:
        from .registry import families

        families()  # family modules register their own protocols on import
    if name not in _PROTOCOLS:
        raise TokbenchError(f"unknown preprocessing protocol {name!r}; known: {', '.join(sorted(_PROTOCOLS))}")
    return _PROTOCOLS[name]


def protocols() -> dict[str, Protocol]:
    from .registry import families

    families()
    return dict(_PROTOCOLS)


def drop_alpha(img: Image.Image) -> Image.Image:
    """RGB view of an RGB/RGBA image: alpha is discarded, as `PIL.Image.convert('RGB')` does."""
    return img if img.mode == "RGB" else img.convert("RGB")


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """An RGB image centred on a square canvas of its longer side, filled with `fill` (expand2square)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central size x size window (offsets rounded as torchvision's CenterCrop does)."""
    w, h = img.size
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_short_side(img: Image.Image, short: int, resample: int) -> Image.Image:
    """torchvision `Resize(short)` on a PIL image: the short side becomes `short`, the long one
    int(short * long / short_side) (truncated, as `_compute_resized_output_size` does)."""
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return img.resize(new, resample=resample)


@register_protocol(
    "adm-center-crop",
    "ADM/LlamaGen: halve with BOX while the short side >= 2x target, BICUBIC-resize the short side to the "
    "target, centre crop (guided-diffusion's center_crop_arr)",
)
def adm_center_crop(img: Image.Image, size: int) -> Image.Image:
    img = drop_alpha(img)
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


@register_protocol(
    "resize-crop",
    "short side resized to the target with PIL BICUBIC (antialiased), then centre crop "
    "(torchvision Resize(size, BICUBIC) + CenterCrop(size) on PIL images)",
)
def resize_crop(img: Image.Image, size: int) -> Image.Image:
    return center_crop(resize_short_side(drop_alpha(img), size, Image.BICUBIC), size)


@register_protocol("resize", "both sides resized to the target with PIL BICUBIC (aspect ratio not kept)")
def resize_only(img: Image.Image, size: int) -> Image.Image:
    return drop_alpha(img).resize((size, size), resample=Image.BICUBIC)


@register_protocol(
    "pad-square",
    "padded to a square with the mean grey (127, 127, 127) centred, then BICUBIC-resized to the target "
    "(LLaVA-style expand2square, used by SigLIP-based tokenizers)",
)
def pad_square(img: Image.Image, size: int) -> Image.Image:
    return expand_to_square(drop_alpha(img), (127, 127, 127)).resize((size, size), resample=Image.BICUBIC)
