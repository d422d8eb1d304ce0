"""Codec baselines: bits are the real file size, decode is what Pillow decodes."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import tokbench
from tokbench.core import TokbenchError
from tokbench.tokenizers.codecs import codec_available

# The settings each codec baseline promises (README, `tokbench list`), written out as Pillow arguments
# here rather than read from the package, so a wrong setting in the package fails the test.
PILLOW_REFERENCE = {
    "jpeg": ("JPEG", {"subsampling": 2, "optimize": True}),  # 4:2:0, optimised Huffman tables
    "webp": ("WEBP", {"method": 6}),  # lossy, slowest/best method
    "avif": ("AVIF", {"speed": 6, "subsampling": "4:2:0"}),
}


def _images():
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(0, 1, 48).view(1, 1, 1, 48).expand(2, 3, 40, 48)
    return (base + 0.05 * torch.rand(2, 3, 40, 48, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_codec_bits_and_decode_match_pillow(fmt):
    if not codec_available(fmt):
        pytest.skip(f"Pillow here cannot write {fmt}")
    x = _images()
    tok = tokbench.load_tokenizer(fmt, quality=60)
    tokens = tok.encode(x)
    recon = tok.decode(tokens)
    for i in range(2):
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        pil_format, settings = PILLOW_REFERENCE[fmt]
        Image.fromarray(arr).save(buf, format=pil_format, quality=60, **settings)
        payload = buf.getvalue()
        assert tokens.bits_per_image[i].item() == 8 * len(payload)
        assert bytes(tokens.ids[i, : tokens.lengths[i]].tolist()) == payload
        ref = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"), dtype=np.float32) / 255
        assert torch.equal(recon[i], torch.from_numpy(ref).permute(2, 0, 1))
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1


def test_quality_orders_size_and_error():
    x = _images()
    lo, hi = (tokbench.load_tokenizer("jpeg", quality=q) for q in (10, 95))
    t_lo, r_lo = lo.reconstruct(x)
    t_hi, r_hi = hi.reconstruct(x)
    assert (t_lo.bits_per_image < t_hi.bits_per_image).all()
    assert (r_lo - x).abs().mean() > (r_hi - x).abs().mean()


def test_bad_codec_settings():
    with pytest.raises(TokbenchError, match=r"jpeg option quality=300: Input should be less than or equal to 100"):
        tokbench.load_tokenizer("jpeg", quality=300)
    with pytest.raises(TokbenchError, match=r"unknown webp options \['lossless'\]; known: quality, format"):
        tokbench.load_tokenizer("webp", lossless=True)
    with pytest.raises(TokbenchError, match=r"unknown codec settings \['lossless'\]; accepted: format, quality$"):
        tokbench.load_tokenizer("webp", config={"lossless": True})
    with pytest.raises(TokbenchError, match="take no weights"):
        tokbench.load_tokenizer("jpeg-q50", weights="x.pt")
