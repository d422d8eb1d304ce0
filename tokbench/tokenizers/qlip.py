"""QLIP (Zhao et al. 2025): a binary-spherical-quantisation (BSQ) ViT autoencoder trained with a CLIP objective, so
one model gives 28-bit image tokens, reconstructions, and zero-shot image-text embeddings with its own text tower.

Written from the official code, github.com/NVlabs/QLIP @ cf86fcc5131c2bb008c349fe9456ccbd1e0e1619:
`QLIP/modeling_qlip.py` (`QLIPModel`, `QLIPVisionTransformer`, `QLIPVisionTransformerDecoder`,
`QLIPTextTransformer`, `QLIPAttention`, `QLIPSwiGLU`, `QLIPMLP`), `QLIP/configuration_qlip.py` (the config
defaults), `QLIP/bsq.py` (`BinarySphericalQuantizer`), `QLIP/rope.py` (`VisionRotaryEmbeddingFast`) and the
notebook `QLIP/example.ipynb` (pre- and post-processing, text tokenisation). The Hugging Face releases ship the same
files as remote code.

Architecture (state-dict names are the releases' bare `QLIPModel.state_dict()` names):

* `vision_model`: EVA02-style ViT: patch conv (with bias), class token, learned positions, pre-LN layers with
  optional sub-LN (`inner_attn_ln` before `out_proj`, `ffn_ln` inside the MLP), SwiGLU, no k bias, and a 2-D
  rotary embedding on the patch tokens (not the class token). The class token -> `post_layernorm` ->
  `visual_projection` is the CLIP image embedding (from the CONTINUOUS encoder, not from the codes). The patch
  tokens -> `quant_embed` (Linear, GELU, Linear to K) -> L2 normalise = the quantiser input (`pre_quant`);
* BSQ: bit c = [pre_quant_c > 0]; the code vector is (2 bits - 1) / sqrt(K); `quant_embed_post` (Linear, GELU,
  Linear) maps it to what the decoder consumes (`post_quant`);
* `vision_decoder`: the same kind of ViT (rope on every token) over `position_embeddings + post_quant`, then
  `norm`, `ffn` (Linear + Tanh), `conv_out` (Linear to 3 p^2) and a pixel-shuffle to (B, 3, H, W) in the
  CLIP-normalised pixel space;
* `text_model`: a CLIP text transformer (causal, pooled at the first end-of-text token) + `text_projection`.

Token ids. The id of a token is its K bits read most-significant first, bit of channel 0 = 2^(K-1) (upstream's
`basis`). Upstream `BinarySphericalQuantizer.codes_to_indexes` sums those powers of two in FLOAT32, so every id
>= 2^24 comes back rounded to the float32 grid (off by up to +-8 at K = 28) and `get_codebook_entry` then decodes
wrong bits. tokbench returns the EXACT int64 ids, computed from the bits with integer shifts (any K <= 63);
`encode(..., ids="upstream")` reproduces upstream's rounded ids for comparison only (decoding them gives what
upstream gives: wrong bits where the id is wrong). `ids="bits"` gives the bits themselves (B, N, K) (K binary
codebooks) and `ids="groups"` upstream's group ids (B, N, K / group_size), the LlamaGen-style factorisation; every
form decodes. The code length is N * K bits per image whatever the form.

Not taken from a library, and why:
* the towers: transformers' CLIP classes have no sub-LN, SwiGLU, rotary embedding or k-bias switch, and the
  official classes do not import under transformers 5.x (`transformers.onnx` is gone), so the layers are written
  here (pre-LN attention + MLP, a few lines each); attention runs through `F.scaled_dot_product_attention`;
* the text tokeniser: the official notebook calls transformers' `CLIPTokenizer` on the release's `vocab.json` /
  `merges.txt`, which are the OpenAI CLIP BPE. tokbench calls open_clip's `tokenize` (the same BPE and vocabulary,
  shipped with open_clip; the fixture's caption ids match it exactly) because transformers 5.x's `CLIPTokenizer`
  built from those two files assigns the special tokens new ids (49408 / 49409 instead of 49406 / 49407). The
  pooled text embedding is taken at the first end-of-text token under a causal mask, so open_clip's zero padding
  (upstream pads with end-of-text) does not change it.

Preprocessing: the releases' `CLIPImageProcessor` (OpenAI-CLIP mean/std, PIL bicubic short-side resize, centre
crop with floor offsets) is the protocol `qlip`; `encode` takes [0, 1] images at `image_size` and normalises them.
`decode` applies the notebook's post-processing: x * std + mean, clamped to [0, 1].

Weights: CC-BY-NC-4.0 (non-commercial; the Hugging Face model cards), code under the NVIDIA Source Code
License-NC.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import CheckpointError, describe_checkpoint, load_strict, read_state_dict
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, check_images
from ..options import DType
from ..protocols import (
    Geometry,
    drop_alpha,
    register_protocol,
    resize_short_side,
    scale,
    shift,
    short_side_size,
)
from ..registry import Family, Variant
from ..weights import Artifact, register_artifact, resolve

FAMILY_NAME = "qlip"
CODE = "https://github.com/NVlabs/QLIP @ cf86fcc5131c2bb008c349fe9456ccbd1e0e1619 (QLIP/modeling_qlip.py, bsq.py, rope.py)"
HINT = "the release's model.safetensors (with its config.json beside it or passed as config=)"

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ----------------------------------------------------------------------------------------------------
# Config: the release's config.json (QLIPConfig kwargs, a diff against configuration_qlip.py's defaults)
# ----------------------------------------------------------------------------------------------------

# transformers.PretrainedConfig attributes that save_pretrained may write and that do not shape the model.
HF_GENERIC_KEYS = frozenset(
    """return_dict output_hidden_states output_attentions torchscript torch_dtype dtype use_bfloat16 tf_legacy_loss
    pruned_heads tie_word_embeddings chunk_size_feed_forward is_encoder_decoder is_decoder cross_attention_hidden_size
    add_cross_attention tie_encoder_decoder max_length min_length do_sample early_stopping num_beams num_beam_groups
    diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores return_dict_in_generate
    forced_bos_token_id forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
    begin_suppress_tokens architectures finetuning_task id2label label2id num_labels tokenizer_class prefix
    bos_token_id pad_token_id sep_token_id decoder_start_token_id task_specific_params problem_type
    transformers_version model_type auto_map initializer_factor initializer_range attention_dropout dropout
    projection_dim post_layernorm""".split()
)
# BinarySphericalQuantizer keywords that only shape its training losses.
BSQ_TRAINING_KEYS = frozenset({"beta", "gamma_0", "gamma_1", "soft_entropy", "persample_entropy_compute",
                               "inv_temperature"})  # fmt: skip

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class BSQConfig:
    """`BinarySphericalQuantizer` keywords that shape inference: `embed_dim` K (bits per token), `group_size`
    (bits per group id), `l2_norm` (code vectors scaled by 1 / sqrt(K)), `input_format` (QLIP: "blc")."""

    embed_dim: int
    group_size: int = 9
    l2_norm: bool = True
    input_format: str = "blc"


@dataclass(frozen=True)
class TowerConfig:
    """One tower of `QLIPConfig` (`text_config`, `vision_config` or `decoder_config`), defaults as
    configuration_qlip.py. `rope_pt_seq_len` and `rope_theta` are the sizes `QLIPVisionTransformer` hard-codes for
    its `VisionRotaryEmbeddingFast` (16 and 10,000): positions i of a g x g grid are scaled to i * 16 / g."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    q_bias: bool = True
    k_bias: bool = True
    v_bias: bool = True
    subln: bool = False
    swiglu: bool = False
    rope: bool = False
    # image towers
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    rope_pt_seq_len: int = 16
    rope_theta: float = 10000.0
    # vision tower: the quantiser and its projections
    quantizer: str = "none"
    quantizer_l2_norm: bool = False
    quantizer_embed_type: str = "identity"
    hidden_size_post_q: int | None = None
    quantizer_cfg: BSQConfig | None = None
    # text tower
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    eos_token_id: int = 49407

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def post_q(self) -> int:
        return self.hidden_size if self.hidden_size_post_q is None else int(self.hidden_size_post_q)


TEXT_DEFAULTS = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}


@dataclass(frozen=True)
class QLIPConfig:
    """`QLIPConfig`: the three towers and the CLIP head. `vision_projection_bias` and `text_projection_bias` have
    no default upstream (`QLIPModel` reads them, `QLIPConfig` does not define them): a config must give them."""

    text: TowerConfig
    vision: TowerConfig
    decoder: TowerConfig
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    vision_projection_bias: bool = True
    text_projection_bias: bool = False

    @property
    def bits(self) -> int:
        """K: bits per token (the BSQ dimension)."""
        return self.vision.quantizer_cfg.embed_dim

    @property
    def groups(self) -> int:
        return self.bits // self.vision.quantizer_cfg.group_size

    @property
    def grid(self) -> int:
        return self.vision.grid


def _tower(name: str, raw: Any, defaults: Mapping[str, Any]) -> TowerConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TokbenchError(f"QLIP config {name} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(TowerConfig)}
    given = [k for k in raw if k not in HF_GENERIC_KEYS and not k.startswith("_")]
    refuse_unknown(f"QLIP {name} keys", given, known)
    args = {**defaults, **{k: v for k, v in raw.items() if k in known}}
    q = args.get("quantizer_cfg")
    if isinstance(q, Mapping) and q:
        qk = {f.name for f in fields(BSQConfig)}
        refuse_unknown(f"QLIP {name} quantizer_cfg keys", set(q) - BSQ_TRAINING_KEYS, qk,
                       "(training-only keys are ignored)")
        if "embed_dim" not in q:
            raise TokbenchError(f"the QLIP {name} quantizer_cfg needs embed_dim (bits per token), got {dict(q)}")
        args["quantizer_cfg"] = BSQConfig(**{k: v for k, v in q.items() if k in qk})
    else:
        args["quantizer_cfg"] = None
    out = TowerConfig(**args)
    if out.hidden_act not in ACTIVATIONS:
        raise TokbenchError(f"QLIP {name} hidden_act {out.hidden_act!r} is not supported; choose one "
                            f"of {sorted(ACTIVATIONS)}")
    return out


def qlip_config(config: Mapping[str, Any]) -> QLIPConfig:
    """A `QLIPConfig` from the release's config.json (or the same keys as a dict). `*_config_dict` entries (older
    transformers layouts) override `*_config` key by key, as `QLIPConfig.__init__` does."""
    cfg = dict(config or {})
    towers = {}
    for name in ("text_config", "vision_config", "decoder_config"):
        base = dict(cfg.pop(name, None) or {})
        base.update(cfg.pop(f"{name}_dict", None) or {})
        towers[name] = base
    top = {f.name for f in fields(QLIPConfig)} - {"text", "vision", "decoder"}
    refuse_unknown("QLIP config keys", [k for k in cfg if k not in HF_GENERIC_KEYS and not k.startswith("_")],
                   top | set(towers), "(and transformers' generic config keys)")
    missing = [k for k in ("vision_projection_bias", "text_projection_bias") if k not in cfg]
    if missing:
        raise TokbenchError(
            f"the QLIP config lacks {missing}: QLIPModel reads them but QLIPConfig has no default; the releases' "
            "config.json give them (pass that file as config=)"
        )
    out = QLIPConfig(
        text=_tower("text_config", towers["text_config"], TEXT_DEFAULTS),
        vision=_tower("vision_config", towers["vision_config"], {}),
        decoder=_tower("decoder_config", towers["decoder_config"], {}),
        **{k: cfg[k] for k in top if k in cfg},
    )
    check_config(out)
    return out


def check_config(cfg: QLIPConfig) -> None:
    """What the official model would fail on (or silently mis-shape) later, said up front."""
    v, d = cfg.vision, cfg.decoder
    for name, t in (("text_config", cfg.text), ("vision_config", v), ("decoder_config", d)):
        if t.hidden_size % t.num_attention_heads:
            raise TokbenchError(f"QLIP {name}: hidden_size {t.hidden_size} is not divisible by "
                                f"num_attention_heads {t.num_attention_heads}")
        if t.rope and t.head_dim % 4:
            raise TokbenchError(f"QLIP {name}: the 2-D rotary embedding needs a head size divisible by 4, got "
                                f"{t.head_dim}")
    if v.quantizer != "bsq" or v.quantizer_cfg is None:
        raise TokbenchError(
            f"QLIP vision_config.quantizer is {v.quantizer!r}: only 'bsq' (with quantizer_cfg.embed_dim) makes a "
            "tokenizer; without a quantizer the model has no tokens"
        )
    q = v.quantizer_cfg
    if q.embed_dim % q.group_size:
        raise TokbenchError(f"QLIP quantizer_cfg: embed_dim {q.embed_dim} is not divisible by group_size "
                            f"{q.group_size}")
    if q.input_format != "blc":
        raise TokbenchError(f"QLIP quantizer_cfg.input_format must be 'blc' (tokens are (B, L, C)), got "
                            f"{q.input_format!r}")
    for name, t in (("vision_config", v), ("decoder_config", d)):
        if t.image_size % t.patch_size:
            raise TokbenchError(f"QLIP {name}: image_size {t.image_size} is not a multiple of patch_size "
                                f"{t.patch_size}")
    if d.grid != v.grid:
        raise TokbenchError(f"QLIP decoder grid {d.grid}x{d.grid} differs from the encoder's {v.grid}x{v.grid}")
    mlp = v.quantizer_embed_type == "mlp"
    if not mlp and v.hidden_size != q.embed_dim:
        raise TokbenchError(f"QLIP without quant_embed ('{v.quantizer_embed_type}') needs hidden_size == "
                            f"embed_dim, got {v.hidden_size} and {q.embed_dim}")
    post = v.post_q if mlp else q.embed_dim
    if post != d.hidden_size:
        raise TokbenchError(f"QLIP decoder hidden_size {d.hidden_size} must equal what the quantiser hands it "
                            f"({post})")


# ----------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------


def rope_tables(head_dim: int, grid: int, pt_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len, ft_seq_len=grid)` ('lang' frequencies), float32,
    op for op as upstream so the tables equal the stored ones bit for bit: (grid^2, head_dim) cos and sin,
    rows of token (i, j) = [frequencies of row i, frequencies of column j], each frequency repeated twice."""
    dim = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, device="cpu")[: dim // 2].float() / dim))
    t = torch.arange(grid, device="cpu") / grid * pt_seq_len
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (grid, dim)
    both = torch.cat((f[:, None, :].expand(grid, grid, dim), f[None, :, :].expand(grid, grid, dim)), dim=-1)
    return both.cos().reshape(grid * grid, -1), both.sin().reshape(grid * grid, -1)


class Rotary(nn.Module):
    """The 2-D rotary embedding shared by every layer of a tower (upstream registers the one module in each layer;
    the releases store its tables once, under `<tower>.rope.freqs_{cos,sin}`)."""

    def __init__(self, head_dim: int, grid: int, pt_seq_len: int, theta: float) -> None:
        super().__init__()
        self.args = (head_dim, grid, pt_seq_len, theta)
        n = grid * grid
        self.register_buffer("freqs_cos", torch.empty(n, head_dim))
        self.register_buffer("freqs_sin", torch.empty(n, head_dim))
        if not self.freqs_cos.is_meta:
            self.reset()

    def reset(self) -> None:
        """Recompute the tables from the config (after a meta-device build)."""
        cos, sin = rope_tables(*self.args)
        device = self.freqs_cos.device if not self.freqs_cos.is_meta else torch.device("cpu")
        self.freqs_cos = cos.to(device, self.freqs_cos.dtype)
        self.freqs_sin = sin.to(device, self.freqs_sin.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # interleaved-pair rotation (rope.py's rotate_half): (x0, x1) -> (-x1, x0)
        pairs = t.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return t * self.freqs_cos + rotated * self.freqs_sin


class Attention(nn.Module):
    """`QLIPAttention`: q scaled by head_dim^-0.5 before the rotary embedding (tokens from `rope_shift` on),
    optional sub-LN (`inner_attn_ln`) before `out_proj`."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        d = c.hidden_size
        self.heads = c.num_attention_heads
        self.scale = c.head_dim**-0.5
        self.k_proj = nn.Linear(d, d, bias=c.k_bias)
        self.v_proj = nn.Linear(d, d, bias=c.v_bias)
        self.q_proj = nn.Linear(d, d, bias=c.q_bias)
        self.inner_attn_ln = nn.LayerNorm(d, eps=c.layer_norm_eps) if c.subln else nn.Identity()
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, rope: Rotary | None, rope_shift: int, causal: bool) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(x) * self.scale), heads(self.k_proj(x)), heads(self.v_proj(x))
        if rope is not None:
            s = rope_shift
            q = torch.cat((q[:, :, :s], rope(q[:, :, s:])), dim=2).to(v.dtype)
            k = torch.cat((k[:, :, :s], rope(k[:, :, s:])), dim=2).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1.0)  # q carries the scale
        return self.out_proj(self.inner_attn_ln(out.transpose(1, 2).reshape(b, n, d)))


class SwiGLU(nn.Module):
    """`QLIPSwiGLU`: w3(ffn_ln(silu(w1 x) * w2 x)), ffn_ln only with sub-LN."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.w2 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.w3 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.ffn_ln = nn.LayerNorm(c.intermediate_size, eps=c.layer_norm_eps) if c.subln else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class MLP(nn.Module):
    """`QLIPMLP`: fc2(ffn_ln(act(fc1 x))), ffn_ln only with sub-LN."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[c.hidden_act]
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.ffn_ln = nn.LayerNorm(c.intermediate_size, eps=c.layer_norm_eps) if c.subln else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_ln(self.act(self.fc1(x))))


class EncoderLayer(nn.Module):
    """`QLIPEncoderLayer`: pre-LN attention and MLP, each with a residual."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = SwiGLU(c) if c.swiglu else MLP(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, rope: Rotary | None, rope_shift: int, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), rope, rope_shift, causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_hidden_layers))

    def forward(self, x: torch.Tensor, rope: Rotary | None = None, rope_shift: int = 0,
                causal: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, rope, rope_shift, causal)
        return x


class TextEmbeddings(nn.Module):
    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = nn.Embedding(c.max_position_embeddings, c.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[-1]]


class TextTransformer(nn.Module):
    """`QLIPTextTransformer`: causal CLIP text encoder; the pooled output is `final_layer_norm` at the FIRST
    end-of-text token (at the highest id for the legacy `eos_token_id == 2` configs, as upstream)."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.cfg = c
        self.embeddings = TextEmbeddings(c)
        self.encoder = Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.final_layer_norm(self.encoder(self.embeddings(ids), causal=True))
        if self.cfg.eos_token_id == 2:
            where = ids.to(torch.int).argmax(dim=-1)
        else:
            where = (ids == self.cfg.eos_token_id).int().argmax(dim=-1)
        return h[torch.arange(h.shape[0], device=h.device), where]


class VisionEmbeddings(nn.Module):
    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(c.hidden_size))
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(c.grid**2 + 1, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat((cls, patches), dim=1) + self.position_embedding.weight


def _mlp_projection(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    from collections import OrderedDict

    return nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_in, d_hidden)), ("gelu", nn.GELU()),
                                      ("c_proj", nn.Linear(d_hidden, d_out))]))  # fmt: skip


class VisionTransformer(nn.Module):
    """`QLIPVisionTransformer` without the quantiser (which has no weights; see `BSQ`)."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.cfg = c
        self.embeddings = VisionEmbeddings(c)
        self.rope = Rotary(c.head_dim, c.grid, c.rope_pt_seq_len, c.rope_theta) if c.rope else None
        self.encoder = Encoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)  # always applied upstream
        k = c.quantizer_cfg.embed_dim
        if c.quantizer_embed_type == "mlp":
            self.quant_embed = _mlp_projection(c.hidden_size, c.hidden_size, k)
            self.quant_embed_post = _mlp_projection(k, c.post_q, c.post_q)
        else:
            self.quant_embed = nn.Identity()
            self.quant_embed_post = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised pixels (B, 3, S, S) -> last hidden states (B, 1 + N, D): class token first."""
        return self.encoder(self.embeddings(x), self.rope, rope_shift=1)

    def pre_quant(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) -> the quantiser input (B, N, K), float32 (L2-normalised when configured)."""
        h = self.quant_embed(patches).float()
        return F.normalize(h, dim=-1) if self.cfg.quantizer_l2_norm else h


class VisionDecoder(nn.Module):
    """`QLIPVisionTransformerDecoder`: (B, N, D) latents -> (B, 3, g p, g p) in CLIP-normalised pixel space."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.cfg = c
        self.position_embeddings = nn.Parameter(torch.zeros(1, c.grid**2, c.hidden_size))
        self.rope = Rotary(c.head_dim, c.grid, c.rope_pt_seq_len, c.rope_theta) if c.rope else None
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.encoder = Encoder(c)
        self.ffn = nn.Sequential(nn.Linear(c.hidden_size, c.intermediate_size), nn.Tanh())
        self.conv_out = nn.Linear(c.intermediate_size, 3 * c.patch_size**2)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.position_embeddings + latents, self.rope, rope_shift=0)
        x = self.conv_out(self.ffn(self.norm(x)))
        b, g, p = x.shape[0], self.cfg.grid, self.cfg.patch_size
        # "b (hh ww) (c sh sw) -> b c (hh sh) (ww sw)"
        return x.view(b, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, g * p, g * p)


class BSQ:
    """Binary spherical quantisation of (…, K) vectors, in integers where upstream uses floats.

    bits = [z > 0]; code vector = (2 bits - 1) * (1 / sqrt(K) if l2_norm else 1); id = bits read MSB first
    (channel 0 = 2^(K-1)); group g's id = its `group_size` bits read the same way.
    """

    def __init__(self, q: BSQConfig) -> None:
        self.k, self.group_size, self.l2_norm = q.embed_dim, q.group_size, q.l2_norm

    def bits(self, z: torch.Tensor) -> torch.Tensor:
        return (z > 0).long()

    def codes(self, bits: torch.Tensor) -> torch.Tensor:
        c = bits.float() * 2 - 1
        return c / math.sqrt(self.k) if self.l2_norm else c

    def _shifts(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.arange(n - 1, -1, -1, device=device)

    def ids(self, bits: torch.Tensor) -> torch.Tensor:
        """Exact int64 ids (…,) of bits (…, K); K <= 63."""
        if self.k > 63:
            raise TokbenchError(f"integer ids of {self.k} bits do not fit int64; use ids='bits' or 'groups'")
        return (bits.long() << self._shifts(self.k, bits.device)).sum(-1)

    def bits_of_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids.long().unsqueeze(-1) >> self._shifts(self.k, ids.device)) & 1

    def group_ids(self, bits: torch.Tensor) -> torch.Tensor:
        g = bits.long().unflatten(-1, (-1, self.group_size))
        return (g << self._shifts(self.group_size, bits.device)).sum(-1)

    def bits_of_groups(self, groups: torch.Tensor) -> torch.Tensor:
        return ((groups.long().unsqueeze(-1) >> self._shifts(self.group_size, groups.device)) & 1).flatten(-2)

    def upstream_ids(self, bits: torch.Tensor) -> torch.Tensor:
        """What upstream `codes_to_indexes` returns: the powers of two summed in float32 (ids >= 2^24 rounded)."""
        basis = 2 ** self._shifts(self.k, bits.device)
        zhat = bits.int() * 2 - 1
        return ((zhat + 1) / 2 * basis).sum(dim=-1).to(torch.int64)


class QLIPModel(nn.Module):
    """The official `QLIPModel`'s modules under the releases' names. `text_tower=False` leaves the text tower
    (`text_model`, `text_projection`, `logit_scale`) out, for tokenizer-only use."""

    def __init__(self, cfg: QLIPConfig, text_tower: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.has_text = text_tower
        if text_tower:
            self.text_model = TextTransformer(cfg.text)
        self.vision_model = VisionTransformer(cfg.vision)
        self.vision_decoder = VisionDecoder(cfg.decoder)
        self.visual_projection = nn.Linear(cfg.vision.hidden_size, cfg.projection_dim,
                                           bias=cfg.vision_projection_bias)
        if text_tower:
            self.text_projection = nn.Linear(cfg.text.hidden_size, cfg.projection_dim, bias=cfg.text_projection_bias)
            self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init_value)))
        self.bsq = BSQ(cfg.vision.quantizer_cfg)

    def reset_rope(self) -> None:
        for m in self.modules():
            if isinstance(m, Rotary):
                m.reset()

    def image_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """`get_image_features` from the vision tower's hidden states: projection of the post-LN class token."""
        return self.visual_projection(self.vision_model.post_layernorm(hidden[:, 0]))

    def post_quant(self, bits: torch.Tensor) -> torch.Tensor:
        """Bits (B, N, K) -> what the decoder consumes: quant_embed_post of the code vectors (B, N, D)."""
        dtype = self.vision_decoder.norm.weight.dtype
        return self.vision_model.quant_embed_post(self.bsq.codes(bits).to(dtype))

    def decode_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """Bits (B, N, K) -> reconstruction (B, 3, H, W) in CLIP-normalised space (raw, not clamped)."""
        return self.vision_decoder(self.post_quant(bits)).float()

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        """`get_text_features`: (T, L) token ids -> (T, projection_dim), not normalised."""
        if not self.has_text:
            raise TokbenchError("this QLIP model was built without its text tower (text_tower=False)")
        return self.text_projection(self.text_model(ids))


# ----------------------------------------------------------------------------------------------------
# Preprocessing: the releases' CLIPImageProcessor
# ----------------------------------------------------------------------------------------------------


def _floor_crop_offsets(w: int, h: int, size: int) -> tuple[int, int]:
    # transformers' center_crop: (orig - crop) // 2 (torchvision rounds instead; they differ on odd margins)
    return (w - size) // 2, (h - size) // 2


def qlip_geometry(w: int, h: int, size: int) -> Geometry:
    nw, nh = short_side_size(w, h, size)
    left, top = _floor_crop_offsets(nw, nh, size)
    return scale(w, h, nw, nh).then(shift(-left, -top))


@register_protocol(
    "qlip",
    "QLIP's CLIPImageProcessor (the releases' preprocessor_config.json): RGB, short side to the target with PIL "
    "BICUBIC (antialiased; long side int(target * long / short)), centre crop with floor offsets (transformers' "
    "center_crop); /255 and OpenAI-CLIP mean/std are applied inside the tokenizer",
    geometry=qlip_geometry,
)
def qlip_preprocess(img: Image.Image, size: int) -> Image.Image:
    img = resize_short_side(drop_alpha(img), size, Image.BICUBIC)
    left, top = _floor_crop_offsets(*img.size, size)
    return img.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class Preprocessor:
    """The normalisation of the release's preprocessor_config.json (OpenAI CLIP's unless the file says otherwise)."""

    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    source: str = "OpenAI-CLIP mean/std (default; no preprocessor_config.json found)"
    notes: tuple[str, ...] = field(default=())


def read_preprocessor(path: Path | None, image_size: int) -> Preprocessor:
    if path is None:
        return Preprocessor()
    d = json.loads(path.read_text())
    notes = []
    size, crop = d.get("size"), d.get("crop_size")
    size = size.get("shortest_edge") if isinstance(size, Mapping) else size
    crop = crop.get("height") if isinstance(crop, Mapping) else crop
    if (size, crop) != (image_size, image_size) or int(d.get("resample", 3)) != 3:
        notes.append(f"{path.name} says size {size}, crop {crop}, resample {d.get('resample')}; the `qlip` protocol "
                     f"is bicubic short side + crop at the model's {image_size}")
    if d.get("do_normalize", True) is False:
        raise TokbenchError(f"{path} switches normalisation off; QLIP releases normalise with mean/std")
    return Preprocessor(tuple(d.get("image_mean", OPENAI_CLIP_MEAN)), tuple(d.get("image_std", OPENAI_CLIP_STD)),
                        f"mean/std of {path.name}", tuple(notes))


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------

IdsForm = Literal["exact", "bits", "groups", "upstream"]


class QLIPTokenizer(ModuleTokenizer):
    """QLIP as a tokbench tokenizer.

    `encode(images)`: (B, 3, S, S) in [0, 1] at the model's `image_size` S (its position tables are fixed) ->
    `ids` (B, N) int64, the exact K-bit ids (MSB = channel 0), N = (S / patch)^2 row-major; option `ids`:
    `"exact"` (default), `"bits"` (B, N, K) in {0, 1}, `"groups"` (B, N, K / group_size), or `"upstream"`: the
    float32-rounded ids upstream returns (for comparison; lossy above 2^24). Every form decodes; each costs N * K
    bits per image. `decode` -> [0, 1] (x * std + mean, clamped: the official notebook). `semantic(images)` and
    `clip_encoder()` give the CLIP side; `features(images, stage)` the token features.
    """

    feature_stages = ("pre_quant", "post_quant", "semantic")

    def __init__(self, model: QLIPModel, spec: TokenizerSpec, dtype: torch.dtype, pre: Preprocessor) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False).to(dtype)
        self.spec = spec
        self.cfg = model.cfg
        self.dtype = dtype
        self.preprocessor = pre
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)

    # -- the model's input and output range ------------------------------------------------------------

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at the model's size -> CLIP-normalised model input."""
        check_images(images)
        h, w = (int(s) for s in images.shape[-2:])
        s = self.cfg.vision.image_size
        if (h, w) != (s, s):
            raise TokbenchError(
                f"{self.spec.name} encodes {s}x{s} images only (its position and rotary tables are fixed at "
                f"{self.cfg.grid}x{self.cfg.grid} patches of {self.cfg.vision.patch_size}), got {h}x{w}; preprocess "
                f"with the {self.spec.preprocessing!r} protocol at {s}"
            )
        x = images.to(self.device, torch.float32)
        return ((x - self.mean.to(x.device)) / self.std.to(x.device)).to(self.dtype)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def _hidden(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(self.normalise(images))

    def _bits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.model.vision_model.pre_quant(hidden[:, 1:])
        return pre, self.model.bsq.bits(pre)

    # -- tokens ----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, ids: IdsForm = "exact") -> Tokens:
        _, bits = self._bits(self._hidden(images))
        bsq, k, g = self.model.bsq, self.cfg.bits, self.cfg.grid
        meta = {"ids": ids, "bits_per_token": k}
        if ids == "exact":
            out, size = bsq.ids(bits), 2**k
            meta["layout"] = f"ids (B, N): the {k} bits read MSB first (channel 0 = 2^{k - 1})"
        elif ids == "bits":
            out, size = bits, 2
            meta["layout"] = f"bits (B, N, {k}) in {{0, 1}}, channel order"
        elif ids == "groups":
            out, size = bsq.group_ids(bits), 2**bsq.group_size
            meta["layout"] = f"group ids (B, N, {self.cfg.groups}) of {bsq.group_size} bits each, MSB first"
        elif ids == "upstream":
            out, size = bsq.upstream_ids(bits), 2**k
            meta["layout"] = "upstream's float32-summed ids (B, N): wrong (rounded) wherever the id >= 2^24"
        else:
            raise TokbenchError(f"{self.spec.name}.encode ids must be exact, bits, groups or upstream, got {ids!r}")
        return Tokens(ids=out, grid=(g, g), codebook_size=size, meta=meta)

    def bits_of(self, tokens: Tokens) -> torch.Tensor:
        """The (B, N, K) bits any `encode` form stands for (refused with a message when it fits none)."""
        if tokens.ids is None:
            raise TokbenchError(f"{self.spec.name} decodes discrete ids; got continuous Tokens.features")
        ids = tokens.ids.to(self.device).long()
        k, n = self.cfg.bits, self.cfg.grid**2
        if ids.ndim < 2 or ids.shape[1] != n:
            raise TokbenchError(f"{self.spec.name} decodes {n} tokens per image ({self.cfg.grid}x{self.cfg.grid}), "
                                f"got ids of shape {tuple(ids.shape)}")
        if tokens.grid is not None and tuple(tokens.grid) != (self.cfg.grid, self.cfg.grid):
            raise TokbenchError(f"Tokens.grid {tokens.grid} is not this model's {self.cfg.grid}x{self.cfg.grid}")
        bsq = self.model.bsq

        def in_range(t: torch.Tensor, top: int, what: str) -> torch.Tensor:
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= top):
                raise TokbenchError(f"{what} must lie in [0, {top}), got [{int(t.min())}, {int(t.max())}]")
            return t

        if ids.ndim == 2:
            return bsq.bits_of_ids(in_range(ids, 2**k, f"{k}-bit ids"))
        if ids.ndim == 3 and ids.shape[-1] == k:
            return in_range(ids, 2, "bits")
        if ids.ndim == 3 and ids.shape[-1] == self.cfg.groups:
            return bsq.bits_of_groups(in_range(ids, 2**bsq.group_size, "group ids"))
        raise TokbenchError(
            f"{self.spec.name} decodes ids (B, {n}), bits (B, {n}, {k}) or group ids (B, {n}, {self.cfg.groups}); "
            f"got {tuple(ids.shape)}"
        )

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        return self.denormalise(self.model.decode_bits(self.bits_of(tokens)))

    # -- features and the CLIP side --------------------------------------------------------------------

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """Token features (B, N, D), float32: `pre_quant` the L2-normalised quantiser input (D = K); `post_quant`
        what the decoder consumes, quant_embed_post of the code vectors (D = hidden_size_post_q); `semantic` the
        CLIP vision tower's last-layer patch tokens (D = hidden_size), whose class-token sibling gives the image
        embedding and from which the quantiser input is projected."""
        if stage not in self.feature_stages:
            raise TokbenchError(f"{self.spec.name} has feature stages {', '.join(self.feature_stages)}; got {stage!r}")
        hidden = self._hidden(images)
        if stage == "semantic":
            return hidden[:, 1:].float()
        pre, bits = self._bits(hidden)
        return pre.float() if stage == "pre_quant" else self.model.post_quant(bits).float()

    @torch.inference_mode()
    def semantic(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The understanding outputs of images (B, 3, S, S) in [0, 1]: `embedding` (B, projection_dim), the official
        `get_image_features` (un-normalised; from the continuous class token, not the codes),
        `embedding_normalized` (`image_embeds`), `tokens` (B, N, D) the vision tower's patch tokens, `pre_quant`
        (B, N, K) and `ids` (B, N) exact (the bits (B, N, K) when K > 63)."""
        hidden = self._hidden(images)
        emb = self.model.image_features(hidden).float()
        pre, bits = self._bits(hidden)
        return {
            "embedding": emb,
            "embedding_normalized": F.normalize(emb, dim=-1),
            "tokens": hidden[:, 1:].float(),
            "pre_quant": pre.float(),
            "ids": self.model.bsq.ids(bits) if self.cfg.bits <= 63 else bits,
        }

    def clip_encoder(self) -> QLIPClipEncoder:
        """This model as an image-text encoder for `zeroshot` / `semantic-similarity` (`encoder=<variant>`)."""
        return QLIPClipEncoder(self)


class QLIPClipEncoder:
    """QLIP's CLIP side with the metrics' encoder interface: `encode_image(images [0, 1]) -> (B, E)` and
    `encode_text(texts) -> (N, E)`, both un-normalised (`get_image_features` / `get_text_features`).

    Images are quantised to uint8 (as saved files would be) and go through the `qlip` protocol at the model's
    `image_size` (the release's CLIPImageProcessor), so an image at that size is used as is. Texts: open_clip's
    CLIP BPE `tokenize` (the ids of the release's CLIPTokenizer; see the module docstring), context =
    `max_position_embeddings`.
    """

    def __init__(self, tokenizer: QLIPTokenizer) -> None:
        if not tokenizer.model.has_text:
            raise TokbenchError(
                f"{tokenizer.spec.name} was built without its text tower (text_tower=False): no text embeddings"
            )
        self.tokenizer = tokenizer
        self.name = tokenizer.spec.name

    def to(self, device: torch.device | str) -> QLIPClipEncoder:
        self.tokenizer.to(device)
        return self

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor, to_pil_image

        s = self.tokenizer.cfg.vision.image_size
        u8 = torch.floor(images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()
        x = torch.stack([pil_to_tensor(qlip_preprocess(to_pil_image(im), s)) for im in u8]).float() / 255
        return self.tokenizer.model.image_features(self.tokenizer._hidden(x)).float()

    def text_ids(self, texts: list[str]) -> torch.Tensor:
        from open_clip.tokenizer import tokenize

        c = self.tokenizer.cfg.text
        ids = tokenize(list(texts), context_length=c.max_position_embeddings)
        if int(ids.max()) >= c.vocab_size:
            raise TokbenchError(
                f"{self.name}'s text tower has a vocabulary of {c.vocab_size}, smaller than the CLIP BPE tokenizer's "
                f"({int(ids.max()) + 1} needed): it cannot embed text (a test-size model?)"
            )
        return ids

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.text_ids(texts).to(self.tokenizer.device)
        return self.tokenizer.model.text_features(ids).float()

    def describe(self) -> dict[str, Any]:
        t = self.tokenizer
        s = t.cfg.vision.image_size
        return {
            "encoder": f"QLIP CLIP head of {self.name} (image embedding from the continuous class token)",
            "weights": str(t.spec.source.get("checkpoint", t.spec.source.get("weights"))),
            "input": f"uint8-quantised, `qlip` protocol: {s} px bicubic short side + floor centre crop, "
            f"{t.preprocessor.source}",
            "text": f"open_clip CLIP BPE tokenize, context {t.cfg.text.max_position_embeddings}, pooled at the first "
            "end-of-text token",
        }


# ----------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------

PROBES = ("vision_decoder.conv_out.weight", "vision_model.embeddings.patch_embedding.weight")
_ROPE_ALIAS = re.compile(r"^vision_(model|decoder)\.encoder\.layers\.\d+\.self_attn\.rope\.freqs_(cos|sin)$")
_ROPE_TABLE = re.compile(r"^vision_(model|decoder)\.rope\.freqs_(cos|sin)$")


def _text_key(k: str) -> bool:
    return k.startswith(("text_model.", "text_projection.")) or k == "logit_scale"


def build_model(config: Mapping[str, Any] | QLIPConfig, device: str | torch.device = "cpu",
                text_tower: bool = True) -> QLIPModel:
    """An unloaded `QLIPModel` (device="meta" gives the full-size layout without memory)."""
    cfg = config if isinstance(config, QLIPConfig) else qlip_config(config)
    with torch.device(device):
        return QLIPModel(cfg, text_tower=text_tower)


def read_qlip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a QLIP release file, or a `CheckpointError` saying what the file looks like instead."""
    sd = read_state_dict(path)
    if not all(p in sd for p in PROBES):
        raise CheckpointError(
            f"{path.name} is not a QLIP checkpoint (no {' / '.join(PROBES)}): it looks like {describe_checkpoint(sd)}"
        )
    return sd


def _companion(b: Build, checkpoint: Path | None, name: str) -> Path | None:
    """A release file that goes with the weights (config.json, preprocessor_config.json): beside them, else, for a
    variant loaded from its release, fetched from the same repository when that is possible (None otherwise)."""
    if checkpoint is None:
        return None
    if (path := b.beside(checkpoint, name)) is not None:
        return path
    if b.weights is None and b.variant is not None and b.variant.weights is not None:
        try:
            return resolve(b.variant.weights, filename=name)
        except TokbenchError:  # offline, or downloads switched off: the variant row's values stand in
            return None
    return None


def _config_source(b: Build, checkpoint: Path | None) -> tuple[dict[str, Any], str]:
    """The config to build from: the caller's, else the release's config.json (beside the weights or from the
    variant's repository), else the variant row's (reconstructed) one."""
    variant_cfg = dict(b.variant.config) if b.variant is not None else {}
    given = b.config != variant_cfg
    if not given and (release := _companion(b, checkpoint, "config.json")) is not None:
        return json.loads(release.read_text()), str(release)
    if not b.config:
        raise TokbenchError(f"qlip needs the release's config.json: pass config=<config.json>, or put it beside "
                            f"the weights, or load a released variant ({', '.join(v.name for v in VARIANTS)})")
    if b.variant is not None and not given:
        return b.config, f"variant {b.variant.name} (reconstructed from the release's file sizes; see its description)"
    return b.config, "given"


def build(b: Build) -> QLIPTokenizer:
    text_tower = bool(b.option("text_tower", True))
    checkpoint = None if b.random_weights else b.checkpoint(HINT)
    sd = read_qlip_state_dict(checkpoint) if checkpoint is not None else {}  # another family's file: refused here
    raw, config_source = _config_source(b, checkpoint)
    cfg = qlip_config(raw)

    def load(model: QLIPModel, path: Path) -> dict[str, str]:
        aliases = [k for k in sd if _ROPE_ALIAS.match(k)]

        def unexpected(k: str) -> bool:
            return bool(_ROPE_ALIAS.match(k)) or (not text_tower and _text_key(k))

        load_strict(model, sd, source=f"QLIP checkpoint {path.name}", ignore_unexpected=unexpected,
                    ignore_missing=lambda k: bool(_ROPE_TABLE.match(k)))
        stored = sum(1 for k in sd if _ROPE_TABLE.match(k))
        return {"layout": "QLIPModel.state_dict (bare keys)"
                + ("" if stored else "; rotary tables recomputed from the config")
                + (f"; {len(aliases)} per-layer rotary aliases ignored" if aliases else "")}

    model = b.model(lambda: QLIPModel(cfg, text_tower=text_tower), load, HINT)
    if b.random_weights:
        model.reset_rope()  # meta buffers came back as zeros; the tables are constants of the config
    sd.clear()
    pre = read_preprocessor(_companion(b, checkpoint, "preprocessor_config.json"), cfg.vision.image_size)
    v, k, g = cfg.vision, cfg.bits, cfg.grid
    b.source["config"] = config_source
    b.notes += [
        f"QLIP BSQ ViT: {v.image_size} px, patch {v.patch_size} -> {g}x{g} tokens of {k} bits (exact int64 ids, MSB = "
        f"channel 0; upstream's float32 ids are rounded above 2^24); {v.num_hidden_layers}-layer encoder / "
        f"{cfg.decoder.num_hidden_layers}-layer decoder, width {v.hidden_size}"
        + (", rope" if v.rope else "") + (", SwiGLU" if v.swiglu else "") + (", sub-LN" if v.subln else ""),
        "CLIP image embedding from the continuous class token" + ("" if text_tower else "; built without text tower"),
        pre.source,
        "weights licence CC-BY-NC-4.0 (NON-COMMERCIAL use only)",
        *pre.notes,
    ]
    spec = b.spec(
        resolution=v.image_size,
        tokens_per_image=g * g,
        codebook_size=2**k,
        bits_per_token=float(k),
        normalisation="CLIP mean/std ((x - mean) / std)",
        preprocessing="qlip",
    )
    return QLIPTokenizer(model, spec, b.torch_dtype, pre)


# ----------------------------------------------------------------------------------------------------
# Released variants
# ----------------------------------------------------------------------------------------------------

PAPER = ("Zhao et al., QLIP: Text-Aligned Visual Tokenization Unifies Auto-Regressive Multimodal Understanding and "
         "Generation, arXiv:2502.05178")
LICENCE = "CC-BY-NC-4.0 (NON-COMMERCIAL; Hugging Face model card; code: NVIDIA Source Code License-NC)"
PUBLISHED_SOURCE = (
    "NVlabs/QLIP README 'Model Zoo' table @cf86fcc (= the Hugging Face model cards): 0-shot = zero-shot top-1 on "
    "ImageNet-1k val with QLIP's own text tower; rFID on ImageNet-1k val. The rFID protocol is not published; it is "
    "keyed pytorch-fid because the first author's BSQ-ViT code (zhaoyue-zephyrus/bsq-vit transcoder/evaluations/fid) "
    "is a pytorch-fid port -- an assumption"
)
RECONSTRUCTED = (
    "config reconstructed from the release's file size (EVA02-CLIP towers, a decoder mirroring the encoder, 28-bit "
    "BSQ; k_bias, vision_projection_bias and group_size unverified): the release's own config.json, beside the "
    "weights or given, wins"
)
_BSQ_28 = {"embed_dim": 28, "group_size": 7, "input_format": "blc", "l2_norm": True, "beta": 0.0, "gamma_0": 1.0,
           "gamma_1": 1.0, "soft_entropy": True, "persample_entropy_compute": "analytical", "inv_temperature": 100.0}


def _release_config(image: int, patch: int, width: int, mlp: int, layers: int, heads: int, text_width: int,
                    text_heads: int, embed: int) -> dict[str, Any]:
    eva = {"hidden_size": width, "intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": heads,
           "image_size": image, "patch_size": patch, "k_bias": False, "subln": True, "swiglu": True, "rope": True,
           "projection_dim": embed}
    return {
        "projection_dim": embed, "logit_scale_init_value": 2.6592, "vision_projection_bias": True,
        "text_projection_bias": False,
        "text_config": {"vocab_size": 49408, "hidden_size": text_width, "intermediate_size": 4 * text_width,
                        "num_hidden_layers": 12, "num_attention_heads": text_heads, "max_position_embeddings": 77,
                        "hidden_act": "gelu", "projection_dim": embed},
        "vision_config": {**eva, "post_layernorm": True, "quantizer": "bsq", "quantizer_l2_norm": True,
                          "quantizer_embed_type": "mlp", "hidden_size_post_q": width, "quantizer_cfg": dict(_BSQ_28)},
        "decoder_config": dict(eva),
    }  # fmt: skip


def _variant(repo: str, config: dict[str, Any], published: dict[str, float], what: str) -> Variant:
    name = repo.split("/")[1].lower()
    artifact = register_artifact(Artifact(
        name=name, repo_id=repo, filename="model.safetensors", licence=LICENCE, used_by=name,
        companions=("config.json", "preprocessor_config.json"),
    ))  # fmt: skip
    v = config["vision_config"]
    grid = v["image_size"] // v["patch_size"]
    return Variant(
        name=name, family=FAMILY_NAME, config=config, weights=artifact, resolution=v["image_size"],
        description=(f"NVIDIA QLIP {what}: {v['image_size']} px, patch {v['patch_size']} -> {grid}x{grid} tokens x 28 "
                     f"bits, CLIP embedding {config['projection_dim']}-d with its text tower. Weights "
                     f"NON-COMMERCIAL (CC-BY-NC-4.0). {RECONSTRUCTED}"),
        paper=PAPER, published=published, published_source=PUBLISHED_SOURCE,
    )  # fmt: skip


VARIANTS: tuple[Variant, ...] = (
    _variant("nvidia/QLIP-B-16-256", _release_config(256, 16, 768, 2048, 12, 12, 512, 8, 512),
             {"zeroshot_qlip_b_16_256_top1": 74.3, "rfid_pytorch_fid": 3.21}, "ViT-B/16"),
    _variant("nvidia/QLIP-B-8-256", _release_config(256, 8, 768, 2048, 12, 12, 512, 8, 512),
             {"zeroshot_qlip_b_8_256_top1": 75.6, "rfid_pytorch_fid": 0.70}, "ViT-B/8"),
    _variant("nvidia/QLIP-L-14-392", _release_config(392, 14, 1024, 2730, 24, 16, 768, 12, 768),
             {"zeroshot_qlip_l_14_392_top1": 79.1, "rfid_pytorch_fid": 1.46}, "ViT-L/14"),
)

FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    variants=VARIANTS,
    default_variant="qlip-b-16-256",
    description="NVIDIA QLIP: BSQ ViT autoencoder (28-bit tokens) with a CLIP text tower; weights NON-COMMERCIAL "
    "(CC-BY-NC-4.0)",
    code=CODE,
    build_options={"dtype": (DType, "float32"), "text_tower": (bool, True)},
    encode_options={"ids": IdsForm},
)

__all__ = [
    "BSQ",
    "FAMILY",
    "QLIPClipEncoder",
    "QLIPConfig",
    "QLIPModel",
    "QLIPTokenizer",
    "build_model",
    "qlip_config",
    "qlip_preprocess",
]
