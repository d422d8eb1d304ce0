"""A tokenizer's token features at a named stage, pooled to one vector per image: what the probes read.

Every family with a learned encoder declares `feature_stages` (a class attribute or property; its first
entry is what `features()` returns by default) and implements `features(images, stage) -> (B, N, D)`
float32, images float [0, 1] (B, 3, H, W) at the tokenizer's input size:

- `pre_quant`: the encoder output the quantiser sees;
- `post_quant`: the quantised vectors the decoder receives (for ids, their codebook rows; for multi-codebook,
  residual, multi-scale or bitwise quantisers, what the official decoder consumes); for a continuous
  tokenizer, its latent (the tokens themselves);
- `semantic`: where a family has a semantic branch or head (TokenFlow's semantic codebook, UniTok's CLIP
  embedding, QLIP / VILA-U / MingTok's text-aligned towers, SigLIP's patch tokens).

Codecs have no stage: a probe on them is a recorded skip. Pooling is the mean over the N tokens (the
ImageFolder / XQ-GAN tokenizer probe pools its latent the same way), in float64 then float32.

The probe metric's default stage (`default_stage`) is `post_quant` where the tokenizer has it (every
discrete tokenizer does), else its first stage (SigLIP: `semantic`). Features are of the whole token
sequence: encode options that keep a prefix of it (`n_tokens`, `n_scales`, `depth`) do not change them.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .core import TokbenchError, Tokenizer

STAGES = ("post_quant", "pre_quant", "semantic")
POOLING = "mean over tokens"


def feature_stages(tokenizer: Tokenizer) -> tuple[str, ...]:
    """The stages `tokenizer.features` offers (empty for codecs and any tokenizer without the method)."""
    if not callable(getattr(tokenizer, "features", None)):
        return ()
    return tuple(getattr(tokenizer, "feature_stages", ()) or ())


def default_stage(tokenizer: Tokenizer) -> str | None:
    """`post_quant` where offered, else the tokenizer's first stage; None without any."""
    stages = feature_stages(tokenizer)
    if not stages:
        return None
    return "post_quant" if "post_quant" in stages else stages[0]


def stage_problem(tokenizer: Tokenizer, stage: str | None) -> str | None:
    """Why `tokenizer` cannot give features at `stage` (None = its default), or None when it can."""
    stages = feature_stages(tokenizer)
    name = tokenizer.spec.name
    if not stages:
        return f"{name} has no learned encoder features (a codec or a tokenizer without features()): nothing to probe"
    if stage is not None and stage not in stages:
        return f"{name} has feature stages {', '.join(stages)}; it has no {stage!r} stage"
    return None


def mean_pool(features: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, D) float32: the mean over tokens, summed in float64."""
    if features.ndim != 3:
        raise TokbenchError(f"token features must be (B, N, D), got shape {tuple(features.shape)}")
    return features.double().mean(dim=1).float()


class _LastBatch:
    """The pooled features of the batch last asked for, so that several probes of one job (knn and
    linear_probe) run the encoder once per batch. Held by a weak reference to the batch object (which
    every metric of a batch receives), so a later batch can never be served an earlier one's features."""

    batch: weakref.ref | None = None
    key: tuple[Any, ...] | None = None
    value: torch.Tensor | None = None


def pooled_features(tokenizer: Tokenizer, images: torch.Tensor, stage: str, batch: object | None = None
                    ) -> torch.Tensor:
    """(B, D) float32 on the CPU: `tokenizer.features(images, stage)` mean-pooled over tokens (reused for
    the same `batch` object, tokenizer and stage)."""
    key = (id(tokenizer), stage)
    if batch is not None and _LastBatch.batch is not None and _LastBatch.batch() is batch and _LastBatch.key == key:
        return _LastBatch.value
    with torch.inference_mode():
        feats = tokenizer.features(images, stage)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 3 or feats.shape[0] != images.shape[0]:
        got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise TokbenchError(f"{tokenizer.spec.name}.features(images, {stage!r}) must return (B, N, D); got {got}")
    pooled = mean_pool(feats).cpu()
    if not torch.isfinite(pooled).all():
        raise TokbenchError(f"{tokenizer.spec.name} gave non-finite {stage} features (try dtype: float32)")
    if batch is not None:
        _LastBatch.batch, _LastBatch.key, _LastBatch.value = weakref.ref(batch), key, pooled
    return pooled


def grid_tokens(x: torch.Tensor) -> torch.Tensor:
    """A (B, D, h, w) feature map -> (B, h*w, D) float32 tokens, row-major (y, x) as the ids are."""
    return x.flatten(2).transpose(1, 2).float().contiguous()


def check_stage(tokenizer: Tokenizer, stage: str) -> None:
    """A clear error for a stage the tokenizer does not offer (for the families' `features`)."""
    stages = tuple(tokenizer.feature_stages)
    if stage not in stages:
        raise TokbenchError(f"{tokenizer.spec.name} has feature stages {', '.join(stages)}; got {stage!r}")


def grid_vq_input(tokenizer: Any, images: torch.Tensor) -> torch.Tensor:
    """The model input `GridVQTokenizer.encode` makes: sides checked against `downsample`, x * 2 - 1, in the
    model's dtype."""
    from .core import check_images

    check_images(images)
    h, w = images.shape[-2:]
    f = tokenizer.downsample
    if h % f or w % f:
        raise TokbenchError(
            f"{tokenizer.spec.name} needs image sides divisible by {f} (its downsample factor), got {h}x{w}; "
            f"preprocess to {tokenizer.spec.resolution}x{tokenizer.spec.resolution}"
        )
    return (images.to(tokenizer.device, torch.float32) * 2 - 1).to(tokenizer.dtype)
