"""The evaluation of one job on one rank: its share of the images, batch by batch, through the
tokenizer and the metrics, with rows and state saved as it goes (`runfolder.JobStore`)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .core import TokbenchError, Tokenizer
from .data import ImageDataset, LoaderCache
from .distributed import Context, metric_states
from .interrupts import interrupt_for
from .metrics.base import BenchMetric, EvalBatch
from .metrics.speed import peak_memory_mb, reset_peak_memory, synchronize
from .plan import Job
from .runfolder import (
    IMAGES_DIR,
    STORAGE_FAILED,
    JobState,
    JobStore,
    atomic_file,
    describe_os_error,
    is_storage_error,
    sample_image,
)


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
    """While a job runs, a first Ctrl-C or SIGTERM asks it to stop at the end of the current batch
    (after saving its state); a second one stops at once. `stop()` is the exception to stop with."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise interrupt_for(signum)
        self.requested, self.signum = True, signum

    def stop(self) -> KeyboardInterrupt:
        return interrupt_for(self.signum)

    def __enter__(self) -> _InterruptAtBatchEnd:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


@dataclass
class Loop:
    """What every job of a run is evaluated under: this rank, its device, batching, the checkpoint
    interval, how many samples to save, and the loaders whose workers the run's jobs share."""

    ctx: Context
    device: torch.device
    progress: bool
    batch_size: int
    num_workers: int | None
    checkpoint_seconds: float
    save_samples: int
    loaders: LoaderCache


@dataclass
class PreparedJob:
    """A job ready to evaluate, fixed by the runner's preparation step before its first batch: the
    tokenizer, the data set, the preprocessing and sizes, the metrics (those already skipped apart)."""

    job: Job
    tokenizer: Tokenizer
    dataset: ImageDataset
    protocol: str
    resolution: int
    eval_resolution: int | None
    channels_last: bool
    metrics: dict[str, BenchMetric]
    metric_skips: dict[str, str]


@dataclass
class Shard:
    """This rank's part of a job: where it writes (`store`, this `attempt`), which data-set positions it
    evaluates, and the state it adds to (rank 0: what earlier attempts counted)."""

    store: JobStore
    attempt: str
    positions: list[int]
    state: JobState


def evaluate_shard(loop: Loop, prep: PreparedJob, shard: Shard) -> str | None:
    """This rank's batches of one job: metrics updated, rows and state saved as it goes. Returns
    None when its share is done, else why it failed (its progress up to the last batch is saved).
    The images come from `loop.loaders`, whose workers the run's other jobs on the same images share."""
    ctx, device, loaders = loop.ctx, loop.device, loop.loaders
    job, tok, ds, metrics, metric_skips = prep.job, prep.tokenizer, prep.dataset, prep.metrics, prep.metric_skips
    store, attempt, positions, state = shard.store, shard.attempt, shard.positions, shard.state
    rows_path, state_path = store.part_paths(attempt, ctx.rank)
    images_dir = store.folder / IMAGES_DIR
    images_dir.mkdir(exist_ok=True)
    bar = Progress(loop.progress and ctx.is_main, len(positions), store.folder.name[:40])
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
            loader = loaders.get(ds, prep.protocol, prep.resolution, loop.batch_size, loop.num_workers,
                                 pin_memory=device.type == "cuda")
            for batch in loader.batches(positions):
                n = len(batch.records)
                if n:
                    images = batch.images.to(device, non_blocking=True)  # from pinned memory on CUDA
                    if prep.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    if not warmed:  # one untimed pass: lazy init, cudnn autotune, allocator
                        encode_decode(tok, images, job.encode_options, device)
                        warmed = True
                    tokens, recon, t_enc, t_dec = encode_decode(tok, images, job.encode_options, device)
                    originals = images
                    if prep.eval_resolution:
                        originals, recon = resize_for_eval(images, recon, prep.eval_resolution)
                    ev = EvalBatch(
                        originals=originals, tokens=tokens, tokenizer=tok, index=batch.index,
                        reconstructions=recon, encode_seconds=t_enc, decode_seconds=t_dec,
                        labels=torch.tensor([r.label if r.label is not None else -1 for r in batch.records]),
                        captions=[r.caption for r in batch.records] if any(r.caption for r in batch.records)
                        else None,
                        extra={"peak_memory_mb": peak_memory_mb(device), "class_names": ds.class_names,
                               "input_size": tuple(images.shape[-2:]), "text": batch.text,
                               "faces": batch.faces,
                               "inputs": images, "dataset_size": len(ds)},
                    )
                    if all(r.label is None for r in batch.records):
                        ev.labels = None
                    split = [r.split for r in batch.records] if any(r.split for r in batch.records) else None
                    if split is not None:
                        ev.extra["split"] = split
                    evaluated = eval_part(ev, split)
                    row_values: dict[str, torch.Tensor] = {}
                    in_batch = True
                    for name in list(metrics):
                        target = ev if metrics[name].reads_train_images else evaluated
                        if target is None:  # a batch of training images only: the metric has nothing to see
                            metrics[name].last_rows = {}
                            continue
                        try:
                            metrics[name].update(target)
                        except (TokbenchError, ValueError, RuntimeError) as e:
                            raise JobFailed(f"metric {name} failed on images {batch.index.tolist()}: "
                                            f"{type(e).__name__}: {e}") from e
                        merge_values(row_values, spread_rows(metrics[name].last_rows, target, ev), name)
                    for j, rec in enumerate(batch.records):
                        row = {"index": int(batch.index[j]), "id": rec.id}
                        if rec.split is not None:  # which image trained the probes: the split can be re-made
                            row.update(split=rec.split, label=rec.label)
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
                    save_examples(images_dir, batch.index, images, recon, loop.save_samples)
                if interrupt.requested or time.monotonic() - last_save >= loop.checkpoint_seconds:
                    os.fsync(rows_file.fileno())
                    save()
                    last_save = time.monotonic()
                if interrupt.requested:
                    raise interrupt.stop()
            os.fsync(rows_file.fileno())
        save()
    except BaseException as e:
        loaders.close()  # a pass left half-read (or workers that died) is not reused
        if not isinstance(e, (TokbenchError, RuntimeError, ValueError, OSError)):
            raise
        bar.close()
        if len(state.done) > start and not in_batch:  # progress up to the last whole batch is kept
            try:
                save()
            except OSError:  # the disk takes nothing more: the last save stands, later rows are redone
                pass
        if interrupt.requested:  # Ctrl-C also stops the data-loading workers, which surfaces here
            raise interrupt.stop() from None
        if is_storage_error(e):  # a full disk fails every job alike: the run stops and resumes once it is fixed
            return STORAGE_FAILED + describe_os_error(e, path=rows_path)  # type: ignore[arg-type]
        return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    bar.close()
    return None


def eval_part(ev: EvalBatch, split: list[str | None] | None) -> EvalBatch | None:
    """The batch without its training-split images, as the metrics other than the probes see it (None
    when every image trains). Encode and decode seconds are scaled to the images kept."""
    if split is None:
        return ev
    keep = [s != "train" for s in split]
    if all(keep):
        return ev
    if not any(keep):
        return None
    rows = [j for j, k in enumerate(keep) if k]

    def take(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x[torch.tensor(rows, device=x.device)]
        return [x[j] for j in rows] if isinstance(x, list) else x

    t = ev.tokens
    tokens = replace(t, ids=take(t.ids), features=take(t.features), lengths=take(t.lengths), bits=take(t.bits))
    share = len(rows) / len(keep)
    extra = {k: take(v) if k in ("text", "split", "inputs", "faces") else v for k, v in ev.extra.items()}
    return replace(ev, originals=take(ev.originals), tokens=tokens, index=take(ev.index),
                   reconstructions=take(ev.reconstructions), labels=take(ev.labels), captions=take(ev.captions),
                   encode_seconds=ev.encode_seconds * share, decode_seconds=ev.decode_seconds * share, extra=extra)


def spread_rows(values: dict[str, Any], part: EvalBatch, whole: EvalBatch) -> dict[str, Any]:
    """A metric's per-image values for `part` of a batch, as lists over the `whole` batch (None elsewhere)."""
    if part is whole or not values:
        return values
    where = {int(p): j for j, p in enumerate(whole.index.tolist())}
    out = {}
    for key, v in values.items():
        full: list[Any] = [None] * len(where)
        for j, p in enumerate(part.index.tolist()):
            full[where[int(p)]] = v[j]
        out[key] = full
    return out


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
        for kind, x in (("original", images[j]), ("recon", None if recon is None else recon[j])):
            if x is not None:
                with atomic_file(sample_image(folder, pos, kind), "wb") as f:  # whole PNGs only
                    Image.fromarray(to_uint8_hwc(x)).save(f, format="PNG")


def resize_for_eval(originals: torch.Tensor, recon: torch.Tensor | None,
                    size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bicubic resize (torch, no antialias) of inputs and reconstructions before the metrics, as
    LlamaGen's evaluation does for its 384 px tokenizers (`--image-size-eval 256`). Reconstructions
    are clamped to [0, 1] after the resize; originals are not (LlamaGen leaves them unquantised)."""
    def resize(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)

    return resize(originals), (resize(recon).clamp(0, 1) if recon is not None else None)


def merge_values(target: dict[str, Any], new: dict[str, Any], key: str, taken: dict[str, Any] | None = None) -> None:
    """Add a metric's named values; a name another metric of the suite already produced (the same
    metric twice with different options; `taken`: the results to look in, default `target`) is
    qualified with this metric's key, never overwritten."""
    taken = target if taken is None else taken
    for k, v in new.items():
        target[f"{k}{key[key.index('['):]}" if k in taken and "[" in key else k] = v


def _scalar(v: torch.Tensor) -> float | int:
    x = v.item() if isinstance(v, torch.Tensor) else v
    if isinstance(x, float) and x != x:  # NaN is not JSON
        return None  # type: ignore[return-value]
    if isinstance(x, float) and x in (float("inf"), float("-inf")):
        return None  # type: ignore[return-value]
    return x
