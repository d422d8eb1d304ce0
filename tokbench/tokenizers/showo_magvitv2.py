"""Show-o / MMaDA's MAGVIT-v2 image tokenizer: a VQGAN-style CNN around a 13-bit look-up-free quantiser (LFQ).

Written from the official code, showlab/Show-o @ 45a5a2de01d1ebd10cd5864d29310a76476cdf23:
`models/modeling_magvitv2.py` (`MAGVITv2`, `VQGANEncoder`, `VQGANDecoder`, `LFQuantizer`) and
`models/common_modules.py` (`ResnetBlock`, `AttnBlock`, `Downsample`, `Upsample`, `Normalize`); preprocessing
`training/utils.py::image_transform`; post-processing `inference_t2i.py`. Gen-Verse/MMaDA ships byte-identical
copies and loads the same release, HF `showlab/magvitv2` (`pytorch_model.safetensors` + a `config.json` holding
only `_class_name` / `_diffusers_version`: `MAGVITv2()` takes no arguments and hard-codes every size).

What differs from the taming / LlamaGen VQGANs in `vqgan_blocks.py` (whose blocks are reused: same computation,
same parameter names): `num_res_blocks` is a per-level list, the encoder and decoder have their own (not
mirrored) widths and block counts, decoder levels have `num_res_blocks[i]` blocks (not + 1), the 1x1 `quant_conv`
lives inside the encoder and `post_quant_conv` inside the decoder, and the quantiser is LFQ: per position,
bit c = [latent_c > 0], id = sum_c 2^(D-1-c) bit_c (channel 0 is the most significant bit), and the decoder
receives the +-1 code vector of the id (the `embedding` buffer, row i = bits of i). Written by hand: no library
has this model (transformers, diffusers, timm have no MAGVIT-v2 / LFQ image tokenizer; SEED-Voken's
Open-MAGVIT2 is another architecture with 18 bits).

Every size `MAGVITv2()` hard-codes is a config field here with the released value as default: a config's
`encoder` / `decoder` / `quantize` mappings are the keyword arguments of `VQGANEncoder` / `VQGANDecoder` /
`LFQuantizer` (absent, as in the release: their defaults). `norm_num_groups` / `norm_eps` (GroupNorm(32,
eps 1e-6) in `Normalize`) are ours, for completeness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import CheckpointError, describe_checkpoint, load_strict, read_state_dict
from ..core import GridVQTokenizer, TokbenchError
from ..options import DType, PositiveInt
from ..protocols import register_protocol, resize_crop, short_side_crop_geometry
from ..registry import Family, Variant
from ..weights import Artifact, register_artifact
from .vqgan_blocks import (
    GROUP_NORM_EPS,
    GROUP_NORM_GROUPS,
    AttnBlock,
    Downsample,
    Normalize,
    ResnetBlock,
    Upsample,
)
from .vqgan_blocks import nonlinearity as swish

FAMILY_NAME = "showo-magvitv2"
UPSTREAM = (
    "https://github.com/showlab/Show-o @ 45a5a2de01d1ebd10cd5864d29310a76476cdf23 (models/modeling_magvitv2.py, "
    "models/common_modules.py; byte-identical in Gen-Verse/MMaDA)"
)

# ---------------------------------------------------------------------------------------------------
# Config: the official constructor keywords, with the hard-coded release sizes as defaults
# ---------------------------------------------------------------------------------------------------

# VQGANEncoder.__init__ / VQGANDecoder.__init__ / LFQuantizer.__init__ defaults (= the release)
ENCODER_DEFAULTS: dict[str, Any] = {
    "ch": 128, "ch_mult": [1, 2, 2, 4, 4], "num_res_blocks": [4, 3, 4, 3, 4], "attn_resolutions": [5],
    "dropout": 0.0, "in_ch": 3, "out_ch": 3, "resolution": 256, "z_channels": 13, "double_z": False,
}  # fmt: skip
DECODER_DEFAULTS: dict[str, Any] = {
    "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": [4, 4, 3, 4, 3], "attn_resolutions": [5],
    "dropout": 0.0, "in_ch": 3, "out_ch": 3, "resolution": 256, "z_channels": 13, "double_z": False,
}  # fmt: skip
QUANTIZE_DEFAULTS: dict[str, Any] = {
    "num_codebook_entry": -1, "codebook_dim": 13, "beta": 0.25, "entropy_multiplier": 0.1,
    "commit_loss_multiplier": 0.1,
}  # fmt: skip
# LFQuantizer keywords without effect on ids or reconstructions: the loss weights, and `num_codebook_entry`
# (never read: the code table is always 2^codebook_dim rows)
_QUANTIZE_NO_EFFECT = ("num_codebook_entry", "beta", "entropy_multiplier", "commit_loss_multiplier")
# ours, not the official config's: GroupNorm's group count and eps, hard-coded in common_modules.Normalize
_OWN_KEYS = {"norm_num_groups": GROUP_NORM_GROUPS, "norm_eps": GROUP_NORM_EPS}


@dataclass(frozen=True)
class CoderConfig:
    """One side (encoder or decoder): `VQGANEncoder` / `VQGANDecoder` keywords. Level i has width
    ch * ch_mult[i] and num_res_blocks[i] residual blocks; attention at the levels whose nominal side (from
    `resolution`) is in `attn_resolutions`. Unused by the official code: the encoder's `out_ch`, the
    decoder's `in_ch` and `double_z`; `dropout` does nothing at inference."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attn_resolutions: tuple[int, ...]
    dropout: float
    in_ch: int
    out_ch: int
    resolution: int
    z_channels: int
    double_z: bool

    @property
    def levels(self) -> int:
        return len(self.ch_mult)

    @property
    def factor(self) -> int:
        """Down- (encoder) or up-sampling (decoder) factor: one x2 between consecutive levels."""
        return 2 ** (self.levels - 1)


@dataclass(frozen=True)
class MagvitV2Config:
    encoder: CoderConfig
    decoder: CoderConfig
    codebook_dim: int = 13
    norm_num_groups: int = GROUP_NORM_GROUPS
    norm_eps: float = GROUP_NORM_EPS

    @property
    def downsample(self) -> int:
        return self.encoder.factor

    @property
    def n_embed(self) -> int:
        return 2**self.codebook_dim

    def encoder_attention_levels(self) -> list[int]:
        """Encoder levels with attention: `curr_res` starts at `resolution`, halved (floor) after each level."""
        e = self.encoder
        return [i for i in range(e.levels) if e.resolution // 2**i in set(e.attn_resolutions)]

    def decoder_attention_levels(self) -> list[int]:
        """Decoder levels with attention: `curr_res` starts at resolution // 2^(L-1) at the deepest level and
        doubles on the way up (so it differs from the encoder's when `resolution` is not a multiple of 2^(L-1))."""
        d = self.decoder
        lowest = d.resolution // d.factor
        return [i for i in range(d.levels) if lowest * 2 ** (d.levels - 1 - i) in set(d.attn_resolutions)]


def _ints(value: Any, what: str, *, minimum: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TokbenchError(f"{what} must be a list of integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise TokbenchError(f"{what} must be a list of integers >= {minimum}, got {list(value)!r}")
        out.append(int(v))
    return tuple(out)


def _int(value: Any, what: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TokbenchError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _coder(side: str, given: Any, defaults: Mapping[str, Any]) -> CoderConfig:
    cls = "VQGANEncoder" if side == "encoder" else "VQGANDecoder"
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise TokbenchError(
            f"config `{side}` must be a mapping of {cls} keywords, got {type(given).__name__}"
        )
    refuse_unknown(f"{side} keys", given, defaults, f"({cls} keywords)")
    kw = {**defaults, **given}
    ch_mult = _ints(kw["ch_mult"], f"{side}.ch_mult", minimum=1)
    if not ch_mult:
        raise TokbenchError(f"{side}.ch_mult must name at least one level, got {kw['ch_mult']!r}")
    blocks = kw["num_res_blocks"]
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        raise TokbenchError(
            f"{side}.num_res_blocks must be a list with one block count per level ({len(ch_mult)} levels), got "
            f"{blocks!r}: {cls} indexes it by level"
        )
    blocks = _ints(blocks, f"{side}.num_res_blocks", minimum=0)
    if len(blocks) < len(ch_mult):
        raise TokbenchError(
            f"{side}.num_res_blocks has {len(blocks)} entries for {len(ch_mult)} levels (ch_mult {list(ch_mult)})"
        )
    double_z = kw["double_z"]
    if not isinstance(double_z, bool):
        raise TokbenchError(f"{side}.double_z must be true or false, got {double_z!r}")
    if side == "encoder" and double_z:
        # conv_out would give 2 * z_channels while the encoder's quant_conv takes z_channels: the official
        # forward fails, so no checkpoint of this class can have it
        raise TokbenchError(
            "encoder.double_z=true does not work with MAGVITv2 (its quant_conv takes z_channels)"
        )
    dropout = kw["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TokbenchError(f"{side}.dropout must be a number, got {dropout!r}")
    return CoderConfig(
        ch=_int(kw["ch"], f"{side}.ch"),
        ch_mult=ch_mult,
        num_res_blocks=blocks[
            : len(ch_mult)
        ],  # the official code reads one entry per level, extra ones unused
        attn_resolutions=_ints(kw["attn_resolutions"] or [], f"{side}.attn_resolutions", minimum=0),
        dropout=float(dropout),
        in_ch=_int(kw["in_ch"], f"{side}.in_ch"),
        out_ch=_int(kw["out_ch"], f"{side}.out_ch"),
        resolution=_int(kw["resolution"], f"{side}.resolution"),
        z_channels=_int(kw["z_channels"], f"{side}.z_channels"),
        double_z=double_z,
    )


def showo_magvitv2_config(config: Mapping[str, Any] | MagvitV2Config | None = None) -> MagvitV2Config:
    """Our config from the release's `config.json` (+ optional `encoder` / `decoder` / `quantize` constructor
    keywords; keys starting with `_` other than `_class_name` are metadata). Empty: the released model."""
    if isinstance(config, MagvitV2Config):
        return config
    config = dict(config or {})
    name = config.get("_class_name")
    if name is not None and name != "MAGVITv2":
        raise TokbenchError(
            f"the config names class {name!r}, not MAGVITv2 (Show-o's MAGVIT-v2, showlab/magvitv2); is it the "
            "right config.json?"
        )
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    refuse_unknown("showo-magvitv2 config keys", config, {"encoder", "decoder", "quantize", *_OWN_KEYS},
                   "(encoder / decoder / quantize: VQGANEncoder / VQGANDecoder / LFQuantizer keywords; "
                   "keys starting with '_' are ignored)")
    encoder = _coder("encoder", config.get("encoder"), ENCODER_DEFAULTS)
    decoder = _coder("decoder", config.get("decoder"), DECODER_DEFAULTS)
    quantize = config.get("quantize") or {}
    if not isinstance(quantize, Mapping):
        raise TokbenchError(f"config `quantize` must be a mapping of LFQuantizer keywords, got {quantize!r}")
    refuse_unknown("quantize keys", quantize, QUANTIZE_DEFAULTS, "(LFQuantizer keywords)")
    dim = _int({**QUANTIZE_DEFAULTS, **quantize}["codebook_dim"], "quantize.codebook_dim")
    if dim > 30:
        raise TokbenchError(f"quantize.codebook_dim {dim} is too large: the code table has 2^{dim} rows")
    if not encoder.z_channels == decoder.z_channels == dim:
        raise TokbenchError(
            f"encoder.z_channels ({encoder.z_channels}), decoder.z_channels ({decoder.z_channels}) and "
            f"quantize.codebook_dim ({dim}) must be equal: LFQ quantises each latent channel to one bit"
        )
    groups = _int(config.get("norm_num_groups", GROUP_NORM_GROUPS), "norm_num_groups")
    eps = config.get("norm_eps", GROUP_NORM_EPS)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise TokbenchError(f"norm_eps must be a positive number, got {eps!r}")
    for side, c in (("encoder", encoder), ("decoder", decoder)):
        widths = sorted({c.ch, *(c.ch * m for m in c.ch_mult)})
        if bad := [w for w in widths if w % groups]:
            raise TokbenchError(
                f"{side} widths {bad} (ch {c.ch} x ch_mult {list(c.ch_mult)}) are not divisible by the {groups} "
                "GroupNorm groups; choose ch as a multiple of 32"
            )
    return MagvitV2Config(encoder=encoder, decoder=decoder, codebook_dim=dim, norm_num_groups=groups,
                          norm_eps=float(eps))  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Model (module and parameter names as the release's state dict)
# ---------------------------------------------------------------------------------------------------


def _mid(width: int, dropout: float, norm: Mapping[str, Any]) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(width, width, dropout=dropout, **norm)
    mid.attn_1 = AttnBlock(width, **norm)
    mid.block_2 = ResnetBlock(width, width, dropout=dropout, **norm)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[j](h)
    return h


class MagvitV2Encoder(nn.Module):
    """VQGANEncoder: image (B, in_ch, H, W) in [-1, 1] -> LFQ input (B, z_channels, H / f, W / f), including the
    encoder's own 1x1 `quant_conv`. Keys `conv_in`, `down.{i}.block.{j}` / `.attn.{j}` / `.downsample`,
    `mid.{block_1,attn_1,block_2}`, `norm_out`, `conv_out`, `quant_conv`."""

    def __init__(self, cfg: CoderConfig, attention_levels: Sequence[int], norm: Mapping[str, Any]) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_ch, cfg.ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        widths = (cfg.ch, *(cfg.ch * m for m in cfg.ch_mult))
        for i in range(cfg.levels):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            # level i starts at width ch * (1, *ch_mult)[i] whatever the level before ended with, as upstream
            # (they only differ for a level with 0 blocks, which the official forward then rejects too)
            block_in = widths[i]
            for _ in range(cfg.num_res_blocks[i]):
                level.block.append(ResnetBlock(block_in, widths[i + 1], dropout=cfg.dropout, **norm))
                block_in = widths[i + 1]
                if i in attention_levels:
                    level.attn.append(AttnBlock(block_in, **norm))
            if i != cfg.levels - 1:
                level.downsample = Downsample(block_in, with_conv=True)
            self.down.append(level)
        width = block_in
        self.mid = _mid(width, cfg.dropout, norm)
        self.norm_out = Normalize(width, **norm)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, kernel_size=3, stride=1, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.quant_conv(self.conv_out(swish(self.norm_out(h))))


class MagvitV2Decoder(nn.Module):
    """VQGANDecoder: code vectors (B, z_channels, h, w) -> image (B, out_ch, h * f, w * f), raw (unclamped).
    `post_quant_conv` (1x1) first, then `conv_in`, `mid`, levels from the deepest to 0 (`up.{i}`, num_res_blocks[i]
    blocks each, nearest x2 + 3x3 conv `upsample` on levels > 0), `norm_out`, swish, `conv_out`."""

    def __init__(self, cfg: CoderConfig, attention_levels: Sequence[int], norm: Mapping[str, Any]) -> None:
        super().__init__()
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _mid(block_in, cfg.dropout, norm)
        levels: list[nn.Module] = []
        for i in reversed(range(cfg.levels)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks[i]):
                level.block.append(
                    ResnetBlock(block_in, cfg.ch * cfg.ch_mult[i], dropout=cfg.dropout, **norm)
                )
                block_in = cfg.ch * cfg.ch_mult[i]
                if i in attention_levels:
                    level.attn.append(AttnBlock(block_in, **norm))
            if i != 0:
                level.upsample = Upsample(block_in, with_conv=True)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))  # up[i] is level i, as the official `insert(0, ...)`
        self.norm_out = Normalize(block_in, **norm)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, kernel_size=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def lfq_code_table(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding (2^bits, bits) float32 with row i = the bits of i, most significant first, {0, 1} -> {-1, +1};
    power_vals (bits,) int64 = 2^(bits-1) ... 1), the LFQuantizer's two buffers. Built on the CPU even under a
    meta default device: they are constants the release also stores, not weights."""
    power_vals = 2 ** torch.arange(bits - 1, -1, -1, device="cpu")
    ids = torch.arange(2**bits, device="cpu")
    embedding = ((ids[:, None] // power_vals) % 2).float() * 2 - 1
    return embedding, power_vals


class LookupFreeQuantizer(nn.Module):
    """LFQuantizer at inference: buffers `embedding` (code table) and `power_vals`, as the release stores them."""

    def __init__(self, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_dim = codebook_dim
        embedding, power_vals = lfq_code_table(codebook_dim)
        self.register_buffer("embedding", embedding)
        self.register_buffer("power_vals", power_vals)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """LFQuantizer.forward(z)["z"]: q = +1 where z > 0 else -1 (0 and NaN -> -1), returned as the official
        straight-through value z + (q - z), in z's dtype (exactly +-1 unless |z| is huge for the dtype)."""
        q = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        return z + (q - z)

    def indices(self, z_q: torch.Tensor) -> torch.Tensor:
        """get_indices: (B, D, h, w) -> ids (B, h, w) int64, sum_c power_vals[c] * [z_q_c > 0]. Summed in int64
        (upstream sums float32, which is the same integer for D <= 24)."""
        return (self.power_vals.view(1, -1, 1, 1) * (z_q > 0)).sum(1)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """get_codebook_entry: ids (B, h, w) -> +-1 code vectors (B, D, h, w), rows of `embedding`."""
        return self.embedding[ids].permute(0, 3, 1, 2).contiguous()


class MagvitV2(nn.Module):
    """MAGVITv2: `encoder` (incl. quant_conv), `decoder` (incl. post_quant_conv), `quantize` (LFQ buffers)."""

    def __init__(self, config: Mapping[str, Any] | MagvitV2Config | None = None) -> None:
        super().__init__()
        cfg = showo_magvitv2_config(config)
        self.config = cfg
        norm = {"num_groups": cfg.norm_num_groups, "eps": cfg.norm_eps}
        self.encoder = MagvitV2Encoder(cfg.encoder, cfg.encoder_attention_levels(), norm)
        self.decoder = MagvitV2Decoder(cfg.decoder, cfg.decoder_attention_levels(), norm)
        self.quantize = LookupFreeQuantizer(cfg.codebook_dim)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """`encoder(x)`: the LFQ input (B, D, H / f, W / f) of images x (B, 3, H, W) in [-1, 1]."""
        return self.encoder(x)

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Ids (B, H / f, W / f) of images in [-1, 1]; `get_code(x).view(B, h, w)`."""
        return self.quantize.indices(self.quantize.quantize(self.latent(x)))

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, h, w) -> raw reconstruction (B, out_ch, h * f, w * f), nominally [-1, 1] (unclamped)."""
        return self.decoder(self.quantize.codes(ids))

    def get_code(self, x: torch.Tensor) -> torch.Tensor:
        """The official `get_code`: ids (B, h * w), row-major over (y, x)."""
        return self.encode_ids(x).flatten(1)

    def decode_code(self, ids: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """The official `decode_code`: ids (B, h * w) on a (h, w) grid (None: square)."""
        if shape is None:
            side = math.isqrt(ids.shape[-1])
            shape = (side, side)
        return self.decode_ids(ids.reshape(ids.shape[0], *shape))


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------


class ShowoMagvitV2Tokenizer(GridVQTokenizer):
    """Images [0, 1] (B, 3, H, W), sides divisible by f (16 released) <-> ids (B, h*w) of 2^D (8192) codes,
    row-major (y, x); D bits per token. The model sees x * 2 - 1 (the official Normalize(0.5, 0.5)); decoded
    images are clamp((x + 1) / 2, 0, 1) as the official post-processing (before its uint8 truncation).
    Non-square grids decode with `Tokens.grid` (the official `decode_code(ids, shape=(h, w))`)."""

    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """Token features (B, h*w, D) float32 at `stage`: `pre_quant`, the encoder output after its quant_conv
        (the LFQ input); `post_quant`, the +-1 code vectors of the ids (what `decode_code` feeds the decoder)."""
        if stage not in self.feature_stages:
            raise TokbenchError(
                f"{self.spec.name} has feature stages {', '.join(self.feature_stages)}; got {stage!r}"
            )
        z = self.model.latent(self.model_input(images))
        if stage == "post_quant":
            z = self.model.quantize.codes(self.model.quantize.indices(self.model.quantize.quantize(z)))
        return z.flatten(2).transpose(1, 2).float()


# ---------------------------------------------------------------------------------------------------
# Preprocessing: training/utils.py::image_transform
# ---------------------------------------------------------------------------------------------------

# torchvision Resize(resolution, BICUBIC) on a PIL image (PIL's antialiased bicubic, long side truncated with
# int()), CenterCrop((resolution, resolution)) (offsets rounded), ToTensor, Normalize(0.5, 0.5): exactly the
# shared `resize-crop` transform, registered under the family's name so results say which official pipeline
# they followed.
register_protocol(
    "showo",
    "Show-o / MMaDA image_transform (training/utils.py): torchvision Resize(size, BICUBIC) of the short side "
    "(PIL bicubic, antialiased), CenterCrop(size), then [-1, 1]; the same transform as 'resize-crop'",
    geometry=lambda w, h, size: short_side_crop_geometry(w, h, size, size),
)(resize_crop)


# ---------------------------------------------------------------------------------------------------
# Released variants, build, family
# ---------------------------------------------------------------------------------------------------

PAPER = "Xie et al., Show-o: One Single Transformer to Unify Multimodal Understanding and Generation, arXiv:2408.12528"
ARTIFACT = register_artifact(
    Artifact(
        name="showo-magvitv2",
        repo_id="showlab/magvitv2",
        filename="pytorch_model.safetensors",
        size=381_974_104,  # tensor data (95,387,004 float32 parameters + the two buffers); plus a small header
        licence="MIT (showlab/magvitv2 model card); code Apache-2.0 (showlab/Show-o LICENSE)",
        companions=("config.json",),
        used_by="showo-magvitv2, showo-magvitv2-512",
    )
)
_NO_PUBLISHED = (
    "none: the Show-o README (and, as far as known, the paper arXiv:2408.12528) gives no reconstruction metrics "
    "for this tokenizer, and no other source from the authors was found"
)
VARIANTS = (
    Variant(
        name="showo-magvitv2", family=FAMILY_NAME, config={}, weights=ARTIFACT, resolution=256,
        description=(
            "Show-o's MAGVIT-v2 (LFQ, 8192 codes = 13 bits, 16x) at 256 px: 16x16 tokens, as Show-o 256 models "
            "and MMaDA pre-training use it; no published reconstruction numbers"
        ),
        paper=PAPER, published={}, published_source=_NO_PUBLISHED,
    ),
    Variant(
        name="showo-magvitv2-512", family=FAMILY_NAME, config={}, weights=ARTIFACT, resolution=512,
        description=(
            "the same showlab/magvitv2 file at 512 px: 32x32 = 1024 tokens, as Show-o 512x512 models and MMaDA "
            "(MMaDA-8B) use it; no published reconstruction numbers"
        ),
        paper=PAPER, published={}, published_source=_NO_PUBLISHED,
    ),
)  # fmt: skip
DEFAULT_VARIANT = "showo-magvitv2"
HINT = "the release's pytorch_model.safetensors (HF showlab/magvitv2)"
_BUFFERS = ("quantize.embedding", "quantize.power_vals")


def is_showo_magvitv2(keys: set[str]) -> bool:
    """The release's key layout: LFQ buffers and the encoder-owned quant_conv (no top-level quant_conv)."""
    return (
        "quantize.power_vals" in keys
        and "encoder.quant_conv.weight" in keys
        and "quant_conv.weight" not in keys
    )


def read_release(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `MAGVITv2.state_dict()` file (safetensors, or a torch pickle as the deleted
    pytorch_model.bin), refused with what it looks like when it is another family's."""
    sd = read_state_dict(path)
    if not is_showo_magvitv2(set(sd)):
        raise CheckpointError(
            f"{path.name} is not a Show-o MAGVIT-v2 checkpoint (showlab/magvitv2 layout: encoder.quant_conv.*, "
            f"quantize.power_vals): it looks like {describe_checkpoint(sd)}"
        )
    return sd


def load_release(model: MagvitV2, path: Path, sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Load the release's tensors `sd` (read from `path`) strictly. The two LFQ buffers are constants: a file
    may lack them, and a file whose table differs from the bit table is refused."""
    own = model.state_dict()
    for key in _BUFFERS:
        if key in sd and (
            sd[key].shape != own[key].shape or not torch.equal(sd[key].to(own[key].dtype), own[key])
        ):
            raise CheckpointError(
                f"{path.name}: {key} {tuple(sd[key].shape)} is not the LFQ bit table of codebook_dim "
                f"{model.config.codebook_dim} ({tuple(own[key].shape)}); check quantize.codebook_dim in the config"
            )
    load_strict(model, sd, source=path.name, ignore_missing=lambda k: k in _BUFFERS)
    return {"layout": "MAGVITv2.state_dict() (showlab/magvitv2)"}


def _describe(cfg: MagvitV2Config, grid: int, resolution: int) -> str:
    e, d = cfg.encoder, cfg.decoder
    enc_attn, dec_attn = cfg.encoder_attention_levels(), cfg.decoder_attention_levels()
    attn = (
        "mid blocks only"
        if not enc_attn and not dec_attn
        else f"mid blocks and encoder levels {enc_attn}, decoder levels {dec_attn}"
    )
    return (
        f"Show-o MAGVIT-v2: VQGAN encoder (ch {e.ch} x {list(e.ch_mult)}, blocks {list(e.num_res_blocks)}) -> LFQ "
        f"of {cfg.codebook_dim} bits ({cfg.n_embed} ids; bit c = latent_c > 0, channel 0 most significant) -> "
        f"decoder (ch {d.ch} x {list(d.ch_mult)}, blocks {list(d.num_res_blocks)}); attention in {attn}; "
        f"downsample {cfg.downsample}; ids row-major on a {grid}x{grid} grid at {resolution} px"
    )


def build(b: Build) -> ShowoMagvitV2Tokenizer:
    cfg = showo_magvitv2_config(b.config)
    if cfg.decoder.factor != cfg.downsample:
        raise TokbenchError(
            f"the encoder downsamples by {cfg.downsample} ({cfg.encoder.levels} levels) but the decoder upsamples by "
            f"{cfg.decoder.factor} ({cfg.decoder.levels} levels): reconstructions would not have the input's size"
        )
    path = sd = None
    if not b.random_weights:  # read (and refuse another family's file) before building the model
        path = b.checkpoint(HINT)
        sd = read_release(path)
    model = b.model(lambda: MagvitV2(cfg), lambda m, p: load_release(m, p, sd), HINT, checkpoint=path)
    f = cfg.downsample
    chosen = b.option("resolution") or (b.variant.resolution if b.variant is not None else None)
    resolution = int(chosen) if chosen else max(f, cfg.encoder.resolution // f * f)
    if resolution % f:
        raise TokbenchError(f"resolution must be a multiple of {f} (the downsample factor), got {resolution}")
    grid = resolution // f
    b.notes.append(_describe(cfg, grid, resolution))
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=grid * grid,
        codebook_size=cfg.n_embed,
        bits_per_token=float(cfg.codebook_dim),
        normalisation="[-1, 1] (x * 2 - 1)",
        preprocessing="showo",
    )
    return ShowoMagvitV2Tokenizer(model, spec, b.torch_dtype)


FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    variants=VARIANTS,
    default_variant=DEFAULT_VARIANT,
    description=(
        "Show-o / MMaDA MAGVIT-v2 tokenizer (showlab/magvitv2): look-up-free quantiser, 8192 codes (13 bits), 16x "
        "downsampling; used at 256 px (Show-o) and 512 px (Show-o 512, MMaDA). No published reconstruction numbers"
    ),
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt},
    code=UPSTREAM,
    convolutional=True,
)

__all__ = [
    "FAMILY",
    "CoderConfig",
    "LookupFreeQuantizer",
    "MagvitV2",
    "MagvitV2Config",
    "ShowoMagvitV2Tokenizer",
    "lfq_code_table",
    "showo_magvitv2_config",
]
