"""Rate metrics: bits per pixel, tokens per image, and how the codebook is used.

Bits per image are the real encoded size for codecs and N * log2(K) (summed over codebooks) for
discrete tokenizers: the cost of storing the ids at a fixed-length code, the number papers compare.
Continuous latents (`Tokens.features` with `bits` set, e.g. diffusers VAEs) have no codebook: their bits
are the tokenizer's stated storage convention (C*h*w values at a stated precision), and
`latent_values_per_pixel` (C*h*w / (H*W)) is reported beside them so they are never read as VQ bit rates.
Codebook usage is the fraction of codes used at least once over the data set; the code entropy (bits) and
perplexity (2^entropy) are of the empirical id distribution over all positions.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import BenchMetric, EvalBatch, register_metric


@register_metric("bpp")
class BitsPerPixel(BenchMetric):
    """Bits per pixel of the tokenizer's input (H x W of the image it encoded), tokens per image."""

    name = "bpp"
    needs_decode = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("bits", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixels", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sized", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # continuous latents: values stored and their bits (the storage precision is bits / values)
        self.add_state("latent_values", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("latent_bits", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("latent_pixels", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        t = batch.tokens
        b = t.batch_size
        h, w = batch.extra.get("input_size", batch.originals.shape[-2:])  # the encoded size, not the eval size
        pixels = float(h * w)
        tokens = t.tokens_per_image
        self.tokens += tokens.sum().to(self.tokens.device)
        self.images += b
        rows = {"tokens": tokens}
        bits = t.bits_per_image
        if bits is not None:
            self.bits += bits.sum().to(self.bits.device)
            self.pixels += pixels * b
            self.sized += b
            rows.update(bits=bits, bpp=bits / pixels)
            if t.features is not None and t.lengths is None:
                values = float(t.features[0].numel())
                self.latent_values += values * b
                self.latent_bits += bits.sum().to(self.latent_bits.device)
                self.latent_pixels += pixels * b
                rows["latent_values_per_pixel"] = torch.full((b,), values / pixels, dtype=torch.float64)
        self.last_rows = rows

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        out = {"tokens_per_image": float(self.tokens) / max(int(self.images), 1)}
        if int(self.sized):
            out["bits_per_image"] = float(self.bits) / int(self.sized)
            out["bpp"] = float(self.bits) / float(self.pixels)
        if float(self.latent_values):
            out["latent_values_per_pixel"] = float(self.latent_values) / float(self.latent_pixels)
            out["latent_storage_bits"] = float(self.latent_bits) / float(self.latent_values)
        return out

    def directions(self, results: dict[str, float]) -> dict[str, str]:
        return {}  # the rate is the axis the scores are read against, not a score itself

    def protocol(self):
        text = "bits per image / (H x W of the encoded input); fixed-length code N*log2(K), or file size"
        if float(self.latent_values):
            bits = float(self.latent_bits) / float(self.latent_values)
            text += (f"; continuous latents: C*h*w values at {bits:g}-bit storage each (tokbench convention, no "
                     "quantisation or entropy coding), not comparable to VQ bits")
        return {"bpp": text}


@register_metric("codebook")
class CodebookUsage(BenchMetric):
    """Histogram of token ids over the data set -> usage, entropy (bits) and perplexity per codebook."""

    name = "codebook"
    needs_decode = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Sized on the first batch (the codebook size is known only then); all ranks see the same size.
        self.add_state("counts", torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sizes", torch.zeros(0, dtype=torch.long), dist_reduce_fx="max")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        t = batch.tokens
        if t.ids is None or t.codebook_size is None or t.lengths is not None:
            return  # continuous features or byte streams: no codebook to measure
        ids = t.ids if t.ids.ndim == 3 else t.ids.unsqueeze(-1)
        c = ids.shape[-1]
        sizes = t.codebook_size if isinstance(t.codebook_size, tuple) else (t.codebook_size,) * c
        if self.counts.numel() == 0:
            self.sizes = torch.tensor([int(s) for s in sizes], dtype=torch.long, device=ids.device)
            self.counts = torch.zeros(int(self.sizes.sum()), dtype=torch.float64, device=ids.device)
        offset = 0
        for j, k in enumerate(self.sizes.tolist()):
            col = ids[..., j].reshape(-1).long()
            self.counts[offset : offset + k] += torch.bincount(col, minlength=k)[:k].to(self.counts)
            offset += k

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        if self.counts.numel() == 0:
            return {}
        out: dict[str, float] = {}
        offset = 0
        sizes = self.sizes.tolist()
        for j, k in enumerate(sizes):
            counts = self.counts[offset : offset + k]
            offset += k
            p = counts / counts.sum()
            nz = p[p > 0]
            entropy = float(-(nz * nz.log2()).sum())
            suffix = "" if len(sizes) == 1 else f"_{j}"
            out[f"codebook_usage{suffix}"] = float((counts > 0).sum()) / k
            out[f"code_entropy{suffix}"] = entropy
            out[f"code_perplexity{suffix}"] = 2**entropy
            out[f"code_entropy_max{suffix}"] = math.log2(k)
        return out

    def directions(self, results: dict[str, float]) -> dict[str, str]:
        # usage and perplexity: a tokenizer that uses more of its codebook; entropy's maximum is a constant
        return {k: "higher" for k in results if k.startswith(("codebook_usage", "code_perplexity"))}

    def protocol(self):
        return {"codebook": "usage = codes used / K over the data set; entropy in bits of the id histogram"}
