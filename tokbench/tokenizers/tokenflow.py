"""TokenFlow (Qu et al. 2024): one shared index over a semantic and a pixel codebook, multi-scale.

Architecture of `tokenflow/tokenizer/vq_model.py` (ByteFlow-AI/TokenFlow, org now ByteVisionLab):

* semantic encoder `encoder_vqkd`: a pretrained ViT (OpenAI CLIP ViT-B/16 through open_clip, or
  SigLIP-SO400M through transformers), then `encode_task_layer` (Linear, tanh, Linear) to a small
  semantic code (32 channels in the releases);
* pixel encoder: the LlamaGen VQGAN CNN (our `llamagen.Encoder`, same key names), then `quant_conv`;
* VAR-style residual quantisation over `scales` with ONE index per position picking a (semantic, pixel)
  row pair by the sum of the two squared distances between l2-normalised vectors;
* decoders: a BEiT-style ViT `decoder_vqkd` + `decode_task_layer` rebuilds the teacher features, and
  `post_quant_conv` + `llamagen.Decoder` rebuilds the pixels.

Released checkpoints: HF `ByteVisionLab/TokenFlow` (formerly ByteFlow-AI, which now only redirects), `tokenflow_clipb_32k_enhanced.pt` (256 px, 9 scales)
and `tokenflow_siglip_32k.pt` (TokenFlow-XL, 384 px, 15 scales, pixel branch at 432 px). Each holds one
fp32 state dict under "ema", "model" or "state_dict" (tried in that order, as the official loaders do).

Config keys are the official `ModelArgs` fields plus explicit sizes for everything the official code
hard-codes per teacher (None = the official value); see `TokenFlowConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import (
    load_strict,
    read_state_dict,
)
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, bits_for, check_images
from ..features import check_stage, grid_tokens
from ..options import DType, PositiveInt
from ..registry import Family, Variant
from ..weights import Artifact
from ._multiscale import multiscale_tokens, scales_for_count
from .vqgan_blocks import Decoder, Encoder

CLIP_TEACHER = "clipb_224"
SIGLIP_TEACHER = "siglip_384"

# What `vq_model.TokenFlow.__init__` hard-codes for each teacher. The released teachers' own sizes are
# `semantic_teacher_config`: open_clip `VisionTransformer` arguments for CLIP (heads = width // 64, as
# `clip.load_clip_vision` builds it) and `SiglipVisionConfig` fields for SigLIP.
TEACHER_DEFAULTS: dict[str, dict[str, Any]] = {
    CLIP_TEACHER: {
        "scales": (1, 2, 4, 6, 8, 10, 12, 14),
        "scales_interpolated": (1, 2, 4, 6, 8, 10, 12, 14, 16),
        "semantic_embed_dim": 768,
        "semantic_decoder_embed_dim": 768,
        "semantic_decoder_out_dim": 512,
        "semantic_decoder_grid": 224 // 16,
        "pixel_branch_factor": None,
        "output_size": None,
        "semantic_teacher_config": {
            "input_resolution": 224,
            "patch_size": 16,
            "width": 768,
            "layers": 12,
            "output_dim": 512,
        },
    },
    SIGLIP_TEACHER: {
        "scales": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 17, 22, 27),
        "scales_interpolated": None,
        "semantic_embed_dim": 1152,
        "semantic_decoder_embed_dim": 1152,
        "semantic_decoder_out_dim": 1152,
        "semantic_decoder_grid": (27 * 2**4) // 16,
        "pixel_branch_factor": 2**4,
        "output_size": 384,
        "semantic_teacher_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 384,
            "patch_size": 14,
        },
    },
}


@dataclass(frozen=True)
class TokenFlowConfig:
    """Official `ModelArgs` fields, then the sizes the official code hard-codes (None = official value).

    `scales`: side of each residual-quantisation scale, coarse to fine (official `scale_rq_layers`,
    fixed per teacher and `infer_interpolate`); the last one must equal the token grid side.
    `pixel_branch_factor`: SigLIP only, the pixel CNN sees the input bicubic-resized to factor * grid
    (432 = 16 * 27 px); `output_size`: SigLIP only, the pixel reconstruction is bicubic-resized to it
    (384). `semantic_decoder_grid`: side of the stored `decoder_vqkd.pos_embed` grid (224 // 16 or
    432 // 16). `pixel_distance_weight`: weight of the pixel distance in the shared index (1.0).
    `semantic_decoder_depth` (3), `semantic_decoder_mlp_ratio` (4), `codebook_usage_size` (131072, the
    length of the unused `quantize.codebook_used` buffer) and `norm_num_groups` (GroupNorm groups of the
    pixel CNN, 32) are the remaining hard-coded values. The CLIP teacher config may set `heads`
    (default width // 64, as `clip.load_clip_vision` builds it).
    """

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    semantic_code_dim: int = 32
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 1.0
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    dropout_p: float = 0.0
    kmeans: bool = False
    teacher: str | None = None
    enhanced_decoder: bool = False
    infer_interpolate: bool = False
    # Explicit sizes (the golden fixtures' config.json use these names).
    encoder_ch: int | None = None
    encoder_num_res_blocks: int | None = None
    decoder_ch: int | None = None
    decoder_num_res_blocks: int | None = None
    semantic_embed_dim: int | None = None
    semantic_decoder_embed_dim: int | None = None
    semantic_decoder_num_heads: int | None = None
    semantic_decoder_out_dim: int | None = None
    semantic_teacher_config: Mapping[str, Any] | None = None
    # Further hard-coded values of the official code.
    semantic_decoder_depth: int = 3
    semantic_decoder_mlp_ratio: float = 4.0
    semantic_decoder_grid: int | None = None
    scales: tuple[int, ...] | None = None
    pixel_branch_factor: int | None = None
    output_size: int | None = None
    codebook_usage_size: int = 131072
    pixel_distance_weight: float = 1.0
    norm_type: str = "group"
    norm_num_groups: int = 32

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TokenFlowConfig:
        """Validate a config dict and fill every None size with the official value for its teacher."""
        refuse_unknown("TokenFlow config keys", config, {f.name for f in fields(cls)},
                       "(official ModelArgs fields plus the explicit sizes)")
        cfg = dict(config)
        teacher = cfg.get("teacher")
        if teacher not in TEACHER_DEFAULTS:
            hint = " (the vitamin_xlarge_256 teacher has no released checkpoint)" if teacher else ""
            raise TokbenchError(
                f"TokenFlow teacher must be one of {sorted(TEACHER_DEFAULTS)}, got {teacher!r}{hint}; "
                "set config['teacher']"
            )
        if not cfg.get("codebook_l2_norm", True):
            raise TokbenchError(
                "codebook_l2_norm=False is unusable in the official TokenFlow code; leave it True"
            )
        if cfg.get("kmeans", False):
            raise TokbenchError(
                "kmeans=True (EMA k-means codebook) is a training-only setting no release uses"
            )
        d = TEACHER_DEFAULTS[teacher]
        enhanced = bool(cfg.get("enhanced_decoder", False))
        fill = {
            "encoder_ch": 128,
            "encoder_num_res_blocks": 2,
            "decoder_ch": 256 if enhanced else 128,
            "decoder_num_res_blocks": 4 if enhanced else 2,
            "semantic_decoder_num_heads": 12,
            "semantic_embed_dim": d["semantic_embed_dim"],
            "semantic_decoder_embed_dim": d["semantic_decoder_embed_dim"],
            "semantic_decoder_out_dim": d["semantic_decoder_out_dim"],
            "semantic_decoder_grid": d["semantic_decoder_grid"],
            "pixel_branch_factor": d["pixel_branch_factor"],
            "output_size": d["output_size"],
            "semantic_teacher_config": d["semantic_teacher_config"],
        }
        if cfg.get("infer_interpolate") and d["scales_interpolated"] is not None:
            fill["scales"] = d["scales_interpolated"]
        else:
            fill["scales"] = d["scales"]
        for key, value in fill.items():
            if cfg.get(key) is None:
                cfg[key] = value
        for key in ("encoder_ch_mult", "decoder_ch_mult", "scales"):
            cfg[key] = tuple(int(v) for v in cfg[key])
        cfg["semantic_teacher_config"] = dict(cfg["semantic_teacher_config"])
        return cls(**cfg)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def grid(self) -> int:
        """Side of the finest token grid (= the last scale)."""
        return self.scales[-1]

    @property
    def tokens_per_image(self) -> int:
        return sum(s * s for s in self.scales)

    @property
    def input_size(self) -> int:
        """Native input side in pixels: patch * grid for CLIP (pos-embed interpolated), the SigLIP image size."""
        t = self.semantic_teacher_config
        if self.teacher == CLIP_TEACHER:
            return int(t["patch_size"]) * self.grid
        return int(t["image_size"])

    def accepts(self, side: int) -> bool:
        """Whether a side x side input gives the `grid` x `grid` token map on both branches.

        The semantic tower floors side / patch; the pixel CNN floors each halving (pad-right stride-2
        convs), so e.g. 65 px works like 64 px for CLIP with patch 4, as it does in the official code.
        """
        patch = int(self.semantic_teacher_config["patch_size"])
        if side // patch != self.grid:
            return False
        if self.teacher == SIGLIP_TEACHER:
            return side // patch == int(self.semantic_teacher_config["image_size"]) // patch
        pixel = side
        for _ in range(len(self.encoder_ch_mult) - 1):
            pixel //= 2
        return pixel == self.grid


# ----------------------------------------------------------------------------------------------------
# Semantic encoders (library towers) and the BEiT-style semantic decoder
# ----------------------------------------------------------------------------------------------------


def resize_grid_embedding(pos: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic-resize an (N0, D) square grid of position embeddings to (h * w, D), DINO/BEiT style.

    The sampling grid is defined by `scale_factor = (side + 0.1) / side0` (the official trick against
    rounding), not by the output size: `size=(h, w)` samples other points and changes the result.
    """
    n0, dim = pos.shape
    side0 = math.sqrt(n0)
    h0, w0 = out_hw[0] + 0.1, out_hw[1] + 0.1
    grid = pos.reshape(1, int(side0), int(side0), dim).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=(h0 / side0, w0 / side0), mode="bicubic")
    if tuple(out.shape[-2:]) != tuple(out_hw):
        raise TokbenchError(
            f"position-embedding resize gave {tuple(out.shape[-2:])}, expected {tuple(out_hw)}"
        )
    return out.permute(0, 2, 3, 1).reshape(-1, dim)


def build_clip_tower(cfg: Mapping[str, Any]) -> nn.Module:
    """OpenAI CLIP visual tower (open_clip `VisionTransformer`, QuickGELU, LayerNorm eps 1e-5), no `proj`.

    Keys: `conv1`, `class_embedding`, `positional_embedding`, `ln_pre`, `transformer.resblocks.*`, `ln_post`,
    exactly those of `encoder_vqkd.*` in the release.
    """
    from open_clip.transformer import QuickGELU, VisionTransformer

    width = int(cfg["width"])
    tower = VisionTransformer(
        image_size=int(cfg["input_resolution"]),
        patch_size=int(cfg["patch_size"]),
        width=width,
        layers=int(cfg["layers"]),
        heads=int(cfg.get("heads", width // 64)),
        mlp_ratio=4.0,
        output_dim=int(cfg.get("output_dim", 512)),
        act_layer=QuickGELU,
        norm_layer=nn.LayerNorm,
    )
    tower.proj = None  # `clip.load_clip_vision` deletes it: TokenFlow uses the patch tokens before projection
    return tower


def clip_patch_tokens(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] (no CLIP normalisation: the release was fine-tuned so) -> (B, h*w, width).

    `ln_post` of all tokens, CLS dropped. The stored pos-embed grid is resized when the token count differs.
    """
    x = tower.conv1(x)
    b, width, gh, gw = x.shape
    x = x.reshape(b, width, gh * gw).permute(0, 2, 1)
    cls = tower.class_embedding.to(x.dtype) + torch.zeros(b, 1, width, dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1)
    pos = tower.positional_embedding
    if x.shape[1] != pos.shape[0]:
        pos = torch.cat([pos[:1], resize_grid_embedding(pos[1:], (gh, gw))], dim=0)
    x = tower.ln_pre(x + pos.to(x.dtype))
    x = tower.transformer(x)
    return tower.ln_post(x)[:, 1:, :]


def build_siglip_tower(cfg: Mapping[str, Any]) -> nn.Module:
    """transformers `SiglipVisionModel` (release keys `vision_model.*` are stripped on loading)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return SiglipVisionModel(SiglipVisionConfig(**cfg))


class ScalingLayerForSigLip(nn.Module):
    """[-1, 1] -> uint8-range clamp -> [0, 1] -> (v - 0.5) / 0.5 (buffers `shift`, `scale` are in the release)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([0.5, 0.5, 0.5])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.5, 0.5, 0.5])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1.0) * 127.5).clamp(0, 255.0) / 255.0
        return (x - self.shift) / self.scale


class BeitAttention(nn.Module):
    """Multi-head self-attention with a bias-free `qkv` plus learnt `q_bias` / `v_bias` (k bias is zero)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = (dim // num_heads) * num_heads
        self.qkv = nn.Linear(dim, inner * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale head_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class BeitMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class BeitBlock(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6, exact GELU, no layer scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BeitAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = BeitMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed1x1(nn.Module):
    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=1, stride=1)


class SemanticDecoder(nn.Module):
    """BEiT-v2-style ViT over the quantised semantic map (`decoder_vqkd`): 1x1 patch embed, CLS, abs pos-embed.

    (B, C, h, w) -> patch tokens (B, h*w, dim) after `fc_norm` (CLS dropped). The stored pos-embed grid
    (`grid` x `grid` + CLS) is resized with the official scale-factor rule when h*w differs.
    """

    def __init__(
        self, in_chans: int, dim: int, depth: int, num_heads: int, mlp_ratio: float, grid: int
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed1x1(in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(BeitBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = self.pos_embed[0]
        if x.shape[1] != pos.shape[0]:
            pos = torch.cat([pos[:1], resize_grid_embedding(pos[1:], (h, w))], dim=0)
        x = x + pos.unsqueeze(0)
        for blk in self.blocks:
            x = blk(x)
        return self.fc_norm(x[:, 1:, :])


# ----------------------------------------------------------------------------------------------------
# The shared quantiser and the model
# ----------------------------------------------------------------------------------------------------


class SharedQuantizer(nn.Module):
    """Two codebooks (semantic `embedding_vqkd`, pixel `embedding_vqgan`) addressed by one index.

    For a vector r = (r_sem, r_pix): d[k] = |n(r_sem) - n(e_sem[k])|^2 + w |n(r_pix) - n(e_pix[k])|^2,
    n = l2-normalisation, k* = argmin (first on ties); the code is cat(n(e_sem[k*]), n(e_pix[k*])).
    `codebook_used` is a training statistic kept only so the release loads strictly.
    """

    def __init__(
        self, n_codes: int, split: tuple[int, int], pixel_weight: float = 1.0, usage_size: int | None = 131072
    ) -> None:
        super().__init__()
        self.n_codes, self.split, self.pixel_weight = n_codes, tuple(split), float(pixel_weight)
        self.embedding_vqkd = nn.Embedding(n_codes, split[0])
        self.embedding_vqgan = nn.Embedding(n_codes, split[1])
        if usage_size:
            self.register_buffer("codebook_used", torch.zeros(usage_size))

    def codebooks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.embedding_vqkd.weight, dim=-1), F.normalize(
            self.embedding_vqgan.weight, dim=-1
        )

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., C_sem + C_pix) concatenated normalised rows."""
        sem, pix = self.codebooks()
        return torch.cat([sem, pix], dim=-1)[ids]

    @staticmethod
    def _sq_dist(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # The official expanded form |z|^2 + |e|^2 - 2 z.e, so near-ties break the same way.
        return (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * (z @ e.t())

    def forward(self, r: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """r (B, C, h, w) -> (quantised (B, C, h, w), ids (B, h*w) row-major)."""
        b, c, h, w = r.shape
        flat = r.permute(0, 2, 3, 1).reshape(-1, c)
        z_sem, z_pix = (F.normalize(t, dim=-1) for t in torch.split(flat, self.split, dim=-1))
        e_sem, e_pix = self.codebooks()
        ids = torch.empty(flat.shape[0], dtype=torch.long, device=r.device)
        for i in range(0, flat.shape[0], chunk):  # rows are independent: chunks bound the (rows, K) matrix
            d = self._sq_dist(z_sem[i : i + chunk], e_sem) + self.pixel_weight * self._sq_dist(
                z_pix[i : i + chunk], e_pix
            )
            ids[i : i + chunk] = d.argmin(dim=1)
        z = torch.cat([z_sem, z_pix], dim=-1)
        q = torch.cat([e_sem, e_pix], dim=-1)[ids]
        q = z + (q - z)  # the official straight-through form: equal to q up to one ulp, kept for exactness
        return q.reshape(b, h, w, c).permute(0, 3, 1, 2), ids.reshape(b, h * w)


class TokenFlowModel(nn.Module):
    """The official `TokenFlow` module with its state-dict names (SigLIP tower keys without `vision_model.`).

    Images are float (B, 3, H, W) in [-1, 1].
    """

    def __init__(self, cfg: TokenFlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scales = tuple(cfg.scales)
        self.encoder = Encoder(
            ch=cfg.encoder_ch,
            ch_mult=cfg.encoder_ch_mult,
            num_res_blocks=cfg.encoder_num_res_blocks,
            norm_type=cfg.norm_type,
            dropout=cfg.dropout_p,
            z_channels=cfg.z_channels,
            num_groups=cfg.norm_num_groups,
        )
        self.decoder = Decoder(
            z_channels=cfg.z_channels,
            ch=cfg.decoder_ch,
            ch_mult=cfg.decoder_ch_mult,
            num_res_blocks=cfg.decoder_num_res_blocks,
            norm_type=cfg.norm_type,
            dropout=cfg.dropout_p,
            num_groups=cfg.norm_num_groups,
        )
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)
        if cfg.teacher == CLIP_TEACHER:
            self.encoder_vqkd = build_clip_tower(cfg.semantic_teacher_config)
        else:
            self.encoder_vqkd = build_siglip_tower(cfg.semantic_teacher_config)
        self.decoder_vqkd = SemanticDecoder(
            cfg.semantic_code_dim,
            cfg.semantic_decoder_embed_dim,
            cfg.semantic_decoder_depth,
            cfg.semantic_decoder_num_heads,
            cfg.semantic_decoder_mlp_ratio,
            cfg.semantic_decoder_grid,
        )
        w, dw = cfg.semantic_embed_dim, cfg.semantic_decoder_embed_dim
        self.encode_task_layer = nn.Sequential(
            nn.Linear(w, w), nn.Tanh(), nn.Linear(w, cfg.semantic_code_dim)
        )
        self.decode_task_layer = nn.Sequential(
            nn.Linear(dw, dw), nn.Tanh(), nn.Linear(dw, cfg.semantic_decoder_out_dim)
        )
        self.scaling_layer = ScalingLayerForSigLip() if cfg.teacher == SIGLIP_TEACHER else None
        self.quantize = SharedQuantizer(
            cfg.codebook_size,
            (cfg.semantic_code_dim, cfg.codebook_embed_dim),
            cfg.pixel_distance_weight,
            cfg.codebook_usage_size if cfg.codebook_show_usage else None,
        )

    # --- encoding ---------------------------------------------------------------------------------
    def teacher_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic tower output fed to `encode_task_layer`, (B, h*w, semantic_embed_dim)."""
        if self.cfg.teacher == CLIP_TEACHER:
            return clip_patch_tokens(self.encoder_vqkd, x)
        out = self.encoder_vqkd(pixel_values=self.scaling_layer(x), output_hidden_states=True)
        return out.hidden_states[-2]  # output of the penultimate layer: no last layer, no post_layernorm

    def encode_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pre-quantisation features: `teacher_tokens`, `semantic_features` (B, C_sem, g, g), `pixel_features`."""
        tokens = self.teacher_tokens(x)
        sem = self.encode_task_layer(tokens.to(self.encode_task_layer[-1].weight.dtype))
        g = int(math.isqrt(sem.shape[1]))
        if g * g != sem.shape[1]:
            raise TokbenchError(f"TokenFlow needs a square token grid, got {sem.shape[1]} semantic tokens")
        sem = sem.transpose(1, 2).reshape(sem.shape[0], sem.shape[2], g, g)
        if self.cfg.pixel_branch_factor:
            side = self.cfg.pixel_branch_factor * g
            x = F.interpolate(x, size=(side, side), mode="bicubic")
        pix = self.quant_conv(self.encoder(x))
        if pix.shape[-2:] != sem.shape[-2:] or g != self.scales[-1]:
            raise TokbenchError(
                f"grid mismatch: semantic branch {tuple(sem.shape[-2:])}, pixel branch {tuple(pix.shape[-2:])}, "
                f"last scale {self.scales[-1]}; feed {self.cfg.input_size}x{self.cfg.input_size} images "
                "(or fix scales / ch_mult / the teacher size in the config)"
            )
        return {"teacher_tokens": tokens, "semantic_features": sem, "pixel_features": pix}

    def quantize_multiscale(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAR-style residual quantisation: f (B, C, G, G) -> (quant (B, C, G, G), ids (B, sum s^2))."""
        side = self.scales[-1]
        residual, quant, ids = f, torch.zeros_like(f), []
        for s in self.scales:
            q, idx = self.quantize(F.interpolate(residual, size=(s, s), mode="area"))
            q = F.interpolate(q, size=(side, side), mode="bicubic")
            quant = quant + q
            residual = residual - q
            ids.append(idx)
        return quant, torch.cat(ids, dim=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.encode_features(x)
        quant, ids = self.quantize_multiscale(
            torch.cat([feats["semantic_features"], feats["pixel_features"]], 1)
        )
        return quant, ids, feats

    # --- decoding ---------------------------------------------------------------------------------
    def split_scales(self, n_ids: int) -> tuple[int, ...]:
        """The prefix of `scales` whose token counts add up to `n_ids` (a coarse-only sequence is valid)."""
        return scales_for_count(n_ids, self.scales)

    def quant_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, N) multi-scale ids -> summed, upsampled codes (B, C, G, G) (official `decode_code` first half)."""
        side, pos, quant = self.scales[-1], 0, 0.0
        for s in self.split_scales(ids.shape[1]):
            q = self.quantize.lookup(ids[:, pos : pos + s * s])
            pos += s * s
            q = q.transpose(1, 2).reshape(ids.shape[0], -1, s, s)
            quant = quant + F.interpolate(q, size=(side, side), mode="bicubic")
        return quant

    def decode_semantic(self, quant: torch.Tensor) -> torch.Tensor:
        """(B, C, G, G) codes -> reconstructed teacher features (B, G*G, semantic_decoder_out_dim)."""
        sem = quant[:, : self.cfg.semantic_code_dim]
        return self.decode_task_layer(self.decoder_vqkd(sem))

    def decode_pixels(self, quant: torch.Tensor) -> torch.Tensor:
        """(B, C, G, G) codes -> raw pixels (B, 3, H, W), nominal range [-1, 1] (not clamped)."""
        # Upstream's quant is always channels-last strided (the quantiser's 'b h w c -> b c h w' view survives
        # the bicubic upsampling and the sum), so its convolutions run channels-last; doing the same keeps a
        # randomly-initialised CNN's float noise 2-20x closer to the official output (up to 3e-4 otherwise).
        quant = quant.contiguous(memory_format=torch.channels_last)
        out = self.decoder(self.post_quant_conv(quant[:, self.cfg.semantic_code_dim :]))
        if self.cfg.output_size:
            out = F.interpolate(out, size=(self.cfg.output_size, self.cfg.output_size), mode="bicubic")
        return out

    def decode(self, quant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode_semantic(quant), self.decode_pixels(quant)


# ----------------------------------------------------------------------------------------------------
# Release layout
# ----------------------------------------------------------------------------------------------------

SIGLIP_RELEASE_PREFIX = "encoder_vqkd.vision_model."


def release_to_module_keys(
    state_dict: Mapping[str, torch.Tensor], module_keys: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Release keys -> `TokenFlowModel` keys.

    The release stores the SigLIP tower as transformers-4 `encoder_vqkd.vision_model.*`; transformers 5
    names the same `SiglipVisionModel` without the `vision_model.` level. The keys are put in the layout
    of `module_keys` (the model's own state-dict names) when given, else in the transformers-5 layout.
    Either input layout is accepted; CLIP keys pass unchanged.
    """
    nested = module_keys is not None and any(k.startswith(SIGLIP_RELEASE_PREFIX) for k in module_keys)
    n, out = len(SIGLIP_RELEASE_PREFIX), {}
    for k, v in state_dict.items():
        if k.startswith(SIGLIP_RELEASE_PREFIX) and not nested:
            k = "encoder_vqkd." + k[n:]
        elif nested and k.startswith("encoder_vqkd.") and not k.startswith(SIGLIP_RELEASE_PREFIX):
            k = SIGLIP_RELEASE_PREFIX + k[len("encoder_vqkd.") :]
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------
# Adapter
# ----------------------------------------------------------------------------------------------------



class TokenFlowTokenizer(ModuleTokenizer):
    """TokenFlow as a tokbench tokenizer.

    `encode` takes (B, 3, S, S) images in [0, 1] (S = `spec.resolution`) and returns the shared ids,
    (B, sum of s^2) over the scales coarse to fine, with `meta["scales"]`; `encode(images, n_scales=k)`
    keeps the first k scales (a valid coarse-only sequence). `decode` returns pixels in [0, 1] at
    `output_size` (SigLIP: 384) or the input size. `semantic(images)` returns the semantic branch.
    """

    encode_options = ("n_scales",)

    def __init__(self, model: TokenFlowModel, spec: TokenizerSpec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.scales = model.scales

    @property
    def dtype(self) -> torch.dtype:
        return self.model.quant_conv.weight.dtype

    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        h, w = images.shape[-2:]
        if h != w or not self.model.cfg.accepts(int(h)):
            side = self.model.cfg.input_size
            raise TokbenchError(
                f"{self.spec.name} takes {side}x{side} images, got {(int(h), int(w))}; preprocess with "
                f"the {self.spec.preprocessing!r} protocol at {side} px"
            )
        return images.to(self.device, self.dtype) * 2.0 - 1.0

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, n_scales: int | None = None) -> Tokens:
        _, ids, _ = self.model.encode(self._to_model(images))
        return multiscale_tokens(ids, self.scales, n_scales, self.model.cfg.codebook_size)

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if tokens.ids is None or tokens.ids.ndim != 2:
            raise TokbenchError(f"{self.spec.name}.decode needs Tokens with ids of shape (B, N)")
        quant = self.model.quant_from_ids(tokens.ids.to(self.device))
        return ((self.model.decode_pixels(quant).float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.inference_mode()
    def decode_semantic(self, tokens: Tokens) -> torch.Tensor:
        """Ids -> the semantic decoder's reconstruction of the teacher features, (B, G*G, out_dim)."""
        return self.model.decode_semantic(self.model.quant_from_ids(tokens.ids.to(self.device))).float()

    @torch.inference_mode()
    def semantic(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The semantic branch for the semantic metrics; images (B, 3, S, S) in [0, 1].

        Returns `teacher_tokens` (B, G*G, W): the tower output the code is computed from (CLIP: ln_post
        patch tokens; SigLIP: penultimate hidden states); `semantic_features` (B, C_sem, G, G) before
        quantisation; `quant_semantic` (B, C_sem, G, G) after it; `semantic_recon` (B, G*G, out_dim):
        the semantic decoder's output; `quant_pixel`; `ids`.

        Training target of `semantic_recon` (official `vq_loss.get_regress_target`, loss 1 - cosine per
        token) comes from the FROZEN original teacher, not from `encoder_vqkd` (fine-tuned, no `proj`):
        CLIP: OpenAI ViT-B/16 on CLIP-mean/std-normalised input, ln_post of the patch tokens @ `proj`
        (512-d); SigLIP: google/siglip-so400m-patch14-384 `hidden_states[-2]` on [-1, 1] input (1152-d).
        """
        quant, ids, feats = self.model.encode(self._to_model(images))
        c = self.model.cfg.semantic_code_dim
        return {
            "teacher_tokens": feats["teacher_tokens"].float(),
            "semantic_features": feats["semantic_features"].float(),
            "quant_semantic": quant[:, :c].float(),
            "quant_pixel": quant[:, c:].float(),
            "semantic_recon": self.model.decode_semantic(quant).float(),
            "ids": ids,
        }

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant", "semantic")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, G*G, D) float32 on the last scale's grid, row-major: `pre_quant` the shared quantiser's input,
        semantic then pixel features concatenated (D = C_sem + C_pix); `post_quant` the summed multi-scale
        codes of both halves (the semantic half feeds the semantic decoder, the pixel half the pixel
        decoder); `semantic` the semantic half of the codes only (the semantic codebook, D = C_sem)."""
        check_stage(self, stage)
        quant, _, feats = self.model.encode(self._to_model(images))
        if stage == "pre_quant":
            return grid_tokens(torch.cat([feats["semantic_features"], feats["pixel_features"]], 1))
        if stage == "semantic":
            quant = quant[:, : self.model.cfg.semantic_code_dim]
        return grid_tokens(quant)


def build_model(
    config: Mapping[str, Any] | TokenFlowConfig, device: str | torch.device = "cpu"
) -> TokenFlowModel:
    """An unloaded `TokenFlowModel` (use device="meta" to inspect the full-size layout without memory)."""
    cfg = config if isinstance(config, TokenFlowConfig) else TokenFlowConfig.from_dict(config)
    with torch.device(device):
        return TokenFlowModel(cfg)


def _build(b: Build) -> TokenFlowTokenizer:
    cfg = TokenFlowConfig.from_dict(b.config)

    def load(model: torch.nn.Module, path: Path) -> None:
        sd = release_to_module_keys(read_state_dict(path), model.state_dict().keys())
        load_strict(model, sd, source=f"TokenFlow checkpoint {path}")

    # random weights: the semantic tower (open_clip / transformers) keeps its library's own init
    model = b.model(lambda: TokenFlowModel(cfg), load, "a TokenFlow checkpoint and config=<ModelArgs dict>",
                    random_keep=("encoder_vqkd",))
    model = model.to(b.torch_dtype)
    b.notes.append(
        f"teacher {cfg.teacher}; {len(cfg.scales)} scales {list(cfg.scales)}; one shared index over a "
        f"{cfg.semantic_code_dim}-d semantic and a {cfg.codebook_embed_dim}-d pixel codebook"
        + (f"; pixel branch at {cfg.pixel_branch_factor * cfg.grid} px, output {cfg.output_size} px"
           if cfg.pixel_branch_factor else "")
    )
    spec = b.spec(
        name=b.variant.name if b.variant is not None else f"tokenflow-{cfg.teacher}",
        resolution=cfg.input_size,
        tokens_per_image=cfg.tokens_per_image,
        codebook_size=cfg.codebook_size,
        bits_per_token=bits_for(cfg.codebook_size),
        normalisation="[-1, 1]",
        preprocessing=b.option("preprocessing") or ("pad-square" if cfg.teacher == SIGLIP_TEACHER else "adm-center-crop"),
    )
    return TokenFlowTokenizer(model, spec)


PAPER = "Qu et al., TokenFlow: Unified Image Tokenizer for Multimodal Understanding and Generation, arXiv 2412.03069"
TABLE2 = "TokenFlow paper (arXiv 2412.03069), Table 2: ImageNet-1k val 50k, rFID/PSNR/SSIM (SSIM with data_range=2.0)"

VARIANTS: tuple[Variant, ...] = (
    Variant(
        name="tokenflow-clipb-32k-enhanced",
        family="tokenflow",
        config={
            "codebook_size": 32768,
            "codebook_embed_dim": 8,
            "semantic_code_dim": 32,
            "encoder_ch_mult": [1, 1, 2, 2, 4],
            "decoder_ch_mult": [1, 1, 2, 2, 4],
            "teacher": CLIP_TEACHER,
            "enhanced_decoder": True,
            "infer_interpolate": True,
        },
        weights=Artifact(
            name="tokenflow-clipb-32k-enhanced",
            repo_id="ByteVisionLab/TokenFlow",
            filename="tokenflow_clipb_32k_enhanced.pt",
            size=1_506_802_860,
            licence="MIT (model card)",
        ),
        resolution=256,
        description="TokenFlow, CLIP ViT-B/16 teacher, enhanced decoder: 256 px, 9 scales to 16x16, 817 ids, K=32768",
        paper=PAPER,
        published={"rfid_pytorch_fid": 1.37, "psnr_llamagen": 21.41, "ssim_llamagen": 0.687},
        published_source=TABLE2 + ", 256 px",
    ),
    Variant(
        name="tokenflow-siglip-32k",
        family="tokenflow",
        config={
            "codebook_size": 32768,
            "codebook_embed_dim": 8,
            "semantic_code_dim": 32,
            "encoder_ch_mult": [1, 1, 2, 2, 4],
            "decoder_ch_mult": [1, 1, 2, 2, 4],
            "teacher": SIGLIP_TEACHER,
            "enhanced_decoder": False,
            "infer_interpolate": False,
        },
        weights=Artifact(
            name="tokenflow-siglip-32k",
            repo_id="ByteVisionLab/TokenFlow",
            filename="tokenflow_siglip_32k.pt",
            size=2_216_564_164,
            licence="MIT (model card)",
        ),
        resolution=384,
        description=(
            "TokenFlow-XL, SigLIP-SO400M/14-384 teacher: 384 px, 15 scales to 27x27, 2227 ids, K=32768; "
            "pixel branch at 432 px, output resized to 384"
        ),
        paper=PAPER,
        published={"rfid_pytorch_fid": 0.63, "psnr_llamagen": 22.77, "ssim_llamagen": 0.731},
        published_source=TABLE2 + ", 384 px",
    ),
)

FAMILY = Family(
    name="tokenflow",
    build=_build,
    variants=VARIANTS,
    description="TokenFlow dual-codebook (semantic + pixel) multi-scale tokenizer with one shared index",
    default_variant="tokenflow-clipb-32k-enhanced",
    build_options={"dtype": (DType, "float32"), "preprocessing": str},
    encode_options={"n_scales": PositiveInt},
    code="https://github.com/ByteVisionLab/TokenFlow (tokenflow/tokenizer/vq_model.py)",
    packages=("open_clip_torch", "transformers"),
)

__all__ = [
    "FAMILY",
    "SharedQuantizer",
    "TokenFlowConfig",
    "TokenFlowModel",
    "TokenFlowTokenizer",
    "build_model",
    "release_to_module_keys",
]
