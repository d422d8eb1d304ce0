"""Performance benchmark: what the harness costs over the models, against the evaluation pipeline
that LlamaGen and TiTok use, how it scales over processes, and how fast each family runs.

    python benchmarks/perf.py                     # CPU-sized defaults (`make perf`), writes results/perf/
    python benchmarks/perf.py --preset gpu        # GPU-sized: more images, batch 32, bf16, all GPUs

1. overhead: `tokbench run` end to end (reconstruction + PSNR + SSIM + bpp + codebook + speed, plus
   LPIPS and rFID when their networks' weights are on the machine) against a bare loop that reads the
   same images with the same loader and only encodes and decodes. Ratio harness / bare; target <= 1.10.
2. png-pipeline: the scheme of LlamaGen's `reconstruction_vq_ddp.py` and TiTok's `sample_imagenet_titok.py`
   (from DiT's `sample_ddp.py`): reconstruct, quantise to uint8 as LlamaGen does (`clamp(255 x + 0.5)`),
   write one PNG per image with PIL, then a second pass that reads the PNGs back beside the originals
   and computes the pixel metrics (bpp and codebook need the tokens, so they are counted in the first
   pass). Upstream also packs the PNGs into one .npz and runs a separate evaluator process; leaving that
   out makes this baseline faster than upstream's, so the ratio is conservative. LlamaGen computes its
   PSNR/SSIM with scikit-image per image during the first pass; here both passes use tokbench's batched
   metrics, so the ratio measures the pipeline, not the metric code. Ratio baseline / harness; target >= 3
   on a GPU.
3. scaling: `torchrun --nproc_per_node=N -m tokbench run` against 1 process, images/s and efficiency,
   over its own, larger image count (`--scaling-images`), so that the processes' start-up cancels out.
4. throughput: encode and decode images/s of each family's released architecture (`weights="random"`
   by default) per resolution, batch size and dtype (`benchmarks/throughput.py` is an alias of this).

Timing. Every pipeline's first batch is its warm-up and is not timed (the runner also runs its own
warm-up batch). The harness is timed from outside through `run_suite`, so its steady-state time is a
difference: a run over all images minus a run over the first batch alone (same model load, set-up
and warm-up). Repetitions alternate the order of the pipelines (ABCD, DCBA, ...) so that load from
other processes falls on all of them alike; tables give the median over repetitions of each
repetition's ratio, with min and max. Speed is measured here and never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

import tokbench
from tokbench.allocator import keep_freed_memory
from tokbench.core import TokbenchError, Tokenizer
from tokbench.data import ImageDataset, iterate_batches, open_dataset, open_image, pil_to_tensor
from tokbench.metrics.base import EvalBatch, build_metric
from tokbench.metrics.pixel import quantise_llamagen
from tokbench.metrics.speed import peak_memory_mb, reset_peak_memory, synchronize
from tokbench.protocols import get_protocol
from tokbench.report import markdown_table
from tokbench.runner import run_suite
from tokbench.suite import load_suite
from tokbench.weights import no_downloads

CODEC_FAMILIES = ("jpeg", "webp", "avif")
HARNESS_METRICS = ("psnr", "ssim", "bpp", "codebook", "speed")
OPTIONAL_METRICS = ("lpips", "rfid")  # in both pipelines when their networks' weights are on the machine
RATE_METRICS = ("bpp", "codebook")  # need only the tokens: the PNG pipeline counts them in its first pass
COMPARED = ("psnr", "psnr_std", "ssim", "bpp", "codebook_usage", "lpips", "rfid")  # summary values both pipelines report
NOT_DISTRIBUTED = "not available: the runner is single-process"
# One released variant per family (two sizes of LlamaGen's VQ: LlamaGen at 256, Janus-Pro at 384).
FAMILY_VARIANTS = ("jpeg-q75", "webp-q75", "avif-q75", "llamagen-vq16-c2i", "janus-pro-1b-vq",
                   "chameleon-vqgan-anole", "emu3-vision-tokenizer", "tokenflow-clipb-32k-enhanced",
                   "one-d-piece-l-256", "titok-l32", "siglip-large-patch16-384", "showo-magvitv2", "emu35-vq",
                   "qlip-b-16-256", "infinity-bsq-d32", "vila-u-7b-256", "mingtok-vision")
# Released sizes that take minutes per call and several GB on a 2-core CPU (Emu3 and Emu3.5 at 512-720 px,
# VILA-U's 1.3B-parameter tower, MingTok's 0.7B at 512 px): measured by the GPU preset only.
GPU_ONLY = ("emu3-vision-tokenizer", "emu35-vq", "vila-u-7b-256", "mingtok-vision")
PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores: few images, the neural tokenizer at 128 px, one timed call per throughput row.
    "cpu": {"cases": ["jpeg-q75:images=96", "llamagen-vq16-c2i:images=20,resolution=128"], "batch_size": 4,
            "reps": 3, "scaling_procs": 2, "scaling_images": 240, "batch_sizes": [1], "dtypes": ["float32"],
            "memory_formats": ["contiguous"],
            "warmup": 1, "iters": 1,
            "tokenizers": [t for t in FAMILY_VARIANTS if t not in GPU_ONLY]},
    # Sized for one 10-minute command on one GPU (benchmarks/gpu_checks.sh); not yet run on a GPU.
    "gpu": {"cases": ["jpeg-q75:images=1000", "llamagen-vq16-c2i:images=1024", "titok-l32:images=1024"],
            "batch_size": 32, "reps": 3, "scaling_procs": max(2, torch.cuda.device_count()),
            "scaling_images": 4000,
            "batch_sizes": [1, 32], "dtypes": ["float32", "bfloat16"], "memory_formats": ["contiguous", "channels_last"],
            "warmup": 3, "iters": 10,
            "tokenizers": list(FAMILY_VARIANTS)},
}


# ----------------------------------------------------------------------------------------------
# Environment


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers were measured: device, CPU, threads, host allocator, load, package versions, git
    revision. Sets the allocator the runner uses (`tokbench.allocator`) first, so that every pipeline of
    this process, the baselines included, runs with it."""
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {"device": str(device), "cpu": platform.processor() or platform.machine(),
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "host_allocator": keep_freed_memory(),
                           "python": platform.python_version(), "tokbench": tokbench.__version__}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    for p in ("torch", "torchvision", "torchmetrics", "pillow", "numpy", "lpips"):
        try:
            env[p] = version(p)
        except PackageNotFoundError:
            env[p] = "not installed"
    if hasattr(os, "getloadavg"):
        env["load_average_1min"] = round(os.getloadavg()[0], 2)
    try:
        git = ["git", "-C", str(Path(__file__).resolve().parent)]
        rev = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        env["git_revision"] = (rev + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        env["git_revision"] = None
    return env


# ----------------------------------------------------------------------------------------------
# The tokenizers the ratio sections run


@dataclass
class Case:
    """One tokenizer of the ratio sections: `NAME[:key=value,...]` with keys images (how many),
    resolution (input side in px), weights (`random`, `released` or a file) and config (a file)."""

    name: str
    images: int = 16
    resolution: int | None = None
    weights: str | None = None
    config: str | None = None

    @classmethod
    def parse(cls, text: str, random_weights: bool) -> Case:
        name, _, rest = text.partition(":")
        fields: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep or key not in ("images", "resolution", "weights", "config"):
                raise TokbenchError(f"bad case option {item!r} in {text!r}; use images=N, resolution=PX, "
                                    "weights=random|released|FILE, config=FILE")
            fields[key] = int(value) if key in ("images", "resolution") else value
        family, _ = tokbench.registry.find(name)
        if family.name in CODEC_FAMILIES:
            fields.pop("weights", None)
        elif fields.get("weights") == "released":
            fields.pop("weights")
        elif "weights" not in fields and random_weights:
            fields["weights"] = "random"
        return cls(name, **fields)

    @property
    def weights_label(self) -> str:
        return "random" if self.weights == "random" else "codec" if self.weights is None and \
            tokbench.registry.find(self.name)[0].name in CODEC_FAMILIES else "released"

    def suite_entry(self) -> dict[str, Any]:
        entry = {"name": self.name, "weights": self.weights, "config": self.config, "resolution": self.resolution}
        return {k: v for k, v in entry.items() if v is not None}

    def load(self, device: torch.device) -> Tokenizer:
        with no_downloads("benchmarks/perf.py uses only weights already on this machine"):
            return tokbench.load_tokenizer(self.name, weights=self.weights, config=self.config, device=device)


def input_protocol(tok: Tokenizer, case: Case, default_side: int) -> tuple[int, str]:
    """Input side and resize/crop protocol, chosen as the runner chooses them for a suite entry."""
    side = case.resolution or tok.spec.resolution or default_side
    try:
        return side, get_protocol(tok.spec.preprocessing).name
    except TokbenchError:
        return side, "resize-crop"  # codecs: no protocol of their own


def prepare_images(folder: Path, n: int) -> Path:
    """`n` photographs (the built-in samples, repeated) as files in `folder`: real decoding work per image."""
    folder.mkdir(parents=True, exist_ok=True)
    records = open_dataset("samples").records
    for i in range(n):
        src = Path(records[i % len(records)].path)
        shutil.copyfile(src, folder / f"{i:05d}{src.suffix.lower()}")
    return folder


# ----------------------------------------------------------------------------------------------
# The three pipelines over the same images


def metric_set(device: torch.device) -> list[str]:
    """The harness's metrics: the fixed ones, plus LPIPS / rFID when their weights are here."""
    names = list(HARNESS_METRICS)
    for name in OPTIONAL_METRICS:
        try:
            with no_downloads("perf: optional metric"):
                build_metric(name)
            names.append(name)
        except (TokbenchError, OSError):
            pass
    return names


def write_suite(path: Path, case: Case, data_dir: Path, images: int, batch_size: int, device: torch.device,
                metrics: list[str], num_workers: int | None = None) -> Path:
    """The harness side as a suite file (also what torchrun runs)."""
    suite = {"name": "perf", "data": [{"source": f"folder:{data_dir}", "limit": images}],
             "tokenizers": [case.suite_entry()], "metrics": list(metrics), "batch_size": batch_size,
             "device": str(device), "dtype": "float32", "seed": 0, "download": False}
    if num_workers is not None:
        suite["num_workers"] = num_workers
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def harness(suite_path: Path, out: Path, images: int) -> tuple[float, dict[str, Any]]:
    """Seconds of `run_suite` over the first `images` images into a fresh folder, and the job summary."""
    suite = load_suite(suite_path)
    for d in suite.data:
        d.limit = images
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summaries = run_suite(suite, out, progress=False, log=lambda _: None)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    (summary,) = summaries
    if summary.get("status") != "ok":
        raise TokbenchError(f"the harness run of {suite_path} failed: {summary.get('reason', '')[:500]}")
    return seconds, summary


def bare_loop(tok: Tokenizer, ds: ImageDataset, protocol: str, side: int, batch_size: int,
              device: torch.device, num_workers: int | None = None) -> tuple[float, int]:
    """Read (the harness's loader), encode, decode; nothing else. Seconds and images after batch 1."""
    t0, timed = None, 0
    with torch.inference_mode():
        for batch in iterate_batches(ds, protocol, side, batch_size, num_workers=num_workers):
            images = batch.images.to(device)
            tokens = tok.encode(images)
            if tok.spec.supports_decode:
                tok.decode(tokens)
            if t0 is None:  # the first batch is the warm-up
                synchronize(device)
                t0 = time.perf_counter()
            else:
                timed += len(batch.records)
        synchronize(device)
    return time.perf_counter() - t0, timed


def quantise_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> the uint8 values LlamaGen's evaluation writes to its PNGs."""
    return (quantise_llamagen(images) * 255).round().to(torch.uint8)


def png_pipeline(tok: Tokenizer, ds: ImageDataset, protocol: str, side: int, batch_size: int,
                 device: torch.device, metrics: list[str], folder: Path,
                 num_workers: int | None = None) -> tuple[float, int, dict[str, float]]:
    """Reconstruct and write PNGs, then read them back and evaluate. Seconds and images after each
    pass's first batch, and the metric values (over all images)."""
    rate = {n: build_metric(n).to(device) for n in metrics if n in RATE_METRICS}
    pixel = {n: build_metric(n).to(device) for n in metrics if n not in RATE_METRICS and n != "speed"}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    elapsed, timed = 0.0, 0
    with torch.inference_mode():
        t0 = None
        for batch in iterate_batches(ds, protocol, side, batch_size, num_workers=num_workers):  # pass 1: reconstruct, write PNGs
            images = batch.images.to(device)
            tokens = tok.encode(images)
            recon = tok.decode(tokens)
            ev = EvalBatch(originals=images, tokens=tokens, tokenizer=tok, index=batch.index,
                           extra={"input_size": tuple(images.shape[-2:])})
            for m in rate.values():
                m.update(ev)
            for pos, pixels in zip(batch.index.tolist(), quantise_uint8(recon).permute(0, 2, 3, 1).cpu().numpy()):
                Image.fromarray(pixels).save(folder / f"{pos:06d}.png")
            if t0 is None:
                t0 = time.perf_counter()
            else:
                timed += len(batch.records)
        elapsed += time.perf_counter() - t0
        t0 = None
        for batch in iterate_batches(ds, protocol, side, batch_size, num_workers=num_workers):  # pass 2: read back, evaluate
            recon = torch.stack([torch.from_numpy(np.array(Image.open(folder / f"{pos:06d}.png").convert("RGB")))
                                 for pos in batch.index.tolist()]).permute(0, 3, 1, 2).float().div(255)
            ev = EvalBatch(originals=batch.images.to(device), reconstructions=recon.to(device), tokens=None,
                           tokenizer=tok, index=batch.index)
            for m in pixel.values():
                m.update(ev)
            if t0 is None:
                synchronize(device)
                t0 = time.perf_counter()
        results: dict[str, float] = {}
        for m in [*rate.values(), *pixel.values()]:
            try:
                results.update(m.compute())
            except (TokbenchError, ValueError, RuntimeError):
                pass  # e.g. rFID of too few images: the harness records it as a metric skip too
        synchronize(device)
        elapsed += time.perf_counter() - t0
    return elapsed, timed, results


@dataclass
class Repetition:
    harness_s: float  # steady state: all images minus the first batch
    bare_s: float
    png_s: float
    images: int
    harness_results: dict[str, float] = field(default_factory=dict)
    png_results: dict[str, float] = field(default_factory=dict)


def compare(case: Case, batch_size: int, reps: int, device: torch.device, default_side: int, work: Path,
            num_workers: int | None = None, log=print) -> tuple[list[Repetition], dict[str, Any]]:
    """Run the harness, the bare loop and the PNG pipeline `reps` times each over the same images,
    alternating their order; returns each repetition's times and the setting they were measured in."""
    if case.images < 2 * batch_size:
        raise TokbenchError(f"{case.name}: images={case.images} leaves nothing to time after the warm-up "
                            f"batch; use at least 2 x batch size ({2 * batch_size})")
    tok = case.load(device)
    if not tok.spec.supports_decode:
        raise TokbenchError(f"{case.name} has no decoder: the ratio sections need reconstructions")
    side, protocol = input_protocol(tok, case, default_side)
    metrics = metric_set(device)
    data_dir = prepare_images(work / "images", case.images)
    ds = open_dataset(f"folder:{data_dir}", case.images)
    suite_path = write_suite(work / "suite.yaml", case, data_dir, case.images, batch_size, device, metrics,
                             num_workers)
    steps = ("harness", "harness-first-batch", "bare", "png")
    out: list[Repetition] = []
    for r in range(reps):
        t: dict[str, Any] = {}
        for step in (steps if r % 2 == 0 else steps[::-1]):
            if step == "harness":
                t[step] = harness(suite_path, work / "run-all", case.images)
            elif step == "harness-first-batch":
                t[step] = harness(suite_path, work / "run-first", batch_size)
            elif step == "bare":
                t[step] = bare_loop(tok, ds, protocol, side, batch_size, device, num_workers)
            else:
                t[step] = png_pipeline(tok, ds, protocol, side, batch_size, device, metrics, work / "png",
                                       num_workers)
        summary = t["harness"][1]
        if (summary.get("resolution"), summary.get("protocol")) != (side, protocol):
            raise TokbenchError(f"{case.name}: the harness ran at {summary.get('resolution')} px / "
                                f"{summary.get('protocol')}, the baselines at {side} px / {protocol}")
        (bare_s, n), (png_s, n_png, png_results) = t["bare"], t["png"]
        assert n == n_png == case.images - batch_size, (n, n_png)
        rep = Repetition(t["harness"][0] - t["harness-first-batch"][0], bare_s, png_s, n,
                         summary.get("results", {}), png_results)
        out.append(rep)
        log(f"  {case.name} rep {r + 1}/{reps}: harness {rep.harness_s:.3f} s, bare {bare_s:.3f} s, "
            f"png pipeline {png_s:.3f} s for {n} images")
    setting = {"tokenizer": case.name, "weights": case.weights_label, "resolution": side, "protocol": protocol,
               "batch": batch_size, "images": case.images, "timed_images": case.images - batch_size,
               "reps": reps, "metrics": " ".join(metrics)}
    return out, setting


def ratio_rows(reps: list[Repetition], setting: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per comparison: medians over repetitions of seconds per image and of the ratio."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"ratio_median": statistics.median(values), "ratio_min": min(values), "ratio_max": max(values)}

    n = reps[0].images
    harness_ms = statistics.median(r.harness_s for r in reps) * 1000 / n
    overhead = {"measure": "overhead", "compared": "harness / bare loop", "target": "<= 1.10",
                **setting, "harness_ms_per_image": harness_ms,
                "baseline_ms_per_image": statistics.median(r.bare_s for r in reps) * 1000 / n,
                **stats([r.harness_s / r.bare_s for r in reps])}
    overhead["meets_target"] = overhead["ratio_median"] <= 1.10
    png = {"measure": "png-pipeline", "compared": "PNG pipeline / harness", "target": ">= 3 (GPU)",
           **setting, "harness_ms_per_image": harness_ms,
           "baseline_ms_per_image": statistics.median(r.png_s for r in reps) * 1000 / n,
           **stats([r.png_s / r.harness_s for r in reps])}
    png["meets_target"] = png["ratio_median"] >= 3
    # The same numbers from both pipelines (last repetition): the baseline is doing the same work.
    for key in COMPARED:
        if key in reps[-1].harness_results or key in reps[-1].png_results:
            png[f"{key}_harness"] = reps[-1].harness_results.get(key)
            png[f"{key}_png"] = reps[-1].png_results.get(key)
    for row in (overhead, png):
        row["status"] = "ok" if all(r.harness_s > 0 for r in reps) else \
            "noise: a steady-state harness time <= 0; use more images"
    return [overhead, png]


# ----------------------------------------------------------------------------------------------
# Scaling over processes


def distributed_runner_reason(package: Path | None = None) -> str | None:
    """None when tokbench's runner sets up torch.distributed (so `torchrun -m tokbench run` splits the
    data); else the reason the scaling row is not measured. Checked on the installed package's source,
    so this script needs no change when the runner gains it."""
    root = package or Path(tokbench.__file__).resolve().parent
    for path in root.rglob("*.py"):
        if "init_process_group" in path.read_text(errors="ignore"):
            return None
    return NOT_DISTRIBUTED


def torchrun_command(nproc: int, suite_path: Path, out: Path, limit: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "tokbench", "run", str(suite_path), "--out", str(out), "--limit", str(limit), "--quiet"]


def scaling_rows(case: Case, nproc: int, batch_size: int, reps: int, device: torch.device, default_side: int,
                 work: Path, log=print, images: int | None = None) -> list[dict[str, Any]]:
    """Images/s of the harness under torchrun with 1 and `nproc` processes over `images` images (the
    case's count by default), steady state: a run over all images minus one over one batch per process;
    and the efficiency ips_N / (N x ips_1)."""
    case = Case(case.name, images or case.images, case.resolution, case.weights, case.config)
    row: dict[str, Any] = {"measure": "scaling", "compared": f"{nproc} processes / 1 process",
                           "target": "efficiency ~ 1", "tokenizer": case.name, "weights": case.weights_label,
                           "batch": batch_size, "images": case.images, "reps": reps,
                           "command": "torchrun " + " ".join(torchrun_command(nproc, Path("SUITE.yaml"),
                                                                              Path("OUT"), case.images)[3:])}
    reason = distributed_runner_reason()
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        reason = (f"not measured: {nproc} processes need {nproc} GPUs (one each), this machine has "
                  f"{torch.cuda.device_count()}")
    if reason is not None:
        return [{**row, "status": reason}]
    data_dir = prepare_images(work / "images", case.images)
    suite_path = write_suite(work / "suite-dist.yaml", case, data_dir, case.images, batch_size, device,
                             metric_set(device))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(tokbench.__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}

    def wall(n: int, limit: int) -> float:
        out = work / f"dist-{n}-{limit}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(torchrun_command(n, suite_path, out, limit), check=True, env=env, capture_output=True)
        seconds = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        return seconds

    ips: dict[int, list[float]] = {1: [], nproc: []}
    try:
        for r in range(reps):
            for n in ((1, nproc) if r % 2 == 0 else (nproc, 1)):
                first = batch_size * n
                ips[n].append((case.images - first) / (wall(n, case.images) - wall(n, first)))
    except subprocess.CalledProcessError as e:
        return [{**row, "status": f"failed: {(e.stderr or b'').decode(errors='replace').strip()[-300:]}"}]
    one, many = statistics.median(ips[1]), statistics.median(ips[nproc])
    log(f"  scaling {case.name}: {one:.2f} images/s with 1 process, {many:.2f} with {nproc}")
    eff = [m / (nproc * o) for o, m in zip(ips[1], ips[nproc])]
    return [{**row, "images_per_s_1": one, f"images_per_s_{nproc}": many, "ratio_median": statistics.median(eff),
             "ratio_min": min(eff), "ratio_max": max(eff), "status": "ok"}]


# ----------------------------------------------------------------------------------------------
# Throughput of each family


def sample_batch(batch: int, size: int) -> torch.Tensor:
    """The built-in sample photographs at `size` (resize-crop), repeated to fill the batch: codecs'
    speed depends on image content, so real photographs rather than noise."""
    records = open_dataset("samples").records
    fn = get_protocol("resize-crop").fn
    return torch.stack([pil_to_tensor(fn(open_image(records[i % len(records)].path), size)) for i in range(batch)])


def _time(fn, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def _p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.95 * len(values)))]


def measure(tok: Tokenizer, batch: int, size: int, device: torch.device, warmup: int, iters: int,
            memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Encode and decode of one batch, `warmup` untimed then `iters` timed calls, device synchronised."""
    images = sample_batch(batch, size).to(device).contiguous(memory_format=memory_format)
    reset_peak_memory(device)
    enc, dec = [], []
    with torch.inference_mode():
        for i in range(warmup + iters):
            t_enc, tokens = _time(lambda: tok.encode(images), device)
            t_dec = _time(lambda t=tokens: tok.decode(t), device)[0] if tok.spec.supports_decode else None
            if i >= warmup:
                enc.append(t_enc)
                if t_dec is not None:
                    dec.append(t_dec)
    n_tokens = float(tokens.tokens_per_image.mean())
    row = {"encode_images_per_s": batch * iters / sum(enc), "encode_tokens_per_s": batch * n_tokens * iters / sum(enc),
           "encode_p50_ms": 1000 * statistics.median(enc), "encode_p95_ms": 1000 * _p95(enc),
           "tokens_per_image": n_tokens, "peak_memory_mb": peak_memory_mb(device)}
    if dec:
        row.update(decode_images_per_s=batch * iters / sum(dec), decode_p50_ms=1000 * statistics.median(dec),
                   decode_p95_ms=1000 * _p95(dec))
    return row


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def throughput_rows(names: list[str], batch_sizes: list[int], dtypes: list[str], resolutions: list[str],
                    device: torch.device, warmup: int, iters: int, random_weights: bool,
                    default_side: int, log=print, memory_formats: tuple[str, ...] = ("contiguous",)
                    ) -> list[dict[str, Any]]:
    """One row per (tokenizer, dtype, memory format, resolution, batch size); a tokenizer that cannot load
    is a `skipped` row, a setting that fails (out of memory, a size the model refuses) a `failed` row.
    A memory format applies to the model and its input batch (codecs have neither: contiguous only);
    comparing the two rows of a family shows whether `channels_last` helps it."""
    rows: list[dict[str, Any]] = []
    for name in names:
        family, _ = tokbench.registry.find(name)
        is_codec = family.name in CODEC_FAMILIES
        for dtype in dtypes[:1] if is_codec else dtypes:  # codecs have no dtype
            opts = {} if is_codec or dtype == "float32" else {"dtype": dtype}
            weights = "random" if random_weights and not is_codec else None
            shown_dtype = "uint8" if is_codec else dtype
            try:
                tok = tokbench.load_tokenizer(name, weights=weights, device=device, **opts)
            except TokbenchError as e:
                reason = f"skipped: {str(e).splitlines()[0]}"
                log(f"{name} ({dtype}): {reason}")
                rows.append({"tokenizer": name, "dtype": shown_dtype, "status": reason})
                continue
            model = getattr(tok, "model", None)
            formats = memory_formats if isinstance(model, torch.nn.Module) else memory_formats[:1]
            for fmt in formats:
                if isinstance(model, torch.nn.Module):
                    model.to(memory_format=MEMORY_FORMATS[fmt])
                for res in resolutions:
                    size = (tok.spec.resolution or default_side) if res == "native" else int(res)
                    for batch in batch_sizes:
                        try:
                            row = {"status": "ok", **measure(tok, batch, size, device, warmup, iters,
                                                             MEMORY_FORMATS[fmt])}
                        except (RuntimeError, TokbenchError, ValueError) as e:
                            row = {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0]}"}
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                        rows.append({"tokenizer": name, "dtype": shown_dtype, "memory_format": fmt, "batch": batch,
                                     "resolution": size, "weights": "random" if weights else "released", **row})
                        log(f"{name} {dtype} {fmt} {size}px b={batch}: " + ", ".join(
                            f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)))
            del tok
    return rows


THROUGHPUT_COLUMNS = ("tokenizer", "dtype", "memory_format", "batch", "resolution", "weights", "tokens_per_image",
                      "encode_images_per_s", "decode_images_per_s", "encode_tokens_per_s", "encode_p50_ms",
                      "encode_p95_ms", "decode_p50_ms", "decode_p95_ms", "peak_memory_mb", "status")
RATIO_COLUMNS = ("measure", "compared", "tokenizer", "weights", "resolution", "batch", "timed_images", "reps",
                 "harness_ms_per_image", "baseline_ms_per_image", "ratio_median", "ratio_min", "ratio_max",
                 "target", "meets_target", "status")


# ----------------------------------------------------------------------------------------------
# Output


def _cell(v: object) -> object:
    """Table text: no exponents; small rates (a CPU's images/s) keep three significant digits."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return ""
    if not isinstance(v, float):
        return v
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def table(df: pd.DataFrame, columns: tuple[str, ...]) -> str:
    cols = [c for c in columns if c in df.columns]
    for c in ("batch", "resolution", "timed_images", "reps"):
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    return markdown_table(df[cols].astype(object).map(_cell)) if len(df) else "_(none)_\n"


def throughput_table(rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, str]:
    df = pd.DataFrame(rows)
    return df, table(df.copy(), THROUGHPUT_COLUMNS)


def plot(ratios: pd.DataFrame, throughput: pd.DataFrame, path: Path) -> None:
    """Left: each ratio (median, min-max bars) beside its target; right: encode/decode images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.6]})
    done = ratios[ratios.get("ratio_median", pd.Series(dtype=float)).notna()] if len(ratios) else ratios
    if len(done):
        labels = [f"{m}\n{t}" for m, t in zip(done["measure"], done["tokenizer"])]
        med = done["ratio_median"].to_numpy(float)
        err = np.vstack([med - done["ratio_min"].to_numpy(float), done["ratio_max"].to_numpy(float) - med])
        ax1.bar(range(len(done)), med, yerr=err, color=["C0" if m == "overhead" else "C1" if m == "png-pipeline"
                                                         else "C2" for m in done["measure"]], capsize=4)
        ax1.set_xticks(range(len(done)), labels, fontsize=7, rotation=20)
        ax1.axhline(1.10, color="C0", ls="--", lw=1, label="overhead target <= 1.10")
        ax1.axhline(3.0, color="C1", ls="--", lw=1, label="PNG pipeline target >= 3 (GPU)")
        ax1.legend(fontsize=8)
    ax1.set_ylabel("ratio (median over repetitions)")
    ax1.set_title("harness against baselines")
    ok = throughput[throughput.get("status", pd.Series(dtype=str)) == "ok"] if len(throughput) else throughput
    if len(ok):
        formats = ok["memory_format"] if "memory_format" in ok else ["contiguous"] * len(ok)
        labels = [f"{t} {d}{' NHWC' if f == 'channels_last' else ''} {r}px b{b}"
                  for t, d, f, r, b in zip(ok["tokenizer"], ok["dtype"], formats, ok["resolution"], ok["batch"])]
        x = np.arange(len(ok))
        ax2.bar(x - 0.2, ok["encode_images_per_s"], 0.4, label="encode")
        if "decode_images_per_s" in ok:
            ax2.bar(x + 0.2, ok["decode_images_per_s"].fillna(0), 0.4, label="decode")
        ax2.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_ylabel("images/s")
    ax2.set_title("throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment_lines(env: dict[str, Any]) -> str:
    where = env.get("gpu") or f"{env['cpu']}, {env['cpu_count']} CPUs"
    return (f"- device: {env['device']} ({where}), torch {env['torch']} ({env['torch_threads']} threads), "
            f"tokbench {env['tokbench']}, git {env.get('git_revision') or 'unknown'}, "
            f"host allocator: {env.get('host_allocator', 'unknown')}\n"
            f"- 1-minute load average when the run started: {env.get('load_average_1min', 'unknown')} "
            "(other processes on the machine; timings are noisy when it exceeds the CPU count)\n")


def write_results(out: Path, ratios: list[dict[str, Any]], throughput: list[dict[str, Any]],
                  env: dict[str, Any], command: str, note: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rdf, tdf = pd.DataFrame(ratios), pd.DataFrame(throughput)
    rdf.to_csv(out / "perf.csv", index=False)
    tdf.to_csv(out / "throughput.csv", index=False)
    (out / "environment.json").write_text(json.dumps({**env, "command": command}, indent=2))
    plot(rdf, tdf, out / "perf.png")
    agreement = [c for c in rdf.columns if c.endswith(("_harness", "_png"))]
    text = (f"# tokbench performance\n\n{note + chr(10) + chr(10) if note else ''}{environment_lines(env)}"
            f"- command: `{command}`\n- written {time.strftime('%Y-%m-%d %H:%M %Z')}; the CSVs hold every "
            "column, `environment.json` the package versions\n\n"
            "Ratios are medians over repetitions (each repetition runs all pipelines on the same images, in "
            "alternating order), with min and max; the first batch of every pipeline is its warm-up and is not "
            "timed. On a CPU quote the ratios, not the absolute times.\n\n"
            "## Harness against baselines\n\n"
            "- **overhead** = harness / bare loop (read + encode + decode only); target <= 1.10.\n"
            "- **png-pipeline** = LlamaGen/TiTok-style pipeline (reconstruct, write PNGs, read them back, "
            "evaluate) / harness; target >= 3 on a GPU.\n"
            "- **scaling** = images/s with N processes / (N x images/s with 1), under torchrun.\n\n"
            + table(rdf.copy(), RATIO_COLUMNS)
            + ("\nThe same numbers from both pipelines (last repetition; the PNG pipeline evaluates uint8 "
               "reconstructions, so pixel metrics may differ by that quantisation):\n\n"
               + table(rdf[rdf["measure"] == "png-pipeline"].copy(), ("tokenizer", *agreement))
               if agreement else "")
            + "\n## Encode / decode throughput\n\n"
            + table(tdf.copy(), THROUGHPUT_COLUMNS)
            + "\n![ratios and throughput](perf.png)\n")
    (out / "perf.md").write_text(text)


# ----------------------------------------------------------------------------------------------
# Command lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="defaults for the options below (cpu: minutes on 2 cores; gpu: bigger runs)")
    p.add_argument("--cases", nargs="+", help="tokenizers of the ratio sections, NAME[:images=N,resolution=PX,"
                   "weights=random|released|FILE,config=FILE]")
    p.add_argument("--batch-size", type=int, help="batch size of the ratio sections")
    p.add_argument("--reps", type=int, help="repetitions of the ratio sections")
    p.add_argument("--scaling-procs", type=int, help="N of the 1-vs-N process scaling row")
    p.add_argument("--scaling-images", type=int, help="images of the scaling row (enough that the work, not the "
                   "processes' start-up, dominates)")
    p.add_argument("--tokenizers", nargs="+", help="tokenizers of the throughput table (default: one released "
                   "variant per family)")
    p.add_argument("--batch-sizes", nargs="+", type=int)
    p.add_argument("--dtypes", nargs="+")
    p.add_argument("--memory-formats", nargs="+", choices=sorted(MEMORY_FORMATS),
                   help="memory formats of the throughput table's neural tokenizers (model and input)")
    p.add_argument("--resolutions", nargs="+", default=["native"], help="`native` or sides in px")
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--resolution", type=int, default=256, help="side for tokenizers without a native one (codecs)")
    p.add_argument("--released-weights", action="store_true",
                   help="time the released weights (must be on the machine) instead of random ones")
    p.add_argument("--skip", nargs="+", default=[], choices=["ratios", "scaling", "throughput"])
    p.add_argument("--num-workers", type=int, help="image-loading workers of all pipelines (default: the runner's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--note", default="", help="a line for the top of perf.md (e.g. what else ran on the machine)")
    p.add_argument("--out", default="results/perf")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = resolve_device(args.device)
    env = environment(device)
    random_weights = not args.released_weights
    ratios: list[dict[str, Any]] = []
    try:
        cases = [Case.parse(c, random_weights) for c in args.cases]
        with tempfile.TemporaryDirectory(prefix="tokbench-perf-") as tmp:
            for i, case in enumerate(cases):
                work = Path(tmp) / f"case{i}"
                if "ratios" not in args.skip:
                    print(f"harness against baselines: {case.name}")
                    reps, setting = compare(case, args.batch_size, args.reps, device, args.resolution, work,
                                            args.num_workers)
                    ratios += ratio_rows(reps, setting)
                if "scaling" not in args.skip and i == 0:
                    ratios += scaling_rows(case, args.scaling_procs, args.batch_size, args.reps, device,
                                           args.resolution, work, images=args.scaling_images)
        throughput = [] if "throughput" in args.skip else throughput_rows(
            args.tokenizers, args.batch_sizes, args.dtypes, args.resolutions, device, args.warmup, args.iters,
            random_weights, args.resolution, memory_formats=tuple(args.memory_formats))
    except TokbenchError as e:
        print(f"benchmarks/perf.py: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_results(out, ratios, throughput, env, shlex.join(["python", "benchmarks/perf.py", *argv]), args.note)
    print(f"\nwrote {', '.join(str(out / f) for f in ('perf.md', 'perf.csv', 'throughput.csv', 'perf.png'))}")
    return 0


def throughput_main(argv: list[str] | None = None) -> int:
    """The command line of benchmarks/throughput.py (kept): the throughput section alone, writing
    throughput.csv and throughput.md to --out."""
    p = argparse.ArgumentParser(description="Encode / decode throughput (section 4 of benchmarks/perf.py)")
    p.add_argument("--tokenizers", nargs="+", default=["jpeg-q75", "webp-q75", "avif-q75"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--resolutions", nargs="+", default=["native"], help="`native` or sides in px")
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--resolution", type=int, default=256, help="for tokenizers without a native one (codecs)")
    p.add_argument("--random-weights", action="store_true", help="random weights at the released size")
    p.add_argument("--out", default="results/throughput")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = throughput_rows(args.tokenizers, args.batch_sizes, args.dtypes, args.resolutions, device, args.warmup,
                           args.iters, args.random_weights, args.resolution)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df, md = throughput_table(rows)
    df.to_csv(out / "throughput.csv", index=False)
    header = (f"# tokbench throughput\n\n{environment_lines(environment(device))}"
              f"- {args.warmup} warm-up + {args.iters} timed iterations per row, sample photographs at each "
              "tokenizer's native resolution, device synchronised around each call\n"
              f"- command: `python benchmarks/throughput.py {' '.join(argv)}`\n\n")
    (out / "throughput.md").write_text(header + md)
    print(f"\nwrote {out / 'throughput.csv'} and {out / 'throughput.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
