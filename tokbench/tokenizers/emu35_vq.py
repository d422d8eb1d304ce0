"""Emu3.5's vision tokenizer (BAAI): an IBQ VQGAN with 131,072 codes at 16x, for large and non-square images.

Written from the official code, https://github.com/baaivision/Emu3.5 at commit 8fcf1da48f9c (2025-12-30):
`src/vision_tokenizer/ibq.py` (`IBQ`: `encode`, `decode`, `decode_code`), `modules/diffusionmodules/model.py`
(taming `Encoder` / `Decoder` and their blocks), `modules/vqvae/quantize.py` (`IndexPropagationQuantize`),
the loader `src/vision_tokenizer/__init__.py::build_vision_tokenizer` (`config.yaml` = the `IBQ` keywords,
`model.ckpt` = `{"state_dict": ...}` loaded STRICTLY), the preprocessing `src/utils/input_utils.py`
(`smart_resize`, `build_image`) and the postprocessing `src/utils/generation_utils.py::decode_image`.

What a reader of a number must know:
* ids are the argmax over the codebook of the INNER PRODUCT z . e (softmax then argmax, as upstream): no
  |e|^2 term and no normalisation, so they are not the nearest codes; the decoder gets the rows E[id];
* images keep their aspect ratio: the official `smart_resize` scales any image to about `image_area` pixels
  with both sides rounded to the nearest multiple of 16 (PIL BICUBIC, no crop). It is the protocol `emu35`
  here (area = size^2); the tokenizer encodes any H, W divisible by the downsample factor;
* decoding returns the raw decoder output mapped by ((x + 1) / 2).clamp(0, 1); upstream then truncates
  ((x + 1) * 127.5).clamp(0, 255) to uint8, tokbench keeps floats.

Same architecture as TencentARC's IBQ (`ibq.py`), but ibq.py's `IBQModel` is not reused: it builds the encoder
from transformers' `ChameleonVQVAEEncoder`, whose GroupNorm (32 groups) and strided-conv downsampling are
fixed, whereas here every size the official code hard-codes is a config field (`norm_groups`, `norm_eps`,
`ds_factor`, `image_area`) and `resamp_with_conv: false` (average pooling, upsampling without a conv) is built
as upstream builds it. The blocks are `vqgan_blocks.py`'s (taming's parameter names, groups as an argument);
the taming containers (`down.{i}.block/attn/downsample`, `mid.block_1/attn_1/block_2`, `up.{i}...`) and the
quantiser are written here. No library has this model with the release's key names (transformers'
`Apertus1p5VisionTokenizerModel` is an encoder-only port under other names).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build
from ..checkpoint import CheckpointError, describe_checkpoint, has_lit_ema, load_strict, read_state_dict
from ..core import GridVQTokenizer, TokbenchError, bits_for
from ..options import DType, PositiveInt
from ..protocols import Geometry, drop_alpha, register_protocol, scale
from ..registry import Family, Variant
from ..weights import Artifact, register_artifact
from .vqgan_blocks import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, nonlinearity

FAMILY_NAME = "emu35-vq"
UPSTREAM = "https://github.com/baaivision/Emu3.5 @ 8fcf1da48f9c5252fe0a0b8dc842e07b6efcd745"
# Positions whose logits over the codebook are formed at once: ~128 MiB of float32 at any codebook size
# (upstream forms all B x n_embed x h x w logits at once: 2 GiB for one 1024x1024 image).
_LOGIT_ELEMENTS = 1 << 25

# ---------------------------------------------------------------------------------------------------
# Official preprocessing: smart_resize (any aspect ratio, a pixel budget, sides multiples of 16)
# ---------------------------------------------------------------------------------------------------


def smart_resize_size(width: int, height: int, area: int, ds_factor: int = 16) -> tuple[int, int]:
    """(new width, new height) of the official `smart_resize`: the height from the area at the image's
    aspect ratio (truncated), the width from the height (truncated), then each side rounded to the nearest
    multiple of `ds_factor` (halves up). Python floats, as upstream, so the sizes agree to the pixel."""
    aspect = width / height
    new_h = int((area / aspect) ** 0.5)
    new_w = int(new_h * aspect)
    half = ds_factor // 2
    new_h, new_w = (new_h + half) // ds_factor * ds_factor, (new_w + half) // ds_factor * ds_factor
    if new_h < 1 or new_w < 1:
        # upstream hands PIL a zero side and fails there; say why instead
        raise TokbenchError(
            f"smart_resize of a {width}x{height} image to {area} pixels gives {new_w}x{new_h}: the aspect ratio "
            f"is too extreme for sides rounded to multiples of {ds_factor}"
        )
    return new_w, new_h


def smart_resize(img: Image.Image, area: int, ds_factor: int = 16) -> Image.Image:
    """The official `smart_resize`: PIL BICUBIC to `smart_resize_size` (no crop, aspect ratio kept)."""
    return img.resize(smart_resize_size(*img.size, area, ds_factor), Image.BICUBIC)


def emu35_geometry(w: int, h: int, size: int) -> Geometry:
    """Where `emu35_preprocess` puts source pixels: a plain resize (output sides from `smart_resize_size`)."""
    return scale(w, h, *smart_resize_size(w, h, size * size))


@register_protocol(
    "emu35",
    "Emu3.5's build_image (src/utils/input_utils.py): RGB, then smart_resize to about size^2 pixels at the "
    "source's aspect ratio (height int(sqrt(area / ar)), width int(height * ar), each rounded to the nearest "
    "multiple of 16), PIL BICUBIC, no crop: the output is size x size only for square sources",
    geometry=emu35_geometry,
)
def emu35_preprocess(img: Image.Image, size: int) -> Image.Image:
    # upstream opens images with .convert("RGB") (alpha dropped, not composited), then smart_resize(img, area)
    return smart_resize(drop_alpha(img), size * size)


# ---------------------------------------------------------------------------------------------------
# Config: IBQ's constructor keywords (config.yaml) plus the sizes upstream hard-codes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Emu35Config:
    """`IBQ(ddconfig, n_embed, embed_dim)` flattened, then what the official code hard-codes.

    `resolution` only places attention (at the levels whose nominal side, halved level by level from it in
    the encoder and doubled back from resolution / 2^(L-1) in the decoder, is in `attn_resolutions`); inputs
    may have any size divisible by the downsample factor. Hard-coded upstream: GroupNorm(`norm_groups` = 32,
    eps `norm_eps` = 1e-6) in `Normalize`; `ds_factor` = 16, the multiple `smart_resize` rounds sides to and
    the divisor `build_image` forms the id grid with; `image_area` = 720 * 720, the default pixel budget
    (`Emu3p5Config.image_area`, `configs/config.py`; the t2i / x2i configs use 1024 * 1024).
    """

    ch: int = 256
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 256
    n_embed: int = 131072
    embed_dim: int = 256
    norm_groups: int = 32
    norm_eps: float = 1e-6
    ds_factor: int = 16
    image_area: int = 720 * 720

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def attention_levels(self) -> tuple[list[int], list[int]]:
        """(encoder, decoder) levels that carry attention blocks, as the official modules place them."""
        n, attn = len(self.ch_mult), set(self.attn_resolutions)
        enc = [i for i in range(n) if self.resolution // 2**i in attn]
        dec = [i for i in range(n) if self.resolution // 2 ** (n - 1) * 2 ** (n - 1 - i) in attn]
        return enc, dec

    def default_resolution(self) -> int:
        """The square side the official preprocessing gives at `image_area` (720 for the release), made a
        multiple of the downsample factor."""
        side = smart_resize_size(1, 1, self.image_area, self.ds_factor)[0]
        return max(self.downsample, side // self.downsample * self.downsample)


# The release (BAAI/Emu3.5-VisionTokenizer config.yaml): 455,336,963 parameters, as published ("455M").
RELEASE_CONFIG: dict[str, Any] = {
    "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 256,
                 "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 4, "attn_resolutions": [16], "dropout": 0.0},
    "n_embed": 131072, "embed_dim": 256,
}  # fmt: skip

# IBQ keywords with no effect on eval outputs (loss weights; IBQ never passes `l2_normalize` on).
_NO_EFFECT = {"beta", "cosine_similarity", "entropy_temperature", "sample_minimization_weight",
              "batch_maximization_weight", "l2_normalize"}  # fmt: skip
_OWN = {"norm_groups", "norm_eps", "ds_factor", "image_area"}
# Encoder/Decoder keywords; the required ones have no default upstream (keyword-only arguments).
_DDCONFIG_KEYS = {"ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv",
                  "in_channels", "resolution", "z_channels", "double_z", "give_pre_end"}  # fmt: skip
_DDCONFIG_REQUIRED = ("ch", "out_ch", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels")
_UPSTREAM_CH_MULT = (1, 2, 4, 8)  # model.py's default, not the release's


def _positive(name: str, value: Any) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise TokbenchError(f"emu35-vq config {name} must be a positive integer, got {value!r}") from None
    if out < 1 or out != value:
        raise TokbenchError(f"emu35-vq config {name} must be a positive integer, got {value!r}")
    return out


def emu35_config(config: Mapping[str, Any] | None) -> Emu35Config:
    """An `Emu35Config` from the release's `config.yaml` / a `config.json` with the same keys (`ddconfig`,
    `n_embed`, `embed_dim`, optionally our hard-coded sizes), or the release's when empty.

    As `IBQ(**cfg)`: loss weights are accepted and have no effect; other keys are ignored with a warning
    (IBQ swallows them), keys starting with "_" (fixture metadata) silently. Configs upstream cannot run
    are refused: `use_entropy_loss: true` (its eval forward raises UnboundLocalError), `double_z` true or
    unset (the encoder then gives 2 * z_channels, which quant_conv cannot take), `give_pre_end: true`.
    """
    cfg = dict(config or {}) or dict(RELEASE_CONFIG)
    if isinstance(cfg.get("model"), Mapping):
        raise TokbenchError(
            "this config has a `model` section (a SEED-Voken Lightning YAML: model.class_path / init_args); "
            "load SEED-Voken IBQ checkpoints with 'ibq'. Emu3.5's config.yaml holds the IBQ keywords themselves "
            "(ddconfig, n_embed, embed_dim)"
        )
    missing = [k for k in ("ddconfig", "n_embed", "embed_dim") if k not in cfg]
    if missing:
        raise TokbenchError(
            f"the emu35-vq config lacks {missing}; pass the release's config.yaml (IBQ keywords: ddconfig, "
            "n_embed, embed_dim) or the same keys as JSON"
        )
    if cfg.get("use_entropy_loss"):
        raise TokbenchError(
            "use_entropy_loss: true cannot run at inference in Emu3.5's IndexPropagationQuantize (its eval "
            "forward raises UnboundLocalError: quant_loss is only set in training); the release leaves it false"
        )
    if cfg.get("remap") is not None:
        raise TokbenchError("index remapping (remap) is not supported: IBQ never passes it to its quantiser")
    known = {"ddconfig", "n_embed", "embed_dim", "use_entropy_loss", "remap"} | _NO_EFFECT | _OWN
    ignored = sorted(k for k in cfg if k not in known and not str(k).startswith("_"))
    if ignored:
        warnings.warn(f"emu35-vq: ignoring config keys {ignored} (IBQ(**cfg) swallows them too)", stacklevel=3)

    dd = cfg["ddconfig"]
    if not isinstance(dd, Mapping):
        raise TokbenchError(f"emu35-vq config ddconfig must be a mapping, got {type(dd).__name__}")
    extra = sorted(set(dd) - _DDCONFIG_KEYS)
    if extra:
        # e.g. tanh_out / attn_type / use_linear_attn: Emu3.5's Encoder and Decoder take **kwargs and ignore them
        warnings.warn(f"emu35-vq: ignoring ddconfig keys {extra} (the official Encoder/Decoder ignore them)",
                      stacklevel=3)
    lacking = [k for k in _DDCONFIG_REQUIRED if k not in dd]
    if lacking:
        raise TokbenchError(f"the emu35-vq ddconfig lacks {lacking} (required by the official Encoder/Decoder)")
    if dd.get("double_z", True):
        raise TokbenchError(
            "ddconfig.double_z must be false (got "
            f"{dd.get('double_z', 'unset, whose default upstream is true')}): the encoder would then give "
            "2 * z_channels channels, which quant_conv cannot take"
        )
    if dd.get("give_pre_end"):
        raise TokbenchError("ddconfig.give_pre_end: true makes the decoder return features, not images")

    ch_mult = tuple(_positive("ch_mult", m) for m in (dd.get("ch_mult") or _UPSTREAM_CH_MULT))
    values = {
        "ch": _positive("ch", dd["ch"]),
        "ch_mult": ch_mult,
        "num_res_blocks": _positive("num_res_blocks", dd["num_res_blocks"]),
        "attn_resolutions": tuple(int(r) for r in (dd["attn_resolutions"] or ())),
        "dropout": float(dd.get("dropout", 0.0)),
        "resamp_with_conv": bool(dd.get("resamp_with_conv", True)),
        "in_channels": _positive("in_channels", dd["in_channels"]),
        "out_ch": _positive("out_ch", dd["out_ch"]),
        "resolution": _positive("resolution", dd["resolution"]),
        "z_channels": _positive("z_channels", dd["z_channels"]),
        "n_embed": _positive("n_embed", cfg["n_embed"]),
        "embed_dim": _positive("embed_dim", cfg["embed_dim"]),
    }
    defaults = {f.name: f.default for f in fields(Emu35Config)}
    for key in ("norm_groups", "ds_factor", "image_area"):
        values[key] = _positive(key, cfg.get(key, defaults[key]))
    values["norm_eps"] = float(cfg.get("norm_eps", defaults["norm_eps"]))
    out = Emu35Config(**values)
    widths = sorted({out.ch} | {out.ch * m for m in out.ch_mult})
    bad = [w for w in widths if w % out.norm_groups]
    if bad:
        raise TokbenchError(
            f"GroupNorm with {out.norm_groups} groups needs channel counts divisible by {out.norm_groups}; "
            f"ch {out.ch} x ch_mult {list(out.ch_mult)} gives {bad}"
        )
    return out


# ---------------------------------------------------------------------------------------------------
# The model: taming Encoder / Decoder under the release's names, the inner-product quantiser
# ---------------------------------------------------------------------------------------------------


def _mid(channels: int, cfg: Emu35Config) -> nn.Module:
    norm = {"num_groups": cfg.norm_groups, "eps": cfg.norm_eps}
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout=cfg.dropout, **norm)
    mid.attn_1 = AttnBlock(channels, **norm)
    mid.block_2 = ResnetBlock(channels, channels, dropout=cfg.dropout, **norm)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> (B, z_channels, H / f, W / f), f = 2^(L-1): `model.py::Encoder`
    (keys `conv_in`, `down.{i}.block.{j}`, `down.{i}.attn.{j}`, `down.{i}.downsample`, `mid.*`,
    `norm_out`, `conv_out`). Dropout is inactive at inference."""

    def __init__(self, cfg: Emu35Config) -> None:
        super().__init__()
        norm = {"num_groups": cfg.norm_groups, "eps": cfg.norm_eps}
        self.num_res_blocks = cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1, *cfg.ch_mult)
        attn_levels = set(cfg.attention_levels()[0])
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = cfg.ch * in_mult[level], cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, dropout=cfg.dropout, **norm))
                block_in = block_out
                if level in attn_levels:
                    stage.attn.append(AttnBlock(block_in, **norm))
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(block_in, cfg.resamp_with_conv)
            self.down.append(stage)
        self.mid = _mid(block_in, cfg)
        self.norm_out = Normalize(block_in, **norm)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for j in range(self.num_res_blocks):
                h = stage.block[j](h)
                if len(stage.attn) > 0:
                    h = stage.attn[j](h)
            if level != len(self.down) - 1:
                h = stage.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> image (B, out_ch, h * f, w * f), raw (no tanh, no clamp): `model.py::Decoder`
    (keys `conv_in`, `mid.*`, `up.{i}.block.{j}` with num_res_blocks + 1 blocks per level, level 0 = full
    resolution, `up.{i}.attn.{j}`, `up.{i>0}.upsample`, `norm_out`, `conv_out`)."""

    def __init__(self, cfg: Emu35Config) -> None:
        super().__init__()
        norm = {"num_groups": cfg.norm_groups, "eps": cfg.norm_eps}
        self.num_res_blocks = cfg.num_res_blocks
        attn_levels = set(cfg.attention_levels()[1])
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _mid(block_in, cfg)
        stages: list[nn.Module] = []
        for level in reversed(range(len(cfg.ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout=cfg.dropout, **norm))
                block_in = block_out
                if level in attn_levels:
                    stage.attn.append(AttnBlock(block_in, **norm))
            if level != 0:
                stage.upsample = Upsample(block_in, cfg.resamp_with_conv)
            stages.insert(0, stage)  # up[i] is level i, as upstream's insert(0, ...)
        self.up = nn.ModuleList(stages)
        self.norm_out = Normalize(block_in, **norm)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for j in range(self.num_res_blocks + 1):
                h = stage.block[j](h)
                if len(stage.attn) > 0:
                    h = stage.attn[j](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class InnerProductQuantizer(nn.Module):
    """`IndexPropagationQuantize` at inference: `embedding` (n_embed, embed_dim); id = argmax_n of
    softmax_n(z . e_n); the code vector is the row E[id]."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) -> ids (B, h, w) int64.

        In float32 whatever the model dtype (a bfloat16 softmax over 131,072 codes would tie), in chunks of
        positions. The softmax is kept, as upstream takes the max of the probabilities: it only matters where
        two logits round to the same probability, and then both pick the lower id.
        """
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        codebook = self.embedding.weight.float()
        chunk = max(1, _LOGIT_ELEMENTS // codebook.shape[0])
        ids = [F.softmax(part @ codebook.t(), dim=1).argmax(dim=1) for part in flat.split(chunk)]
        return torch.cat(ids).view(b, h, w) if ids else flat.new_zeros((b, h, w), dtype=torch.long)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> code vectors (B, D, h, w): `get_codebook_entry(ids, (B, h, w, D))`."""
        return self.embedding(ids).permute(0, 3, 1, 2).contiguous()


class Emu35VQ(nn.Module):
    """Emu3.5's `IBQ` for inference: `encoder`, `decoder`, `quantize`, `quant_conv` (1x1 z -> embed_dim),
    `post_quant_conv` (1x1 embed_dim -> z), registered in the release's order. Images in [-1, 1]."""

    def __init__(self, cfg: Emu35Config) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = InnerProductQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The quantiser's input z = quant_conv(encoder(x)), (B, embed_dim, H / f, W / f)."""
        return self.quant_conv(self.encoder(x))

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> ids (B, H / f, W / f): `IBQ.encode(x)[2][-1]`, which upstream
        returns flat in (b, y, x) order."""
        return self.quantize.ids(self.latent(x))

    def decode_codes(self, quant: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, embed_dim, h, w) -> raw image (B, out_ch, h * f, w * f): `IBQ.decode`."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> raw image in about [-1, 1]: `IBQ.decode_code(ids, (B, h, w, embed_dim))`."""
        return self.decode_codes(self.quantize.codes(ids))


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------


class Emu35Tokenizer(GridVQTokenizer):
    """Emu3.5's vision tokenizer: images [0, 1] with any H, W divisible by f <-> ids (B, h*w), row-major
    (the order of upstream's flat ids and of its `<|visual token ...|>` rows).

    The model sees x * 2 - 1 (upstream: uint8 / 127.5 - 1); `decode` maps the raw decoder output with
    ((x + 1) / 2).clamp(0, 1), upstream's ((x + 1) * 127.5).clamp(0, 255) before its uint8 truncation.
    Features: `pre_quant` is the quantiser's input z, `post_quant` the codebook rows E[id] that
    `post_quant_conv` and the decoder receive; both (B, h*w, embed_dim).
    """

    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """Token features (B, h*w, embed_dim), float32, row-major: `pre_quant` = quant_conv(encoder(x)),
        `post_quant` = the codebook rows of the ids."""
        if stage not in self.feature_stages:
            raise TokbenchError(f"{self.spec.name} has feature stages {list(self.feature_stages)}, got {stage!r}")
        z = self.model.latent(self.model_input(images))
        if stage == "post_quant":
            z = self.model.quantize.codes(self.model.quantize.ids(z))
        return z.flatten(2).transpose(1, 2).float()

    def preprocess(self, img: Image.Image, area: int | None = None) -> torch.Tensor:
        """One PIL image -> (1, 3, H, W) float [0, 1] as upstream's `build_image` sizes it: RGB, then
        `smart_resize` to `area` pixels (default: the config's `image_area`), sides multiples of `ds_factor`."""
        cfg = self.model.config
        img = smart_resize(drop_alpha(img), int(area or cfg.image_area), cfg.ds_factor)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255


# ---------------------------------------------------------------------------------------------------
# Checkpoint, released variant, build, family
# ---------------------------------------------------------------------------------------------------

PAPER = "Emu3.5 Team (BAAI), Emu3.5: Native Multimodal Models are World Learners, arXiv:2510.26583"
LICENCE = "Apache-2.0 (baaivision/Emu3.5 LICENSE; the Hub card's licence field was not read offline)"
HINT = "the release's model.ckpt (BAAI/Emu3.5-VisionTokenizer, with its config.yaml)"

EMU35_VQ = register_artifact(Artifact(
    name="emu35-vq", repo_id="BAAI/Emu3.5-VisionTokenizer", filename="model.ckpt", licence=LICENCE,
    companions=("config.yaml",), used_by="emu35-vq",
))  # fmt: skip

VARIANTS = (
    Variant(
        name="emu35-vq",
        family=FAMILY_NAME,
        config=RELEASE_CONFIG,
        weights=EMU35_VQ,
        resolution=720,
        description="Emu3.5 / Emu3.5-Image vision tokenizer (IBQ, 131,072 codes, 16x, 455M parameters): any aspect "
        "ratio at a pixel budget, 45x45 ids at the default 720x720 area",
        paper=PAPER,
        # none: the Emu3.5 report's tokenizer numbers could not be retrieved and checked here
        published={},
        published_source="",
    ),
)

_IBQ_KEYS = ("quantize.embedding.weight", "encoder.mid.block_1.conv1.weight", "decoder.conv_out.weight")
# Emu3's MoVQGAN (BAAI/Emu3-VisionTokenizer) shares taming's names but has spatially conditioned norms
_MOVQ_MARKERS = (".norm_layer.", ".conv_y.", ".conv_b.")


def check_checkpoint(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse files of other families with what they look like. Emu3.5's model.ckpt holds exactly the IBQ's
    modules (upstream loads it strictly): no EMA copies, no training entries."""
    keys = set(sd)
    if any(m in k for k in keys for m in _MOVQ_MARKERS):
        raise CheckpointError(
            f"{path.name} is not an Emu3.5 vision tokenizer checkpoint: it looks like Emu3's MoVQGAN vision "
            "tokenizer (spatially conditioned norms *.norm_layer / *.conv_y): load it with 'emu3-vq'"
        )
    if not all(k in keys for k in _IBQ_KEYS):
        raise CheckpointError(
            f"{path.name} is not an Emu3.5 vision tokenizer checkpoint: it looks like {describe_checkpoint(keys)}"
        )
    if has_lit_ema(sd):
        raise CheckpointError(
            f"{path.name} is not an Emu3.5 vision tokenizer checkpoint: it carries LitEma copies (model_ema.*), as "
            "TencentARC's SEED-Voken IBQ releases do: load it with 'ibq'. Emu3.5's model.ckpt holds only the "
            "IBQ weights, loaded strictly"
        )
    training = sorted(k for k in keys if k.startswith("loss."))
    if training:
        raise CheckpointError(
            f"{path.name} is not Emu3.5's model.ckpt: it holds training entries ({training[0]}, ... "
            f"{len(training)} loss.* keys), as a taming VQGAN training checkpoint (e.g. Chameleon's vqgan.ckpt, "
            "'chameleon-vqgan') does; the official Emu3.5 loader is strict and would refuse them too"
        )


def _describe(cfg: Emu35Config, resolution: int) -> str:
    enc, dec = cfg.attention_levels()
    where = f"levels {enc}" if enc == dec else f"encoder levels {enc}, decoder levels {dec}"
    side = resolution // cfg.downsample
    resample = "" if cfg.resamp_with_conv else ", resamp_with_conv false (average pooling / plain upsampling)"
    return (
        f"Emu3.5 IBQ VQGAN, downsample {cfg.downsample}, codebook {cfg.n_embed} x {cfg.embed_dim}, ids = argmax of "
        f"the inner product z.e (not the nearest code); attention at {where} and mid{resample}; any aspect ratio "
        f"(official preprocessing: smart_resize to {cfg.image_area} pixels, sides multiples of {cfg.ds_factor}); "
        f"{side}x{side} ids at {resolution}x{resolution}"
    )


def build(b: Build) -> Emu35Tokenizer:
    """Build from the config (`config.yaml` keys; with a released file and no config of the caller's, the
    `config.yaml` / `config.json` beside it, as upstream's loader reads) and load `model.ckpt` strictly."""
    config = b.config
    # the caller gave a file but no config: b.config is then empty, or the variant row's config unchanged
    no_config_given = config == (dict(b.variant.config) if b.variant is not None else {})
    if b.weights is not None and not b.random_weights and no_config_given:
        beside = b.beside(b.checkpoint(HINT), "config.yaml", "config.json")
        if beside is not None:
            from ..registry import read_config

            config = read_config(beside)
            b.source["config"] = str(beside)
    cfg = emu35_config(config)

    def load(model: nn.Module, path: Path) -> dict[str, str]:
        sd = read_state_dict(path)
        check_checkpoint(sd, path)
        load_strict(model, sd, source=path.name)
        return {"layout": "Emu3.5 IBQ state dict (encoder, decoder, quantize, quant_conv, post_quant_conv)"}

    model = b.model(lambda: Emu35VQ(cfg), load, HINT)
    f = cfg.downsample
    resolution = int(b.option("resolution") or cfg.default_resolution())
    if resolution % f:
        raise TokbenchError(f"resolution must be a multiple of {f} (the downsample factor), got {resolution}")
    b.notes += [
        _describe(cfg, resolution),
        "postprocessing: ((x + 1) / 2).clamp(0, 1) of the raw decoder output; upstream truncates "
        "((x + 1) * 127.5).clamp(0, 255) to uint8, tokbench keeps floats",
    ]
    if b.dtype != "float32":
        b.notes.append(f"{b.dtype} encoder/decoder (upstream runs float32); the code search runs in float32")
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=(resolution // f) ** 2,
        codebook_size=cfg.n_embed,
        bits_per_token=bits_for(cfg.n_embed),
        normalisation="[-1, 1] (x * 2 - 1; upstream uint8 / 127.5 - 1)",
        preprocessing="emu35",
    )
    return Emu35Tokenizer(model, spec, b.torch_dtype)


FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    variants=VARIANTS,
    aliases=("emu3.5-vq",),
    description="Emu3.5's vision tokenizer (BAAI): IBQ VQGAN, 131,072 codes, 16x, any aspect ratio",
    default_variant="emu35-vq",
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt},
    code=UPSTREAM,
    convolutional=True,
)
