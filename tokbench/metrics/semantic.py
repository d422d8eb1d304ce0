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

Encoders are open_clip models from a table (`ENCODERS`); their weights come through `tokbench.weights`
(explicit `weights=` path, `$TOKBENCH_WEIGHTS/<artifact>/`, the HF cache, or a download); offline and not
present raises `WeightsUnavailable`, which the runner records as a skip. Any object with
`encode_image(images) -> (B, D)` (images float [0, 1], (B, 3, H, W)) and, for `zeroshot`,
`encode_text(list[str]) -> (N, D)` can be passed as `encoder=` instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import load_strict, read_state_dict
from ..core import TokbenchError
from ..weights import Artifact, register_artifact, resolve
from .base import BenchMetric, EvalBatch, register_metric
from .clip_score import CLIP_VIT_L14_OPENAI

# --------------------------------------------------------------------------------------------- encoders


@dataclass(frozen=True)
class EncoderSpec:
    """An open_clip model and where its weights (and, for HF-tokenised text towers, tokenizer files) live."""

    name: str
    model: str  # open_clip model config name
    # open_clip pretrained tag the file belongs to: its preprocessing (mean, std, resize mode) and QuickGELU
    # flag are read from open_clip's table, since a model built from a file path would not get them.
    pretrained: str
    weights: Artifact
    tokenizer: Artifact | None = None  # tokenizer.json; tokenizer_config.json etc. come from the same repo
    description: str = ""


HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _spec(name: str, model: str, pretrained: str, repo: str, licence: str, hf_text: bool, text: str,
          weights: Artifact | None = None) -> EncoderSpec:  # fmt: skip
    used_by = "zeroshot, semantic-similarity"
    weights = weights or register_artifact(
        Artifact(name=f"openclip-{name}", repo_id=repo, filename="open_clip_model.safetensors", licence=licence,
                 used_by=used_by)  # fmt: skip
    )
    tokenizer = None
    if hf_text:  # SigLIP text towers use a Hugging Face tokenizer: its files sit in the same repository
        tokenizer = register_artifact(
            Artifact(name=f"openclip-{name}-tokenizer", repo_id=repo, filename="tokenizer.json", licence=licence,
                     used_by="zeroshot (with tokenizer_config.json and special_tokens_map.json)")  # fmt: skip
        )
    return EncoderSpec(name, model, pretrained, weights, tokenizer, text)


ENCODERS: dict[str, EncoderSpec] = {
    s.name: s
    for s in (
        _spec(
            "ViT-L-16-SigLIP-384",
            "ViT-L-16-SigLIP-384",
            "webli",
            "timm/ViT-L-16-SigLIP-384",
            "Apache-2.0",
            True,
            "SigLIP ViT-L/16 384 px (WebLI): ImageNet zero-shot 82.07% in open_clip's results table",
        ),
        _spec(
            "ViT-SO400M-14-SigLIP-384",
            "ViT-SO400M-14-SigLIP-384",
            "webli",
            "timm/ViT-SO400M-14-SigLIP-384",
            "Apache-2.0",
            True,
            "SigLIP So400m/14 384 px (WebLI): ImageNet zero-shot 83.08% in open_clip's results table",
        ),
        _spec(
            "ViT-L-14-openai",
            "ViT-L-14",
            "openai",
            "timm/vit_large_patch14_clip_224.openai",
            "MIT",
            False,
            "OpenAI CLIP ViT-L/14 224 px (the torchmetrics CLIPScore default): ImageNet zero-shot 75.5%",
            weights=CLIP_VIT_L14_OPENAI,  # the file clip_score uses
        ),
    )
}
DEFAULT_ENCODER = "ViT-L-16-SigLIP-384"


class OpenClipEncoder:
    """An open_clip model as an image (and text) embedder.

    Images are quantised to uint8 (as saved files would be) and go through open_clip's evaluation transform
    for the model's release (PIL bicubic resize: `squash` both sides for SigLIP, short side + centre crop for
    OpenAI CLIP; then the release's mean/std), so an image at the encoder's size is used as is.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor] | Callable[[], Callable] | None,
        *,
        name: str,
        preprocess: dict[str, Any],
        weights: str = "",
        lazy_tokenizer: bool = False,
    ) -> None:
        import open_clip

        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._tokenizer = tokenizer
        self._lazy_tokenizer = lazy_tokenizer
        self.name = name
        self.preprocess = dict(preprocess)
        self.transform = open_clip.image_transform(
            preprocess["size"],
            is_train=False,
            mean=preprocess["mean"],
            std=preprocess["std"],
            resize_mode=preprocess.get("resize_mode"),
            interpolation=preprocess.get("interpolation"),
        )
        self.weights = weights

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> OpenClipEncoder:
        self.model.to(device)
        return self

    @property
    def tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        if self._lazy_tokenizer:  # HF tokenizers are loaded (and their files resolved) only when text is needed
            self._tokenizer = self._tokenizer()
            self._lazy_tokenizer = False
        if self._tokenizer is None:
            raise TokbenchError(f"encoder {self.name} has no text tokenizer; zero-shot needs one")
        return self._tokenizer

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import to_pil_image

        u8 = torch.floor(images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()
        x = torch.stack([self.transform(to_pil_image(im)) for im in u8]).to(self.device)
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(x.to(dtype)).float()

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens).float()

    def describe(self) -> dict[str, Any]:
        p = self.preprocess
        return {
            "encoder": self.name,
            "weights": self.weights,
            "input": f"uint8-quantised, open_clip eval transform: {p['size']} px {p.get('interpolation')} "
            f"resize ({p.get('resize_mode')}), mean {tuple(p['mean'])}, std {tuple(p['std'])}",
        }


def _hf_tokenizer_loader(spec: EncoderSpec, text_cfg: dict[str, Any]) -> Callable[[], Callable]:
    def load():
        import tempfile

        from open_clip.tokenizer import HFTokenizer

        # Resolve the files one by one (explicit folder, TOKBENCH_WEIGHTS, HF cache, download) and gather them
        # in one folder, which is what AutoTokenizer.from_pretrained reads.
        paths = [resolve(spec.tokenizer, filename=f) for f in HF_TOKENIZER_FILES]
        folder = Path(tempfile.mkdtemp(prefix="tokbench-tokenizer-"))
        for p in paths:
            (folder / p.name).symlink_to(p.resolve())
        return HFTokenizer(
            str(folder),
            context_length=text_cfg.get("context_length", 77),
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **text_cfg.get("tokenizer_kwargs", {}),
        )

    return load


def pretrained_preprocess(spec: EncoderSpec) -> dict[str, Any]:
    """mean, std, interpolation, resize_mode (and quick_gelu) of the spec's open_clip pretrained tag."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {}
    keys = ("mean", "std", "interpolation", "resize_mode", "quick_gelu")
    return {k: cfg[k] for k in keys if k in cfg}


_ENCODER_CACHE: dict[tuple[str, str], OpenClipEncoder] = {}


def load_encoder(name: str, weights: str | Path | None = None) -> OpenClipEncoder:
    """The open_clip encoder `name` (a key of `ENCODERS`), cached per process (one copy for all jobs)."""
    if name not in ENCODERS:
        raise TokbenchError(f"unknown semantic encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    spec = ENCODERS[name]
    path = resolve(spec.weights, explicit=weights)  # raises WeightsUnavailable with the fetch instructions
    key = (name, str(path))
    if key in _ENCODER_CACHE:
        return _ENCODER_CACHE[key]
    import open_clip

    pcfg = pretrained_preprocess(spec)
    quick_gelu = bool(pcfg.pop("quick_gelu", False))
    # The architecture from open_clip (with the release's preprocessing and activation, which a model built
    # without its pretrained tag would not get); the weights through tokbench's safe reader, loaded strictly.
    model = open_clip.create_model(
        spec.model,
        pretrained=None,
        force_quick_gelu=quick_gelu,
        force_preprocess_cfg=pcfg,
        pretrained_image=False,
        pretrained_text=False,
    )
    load_strict(model, read_state_dict(path), source=f"{path} ({spec.weights.name})")
    text_cfg = open_clip.get_model_config(spec.model).get("text_cfg", {})
    if spec.tokenizer is not None:
        tokenizer, lazy = _hf_tokenizer_loader(spec, text_cfg), True
    else:
        tokenizer, lazy = open_clip.get_tokenizer(spec.model), False  # BPE vocabulary ships with open_clip
    encoder = OpenClipEncoder(
        model,
        tokenizer,
        name=f"open_clip {spec.model} ({spec.pretrained})",
        preprocess=open_clip.get_model_preprocess_cfg(model),
        weights=f"{spec.weights.source} -> {path}",
        lazy_tokenizer=lazy,
    )
    _ENCODER_CACHE[key] = encoder
    return encoder


def _describe(encoder: Any) -> dict[str, Any]:
    if hasattr(encoder, "describe"):
        return dict(encoder.describe())
    return {"encoder": getattr(encoder, "name", type(encoder).__name__)}


def _move(encoder: Any, device: torch.device) -> None:
    if hasattr(encoder, "to"):
        encoder.to(device)


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
        _move(self.encoder, images.device)
        return F.normalize(self.encoder.encode_image(images).float(), dim=-1).to(images.device)


# --------------------------------------------------------------------------------------------- similarity


@register_metric("semantic-similarity")
class SemanticSimilarity(_EncoderMetric):
    """Cosine similarity in [-1, 1] of image embeddings of each reconstruction and its original."""

    name = "semantic-similarity"
    needs_decode = True
    higher_is_better = True

    def __init__(self, encoder: str | Any = DEFAULT_ENCODER, weights: str | None = None, **kwargs: Any) -> None:
        super().__init__(encoder, weights, **kwargs)
        self.key = "semantic_similarity" + self.suffix
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        if batch.reconstructions is None:
            raise TokbenchError(f"{self.name} needs reconstructions; {batch.tokenizer!r} has no decoder")
        a = self.embed(batch.originals)
        b = self.embed(batch.reconstructions)
        cos = (a * b).sum(-1).double()
        self.total += cos.sum().to(self.total.device)
        self.total_sq += cos.pow(2).sum().to(self.total.device)
        self.count += cos.numel()
        self.last_rows = {self.key: cos.cpu()}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        n = int(self.count)
        if n == 0:
            return {self.key: float("nan")}
        mean = float(self.total) / n
        var = max(float(self.total_sq) / n - mean**2, 0.0)
        return {self.key: mean, f"{self.key}_std": var**0.5}

    def protocol(self) -> dict[str, Any]:
        d = _describe(self.encoder)
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


@register_metric("zeroshot")
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
            _move(self.encoder, batch.originals.device)
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
        d = _describe(self.encoder)
        n_cls = len(self.classnames) if self.classnames is not None else "?"
        return {
            self.key: f"zero-shot accuracy in % ({n_cls} classes from {self.classnames_source or 'not yet read'}; "
            f"prompts {self.templates_label}; class embedding = normalised mean of normalised prompt embeddings); "
            "_recon = on reconstructions, _drop = originals minus reconstructions, _agreement = % of images whose "
            "top-1 class is the same for both (labels not needed); a tokenizer without a decoder gets the "
            f"originals' accuracy only, i.e. the encoder's own baseline; {d}"
        }
