"""The run folder's environment record and moving a folder aside (never deleting it)."""

from __future__ import annotations

import pytest

from tokbench.environment import CORE_PACKAGES, numeric_packages, package_versions
from tokbench.runfolder import environment_changes, move_aside, numeric_environment

NUMERIC_PACKAGES = CORE_PACKAGES + ("diffusers", "pytesseract", "tesseract")
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
    (record(diffusers="0.43.0"), "diffusers 1.0 -> 0.43.0"),
    (record(tesseract="5.5.0"), "tesseract 1.0 -> 5.5.0"),
    (record(GPU), "device kind cpu -> cuda"),
    (record({**GPU, "gpu": "NVIDIA A100"}), "gpu NVIDIA H200 -> NVIDIA A100"),
])
def test_each_number_changing_difference_is_named(new, change):
    old = record(GPU) if "gpu NVIDIA H200" in change else record()
    changes = environment_changes(old, new)
    assert change in changes and len(changes) == (3 if change.startswith("device kind") else 1), changes


def test_a_record_without_versions_or_device_differs_from_one_with_them():
    assert environment_changes({"device": CPU}, record()) == [f"{p} (none) -> 1.0" for p in sorted(NUMERIC_PACKAGES)]
    assert environment_changes(record(), {"versions": VERSIONS}) == ["device kind cpu -> (none)"]


def test_the_record_holds_what_families_and_metrics_declare():
    # the packages whose version changes numbers come from the families and metrics that use them
    packages = numeric_packages()
    for p in (*CORE_PACKAGES, "diffusers", "transformers", "open_clip_torch", "lpips", "clean-fid",
              "opencv-python-headless", "pytesseract"):
        assert p in packages, p
    versions = package_versions()
    assert set(packages) <= set(versions) and "tesseract" in versions and "python" in versions


def test_a_run_made_with_another_diffusers_version_is_moved_aside_not_resumed(tmp_path, monkeypatch):
    import json

    from tokbench.runner import run_suite
    from tokbench.suite import parse_suite

    suite = parse_suite({"name": "d", "data": ["samples"], "resolution": 32, "batch_size": 2, "download": False,
                         "metrics": ["psnr"], "tokenizers": ["jpeg-q50"]})
    (first,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["versions"]["diffusers"] == package_versions()["diffusers"]
    record["versions"]["diffusers"] = "0.1.0"  # as if the folder had been made before an upgrade
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    said = []
    (again,) = run_suite(suite, tmp_path / "run", progress=False, log=said.append)
    assert any("moved the previous run" in s and "diffusers 0.1.0 ->" in s for s in said), said
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("run.")], "the old run was kept beside"
    assert again["status"] == "ok" and first["job"] == again["job"]


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


HOLDER = """
import sys
from pathlib import Path
from tokbench.runfolder import writer_lock
with writer_lock(Path(sys.argv[1]), what="run"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_writer_is_refused_naming_the_holder_then_runs_once_it_is_gone(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from tests.test_runner import make_folder
    from tokbench.cli import main as cli

    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = tmp_path / "s.yaml"
    suite.write_text(f"data: ['folder:{folder}']\nresolution: 32\nmetrics: [psnr]\ntokenizers: [jpeg-q50]\n")
    out = tmp_path / "run"
    assert cli(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        for command in (["run", str(suite), "--out", str(out), "--quiet"], ["report", str(out)]):
            assert cli(command) == 2
            err = capsys.readouterr().err
            assert f"is being written by another tokbench process (PID {holder.pid} on host {socket.gethostname()}" \
                in err, err
    finally:
        holder.communicate("\n", timeout=60)
    assert not (out / ".lock.json").exists()
    assert cli(["run", str(suite), "--out", str(out), "--quiet"]) == 0


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from tokbench.runfolder import writer_lock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / ".lock.json").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "what": "run",
                                                     "since": "2026-01-01T00:00:00+0000", "command": "tokbench run"}))
    notes: list[str] = []
    with writer_lock(tmp_path, notes.append):
        info = json.loads((tmp_path / ".lock.json").read_text())
        assert info["pid"] != pid and info["host"] == socket.gethostname()
        with writer_lock(tmp_path, notes.append):  # the same process again (run, then its report): no conflict
            pass
    assert len(notes) == 1 and f"took over the lock left by PID {pid}" in notes[0] and "process is gone" in notes[0]
    assert not (tmp_path / ".lock.json").exists()


def test_only_rank_0_takes_the_lock(tmp_path, monkeypatch):
    from tokbench.runfolder import writer_lock

    monkeypatch.setenv("RANK", "1")
    with writer_lock(tmp_path):
        assert not (tmp_path / ".lock.json").exists()
