"""A run folder as a store of results: which environment made its numbers, and moving a folder aside
instead of deleting it when they cannot be resumed into.

Nothing here deletes results. A folder made where the numbers would differ (another device kind or
GPU, another version of a package that computes them) is moved to a dated sibling
(`results/quick.20261130-113501`) and the run starts afresh; so is any folder under `tokbench run --fresh`.
Thread counts, CPU counts and the Python version change timings only, and do not count.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

# Packages whose version can change a measured number (codecs: Pillow; metrics: torchmetrics, lpips,
# clean-fid, scikit-image; models: torch, torchvision, transformers, timm, open_clip; data: numpy).
NUMERIC_PACKAGES = ("tokbench", "torch", "torchvision", "torchmetrics", "transformers", "timm", "open_clip_torch",
                    "lpips", "clean-fid", "pillow", "numpy", "scikit-image")


def numeric_environment(device: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    """What of a run record's device and versions changes numbers: the device kind (cpu, cuda, mps),
    the GPU model and CUDA version, and the versions of `NUMERIC_PACKAGES`."""
    kind = str(device.get("device", "")).split(":")[0]
    env: dict[str, Any] = {"device kind": kind}
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
