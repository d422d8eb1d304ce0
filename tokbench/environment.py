"""The environment record: which package versions (and external programs) a run's numbers depend on.

One place collects them. The core that every number passes through is listed here; each tokenizer
family (`Family.packages`) and each metric (`register_metric(name, packages=..., programs=...)`)
declares what it adds: diffusers for the diffusers VAEs, opencv for the `ibq` protocol, the OCR engine
for text preservation. A run record holds the versions of all of them, and a run folder whose record
differs in any of them is moved aside instead of resumed into (`runfolder.environment_changes`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from .allocator import keep_freed_memory

# What every number passes through: the harness, tensors, image decoding and resizing, metric states.
CORE_PACKAGES = ("tokbench", "torch", "torchvision", "torchmetrics", "numpy", "pillow")
NOT_INSTALLED = "not installed"


def numeric_packages() -> tuple[str, ...]:
    """Every package whose version can change a number tokbench measures: the core, and what each
    registered family and metric declares."""
    from .metrics.base import metric_requirements
    from .registry import families

    found = set(CORE_PACKAGES)
    for family in families():
        found.update(family.packages)
    packages, _ = metric_requirements()
    found.update(packages)
    return tuple(sorted(found))


def installed_version(package: str) -> str:
    if package == "tokbench":
        from . import __version__

        return __version__
    try:
        return version(package)
    except PackageNotFoundError:
        return NOT_INSTALLED


def package_versions() -> dict[str, str]:
    """`python` and the version of every numeric package and declared program (`not installed` when absent)."""
    from .metrics.base import metric_requirements

    _, programs = metric_requirements()
    out = {"python": platform.python_version()}
    out.update({p: installed_version(p) for p in numeric_packages()})
    for name, probe in sorted(programs.items()):
        try:
            out[name] = probe()
        except Exception:  # noqa: BLE001 - a program that cannot say its version is recorded as such
            out[name] = NOT_INSTALLED
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


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
