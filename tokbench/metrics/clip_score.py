"""CLIP-score (Hessel et al. 2021, as torchmetrics defines it): image-caption agreement under CLIP.

Per image, score = max(100 * cos(E_image, E_caption), 0); the metric reports the mean over images with
a caption. `clip_score_torchmetrics` is what `torchmetrics.multimodal.CLIPScore.compute` returns:
max(mean(100 * cos), 0), the clamp applied to the mean; both agree unless some image's cosine is
negative. Default model: ViT-L/14 with OpenAI's weights (torchmetrics' default), run with open_clip;
images are quantised to uint8 and go through open_clip's evaluation transform (PIL bicubic resize of
the short side, centre crop, CLIP mean/std); captions are truncated to the model's context (77).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from ..checkpoint import load_strict, read_state_dict
from ..core import TokbenchError
from ..weights import Artifact, register_artifact, resolve
from .base import BenchMetric, EvalBatch, register_metric

CLIP_VIT_L14_OPENAI = register_artifact(
    Artifact(
        name="clip-vit-l-14-openai",
        repo_id="timm/vit_large_patch14_clip_224.openai",
        filename="open_clip_model.safetensors",
        size=1_710_000_000,
        licence="MIT (OpenAI CLIP)",
        used_by="clip_score (default model), semantic similarity",
    )
)
DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-L-14", "openai"


class ImageTextEncoder(Protocol):
    """What CLIP-score needs from a model; tests inject a small one."""

    description: dict[str, Any]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] float (B, 3, H, W) -> (B, D) embeddings (any norm)."""
        ...

    def encode_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """B captions -> (B, D) embeddings (any norm)."""
        ...


def clip_artifact(model: str, pretrained: str) -> Artifact:
    """The weights artifact of an open_clip (model, pretrained tag) pair published on the HF hub."""
    if (model, pretrained) == (DEFAULT_MODEL, DEFAULT_PRETRAINED):
        return CLIP_VIT_L14_OPENAI
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    hub = (cfg or {}).get("hf_hub", "").strip("/")
    if not hub:
        raise TokbenchError(
            f"open_clip has no Hugging Face release for model {model!r} with pretrained {pretrained!r}; "
            "pass `weights: PATH` to a state dict file, or pick a pair from open_clip.list_pretrained()"
        )
    return Artifact(name=f"open_clip-{model}-{pretrained}", repo_id=hub, filename="open_clip_model.safetensors",
                    used_by="clip_score")  # fmt: skip


class OpenCLIPEncoder:
    """An open_clip model with its weights found by tokbench's resolver and loaded strictly."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED,
                 weights: str | os.PathLike | None = None) -> None:  # fmt: skip
        import open_clip

        artifact = clip_artifact(model, pretrained) if weights is None else Artifact(name=f"{model}-{pretrained}")
        path = resolve(artifact, weights)
        quick_gelu = bool((open_clip.get_pretrained_cfg(model, pretrained) or {}).get("quick_gelu", False))
        # Architecture only; the weights come from the resolved file through tokbench's safe reader.
        net = open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu,
                                     pretrained_image=False, pretrained_text=False)  # fmt: skip
        load_strict(net, read_state_dict(path), source=str(path))
        self.model = net.eval().requires_grad_(False)
        cfg = open_clip.get_model_preprocess_cfg(net)
        self.transform = open_clip.image_transform(
            cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
            resize_mode=cfg.get("resize_mode"), interpolation=cfg.get("interpolation"),
        )  # fmt: skip
        self.tokenizer = open_clip.get_tokenizer(model)
        self.description = {"model": model, "pretrained": pretrained, "weights": artifact.name,
                            "weights_source": artifact.source if weights is None else str(path),
                            "quick_gelu": quick_gelu, "image_size": cfg["size"],
                            "resize": f"{cfg.get('interpolation', 'bicubic')} short side + centre crop"}  # fmt: skip

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import to_pil_image

        device = images.device
        self.model.to(device)
        u8 = torch.floor(images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()
        batch = torch.stack([self.transform(to_pil_image(im)) for im in u8]).to(device)
        return self.model.encode_image(batch)

    def encode_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        self.model.to(device)
        return self.model.encode_text(self.tokenizer(texts).to(device))


_ENCODERS: dict[tuple[str, str, str], OpenCLIPEncoder] = {}


def openclip_encoder(model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED,
                     weights: str | os.PathLike | None = None) -> OpenCLIPEncoder:  # fmt: skip
    """A cached `OpenCLIPEncoder` (one per model, tag and weight file)."""
    key = (model, pretrained, str(weights))
    if key not in _ENCODERS:
        _ENCODERS[key] = OpenCLIPEncoder(model, pretrained, weights)
    return _ENCODERS[key]


def clip_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """100 * cosine similarity of paired embeddings, (B,) float64, before any clamp."""
    a = image_emb.double()
    b = text_emb.double()
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return 100 * (a * b).sum(-1)


@register_metric("clip_score")
class CLIPScore(BenchMetric):
    """CLIP-score of reconstructions (default), originals or generated images against their captions.

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
        encoder: ImageTextEncoder | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if images not in ("reconstructions", "originals", "generated"):
            raise TokbenchError(f"clip_score images must be reconstructions, originals or generated, got {images!r}")
        self.images = images
        self.needs_decode = images == "reconstructions"
        # Kept out of the module tree so that saved metric states hold sums, not network weights.
        self._encoder = [encoder if encoder is not None else openclip_encoder(model, pretrained, weights)]
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_raw", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

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
        with torch.no_grad():
            img = encoder.encode_images(images[keep])
            txt = encoder.encode_texts([batch.captions[i] for i in keep], images.device)
        raw = clip_scores(img, txt)
        clamped = raw.clamp_min(0)
        self.total = self.total + clamped.sum()
        self.total_sq = self.total_sq + (clamped * clamped).sum()
        self.total_raw = self.total_raw + raw.sum()
        self.count = self.count + len(keep)
        rows = torch.full((images.shape[0],), float("nan"), dtype=torch.float64)
        rows[keep] = clamped.cpu()
        self.last_rows = {"clip_score": rows}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        n = int(self.count)
        if n == 0:
            return {"clip_score": float("nan")}
        mean = float(self.total) / n
        var = max(float(self.total_sq) / n - mean**2, 0.0)
        return {"clip_score": mean, "clip_score_std": var**0.5,
                "clip_score_torchmetrics": max(float(self.total_raw) / n, 0.0), "clip_score_images": float(n)}  # fmt: skip

    def protocol(self) -> dict[str, Any]:
        desc = dict(getattr(self._encoder[0], "description", {}) or {"encoder": "custom"})
        desc.update(images=self.images, score="per-image max(100 cos, 0), mean over images with a caption")
        return desc
