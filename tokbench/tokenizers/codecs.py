"""Classical codecs (JPEG, WebP, AVIF through Pillow) as rate-distortion baselines.

Their "tokens" are the encoded bytes: `Tokens.ids` holds byte values (B, max bytes), padded with -1,
`lengths` the bytes per image, and `bits` the real file size in bits, so bits per pixel is exact.
"""

from __future__ import annotations

import io
import re
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, features

from ..building import Build, refuse_unknown
from ..core import TokbenchError, Tokenizer, TokenizerSpec, Tokens, check_images
from ..options import Quality
from ..registry import Family, Variant

# Pillow save arguments per format: 4:2:0 chroma subsampling everywhere, as the codecs' defaults do.
FORMATS: dict[str, dict[str, Any]] = {
    "jpeg": {"pil": "JPEG", "feature": "jpg", "save": {"subsampling": 2, "optimize": True}},
    "webp": {"pil": "WEBP", "feature": "webp", "save": {"method": 6}},
    "avif": {"pil": "AVIF", "feature": "avif", "save": {"speed": 6, "subsampling": "4:2:0"}},
}
DEFAULT_QUALITY = 75


def codec_available(fmt: str) -> bool:
    feature = FORMATS[fmt]["feature"]
    try:
        return bool(features.check(feature))
    except ValueError:  # feature unknown to this Pillow version
        return False


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8, rounding to nearest."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class CodecTokenizer(Tokenizer):
    """A lossy image codec at a fixed quality, measured by the real size of the encoded file."""

    def __init__(self, fmt: str, quality: int, name: str | None = None) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise TokbenchError(f"unknown codec format {fmt!r}; choose one of {sorted(FORMATS)}")
        if not codec_available(fmt):
            raise TokbenchError(
                f"this Pillow build cannot write {fmt.upper()} (PIL.features.check({FORMATS[fmt]['feature']!r}) "
                "is False); install a Pillow wheel with that codec (Pillow >= 11.3 wheels include AVIF)"
            )
        if not 0 <= int(quality) <= 100:
            raise TokbenchError(f"codec quality must be in [0, 100], got {quality}")
        self.fmt, self.quality = fmt, int(quality)
        self.spec = TokenizerSpec(
            name=name or f"{fmt}-q{self.quality}",
            family="codec",
            resolution=None,
            tokens_per_image=None,
            codebook_size=256,
            bits_per_token=8.0,
            variable_length=False,
            normalisation="uint8 RGB",
            preprocessing="any (codecs take any size)",
            source={"library": f"Pillow {Image.__version__}", "format": FORMATS[fmt]["pil"]},
            notes=f"quality={self.quality}; tokens are the encoded bytes",
        )

    def _encode_one(self, image: torch.Tensor) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(to_uint8_hwc(image)).save(
            buf, format=FORMATS[self.fmt]["pil"], quality=self.quality, **FORMATS[self.fmt]["save"]
        )
        return buf.getvalue()

    def encode(self, images: torch.Tensor) -> Tokens:
        check_images(images)
        payloads = [self._encode_one(img) for img in images]
        lengths = torch.tensor([len(p) for p in payloads], dtype=torch.long)
        ids = torch.full((len(payloads), int(lengths.max())), -1, dtype=torch.long)
        for i, p in enumerate(payloads):
            ids[i, : len(p)] = torch.frombuffer(bytearray(p), dtype=torch.uint8).long()
        return Tokens(
            ids=ids,
            codebook_size=256,
            lengths=lengths,
            bits=lengths.double() * 8,
            meta={"format": self.fmt, "quality": self.quality, "size": tuple(images.shape[-2:])},
        )

    def decode(self, tokens: Tokens) -> torch.Tensor:
        out = []
        for row, n in zip(tokens.ids, tokens.lengths.tolist()):
            payload = bytes(row[:n].to(torch.uint8).tolist())
            with Image.open(io.BytesIO(payload)) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255)
        return torch.stack(out).to(self.device)


def _codec_variant(fmt: str, quality: int) -> Variant:
    return Variant(name=f"{fmt}-q{quality}", family=fmt, options={"format": fmt, "quality": quality},
                   description=f"{fmt.upper()} at quality {quality}")


def _codec_family(fmt: str, description: str) -> Family:
    variants = tuple(_codec_variant(fmt, q) for q in (10, 25, 50, 75, 90))

    def variant_for_name(name: str) -> Variant | None:  # any quality: jpeg-q0 ... jpeg-q100
        m = re.fullmatch(rf"{fmt}-q(\d{{1,3}})", name)
        return _codec_variant(fmt, int(m.group(1))) if m else None

    def build(b: Build) -> Tokenizer:
        if b.weights is not None:
            raise TokbenchError("codec baselines take no weights")
        config = dict(b.config)
        config.pop("format", fmt)
        quality = b.option("quality", config.pop("quality", DEFAULT_QUALITY))
        refuse_unknown("codec settings", config, ("format", "quality"))
        return CodecTokenizer(fmt, int(quality), name=f"{fmt}-q{int(quality)}")

    return Family(name=fmt, build=build, variants=variants, description=description,
                  build_options={"quality": Quality, "format": Literal[fmt]},  # type: ignore[valid-type]
                  variant_for_name=variant_for_name)


FAMILIES = (
    _codec_family("jpeg", "JPEG (libjpeg-turbo through Pillow), 4:2:0, optimised Huffman tables"),
    _codec_family("webp", "WebP (libwebp through Pillow), lossy, method 6"),
    _codec_family("avif", "AVIF (libavif/aom through Pillow), 4:2:0, speed 6"),
)
