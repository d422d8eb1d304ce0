"""SigLIP image encoders as continuous tokenizers (no decoder): Google's releases and Janus's vision tower.

Janus decouples visual encoding: generation uses a VQ tokenizer, understanding a SigLIP-L/16 at 384 px whose
576 patch features (width 1024) feed the language model. This family puts those understanding encoders next
to the generation tokenizers. `encode` returns `Tokens(features=(B, N, D))`; there is no `decode`.

Two architectures, each wrapped from the library that implements it faithfully:

* `transformers`: Google's SigLIP / SigLIP 2 fixed-resolution checkpoints (`google/siglip-*`, `google/siglip2-*`,
  `model_type: siglip`), loaded into `transformers.SiglipVisionModel`. Features are the last encoder layer's
  patch tokens after `post_layernorm` (= `last_hidden_state`); the attention-pooling head is not used.
* `janus`: the tower inside the Janus / Janus-Pro checkpoints (keys `vision_model.vision_tower.*`), built by
  Janus's `create_siglip_vit` as a timm-layout ViT (`vit_large_patch16_siglip_384`: no class token, exact GELU,
  LayerNorm eps 1e-6). Janus keeps the first `layers + select_layer + 1` blocks (`select_layer=-1`, all 24 in the
  released config) and always applies the final `norm`; its `attn_pool` head is stored but never used.

Inputs are [0, 1]; encode normalises with mean 0.5 / std 0.5 (the released processors' values).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..building import Build, refuse_unknown
from ..checkpoint import (
    checkpoint_keys,
    detect_prefix,
    load_strict,
    read_state_dict,
    read_under_prefix,
)
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, check_images
from ..features import check_stage
from ..options import DType
from ..protocols import Geometry, drop_alpha, expand_geometry, expand_to_square, register_protocol, scale
from ..registry import Family, Variant
from ..weights import Artifact, shard_resolver

ARCHS = ("transformers", "janus")

# transformers.SiglipVisionConfig fields a config may set (the rest keep the library defaults, which are
# the released ones: gelu_pytorch_tanh, LayerNorm eps 1e-6).
TRANSFORMERS_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
)
# Janus `SigLIPVisionCfg` fields (janus/models/siglip_vit.py) plus `select_layer` of `create_siglip_vit`.
JANUS_FIELDS = (
    "image_size",
    "patch_size",
    "width",
    "layers",
    "heads",
    "mlp_ratio",
    "global_pool",
    "class_token",
)

# Where each architecture's tensors sit in the released files, most specific first, and a key that proves it.
PREFIXES = {
    "transformers": (("vision_model.", ""), "embeddings.patch_embedding.weight"),
    "janus": (("vision_model.vision_tower.", "vision_tower.", ""), "patch_embed.proj.weight"),
}

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
JANUS_MIN_SIZE = 14  # VLMImageProcessor's min_size for the short side after the aspect-preserving resize
JANUS_BACKGROUND = (127, 127, 127)  # tuple(int(m * 255) for m in image_mean) with mean 0.5


@register_protocol(
    "janus-resize-pad",
    "Janus VLMImageProcessor: long side resized to the target with PIL BICUBIC (sides truncated with int(), "
    "short side at least 14), then padded to a square with (127, 127, 127), image centred (expand2square)",
    geometry=lambda w, h, size: janus_geometry(w, h, size),
)
def janus_resize_pad(img: Image.Image, size: int) -> Image.Image:
    img = drop_alpha(img)
    return expand_to_square(img.resize(_janus_resized(*img.size, size), resample=Image.BICUBIC), JANUS_BACKGROUND)


def _janus_resized(w: int, h: int, size: int) -> tuple[int, int]:
    longest = max(w, h)
    return max(int(w / longest * size), JANUS_MIN_SIZE), max(int(h / longest * size), JANUS_MIN_SIZE)


def janus_geometry(w: int, h: int, size: int) -> Geometry:
    """Where `janus_resize_pad` puts source pixels (boxes of annotated text follow it)."""
    nw, nh = _janus_resized(w, h, size)
    _, pad = expand_geometry(nw, nh)
    return scale(w, h, nw, nh).then(pad)


def janus_depth(layers: int, select_layer: int) -> int:
    """Blocks Janus builds for `select_layer` (create_siglip_vit): -1 = all, -2 = all but the last, k > 0 = k."""
    if select_layer <= 0:
        return min(layers, layers + select_layer + 1)
    return min(layers, select_layer)


# --------------------------------------------------------------------------------------------- models


def build_transformers_model(config: Mapping[str, Any]) -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    fields = {k: config[k] for k in TRANSFORMERS_FIELDS if k in config}
    # The pooling head is not part of the features; leaving it out also keeps it out of the strict load.
    model = SiglipVisionModel(SiglipVisionConfig(**fields, vision_use_head=False))
    return model.eval()


def build_janus_model(config: Mapping[str, Any]) -> torch.nn.Module:
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    if config.get("class_token", False):
        raise TokbenchError(
            "Janus SigLIP towers have no class token (class_token=False); got class_token=True"
        )
    depth = janus_depth(int(config["layers"]), int(config.get("select_layer", -1)))
    model = VisionTransformer(
        img_size=int(config["image_size"]),
        patch_size=int(config["patch_size"]),
        embed_dim=int(config["width"]),
        depth=depth,
        num_heads=int(config["heads"]),
        mlp_ratio=float(config.get("mlp_ratio", 4.0)),
        qkv_bias=True,
        class_token=False,
        global_pool="",  # Janus's `map` head (attn_pool) is never called: ignore_head=True
        num_classes=0,
        # Janus's copy of timm's ViT hard-codes these two (siglip_vit.py), whatever timm's defaults become.
        act_layer=torch.nn.GELU,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        weight_init="skip",
    )
    return model.eval()


# --------------------------------------------------------------------------------------------- loading


def _checkpoint_keys(path: Path) -> list[str]:
    """Tensor names, from the safetensors header or index when there is one, else from the pickle."""
    keys = checkpoint_keys(path)
    return keys if keys is not None else list(read_state_dict(path))


def detect_arch(keys: list[str]) -> str | None:
    """Which architecture a checkpoint holds, from its key names (Janus checked first: its keys also start
    with `vision_model.`)."""
    for arch in ("janus", "transformers"):
        candidates, probe = PREFIXES[arch]
        if detect_prefix(keys, candidates, probe) is not None:
            return arch
    return None


def read_tower(path: Path, arch: str, artifact: Artifact | None) -> tuple[dict[str, torch.Tensor], str]:
    """The vision tower's tensors (prefix stripped) and the prefix they were stored under."""
    candidates, probe = PREFIXES[arch]
    sd, prefix = read_under_prefix(
        path, candidates, probe, resolve_shard=shard_resolver(artifact) if artifact is not None else None,
        what=f"{arch} SigLIP vision tower (check the file and the config's `arch`)",
    )  # fmt: skip
    return sd, prefix


# --------------------------------------------------------------------------------------------- adapter


class SiglipTokenizer(ModuleTokenizer):
    """A SigLIP vision tower: (B, 3, S, S) images in [0, 1] -> (B, (S // p)^2, D) patch features."""

    def __init__(
        self, model: torch.nn.Module, arch: str, config: Mapping[str, Any], spec: TokenizerSpec
    ) -> None:
        super().__init__()
        self.model = model
        self.arch = arch
        self.config = dict(config)
        self.spec = spec
        self.image_size = int(config["image_size"])
        self.patch_size = int(config["patch_size"])
        self.grid = (self.image_size // self.patch_size,) * 2
        self.select_layer = int(config.get("select_layer", -1))
        self.post_norm = bool(config.get("post_norm", True))
        self.register_mean_std(config.get("image_mean", MEAN), config.get("image_std", STD))

    def register_mean_std(self, mean: Any, std: Any) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        check_images(images)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise TokbenchError(
                f"{self.spec.name} takes {self.image_size}x{self.image_size} images (its position embedding is "
                f"fixed), got {images.shape[-2]}x{images.shape[-1]}; run it at its native resolution with the "
                f"{self.spec.preprocessing!r} protocol"
            )
        dtype = next(self.model.parameters()).dtype
        x = (images.to(self.device, torch.float32) - self.mean.to(self.device)) / self.std.to(self.device)
        x = x.to(dtype)
        if self.arch == "janus":
            feats = self.model.forward_features(x)  # blocks kept by select_layer, then the final norm
        else:
            out = self.model(pixel_values=x, output_hidden_states=self.select_layer != -1)
            if self.select_layer == -1:
                feats = out.last_hidden_state if self.post_norm else out.hidden_states[-1]
            else:
                feats = out.hidden_states[self.select_layer]
                if self.post_norm:
                    feats = self.model.post_layernorm(feats)
        return Tokens(
            features=feats.float(),
            grid=self.grid,
            meta={"arch": self.arch, "select_layer": self.select_layer},
        )

    # understanding: token features for the probes (tokbench.features); a continuous encoder has one stage
    feature_stages = ("semantic",)

    def features(self, images: torch.Tensor, stage: str = "semantic") -> torch.Tensor:
        """(B, N, D) float32: the patch features `encode` returns (the tower's output at `select_layer`)."""
        check_stage(self, stage)
        return self.encode(images).features


def _describe_model(arch: str, config: Mapping[str, Any]) -> str:
    if arch == "janus":
        depth = janus_depth(int(config["layers"]), int(config.get("select_layer", -1)))
        return f"timm ViT width {config['width']}, {depth}/{config['layers']} blocks, patch {config['patch_size']}"
    return (
        f"transformers SiglipVisionModel hidden {config.get('hidden_size')}, {config.get('num_hidden_layers')} "
        f"layers, patch {config.get('patch_size')}"
    )


def _check_config(arch: str, config: Mapping[str, Any]) -> None:
    if arch == "janus":
        required = ("image_size", "patch_size", "width", "layers", "heads")
        accepted = {*JANUS_FIELDS, "arch", "select_layer", "image_mean", "image_std", "model_name"}
    else:
        required = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
        accepted = {*TRANSFORMERS_FIELDS, "arch", "select_layer", "post_norm", "image_mean", "image_std"}
    missing = [k for k in required if k not in config]
    if missing:
        raise TokbenchError(
            f"a {arch} SigLIP config needs {', '.join(required)}; missing {', '.join(missing)} "
            f"(got {dict(config)}). Load a released variant (`tokbench list siglip*`) or pass a full config."
        )
    refuse_unknown(f"{arch} SigLIP config fields", config, accepted)


def _unused_keys(arch: str, config: Mapping[str, Any]):
    """Stored tensors that the features never touch: the pooling heads (Janus's attn_pool, ignore_head=True;
    SigLIP's head, vision_use_head=False), and for Janus the blocks past `select_layer`, which Janus itself
    never builds (it loads with strict=False)."""
    if arch == "janus":
        depth = janus_depth(int(config["layers"]), int(config.get("select_layer", -1)))
        block = re.compile(r"^blocks\.(\d+)\.")

        def unused(key: str) -> bool:
            m = block.match(key)
            return key.startswith("attn_pool.") or (m is not None and int(m.group(1)) >= depth)

        return unused
    return lambda key: key.startswith("head.")


def build(b: Build) -> SiglipTokenizer:
    config = dict(b.config)
    artifact = b.variant.weights if b.variant is not None else None
    arch = config.get("arch")
    if b.random_weights:
        if arch not in ARCHS:
            raise TokbenchError(
                f"weights='random' needs config['arch'] (one of {ARCHS}) to know what to build, got {arch!r}; "
                "load a released variant (`tokbench list siglip*`) or pass a full config"
            )
    else:
        path = b.checkpoint("a SigLIP checkpoint (model.safetensors) with a config, or a Janus model file")
        arch = arch or detect_arch(_checkpoint_keys(path))
        if arch not in ARCHS:
            raise TokbenchError(
                f"cannot tell the SigLIP architecture of {path} (arch={arch!r}); set config['arch'] to one of {ARCHS}"
            )
        config["arch"] = arch
    _check_config(arch, config)

    def make() -> torch.nn.Module:
        model = build_janus_model(config) if arch == "janus" else build_transformers_model(config)
        if arch == "janus" and b.random_weights:  # built with weight_init="skip", which leaves pos_embed unset
            model.init_weights()
        return model

    def load(model: torch.nn.Module, path: Path) -> dict[str, str]:
        sd, prefix = read_tower(path, arch, artifact if b.weights is None else None)
        load_strict(model, sd, source=f"{path} (keys under {prefix!r})", ignore_unexpected=_unused_keys(arch, config))
        return {"keys": f"{prefix}*"}

    model = b.model(make, load, "", library_init=True, checkpoint=None if b.random_weights else path)
    model = model.to(b.torch_dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    grid = int(config["image_size"]) // int(config["patch_size"])
    width = config["width"] if arch == "janus" else config["hidden_size"]
    b.source["model"] = _describe_model(arch, config)
    if artifact is not None and b.weights is None:
        b.source["artifact"] = artifact.source
    b.notes.append(
        f"continuous features (B, {grid * grid}, {width}); no decoder; select_layer={config.get('select_layer', -1)}"
        + (", final norm applied" if arch == "janus" or config.get("post_norm", True) else "")
    )
    spec = b.spec(
        name=b.variant.name if b.variant is not None else f"siglip-{arch}",
        resolution=int(config["image_size"]),
        tokens_per_image=grid * grid,
        codebook_size=None,
        bits_per_token=None,
        supports_decode=False,
        normalisation=f"(x - {tuple(config.get('image_mean', MEAN))}) / {tuple(config.get('image_std', STD))}, "
        "i.e. [-1, 1]",
        preprocessing=b.option("preprocessing") or ("janus-resize-pad" if arch == "janus" else "resize"),
    )
    return SiglipTokenizer(model, arch, config, spec)


# --------------------------------------------------------------------------------------------- variants

# Vision-tower sizes of the released checkpoints (their config.json `vision_config`).
_SIGLIP_L16_384 = {
    "arch": "transformers",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 16,
}
_SIGLIP_SO400M14_384 = {
    "arch": "transformers",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
}
# janus/models/siglip_vit.py SigLIP_MODEL_CONFIG["siglip_large_patch16_384"]; the released Janus configs pass
# image_size 384 and select_layer -1 (vision_config.params of Janus-1.3B / Janus-Pro config.json).
_JANUS_SIGLIP_L = {
    "arch": "janus",
    "image_size": 384,
    "patch_size": 16,
    "width": 1024,
    "layers": 24,
    "heads": 16,
    "mlp_ratio": 4,
    "select_layer": -1,
}
_JANUS_PREFIX = "vision_model.vision_tower."
_GOOGLE_LICENCE = "Apache-2.0"
_DEEPSEEK_LICENCE = "DeepSeek Model License (weights; code MIT)"


def _google(name: str, repo: str, config: dict[str, Any], description: str, paper: str) -> Variant:
    return Variant(
        name=name,
        family="siglip",
        config=config,
        weights=Artifact(
            name=name,
            repo_id=repo,
            filename="model.safetensors",
            licence=_GOOGLE_LICENCE,
            prefix="vision_model.",
        ),
        resolution=384,
        description=description,
        paper=paper,
    )


def _janus(name: str, repo: str, filename: str, description: str) -> Variant:
    return Variant(
        name=name,
        family="siglip",
        config=_JANUS_SIGLIP_L,
        weights=Artifact(
            name=name, repo_id=repo, filename=filename, licence=_DEEPSEEK_LICENCE, prefix=_JANUS_PREFIX
        ),
        resolution=384,
        description=description,
        paper="Janus (arXiv 2410.13848) / Janus-Pro (arXiv 2501.17811)",
    )


_SIGLIP_PAPER = "Sigmoid Loss for Language Image Pre-Training (Zhai et al., arXiv 2303.15343)"
_SIGLIP2_PAPER = "SigLIP 2 (Tschannen et al., arXiv 2502.14786)"

VARIANTS = (
    _google(
        "siglip-large-patch16-384",
        "google/siglip-large-patch16-384",
        _SIGLIP_L16_384,
        "SigLIP ViT-L/16 at 384 px, 576 tokens of width 1024 (the encoder Janus starts from)",
        _SIGLIP_PAPER,
    ),
    _google(
        "siglip-so400m-patch14-384",
        "google/siglip-so400m-patch14-384",
        _SIGLIP_SO400M14_384,
        "SigLIP So400m/14 at 384 px, 729 tokens of width 1152 (LLaVA-OneVision, TokenFlow's teacher)",
        _SIGLIP_PAPER,
    ),
    _google(
        "siglip2-large-patch16-384",
        "google/siglip2-large-patch16-384",
        _SIGLIP_L16_384,
        "SigLIP 2 ViT-L/16 at 384 px (fixed resolution, SiglipModel layout), 576 tokens of width 1024",
        _SIGLIP2_PAPER,
    ),
    _google(
        "siglip2-so400m-patch14-384",
        "google/siglip2-so400m-patch14-384",
        _SIGLIP_SO400M14_384,
        "SigLIP 2 So400m/14 at 384 px (fixed resolution, SiglipModel layout), 729 tokens of width 1152",
        _SIGLIP2_PAPER,
    ),
    _janus(
        "janus-siglip-l-384",
        "deepseek-ai/Janus-Pro-1B",
        "pytorch_model.bin",
        "Janus-Pro-1B's understanding encoder (SigLIP-L/16 384, last layer + norm), 576 tokens of width 1024",
    ),
    _janus(
        "janus-1.3b-siglip-l-384",
        "deepseek-ai/Janus-1.3B",
        "model.safetensors",
        "Janus-1.3B's understanding encoder (SigLIP-L/16 384, last layer + norm)",
    ),
    _janus(
        "janus-pro-7b-siglip-l-384",
        "deepseek-ai/Janus-Pro-7B",
        "pytorch_model.bin.index.json",
        "Janus-Pro-7B's understanding encoder (only the shards holding vision_model.vision_tower.* are fetched)",
    ),
)

FAMILY = Family(
    name="siglip",
    build=build,
    variants=VARIANTS,
    aliases=("siglip2",),
    description="SigLIP / SigLIP 2 / Janus understanding encoders: continuous patch features, no decoder",
    default_variant="siglip-large-patch16-384",
    build_options={"dtype": (DType, "float32"), "preprocessing": str},
    code="transformers SiglipVisionModel; Janus: github.com/deepseek-ai/Janus (janus/models/siglip_vit.py)",
    packages=("transformers", "timm"),
)
