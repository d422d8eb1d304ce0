"""A run folder as a store of results: which environment made its numbers, moving a folder aside
instead of deleting it when they cannot be resumed into, and one writer at a time.

Nothing here deletes results. A folder made where the numbers would differ (another device kind or
GPU, another version of a package that computes them) is moved to a dated sibling
(`results/quick.20261130-113501`) and the run starts afresh; so is any folder under `tokbench run --fresh`.
Thread counts, CPU counts and the Python version change timings only, and do not count.

One writer per folder: `tokbench run` (and `tokbench report` while it writes) holds `RUN_DIR/.lock`
(an OS file lock, released by the kernel when its process dies, so it never goes stale) and records
who holds it in `RUN_DIR/.lock.json` (PID, host, command). A second writer is refused with the
holder's PID and host; a record left by a process that is gone is taken over with a note. Under
torchrun only rank 0 takes the lock (the other ranks write nothing of the folder's own).

Every file is written whole or not at all (`atomic_file`: a temporary file, flushed to the disk, then
renamed into place; removed again when the write fails). A write that fails for want of space or
permission is a `StoreError` naming the path and what to do; a file that cannot be read back (cut or
edited by hand) is a `CorruptFile` naming it. A job's progress records which images it counted by
name, size and modification time, so that a data set that changed between two runs is noticed
(`match_counted`) and no image is ever counted twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .core import TokbenchError

# ---------------------------------------------------------------------------------------------
# The names of a run folder's files: written here only, every module reads them from here.
#   RUN_DIR/run.json                     the run record (suite, versions, device, jobs)
#   RUN_DIR/jobs/<job>/job.json          a job's record (spec, options, data, protocol, metrics)
#   RUN_DIR/jobs/<job>/rows.jsonl        per-image rows; state.pt: resumable metric state
#   RUN_DIR/jobs/<job>/summary.json      a finished job; skipped.json: a skipped or failed one
#   RUN_DIR/jobs/<job>/images/           sample originals and reconstructions (lossless PNG)
#   RUN_DIR/report/                      report.md, index.html, summary.csv/.json/.tex, figures
RUN_RECORD = "run.json"
JOBS_DIR = "jobs"
JOB_RECORD = "job.json"
JOB_SUMMARY = "summary.json"
JOB_SKIPPED = "skipped.json"
ROWS_FILE = "rows.jsonl"
STATE_FILE = "state.pt"
IMAGES_DIR = "images"
REPORT_DIR = "report"
REPORT_MD, REPORT_HTML = "report.md", "index.html"
SUMMARY_CSV, SUMMARY_JSON, SUMMARY_TEX = "summary.csv", "summary.json", "summary.tex"
ROWS_PARQUET = "rows.parquet"
# The report's viewer (tokbench/viewer.py): RUN_DIR/report/viewer/ holds its script and stylesheet, the
# heat maps (viewer/diff/<run>/<job>/<position>.png) and, in a comparison, copies of the runs' samples
# (viewer/samples/<run>/<job>/*.png) so the comparison folder opens without the run folders.
VIEWER_DIR, VIEWER_DIFF_DIR, VIEWER_SAMPLES_DIR = "viewer", "diff", "samples"
VIEWER_SCREENSHOT = "viewer.png"  # report/viewer.png: a screenshot of the viewer (`viewer.screenshot`), committed
# A comparison folder (`tokbench compare RUN_DIR... --out DIR`): index.html (REPORT_HTML), these, figures, viewer/
COMPARISON_MD, COMPARISON_CSV, COMPARISON_TEX = "comparison.md", "comparison.csv", "comparison.tex"
COMPARISON_JSON = "comparison.json"
# A gen-eval output folder (`tokbench gen-eval --out DIR`): results.json, per-image rows.jsonl, per_prompt.json
GEN_RESULTS, GEN_PER_PROMPT = "results.json", "per_prompt.json"  # RUN_DIR/rows.parquet: every job's rows, written with the report


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is (or is becoming) a tokbench run folder: never part of a data set."""
    folder = Path(folder)
    return ((folder / RUN_RECORD).is_file() and (folder / JOBS_DIR).is_dir()) or (folder / LOCK_INFO).is_file()


def job_dir(run_dir: Path, job_id: str) -> Path:
    return Path(run_dir) / JOBS_DIR / job_id


def sample_image(folder: Path, position: int, kind: str) -> Path:
    """A saved sample: `kind` is "original" or "recon"; `position` the image's index in the data set."""
    return Path(folder) / f"{position:05d}_{kind}.png"


def sample_positions(folder: Path) -> list[str]:
    """The stems (`00012`) of the originals saved in a job's images folder, sorted."""
    return sorted(p.name.removesuffix("_original.png") for p in Path(folder).glob("*_original.png"))


# Versions in a run record that change timings only, never a measured number.
TIMING_ONLY = ("python",)


def numeric_environment(device: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    """What of a run record's device and versions changes numbers: the device kind (cpu, cuda, mps),
    the GPU model and CUDA version, and every recorded package and program version (the record holds
    exactly those whose version can change a number: `environment.package_versions`), Python aside."""
    env: dict[str, Any] = {}
    if device.get("device"):
        env["device kind"] = str(device["device"]).split(":")[0]
    for key in ("gpu", "cuda"):
        if device.get(key) is not None:
            env[key] = device[key]
    env.update({p: v for p, v in versions.items() if p not in TIMING_ONLY})
    return env


def environment_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`name old -> new` for each number-changing difference between two run records (empty: same)."""
    a = numeric_environment(old.get("device") or {}, old.get("versions") or {})
    b = numeric_environment(new.get("device") or {}, new.get("versions") or {})
    return [f"{k} {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def move_aside(folder: Path, created: str | None = None, keep: tuple[str, ...] = ()) -> Path:
    """Move the contents of `folder` (except the names in `keep`, e.g. its lock) into a new dated
    sibling `<folder>.<YYYYmmdd-HHMMSS>` (the run's creation time where known) and return it."""
    stamp = _stamp(created)
    dest = folder.with_name(f"{folder.name}.{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = folder.with_name(f"{folder.name}.{stamp}-{n}")
    dest.mkdir(parents=True)
    for child in sorted(folder.iterdir()):
        if child.name not in keep:
            os.replace(child, dest / child.name)
    return dest


def _stamp(created: str | None) -> str:
    if created:
        try:
            return time.strftime("%Y%m%d-%H%M%S", time.strptime(created, "%Y-%m-%dT%H:%M:%S%z"))
        except ValueError:
            pass
    return time.strftime("%Y%m%d-%H%M%S")


LOCK_FILE, LOCK_INFO = ".lock", ".lock.json"
_HELD: dict[Path, int] = {}  # folders this process holds, with their nesting depth (run -> report)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextmanager
def writer_lock(folder: Path, log: Callable[[str], None] = print, what: str = "run") -> Iterator[None]:
    """Hold `folder`'s writer lock for the block (re-entrant within one process). Raises a
    `TokbenchError` naming the holder when another process writes to the folder."""
    from filelock import FileLock, Timeout

    folder = Path(folder).resolve()
    from .distributed import process_rank

    if folder in _HELD or process_rank() != 0:
        _HELD[folder] = _HELD.get(folder, 0) + 1
        try:
            yield
        finally:
            _HELD[folder] -= 1
            if not _HELD[folder]:
                del _HELD[folder]
        return
    info_path = folder / LOCK_INFO
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = _read_info(info_path)
        raise TokbenchError(
            f"{folder} is being written by another tokbench process (PID {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, {holder.get('what', 'run')} since {holder.get('since', '?')}: "
            f"{holder.get('command', '?')}); wait for it to finish, or use another --out folder") from None
    try:
        old = _read_info(info_path)
        if old.get("pid") and old.get("pid") != os.getpid():
            here = old.get("host") == socket.gethostname()
            gone = "is gone" if here and not _alive(int(old["pid"])) else "no longer holds it"
            log(f"{folder}: took over the lock left by PID {old['pid']} on host {old.get('host')} "
                f"({old.get('what', 'run')} since {old.get('since')}; that process {gone})")
        with atomic_file(info_path) as f:
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}))
        _HELD[folder] = 1
        try:
            yield
        finally:
            del _HELD[folder]
            info_path.unlink(missing_ok=True)
    finally:
        lock.release()


def _read_info(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------
# Atomic files, failures to write and to read back


class StoreError(TokbenchError):
    """A file of the run that cannot be written (a full disk, a read-only file system, no permission):
    one line naming the path and what to do. `cut_short`: a run had started (exit 1), else nothing
    could start (exit 2)."""

    def __init__(self, message: str, cut_short: bool = False) -> None:
        super().__init__(message)
        self.cut_short = cut_short


class CorruptFile(TokbenchError):
    """A file of a run folder that cannot be read back (cut short, or edited by hand)."""


FRESH_ADVICE = ("re-run with --fresh to measure again (the folder's previous run is moved to a dated sibling, "
                "nothing is deleted)")
# errors of the storage itself, as opposed to a file's contents: the run stops and resumes once they are fixed
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EEXIST, errno.ENOTDIR,
                  errno.EISDIR, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


# How `evaluation.evaluate_shard` says that it stopped because the run folder cannot be written (a full disk):
# the run stops (every rank with what it could save), it does not go on to fail job after job.
STORAGE_FAILED = "storage: "


def is_storage_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in STORAGE_ERRNOS


def describe_os_error(e: OSError, path: Path | str | None = None) -> str:
    """One line for a failed read or write: the path (`path` where the error names none), what went
    wrong, and what to do."""
    path = e.filename if e.filename is not None else path if path is not None else "(a file of the run folder)"
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    path = str(path).removesuffix(".tmp")
    again = "; then re-run the same command (a run goes on where it stopped)"
    out = "give --out a folder"
    fixes = {
        errno.ENOSPC: f"the disk is full: free some space (or {out} on another disk){again}",
        getattr(errno, "EDQUOT", errno.ENOSPC): f"the disk quota is used up: free some space{again}",
        errno.EFBIG: f"the file is larger than this file system allows: {out} on another disk",
        errno.EROFS: f"the file system is read-only: {out} on a writable disk (for `tokbench report`, copy the "
                     "run folder to one)",
        errno.EACCES: f"no permission: {out} you can write to, or fix the permissions{again}",
        errno.EPERM: f"not permitted: {out} you can write to, or fix the permissions{again}",
        errno.EEXIST: f"a file stands where a folder is needed: {out} (it is made if missing)",
        errno.ENOTDIR: f"a file stands where a folder is needed: {out} (it is made if missing)",
        errno.EISDIR: "a folder stands where a file is needed: move it away",
        errno.ENOENT: "no such file or folder: check the path",
        errno.EIO: f"the disk reported an input/output error: check it{again}",
    }
    what = e.strerror or type(e).__name__
    return f"{path}: {what}; {fixes.get(e.errno, 'fix this' + again)}"


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file whose contents replace `path` at the end of the block, whole: written to `path.tmp`,
    flushed to the disk (fsync), then renamed over `path`. On any error (a full disk, a signal) the
    temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:  # a failed write or fsync: name the file
            e.filename = str(path)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (`atomic_file`): a reader sees the old file or the new, never half."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    with atomic_file(path) as f:
        f.write(text)


def _json_default(o: Any) -> Any:
    import torch

    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def read_json(path: Path, advice: str = FRESH_ADVICE) -> Any:
    """A JSON file of a run folder; one that cannot be parsed is a `CorruptFile` naming it and `advice`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CorruptFile(f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]}): it was cut short or edited; "
                          f"{advice}") from None


def set_aside(path: Path, why: str = "corrupt") -> Path:
    """Rename a file that cannot be used to `<name>.<why>-<stamp>` beside it (kept, never deleted)."""
    path = Path(path)
    dest = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    os.replace(path, dest)
    return dest


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL log; a torn line (killed mid-write) is dropped, and so is any line that is not a row."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("index"), int):
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# A job's progress: rows and metric states, per rank, merged independently of the world size

# An image as a job's progress records it: (id in the data set, file size in bytes, modification time in ns)
Fingerprint = tuple[str, int, int]


@dataclass
class JobState:
    """What a job has counted: the data-set positions done (evaluated or skipped as unreadable), the
    unreadable files, each metric's state dict, metrics left out (name -> reason), the names of the
    rank parts already merged into it, and what the positions refer to: `identity`, the data set's
    (`data.dataset_identity`) when they were counted, and `files`, each counted position's fingerprint.

    `listing` (not saved) is the data set's current fingerprint list: positions counted in this attempt
    take their fingerprint from it when the state is saved."""

    done: set[int] = field(default_factory=set)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_skips: dict[str, str] = field(default_factory=dict)
    absorbed: list[str] = field(default_factory=list)
    identity: str | None = None
    files: dict[int, Fingerprint] = field(default_factory=dict)
    listing: list[Fingerprint] | None = None
    images: int | None = None  # how many images the data set had (`len(listing)` when saved)

    def fingerprint(self, position: int) -> Fingerprint | None:
        if position in self.files:
            return self.files[position]
        if self.listing is not None and 0 <= position < len(self.listing):
            return self.listing[position]
        return None

    def as_dict(self) -> dict[str, Any]:
        import torch

        done = sorted(self.done)
        prints = [self.fingerprint(p) for p in done]
        known = [(p, f) for p, f in zip(done, prints) if f is not None]
        return {"done": torch.tensor(done, dtype=torch.long), "skipped": self.skipped,
                "metrics": self.metrics, "metric_skips": self.metric_skips, "absorbed": self.absorbed,
                "identity": self.identity, "images": len(self.listing) if self.listing is not None else self.images,
                "file_positions": torch.tensor([p for p, _ in known], dtype=torch.long),
                "file_ids": [f[0] for _, f in known],
                "file_stamps": torch.tensor([[f[1], f[2]] for _, f in known], dtype=torch.long).reshape(-1, 2)}

    @classmethod
    def load(cls, path: Path) -> JobState | None:
        """The state saved at `path` (None if there is none); `CorruptFile` where it cannot be read."""
        import torch

        if not path.is_file():
            return None
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            # state files before distributed runs recorded a prefix of the data set as `position`
            done = set(raw["done"].tolist()) if "done" in raw else set(range(int(raw["position"])))
            files = {}
            if "file_ids" in raw:
                stamps = raw["file_stamps"].tolist()
                files = {int(p): (str(i), int(s[0]), int(s[1]))
                         for p, i, s in zip(raw["file_positions"].tolist(), raw["file_ids"], stamps)}
            return cls(done, list(raw.get("skipped", [])), dict(raw.get("metrics", {})),
                       dict(raw.get("metric_skips", {})), list(raw.get("absorbed", [])), raw.get("identity"), files,
                       images=raw.get("images"))
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError,
                IndexError, UnicodeDecodeError) as e:
            raise CorruptFile(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                              ) from None

    def row_positions(self) -> dict[str, int]:
        """id -> position of every counted image whose fingerprint is known (rows are matched by id)."""
        return {f[0]: p for p, f in self.files.items()}


@dataclass
class DataChange:
    """How a data set differs from the one a job's saved progress counted: `moved` maps each counted
    position to the position of the same file (same id, size and modification time) now; `removed` and
    `modified` name counted images that are gone or changed; `before` and `now` are the numbers of images
    (before: None where the saved progress does not say)."""

    moved: dict[int, int]
    removed: list[str]
    modified: list[str]
    before: int | None
    now: int

    @property
    def refused(self) -> bool:
        """Counted images are gone or changed: their numbers are in the sums and cannot be taken out."""
        return bool(self.removed or self.modified)

    def describe(self) -> str:
        parts = []
        if self.before is not None and self.before != self.now:
            change = self.now - self.before
            parts.append(f"{abs(change)} image{'s' * (abs(change) != 1)} {'added' if change > 0 else 'fewer'}")
        for what, ids in (("removed", self.removed), ("modified", self.modified)):
            if ids:
                shown = ", ".join(ids[:3]) + (f", ... ({len(ids)} in all)" if len(ids) > 3 else "")
                parts.append(f"{len(ids)} counted image{'s' * (len(ids) != 1)} {what} ({shown})")
        moved = sum(p != q for p, q in self.moved.items())
        if moved:
            parts.append(f"{moved} counted image{'s' * (moved != 1)} at other positions")
        return "; ".join(parts) or "other files among those not counted yet"


def match_counted(state: JobState, listing: list[Fingerprint]) -> DataChange:
    """Match the images `state` counted (by their fingerprints) to a data set's current `listing`."""
    where: dict[str, int] = {}
    for pos, (name, _, _) in enumerate(listing):
        where.setdefault(name, pos)
    moved, removed, modified = {}, [], []
    for pos in sorted(state.done):
        fp = state.files.get(pos)
        if fp is None:  # counted by a state from before fingerprints were recorded: its position is all we know
            if pos < len(listing):
                moved[pos] = pos
            else:
                removed.append(f"position {pos}")
            continue
        now = where.get(fp[0])
        if now is None:
            removed.append(fp[0])
        elif listing[now][1:] != fp[1:]:
            modified.append(fp[0])
        else:
            moved[pos] = now
    return DataChange(moved, removed, modified, state.images, len(listing))


def moved_state(state: JobState, change: DataChange, listing: list[Fingerprint], identity: str) -> JobState:
    """`state` with its positions moved to where its images are in the current data set (`change`)."""
    skipped = [{**s, "index": change.moved[s["index"]]} for s in state.skipped if s.get("index") in change.moved]
    skipped.sort(key=lambda s: s["index"])
    return JobState({change.moved[p] for p in state.done if p in change.moved}, skipped, state.metrics,
                    state.metric_skips, state.absorbed, identity,
                    {q: listing[q] for q in change.moved.values()}, images=len(listing))


class JobStore:
    """A job's rows and state on disk.

    Rank 0 appends to `rows.jsonl` and saves `state.pt` (everything counted so far, earlier ranks'
    parts included); rank r > 0 of attempt A writes `rows.A.rank<r>.jsonl` and `state.A.rank<r>.pt`
    (only what it counted in that attempt). Every state lists the positions it accounts for, never a
    rank-dependent offset, so `consolidate` (rank 0, while no other rank writes: at a job's start and
    end) merges any number of parts from any world size: rows are kept only where a state accounts
    for them (matched by image id, so rows logged before a data set changed find their new position;
    rows logged after the last save are recomputed), metric states are reduced with their
    `dist_reduce_fx`, and a part is named in `absorbed` before it is deleted, so it never counts twice.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows, self.state = folder / ROWS_FILE, folder / STATE_FILE

    def part_paths(self, attempt: str, rank: int) -> tuple[Path, Path]:
        """(rows, state) files rank `rank` writes in attempt `attempt`."""
        if rank == 0:
            return self.rows, self.state
        rows, state = (Path(n) for n in (ROWS_FILE, STATE_FILE))
        return (self.folder / f"{rows.stem}.{attempt}.rank{rank}{rows.suffix}",
                self.folder / f"{state.stem}.{attempt}.rank{rank}{state.suffix}")

    def progress_files(self) -> list[Path]:
        """Every file of the job's saved progress: state and rows, rank 0's and the parts."""
        state, rows = Path(STATE_FILE), Path(ROWS_FILE)
        return sorted({*self.folder.glob(f"{state.stem}*{state.suffix}"), *self.folder.glob(f"{rows.stem}*{rows.suffix}")})

    def set_aside(self) -> Path:
        """Move the job's saved progress into a dated sub-folder (kept, never deleted): it is counted again."""
        dest = self.folder / f"unreadable-progress.{time.strftime('%Y%m%d-%H%M%S')}"
        dest.mkdir(exist_ok=True)
        for path in self.progress_files():
            os.replace(path, dest / path.name)
        return dest

    def save(self, path: Path, state: JobState) -> None:
        import torch

        with atomic_file(path, "wb") as f:
            torch.save(state.as_dict(), f)

    def consolidate(self, reduce: Callable[[str, list[dict[str, Any]]], dict[str, Any]]) -> JobState:
        """Merge every rank part into `rows.jsonl` (data-set order) and `state.pt`; returns the merged
        state. `reduce(metric_name, state_dicts)` merges one metric's states."""
        state = JobState.load(self.state) or JobState()
        rows = _accounted(read_rows(self.rows), state)
        parts = sorted(self.folder.glob("state.*.rank*.pt"))
        stale = [p for p in parts if p.name in state.absorbed]
        fresh = [p for p in parts if p.name not in state.absorbed]
        for path in fresh:
            part = JobState.load(path)
            assert part is not None
            if part.done & state.done:  # two states counting one image would count it twice
                raise CorruptFile(f"{path} counts positions {sorted(part.done & state.done)[:5]} again; "
                                  f"{FRESH_ADVICE}")
            if state.identity and part.identity and part.identity != state.identity:
                raise CorruptFile(f"{path} counted another version of the data set than {self.state}; {FRESH_ADVICE}")
            rows_path = self.folder / path.name.replace("state.", "rows.", 1).replace(".pt", ".jsonl")
            rows.update(_accounted(read_rows(rows_path), part))
            state.done |= part.done
            state.files.update(part.files)
            state.identity = state.identity or part.identity
            state.images = state.images if state.images is not None else part.images
            state.skipped += part.skipped
            state.metric_skips.update(part.metric_skips)
            for name in set(state.metrics) | set(part.metrics):
                state.metrics[name] = reduce(name, [s for s in (state.metrics.get(name), part.metrics.get(name))
                                                    if s is not None])
            state.absorbed.append(path.name)
        state.skipped.sort(key=lambda s: s["index"])
        with atomic_file(self.rows) as f:
            f.write("".join(json.dumps(rows[i]) + "\n" for i in sorted(rows)))
        if fresh:
            self.save(self.state, state)
        # parts named in state.pt are merged: their files (and rows logged without a state) can go
        for path in stale + fresh + list(self.folder.glob("rows.*.rank*.jsonl")):
            path.unlink(missing_ok=True)
        state.absorbed = []
        return state


def _accounted(rows: list[dict[str, Any]], state: JobState) -> dict[int, dict[str, Any]]:
    """position -> row, for the rows of counted images: matched by image id where the state knows its
    images' ids (the row takes the image's position in the state), else by position."""
    by_id = state.row_positions()
    out = {}
    for r in rows:
        if by_id and "id" in r:
            pos = by_id.get(r["id"])
            if pos is not None:
                out[pos] = {**r, "index": pos}
        elif r["index"] in state.done and (not by_id or r["index"] not in state.files):
            out[r["index"]] = r
    return out


def short_reason(reason: str) -> str:
    """First line of a skip reason, plus the line that says how to fix it (the fetch command)."""
    lines = [ln.strip() for ln in (reason or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    fix = next((ln for ln in lines[1:] if "tokbench fetch" in ln), None)
    return lines[0] + (f"; {fix}" if fix else "")
