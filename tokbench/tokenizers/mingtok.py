"""MingTok-Vision (Ming-UniVision's continuous unified tokenizer): 32-value latents, 256 per 512 px image.

Written from github.com/inclusionAI/Ming-UniVision @ 3bbdd2f022eabc24a54d2f8a62b7621790dc9418 (the code the
`inclusionAI/MingTok-Vision` card runs): `mingtok/modeling_mingtok.py` (`MingTok`, `MingTokConfig`),
`mingtok/vision_transformer/vision_transformer.py` (`VisionTransformerEncoder`, `TransformerDecoder`,
`build_low_level_encoder` / `build_semantic_decoder` / `build_pixel_decoder`), `mingtok/vision_transformer/layers/`
(attention, block, mlp, swiglu_ffn, patch_embed), `mingtok/utils/processor.py` (`CenterCropProcessor`),
`mingunivision/processing_bailingmm.py` (`MingTokUndProcessor`) and `mingunivision/test_infer_recon_image.py`
(post-processing). Three stages, all pre-LN ViT blocks (LayerNorm eps 1e-6, qkv bias, embed_dim // 64 heads):

* `low_level_encoder`: patch conv (stride P), the CLS token appended at the END (its `pos_embed` row is the last
  one too; the patch rows are bicubic-interpolated, DINOv2 style, when the grid is not the trained one), SwiGLU
  blocks, then `mean over channel groups + out_proj(GELU(out_norm(x)))` -> the raw latent (B, N+1, 32);
  `latent = (raw - mean) / scaling_factor` are the continuous tokens Ming-UniVision's LLM reads and predicts;
* `semantic_decoder`: CAUSAL blocks on `in_proj(raw) + raw` (each channel repeated D/32 times), LayerNorm, CLS
  dropped -> (B, N, 1024), what Ming-UniVision's `linear_proj` maps into the LLM; its CLS output is
  `x_norm_clstoken` (not used by Ming-UniVision);
* `pixel_decoder`: `sem_to_pix` (one semantic token -> r x r pixel tokens, r = 32/16), blocks with a GELU MLP (the
  official `build_pixel_decoder` passes no `ffn_layer`), no position embedding, LayerNorm, `head` -> 16x16x3
  patches, `clamp(-1, 1)`.

Because the semantic decoder is causal and the CLS latent comes last, the N patch latents alone decide the
reconstruction: `Tokens.features` are those N = h*w latents (raster order) and `decode` is the official
`recon_from_latent` (semantic decoder on `latent * scaling_factor + mean`, then the pixel decoder).

Rate (`RATE_CONVENTION`, as `diffusers_vae.py` states it for continuous latents): an image costs its N x 32
latent values, each counted at `storage_bits` bits (16 by default: bfloat16 storage, the model's `model_dtype`);
no quantisation or entropy coding, so it is a storage size, not a compressed rate.

Precision: the official code autocasts the encoder and the semantic decoder to `model_dtype` (bf16) on CUDA and
runs the pixel decoder in float32 (its autocast(float32) is refused by CUDA, i.e. disabled); on CPU it runs all in
float32. Here `dtype` is that autocast dtype (float32 = none, the default); the pixel decoder always runs in
float32. Decoding non-square grids is an extension: upstream's pixel path takes h = w = sqrt(N), but its blocks have
no position embedding, so a (h, w) grid decodes with the same computation to an (h*P, w*P) image.

Why not a library: no MingTok in transformers, timm or open_clip; timm's ViT blocks name SwiGLU `fc1_g/fc1_x/fc2`
(the release uses DINOv2's packed `w12`/`w3`) and have no causal attention, and the official package needs
transformers' `PreTrainedModel`, omegaconf and einops for a few lines; so the modules are written here (attention
through torch's `scaled_dot_product_attention`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import (
    CheckpointError,
    checkpoint_keys,
    describe_checkpoint,
    detect_prefix,
    load_strict,
    read_state_dict,
)
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, check_images
from ..options import DType, PositiveInt
from ..protocols import (
    center_crop,
    drop_alpha,
    get_protocol,
    register_protocol,
    resize_short_side,
    scale,
    short_side_crop_geometry,
)
from ..registry import Family, Variant, read_config
from ..weights import Artifact, register_artifact

FAMILY_NAME = "mingtok"
UPSTREAM = (
    "https://github.com/inclusionAI/Ming-UniVision @ 3bbdd2f022eabc24a54d2f8a62b7621790dc9418 (mingtok/)"
)
DEFAULT_STORAGE_BITS = 16
RATE_CONVENTION = (
    "continuous latent: N x C values per image (N = h*w patch latents, C = {channels}; the CLS latent is not "
    "counted: it does not change the decode), each counted at {bits}-bit storage (tokbench convention; no "
    "quantisation or entropy coding), bpp = N*C*{bits} / (H*W)"
)
FFN_LAYERS = ("mlp", "swiglu", "swiglufused", "identity")
# Keys upstream's build functions read that only matter for training (loss, init, freezing, kernels).
TRAINING_KEYS = frozenset({"norm_pix_loss", "loss_type", "drop_path_rate", "initialization_method", "fa_enable",
                           "frozen", "enable_lpips_loss"})  # fmt: skip
# Top-level keys of a `save_pretrained` config.json besides MingTokConfig's own (transformers bookkeeping).
HF_CONFIG_KEYS = frozenset({"architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
                            "auto_map", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
                            "use_cache", "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder",
                            "id2label", "label2id", "problem_type", "pruned_heads", "tokenizer_class"})  # fmt: skip
MODEL_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------------------
# Config: the release's config.json sections, plus the sizes upstream hard-codes (released values as defaults)
# ---------------------------------------------------------------------------------------------------


def _heads(width: int, num_heads: int | None, where: str) -> int:
    """Attention heads: upstream's `embed_dim // 64` unless given; they must split the width evenly."""
    heads = width // 64 if num_heads is None else int(num_heads)
    if heads < 1 or width % heads:
        raise TokbenchError(
            f"mingtok {where}: {heads} attention heads cannot split width {width} (upstream uses embed_dim // 64 "
            "heads; give num_heads for other widths)"
        )
    return heads


def _section(cls: type, where: str, given: Mapping[str, Any] | None, ignored: frozenset[str]) -> Any:
    """A section dataclass from the config's mapping: released defaults for what it leaves out, training-only
    keys dropped, anything else unknown refused."""
    if given is None:
        return cls()
    if not isinstance(given, Mapping):
        raise TokbenchError(f"mingtok config section {where!r} must be a mapping, got {type(given).__name__}")
    known = {f.name for f in fields(cls)}
    note = f"(training-only keys {', '.join(sorted(ignored))} are ignored)" if ignored else ""
    refuse_unknown(f"mingtok {where} keys", set(given) - ignored, known, note)
    return cls(**{k: v for k, v in given.items() if k in known})


@dataclass(frozen=True)
class EncoderConfig:
    """`low_level_encoder` (upstream `VisionTransformerEncoder`): the release's values as defaults.

    `num_heads` None = embed_dim // 64 (hard-coded upstream); `mlp_ratio` 4 and 3 input channels are hard-coded
    upstream; `interpolate_offset` / `interpolate_antialias` are the position-embedding interpolation settings
    (0.1 / False upstream; offset 0 means an exact output size instead of a scale factor).
    """

    img_size: int = 512
    patch_size: int = 32
    depth: int = 12
    embed_dim: int = 768
    ffn_layer: str = "swiglufused"
    out_dim: int = 32
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    in_chans: int = 3
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False

    @property
    def heads(self) -> int:
        return _heads(self.embed_dim, self.num_heads, "low_level_encoder")

    @property
    def grid(self) -> int:
        """Side of the trained patch grid (`pos_embed` holds grid^2 + 1 rows)."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class SemanticDecoderConfig:
    """`semantic_decoder` (upstream `causal_decoder`): causal blocks, `in_proj` from `in_dim` (None: no in_proj,
    the latent must then be `embed_dim` wide). `patch_size` only sets the pixel decoder's r = patch_size /
    pixel_decoder.patch_size."""

    in_dim: int | None = 32
    patch_size: int = 32
    embed_dim: int = 1024
    decoder_depth: int = 24
    ffn_layer: str = "swiglufused"
    num_heads: int | None = None
    mlp_ratio: float = 4.0

    @property
    def heads(self) -> int:
        return _heads(self.embed_dim, self.num_heads, "semantic_decoder")


@dataclass(frozen=True)
class PixelDecoderConfig:
    """`pixel_decoder` (upstream `decoder`): blocks with a GELU MLP (upstream passes no ffn_layer), a LayerNorm and
    a `head` to patch_size^2 * out_chans values per token (3 channels hard-coded upstream)."""

    patch_size: int = 16
    decoder_depth: int = 24
    embed_dim: int = 1024
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    out_chans: int = 3

    @property
    def heads(self) -> int:
        return _heads(self.embed_dim, self.num_heads, "pixel_decoder")


@dataclass(frozen=True)
class MingTokConfig:
    """The whole model: the release's `config.json` (`MingTokConfig`) with the released values as defaults.

    `scaling_factor` / `mean` normalise the raw latent (`(raw - mean) / scaling_factor`); `model_dtype` is what the
    official code autocasts the encoder and semantic decoder to on CUDA (recorded; tokbench's `dtype` decides).
    """

    low_level_encoder: EncoderConfig = EncoderConfig()
    semantic_decoder: SemanticDecoderConfig = SemanticDecoderConfig()
    pixel_decoder: PixelDecoderConfig = PixelDecoderConfig()
    scaling_factor: float = 8.09449291
    mean: float = 1.46817409
    model_dtype: str = "bf16"

    @property
    def up(self) -> int:
        """Pixel tokens per side of one semantic token (r = semantic patch / pixel patch, floor as upstream)."""
        return self.semantic_decoder.patch_size // self.pixel_decoder.patch_size

    @property
    def output_patch(self) -> int:
        """Output pixels per side of one latent token (r * pixel patch; the input patch for the release)."""
        return self.up * self.pixel_decoder.patch_size

    def check(self) -> MingTokConfig:
        enc, sem, pix = self.low_level_encoder, self.semantic_decoder, self.pixel_decoder
        for where, section, ffn in (
            ("low_level_encoder", enc, enc.ffn_layer),
            ("semantic_decoder", sem, sem.ffn_layer),
        ):
            if ffn not in FFN_LAYERS:
                raise TokbenchError(
                    f"mingtok {where}.ffn_layer must be one of {', '.join(FFN_LAYERS)}, got {ffn!r}"
                )
            _ = section.heads
        _ = pix.heads
        if enc.grid < 1:
            raise TokbenchError(
                f"mingtok img_size {enc.img_size} is smaller than patch_size {enc.patch_size}"
            )
        if enc.embed_dim % enc.out_dim:
            raise TokbenchError(
                f"mingtok low_level_encoder: out_dim {enc.out_dim} must divide embed_dim {enc.embed_dim} (the output "
                "shortcut averages embed_dim / out_dim channels per latent value)"
            )
        if sem.in_dim is None:
            if enc.out_dim != sem.embed_dim:
                raise TokbenchError(
                    f"mingtok semantic_decoder without in_dim takes the latent as is: out_dim {enc.out_dim} must "
                    f"equal its embed_dim {sem.embed_dim}"
                )
        elif sem.in_dim != enc.out_dim or sem.embed_dim % sem.in_dim:
            raise TokbenchError(
                f"mingtok semantic_decoder.in_dim {sem.in_dim} must equal low_level_encoder.out_dim {enc.out_dim} "
                f"and divide its embed_dim {sem.embed_dim} (the in_proj shortcut repeats each latent value)"
            )
        if self.up < 1:
            raise TokbenchError(
                f"mingtok semantic_decoder.patch_size {sem.patch_size} must be at least pixel_decoder.patch_size "
                f"{pix.patch_size}"
            )
        if self.model_dtype not in MODEL_DTYPES:
            raise TokbenchError(
                f"mingtok model_dtype must be one of {', '.join(MODEL_DTYPES)}, got {self.model_dtype!r}"
            )
        if not self.scaling_factor:
            raise TokbenchError("mingtok scaling_factor must not be 0 (latents are divided by it)")
        return self


def mingtok_config(config: Mapping[str, Any] | None) -> MingTokConfig:
    """`MingTokConfig` from the release's config.json (or a dict of its keys); empty: the released model.

    Sections and keys a config leaves out take the RELEASED values (upstream's build functions would fall back to
    other sizes no release uses). Training-only keys (loss, init, freezing, attention kernels) and transformers'
    bookkeeping are ignored; anything else unknown is refused.
    """
    cfg = dict(config or {})
    if cfg.get("model_type", FAMILY_NAME) != FAMILY_NAME or any(
        a != "MingTok" for a in cfg.get("architectures") or ()
    ):
        raise TokbenchError(
            f"the config describes {cfg.get('architectures') or cfg.get('model_type')!r}, not MingTok (model_type "
            "'mingtok'); pass the config.json of inclusionAI/MingTok-Vision"
        )
    if cfg.get("pretrained_checkpoint"):
        warnings.warn("mingtok: ignoring the config's pretrained_checkpoint (a training path); weights come from "
                      "the weights file", stacklevel=3)  # fmt: skip
    top = {"low_level_encoder", "semantic_decoder", "pixel_decoder", "scaling_factor", "mean", "model_dtype",
           "pretrained_checkpoint"}  # fmt: skip
    given = [k for k in cfg if k not in HF_CONFIG_KEYS and not k.startswith("_")]
    refuse_unknown("mingtok config keys", given, top)
    sem = cfg.get("semantic_decoder")
    if isinstance(sem, Mapping) and sem.get("in_projection_layer") is not None:
        raise TokbenchError("mingtok semantic_decoder.in_projection_layer is not supported (upstream then builds no "
                            "in_proj at all and fails); no release sets it")  # fmt: skip
    pix = cfg.get("pixel_decoder")
    if isinstance(pix, Mapping) and pix.get("ffn_layer", "mlp") != "mlp":
        warnings.warn(
            f"mingtok: pixel_decoder.ffn_layer={pix['ffn_layer']!r} is ignored, as upstream's "
            "build_pixel_decoder ignores it (the pixel decoder always has a GELU MLP)",
            stacklevel=3,
        )
    out = MingTokConfig(
        low_level_encoder=_section(EncoderConfig, "low_level_encoder", cfg.get("low_level_encoder"), TRAINING_KEYS),
        semantic_decoder=_section(SemanticDecoderConfig, "semantic_decoder", sem,
                                  TRAINING_KEYS | {"in_projection_layer"}),
        pixel_decoder=_section(PixelDecoderConfig, "pixel_decoder", pix, TRAINING_KEYS | {"ffn_layer"}),
        **{k: cfg[k] for k in ("scaling_factor", "mean", "model_dtype") if k in cfg},
    )  # fmt: skip
    return out.check()


# ---------------------------------------------------------------------------------------------------
# Modules (state-dict names as the release: blocks.0.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.*})
# ---------------------------------------------------------------------------------------------------


def _layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=1e-6)


class Attention(nn.Module):
    """Multi-head self-attention with a qkv bias; `causal` masks the future (upstream `CausalAttention`)."""

    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class SwiGLU(nn.Module):
    """DINOv2's `SwiGLUFFNFused`: hidden (int(2/3 * width * mlp_ratio) + 7) // 8 * 8, `w12` = [gate; value]."""

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2, hidden int(width * mlp_ratio)."""

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _ffn(kind: str, width: int, mlp_ratio: float) -> nn.Module:
    if kind == "mlp":
        return Mlp(width, mlp_ratio)
    if kind in ("swiglu", "swiglufused"):  # upstream maps both to SwiGLUFFNFused
        return SwiGLU(width, mlp_ratio)
    return nn.Identity()


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)) (no layer scale, no drop path)."""

    def __init__(self, width: int, heads: int, ffn: str, mlp_ratio: float, causal: bool) -> None:
        super().__init__()
        self.norm1 = _layer_norm(width)
        self.attn = Attention(width, heads, causal)
        self.norm2 = _layer_norm(width)
        self.mlp = _ffn(ffn, width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _blocks(depth: int, width: int, heads: int, ffn: str, mlp_ratio: float, causal: bool) -> nn.ModuleList:
    """The blocks inside one list, as upstream's single `BlockChunk` (block_chunks=1) holds them: `blocks.0.{i}`."""
    return nn.ModuleList([nn.ModuleList([Block(width, heads, ffn, mlp_ratio, causal) for _ in range(depth)])])


def _run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks[0]:
        x = block(x)
    return x


class PatchEmbed(nn.Module):
    """Holds the patch conv under the release's key `patch_embed.proj`."""

    def __init__(self, in_chans: int, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch, stride=patch)


class LowLevelEncoder(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] (sides multiples of patch_size) -> raw latents (B, h*w + 1, out_dim), the
    CLS latent last."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.in_chans, w, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid**2 + 1, w))
        self.blocks = _blocks(cfg.depth, w, cfg.heads, cfg.ffn_layer, cfg.mlp_ratio, causal=False)
        self.out_norm = _layer_norm(w)
        self.out_act = nn.GELU()
        self.out_proj = nn.Linear(w, cfg.out_dim)

    def position_embedding(self, gh: int, gw: int, dtype: torch.dtype) -> torch.Tensor:
        """`pos_embed` for a gh x gw grid: the trained rows as they are, else the patch rows resized bicubically
        (upstream `interpolate_pos_encoding`: scale factor (g + offset) / M per side, no antialias) and the CLS
        row (last) kept."""
        m = self.cfg.grid
        if (gh, gw) == (m, m):
            return self.pos_embed
        pos = self.pos_embed.float()
        width = pos.shape[-1]
        grid = pos[:, :-1].reshape(1, m, m, width).permute(0, 3, 1, 2)
        off = self.cfg.interpolate_offset
        size = {"scale_factor": ((gh + off) / m, (gw + off) / m)} if off else {"size": (gh, gw)}
        grid = F.interpolate(grid, mode="bicubic", antialias=self.cfg.interpolate_antialias, **size)
        if tuple(grid.shape[-2:]) != (gh, gw):  # pragma: no cover - the offset keeps floor() at the grid size
            raise TokbenchError(
                f"position embedding interpolated to {tuple(grid.shape[-2:])}, expected {(gh, gw)}"
            )
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, width)
        return torch.cat([grid, pos[:, -1:]], dim=1).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x)
        b, _, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([x, self.cls_token.expand(b, -1, -1)], dim=1)
        x = x + self.position_embedding(gh, gw, x.dtype)
        x = _run(self.blocks, x)
        n, c = x.shape[1], self.cfg.out_dim
        shortcut = x.reshape(b, n, c, -1).mean(-1)  # "b n (c h) -> b n c h", mean over h
        return shortcut + self.out_proj(self.out_act(self.out_norm(x)))


class SemanticDecoder(nn.Module):
    """Raw latents (B, T, in_dim) -> LayerNorm-ed causal features (B, T, embed_dim) for every position."""

    def __init__(self, cfg: SemanticDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.embed_dim
        self.in_proj = nn.Linear(cfg.in_dim, w) if cfg.in_dim is not None else None
        self.blocks = _blocks(cfg.decoder_depth, w, cfg.heads, cfg.ffn_layer, cfg.mlp_ratio, causal=True)
        self.norm = _layer_norm(w)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw
        if self.in_proj is not None:  # each latent value repeated embed_dim / in_dim times, consecutively
            x = self.in_proj(raw) + raw.repeat_interleave(self.cfg.embed_dim // self.cfg.in_dim, dim=-1)
        return self.norm(_run(self.blocks, x))


class PixelDecoder(nn.Module):
    """Pixel tokens (B, L, embed_dim) -> patches (B, L, patch_size^2 * out_chans), per-patch order (p, q, c)."""

    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.embed_dim
        self.blocks = _blocks(cfg.decoder_depth, w, cfg.heads, "mlp", cfg.mlp_ratio, causal=False)
        self.norm = _layer_norm(w)
        self.head = nn.Linear(w, cfg.patch_size**2 * cfg.out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(_run(self.blocks, x)))


class MingTokModel(nn.Module):
    """`MingTok` for inference, keys as the release (`low_level_encoder.*`, `semantic_decoder.*`,
    `pixel_decoder.*`, `sem_to_pix.*`). Images in [-1, 1].

    `autocast` (None or a half dtype) is the official `model_dtype` autocast of the encoder and the semantic
    decoder on the model's device; the pixel decoder always runs in float32.
    """

    def __init__(self, cfg: MingTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.autocast: torch.dtype | None = None
        self.low_level_encoder = LowLevelEncoder(cfg.low_level_encoder)
        self.semantic_decoder = SemanticDecoder(cfg.semantic_decoder)
        self.pixel_decoder = PixelDecoder(cfg.pixel_decoder)
        r = cfg.up
        self.sem_to_pix = nn.Linear(cfg.semantic_decoder.embed_dim, cfg.pixel_decoder.embed_dim * r * r)

    @contextlib.contextmanager
    def _precision(self, x: torch.Tensor) -> Iterator[None]:
        with torch.autocast(
            x.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        ):
            yield

    # -- the official entry points -------------------------------------------------------------------
    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, h*w + 1, out_dim) of images (B, 3, H, W) in [-1, 1], CLS last (float32)."""
        with self._precision(x):
            return self.low_level_encoder(x).float()

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.cfg.mean) / self.cfg.scaling_factor

    def denormalise(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.cfg.scaling_factor + self.cfg.mean

    def semantic_tokens(self, raw: torch.Tensor) -> torch.Tensor:
        """The semantic decoder's LayerNorm-ed output at every position of raw latents (B, T, D), float32."""
        with self._precision(raw):
            return self.semantic_decoder(raw).float()

    def decode_pixels(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Semantic features (B, h*w, D) on an h x w grid -> images (B, 3, h*r*p, w*r*p) in [-1, 1] (clamped),
        upstream `forward_pixel_decoder`, in float32."""
        h, w = grid
        b = features.shape[0]
        r, cp = self.cfg.up, self.cfg.pixel_decoder.embed_dim
        with torch.autocast(features.device.type, enabled=False):
            x = self.sem_to_pix(features.float())
            # "b (h w) (x y c) -> b (h x w y) c": each semantic token becomes an r x r block of pixel tokens
            x = x.view(b, h, w, r, r, cp).permute(0, 1, 3, 2, 4, 5).reshape(b, h * r * w * r, cp)
            x = self.pixel_decoder(x)
            p, c = self.cfg.pixel_decoder.patch_size, self.cfg.pixel_decoder.out_chans
            x = x.view(b, h * r, w * r, p, p, c).permute(0, 5, 1, 3, 2, 4)  # unpatchify: nhwpqc -> nchpwq
            return x.reshape(b, c, h * r * p, w * r * p).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Upstream `MingTok.forward` (plus the semantic decoder's CLS output): `latent` (B, N+1, C) normalised,
        CLS last; `x_norm_patchtokens` (B, N, D); `x_norm_clstoken` (B, D)."""
        raw = self.encode_raw(x)
        sem = self.semantic_tokens(raw)
        return {
            "latent": self.normalise(raw),
            "x_norm_patchtokens": sem[:, :-1],
            "x_norm_clstoken": sem[:, -1],
        }

    def forward_enc_dec(self, x: torch.Tensor) -> torch.Tensor:
        """Upstream `forward_enc_dec`: images in [-1, 1] -> reconstructions in [-1, 1]."""
        grid = (
            x.shape[-2] // self.cfg.low_level_encoder.patch_size,
            x.shape[-1] // self.cfg.low_level_encoder.patch_size,
        )
        return self.decode_pixels(self.forward(x)["x_norm_patchtokens"], grid)

    def recon_from_latent(self, latent: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Upstream's decode of normalised latents: (B, h*w, C) patch latents, or (B, h*w + 1, C) with the CLS
        latent last (it cannot change the output: the semantic decoder is causal and it comes last)."""
        n = latent.shape[1]
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                side = math.isqrt(n - 1)
            grid = (side, side)
        if n == grid[0] * grid[1] + 1:
            latent = latent[:, :-1]
        elif n != grid[0] * grid[1]:
            raise TokbenchError(
                f"{n} latents do not fit a {grid[0]}x{grid[1]} grid (with or without a CLS latent)"
            )
        return self.decode_pixels(self.semantic_tokens(self.denormalise(latent)), grid)


def build_model(
    config: Mapping[str, Any] | MingTokConfig | None = None, device: str | torch.device = "cpu"
) -> MingTokModel:
    """An unloaded `MingTokModel` (device="meta": the released layout without memory)."""
    cfg = config if isinstance(config, MingTokConfig) else mingtok_config(config)
    with torch.device(device):
        return MingTokModel(cfg)


# ---------------------------------------------------------------------------------------------------
# Preprocessing protocols (the official transforms)
# ---------------------------------------------------------------------------------------------------


@register_protocol(
    "mingtok",
    "MingTok-Vision's CenterCropProcessor (mingtok/utils/processor.py; reconstruction and generation): torchvision "
    "Resize(size) of the short side with PIL bicubic (antialiased), CenterCrop(size); Normalize(0.5, 0.5) inside",
    geometry=lambda w, h, size: short_side_crop_geometry(w, h, size, size),
)
def mingtok_preprocess(img: Image.Image, size: int) -> Image.Image:
    return center_crop(resize_short_side(drop_alpha(img), size, Image.BICUBIC), size)


@register_protocol(
    "mingtok-und",
    "Ming-UniVision's understanding transform (MingTokUndProcessor, 1024 px in BailingMMProcessor): torchvision "
    "Resize((size, size)) with PIL bicubic, aspect ratio not kept, no crop; Normalize(0.5, 0.5) inside",
    geometry=lambda w, h, size: scale(w, h, size, size),
)
def mingtok_und_preprocess(img: Image.Image, size: int) -> Image.Image:
    return drop_alpha(img).resize((size, size), resample=Image.BICUBIC)


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------


class MingTokTokenizer(ModuleTokenizer):
    """MingTok as a tokbench tokenizer: images [0, 1] (sides multiples of the patch size, 32 for the release)
    <-> continuous tokens `Tokens.features` (B, h*w, 32), the normalised patch latents in raster order.

    The model sees x * 2 - 1 (the official Normalize(0.5, 0.5)); `decode` gives recon * 0.5 + 0.5 of the
    official clamped output (`test_infer_recon_image.py`, before its uint8 conversion). `semantic(images)` and
    `features(images, stage)` give the understanding side.
    """

    # pre_quant and post_quant are the same tensor: a continuous tokenizer has one latent, no quantiser
    feature_stages = ("pre_quant", "post_quant", "semantic")

    def __init__(
        self, model: MingTokModel, spec: TokenizerSpec, autocast: torch.dtype | None, storage_bits: int
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False).float()
        self.model.autocast = autocast
        self.spec = spec
        self.cfg = model.cfg
        self.storage_bits = storage_bits

    @property
    def patch_size(self) -> int:
        return self.cfg.low_level_encoder.patch_size

    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        h, w = (int(s) for s in images.shape[-2:])
        p = self.patch_size
        if h % p or w % p:
            s = self.spec.resolution
            raise TokbenchError(
                f"{self.spec.name} needs image sides divisible by {p} (its patch size), got {h}x{w}; preprocess to "
                f"{s}x{s} with the {self.spec.preprocessing!r} protocol"
            )
        return images.to(self.device, torch.float32) * 2 - 1

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        return int(images.shape[-2]) // self.patch_size, int(images.shape[-1]) // self.patch_size

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        x = self._to_model(images)
        latent = self.model.normalise(self.model.encode_raw(x))[
            :, :-1
        ]  # the CLS latent (last) does not decode
        b, n, c = latent.shape
        bits = torch.full((b,), float(n * c * self.storage_bits), dtype=torch.float64)
        meta = {
            "size": tuple(int(s) for s in images.shape[-2:]),
            "latent_values": n * c,
            "storage_bits": self.storage_bits,
            "rate_convention": RATE_CONVENTION.format(channels=c, bits=self.storage_bits),
            "latent": f"(raw - {self.cfg.mean}) / {self.cfg.scaling_factor}; CLS latent dropped",
        }
        return Tokens(features=latent.contiguous(), grid=self._grid(images), bits=bits, meta=meta)

    def _latents(self, tokens: Tokens) -> tuple[torch.Tensor, tuple[int, int]]:
        c = self.cfg.low_level_encoder.out_dim
        x = tokens.features
        if x is None or x.ndim != 3 or x.shape[-1] != c:
            got = None if x is None else tuple(x.shape)
            raise TokbenchError(
                f"{self.spec.name} decodes continuous Tokens.features of shape (B, h*w, {c}); got {got}"
            )
        n = x.shape[1]
        grid = tokens.grid
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise TokbenchError(f"Tokens.grid is unset and {n} latents do not form a square grid")
            grid = (side, side)
        if grid[0] * grid[1] != n:
            raise TokbenchError(f"Tokens.grid {tuple(grid)} does not match {n} latents per image")
        return x.to(self.device, torch.float32), (int(grid[0]), int(grid[1]))

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        latent, grid = self._latents(tokens)
        x = self.model.recon_from_latent(latent, grid)
        return (x * 0.5 + 0.5).clamp(0, 1)

    @torch.inference_mode()
    def semantic(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The understanding outputs of images (B, 3, H, W) in [0, 1]: `semantic_features` (B, N, D), the semantic
        decoder's patch tokens (official `x_norm_patchtokens`, what Ming-UniVision's `linear_proj` maps into its
        LLM); `embedding` (B, D), its output at the CLS position (official `x_norm_clstoken`: the causal decoder's
        last token, which sees every patch; formed by the official decoder, not used by Ming-UniVision);
        `latent` (B, N, C), the continuous tokens."""
        raw = self.model.encode_raw(self._to_model(images))
        sem = self.model.semantic_tokens(raw)
        return {
            "semantic_features": sem[:, :-1],
            "embedding": sem[:, -1],
            "latent": self.model.normalise(raw)[:, :-1],
        }

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """Token features (B, N, D) at `stage`: `pre_quant` = `post_quant` = the continuous latent (B, N, 32) that
        `encode` returns (a continuous tokenizer has one latent and no quantiser); `semantic` = the semantic
        decoder's features (B, N, 1024)."""
        if stage not in self.feature_stages:
            raise TokbenchError(
                f"{self.spec.name} has feature stages {', '.join(self.feature_stages)}; got {stage!r}"
            )
        if stage == "semantic":
            return self.semantic(images)["semantic_features"]
        return self.model.normalise(self.model.encode_raw(self._to_model(images)))[:, :-1]


# ---------------------------------------------------------------------------------------------------
# Checkpoints, build, variants
# ---------------------------------------------------------------------------------------------------

PROBE = "low_level_encoder.pos_embed"
# bare `MingTok.state_dict()` names (the release), or MingTok inside Ming-UniVision (`self.vision`)
PREFIXES = ("", "vision.", "model.vision.")
CHECKPOINT_HINT = "the model.safetensors of inclusionAI/MingTok-Vision"


def read_release(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The MingTok tensors of a release file (safetensors, a torch state dict or a sharded index) and the key
    prefix they were under; a clear `CheckpointError` naming what the file is otherwise."""
    keys = checkpoint_keys(path)
    full = None
    if keys is None:
        full = read_state_dict(path)
        keys = list(full)
    prefix = detect_prefix(keys, PREFIXES, PROBE)
    if prefix is None:
        raise CheckpointError(
            f"{path.name} is not a MingTok checkpoint (no {PROBE}): it looks like {describe_checkpoint(keys)}"
        )
    if full is None:
        return read_state_dict(path, prefix=prefix or None), prefix
    return {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}, prefix


def _describe(cfg: MingTokConfig, grid: int, resolution: int) -> str:
    enc, sem, pix = cfg.low_level_encoder, cfg.semantic_decoder, cfg.pixel_decoder
    return (
        f"MingTok: ViT encoder (patch {enc.patch_size}, {enc.depth} x {enc.embed_dim}, {enc.ffn_layer}) -> "
        f"{enc.out_dim}-value continuous latents on a {grid}x{grid} grid at {resolution} px (+ a CLS latent, last, "
        f"not counted); causal semantic decoder ({sem.decoder_depth} x {sem.embed_dim}) -> pixel decoder "
        f"({pix.decoder_depth} x {pix.embed_dim}, {cfg.up}x{cfg.up} pixel tokens of {pix.patch_size} px per latent); "
        f"tokens = (raw - {cfg.mean}) / {cfg.scaling_factor}"
    )


def build(b: Build) -> MingTokTokenizer:
    config = dict(b.config)
    path = None if b.random_weights else b.checkpoint(CHECKPOINT_HINT)
    given = bool(config) and (b.variant is None or config != dict(b.variant.config))
    if path is not None and not given and (beside := b.beside(path, "config.json")):
        config.update(read_config(beside))  # the release folder's own config.json, when none was given
        b.source["config"] = str(beside)
    cfg = mingtok_config(config)

    def load(model: nn.Module, p: Path) -> dict[str, str]:
        sd, prefix = read_release(p)
        load_strict(model, sd, source=f"MingTok checkpoint {p.name}")
        return {"layout": f"MingTok state dict{f' under {prefix!r}' if prefix else ''}"}

    model = b.model(lambda: MingTokModel(cfg), load, CHECKPOINT_HINT)
    enc = cfg.low_level_encoder
    resolution = int(b.option("resolution") or (b.variant.resolution if b.variant else None) or enc.img_size)
    if resolution % enc.patch_size:
        raise TokbenchError(
            f"resolution must be a multiple of {enc.patch_size} (the patch size), got {resolution}"
        )
    protocol = b.option("protocol") or "mingtok"
    get_protocol(protocol)  # an unknown name fails at load time
    storage_bits = int(b.option("storage_bits", DEFAULT_STORAGE_BITS))
    autocast = None if b.dtype == "float32" else b.torch_dtype
    grid = resolution // enc.patch_size
    b.notes += [
        _describe(cfg, grid, resolution),
        "rate: " + RATE_CONVENTION.format(channels=enc.out_dim, bits=storage_bits),
        (f"encoder and semantic decoder autocast to {b.dtype} (the official model_dtype path), pixel decoder float32"
         if autocast is not None else
         f"float32 throughout (the official CUDA code autocasts the encoder and semantic decoder to "
         f"{cfg.model_dtype}; its pixel decoder runs in float32)"),
    ]  # fmt: skip
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=grid * grid,
        codebook_size=None,
        bits_per_token=float(enc.out_dim * storage_bits),
        normalisation="[-1, 1] (x * 2 - 1, the official Normalize(0.5, 0.5))",
        preprocessing=protocol,
    )
    return MingTokTokenizer(model, spec, autocast, storage_bits)


RELEASE_CONFIG: dict[str, Any] = {  # mingtok/config/config_mingtok.json (the release's config.json carries the same)
    "low_level_encoder": {"img_size": 512, "patch_size": 32, "depth": 12, "embed_dim": 768,
                          "ffn_layer": "swiglufused", "out_dim": 32},
    "semantic_decoder": {"in_dim": 32, "patch_size": 32, "embed_dim": 1024, "decoder_depth": 24,
                         "ffn_layer": "swiglufused"},
    "pixel_decoder": {"patch_size": 16, "decoder_depth": 24, "embed_dim": 1024},
    "scaling_factor": 8.09449291,
    "mean": 1.46817409,
    "model_dtype": "bf16",
}  # fmt: skip
PAPER = (
    "Huang et al. (Inclusion AI), Ming-UniVision: Joint Image Understanding and Generation with a Unified "
    "Continuous Tokenizer, arXiv:2510.06590"
)
_RELEASE = register_artifact(
    Artifact(
        name="mingtok-vision",
        repo_id="inclusionAI/MingTok-Vision",
        filename="model.safetensors",
        licence="Apache-2.0 (Hub card; the Ming-UniVision code is MIT)",
        companions=("config.json",),
        used_by="mingtok-vision",
    )
)
VARIANTS: tuple[Variant, ...] = (
    Variant(
        name="mingtok-vision",
        family=FAMILY_NAME,
        config=RELEASE_CONFIG,
        weights=_RELEASE,
        resolution=512,
        options={"protocol": "mingtok"},
        description=(
            "MingTok-Vision (0.7B): 512 px -> 16x16 continuous 32-d tokens (+ CLS); causal semantic decoder "
            "(1024-d understanding features), pixel decoder; the visual tokenizer of Ming-UniVision-16B-A3B"
        ),
        paper=PAPER,
        published={"rfid": 0.54, "psnr": 30.77, "ssim": 0.62, "lpips": 0.14},
        published_source=(
            "Ming-UniVision GitHub README @3bbdd2f, Table 1 'Image reconstruction performance on ImageNet-val-50k' "
            "(MingTok-Vision, 512 px, 256 tokens: rFID 0.54, PSNR 30.77, SSIM 0.62, LPIPS 0.14). The same table's "
            "'MingTok-Vision †' row (semantic decoder after joint pre-training: 0.38 / 31.09 / 0.64 / 0.12) is not "
            "used: which semantic decoder the Hub file holds is not stated. The FID, PSNR, SSIM and LPIPS "
            "implementations and the resize are not stated (no evaluation script is released)"
        ),
    ),
)

FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    variants=VARIANTS,
    description="MingTok (Ming-UniVision): continuous 32-d tokens, causal semantic decoder and pixel decoder",
    default_variant="mingtok-vision",
    build_options={
        "dtype": (DType, "float32"),
        "resolution": PositiveInt,
        "storage_bits": (PositiveInt, DEFAULT_STORAGE_BITS),
        "protocol": str,
    },  # fmt: skip
    encode_options={},
    code=UPSTREAM,
    convolutional=False,
)

__all__ = [
    "FAMILY",
    "MingTokConfig",
    "MingTokModel",
    "MingTokTokenizer",
    "build_model",
    "mingtok_config",
    "read_release",
]
