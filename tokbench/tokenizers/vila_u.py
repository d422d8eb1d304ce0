"""VILA-U's unified vision tower (Wu et al. 2024): SigLIP features, residual quantisation, RQ-VAE pixel decoder.

Written from mit-han-lab/vila-u @ 096623c, package `vila_u/model/multimodal_encoder/rqvaesigliptransformer/`:
`modeling_rqvaesigliptransformer.py` (the checkpoint's top module), `rqvaesiglip/modeling_rqvaesiglip.py`
(`RQVAESiglipModel.encode_image` / `decode`), `rqvaesiglip/quantizations.py` (`RQBottleneck`, `VQEmbedding`),
`rqvaesiglip/modules.py` (`Decoder`), `rqvaesigliptransformer_encoder.py` (the processor and the LLM features),
`vila_u/mm_utils.py::process_image` and `vila_u_arch.py::generate_image_content` (decoding and post-processing).

* Encoder: a SigLIP vision tower, run through its layers 0..L-2 only (`select_layer=-2`; the last layer,
  `post_layernorm` and the attention-pooling head are not used to tokenize). It is transformers'
  `SiglipVisionModel` (the official vendored `siglip/modeling_siglip.py` is transformers' SigLIP with the same
  key names), with eager attention by default as the vendored code, built from the SigLIP *architecture*
  config that the official constructor downloads by Hub id (`pretrained_model`): here read from a folder of
  that name beside the weights (`siglip_config/config.json` in the test fixture) or, for the two released
  ids, from the table `SIGLIP_RELEASES`; never downloaded. All weights come from the vision tower's file.
* Quantiser (`RQBottleneck`): depth D greedy residual VQ, code_d = argmin_k |r - e_k|^2 (computed as the
  official `addmm(|r|^2 + |e|^2, r, e^T, alpha=-2)` over the codebook rows without the padding row), then
  r <- r - e_{code_d}; one codebook shared by all depths in the releases (`shared_codebook`). Written here: no
  library has RQ-VAE's bottleneck with these keys (`codebooks.{d}.weight` with a padding row, EMA buffers).
* Decoder: RQ-VAE's taming-style `Decoder` after a 1x1 `post_quant_conv`, from the SUM of the code vectors
  over depth (`rqtransformer.embed_with_model_aux` + `cumsum(-2)[..., -1, :]`). Upstream's `Upsample` casts
  its output to bfloat16, so the official decoder only runs in bfloat16: it is kept in bfloat16 here whatever
  the `dtype` option (which sets the encoder and quantiser). Written here because no library has this decoder
  with these keys and the bf16 cast (and its SiLU is `F.silu`, which rounds differently in bf16 from
  `x * sigmoid(x)` used by the other taming decoders in tokbench).
* Text side: the SigLIP text tower fine-tuned with the vision tower is stored in the same file; the paper
  aligns the DISCRETE features with text. No released code forms that image embedding; here it continues the
  SigLIP forward from the quantised features (last layer, `post_layernorm`, MAP head), see `VilaUModel`.
* `rqtransformer.*` (the LLM's depth-transformer head, ~40% of the file) is not needed to tokenize and is not
  loaded by default; its shapes are checked against the config's `rqtransformer` section, and the build option
  `rqtransformer=True` loads it too (the whole file strictly; `RQTransformerWeights` holds it, no forward).
* Distances to the codebook are formed for chunks of positions (bounded memory at 16,384 codes); the ids are
  the official argmin, float ties aside.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import CheckpointError, describe_checkpoint, load_strict, read_state_dict
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, bits_for, check_images
from ..options import DType, PositiveInt
from ..protocols import drop_alpha, register_protocol, scale
from ..registry import Family, Variant, read_config
from ..weights import Artifact, WeightsUnavailable, register_artifact, resolve

FAMILY_NAME = "vila-u"
UPSTREAM = "https://github.com/mit-han-lab/vila-u @ 096623cef36a57c707d4bdc5cdfeec823b58d223"
PROTOCOL = "vila-u"
CHECKPOINT_HINT = "the vision tower's model.safetensors of mit-han-lab/vila-u-7b-256 or -384 (vision_tower/)"

TOWER = "rqvaesiglip."
SIGLIP = TOWER + "siglip_model."
TEXT_PREFIX = SIGLIP + "text_model."
RQTRANSFORMER = "rqtransformer."
PROBE_KEY = TOWER + "quantizer.codebooks.0.weight"

# Positions whose distances to the codebook are formed at once (~128 MiB of float32 at any codebook size).
_DISTANCE_ELEMENTS = 1 << 25

# ---------------------------------------------------------------------------------------------------
# Configs: the release's config.json (RQVAESIGLIPTransformerConfig) and the SigLIP architecture it names
# ---------------------------------------------------------------------------------------------------

# google/siglip-* architecture configs (`SiglipConfig.from_pretrained(pretrained_model)` upstream): the
# released VILA-U towers name these Hub ids; their config.json `vision_config` / `text_config`.
SIGLIP_RELEASES: dict[str, dict[str, dict[str, Any]]] = {
    "google/siglip-large-patch16-256": {
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "image_size": 256, "patch_size": 16},
        "text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                        "num_attention_heads": 16, "vocab_size": 32000},
    },
    "google/siglip-so400m-patch14-384": {
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                          "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
        "text_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                        "num_attention_heads": 16, "vocab_size": 32000},
    },
}  # fmt: skip

# The 256 px release's vision_tower/config.json (reconstructed in the golden fixture's README from a public copy
# of the file and the release's size; the manifest of its state dict matches the 2.71 GB file).
RELEASE_256: dict[str, Any] = {
    "architectures": ["RQVAESIGLIPTransformer"],
    "hidden_size": 1024,
    "model_type": "rqvaesigliptransformer_model",
    "rqtransformer": {
        "block_size": [16, 16, 4], "embed_dim": 2560, "head": {"block": {"n_head": 40}, "n_layer": 6},
        "input_embed_dim_1": 1024, "input_embed_dim_2": 4096, "vocab_size": 16384,
    },
    "rqvaesiglip": {
        "code_shape": [16, 16, 4],
        "ddconfig": {"attn_resolutions": [16], "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "double_z": False,
                     "dropout": 0.0, "in_channels": 3, "num_res_blocks": 2, "out_ch": 3, "resolution": 256,
                     "z_channels": 256},
        "embed_dim": 1024,
        "latent_shape": [16, 16, 1024],
        "n_embed": 16384,
        "pretrained_model": "google/siglip-large-patch16-256",
        "shared_codebook": True,
    },
}  # fmt: skip

# The 384 px release's config.json could not be read. SigLIP-So400m/14 at 384 gives 27x27 patches (the paper's
# 27x27x16 codes); upstream interpolates the 27x27 latent to `decoder_latent_shape` before the x16 decoder
# (mit-han-lab/vila-u issue #8), so [24, 24] gives 384 px. The decoder sizes are assumed equal to the 256
# release's. The release's own config.json, beside its weights, replaces all of this when present.
RELEASE_384: dict[str, Any] = {
    **RELEASE_256,
    "hidden_size": 1152,
    "rqtransformer": {**RELEASE_256["rqtransformer"], "block_size": [27, 27, 16], "input_embed_dim_1": 1152},
    "rqvaesiglip": {
        **RELEASE_256["rqvaesiglip"],
        "code_shape": [27, 27, 16],
        "embed_dim": 1152,
        "latent_shape": [27, 27, 1152],
        "decoder_latent_shape": [24, 24],
        "ddconfig": {**RELEASE_256["rqvaesiglip"]["ddconfig"], "resolution": 384},
        "pretrained_model": "google/siglip-so400m-patch14-384",
    },
}


def _config_bookkeeping() -> frozenset[str]:
    """Keys every transformers `PretrainedConfig` writes (return_dict, torch_dtype, ...): no effect here."""
    from transformers import PretrainedConfig

    return frozenset(PretrainedConfig().to_dict()) | {"transformers_version", "_name_or_path", "architectures",
                                                      "model_type", "torch_dtype", "dtype"}  # fmt: skip


# RQVAESiglipConfig keys that only matter for training (EMA updates, code restarts, losses, checkpoint
# loading); accepted and ignored, as the official constructor ignores them for inference.
_TRAINING_KEYS = frozenset({
    "decay", "restart_unused_codes", "latent_loss_weight", "loss_type", "bottleneck_type", "checkpointing",
    "ckpt_path", "ignore_keys", "hidden_size",
})  # fmt: skip
# Decoder keywords the official `Decoder(**ddconfig)` swallows (`**ignorekwargs`) or that change nothing here.
_IGNORED_DDCONFIG = frozenset({"double_z", "attn_type", "use_linear_attn", "tanh_out", "temb_ch"})


@dataclass(frozen=True)
class DecoderConfig:
    """`ddconfig` of RQ-VAE's `Decoder` (defaults: the 256 px release). `norm_groups` / `norm_eps` are the
    GroupNorm sizes upstream hard-codes (32 groups, eps 1e-6)."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    in_channels: int = 3
    resolution: int = 256
    z_channels: int = 256
    norm_groups: int = 32
    norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecoderConfig:
        d = {k: v for k, v in d.items() if k not in _IGNORED_DDCONFIG}
        if d.pop("give_pre_end", False):
            raise TokbenchError("ddconfig give_pre_end=true returns decoder features, not images; unsupported")
        refuse_unknown("vila-u ddconfig keys", d, {f.name for f in fields(cls)})
        for k in ("ch_mult", "attn_resolutions"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)

    @property
    def upsampling(self) -> int:
        """Output side / latent side: x2 per level but the first."""
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class VilaUConfig:
    """What builds a VILA-U vision tower: the release's `rqvaesiglip` section, the SigLIP architecture it names,
    and the sizes upstream hard-codes (`select_layer` = -2 in `encode_image`; the image mean / std 0.5 of the
    processor that `rqvaesigliptransformer_encoder.py` builds).

    `latent_shape` (h, w, C) and `code_shape` (h', w', D): h / h' positions are merged into one code vector
    (identity in the releases); `n_embed` has one entry per depth; `embed_dim` is `post_quant_conv`'s input
    width (= C); `decoder_latent_shape` (h, w) or None: the latent is resized (bilinear) to it before decoding.
    """

    vision: Mapping[str, Any]
    text: Mapping[str, Any]
    pretrained_model: str
    latent_shape: tuple[int, int, int]
    code_shape: tuple[int, int, int]
    n_embed: tuple[int, ...]
    shared_codebook: bool
    embed_dim: int
    decoder: DecoderConfig
    decoder_latent_shape: tuple[int, int] | None = None
    select_layer: int = -2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rqtransformer: Mapping[str, Any] | None = field(default=None, compare=False)

    # derived sizes ------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return int(self.code_shape[2])

    @property
    def divisor(self) -> tuple[int, int]:
        """Latent positions per code position along (h, w) (`RQBottleneck.shape_divisor`)."""
        return self.latent_shape[0] // self.code_shape[0], self.latent_shape[1] // self.code_shape[1]

    @property
    def code_dim(self) -> int:
        """Width of a code vector: h/h' * w/w' * C (`RQBottleneck`'s embed_dim)."""
        rh, rw = self.divisor
        return rh * rw * int(self.latent_shape[2])

    @property
    def image_size(self) -> int:
        return int(self.vision.get("image_size", 224))

    @property
    def patch_size(self) -> int:
        return int(self.vision.get("patch_size", 16))

    @property
    def hidden_size(self) -> int:
        return int(self.vision.get("hidden_size", 768))

    @property
    def layers(self) -> int:
        return int(self.vision.get("num_hidden_layers", 12))

    @property
    def grid(self) -> int:
        """SigLIP patches per side (the conv floors: 384 px at patch 14 gives 27)."""
        return self.image_size // self.patch_size

    @property
    def code_grid(self) -> tuple[int, int]:
        rh, rw = self.divisor
        return self.grid // rh, self.grid // rw

    @property
    def select_index(self) -> int:
        """Index of the SigLIP layer whose output is quantised (L - 2 upstream)."""
        return self.select_layer % self.layers if self.select_layer < 0 else self.select_layer

    @property
    def decoder_latent(self) -> tuple[int, int]:
        return tuple(self.decoder_latent_shape) if self.decoder_latent_shape else (self.grid, self.grid)

    @property
    def output_size(self) -> tuple[int, int]:
        h, w = self.decoder_latent
        return h * self.decoder.upsampling, w * self.decoder.upsampling

    @property
    def codebook_size(self) -> int | tuple[int, ...]:
        return self.n_embed[0] if len(set(self.n_embed)) == 1 else tuple(self.n_embed)

    def check(self) -> None:
        lat, code = self.latent_shape, self.code_shape
        if len(lat) != 3 or len(code) != 3 or lat[0] % code[0] or lat[1] % code[1]:
            raise TokbenchError(
                f"incompatible latent_shape {list(lat)} and code_shape {list(code)}: both (h, w, ·), code h and "
                "w dividing the latent's (as RQBottleneck requires)"
            )
        if len(self.n_embed) != self.depth:
            raise TokbenchError(f"n_embed has {len(self.n_embed)} entries for a residual depth of {self.depth}")
        if self.shared_codebook and len(set(self.n_embed)) != 1:
            raise TokbenchError("shared_codebook needs one codebook size (n_embed an int)")
        if int(lat[2]) != self.hidden_size:
            raise TokbenchError(
                f"latent_shape[2] = {lat[2]} must equal the SigLIP width {self.hidden_size} (the quantiser sees "
                "the SigLIP hidden state)"
            )
        if self.embed_dim != int(lat[2]):
            raise TokbenchError(f"embed_dim {self.embed_dim} must equal latent_shape[2] = {lat[2]}")
        rh, rw = self.divisor
        if self.grid % rh or self.grid % rw:
            raise TokbenchError(f"the SigLIP grid {self.grid} is not divisible by latent/code = ({rh}, {rw})")
        if not -self.layers <= self.select_layer < self.layers:
            raise TokbenchError(f"select_layer {self.select_layer} is outside a {self.layers}-layer SigLIP")
        if self.decoder_latent_shape is not None and len(self.decoder_latent_shape) != 2:
            raise TokbenchError(f"decoder_latent_shape must be [h, w], got {list(self.decoder_latent_shape)}")
        groups = self.decoder.norm_groups
        if any((self.decoder.ch * m) % groups for m in self.decoder.ch_mult):
            raise TokbenchError(
                f"GroupNorm({groups}) needs every decoder width ch * ch_mult divisible by {groups}; got ch "
                f"{self.decoder.ch}, ch_mult {list(self.decoder.ch_mult)}"
            )


def rqvaesiglip_section(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `rqvaesiglip` section, the top level) of a config: the release's layout, or the section itself."""
    cfg = dict(config)
    if "rqvaesiglip" in cfg:
        section = cfg.pop("rqvaesiglip")
        if not isinstance(section, Mapping):
            raise TokbenchError(f"config['rqvaesiglip'] must be a mapping, got {type(section).__name__}")
        return dict(section), cfg
    return {k: v for k, v in cfg.items() if k not in _TOP_KEYS}, {k: v for k, v in cfg.items() if k in _TOP_KEYS}


# Top-level keys of ours or of RQVAESIGLIPTransformerConfig (beside `rqvaesiglip`).
_TOP_KEYS = frozenset({"rqtransformer", "siglip_config", "select_layer", "image_mean", "image_std", "hidden_size"})
_SECTION_KEYS = frozenset({"latent_shape", "code_shape", "n_embed", "shared_codebook", "embed_dim", "ddconfig",
                           "decoder_latent_shape", "pretrained_model"})  # fmt: skip


def vila_u_config(config: Mapping[str, Any] | None, siglip: Mapping[str, Any] | None = None) -> VilaUConfig:
    """A `VilaUConfig` from the release's config.json layout (`{"rqvaesiglip": {...}, "rqtransformer": ...}`) or
    the `rqvaesiglip` keys themselves; missing keys take the 256 px release's values. `siglip` is the SigLIP
    architecture config (`{"vision_config", "text_config"}`); default: `config["siglip_config"]`, else the
    table entry of `pretrained_model`."""
    section, top = rqvaesiglip_section(config or {})
    ignore = _config_bookkeeping() | _TRAINING_KEYS
    refuse_unknown("vila-u rqvaesiglip keys", set(section) - ignore, _SECTION_KEYS,
                   "(in the rqvaesiglip section or flat; training-only keys are ignored)")
    refuse_unknown("vila-u config keys", set(top) - ignore, _TOP_KEYS | {"rqvaesiglip"},
                   "(training-only keys are ignored)")
    rq = {**RELEASE_256["rqvaesiglip"], **{k: v for k, v in section.items() if k in _SECTION_KEYS}}
    dd = {**RELEASE_256["rqvaesiglip"]["ddconfig"], **dict(section.get("ddconfig") or {})}
    if siglip is None:
        siglip = top.get("siglip_config") or SIGLIP_RELEASES.get(str(rq["pretrained_model"]))
    if siglip is None:
        raise TokbenchError(
            f"the SigLIP architecture config {rq['pretrained_model']!r} (rqvaesiglip.pretrained_model) is unknown; "
            f"put its config.json in a folder of that name beside the weights, or pass config['siglip_config'] = "
            f"{{vision_config: ..., text_config: ...}} (known ids: {', '.join(SIGLIP_RELEASES)})"
        )
    siglip = dict(siglip)
    depth_code = [int(v) for v in rq["code_shape"]]
    n_embed = rq["n_embed"]
    n_embed = tuple(int(v) for v in n_embed) if isinstance(n_embed, Sequence) else (int(n_embed),) * depth_code[2]
    dls = rq.get("decoder_latent_shape")
    cfg = VilaUConfig(
        vision=dict(siglip.get("vision_config") or {}),
        text=dict(siglip.get("text_config") or {}),
        pretrained_model=str(rq["pretrained_model"]),
        latent_shape=tuple(int(v) for v in rq["latent_shape"]),  # type: ignore[arg-type]
        code_shape=tuple(depth_code),  # type: ignore[arg-type]
        n_embed=n_embed,
        shared_codebook=bool(rq["shared_codebook"]),
        embed_dim=int(rq["embed_dim"]),
        decoder=DecoderConfig.from_dict(dd),
        decoder_latent_shape=tuple(int(v) for v in dls) if dls else None,  # type: ignore[arg-type]
        select_layer=int(top.get("select_layer", -2)),
        image_mean=tuple(float(v) for v in top.get("image_mean", (0.5,) * 3)),  # type: ignore[arg-type]
        image_std=tuple(float(v) for v in top.get("image_std", (0.5,) * 3)),  # type: ignore[arg-type]
        rqtransformer=top.get("rqtransformer"),
    )
    if "hidden_size" in top and top["hidden_size"] is not None and int(top["hidden_size"]) != cfg.hidden_size:
        raise TokbenchError(
            f"config hidden_size {top['hidden_size']} differs from the SigLIP width {cfg.hidden_size}: the config "
            "and the SigLIP architecture config do not belong together"
        )
    cfg.check()
    return cfg


class RQTransformerWeights(nn.Module):
    """The stored parameters of `rqtransformer` (RQTransformer: the depth transformer of the LLM's image head,
    which predicts codes in generation and takes no part in tokenizing), with its key names: `pos_emb_d`,
    `in_mlp_1/2`, `head_transformer.blocks.N.{ln1, ln2, attn.{key, query, value, proj}, mlp.0, mlp.2}`,
    `classifier_mlp.{layer_norm, linear}`. No forward; built only to load a whole release file strictly
    (build option `rqtransformer=True`) and to state the release's layout."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        try:
            e, vocab = int(config["embed_dim"]), int(config["vocab_size"])
            depth, n_layer = int(config["block_size"][2]), int(config["head"]["n_layer"])
            in_1, in_2 = int(config["input_embed_dim_1"]), int(config["input_embed_dim_2"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise TokbenchError(f"config rqtransformer section is incomplete ({type(err).__name__}: {err})") from None
        self.in_mlp_1 = nn.Linear(in_1, e)
        self.in_mlp_2 = nn.Linear(in_2, e)
        self.head_transformer = nn.Module()
        self.head_transformer.blocks = nn.ModuleList(_RQBlock(e) for _ in range(n_layer))
        self.pos_emb_d = nn.Parameter(torch.zeros(1, depth, e))
        self.classifier_mlp = nn.Sequential(OrderedDict([("layer_norm", nn.LayerNorm(e)),
                                                         ("linear", nn.Linear(e, vocab))]))  # fmt: skip


class _RQBlock(nn.Module):
    def __init__(self, e: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.attn = nn.Module()
        for name in ("key", "query", "value", "proj"):
            setattr(self.attn, name, nn.Linear(e, e))
        self.mlp = nn.Sequential(nn.Linear(e, 4 * e), nn.GELU(), nn.Linear(4 * e, e))


def rqtransformer_layout(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the stored `rqtransformer.*` that the config's `rqtransformer` section builds."""
    with torch.device("meta"):
        weights = RQTransformerWeights(config)
    return {RQTRANSFORMER + k: tuple(v.shape) for k, v in weights.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# Modules (key names as the official state dict)
# ---------------------------------------------------------------------------------------------------


class SiglipTowers(nn.Module):
    """The official `siglip_model` (transformers' `SiglipModel` layout): `vision_model` (SiglipVisionModel),
    `text_model` (SiglipTextModel, optional), `logit_scale`, `logit_bias`."""

    def __init__(self, cfg: VilaUConfig, text_tower: bool, attention: str) -> None:
        super().__init__()
        from transformers import SiglipTextConfig, SiglipTextModel, SiglipVisionConfig, SiglipVisionModel

        vision = SiglipVisionConfig(**cfg.vision)
        vision._attn_implementation = attention
        if text_tower:
            # the CLIP-style default bos / eos ids (49406 / 49407) are unused here and fall outside SigLIP's vocabulary
            text = SiglipTextConfig(**{"bos_token_id": None, "eos_token_id": None, **cfg.text})
            text._attn_implementation = attention
            self.text_model = SiglipTextModel(text)
        self.vision_model = SiglipVisionModel(vision)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    @property
    def has_text(self) -> bool:
        return hasattr(self, "text_model")


class Codebook(nn.Module):
    """`VQEmbedding` for inference: `weight` (n_embed + 1, dim), the last row the never-selected padding row;
    the EMA buffers (training state) are kept so that the release loads strictly."""

    def __init__(self, n_embed: int, dim: int) -> None:
        super().__init__()
        self.n_embed = n_embed
        self.weight = nn.Parameter(torch.zeros(n_embed + 1, dim))
        self.register_buffer("cluster_size_ema", torch.zeros(n_embed))
        self.register_buffer("embed_ema", torch.zeros(n_embed, dim))

    def nearest(self, r: torch.Tensor) -> torch.Tensor:
        """r (M, dim) -> (M,) argmin_k |r - e_k|^2 as the official `compute_distances` forms it (chunked)."""
        codebook_t = self.weight[:-1].t()
        e_sq = codebook_t.pow(2.0).sum(dim=0, keepdim=True)
        chunk = max(1, _DISTANCE_ELEMENTS // max(1, self.n_embed))
        out = [torch.addmm(p.pow(2.0).sum(dim=1, keepdim=True) + e_sq, p, codebook_t, alpha=-2.0).argmin(dim=-1)
               for p in r.split(chunk)]  # fmt: skip
        return torch.cat(out) if out else r.new_zeros(0, dtype=torch.long)


class ResidualQuantizer(nn.Module):
    """`RQBottleneck` for inference: `codebooks.{d}` (one module repeated when `shared_codebook`)."""

    def __init__(self, cfg: VilaUConfig) -> None:
        super().__init__()
        self.divisor = cfg.divisor
        self.width = int(cfg.latent_shape[2])
        if cfg.shared_codebook:
            shared = Codebook(cfg.n_embed[0], cfg.code_dim)
            self.codebooks = nn.ModuleList([shared] * cfg.depth)
        else:
            self.codebooks = nn.ModuleList(Codebook(n, cfg.code_dim) for n in cfg.n_embed)

    def to_code_shape(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        rh, rw = self.divisor
        return x.reshape(b, h // rh, rh, w // rw, rw, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h // rh, w // rw, -1)

    def to_latent_shape(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        rh, rw = self.divisor
        return x.reshape(b, h, w, rh, rw, self.width).permute(0, 1, 3, 2, 4, 5).reshape(b, h * rh, w * rw, -1)

    def quantize(self, x: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, h, w, C) -> (codes (B, h', w', depth) int64, sum of their vectors (B, h, w, C)), greedy on the
        running residual, depth 0 first (`RQBottleneck.quantize`)."""
        xc = self.to_code_shape(x)
        b, h, w, d = xc.shape
        residual = xc.reshape(-1, d).clone()
        aggregated = torch.zeros_like(residual)
        codes = []
        for i in range(depth):
            code = self.codebooks[i].nearest(residual)
            quant = F.embedding(code, self.codebooks[i].weight)
            residual.sub_(quant)
            aggregated.add_(quant)
            codes.append(code)
        return torch.stack(codes, dim=-1).view(b, h, w, depth), self.to_latent_shape(aggregated.view(b, h, w, d))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h', w', d) -> the sum of their d vectors, (B, h, w, C), as the official decode path sums
        them (`embed_code_with_depth`, then `cumsum(dim=-2)[..., -1, :]`)."""
        per_depth = torch.stack([F.embedding(codes[..., i], self.codebooks[i].weight)
                                 for i in range(codes.shape[-1])], dim=-2)  # fmt: skip
        return self.to_latent_shape(torch.cumsum(per_depth, dim=-2)[..., -1, :])


class ResnetBlock(nn.Module):
    """RQ-VAE `ResnetBlock` without time embedding: norm-SiLU-conv twice plus a 1x1 `nin_shortcut`."""

    def __init__(self, cin: int, cout: int, dd: DecoderConfig) -> None:
        super().__init__()
        self.cin, self.cout = cin, cout
        self.norm1 = nn.GroupNorm(dd.norm_groups, cin, eps=dd.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = nn.GroupNorm(dd.norm_groups, cout, eps=dd.norm_eps)
        self.dropout = nn.Dropout(dd.dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if self.cin != self.cout else x) + h


class AttnBlock(nn.Module):
    """Single-head attention over the h*w positions with 1x1 q/k/v/proj_out, in the official bmm order."""

    def __init__(self, channels: int, dd: DecoderConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(dd.norm_groups, channels, eps=dd.norm_eps)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, h, w = h_.shape
        q = self.q(h_).reshape(b, c, h * w).permute(0, 2, 1)
        weights = F.softmax(torch.bmm(q, self.k(h_).reshape(b, c, h * w)) * (int(c) ** -0.5), dim=2)
        out = torch.bmm(self.v(h_).reshape(b, c, h * w), weights.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest x2 computed in float32 and CAST TO BFLOAT16 (as upstream), then a 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(torch.bfloat16)
        return self.conv(x) if self.with_conv else x


class PixelDecoder(nn.Module):
    """RQ-VAE's `Decoder`: conv_in, mid (res, attn, res), per level (num_res_blocks + 1) res blocks (+ attention
    where the NOMINAL side `ddconfig.resolution / 2^level` is in `attn_resolutions`), x2 upsampling, then
    GroupNorm + SiLU + conv_out. Keys: `up.{level}.block.{j}`, `up.{level}.attn.{j}`, `up.{level}.upsample`."""

    def __init__(self, dd: DecoderConfig) -> None:
        super().__init__()
        self.levels = len(dd.ch_mult)
        self.num_res_blocks = dd.num_res_blocks
        block_in = dd.ch * dd.ch_mult[-1]
        curr = dd.resolution // 2 ** (self.levels - 1)
        self.conv_in = nn.Conv2d(dd.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dd)
        self.mid.attn_1 = AttnBlock(block_in, dd)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dd)
        ups: list[nn.Module] = []
        for level in reversed(range(self.levels)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = dd.ch * dd.ch_mult[level]
            for _ in range(dd.num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, block_out, dd))
                block_in = block_out
                if curr in dd.attn_resolutions:
                    up.attn.append(AttnBlock(block_in, dd))
            if level != 0:
                up.upsample = Upsample(block_in, dd.resamp_with_conv)
                curr *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(dd.norm_groups, block_in, eps=dd.norm_eps)
        self.conv_out = nn.Conv2d(block_in, dd.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(self.levels)):
            up = self.up[level]
            for j in range(self.num_res_blocks + 1):
                h = up.block[j](h)
                if len(up.attn) > 0:
                    h = up.attn[j](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class RQVAESiglip(nn.Module):
    """The official `rqvaesiglip`: `siglip_model`, `quantizer`, `post_quant_conv`, `decoder`, and the
    `logit_scale` / `logit_bias` aliases of the SigLIP ones (the same parameters under two names)."""

    def __init__(self, cfg: VilaUConfig, text_tower: bool, attention: str) -> None:
        super().__init__()
        self.siglip_model = SiglipTowers(cfg, text_tower, attention)
        self.quantizer = ResidualQuantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.decoder.z_channels, 1)
        self.decoder = PixelDecoder(cfg.decoder)
        self.logit_scale = self.siglip_model.logit_scale
        self.logit_bias = self.siglip_model.logit_bias


class VilaUModel(nn.Module):
    """The VILA-U vision tower without its `rqtransformer` (keys `rqvaesiglip.*` as the release).

    Images enter in the model's [-1, 1] range ((x - 0.5) / 0.5), (B, 3, S, S), S = the SigLIP image size.
    """

    def __init__(self, cfg: VilaUConfig, text_tower: bool = True, attention: str = "eager",
                 rqtransformer: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.rqvaesiglip = RQVAESiglip(cfg, text_tower, attention)
        if rqtransformer:
            if cfg.rqtransformer is None:
                raise TokbenchError("rqtransformer=True needs the config's rqtransformer section")
            self.rqtransformer = RQTransformerWeights(cfg.rqtransformer)

    @property
    def vision(self) -> nn.Module:
        return self.rqvaesiglip.siglip_model.vision_model

    @property
    def quantizer(self) -> ResidualQuantizer:
        return self.rqvaesiglip.quantizer

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.post_layernorm.weight.dtype

    def reset_position_ids(self) -> None:
        """Fill the non-persistent `position_ids` buffers (arange), which a meta build or `to_empty` leaves
        unset; refuse any other non-persistent buffer, whose value no checkpoint would give."""
        stored = set(self.state_dict())
        for name, buf in self.named_buffers():
            if name in stored:
                continue
            if not name.endswith("position_ids"):
                raise TokbenchError(f"vila-u: unexpected non-persistent buffer {name!r}; cannot initialise it")
            owner = self.get_submodule(name.rsplit(".", 1)[0])
            owner.position_ids = torch.arange(buf.shape[-1], device=buf.device).expand(buf.shape).clone()

    # encoder ------------------------------------------------------------------------------------------
    def pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        """SigLIP patch embedding + position embedding, layers 0..select: (B, h, w, C) (`features_prequant`)."""
        vision = self.vision
        h = vision.embeddings(x)
        for layer in vision.encoder.layers[: self.cfg.select_index + 1]:
            h = _hidden(layer(h, None))
        b, n, c = h.shape
        side = math.isqrt(n)
        return h.reshape(b, side, side, c)

    def quantize(self, pre: torch.Tensor, depth: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """pre (B, h, w, C) -> (codes (B, h', w', depth), z_q (B, h, w, C)) with z_q in the official
        straight-through form x + (sum - x) (what the LLM receives: `features_llm`)."""
        codes, summed = self.quantizer.quantize(pre, self.cfg.depth if depth is None else depth)
        return codes, pre + (summed - pre)

    def encode(self, x: torch.Tensor, depth: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`RQVAESiglipModel.encode_image`: (codes, z_q)."""
        return self.quantize(self.pre_quant(x), depth)

    # text-aligned branch ------------------------------------------------------------------------------
    def semantic_tokens(self, z_q: torch.Tensor) -> torch.Tensor:
        """The SigLIP forward continued from the quantised features: the layers after `select_layer`, then
        `post_layernorm`: (B, N, C)."""
        vision = self.vision
        h = z_q.reshape(z_q.shape[0], -1, z_q.shape[-1]).to(self.dtype)
        for layer in vision.encoder.layers[self.cfg.select_index + 1 :]:
            h = _hidden(layer(h, None))
        return vision.post_layernorm(h)

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """SigLIP's attention-pooling head over `semantic_tokens`: (B, E) (the SigLIP image embedding)."""
        head = getattr(self.vision, "head", None)
        if head is None:
            raise TokbenchError("this SigLIP config has vision_use_head=false: the tower has no image embedding")
        return head(tokens)

    # decoder ------------------------------------------------------------------------------------------
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """`RQVAESiglipModel.decode`: z (B, h, w, C) -> images (B, 3, H, W) in about [-1, 1] (float32), with
        `post_quant_conv` and the decoder in bfloat16 as upstream (its Upsample casts)."""
        z = z.permute(0, 3, 1, 2).contiguous()
        if self.cfg.decoder_latent_shape is not None:
            z = F.interpolate(z.float(), size=tuple(self.cfg.decoder_latent_shape), mode="bilinear",
                              align_corners=False)  # fmt: skip
        z = z.to(self.rqvaesiglip.post_quant_conv.weight.dtype)
        return self.rqvaesiglip.decoder(self.rqvaesiglip.post_quant_conv(z)).float()

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h', w', d), d <= depth -> images: the sum of the first d code vectors, decoded."""
        return self.decode_latent(self.quantizer.embed(codes))


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def build_model(cfg: VilaUConfig, text_tower: bool = True, attention: str = "eager", rqtransformer: bool = False,
                device: str | torch.device = "cpu") -> VilaUModel:  # fmt: skip
    """An unloaded `VilaUModel` (device="meta": the layout without memory; with `rqtransformer`, the whole
    release's state dict)."""
    with torch.device(device):
        return VilaUModel(cfg, text_tower, attention, rqtransformer)


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def alias_groups(model: nn.Module) -> list[list[str]]:
    """State-dict names that hold one tensor (shared codebooks, logit_scale / logit_bias aliases)."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def fill_aliases(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> list[str]:
    """Accept a checkpoint that stores every alias (save_pretrained with aliases) or only one of each group:
    the missing names are filled from the stored one; stored aliases that differ are refused. Returns the
    names filled."""
    filled = []
    for group in alias_groups(model):
        present = [n for n in group if n in sd]
        if not present:
            continue
        first = sd[present[0]]
        for other in present[1:]:
            if sd[other].shape != first.shape or not torch.equal(sd[other], first):
                raise CheckpointError(
                    f"{source}: {present[0]!r} and {other!r} are one tensor in this model (shared_codebook / the "
                    "logit aliases) but differ in the file; check shared_codebook in the config"
                )
        for name in group:
            if name not in sd:
                sd[name] = first
                filled.append(name)
    return filled


def is_vila_u(keys: set[str]) -> bool:
    return PROBE_KEY in keys or any(k.startswith(TOWER + "quantizer.codebooks.") for k in keys)


# ---------------------------------------------------------------------------------------------------
# Preprocessing and the tokenizer
# ---------------------------------------------------------------------------------------------------


@register_protocol(
    PROTOCOL,
    "VILA-U (vila_u/mm_utils.py process_image, image_aspect_ratio 'resize'): both sides resized to the target "
    "with PIL's default BICUBIC, aspect ratio not kept, no crop (the CLIPImageProcessor's own resize and crop "
    "are then no-ops); mean = std = 0.5 inside the tokenizer",
    geometry=lambda w, h, size: scale(w, h, size, size),
)
def vila_u_preprocess(img: Image.Image, size: int) -> Image.Image:
    return drop_alpha(img).resize((size, size), resample=Image.BICUBIC)


FEATURE_STAGES = ("pre_quant", "post_quant", "semantic")


class VilaUTokenizer(ModuleTokenizer):
    """VILA-U's vision tower as a tokenizer.

    `encode(images, depth=None)`: (B, 3, S, S) in [0, 1], S the SigLIP input size (the official code has one
    position table and no interpolation) -> ids (B, h*w, d) int64, row-major positions, the residual depths in
    the official order (depth 0 = coarsest), d = `depth` (a prefix of the residual depth D; default D).
    `decode`: the sum of the d code vectors per position through the bf16 pixel decoder -> [0, 1], the
    official `(x + 1) * 127.5` clamped, divided by 255 (the official save then truncates to uint8).
    """

    feature_stages = FEATURE_STAGES

    def __init__(self, model: VilaUModel, spec: TokenizerSpec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.cfg = model.cfg
        self.spec = spec

    # input ----------------------------------------------------------------------------------------------
    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        cfg = self.cfg
        h, w = (int(s) for s in images.shape[-2:])
        if h // cfg.patch_size != cfg.grid or w // cfg.patch_size != cfg.grid:
            raise TokbenchError(
                f"{self.spec.name} takes {cfg.image_size}x{cfg.image_size} images (a {cfg.grid}x{cfg.grid} grid of "
                f"{cfg.patch_size}-px SigLIP patches: the official code has one position table and no "
                f"interpolation, square only), got {h}x{w}; preprocess with the {self.spec.preprocessing!r} protocol"
            )
        x = images.to(self.device, torch.float32)
        mean = torch.tensor(cfg.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.image_std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.model.dtype)

    def _depth(self, depth: Any) -> int:
        if depth is None:
            return self.cfg.depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.cfg.depth:
            raise TokbenchError(
                f"{self.spec.name}: depth must be an integer in [1, {self.cfg.depth}] (a prefix of the residual "
                f"depth), got {depth!r}"
            )
        return depth

    def _codebook_size(self, depth: int) -> int | tuple[int, ...]:
        sizes = self.cfg.n_embed[:depth]
        return sizes[0] if len(set(self.cfg.n_embed)) == 1 else tuple(sizes)

    # tokens ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: torch.Tensor, depth: int | None = None) -> Tokens:
        d = self._depth(depth)
        codes, _ = self.model.encode(self._to_model(images), d)
        b, h, w, _ = codes.shape
        return Tokens(
            ids=codes.reshape(b, h * w, d),
            grid=(h, w),
            codebook_size=self._codebook_size(d),
            meta={"depth": d, "residual_depth": self.cfg.depth,
                  "layout": "ids (B, h*w, depth): row-major positions, residual depth 0 (coarsest) first"},
        )  # fmt: skip

    def _codes(self, tokens: Tokens) -> torch.Tensor:
        ids = tokens.ids
        if ids is None or ids.ndim != 3:
            got = None if ids is None else tuple(ids.shape)
            raise TokbenchError(f"{self.spec.name} decodes ids of shape (B, h*w, depth); got {got}")
        b, n, d = ids.shape
        if not 1 <= d <= self.cfg.depth:
            raise TokbenchError(f"{self.spec.name}: {d} residual codes per position; at most {self.cfg.depth}")
        grid = tokens.grid or (math.isqrt(n), math.isqrt(n))
        if grid[0] * grid[1] != n:
            raise TokbenchError(f"Tokens.grid {grid} does not match {n} positions per image")
        ids = ids.to(self.device).long()
        for i in range(d):
            k = self.cfg.n_embed[i]
            if ids.numel() and (int(ids[..., i].min()) < 0 or int(ids[..., i].max()) >= k):
                raise TokbenchError(f"depth-{i} ids must lie in [0, {k}), got [{int(ids[..., i].min())}, "
                                    f"{int(ids[..., i].max())}]")  # fmt: skip
        return ids.view(b, grid[0], grid[1], d)

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        x = self.model.decode_codes(self._codes(tokens))
        return (x.add(1).mul(127.5).clamp(0, 255) / 255).clamp(0, 1)

    # understanding --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, N, D) float32 token features: `pre_quant` the SigLIP hidden state the quantiser sees (after
        layer select_layer), `post_quant` the summed code vectors (straight-through form, the features the
        LLM and the decoder consume), `semantic` the SigLIP forward continued from `post_quant` (the remaining
        layers and `post_layernorm`: the tokens of the text-aligned branch)."""
        if stage not in FEATURE_STAGES:
            raise TokbenchError(f"{self.spec.name} has feature stages {', '.join(FEATURE_STAGES)}; got {stage!r}")
        pre = self.model.pre_quant(self._to_model(images))
        if stage == "pre_quant":
            return pre.reshape(pre.shape[0], -1, pre.shape[-1]).float()
        _, z_q = self.model.quantize(pre)
        if stage == "post_quant":
            return z_q.reshape(z_q.shape[0], -1, z_q.shape[-1]).float()
        return self.model.semantic_tokens(z_q).float()

    @torch.inference_mode()
    def semantic(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Understanding outputs of images (B, 3, S, S) in [0, 1]: `embedding` (B, E): the SigLIP image
        embedding formed from the QUANTISED features (remaining layers, post_layernorm, MAP head; the paper
        aligns the discrete features with text, no released code forms it), `embedding_normalized`,
        `embedding_continuous` (the same head from the unquantised features, i.e. plain SigLIP), `post_quant`
        and `pre_quant` (B, N, C), `ids` (B, N, D)."""
        pre = self.model.pre_quant(self._to_model(images))
        codes, z_q = self.model.quantize(pre)
        emb = self.model.image_embedding(self.model.semantic_tokens(z_q)).float()
        cont = self.model.image_embedding(self.model.semantic_tokens(pre)).float()
        b = pre.shape[0]
        return {
            "embedding": emb,
            "embedding_normalized": F.normalize(emb, dim=-1),
            "embedding_continuous": cont,
            "post_quant": z_q.reshape(b, -1, z_q.shape[-1]).float(),
            "pre_quant": pre.reshape(b, -1, pre.shape[-1]).float(),
            "ids": codes.reshape(b, -1, codes.shape[-1]),
        }

    def clip_encoder(self) -> VilaUClipEncoder:
        """The tower as an image-text encoder (`zeroshot` / `semantic-similarity`, `encoder=<variant>`)."""
        return VilaUClipEncoder(self)


# open_clip model whose text tokenizer is SigLIP's (its hf_tokenizer_name, context 64, `canonicalize` cleaning,
# as big_vision): the same 32k SentencePiece vocabulary as google/siglip-large-patch16-256 and -so400m-patch14-384.
TEXT_TOKENIZER_MODEL = "ViT-L-16-SigLIP-256"


class VilaUClipEncoder:
    """VILA-U's SigLIP image and text towers with the metrics' encoder interface.

    `encode_image(images [0, 1]) -> (B, E)`: uint8-quantised (as files), the `vila-u` protocol to S x S, then
    `VilaUTokenizer.semantic(...)["embedding"]` (from the discrete codes). `encode_text(texts) -> (N, E)`: the
    stored SigLIP text tower (`text_model`: last-token pooling and head) on SigLIP's tokenizer (open_clip's
    `HFTokenizer` for SigLIP, padded to the text tower's context length), as google/siglip-* are used.
    """

    def __init__(self, tokenizer: VilaUTokenizer) -> None:
        towers = tokenizer.model.rqvaesiglip.siglip_model
        if not towers.has_text:
            raise TokbenchError(
                f"{tokenizer.spec.name} was built without its text tower (text_tower=False): no text embeddings; "
                "load it with text_tower=True"
            )
        self.tokenizer = tokenizer
        self.name = tokenizer.spec.name
        self._text_tokenizer: Callable[[list[str]], torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> VilaUClipEncoder:
        self.tokenizer.to(device)
        return self

    @property
    def text_tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        if self._text_tokenizer is None:
            import open_clip

            from ..metrics.encoders import hf_tokenizer_loader, open_clip_spec

            text_cfg = dict(open_clip.get_model_config(TEXT_TOKENIZER_MODEL)["text_cfg"])
            text_cfg["context_length"] = int(self.tokenizer.cfg.text.get("max_position_embeddings", 64))
            self._text_tokenizer = hf_tokenizer_loader(open_clip_spec(TEXT_TOKENIZER_MODEL, "webli"), text_cfg)()
        return self._text_tokenizer

    @text_tokenizer.setter
    def text_tokenizer(self, fn: Callable[[list[str]], torch.Tensor]) -> None:
        self._text_tokenizer = fn

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor, to_pil_image

        size = self.tokenizer.cfg.image_size
        u8 = torch.floor(images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu()
        x = torch.stack([pil_to_tensor(vila_u_preprocess(to_pil_image(im), size)) for im in u8]).float() / 255
        return self.tokenizer.semantic(x)["embedding"]

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        towers = self.tokenizer.model.rqvaesiglip.siglip_model
        ids = self.text_tokenizer(list(texts))
        vocab = int(towers.text_model.embeddings.token_embedding.num_embeddings)
        if ids.numel() and int(ids.max()) >= vocab:
            raise TokbenchError(
                f"{self.name}'s text tower has a vocabulary of {vocab}, smaller than SigLIP's tokenizer needs "
                f"({int(ids.max()) + 1}): it cannot embed text (a test-size model?)"
            )
        return towers.text_model(input_ids=ids.to(self.tokenizer.device)).pooler_output.float()

    def describe(self) -> dict[str, Any]:
        s = self.tokenizer.cfg.image_size
        spec = self.tokenizer.spec
        return {
            "encoder": f"VILA-U SigLIP towers of {self.name} (image embedding from its discrete codes: the SigLIP "
            "forward continued from the quantised features)",
            "weights": str(spec.source.get("checkpoint", spec.source.get("weights"))),
            "input": f"uint8-quantised, vila-u protocol (PIL bicubic to {s}x{s}), mean/std 0.5",
            "text": f"SigLIP text tower of the same file, open_clip SigLIP tokenizer ({TEXT_TOKENIZER_MODEL})",
        }


# ---------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------


CONFIG_FILE = "vision_tower/config.json"  # the artifact's companion


def _release_config(b: Build, path: Path | None) -> tuple[dict[str, Any], str, bool]:
    """(constructor config, where it came from, whether it is the variant row's reconstruction): the release's
    config.json beside the weights (for a variant's own artifact, fetched like the weights if allowed), else the
    variant row; the caller's keys (those that differ from the variant row) over either."""
    variant = dict(b.variant.config) if b.variant is not None else {}
    given = {k: v for k, v in b.config.items() if k not in variant or variant[k] != v}
    beside = b.beside(path, Path(CONFIG_FILE).name) if path is not None else None
    artifact = b.variant.weights if b.variant is not None else None
    if beside is None and path is not None and artifact is not None and b.weights is None:
        try:
            beside = resolve(artifact, filename=CONFIG_FILE)
        except WeightsUnavailable:
            beside = None
    reconstructed = False
    if beside is not None:
        base, source = read_config(beside), str(beside)
    elif b.variant is not None:
        base, source, reconstructed = variant, f"{b.variant.name} (reconstructed release config)", True
    elif given:
        return given, "given", False
    else:
        raise TokbenchError(
            f"{FAMILY_NAME} needs the vision tower's config.json: none beside {path}; pass "
            "config=<vision_tower/config.json>"
        )
    if given:
        source += f" + given {sorted(given)}"
    return {**base, **given}, source, reconstructed


def _siglip_config(raw: Mapping[str, Any], path: Path | None) -> tuple[dict[str, Any] | None, str]:
    """The SigLIP architecture config that `pretrained_model` names: `config['siglip_config']`, else a folder of
    that name beside the weights holding config.json (what the official constructor reads), else the table."""
    if raw.get("siglip_config") is not None:
        return dict(raw["siglip_config"]), "config['siglip_config']"
    section, _ = rqvaesiglip_section(raw)
    name = str(section.get("pretrained_model", RELEASE_256["rqvaesiglip"]["pretrained_model"]))
    if path is not None and (folder := path.parent / name / "config.json").is_file():
        return read_config(folder), str(folder)
    if name in SIGLIP_RELEASES:
        return SIGLIP_RELEASES[name], f"{name} (built-in architecture table)"
    where = f" (no {path.parent / name / 'config.json'})" if path is not None else ""
    raise TokbenchError(
        f"{FAMILY_NAME}: the SigLIP architecture config {name!r} (rqvaesiglip.pretrained_model) was not found{where}; "
        f"put its config.json in a folder {name!r} beside the weights, or pass config['siglip_config'] = "
        f"{{vision_config: ..., text_config: ...}} (built in: {', '.join(SIGLIP_RELEASES)})"
    )


def _preprocessor(raw: dict[str, Any], path: Path | None) -> None:
    """Take the processor's mean / std from preprocessor_config.json beside the weights (0.5 in the releases,
    and what `rqvaesigliptransformer_encoder.py` hard-codes), unless the config gives them."""
    beside = path.parent / "preprocessor_config.json" if path is not None else None
    if beside is None or not beside.is_file():
        return
    pre = read_config(beside)
    for key in ("image_mean", "image_std"):
        if key in pre and key not in raw:
            raw[key] = pre[key]


def build(b: Build) -> VilaUTokenizer:
    path = None if b.random_weights else b.checkpoint(CHECKPOINT_HINT)
    sd = _read_release(path) if path is not None else {}
    raw, config_source, reconstructed = _release_config(b, path)
    siglip, siglip_source = _siglip_config(raw, path)
    _preprocessor(raw, path)
    cfg = vila_u_config(raw, siglip)
    text_tower = bool(b.option("text_tower", True))
    attention = b.option("attention", "eager")
    with_rq = bool(b.option("rqtransformer", False))

    skipped: list[str] = []

    def load(model: VilaUModel, path: Path) -> dict[str, str]:
        filled = fill_aliases(model, sd, path.name)
        skipped.extend(k for k in sd if (not with_rq and k.startswith(RQTRANSFORMER))
                       or (not text_tower and k.startswith(TEXT_PREFIX)))  # fmt: skip
        if cfg.rqtransformer is not None and not with_rq and not reconstructed:  # a guess may not refuse the file
            _check_rqtransformer(sd, cfg.rqtransformer, path.name)
        for k in skipped:  # not held while the rest is cast and loaded
            del sd[k]
        load_strict(model, sd, source=path.name)
        sd.clear()
        out = {"config": config_source, "siglip_config": siglip_source}
        if filled:
            out["aliases_filled"] = f"{len(filled)} alias names stored once in the file ({filled[0]}, ...)"
        return out

    model = b.model(lambda: _make(cfg, text_tower, attention, with_rq), load, CHECKPOINT_HINT)
    model.reset_position_ids()
    towers = model.rqvaesiglip
    if with_rq:
        model.rqtransformer.to(b.torch_dtype).requires_grad_(False)
    towers.siglip_model.to(b.torch_dtype)
    towers.quantizer.to(b.torch_dtype)
    towers.post_quant_conv.to(torch.bfloat16)
    towers.decoder.to(torch.bfloat16)
    if b.random_weights:
        b.source.update({"config": config_source, "siglip_config": siglip_source})

    hc, wc = cfg.code_grid
    oh, ow = cfg.output_size
    n_rq = sum(1 for k in skipped if k.startswith(RQTRANSFORMER))
    b.notes += [
        f"VILA-U vision tower: SigLIP ({cfg.layers} layers, width {cfg.hidden_size}, {cfg.patch_size}-px patches, "
        f"{attention} attention) up to layer {cfg.select_index} -> residual quantiser of depth {cfg.depth} over "
        f"{'one shared codebook' if cfg.shared_codebook else 'per-depth codebooks'} of "
        f"{'/'.join(str(k) for k in sorted(set(cfg.n_embed)))} codes -> ids (B, {hc * wc}, {cfg.depth}) on a "
        f"{hc}x{wc} grid",
        f"encoder and quantiser in {b.dtype}; post_quant_conv and the RQ-VAE pixel decoder in bfloat16 as upstream "
        f"(its Upsample casts to bfloat16); decoded images {oh}x{ow}"
        + (f" (latent resized to {list(cfg.decoder_latent_shape)} first)" if cfg.decoder_latent_shape else ""),
        ("rqtransformer (the LLM's depth-transformer head) loaded (option rqtransformer; unused to tokenize)"
         if with_rq else "rqtransformer (the LLM's depth-transformer head) not loaded"
         + (f" ({n_rq} tensors)" if n_rq else ""))
        + ("; SigLIP text tower loaded (clip_encoder)" if text_tower else "; text tower not loaded"),
        "`semantic` embedding: the SigLIP forward continued from the quantised features (no released code forms it)",
    ]
    spec = b.spec(
        resolution=cfg.image_size,
        tokens_per_image=hc * wc,
        codebook_size=cfg.codebook_size,
        bits_per_token=sum(bits_for(k) for k in cfg.n_embed),
        normalisation=f"(x - {cfg.image_mean[0]}) / {cfg.image_std[0]}, i.e. [-1, 1]",
        preprocessing=b.option("protocol") or PROTOCOL,
    )
    return VilaUTokenizer(model, spec)


def _read_release(path: Path) -> dict[str, torch.Tensor]:
    """The release file's tensors, refused with what the file looks like when it is no VILA-U vision tower."""
    sd = read_state_dict(path)
    if not is_vila_u(set(sd)):
        raise CheckpointError(
            f"{path.name} is not a VILA-U vision tower checkpoint (no {PROBE_KEY}): it looks like "
            f"{describe_checkpoint(sd)}"
        )
    return sd


def _make(cfg: VilaUConfig, text_tower: bool, attention: str, rqtransformer: bool) -> VilaUModel:
    """The model with storage but no initialisation (every stored tensor is loaded strictly afterwards, the
    position ids are reset): the full tower's random init would cost seconds for nothing."""
    model = build_model(cfg, text_tower, attention, rqtransformer, device="meta")
    if torch.empty(0).device.type == "meta":  # inside b.model's random-weights build: stay on meta
        return model
    model = model.to_empty(device="cpu")
    towers = model.rqvaesiglip  # to_empty gives each name its own tensor: tie the aliases again
    towers.logit_scale, towers.logit_bias = towers.siglip_model.logit_scale, towers.siglip_model.logit_bias
    return model


def _check_rqtransformer(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str) -> None:
    """The file's `rqtransformer.*` must be what the config's `rqtransformer` section builds (a check that
    the config belongs to the file, although the part is not loaded)."""
    stored = {k: tuple(v.shape) for k, v in sd.items() if k.startswith(RQTRANSFORMER)}
    if not stored:
        return
    expected = rqtransformer_layout(config)
    if stored != expected:
        diff = sorted(set(stored) ^ set(expected)) or sorted(k for k in stored if stored[k] != expected[k])
        raise CheckpointError(
            f"{source}: its rqtransformer.* does not match the config's rqtransformer section ({diff[:4]}); check "
            "that config.json belongs to this file"
        )


# ---------------------------------------------------------------------------------------------------
# Released variants, family
# ---------------------------------------------------------------------------------------------------

PAPER = ("Wu et al., VILA-U: a Unified Foundation Model Integrating Visual Understanding and Generation, "
         "arXiv:2409.04429 (ICLR 2025)")  # fmt: skip
LICENCE = "MIT (Hugging Face model card of mit-han-lab/vila-u-7b-256; code MIT)"
_TABLE1 = (
    "Wu et al. 2024 (arXiv:2409.04429), Table 1: rFID and zero-shot top-1 on ImageNet of the unified vision tower "
    "(FID implementation and image count not stated); these are the paper's foundation tower numbers, and a user "
    "reports lower values for the tower in the VLM release (mit-han-lab/vila-u issue #22)"
)


def _artifact(name: str, repo: str, size: int | None, licence: str) -> Artifact:
    return register_artifact(Artifact(
        name=name, repo_id=repo, filename="vision_tower/model.safetensors", size=size, licence=licence,
        companions=("vision_tower/config.json", "vision_tower/preprocessor_config.json"), used_by=name,
    ))  # fmt: skip


VARIANTS: tuple[Variant, ...] = (
    Variant(
        name="vila-u-7b-256",
        family=FAMILY_NAME,
        config=RELEASE_256,
        weights=_artifact("vila-u-7b-256", "mit-han-lab/vila-u-7b-256", 2_710_000_000, LICENCE),
        resolution=256,
        description="VILA-U 7B's vision tower at 256 px: SigLIP-Large/16, 16x16 positions x 4 residual codes of "
        "16,384 (shared codebook), RQ-VAE decoder; SigLIP text tower in the same file",
        paper=PAPER,
        published={},  # the paper's Table 1 reports rFID and zero-shot top-1; not checked against it here
        published_source="not entered: " + _TABLE1 + " has the vision tower's rFID and zero-shot top-1 (the paper "
        "could not be read where this row was written; enter them with their table once checked)",
    ),
    Variant(
        name="vila-u-7b-384",
        family=FAMILY_NAME,
        config=RELEASE_384,
        weights=_artifact("vila-u-7b-384", "mit-han-lab/vila-u-7b-384", None,
                          "MIT (assumed as the 256 release's card; the 384 card was not read)"),
        resolution=384,
        description="VILA-U 7B's vision tower at 384 px: SigLIP-So400m/14, 27x27 positions x 16 residual codes of "
        "16,384, RQ-VAE decoder from a 24x24-resized latent (sizes reconstructed: the release's config.json beside "
        "the weights is used when present)",
        paper=PAPER,
        published={},
        published_source="not entered: " + _TABLE1 + " (see vila-u-7b-256)",
    ),
)

FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    variants=VARIANTS,
    default_variant="vila-u-7b-256",
    description="VILA-U unified vision tower: SigLIP features, residual quantisation (depth 4 / 16), RQ-VAE "
    "decoder, SigLIP text tower",
    code=UPSTREAM,
    build_options={
        "dtype": (DType, "float32"),
        "text_tower": (bool, True),
        "attention": (Literal["eager", "sdpa"], "eager"),
        "rqtransformer": (bool, False),
        "protocol": str,
    },
    encode_options={"depth": PositiveInt},
)

__all__ = [
    "FAMILY",
    "RELEASE_256",
    "RELEASE_384",
    "SIGLIP_RELEASES",
    "DecoderConfig",
    "RQTransformerWeights",
    "VilaUClipEncoder",
    "VilaUConfig",
    "VilaUModel",
    "VilaUTokenizer",
    "build_model",
    "rqtransformer_layout",
    "vila_u_config",
]
