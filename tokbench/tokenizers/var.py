"""VAR's multi-scale residual VQVAE (Tian et al. 2024, "Visual Autoregressive Modeling"), `var-vqvae`.

Architecture of FoundationVision/VAR `models/vqvae.py::VQVAE`, `models/quant.py::VectorQuantizer2` /
`Phi*` and `models/basic_vae.py` (an LDM-style CNN with a fused-qkv attention), written from the
official code; no library implements it (transformers, diffusers and timm have no multi-scale VQ).

Encoding: f = quant_conv(encoder(x)) of side h = the last patch number; for each scale pn (coarse to
fine) the residual is area-downsampled to pn x pn (the last scale takes it as is), matched to the
nearest RAW codebook row by |z|^2 + |e|^2 - 2 z.e, the codes are bicubic-upsampled back to h x h, passed
through a phi conv (phi(h) = (1 - r) h + r conv3x3(h)) and added to f_hat / removed from the residual.
The phi used at scale si is the tick nearest to si / (SN - 1), found in numpy float64 as upstream does
(its rounding breaks the exact ties at SN = 10 towards the later tick). Ids are the concatenation of all
scales, (B, sum(pn^2)); decoding sums the phi'd, upsampled codes of however many scales are given and
runs decoder(post_quant_conv(f_hat)), clamped to [-1, 1] as every official decode is.

Released checkpoint: HF `FoundationVision/var`, `vae_ch160v4096z32.pth`, a plain state dict (324
entries), shared by all VAR models: the 256 px schedule (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) and VAR-d36's
512 px schedule (1, 2, 3, 4, 6, 9, 13, 18, 24, 32). Every size upstream hard-codes (`ch_mult`,
`num_res_blocks`, attention use, GroupNorm groups / eps, the phi kernel, the input channels) is a
config field of `VARConfig`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import (
    CheckpointError,
    load_strict,
    read_state_dict,
)
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, bits_for, check_images
from ..features import check_stage, grid_tokens
from ..options import DType, PositiveInt
from ..protocols import (
    center_crop,
    drop_alpha,
    register_protocol,
    resize_short_side,
    short_side_crop_geometry,
)
from ..registry import Family, Variant, read_config
from ..weights import Artifact, register_artifact
from ._multiscale import multiscale_tokens, scales_for_count
from .vqgan_blocks import Downsample, Normalize, ResnetBlock, Upsample

FAMILY_NAME = "var-vqvae"
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
MID_RESIZE_RATIO = 1.125  # utils/data.py: resize the short side to round(1.125 R), then crop R

# ---------------------------------------------------------------------------------------------------
# Preprocessing: utils/data.py::build_dataset's val_aug
# ---------------------------------------------------------------------------------------------------


@register_protocol(
    "var",
    "VAR's val_aug: short side resized to round(1.125 x target) with PIL LANCZOS (torchvision Resize(int): the "
    "long side int()-truncated), then centre crop to the target",
    geometry=lambda w, h, size: short_side_crop_geometry(w, h, round(MID_RESIZE_RATIO * size), size),
)
def var_preprocess(img: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(round(1.125 size), LANCZOS)` + `CenterCrop(size)` on a PIL image (RGB out)."""
    img = resize_short_side(drop_alpha(img), round(MID_RESIZE_RATIO * size), Image.LANCZOS)
    return center_crop(img, size)


# ---------------------------------------------------------------------------------------------------
# Config: VQVAE(**kwargs), build_vae_var's names, or the golden fixtures' config.json
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VARConfig:
    """`VQVAE.__init__` arguments (upstream defaults), then the values upstream hard-codes.

    `v_patch_nums`: side of each scale, coarse to fine; the last is the latent side (image side /
    2^(len(ch_mult) - 1)). `share_quant_resi`: 0 = one phi per scale (`default_qresi_counts` of them if
    > 0), 1 = one shared phi, K >= 2 = K phis picked by the nearest tick. `quant_resi`: the phi mixing
    ratio r (|r| <= 1e-6: identity, no conv). Hard-coded upstream: `ch_mult` (1, 1, 2, 2, 4),
    `num_res_blocks` 2, `in_channels` 3, `using_sa` / `using_mid_sa` True (attention after every block of
    the deepest level / in the middle), GroupNorm `norm_num_groups` 32 and `norm_eps` 1e-6, the phi
    kernel `phi_kernel_size` 3. `beta` and `test_mode` only matter in training; kept for completeness.
    """

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 128
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    v_patch_nums: tuple[int, ...] = PATCH_NUMS_256
    test_mode: bool = True
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    phi_kernel_size: int = 3

    def __post_init__(self) -> None:
        pns = self.v_patch_nums
        if len(pns) < 2:
            # upstream picks the phi at si / (SN - 1): a single scale divides by zero there
            raise TokbenchError(f"v_patch_nums needs at least 2 scales, got {list(pns)}")
        if any(p < 1 for p in pns):
            raise TokbenchError(f"v_patch_nums must be positive, got {list(pns)}")
        if self.share_quant_resi < 0:
            raise TokbenchError(f"share_quant_resi must be >= 0, got {self.share_quant_resi}")
        widths = sorted({self.ch * m for m in self.ch_mult} | {self.ch})
        bad = [c for c in widths if c % self.norm_num_groups]
        if bad:
            raise TokbenchError(
                f"GroupNorm with {self.norm_num_groups} groups needs widths divisible by it; ch={self.ch} and "
                f"ch_mult={list(self.ch_mult)} give {bad}; check ch / ch_mult / norm_num_groups in the config"
            )

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_side(self) -> int:
        return self.v_patch_nums[-1]

    @property
    def resolution(self) -> int:
        """Native image side in pixels (the last patch number times the downsample factor)."""
        return self.latent_side * self.downsample

    @property
    def scale_lengths(self) -> tuple[int, ...]:
        return tuple(p * p for p in self.v_patch_nums)

    @property
    def tokens_per_image(self) -> int:
        return sum(self.scale_lengths)

    @property
    def num_phis(self) -> int:
        """How many phi convs the quantiser holds (`quant_resi.*` in the checkpoint)."""
        if self.share_quant_resi == 0:
            return self.default_qresi_counts or len(self.v_patch_nums)
        return 1 if self.share_quant_resi == 1 else self.share_quant_resi

    @property
    def phi_index_per_scale(self) -> tuple[int, ...]:
        sn = len(self.v_patch_nums)
        if self.share_quant_resi == 1:
            return (0,) * sn
        return tuple(phi_index(si / (sn - 1), self.num_phis) for si in range(sn))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def phi_ticks(k: int) -> np.ndarray:
    """Upstream `PhiPartiallyShared.ticks` (float64): K = 4 spreads by 1/(3K), any other K by 1/(2K)."""
    return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


def phi_index(at: float, k: int) -> int:
    """Index of the phi used at position `at` in [0, 1] among K: float64 argmin of |ticks - at|, first on
    ties, exactly as upstream (numpy's rounding of the linspace decides the mathematical ties)."""
    return int(np.argmin(np.abs(phi_ticks(k) - at)))


# build_vae_var(V, Cvae, ch, share_quant_resi, patch_nums) -> VQVAE names, and build_vae_var's defaults
_BUILD_VAE_VAR_NAMES = {"V": "vocab_size", "Cvae": "z_channels", "patch_nums": "v_patch_nums"}
BUILD_VAE_VAR_DEFAULTS = {"V": 4096, "Cvae": 32, "ch": 160, "share_quant_resi": 4, "patch_nums": PATCH_NUMS_256}
# the fixtures' `hard_coded_upstream` names -> VARConfig fields
_HARD_CODED_NAMES = {
    "in_channels": "in_channels",
    "using_sa": "using_sa",
    "using_mid_sa": "using_mid_sa",
    "GroupNorm_groups": "norm_num_groups",
    "GroupNorm_eps": "norm_eps",
    "phi_kernel_size": "phi_kernel_size",
    "quant_conv_ks": "quant_conv_ks",
}
# Derived values a fixture config may state: checked against what the config implies, never used instead.
_DERIVED = ("scale_lengths", "scale_offsets", "total_tokens", "latent_hw", "downsample_factor", "phi_index_per_scale")
# Descriptive fields of the fixtures' config.json (input batch, seed, notes): not model arguments (any other
# key beside a nested layout is ignored with a warning).
_DESCRIPTIVE = (
    "fixture_patch", "checkpoint_file", "checkpoint_container", "seed", "input", "full_size_equivalent",
    "patch_nums_512px_models",
)  # fmt: skip
_TUPLES = ("v_patch_nums", "ch_mult")


def _from_build_vae_var(args: Mapping[str, Any]) -> dict[str, Any]:
    refuse_unknown("build_vae_var arguments for the VQVAE", args, BUILD_VAE_VAR_DEFAULTS,
                   "(the VAR transformer's arguments such as depth do not belong in a tokenizer config)")
    full = {**BUILD_VAE_VAR_DEFAULTS, **args}
    return {_BUILD_VAE_VAR_NAMES.get(k, k): v for k, v in full.items()}


def var_config(config: Mapping[str, Any] | str | Path | None) -> VARConfig:
    """Parse a VAR VQVAE config, a dict or a JSON / YAML file (empty or None: the release, `build_vae_var()`'s VQVAE).

    Accepted, alone or together (values given twice must agree): `VQVAE(**kwargs)` arguments, flat or
    under `vqvae_kwargs` (missing ones take VQVAE's defaults, e.g. ch=128); `build_vae_var`'s names (`V`,
    `Cvae`, `ch`, `share_quant_resi`, `patch_nums`), flat or under `build_vae_var_equivalent` (missing ones
    take build_vae_var's defaults, e.g. ch=160); the hard-coded sizes as `VARConfig` fields or under
    `hard_coded_upstream`. A fixture's derived values (`scale_lengths`, `phi_index_per_scale`, ...) are
    checked against the config, never used in its place.
    """
    config = read_config(config)
    if not config:
        config = {"build_vae_var_equivalent": {}}
    nested_layout = "vqvae_kwargs" in config or "build_vae_var_equivalent" in config
    known = {f.name for f in fields(VARConfig)}
    sources: list[tuple[str, dict[str, Any]]] = []
    nested = config.pop("vqvae_kwargs", None)
    if nested is not None:
        sources.append(("vqvae_kwargs", dict(nested)))
    nested = config.pop("build_vae_var_equivalent", None)
    if nested is not None:
        sources.append(("build_vae_var_equivalent", _from_build_vae_var(nested)))
    nested = config.pop("hard_coded_upstream", None)
    if nested is not None:
        if extra := sorted(set(nested) - set(_HARD_CODED_NAMES)):
            # descriptions of constants upstream has no argument for: nothing to build differently
            warnings.warn(f"var-vqvae: ignoring hard_coded_upstream entries {extra} (recognised: "
                          f"{sorted(_HARD_CODED_NAMES)})", stacklevel=2)
        known_hc = {_HARD_CODED_NAMES[k]: v for k, v in nested.items() if k in _HARD_CODED_NAMES}
        sources.append(("hard_coded_upstream", known_hc))
    derived = {k: config.pop(k) for k in _DERIVED if k in config}
    for k in _DESCRIPTIVE:
        config.pop(k, None)
    flat_bvv = {k: config.pop(k) for k in _BUILD_VAE_VAR_NAMES if k in config}
    if flat_bvv:
        bvv_keys = set(flat_bvv) | {k for k in ("ch", "share_quant_resi") if k in config}
        bvv = {k: (flat_bvv[k] if k in flat_bvv else config[k]) for k in bvv_keys}
        sources.append(("build_vae_var arguments", _from_build_vae_var(bvv)))
    given = {_HARD_CODED_NAMES.get(k, k) for k in config}
    if not nested_layout:
        refuse_unknown("var-vqvae config keys", given, known,
                       "(VQVAE arguments and hard-coded sizes; or build_vae_var's names "
                       f"{sorted(BUILD_VAE_VAR_DEFAULTS)}, or the nested vqvae_kwargs / "
                       "build_vae_var_equivalent / hard_coded_upstream of the golden fixtures)")
    elif extra := sorted(given - known):  # beside a nested layout (a fixture's config.json): descriptions
        warnings.warn(f"var-vqvae: ignoring config entries {extra} beside the nested VQVAE arguments",
                      stacklevel=2)
        config = {k: v for k, v in config.items() if _HARD_CODED_NAMES.get(k, k) in known}
    sources.append(("config", config))

    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, values in sources:
        refuse_unknown(f"VQVAE arguments in {where}", {_HARD_CODED_NAMES.get(k, k) for k in values}, known)
        for key, value in values.items():
            key = _HARD_CODED_NAMES.get(key, key)  # GroupNorm_groups / GroupNorm_eps accepted anywhere
            value = tuple(int(v) for v in value) if key in _TUPLES else value
            if key in merged and merged[key] != value:
                raise TokbenchError(
                    f"var-vqvae config gives {key} twice with different values: {merged[key]!r} ({origin[key]}) "
                    f"and {value!r} ({where}); make them agree"
                )
            merged[key], origin[key] = value, where
    cfg = VARConfig(**merged)
    _check_derived(cfg, derived)
    return cfg


def _check_derived(cfg: VARConfig, derived: Mapping[str, Any]) -> None:
    lengths = list(cfg.scale_lengths)
    implied = {
        "scale_lengths": lengths,
        "scale_offsets": [sum(lengths[:i]) for i in range(len(lengths))],
        "total_tokens": cfg.tokens_per_image,
        "latent_hw": [cfg.latent_side, cfg.latent_side],
        "downsample_factor": cfg.downsample,
        "phi_index_per_scale": list(cfg.phi_index_per_scale),
    }
    for key, given in derived.items():
        given = list(given) if isinstance(given, (list, tuple)) else given
        if given != implied[key]:
            raise TokbenchError(
                f"var-vqvae config states {key}={given} but its VQVAE arguments imply {implied[key]}; "
                "the derived values must come from the same config (check v_patch_nums / ch_mult / share_quant_resi)"
            )


# ---------------------------------------------------------------------------------------------------
# Architecture (models/basic_vae.py): LlamaGen's ResnetBlock / Downsample / Upsample have the same
# computation and key names; the attention differs (one fused 1x1 qkv conv).
# ---------------------------------------------------------------------------------------------------


class VARResnetBlock(ResnetBlock):
    """LlamaGen's block (same keys) with upstream basic_vae's activation: `F.silu`, not `x * sigmoid(x)`.

    The two round differently (~1e-7 per call); through the encoder that grew to ~6e-6 on `f` at the
    golden fixture's size and more on deeper / wider configs, eating the 1e-5 margin. `F.silu` makes the
    encoder and decoder bit-identical to upstream on CPU (checked on 17 generated configs, 1 thread).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class FusedQKVAttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, q, k, v from ONE 1x1 conv (3C outputs, in that
    order), softmax(q k^T C^-0.5) v, plus `proj_out`, residual (upstream `basic_vae.AttnBlock`)."""

    def __init__(self, channels: int, num_groups: int, eps: float) -> None:
        super().__init__()
        self.norm = Normalize(channels, num_groups=num_groups, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # upstream's explicit bmm / softmax order rather than scaled_dot_product_attention: same maths, but
        # bit-identical outputs keep the hidden-config tolerance margins (see VARResnetBlock)
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # (B, C, HW) each
        attn = torch.bmm(q.transpose(1, 2).contiguous(), k).mul_(int(c) ** (-0.5)).softmax(dim=2)  # (B, HWq, HWk)
        out = torch.bmm(v, attn.transpose(1, 2).contiguous())  # (B, C, HWq)
        return x + self.proj_out(out.reshape(b, c, h, w))


def _attn(cfg: VARConfig, channels: int, enabled: bool) -> nn.Module:
    return FusedQKVAttnBlock(channels, cfg.norm_num_groups, cfg.norm_eps) if enabled else nn.Identity()


def _block(cfg: VARConfig, cin: int, cout: int) -> VARResnetBlock:
    return VARResnetBlock(cin, cout, dropout=cfg.dropout, num_groups=cfg.norm_num_groups, eps=cfg.norm_eps)


def _mid(cfg: VARConfig, channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = _block(cfg, channels, channels)
    mid.attn_1 = _attn(cfg, channels, cfg.using_mid_sa)
    mid.block_2 = _block(cfg, channels, channels)
    return mid


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> (B, z_channels, H / 2^(L-1), W / 2^(L-1)); keys `conv_in`,
    `down.{i}.block.{j}` (+ `.attn.{j}` at the deepest level, `.downsample.conv` above it), `mid.*`,
    `norm_out`, `conv_out`."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.num_res_blocks = cfg.num_res_blocks
        levels = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            deepest = level == levels - 1
            for _ in range(cfg.num_res_blocks):
                down.block.append(_block(cfg, block_in, cfg.ch * mult))
                block_in = cfg.ch * mult
                if deepest and cfg.using_sa:
                    down.attn.append(_attn(cfg, block_in, True))
            if not deepest:
                down.downsample = Downsample(block_in)  # zero-pad right/bottom by 1, 3x3 stride 2
            self.down.append(down)
        self.mid = _mid(cfg, block_in)
        self.norm_out = Normalize(block_in, num_groups=cfg.norm_num_groups, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            for j, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[j](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))  # upstream's F.silu


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, in_channels, h 2^(L-1), w 2^(L-1)); keys `conv_in`, `mid.*`,
    `up.{i}` indexed by LEVEL (up.0 = full resolution, run last; the deepest runs first and carries `attn`),
    `num_res_blocks + 1` blocks each, `.upsample.conv` on all but level 0, `norm_out`, `conv_out`."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _mid(cfg, block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                up.block.append(_block(cfg, block_in, cfg.ch * cfg.ch_mult[level]))
                block_in = cfg.ch * cfg.ch_mult[level]
                if level == levels - 1 and cfg.using_sa:
                    up.attn.append(_attn(cfg, block_in, True))
            if level != 0:
                up.upsample = Upsample(block_in)  # nearest x2, then 3x3
            ups.append(up)
        self.up = nn.ModuleList(reversed(ups))
        self.norm_out = Normalize(block_in, num_groups=cfg.norm_num_groups, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for up in reversed(self.up):
            for j, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[j](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # upstream's F.silu


# ---------------------------------------------------------------------------------------------------
# Multi-scale residual quantiser (models/quant.py)
# ---------------------------------------------------------------------------------------------------


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv_kxk(h), r = |quant_resi| (a Conv2d: keys `weight`, `bias`)."""

    def __init__(self, channels: int, ratio: float, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


def _phi_container(cfg: VARConfig) -> nn.Module:
    """The phi convs in upstream's key layout: `quant_resi.{i}` (one per scale, share_quant_resi=0),
    `quant_resi.qresi` (shared, 1) or `quant_resi.qresi_ls.{i}` (K partially shared, K >= 2)."""

    def make() -> nn.Module:
        if abs(cfg.quant_resi) > 1e-6:
            return Phi(cfg.z_channels, cfg.quant_resi, cfg.phi_kernel_size)
        return nn.Identity()

    if cfg.share_quant_resi == 0:
        return nn.ModuleList([make() for _ in range(cfg.num_phis)])
    holder = nn.Module()
    if cfg.share_quant_resi == 1:
        holder.qresi = make()
    else:
        holder.qresi_ls = nn.ModuleList([make() for _ in range(cfg.num_phis)])
    return holder


_DISTANCE_CHUNK = 4096  # rows of the (N, V) distance matrix at once (512 MiB at 32768 rows x 4096 codes otherwise)


class MultiScaleQuantizer(nn.Module):
    """Upstream `VectorQuantizer2` at inference: `embedding` (V x Cvae), the phi convs, and the training-only
    `ema_vocab_hit_SV` buffer (scales x V) that the strict load of the release requires."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.quant_resi = _phi_container(cfg)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.v_patch_nums), cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.phi_indices = cfg.phi_index_per_scale

    def phi(self, si: int) -> nn.Module:
        """The phi applied at scale `si` (of the configured schedule)."""
        i = self.phi_indices[si]
        qr = self.quant_resi
        if self.cfg.share_quant_resi == 0:
            return qr[i]
        return qr.qresi if self.cfg.share_quant_resi == 1 else qr.qresi_ls[i]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N,) code ids: argmin |z|^2 + |e|^2 - 2 z.e over the raw codebook (upstream's addmm_),
        or with `using_znorm` argmax of the cosine."""
        e = self.embedding.weight
        out = []
        for part in z.split(_DISTANCE_CHUNK):
            if self.cfg.using_znorm:
                out.append(torch.argmax(F.normalize(part, dim=-1) @ F.normalize(e.T, dim=0), dim=1))
            else:
                d = part.square().sum(dim=1, keepdim=True) + e.square().sum(dim=1)
                d.addmm_(part, e.T, alpha=-2, beta=1)
                out.append(torch.argmin(d, dim=1))
        return torch.cat(out)

    def _to_latent(self, h: torch.Tensor, si: int, side: int) -> torch.Tensor:
        """Codes of scale si (B, C, pn, pn) -> upsampled (bicubic, not the last scale) and phi'd (B, C, side, side)."""
        if si != len(self.cfg.v_patch_nums) - 1:
            h = F.interpolate(h, size=(side, side), mode="bicubic")
        return self.phi(si)(h)

    def f_to_ids(self, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """f (B, C, h, h), h = last patch number -> per-scale ids [(B, pn^2)] and the final f_hat."""
        b, c, h, w = f.shape
        pns = self.cfg.v_patch_nums
        if (h, w) != (pns[-1], pns[-1]):
            raise TokbenchError(f"latent is {h}x{w} but the last scale is {pns[-1]}x{pns[-1]}")
        rest, f_hat, ids = f.clone(), torch.zeros_like(f), []
        for si, pn in enumerate(pns):
            z = rest if si == len(pns) - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
            idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c))
            codes = self.embedding(idx.view(b, pn, pn)).permute(0, 3, 1, 2).contiguous()
            codes = self._to_latent(codes, si, h)
            f_hat.add_(codes)
            rest.sub_(codes)
            ids.append(idx.reshape(b, pn * pn))
        return ids, f_hat

    def fhat_from_ids(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """The first k scales' ids [(B, pn^2)] -> f_hat (B, C, h, h) after k scales (upstream `embed_to_fhat`,
        all to the max scale; for k = all scales exactly its output, for fewer the cumulative f_hat)."""
        pns, side = self.cfg.v_patch_nums, self.cfg.v_patch_nums[-1]
        b = ids[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(b, self.cfg.z_channels, side, side)
        for si, idx in enumerate(ids):
            pn = pns[si]
            codes = self.embedding(idx).transpose(1, 2).reshape(b, self.cfg.z_channels, pn, pn)
            f_hat.add_(self._to_latent(codes, si, side))
        return f_hat


class VARVQVAE(nn.Module):
    """Upstream `VQVAE` at inference: encoder, `quant_conv`, `quantize`, `post_quant_conv`, decoder."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the continuous latent f (B, Cvae, h, h) that gets quantised."""
        return self.quant_conv(self.encoder(x))

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> all scales' ids concatenated, (B, sum(pn^2)) (upstream `img_to_idxBl`, cat)."""
        ids, _ = self.quantize.f_to_ids(self.latent(x))
        return torch.cat(ids, dim=1)

    def split_ids(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """(B, N) -> per-scale ids for the prefix of scales whose lengths add up to N."""
        kept = scales_for_count(int(ids.shape[1]), self.cfg.v_patch_nums)
        return list(ids.split([s * s for s in kept], dim=1))

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> images in [-1, 1], clamped as every official decode (`fhat_to_img`) does."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, N) ids of the first k scales -> images in [-1, 1] (upstream `idxBl_to_img(same_shape=True,
        last_one=True)` for all scales)."""
        return self.decode_fhat(self.quantize.fhat_from_ids(self.split_ids(ids)))


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------

PROBE_KEY = "quantize.embedding.weight"
# Keys that identify other tokenizer layouts, named in the error when a wrong checkpoint is given.
_OTHER_LAYOUTS = (  # most specific first: TokenFlow embeds LlamaGen's CNN
    ("encoder_vqkd.", "a TokenFlow model (tokenflow: encoder_vqkd.*)"),
    ("latent_tokens", "a TiTok / One-D-Piece model (titok, one-d-piece: latent_tokens)"),
    ("encoder.conv_blocks.0.res.0.conv1.weight", "a LlamaGen / Janus VQ model (llamagen-vq: encoder.conv_blocks.*)"),
    ("encoder.mid.attn_1.q.weight", "a taming / LDM VQGAN with separate q/k/v attention (e.g. chameleon-vqgan)"),
    ("quantize.embedding.weight", "a taming-style VQGAN (e.g. chameleon-vqgan), not VAR's multi-scale VQVAE"),
)


def _describe_other(keys: Sequence[str]) -> str:
    for probe, what in _OTHER_LAYOUTS:
        if any(k == probe or (probe.endswith(".") and k.startswith(probe)) or k.endswith("." + probe) for k in keys):
            return what
    return "an unknown layout"


def check_var_layout(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse, naming what was found, a checkpoint that is not a VAR VQVAE (no `quantize.quant_resi` /
    `quantize.ema_vocab_hit_SV`): the generic missing/unexpected-key list would not say what the file is."""
    keys = list(state_dict)
    if PROBE_KEY in keys and any(k.startswith(("quantize.quant_resi.", "quantize.ema_vocab_hit_SV")) for k in keys):
        return
    shown = ", ".join(sorted(keys)[:6])
    raise CheckpointError(
        f"{source} is not a VAR multi-scale VQVAE: it holds {len(keys)} tensors of {_describe_other(keys)} "
        f"(first keys: {shown}); a VAR VQVAE has quantize.embedding.weight, quantize.quant_resi.* and "
        "quantize.ema_vocab_hit_SV. Pass vae_ch160v4096z32.pth (HF FoundationVision/var) or load the right family."
    )


def load_var_weights(model: VARVQVAE, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load with upstream's `VQVAE.load_state_dict` override: an `ema_vocab_hit_SV` with another
    number of scales (a release loaded with another patch schedule) is replaced by the model's own."""
    check_var_layout(state_dict, source)
    sd = dict(state_dict)
    key = "quantize.ema_vocab_hit_SV"
    own = model.quantize.ema_vocab_hit_SV
    if key in sd and sd[key].shape[0] != own.shape[0]:
        sd[key] = own  # training statistics only; unused at inference
    load_strict(model, sd, source=source)


# ---------------------------------------------------------------------------------------------------
# Adapter
# ---------------------------------------------------------------------------------------------------


class VARTokenizer(ModuleTokenizer):
    """VAR's VQVAE as a tokbench tokenizer.

    `encode` takes (B, 3, S, S) images in [0, 1] (S = `spec.resolution`, or any side whose latent is the last
    patch number) and returns ids (B, sum(pn^2)) over the scales coarse to fine, with `meta["scales"]` (patch
    numbers) and `meta["scale_lengths"]`; `encode(images, n_scales=k)` keeps the first k scales. `decode`
    reconstructs from whatever prefix of scales the Tokens carry; images in [0, 1] ((x + 1) / 2 of the
    official output, which is clamped to [-1, 1]).
    """

    encode_options = ("n_scales",)

    def __init__(self, model: VARVQVAE, spec: TokenizerSpec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.scales = model.cfg.v_patch_nums

    @property
    def dtype(self) -> torch.dtype:
        return self.model.quant_conv.weight.dtype

    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        h, w = (int(s) for s in images.shape[-2:])
        cfg = self.model.cfg
        side = h
        for _ in range(len(cfg.ch_mult) - 1):  # each Downsample2x floors: out = floor(in / 2)
            side //= 2
        if h != w or side != cfg.latent_side:
            raise TokbenchError(
                f"{self.spec.name} takes {cfg.resolution}x{cfg.resolution} images (latent {cfg.latent_side}x"
                f"{cfg.latent_side} = its last scale), got {(h, w)}; preprocess with the "
                f"{self.spec.preprocessing!r} protocol at {cfg.resolution} px"
            )
        return images.to(self.device, self.dtype) * 2.0 - 1.0

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, n_scales: int | None = None) -> Tokens:
        ids = self.model.encode_ids(self._to_model(images))
        return multiscale_tokens(ids, self.scales, n_scales, self.model.cfg.vocab_size)

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if tokens.ids is None or tokens.ids.ndim != 2:
            raise TokbenchError(f"{self.spec.name}.decode needs Tokens with ids of shape (B, N)")
        ids = tokens.ids.to(self.device).long()
        v = self.model.cfg.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
            raise TokbenchError(f"token ids must lie in [0, {v}), got [{int(ids.min())}, {int(ids.max())}]")
        given = tokens.meta.get("scales")
        if given is not None and list(given) != list(self.scales[: len(given)]):
            raise TokbenchError(
                f"Tokens.meta['scales'] {list(given)} is not a prefix of this model's scales {list(self.scales)}"
            )
        x = self.model.decode_ids(ids).float()
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, h*w, Cvae) float32 on the last scale's grid, row-major: `pre_quant` the latent f =
        quant_conv(encoder(x)) that the multi-scale quantiser reads, `post_quant` f_hat, the sum over every
        scale of the upsampled, phi-refined codes: what post_quant_conv and the decoder receive."""
        check_stage(self, stage)
        f = self.model.latent(self._to_model(images))
        if stage == "post_quant":
            f = self.model.quantize.f_to_ids(f)[1]
        return grid_tokens(f)


# ---------------------------------------------------------------------------------------------------
# Released variants and the builder
# ---------------------------------------------------------------------------------------------------

PAPER = (
    "Tian et al., Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction, "
    "arXiv:2404.02905 (NeurIPS 2024)"
)
VAE_ARTIFACT = register_artifact(
    Artifact(
        name="var-vae-ch160v4096z32",
        repo_id="FoundationVision/var",
        filename="vae_ch160v4096z32.pth",
        licence="MIT (FoundationVision/VAR repository licence)",
        used_by="var-vqvae-256, var-vqvae-512",
    )
)
# build_vae_var()'s VQVAE (the release) as constructor arguments; only the schedule differs between rows.
RELEASE_CONFIG: dict[str, Any] = {
    "vocab_size": 4096,
    "z_channels": 32,
    "ch": 160,
    "share_quant_resi": 4,
    "v_patch_nums": list(PATCH_NUMS_256),
}

VARIANTS: tuple[Variant, ...] = (
    Variant(
        name="var-vqvae-256",
        family=FAMILY_NAME,
        config=RELEASE_CONFIG,
        weights=VAE_ARTIFACT,
        resolution=256,
        description="VAR's multi-scale VQVAE (all VAR-d16..d30 models), 256 px: 10 scales 1..16, 680 ids, V=4096",
        paper=PAPER,
    ),
    Variant(
        name="var-vqvae-512",
        family=FAMILY_NAME,
        config={**RELEASE_CONFIG, "v_patch_nums": list(PATCH_NUMS_512)},
        weights=VAE_ARTIFACT,
        resolution=512,
        description="the same VQVAE on VAR-d36's 512 px schedule: 10 scales 1..32, 2240 ids, V=4096",
        paper=PAPER,
    ),
)


def build_model(config: Mapping[str, Any] | VARConfig, device: str | torch.device = "cpu") -> VARVQVAE:
    """An unloaded `VARVQVAE` (device="meta" builds the full-size layout without memory)."""
    cfg = config if isinstance(config, VARConfig) else var_config(config)
    with torch.device(device):
        return VARVQVAE(cfg)


def build(b: Build) -> VARTokenizer:
    """Build the VQVAE from `b.config`, load a checkpoint (or seeded random weights), wrap it as a tokenizer."""
    cfg = var_config(b.config)
    model = b.model(lambda: VARVQVAE(cfg),
                    lambda m, path: load_var_weights(m, read_state_dict(path), source=f"VAR VQVAE checkpoint {path}"),
                    "VAR's VQVAE checkpoint (vae_ch160v4096z32.pth)")
    model = model.to(b.torch_dtype)
    pns = list(cfg.v_patch_nums)
    b.notes.append(
        f"{len(pns)} scales {pns} ({cfg.tokens_per_image} ids, coarse to fine), codebook {cfg.vocab_size} x "
        f"{cfg.z_channels}; phi per scale {list(cfg.phi_index_per_scale)}; encode(n_scales=k) keeps the first k scales"
    )
    spec = b.spec(
        resolution=cfg.resolution,
        tokens_per_image=cfg.tokens_per_image,
        codebook_size=cfg.vocab_size,
        bits_per_token=bits_for(cfg.vocab_size),
        normalisation="[-1, 1]",
        preprocessing=b.option("preprocessing"),
    )
    return VARTokenizer(model, spec)


FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    convolutional=True,
    variants=VARIANTS,
    aliases=("var",),
    description="VAR's multi-scale residual VQVAE (next-scale prediction tokenizer); any prefix of scales decodes",
    default_variant="var-vqvae-256",
    build_options={"dtype": (DType, "float32"), "preprocessing": (str, "var")},
    encode_options={"n_scales": PositiveInt},
    code="https://github.com/FoundationVision/VAR (models/vqvae.py, models/quant.py, models/basic_vae.py)",
)

__all__ = [
    "FAMILY",
    "VARConfig",
    "VARTokenizer",
    "VARVQVAE",
    "build_model",
    "load_var_weights",
    "phi_index",
    "var_config",
    "var_preprocess",
]

