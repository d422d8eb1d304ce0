"""LlamaGen VQ tokenizers (VQ-16, VQ-8), the image-generation tokenizer of Janus and Janus-Pro.

Architecture of LlamaGen's `tokenizer/tokenizer_image/vq_model.py` (FoundationVision/LlamaGen), which
Janus copies as `janus/models/vq_model.py` (`gen_vision_model`): a taming-style convolutional encoder
and decoder around a VQ bottleneck whose latents and codebook rows are l2-normalised before the
nearest-neighbour search. Module and parameter names follow the official code exactly, so released
state dicts load without renaming. `Encoder` / `Decoder` (and their blocks) are reused by other
families that ship the same pixel CNN (e.g. TokenFlow).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import (
    RANDOM_WEIGHTS,
    RANDOM_WEIGHTS_NOTE,
    load_strict,
    random_init,
    read_under_prefix,
)
from ..core import GridVQTokenizer, TokbenchError, TokenizerSpec, bits_for, torch_dtype
from ..options import DType, PositiveInt
from ..registry import Family, Variant
from ..weights import Artifact, register_artifact, resolve, shard_resolver

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU, as the official `x * sigmoid(x)`."""
    return x * torch.sigmoid(x)


def Normalize(  # noqa: N802 - official factory name, kept for readers comparing with upstream
    in_channels: int,
    norm_type: str = "group",
    num_groups: int = GROUP_NORM_GROUPS,
    eps: float = GROUP_NORM_EPS,
) -> nn.Module:
    """GroupNorm(32, eps 1e-6, affine) or, for norm_type="batch", BatchNorm (SyncBatchNorm upstream)."""
    if norm_type == "group":
        if in_channels % num_groups:
            raise ValueError(
                f"GroupNorm with {num_groups} groups needs a channel count divisible by {num_groups}, got "
                f"{in_channels}; check ch / ch_mult in the config"
            )
        return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=eps, affine=True)
    if norm_type == "batch":
        # SyncBatchNorm upstream; same parameters and buffers, and identical in eval mode.
        return nn.BatchNorm2d(in_channels)
    raise ValueError(f"norm_type must be 'group' or 'batch', got {norm_type!r}")


class ResnetBlock(nn.Module):
    """norm-swish-conv3x3 twice plus a shortcut (1x1 `nin_shortcut`, or 3x3 `conv_shortcut`) when widths differ."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        norm_type: str = "group",
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels, norm_type, num_groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels, norm_type, num_groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions, with 1x1 q/k/v/proj_out convs."""

    def __init__(
        self,
        in_channels: int,
        norm_type: str = "group",
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
    ) -> None:
        super().__init__()
        self.norm = Normalize(in_channels, norm_type, num_groups, eps)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, h, w = h_.shape
        # softmax(q k^T C^-0.5) v in the official bmm order (not SDPA): same float32 rounding as upstream,
        # so near-tied codes in other configs resolve as the official code resolves them.
        q = self.q(h_).reshape(b, c, h * w).permute(0, 2, 1)
        k = self.k(h_).reshape(b, c, h * w)
        weights = F.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        out = torch.bmm(self.v(h_).reshape(b, c, h * w), weights.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (`with_conv`).

    `cast_to_bf16` reproduces Janus's copy: a non-float32 input is interpolated in float32 and the
    result cast to bfloat16 (Janus runs in bf16). Off by default: LlamaGen interpolates in the input dtype.
    """

    def __init__(self, in_channels: int, with_conv: bool = True, cast_to_bf16: bool = False) -> None:
        super().__init__()
        self.with_conv = with_conv
        self.cast_to_bf16 = cast_to_bf16
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast_to_bf16 and x.dtype != torch.float32:
            x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(torch.bfloat16)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """x1/2: zero-pad right and bottom by one, then a 3x3 stride-2 conv (`with_conv`), else 2x2 average pooling."""

    def __init__(self, in_channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> latent (B, z_channels, H / 2^(L-1), W / 2^(L-1)), L = len(ch_mult).

    Keys: `conv_in`, `conv_blocks.{level}.res.{j}` (+ `.attn.{j}` at the deepest level,
    `.downsample` on all but the deepest), `mid.{0,1,2}` (res, attn, res), `norm_out`, `conv_out`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        norm_type: str = "group",
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        z_channels: int = 256,
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
    ) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        norm = {"norm_type": norm_type, "num_groups": num_groups, "eps": eps}
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)

        in_ch_mult = (1, *ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[level], ch * ch_mult[level]
            deepest = level == self.num_resolutions - 1
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(block_in, block_out, dropout=dropout, **norm))
                block_in = block_out
                if deepest:
                    block.attn.append(AttnBlock(block_in, **norm))
            if not deepest:
                block.downsample = Downsample(block_in, resamp_with_conv)
            self.conv_blocks.append(block)

        self.mid = nn.ModuleList(
            [
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
                AttnBlock(block_in, **norm),
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
            ]
        )
        self.norm_out = Normalize(block_in, **norm)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, block in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks):
                h = block.res[j](h)
                if len(block.attn) > 0:
                    h = block.attn[j](h)
            if level != self.num_resolutions - 1:
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_channels, h * 2^(L-1), w * 2^(L-1)).

    Keys: `conv_in`, `mid.{0,1,2}`, `conv_blocks.{i}` in REVERSED level order (i = 0 is the deepest
    level, which carries `attn`), `num_res_blocks + 1` `res` per level, `.upsample` on all but the last
    (shallowest) entry, `norm_out`, `conv_out`. `upsample_bf16` turns on Janus's bf16 cast in `Upsample`.
    """

    def __init__(
        self,
        z_channels: int = 256,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        norm_type: str = "group",
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        out_channels: int = 3,
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
        upsample_bf16: bool = False,
    ) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        norm = {"norm_type": norm_type, "num_groups": num_groups, "eps": eps}

        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.ModuleList(
            [
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
                AttnBlock(block_in, **norm),
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
            ]
        )

        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(block_in, block_out, dropout=dropout, **norm))
                block_in = block_out
                if level == self.num_resolutions - 1:
                    block.attn.append(AttnBlock(block_in, **norm))
            if level != 0:
                block.upsample = Upsample(block_in, resamp_with_conv, cast_to_bf16=upsample_bf16)
            self.conv_blocks.append(block)

        self.norm_out = Normalize(block_in, **norm)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def set_upsample_bf16(self, enabled: bool) -> None:
        """Switch Janus's bf16 cast in every `Upsample` on or off."""
        for m in self.modules():
            if isinstance(m, Upsample):
                m.cast_to_bf16 = bool(enabled)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for i, block in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks + 1):
                h = block.res[j](h)
                if len(block.attn) > 0:
                    h = block.attn[j](h)
            if i != self.num_resolutions - 1:
                h = block.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


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
    unknown = sorted(
        k for k in config if k not in fields_ and k not in ("model_args", "encoder_decoder_kwargs")
    )
    if unknown and not nested:
        raise TokbenchError(
            f"unknown llamagen-vq config fields {unknown}; known: {sorted(fields_)} "
            "(or nested under 'model_args' / 'encoder_decoder_kwargs')"
        )
    for section in ("model_args", "encoder_decoder_kwargs"):
        inner = dict(config.get(section) or {})
        if section == "encoder_decoder_kwargs":
            for alias, targets in _ENCODER_DECODER_ALIASES.items():
                if alias in inner:
                    value = inner.pop(alias)
                    inner.update({t: value for t in targets})
        bad = sorted(set(inner) - fields_)
        if bad:
            raise TokbenchError(
                f"unknown {section} fields {bad} in the llamagen-vq config; known: {sorted(fields_)}"
            )
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


def _resolve_weights(
    variant: Variant | None, weights: str | Path | None
) -> tuple[Path, Callable[[str], Path] | None]:
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir() and variant is not None and variant.weights is not None:
            path = resolve(variant.weights, explicit=path)  # a folder holding the release's file
        if not path.is_file():
            raise TokbenchError(
                f"weights file {str(path)!r} does not exist; pass the checkpoint file (vq_ds16_c2i.pt, a Janus "
                "model.safetensors / pytorch_model.bin, or a sharded *.index.json next to its shards)"
            )
        return path, None
    if variant is None or variant.weights is None:
        raise TokbenchError(
            "llamagen-vq needs weights: pass weights=<vq_ds16_c2i.pt or a Janus model file>, or load a released "
            f"variant by name ({', '.join(v.name for v in VARIANTS)})"
        )
    return resolve(variant.weights), shard_resolver(variant.weights)


def build(
    variant: Variant | None = None,
    weights: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    resolution: int | None = None,
    **options: Any,
) -> LlamaGenVQTokenizer:
    """Build the VQ model from `config`, load a checkpoint in any released layout, wrap it as a tokenizer."""
    if options:
        raise TokbenchError(f"unknown llamagen-vq options {sorted(options)}; known: dtype, resolution")
    torch_dtype(dtype)  # a bad dtype fails before the model is built
    cfg = vq_config(config)
    random_weights = isinstance(weights, str) and weights == "random"
    if random_weights:  # speed benchmarks without the release: same architecture, seeded random parameters
        with torch.device("meta"):
            model = VQModel(cfg)
        random_init(model)
        layout = "none"
    else:
        path, resolve_shard = _resolve_weights(variant, weights)
        model = VQModel(cfg)
        layout = load_vq_weights(model, path, resolve_shard)
    resolution = int(resolution or (variant.resolution if variant else None) or 256)
    side = resolution // cfg.downsample
    name = variant.name if variant is not None else "llamagen-vq"
    source = {"weights": RANDOM_WEIGHTS} if random_weights else {"checkpoint": str(path), "layout": layout}
    if variant is not None and variant.weights is not None:
        source["release"] = variant.weights.source
    spec = TokenizerSpec(
        name=name,
        family="llamagen-vq",
        resolution=resolution,
        tokens_per_image=side * side,
        codebook_size=cfg.codebook_size,
        bits_per_token=bits_for(cfg.codebook_size),
        normalisation="[-1, 1]",
        preprocessing="adm-center-crop",
        dtype=dtype,
        source=source,
        notes=(
            (f"{RANDOM_WEIGHTS_NOTE}; " if random_weights else "")
            + f"downsample {cfg.downsample}, codebook {cfg.codebook_size} x {cfg.codebook_embed_dim}"
            f"{', l2-normalised codes' if cfg.codebook_l2_norm else ''}; ids row-major on a "
            f"{side}x{side} grid at {resolution}"
        ),
    )
    return LlamaGenVQTokenizer(model, spec, torch_dtype(dtype))


FAMILY = Family(
    name="llamagen-vq",
    build=build,
    convolutional=True,
    variants=VARIANTS,
    aliases=("janus-vq",),
    description="LlamaGen VQ-16/VQ-8 image tokenizers, also Janus / Janus-Pro's generation tokenizer (gen_vision_model)",
    default_variant="llamagen-vq16-c2i",
    options={"dtype": DType, "resolution": PositiveInt},
)
