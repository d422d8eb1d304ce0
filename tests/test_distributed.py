"""Runs under torchrun (gloo, CPU): the same rows and numbers as one process, resume across world sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.test_runner import make_folder_with_broken
from tokbench.distributed import reduce_states, shard
from tokbench.runner import read_rows, run_suite
from tokbench.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "data"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
BROKEN = {1, 6}  # 9 files, 7 readable: not divisible by 2 ranks x batch size 2
SPEED = ("encode_", "decode_", "peak_memory")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _suite(tmp: Path, folder: Path, tokenizers: list) -> Path:
    path = tmp / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: dist
        data: ["folder:{folder}"]
        resolution: 32
        batch_size: 2
        num_workers: 0
        checkpoint_seconds: 0
        metrics: [psnr, ssim, bpp, codebook, speed]
        """) + "tokenizers: " + json.dumps(tokenizers) + "\n")
    return path


def _results(run: Path) -> list[tuple[list, dict]]:
    out = []
    for job in sorted((run / "jobs").iterdir()):
        summary = json.loads((job / "summary.json").read_text())
        out.append((read_rows(job / "rows.jsonl"), summary))
    return out


def _same(got: list[tuple[list, dict]], ref: list[tuple[list, dict]]) -> None:
    assert len(got) == len(ref)
    for (rows, s), (ref_rows, ref_s) in zip(got, ref):
        assert [r["index"] for r in rows] == [p for p in range(9) if p not in BROKEN]  # each once, in order
        assert [r.keys() for r in rows] == [r.keys() for r in ref_rows]
        for r, q in zip(rows, ref_rows):
            for k, v in q.items():
                assert r[k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v), (k, r, q)
        numbers = {k: v for k, v in ref_s["results"].items() if not k.startswith(SPEED)}
        assert numbers and {k: s["results"][k] for k in numbers} == pytest.approx(numbers, rel=1e-6)
        assert s["images_evaluated"] == ref_s["images_evaluated"] == 7
        assert s["skipped_files"] == ref_s["skipped_files"] and len(s["skipped_files"]) == 2


def test_shards_cover_every_position_once():
    positions = list(range(11))
    for world in (1, 2, 3, 4, 12):
        shares = [shard(positions, r, world) for r in range(world)]
        assert sorted(p for s in shares for p in s) == positions
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_fid_moments_and_codebook_histograms_reduce_exactly_in_float64():
    from tokbench.metrics.base import BenchMetric
    from tokbench.metrics.fid import _FeatureMoments
    from tokbench.metrics.rate import CodebookUsage

    class Moments(BenchMetric):
        def __init__(self) -> None:
            super().__init__()
            _FeatureMoments.add(self, "real", 3)

    feats = torch.randn(10, 3, dtype=torch.float64) * 1e4 + 1e8  # float32 would lose these digits
    parts = []
    for chunk in (feats[:3], feats[3:]):
        m = Moments()
        _FeatureMoments.update(m, "real", chunk)
        parts.append({k: getattr(m, k) for k in ("real_sum", "real_outer", "real_n")})
    merged = reduce_states(Moments(), parts)
    assert merged["real_sum"].dtype == merged["real_outer"].dtype == torch.float64
    # 1e16-sized entries agree to 1e-12: float32 anywhere on the way would lose them at 1e-7
    assert torch.allclose(merged["real_outer"], feats.T @ feats, rtol=1e-12, atol=0)
    assert float(merged["real_n"]) == 10
    # a rank that saw no image has an unsized histogram: it adds nothing
    cb = CodebookUsage()
    hist = {"counts": torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64), "sizes": torch.tensor([3])}
    empty = {"counts": torch.zeros(0, dtype=torch.float64), "sizes": torch.zeros(0, dtype=torch.long)}
    merged = reduce_states(cb, [empty, hist, hist])
    assert merged["counts"].tolist() == [6.0, 0.0, 2.0] and merged["sizes"].tolist() == [3]


def test_two_processes_give_the_rows_and_numbers_of_one(tmp_path):
    folder = make_folder_with_broken(tmp_path / "imgs", 9, BROKEN)
    suite = _suite(tmp_path, folder, [
        "jpeg-q40",
        {"name": "llamagen-vq", "label": "vq16-fixture", "resolution": 32,
         "weights": str(FIXTURES / "llamagen_vq16" / "vq_ds16_c2i.pt"),
         "config": str(FIXTURES / "llamagen_vq16" / "config.json")},
    ])
    one = subprocess.run([sys.executable, "-m", "tokbench", "run", str(suite), "--out", str(tmp_path / "one"),
                          "--quiet"], env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    done = subprocess.run([*TORCHRUN, "2", "-m", "tokbench", "run", str(suite), "--out", str(tmp_path / "two"),
                           "--quiet"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref, got = _results(tmp_path / "one"), _results(tmp_path / "two")
    _same(got, ref)
    assert got[1][1]["results"]["codebook_usage"] > 0 and got[1][1]["world_size"] == 2
    assert not list((tmp_path / "two" / "jobs").glob("*/state*"))  # finished: no state or rank parts left


KILLER = textwrap.dedent("""\
    import os, sys
    from tokbench.registry import Family, register_family
    from tokbench.tokenizers.codecs import CodecTokenizer

    calls = 0

    class Killer(CodecTokenizer):
        def encode(self, images, **kw):
            global calls
            calls += 1
            if os.environ.get("RANK", "0") == os.environ.get("KILL_RANK") and calls == int(os.environ["KILL_AT"]):
                os._exit(137)  # as abrupt as SIGKILL
            return super().encode(images, **kw)

    register_family(Family("killer-jpeg", build=lambda b: Killer("jpeg", 40, name="killer-jpeg")))
    from tokbench.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_killed_in_one_world_size_finishes_in_another(tmp_path, first, then):
    folder = make_folder_with_broken(tmp_path / "imgs", 9, BROKEN)
    ref = _results_of_reference(tmp_path, folder)
    suite = _suite(tmp_path, folder, ["killer-jpeg"])
    script = tmp_path / "killer.py"
    script.write_text(KILLER)

    def run(world: int, **env: str) -> subprocess.CompletedProcess:
        cmd = [*TORCHRUN, str(world), str(script)] if world > 1 else [sys.executable, str(script)]
        return subprocess.run([*cmd, "run", str(suite), "--out", str(tmp_path / "run"), "--quiet"],
                              env=_env(**env), capture_output=True, text=True, timeout=600)

    # rank 1 (or the only rank) dies in its 3rd encode call (the 1st is the warm-up): 1 batch saved
    killed = run(first, KILL_RANK="1" if first > 1 else "0", KILL_AT="3")
    assert killed.returncode != 0
    job_dir = next((tmp_path / "run" / "jobs").iterdir())
    assert not (job_dir / "summary.json").exists() and list(job_dir.glob("state*.pt"))
    done = run(then)
    assert done.returncode == 0, done.stderr[-3000:]
    _same(_results(tmp_path / "run"), ref)


def _results_of_reference(tmp_path: Path, folder: Path) -> list[tuple[list, dict]]:
    (tmp_path / "ref").mkdir()
    suite = _suite(tmp_path / "ref", folder, ["jpeg-q40"])
    run_suite(load_suite(suite), tmp_path / "ref" / "run", progress=False, log=lambda s: None)
    return _results(tmp_path / "ref" / "run")


def test_speed_options_are_validated_and_recorded(tmp_path):
    from tokbench.core import TokbenchError
    from tokbench.suite import parse_suite

    with pytest.raises(TokbenchError, match="compile"):
        parse_suite({"tokenizers": ["jpeg-q40"], "compile": "sometimes"})
    folder = make_folder_with_broken(tmp_path / "imgs", 3, set())
    vq = {"name": "llamagen-vq", "resolution": 32, "weights": str(FIXTURES / "llamagen_vq16" / "vq_ds16_c2i.pt"),
          "config": str(FIXTURES / "llamagen_vq16" / "config.json")}
    rows = {}
    for channels_last in (False, True):
        suite = parse_suite({"name": "cl", "data": [f"folder:{folder}"], "batch_size": 2, "num_workers": 0,
                             "metrics": ["psnr"], "channels_last": channels_last, "tokenizers": [vq]})
        (summary,) = run_suite(suite, tmp_path / str(channels_last), progress=False, log=lambda s: None)
        assert summary["status"] == "ok" and summary["channels_last"] is channels_last
        assert summary["compile"] is False
        rows[channels_last] = read_rows(tmp_path / str(channels_last) / "jobs" / summary["job"] / "rows.jsonl")
    # the memory format changes the kernels, not the numbers (beyond float32 rounding)
    assert [r["psnr"] for r in rows[True]] == pytest.approx([r["psnr"] for r in rows[False]], rel=1e-5)


def test_channels_last_auto_goes_to_convolutional_families_only(tmp_path):
    from tokbench.core import TokbenchError
    from tokbench.registry import find
    from tokbench.suite import parse_suite

    with pytest.raises(TokbenchError, match="channels_last"):
        parse_suite({"tokenizers": ["jpeg-q40"], "channels_last": "sometimes"})
    assert find("llamagen-vq16-c2i")[0].convolutional and find("ibq-16384")[0].convolutional
    assert not find("titok-l32")[0].convolutional and not find("siglip-large-patch16-384")[0].convolutional
    folder = make_folder_with_broken(tmp_path / "imgs", 3, set())
    vq = {"name": "llamagen-vq", "resolution": 32, "weights": str(FIXTURES / "llamagen_vq16" / "vq_ds16_c2i.pt"),
          "config": str(FIXTURES / "llamagen_vq16" / "config.json")}
    suite = parse_suite({"name": "auto", "data": [f"folder:{folder}"], "batch_size": 2, "num_workers": 0,
                         "resolution": 32, "metrics": ["psnr"], "channels_last": "auto",
                         "tokenizers": ["jpeg-q40", vq]})
    codec, model = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert codec["status"] == model["status"] == "ok"
    assert codec["channels_last"] is False and model["channels_last"] is True


def test_a_part_merged_before_a_crash_is_not_counted_again(tmp_path):
    """Killed between saving the merged state.pt and deleting the rank parts: the next merge deletes
    them without adding them twice; a part not yet merged is added once, its unsaved rows dropped."""
    from tokbench.runfolder import JobState, JobStore

    store = JobStore(tmp_path)
    add = lambda name, states: {"n": sum(s["n"] for s in states)}  # noqa: E731 - a sum like dist_reduce_fx
    store.save(store.state, JobState({0, 1}, metrics={"m": {"n": torch.tensor(2)}}, absorbed=["state.A.rank1.pt"]))
    store.rows.write_text("".join(json.dumps({"index": i}) + "\n" for i in (0, 1, 7)))  # 7: logged, never saved
    old_rows, old_state = store.part_paths("A", 1)
    store.save(old_state, JobState({0}, metrics={"m": {"n": torch.tensor(1)}}))
    old_rows.write_text(json.dumps({"index": 0}) + "\n")
    new_rows, new_state = store.part_paths("B", 1)
    store.save(new_state, JobState({4, 5}, skipped=[{"index": 5, "path": "x", "reason": "bad"}],
                                   metrics={"m": {"n": torch.tensor(1)}}))
    new_rows.write_text("".join(json.dumps({"index": i}) + "\n" for i in (4, 9)))  # 9: beyond its saved state
    merged = store.consolidate(add)
    assert merged.done == {0, 1, 4, 5} and int(merged.metrics["m"]["n"]) == 3
    assert [r["index"] for r in read_rows(store.rows)] == [0, 1, 4]
    assert merged.skipped == [{"index": 5, "path": "x", "reason": "bad"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "state.pt"]


def test_sweep_points_share_a_model_only_over_encode_options():
    from tokbench.plan import ModelCache, plan_jobs
    from tokbench.suite import parse_suite

    loads = []

    def load(entry, options):
        loads.append((entry.name, options))
        return object()

    suite = parse_suite({"dtype": "float32", "tokenizers": [
        {"name": "one-d-piece-s-256", "sweep": {"n_tokens": [1, 4, 16]}},
        {"name": "jpeg", "sweep": {"quality": [10, 90]}},
        {"name": "llamagen-vq16-c2i", "sweep": {"dtype": ["float32", "bfloat16"]}}]})
    jobs = plan_jobs(suite)
    # the planner splits each point from the families' declarations, before any model is loaded
    assert [(j.load_options, j.encode_options) for j in jobs[:3]] == [({}, {"n_tokens": n}) for n in (1, 4, 16)]
    assert [j.load_options for j in jobs[3:]] == [{"quality": 10}, {"quality": 90}, {"dtype": "float32"},
                                                  {"dtype": "bfloat16"}]
    cache = ModelCache(load)
    for job in jobs:
        cache.get(job)
    # one model for the n_tokens sweep; one per quality; a 2-value dtype sweep loads the model twice
    assert loads == [("one-d-piece-s-256", {}), ("jpeg", {"quality": 10}), ("jpeg", {"quality": 90}),
                     ("llamagen-vq16-c2i", {"dtype": "float32"}), ("llamagen-vq16-c2i", {"dtype": "bfloat16"})]


def test_more_processes_than_gpus_on_a_node_is_a_clear_error(monkeypatch):
    from tokbench.core import TokbenchError
    from tokbench.distributed import Context

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TokbenchError, match=r"more processes on this node than it has GPUs \(1\).*nproc_per_node=1"):
        Context.from_env(torch.device("cuda"))
