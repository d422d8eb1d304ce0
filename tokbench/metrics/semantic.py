"""Semantic metrics: how much meaning a tokenizer keeps, measured with an image-text encoder.

- `semantic-similarity`: cosine similarity of the encoder's image embeddings of each reconstruction and its
  original; mean (and std) over images, one row per image.
- `zeroshot`: zero-shot top-1 / top-5 accuracy (%) of the encoder on the originals and on the reconstructions
  of a labelled set, and their difference (the meaning lost), plus the top-1 agreement between the two
  (which needs no labels). Class names and prompt templates come from open_clip's zero-shot metadata
  (`IMAGENET_CLASSNAMES`, `OPENAI_IMAGENET_TEMPLATES`); a data set's own class names are used when the runner
  passes them in `batch.extra["class_names"]` (folder sub-directory names; 1000 WordNet ids map to ImageNet's
  names). Tokenizers without a decoder (SigLIP) get the originals' accuracy only, which is the metric
  encoder's own baseline and does not depend on the tokenizer.

Encoders are open_clip models named in `tokbench.metrics.encoders.ENCODERS` (shared with `clip_score`); their
weights come through `tokbench.weights` (explicit `weights=` path, `$TOKBENCH_WEIGHTS/<artifact>/`, the HF
cache, or a download); offline and not present raises `WeightsUnavailable`, which the runner records as a
skip. Any object with `encode_image(images) -> (B, D)` (images float [0, 1], (B, 3, H, W)) and, for
`zeroshot`, `encode_text(list[str]) -> (N, D)` can be passed as `encoder=` instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core import TokbenchError
from .base import BenchMetric, EvalBatch, register_metric
from .encoders import describe_encoder, load_encoder, move_encoder

DEFAULT_ENCODER = "ViT-L-16-SigLIP-384"


class _EncoderMetric(BenchMetric):
    """Holds the encoder outside the module tree: it is shared, never part of the metric's state dict."""

    def __init__(self, encoder: str | Any = DEFAULT_ENCODER, weights: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(encoder, str):
            self.encoder_name = encoder
            enc = load_encoder(encoder, weights)
        else:
            if weights is not None:
                raise TokbenchError("pass either an encoder object or weights for a named encoder, not both")
            self.encoder_name = getattr(encoder, "name", type(encoder).__name__)
            enc = encoder
        object.__setattr__(self, "_encoder_ref", [enc])  # a list: nn.Module must not adopt its parameters
        self.suffix = "" if self.encoder_name == DEFAULT_ENCODER else "_" + re.sub(r"\W+", "_", self.encoder_name)

    @property
    def encoder(self) -> Any:
        return self._encoder_ref[0]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D), float32, on the images' device."""
        move_encoder(self.encoder, images.device)
        return F.normalize(self.encoder.encode_image(images).float(), dim=-1).to(images.device)


# --------------------------------------------------------------------------------------------- similarity


@register_metric("semantic-similarity", packages=("open_clip_torch", "transformers"))
class SemanticSimilarity(_EncoderMetric):
    """Cosine similarity in [-1, 1] of image embeddings of each reconstruction and its original."""

    name = "semantic-similarity"
    needs_decode = True
    higher_is_better = True

    def __init__(self, encoder: str | Any = DEFAULT_ENCODER, weights: str | None = None, **kwargs: Any) -> None:
        super().__init__(encoder, weights, **kwargs)
        self.key = "semantic_similarity" + self.suffix
        self.add_moment_states()

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        if batch.reconstructions is None:
            raise TokbenchError(f"{self.name} needs reconstructions; {batch.tokenizer!r} has no decoder")
        a = self.embed(batch.originals)
        b = self.embed(batch.reconstructions)
        cos = (a * b).sum(-1).double()
        self.add_moments(cos)
        self.last_rows = {self.key: cos.cpu()}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        return self.moments(self.key)

    def protocol(self) -> dict[str, Any]:
        d = describe_encoder(self.encoder)
        return {self.key: f"cosine of L2-normalised image embeddings, reconstruction vs original, mean over "
                f"images; {d}"}


# --------------------------------------------------------------------------------------------- zero-shot


def _is_wordnet_ids(names: Sequence[str]) -> bool:
    return len(names) == 1000 and all(re.fullmatch(r"n\d{8}", n) for n in names)


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def templates_for(templates: str | Sequence[str]) -> tuple[str, list[Callable[[str], str]]]:
    """(label, list of callables c -> prompt): open_clip's `openai` (80) or `simple` (7) sets, or format strings."""
    if isinstance(templates, str):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

        sets = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}
        if templates not in sets:
            raise TokbenchError(
                f"unknown prompt template set {templates!r}; use 'openai', 'simple' or a list of strings with '{{}}'"
            )
        return f"open_clip {templates.upper()}_IMAGENET_TEMPLATES ({len(sets[templates])})", list(sets[templates])
    out = []
    for t in templates:
        if "{}" not in t:
            raise TokbenchError(f"prompt template {t!r} has no '{{}}' where the class name goes")
        out.append(t.format)
    return f"{len(out)} custom templates", out


def zero_shot_classifier(encoder: Any, classnames: Sequence[str], templates: Sequence[Callable[[str], str]],
                         classes_per_batch: int = 10) -> torch.Tensor:
    """(C, D) class embeddings: per class, the mean of the L2-normalised embeddings of its prompts,
    L2-normalised again (the CLIP recipe; open_clip's `build_zero_shot_classifier`)."""
    rows = []
    for start in range(0, len(classnames), classes_per_batch):
        names = classnames[start : start + classes_per_batch]
        texts = [t(c) for c in names for t in templates]
        emb = F.normalize(encoder.encode_text(texts).float(), dim=-1)
        emb = emb.reshape(len(names), len(templates), -1).mean(1)
        rows.append(F.normalize(emb, dim=-1))
    return torch.cat(rows)


# Values keep their encoder alive, so that its id() in the key is never reused by another object.
_CLASSIFIER_CACHE: dict[tuple[int, tuple[str, ...], str], tuple[Any, torch.Tensor]] = {}


@register_metric("zeroshot", packages=("open_clip_torch", "transformers"))
class ZeroShotAccuracy(_EncoderMetric):
    """Zero-shot top-1 / top-5 accuracy in % on originals and reconstructions (labels in `batch.labels`,
    -1 = unlabelled), their drop, and the top-1 agreement of reconstructions with originals.

    Options: `encoder` (a name of `ENCODERS` or an object), `weights` (a file for a named encoder),
    `classnames` (None = the data set's `batch.extra["class_names"]`, else ImageNet's; `"imagenet"`; a list;
    or a text file with one name per line), `templates` (`"openai"`, `"simple"` or a list of `{}` strings).
    """

    name = "zeroshot"
    needs_decode = False  # without a decoder the originals are still scored (the encoder's own baseline)
    higher_is_better = True

    def __init__(
        self,
        encoder: str | Any = DEFAULT_ENCODER,
        weights: str | None = None,
        classnames: str | Sequence[str] | None = None,
        templates: str | Sequence[str] = "openai",
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, weights, **kwargs)
        self.templates_label, self.templates = templates_for(templates)
        self.classnames_option = classnames
        self.classnames: list[str] | None = None
        self.classnames_source = ""
        self.key = "zeroshot" + self.suffix
        for state in ("top1", "top5", "n", "top1_recon", "top5_recon", "n_recon", "agree", "n_agree"):
            self.add_state(state, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _resolve_classnames(self, batch: EvalBatch) -> list[str]:
        opt = self.classnames_option
        if opt is None:
            given = batch.extra.get("class_names")
            if given and not _is_wordnet_ids(given):
                return list(given), "the data set's class folders"
            return imagenet_classnames(), "open_clip IMAGENET_CLASSNAMES"
        if isinstance(opt, str):
            if opt == "imagenet":
                return imagenet_classnames(), "open_clip IMAGENET_CLASSNAMES"
            path = Path(opt).expanduser()
            if not path.is_file():
                raise TokbenchError(f"classnames must be 'imagenet', a list, or a text file; {opt!r} is none of these")
            names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            return names, str(path)
        return list(opt), "given list"

    def classifier(self, batch: EvalBatch) -> torch.Tensor:
        if self.classnames is None:
            self.classnames, self.classnames_source = self._resolve_classnames(batch)
        key = (id(self.encoder), tuple(self.classnames), self.templates_label)
        if key not in _CLASSIFIER_CACHE:  # 1000 classes x 80 prompts: built once per encoder, reused by every job
            move_encoder(self.encoder, batch.originals.device)
            weights = zero_shot_classifier(self.encoder, self.classnames, self.templates).cpu()
            _CLASSIFIER_CACHE[key] = (self.encoder, weights)
        return _CLASSIFIER_CACHE[key][1].to(batch.originals.device)

    def _ranks(self, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, min(5, C)) class indices by decreasing similarity."""
        logits = self.embed(images) @ weights.T  # the logit scale and SigLIP's bias do not change the order
        return logits.topk(min(5, weights.shape[0]), dim=-1).indices

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        weights = self.classifier(batch)
        n_cls = weights.shape[0]
        b = batch.originals.shape[0]
        labels = batch.labels
        if labels is None:
            labels = torch.full((b,), -1, dtype=torch.long)
        labels = labels.to(batch.originals.device).long()
        if int(labels.max()) >= n_cls:
            raise TokbenchError(
                f"label {int(labels.max())} is out of range for {n_cls} class names ({self.classnames_source}); "
                "pass the data set's class names with `classnames:`"
            )
        known = labels >= 0
        if batch.reconstructions is None and not bool(known.any()):
            raise TokbenchError(
                "zeroshot needs labelled images (class sub-folders, or imagenet-val) for a tokenizer without "
                "a decoder; this batch has no labels"
            )
        rows: dict[str, torch.Tensor] = {}
        ranks = self._ranks(batch.originals, weights)
        hit1, hit5 = self._hits(ranks, labels, known)
        self.top1 += int(hit1[known].sum())
        self.top5 += int(hit5[known].sum())
        self.n += int(known.sum())
        rows[f"{self.key}_top1"], rows[f"{self.key}_top5"] = hit1, hit5
        if batch.reconstructions is not None:
            ranks_r = self._ranks(batch.reconstructions, weights)
            hit1_r, hit5_r = self._hits(ranks_r, labels, known)
            self.top1_recon += int(hit1_r[known].sum())
            self.top5_recon += int(hit5_r[known].sum())
            self.n_recon += int(known.sum())
            same = (ranks_r[:, 0] == ranks[:, 0]).double()
            self.agree += int(same.sum())
            self.n_agree += b
            rows[f"{self.key}_top1_recon"], rows[f"{self.key}_top5_recon"] = hit1_r, hit5_r
            rows[f"{self.key}_agreement"] = same.cpu()
        self.last_rows = rows

    @staticmethod
    def _hits(ranks: torch.Tensor, labels: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image 1.0 / 0.0 hits at top-1 and top-5 (NaN for unlabelled images), on the CPU."""
        match = ranks == labels[:, None]
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=ranks.device)
        hit1 = torch.where(known, match[:, 0].double(), nan)
        hit5 = torch.where(known, match.any(-1).double(), nan)
        return hit1.cpu(), hit5.cpu()

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        out: dict[str, float] = {}
        k = self.key
        n, nr = int(self.n), int(self.n_recon)
        if n:
            out[f"{k}_top1"] = 100.0 * int(self.top1) / n
            out[f"{k}_top5"] = 100.0 * int(self.top5) / n
        if nr:
            out[f"{k}_top1_recon"] = 100.0 * int(self.top1_recon) / nr
            out[f"{k}_top5_recon"] = 100.0 * int(self.top5_recon) / nr
            out[f"{k}_top1_drop"] = out[f"{k}_top1"] - out[f"{k}_top1_recon"]
            out[f"{k}_top5_drop"] = out[f"{k}_top5"] - out[f"{k}_top5_recon"]
        if int(self.n_agree):
            out[f"{k}_agreement"] = 100.0 * int(self.agree) / int(self.n_agree)
        if not out:
            raise TokbenchError("zeroshot saw no labelled images and no reconstructions: nothing to report")
        out[f"{k}_images"] = float(n)
        return out

    def protocol(self) -> dict[str, Any]:
        d = describe_encoder(self.encoder)
        n_cls = len(self.classnames) if self.classnames is not None else "?"
        return {
            self.key: f"zero-shot accuracy in % ({n_cls} classes from {self.classnames_source or 'not yet read'}; "
            f"prompts {self.templates_label}; class embedding = normalised mean of normalised prompt embeddings); "
            "_recon = on reconstructions, _drop = originals minus reconstructions, _agreement = % of images whose "
            "top-1 class is the same for both (labels not needed); a tokenizer without a decoder gets the "
            f"originals' accuracy only, i.e. the encoder's own baseline; {d}"
        }
