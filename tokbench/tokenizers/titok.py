"""TiTok and One-D-Piece: 1D image tokenizers that describe an image with K latent tokens.

Architecture of bytedance/1d-tokenizer's `modeling/titok.py` (TiTok, Yu et al. 2024) and of its copy in
turingmotors/One-D-Piece (`modeling/one_d_piece.py`, Miwa et al. 2025: TiTok trained with Tail Token
Drop, so any prefix of the K = 256 codes decodes). A ViT encoder reads the image patches together with K
learned latent tokens and keeps the latents; a vector quantiser maps each to a code; a ViT decoder reads
the (possibly truncated) code sequence together with one mask token per output patch.

Three released layouts, all with the official parameter names (released state dicts load unchanged):

* legacy two-stage (TiTok-L-32/B-64/S-128, One-D-Piece-L/B/S-256): the ViT decoder predicts logits over
  the 1024 codes of a MaskGIT-VQGAN; their softmax weights that codebook, and the VQGAN's convolutional
  decoder (`pixel_decoder`) paints pixels. The encoder's "legacy" reshape of its latents is kept.
* single-stage VQ (TiTok-BL-64/BL-128/SL-256 VQ-8k): the ViT decoder predicts pixels directly.
* single-stage VAE (TiTok-LL-32/BL-64/BL-128 VAE-c16): continuous tokens (a diagonal Gaussian per token).

Every size the official code hard-codes (ViT widths by name, the MaskGIT-VQGAN) is a config field here:
`vit_{enc,dec}_model_size: custom` with `vit_{enc,dec}_{width,num_layers,num_heads}`, and
`pixel_vqgan: {num_embeddings, z_channels, hidden_channels, channel_mult, num_res_blocks, resolution}`.
Evaluation only: One-D-Piece's random tail drop (a training-time augmentation) is never applied.
"""

from __future__ import annotations

import contextlib
import json
import operator
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import (
    detect_prefix,
    load_strict,
    read_state_dict,
)
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, bits_for, check_images, torch_dtype
from ..features import check_stage
from ..options import DType, PositiveInt
from ..registry import Family, Variant
from ..weights import Artifact

# Upstream's fixed ViT sizes: name -> (width, layers, heads) (TiTokEncoder / TiTokDecoder).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

# The MaskGIT-VQGAN that legacy TiTok and One-D-Piece decode through (hard-coded upstream,
# `fun-research/TiTok` maskgit-vqgan-imagenet-f16-256.bin, fine-tuned in stage 2).
MASKGIT_VQGAN: dict[str, Any] = {
    "num_embeddings": 1024,
    "z_channels": 256,
    "hidden_channels": 128,
    "channel_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "resolution": 256,
}

# The MaskGIT-VQGAN's GroupNorm, as in open-muse's `modeling_maskgit_vqgan.py`.
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------------
# Configuration: the official nested dict (model.vq_model.*, dataset.preprocessing.crop_size) as a dataclass


@dataclass(frozen=True)
class ViTSize:
    width: int
    num_layers: int
    num_heads: int
    patch_size: int


@dataclass(frozen=True)
class PixelVQGANConfig:
    num_embeddings: int = 1024
    z_channels: int = 256
    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    resolution: int = 256


@dataclass(frozen=True)
class TiTokConfig:
    """The fields of the official config that build the model (others, e.g. losses, are ignored)."""

    image_size: int
    num_latent_tokens: int
    token_size: int
    encoder: ViTSize
    decoder: ViTSize
    codebook_size: int | None = None
    use_l2_norm: bool = False
    quantize_mode: str = "vq"
    is_legacy: bool = True
    finetune_decoder: bool = True
    strict_length_assertion: bool = True
    pixel_vqgan: PixelVQGANConfig = field(default_factory=PixelVQGANConfig)

    @property
    def two_stage(self) -> bool:
        """Whether the ViT decoder predicts MaskGIT-VQGAN code logits (decoded by `pixel_decoder`)."""
        return self.finetune_decoder

    @classmethod
    def from_official(cls, config: Mapping[str, Any]) -> TiTokConfig:
        """Parse the nested official config (`config.json` of a hub release, or a GitHub yaml)."""
        model = config.get("model")
        vq = model.get("vq_model") if isinstance(model, Mapping) else None
        if not isinstance(vq, Mapping):
            raise TokbenchError(
                "a TiTok / One-D-Piece config needs the official nested layout "
                "{'model': {'vq_model': {...}}, 'dataset': {'preprocessing': {'crop_size': ...}}}; got top-level "
                f"keys {sorted(config)}. Pass the release's config.json or the GitHub yaml."
            )
        dataset = config.get("dataset") or {}
        crop = (dataset.get("preprocessing") or {}).get("crop_size") if isinstance(dataset, Mapping) else None
        if crop is None:
            raise TokbenchError("config lacks dataset.preprocessing.crop_size (the image side, e.g. 256)")

        def need(key: str) -> Any:
            if key not in vq:
                raise TokbenchError(f"config lacks model.vq_model.{key}; known keys: {sorted(vq)}")
            return vq[key]

        def vit(part: str) -> ViTSize:
            size = need(f"vit_{part}_model_size")
            patch = int(need(f"vit_{part}_patch_size"))
            if size == "custom":
                return ViTSize(
                    int(need(f"vit_{part}_width")),
                    int(need(f"vit_{part}_num_layers")),
                    int(need(f"vit_{part}_num_heads")),
                    patch,
                )
            if size not in VIT_SIZES:
                raise TokbenchError(
                    f"model.vq_model.vit_{part}_model_size is {size!r}; use one of {sorted(VIT_SIZES)} or 'custom' "
                    f"with vit_{part}_width / vit_{part}_num_layers / vit_{part}_num_heads"
                )
            return ViTSize(*VIT_SIZES[size], patch)

        mode = vq.get("quantize_mode", "vq")
        if mode not in ("vq", "vae"):
            raise TokbenchError(f"model.vq_model.quantize_mode must be 'vq' or 'vae', got {mode!r}")
        finetune = bool(vq.get("finetune_decoder", True))
        legacy = bool(vq.get("is_legacy", True))
        if finetune and mode != "vq":
            raise TokbenchError(
                "finetune_decoder: true (two-stage decoding) exists only with quantize_mode 'vq'"
            )
        if finetune != legacy:
            # Upstream builds these, but they are training intermediates whose output is not an image:
            # a legacy stage-1 decoder emits VQGAN code logits with no pixel decoder, and a pixel head cannot
            # feed the VQGAN codebook.
            raise TokbenchError(
                f"finetune_decoder={finetune} with is_legacy={legacy} is not a released tokenizer: released ones are "
                "legacy two-stage (is_legacy true, finetune_decoder true) or single-stage (both false)"
            )
        pix = {**MASKGIT_VQGAN, **(vq.get("pixel_vqgan") or {})}
        refuse_unknown("model.vq_model.pixel_vqgan keys", pix, MASKGIT_VQGAN)
        pix["channel_mult"] = tuple(int(c) for c in pix["channel_mult"])
        return cls(
            image_size=int(crop),
            num_latent_tokens=int(need("num_latent_tokens")),
            token_size=int(need("token_size")),
            encoder=vit("enc"),
            decoder=vit("dec"),
            codebook_size=int(need("codebook_size")) if mode == "vq" else None,
            use_l2_norm=bool(vq.get("use_l2_norm", False)),
            quantize_mode=mode,
            is_legacy=legacy,
            finetune_decoder=finetune,
            strict_length_assertion=bool(vq.get("strict_length_assertion", True)),
            pixel_vqgan=PixelVQGANConfig(**pix),
        )


# ----------------------------------------------------------------------------------------------------------
# ViT encoder and decoder (open_clip-style pre-LN blocks with torch's fused-qkv MultiheadAttention)


class ResidualAttentionBlock(nn.Module):
    """x + MHA(LN(x)), then x + MLP(LN(x)); MLP = c_fc -> GELU (erf) -> c_proj, hidden 4x width."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def _check_heads(size: ViTSize, part: str) -> None:
    if size.width % size.num_heads:
        raise TokbenchError(f"ViT {part} width {size.width} is not divisible by its {size.num_heads} heads")


def _check_patch(size: ViTSize, image_size: int, part: str) -> None:
    # Upstream's grid is image_size // patch (the stride-p patch conv drops a remainder), so a patch that
    # does not divide the image is legal there; only an empty grid is not.
    if image_size // size.patch_size < 1:
        raise TokbenchError(f"ViT {part} patch {size.patch_size} is larger than the image side {image_size}")


class TiTokEncoder(nn.Module):
    """Image (B, 3, S, S) in [0, 1] + latent tokens (K, W) -> latents (B, out_channels, 1, K).

    `legacy` keeps the released TiTok / One-D-Piece reshape of the (B, K, W) latents as (B, W, K, 1) before
    the 1x1 `conv_out` (a raw reshape, not a transpose: the weights were trained with it).
    """

    def __init__(
        self, size: ViTSize, image_size: int, num_latent_tokens: int, out_channels: int, legacy: bool
    ):
        super().__init__()
        _check_heads(size, "encoder")
        _check_patch(size, image_size, "encoder")
        self.width, self.legacy = size.width, legacy
        self.grid_size = image_size // size.patch_size
        self.num_latent_tokens = num_latent_tokens
        self.out_channels = out_channels
        w = size.width
        self.patch_embed = nn.Conv2d(3, w, kernel_size=size.patch_size, stride=size.patch_size, bias=True)
        self.class_embedding = nn.Parameter(torch.empty(1, w))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size**2 + 1, w))
        self.latent_token_positional_embedding = nn.Parameter(torch.empty(num_latent_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList(
            ResidualAttentionBlock(w, size.num_heads) for _ in range(size.num_layers)
        )
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, out_channels, kernel_size=1, bias=True)

    def forward(self, pixel_values: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = pixel_values.shape[0]
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # (B, g*g, W), row-major patches
        x = torch.cat([self.class_embedding.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        latents = (latent_tokens + self.latent_token_positional_embedding).to(x.dtype).expand(b, -1, -1)
        x = self.ln_pre(torch.cat([x, latents], dim=1))
        for block in self.transformer:
            x = block(x)
        z = self.ln_post(x[:, 1 + self.grid_size**2 :])  # (B, K, W)
        k = self.num_latent_tokens
        if self.legacy:
            z = z.reshape(b, self.width, k, 1)
        else:
            z = z.reshape(b, k, self.width, 1).permute(0, 2, 1, 3)
        return self.conv_out(z).reshape(b, self.out_channels, 1, k)


class PatchesToImage(nn.Module):
    """(B, p*p*3, h, w) -> (B, 3, h*p, w*p), channels ordered (p1, p2, c) as einops 'b (p1 p2 c) h w'."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch_size
        return x.reshape(b, p, p, 3, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, 3, h * p, w * p)


class TiTokDecoder(nn.Module):
    """Quantised tokens (B, token_size, 1, k), k <= K -> code logits (B, n_codes, g, g) or pixels (B, 3, S, S).

    The decoder sequence is [class, g*g mask tokens] + positional embedding, followed by the k tokens
    (+ their first k latent positional embeddings): a truncated code sequence is simply shorter, as
    One-D-Piece decodes it; nothing pads the missing tail. `strict_length` demands k == K (upstream TiTok).
    """

    def __init__(
        self,
        size: ViTSize,
        image_size: int,
        num_latent_tokens: int,
        token_size: int,
        pixel_codes: int | None,
        strict_length: bool,
    ) -> None:
        super().__init__()
        _check_heads(size, "decoder")
        _check_patch(size, image_size, "decoder")
        self.width = w = size.width
        self.grid_size = image_size // size.patch_size
        self.num_latent_tokens = num_latent_tokens
        self.strict_length = strict_length
        self.decoder_embed = nn.Linear(token_size, w, bias=True)
        self.class_embedding = nn.Parameter(torch.empty(1, w))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size**2 + 1, w))
        self.mask_token = nn.Parameter(torch.empty(1, 1, w))
        self.latent_token_positional_embedding = nn.Parameter(torch.empty(num_latent_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList(
            ResidualAttentionBlock(w, size.num_heads) for _ in range(size.num_layers)
        )
        self.ln_post = nn.LayerNorm(w)
        if pixel_codes is not None:  # legacy: logits over the MaskGIT-VQGAN codebook
            self.ffn = nn.Sequential(
                nn.Conv2d(w, 2 * w, 1, bias=True), nn.Tanh(), nn.Conv2d(2 * w, pixel_codes, 1, bias=True)
            )
            self.conv_out = nn.Identity()
        else:  # single-stage: one patch of RGB per query, then a 3x3 conv
            p = size.patch_size
            self.ffn = nn.Sequential(nn.Conv2d(w, p * p * 3, 1, bias=True), PatchesToImage(p))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1, bias=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, k = z.shape
        if (
            h != 1
            or k > self.num_latent_tokens
            or k < 1
            or (self.strict_length and k != self.num_latent_tokens)
        ):
            need = (
                f"exactly {self.num_latent_tokens}" if self.strict_length else f"1..{self.num_latent_tokens}"
            )
            raise TokbenchError(f"the decoder takes {need} tokens shaped (B, C, 1, k), got {tuple(z.shape)}")
        x = self.decoder_embed(z.reshape(b, c, k).transpose(1, 2))  # (B, k, W)
        queries = self.mask_token.expand(b, self.grid_size**2, -1).to(x.dtype)
        queries = torch.cat([self.class_embedding.expand(b, -1, -1).to(x.dtype), queries], dim=1)
        queries = queries + self.positional_embedding.to(x.dtype)
        x = x + self.latent_token_positional_embedding[:k].to(x.dtype)
        x = self.ln_pre(torch.cat([queries, x], dim=1))
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x[:, 1 : 1 + self.grid_size**2])
        x = x.transpose(1, 2).reshape(b, self.width, self.grid_size, self.grid_size)
        return self.conv_out(self.ffn(x.contiguous()))


class VectorQuantizer(nn.Module):
    """Nearest codebook row by squared distance, in float32; with `use_l2_norm` both sides are l2-normalised.

    Holds only `embedding` (K, C): the released state dicts carry no quantiser buffers.
    """

    def __init__(self, codebook_size: int, token_size: int, use_l2_norm: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, token_size)
        self.use_l2_norm = use_l2_norm

    def codebook(self) -> torch.Tensor:
        e = self.embedding.weight.float()
        return F.normalize(e, dim=-1) if self.use_l2_norm else e

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, 1, K) -> ids (B, K) int64 (first index on ties, as torch.argmin)."""
        b, c, _, k = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, c)
        if self.use_l2_norm:
            flat = F.normalize(flat, dim=-1)
        e = self.codebook()
        # |z|^2 + |e|^2 - 2 z.e, the official expansion (its rounding decides near-ties the same way).
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        return d.argmin(dim=1).reshape(b, k)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, k) -> quantised tokens (B, C, 1, k) (l2-normalised rows with `use_l2_norm`)."""
        z = self.embedding(ids)
        if self.use_l2_norm:
            z = F.normalize(z, dim=-1)
        return z.permute(0, 2, 1).unsqueeze(2)


# ----------------------------------------------------------------------------------------------------------
# MaskGIT-VQGAN pixel decoder (open-muse's modeling_maskgit_vqgan.py key layout)


def _group_norm(channels: int) -> nn.GroupNorm:
    if channels % GROUP_NORM_GROUPS:
        raise TokbenchError(
            f"the MaskGIT-VQGAN decoder's GroupNorm needs channels divisible by {GROUP_NORM_GROUPS}, got {channels}; "
            "check pixel_vqgan.hidden_channels and channel_mult"
        )
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS, affine=True)


class MaskGitResnetBlock(nn.Module):
    """GN-SiLU-conv3x3 twice (bias-free convs) plus a shortcut.

    Released quirk kept: when the width changes, the shortcut is `nin_shortcut` (1x1, out -> out) applied to the
    block's OUTPUT, i.e. h + nin_shortcut(h); the input is dropped. Otherwise h + x.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.changes_width = in_channels != out_channels
        if self.changes_width:
            self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(h) if self.changes_width else x)


class MaskGitUpBlock(nn.Module):
    """`num_res_blocks` res blocks, then (levels > 0) nearest x2 and a 3x3 `upsample_conv`."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(MaskGitResnetBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.upsample = upsample
        if upsample:
            self.upsample_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.upsample:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class MaskGitDecoder(nn.Module):
    """Code embeddings (B, z_channels, h, w) -> RGB (B, 3, h * 2^(L-1), w * 2^(L-1)), L = len(channel_mult).

    Keys: `conv_in`, `mid.{j}`, `up.{level}` (run from the deepest level down to 0), `norm_out`, `conv_out`.
    All convolutions are 'same'-padded (upstream `Conv2dSame`: zero padding 1 for these stride-1 3x3 kernels).
    """

    def __init__(self, cfg: PixelVQGANConfig) -> None:
        super().__init__()
        hid, mult = cfg.hidden_channels, cfg.channel_mult
        top = hid * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1, bias=True)
        self.mid = nn.ModuleList(MaskGitResnetBlock(top, top) for _ in range(cfg.num_res_blocks))
        self.up = nn.ModuleList(
            MaskGitUpBlock(
                hid * (mult[level + 1] if level + 1 < len(mult) else mult[-1]),
                hid * mult[level],
                cfg.num_res_blocks,
                upsample=level != 0,
            )
            for level in range(len(mult))
        )
        self.norm_out = _group_norm(hid * mult[0])
        self.conv_out = nn.Conv2d(hid * mult[0], 3, 3, padding=1, bias=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for block in reversed(self.up):
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PixelCodebook(nn.Module):
    """The MaskGIT-VQGAN codebook (`pixel_quantize.embedding`), read as soft code embeddings."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, dim)

    def soft_embed(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_codes, h, w) -> softmax-weighted raw codebook rows (B, dim, h, w); no argmax."""
        p = logits.softmax(dim=1)
        return torch.einsum("nchw,cd->ndhw", p, self.embedding.weight.to(p.dtype))


# ----------------------------------------------------------------------------------------------------------
# The whole model


class TiTok(nn.Module):
    """TiTok / One-D-Piece with the released parameter names (`latent_tokens`, `encoder.*`, `quantize.*`,
    `decoder.*`, and for two-stage models `pixel_quantize.*`, `pixel_decoder.*`). No buffers."""

    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc_out = cfg.token_size * (2 if cfg.quantize_mode == "vae" else 1)  # VAE: mean and log-variance
        self.encoder = TiTokEncoder(
            cfg.encoder, cfg.image_size, cfg.num_latent_tokens, enc_out, cfg.is_legacy
        )
        self.latent_tokens = nn.Parameter(torch.empty(cfg.num_latent_tokens, cfg.encoder.width))
        if cfg.quantize_mode == "vq":
            self.quantize = VectorQuantizer(cfg.codebook_size, cfg.token_size, cfg.use_l2_norm)
        pixel_codes = cfg.pixel_vqgan.num_embeddings if cfg.two_stage else None
        self.decoder = TiTokDecoder(
            cfg.decoder,
            cfg.image_size,
            cfg.num_latent_tokens,
            cfg.token_size,
            pixel_codes,
            cfg.strict_length_assertion,
        )
        if cfg.two_stage:
            self.pixel_quantize = PixelCodebook(cfg.pixel_vqgan.num_embeddings, cfg.pixel_vqgan.z_channels)
            self.pixel_decoder = MaskGitDecoder(cfg.pixel_vqgan)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [0, 1] -> pre-quantisation latents (B, C, 1, K) (C = 2 * token_size for VAE)."""
        return self.encoder(images, self.latent_tokens)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised tokens (B, token_size, 1, k) -> the ViT decoder's output (code logits or pixels)."""
        return self.decoder(z)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised tokens (B, token_size, 1, k) -> RGB (B, 3, S, S), raw (not clamped), nominally [0, 1]."""
        out = self.decoder(z)
        if self.cfg.two_stage:
            out = self.pixel_decoder(self.pixel_quantize.soft_embed(out))
        return out


def build_model(config: Mapping[str, Any] | TiTokConfig, device: str | torch.device = "cpu") -> TiTok:
    """The model with uninitialised parameters (`device="meta"` builds it without memory)."""
    cfg = config if isinstance(config, TiTokConfig) else TiTokConfig.from_official(config)
    with torch.device(device):
        return TiTok(cfg)


def checkpoint_filter(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released layouts -> this module's keys: flat already; strip a DDP `module.` / wrapper `model.` prefix."""
    prefix = detect_prefix(state_dict.keys(), ("", "module.", "model."), "latent_tokens")
    if prefix is None:
        raise TokbenchError(
            "this checkpoint has no 'latent_tokens' tensor, so it is not a TiTok / One-D-Piece state dict "
            f"(first keys: {sorted(state_dict)[:5]})"
        )
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------------------------------
# Tokenizer adapter




class TiTokTokenizer(ModuleTokenizer):
    """Encode images into up to K codes (ids (B, k), or features (B, k, C) for VAE variants) and back.

    `encode(images, n_tokens=k)` keeps the first k of the K tokens (One-D-Piece's quality dial); decoding k < K
    tokens runs the decoder on the shorter sequence, as the official truncated decode does. TiTok's own
    releases were trained with all K tokens and refuse k < K unless `strict_length_assertion=False`.
    `dtype` "bfloat16"/"float16" runs the ViTs and the pixel decoder under autocast (the official evaluation
    used bf16 mixed precision); the quantiser always runs in float32, as upstream forces.
    """


    def __init__(self, model: TiTok, spec: TokenizerSpec, dtype: str = "float32") -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.cfg = model.cfg
        self.spec = spec
        torch_dtype(dtype)  # a bad dtype fails before the model is built
        self.dtype = dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch_dtype(self.dtype))

    def _n_tokens(self, n_tokens: int | None) -> int:
        k_max = self.cfg.num_latent_tokens
        if n_tokens is None:
            return k_max
        try:
            k = None if isinstance(n_tokens, bool) else operator.index(n_tokens)  # numpy/torch ints too
        except TypeError:
            k = None
        if k is None or not 1 <= k <= k_max:
            raise TokbenchError(
                f"{self.spec.name}: n_tokens must be an integer in 1..{k_max}, got {n_tokens!r}"
            )
        n_tokens = k
        if n_tokens != k_max and self.cfg.strict_length_assertion:
            raise TokbenchError(
                f"{self.spec.name} decodes exactly {k_max} tokens (its decoder was trained on full sequences; "
                f"upstream asserts it), so n_tokens={n_tokens} is refused. Load it with "
                "strict_length_assertion=False to decode prefixes anyway (not what the model was trained for)."
            )
        return n_tokens

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, n_tokens: int | None = None, sample: bool = False) -> Tokens:
        """Images (B, 3, S, S) float in [0, 1] -> the first `n_tokens` (default K) tokens.

        VQ: `Tokens.ids` (B, k) int64. VAE: `Tokens.features` (B, k, token_size), the posterior mean (or a
        sample with `sample=True`, as upstream's README does).
        """
        check_images(images)
        side = self.cfg.image_size
        if tuple(images.shape[-2:]) != (side, side):
            raise TokbenchError(
                f"{self.spec.name} takes {side}x{side} images, got {tuple(images.shape[-2:])}; resize with the "
                f"'{self.spec.preprocessing}' protocol at {side}"
            )
        k = self._n_tokens(n_tokens)
        if sample and self.cfg.quantize_mode != "vae":
            raise TokbenchError(f"{self.spec.name}: sample=True applies to VAE variants only")
        x = images.to(self.device, torch.float32)
        with self._autocast():
            z = self.model.encode_latents(x)
        meta = {"n_tokens": k, "max_tokens": self.cfg.num_latent_tokens}
        if self.cfg.quantize_mode == "vq":
            ids = self.model.quantize(z)
            return Tokens(ids=ids[:, :k].contiguous(), codebook_size=self.cfg.codebook_size, meta=meta)
        mean, logvar = z.float().chunk(2, dim=1)
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            mean = mean + std * torch.randn_like(std)
        feats = mean[:, :, 0, :k].transpose(1, 2).contiguous()  # (B, k, C)
        return Tokens(features=feats, meta={**meta, "sampled": bool(sample)})

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        """Tokens from `encode` (any k in 1..K where allowed) -> images (B, 3, S, S) clamped to [0, 1]."""
        if self.cfg.quantize_mode == "vq":
            if tokens.ids is None or tokens.ids.ndim != 2:
                raise TokbenchError(
                    f"{self.spec.name}.decode needs Tokens.ids of shape (B, k) from its encode"
                )
            ids = tokens.ids.to(self.device)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.codebook_size):
                raise TokbenchError(
                    f"{self.spec.name}: token ids must lie in [0, {self.cfg.codebook_size}), got "
                    f"[{int(ids.min())}, {int(ids.max())}]"
                )
            z = self.model.quantize.lookup(ids)
        else:
            if tokens.features is None or tokens.features.ndim != 3:
                raise TokbenchError(
                    f"{self.spec.name}.decode needs Tokens.features of shape (B, k, C) from its encode"
                )
            z = tokens.features.to(self.device, torch.float32).transpose(1, 2).unsqueeze(2)
        self._n_tokens(int(z.shape[-1]))
        with self._autocast():
            out = self.model.decode_latents(z)
        return out.float().clamp(0.0, 1.0)

    # understanding: token features for the probes (tokbench.features)
    @property
    def feature_stages(self) -> tuple[str, ...]:
        return ("pre_quant", "post_quant") if self.cfg.quantize_mode == "vq" else ("post_quant",)

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str | None = None) -> torch.Tensor:
        """(B, K, C) float32 over all K latent tokens. VQ: `pre_quant` the encoder's latent tokens (before the
        quantiser's l2-normalisation), `post_quant` their codebook rows (normalised with use_l2_norm), what
        the decoder receives. VAE: `post_quant` the posterior mean (the tokens `encode` returns)."""
        stage = stage or self.feature_stages[0]
        check_stage(self, stage)
        if self.cfg.quantize_mode != "vq":
            return self.encode(images).features.float()
        check_images(images)
        side = self.cfg.image_size
        if tuple(images.shape[-2:]) != (side, side):
            raise TokbenchError(f"{self.spec.name} takes {side}x{side} images, got {tuple(images.shape[-2:])}")
        with self._autocast():
            z = self.model.encode_latents(images.to(self.device, torch.float32))
        if stage == "post_quant":
            z = self.model.quantize.lookup(self.model.quantize(z))
        return z.float()[:, :, 0].transpose(1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Released variants and the family builders


def _official(
    enc: str,
    dec: str,
    tokens: int,
    *,
    codebook: int | None = 4096,
    token_size: int = 12,
    l2: bool = True,
    two_stage: bool = True,
    vae: bool = False,
    strict: bool | None = None,
) -> dict[str, Any]:
    """A GitHub config's model-building part, in the official nested layout."""
    vq: dict[str, Any] = {"token_size": token_size}
    if vae:
        vq["quantize_mode"] = "vae"
    else:
        vq.update(codebook_size=codebook, use_l2_norm=l2, commitment_cost=0.25)
    vq.update(
        vit_enc_model_size=enc,
        vit_dec_model_size=dec,
        vit_enc_patch_size=16,
        vit_dec_patch_size=16,
        num_latent_tokens=tokens,
        finetune_decoder=two_stage,
    )
    if not two_stage:
        vq["is_legacy"] = False
    if strict is not None:
        vq["strict_length_assertion"] = strict
    return {"model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": 256}}}


ONE_D_PIECE_PAPER = (
    "Miwa et al., One-D-Piece: Image Tokenizer Meets Quality-Controllable Compression, arXiv:2501.10064"
)
ONE_D_PIECE_SOURCE = (
    "One-D-Piece README, Model Zoo (github.com/turingmotors/One-D-Piece @473665d): reconstruction FID on "
    "ImageNet-1k val (50k, 256x256, all 256 tokens)"
)
TITOK_PAPER = (
    "Yu et al., An Image is Worth 32 Tokens for Reconstruction and Generation (TiTok), arXiv:2406.07550"
)
TITOK_SOURCE = (
    "README_TiTok.md, Model Zoo (github.com/bytedance/1d-tokenizer @942a96f): reconstruction FID on "
    "ImageNet-1k val (50k, 256x256)"
)


def _odp_variant(size: str, vit: str, rfid: float) -> Variant:
    repo = f"turing-motors/One-D-Piece-{size}-256"
    return Variant(
        name=f"one-d-piece-{size.lower()}-256",
        family="one-d-piece",
        config=_official(vit, vit, 256, strict=False),
        weights=Artifact(
            name=f"one-d-piece-{size.lower()}-256",
            repo_id=repo,
            filename="pytorch_model.bin",
            licence="Apache-2.0 (code; see the model card for the weights)",
            used_by=f"one-d-piece-{size.lower()}-256",
        ),
        resolution=256,
        description=(
            f"One-D-Piece-{size}-256: TiTok-{size[0]} ({vit} ViTs) with Tail Token Drop; 1..256 tokens, codebook "
            "4096, decoded through the fine-tuned MaskGIT-VQGAN"
        ),
        paper=ONE_D_PIECE_PAPER,
        published={"rfid_torch_fidelity": rfid},
        published_source=ONE_D_PIECE_SOURCE,
    )


def _titok_variant(name: str, repo: str, description: str, rfid: float, config: dict[str, Any]) -> Variant:
    return Variant(
        name=name,
        family="titok",
        config=config,
        weights=Artifact(
            name=name,
            repo_id=repo,
            filename="model.safetensors",
            licence="Apache-2.0 (bytedance/1d-tokenizer; see the model card)",
            used_by=name,
        ),
        resolution=256,
        description=description,
        paper=TITOK_PAPER,
        published={"rfid_torch_fidelity": rfid},
        published_source=TITOK_SOURCE,
    )


ONE_D_PIECE_VARIANTS = (
    _odp_variant("L", "large", 1.08),
    _odp_variant("B", "base", 1.11),
    _odp_variant("S", "small", 1.48),
)

TITOK_VARIANTS = (
    _titok_variant(
        "titok-l32",
        "yucornetto/tokenizer_titok_l32_imagenet",
        "TiTok-L-32: legacy two-stage, large/large ViTs, 32 tokens, codebook 4096",
        2.21,
        _official("large", "large", 32),
    ),
    _titok_variant(
        "titok-b64",
        "yucornetto/tokenizer_titok_b64_imagenet",
        "TiTok-B-64: legacy two-stage, base/base ViTs, 64 tokens, codebook 4096",
        1.70,
        _official("base", "base", 64),
    ),
    _titok_variant(
        "titok-s128",
        "yucornetto/tokenizer_titok_s128_imagenet",
        "TiTok-S-128: legacy two-stage, small/small ViTs, 128 tokens, codebook 4096",
        1.71,
        _official("small", "small", 128),
    ),
    _titok_variant(
        "titok-bl64-vq8k",
        "yucornetto/tokenizer_titok_bl64_vq8k_imagenet",
        "TiTok-BL-64 VQ: single-stage, base encoder / large decoder, 64 tokens, codebook 8192",
        2.06,
        _official("base", "large", 64, codebook=8192, token_size=64, l2=False, two_stage=False),
    ),
    _titok_variant(
        "titok-bl128-vq8k",
        "yucornetto/tokenizer_titok_bl128_vq8k_imagenet",
        "TiTok-BL-128 VQ: single-stage, base encoder / large decoder, 128 tokens, codebook 8192",
        1.49,
        _official("base", "large", 128, codebook=8192, token_size=64, l2=False, two_stage=False),
    ),
    _titok_variant(
        "titok-sl256-vq8k",
        "yucornetto/tokenizer_titok_sl256_vq8k_imagenet",
        "TiTok-SL-256 VQ: single-stage, small encoder / large decoder, 256 tokens, codebook 8192",
        1.03,
        _official("small", "large", 256, codebook=8192, token_size=64, l2=False, two_stage=False),
    ),
    _titok_variant(
        "titok-ll32-vae-c16",
        "yucornetto/tokenizer_titok_ll32_vae_c16_imagenet",
        "TiTok-LL-32 VAE: single-stage continuous, large/large ViTs, 32 tokens x 16 channels",
        1.61,
        _official("large", "large", 32, codebook=None, token_size=16, two_stage=False, vae=True),
    ),
    _titok_variant(
        "titok-bl64-vae-c16",
        "yucornetto/tokenizer_titok_bl64_vae_c16_imagenet",
        "TiTok-BL-64 VAE: single-stage continuous, base/large ViTs, 64 tokens x 16 channels",
        1.25,
        _official("base", "large", 64, codebook=None, token_size=16, two_stage=False, vae=True),
    ),
    _titok_variant(
        "titok-bl128-vae-c16",
        "yucornetto/tokenizer_titok_bl128_vae_c16_imagenet",
        "TiTok-BL-128 VAE: single-stage continuous, base/large ViTs, 128 tokens x 16 channels",
        0.84,
        _official("base", "large", 128, codebook=None, token_size=16, two_stage=False, vae=True),
    ),
)


def _describe(cfg: TiTokConfig) -> str:
    e, d = cfg.encoder, cfg.decoder
    kind = (
        "legacy two-stage (MaskGIT-VQGAN pixel decoder)"
        if cfg.two_stage
        else f"single-stage {cfg.quantize_mode}"
    )
    return (
        f"{kind}; K={cfg.num_latent_tokens}; encoder ViT {e.width}/{e.num_layers}/{e.num_heads} patch {e.patch_size}; "
        f"decoder ViT {d.width}/{d.num_layers}/{d.num_heads} patch {d.patch_size}; "
        f"{'truncated prefixes decode' if not cfg.strict_length_assertion else 'decodes exactly K tokens'}"
    )


def _make_builder(family: str, default_variant: str):
    def build(b: Build) -> TiTokTokenizer:
        strict = b.option("strict_length_assertion")
        cfg_dict = dict(b.config)
        if not cfg_dict and b.weights is not None and not b.random_weights:
            sibling = b.beside(Path(b.weights).expanduser(), "config.json")
            if sibling is None:
                raise TokbenchError(
                    f"{family} needs its config: pass config=<config.json or GitHub yaml> (no config.json next to "
                    f"{b.weights}), or load a released variant by name (`tokbench list {family}*`)"
                )
            cfg_dict = json.loads(sibling.read_text())
        cfg = TiTokConfig.from_official(cfg_dict)
        if strict is not None:
            cfg = replace(cfg, strict_length_assertion=bool(strict))

        def load(model: torch.nn.Module, path: Path) -> None:
            load_strict(model, checkpoint_filter(read_state_dict(path)), source=str(path))

        def make() -> TiTok:
            model = build_model(cfg, device="meta")
            # materialised empty, not initialised: the checkpoint fills every parameter
            return model if b.random_weights else model.to_empty(device="cpu")

        model = b.model(make, load, "the release's checkpoint file")
        codebook = cfg.codebook_size if cfg.quantize_mode == "vq" else None
        b.notes.append(_describe(cfg))
        spec = b.spec(
            resolution=cfg.image_size,
            tokens_per_image=cfg.num_latent_tokens,
            codebook_size=codebook,
            bits_per_token=bits_for(codebook),
            variable_length=not cfg.strict_length_assertion,
            normalisation="[0, 1] (no mean/std)",
            preprocessing="resize-crop",
        )
        if b.dtype != "float32":
            spec = replace(spec, dtype=f"{b.dtype} autocast (quantiser float32)")
        return TiTokTokenizer(model, spec, dtype=b.dtype)

    return build


# both families' options: load options (dtype, strict_length_assertion), then `encode`'s (n_tokens, sample)
OPTIONS = {"dtype": (DType, "float32"), "strict_length_assertion": bool}
ENCODE_OPTIONS = {"n_tokens": PositiveInt, "sample": bool}
UPSTREAM = {
    "one-d-piece": "github.com/turingmotors/One-D-Piece @473665d (modeling/one_d_piece.py)",
    "titok": "github.com/bytedance/1d-tokenizer @942a96f (modeling/titok.py)",
}

FAMILIES = (
    Family(
        name="one-d-piece",
        build=_make_builder("one-d-piece", "one-d-piece-l-256"),
        variants=ONE_D_PIECE_VARIANTS,
        aliases=("one_d_piece", "onedpiece"),
        description="One-D-Piece: TiTok with Tail Token Drop; any prefix of its 256 tokens decodes (quality dial)",
        default_variant="one-d-piece-l-256",
        build_options=OPTIONS,
        encode_options=ENCODE_OPTIONS,
        code=UPSTREAM["one-d-piece"],
    ),
    Family(
        name="titok",
        build=_make_builder("titok", "titok-l32"),
        variants=TITOK_VARIANTS,
        description="TiTok: 1D tokenizer (32-256 tokens), legacy two-stage, single-stage VQ and VAE releases",
        default_variant="titok-l32",
        build_options=OPTIONS,
        encode_options=ENCODE_OPTIONS,
        code=UPSTREAM["titok"],
    ),
)
FAMILIES_BY_NAME = {f.name: f for f in FAMILIES}
