"""Chameleon's image tokenizer: the taming VQGAN that Chameleon (and Anole) read and write images with.

One tokenizer for understanding and generation: a 512x512 image becomes 32x32 = 1024 ids from a
codebook of 8192 (`chameleon/inference/vqgan.py` + `image_tokenizer.py`, facebookresearch/chameleon,
a copy of taming-transformers' `VQModel`). The encoder and quantizer are transformers'
`ChameleonVQVAEEncoder` / `ChameleonVQVAEVectorQuantizer` (same key names as the release, same indices);
transformers has no VQGAN decoder, so the taming `Decoder` is written here with the original key names.
Released layouts: Meta's `tokenizer/vqgan.ckpt` (Lightning dict, bare keys; carried byte-identical by
Anole), and the transformers conversion (`model.vqmodel.*` inside the whole model, WITHOUT the decoder:
such a variant encodes only). The official preprocessing is registered as the protocol "chameleon".

Also Emu3's vision tokenizer (family `emu3-vq`), the next Chameleon-style unified tokenizer: a wrapper around
transformers' `Emu3VQVAE`, loading BAAI's own release layout (`BAAI/Emu3-VisionTokenizer`, renamed here) or
the transformers conversion (`model.vqmodel.*`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import (
    load_strict,
    read_under_prefix,
)
from ..core import GridVQTokenizer, TokbenchError, Tokens, bits_for
from ..features import check_stage, grid_tokens, grid_vq_input
from ..options import DType, PositiveInt
from ..protocols import Geometry, register_protocol, scale, shift
from ..registry import Family, Variant
from ..weights import Artifact, WeightsUnavailable, local_path, resolve, shard_resolver

FAMILY_NAME = "chameleon-vqgan"
GROUP_NORM_GROUPS = 32  # hard-coded by the official `Normalize`
GROUP_NORM_EPS = 1e-6

# ---------------------------------------------------------------------------------------------------
# Preprocessing: the official ImageTokenizer._whiten_transparency + _vqgan_input_from
# ---------------------------------------------------------------------------------------------------


def whiten_transparency(img: Image.Image) -> Image.Image:
    """RGB image with any transparency alpha-blended onto white, truncated to uint8 as the official code does."""
    if img.mode == "RGB":
        return img
    rgba = np.array(img.convert("RGBA"))
    if not (rgba[:, :, 3] < 255).any():
        return img.convert("RGB")
    alpha = rgba[:, :, 3:4] / 255.0
    # float64 blend, then astype(uint8): truncation, not rounding (PIL's alpha_composite rounds)
    rgb = (1 - alpha) * 255 + alpha * rgba[:, :, :3]
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@register_protocol(
    "chameleon",
    "Chameleon's ImageTokenizer: transparency alpha-blended onto white (truncated), short side resized to the "
    "target with round() and PIL LANCZOS, centre crop with floor offsets",
    geometry=lambda w, h, size: chameleon_geometry(w, h, size),
)
def chameleon_preprocess(img: Image.Image, size: int) -> Image.Image:
    """The official `_whiten_transparency` then `_vqgan_input_from` (up to the x/255*2-1 scaling): RGB PIL, size x size."""
    img = whiten_transparency(img)
    img = img.resize(_chameleon_resized(*img.size, size), Image.LANCZOS)
    x0 = (img.width - size) // 2
    y0 = (img.height - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


def _chameleon_resized(w: int, h: int, size: int) -> tuple[int, int]:
    factor = size / min(w, h)
    return round(factor * w), round(factor * h)


def chameleon_geometry(w: int, h: int, size: int) -> Geometry:
    """Where `chameleon_preprocess` puts source pixels (boxes of annotated text follow it)."""
    nw, nh = _chameleon_resized(w, h, size)
    return scale(w, h, nw, nh).then(shift(-((nw - size) // 2), -((nh - size) // 2)))


# ---------------------------------------------------------------------------------------------------
# Config: the release's yaml (model.params), VQModel's constructor arguments, or transformers' vq_config
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VQGANConfig:
    """VQModel(ddconfig, n_embed, embed_dim) arguments, flattened (taming names)."""

    embed_dim: int = 256
    n_embed: int = 8192
    z_channels: int = 256
    resolution: int = 512
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    attn_type: str = "vanilla"
    tanh_out: bool = False

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# The released tokenizer (vqgan.yaml of chameleon-7b/30b and Anole-7b): 68,718,467 parameters.
RELEASE_CONFIG: dict[str, Any] = {
    "embed_dim": 256,
    "n_embed": 8192,
    "ddconfig": {
        "double_z": False,
        "z_channels": 256,
        "resolution": 512,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}

# VQModel arguments that only matter for training or that the official ImageTokenizer overrides.
_TRAINING_PARAMS = {
    "ckpt_path", "lossconfig", "ignore_keys", "image_key", "colorize_nlabels", "monitor", "scheduler_config",
    "lr_g_factor", "sane_index_shape", "base_learning_rate",
}  # fmt: skip
_DDCONFIG_KEYS = {
    "double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
    "attn_resolutions", "dropout", "resamp_with_conv", "give_pre_end", "tanh_out", "use_linear_attn", "attn_type",
}  # fmt: skip
_DDCONFIG_REQUIRED = (
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "num_res_blocks",
    "attn_resolutions",
)
# transformers' ChameleonVQVAEConfig field -> taming ddconfig key (the converter's renaming, reversed)
_FROM_TRANSFORMERS = {
    "base_channels": "ch",
    "out_channels": "out_ch",
    "channel_multiplier": "ch_mult",
    "double_latent": "double_z",
    "latent_channels": "z_channels",
    "resolution": "resolution",
    "in_channels": "in_channels",
    "num_res_blocks": "num_res_blocks",
    "attn_resolutions": "attn_resolutions",
    "dropout": "dropout",
    "attn_type": "attn_type",
}


def _taming_from_transformers(vq: Mapping[str, Any]) -> dict[str, Any]:
    dd = {new: vq[old] for old, new in _FROM_TRANSFORMERS.items() if old in vq and vq[old] is not None}
    dd.setdefault("attn_resolutions", [])
    dd.setdefault("double_z", False)  # transformers' default, unlike taming's
    dd.setdefault("out_ch", dd.get("in_channels", 3))
    missing = [k for k in ("embed_dim", "num_embeddings") if k not in vq]
    if missing:
        raise TokbenchError(f"transformers vq_config lacks {missing}; is this a ChameleonVQVAEConfig?")
    return {"embed_dim": vq["embed_dim"], "n_embed": vq["num_embeddings"], "ddconfig": dd}


def config_layout(config: Mapping[str, Any]) -> str:
    """Which layout a config dict is in: "yaml" (model.params), "transformers" (vq_config), or "constructor"."""
    if isinstance(config.get("model"), Mapping):
        return "yaml"
    if isinstance(config.get("vq_config"), Mapping) or "num_embeddings" in config:
        return "transformers"
    return "constructor"


def vqgan_config(config: Mapping[str, Any] | None) -> VQGANConfig:
    """Parse any accepted config layout into a `VQGANConfig` (empty or None: the released tokenizer).

    Accepted: the release's `vqgan.yaml` (`model.target` / `model.params`, whose `ckpt_path` and
    `lossconfig` are ignored as the official loader deletes them), VQModel's constructor arguments
    (`embed_dim`, `n_embed`, `ddconfig`; as config.json), and transformers' `vq_config` (or a whole
    ChameleonConfig holding one). A nested layout, when present, is the whole config: the flat keys
    beside it come from the variant row.
    """
    config = dict(config or {})
    if not config:
        config = RELEASE_CONFIG
    layout = config_layout(config)
    if layout == "yaml":
        params = config["model"].get("params")
        if not isinstance(params, Mapping):
            raise TokbenchError(
                "the config has a `model` section without `params`; expected the release's vqgan.yaml layout "
                "(model: {target: taming.models.vqgan.VQModel, params: {embed_dim, n_embed, ddconfig}})"
            )
        config = dict(params)
    elif layout == "transformers":
        config = _taming_from_transformers(config.get("vq_config", config))

    params = {k: v for k, v in config.items() if k not in _TRAINING_PARAMS}
    if params.get("remap") is not None:
        raise TokbenchError(
            f"VQModel remap={params['remap']!r} (index remapping to a used-code list) is not supported; "
            "the Chameleon release has remap=None"
        )
    params.pop("remap", None)
    refuse_unknown("VQModel arguments in the chameleon-vqgan config", params,
                   {"embed_dim", "n_embed", "ddconfig"}, "(the `model.params` of vqgan.yaml)")
    missing = [k for k in ("embed_dim", "n_embed", "ddconfig") if k not in params]
    if missing:
        raise TokbenchError(
            f"the chameleon-vqgan config lacks {missing}; pass the release's vqgan.yaml, the VQModel "
            "constructor arguments as JSON, or transformers' vq_config"
        )
    dd = dict(params["ddconfig"])
    extra = sorted(set(dd) - _DDCONFIG_KEYS)
    # the official Encoder/Decoder swallow unknown keys (**ignore_kwargs); say so rather than stay silent
    if extra:
        warnings.warn(
            f"chameleon-vqgan: ignoring ddconfig keys {extra} (the official code ignores them too)",
            stacklevel=3,
        )
    missing = [k for k in _DDCONFIG_REQUIRED if k not in dd]
    if missing:
        raise TokbenchError(
            f"the chameleon-vqgan ddconfig lacks {missing} (required by the official Encoder/Decoder)"
        )
    # taming's default is True, and quant_conv cannot take the 2 * z_channels output that it gives
    if dd.get("double_z", True):
        raise TokbenchError(
            "ddconfig.double_z must be false for a VQGAN (got "
            f"{dd.get('double_z', 'unset, whose default is true')}): quant_conv expects z_channels inputs"
        )
    if dd.get("use_linear_attn") or dd.get("attn_type", "vanilla") not in ("vanilla", "none"):
        raise TokbenchError(
            f"attn_type must be 'vanilla' or 'none' (as the official make_attn), got {dd.get('attn_type')!r}"
        )
    if not dd.get("resamp_with_conv", True):
        raise TokbenchError(
            "resamp_with_conv=false is not supported: transformers' encoder always downsamples by conv"
        )
    if dd.get("give_pre_end"):
        raise TokbenchError(
            "give_pre_end=true returns decoder features, not images; it cannot be a tokenizer"
        )
    return VQGANConfig(
        embed_dim=int(params["embed_dim"]),
        n_embed=int(params["n_embed"]),
        z_channels=int(dd["z_channels"]),
        resolution=int(dd["resolution"]),
        in_channels=int(dd["in_channels"]),
        out_ch=int(dd["out_ch"]),
        ch=int(dd["ch"]),
        ch_mult=tuple(int(m) for m in dd.get("ch_mult", (1, 2, 4, 8))),
        num_res_blocks=int(dd["num_res_blocks"]),
        attn_resolutions=tuple(int(r) for r in (dd["attn_resolutions"] or ())),
        dropout=float(dd.get("dropout", 0.0)),
        attn_type=str(dd.get("attn_type", "vanilla")),
        tanh_out=bool(dd.get("tanh_out", False)),
    )


# ---------------------------------------------------------------------------------------------------
# The taming decoder (transformers has none), with the release's key names
# ---------------------------------------------------------------------------------------------------


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    if channels % GROUP_NORM_GROUPS:
        raise TokbenchError(
            f"GroupNorm with {GROUP_NORM_GROUPS} groups needs channels divisible by {GROUP_NORM_GROUPS}, got "
            f"{channels}; check ch / ch_mult in the config"
        )
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """norm1-swish-conv1-norm2-swish-dropout-conv2 plus a shortcut (1x1 `nin_shortcut` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions (1x1 q/k/v/proj_out), computed as the official bmm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, h, w = h_.shape
        q = self.q(h_).reshape(b, c, h * w).permute(0, 2, 1)
        k = self.k(h_).reshape(b, c, h * w)
        weights = F.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        out = torch.bmm(self.v(h_).reshape(b, c, h * w), weights.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


def _attn(channels: int, attn_type: str) -> nn.Module:
    return AttnBlock(channels) if attn_type == "vanilla" else nn.Identity()


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_ch, h * 2^(L-1), w * 2^(L-1)) in the model's [-1, 1] range.

    Keys as taming's: `conv_in`, `mid.{block_1, attn_1, block_2}`, `up.{level}.block.{j}` (num_res_blocks + 1
    per level, level 0 = full resolution), `up.{level}.attn.{j}` at `attn_resolutions`, `up.{level}.upsample`
    on all levels but 0, `norm_out`, `conv_out`.
    """

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.num_resolutions = len(cfg.ch_mult)
        self.num_res_blocks = cfg.num_res_blocks
        self.tanh_out = cfg.tanh_out
        block_in = cfg.ch * cfg.ch_mult[-1]
        curr_res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout)
        self.mid.attn_1 = _attn(block_in, cfg.attn_type)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout)

        levels: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[level]
            for _ in range(self.num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    up.attn.append(_attn(block_in, cfg.attn_type))
            if level != 0:
                up.upsample = Upsample(block_in)
                curr_res *= 2
            levels.insert(0, up)
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for j in range(self.num_res_blocks + 1):
                h = up.block[j](h)
                if len(up.attn) > 0:
                    h = up.attn[j](h)
            if level != 0:
                h = up.upsample(h)
        h = self.conv_out(_swish(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


# ---------------------------------------------------------------------------------------------------
# The VQGAN: transformers' encoder and quantizer + our decoder, under VQModel's key names
# ---------------------------------------------------------------------------------------------------


def transformers_vq_config(cfg: VQGANConfig) -> Any:
    """The equivalent `transformers.ChameleonVQVAEConfig` (the converter's renaming)."""
    from transformers import ChameleonVQVAEConfig

    return ChameleonVQVAEConfig(
        embed_dim=cfg.embed_dim,
        num_embeddings=cfg.n_embed,
        double_latent=False,
        latent_channels=cfg.z_channels,
        resolution=cfg.resolution,
        in_channels=cfg.in_channels,
        base_channels=cfg.ch,
        channel_multiplier=list(cfg.ch_mult),
        num_res_blocks=cfg.num_res_blocks,
        attn_resolutions=list(cfg.attn_resolutions),
        dropout=cfg.dropout,
        attn_type=cfg.attn_type,
    )


class ChameleonVQGAN(nn.Module):
    """taming's VQModel for inference: `encoder`, `decoder` (absent when `with_decoder` is False), `quantize`,
    `quant_conv`, `post_quant_conv`, in the release's key order. Inputs and outputs are in [-1, 1].
    """

    def __init__(self, cfg: VQGANConfig, with_decoder: bool = True) -> None:
        super().__init__()
        from transformers.models.chameleon.modeling_chameleon import (
            ChameleonVQVAEEncoder,
            ChameleonVQVAEVectorQuantizer,
        )

        for c in {cfg.ch * m for m in cfg.ch_mult} | {cfg.ch}:
            _group_norm(c)  # a clear error before transformers' GroupNorm raises its own
        self.config = cfg
        hf = transformers_vq_config(cfg)
        self.encoder = ChameleonVQVAEEncoder(hf)
        self.decoder = Decoder(cfg) if with_decoder else None
        self.quantize = ChameleonVQVAEVectorQuantizer(hf)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> ids (B, H/f, W/f): `VQModel.encode(x)[2][2]` reshaped."""
        z = self.quant_conv(self.encoder(x))
        _, _, ids = self.quantize(
            z
        )  # squared distance to every row, argmin (first on ties); no l2-normalisation
        return ids.view(z.shape[0], z.shape[2], z.shape[3])

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> image (B, 3, h*f, w*f) in about [-1, 1]: decode(get_codebook_entry(ids))."""
        if self.decoder is None:
            raise TokbenchError("this VQGAN was built without its decoder")
        b, h, w = ids.shape
        z_q = self.quantize.embedding(ids.reshape(-1)).view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(z_q))


# ---------------------------------------------------------------------------------------------------
# Checkpoints: Meta's vqgan.ckpt (bare keys, Lightning dict) and the transformers conversion
# ---------------------------------------------------------------------------------------------------

TRANSFORMERS_PREFIXES = ("model.vqmodel.", "vqmodel.")
PROBE_KEY = "quantize.embedding.weight"
TRAINING_PREFIXES = ("loss.",)  # the VQLPIPSWithDiscriminator's LPIPS net, discriminator and logvar


def read_vqgan_state_dict(
    path: str | Path, resolve_shard: Callable[[str], Path] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """The VQGAN's tensors under VQModel's key names, and the layout they came in ("original"/"transformers").

    From a sharded transformers checkpoint only the shards holding `model.vqmodel.*` are read.
    """
    sd, prefix = read_under_prefix(
        path, ("", *TRANSFORMERS_PREFIXES), PROBE_KEY, resolve_shard=resolve_shard,
        what="Chameleon VQGAN (pass tokenizer/vqgan.ckpt of a Chameleon/Anole release, or a transformers-format "
        "Chameleon checkpoint, model.safetensors.index.json)",
    )  # fmt: skip
    return sd, ("transformers" if prefix else "original")


def ignored_training_keys(sd: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k in sd if k.startswith(TRAINING_PREFIXES)]


def load_vqgan_weights(model: ChameleonVQGAN, sd: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Strictly load a VQModel state dict; `loss.*` training entries are skipped and returned, anything else
    unknown, missing or wrongly shaped raises `CheckpointError`.
    """
    load_strict(model, sd, source=source, ignore_unexpected=lambda k: k.startswith(TRAINING_PREFIXES))
    return ignored_training_keys(sd)


# ---------------------------------------------------------------------------------------------------
# Tokenizer adapter
# ---------------------------------------------------------------------------------------------------

class ChameleonVQGANTokenizer(GridVQTokenizer):
    """Chameleon / Anole image tokenizer: images [0, 1] <-> ids (B, h*w), row-major (y, x).

    The model sees x * 2 - 1 (the official x/255*2-1); `decode` applies the official clamp to [-1, 1] and
    (x + 1) / 2, but returns floats: the official `_pil_from_chw_tensor` then truncates to uint8.
    """

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if not self.model.has_decoder:
            raise TokbenchError(
                f"{self.spec.name} cannot decode: the transformers-format Chameleon release carries the VQGAN "
                "encoder and quantizer but not its decoder. Load 'chameleon-vqgan-anole' (Anole's "
                "tokenizer/vqgan.ckpt, the same tokenizer with its decoder) to reconstruct images."
            )
        return super().decode(tokens)

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, h*w, embed_dim) float32, row-major: `pre_quant` quant_conv(encoder(x)), the quantiser input;
        `post_quant` the codebook rows of the ids, what post_quant_conv and the decoder receive."""
        check_stage(self, stage)
        m = self.model
        z = m.quant_conv(m.encoder(grid_vq_input(self, images)))
        if stage == "post_quant":
            b, _, h, w = z.shape
            _, _, ids = m.quantize(z)  # as encode_ids: nearest row, first on ties
            z = m.quantize.embedding(ids.reshape(-1)).view(b, h, w, -1).permute(0, 3, 1, 2)
        return grid_tokens(z)


# ---------------------------------------------------------------------------------------------------
# Released variants, weight resolution, build, family
# ---------------------------------------------------------------------------------------------------

PAPER = "Chameleon Team, Chameleon: Mixed-Modal Early-Fusion Foundation Models, arXiv:2405.09818"
ANOLE_PAPER = "Chern et al., ANOLE: An Open, Autoregressive, Native Large Multimodal Model, arXiv:2407.06135"
LICENCE = "Chameleon Research License"
META_DOWNLOAD = "https://ai.meta.com/resources/models-and-libraries/chameleon-downloads/"

ANOLE_VQGAN = Artifact(
    name="chameleon-vqgan-anole",
    repo_id="GAIR/Anole-7b-v0.1",
    filename="tokenizer/vqgan.ckpt",
    licence=LICENCE,
    used_by="chameleon-vqgan-anole",
)
# Meta's original-format release is not on the Hub: it comes from a request form and a pre-signed URL.
META_VQGAN = Artifact(name="chameleon-vqgan-meta", filename="vqgan.ckpt", licence=LICENCE, gated=True)


def _hf_artifact(size: str) -> Artifact:
    return Artifact(
        name=f"chameleon-{size}-hf",
        repo_id=f"facebook/chameleon-{size}",
        filename="model.safetensors.index.json",
        prefix="model.vqmodel.",
        licence=LICENCE,
        gated=True,
        used_by=f"chameleon-{size}-vqgan-hf",
    )


VARIANTS = (
    Variant(
        name="chameleon-vqgan-anole",
        family=FAMILY_NAME,
        config=RELEASE_CONFIG,
        weights=ANOLE_VQGAN,
        resolution=512,
        description="Chameleon's VQGAN (32x32 ids of 8192 at 512), from Anole-7b's ungated copy of "
        "tokenizer/vqgan.ckpt (md5-identical to Meta's)",
        paper=f"{PAPER}; {ANOLE_PAPER}",
    ),
    Variant(
        name="chameleon-vqgan-meta",
        family=FAMILY_NAME,
        config=RELEASE_CONFIG,
        weights=META_VQGAN,
        resolution=512,
        description="Chameleon's VQGAN from Meta's original-format chameleon-7b/30b release (tokenizer/vqgan.ckpt; "
        "access by request)",
        paper=PAPER,
    ),
    Variant(
        name="chameleon-7b-vqgan-hf",
        family=FAMILY_NAME,
        config=RELEASE_CONFIG,
        weights=_hf_artifact("7b"),
        resolution=512,
        description="encoder + quantizer from transformers-format facebook/chameleon-7b (no decoder: encode only)",
        paper=PAPER,
    ),
    Variant(
        name="chameleon-30b-vqgan-hf",
        family=FAMILY_NAME,
        config=RELEASE_CONFIG,
        weights=_hf_artifact("30b"),
        resolution=512,
        description="encoder + quantizer from transformers-format facebook/chameleon-30b (no decoder: encode only)",
        paper=PAPER,
    ),
)
DEFAULT_VARIANT = "chameleon-vqgan-anole"


def _meta_unavailable(artifact: Artifact, reason: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"weights for {artifact.name!r} are not available: {reason}\n"
        f"  Meta's original-format Chameleon release is gated and not on the Hugging Face Hub: request access at "
        f"{META_DOWNLOAD}, then run `python -m chameleon.download_data <pre-signed URL>` (facebookresearch/chameleon)\n"
        f"  and pass weights=<download>/tokenizer/vqgan.ckpt, or put the file at "
        f"$TOKBENCH_WEIGHTS/{artifact.name}/vqgan.ckpt\n"
        f"  the same file is carried ungated by GAIR/Anole-7b-v0.1: load 'chameleon-vqgan-anole' instead"
    )


def _resolve_weights(
    variant: Variant | None, weights: str | Path | None
) -> tuple[Path, Callable[[str], Path] | None]:
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir() and (path / "vqgan.ckpt").is_file():  # an original-format tokenizer/ folder
            path = path / "vqgan.ckpt"
        if not path.is_file():
            raise TokbenchError(
                f"weights file {str(path)!r} does not exist; pass tokenizer/vqgan.ckpt of a Chameleon or Anole "
                "release, or a transformers-format Chameleon model.safetensors.index.json"
            )
        return path, None
    artifact = variant.weights if variant is not None and variant.weights is not None else ANOLE_VQGAN
    if artifact.repo_id is None and artifact.url is None:
        path = local_path(artifact)
        if path is None:
            raise _meta_unavailable(artifact, "not found locally")
        return path, None
    return resolve(artifact), shard_resolver(artifact)


def build(b: Build) -> ChameleonVQGANTokenizer:
    """Build the VQGAN from `b.config` (any accepted layout), load a checkpoint in either released layout, wrap it.

    A transformers-format checkpoint without `decoder.*` keys builds an encode-only tokenizer
    (spec.supports_decode False); an original-format one must hold every key (loss.* aside).
    """
    variant, config = b.variant, b.config
    config_source = "given" if config else "release default"
    if b.random_weights:
        # a transformers-format release (weights under model.vqmodel.) has no decoder: stays encode only
        hf_release = variant is not None and variant.weights is not None and variant.weights.prefix in TRANSFORMERS_PREFIXES
        layout, with_decoder, ignored = "none", not hf_release, []
    else:
        path, resolve_shard = _resolve_weights(variant, b.weights)
        sibling = path.parent / "vqgan.yaml"
        if not config and variant is None and sibling.is_file():  # an original-format tokenizer/ folder
            from ..registry import read_config

            config, config_source = read_config(sibling), str(sibling)
        sd, layout = read_vqgan_state_dict(path, resolve_shard)
        # transformers' converter drops the decoder ("we dont do image generation yet"): encode only, by design
        with_decoder = layout == "original" or any(k.startswith("decoder.") for k in sd)
        ignored: list[str] = []
    cfg = vqgan_config(config)

    def load(model: torch.nn.Module, _: Path) -> dict[str, str]:
        ignored.extend(load_vqgan_weights(model, sd, source=f"{path.name} ({layout} layout)"))
        return {}

    model = b.model(lambda: ChameleonVQGAN(cfg, with_decoder=with_decoder), load,
                    "tokenizer/vqgan.ckpt of a Chameleon or Anole release", checkpoint=None if b.random_weights else path)
    explicit = b.option("resolution") or (variant.resolution if variant else None)
    if explicit and int(explicit) % cfg.downsample:
        raise TokbenchError(
            f"resolution must be a multiple of {cfg.downsample} (the downsample factor), got {explicit}"
        )
    # ddconfig.resolution only places attention (the official code encodes any multiple of the factor) and
    # need not be a multiple itself (e.g. 50 with factor 4): the default size is the largest multiple below it.
    resolution = int(explicit or max(cfg.downsample, cfg.resolution // cfg.downsample * cfg.downsample))
    side = resolution // cfg.downsample
    import transformers

    b.source.update({
        "layout": layout,
        "config": config_source,
        "encoder": f"transformers {transformers.__version__} ChameleonVQVAEEncoder + VectorQuantizer",
        "decoder": "tokbench taming Decoder" if with_decoder else "none (not in this release)",
    })
    if variant is not None and variant.weights is not None and not variant.weights.repo_id:
        b.source["release"] = META_DOWNLOAD
    b.notes += [
        f"taming VQGAN, downsample {cfg.downsample}, codebook {cfg.n_embed} x {cfg.embed_dim} (plain squared "
        f"distance, no l2-normalisation); ids row-major on a {side}x{side} grid at {resolution}",
        "postprocessing: official clamp to [-1, 1] and (x+1)/2; the official code then truncates to uint8, "
        "tokbench keeps floats",
    ]
    if ignored:
        b.notes.append(f"ignored {len(ignored)} training-only checkpoint entries (loss.*)")
    if not with_decoder:
        b.notes.append(
            "encode only: the transformers-format release has no VQGAN decoder (reconstruction metrics are "
            "skipped); decoding needs the original tokenizer/vqgan.ckpt (variant chameleon-vqgan-anole)"
        )
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=side * side,
        codebook_size=cfg.n_embed,
        bits_per_token=bits_for(cfg.n_embed),
        supports_decode=with_decoder,
        normalisation="[-1, 1] (x * 2 - 1)",
        preprocessing="chameleon",
    )
    tokenizer = ChameleonVQGANTokenizer(model, spec, b.torch_dtype)
    tokenizer.ignored_keys = ignored
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Emu3 (BAAI): transformers' Emu3VQVAE, loading the release's own key layout
# ---------------------------------------------------------------------------------------------------

EMU3_FAMILY_NAME = "emu3-vq"
# BAAI's Emu3VisionVQConfig name -> transformers' Emu3VQVAEConfig name
_EMU3_FROM_BAAI = {"z_channels": "latent_channels", "double_z": "double_latent", "ch": "base_channels",
                   "ch_mult": "channel_multiplier"}  # fmt: skip
_EMU3_FIELDS = (
    "codebook_size", "embed_dim", "latent_channels", "double_latent", "in_channels", "out_channels",
    "temporal_downsample_factor", "base_channels", "channel_multiplier", "num_res_blocks", "attn_resolutions",
    "dropout",
)  # fmt: skip
# The release (BAAI/Emu3-VisionTokenizer config.json = Emu3VisionVQConfig defaults), in transformers' names.
EMU3_RELEASE_CONFIG: dict[str, Any] = {
    "codebook_size": 32768,
    "embed_dim": 4,
    "latent_channels": 4,
    "double_latent": False,
    "in_channels": 3,
    "out_channels": 3,
    "temporal_downsample_factor": 4,
    "base_channels": 256,
    "channel_multiplier": [1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [3],
    "dropout": 0.0,
}


def emu3_config(config: Mapping[str, Any] | None) -> Any:
    """A `transformers.Emu3VQVAEConfig` from BAAI's config.json (`ch`, `z_channels`, ...), transformers'
    `vq_config` (or a whole Emu3Config holding one), or nothing (the release).

    The attention width (`hidden_size`) is the channel count of the stages that attend, as in the release
    (1024 = 256 x 4 at stage 3): transformers' attention block needs it, BAAI's convs imply it.
    """
    from transformers import Emu3VQVAEConfig

    raw = dict(config or {}) or dict(EMU3_RELEASE_CONFIG)
    if isinstance(raw.get("vq_config"), Mapping):
        raw = dict(raw["vq_config"])
    # later keys win: load_tokenizer puts the user's config after the variant row's
    raw = {_EMU3_FROM_BAAI.get(k, k): v for k, v in raw.items()}
    fields = {k: raw[k] for k in _EMU3_FIELDS if k in raw}
    fields = {**EMU3_RELEASE_CONFIG, **fields}
    if fields["double_latent"]:
        raise TokbenchError("double_z / double_latent must be false: quant_conv expects z_channels inputs")
    mult = [int(m) for m in fields["channel_multiplier"]]
    widths = {int(fields["base_channels"]) * mult[i] for i in fields["attn_resolutions"]} | {
        int(fields["base_channels"]) * mult[-1]
    }
    if len(widths) != 1:
        raise TokbenchError(
            f"Emu3 attention stages {list(fields['attn_resolutions'])} have different widths {sorted(widths)}; "
            "transformers' Emu3VQVAE needs one attention width (the deepest stage's)"
        )
    return Emu3VQVAEConfig(**fields, hidden_size=widths.pop(), num_attention_heads=1)


def emu3_from_baai_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BAAI Emu3VisionVQModel keys -> transformers Emu3VQVAE keys (attention 1x1 convs become linears)."""
    out = {}
    for key, value in sd.items():
        k = re.sub(r"^encoder\.down\.", "encoder.down_block.down.", key)
        k = re.sub(r"^decoder\.up\.", "decoder.up_block.up.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.middle_block.attn_norm.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.", r"\1.middle_block.", k)
        k = re.sub(r"\.attn\.(\d+)\.norm\.", r".attn_norms.\1.", k)
        m = re.search(r"\.(attn\.\d+|attn_1)\.(q|k|v|proj_out)\.(weight|bias)$", k)
        if m:
            k = (
                k[: m.start(2)]
                + {"q": "q_proj", "k": "k_proj", "v": "v_proj", "proj_out": "out_proj"}[m.group(2)]
            )
            k += "." + m.group(3)
            if m.group(3) == "weight" and value.ndim == 4:
                value = value.reshape(value.shape[0], value.shape[1])
        out[k] = value
    return out


EMU3_PROBE = "quantize.embedding.weight"
EMU3_PREFIXES = ("", "model.vqmodel.", "vqmodel.")


def read_emu3_state_dict(
    path: str | Path, resolve_shard: Callable[[str], Path] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Emu3VQVAE tensors under transformers' names, and the layout they came in ("baai" / "transformers")."""
    sd, _ = read_under_prefix(
        path, EMU3_PREFIXES, EMU3_PROBE, resolve_shard=resolve_shard,
        what="Emu3 vision tokenizer (pass BAAI/Emu3-VisionTokenizer's model.safetensors or a transformers-format "
        "Emu3 checkpoint)",
    )  # fmt: skip
    if "encoder.down.0.block.0.conv1.weight" in sd or "encoder.mid.block_1.conv1.weight" in sd:
        return emu3_from_baai_keys(sd), "baai"
    return dict(sd), "transformers"


class Emu3VQTokenizer(GridVQTokenizer):
    """Emu3's vision tokenizer on still images: [0, 1] <-> ids (B, h*w), row-major, downsample 2^(L-1).

    An image is repeated `temporal_downsample_factor` times in time, as the official `encode` does; the model
    sees (x - 0.5) / 0.5 and decodes to [-1, 1], mapped back with the clamp and (x + 1) / 2 (the official
    postprocessing then truncates to uint8; tokbench keeps floats).
    """

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.model.config.channel_multiplier) - 1)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.codebook_size)

    def encode_grid(self, x: torch.Tensor) -> torch.Tensor:
        sizes = torch.tensor([list(x.shape[-2:])] * x.shape[0])
        return torch.stack(list(self.model.encode(x, image_sizes=sizes).image_tokens))

    def decode_grid(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.decode(ids)

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, h*w, embed_dim) float32, row-major: `pre_quant` quant_conv(encoder(x repeated in time)), the
        quantiser input, `post_quant` the codebook rows of the ids (the official `decode`'s `quant`)."""
        check_stage(self, stage)
        m = self.model
        x = grid_vq_input(self, images).unsqueeze(1).repeat(1, m.config.temporal_downsample_factor, 1, 1, 1)
        z = m.quant_conv(m.encoder(x).permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)  # (B, t, C, h, w)
        if stage == "post_quant":
            z = m.quantize.embedding(m.quantize(z)).permute(0, 1, 4, 2, 3)
        return grid_tokens(z[:, 0])


EMU3_VQ = Artifact(
    name="emu3-vision-tokenizer",
    repo_id="BAAI/Emu3-VisionTokenizer",
    filename="model.safetensors",
    licence="Apache-2.0",
    used_by="emu3-vision-tokenizer",
)
EMU3_VARIANTS = (
    Variant(
        name="emu3-vision-tokenizer",
        family=EMU3_FAMILY_NAME,
        config=EMU3_RELEASE_CONFIG,
        weights=EMU3_VQ,
        resolution=512,
        description="Emu3's vision tokenizer (SBER-MoVQGAN-style, downsample 8, codebook 32768: 64x64 ids at 512)",
        paper="Wang et al., Emu3: Next-Token Prediction is All You Need, arXiv:2409.18869",
    ),
)


def build_emu3(b: Build) -> Emu3VQTokenizer:
    """transformers' Emu3VQVAE from `b.config`, strictly loaded from BAAI's or transformers' layout."""
    from transformers import Emu3VQVAE

    cfg = emu3_config(b.config)

    def load(model: torch.nn.Module, path: Path) -> dict[str, str]:
        sd, layout = read_emu3_state_dict(path, b.shards())
        load_strict(model, sd, source=f"{path.name} ({layout} layout)")
        return {"layout": layout}

    model = b.model(lambda: Emu3VQVAE(cfg), load, "BAAI/Emu3-VisionTokenizer's model.safetensors", library_init=True)
    f = 2 ** (len(cfg.channel_multiplier) - 1)
    resolution = int(b.option("resolution") or (b.variant.resolution if b.variant else None) or 512)
    if resolution % f:
        raise TokbenchError(f"resolution must be a multiple of {f} (the downsample factor), got {resolution}")
    side = resolution // f
    import transformers

    b.source.setdefault("layout", "none")
    b.source["model"] = f"transformers {transformers.__version__} Emu3VQVAE"
    b.notes.append(
        f"downsample {f}, codebook {cfg.codebook_size} x {cfg.embed_dim}; image repeated "
        f"{cfg.temporal_downsample_factor}x in time; ids row-major on a {side}x{side} grid at {resolution}; "
        "Emu3's own processor resizes (BICUBIC) to a pixel budget keeping the aspect ratio, without a crop: "
        "on square inputs 'resize-crop' is the same resize; postprocessing truncates to uint8 officially, "
        "tokbench keeps floats"
    )
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=side * side,
        codebook_size=int(cfg.codebook_size),
        bits_per_token=bits_for(int(cfg.codebook_size)),
        normalisation="[-1, 1] ((x - 0.5) / 0.5)",
        preprocessing="resize-crop",
    )
    return Emu3VQTokenizer(model, spec, b.torch_dtype)


FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    convolutional=True,
    variants=VARIANTS,
    aliases=("chameleon", "anole-vqgan"),
    description="Chameleon's early-fusion image tokenizer (taming VQGAN, 1024 ids of 8192 at 512), also Anole's",
    default_variant=DEFAULT_VARIANT,
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt},
    code="https://github.com/facebookresearch/chameleon (chameleon/inference/vqgan.py)",
    packages=("transformers",),
)

EMU3_FAMILY = Family(
    name=EMU3_FAMILY_NAME,
    build=build_emu3,
    convolutional=True,
    variants=EMU3_VARIANTS,
    aliases=("emu3",),
    description="Emu3's vision tokenizer (BAAI), through transformers' Emu3VQVAE",
    default_variant="emu3-vision-tokenizer",
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt},
    code="https://github.com/baaivision/Emu3 (emu3/tokenizer), via transformers' Emu3VQVAE",
    packages=("transformers",),
)
FAMILIES = (FAMILY, EMU3_FAMILY)
