"""LlamaGen VQ tokenizers (VQ-16, VQ-8), the image-generation tokenizer of Janus and Janus-Pro.

Architecture of LlamaGen's `tokenizer/tokenizer_image/vq_model.py` (FoundationVision/LlamaGen), which
Janus copies as `janus/models/vq_model.py` (`gen_vision_model`): a taming-style convolutional encoder
and decoder around a VQ bottleneck whose latents and codebook rows are l2-normalised before the
nearest-neighbour search. Module and parameter names follow the official code exactly, so released
state dicts load without renaming. The encoder and decoder live in `vqgan_blocks.py`, shared with
the other families that ship the same pixel CNN (TokenFlow, VAR).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import (
    load_strict,
    read_under_prefix,
)
from ..core import GridVQTokenizer, TokenizerSpec, bits_for
from ..features import check_stage, grid_tokens, grid_vq_input
from ..options import DType, PositiveInt
from ..registry import Family, Variant
from ..weights import Artifact, register_artifact
from .vqgan_blocks import Decoder, Encoder

# ---------------------------------------------------------------------------------------------------
# Vector quantizer and VQ model
# ---------------------------------------------------------------------------------------------------

# Rows of the (N, K) distance matrix computed at once: bounds memory at 16384 codes to ~256 MiB (fp32).
_DISTANCE_CHUNK = 4096


class VectorQuantizer(nn.Module):
    """Nearest-codebook-row quantizer; with `l2_norm`, latents and rows are unit-normalised first.

    Keys: `embedding.weight` (K, D) and, with `show_usage`, the training-only buffer `codebook_used`
    (65536 floats), which releases carry and the official strict load requires.
    """

    def __init__(self, n_e: int, e_dim: int, l2_norm: bool = True, show_usage: bool = True) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = n_e, e_dim, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        """The (K, D) rows that latents are matched against and decoded from (normalised if `l2_norm`)."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    @torch.no_grad()
    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h, w) of a latent (B, D, h, w).

        Same distance as the official code, |z|^2 + |e|^2 - 2 z.e, on l2-normalised z and e, so the
        argmin agrees with it even on near ties. NOTE: transformers' `JanusVQVAE.encode` skips the
        l2-normalisation and therefore returns different ids than the official LlamaGen/Janus code.
        The search runs in float32 whatever the model dtype: Janus never encodes (its bf16 only covers
        decoding), and bf16 distances would turn near ties into arbitrary picks.
        """
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        emb = self.embedding.weight.float()
        if self.l2_norm:
            flat = F.normalize(flat, p=2, dim=-1)
            emb = F.normalize(emb, p=2, dim=-1)
        emb_sq = (emb**2).sum(dim=1)
        out = []
        for chunk in flat.split(_DISTANCE_CHUNK):
            dist = (chunk**2).sum(dim=1, keepdim=True) + emb_sq - 2 * chunk @ emb.t()
            out.append(dist.argmin(dim=1))
        return torch.cat(out).view(b, h, w)

    def get_codebook_entry(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Latent (B, D, h, w) for code ids (B, h*w) or (B, h, w) laid out row-major on `grid`."""
        h, w = grid
        z = self.codebook()[ids.reshape(ids.shape[0], h * w)]
        return z.view(ids.shape[0], h, w, self.e_dim).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class VQConfig:
    """The official `ModelArgs` fields plus the `Encoder`/`Decoder` keywords it does not forward.

    The official `VQModel` always builds its encoder and decoder with ch=128, num_res_blocks=2 (and
    GroupNorm, conv resampling); those are fields here so that other sizes (the golden fixtures) can be
    built. Defaults are the released `VQ_16()`. `commit_loss_beta` / `entropy_loss_ratio` only matter
    for training and are accepted and ignored.
    """

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2
    norm_type: str = "group"
    resamp_with_conv: bool = True

    @property
    def downsample(self) -> int:
        """Pixels per token side: 2^(len(encoder_ch_mult) - 1)."""
        return 2 ** (len(self.encoder_ch_mult) - 1)


# `Encoder`/`Decoder` keyword names that map onto `VQConfig` fields (in `encoder_decoder_kwargs`).
_ENCODER_DECODER_ALIASES = {
    "dropout": ("dropout_p",),
    "ch_mult": ("encoder_ch_mult", "decoder_ch_mult"),
}


def vq_config(config: Mapping[str, Any] | None) -> VQConfig:
    """A `VQConfig` from flat fields, or from {"model_args": {...}, "encoder_decoder_kwargs": {...}}.

    Nested sections override flat fields (the variant table is flat; a user's config file may be
    nested). A nested file (such as a golden fixture's config.json) may carry other top-level keys
    that describe it (seed, input, ...): those are ignored. In a flat config every key must be a field.
    """
    config = dict(config or {})
    fields_ = {f.name for f in dataclasses.fields(VQConfig)}
    nested = "model_args" in config or "encoder_decoder_kwargs" in config
    values: dict[str, Any] = {k: v for k, v in config.items() if k in fields_}
    if not nested:  # beside a nested layout, other keys describe the config (seed, input, ...)
        refuse_unknown("llamagen-vq config fields", config, fields_,
                       "(or nested under 'model_args' / 'encoder_decoder_kwargs')")
    for section in ("model_args", "encoder_decoder_kwargs"):
        inner = dict(config.get(section) or {})
        if section == "encoder_decoder_kwargs":
            for alias, targets in _ENCODER_DECODER_ALIASES.items():
                if alias in inner:
                    value = inner.pop(alias)
                    inner.update({t: value for t in targets})
        refuse_unknown(f"llamagen-vq {section} fields", inner, fields_)
        values.update(inner)
    for key in ("encoder_ch_mult", "decoder_ch_mult"):
        if key in values:
            values[key] = tuple(int(m) for m in values[key])
    return VQConfig(**values)


class VQModel(nn.Module):
    """LlamaGen / Janus `VQModel`: encoder, 1x1 `quant_conv`, quantizer, 1x1 `post_quant_conv`, decoder.

    Works in the model's range: images in [-1, 1], (B, 3, H, W) with H, W multiples of `config.downsample`.
    """

    def __init__(self, config: VQConfig, upsample_bf16: bool = False) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(
            ch=config.ch,
            ch_mult=config.encoder_ch_mult,
            num_res_blocks=config.num_res_blocks,
            z_channels=config.z_channels,
            dropout=config.dropout_p,
            norm_type=config.norm_type,
            resamp_with_conv=config.resamp_with_conv,
        )
        self.decoder = Decoder(
            ch=config.ch,
            ch_mult=config.decoder_ch_mult,
            num_res_blocks=config.num_res_blocks,
            z_channels=config.z_channels,
            dropout=config.dropout_p,
            norm_type=config.norm_type,
            resamp_with_conv=config.resamp_with_conv,
            upsample_bf16=upsample_bf16,
        )
        self.quantize = VectorQuantizer(
            config.codebook_size,
            config.codebook_embed_dim,
            config.codebook_l2_norm,
            config.codebook_show_usage,
        )
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latent (B, D, h, w) of images in [-1, 1]."""
        return self.quant_conv(self.encoder(x))

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h, w) of images in [-1, 1] (the official `encode(x)[2][2]`, reshaped)."""
        return self.quantize.indices(self.latent(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), nominally [-1, 1] (not clamped), from quantised latents (B, D, h, w)."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The official `decode_code`: ids (B, h*w) -> normalised codebook rows -> images in ~[-1, 1]."""
        return self.decode(self.quantize.get_codebook_entry(ids, grid))


# ---------------------------------------------------------------------------------------------------
# Checkpoint layouts
# ---------------------------------------------------------------------------------------------------

# Prefixes of the tokenizer's keys in each released layout: LlamaGen (bare, inside {"model"/"ema"/
# "state_dict"}), Janus (`gen_vision_model.` among the whole MultiModalityCausalLM), transformers
# (`model.vqmodel.` in JanusForConditionalGeneration; `vqmodel.` in a bare JanusModel), DDP (`module.`).
KEY_PREFIXES = ("", "gen_vision_model.", "model.vqmodel.", "vqmodel.", "module.")
_PROBE_KEY = "quant_conv.weight"

# transformers' converter (convert_janus_weights_to_hf.py) renames; undone here, in this order.
_TRANSFORMERS_RENAMES = (
    ("encoder.down.", "encoder.conv_blocks."),
    ("decoder.up.", "decoder.conv_blocks."),
    (".block.", ".res."),
    ("mid.block_1.", "mid.0."),
    ("mid.attn_1.", "mid.1."),
    ("mid.block_2.", "mid.2."),
)


def is_transformers_layout(keys: Iterable[str]) -> bool:
    return any(k.startswith(("encoder.down.", "decoder.up.")) or ".mid.block_1." in f".{k}" for k in keys)


def from_transformers_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `JanusVQVAE` names -> official names (the converter keeps indices, no reversal)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _TRANSFORMERS_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def read_vq_state_dict(
    path: str | Path, resolve_shard: Callable[[str], Path] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """The VQ model's state dict (official key names) from any released layout, and the layout's name.

    Only the tokenizer's tensors are read from safetensors files and sharded indexes (only the shards
    that hold them); a pickle is opened once with `weights_only=True` and memory-mapped.
    """
    sd, prefix = read_under_prefix(
        path, KEY_PREFIXES, _PROBE_KEY, resolve_shard=resolve_shard,
        what="LlamaGen/Janus VQ tokenizer (pass vq_ds16_c2i.pt, or a Janus model file holding gen_vision_model.*)",
    )  # fmt: skip
    layout = {"": "llamagen", "gen_vision_model.": "janus", "module.": "ddp"}.get(prefix, "transformers")
    if is_transformers_layout(sd):
        sd = from_transformers_keys(sd)
        layout = "transformers"
    return sd, layout


def load_vq_weights(
    model: VQModel, path: str | Path, resolve_shard: Callable[[str], Path] | None = None
) -> str:
    """Strictly load a released checkpoint into `model`; returns the detected layout name."""
    sd, layout = read_vq_state_dict(path, resolve_shard)
    # transformers' converter drops the training-only usage buffer; a model without it ignores it.
    usage = "quantize.codebook_used"
    load_strict(
        model,
        sd,
        source=f"{Path(path).name} ({layout} layout)",
        ignore_missing=lambda k: k == usage,
        ignore_unexpected=lambda k: k == usage,
    )
    return layout


# ---------------------------------------------------------------------------------------------------
# Tokenizer adapter, released variants, family
# ---------------------------------------------------------------------------------------------------

class LlamaGenVQTokenizer(GridVQTokenizer):
    """LlamaGen VQ-16/VQ-8 (Janus `gen_vision_model`): images [0, 1] <-> ids (B, h*w), row-major (y, x).

    The model sees [-1, 1] (x * 2 - 1, the official `Normalize(0.5, 0.5)`); decoded images are mapped
    back with (x + 1) / 2 and clamped to [0, 1]. `dtype` float32 (default, the LlamaGen evaluation) or
    bfloat16 (how Janus runs it; turns on its bf16 cast in `Upsample`). The nearest-code search always
    runs in float32.
    """

    def __init__(self, model: VQModel, spec: TokenizerSpec, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(model, spec, dtype)
        self.model.decoder.set_upsample_bf16(dtype == torch.bfloat16)

    @property
    def codebook_size(self) -> int:
        return self.model.config.codebook_size

    def decode_grid(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.decode_code(ids.flatten(1), tuple(ids.shape[1:]))

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, h*w, D) float32, row-major: `pre_quant` the latent quant_conv(encoder(x)) the quantiser sees (before
        its l2-normalisation), `post_quant` the (normalised) codebook rows of the ids, what post_quant_conv gets."""
        check_stage(self, stage)
        z = self.model.latent(grid_vq_input(self, images))
        if stage == "post_quant":
            z = self.model.quantize.get_codebook_entry(self.model.quantize.indices(z), tuple(z.shape[-2:]))
        return grid_tokens(z)


def _artifact(
    name: str, repo_id: str, filename: str, used_by: str, prefix: str | None = None, licence: str = ""
) -> Artifact:
    return register_artifact(
        Artifact(
            name=name, repo_id=repo_id, filename=filename, prefix=prefix, licence=licence, used_by=used_by
        )
    )


_VQ16_C2I = _artifact(
    "llamagen-vq16-c2i",
    "FoundationVision/LlamaGen",
    "vq_ds16_c2i.pt",
    "llamagen-vq16-c2i, llamagen-vq16-c2i-384",
    licence="MIT",
)

_VQ8 = {"encoder_ch_mult": [1, 2, 2, 4], "decoder_ch_mult": [1, 2, 2, 4]}
_LLAMAGEN_PAPER = (
    "Sun et al., Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation, arXiv:2406.06525"
)
# Janus / Janus-Pro: the code is MIT, the weights are under the DeepSeek Model License (model cards; the
# hub metadata of the Janus-Pro repositories says only "mit").
_DEEPSEEK_LICENCE = "DeepSeek Model License (weights; code MIT)"
_JANUS_PAPER = "Wu et al., Janus, arXiv:2410.13848"
_JANUS_PRO_PAPER = "Chen et al., Janus-Pro, arXiv:2501.17811"
_LLAMAGEN_TABLE = (
    "LlamaGen paper Table 2 and README (ImageNet val 50k, center_crop_arr, reconstruction_vq_ddp.py: "
    "SSIM with data_range=2.0, PSNR on uint8-rounded reconstructions)"
)

VARIANTS = (
    Variant(
        name="llamagen-vq16-c2i",
        family="llamagen-vq",
        config={},
        weights=_VQ16_C2I,
        resolution=256,
        description="LlamaGen VQ-16 tokenizer trained on ImageNet (16x16 tokens at 256, codebook 16384 x 8)",
        paper=_LLAMAGEN_PAPER,
        published={"rfid_torch_fidelity": 2.19, "psnr_llamagen": 20.79, "ssim_llamagen": 0.675},
        published_source=_LLAMAGEN_TABLE + ", 16x16 tokens at 256x256",
    ),
    Variant(
        name="llamagen-vq16-c2i-384",
        family="llamagen-vq",
        config={},
        weights=_VQ16_C2I,
        resolution=384,
        description="vq_ds16_c2i run at 384 (24x24 tokens); the official eval resizes to 256 before metrics",
        paper=_LLAMAGEN_PAPER,
        published={"rfid_torch_fidelity": 0.94, "psnr_llamagen": 21.94, "ssim_llamagen": 0.726},
        published_source=_LLAMAGEN_TABLE + ", 24x24 tokens (384 input, bicubic to 256 for evaluation)",
    ),
    Variant(
        name="llamagen-vq16-t2i",
        family="llamagen-vq",
        config={},
        weights=_artifact(
            "llamagen-vq16-t2i", "peizesun/llamagen_t2i", "vq_ds16_t2i.pt", "llamagen-vq16-t2i", licence="MIT"
        ),
        resolution=256,
        description="LlamaGen VQ-16 tokenizer for text-to-image (LAION-COCO 50M + 10M internal images)",
        paper=_LLAMAGEN_PAPER,
    ),
    Variant(
        name="llamagen-vq8-c2i",
        family="llamagen-vq",
        config=_VQ8,
        weights=_artifact(
            "llamagen-vq8-c2i",
            "FoundationVision/LlamaGen",
            "vq_ds8_c2i.pt",
            "llamagen-vq8-c2i",
            licence="MIT",
        ),
        resolution=256,
        description="LlamaGen VQ-8 tokenizer trained on ImageNet (32x32 tokens at 256, ch_mult 1,2,2,4)",
        paper=_LLAMAGEN_PAPER,
        published={"rfid_torch_fidelity": 0.59},
        published_source="LlamaGen README, VQ-VAE models table (vq_ds8_c2i, 32x32 tokens, rFID at 256x256)",
    ),
    Variant(
        name="janus-1.3b-vq",
        family="llamagen-vq",
        config={},
        weights=_artifact(
            "janus-1.3b-vq",
            "deepseek-ai/Janus-1.3B",
            "model.safetensors",
            "janus-1.3b-vq",
            "gen_vision_model.",
            _DEEPSEEK_LICENCE,
        ),
        resolution=384,
        description="Janus-1.3B image-generation tokenizer (gen_vision_model, LlamaGen VQ-16; 24x24 tokens at 384)",
        paper=_JANUS_PAPER,
    ),
    Variant(
        name="janus-pro-1b-vq",
        family="llamagen-vq",
        config={},
        weights=_artifact(
            "janus-pro-1b-vq",
            "deepseek-ai/Janus-Pro-1B",
            "pytorch_model.bin",
            "janus-pro-1b-vq",
            "gen_vision_model.",
            _DEEPSEEK_LICENCE,
        ),
        resolution=384,
        description="Janus-Pro-1B image-generation tokenizer (gen_vision_model, LlamaGen VQ-16; 24x24 tokens at 384)",
        paper=_JANUS_PRO_PAPER,
    ),
    Variant(
        name="janus-pro-7b-vq",
        family="llamagen-vq",
        config={},
        weights=_artifact(
            "janus-pro-7b-vq",
            "deepseek-ai/Janus-Pro-7B",
            "pytorch_model.bin.index.json",
            "janus-pro-7b-vq",
            "gen_vision_model.",
            _DEEPSEEK_LICENCE,
        ),
        resolution=384,
        description="Janus-Pro-7B image-generation tokenizer (only the shard holding gen_vision_model.* is fetched)",
        paper=_JANUS_PRO_PAPER,
    ),
    # transformers-format conversions (JanusForConditionalGeneration, keys model.vqmodel.*, renamed).
    # File names follow transformers' default sharding (unverified offline: adjust if the hub differs).
    Variant(
        name="janus-pro-1b-vq-hf",
        family="llamagen-vq",
        config={},
        weights=_artifact(
            "janus-pro-1b-vq-hf",
            "deepseek-community/Janus-Pro-1B",
            "model.safetensors",
            "janus-pro-1b-vq-hf",
            "model.vqmodel.",
            _DEEPSEEK_LICENCE,
        ),
        resolution=384,
        description="Janus-Pro-1B tokenizer from the transformers-format repo (same weights, renamed keys)",
        paper=_JANUS_PRO_PAPER,
    ),
    Variant(
        name="janus-pro-7b-vq-hf",
        family="llamagen-vq",
        config={},
        weights=_artifact(
            "janus-pro-7b-vq-hf",
            "deepseek-community/Janus-Pro-7B",
            "model.safetensors.index.json",
            "janus-pro-7b-vq-hf",
            "model.vqmodel.",
            _DEEPSEEK_LICENCE,
        ),
        resolution=384,
        description="Janus-Pro-7B tokenizer from the transformers-format repo (same weights, renamed keys)",
        paper=_JANUS_PRO_PAPER,
    ),
)


_CHECKPOINT_HINT = ("the checkpoint file (vq_ds16_c2i.pt, a Janus model.safetensors / pytorch_model.bin, or a "
                    "sharded *.index.json next to its shards)")


def build(b: Build) -> LlamaGenVQTokenizer:
    """Build the VQ model from `b.config`, load a checkpoint in any released layout, wrap it as a tokenizer."""
    cfg = vq_config(b.config)
    model = b.model(lambda: VQModel(cfg), lambda m, path: {"layout": load_vq_weights(m, path, b.shards())},
                    _CHECKPOINT_HINT)
    resolution = int(b.option("resolution") or (b.variant.resolution if b.variant else None) or 256)
    side = resolution // cfg.downsample
    b.notes.append(
        f"downsample {cfg.downsample}, codebook {cfg.codebook_size} x {cfg.codebook_embed_dim}"
        f"{', l2-normalised codes' if cfg.codebook_l2_norm else ''}; ids row-major on a {side}x{side} grid at "
        f"{resolution}"
    )
    if b.random_weights:
        b.source["layout"] = "none"
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=side * side,
        codebook_size=cfg.codebook_size,
        bits_per_token=bits_for(cfg.codebook_size),
        normalisation="[-1, 1]",
        preprocessing="adm-center-crop",
    )
    return LlamaGenVQTokenizer(model, spec, b.torch_dtype)


FAMILY = Family(
    name="llamagen-vq",
    build=build,
    convolutional=True,
    variants=VARIANTS,
    aliases=("janus-vq",),
    description="LlamaGen VQ-16/VQ-8 image tokenizers, also Janus / Janus-Pro's generation tokenizer (gen_vision_model)",
    default_variant="llamagen-vq16-c2i",
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt},
    code="https://github.com/FoundationVision/LlamaGen (tokenizer/tokenizer_image/vq_model.py)",
)
