"""The evaluation of one job on one rank: its share of the images, batch by batch, through the
tokenizer and the metrics, with rows and state saved as it goes (`runfolder.JobStore`)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .core import TokbenchError, Tokenizer
from .data import ImageDataset, LoaderCache
from .distributed import Context, metric_states
from .metrics.base import BenchMetric, EvalBatch
from .metrics.speed import peak_memory_mb, reset_peak_memory, synchronize
from .plan import Job
from .runfolder import JobState, JobStore
from .suite import Suite


class JobFailed(TokbenchError):
    """A job cannot give trustworthy numbers (no image evaluated, a metric raised)."""


class Progress:
    """A tqdm bar when asked for, else silence (tests, CI logs)."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _InterruptAtBatchEnd:
    """While a job runs, a first Ctrl-C asks it to stop at the end of the current batch (after saving
    its state); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _InterruptAtBatchEnd:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def evaluate_shard(ctx: Context, suite: Suite, device: torch.device, progress: bool, job: Job, tok: Tokenizer, ds: ImageDataset, store: JobStore, attempt: str,
                    positions: list[int], state: JobState, metrics: dict[str, BenchMetric],
                    metric_skips: dict[str, str], protocol: str, resolution: int,
                    eval_resolution: int | None, loaders: LoaderCache, channels_last: bool = False) -> str | None:
    """This rank's batches of one job: metrics updated, rows and state saved as it goes. Returns
    None when its share is done, else why it failed (its progress up to the last batch is saved).
    The images come from `loaders`, whose workers the run's other jobs on the same images share."""
    rows_path, state_path = store.part_paths(attempt, ctx.rank)
    images_dir = store.folder / "images"
    images_dir.mkdir(exist_ok=True)
    bar = Progress(progress and ctx.is_main, len(positions), store.folder.name[:40])
    reset_peak_memory(device)
    warmed = False
    last_save = time.monotonic()
    start = len(state.done)
    in_batch = False  # between a batch's first metric update and its rows: the states are not saveable
    interrupt = _InterruptAtBatchEnd()

    def save() -> None:
        state.metrics = {n: metric_states(m) for n, m in metrics.items()}
        state.metric_skips = dict(metric_skips)
        store.save(state_path, state)

    try:
        with interrupt, open(rows_path, "a") as rows_file, torch.inference_mode():
            loader = loaders.get(ds, protocol, resolution, suite.batch_size, suite.num_workers,
                                 pin_memory=device.type == "cuda")
            for batch in loader.batches(positions):
                n = len(batch.records)
                if n:
                    images = batch.images.to(device, non_blocking=True)  # from pinned memory on CUDA
                    if channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    if not warmed:  # one untimed pass: lazy init, cudnn autotune, allocator
                        encode_decode(tok, images, job.encode_options, device)
                        warmed = True
                    tokens, recon, t_enc, t_dec = encode_decode(tok, images, job.encode_options, device)
                    originals = images
                    if eval_resolution:
                        originals, recon = resize_for_eval(images, recon, eval_resolution)
                    ev = EvalBatch(
                        originals=originals, tokens=tokens, tokenizer=tok, index=batch.index,
                        reconstructions=recon, encode_seconds=t_enc, decode_seconds=t_dec,
                        labels=torch.tensor([r.label if r.label is not None else -1 for r in batch.records]),
                        captions=[r.caption for r in batch.records] if any(r.caption for r in batch.records)
                        else None,
                        extra={"peak_memory_mb": peak_memory_mb(device), "class_names": ds.class_names,
                               "input_size": tuple(images.shape[-2:]), "text": batch.text},
                    )
                    if all(r.label is None for r in batch.records):
                        ev.labels = None
                    row_values: dict[str, torch.Tensor] = {}
                    in_batch = True
                    for name in list(metrics):
                        try:
                            metrics[name].update(ev)
                        except (TokbenchError, ValueError, RuntimeError) as e:
                            raise JobFailed(f"metric {name} failed on images {batch.index.tolist()}: "
                                            f"{type(e).__name__}: {e}") from e
                        merge_values(row_values, metrics[name].last_rows, name)
                    for j, rec in enumerate(batch.records):
                        row = {"index": int(batch.index[j]), "id": rec.id}
                        row.update({k: _scalar(v[j]) for k, v in row_values.items()})
                        rows_file.write(json.dumps(row) + "\n")
                    rows_file.flush()
                # The batch is fully counted: metrics, rows, skips and positions move together.
                state.skipped += [{"index": p, "path": path, "reason": r} for p, path, r in batch.skipped]
                state.done.update(batch.index.tolist())
                state.done.update(p for p, _, _ in batch.skipped)
                in_batch = False
                bar.update(n + len(batch.skipped))
                if n:
                    save_examples(images_dir, batch.index, images, recon, suite.grid_images)
                if interrupt.requested or time.monotonic() - last_save >= suite.checkpoint_seconds:
                    os.fsync(rows_file.fileno())
                    save()
                    last_save = time.monotonic()
                if interrupt.requested:
                    raise KeyboardInterrupt
            os.fsync(rows_file.fileno())
        save()
    except BaseException as e:
        loaders.close()  # a pass left half-read (or workers that died) is not reused
        if not isinstance(e, (TokbenchError, RuntimeError, ValueError, OSError)):
            raise
        bar.close()
        if len(state.done) > start and not in_batch:  # progress up to the last whole batch is kept
            save()
        if interrupt.requested:  # Ctrl-C also stops the data-loading workers, which surfaces here
            raise KeyboardInterrupt from None
        return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    bar.close()
    return None


def encode_decode(tok: Tokenizer, images: torch.Tensor, options: dict[str, Any], device: torch.device):
    """Tokens, reconstructions (None without a decoder), encode and decode seconds. On CUDA the
    times come from events read once at the end of the batch (no synchronisation between the
    calls, so timing does not serialise the pipeline); elsewhere from the synchronised wall clock."""
    if device.type == "cuda":
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        marks[0].record()
        tokens = tok.encode(images, **options)
        marks[1].record()
        recon = tok.decode(tokens).to(images.device, images.dtype) if tok.spec.supports_decode else None
        marks[2].record()
        marks[2].synchronize()
        return tokens, recon, marks[0].elapsed_time(marks[1]) / 1000, marks[1].elapsed_time(marks[2]) / 1000
    synchronize(device)
    t0 = time.perf_counter()
    tokens = tok.encode(images, **options)
    synchronize(device)
    t1 = time.perf_counter()
    recon = None
    if tok.spec.supports_decode:
        recon = tok.decode(tokens)
        synchronize(device)
        recon = recon.to(images.device, images.dtype)
    t2 = time.perf_counter()
    return tokens, recon, t1 - t0, t2 - t1


def save_examples(folder: Path, index: torch.Tensor, images: torch.Tensor,
                   recon: torch.Tensor | None, first: int) -> None:
    """PNGs of the originals and reconstructions at data-set positions below `first` (for grids)."""
    from PIL import Image

    from .tokenizers.codecs import to_uint8_hwc

    for j, pos in enumerate(index.tolist()):
        if pos >= first:
            continue
        Image.fromarray(to_uint8_hwc(images[j])).save(folder / f"{pos:05d}_original.png")
        if recon is not None:
            Image.fromarray(to_uint8_hwc(recon[j])).save(folder / f"{pos:05d}_recon.png")


def resize_for_eval(originals: torch.Tensor, recon: torch.Tensor | None,
                    size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bicubic resize (torch, no antialias) of inputs and reconstructions before the metrics, as
    LlamaGen's evaluation does for its 384 px tokenizers (`--image-size-eval 256`). Reconstructions
    are clamped to [0, 1] after the resize; originals are not (LlamaGen leaves them unquantised)."""
    def resize(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)

    return resize(originals), (resize(recon).clamp(0, 1) if recon is not None else None)


def merge_values(target: dict[str, Any], new: dict[str, Any], key: str) -> None:
    """Add a metric's named values; a name another metric of the suite already produced (the same
    metric twice with different options) is qualified with this metric's key, never overwritten."""
    for k, v in new.items():
        target[f"{k}{key[key.index('['):]}" if k in target and "[" in key else k] = v


def _scalar(v: torch.Tensor) -> float | int:
    x = v.item() if isinstance(v, torch.Tensor) else v
    if isinstance(x, float) and x != x:  # NaN is not JSON
        return None  # type: ignore[return-value]
    if isinstance(x, float) and x in (float("inf"), float("-inf")):
        return None  # type: ignore[return-value]
    return x
