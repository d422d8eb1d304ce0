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
an error in the tokenizer, counted images gone from a data set that changed).

A job records the identity of its data set (`data.dataset_identity`: names, sizes and modification
times) with its progress. Resumed on a data set that changed, it matches the images it counted by
name, size and modification time: new images are evaluated, nothing is counted twice; where counted
images are gone or changed the job fails with the command that starts afresh. A run that cannot write
its folder (a full disk, no permission) stops with a `StoreError`, its progress saved as far as the disk
allowed; SIGTERM stops it as Ctrl-C does (`evaluation`). Sample images (for the grids) missing from
a job's folder, say after a kill, are made again on resume.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .allocator import keep_freed_memory
from .core import MetricUnavailable, TokbenchError, Tokenizer, is_options_mismatch
from .data import (
    DataUnavailable,
    ImageDataset,
    LoaderCache,
    dataset_identity,
    file_fingerprints,
    list_identity,
    open_dataset,
    split_counts,
    with_train_split,
)
from .distributed import Context, load_states, reduce_states, shard
from .environment import device_description, git_revision, package_versions, resolve_device
from .evaluation import (  # noqa: F401
    JobFailed,
    Loop,
    PreparedJob,
    Shard,
    encode_decode,
    evaluate_shard,
    merge_values,
    resize_for_eval,
    save_examples,
)
from .metrics.base import BenchMetric, build_metric
from .plan import Job, ModelCache, encode_option_names, plan_jobs
from .registry import family_of, find, load_tokenizer
from .runfolder import (
    IMAGES_DIR,
    JOB_RECORD,
    JOB_SKIPPED,
    JOB_SUMMARY,
    JOBS_DIR,
    LOCK_FILE,
    LOCK_INFO,
    RUN_RECORD,
    STORAGE_FAILED,
    CorruptFile,
    Fingerprint,
    JobState,
    JobStore,
    StoreError,
    describe_os_error,
    environment_changes,
    match_counted,
    move_aside,
    moved_state,
    read_json,
    read_rows,
    sample_image,
    set_aside,
    short_reason,
    write_json,
    writer_lock,
)
from .runfolder import job_dir as job_folder
from .suite import Suite, TokenizerEntry
from .suite_check import check_built_suite
from .weights import WeightsUnavailable, no_downloads


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
        self._identities: dict[int, tuple[list[Fingerprint], str]] = {}  # id(ds) -> (fingerprints, identity)
        self._started = False  # a job has begun: a failure to write now cuts a run short
        self._loaders = LoaderCache()  # image-loading workers shared by consecutive jobs on the same images

    # -- run record ------------------------------------------------------------------------
    def _write_run_record(self, jobs: list[Job]) -> None:
        path = self.out / RUN_RECORD
        try:
            old = read_json(path) if path.is_file() else {}
        except CorruptFile:
            if not self.fresh:  # what made the folder's numbers is unknown: they cannot be resumed into
                raise
            old = {"unreadable": True}
        now_device, now_versions = device_description(self.device), package_versions()
        changes = environment_changes(old, {"device": now_device, "versions": now_versions}) if old else []
        if old and (changes or self.fresh):
            # Numbers made where they would differ are not resumed into; they are kept, beside this folder.
            dest = move_aside(self.out, old.get("created"), keep=(LOCK_FILE, LOCK_INFO))
            why = "--fresh" if self.fresh else f"it was made with {'; '.join(changes)}"
            self.log(f"{self.out}: moved the previous run to {dest} ({why}); measuring again here")
            (self.out / JOBS_DIR).mkdir()
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

    def dataset(self, source: str, limit: int | None, split: dict[str, Any] | None = None) -> ImageDataset:
        key = (source, limit, json.dumps(split, sort_keys=True) if split else None)
        if key not in self._datasets:
            try:
                ds = open_dataset(source, limit, seed=self.suite.seed)
                if split:
                    ds = replace(with_train_split(ds, **split), unlisted=ds.unlisted, sidecar_skips=ds.sidecar_skips)
                self._datasets[key] = ds
            except DataUnavailable as e:
                self._datasets[key] = str(e)
        ds = self._datasets[key]
        if isinstance(ds, str):
            raise DataUnavailable(ds)
        return ds

    def identity(self, ds: ImageDataset) -> tuple[list[Fingerprint], str]:
        """The data set's fingerprints (id, size, mtime per image) and identity, looked up once per run."""
        if id(ds) not in self._identities:
            prints = file_fingerprints(ds)
            self._identities[id(ds)] = (prints, dataset_identity(ds, prints))
        return self._identities[id(ds)]

    # -- main loop -------------------------------------------------------------------------
    def run(self, tokenizer_names: list[str] | None = None, data: list[str] | None = None,
            prefetch: list[str] | None = None) -> list[dict[str, Any]]:
        """The jobs, after fetching `prefetch`'s missing weights (`first_run`) where the hub is reachable."""
        check_built_suite(self.suite)  # a suite built in Python meets the same registry pass as a parsed one
        jobs = plan_jobs(self.suite, tokenizer_names, data)
        try:
            if prefetch:
                from .first_run import prefetch_on_each_node

                prefetch_on_each_node(self.ctx, prefetch, self.log)
            if self.ctx.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
            with writer_lock(self.out, self.log):
                return self._run_jobs(jobs)
        except OSError as e:  # the run folder cannot be written: one line, and whether anything was measured
            raise StoreError(describe_os_error(e), cut_short=self._started) from None
        finally:
            self._loaders.close()
            self.ctx.close()

    def _run_jobs(self, jobs: list[Job]) -> list[dict[str, Any]]:
        torch.manual_seed(self.suite.seed)
        if self.ctx.is_main:  # only rank 0 writes the folder's own files
            (self.out / JOBS_DIR).mkdir(exist_ok=True)
            self._write_run_record(jobs)
        self.ctx.barrier()
        summaries = []
        models = ModelCache(self._load)
        with _download_policy(self.suite.download):
            for i, job in enumerate(jobs, 1):
                job_id = job.id(self.suite)
                job_dir = job_folder(self.out, job_id)
                done = job_dir / JOB_SUMMARY
                if done.is_file() and (summary := self._completed(done, job)) is not None:
                    summaries.append(summary)
                    if self.ctx.is_main:
                        self.log(f"[{i}/{len(jobs)}] {job_id}: already done{self._changed_since(job, summary)}")
                    continue
                self._started = True
                tok = models.get(job)
                summary = self._run_job(job, job_dir, tok)
                summaries.append(summary)
                if self.ctx.is_main:
                    self.log(f"[{i}/{len(jobs)}] {job_id}: {summary['status']}"
                             + (f" ({short_reason(summary.get('reason', ''))})" if summary["status"] != "ok" else ""))
        return summaries

    def _completed(self, path: Path, job: Job) -> dict[str, Any] | None:
        """A finished job's summary; None where it cannot be read (the job is counted again, the file kept)."""
        try:
            return read_json(path)
        except CorruptFile as e:
            self.ctx.barrier()  # every rank has read it before rank 0 moves it
            if self.ctx.is_main:
                kept = set_aside(path)
                self.log(f"  {e}; kept as {kept.name}; counting the job again")
            return None

    def _changed_since(self, job: Job, summary: dict[str, Any]) -> str:
        """A note where a finished job's data set has changed since it was measured."""
        then = (summary.get("data") or {}).get("identity")
        try:
            now = self.identity(self.dataset(job.data_source, job.data_limit, job.data_split))[1]
        except DataUnavailable:
            return ""
        if then is None or then == now:
            return ""
        return (f" (on {job.data_source} as it was: the data set has changed since, and its numbers are of the "
                "earlier images; re-run the same command with --fresh to measure it as it is now)")

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
            write_json(job_dir / JOB_SKIPPED, summary)
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
            ds = self.dataset(job.data_source, job.data_limit, job.data_split)
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
            if (why := m.unavailable_for(tok)) is not None:  # e.g. a probe on a codec: no features
                metric_skips[name] = why
                continue
            m.persistent(True)
            m._to_sync = False  # noqa: SLF001 - rank 0 reduces the ranks' saved states itself (JobStore)
            metrics[name] = m.to(self.device)

        store, ctx = JobStore(job_dir), self.ctx
        listing, identity = self.identity(ds)
        if ctx.is_main:
            job_dir.mkdir(parents=True, exist_ok=True)
            (job_dir / JOB_SKIPPED).unlink(missing_ok=True)
        record = {
            "job": job_dir.name, "tokenizer": job.entry.name, "label": job.entry.label,
            "params": job.params, "options": job.entry.options, "spec": spec.as_dict(),
            "data": {"source": job.data_source, "name": ds.name, "images": len(ds), "limit": job.data_limit,
                     "identity": identity,
                     "list_identity": list_identity(listing),  # names and sizes only: compare across machines
                     **({"split": job.data_split, "split_counts": split_counts(ds)} if job.data_split else {})},
            "resolution": resolution, "protocol": protocol, "eval_resolution": eval_resolution,
            "protocol_description": get_protocol(protocol).description, "dtype": spec.dtype,
            "batch_size": suite.batch_size, "world_size": ctx.world,
            "channels_last": uses_channels_last(job.entry.name, suite.channels_last), "compile": suite.compile,
            "metrics": {metric_key(n, o): {"metric": n, "options": o} for n, o in suite.metrics},
            **published_numbers(job.entry),
        }

        def reduce(name: str, states: list[dict[str, Any]]) -> dict[str, Any]:
            return reduce_states(metrics[name], states) if name in metrics else states[-1]

        attempt, refusal = None, None
        if ctx.is_main:
            write_json(job_dir / JOB_RECORD, record)
            # parts of earlier attempts (any world size) merged; rows not accounted for by a state dropped
            prior, refusal = self._follow_data_change(job, store, self._prior_state(store, reduce), listing,
                                                      identity, reduce)
            if prior.done and refusal is None:
                self.log(f"  resuming {job_dir.name}: {len(prior.done)} of {len(ds)} images already counted")
            if left_out := len(ds.unlisted) + len(ds.sidecar_skips):
                self.log(f"  {job.data_source}: {left_out} file{'s' * (left_out != 1)} left out (unreadable "
                         f"entries, captions or annotations; listed in {JOB_SUMMARY})")
            attempt = f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
        # also: no rank reads state.pt before rank 0 has merged it
        attempt, refusal = ctx.broadcast((attempt, refusal))
        if refusal is not None:
            return self._skip(job_dir, job, refusal, status="failed")
        prior = JobState.load(store.state) or JobState()
        prior.identity, prior.listing = identity, listing
        for name in prior.metric_skips:
            metrics.pop(name, None)
        metric_skips.update(prior.metric_skips)
        mine = shard([p for p in range(len(ds)) if p not in prior.done], ctx.rank, ctx.world)
        # rank 0 carries what earlier attempts counted; other ranks save only their own share
        own = prior if ctx.is_main else JobState(metric_skips=dict(metric_skips), identity=identity, listing=listing)
        if ctx.is_main:
            for name, sd in prior.metrics.items():
                if name in metrics:
                    load_states(metrics[name], sd)
            self._remake_samples(job, tok, ds, store, prior, protocol, resolution, eval_resolution,
                                 record["channels_last"])
        loop = Loop(ctx, self.device, self.progress, suite.batch_size, suite.num_workers, suite.checkpoint_seconds,
                    suite.save_samples, self._loaders)
        prepared = PreparedJob(job, tok, ds, protocol, resolution, eval_resolution, record["channels_last"], metrics,
                               metric_skips)
        error = evaluate_shard(loop, prepared, Shard(store, attempt, mine, own))
        errors = [e for e in ctx.gather(error) if e]
        if stopped := next((e for e in errors if e.startswith(STORAGE_FAILED)), None):
            # every rank saved what it could; the run stops here and resumes once the disk takes writes again
            raise StoreError(stopped.removeprefix(STORAGE_FAILED), cut_short=True)
        summary = self._finish_job(job, job_dir, store, record, metrics, errors, ds) if ctx.is_main else None
        return ctx.broadcast(summary)

    def _prior_state(self, store: JobStore, reduce: Callable) -> JobState:
        """The job's saved progress, its rank parts merged in. Progress that cannot be read is moved aside
        (kept) and the job counted again: nothing it holds can be trusted to be counted once."""
        try:
            return store.consolidate(reduce)
        except CorruptFile as e:
            kept = store.set_aside()
            self.log(f"  {e}; moved this job's saved progress to {kept} and counting its images again")
            return store.consolidate(reduce)

    def _follow_data_change(self, job: Job, store: JobStore, prior: JobState, listing: list[Fingerprint],
                            identity: str, reduce: Callable) -> tuple[JobState, str | None]:
        """`prior` moved to the current data set where it changed since it was counted (images added,
        or the same files at other positions): (state, None). (prior, why) where counted images are gone
        or were changed: their numbers are in the sums and cannot be taken out, so the job cannot go on."""
        if not prior.done or prior.identity in (None, identity):
            return prior, None
        change = match_counted(prior, listing)
        if change.refused:
            return prior, (f"the data set {job.data_source} changed since this job's images were counted: "
                           f"{change.describe()}. The numbers counted so far cannot be taken apart, so this job "
                           f"cannot go on: re-run the same command with --fresh to measure everything again (the "
                           f"previous run is moved to a dated sibling, nothing is deleted), or restore the images")
        moved = moved_state(prior, change, listing, identity)
        for png in (store.folder / IMAGES_DIR).glob("*.png"):  # samples of positions that now hold another image
            stem = png.name.split("_", 1)[0]
            if stem.isdigit():
                pos, was = int(stem), prior.files.get(int(stem))
                if was is None or pos >= len(listing) or listing[pos][0] != was[0]:
                    png.unlink()  # made again from the image now at that position (`_remake_samples`)
        store.save(store.state, moved)
        self.log(f"  {store.folder.name}: the data set {job.data_source} changed since this job started "
                 f"({change.describe()}); the {len(moved.done)} images already counted are kept (matched by "
                 "name, size and modification time), the others are evaluated")
        return store.consolidate(reduce), None

    def _remake_samples(self, job: Job, tok: Tokenizer, ds: ImageDataset, store: JobStore, prior: JobState,
                        protocol: str, resolution: int, eval_resolution: int | None, channels_last: bool) -> None:
        """Sample images (the report's grids) of counted images whose PNGs are missing or unreadable (a
        run stopped between a batch's rows and its PNGs, a data set that changed): made again."""
        folder = store.folder / IMAGES_DIR
        skipped = {s["index"] for s in prior.skipped}
        kinds = ("original", "recon") if tok.spec.supports_decode else ("original",)
        wanted = [p for p in sorted(prior.done) if p < self.suite.save_samples and p not in skipped
                  and not all(_readable_png(sample_image(folder, p, k)) for k in kinds)]
        if not wanted:
            return
        folder.mkdir(exist_ok=True)
        loader = self._loaders.get(ds, protocol, resolution, self.suite.batch_size, self.suite.num_workers,
                                   pin_memory=self.device.type == "cuda")
        with torch.inference_mode():
            for batch in loader.batches(wanted):
                if not len(batch.records):
                    continue
                images = batch.images.to(self.device)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                _, recon, _, _ = encode_decode(tok, images, job.encode_options, self.device)
                if eval_resolution:  # as the pass saves them: reconstructions at the evaluation size
                    _, recon = resize_for_eval(images, recon, eval_resolution)
                save_examples(folder, batch.index, images, recon, self.suite.save_samples)

    def _finish_job(self, job: Job, job_dir: Path, store: JobStore, record: dict[str, Any],
                    metrics: dict[str, BenchMetric], errors: list[str], ds: ImageDataset) -> dict[str, Any]:
        """Rank 0, once every rank is through its share: merge the ranks' rows and states, compute."""
        state = store.consolidate(lambda name, states: reduce_states(metrics[name], states) if name in metrics
                                  else states[-1])
        if errors:
            return self._skip(job_dir, job, errors[0], status="failed")
        for name, m in metrics.items():
            m.reset()
            load_states(m, state.metrics.get(name, {}))
        # entries of the folder that could not be listed as images count with the unreadable ones
        skipped = state.skipped + [{"index": None, **u} for u in ds.unlisted]
        evaluated = len(read_rows(store.rows))
        if evaluated == 0:
            first = f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
            return self._skip(job_dir, job, f"no image of {job.data_source} could be evaluated: {len(skipped)} "
                              f"unreadable{first}", status="failed")
        results: dict[str, float] = {}
        metric_protocols: dict[str, Any] = {}
        directions: dict[str, str] = {}
        for name, m in metrics.items():
            try:
                values = m.compute()
            except (TokbenchError, ValueError, RuntimeError) as e:
                return self._skip(job_dir, job, f"metric {name} failed to compute: {type(e).__name__}: {e}",
                                  status="failed")
            merge_values(directions, {k: v for k, v in m.directions(values).items()}, name, taken=results)
            merge_values(results, values, name)
            merge_values(metric_protocols, m.protocol(), name)
        summary = {**record, "status": "ok", "results": results, "directions": directions,
                   "metric_protocols": metric_protocols,
                   "metric_skips": state.metric_skips, "images_evaluated": evaluated,
                   "images_skipped": len(skipped), "skipped_files": skipped,
                   "sidecars_skipped": len(ds.sidecar_skips), "skipped_sidecars": ds.sidecar_skips,
                   "device": device_description(self.device),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # when these numbers were made (compare)
        write_json(job_dir / JOB_SUMMARY, summary)
        store.state.unlink(missing_ok=True)
        return summary

def _readable_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - missing, cut short, not a PNG: made again
        return False


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


def published_numbers(entry: TokenizerEntry) -> dict[str, Any]:
    """The numbers to print beside the measured ones: the suite entry's, else its variant's row (the one
    copy of each published number, with its source)."""
    if entry.published:
        return {"published": dict(entry.published), "published_source": entry.published_source}
    family = family_of(entry.name)
    _, variant = find(entry.name) if family is not None else (None, None)
    if variant is None or not variant.published:
        return {"published": {}, "published_source": ""}
    return {"published": dict(variant.published), "published_source": variant.published_source}


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
