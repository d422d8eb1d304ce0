"""The streaming-metric contract: sufficient statistics per batch, reducible across ranks.

Every tokbench metric is a `torchmetrics.Metric` whose `update` takes one `EvalBatch`. It accumulates
states declared with `add_state(..., dist_reduce_fx=...)` (sums, counts, moments), never a list of
images, so a run can be split over GPUs and resumed from a saved state. Metrics with per-image values
put them in `last_rows` during `update`; the runner writes them as the per-image rows.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchmetrics

from ..core import TokbenchError, Tokenizer, Tokens


@dataclass
class EvalBatch:
    """One batch as the runner hands it to the metrics.

    `originals` and `reconstructions` are float (B, 3, H, W) in [0, 1] on the same device;
    `reconstructions` is None for tokenizers without a decoder. `index` gives the images' positions
    in the data set. `labels` (B,) class ids and `captions` are set where the data set has them.
    """

    originals: torch.Tensor
    tokens: Tokens
    tokenizer: Tokenizer
    index: torch.Tensor
    reconstructions: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    captions: list[str] | None = None
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class BenchMetric(torchmetrics.Metric):
    """Base class. Subclasses set `name`, declare states, and implement `update` and `compute`.

    `needs_decode` metrics are skipped (with the reason recorded) for tokenizers without a decoder.
    `compute` returns a flat dict of named floats (several numbers per metric are fine: psnr, psnr_std).
    `protocol()` says how the numbers were measured (backbone, weights, data range) for the reports.
    """

    name: str = "metric"
    needs_decode: bool = True
    full_state_update = False
    higher_is_better: bool | None = None
    # Where a data entry has a training split (`split:` / `train:`), only metrics that set this see its
    # training images (the probes); every other metric sees the evaluation images only.
    reads_train_images: bool = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_rows: dict[str, torch.Tensor] = {}

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        raise NotImplementedError

    def protocol(self) -> dict[str, Any]:
        return {}

    def add_moment_states(self) -> None:
        """States of a per-image mean and standard deviation: float64 `total`, `total_sq` and a `count`,
        merged across ranks by summing (the names are those of saved states: keep them)."""
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def add_moments(self, values: torch.Tensor) -> None:
        """Add per-image values (any shape) to the moment states, in float64."""
        v = values.detach().double().flatten().to(self.total.device)
        self.total += v.sum()
        self.total_sq += v.pow(2).sum()
        self.count += v.numel()

    def moments(self, key: str) -> dict[str, float]:
        """{key: mean, key_std: population standard deviation} of the values added, or {key: nan} when none were."""
        n = int(self.count)
        if n == 0:
            return {key: float("nan")}
        mean = float(self.total) / n
        var = max(float(self.total_sq) / n - mean**2, 0.0)  # float64 sums: no cancellation at metric scales
        return {key: mean, f"{key}_std": var**0.5}

    # Result keys that are spreads, counts or interval bounds: they have no better direction.
    UNSCORED_SUFFIXES = ("_std", "_n", "_count", "_low", "_high", "_orig", "_max", "_ms")

    def directions(self, results: dict[str, Any]) -> dict[str, str]:
        """Which way is better for each number `compute` returned: "higher" or "lower" (absent: neither),
        from `higher_is_better`; written into each job's summary, read by every report and comparison."""
        if self.higher_is_better is None:
            return {}
        way = "higher" if self.higher_is_better else "lower"
        return {k: way for k in results if not k.endswith(self.UNSCORED_SUFFIXES)}

    def unavailable_for(self, tokenizer: Tokenizer) -> str | None:
        """Why this metric cannot measure `tokenizer` (recorded as a skip of the metric), or None."""
        return None


MetricFactory = Callable[..., BenchMetric]
_METRICS: dict[str, MetricFactory] = {}
_PACKAGES: dict[str, tuple[str, ...]] = {}
_PROGRAMS: dict[str, Callable[[], str]] = {}
_DISCOVERED = False


def register_metric(
    name: str, packages: tuple[str, ...] = (), programs: dict[str, Callable[[], str]] | None = None
) -> Callable[[MetricFactory], MetricFactory]:
    """Register a metric class or factory under the name that suites use. `packages`: the distributions
    whose version can change its numbers (beyond `environment.CORE_PACKAGES`); `programs`: external
    programs it runs, name -> a function returning their version (the tesseract binary)."""

    def deco(factory: MetricFactory) -> MetricFactory:
        if name in _METRICS and _METRICS[name] is not factory:
            raise TokbenchError(f"metric name {name!r} is registered twice")
        _METRICS[name] = factory
        _PACKAGES[name] = tuple(packages)
        _PROGRAMS.update(programs or {})
        return factory

    return deco


def metric_requirements() -> tuple[tuple[str, ...], dict[str, Callable[[], str]]]:
    """(packages, programs) that the registered metrics declare, for the environment record."""
    _discover()
    return tuple(sorted({p for ps in _PACKAGES.values() for p in ps})), dict(_PROGRAMS)


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    # every module beside this one registers its metrics on import (this package is the plug-in folder)
    for mod in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__package__}.{mod.name}")


def metric_names() -> list[str]:
    _discover()
    return sorted(_METRICS)


def build_metric(name: str, **options: Any) -> BenchMetric:
    """Instantiate a registered metric; options come from the suite (e.g. `lpips: {net: vgg}`).

    An option the constructor does not take (TypeError) or a value it refuses (ValueError, as
    torchmetrics' own keywords are checked) is a `TokbenchError` naming the metric and its options.
    """
    _discover()
    if name not in _METRICS:
        raise TokbenchError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(_METRICS))}")
    try:
        return _METRICS[name](**options)
    except TypeError as e:
        raise TokbenchError(f"bad options for metric {name!r} {options}: {e}") from None
    except ValueError as e:
        if not options:  # no option to blame: a bug, left with its traceback
            raise
        raise TokbenchError(f"bad options for metric {name!r} {options}: {e}") from e
