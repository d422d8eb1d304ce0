"""What Open-MAGVIT2 and IBQ (TencentARC/SEED-Voken) share: configs, Lightning checkpoints, preprocessing.

Both families ship Lightning `{"state_dict": ...}` files holding the raw generator weights AND their
`LitEma` copies (`model_ema.` + name without dots); the official reconstruction and evaluation scripts
run under `ema_scope()`, i.e. with the EMA copies, so `ema=True` is the default here. Their configs are
the official YAML's `model.init_args` (jsonargparse) or the constructor keywords themselves.
This module defines no family; `open_magvit2.py` and `ibq.py` do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..building import Build
from ..checkpoint import (
    LIT_EMA_BOOKKEEPING,
    CheckpointError,
    describe_checkpoint,
    load_strict,
    read_state_dict,
    select_lit_ema,
)
from ..core import GridVQTokenizer, TokbenchError, bits_for
from ..protocols import (
    Geometry,
    center_crop,
    drop_alpha,
    register_protocol,
    resize_short_side,
    scale,
    shift,
    short_side_crop_geometry,
)
from ..registry import Family, Variant

UPSTREAM = "https://github.com/TencentARC/SEED-Voken (formerly TencentARC/Open-MAGVIT2)"

# Constructor keywords of lfqgan.VQModel / ibqgan.IBQ (and their pretrain twins) that only matter for
# training, logging or the AR stage: accepted and ignored, as they do not change a tokenizer's outputs.
TRAINING_ARGS = frozenset({
    "lossconfig", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels", "monitor", "learning_rate",
    "resume_lr", "warmup_epochs", "scheduler_type", "min_learning_rate", "lr_drop_epoch", "lr_drop_rate",
    "gradient_clip_val", "stage", "sample_minimization_weight", "batch_maximization_weight", "beta",
    "use_entropy_loss", "entropy_temperature", "sane_index_shape", "use_shared_epoch", "sche_type", "wpe",
    "wp", "wp0", "max_iter", "wp_iter", "lr_drop_iter",
})  # fmt: skip


def constructor_args(config: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The constructor keywords in a config, and the class it names (None when it names none).

    Accepted: the official YAML / fixture layout `{"model": {"class_path", "init_args"}}`, the older
    `{"model": {"target", "params"}}`, or the keywords themselves (flat). Other top-level keys beside
    `model` (fixture metadata, trainer, data) are ignored.
    """
    model = config.get("model")
    if isinstance(model, Mapping):
        args = model.get("init_args", model.get("params"))
        if not isinstance(args, Mapping):
            raise TokbenchError(
                "the config's `model` section has neither `init_args` nor `params`; pass the official YAML "
                "(model: {class_path: ..., init_args: {ddconfig: ..., n_embed: ..., embed_dim: ...}}) or the "
                "constructor keywords themselves"
            )
        return dict(args), model.get("class_path") or model.get("target")
    return dict(config), None


def ema_choice(ema: bool | None, use_ema: bool | None) -> bool:
    """Which weights to load: an explicit `ema` option wins; else the config's `use_ema` (the official
    `ema_scope()` only swaps weights when the model was built with it); else True, as every release."""
    if ema is not None:
        if not isinstance(ema, bool):
            raise TokbenchError(f"ema must be true (EMA weights) or false (raw weights), got {ema!r}")
        return ema
    return True if use_ema is None else bool(use_ema)


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------

def read_lightning_checkpoint(
    path: Path, *, is_family: Callable[[set[str]], bool], what: str
) -> dict[str, torch.Tensor]:
    """Tensors of a `{"state_dict": ...}` checkpoint (plain state dicts and safetensors too), refused with
    a message naming what the file looks like when `is_family(keys)` is false."""
    sd = read_state_dict(path, containers=("state_dict", "model", "ema"))
    if not is_family(set(sd)):
        raise CheckpointError(f"{path.name} is not {what} checkpoint: it looks like {describe_checkpoint(sd)}")
    return sd


def load_lightning_weights(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, ema: bool, source: str
) -> list[str]:
    """Load the EMA (or raw) generator weights of a SEED-Voken checkpoint strictly into `model`.

    Returns the ignored entries: LitEma's bookkeeping (`model_ema.decay`, `model_ema.num_updates`) and
    a training checkpoint's `loss.*` (discriminator, LPIPS); anything else unknown, missing or wrongly
    shaped raises `CheckpointError`.
    """
    names = [n for n, _ in model.named_parameters()]
    chosen = select_lit_ema(sd, names, ema=ema, source=source)

    def ignored(k: str) -> bool:
        return k in LIT_EMA_BOOKKEEPING or k.startswith("loss.")

    load_strict(model, chosen, source=f"{source} ({'EMA' if ema else 'raw'} weights)", ignore_unexpected=ignored)
    return sorted(k for k in chosen if ignored(k))


# ---------------------------------------------------------------------------------------------------
# Building a tokenizer: what both families' `build` do, with their differences as data
# ---------------------------------------------------------------------------------------------------


class SeedVokenTokenizer(GridVQTokenizer):
    """A grid tokenizer over a model with `config.downsample`, `config.n_embed`, `encode_ids(x) -> (B, h, w)`
    and `decode_ids(ids) -> images in [-1, 1]` (both families' models)."""


@dataclass(frozen=True)
class SeedVokenFamily:
    """How one SEED-Voken family is built. `parse(config) -> (cfg, use_ema of the config)`; `cfg` must have
    `downsample` and `n_embed`; `describe(cfg, side, resolution)` is the spec note on the architecture;
    `options` are the family's build options; `check(cfg, state_dict, path) -> cfg` may refuse a
    checkpoint early with a better message than a key list, or return the config that fits it (a layout
    the checkpoint itself reveals)."""

    name: str
    variants: tuple[Variant, ...]
    default_variant: str
    what: str
    checkpoint_hint: str
    parse: Callable[[Mapping[str, Any] | None], tuple[Any, bool | None]]
    make_model: Callable[[Any], torch.nn.Module]
    is_family: Callable[[set[str]], bool]
    describe: Callable[[Any, int, int], str]
    tokenizer: type[SeedVokenTokenizer]
    preprocessing: str
    default_resolution: Callable[[Any], int]
    options: Mapping[str, Any]
    check: Callable[[Any, Mapping[str, torch.Tensor], Path], Any] | None = None
    packages: tuple[str, ...] = ()

    def build(self, b: Build) -> SeedVokenTokenizer:
        """Build from `b.config`, load a checkpoint's EMA (default; `ema=False`: the raw ones) or seeded
        random weights. `protocol` names the preprocessing recorded in the spec (default: the family's)."""
        cfg, config_ema = self.parse(b.config)
        use_ema = ema_choice(b.option("ema"), config_ema)

        ignored: list[str] = []

        def load(model: torch.nn.Module, path: Path) -> dict[str, str]:
            ignored.extend(load_lightning_weights(model, sd, ema=use_ema, source=path.name))
            return {"weights_set": "EMA (model_ema.*)" if use_ema else "raw"}

        if not b.random_weights:
            path = b.checkpoint(self.checkpoint_hint)
            sd = read_lightning_checkpoint(path, is_family=self.is_family, what=self.what)
            if self.check is not None:
                cfg = self.check(cfg, sd, path)
        model = b.model(lambda: self.make_model(cfg), load, self.checkpoint_hint,
                        checkpoint=None if b.random_weights else path)
        f = cfg.downsample
        chosen = b.option("resolution") or (b.variant.resolution if b.variant else None)
        # The config's `resolution` only places attention (IBQ) or is ignored (Open-MAGVIT2); the official
        # modules accept any value, e.g. 90 with a 4x model, so it is rounded down to a multiple of f here
        # (a requested resolution is not: it is an input size).
        resolution = int(chosen) if chosen else max(f, int(self.default_resolution(cfg)) // f * f)
        if resolution % f:
            raise TokbenchError(
                f"resolution must be a multiple of {cfg.downsample} (the downsample factor), got {resolution}"
            )
        side = resolution // cfg.downsample
        b.notes += [
            self.describe(cfg, side, resolution),
            "EMA weights, as the official evaluation" if use_ema else "RAW (non-EMA) weights (option ema=False)",
        ]
        if ignored:
            b.notes.append(f"ignored {len(ignored)} bookkeeping/training entries ({', '.join(ignored[:3])}, ...)")
        spec = b.spec(
            resolution=resolution,
            tokens_per_image=side * side,
            codebook_size=cfg.n_embed,
            bits_per_token=bits_for(cfg.n_embed),
            normalisation="[-1, 1] (x * 2 - 1)",
            preprocessing=b.option("protocol") or self.preprocessing,
        )
        tok = self.tokenizer(model, spec, b.torch_dtype)
        tok.ema = use_ema
        return tok

    def family(self, description: str, aliases: tuple[str, ...] = ()) -> Family:
        """The registry's `Family` of these releases (taming-style VQGAN convolutions), built by `build`."""
        return Family(name=self.name, build=self.build, variants=self.variants, aliases=aliases,
                      description=description, default_variant=self.default_variant, build_options=self.options,
                      code=UPSTREAM, packages=self.packages, convolutional=True)


# ---------------------------------------------------------------------------------------------------
# Preprocessing protocols of the official evaluation data sets
# ---------------------------------------------------------------------------------------------------


@register_protocol(
    "open-magvit2",
    "Open-MAGVIT2's ImageNet eval (src/Open_MAGVIT2/data/base.py ImagePaths): torchvision Resize(size) of the "
    "short side (PIL bilinear, antialiased), CenterCrop(size); also IBQ's pretrain tokenizers' validation",
    geometry=lambda w, h, size: short_side_crop_geometry(w, h, size, size),
)
def open_magvit2_preprocess(img: Image.Image, size: int) -> Image.Image:
    # torchvision's Resize(int) on PIL is PIL's antialiased BILINEAR at int(size * long / short)
    return center_crop(resize_short_side(drop_alpha(img), size, Image.BILINEAR), size)


@register_protocol(
    "ibq",
    "IBQ's ImageNet eval (src/IBQ/data/base.py ImagePaths): albumentations 1.4.4 SmallestMaxSize(size) (OpenCV "
    "INTER_LINEAR, no antialiasing, sides rounded with round()), CenterCrop(size, size) with floor offsets; "
    "needs opencv-python(-headless)",
    geometry=lambda w, h, size: ibq_geometry(w, h, size),
)
def ibq_preprocess(img: Image.Image, size: int) -> Image.Image:
    import numpy as np

    try:
        import cv2
    except ImportError:
        # PIL's bilinear antialiases and rounds differently, so it is not offered as a stand-in
        raise TokbenchError(
            "the 'ibq' protocol is OpenCV's INTER_LINEAR resize, as IBQ's official evaluation; install "
            "opencv-python-headless, or choose protocol 'open-magvit2' (torchvision Resize + CenterCrop)"
        ) from None
    arr = np.asarray(drop_alpha(img))
    h, w = arr.shape[:2]
    scale = size / float(min(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    h, w = arr.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return Image.fromarray(np.ascontiguousarray(arr[top : top + size, left : left + size]))


def ibq_geometry(w: int, h: int, size: int) -> Geometry:
    """Where `ibq_preprocess` puts source pixels (OpenCV's resize maps pixel edges as PIL's does)."""
    factor = size / float(min(h, w))
    nw, nh = (round(w * factor), round(h * factor)) if factor != 1.0 else (w, h)
    return scale(w, h, nw, nh).then(shift(-((nw - size) // 2), -((nh - size) // 2)))
