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
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Packages whose version can change a measured number (codecs: Pillow; metrics: torchmetrics, lpips,
# clean-fid, scikit-image; models: torch, torchvision, transformers, timm, open_clip; data: numpy).
NUMERIC_PACKAGES = ("tokbench", "torch", "torchvision", "torchmetrics", "transformers", "timm", "open_clip_torch",
                    "lpips", "clean-fid", "pillow", "numpy", "scikit-image")


def numeric_environment(device: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    """What of a run record's device and versions changes numbers: the device kind (cpu, cuda, mps),
    the GPU model and CUDA version, and the versions of `NUMERIC_PACKAGES`."""
    env: dict[str, Any] = {}
    if device.get("device"):
        env["device kind"] = str(device["device"]).split(":")[0]
    for key in ("gpu", "cuda"):
        if device.get(key) is not None:
            env[key] = device[key]
    for p in NUMERIC_PACKAGES:
        if p in versions:
            env[p] = versions[p]
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

    from .core import TokbenchError

    folder = Path(folder).resolve()
    if folder in _HELD or int(os.environ.get("RANK", "0")) != 0:
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
        tmp = info_path.with_name(info_path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                                   "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}))
        os.replace(tmp, info_path)
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
# Atomic files and row logs


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): a reader sees the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    import torch

    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL log; a torn last line (killed mid-write) is dropped."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


# ----------------------------------------------------------------------------------------------
# A job's progress: rows and metric states, per rank, merged independently of the world size


@dataclass
class JobState:
    """What a job has counted: the data-set positions done (evaluated or skipped as unreadable), the
    unreadable files, each metric's state dict, metrics left out (name -> reason), and the names of
    the rank parts already merged into it."""

    done: set[int] = field(default_factory=set)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_skips: dict[str, str] = field(default_factory=dict)
    absorbed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        import torch

        return {"done": torch.tensor(sorted(self.done), dtype=torch.long), "skipped": self.skipped,
                "metrics": self.metrics, "metric_skips": self.metric_skips, "absorbed": self.absorbed}

    @classmethod
    def load(cls, path: Path) -> JobState | None:
        import torch

        if not path.is_file():
            return None
        raw = torch.load(path, map_location="cpu", weights_only=True)
        # state files before distributed runs recorded a prefix of the data set as `position`
        done = set(raw["done"].tolist()) if "done" in raw else set(range(int(raw["position"])))
        return cls(done, list(raw.get("skipped", [])), dict(raw.get("metrics", {})),
                   dict(raw.get("metric_skips", {})), list(raw.get("absorbed", [])))


class JobStore:
    """A job's rows and state on disk.

    Rank 0 appends to `rows.jsonl` and saves `state.pt` (everything counted so far, earlier ranks'
    parts included); rank r > 0 of attempt A writes `rows.A.rank<r>.jsonl` and `state.A.rank<r>.pt`
    (only what it counted in that attempt). Every state lists the positions it accounts for, never a
    rank-dependent offset, so `consolidate` (rank 0, while no other rank writes: at a job's start and
    end) merges any number of parts from any world size: rows are kept only where a state accounts
    for them (rows logged after the last save are recomputed), metric states are reduced with their
    `dist_reduce_fx`, and a part is named in `absorbed` before it is deleted, so it never counts twice.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows, self.state = folder / "rows.jsonl", folder / "state.pt"

    def part_paths(self, attempt: str, rank: int) -> tuple[Path, Path]:
        """(rows, state) files rank `rank` writes in attempt `attempt`."""
        if rank == 0:
            return self.rows, self.state
        return self.folder / f"rows.{attempt}.rank{rank}.jsonl", self.folder / f"state.{attempt}.rank{rank}.pt"

    def save(self, path: Path, state: JobState) -> None:
        import torch

        tmp = path.with_name(path.name + ".tmp")
        torch.save(state.as_dict(), tmp)
        os.replace(tmp, path)

    def consolidate(self, reduce: Callable[[str, list[dict[str, Any]]], dict[str, Any]]) -> JobState:
        """Merge every rank part into `rows.jsonl` (data-set order) and `state.pt`; returns the merged
        state. `reduce(metric_name, state_dicts)` merges one metric's states."""
        state = JobState.load(self.state) or JobState()
        rows = {r["index"]: r for r in read_rows(self.rows) if r["index"] in state.done}
        parts = sorted(self.folder.glob("state.*.rank*.pt"))
        stale = [p for p in parts if p.name in state.absorbed]
        fresh = [p for p in parts if p.name not in state.absorbed]
        for path in fresh:
            part = JobState.load(path)
            assert part is not None
            if part.done & state.done:  # two states counting one image would count it twice
                raise RuntimeError(f"{path} counts positions {sorted(part.done & state.done)[:5]} again")
            rows_path = self.folder / path.name.replace("state.", "rows.", 1).replace(".pt", ".jsonl")
            rows.update({r["index"]: r for r in read_rows(rows_path) if r["index"] in part.done})
            state.done |= part.done
            state.skipped += part.skipped
            state.metric_skips.update(part.metric_skips)
            for name in set(state.metrics) | set(part.metrics):
                state.metrics[name] = reduce(name, [s for s in (state.metrics.get(name), part.metrics.get(name))
                                                    if s is not None])
            state.absorbed.append(path.name)
        state.skipped.sort(key=lambda s: s["index"])
        tmp = self.rows.with_name(self.rows.name + ".tmp")
        tmp.write_text("".join(json.dumps(rows[i]) + "\n" for i in sorted(rows)))
        os.replace(tmp, self.rows)
        if fresh:
            self.save(self.state, state)
        # parts named in state.pt are merged: their files (and rows logged without a state) can go
        for path in stale + fresh + list(self.folder.glob("rows.*.rank*.jsonl")):
            path.unlink(missing_ok=True)
        state.absorbed = []
        return state
