"""Infinity's BSQ-VAE (Han et al. 2024, "Infinity"), `infinity-bsq`: a multi-scale bitwise residual tokenizer.

Written from the official code, FoundationVision/Infinity @ 4c27bbb54a9918847a2fe56b0fbe31a8523791a1:
`infinity/models/bsq_vae/vae.py` (`vae_model`, `load_cnn`), `flux_vqgan.py` (`AutoEncoder`, `Encoder`,
`Decoder`, `ResnetBlock`, `Downsample`, `Upsample`, `Normalize`), `conv.py` (`Conv`), `multiscale_bsq.py`
(`MultiScaleBSQ`, `BSQ`, `get_latent2scale_schedule`), the schedule tables of
`infinity/models/bsq_vae/dynamic_resolution.py` and `infinity/utils/dynamic_resolution.py`, and
`tools/run_infinity.py::transform` (preprocessing). No library implements this model (diffusers, timm and
transformers have no BSQ / bitwise multi-scale quantiser), so the network is written here.

Model: a FLUX-style CNN encoder (no attention in the releases) maps [-1, 1] images to a d-channel latent h
of side H/f (f = 2^(number of levels with 2^i < patch_size)). The quantiser walks a scale schedule (h_s, w_s)
coarse to fine: the residual (initially h) is area-downsampled to (h_s, w_s), l2-normalised over the d
channels, and each channel's sign is a bit; the code is +-1/sqrt(d); it is trilinear-upsampled back to the
latent size, subtracted from the residual and added to z. The decoder consumes z. There are NO integer ids
(2^64 codes do not fit in int64; Infinity's transformer predicts bits), so our ids ARE the bits:
(B, sum_s h_s*w_s, d) int64 0/1, scale after scale in raster order, bit c = channel c. `encode(images,
n_scales=k)` keeps the first k scales; `decode` rebuilds each given scale's code from its bits
(l2norm(bits * 2/sqrt(d) - 1/sqrt(d))), upsamples it trilinearly to the latent size, sums and decodes
(the official `decode_from_indices(..., "bit_label")`), clamped to [-1, 1] as every official decode is.

Scale schedules (official, `schedule_mode="dynamic"`): chosen by the latent size (H/f, W/f) as the VAE's
`get_latent2scale_schedule` does, from the aspect-ratio templates (`ratio2hws`: h/w in 1/3 .. 3, each
prefix of 7, 10 and 13 scales) over the four original tables. We also accept the 12-scale ("0.60M")
templates of `infinity/utils/dynamic_resolution.py`, which Infinity's generation pipeline passes to the VAE
explicitly (the VAE's own table lacks them, so its `forward` would fail there); every other entry is the
same in both tables. Inputs whose latent size has no schedule are refused with the supported sizes; a fixed
`scale_schedule` may be given in the config instead. The releases (stride 16) use 7 scales at 256 px, 10 at
512 and 13 at 1024; non-square inputs work at the template sizes (e.g. 256 x 320 px: h/w 0.8, 7 scales).

Every size upstream hard-codes is a field of `InfinityBSQConfig` with the released value as default
(`base_ch` 128 and `num_res_blocks` 2 are hard-coded by `vae_model`; input / output channels 3; GroupNorm
groups 32, else 24, eps 1e-6; the schedule tables). Quirks kept: the quantised value is formed as
z + (zhat - z) (a straight-through estimator, whose float rounding the official encode carries), swish is
x * sigmoid(x), the downsample pads right/bottom by one. The releases are `torch.save` dicts whose `vae`
entry is read (the loader ignores the rest); keys with or without the `Conv` / `Normalize` wrapper level
(`...conv1.conv.weight` / `...conv1.weight`) are accepted, as `load_cnn` does. The load is strict inside the
encoder, decoder and quantiser; tensors of other modules in `vae` are skipped (as `load_cnn` skips any key
the model lacks) and listed in the spec's source.

Third-party evaluation: VTBench (xingjianleng/VTBench @ 01368b3) evaluates `infinity_vae_d32.pth` and
`infinity_vae_d64.pth` with the same `vae_model` arguments, but feeds [0, 1] images (`standardize: False`)
to a model trained on [-1, 1]; its numbers are not those of this (official) normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..building import Build, refuse_unknown
from ..checkpoint import CheckpointError, describe_checkpoint, load_strict, read_state_dict
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, check_images
from ..options import DType, PositiveInt
from ..protocols import Geometry, drop_alpha, register_protocol, scale, shift
from ..registry import Family, Variant
from ..weights import Artifact, register_artifact

FAMILY_NAME = "infinity-bsq"
UPSTREAM = "https://github.com/FoundationVision/Infinity @ 4c27bbb54a9918847a2fe56b0fbe31a8523791a1"
DEFAULT_RESOLUTION = 256

# ---------------------------------------------------------------------------------------------------
# Scale schedules: the official tables (latent (h, w) per scale, coarse to fine)
# ---------------------------------------------------------------------------------------------------

# `ratio2hws` of both dynamic_resolution.py files (identical): h/w template -> the 13 scales of the largest
# (1024 px) schedule; shorter schedules are its prefixes. 1/ratio is added with h and w swapped.
DYNAMIC_TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
            (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
            (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
            (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
            (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
            (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
            (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
            (90, 30), (111, 37)),
}  # fmt: skip
# The VAE's dynamic table uses prefixes of 7, 10 and 13 scales; the generation pipeline's also 12 ("0.60M").
TEMPLATE_LENGTHS = (7, 10, 12, 13)
# `get_latent2scale_schedule`'s own table ("original" mode; "dynamic" overrides the first three).
ORIGINAL_SCHEDULES: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {
    (32, 32): ((1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (9, 9), (13, 13), (18, 18), (24, 24), (32, 32)),
    (16, 16): ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8), (10, 10), (13, 13), (16, 16)),
    (64, 64): ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 7), (9, 9), (12, 12), (16, 16), (21, 21), (27, 27),
               (36, 36), (48, 48), (64, 64)),
    (36, 64): ((1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (9, 12), (13, 16), (18, 24), (24, 32), (32, 48), (36, 64)),
}  # fmt: skip
SCHEDULE_MODES = ("dynamic", "original", "dense", "sameN")

Schedule = tuple[tuple[int, int], ...]

# ---------------------------------------------------------------------------------------------------
# Config: vae_model()'s argparse.Namespace (as the fixture's config.json) or our fields
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfinityBSQConfig:
    """The `AutoEncoder(args)` arguments that shape the model, then the sizes upstream hard-codes.

    `codebook_dim` d: latent channels = bits per position (`codebook_size` must be 2^d: the releases have no
    projection). `encoder_ch_mult` / `decoder_ch_mult`: widths base_ch * m per level; `patch_size`: the
    encoder downsamples at levels with 2^i < patch_size and the decoder upsamples at levels 1 <= i with
    2^i <= patch_size. `schedule_mode`: "dynamic" (releases), "original", "dense" or "sameN" (N scales all
    at the latent size), as `get_latent2scale_schedule`; `scale_schedule` (a list of (h, w) or (1, h, w))
    fixes one schedule instead. Hard-coded upstream: `in_channels` / `out_channels` 3, GroupNorm groups: the
    first of `norm_groups` (32, 24) dividing the width, eps `norm_eps` 1e-6; the schedule tables
    `dynamic_templates` (h/w -> 13 scales), `template_lengths` and `original_schedules`.
    """

    codebook_dim: int = 32
    base_ch: int = 128
    num_res_blocks: int = 2
    encoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    patch_size: int = 16
    schedule_mode: str = "dynamic"
    scale_schedule: Schedule | None = None
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: tuple[int, ...] = (32, 24)
    norm_eps: float = 1e-6
    dynamic_templates: tuple[tuple[float, Schedule], ...] = tuple(DYNAMIC_TEMPLATES.items())
    template_lengths: tuple[int, ...] = TEMPLATE_LENGTHS
    original_schedules: tuple[tuple[tuple[int, int], Schedule], ...] = tuple(ORIGINAL_SCHEDULES.items())
    _table: dict[tuple[int, int], Schedule] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.codebook_dim < 1:
            raise TokbenchError(f"codebook_dim must be >= 1, got {self.codebook_dim}")
        if self.patch_size < 1 or self.num_res_blocks < 1 or self.base_ch < 1:
            raise TokbenchError(
                f"patch_size, num_res_blocks and base_ch must be >= 1, got {self.patch_size}, "
                f"{self.num_res_blocks}, {self.base_ch}"
            )
        if not self.encoder_ch_mult or not self.decoder_ch_mult:
            raise TokbenchError("encoder_ch_mult and decoder_ch_mult need at least one level")
        if self.downsample != self.upsample:
            raise TokbenchError(
                f"patch_size {self.patch_size} gives {int(math.log2(self.downsample))} encoder downsamples with "
                f"{len(self.encoder_ch_mult)} levels but {int(math.log2(self.upsample))} decoder upsamples with "
                f"{len(self.decoder_ch_mult)} levels; the image would not come back at its size"
            )
        widths = {self.base_ch * m for m in (*self.encoder_ch_mult, *self.decoder_ch_mult)} | {self.base_ch}
        for c in sorted(widths):
            self.groups_for(c)  # refuses a width no GroupNorm group count divides
        mode = self.schedule_mode
        same = mode.startswith("same") and mode[4:].isdigit() and int(mode[4:]) >= 1
        if not (mode in ("dynamic", "original", "dense") or same):
            raise TokbenchError(f"schedule_mode must be one of {list(SCHEDULE_MODES)}, got {mode!r}")
        self._table.update(_schedule_table(self))

    @property
    def downsample(self) -> int:
        """The encoder's total stride (pixels per latent position along a side)."""
        return 2 ** sum(1 for i in range(len(self.encoder_ch_mult)) if 2**i < self.patch_size)

    @property
    def upsample(self) -> int:
        return 2 ** sum(1 for i in range(len(self.decoder_ch_mult)) if 1 <= i and 2**i <= self.patch_size)

    def groups_for(self, channels: int) -> int:
        """upstream `Normalize`: the first of `norm_groups` that divides the width."""
        for g in self.norm_groups:
            if channels % g == 0:
                return g
        raise TokbenchError(
            f"GroupNorm width {channels} (base_ch {self.base_ch} x ch_mult) is divisible by none of "
            f"{list(self.norm_groups)} (upstream Normalize raises NotImplementedError); check base_ch / ch_mult"
        )

    def schedule(self, h: int, w: int) -> Schedule:
        """The official scale schedule for a latent of h x w (`get_latent2scale_schedule(1, h, w, mode)`, plus
        the generation pipeline's 12-scale templates), or a `TokbenchError` naming the sizes that have one."""
        if self.scale_schedule is not None:
            if self.scale_schedule[-1] != (h, w):
                raise TokbenchError(
                    f"the config's scale_schedule ends at {self.scale_schedule[-1]} but the latent is {(h, w)} "
                    f"(image {h * self.downsample}x{w * self.downsample} px)"
                )
            return self.scale_schedule
        if self.schedule_mode.startswith("same"):
            return ((h, w),) * int(self.schedule_mode[4:])
        found = self._table.get((h, w))
        if found is None:
            f = self.downsample
            sizes = sorted(self._table, key=lambda s: (s[0] * s[1], s))
            squares = [f"{a * f}" for a, b in sizes if a == b]
            others = [f"{a * f}x{b * f}" for a, b in sizes if a != b]
            raise TokbenchError(
                f"Infinity's {self.schedule_mode!r} scale schedules have no entry for a {h}x{w} latent (image "
                f"{h * f}x{w * f} px at stride {f}); square sizes (px) with a schedule: {', '.join(squares)}"
                + (
                    f"; {len(others)} non-square sizes (H x W px), e.g. {', '.join(others[:4])}"
                    if others
                    else ""
                )
                + "; resize to one of them or give scale_schedule in the config"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def _schedule_table(cfg: InfinityBSQConfig) -> dict[tuple[int, int], Schedule]:
    """`get_latent2scale_schedule`'s table for the config's mode: latent (h, w) -> schedule."""
    table = dict(cfg.original_schedules)
    if cfg.schedule_mode == "dynamic":
        full: dict[float, Schedule] = {}
        for ratio, hws in cfg.dynamic_templates:
            full[ratio] = hws
            full[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in hws)  # upstream's key for 1/ratio
        for hws in full.values():
            for n in cfg.template_lengths:
                if n <= len(hws):
                    table[hws[n - 1]] = hws[:n]
    elif cfg.schedule_mode == "dense":
        s16 = tuple((x, x) for x in range(1, 17))
        s32 = s16 + ((20, 20), (24, 24), (28, 28), (32, 32))
        table.update({(16, 16): s16, (32, 32): s32, (64, 64): s32 + ((40, 40), (48, 48), (56, 56), (64, 64))})
    return table


# vae_model()'s Namespace keys that do not change an image tokenizer's outputs at inference (training,
# logging, data, the discriminator, and switches that are no-ops for 2-D image models): accepted, ignored.
_IGNORED_ARGS = frozenset(
    """
activation_in_disc advanced_disc apply_blur apply_noise base_ch_disc batch_size beta1 beta2 bucket_cap_mb
bytenas ckpt_every cnn_norm_axis cnn_version codebook_l2_norm codebook_show_usage commit_loss_beta
commitment_loss_weight compile conv_in_out_2d conv_inner_2d cycle_feat_weight cycle_gan_weight cycle_loop
cycle_weight data_path data_type dataaug dataset_list debug default_root_dir device dis_lr_multiplier
dis_minlr_multiplier dis_warmup_steps disable_sch disc_channels disc_layers disc_loss_type disc_optim_steps
disc_optim_type disc_pool disc_pool_size disc_pretrain_iter disc_version disc_warmup discriminator_iter_start
diversity_gamma drop_lvl_idx drop_lvl_num drop_rate dropout_p ema embedding_dim enable_nan_detector encoder_dtype
entropy_loss_ratio entropy_loss_weight flip_lvl_idx flip_mode flip_prob flux_weight fps freeze_encoder
gan_feat_weight image_channels image_disc_weight image_gan_weight image_recon4video inference_type inflation_pe
init_idis init_vdis init_vgen junke_old keep_first_quant keep_last_quant kl_weight l1_weight lecam_weight
lfq_weight ln_init_by_sqrt load_not_strict log_every lr lr_drop lr_drop_rate lr_min magvit_disc
manual_gc_interval mask_out max_flip_lvl max_grad_norm max_grad_norm_disc max_steps multi_resolution
no_init_idis not_load_optimizer num_quantizers num_workers optim_type perceptual_model perceptual_weight
precision preserve_norm pretrained pretrained_mode profiler_scheduler_wait_steps random_bucket_ratio
recon_loss_type remove_residual_detach res_conv_2d resolution rm_downsample save save_prediction sd_ckpt seed
sequence_length sigmoid_in_disc temporal_patch_size tokenizer turn_on_profiler upcast_attention upcast_tf32
use_checkpoint use_freq_dec use_freq_enc use_lecam_reg use_lecam_reg_zero use_stochastic_depth username
video_disc_weight video_gan_weight video_logger video_perceptual_weight visu_every vq_to_vae vqgan_ckpt
warmup_lr_init warmup_steps z_drop zero
""".split()
)
# Namespace switches the releases set one way; another value builds a different model (or a random one at
# inference): refused rather than silently ignored.
_RELEASE_SWITCHES: dict[str, Any] = {
    "use_vae": False, "quantizer_type": "MultiScaleBSQ", "new_quant": True, "cnn_type": "2d", "cnn_attention": "no",
    "norm_type": "group", "use_pxsf": False, "ln_before_quant": False, "use_out_phi": False,
    "use_out_phi_res": False, "use_decay_factor": False, "random_flip": False, "random_flip_1lvl": False,
    "drop_when_test": False,
}  # fmt: skip


def _schedule_entries(value: Any, what: str) -> Schedule:
    out = []
    for item in value:
        item = tuple(int(v) for v in item)
        if len(item) == 3:
            if item[0] != 1:
                raise TokbenchError(f"{what}: image schedules have t = 1, got {list(item)}")
            item = item[1:]
        if len(item) != 2 or min(item) < 1:
            raise TokbenchError(
                f"{what}: each scale must be (h, w) or (1, h, w) with positive sides, got {list(item)}"
            )
        out.append(item)
    if not out:
        raise TokbenchError(f"{what} is empty")
    return tuple(out)


def infinity_config(config: Mapping[str, Any] | None) -> InfinityBSQConfig:
    """Parse a config: `vae_model()`'s Namespace as a dict (the fixture's config.json), our field names, or
    both (empty: the d32 release). `codebook_size` must be 2^codebook_dim; training keys are ignored; a
    switch that builds another model (`use_vae`, `cnn_attention: yes`, ...) and unknown keys are refused."""
    raw = dict(config or {})
    known = {f.name for f in fields(InfinityBSQConfig) if not f.name.startswith("_")}
    refuse_unknown("infinity-bsq config keys", set(raw) - _IGNORED_ARGS - set(_RELEASE_SWITCHES),
                   known | {"codebook_size"},
                   "(and the other arguments of infinity/models/bsq_vae/vae.py::vae_model's Namespace)")
    for key, release in _RELEASE_SWITCHES.items():
        if key in raw and raw[key] != release:
            raise TokbenchError(
                f"infinity-bsq config {key}={raw[key]!r} is not supported: every Infinity BSQ-VAE release has "
                f"{key}={release!r} (another value builds a different model)"
            )
    args = {k: raw[k] for k in known if k in raw}
    if "codebook_size" in raw:
        size = int(raw["codebook_size"])
        dim = int(args.get("codebook_dim", size.bit_length() - 1))
        if size != 2**dim:
            raise TokbenchError(
                f"codebook_size {size} is not 2^codebook_dim = 2^{dim}; only the releases' layout (no projection "
                "around the bit quantiser) is supported"
            )
        args["codebook_dim"] = dim
    for key in ("encoder_ch_mult", "decoder_ch_mult", "norm_groups", "template_lengths"):
        if key in args:
            args[key] = tuple(int(v) for v in args[key])
    if args.get("scale_schedule") is not None:
        args["scale_schedule"] = _schedule_entries(args["scale_schedule"], "scale_schedule")
    if "dynamic_templates" in args:
        templates = args["dynamic_templates"]
        items = templates.items() if isinstance(templates, Mapping) else templates
        args["dynamic_templates"] = tuple(
            (float(r), _schedule_entries(s, f"dynamic_templates[{r}]")) for r, s in items
        )
    if "original_schedules" in args:
        table = args["original_schedules"]
        items = table.items() if isinstance(table, Mapping) else table
        parsed = []
        for key, s in items:
            hw = tuple(int(v) for v in (key.replace("x", ",").split(",") if isinstance(key, str) else key))
            parsed.append((hw, _schedule_entries(s, f"original_schedules[{key}]")))
        args["original_schedules"] = tuple(parsed)
    return InfinityBSQConfig(**args)


# ---------------------------------------------------------------------------------------------------
# The network (flux_vqgan.py / conv.py), with the release's key names
# ---------------------------------------------------------------------------------------------------


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)  # as upstream (not F.silu, whose kernel may round differently)


class Conv(nn.Module):
    """upstream `Conv` (2-D): the wrapper level of `...conv1.conv.weight`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """upstream `Normalize` (group): the wrapper level of `...norm1.norm.weight`."""

    def __init__(self, channels: int, cfg: InfinityBSQConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(cfg.groups_for(channels), channels, eps=cfg.norm_eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: InfinityBSQConfig) -> None:
        super().__init__()
        self.norm1 = Normalize(cin, cfg)
        self.conv1 = Conv(cin, cout, 3, padding=1)
        self.norm2 = Normalize(cout, cfg)
        self.conv2 = Conv(cout, cout, 3, padding=1)
        self.nin_shortcut = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 conv (out side = floor(in / 2))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block.{j}` and an optional `downsample` / `upsample`."""

    def __init__(self, blocks: list[ResnetBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Mid(nn.Module):
    def __init__(self, channels: int, cfg: InfinityBSQConfig) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg)
        self.block_2 = ResnetBlock(channels, channels, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: InfinityBSQConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_ch, cfg.encoder_ch_mult
        self.conv_in = Conv(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            cin = ch * ((1,) + tuple(mult))[i]
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, ch * m, cfg))
                cin = ch * m
            level = _Level(blocks)
            if 2**i < cfg.patch_size:  # upstream: i_level < log2(patch_size)
                level.downsample = Downsample(cin)
            self.down.append(level)
        self.mid = _Mid(cin, cfg)
        self.norm_out = Normalize(cin, cfg)
        self.conv_out = Conv(cin, cfg.codebook_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: InfinityBSQConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_ch, cfg.decoder_ch_mult
        cin = ch * mult[-1]
        self.conv_in = Conv(cfg.codebook_dim, cin, 3, padding=1)
        self.mid = _Mid(cin, cfg)
        levels: list[_Level] = []
        for i in reversed(range(len(mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, ch * mult[i], cfg))
                cin = ch * mult[i]
            level = _Level(blocks)
            if 1 <= i and 2**i <= cfg.patch_size:  # upstream: 1 <= i_level <= log2(patch_size)
                level.upsample = Upsample(cin)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed by resolution level, run from the deepest
        self.norm_out = Normalize(cin, cfg)
        self.conv_out = Conv(cin, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------
# The bitwise multi-scale quantiser (multiscale_bsq.py)
# ---------------------------------------------------------------------------------------------------


class BitQuantizer(nn.Module):
    """upstream `BSQ` at inference (new_quant, one codebook, no projection): sign bits of the l2-normalised
    input. `mask` (2^(d-1) .. 2^0, int64, wrapping at d = 64) is the release's buffer; only the integer-label
    path upstream uses it, never this module."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mask", 2 ** torch.arange(dim - 1, -1, -1))

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r (B, d, 1, h, w) float32 -> (codes (B, d, 1, h, w) = +-1/sqrt(d), bits (B, 1, h, w, d) int32)."""
        b, d, t, h, w = r.shape
        x = F.normalize(r.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, d), dim=-1)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        zhat = torch.where(x > 0, one, -one) * (1.0 / d**0.5)
        q = x + (zhat - x)  # the straight-through form: its rounding is what the official encode carries
        bits = (q > 0).int().view(b, t, h, w, d)
        return q.view(b, t, h, w, d).permute(0, 4, 1, 2, 3), bits

    def bits_to_codes(self, bits: torch.Tensor) -> torch.Tensor:
        """bits (B, 1, h, w, d) -> codes (B, d, 1, h, w): l2norm(bits * 2s - s), s = 1/sqrt(d) (upstream
        `indices_to_codes(..., "bit_label")`)."""
        s = 1.0 / math.sqrt(self.dim)
        codes = F.normalize(bits.to(torch.float32) * s * 2 - s, dim=-1)
        return codes.permute(0, 4, 1, 2, 3)


class MultiScaleBSQ(nn.Module):
    """upstream `MultiScaleBSQ` at inference: the residual walk over a scale schedule."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lfq = BitQuantizer(dim)

    def forward(self, h: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """h (B, d, H, W) -> (z (B, d, H, W): the summed codes of the scales in `schedule`, bits per scale
        [(B, 1, h_s, w_s, d)]). `schedule` may be a prefix of the full one; its scales are upsampled to the
        latent size (H, W)."""
        x = h.float().unsqueeze(2)
        b, d, t, hh, ww = x.shape
        residual, z, bits = x, torch.zeros_like(x), []
        for ph, pw in schedule:
            full = (ph, pw) == (hh, ww)
            r = residual if full else F.interpolate(residual, size=(t, ph, pw), mode="area")
            q, bit = self.lfq(r)
            if not full:
                q = F.interpolate(q, size=(t, hh, ww), mode="trilinear").contiguous()
            residual = residual - q
            z = z + q
            bits.append(bit)
        return z.squeeze(2), bits

    def codes_from_bits(self, bits: Sequence[torch.Tensor], latent: tuple[int, int]) -> torch.Tensor:
        """Per-scale bits [(B, 1, h_s, w_s, d)] -> their codes upsampled to `latent` and summed, (B, d, 1, H, W)
        (upstream `decode_from_indices`' summed_codes; a prefix of scales gives the partial sum)."""
        summed = None
        for bit in bits:
            codes = self.lfq.bits_to_codes(bit)
            up = F.interpolate(codes, size=(1, *latent), mode="trilinear")
            summed = up if summed is None else summed + up
        return summed


class InfinityBSQVAE(nn.Module):
    """upstream `AutoEncoder` for images at inference: `encoder`, `decoder`, `quantizer` (also reachable as
    `quantize`, so the state dict holds both `quantizer.lfq.mask` and `quantize.lfq.mask`, as the release)."""

    def __init__(self, cfg: InfinityBSQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleBSQ(cfg.codebook_dim)
        self.quantize = self.quantizer

    def schedule_for(self, x: torch.Tensor) -> Schedule:
        """The full scale schedule of images x (B, 3, H, W) (sides multiples of the stride)."""
        f = self.cfg.downsample
        return self.cfg.schedule(int(x.shape[-2]) // f, int(x.shape[-1]) // f)

    def encode(
        self, x: torch.Tensor, schedule: Schedule | None = None, n_scales: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """[-1, 1] images -> (h: encoder output (B, d, H/f, W/f) float32, z: summed codes of the kept scales,
        bits per kept scale [(B, 1, h_s, w_s, d)]); upstream `encode(x, scale_schedule)` for all scales."""
        schedule = schedule if schedule is not None else self.schedule_for(x)
        h = self.encoder(x).float()
        z, bits = self.quantizer(h, schedule[:n_scales] if n_scales is not None else schedule)
        return h, z, bits

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Summed codes (B, d, H, W) -> images in [-1, 1] (clamped, as upstream `decode`)."""
        dtype = self.decoder.conv_in.conv.weight.dtype
        return self.decoder(z.to(dtype)).clamp(-1, 1)

    def decode_from_bits(
        self, bits: Sequence[torch.Tensor], schedule: Schedule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first k scales' bits and the FULL schedule -> (summed codes (B, d, 1, H, W), images in [-1, 1]):
        upstream `decode_from_indices(bits, scale_schedule, "bit_label")`."""
        if not 1 <= len(bits) <= len(schedule):
            raise TokbenchError(f"got bits of {len(bits)} scales for a schedule of {len(schedule)}")
        summed = self.quantizer.codes_from_bits(bits, schedule[-1])
        return summed, self.decode(summed.squeeze(2))


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------

CHECKPOINT_HINT = "an Infinity BSQ-VAE .pth such as infinity_vae_d32.pth (HF FoundationVision/Infinity)"
_MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")


def is_infinity_bsq(keys: set[str]) -> bool:
    """Infinity BSQ-VAE keys: the bit quantiser's buffer, or the wrapped convs of both towers, or (wrapper-less)
    `encoder.down.*` and `decoder.up.*` with no VQ codebook or quant_conv (taming / LDM models have both)."""
    if any(k.startswith(("quantizer.lfq.", "quantize.lfq.")) for k in keys):
        return True
    if "encoder.conv_in.conv.weight" in keys and "decoder.conv_in.conv.weight" in keys:
        return True
    return (
        "encoder.conv_in.weight" in keys
        and any(k.startswith("decoder.up.") for k in keys)
        and not any(
            k.startswith(("quant_conv.", "post_quant_conv.", "quantize.", "quantizer.")) for k in keys
        )
    )


def read_infinity_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The `vae` state dict of a release (`torch.save` dict; plain state dicts and safetensors too), refused
    with what the file looks like when it is not an Infinity BSQ-VAE."""
    sd = read_state_dict(path, containers=("vae", "model", "state_dict"))
    if not is_infinity_bsq(set(sd)):
        raise CheckpointError(
            f"{path.name} is not an Infinity BSQ-VAE checkpoint: it looks like {describe_checkpoint(sd)}. "
            "Pass an infinity_vae_d*.pth of HF FoundationVision/Infinity, or load the file with its own family."
        )
    return sd


def checkpoint_codebook_dim(sd: Mapping[str, torch.Tensor]) -> int | None:
    """d of a release: the encoder's output channels (None when the key is absent)."""
    for key in ("encoder.conv_out.conv.weight", "encoder.conv_out.weight"):
        if key in sd:
            return int(sd[key].shape[0])
    return None


def remap_keys(sd: Mapping[str, torch.Tensor], own: set[str]) -> tuple[dict[str, torch.Tensor], bool]:
    """The release's keys in our names: a key without the `Conv` / `Normalize` level (`...conv1.weight`) goes
    to the wrapped name (`...conv1.conv.weight`) when only that exists, as `load_cnn` does. Returns the state
    dict and whether any key was rewritten."""
    out, rewritten = {}, False
    for k, v in sd.items():
        if k not in own:
            stem, _, leaf = k.rpartition(".")
            for level in ("conv", "norm"):
                if f"{stem}.{level}.{leaf}" in own:
                    k, rewritten = f"{stem}.{level}.{leaf}", True
                    break
        out[k] = v
    return out, rewritten


_OWN_MODULES = ("encoder.", "decoder.", "quantizer.", "quantize.")


def load_infinity_weights(
    model: InfinityBSQVAE, sd: Mapping[str, torch.Tensor], source: str
) -> dict[str, str]:
    """Strict load of a release's `vae` state dict (either key form) into the encoder, decoder and quantiser:
    any of their tensors missing, unexpected or misshapen is an error; the `lfq.mask` constants may be
    absent. Entries outside those modules (a training module saved beside the VAE) are skipped, as
    `load_cnn` skips every key the model lacks, and named in the returned source record."""
    remapped, rewritten = remap_keys(sd, set(model.state_dict()))
    outside = sorted(k for k in remapped if not k.startswith(_OWN_MODULES))
    load_strict(
        model,
        remapped,
        source=source,
        ignore_missing=lambda k: k in _MASK_KEYS,
        ignore_unexpected=lambda k: not k.startswith(_OWN_MODULES),
    )
    out = {
        "layout": "wrapper-less keys (...conv1.weight), remapped" if rewritten else "native AutoEncoder keys"
    }
    if outside:
        shown = ", ".join(outside[:4]) + (f", ... ({len(outside)} in all)" if len(outside) > 4 else "")
        out["ignored_entries"] = f"{len(outside)} tensors outside encoder/decoder/quantizer: {shown}"
    return out


# ---------------------------------------------------------------------------------------------------
# Preprocessing: tools/run_infinity.py::transform
# ---------------------------------------------------------------------------------------------------


def cover_size(w: int, h: int, tgt_w: int, tgt_h: int) -> tuple[int, int]:
    """`transform`'s resize: keep the aspect ratio and cover the target, the other side int()-truncated
    (the same float expressions as upstream)."""
    if w / h <= tgt_w / tgt_h:
        return tgt_w, int(tgt_w / (w / h))
    return int((w / h) * tgt_h), tgt_h


def infinity_transform(img: Image.Image, tgt_h: int, tgt_w: int) -> Image.Image:
    """`run_infinity.transform` up to `to_tensor`: LANCZOS resize covering (tgt_w, tgt_h), then the centre
    crop with floor offsets ((size - target) // 2). RGB out; the [-1, 1] map is the tokenizer's."""
    img = drop_alpha(img)
    nw, nh = cover_size(*img.size, tgt_w, tgt_h)
    img = img.resize((nw, nh), resample=Image.LANCZOS)
    left, top = (nw - tgt_w) // 2, (nh - tgt_h) // 2
    return img.crop((left, top, left + tgt_w, top + tgt_h))


def infinity_geometry(w: int, h: int, size: int) -> Geometry:
    nw, nh = cover_size(w, h, size, size)
    return scale(w, h, nw, nh).then(shift(-((nw - size) // 2), -((nh - size) // 2)))


@register_protocol(
    "infinity",
    "Infinity's tools/run_infinity.py transform: PIL LANCZOS resize keeping the aspect ratio so the image covers "
    "the target (other side int()-truncated), centre crop with floor offsets, then x * 2 - 1",
    geometry=infinity_geometry,
)
def infinity_preprocess(img: Image.Image, size: int) -> Image.Image:
    return infinity_transform(img, size, size)


# ---------------------------------------------------------------------------------------------------
# Adapter
# ---------------------------------------------------------------------------------------------------


def split_bits(ids: torch.Tensor, schedule: Schedule) -> list[torch.Tensor]:
    """(B, N, d) bits of the first k scales of `schedule` -> [(B, 1, h_s, w_s, d)] (the official layout)."""
    counts = [h * w for h, w in schedule]
    n, total, k = int(ids.shape[1]), 0, 0
    while total < n and k < len(counts):
        total, k = total + counts[k], k + 1
    if total != n:
        valid = [sum(counts[: i + 1]) for i in range(len(counts))]
        raise TokbenchError(
            f"{n} bit rows per image is not a prefix of the scale schedule {[list(s) for s in schedule]} "
            f"(valid counts: {valid})"
        )
    b, d = int(ids.shape[0]), int(ids.shape[2])
    return [part.reshape(b, 1, h, w, d) for part, (h, w) in zip(ids.split(counts[:k], dim=1), schedule)]


class InfinityBSQTokenizer(ModuleTokenizer):
    """Infinity's BSQ-VAE as a tokbench tokenizer.

    `encode`: (B, 3, H, W) in [0, 1], sides multiples of the stride whose latent has a schedule (the releases:
    256, 512, 1024 px squares and the h/w templates) -> ids = bits (B, sum_s h_s*w_s, d) int64 0/1, scale after
    scale coarse to fine, raster order inside a scale; `meta["scales"]` the kept (h, w), `meta["schedule"]`
    the full one; `grid` the latent (H/f, W/f). `encode(images, n_scales=k)` keeps the first k scales (their
    h_s*w_s*d bits only). `decode` sums the given scales' codes (official `decode_from_indices`) -> [0, 1] images
    ((x + 1) / 2 of the official clamped output). `features(images, stage)`: `pre_quant` the encoder output
    the quantiser sees, `post_quant` the summed quantised feature the decoder consumes, (B, H/f * W/f, d).
    """

    feature_stages = ("pre_quant", "post_quant")

    def __init__(self, model: InfinityBSQVAE, spec: TokenizerSpec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.cfg = model.cfg

    @property
    def dtype(self) -> torch.dtype:
        return self.model.encoder.conv_in.conv.weight.dtype

    def _to_model(self, images: torch.Tensor) -> tuple[torch.Tensor, Schedule]:
        check_images(images)
        h, w = (int(s) for s in images.shape[-2:])
        f = self.cfg.downsample
        if h % f or w % f:
            r = self.spec.resolution
            raise TokbenchError(
                f"{self.spec.name} needs image sides divisible by {f} (its stride), got {h}x{w}; preprocess to "
                f"{r}x{r} with the {self.spec.preprocessing!r} protocol"
            )
        schedule = self.cfg.schedule(h // f, w // f)
        return (images.to(self.device, torch.float32) * 2 - 1).to(self.dtype), schedule

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, n_scales: int | None = None) -> Tokens:
        x, schedule = self._to_model(images)
        if n_scales is not None and not 1 <= int(n_scales) <= len(schedule):
            raise TokbenchError(
                f"n_scales must be in 1..{len(schedule)} (the scales of a {x.shape[-2]}x"
                f"{x.shape[-1]} image), got {n_scales}"
            )
        kept = schedule[: int(n_scales)] if n_scales is not None else schedule
        _, _, bits = self.model.encode(x, schedule, len(kept))
        b, d = int(x.shape[0]), self.cfg.codebook_dim
        ids = torch.cat([bit.reshape(b, -1, d) for bit in bits], dim=1).long()
        return Tokens(
            ids=ids,
            grid=schedule[-1],
            codebook_size=2,
            meta={
                "scales": [list(s) for s in kept],
                "scale_lengths": [h * w for h, w in kept],
                "schedule": [list(s) for s in schedule],
                "layout": "ids (B, N, d): the d sign bits of each position, scales coarse to fine, raster order",
            },
        )

    def _bits(self, tokens: Tokens) -> tuple[list[torch.Tensor], Schedule]:
        d = self.cfg.codebook_dim
        ids = tokens.ids
        if ids is None or ids.ndim != 3 or ids.shape[-1] != d:
            got = None if ids is None else tuple(ids.shape)
            raise TokbenchError(f"{self.spec.name} decodes bits of shape (B, N, {d}); got {got}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > 1):
            raise TokbenchError(f"bits must be 0 or 1, got values in [{int(ids.min())}, {int(ids.max())}]")
        given = tokens.meta.get("schedule")
        if given is not None:
            schedule = _schedule_entries(given, "Tokens.meta['schedule']")
            if tokens.grid is not None and tuple(tokens.grid) != schedule[-1]:
                raise TokbenchError(
                    f"Tokens.grid {tokens.grid} is not the schedule's last scale {schedule[-1]}"
                )
        elif tokens.grid is not None:
            schedule = self.cfg.schedule(*(int(s) for s in tokens.grid))
        else:
            raise TokbenchError(
                f"{self.spec.name}.decode needs Tokens.grid (the latent size) or meta['schedule']"
            )
        return split_bits(ids.to(self.device), schedule), schedule

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        bits, schedule = self._bits(tokens)
        _, x = self.model.decode_from_bits(bits, schedule)
        return ((x.float() + 1) / 2).clamp(0, 1)

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, H/f * W/f, d) float32 token features: `pre_quant` (encoder output h) or `post_quant` (z)."""
        if stage not in self.feature_stages:
            raise TokbenchError(
                f"{self.spec.name} feature stages are {list(self.feature_stages)}, got {stage!r}"
            )
        x, schedule = self._to_model(images)
        if stage == "pre_quant":
            out = self.model.encoder(x).float()
        else:
            _, out, _ = self.model.encode(x, schedule)
        return out.flatten(2).transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------------
# Released variants and the builder
# ---------------------------------------------------------------------------------------------------

PAPER = (
    "Han et al., Infinity: Scaling Bitwise AutoRegressive Modeling for High-Resolution Image Synthesis, "
    "arXiv:2412.04431"
)
HF_REPO = "FoundationVision/Infinity"
# The HF commit "[update] infinity_vae_d32reg.pth" (Dec 24, 2024); d16 / d24 / d32 / d64 were added before it.
HF_REVISION = "5fbd9960492dbcd1964556875ffc20be0614cb59"
LICENCE = "MIT (HF model card of FoundationVision/Infinity and the GitHub repository's LICENSE)"
_TABLE = (
    "FoundationVision/Infinity README.md @ 4c27bbb, 'Visual Tokenizer' table, columns IN-256 / IN-512 (ImageNet; "
    "the table names neither split nor script. The repository's tokenizer evaluation, tools/run_tokenizer.py, "
    "reads data/labels/imagenet/val.txt: torchvision Resize(R, bicubic) + CenterCrop(R), x * 2 - 1, the VAE's "
    "default schedule, pytorch-fid's InceptionV3 on the float, UNclamped (x + 1) / 2 reconstructions; PSNR with "
    "scikit-image on uint8-truncated images)"
)
# file stem -> (d, IN-256 rFID, IN-256 PSNR, IN-512 rFID, IN-512 PSNR, description)
_RELEASES: dict[str, tuple[int, float, float, float, float, str]] = {
    "d16": (16, 1.22, 20.9, 0.31, 22.6, "16 bits per position"),
    "d24": (24, 0.75, 22.0, 0.30, 23.5, "24 bits per position"),
    "d32": (32, 0.61, 22.7, 0.23, 24.4, "32 bits per position"),
    "d32reg": (32, 0.75, 21.9, 0.32, 23.6, "32 bits per position, the tokenizer of Infinity-2B (README link "
               "text says infinity_vae_d32_reg.pth; the file is infinity_vae_d32reg.pth)"),
    "d64": (64, 0.33, 24.9, 0.15, 26.4, "64 bits per position"),
}  # fmt: skip


_RELEASE_CONFIG = InfinityBSQConfig()


def _variants() -> tuple[Variant, ...]:
    out = []
    for stem, (d, rfid256, psnr256, rfid512, psnr512, what) in _RELEASES.items():
        filename = f"infinity_vae_{stem}.pth"
        artifact = register_artifact(
            Artifact(name=f"infinity-vae-{stem}", repo_id=HF_REPO, filename=filename, revision=HF_REVISION,
                     licence=LICENCE, used_by=f"{FAMILY_NAME}-{stem}, {FAMILY_NAME}-{stem}-512")
        )  # fmt: skip
        for res, rfid, psnr in ((256, rfid256, psnr256), (512, rfid512, psnr512)):
            schedule = _RELEASE_CONFIG.schedule(res // 16, res // 16)
            scales, n = len(schedule), sum(h * w for h, w in schedule)
            out.append(Variant(
                name=f"{FAMILY_NAME}-{stem}" + ("" if res == 256 else f"-{res}"),
                family=FAMILY_NAME,
                config={"codebook_dim": d},
                weights=artifact,
                resolution=res,
                description=f"Infinity BSQ-VAE {filename}, {what}; {res} px: {scales} scales, {n} positions x {d} "
                            f"bits = {n * d} bits",
                paper=PAPER,
                published={"rfid_pytorch_fid": rfid},
                published_source=f"{_TABLE}: {filename} IN-{res} rFID {rfid}, PSNR {psnr}",
            ))  # fmt: skip
    return tuple(out)


VARIANTS = _variants()
DEFAULT_VARIANT = f"{FAMILY_NAME}-d32"


def build_model(
    config: Mapping[str, Any] | InfinityBSQConfig, device: str | torch.device = "cpu"
) -> InfinityBSQVAE:
    """An unloaded `InfinityBSQVAE` (device="meta": the full-size layout without memory)."""
    cfg = config if isinstance(config, InfinityBSQConfig) else infinity_config(config)
    with torch.device(device):
        return InfinityBSQVAE(cfg)


def build(b: Build) -> InfinityBSQTokenizer:
    """Parse the config, read the release's `vae` state dict (refusing other families), build, load strictly."""
    raw = dict(b.config)
    sd: dict[str, torch.Tensor] = {}
    found: int | None = None
    inferred = False
    if not b.random_weights:
        sd = read_infinity_checkpoint(b.checkpoint(CHECKPOINT_HINT))
        found = checkpoint_codebook_dim(sd)
        if found is not None and "codebook_dim" not in raw and "codebook_size" not in raw:
            raw["codebook_dim"], inferred = found, True  # the releases ship no config: d from the file
    cfg = infinity_config(raw)
    if found is not None and found != cfg.codebook_dim:
        other = [v.name for v in VARIANTS if v.config["codebook_dim"] == found][:2]
        raise CheckpointError(
            f"the checkpoint is a d={found} BSQ-VAE ({found} latent channels) but the config says codebook_dim "
            f"{cfg.codebook_dim}" + (f"; load it as {' or '.join(other)}" if other else "")
        )

    def load(model: nn.Module, path: Path) -> dict[str, str]:
        return load_infinity_weights(model, sd, source=path.name)

    model = b.model(lambda: InfinityBSQVAE(cfg), load, CHECKPOINT_HINT)
    model = model.to(b.torch_dtype)
    if inferred:
        b.source["codebook_dim"] = f"{cfg.codebook_dim} (from the checkpoint's encoder.conv_out)"
    f = cfg.downsample
    resolution: int | None = b.option("resolution") or (b.variant.resolution if b.variant else None)
    if resolution is None and cfg.scale_schedule is not None:
        # one fixed schedule: its latent size is the native one
        schedule = cfg.scale_schedule
        h, w = schedule[-1]
        resolution, size = (h * f if h == w else None), f"{h * f}x{w * f} px"
    else:
        resolution = int(resolution or default_resolution(cfg))
        if resolution % f:
            raise TokbenchError(f"resolution must be a multiple of {f} (the stride), got {resolution}")
        schedule, size = cfg.schedule(resolution // f, resolution // f), f"{resolution} px"
    n = sum(h * w for h, w in schedule)
    b.notes += [
        f"Infinity BSQ-VAE: CNN encoder/decoder (base_ch {cfg.base_ch}, ch_mult {list(cfg.encoder_ch_mult)}, stride "
        f"{f}), multi-scale bitwise residual quantiser with d = {cfg.codebook_dim} sign bits per position",
        f"{size}: {len(schedule)} scales {[list(s) for s in schedule]} ({schedule_mode_note(cfg)}), "
        f"{n} positions x {cfg.codebook_dim} bits; ids are the bits (B, N, d); encode(n_scales=k) keeps the first k "
        "scales; decode sums the given scales' codes (official decode_from_indices) and clamps to [-1, 1]",
    ]
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=n,
        codebook_size=2,
        bits_per_token=float(cfg.codebook_dim),
        normalisation="[-1, 1] (x * 2 - 1)",
        preprocessing=b.option("protocol") or "infinity",
    )
    return InfinityBSQTokenizer(model, spec)


def default_resolution(cfg: InfinityBSQConfig) -> int:
    """256 px when the config has a schedule there (the releases), else the nearest square side that has one."""
    f = cfg.downsample
    sides = [h * f for h, w in cfg._table if h == w] or [DEFAULT_RESOLUTION]
    return min(sides, key=lambda s: (abs(s - DEFAULT_RESOLUTION), s))


def schedule_mode_note(cfg: InfinityBSQConfig) -> str:
    if cfg.scale_schedule is not None:
        return "the config's fixed scale_schedule"
    return f"schedule_mode {cfg.schedule_mode!r}"


FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    variants=VARIANTS,
    description="Infinity's multi-scale bitwise (BSQ) residual tokenizer, d = 16 .. 64 bits per position; ids are "
    "the bits, any prefix of scales decodes",
    default_variant=DEFAULT_VARIANT,
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt, "protocol": str},
    encode_options={"n_scales": PositiveInt},
    code=UPSTREAM,
    convolutional=True,
)

__all__ = [
    "FAMILY",
    "InfinityBSQConfig",
    "InfinityBSQTokenizer",
    "InfinityBSQVAE",
    "build_model",
    "infinity_config",
    "infinity_preprocess",
    "infinity_transform",
    "load_infinity_weights",
    "read_infinity_checkpoint",
    "split_bits",
]
