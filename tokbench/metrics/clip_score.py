"""CLIP-score (Hessel et al. 2021, as torchmetrics defines it): image-caption agreement under CLIP.

Per image, score = max(100 * cos(E_image, E_caption), 0); the metric reports the mean over images with
a caption. `clip_score_torchmetrics` is what `torchmetrics.multimodal.CLIPScore.compute` returns:
max(mean(100 * cos), 0), the clamp applied to the mean; both agree unless some image's cosine is
negative. Default model: ViT-L/14 with OpenAI's weights (torchmetrics' default); any open_clip
(model, pretrained) pair published on the Hugging Face hub can be chosen instead. The model runs with
open_clip (`tokbench.metrics.encoders`): images are quantised to uint8 and go through open_clip's
evaluation transform for the pair's release (OpenAI CLIP: PIL bicubic resize of the short side, centre
crop, CLIP mean/std; SigLIP: bicubic `squash` resize, mean/std 0.5); captions are truncated to the
model's context (77 tokens for CLIP, 64 for SigLIP).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..core import TokbenchError
from .base import BenchMetric, EvalBatch, register_metric
from .encoders import describe_encoder, load_encoder, move_encoder, open_clip_spec

DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-L-14", "openai"


def clip_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """100 * cosine similarity of paired embeddings, (B,) float64, before any clamp."""
    a = image_emb.double()
    b = text_emb.double()
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return 100 * (a * b).sum(-1)


@register_metric("clip_score", packages=("open_clip_torch", "transformers"))
class CLIPScore(BenchMetric):
    """CLIP-score of reconstructions (default), originals or generated images against their captions.

    `model`, `pretrained`: an open_clip model config and pretrained tag (see `open_clip.list_pretrained()`);
    `weights`: their state dict file, instead of the resolver's; `encoder`: any object with
    `encode_image(images) -> (B, D)` and `encode_text(texts) -> (B, D)` instead of an open_clip model.
    `images`: "reconstructions" (default), "originals" (the data set's own score, a ceiling), or
    "generated" (images a generator put in `batch.extra["generated"]`). Images without a caption are
    left out (their row is NaN); a data set with no captions at all makes the metric skip with a reason.
    """

    name = "clip_score"
    higher_is_better = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str = DEFAULT_PRETRAINED,
        weights: str | os.PathLike | None = None,
        images: str = "reconstructions",
        encoder: Any | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if images not in ("reconstructions", "originals", "generated"):
            raise TokbenchError(f"clip_score images must be reconstructions, originals or generated, got {images!r}")
        self.images = images
        self.needs_decode = images == "reconstructions"
        if encoder is None:
            encoder = load_encoder(open_clip_spec(model, pretrained), weights)
        elif weights is not None:
            raise TokbenchError("clip_score takes either an encoder object or weights for a model, not both")
        # Kept out of the module tree so that saved metric states hold sums, not network weights.
        self._encoder = [encoder]
        self.add_moment_states()
        self.add_state("total_raw", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _images(self, batch: EvalBatch) -> torch.Tensor:
        if self.images == "originals":
            return batch.originals
        if self.images == "generated":
            images = batch.extra.get("generated")
            if images is None:
                raise TokbenchError("clip_score (images: generated) found no batch.extra['generated'] images")
            return images
        if batch.reconstructions is None:
            raise TokbenchError("clip_score needs reconstructions, and this tokenizer gave none")
        return batch.reconstructions

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        if not batch.captions or not any(batch.captions):
            raise TokbenchError(
                "clip_score needs captions, and this data set has none; use a data set with captions "
                "(or drop clip_score from the suite)"
            )
        images = self._images(batch)
        keep = [i for i, c in enumerate(batch.captions) if c]
        encoder = self._encoder[0]
        move_encoder(encoder, images.device)
        with torch.no_grad():
            img = encoder.encode_image(images[keep]).to(images.device)
            txt = encoder.encode_text([batch.captions[i] for i in keep]).to(images.device)
        raw = clip_scores(img, txt)
        clamped = raw.clamp_min(0)
        self.add_moments(clamped)
        self.total_raw = self.total_raw + raw.sum()
        rows = torch.full((images.shape[0],), float("nan"), dtype=torch.float64)
        rows[keep] = clamped.cpu()
        self.last_rows = {"clip_score": rows}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        out = self.moments("clip_score")
        n = int(self.count)
        if n:
            out.update({"clip_score_torchmetrics": max(float(self.total_raw) / n, 0.0), "clip_score_images": float(n)})
        return out

    def protocol(self) -> dict[str, Any]:
        d = describe_encoder(self._encoder[0])
        return {
            "clip_score": f"per-image max(100 * cos(image, caption), 0), mean over the {self.images} with a "
            f"caption (images without one are left out); {d}",
            "clip_score_torchmetrics": "max(mean over images of 100 * cos(image, caption), 0), the clamp on the "
            "mean as torchmetrics.multimodal.CLIPScore.compute; same encoder and images as clip_score",
        }
