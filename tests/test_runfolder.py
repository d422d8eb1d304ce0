"""The run folder's environment record and moving a folder aside (never deleting it)."""

from __future__ import annotations

import pytest

from tokbench.runfolder import NUMERIC_PACKAGES, environment_changes, move_aside, numeric_environment

VERSIONS = {"python": "3.11.7", **{p: "1.0" for p in NUMERIC_PACKAGES}}
CPU = {"device": "cpu", "torch_threads": 2, "cpu": "x86_64", "cpu_count": 2}
GPU = {"device": "cuda:1", "torch_threads": 8, "cpu": "x86_64", "cpu_count": 64, "gpu": "NVIDIA H200",
       "cuda": "12.8"}


def record(device=CPU, **versions):
    return {"device": dict(device), "versions": {**VERSIONS, **versions}}


def test_what_changes_numbers_is_device_kind_gpu_and_package_versions():
    env = numeric_environment(GPU, VERSIONS)
    assert env == {"device kind": "cuda", "gpu": "NVIDIA H200", "cuda": "12.8", **{p: "1.0" for p in NUMERIC_PACKAGES}}
    assert numeric_environment(CPU, VERSIONS)["device kind"] == "cpu" and "gpu" not in numeric_environment(CPU, {})


def test_thread_counts_cpu_count_and_python_do_not_count():
    other = {**CPU, "torch_threads": 64, "cpu_count": 128, "cpu": "aarch64"}
    assert environment_changes(record(), record(other, python="3.13.0")) == []
    assert environment_changes(record(GPU), record({**GPU, "device": "cuda:0", "torch_threads": 1})) == []


@pytest.mark.parametrize("new, change", [
    (record(torch="2.99"), "torch 1.0 -> 2.99"),
    (record(pillow="12.0"), "pillow 1.0 -> 12.0"),
    (record(tokbench="0.2"), "tokbench 1.0 -> 0.2"),
    (record(GPU), "device kind cpu -> cuda"),
    (record({**GPU, "gpu": "NVIDIA A100"}), "gpu NVIDIA H200 -> NVIDIA A100"),
])
def test_each_number_changing_difference_is_named(new, change):
    old = record(GPU) if "gpu NVIDIA H200" in change else record()
    changes = environment_changes(old, new)
    assert change in changes and len(changes) == (3 if change.startswith("device kind") else 1), changes


def test_a_record_without_versions_differs_from_one_with_them():
    assert "torch (none) -> 1.0" in environment_changes({"device": CPU}, record())


def test_move_aside_keeps_everything_in_a_dated_sibling(tmp_path):
    run = tmp_path / "quick"
    (run / "jobs" / "a").mkdir(parents=True)
    (run / "jobs" / "a" / "summary.json").write_text("{}")
    (run / "run.json").write_text("{}")
    (run / ".lock").write_text("pid")
    dest = move_aside(run, "2025-03-04T05:06:07+0000", keep=(".lock",))
    assert dest == tmp_path / "quick.20250304-050607"
    assert (dest / "jobs" / "a" / "summary.json").read_text() == "{}" and (dest / "run.json").is_file()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # kept names stay
    (run / "run.json").write_text("{}")
    second = move_aside(run, "2025-03-04T05:06:07+0000")
    assert second == tmp_path / "quick.20250304-050607-2" and (second / "run.json").is_file()
    assert not any(run.iterdir())


def test_move_aside_without_a_readable_date_uses_now(tmp_path):
    import re

    run = tmp_path / "r"
    run.mkdir()
    (run / "x").write_text("1")
    dest = move_aside(run, "yesterday")
    assert re.fullmatch(r"r\.\d{8}-\d{6}", dest.name) and (dest / "x").read_text() == "1"
