"""UniTok (Ma et al. 2025): one tokenizer for generation (multi-codebook VQ ids -> pixels) and understanding
(a CLIP-style image embedding with its own text tower).

Architecture of `models/unitok.py::UniTok` (github.com/FoundationVision/UniTok, commit bb8012e):

* `encoder`: a hybrid ViTamin (MbConv stem and two MbConv stages, a strided-conv pool to the ViT width, then
  pre-LN ViT blocks with a GeGLU MLP) that UniTok registers as its own timm entrypoint `vitamin_large`, plus a
  (1, 1, D) `pos_embed` added to every token; no class token, output after the final `norm`;
* `quant_proj` / `post_quant_proj`: `AttnProjection` (a residual linear path plus a BEiT-style attention whose
  heads are averaged (down) or concatenated (up), then a GeGLU MLP);
* `quantizer`: C sub-codebooks; each token's vector is cut into C chunks and each chunk takes the row of
  largest cosine similarity in its own codebook: ids (B, C, N) upstream, (B, N, C) here;
* `decoder`: ViT blocks (the encoder's timm model minus its patch embed) and an inverted-MbConv up-sampler x16;
* CLIP head: `fc_norm` + `projection` over the mean of the post-quantisation tokens (so the embedding comes
  from the discrete codes) and an open_clip `TextTransformer` (`text_encoder`) in the same state dict.

Why not `timm.create_model("vitamin_large")`: UniTok's entrypoint lives in its own `models/vitamin.py` (pinned
to timm 1.0.8), which fails to build with current timm (1.0.31: "HybridEmbed.__init__() got an unexpected
keyword argument 'device'"), and timm's native `vitamin_large_256` differs in two ways that change outputs: its
`GeGluMlp` uses exact GELU where UniTok's uses tanh-GELU, and it has no `pos_embed`. So the encoder is assembled here from timm's current
building blocks that compute exactly the same thing (`vitamin.MbConvStages`, `vision_transformer.Block`,
`vitamin.GeGluMlp` with `act_layer="gelu_tanh"`); the decoder's up-sampling blocks and the projections exist in
no library and are written here.

Released checkpoints (`torch.save({"args": Args fields, "trainer": {"unitok": state_dict}})`): the current
`FoundationVision/unitok_tokenizer` (2025-04-02, full-attention projections) and the first
`FoundationVision/UniTok` file (2025-02-27, CAUSAL attention inside the projections, same keys). Only
`ckpt["args"]` and `ckpt["trainer"]["unitok"]` are read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import (
    CheckpointError,
    _torch_load,
    load_strict,
    read_state_dict,
)
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, check_images
from ..features import check_stage
from ..options import DType
from ..protocols import (
    center_crop,
    drop_alpha,
    register_protocol,
    resize_short_side,
    short_side_crop_geometry,
)
from ..registry import Family, Variant
from ..weights import Artifact, register_artifact

# `models/vitamin.py` entrypoints (encoder) and `ViTaminDecoder`'s table (decoder dims), by model name. The
# decoder table has only these two names upstream; any other size is given as an explicit `vitamin` mapping.
VITAMIN_SIZES: dict[str, dict[str, Any]] = {
    "vitamin_base": {
        "stem_width": 128,
        "conv_dims": (128, 256),
        "conv_depths": (2, 4, 1),
        "embed_dim": 768,
        "depth": 14,
        "num_heads": 12,
        "mlp_ratio": 2.0,
    },
    "vitamin_large": {
        "stem_width": 160,
        "conv_dims": (160, 320),
        "conv_depths": (2, 4, 1),
        "embed_dim": 1024,
        "depth": 31,
        "num_heads": 16,
        "mlp_ratio": 2.0,
    },
}


@dataclass(frozen=True)
class VitaminConfig:
    """The image-side sizes upstream hard-codes by model name.

    `embed_dim` is the ViT width D; `conv_dims` the two MbConv stage widths, `conv_depths` their depths (the
    third entry is unused upstream, kept for the record); `decoder_dims` = (D, up width 1, up width 2)
    (default (D, conv_dims[1], conv_dims[0]), upstream's table); `decoder_conv_depths` the inverted-MbConv
    depths of `up_conv2` / `up_conv3` ((4, 2) hard-coded upstream).
    """

    stem_width: int
    conv_dims: tuple[int, int]
    conv_depths: tuple[int, ...]
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 2.0
    decoder_dims: tuple[int, int, int] | None = None
    decoder_conv_depths: tuple[int, int] = (4, 2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VitaminConfig:
        refuse_unknown("ViTamin size fields", d, {f.name for f in fields(cls)})
        missing = [k for k in ("stem_width", "conv_dims", "embed_dim", "depth", "num_heads") if k not in d]
        if missing:
            raise TokbenchError(f"a ViTamin size mapping needs {missing} (got {dict(d)})")
        out = dict(d)
        out["conv_dims"] = tuple(int(v) for v in out["conv_dims"])
        out["conv_depths"] = tuple(int(v) for v in out.get("conv_depths", (2, 4, 1)))
        out["decoder_conv_depths"] = tuple(int(v) for v in out.get("decoder_conv_depths", (4, 2)))
        dims = out.get("decoder_dims")
        out["decoder_dims"] = (
            tuple(int(v) for v in dims)
            if dims
            else (int(out["embed_dim"]), out["conv_dims"][1], out["conv_dims"][0])
        )
        if len(out["conv_dims"]) != 2 or len(out["conv_depths"]) < 2 or len(out["decoder_dims"]) != 3:
            raise TokbenchError(
                f"ViTamin sizes need 2 conv_dims, >= 2 conv_depths and 3 decoder_dims, got {out}"
            )
        if out["decoder_dims"][0] != int(out["embed_dim"]):
            raise TokbenchError(
                f"decoder_dims[0] must equal the ViT width {out['embed_dim']}, got {out['decoder_dims']}"
            )
        return cls(**out)


@dataclass(frozen=True)
class UniTokConfig:
    """`utils/config.py::Args` fields that shape the model (defaults: the released UniTok-Large), the ViTamin
    sizes, and the settings that are not stored anywhere in a checkpoint.

    `vocab_size` is the TOTAL over the `num_codebooks` sub-codebooks (each has vocab_size / num_codebooks rows
    of vocab_width / num_codebooks dims). `causal_projection`: attention inside quant_proj / post_quant_proj
    is causal (the first release) or full (current code and release). `projection_heads`: heads of those
    projections; None = D // vocab_width as `models/unitok.py` builds them (inference, rFID, zero-shot); the
    LLaVA evaluation's encoder uses num_codebooks instead (same weights, other ids). `text_tower`: build the
    CLIP text tower (needed for `encode_text`; its keys are skipped when False).
    """

    model: str = "vitamin_large"
    img_size: int = 256
    resize_ratio: float = 1.125
    vocab_size: int = 32768
    vocab_width: int = 64
    num_codebooks: int = 8
    quant_proj: str = "attn"
    embed_dim: int = 768
    num_query: int = 0
    text_width: int = 768
    text_heads: int = 12
    text_layers: int = 12
    text_vocab_size: int = 49408
    text_context_length: int = 77
    vitamin: VitaminConfig | None = None
    causal_projection: bool = False
    projection_heads: int | None = None
    text_tower: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> UniTokConfig:
        """Plain constructor kwargs, or the fixture / release layout ({"unitok_args": Args fields,
        "custom_vitamin": sizes}); `custom_vitamin` and `vitamin` are the same thing."""
        cfg = flatten_config(config)
        known = {f.name for f in fields(cls)}
        for k in [k for k in cfg if k not in known and k in ARGS_NOT_SHAPING]:  # training / data / paths
            del cfg[k]
        refuse_unknown("UniTok config keys", cfg, known, "(official Args fields, `vitamin` sizes, "
                       "causal_projection, projection_heads, text_tower)")
        vit = cfg.get("vitamin")
        if vit is None:
            name = cfg.get("model", cls.model)
            if name not in VITAMIN_SIZES:
                raise TokbenchError(
                    f"UniTok model {name!r} has no built-in sizes (models that have: {sorted(VITAMIN_SIZES)}); "
                    "give them as config['vitamin'] = {stem_width, conv_dims, conv_depths, embed_dim, depth, "
                    "num_heads}"
                )
            vit = VITAMIN_SIZES[name]
        cfg["vitamin"] = vit if isinstance(vit, VitaminConfig) else VitaminConfig.from_dict(vit)
        if cfg.get("quant_proj", "attn") not in ("attn", "linear"):
            raise TokbenchError(f"quant_proj must be 'attn' or 'linear', got {cfg['quant_proj']!r}")
        if int(cfg.get("num_query", 0)) != 0:
            raise TokbenchError(
                f"num_query={cfg['num_query']} (register tokens) is not supported: no UniTok release uses it"
            )
        out = cls(**cfg)
        out.check()
        return out

    def check(self) -> None:
        d, w, c = self.vitamin.embed_dim, self.vocab_width, self.num_codebooks
        if w % c or self.vocab_size % c:
            raise TokbenchError(
                f"vocab_width {w} and vocab_size {self.vocab_size} must be divisible by num_codebooks {c}"
            )
        if self.quant_proj == "attn":
            if self.heads < 1:
                raise TokbenchError(
                    f"projection heads = D // vocab_width = {d} // {w} is 0; set projection_heads"
                )
            if d % w and w % d:
                raise TokbenchError(f"AttnProjection needs one of D={d}, vocab_width={w} to divide the other")
            if max(d, w) % self.heads:
                raise TokbenchError(
                    f"projection heads {self.heads} must divide max(D, vocab_width) = {max(d, w)}"
                )
        if self.img_size % 16:
            raise TokbenchError(f"img_size must be a multiple of 16 (the total stride), got {self.img_size}")

    @property
    def heads(self) -> int:
        """Heads of quant_proj / post_quant_proj (upstream UniTok: D // vocab_width)."""
        if self.projection_heads is not None:
            return int(self.projection_heads)
        return self.vitamin.embed_dim // self.vocab_width

    @property
    def codes_per_codebook(self) -> int:
        return self.vocab_size // self.num_codebooks

    @property
    def grid(self) -> int:
        return self.img_size // 16

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["vitamin"] = {f.name: getattr(self.vitamin, f.name) for f in fields(self.vitamin)}
        return out


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Plain kwargs from either layout: the fixtures' {"unitok_args": Args fields, "custom_vitamin": sizes, and
    notes on how they were made} or plain kwargs; `custom_vitamin` (the fixtures' name) becomes `vitamin`."""
    cfg = dict(config)
    if "unitok_args" in cfg:
        nested = dict(cfg.pop("unitok_args"))
        settings = {f.name for f in fields(UniTokConfig)} | {"custom_vitamin"}
        # sizes and settings next to unitok_args win; the other top-level keys say how a fixture was made
        nested.update({k: v for k, v in cfg.items() if k in settings})
        cfg = nested
    if "custom_vitamin" in cfg:
        if cfg.get("vitamin") is not None:
            raise TokbenchError("give the ViTamin sizes once, as `vitamin` or `custom_vitamin`, not both")
        cfg["vitamin"] = cfg.pop("custom_vitamin")
    return cfg


# Args fields stored in every checkpoint that do not change the inference model (training, data, paths).
ARGS_NOT_SHAPING = frozenset(
    """exp_name output_dir resume_from lpips_path dino_path fid_eval_src fid_eval_dst vis_img_dir
    fid_feature_extractor clip_pretrain_path fp16 bf16 tf32 compile_model ddp_static grad_ckpt grad_accu device
    dtype train_data val_data dataset_type imagenet_val imagenet_v2 subset_ratio hflip workers train_num_samples
    train_data_upsampling_factors dataset_resampled use_aug vocab_norm vq_beta use_clip_pretrain patch_size
    drop_path local_loss gather_with_grad pretrained_clip pretrained_clip_text lock_text lock_text_unlocked_layers
    lock_text_freeze_layer_norm force_custom_text force_custom_vision zeroshot_eval_freq dino_depth
    dino_kernel_size disc_norm disc_aug_prob disc_specnorm step_disc_every vae_init vocab_init disc_init epoch
    local_bs vae_local_bs global_bs lr wd disc_lr disc_wd grad_clip ema warmup_iter warmup_ep disc_start_ep
    disc_warmup_ep schedule lr_start_ratio lr_end_ratio disc_lr_end_ratio custom_lr_multiplier optimizer optim_eps
    fuse_opt le e_temp bcr bcr_cut dbg_nan dbg_unused_param dcrit deterministic disc_optim_beta eval_per_epoch gada
    l1 l2 lc ld lp lpr lq optim_beta report_wandb run_id same_seed_for_all_ranks seed wandb_notes""".split()
)


# ----------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------


def _geglu(dim: int, hidden: int) -> nn.Module:
    """UniTok's GeGLU MLP = timm's `GeGluMlp` (own LayerNorm eps 1e-6) with tanh-GELU (timm defaults to exact)."""
    from timm.models.vitamin import GeGluMlp

    return GeGluMlp(dim, hidden, act_layer="gelu_tanh")


def _vit_blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    """timm ViT blocks as UniTok's `VisionTransformer` builds them: qkv bias, LayerNorm eps 1e-6, GeGLU MLP."""
    from timm.models.vision_transformer import Block

    make = partial(
        Block,
        dim=width,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        mlp_layer=_block_mlp,
    )
    return nn.Sequential(*[make() for _ in range(depth)])


def _block_mlp(in_features: int, hidden_features: int, **_: Any) -> nn.Module:
    """timm's `Block` passes act/norm/bias/drop keywords to its `mlp_layer`: UniTok's MLP takes none of them."""
    return _geglu(in_features, hidden_features)


class PatchEmbed(nn.Module):
    """Holds the MbConv `backbone` under the key name timm's `HybridEmbed` gives it (no projection)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D), row-major


class ViTaminEncoder(nn.Module):
    """UniTok's `encoder`: (B, 3, H, W) in [-1, 1] -> (B, H/16 * W/16, D) after the final norm."""

    def __init__(self, v: VitaminConfig) -> None:
        super().__init__()
        from timm.models.vitamin import MbConvStages, VitCfg, VitConvCfg

        cfg = VitCfg(
            embed_dim=(*v.conv_dims, v.embed_dim),
            depths=v.conv_depths,
            stem_width=v.stem_width,
            conv_cfg=VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6),
        )
        self.patch_embed = PatchEmbed(MbConvStages(cfg))
        # frozen zeros in training, but stored and added by the official forward (timm's `_pos_embed`)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, v.embed_dim), requires_grad=False)
        self.blocks = _vit_blocks(v.embed_dim, v.depth, v.num_heads, v.mlp_ratio)
        self.norm = nn.LayerNorm(v.embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        return self.norm(self.blocks(x))


class ProjectionAttention(nn.Module):
    """UniTok's `PlainAttention`: BEiT-style qkv (no k bias) over width w = max(in, out), `heads` heads.

    Down (in > out): heads are AVERAGED to (B, N, w / heads), then adaptive-average-pooled to `out` if that
    differs; up: heads concatenated to (B, N, out). Then `proj` Linear(out, out). `causal` = the first release.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        width = max(in_dim, out_dim)
        self.in_dim, self.out_dim, self.heads, self.causal = in_dim, out_dim, heads, causal
        self.qkv = nn.Linear(in_dim, width * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)
        if self.in_dim > self.out_dim:
            x = x.mean(dim=1)
            if x.shape[-1] != self.out_dim:
                x = F.adaptive_avg_pool1d(x, self.out_dim)
        else:
            x = x.transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


class AttnProjection(nn.Module):
    """`y = proj(norm3(x)) + attn(norm1(x)); y + mlp(norm2(y))` (LayerNorms eps 1e-5, GeGLU hidden 2 * out)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = ProjectionAttention(in_dim, out_dim, heads, causal)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm3 = nn.LayerNorm(in_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = _geglu(out_dim, 2 * out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm3(x)) + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SubCodebook(nn.Module):
    """One sub-codebook: raw rows `codebook.weight` (normalised at use) and the training statistic `vocab_usage`."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(size, dim)
        self.register_buffer("vocab_usage", torch.zeros(size))

    def rows(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight.float(), dim=1)


class MultiCodebookQuantizer(nn.Module):
    """`VectorQuantizerM`: C chunks, each matched by cosine similarity in its own codebook (first max on ties)."""

    def __init__(self, vocab_size: int, vocab_width: int, num_codebooks: int) -> None:
        super().__init__()
        self.num_codebooks = num_codebooks
        self.codebooks = nn.ModuleList(
            SubCodebook(vocab_size // num_codebooks, vocab_width // num_codebooks)
            for _ in range(num_codebooks)
        )

    def f_to_idx(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, vocab_width) -> ids (B, N, C)."""
        chunks = features.float().split(features.shape[-1] // self.num_codebooks, dim=-1)
        ids = [(F.normalize(z, dim=-1) @ cb.rows().T).argmax(dim=-1) for z, cb in zip(chunks, self.codebooks)]
        return torch.stack(ids, dim=-1)

    def idx_to_f(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N, C) -> concatenated unit-norm rows (B, N, vocab_width)."""
        return torch.cat([cb.rows()[ids[..., i]] for i, cb in enumerate(self.codebooks)], dim=-1)


class Upsample2d(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _layernorm2d(ch: int) -> nn.Module:
    from timm.layers import LayerNorm2d

    return LayerNorm2d(ch, eps=1e-6)


def _layernorm2d_gelu(ch: int) -> nn.Module:
    from timm.layers import LayerNormAct2d

    return LayerNormAct2d(ch, eps=1e-6, act_layer=nn.GELU)


class InvMbConvBlock(nn.Module):
    """`InvMbConvLNBlock`: x + f(x), f = LN2d, 1x1 (x4), GELU, [nearest x2 + 3x3 conv], dw 3x3, GELU, 1x1."""

    def __init__(self, in_chs: int, out_chs: int, upsample: bool) -> None:
        super().__init__()
        from timm.layers import make_divisible

        mid = make_divisible(out_chs * 4.0)
        if upsample:
            self.shortcut = Upsample2d(in_chs, out_chs)
        elif in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1)
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = _layernorm2d(in_chs)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1)
        self.up = Upsample2d(mid, mid) if upsample else nn.Identity()
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1_1x1(self.pre_norm(x)))
        y = F.gelu(self.conv2_kxk(self.up(y)))
        return self.shortcut(x) + self.conv3_1x1(y)


class InvStem(nn.Module):
    """Nearest x2 + 3x3 conv, LayerNorm2d + GELU, 3x3 conv to RGB."""

    def __init__(self, in_chs: int, out_chs: int = 3) -> None:
        super().__init__()
        self.conv1 = Upsample2d(in_chs, in_chs)
        self.norm1 = _layernorm2d_gelu(in_chs)
        self.conv2 = nn.Conv2d(in_chs, out_chs, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class ViTaminDecoder(nn.Module):
    """`ViTaminDecoder`: tokens (B, h*w, D) -> ViT blocks, norm -> x2 (up_conv1), x2 (up_conv2), x2 (up_conv3),
    x2 (up_conv4) -> (B, 3, 16h, 16w), raw (nominal range [-1, 1], not clamped)."""

    def __init__(self, v: VitaminConfig) -> None:
        super().__init__()
        d0, d1, d2 = v.decoder_dims
        n2, n3 = v.decoder_conv_depths
        self.blocks = _vit_blocks(v.embed_dim, v.depth, v.num_heads, v.mlp_ratio)
        self.norm = nn.LayerNorm(v.embed_dim, eps=1e-6)
        self.up_conv1 = Upsample2d(d0, d1)
        self.up_conv2 = nn.Sequential(*[InvMbConvBlock(d1, d1, upsample=i == 0) for i in range(n2)])
        self.up_conv3 = nn.Sequential(
            *[InvMbConvBlock(d1 if i == 0 else d2, d2, upsample=i == 0) for i in range(n3)]
        )
        self.up_conv4 = InvStem(d2, 3)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        x = self.norm(self.blocks(x))
        x = x.view(b, grid[0], grid[1], c).permute(0, 3, 1, 2)
        return self.up_conv4(self.up_conv3(self.up_conv2(self.up_conv1(x))))


def build_text_tower(cfg: UniTokConfig) -> nn.Module:
    """open_clip `TextTransformer` as UniTok's `_build_text_tower(embed_dim, text_cfg)` makes it (exact GELU,
    open_clip LayerNorm, causal mask, argmax (EOT) pooling, `text_projection` parameter)."""
    from open_clip.transformer import TextTransformer

    return TextTransformer(
        context_length=cfg.text_context_length,
        vocab_size=cfg.text_vocab_size,
        width=cfg.text_width,
        heads=cfg.text_heads,
        layers=cfg.text_layers,
        output_dim=cfg.embed_dim,
    )


class UniTokModel(nn.Module):
    """The official `UniTok` module with its state-dict names. Images are float (B, 3, H, W) in [-1, 1]."""

    def __init__(self, cfg: UniTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        v, w = cfg.vitamin, cfg.vocab_width
        self.encoder = ViTaminEncoder(v)
        if cfg.quant_proj == "attn":
            self.quant_proj = AttnProjection(v.embed_dim, w, cfg.heads, cfg.causal_projection)
            self.post_quant_proj = AttnProjection(w, v.embed_dim, cfg.heads, cfg.causal_projection)
        else:
            self.quant_proj = nn.Linear(v.embed_dim, w)
            self.post_quant_proj = nn.Linear(w, v.embed_dim)
        self.quantizer = MultiCodebookQuantizer(cfg.vocab_size, w, cfg.num_codebooks)
        self.decoder = ViTaminDecoder(v)
        if cfg.text_tower:
            self.text_encoder = build_text_tower(cfg)
        self.fc_norm = nn.LayerNorm(v.embed_dim, eps=1e-6)
        self.projection = nn.Linear(v.embed_dim, cfg.embed_dim)
        if cfg.text_tower:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # The three stages the official code runs outside autocast, in float32.
    def pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) [-1, 1] -> continuous pre-quantisation features (B, N, vocab_width)."""
        return self.quant_proj(self.encoder(x).float())

    def img_to_idx(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) [-1, 1] -> ids (B, N, C) (upstream returns (B, C, N))."""
        return self.quantizer.f_to_idx(self.pre_quant(x))

    def post_quant(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N, C) -> decoder input = the token features an MLLM consumes (B, N, D), float32."""
        return self.post_quant_proj(self.quantizer.idx_to_f(ids))

    def decode_tokens(self, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        dtype = self.decoder.norm.weight.dtype
        return self.decoder(feats.to(dtype), grid).float()

    def clip_embedding(self, feats: torch.Tensor) -> torch.Tensor:
        """`encode_image` from post-quantisation tokens (B, N, D): mean, fc_norm, projection (un-normalised)."""
        return self.projection(self.fc_norm(feats.mean(dim=1)))


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------

PROBE = "quantizer.codebooks.0.codebook.weight"


def read_release(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict of `trainer.unitok`, stored `args` or None) from a release file; a bare state dict is
    accepted too. Anything else is a `CheckpointError` naming what the file holds."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        sd, args = read_state_dict(path), None
    else:
        obj = _torch_load(path)
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a UniTok checkpoint")
        trainer = obj.get("trainer")
        if isinstance(trainer, Mapping) and isinstance(trainer.get("unitok"), Mapping):
            sd = dict(trainer["unitok"])
        else:
            sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        args = dict(obj["args"]) if isinstance(obj.get("args"), Mapping) else None
        if PROBE not in sd:
            top = sorted(str(k) for k in obj)[:8]
            inner = next(
                (obj[k] for k in ("model", "state_dict", "ema") if isinstance(obj.get(k), Mapping)), None
            )
            modules = sorted({str(k).split(".")[0] for k in (inner or sd)})[:10]
            raise CheckpointError(
                f"{path} is not a UniTok checkpoint: it holds top-level keys {top}"
                + (f" with tensors under {modules}" if modules else "")
                + f", but no trainer.unitok state dict with {PROBE!r}. UniTok releases are "
                "{'args': ..., 'trainer': {'unitok': state_dict}} (FoundationVision/unitok_tokenizer); load this file "
                "with its own family (`tokbench list`)."
            )
        return sd, args
    if PROBE not in sd:
        modules = sorted({k.split(".")[0] for k in sd})[:10]
        raise CheckpointError(
            f"{path} is not a UniTok checkpoint: no key {PROBE!r} (tensors under {modules})"
        )
    return sd, args


def config_from_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The config dict of a checkpoint's stored `Args` (and the fixtures' `custom_vitamin`)."""
    known = {f.name for f in fields(UniTokConfig)}
    out = {k: v for k, v in args.items() if k in known}
    if "custom_vitamin" in args:
        out["vitamin"] = dict(args["custom_vitamin"])
    return out


# ----------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------

RESIZE_RATIO = 1.125


@register_protocol(
    "unitok",
    "UniTok inference.py: short side resized to int(1.125 x target) with PIL BILINEAR (antialiased; torchvision "
    "Resize default on PIL), then centre crop",
    geometry=lambda w, h, size: short_side_crop_geometry(w, h, int(size * RESIZE_RATIO), size),
)
def unitok_resize_crop(img: Image.Image, size: int) -> Image.Image:
    return center_crop(resize_short_side(drop_alpha(img), int(size * RESIZE_RATIO), Image.BILINEAR), size)


# ----------------------------------------------------------------------------------------------------
# Adapter
# ----------------------------------------------------------------------------------------------------


class UniTokTokenizer(ModuleTokenizer):
    """UniTok as a tokbench tokenizer.

    `encode`: (B, 3, H, W) in [0, 1] (sides multiples of 16; the release is trained at 256) -> ids (B, N, C),
    N = (H/16)(W/16) row-major, C codebooks each indexing its own `codebook_size` rows. `decode` -> [0, 1]
    ((x + 1) / 2 of the official clamped output). `semantic(images)` gives the understanding outputs and
    `clip_encoder()` an image-text encoder object for the semantic metrics.
    """

    def __init__(self, model: UniTokModel, spec: TokenizerSpec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.cfg = model.cfg

    @property
    def dtype(self) -> torch.dtype:
        return self.model.encoder.norm.weight.dtype

    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        h, w = (int(s) for s in images.shape[-2:])
        if h % 16 or w % 16:
            s = self.cfg.img_size
            raise TokbenchError(
                f"{self.spec.name} needs image sides divisible by 16 (its total stride), got {h}x{w}; preprocess "
                f"to {s}x{s} with the {self.spec.preprocessing!r} protocol"
            )
        return (images.to(self.device, torch.float32) * 2 - 1).to(self.dtype)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        ids = self.model.img_to_idx(self._to_model(images))
        h, w = (int(s) // 16 for s in images.shape[-2:])
        return Tokens(
            ids=ids,
            grid=(h, w),
            codebook_size=self.cfg.codes_per_codebook,
            meta={"codebooks": self.cfg.num_codebooks, "layout": "ids (B, N, C): token n, codebook c"},
        )

    def _ids(self, tokens: Tokens) -> tuple[torch.Tensor, tuple[int, int]]:
        c, k = self.cfg.num_codebooks, self.cfg.codes_per_codebook
        ids = tokens.ids
        if ids is None or ids.ndim != 3 or ids.shape[-1] != c:
            got = None if ids is None else tuple(ids.shape)
            raise TokbenchError(
                f"{self.spec.name} decodes ids of shape (B, N, {c}) ({c} codebooks); got {got}. Upstream's "
                "(B, C, N) layout is ids.transpose(1, 2)"
            )
        n = ids.shape[1]
        grid = tokens.grid
        if grid is None:
            side = math.isqrt(n)
            grid = (side, side)
        if grid[0] * grid[1] != n:
            raise TokbenchError(f"Tokens.grid {grid} does not match {n} tokens per image")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
            raise TokbenchError(f"token ids must lie in [0, {k}), got [{int(ids.min())}, {int(ids.max())}]")
        return ids.to(self.device).long(), (int(grid[0]), int(grid[1]))

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        ids, grid = self._ids(tokens)
        x = self.model.decode_tokens(self.model.post_quant(ids), grid).clamp(-1, 1)
        return ((x + 1) / 2).clamp(0, 1)

    @torch.inference_mode()
    def semantic(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The understanding outputs of images (B, 3, H, W) in [0, 1]: `embedding` (B, embed_dim), the official
        `encode_image` (un-normalised; computed from the discrete codes), `embedding_normalized`, `post_quant`
        (B, N, D): the token features an MLLM consumes, `pre_quant` (B, N, vocab_width), and `ids` (B, N, C)."""
        pre = self.model.pre_quant(self._to_model(images))
        ids = self.model.quantizer.f_to_idx(pre)
        post = self.model.post_quant(ids)
        emb = self.model.clip_embedding(post).float()
        return {
            "embedding": emb,
            "embedding_normalized": F.normalize(emb, dim=-1),
            "post_quant": post.float(),
            "pre_quant": pre.float(),
            "ids": ids,
        }

    def clip_encoder(self) -> UniTokClipEncoder:
        """This model as an image-text encoder for `zeroshot` / `semantic-similarity` (`encoder=`)."""
        return UniTokClipEncoder(self)

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant", "semantic")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """Float32 features: `pre_quant` (B, N, vocab_width) the quantiser input, `post_quant` (B, N, D)
        post_quant_proj of the multi-codebook codes (the decoder's input, the tokens an MLLM reads),
        `semantic` (B, 1, embed_dim) the CLIP image embedding (un-normalised, from the codes)."""
        check_stage(self, stage)
        out = self.semantic(images)
        return out["embedding"][:, None] if stage == "semantic" else out[stage]


class UniTokClipEncoder:
    """UniTok's CLIP side with the metrics' encoder interface: `encode_image(images [0, 1]) -> (B, E)` and
    `encode_text(texts) -> (N, E)`.

    Images go through UniTok's zero-shot evaluation transform (`utils/eval_acc.py`: open_clip's eval transform
    with mean = std = 0.5: short side to `img_size` with bicubic, centre crop) after a uint8 quantisation (as
    saved files would be), as `OpenClipEncoder` does; texts through open_clip's CLIP BPE tokenizer with the
    model's context length (UniTok's `open_clip.tokenizer.tokenize`).
    """

    def __init__(self, tokenizer: UniTokTokenizer) -> None:
        import open_clip

        if not tokenizer.cfg.text_tower:
            raise TokbenchError(
                f"{tokenizer.spec.name} was built without its text tower (text_tower=False): no text embeddings"
            )
        self.tokenizer = tokenizer
        self.name = tokenizer.spec.name
        size = tokenizer.cfg.img_size
        self.transform = open_clip.image_transform(size, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
        self._text_tokenizer = None

    def to(self, device: torch.device | str) -> UniTokClipEncoder:
        self.tokenizer.to(device)
        return self

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import to_pil_image

        u8 = torch.floor(images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()
        x = torch.stack([self.transform(to_pil_image(im)) for im in u8])  # [-1, 1]
        return self.tokenizer.semantic((x + 1) / 2)["embedding"]

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        from open_clip.tokenizer import tokenize

        model = self.tokenizer.model
        cfg = self.tokenizer.cfg
        tokens = tokenize(texts, context_length=cfg.text_context_length)
        if int(tokens.max()) >= cfg.text_vocab_size:
            raise TokbenchError(
                f"{self.name}'s text tower has a vocabulary of {cfg.text_vocab_size}, smaller than the CLIP BPE "
                f"tokenizer's ({int(tokens.max()) + 1} needed): it cannot embed text (a test-size model?)"
            )
        return model.text_encoder(tokens.to(self.tokenizer.device)).float()

    def describe(self) -> dict[str, Any]:
        s = self.tokenizer.cfg.img_size
        return {
            "encoder": f"UniTok CLIP head of {self.name} (image embedding from its discrete codes)",
            "weights": str(
                self.tokenizer.spec.source.get("checkpoint", self.tokenizer.spec.source.get("weights"))
            ),
            "input": f"uint8-quantised, open_clip eval transform: {s} px bicubic short side + centre crop, "
            "mean/std 0.5 (UniTok utils/eval_acc.py)",
        }


# ----------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------


def build_model(config: Mapping[str, Any] | UniTokConfig, device: str | torch.device = "cpu") -> UniTokModel:
    """An unloaded `UniTokModel` (device="meta" gives the full-size layout without memory)."""
    cfg = config if isinstance(config, UniTokConfig) else UniTokConfig.from_dict(config)
    with torch.device(device):
        return UniTokModel(cfg)


def _text_key(key: str) -> bool:
    return key.startswith("text_encoder.") or key == "logit_scale"


def _build(b: Build) -> UniTokTokenizer:
    config = dict(b.config)
    if b.random_weights:
        cfg = UniTokConfig.from_dict(config)
    else:
        path = b.checkpoint("unitok_tokenizer.pth (config is read from its stored args, or given)")
        sd, args = read_release(path)
        # the stored Args, then the variant row's settings (causal attention is not stored) and the user's
        merged = config_from_args(args) if args is not None else {}
        user = flatten_config(config)
        if "vitamin" in user or user.get("model", merged.get("model")) != merged.get("model"):
            # sizes given (or another model named) by the user replace the stored ones
            merged.pop("vitamin", None)
        merged.update(user)
        cfg = UniTokConfig.from_dict(merged)

    def load(model: torch.nn.Module, path: Path) -> None:
        load_strict(model, sd, source=f"UniTok checkpoint {path} (trainer.unitok)",
                    ignore_unexpected=None if cfg.text_tower else _text_key)

    model = b.model(lambda: UniTokModel(cfg), load, "unitok_tokenizer.pth",
                    checkpoint=None if b.random_weights else path)
    if b.random_weights and cfg.text_tower:  # a non-persistent buffer: meta gave it zeros; rebuild the causal mask
        model.text_encoder.attn_mask = model.text_encoder.build_causal_mask()
    model.encoder.to(b.torch_dtype)
    model.decoder.to(b.torch_dtype)
    grid = cfg.grid
    b.notes.append(
        f"{cfg.num_codebooks} codebooks x {cfg.codes_per_codebook} codes per token (ids (B, N, C)); "
        f"{'causal' if cfg.causal_projection else 'full'} attention in the projections ({cfg.heads} heads); "
        "projections and quantiser in float32"
        + (f"; trained with resize_ratio {cfg.resize_ratio} (the `unitok` protocol uses the release's {RESIZE_RATIO})"
           if cfg.resize_ratio != RESIZE_RATIO else "")
    )
    spec = b.spec(
        resolution=cfg.img_size,
        tokens_per_image=grid * grid,
        codebook_size=cfg.codes_per_codebook,
        bits_per_token=cfg.num_codebooks * math.log2(cfg.codes_per_codebook),
        normalisation="[-1, 1]",
        preprocessing=b.option("preprocessing") or "unitok",
    )
    return UniTokTokenizer(model, spec)


# ----------------------------------------------------------------------------------------------------
# Released variants
# ----------------------------------------------------------------------------------------------------

PAPER = "Ma et al., UniTok: A Unified Tokenizer for Visual Generation and Understanding, arXiv 2502.20321"
README = (
    "UniTok GitHub README @bb8012e (Performance / Model Weights tables): 256 tokens (16x16x8 codes); rFID on the "
    "ImageNet 256x256 reference batch, zero-shot on ImageNet-val with UniTok's own CLIP head"
)

_CURRENT = register_artifact(
    Artifact(
        name="unitok-large",
        repo_id="FoundationVision/unitok_tokenizer",
        filename="unitok_tokenizer.pth",
        licence="MIT",
        used_by="unitok-large",
    )
)
_FIRST = register_artifact(
    Artifact(
        name="unitok-large-causal",
        repo_id="FoundationVision/UniTok",
        filename="unitok_tokenizer.pth",
        licence="MIT",
        used_by="unitok-large-causal",
    )
)

VARIANTS: tuple[Variant, ...] = (
    Variant(
        name="unitok-large",
        family="unitok",
        config={"causal_projection": False},
        weights=_CURRENT,
        resolution=256,
        description=(
            "UniTok-Large (2025-04-02 release, current code): full attention in the projections; 256 px, 16x16 "
            "tokens x 8 codebooks of 4096; CLIP embedding 768-d with its text tower"
        ),
        paper=PAPER,
        published={"rfid_torch_fidelity": 0.41, "zeroshot_unitok_large_top1": 70.8},
        published_source=README,
    ),
    Variant(
        name="unitok-large-causal",
        family="unitok",
        config={"causal_projection": True},
        weights=_FIRST,
        resolution=256,
        description=(
            "UniTok-Large first release (2025-02-27): CAUSAL attention in the projections, same keys as unitok-large; "
            "linked at FoundationVision/UniTok until 2025-03-03, then under the unitok_tokenizer repo until the "
            "2025-04-02 replacement (superseded; the file may no longer be on the Hub)"
        ),
        paper=PAPER,
        published={"rfid_torch_fidelity": 0.39, "zeroshot_unitok_large_causal_top1": 70.5},
        published_source=(
            "UniTok GitHub README before the 2025-04-02 update (@74b6f3f: Performance and Model Weights tables), "
            "ImageNet 256x256 reference batch (rFID) and ImageNet-val (zero-shot)"
        ),
    ),
)

FAMILY = Family(
    name="unitok",
    build=_build,
    variants=VARIANTS,
    description="UniTok unified tokenizer: multi-codebook VQ (8 x 4096) with a CLIP-style image-text head",
    default_variant="unitok-large",
    build_options={"dtype": (DType, "float32"), "preprocessing": str},
    code="https://github.com/FoundationVision/UniTok (models/unitok.py @ bb8012e)",
    packages=("open_clip_torch", "timm"),
)

__all__ = [
    "FAMILY",
    "MultiCodebookQuantizer",
    "UniTokClipEncoder",
    "UniTokConfig",
    "UniTokModel",
    "UniTokTokenizer",
    "build_model",
    "read_release",
]
