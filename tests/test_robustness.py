"""Lose nothing, count nothing twice, never a traceback (issue 28): data sets that change between runs,
disks that fill, SIGTERM, text that cannot be decoded, hostile suites and detections, damaged run folders;
and tests placed where earlier ones could not fail: gen-eval's CLIP numbers, the prompt bootstrap, row
order after a resume across world sizes, generate's half-written samples, the centre-crop rounding."""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokbench.cli import main as cli
from tokbench.registry import Family, register_family
from tokbench.runfolder import JobState, JobStore, read_rows
from tokbench.runner import run_suite
from tokbench.suite import parse_suite
from tokbench.tokenizers.codecs import CodecTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "data"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]

# The test tokenizer: JPEG q40 that calls HOOK["fn"](n) at its n-th encode of the process (the first
# encode of a job is the untimed warm-up; batches of 2 follow).
HOOK: dict = {"fn": None, "calls": 0}


class HookedJpeg(CodecTokenizer):
    def encode(self, images, **kw):
        HOOK["calls"] += 1
        if HOOK["fn"] is not None:
            HOOK["fn"](HOOK["calls"])
        return super().encode(images, **kw)


register_family(Family("robust-jpeg", build=lambda b: HookedJpeg("jpeg", 40, name="robust-jpeg")))


@pytest.fixture(autouse=True)
def _reset_hook():
    HOOK.update(fn=None, calls=0)
    yield
    HOOK.update(fn=None, calls=0)


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        _image(root / name, seed=sum(name.encode()))
    return root


SUITE = {"name": "robust", "resolution": 32, "batch_size": 2, "num_workers": 0, "checkpoint_seconds": 0,
         "save_samples": 4, "metrics": ["psnr", "bpp"], "tokenizers": ["robust-jpeg"]}


def _suite(folder: Path, **extra):
    return parse_suite({**SUITE, "data": [f"folder:{folder}"], **extra})


def _suite_file(path: Path, folder: Path, **extra) -> str:
    import yaml

    path.write_text(yaml.safe_dump({**SUITE, "data": [f"folder:{folder}"], **extra}))
    return str(path)


def _run(suite, out: Path, log: list[str] | None = None) -> list[dict]:
    return run_suite(suite, out, progress=False, log=log.append if log is not None else (lambda s: None))


def _signal_at(call: int, signum: int = signal.SIGINT):
    """Send this process `signum` during its `call`-th encode (a user's Ctrl-C, a scheduler's SIGTERM)."""
    def fn(n: int) -> None:
        if n == call:
            os.kill(os.getpid(), signum)
    return fn


def _job(out: Path) -> Path:
    (job,) = (out / "jobs").iterdir()
    return job


def _interrupted(suite, out: Path, at: int = 3) -> None:
    """A run stopped by Ctrl-C during its `at`-th encode: with the warm-up first, (at - 1) batches counted."""
    HOOK.update(fn=_signal_at(at), calls=0)
    with pytest.raises(KeyboardInterrupt):
        _run(suite, out)
    HOOK["fn"] = None


def _same_as_reference(out: Path, ref_out: Path, summary: dict, ref: dict) -> None:
    rows, ref_rows = read_rows(_job(out) / "rows.jsonl"), read_rows(_job(ref_out) / "rows.jsonl")
    assert [r["index"] for r in rows] == list(range(len(ref_rows)))  # each image once, in data-set order
    assert rows == ref_rows
    assert summary["images_evaluated"] == ref["images_evaluated"] == len(rows)
    for key in ("psnr", "bpp", "bits_per_image"):
        assert summary["results"][key] == pytest.approx(ref["results"][key], rel=1e-12), key
    for png in sorted((_job(ref_out) / "images").glob("*.png")):  # sample images: each one the same pixels
        assert np.array_equal(np.asarray(Image.open(_job(out) / "images" / png.name)), np.asarray(Image.open(png)))
    assert not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------------
# 1. A data set that changes between runs


def test_images_added_after_an_interrupt_are_evaluated_and_none_is_counted_twice(tmp_path):
    data = _folder(tmp_path / "data", [f"img{i}.png" for i in range(6)])
    _interrupted(_suite(data), tmp_path / "run")  # img0..img3 counted
    assert len(JobState.load(_job(tmp_path / "run") / "state.pt").done) == 4
    _folder(data, ["a0.png", "a1.png"])  # they sort first: every counted image is now two places later
    log: list[str] = []
    (summary,) = _run(_suite(data), tmp_path / "run", log)
    assert any("changed since this job started (2 images added; 4 counted images at other positions)" in line
               for line in log), log
    (ref,) = _run(_suite(data), tmp_path / "ref")
    _same_as_reference(tmp_path / "run", tmp_path / "ref", summary, ref)
    assert summary["images_evaluated"] == 8 and summary["data"]["identity"] == ref["data"]["identity"]

    _folder(data, ["a2.png"])  # a finished job is not measured again: the run says its numbers are of the old set
    log.clear()
    _run(_suite(data), tmp_path / "run", log)
    assert any("already done (on folder:" in line and "has changed since" in line for line in log), log


def test_a_counted_image_gone_or_changed_fails_the_job_with_the_command_that_starts_afresh(tmp_path, capsys):
    data = _folder(tmp_path / "data", [f"img{i}.png" for i in range(6)])
    suite = _suite_file(tmp_path / "s.yaml", data)
    _interrupted(_suite(data), tmp_path / "run")  # img0..img3 counted
    (data / "img0.png").unlink()
    _image(data / "img1.png", seed=99)  # rewritten after it was counted
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet"]) == 1
    assert capsys.readouterr().out.strip().endswith("tokbench: 0 completed, 0 skipped, 1 failed")
    reason = json.loads((_job(tmp_path / "run") / "skipped.json").read_text())["reason"]
    assert "1 counted image removed (img0.png)" in reason and "1 counted image modified (img1.png)" in reason
    assert "re-run the same command with --fresh" in reason
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet", "--fresh"]) == 0
    assert json.loads((_job(tmp_path / "run") / "summary.json").read_text())["images_evaluated"] == 5


def test_a_run_folder_inside_the_data_folder_is_never_part_of_it(tmp_path):
    data = _folder(tmp_path / "data", ["img0.png", "img1.png", "img2.png"])
    out = data / "results"
    log: list[str] = []
    (first,) = _run(_suite(data), out, log)
    assert first["images_evaluated"] == 3 and list((_job(out) / "images").glob("*.png"))
    both = _run(_suite(data, tokenizers=["robust-jpeg", "jpeg-q80"]), out, log)  # a later job, the same images
    assert [s["images_evaluated"] for s in both] == [3, 3]
    assert not any("changed since" in line for line in log), log


# ---------------------------------------------------------------------------------------------------
# 2. Write failures: one line, the path and what to do; the same command resumes exactly


def test_a_full_disk_stops_the_run_in_one_line_and_the_same_command_resumes_exactly(tmp_path, monkeypatch, capsys):
    data = _folder(tmp_path / "data", [f"img{i}.png" for i in range(7)])
    suite = _suite_file(tmp_path / "s.yaml", data)
    real_save, saves = torch.save, [0]

    def full_disk(obj, f, *args, **kwargs):  # the 2nd state save runs out of space half-way
        saves[0] += 1
        if saves[0] >= 2:
            f.write(b"half a state")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tokbench: error: {_job(tmp_path / 'run') / 'state.pt'}: No space left on device; the "
                          "disk is full: free some space"), err
    assert err.strip().endswith("then re-run the same command (a run goes on where it stopped)")
    job = _job(tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (job / "summary.json").exists()
    assert len(JobState.load(job / "state.pt").done) == 2  # the first batch; the second is done again
    # sample images a stopped run left missing or broken are made again on resume
    (job / "images" / "00001_recon.png").unlink()
    (job / "images" / "00000_original.png").write_bytes(b"\x89PNG cut short")
    monkeypatch.setattr(torch, "save", real_save)
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (ref,) = _run(_suite(data), tmp_path / "ref")
    _same_as_reference(tmp_path / "run", tmp_path / "ref", json.loads((job / "summary.json").read_text()), ref)


@pytest.mark.parametrize("code, strerror, advice", [
    (errno.EACCES, "Permission denied", "no permission: give --out a folder you can write to"),
    (errno.EROFS, "Read-only file system", "the file system is read-only: give --out a folder on a writable disk"),
])
def test_a_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, code, strerror,
                                                                 advice):
    import filelock

    data = _folder(tmp_path / "data", ["img0.png"])
    suite = _suite_file(tmp_path / "s.yaml", data)
    (tmp_path / "a-file").write_text("not a folder")
    assert cli(["run", suite, "--out", str(tmp_path / "a-file"), "--quiet"]) == 2
    assert f"--out {tmp_path / 'a-file'} is a file, not a folder" in capsys.readouterr().err
    _run(_suite(data), tmp_path / "done")  # a finished run, for `report`

    def refused(self, *args, **kwargs):  # the lock is the first file a run or a report writes
        raise OSError(code, strerror, self.lock_file)

    monkeypatch.setattr(filelock.FileLock, "acquire", refused)
    for argv, folder in ((["run", suite, "--out", str(tmp_path / "run"), "--quiet"], tmp_path / "run"),
                         (["report", str(tmp_path / "done")], tmp_path / "done")):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err == f"tokbench: error: {folder.resolve() / '.lock'}: {strerror}; {advice}" + err.split(advice)[1]
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# 3. SIGTERM: handled as Ctrl-C is


def test_sigterm_saves_the_progress_releases_the_lock_and_says_how_to_resume(tmp_path, capsys):
    data = _folder(tmp_path / "data", [f"img{i}.png" for i in range(6)])
    suite = _suite_file(tmp_path / "s.yaml", data)
    HOOK["fn"] = _signal_at(3, signal.SIGTERM)
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet"]) == 143
    assert "tokbench: stopped by SIGTERM; progress saved; re-run the same command to resume" in capsys.readouterr().err
    assert len(JobState.load(_job(tmp_path / "run") / "state.pt").done) == 4  # stopped after its batch
    assert not (tmp_path / "run" / ".lock.json").exists()
    HOOK["fn"] = None
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (ref,) = _run(_suite(data), tmp_path / "ref")
    _same_as_reference(tmp_path / "run", tmp_path / "ref",
                       json.loads((_job(tmp_path / "run") / "summary.json").read_text()), ref)


SLOW_JPEG = textwrap.dedent("""\
    import sys, time
    from tokbench.registry import Family, register_family
    from tokbench.tokenizers.codecs import CodecTokenizer

    class Slow(CodecTokenizer):
        def encode(self, images, **kw):
            time.sleep(0.3)
            return super().encode(images, **kw)

    register_family(Family("robust-jpeg", build=lambda b: Slow("jpeg", 40, name="robust-jpeg")))
    from tokbench.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


def _wait_for(path_glob, root: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not list(root.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the run never saved a state"
        time.sleep(0.2)


def test_sigterm_sent_to_a_running_tokbench_process(tmp_path):
    data = _folder(tmp_path / "data", [f"img{i}.png" for i in range(12)])
    suite = _suite_file(tmp_path / "s.yaml", data)
    (tmp_path / "slow.py").write_text(SLOW_JPEG)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "slow.py"), "run", suite, "--out", str(tmp_path / "run"),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for("jobs/*/state.pt", tmp_path / "run", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM; progress saved" in err and "Traceback" not in err
    counted = JobState.load(_job(tmp_path / "run") / "state.pt").done
    assert 0 < len(counted) < 12 and counted == set(range(len(counted)))
    assert not (tmp_path / "run" / ".lock.json").exists()
    (summary,) = _run(_suite(data), tmp_path / "run")  # this process's robust-jpeg: the same job, no sleep
    (ref,) = _run(_suite(data), tmp_path / "ref")
    _same_as_reference(tmp_path / "run", tmp_path / "ref", summary, ref)


@pytest.mark.skipif(not os.environ.get("TOKBENCH_SLOW_TESTS"), reason="set TOKBENCH_SLOW_TESTS=1 (torchrun, ~1 min)")
def test_sigterm_under_torchrun_saves_every_ranks_part(tmp_path):
    data = _folder(tmp_path / "data", [f"img{i}.png" for i in range(16)])
    suite = _suite_file(tmp_path / "s.yaml", data)
    (tmp_path / "slow.py").write_text(SLOW_JPEG)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*TORCHRUN, "2", str(tmp_path / "slow.py"), "run", suite, "--out", str(tmp_path / "run"),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for("jobs/*/state.*.rank1.pt", tmp_path / "run", proc)
    _wait_for("jobs/*/state.pt", tmp_path / "run", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0 and "Traceback" not in err.split("stopped by SIGTERM")[0], err
    job = _job(tmp_path / "run")
    assert (job / "state.pt").is_file() and list(job.glob("state.*.rank1.pt"))
    (summary,) = _run(_suite(data), tmp_path / "run")
    (ref,) = _run(_suite(data), tmp_path / "ref")
    _same_as_reference(tmp_path / "run", tmp_path / "ref", summary, ref)


# ---------------------------------------------------------------------------------------------------
# 4. Text that cannot be decoded


def test_an_undecodable_caption_or_annotation_is_a_listed_skip_of_it_alone(tmp_path):
    from tokbench.data import open_dataset

    data = _folder(tmp_path / "data", ["img0.png", "img1.png", "img2.png", "img3.png"])
    (data / "img0.txt").write_bytes("un caf\xe9 au lait".encode("latin-1"))
    (data / "img3.faces.json").write_bytes('[{"box": [0, 0, 5, 5], "note": "caf\xe9"}]'.encode("latin-1"))
    (data / "img1.txt").write_text("a dog on a sofa")
    (data / "img2.text.json").write_bytes(b'[{"box": [0, 0, 5, 5], "text": "\xff\xfe"}]')
    ds = open_dataset(f"folder:{data}")
    assert [r.caption for r in ds.records] == [None, "a dog on a sofa", None, None]
    assert [(s["id"], Path(s["path"]).name) for s in ds.sidecar_skips] == [
        ("img0.png", "img0.txt"), ("img2.png", "img2.text.json"), ("img3.png", "img3.faces.json")]
    assert "is not UTF-8 text (byte 0xe9 at offset 6); caption left out" in ds.sidecar_skips[0]["reason"]
    assert "annotations left out" in ds.sidecar_skips[1]["reason"]
    (summary,) = _run(_suite(data), tmp_path / "run")
    assert summary["images_evaluated"] == 4 and summary["sidecars_skipped"] == 3  # the images still count
    assert [s["id"] for s in summary["skipped_sidecars"]] == ["img0.png", "img2.png", "img3.png"]


def test_a_suite_file_that_is_not_utf8_is_a_clear_exit_2(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\ntokenizers: [jpeg-q50]\n".encode("latin-1"))
    assert cli(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert f"suite '{path}' is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# 5. Hostile suites


def _alias_bomb(where: str) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in itertools.pairwise("abcdefgh"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    if where == "config":
        return "\n".join(lines) + "\ntokenizers:\n  - name: jpeg-q50\n    config: {x: *h}\n"
    return "\n".join(lines) + "\ntokenizers: [jpeg-q50]\n"


@pytest.mark.parametrize("body", [_alias_bomb("top"), _alias_bomb("config"), "a: &a [*a]\ntokenizers: [jpeg]\n",
                                  "a: " + "[" * 3000 + "]" * 3000 + "\ntokenizers: [jpeg]\n"],
                         ids=["alias-bomb", "alias-bomb-in-config", "recursive-alias", "nested-3000-deep"])
def test_hostile_yaml_is_refused_at_once_in_a_short_message(tmp_path, capsys, body):
    path = tmp_path / "s.yaml"
    path.write_text(body)
    assert len(body) < 7000
    start = time.monotonic()
    assert cli(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert len(err) < 600 and "Traceback" not in err, err[:2000]
    assert ("through its aliases" in err) or ("nested too deeply" in err)
    assert not (tmp_path / "run").exists()


def test_values_quoted_in_suite_errors_are_cut_short(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({"tokenizers": ["x" * 200_000], "batch_size": ["y" * 100_000] * 50}))
    assert cli(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown tokenizer" in err and len(err) < 4000, len(err)


# ---------------------------------------------------------------------------------------------------
# 6. GenEval detections and metadata: a typo is an error, never a score of 0


def _geneval_files(tmp_path: Path, det_edit=None, meta_edit=None) -> list[str]:
    fixture = FIXTURES / "geneval_rules"
    dets = [json.loads(x) for x in (fixture / "detections.jsonl").read_text().splitlines()]
    meta = [json.loads(x) for x in (fixture / "metadata.jsonl").read_text().splitlines()]
    if det_edit:
        det_edit(dets[1])
    if meta_edit:
        meta_edit(meta[2])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dets))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return ["geneval", "--detections", str(tmp_path / "d.jsonl"), "--metadata", str(tmp_path / "m.jsonl"),
            "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("det_edit, meta_edit, message", [
    (lambda d: d.update(detection=d.pop("detections")), None, "d.jsonl:2: no \"detections\" key ('detection' is a "
                                                              "typo?); an image with nothing detected has"),
    (lambda d: next(iter(d["detections"].values()))[0].update(score=float("nan")), None,
     "d.jsonl:2: a 'suitcase' has a box or score that is not a finite number"),
    (None, lambda m: m.update(tag="countng"), "m.jsonl:3: tag 'countng' is not one of GenEval's tasks "
                                              "(single_object, two_object, counting, colors, position, color_attr); "
                                              "did you mean 'counting'?"),
], ids=["detections-key-typo", "nan-score", "unknown-tag"])
def test_geneval_typos_are_file_line_errors_not_scores(tmp_path, capsys, det_edit, meta_edit, message):
    assert cli(_geneval_files(tmp_path)) == 0  # the fixture as it is scores
    capsys.readouterr()
    assert cli(_geneval_files(tmp_path, det_edit, meta_edit)) == 2
    err = capsys.readouterr().err
    assert message in err, err


# ---------------------------------------------------------------------------------------------------
# 7. gen-eval without CLIP weights: the rest runs, the skip is listed with the fetch command


def test_gen_eval_without_clip_weights_scores_what_it_can_and_lists_the_skip(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, seed in (("p0_0.png", 1), ("p0_1.png", 2), ("p1_0.png", 3)):
        _image(flat / name, seed, (24, 24))
    (tmp_path / "p.jsonl").write_text('{"id": "p0", "prompt": "a cat"}\n{"id": "p1", "prompt": "a dog"}\n')
    argv = ["gen-eval", "--images", str(flat), "--prompts", str(tmp_path / "p.jsonl"), "--device", "cpu", "--quiet"]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert "skipped clip_score_x100_vit_l_14_openai:" in printed and "tokbench fetch clip-vit-l-14-openai" in printed
    r = json.loads((flat / "gen_eval" / "results.json").read_text())
    assert r["counts"]["images_scored"] == 3 and set(r["skipped"]) == {"clip_score_x100_vit_l_14_openai", "diversity"}
    assert len((flat / "gen_eval" / "rows.jsonl").read_text().splitlines()) == 3
    assert (flat / "gen_eval" / "report.md").is_file()
    assert cli([*argv, "--strict"]) == 1


# ---------------------------------------------------------------------------------------------------
# 8. Files left out silently, damaged run folders, bytes that are not a checkpoint


def test_fifos_link_loops_and_unreadable_folders_are_counted_and_listed(tmp_path, monkeypatch):
    from tokbench.data import open_dataset

    data = _folder(tmp_path / "data", ["img0.png", "img1.png", "img2.png"])
    os.mkfifo(data / "pipe.png")  # opening it would block forever: never read
    os.symlink("loop.png", data / "loop.png")
    os.symlink("nowhere.png", data / "dangling.jpg")
    (data / "locked").mkdir()
    _image(data / "locked" / "inside.png", 5)
    real_scandir = os.scandir

    def scandir(path):  # as for a folder without read permission (tests run as root, which may read it)
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = open_dataset(f"folder:{data}")
    assert [r.id for r in ds.records] == ["img0.png", "img1.png", "img2.png"]
    found = {Path(u["path"]).name: u["reason"] for u in ds.unlisted}
    assert found == {"dangling.jpg": "a symbolic link that leads nowhere (No such file or directory)",
                     "locked": "folder cannot be read (Permission denied); its images are left out",
                     "loop.png": "a symbolic link in a loop",
                     "pipe.png": "a named pipe (FIFO), not an image file: not read"}
    (summary,) = _run(_suite(data), tmp_path / "run")
    assert summary["images_evaluated"] == 3 and summary["images_skipped"] == 4
    assert sorted(Path(s["path"]).name for s in summary["skipped_files"]) == sorted(found)


def test_damaged_state_summary_and_run_record_are_named_and_recomputed_or_refused(tmp_path, capsys):
    data = _folder(tmp_path / "data", [f"img{i}.png" for i in range(6)])
    suite = _suite_file(tmp_path / "s.yaml", data)
    run = tmp_path / "run"
    (ref,) = _run(_suite(data), tmp_path / "ref")
    # a state.pt that does not load: its progress is kept aside, the job counted again
    _interrupted(_suite(data), run)
    (_job(run) / "state.pt").write_bytes(b"PK\x03\x04 not a state")
    log: list[str] = []
    (summary,) = _run(_suite(data), run, log)
    assert any(f"{_job(run) / 'state.pt'} cannot be read" in line and "counting its images again" in line
               for line in log), log
    assert list(_job(run).glob("unreadable-progress.*/state.pt"))
    _same_as_reference(run, tmp_path / "ref", summary, ref)
    # a summary.json cut short: `report` lists the job, a re-run measures it again
    (_job(run) / "summary.json").write_text('{"job": "cut sh')
    assert cli(["report", str(run)]) == 0
    assert "summary.json cannot be read" in (run / "report" / "report.md").read_text()
    log.clear()
    (summary,) = _run(_suite(data), run, log)
    assert any("kept as summary.json.corrupt-" in line for line in log), log
    _same_as_reference(run, tmp_path / "ref", summary, ref)
    # a run.json cut short: what made the numbers is unknown; named, with --fresh
    (run / "run.json").write_text('{"suite": ')
    for argv in (["run", suite, "--out", str(run), "--quiet"], ["report", str(run)]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert f"tokbench: error: {run / 'run.json'} cannot be read (JSONDecodeError" in err and "--fresh" in err
    assert cli(["run", suite, "--out", str(run), "--quiet", "--fresh"]) == 0


def test_random_bytes_given_as_weights_are_not_a_checkpoint_and_not_a_threat(tmp_path):
    from tokbench.checkpoint import CheckpointError, UnsafeCheckpoint, read_state_dict

    path = tmp_path / "w.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="is not a checkpoint: not a safetensors file") as e:
        read_state_dict(path)
    assert not isinstance(e.value, UnsafeCheckpoint)
    path.write_bytes(b"\x80\x02" + bytes(range(200, 256)))  # a pickle header, then garbage
    with pytest.raises(CheckpointError, match="is not a checkpoint, or a damaged one") as e:
        read_state_dict(path)
    assert not isinstance(e.value, UnsafeCheckpoint)


# ---------------------------------------------------------------------------------------------------
# 9. Tests that fail where the bugs would be


class _PositiveEncoder:
    """Image -> (mean R, G, B, 1); text -> a positive vector from its letters: every cosine is > 0, and
    a prefix ("A photo depicts ") changes it."""

    name = "positive"

    def encode_image(self, images):
        return torch.cat([images.double().mean((2, 3)), torch.ones(len(images), 1, dtype=torch.float64)], 1)

    def encode_text(self, texts):
        return torch.tensor([[1 + t.count("a"), 1 + t.count("o"), 1 + t.count("e"), 1 + len(t) / 10] for t in texts],
                            dtype=torch.float64)


def test_gen_eval_clip_scores_are_the_formula_per_image_and_the_mean_over_images(tmp_path):
    from tokbench.generation.evaluate import CONVENTIONS, run_gen_eval

    flat = tmp_path / "flat"
    flat.mkdir()
    counts = {"p0": 3, "p1": 1, "p2": 2}  # unequal: the mean over images is not the mean over prompts
    for pid, n in counts.items():
        for k in range(n):
            _image(flat / f"{pid}_{k}.png", seed=10 * int(pid[1]) + k, size=(16, 16))
    prompts = {"p0": "a cat on a mat", "p1": "red boots", "p2": "an old tree"}
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": i, "prompt": t, "category": c}) + "\n"
                                              for (i, t), c in zip(prompts.items(), ["x", "y", "x"])))
    enc = _PositiveEncoder()
    r = run_gen_eval(flat, prompts=tmp_path / "p.jsonl", out=tmp_path / "e", clip=["vitb32", "hessel"],
                     encoders={"ViT-B-32/openai": enc}, device="cpu", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "e" / "rows.jsonl").read_text().splitlines()]

    def expected(image_path: Path, text: str, scale: float) -> float:  # scale * cos, computed apart
        x = (np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / np.float32(255)).astype(np.float64)
        a = np.append(x.mean((0, 1)), 1.0)
        b = enc.encode_text([text])[0].numpy()
        return scale * float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    for conv, scale, prefix in (("vitb32", 100.0, ""), ("hessel", 2.5, "A photo depicts ")):
        key = CONVENTIONS[conv].key
        want = [expected(flat / row["image"], prefix + prompts[row["id"]], scale) for row in rows]
        assert min(want) > 0.5 * scale  # positive cosines: a clamp at 0 or a zeroed score fails below
        assert [row[key] for row in rows] == pytest.approx(want, rel=1e-6)  # embeddings are kept in float32
        per_prompt = {i: np.mean([w for w, row in zip(want, rows) if row["id"] == i]) for i in counts}
        assert r["summary"][key] == pytest.approx(np.mean(want), rel=1e-6)
        assert abs(np.mean(want) - np.mean(list(per_prompt.values()))) > 1e-6 * scale
        assert r["summary"][f"{key}_by_category"]["x"] == pytest.approx(
            np.mean([w for w, row in zip(want, rows) if row["id"] in ("p0", "p2")]), rel=1e-6)
        assert r["summary"][f"{key}_images"] == 6
    saved = json.loads((tmp_path / "e" / "per_prompt.json").read_text())
    key = CONVENTIONS["vitb32"].key
    for p in saved:
        assert p[key] == pytest.approx(np.mean([row[key] for row in rows if row["id"] == p["id"]]), rel=1e-12)


def test_the_bootstrap_interval_resamples_prompts_not_images():
    from tokbench.generation.evaluate import bootstrap_ci

    # four prompts, 30 images each, equal within a prompt: resampling prompts, the mean takes only the
    # values of 4 picks from {0, 1, .5, .5} (an interval about [0.125, 0.875]); resampling the 120 images
    # it would stay within about +-0.07 of 0.5
    groups = [[0.0] * 30, [1.0] * 30, [0.5] * 30, [0.5] * 30]
    means = sorted(np.mean(pick) for pick in itertools.product([0.0, 1.0, 0.5, 0.5], repeat=4))  # all 256, equally likely
    exact = np.percentile(means, [2.5, 97.5])
    lo, hi = bootstrap_ci(groups, n_boot=20_000, seed=0)
    assert (lo, hi) == pytest.approx(tuple(exact), abs=0.02)
    assert lo < 0.3 and hi > 0.7
    # unequal sizes: the mean is over images (a ratio of sums), so a 10-image prompt weighs 10 times a 1-image one
    lo, hi = bootstrap_ci([[0.0], [1.0] * 10], n_boot=4000, seed=0)
    assert lo == 0.0 and hi == 1.0 and bootstrap_ci([[1.0] * 10, [1.0]])[0] == 1.0


def test_rows_stay_in_data_set_order_when_rank_0_died_first_and_another_world_size_resumes(tmp_path):
    """The files a 2-rank run leaves when rank 0 is killed first (its state holds position 0, rank 1's
    part positions 4 and 5), then a 1-process resume that counts 1..3: rows.jsonl must come out 0..5."""
    store = JobStore(tmp_path)
    listing = [(f"img{i}.png", 100 + i, 7) for i in range(6)]

    def counted(positions, **kw):
        return JobState(set(positions), identity="A", listing=listing, **kw)

    def rows(path, positions):
        with open(path, "a") as f:
            f.write("".join(json.dumps({"index": p, "id": f"img{p}.png", "psnr": float(p)}) + "\n" for p in positions))

    rows(store.rows, [0])
    store.save(store.state, counted([0]))
    rows_part, state_part = store.part_paths("attempt1", 1)
    rows(rows_part, [4, 5])
    store.save(state_part, counted([4, 5]))
    merged = store.consolidate(lambda name, states: states[-1])
    assert merged.done == {0, 4, 5}
    rows(store.rows, [1, 2, 3])  # the resumed single process appends what is left
    store.save(store.state, counted([0, 1, 2, 3, 4, 5]))
    store.consolidate(lambda name, states: states[-1])
    assert [r["index"] for r in read_rows(store.rows)] == [0, 1, 2, 3, 4, 5]


@pytest.mark.skipif(not os.environ.get("TOKBENCH_SLOW_TESTS"), reason="set TOKBENCH_SLOW_TESTS=1 (torchrun, ~1 min)")
def test_rank_0_killed_first_then_one_process_gives_the_rows_of_an_uninterrupted_run(tmp_path):
    from tests.test_distributed import KILLER, _env, _results, _results_of_reference, _same, _suite
    from tests.test_runner import make_folder_with_broken

    folder = make_folder_with_broken(tmp_path / "imgs", 9, {1, 6})
    ref = _results_of_reference(tmp_path, folder)
    suite = _suite(tmp_path, folder, ["killer-jpeg"])
    (tmp_path / "killer.py").write_text(KILLER)
    killed = subprocess.run([*TORCHRUN, "2", str(tmp_path / "killer.py"), "run", str(suite), "--out",
                             str(tmp_path / "run"), "--quiet"], env=_env(KILL_RANK="0", KILL_AT="3"),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0
    done = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "run", str(suite), "--out",
                           str(tmp_path / "run"), "--quiet"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _same(_results(tmp_path / "run"), ref)


def test_a_sample_killed_between_its_png_and_its_codes_is_not_done(tmp_path):
    from tokbench.generation.layout import (
        _partial_codes,
        finish_prompt,
        sample_done,
        sample_path,
        write_sample,
    )

    image, codes = np.zeros((8, 8, 3), np.uint8), np.arange(4, dtype=np.int32)
    write_sample(tmp_path, 0, 0, image, codes)
    write_sample(tmp_path, 0, 1, image, codes)
    _partial_codes(tmp_path, 0, 1).unlink()  # as a kill between sample 1's PNG and its codes leaves it
    assert sample_path(tmp_path, 0, 1).is_file()
    assert sample_done(tmp_path, 0, 0, 2) and not sample_done(tmp_path, 0, 1, 2)
    assert not finish_prompt(tmp_path, 0, 2)  # the prompt is not complete: sample 1 is generated again
    write_sample(tmp_path, 0, 1, image, codes)
    assert finish_prompt(tmp_path, 0, 2) and sample_done(tmp_path, 0, 1, 2)


def test_centre_crop_offsets_are_rounded_as_torchvision_rounds_them():
    from torchvision import transforms

    from tokbench.protocols import get_protocol, short_side_crop_geometry

    src = Image.fromarray(np.random.default_rng(0).integers(0, 256, (500, 670, 3), dtype=np.uint8))
    ours = np.asarray(get_protocol("resize-crop").fn(src, 256))
    ref = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                              transforms.CenterCrop(256)])(src)
    # 670x500 -> 343x256: (343 - 256) / 2 = 43.5 rounds to 44 (floor would give 43: a one-pixel shift)
    assert np.array_equal(ours, np.asarray(ref))
    g = short_side_crop_geometry(670, 500, 256, 256)
    assert g.tx == pytest.approx(-44.0) and g.ty == 0.0


def test_geneval_iou_is_the_inclusive_pixel_iou_of_the_official_code():
    """GenEval's NMS overlap (mmdet's `bbox_overlaps` with its +1 pixel convention), against torchvision's
    IoU of the boxes widened by one pixel: overlapping, disjoint, touching and empty boxes. (Mutation
    testing left its clamps at 0 unchecked: no fixture case has disjoint boxes under NMS.)"""
    from torchvision.ops import box_iou

    from tokbench.geneval.rules import compute_iou

    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 60, (60, 2, 2)), axis=1)
    boxes = np.concatenate([corners[:, 0], corners[:, 1]], 1)  # x0, y0, x1, y1
    pairs = list(zip(boxes[:30], boxes[30:])) + [(np.array([0, 0, 9, 9]), np.array([20, 20, 29, 29])),  # disjoint
                                                 (np.array([0, 0, 9, 9]), np.array([10, 0, 19, 9])),  # touching
                                                 (np.array([5, 5, 14, 24]), np.array([5, 5, 14, 24]))]  # the same
    for a, b in pairs:
        widened = torch.tensor(np.stack([a, b]) + [0, 0, 1, 1], dtype=torch.float64)
        got = compute_iou(a, b)
        assert isinstance(got, np.float32) and got == pytest.approx(float(box_iou(widened[:1], widened[1:])), abs=1e-6)
        assert compute_iou(np.append(a, 0.9), np.append(b, 0.3)) == got  # mmdet rows carry the score fifth
    assert compute_iou(np.array([3, 3, 2, 2]), np.array([3, 3, 2, 2])) == 0  # both empty: no union, no overlap


def test_metric_states_of_every_reduction_merge_exactly_and_in_order():
    """`reduce_states` on each `dist_reduce_fx` (sum, max, min, cat of lists and of tensors), a state absent
    from every part, parts given in rank order, a rank's unsized state, and shapes that do not merge;
    then `load_states` puts them into a metric that computes from them. (Mutation testing found the `cat`
    path and the absent state unchecked outside torchrun.)"""
    from torchmetrics import Metric

    from tokbench.core import TokbenchError
    from tokbench.distributed import load_states, reduce_states

    class Every(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("absent", torch.zeros(2), dist_reduce_fx="sum")  # first: no part has it
            self.add_state("total", torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("peak", torch.zeros(3), dist_reduce_fx="max")
            self.add_state("low", torch.zeros(3), dist_reduce_fx="min")
            self.add_state("feats", [], dist_reduce_fx="cat")
            self.add_state("ids", torch.zeros(0, dtype=torch.long), dist_reduce_fx="cat")

        def update(self) -> None:
            pass

        def compute(self) -> torch.Tensor:
            return torch.cat(self.feats).sum() + self.total.sum()

    rng = torch.Generator().manual_seed(0)
    parts = [{"total": torch.rand(3, generator=rng, dtype=torch.float64), "peak": torch.rand(3, generator=rng),
              "low": torch.rand(3, generator=rng), "feats": [torch.full((2,), float(r)), torch.full((1,), 10.0 + r)],
              "ids": torch.tensor([r, 10 + r])} for r in range(3)]
    parts[1]["total"] = torch.zeros(0, dtype=torch.float64)  # a rank that saw no image: its sum is unsized
    merged = reduce_states(Every(), parts)
    assert "absent" not in merged
    assert torch.equal(merged["total"], parts[0]["total"] + parts[2]["total"]) and merged["total"].dtype == torch.float64
    assert torch.equal(merged["peak"], torch.stack([p["peak"] for p in parts]).amax(0))
    assert torch.equal(merged["low"], torch.stack([p["low"] for p in parts]).amin(0))
    assert [t.tolist() for t in merged["feats"]] == [[0.0, 0.0], [10.0], [1.0, 1.0], [11.0], [2.0, 2.0], [12.0]]
    assert [t.tolist() for t in merged["ids"]] == [[0, 10], [1, 11], [2, 12]]  # rank order: data-set order
    metric = Every()
    load_states(metric, merged)
    assert float(metric.compute()) == pytest.approx(39.0 + float(merged["total"].sum()))
    with pytest.raises(TokbenchError, match="cannot merge state 'peak'"):
        reduce_states(Every(), [{"peak": torch.zeros(3)}, {"peak": torch.zeros(4)}])
