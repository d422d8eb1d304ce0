"""Open-MAGVIT2: TencentARC's lookup-free-quantisation (LFQ) image tokenizers with 2^18 (or 2^14) codes.

Written from the official code (TencentARC/SEED-Voken, formerly TencentARC/Open-MAGVIT2;
`src/Open_MAGVIT2/models/lfqgan.py`, `modules/diffusionmodules/improved_model.py`,
`modules/vqvae/lookup_free_quantize.py`); no library implements it (lucidrains' LFQ and
`magvit2-pytorch` are other models with MSB-first ids and cannot load these checkpoints).

What changes ids or pixels, all kept here: each latent channel is one bit (z > 0), the token id is
LSB-first (channel c is bit c; the legacy "B" releases are MSB-first); the decoder normalises every level
with an AdaptiveGroupNorm whose scale comes from the UNBIASED variance of the whole code grid; the
upsampler is a conv to 4C then depth-to-space in DCR order (not PixelShuffle). Convolutions of the
residual blocks have no bias. Every size the official classes hard-code is a config field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..building import refuse_unknown
from ..core import TokbenchError, Tokens
from ..features import check_stage, grid_tokens, grid_vq_input
from ..options import DType, PositiveInt
from ..registry import Variant
from ..weights import Artifact, register_artifact
from .seed_voken import TRAINING_ARGS, SeedVokenFamily, SeedVokenTokenizer, constructor_args

FAMILY_NAME = "open-magvit2"
GROUP_NORM_EPS = 1e-6  # hard-coded upstream, as the AdaGN eps added to the variance


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenMagvit2Config:
    """`VQModel(ddconfig, n_embed, embed_dim, ...)` flattened, plus what the official code hard-codes.

    `adaptive_norm` False and `bit_order` "msb" describe the legacy "B" releases (code before "upgrade
    v2"). `factorized_bits` is the AR models' split of each id into a (pre, post) pair (channels [0, k)
    first); the 256 px ImageNet AR configs use [6, 12], which the 18-bit ImageNet variants carry.
    `layout_from_checkpoint`: the config did not say which code wrote it (no `legacy`, `adaptive_norm`,
    `bit_order`, nor a legacy `taming.*` class path), so a checkpoint without `decoder.adaptive.*` is read
    as legacy "B" (the current code always has them).
    `resolution` does not change the model (the official modules accept and ignore it); it is the default
    input side of a tokenizer loaded by family name.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 4
    z_channels: int = 18
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 128
    embed_dim: int = 18
    n_embed: int = 262144
    norm_groups: int = 32
    adaptive_norm: bool = True
    bit_order: str = "lsb"
    layout_from_checkpoint: bool = False
    factorized_bits: tuple[int, int] | None = None
    use_ema: bool | None = None

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def bits(self) -> int:
        return int(math.log2(self.n_embed))


_DDCONFIG_KEYS = {"ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch", "resolution", "double_z"}
_DDCONFIG_REQUIRED = ("ch", "out_ch", "in_channels", "num_res_blocks", "z_channels", "resolution")
_UPSTREAM_CH_MULT = (1, 2, 2, 4)  # improved_model.Encoder/Decoder's default, not the releases' value
_OWN_KEYS = {"norm_groups", "adaptive_norm", "bit_order", "legacy", "layout_from_checkpoint"}
_MODEL_KEYS = {"n_embed", "embed_dim", "use_ema", "token_factorization", "factorized_bits"}

_BASE_DDCONFIG: dict[str, Any] = {"double_z": False, "z_channels": 18, "resolution": 128, "in_channels": 3,
                                  "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 4}  # fmt: skip


def _release(ch_mult: Sequence[int], bits: int = 18, res_blocks: int = 4, legacy: bool = False) -> dict[str, Any]:
    """`init_args` of a released YAML (configs/Open-MAGVIT2/gpu/*.yaml; legacy B: the old configs/)."""
    dd = {**_BASE_DDCONFIG, "ch_mult": list(ch_mult), "num_res_blocks": res_blocks, "z_channels": bits}
    out = {"ddconfig": dd, "n_embed": 2**bits, "embed_dim": bits, "use_ema": True}
    if bits == 18 and not legacy:
        out["factorized_bits"] = [6, 12]  # configs/Open-MAGVIT2/gpu/imagenet_conditional_llama_*.yaml
    return {**out, "legacy": True} if legacy else out


RELEASE_256_L = _release((1, 1, 2, 2, 4))


def open_magvit2_config(config: Mapping[str, Any] | None) -> OpenMagvit2Config:
    """Parse the official YAML / config.json (`model.init_args`) or the constructor keywords (flat, with
    `ddconfig` nested or its keys given flat). Empty: the released 256-px "L" tokenizer. Training-only
    keywords are ignored; anything else unknown is an error. `legacy: true` sets the "B" layout."""
    args, class_path = constructor_args(dict(config or {}) or RELEASE_256_L)
    if class_path is not None and "Open_MAGVIT2" not in class_path and "lfqgan" not in class_path:
        raise TokbenchError(
            f"the config builds {class_path!r}, not Open-MAGVIT2's lfqgan.VQModel; "
            + ("load it with 'ibq'" if "IBQ" in class_path else "is this the right config?")
        )
    args = {k: v for k, v in args.items() if k not in TRAINING_ARGS}
    dd = dict(args.pop("ddconfig", {}) or {})
    dd.update({k: args.pop(k) for k in list(args) if k in _DDCONFIG_KEYS})
    refuse_unknown("open-magvit2 config keys", args, _MODEL_KEYS | _OWN_KEYS | {"ddconfig"},
                   "(and the ddconfig keys given flat; training-only keywords are ignored)")
    refuse_unknown("open-magvit2 ddconfig keys", dd, _DDCONFIG_KEYS)
    # improved_model's Encoder accepts double_z and ignores it (its conv_out always gives z_channels)
    dd.pop("double_z", None)
    if class_path is not None:
        # the official layout: the keywords improved_model's Encoder/Decoder require, and their ch_mult default
        missing = [k for k in _DDCONFIG_REQUIRED if k not in dd]
        if missing:
            raise TokbenchError(
                f"the open-magvit2 ddconfig lacks {missing} (required by the official Encoder/Decoder); "
                "pass the release YAML's model.init_args"
            )
        dd.setdefault("ch_mult", _UPSTREAM_CH_MULT)
    # the legacy "B" code lived under taming/ (taming.models.lfqgan.VQModel) before "upgrade v2"
    legacy = bool(args.pop("legacy", False)) or (class_path or "").startswith("taming.")
    explicit = legacy or "adaptive_norm" in args or "bit_order" in args
    values: dict[str, Any] = {k: v for k, v in dd.items()}
    values["layout_from_checkpoint"] = not explicit
    values.update({k: v for k, v in args.items() if k not in ("token_factorization",)})
    if legacy:
        values.setdefault("adaptive_norm", False)
        values.setdefault("bit_order", "msb")
    if "ch_mult" in values:
        values["ch_mult"] = tuple(int(m) for m in values["ch_mult"])
    if "factorized_bits" in values:
        values["factorized_bits"] = tuple(int(b) for b in values["factorized_bits"])
    cfg = OpenMagvit2Config(**values)
    _validate(cfg)
    return cfg


def _validate(cfg: OpenMagvit2Config) -> None:
    if cfg.n_embed < 2 or 2**cfg.bits != cfg.n_embed:
        raise TokbenchError(f"n_embed must be a power of 2 for lookup-free quantisation, got {cfg.n_embed}")
    if not cfg.z_channels == cfg.embed_dim == cfg.bits:
        raise TokbenchError(
            f"Open-MAGVIT2's LFQ has no projection: z_channels ({cfg.z_channels}), embed_dim ({cfg.embed_dim}) "
            f"and log2(n_embed) ({cfg.bits}) must be equal"
        )
    widths = sorted({cfg.ch * m for m in cfg.ch_mult} | {cfg.ch})
    if any(w % cfg.norm_groups for w in widths):
        raise TokbenchError(
            f"GroupNorm with {cfg.norm_groups} groups needs every width divisible by it; ch {cfg.ch} x ch_mult "
            f"{list(cfg.ch_mult)} gives {widths}"
        )
    if cfg.bit_order not in ("lsb", "msb"):
        raise TokbenchError(f"bit_order must be 'lsb' (current releases) or 'msb' (legacy B), got {cfg.bit_order!r}")
    split = cfg.factorized_bits
    if split is not None and (len(split) != 2 or sum(split) != cfg.bits or min(split) < 1):
        raise TokbenchError(
            f"factorized_bits must be two positive sizes summing to {cfg.bits}, got {list(cfg.factorized_bits)}"
        )
    if cfg.num_res_blocks < 1:
        raise TokbenchError(f"num_res_blocks must be at least 1, got {cfg.num_res_blocks}")


# ---------------------------------------------------------------------------------------------------
# Modules (improved_model.py), official key names
# ---------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """GN-swish-conv3x3 twice (convs without bias) plus a bias-free 1x1 `nin_shortcut` when widths differ."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=GROUP_NORM_EPS)
        self.norm2 = nn.GroupNorm(groups, cout, eps=GROUP_NORM_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


def depth_to_space(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """(B, s*s*C, h, w) -> (B, C, s*h, s*w) in DCR order: out[c, s*y+a, s*x+b] = in[(s*a+b)*C + c, y, x].

    NOT `torch.nn.PixelShuffle`, which reads channel c*s*s + s*a + b (CRD order).
    """
    b, c, h, w = x.shape
    c_out = c // (block * block)
    x = x.view(b, block, block, c_out, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c_out, h * block, w * block)


class Upsampler(nn.Module):
    """3x3 conv C -> 4C (with bias), then depth-to-space x2 (DCR)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, scaled by gamma(std of the codes) and shifted by beta(mean of the codes).

    The statistics are per image and code channel over ALL h*w positions, with torch's default UNBIASED
    variance (the official comment says otherwise; the code calls `var()`): a 1x1 grid has none.
    """

    def __init__(self, z_channels: int, channels: int, groups: int) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        flat = style.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + GROUP_NORM_EPS).sqrt())[:, :, None, None]
        bias = self.beta(flat.mean(dim=-1))[:, :, None, None]
        return self.gn(x) * scale + bias


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) in [-1, 1] -> latent (B, z_channels, H/f, W/f), f = 2^(len(ch_mult)-1).

    Keys: `conv_in` (no bias), `down.{i}.block.{j}`, `down.{i}.downsample` (bare 3x3 stride-2 conv with
    symmetric padding 1), `mid_block.{j}`, `norm_out`, `conv_out` (1x1). No attention.
    """

    def __init__(self, cfg: OpenMagvit2Config) -> None:
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResBlock(block_in, cfg.ch * mult, g))
                block_in = cfg.ch * mult
            if i < len(cfg.ch_mult) - 1:
                level.downsample = nn.Conv2d(block_in, block_in, 3, stride=2, padding=1)
            self.down.append(level)
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in, g) for _ in range(cfg.num_res_blocks))
        self.norm_out = nn.GroupNorm(g, block_in, eps=GROUP_NORM_EPS)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))


class Decoder(nn.Module):
    """Codes (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f), nominally [-1, 1] (not clamped).

    Keys: `conv_in`, `mid_block.{j}`, `adaptive.{i}` (one per level, absent in legacy "B"), `up.{i}.block.{j}`
    (level 0 = full resolution, run from the deepest), `up.{i>0}.upsample`, `norm_out`, `conv_out`.
    """

    def __init__(self, cfg: OpenMagvit2Config) -> None:
        super().__init__()
        g = cfg.norm_groups
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in, g) for _ in range(cfg.num_res_blocks))
        adaptive: list[nn.Module] = []
        up: list[nn.Module] = []
        for i in reversed(range(n)):
            if cfg.adaptive_norm:
                adaptive.insert(0, AdaptiveGroupNorm(cfg.z_channels, block_in, g))
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResBlock(block_in, cfg.ch * cfg.ch_mult[i], g))
                block_in = cfg.ch * cfg.ch_mult[i]
            if i > 0:
                level.upsample = Upsampler(block_in)
            up.insert(0, level)
        self.adaptive = nn.ModuleList(adaptive) if cfg.adaptive_norm else None
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(g, block_in, eps=GROUP_NORM_EPS)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        style = z
        x = self.conv_in(z)
        for block in self.mid_block:
            x = block(x)
        for i in reversed(range(len(self.up))):
            if self.adaptive is not None:
                x = self.adaptive[i](x, style)
            for block in self.up[i].block:
                x = block(x)
            if i > 0:
                x = self.up[i].upsample(x)
        return self.conv_out(swish(self.norm_out(x)))


# ---------------------------------------------------------------------------------------------------
# Lookup-free quantisation (eval path of LFQ: no parameters, no entropy terms)
# ---------------------------------------------------------------------------------------------------


def _bit_weights(n: int, bit_order: str, device: torch.device) -> torch.Tensor:
    """2^c for channel c (LSB-first), or 2^(n-1-c) (MSB-first, legacy "B")."""
    exps = torch.arange(n, device=device)
    return 2 ** (exps if bit_order == "lsb" else exps.flip(0))


def lfq_ids(z: torch.Tensor, bit_order: str = "lsb") -> torch.Tensor:
    """Latent (B, C, h, w) -> ids (B, h, w): bit c is [z_c > 0] (z == 0 counts as -1, as upstream)."""
    w = _bit_weights(z.shape[1], bit_order, z.device)
    return ((z > 0).long() * w[None, :, None, None]).sum(dim=1)


def lfq_codes(ids: torch.Tensor, bits: int, bit_order: str = "lsb", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ids (B, h, w) -> +-1 codes (B, bits, h, w), the inverse of `lfq_ids` (`LFQ.get_codebook_entry`)."""
    w = _bit_weights(bits, bit_order, ids.device)
    on = (ids.unsqueeze(1) & w[None, :, None, None]) != 0
    return on.to(dtype) * 2 - 1


def factorize_ids(ids: torch.Tensor, split: tuple[int, int], bit_order: str = "lsb") -> tuple[torch.Tensor, torch.Tensor]:
    """The AR models' sub-token pair (pre, post): ids of channels [0, k) and [k, C), k = split[0].

    LSB-first: id = pre + post * 2^k. MSB-first (legacy): pre holds the high bits, id = pre * 2^(C-k) + post.
    """
    k, rest = split
    if bit_order == "lsb":
        return ids & (2**k - 1), ids >> k
    return ids >> rest, ids & (2**rest - 1)


def unfactorize_ids(pre: torch.Tensor, post: torch.Tensor, split: tuple[int, int], bit_order: str = "lsb") -> torch.Tensor:
    """Inverse of `factorize_ids`."""
    k, rest = split
    return pre + post * 2**k if bit_order == "lsb" else pre * 2**rest + post


class OpenMagvit2(nn.Module):
    """lfqgan.VQModel for inference: `encoder`, LFQ (parameter-free), `decoder`. Images in [-1, 1]."""

    def __init__(self, cfg: OpenMagvit2Config) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> ids (B, H/f, W/f), `VQModel.encode(x)[2]` reshaped to the grid."""
        return lfq_ids(self.encoder(x), self.config.bit_order)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> +-1 codes (B, C, h, w) in the decoder's dtype."""
        return lfq_codes(ids, self.config.bits, self.config.bit_order, self.decoder.conv_in.weight.dtype)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> images (B, 3, h*f, w*f) in about [-1, 1]: decode(get_codebook_entry(ids)).

        (Upstream `decode_code` is broken: it calls a non-existent `quantize.embed_code`.)
        """
        if self.config.adaptive_norm and ids.shape[1] * ids.shape[2] < 2:
            raise TokbenchError(
                "Open-MAGVIT2's adaptive group norm takes the unbiased variance over the token grid, which a "
                f"{ids.shape[1]}x{ids.shape[2]} grid does not have (the official decoder returns NaN); "
                "decode at least 2 tokens"
            )
        return self.decoder(self.codes(ids))


# ---------------------------------------------------------------------------------------------------
# Tokenizer adapter
# ---------------------------------------------------------------------------------------------------


class OpenMagvit2Tokenizer(SeedVokenTokenizer):
    """Open-MAGVIT2: images [0, 1] (any H, W divisible by f) <-> ids (B, h*w), row-major (y, x).

    The model sees x * 2 - 1 (the official x / 127.5 - 1 on uint8); decoded images are (x + 1) / 2,
    clamped to [0, 1] (the official post-processing clamps to [-1, 1] first). Note that the decoder's
    adaptive norm depends on the statistics of the whole grid, so tiled decoding differs.
    """

    def factorized(self, tokens: Tokens, split: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The AR models' (pre, post) sub-token ids of `tokens`, each (B, h*w), split as `split` or
        `config.factorized_bits` (the 256 px ImageNet AR configs: 6 + 12 bits)."""
        cfg = self.model.config
        split = split or cfg.factorized_bits
        if split is None or sum(split) != cfg.bits:
            raise TokbenchError(f"give a split (k, {cfg.bits} - k) of the {cfg.bits} bits per token, got {split}")
        return factorize_ids(self.grid_ids(tokens).flatten(1), tuple(split), cfg.bit_order)

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, h*w, bits) float32, row-major: `pre_quant` the encoder output that LFQ reads (no quant_conv),
        `post_quant` its +-1 codes (the official straight-through `quant`, the decoder's input)."""
        check_stage(self, stage)
        z = self.model.encoder(grid_vq_input(self, images))
        if stage == "post_quant":
            z = self.model.codes(lfq_ids(z, self.model.config.bit_order))
        return grid_tokens(z)


# ---------------------------------------------------------------------------------------------------
# Released variants, build, family
# ---------------------------------------------------------------------------------------------------

PAPER = (
    "Luo et al., Open-MAGVIT2: An Open-Source Project Toward Democratizing Auto-regressive Visual "
    "Generation, arXiv:2409.04410"
)
LICENCE = "Apache-2.0 (SEED-Voken)"
_TABLE = (
    "SEED-Voken docs/Open-MAGVIT2.md tokenizer table (evaluation_image.py: ImageNet val 50k, Resize + "
    "CenterCrop at the stated resolution, EMA weights; rFID with pytorch-fid's Inception on float "
    "reconstructions)"
)


def _artifact(name: str, repo: str, filename: str, used_by: str, size_mb: int) -> Artifact:
    return register_artifact(
        Artifact(name=name, repo_id=repo, filename=filename, size=size_mb * 10**6, licence=LICENCE, used_by=used_by)
    )


_UMBRELLA = "TencentARC/Open-MAGVIT2"


def _variant(name: str, config: dict, artifact: Artifact, resolution: int, description: str, **kw: Any) -> Variant:
    return Variant(name=name, family=FAMILY_NAME, config=config, weights=artifact, resolution=resolution,
                   description=description, paper=PAPER, **kw)  # fmt: skip


VARIANTS = (
    _variant(
        "open-magvit2-256-l", _release((1, 1, 2, 2, 4)),
        _artifact("open-magvit2-256-l", "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution", "imagenet_256_L.ckpt",
                  "open-magvit2-256-l", 921),
        256, "Open-MAGVIT2 L tokenizer, ImageNet 256 px (16x16 tokens, 2^18 LFQ codes)",
        published={"rfid_pytorch_fid": 1.17}, published_source=_TABLE + ", 256 px: rFID 1.17, PSNR 21.90",
    ),
    _variant(
        "open-magvit2-128-l", _release((1, 2, 2, 4)),
        _artifact("open-magvit2-128-l", "TencentARC/Open-MAGVIT2-Tokenizer-128-resolution", "imagenet_128_L.ckpt",
                  "open-magvit2-128-l", 896),
        128, "Open-MAGVIT2 L tokenizer, ImageNet 128 px (8x downsampling: 16x16 tokens, 2^18 codes)",
        published={"rfid_pytorch_fid": 1.18}, published_source=_TABLE + ", 128 px: rFID 1.18, PSNR 25.08",
    ),
    _variant(
        "open-magvit2-pretrain-256-262144", _release((1, 1, 2, 2, 4)),
        _artifact("open-magvit2-pretrain-256-262144", "TencentARC/Open-MAGVIT2-Tokenizer-262144-Pretrain",
                  "pretrain256_262144.ckpt", "open-magvit2-pretrain-256-262144", 921),
        256, "Open-MAGVIT2 tokenizer pretrained on ~100M web images (2^18 codes), for text-to-image",
        published={"rfid_pytorch_fid": 1.67},
        published_source="SEED-Voken docs/Open-MAGVIT2.md text-conditional table, ImageNet 256x256: rFID 1.67, "
        "PSNR 22.70, SSIM 0.64 (COCO: 6.76 / 22.31 / 0.65; original resolution: 0.78 / 22.24 / 0.59)",
    ),
    _variant(
        "open-magvit2-pretrain-256-16384", _release((1, 1, 2, 2, 4), bits=14),
        _artifact("open-magvit2-pretrain-256-16384", "TencentARC/Open-MAGVIT2-Tokenizer-16384-Pretrain",
                  "pretrain256_16384.ckpt", "open-magvit2-pretrain-256-16384", 921),
        256, "Open-MAGVIT2 tokenizer pretrained on ~100M web images (2^14 codes), for text-to-image",
        published={"rfid_pytorch_fid": 2.55},
        published_source="SEED-Voken docs/Open-MAGVIT2.md text-conditional table, ImageNet 256x256: rFID 2.55, "
        "PSNR 22.21, SSIM 0.62 (COCO: 7.93 / 22.21 / 0.62; original resolution: 1.39 / 21.74 / 0.56)",
    ),
    _variant(
        "open-magvit2-256-b", _release((1, 1, 2, 2, 4), res_blocks=2, legacy=True),
        _artifact("open-magvit2-256-b", _UMBRELLA, "imagenet_256_B.ckpt", "open-magvit2-256-b", 524),
        256, "legacy Open-MAGVIT2-20240617 B tokenizer, 256 px (no adaptive norm, MSB-first ids)",
        published={"rfid_pytorch_fid": 1.53},
        published_source="SEED-Voken docs/Open-MAGVIT2.md, row Open-MAGVIT2-20240617 256x256: rFID 1.53, PSNR 21.53",
    ),
    _variant(
        "open-magvit2-128-b", _release((1, 2, 2, 4), res_blocks=2, legacy=True),
        _artifact("open-magvit2-128-b", _UMBRELLA, "imagenet_128_B.ckpt", "open-magvit2-128-b", 509),
        128, "legacy Open-MAGVIT2-20240617 B tokenizer, 128 px (no adaptive norm, MSB-first ids)",
        published={"rfid_pytorch_fid": 1.56},
        published_source="SEED-Voken docs/Open-MAGVIT2.md, row Open-MAGVIT2-20240617 128x128: rFID 1.56, PSNR 24.45",
    ),
)  # fmt: skip
DEFAULT_VARIANT = "open-magvit2-256-l"


def _is_open_magvit2(keys: set[str]) -> bool:
    return "encoder.conv_in.weight" in keys and any(k.startswith("encoder.mid_block.") for k in keys)


def build_model(cfg: OpenMagvit2Config, device: str | torch.device = "cpu") -> OpenMagvit2:
    with torch.device(device):
        return OpenMagvit2(cfg)


def _describe(cfg: OpenMagvit2Config, side: int, resolution: int) -> str:
    norm = "adaptive group norm" if cfg.adaptive_norm else "no adaptive norm (legacy B)"
    return (
        f"LFQ, {cfg.bits} bits per token ({cfg.bit_order.upper()}-first ids), downsample {cfg.downsample}, {norm}; "
        f"ids row-major on a {side}x{side} grid at {resolution}"
    )


def _check_layout(cfg: OpenMagvit2Config, sd: Mapping[str, torch.Tensor], path: Path) -> OpenMagvit2Config:
    """The config to load `sd` with: a checkpoint without adaptive-norm weights is a legacy "B" one."""
    if not cfg.adaptive_norm or any(k.startswith("decoder.adaptive.") for k in sd):
        return cfg
    if cfg.layout_from_checkpoint:
        return dataclasses.replace(cfg, adaptive_norm=False, bit_order="msb")
    raise TokbenchError(
        f"{path.name} has no decoder.adaptive.* weights: it is a legacy Open-MAGVIT2 'B' tokenizer (no adaptive "
        "group norm, MSB-first ids), but the config asks for adaptive_norm; load 'open-magvit2-256-b' / "
        "'open-magvit2-128-b' or use legacy: true"
    )


def _parse(config: Mapping[str, Any] | None) -> tuple[OpenMagvit2Config, bool | None]:
    cfg = open_magvit2_config(config)
    return cfg, cfg.use_ema


OPTIONS = {"dtype": (DType, "float32"), "resolution": PositiveInt, "ema": bool}
BUILD = SeedVokenFamily(
    name=FAMILY_NAME, variants=VARIANTS, default_variant=DEFAULT_VARIANT, what="an Open-MAGVIT2",
    checkpoint_hint="an Open-MAGVIT2 Lightning checkpoint such as imagenet_256_L.ckpt", parse=_parse,
    make_model=OpenMagvit2, is_family=_is_open_magvit2, describe=_describe, tokenizer=OpenMagvit2Tokenizer,
    # the config's nominal `resolution` when no variant says more (the 256_L YAML says 128: its variant row has 256)
    preprocessing="open-magvit2", default_resolution=lambda cfg: cfg.resolution, options=OPTIONS,
    check=_check_layout,
)  # fmt: skip

FAMILY = BUILD.family(
    "Open-MAGVIT2 lookup-free (LFQ) image tokenizers, 2^18 / 2^14 codes (TencentARC SEED-Voken)",
    aliases=("open-magvit2-lfq",),
)


__all__ = [
    "OpenMagvit2Config", "OpenMagvit2", "OpenMagvit2Tokenizer", "open_magvit2_config", "lfq_ids", "lfq_codes",
    "factorize_ids", "unfactorize_ids", "depth_to_space", "FAMILY", "VARIANTS",
]  # fmt: skip
