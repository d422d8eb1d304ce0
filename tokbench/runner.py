"""Runs a suite and writes a self-describing, resumable run folder.

    RUN_DIR/run.json                  resolved suite, versions, device, git revision, job list
    RUN_DIR/jobs/<job>/job.json       tokenizer spec, options, data set, protocol, metrics
    RUN_DIR/jobs/<job>/rows.jsonl     one row per image (appended per batch)
    RUN_DIR/jobs/<job>/state.pt       metric states + positions counted, while the job is running
    RUN_DIR/jobs/<job>/{rows,state}.<attempt>.rank<r>.*   rank r's share under torchrun, merged by rank 0
    RUN_DIR/jobs/<job>/summary.json   the job's numbers, written when it completes
    RUN_DIR/jobs/<job>/images/        originals and reconstructions of the first images (for grids)

Every write is atomic (temp file + rename) except the row logs, which are cut on resume to the
positions their state accounts for (`runfolder.JobStore`). Re-running the same command skips
completed jobs and resumes the rest, so an interrupted run loses nothing that was recorded. A folder made with another device kind
or package versions (or any folder, with `fresh=True`) is moved aside to a dated sibling, never
deleted (see `runfolder`).

The pieces: `plan` (which jobs, which share a loaded model), `evaluation` (one job's share of the
images on one rank), `runfolder` (atomic files, rows, state, merging ranks, the lock), `distributed`
(torchrun process group, sharding, metric-state reduction); this module runs them in order.

A job's status is `ok` (every requested metric computed, or left out only because its network's
weights or the tokenizer's decoder are missing), `skipped` (the tokenizer's weights are not on this
machine) or `failed` (anything else: no image could be evaluated, the data set is gone, a metric raised,
an error in the tokenizer).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from .allocator import keep_freed_memory
from .core import MetricUnavailable, TokbenchError, Tokenizer, is_options_mismatch
from .data import DataUnavailable, ImageDataset, LoaderCache, open_dataset
from .distributed import Context, load_states, reduce_states, shard
from .evaluation import JobFailed, evaluate_shard, merge_values, resize_for_eval  # noqa: F401
from .metrics.base import BenchMetric, build_metric
from .plan import Job, ModelCache, check_protocols, encode_option_names, plan_jobs
from .registry import family_of, load_tokenizer
from .runfolder import (
    LOCK_FILE,
    LOCK_INFO,
    JobState,
    JobStore,
    environment_changes,
    move_aside,
    read_rows,
    write_json,
    writer_lock,
)
from .suite import Suite, TokenizerEntry
from .weights import WeightsUnavailable, no_downloads

PACKAGES = ("torch", "torchvision", "torchmetrics", "transformers", "timm", "open_clip_torch", "lpips",
            "clean-fid", "pillow", "numpy", "scikit-image")


# ----------------------------------------------------------------------------------------------
# Environment record


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "tokbench": _tokbench_version()}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def _tokbench_version() -> str:
    from . import __version__

    return __version__


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_description(device: torch.device) -> dict[str, Any]:
    d: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                         "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                         "host_allocator": keep_freed_memory()}
    if device.type == "cuda":
        d["gpu"] = torch.cuda.get_device_name(device)
        d["cuda"] = torch.version.cuda
    return d


def _download_policy(allowed: bool):
    """Suites with `download: false` use only weights already on this machine."""
    return nullcontext() if allowed else no_downloads("this suite does not download weights (download: false)")


class Runner:
    def __init__(self, suite: Suite, out_dir: Path, progress: bool = True,
                 log: Callable[[str], None] = print, fresh: bool = False) -> None:
        self.suite, self.out, self.progress, self.log, self.fresh = suite, Path(out_dir), progress, log, fresh
        keep_freed_memory()  # model activations reuse freed heap memory instead of fresh mmaps (allocator.py)
        device = resolve_device(suite.device)
        self.ctx = Context.from_env(device)
        self.device = self.ctx.device(device)
        self._datasets: dict[tuple[str, int | None], ImageDataset | str] = {}
        self._loaders = LoaderCache()  # image-loading workers shared by consecutive jobs on the same images

    # -- run record ------------------------------------------------------------------------
    def _write_run_record(self, jobs: list[Job]) -> None:
        path = self.out / "run.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        now_device, now_versions = device_description(self.device), package_versions()
        changes = environment_changes(old, {"device": now_device, "versions": now_versions}) if old else []
        if old and (changes or self.fresh):
            # Numbers made where they would differ are not resumed into; they are kept, beside this folder.
            dest = move_aside(self.out, old.get("created"), keep=(LOCK_FILE, LOCK_INFO))
            why = "--fresh" if self.fresh else f"it was made with {'; '.join(changes)}"
            self.log(f"{self.out}: moved the previous run to {dest} ({why}); measuring again here")
            (self.out / "jobs").mkdir()
            old = {}
        record = {
            "suite": self.suite.as_dict(),
            "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": now_versions,
            "device": now_device,
            "git_revision": git_revision(),
            "command": old.get("command") or " ".join(os.sys.argv),
            "jobs": [j.id(self.suite) for j in jobs],
        }
        write_json(path, record)

    def dataset(self, source: str, limit: int | None) -> ImageDataset:
        key = (source, limit)
        if key not in self._datasets:
            try:
                self._datasets[key] = open_dataset(source, limit, seed=self.suite.seed)
            except DataUnavailable as e:
                self._datasets[key] = str(e)
        ds = self._datasets[key]
        if isinstance(ds, str):
            raise DataUnavailable(ds)
        return ds

    # -- main loop -------------------------------------------------------------------------
    def run(self, tokenizer_names: list[str] | None = None, data: list[str] | None = None,
            prefetch: list[str] | None = None) -> list[dict[str, Any]]:
        """The jobs, after fetching `prefetch`'s missing weights (`first_run`) where the hub is reachable."""
        check_protocols(self.suite)
        jobs = plan_jobs(self.suite, tokenizer_names, data)
        try:
            if prefetch:
                from .first_run import prefetch_on_each_node

                prefetch_on_each_node(self.ctx, prefetch, self.log)
            if self.ctx.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
            with writer_lock(self.out, self.log):
                return self._run_jobs(jobs)
        finally:
            self._loaders.close()
            self.ctx.close()

    def _run_jobs(self, jobs: list[Job]) -> list[dict[str, Any]]:
        torch.manual_seed(self.suite.seed)
        if self.ctx.is_main:  # only rank 0 writes the folder's own files
            (self.out / "jobs").mkdir(exist_ok=True)
            self._write_run_record(jobs)
        self.ctx.barrier()
        summaries = []
        models = ModelCache(self._load)
        with _download_policy(self.suite.download):
            for i, job in enumerate(jobs, 1):
                job_id = job.id(self.suite)
                job_dir = self.out / "jobs" / job_id
                done = job_dir / "summary.json"
                if done.is_file():
                    summaries.append(json.loads(done.read_text()))
                    if self.ctx.is_main:
                        self.log(f"[{i}/{len(jobs)}] {job_id}: already done")
                    continue
                tok = models.get(job)
                summary = self._run_job(job, job_dir, tok)
                summaries.append(summary)
                if self.ctx.is_main:
                    self.log(f"[{i}/{len(jobs)}] {job_id}: {summary['status']}"
                             + (f" ({short_reason(summary.get('reason', ''))})" if summary["status"] != "ok" else ""))
        return summaries

    def _load(self, entry: TokenizerEntry, load_options: dict[str, Any]) -> Tokenizer | Exception:
        takes_at_encode = encode_option_names(entry.name)
        options = {k: v for k, v in entry.options.items() if k not in takes_at_encode}
        if self.suite.dtype != "float32" and takes_option(entry.name, "dtype"):  # codecs have no dtype
            options.setdefault("dtype", self.suite.dtype)
        try:
            return apply_speed_options(load_tokenizer(entry.name, weights=entry.weights, config=entry.config,
                                                      device=self.device, **options, **load_options),
                                       uses_channels_last(entry.name, self.suite.channels_last), self.suite.compile)
        except TypeError as e:
            if is_options_mismatch(e, {**options, **load_options}):
                return TokbenchError(f"bad options for {entry.name}: {e}")
            # any other TypeError is a bug: the job fails with its traceback, never as "bad options"
            return JobFailed(f"{type(e).__name__} while building {entry.name}: {e}\n{traceback.format_exc(limit=6)}")
        except (TokbenchError, OSError) as e:
            return e

    def _skip(self, job_dir: Path, job: Job, reason: str, status: str = "skipped") -> dict[str, Any]:
        summary = {"job": job_dir.name, "status": status, "reason": reason, "tokenizer": job.entry.name,
                   "label": job.entry.label, "params": job.params, "data": job.data_source}
        # Skips are not written as summary.json: a re-run retries them (weights may have arrived).
        if self.ctx.is_main:
            job_dir.mkdir(parents=True, exist_ok=True)
            write_json(job_dir / "skipped.json", summary)
        return summary

    def _run_job(self, job: Job, job_dir: Path, tok: Tokenizer | Exception) -> dict[str, Any]:
        suite = self.suite
        if isinstance(tok, Exception):
            reason = str(tok)
            if isinstance(tok, WeightsUnavailable):
                return self._skip(job_dir, job, reason)
            return self._skip(job_dir, job, reason if isinstance(tok, JobFailed) else f"{type(tok).__name__}: {reason}",
                              status="failed")
        try:
            ds = self.dataset(job.data_source, job.data_limit)
        except DataUnavailable as e:  # checked before the run; gone since (an unmounted disk)
            return self._skip(job_dir, job, f"data: {e}", status="failed")
        spec = tok.spec
        resolution = job.entry.resolution or spec.resolution or suite.resolution
        # a protocol the suite names was checked before the first job; only a tokenizer's own default
        # may be unregistered (codecs take any size) and falls back to resize-crop
        protocol = job.entry.protocol or suite.protocol or spec.preprocessing
        eval_resolution = job.entry.eval_resolution or suite.eval_resolution
        if eval_resolution == resolution:
            eval_resolution = None
        from .protocols import get_protocol, protocols

        if protocol not in protocols():
            protocol = "resize-crop"

        metrics: dict[str, BenchMetric] = {}
        metric_skips: dict[str, str] = {}
        for metric_name, opts in suite.metrics:
            name = metric_key(metric_name, opts)
            try:
                m = build_metric(metric_name, **opts)
            except (WeightsUnavailable, MetricUnavailable) as e:  # not on this machine: the others still run
                metric_skips[name] = str(e)
                continue
            except (TokbenchError, OSError) as e:
                return self._skip(job_dir, job, f"metric {name}: {type(e).__name__}: {e}", status="failed")
            if m.needs_decode and not spec.supports_decode:
                metric_skips[name] = f"{spec.name} has no decoder; {name} needs reconstructions"
                continue
            m.persistent(True)
            m._to_sync = False  # noqa: SLF001 - rank 0 reduces the ranks' saved states itself (JobStore)
            metrics[name] = m.to(self.device)

        store, ctx = JobStore(job_dir), self.ctx
        if ctx.is_main:
            job_dir.mkdir(parents=True, exist_ok=True)
            (job_dir / "skipped.json").unlink(missing_ok=True)
        record = {
            "job": job_dir.name, "tokenizer": job.entry.name, "label": job.entry.label,
            "params": job.params, "options": job.entry.options, "spec": spec.as_dict(),
            "data": {"source": job.data_source, "name": ds.name, "images": len(ds), "limit": job.data_limit},
            "resolution": resolution, "protocol": protocol, "eval_resolution": eval_resolution,
            "protocol_description": get_protocol(protocol).description, "dtype": spec.dtype,
            "batch_size": suite.batch_size, "world_size": ctx.world,
            "channels_last": uses_channels_last(job.entry.name, suite.channels_last), "compile": suite.compile,
            "metrics": {metric_key(n, o): {"metric": n, "options": o} for n, o in suite.metrics},
            "published": job.entry.published, "published_source": job.entry.published_source,
        }
        attempt = None
        if ctx.is_main:
            write_json(job_dir / "job.json", record)
            # parts of earlier attempts (any world size) merged; rows not accounted for by a state dropped
            prior = store.consolidate(lambda name, states: reduce_states(metrics[name], states) if name in metrics
                                      else states[-1])
            if prior.done:
                self.log(f"  resuming {job_dir.name}: {len(prior.done)} of {len(ds)} images already counted")
            attempt = f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
        attempt = ctx.broadcast(attempt)  # also: no rank reads state.pt before rank 0 has merged it
        prior = JobState.load(store.state) or JobState()
        for name in prior.metric_skips:
            metrics.pop(name, None)
        metric_skips.update(prior.metric_skips)
        mine = shard([p for p in range(len(ds)) if p not in prior.done], ctx.rank, ctx.world)
        # rank 0 carries what earlier attempts counted; other ranks save only their own share
        own = prior if ctx.is_main else JobState(metric_skips=dict(metric_skips))
        if ctx.is_main:
            for name, sd in prior.metrics.items():
                if name in metrics:
                    load_states(metrics[name], sd)
        error = evaluate_shard(ctx, suite, self.device, self.progress, job, tok, ds, store, attempt, mine, own,
                               metrics, metric_skips, protocol, resolution, eval_resolution, self._loaders,
                               channels_last=record["channels_last"])
        errors = [e for e in ctx.gather(error) if e]
        summary = self._finish_job(job, job_dir, store, record, metrics, errors) if ctx.is_main else None
        return ctx.broadcast(summary)

    def _finish_job(self, job: Job, job_dir: Path, store: JobStore, record: dict[str, Any],
                    metrics: dict[str, BenchMetric], errors: list[str]) -> dict[str, Any]:
        """Rank 0, once every rank is through its share: merge the ranks' rows and states, compute."""
        state = store.consolidate(lambda name, states: reduce_states(metrics[name], states) if name in metrics
                                  else states[-1])
        if errors:
            return self._skip(job_dir, job, errors[0], status="failed")
        for name, m in metrics.items():
            m.reset()
            load_states(m, state.metrics.get(name, {}))
        skipped = state.skipped
        evaluated = len(read_rows(store.rows))
        if evaluated == 0:
            first = f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
            return self._skip(job_dir, job, f"no image of {job.data_source} could be evaluated: {len(skipped)} "
                              f"unreadable{first}", status="failed")
        results: dict[str, float] = {}
        metric_protocols: dict[str, Any] = {}
        for name, m in metrics.items():
            try:
                merge_values(results, m.compute(), name)
            except (TokbenchError, ValueError, RuntimeError) as e:
                return self._skip(job_dir, job, f"metric {name} failed to compute: {type(e).__name__}: {e}",
                                  status="failed")
            merge_values(metric_protocols, m.protocol(), name)
        summary = {**record, "status": "ok", "results": results, "metric_protocols": metric_protocols,
                   "metric_skips": state.metric_skips, "images_evaluated": evaluated,
                   "images_skipped": len(skipped), "skipped_files": skipped,
                   "device": device_description(self.device)}
        write_json(job_dir / "summary.json", summary)
        store.state.unlink(missing_ok=True)
        return summary

def uses_channels_last(name: str, setting: bool | str) -> bool:
    """Whether tokenizer `name` runs in channels_last under the suite's `channels_last` (true, false, or
    "auto": the families that declare themselves convolutional)."""
    if setting != "auto":
        return bool(setting)
    family = family_of(name)
    return family is not None and family.convolutional


def apply_speed_options(tok: Tokenizer, channels_last: bool, compile: bool) -> Tokenizer:
    """channels_last and torch.compile on a module-backed tokenizer (codecs have no module: nothing to
    change). Both are recorded with the job's results."""
    model = getattr(tok, "model", None)
    if not isinstance(model, torch.nn.Module):
        return tok
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:  # instance attributes shadow the methods; the module itself stays as loaded
        tok.encode = torch.compile(tok.encode)  # type: ignore[method-assign]
        if tok.spec.supports_decode:
            tok.decode = torch.compile(tok.decode)  # type: ignore[method-assign]
    return tok


def takes_option(name: str, option: str) -> bool:
    """Whether the family of tokenizer `name` declares `option` (an undeclared family, or a name that
    does not resolve, is given it: its loader then says what is wrong)."""
    family = family_of(name)
    return family is None or family.options is None or option in family.options


def short_reason(reason: str) -> str:
    """First line of a skip reason, plus the line that says how to fix it (the fetch command)."""
    lines = [ln.strip() for ln in (reason or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    fix = next((ln for ln in lines[1:] if "tokbench fetch" in ln), None)
    return lines[0] + (f"; {fix}" if fix else "")


def metric_key(name: str, options: dict[str, Any]) -> str:
    """A metric's name in a run, with its options: `psnr`, `psnr[protocol=llamagen]`."""
    if not options:
        return name
    return f"{name}[{','.join(f'{k}={v}' for k, v in sorted(options.items()))}]"


def run_suite(suite: Suite, out_dir: str | Path, tokenizers: list[str] | None = None,
              data: list[str] | None = None, progress: bool = True,
              log: Callable[[str], None] = print, fresh: bool = False,
              prefetch: list[str] | None = None) -> list[dict[str, Any]]:
    return Runner(suite, Path(out_dir), progress=progress, log=log, fresh=fresh).run(tokenizers, data, prefetch)
