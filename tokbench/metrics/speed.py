"""Speed and memory: encode/decode throughput, per-batch latency percentiles, peak memory.

The runner times each batch with CUDA events read at the batch's end on GPUs (the device
synchronised before and after each call elsewhere), and runs one warm-up batch untimed, so compilation and cudnn autotuning are excluded. Per-batch latencies are kept (one
float per batch, not per image) for the percentiles. Peak memory is CUDA's max allocated bytes on a
GPU, the process's peak resident set size (VmHWM, reset per job where Linux allows) on the CPU.
"""

from __future__ import annotations

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


@register_metric("speed")
class Throughput(BenchMetric):
    """Images/s and tokens/s for encode and decode, latency p50/p95 per batch, peak memory (MiB)."""

    name = "speed"
    needs_decode = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for s in ("encode_seconds", "decode_seconds", "images", "tokens", "decoded_images"):
            self.add_state(s, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("encode_latency", [], dist_reduce_fx="cat")
        self.add_state("decode_latency", [], dist_reduce_fx="cat")
        self.add_state("peak_mb", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        b = batch.tokens.batch_size
        self.encode_seconds += batch.encode_seconds
        self.images += b
        self.tokens += float(batch.tokens.tokens_per_image.sum())
        self.encode_latency.append(torch.tensor([batch.encode_seconds], dtype=torch.float64))
        if batch.reconstructions is not None:
            self.decode_seconds += batch.decode_seconds
            self.decoded_images += b
            self.decode_latency.append(torch.tensor([batch.decode_seconds], dtype=torch.float64))
        peak = batch.extra.get("peak_memory_mb")
        if peak is not None:
            self.peak_mb = torch.maximum(self.peak_mb, torch.tensor(float(peak), dtype=torch.float64))

    @staticmethod
    def _percentiles(values: list[torch.Tensor] | torch.Tensor) -> tuple[float, float]:
        t = torch.cat(values) if isinstance(values, list) else values
        if t.numel() == 0:
            return float("nan"), float("nan")
        q = torch.quantile(t, torch.tensor([0.5, 0.95], dtype=torch.float64))
        return float(q[0]) * 1000, float(q[1]) * 1000

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        out: dict[str, float] = {}
        if float(self.encode_seconds) > 0:
            out["encode_images_per_s"] = float(self.images) / float(self.encode_seconds)
            out["encode_tokens_per_s"] = float(self.tokens) / float(self.encode_seconds)
            out["encode_p50_ms"], out["encode_p95_ms"] = self._percentiles(self.encode_latency)
        if float(self.decode_seconds) > 0:
            out["decode_images_per_s"] = float(self.decoded_images) / float(self.decode_seconds)
            out["decode_p50_ms"], out["decode_p95_ms"] = self._percentiles(self.decode_latency)
        if float(self.peak_mb) > 0:
            out["peak_memory_mb"] = float(self.peak_mb)
        return out

    def protocol(self):
        return {"speed": "time per batch (CUDA events on GPUs, device-synchronised wall clock elsewhere), "
                          "one warm-up batch excluded"}
