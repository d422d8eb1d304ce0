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
