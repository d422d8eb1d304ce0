"""Speed and memory: encode/decode throughput, per-batch latency percentiles, peak memory.

The runner times each batch with CUDA events read at the batch's end on GPUs (the device
synchronised before and after each call elsewhere), and runs one warm-up batch untimed, so
compilation and cudnn autotuning are excluded. Per-batch latencies go into a fixed histogram with
log-spaced bins 1% wide (1 us to 10,000 s), so the state stays the same size however many batches a run
has, ranks and resumed parts merge by adding counts, and the p50/p95 it gives are within 0.5% of the
exact order statistics. Peak memory is CUDA's max allocated bytes on a
GPU, the process's peak resident set size (VmHWM, reset per job where Linux allows) on the CPU.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from .base import BenchMetric, EvalBatch, register_metric


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif sys.platform.startswith("linux"):
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS, Linux >= 4.0
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


LATENCY_MIN_S = 1e-6  # lower edge of the first latency bin; faster batches are counted in it
LATENCY_RATIO = 1.01  # each bin's upper edge over its lower one
LATENCY_BINS = math.ceil(math.log(1e4 / LATENCY_MIN_S) / math.log(LATENCY_RATIO))  # up to 10,000 s


def latency_bin(seconds: float) -> int:
    """The histogram bin of a latency (the first or last bin for values outside the range)."""
    if not seconds > LATENCY_MIN_S:
        return 0
    return min(int(math.log(seconds / LATENCY_MIN_S) / math.log(LATENCY_RATIO)), LATENCY_BINS - 1)


def histogram_percentile(counts: torch.Tensor, q: float) -> float:
    """The q-quantile (q in [0, 1]) of the values a latency histogram counts, in seconds, with numpy's
    default (linear) interpolation between order statistics; each order statistic is taken as the
    geometric centre of its bin. NaN for an empty histogram."""
    cum = counts.double().cumsum(0)
    n = int(cum[-1]) if cum.numel() else 0
    if n == 0:
        return float("nan")
    r = q * (n - 1)
    lo, frac = int(math.floor(r)), r - math.floor(r)

    def value(i: int) -> float:  # the i-th smallest value (0-based)
        k = int(torch.searchsorted(cum, torch.tensor([i + 1.0], dtype=torch.float64)))
        return LATENCY_MIN_S * LATENCY_RATIO ** (k + 0.5)

    low = value(lo)
    return low if frac == 0 else low + frac * (value(min(lo + 1, n - 1)) - low)


@register_metric("speed")
class Throughput(BenchMetric):
    """Images/s and tokens/s for encode and decode, latency p50/p95 per batch, peak memory (MiB)."""

    name = "speed"
    needs_decode = False
    reads_train_images = True  # timings are the tokenizer's on every image it encodes, probes' training ones too

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for s in ("encode_seconds", "decode_seconds", "images", "tokens", "decoded_images"):
            self.add_state(s, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for s in ("encode_latency_hist", "decode_latency_hist"):
            self.add_state(s, torch.zeros(LATENCY_BINS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("peak_mb", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        b = batch.tokens.batch_size
        self.encode_seconds += batch.encode_seconds
        self.images += b
        self.tokens += float(batch.tokens.tokens_per_image.sum())
        self.encode_latency_hist[latency_bin(batch.encode_seconds)] += 1
        if batch.reconstructions is not None:
            self.decode_seconds += batch.decode_seconds
            self.decoded_images += b
            self.decode_latency_hist[latency_bin(batch.decode_seconds)] += 1
        peak = batch.extra.get("peak_memory_mb")
        if peak is not None:
            self.peak_mb = torch.maximum(self.peak_mb, torch.tensor(float(peak), dtype=torch.float64))

    @staticmethod
    def _percentiles(counts: torch.Tensor) -> tuple[float, float]:
        """p50 and p95 in milliseconds."""
        return histogram_percentile(counts, 0.5) * 1000, histogram_percentile(counts, 0.95) * 1000

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        out: dict[str, float] = {}
        if float(self.encode_seconds) > 0:
            out["encode_images_per_s"] = float(self.images) / float(self.encode_seconds)
            out["encode_tokens_per_s"] = float(self.tokens) / float(self.encode_seconds)
            out["encode_p50_ms"], out["encode_p95_ms"] = self._percentiles(self.encode_latency_hist)
        if float(self.decode_seconds) > 0:
            out["decode_images_per_s"] = float(self.decoded_images) / float(self.decode_seconds)
            out["decode_p50_ms"], out["decode_p95_ms"] = self._percentiles(self.decode_latency_hist)
        if float(self.peak_mb) > 0:
            out["peak_memory_mb"] = float(self.peak_mb)
        return out

    def directions(self, results: dict[str, float]) -> dict[str, str]:
        faster = {k: "higher" for k in results if k.endswith("_per_s")}
        return {**faster, **({"peak_memory_mb": "lower"} if "peak_memory_mb" in results else {})}

    def protocol(self):
        return {"speed": "time per batch (CUDA events on GPUs, device-synchronised wall clock elsewhere), "
                          "one warm-up batch excluded; p50/p95 per batch from 1%-wide log bins"}
