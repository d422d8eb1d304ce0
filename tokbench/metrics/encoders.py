"""open_clip image-text encoders shared by the metrics that need one (`clip_score`, `zeroshot`,
`semantic-similarity`). Registers no metric.

- `ENCODERS`: named open_clip releases (`EncoderSpec`: model config, pretrained tag, weight and tokenizer
  artifacts). `open_clip_spec(model, pretrained)` gives the spec of any other (model, pretrained) pair that
  open_clip publishes on the Hugging Face hub.
- `load_encoder(name or spec, weights=None)`: the model built by open_clip with its release's preprocessing
  (mean, std, resize mode) and activation, the weights found by `tokbench.weights` (explicit path,
  `$TOKBENCH_WEIGHTS/<artifact>/`, the HF cache, a download) and loaded strictly; one copy per process.
- `OpenClipEncoder`: `encode_image(images) -> (B, D)` (float [0, 1], (B, 3, H, W)), `encode_text(texts)
  -> (N, D)`, `describe()`, `to(device)`. Metrics accept any object with the methods they call instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_strict, read_state_dict
from ..core import TokbenchError
from ..weights import Artifact, is_available, register_artifact, resolve

CLIP_VIT_L14_OPENAI = register_artifact(
    Artifact(
        name="clip-vit-l-14-openai",
        repo_id="timm/vit_large_patch14_clip_224.openai",
        filename="open_clip_model.safetensors",
        size=1_710_000_000,
        licence="MIT (OpenAI CLIP)",
        used_by="clip_score (default model), zeroshot, semantic-similarity",
    )
)
OPEN_CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"  # what open_clip's HF hub releases ship
OPEN_CLIP_BIN_FILE = "open_clip_pytorch_model.bin"  # what older ones ship instead
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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


def _table_spec(name: str, model: str, pretrained: str, repo: str, licence: str, hf_text: bool, text: str,
                weights: Artifact | None = None) -> EncoderSpec:  # fmt: skip
    used_by = "zeroshot, semantic-similarity, clip_score"
    weights = weights or register_artifact(
        Artifact(name=f"openclip-{name}", repo_id=repo, filename=OPEN_CLIP_WEIGHTS_FILE, licence=licence,
                 used_by=used_by)  # fmt: skip
    )
    tokenizer = None
    if hf_text:  # SigLIP text towers use a Hugging Face tokenizer: its files sit in the same repository
        tokenizer = register_artifact(
            Artifact(name=f"openclip-{name}-tokenizer", repo_id=repo, filename="tokenizer.json", licence=licence,
                     used_by="zeroshot, clip_score (with tokenizer_config.json and special_tokens_map.json)")  # fmt: skip
        )
    return EncoderSpec(name, model, pretrained, weights, tokenizer, text)


ENCODERS: dict[str, EncoderSpec] = {
    s.name: s
    for s in (
        _table_spec(
            "ViT-L-16-SigLIP-384",
            "ViT-L-16-SigLIP-384",
            "webli",
            "timm/ViT-L-16-SigLIP-384",
            "Apache-2.0",
            True,
            "SigLIP ViT-L/16 384 px (WebLI): ImageNet zero-shot 82.07% in open_clip's results table",
        ),
        _table_spec(
            "ViT-SO400M-14-SigLIP-384",
            "ViT-SO400M-14-SigLIP-384",
            "webli",
            "timm/ViT-SO400M-14-SigLIP-384",
            "Apache-2.0",
            True,
            "SigLIP So400m/14 384 px (WebLI): ImageNet zero-shot 83.08% in open_clip's results table",
        ),
        _table_spec(
            "ViT-L-14-openai",
            "ViT-L-14",
            "openai",
            "timm/vit_large_patch14_clip_224.openai",
            "MIT",
            False,
            "OpenAI CLIP ViT-L/14 224 px (the torchmetrics CLIPScore default): ImageNet zero-shot 75.5%",
            weights=CLIP_VIT_L14_OPENAI,
        ),
        _table_spec(  # the backbone of the ViT-B/32 and Hessel CLIP-score conventions (`tokbench gen-eval`)
            "ViT-B-32-openai",
            "ViT-B-32",
            "openai",
            "timm/vit_base_patch32_clip_224.openai",
            "MIT",
            False,
            "OpenAI CLIP ViT-B/32 224 px (Hessel et al.'s CLIPScore backbone)",
        ),
    )
}


def _clean_tag(tag: str) -> str:
    return tag.lower().replace("-", "_")  # open_clip's own normalisation of pretrained tags


def open_clip_spec(model: str, pretrained: str) -> EncoderSpec:
    """The spec of an open_clip (model config, pretrained tag) pair: the `ENCODERS` entry if there is one,
    else weights from the Hugging Face repository open_clip names for the pair (`openclip-<model>-<tag>`)
    and, for a text tower with a Hugging Face tokenizer, that tokenizer's repository
    (`openclip-<model>-<tag>-tokenizer`). A pair with no hub release gets a file-only artifact: its weights
    must be given as `weights=` or put under `$TOKBENCH_WEIGHTS/openclip-<model>-<tag>/`."""
    for spec in ENCODERS.values():
        if spec.model == model and _clean_tag(spec.pretrained) == _clean_tag(pretrained):
            return spec
    import open_clip

    model_cfg = open_clip.get_model_config(model)
    if model_cfg is None:
        raise TokbenchError(
            f"open_clip has no model config {model!r}; pick a model from open_clip.list_models() "
            "(with a pretrained tag from open_clip.list_pretrained_tags_by_model(model))"
        )
    name = f"{model}-{pretrained}"
    hub, filename, fallbacks = open_clip_hub_files((open_clip.get_pretrained_cfg(model, pretrained) or {})
                                                   .get("hf_hub", ""))
    weights = Artifact(name=f"openclip-{name}", repo_id=hub or None, filename=filename, fallbacks=fallbacks,
                       used_by="clip_score")  # fmt: skip
    tokenizer = None
    hf_tokenizer = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_tokenizer:  # the repository open_clip's own get_tokenizer reads for this model
        tokenizer = Artifact(name=f"openclip-{name}-tokenizer", repo_id=hf_tokenizer, filename="tokenizer.json",
                             used_by="clip_score")  # fmt: skip
    text = f"open_clip {model} with pretrained {pretrained!r}" + (f" ({hub})" if hub else " (no hub release)")
    return EncoderSpec(name, model, pretrained, weights, tokenizer, text)


def open_clip_hub_files(entry: str) -> tuple[str, str, tuple[str, ...]]:
    """An open_clip `hf_hub` entry -> (repository, file to try first, files to try next), as open_clip's
    `download_pretrained` reads it: `org/model/` names a repository (file `open_clip_pytorch_model.bin`,
    its safetensors version first); `org/model/file.bin` a repository and a file (`file.safetensors` first)."""
    entry = entry.strip()
    if entry.count("/") < 2:  # `org/model`: no file named
        entry = entry.rstrip("/") + "/"
    repo, filename = entry.rsplit("/", 1)
    filename = filename or OPEN_CLIP_BIN_FILE
    if filename == OPEN_CLIP_BIN_FILE:
        return repo, OPEN_CLIP_WEIGHTS_FILE, (filename,)
    if filename.endswith((".bin", ".pth")):
        return repo, filename[:-4] + ".safetensors", (filename,)
    return repo, filename, ()


def pretrained_preprocess(spec: EncoderSpec) -> dict[str, Any]:
    """mean, std, interpolation, resize_mode (and quick_gelu) of the spec's open_clip pretrained tag."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {}
    keys = ("mean", "std", "interpolation", "resize_mode", "quick_gelu")
    return {k: cfg[k] for k in keys if k in cfg}


class OpenClipEncoder:
    """An open_clip model as an image and text embedder.

    Images are quantised to uint8 (as saved files would be) and go through open_clip's evaluation transform
    for the model's release (PIL bicubic resize: `squash` both sides for SigLIP, short side + centre crop for
    OpenAI CLIP; then the release's mean/std), so an image at the encoder's size is used as is. Texts are
    tokenised by the model's tokenizer and truncated to its context length.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor] | Callable[[], Callable] | None,
        *,
        name: str,
        preprocess: dict[str, Any],
        weights: str = "",
        text: str = "",
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
        self.text = text

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> OpenClipEncoder:
        self.model.to(device)
        return self

    @property
    def tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        if self._lazy_tokenizer:  # loaded (and its files resolved) only when text is needed
            self._tokenizer = self._tokenizer()
            self._lazy_tokenizer = False
        if self._tokenizer is None:
            raise TokbenchError(f"encoder {self.name} has no text tokenizer; text embeddings need one")
        return self._tokenizer

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """float [0, 1] (B, 3, H, W) -> (B, D) float32 embeddings (not normalised), on the model's device."""
        from torchvision.transforms.functional import to_pil_image

        u8 = torch.floor(images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()
        x = torch.stack([self.transform(to_pil_image(im)) for im in u8]).to(self.device)
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(x.to(dtype)).float()

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """N strings -> (N, D) float32 embeddings (not normalised), on the model's device."""
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens).float()

    def describe(self) -> dict[str, Any]:
        p = self.preprocess
        out = {
            "encoder": self.name,
            "weights": self.weights,
            "input": f"uint8-quantised, open_clip eval transform: {p['size']} px {p.get('interpolation')} "
            f"resize ({p.get('resize_mode')}), mean {tuple(p['mean'])}, std {tuple(p['std'])}",
        }
        if self.text:
            out["text"] = self.text
        return out


def describe_encoder(encoder: Any) -> str:
    """One line naming an encoder object and, when it can say, its weights and input protocol."""
    if hasattr(encoder, "describe"):
        return "; ".join(f"{k}: {v}" for k, v in encoder.describe().items())
    return f"encoder: {getattr(encoder, 'name', type(encoder).__name__)}"


def move_encoder(encoder: Any, device: torch.device) -> None:
    if hasattr(encoder, "to"):
        encoder.to(device)


def hf_tokenizer_loader(spec: EncoderSpec, text_cfg: dict[str, Any]) -> Callable[[], Callable]:
    def load():
        import tempfile

        from open_clip.tokenizer import HFTokenizer

        # Resolve the files one by one (explicit folder, TOKBENCH_WEIGHTS, HF cache, download) and gather them
        # in one folder, which is what AutoTokenizer.from_pretrained reads.
        paths = [resolve(spec.tokenizer, filename=f) for f in HF_TOKENIZER_FILES]
        with tempfile.TemporaryDirectory(prefix="tokbench-tokenizer-") as tmp:  # read at construction
            folder = Path(tmp)
            for p in paths:
                (folder / p.name).symlink_to(p.resolve())
            return HFTokenizer(
                str(folder),
                context_length=text_cfg.get("context_length", 77),
                tokenizer_mode=text_cfg.get("tokenizer_mode"),
                **text_cfg.get("tokenizer_kwargs", {}),
            )

    return load


_ENCODER_CACHE: dict[tuple[str, str, str], OpenClipEncoder] = {}


def tokenizer_encoder(name: str, weights: str | os.PathLike | None = None) -> Any | None:
    """The image-text encoder of a released tokenizer variant that has one (its `clip_encoder()`, e.g. UniTok's
    CLIP head and text tower), loaded once per process; None if `name` is no such variant."""
    from ..registry import find, load_tokenizer

    try:
        _, variant = find(name)
    except TokbenchError:
        return None
    if variant is None:
        return None
    key = ("tokenizer", variant.name, str(weights))
    if key not in _ENCODER_CACHE:
        tokenizer = load_tokenizer(variant.name, weights=weights)  # missing weights: WeightsUnavailable
        if not hasattr(tokenizer, "clip_encoder"):
            raise TokbenchError(f"tokenizer {variant.name!r} has no image-text encoder to use as a semantic encoder")
        _ENCODER_CACHE[key] = tokenizer.clip_encoder()
    return _ENCODER_CACHE[key]


def load_encoder(encoder: str | EncoderSpec, weights: str | os.PathLike | None = None) -> OpenClipEncoder:
    """The open_clip encoder `encoder` (a key of `ENCODERS`, or a spec such as `open_clip_spec(model, tag)`),
    its weights from `weights` (a file, or a folder holding it) or the resolver; cached per process, so every
    metric and job using the same model and file shares one copy."""
    if isinstance(encoder, str):
        if encoder not in ENCODERS:
            tower = tokenizer_encoder(encoder, weights)
            if tower is not None:
                return tower
            raise TokbenchError(
                f"unknown semantic encoder {encoder!r}; choose one of {', '.join(ENCODERS)}, or a released tokenizer "
                "that is also an image-text encoder (`clip_encoder()`, e.g. unitok-large)"
            )
        spec = ENCODERS[encoder]
    else:
        spec = encoder
    artifact = spec.weights
    if weights is None and not (artifact.repo_id or artifact.url) and not is_available(artifact):
        raise TokbenchError(
            f"open_clip has no Hugging Face release of model {spec.model!r} with pretrained {spec.pretrained!r}; "
            f"pass `weights: PATH` to its state dict file (or put it at $TOKBENCH_WEIGHTS/{artifact.name}/"
            f"{artifact.basename}), or pick a pair from open_clip.list_pretrained()"
        )
    path = resolve(artifact, explicit=weights)  # raises WeightsUnavailable with the fetch instructions
    key = (spec.model, _clean_tag(spec.pretrained), str(path))
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
    load_strict(model, read_state_dict(path), source=f"{path} ({artifact.name})")
    text_cfg = open_clip.get_model_config(spec.model).get("text_cfg", {})
    context = text_cfg.get("context_length", 77)
    # Tokenizers are built only when text is encoded: image-only metrics never need their files.
    if spec.tokenizer is not None:
        tokenizer = hf_tokenizer_loader(spec, text_cfg)
        text = f"Hugging Face tokenizer from {spec.tokenizer.repo_id}, {context} tokens (longer texts truncated)"
    else:  # open_clip's choice for the config (CLIP's BPE vocabulary ships with open_clip)
        tokenizer = partial(open_clip.get_tokenizer, spec.model)
        text = f"open_clip tokenizer of {spec.model}, {context} tokens (longer texts truncated)"
    loaded = OpenClipEncoder(
        model,
        tokenizer,
        name=f"open_clip {spec.model} ({spec.pretrained}{', QuickGELU' if quick_gelu else ''})",
        preprocess=open_clip.get_model_preprocess_cfg(model),
        weights=f"{artifact.source} -> {path}" if weights is None else str(path),
        text=text,
        lazy_tokenizer=True,
    )
    _ENCODER_CACHE[key] = loaded
    return loaded
