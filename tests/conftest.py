"""Shared test set-up: no test may touch the network or the user's caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """Every test runs offline, with empty Hugging Face / torch hub caches and no TOKBENCH_WEIGHTS."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.delenv("TOKBENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """A test module that sets `TORCH_THREADS = n` runs with n torch threads (fixed reduction orders for
    golden comparisons); the previous count is restored afterwards."""
    n = getattr(request.module, "TORCH_THREADS", None)
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data_dir() -> Path:
    return DATA
