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
class Geometry:
    """Where a protocol puts the source pixels: output x = x * sx + tx, y = y * sy + ty, in continuous
    pixel coordinates (pixel i spans [i, i + 1]), for a source of the given size. Every built-in
    protocol is a scale and a shift (resizes, centre crops, centred padding), so boxes map exactly."""

    sx: float
    sy: float
    tx: float
    ty: float

    def then(self, other: Geometry) -> Geometry:
        """This mapping followed by `other`."""
        return Geometry(self.sx * other.sx, self.sy * other.sy, self.tx * other.sx + other.tx,
                        self.ty * other.sy + other.ty)

    def box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        return (x0 * self.sx + self.tx, y0 * self.sy + self.ty, x1 * self.sx + self.tx, y1 * self.sy + self.ty)


GeometryFn = Callable[[int, int, int], Geometry]  # (source width, source height, target side) -> Geometry


@dataclass(frozen=True)
class Protocol:
    name: str
    fn: ProtocolFn
    description: str
    geometry: GeometryFn | None = None  # how boxes follow the image (annotated data); None: unknown


_PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(name: str, description: str,
                      geometry: GeometryFn | None = None) -> Callable[[ProtocolFn], ProtocolFn]:
    def deco(fn: ProtocolFn) -> ProtocolFn:
        _PROTOCOLS[name] = Protocol(name, fn, description, geometry)
        return fn

    return deco


def scale(w: int, h: int, new_w: int, new_h: int) -> Geometry:
    """A PIL resize from (w, h) to (new_w, new_h) (any filter: PIL maps pixel edges to pixel edges)."""
    return Geometry(new_w / w, new_h / h, 0.0, 0.0)


def shift(dx: float, dy: float) -> Geometry:
    """A crop at (dx, dy) is shift(-dx, -dy); pasting onto a canvas at (dx, dy) is shift(dx, dy)."""
    return Geometry(1.0, 1.0, float(dx), float(dy))


def move_boxes(boxes: list[tuple[float, float, float, float]], protocol: str, source_size: tuple[int, int],
               size: int) -> tuple[list[int], list[tuple[float, float, float, float]]]:
    """Boxes (x0, y0, x1, y1) in source pixels -> (indices kept, boxes in the protocol's size x size
    output). A box that the crop cuts (any part outside the output) is dropped: its text is not all
    there to be read. Raises `TokbenchError` for a protocol without a known geometry."""
    proto = get_protocol(protocol)
    if proto.geometry is None:
        raise TokbenchError(f"protocol {protocol!r} does not say how it moves boxes, so annotated text cannot "
                            "follow it; use one of " + ", ".join(n for n, p in sorted(_PROTOCOLS.items())
                                                                  if p.geometry is not None))
    g = proto.geometry(source_size[0], source_size[1], size)
    kept, out = [], []
    eps = 1e-6 * size
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = g.box(b)
        if x0 >= -eps and y0 >= -eps and x1 <= size + eps and y1 <= size + eps:
            kept.append(i)
            out.append((x0, y0, x1, y1))
    return kept, out


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


def center_crop_offsets(w: int, h: int, size: int) -> tuple[int, int]:
    """(left, top) of the central size x size window, rounded as torchvision's CenterCrop does."""
    return int(round((w - size) / 2.0)), int(round((h - size) / 2.0))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central size x size window (offsets rounded as torchvision's CenterCrop does)."""
    left, top = center_crop_offsets(*img.size, size)
    return img.crop((left, top, left + size, top + size))


def short_side_size(w: int, h: int, short: int) -> tuple[int, int]:
    """torchvision `Resize(short)`'s output size: the short side becomes `short`, the long one
    int(short * long / short_side) (truncated, as `_compute_resized_output_size` does)."""
    return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)


def resize_short_side(img: Image.Image, short: int, resample: int) -> Image.Image:
    """torchvision `Resize(short)` on a PIL image (see `short_side_size`)."""
    return img.resize(short_side_size(*img.size, short), resample=resample)


def expand_geometry(w: int, h: int) -> tuple[int, Geometry]:
    """Side and mapping of `expand_to_square` for a (w, h) image."""
    side = max(w, h)
    return side, shift((side - w) // 2, (side - h) // 2)


def _adm_sizes(w: int, h: int, size: int) -> list[tuple[int, int]]:
    """The successive image sizes of `adm_center_crop` before its crop."""
    sizes = [(w, h)]
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        sizes.append((w, h))
    s = size / min(w, h)
    sizes.append((round(w * s), round(h * s)))
    return sizes


def _adm_geometry(w: int, h: int, size: int) -> Geometry:
    sizes = _adm_sizes(w, h, size)
    g = Geometry(1.0, 1.0, 0.0, 0.0)
    for (a, b), (c, d) in zip(sizes, sizes[1:]):
        g = g.then(scale(a, b, c, d))
    fw, fh = sizes[-1]
    return g.then(shift(-((fw - size) // 2), -((fh - size) // 2)))


def short_side_crop_geometry(w: int, h: int, short: int, size: int) -> Geometry:
    """`resize_short_side` to `short`, then `center_crop` to `size`."""
    nw, nh = short_side_size(w, h, short)
    left, top = center_crop_offsets(nw, nh, size)
    return scale(w, h, nw, nh).then(shift(-left, -top))


def _pad_square_geometry(w: int, h: int, size: int) -> Geometry:
    side, g = expand_geometry(w, h)
    return g.then(scale(side, side, size, size))


@register_protocol(
    "adm-center-crop",
    "ADM/LlamaGen: halve with BOX while the short side >= 2x target, BICUBIC-resize the short side to the "
    "target, centre crop (guided-diffusion's center_crop_arr)",
    geometry=_adm_geometry,
)
def adm_center_crop(img: Image.Image, size: int) -> Image.Image:
    img = drop_alpha(img)
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    factor = size / min(*img.size)
    img = img.resize(tuple(round(x * factor) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


@register_protocol(
    "resize-crop",
    "short side resized to the target with PIL BICUBIC (antialiased), then centre crop "
    "(torchvision Resize(size, BICUBIC) + CenterCrop(size) on PIL images)",
    geometry=lambda w, h, size: short_side_crop_geometry(w, h, size, size),
)
def resize_crop(img: Image.Image, size: int) -> Image.Image:
    return center_crop(resize_short_side(drop_alpha(img), size, Image.BICUBIC), size)


@register_protocol("resize", "both sides resized to the target with PIL BICUBIC (aspect ratio not kept)",
                   geometry=lambda w, h, size: scale(w, h, size, size))
def resize_only(img: Image.Image, size: int) -> Image.Image:
    return drop_alpha(img).resize((size, size), resample=Image.BICUBIC)


@register_protocol(
    "pad-square",
    "padded to a square with the mean grey (127, 127, 127) centred, then BICUBIC-resized to the target "
    "(LLaVA-style expand2square, used by SigLIP-based tokenizers)",
    geometry=_pad_square_geometry,
)
def pad_square(img: Image.Image, size: int) -> Image.Image:
    return expand_to_square(drop_alpha(img), (127, 127, 127)).resize((size, size), resample=Image.BICUBIC)
