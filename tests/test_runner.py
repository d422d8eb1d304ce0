"""End to end: `tokbench run` + `tokbench report` on a small folder, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from tokbench.cli import main as cli
from tokbench.data import open_image
from tokbench.metrics.base import BenchMetric, register_metric
from tokbench.protocols import get_protocol
from tokbench.registry import Family, register_family
from tokbench.report import load_run, write_report
from tokbench.runner import read_rows, run_suite
from tokbench.suite import load_suite, parse_suite


def make_folder(root: Path, n: int = 7, corrupt: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = 40 + 7 * i, 70 - 3 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 / w), (yy * 255 / h), np.full((h, w), 40.0 * (i % 5))], -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(img)
        if i == 2:
            im = im.convert("L")
        if i == 4:
            im = im.convert("RGBA")
        im.save(root / f"img{i:02d}.png")
    if corrupt:
        (root / "img99_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def suite_yaml(path: Path, folder: Path, extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: small
        data: ["folder:{folder}"]
        resolution: 32
        batch_size: 2
        download: false
        checkpoint_seconds: 0
        grid_images: 2
        metrics: [psnr, ssim, {{psnr: {{protocol: llamagen}}}}, bpp, codebook, speed, lpips]
        tokenizers:
          - name: jpeg
            sweep: {{quality: [20, 80]}}
          - name: webp-q50
            published: {{psnr: 30.0}}
            published_source: a number made up for this test
          - name: llamagen-vq16-c2i
        """) + extra)
    return path


def test_run_and_report_end_to_end(tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs")
    suite = suite_yaml(tmp_path / "s.yaml", folder)
    out = tmp_path / "run"
    assert cli(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "jpeg (quality=20)" in printed and "report:" in printed

    run, jobs = load_run(out)
    assert run["versions"]["torch"] and run["device"]["device"] == "cpu" and run["suite"]["name"] == "small"
    by_status = {}
    for j in jobs:
        by_status.setdefault(j["status"], []).append(j)
    assert len(by_status["ok"]) == 3
    (skip,) = by_status["skipped"]  # weights not on this machine: skipped with the fetch command
    assert "tokbench fetch llamagen-vq16-c2i" in skip["reason"]

    job = next(j for j in by_status["ok"] if j["params"] == {"quality": 20})
    assert job["images_evaluated"] == 7 and job["images_skipped"] == 1
    assert job["skipped_files"][0]["path"].endswith("img99_broken.jpg")
    assert "lpips" in job["metric_skips"]  # its backbone weights are not on this machine
    rows = read_rows(out / "jobs" / job["job"] / "rows.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]

    # the recorded PSNR of one image equals an independent recomputation from the files
    from tokbench.data import pil_to_tensor
    from tokbench.tokenizers.codecs import CodecTokenizer

    src = get_protocol("resize-crop").fn(open_image(folder / "img03.png"), 32)
    x = pil_to_tensor(src)[None]
    y = CodecTokenizer("jpeg", 20).reconstruct(x)[1]
    ref = peak_signal_noise_ratio(x[0].numpy().astype(np.float64), y[0].numpy().astype(np.float64), data_range=1)
    assert rows[3]["psnr"] == pytest.approx(ref, rel=1e-9)
    assert job["results"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]), rel=1e-9)
    assert job["results"]["bpp"] == pytest.approx(sum(r["bits"] for r in rows) / (7 * 32 * 32))

    report = out / "report"
    for name in ("report.md", "summary.csv", "summary.tex", "index.html", "rd_psnr.png", "grid.png"):
        assert (report / name).is_file(), name
    md = (report / "report.md").read_text()
    webp = next(j for j in by_status["ok"] if j["label"] == "webp-q50")
    measured = webp["results"]["psnr"]
    assert "## Published vs measured" in md
    assert f"| webp-q50 | psnr | 30.0 | {measured:.4g} | {measured - 30:+.4g} | a number made up" in md
    assert f"{measured:.2f} [30.00]" in md  # beside the measured value in the main table
    assert "resize-crop" in md and "LlamaGen" in md and "tokbench fetch llamagen-vq16-c2i" in md
    table = pd.read_csv(report / "summary.csv")
    assert len(table) == 3 and {"psnr", "ssim", "psnr_llamagen", "bpp", "encode_images_per_s"} <= set(table.columns)
    parquet = pd.read_parquet(out / "rows.parquet")
    assert len(parquet) == 21 and parquet["job"].nunique() == 3

    # the report command rebuilds the same tables from the folder alone
    (report / "summary.csv").unlink()
    assert cli(["report", str(out)]) == 0
    assert pd.read_csv(report / "summary.csv").equals(table)

    # re-running the same command does no work and changes nothing
    assert cli(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    assert "already done" in capsys.readouterr().out


def make_folder_with_broken(root: Path, n: int, broken: set[int]) -> Path:
    """n files in name order; those at the positions in `broken` are unreadable."""
    good = make_folder(root / "good", n=n - len(broken), corrupt=False)
    for pos, src in zip([p for p in range(n) if p not in broken], sorted(good.iterdir())):
        src.rename(root / f"img{pos:02d}.png")
    for pos in broken:
        (root / f"img{pos:02d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    good.rmdir()
    return root


KILLER = textwrap.dedent("""\
    import os, signal, sys
    from tokbench.registry import Family, register_family
    from tokbench.runfolder import JobStore
    from tokbench.tokenizers.codecs import CodecTokenizer

    HOW, AT = os.environ.get("KILL_HOW", ""), int(os.environ.get("KILL_AT", "0"))
    calls = {"encode": 0, "save": 0}

    def maybe_die(where):
        calls[where] += 1
        if HOW.startswith(where) and calls[where] == AT:
            if HOW.endswith("ctrl-c"):
                os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C
            else:
                os._exit(137)  # as abrupt as SIGKILL: no cleanup, no flush

    class Killer(CodecTokenizer):
        def encode(self, images, **kw):
            maybe_die("encode")
            return super().encode(images, **kw)

    save_state = JobStore.save

    def dying_save(*args, **kwargs):  # killed after a batch's rows are logged, before its state is saved
        maybe_die("save")
        return save_state(*args, **kwargs)

    JobStore.save = dying_save
    register_family(Family("killer-jpeg", build=lambda b: Killer("jpeg", 40, name="killer-jpeg")))
    from tokbench.cli import main
    sys.exit(main(sys.argv[1:]))
    """)

# 12 files, unreadable at positions 1 and 6, batches of 2: [0 1] [2 3] [4 5] [6 7] [8 9] [10 11]
BROKEN = {1, 6}
RESUME_METRICS = ["psnr", "ssim", "bpp"]


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory):
    """An uninterrupted run of the same codec (in this process) that resumed runs must reproduce."""
    root = tmp_path_factory.mktemp("resume_ref")
    folder = make_folder_with_broken(root / "imgs", 12, BROKEN)
    suite = parse_suite({"name": "ref", "data": [f"folder:{folder}"], "resolution": 32, "batch_size": 2,
                         "metrics": RESUME_METRICS, "tokenizers": ["jpeg-q40"]})
    (summary,) = run_suite(suite, root / "run", progress=False, log=lambda s: None)
    return read_rows(root / "run" / "jobs" / summary["job"] / "rows.jsonl"), summary


@pytest.mark.parametrize("kills, checkpoint_seconds", [
    ([("encode-ctrl-c", 4)], 0),  # Ctrl-C: stops at the end of the batch with its state saved
    ([("save-exit", 3)], 0),  # 3rd batch's rows logged, its state not saved: they must be dropped
    ([("encode-exit", 5)], 3600),  # rows of 3 batches logged and no state saved at all
    # kills in a row: after rows of [2 3]; in encode of [4 5] (call 1 is the warm-up); Ctrl-C in [6 7];
    # after the rows of [10 11] (the resumed run's 2nd save)
    ([("save-exit", 2), ("encode-exit", 3), ("encode-ctrl-c", 3), ("save-exit", 2)], 0),
], ids=["ctrl-c", "kill-after-rows-logged", "no-state-saved", "four-kills"])
def test_resume_after_kills_gives_the_rows_and_numbers_of_an_uninterrupted_run(
        tmp_path, resume_reference, kills, checkpoint_seconds):
    folder = make_folder_with_broken(tmp_path / "imgs", 12, BROKEN)
    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent(f"""\
        name: resume
        data: ["folder:{folder}"]
        resolution: 32
        batch_size: 2
        checkpoint_seconds: {checkpoint_seconds}
        num_workers: 0
        metrics: {RESUME_METRICS}
        tokenizers: [killer-jpeg]
        """))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cmd = [sys.executable, str(script), "run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]
    for how, at in kills:
        done = subprocess.run(cmd, env={**os.environ, "KILL_AT": str(at), "KILL_HOW": how}, capture_output=True,
                              text=True, timeout=300)
        if how.endswith("exit"):
            assert done.returncode == 137, done.stderr
        else:  # stops at the end of the batch, with its state saved, and says how to go on
            assert done.returncode == 130, done.stderr
            assert "interrupted; re-run the same command to resume" in done.stderr
        job_dir = next((tmp_path / "run" / "jobs").iterdir())
        assert not (job_dir / "summary.json").exists()
        assert 0 < len(read_rows(job_dir / "rows.jsonl"))
        assert (job_dir / "state.pt").is_file() == (checkpoint_seconds == 0)
    done = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("resuming" in done.stdout) == (checkpoint_seconds == 0)
    resumed = read_rows(job_dir / "rows.jsonl")
    summary = json.loads((job_dir / "summary.json").read_text())

    reference, ref_summary = resume_reference
    assert [r["index"] for r in resumed] == [p for p in range(12) if p not in BROKEN]  # each once, in order
    assert resumed == reference
    for key in ("psnr", "psnr_std", "ssim", "ssim_std", "bpp", "bits_per_image"):
        assert summary["results"][key] == pytest.approx(ref_summary["results"][key], rel=1e-12), key
    assert summary["images_evaluated"] == 10
    assert sorted(f["index"] for f in summary["skipped_files"]) == sorted(BROKEN)
    assert not (job_dir / "state.pt").exists()


def test_suite_validation_messages(tmp_path):
    from tokbench.core import TokbenchError

    with pytest.raises(TokbenchError, match=r"batchsize: Extra inputs are not permitted \(got 3\)"):
        parse_suite({"tokenizers": ["jpeg"], "batchsize": 3})
    with pytest.raises(TokbenchError, match="tokenizers: Field required"):
        parse_suite({"data": ["samples"]})
    with pytest.raises(TokbenchError, match=r"tokenizers\[0\].sweep.quality: Input should be a valid list"):
        parse_suite({"tokenizers": [{"name": "jpeg", "sweep": {"quality": 5}}]})
    with pytest.raises(TokbenchError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml")


def test_missing_data_set_fails_the_job_not_the_run(tmp_path):
    suite = parse_suite({"name": "x", "data": ["imagenet-val:${TOKBENCH_NO_SUCH_VAR}"], "tokenizers": ["jpeg-q50"],
                         "metrics": ["psnr"]})
    (summary,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert summary["status"] == "failed" and "unset" in summary["reason"]


def test_shipped_suites_parse():
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    files = sorted(root.rglob("*.yaml"))
    assert any(f.name == "quick.yaml" for f in files)
    for f in files:
        if f.parent.name == "generation":  # `tokbench gen-suite` files (tests/test_gen_eval.py)
            continue
        s = load_suite(f)
        assert s.tokenizers and s.metrics, f


def test_eval_resolution_resizes_before_metrics_but_not_bpp(tmp_path):
    import torch

    from tokbench.data import pil_to_tensor
    from tokbench.tokenizers.codecs import CodecTokenizer

    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = parse_suite({"name": "ev", "data": [f"folder:{folder}"], "resolution": 32, "eval_resolution": 24,
                         "metrics": ["psnr", "bpp"], "tokenizers": ["jpeg-q30"]})
    (summary,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert summary["eval_resolution"] == 24
    rows = read_rows(tmp_path / "run" / "jobs" / summary["job"] / "rows.jsonl")
    x = pil_to_tensor(get_protocol("resize-crop").fn(open_image(folder / "img01.png"), 32))[None]
    tokens, y = CodecTokenizer("jpeg", 30).reconstruct(x)
    bic = lambda t: torch.nn.functional.interpolate(t, size=(24, 24), mode="bicubic", align_corners=False)  # noqa: E731
    xe, ye = bic(x).double(), bic(y).clamp(0, 1).double()
    ref = 10 * torch.log10(1 / (xe - ye).pow(2).mean())
    assert rows[1]["psnr"] == pytest.approx(float(ref), rel=1e-6)
    assert rows[1]["bpp"] == pytest.approx(float(tokens.bits_per_image[0]) / (32 * 32))


FIXTURES = Path(__file__).parent / "data"


def test_neural_tokenizers_through_the_runner(tmp_path):
    """Golden-fixture checkpoints run through suites as users run released ones: ids, rate, sweeps."""
    import math

    folder = make_folder(tmp_path / "imgs", n=3, corrupt=False)
    suite = parse_suite({
        "name": "neural", "data": [f"folder:{folder}"], "batch_size": 2,
        "metrics": ["psnr", "bpp", "codebook", "speed"],
        "tokenizers": [
            {"name": "llamagen-vq", "label": "vq16-fixture", "resolution": 96,
             "weights": str(FIXTURES / "llamagen_vq16" / "vq_ds16_c2i.pt"),
             "config": str(FIXTURES / "llamagen_vq16" / "config.json")},
            {"name": "one-d-piece", "label": "odp-fixture", "resolution": 64, "sweep": {"n_tokens": [1, 4]},
             "weights": str(FIXTURES / "one_d_piece" / "pytorch_model.bin"),
             "config": str(FIXTURES / "one_d_piece" / "config.json")},
        ],
    })  # fmt: skip
    summaries = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert [s["status"] for s in summaries] == ["ok", "ok", "ok"], [s.get("reason") for s in summaries]
    vq, odp1, odp4 = (s["results"] for s in summaries)
    # 96 px / 16 = 6x6 ids from a 1024-code book: 36 * 10 bits over 96*96 pixels
    assert vq["tokens_per_image"] == 36 and vq["bpp"] == pytest.approx(36 * 10 / 96**2)
    assert 0 < vq["codebook_usage"] <= 1 and vq["code_entropy"] <= math.log2(1024)
    k = summaries[1]["spec"]["codebook_size"]
    assert odp1["tokens_per_image"] == 1 and odp4["tokens_per_image"] == 4
    assert odp4["bpp"] == pytest.approx(4 * math.log2(k) / 64**2)
    assert summaries[1]["spec"]["variable_length"] and summaries[1]["params"] == {"n_tokens": 1}
    report = write_report(tmp_path / "run")
    assert (report / "tokens_psnr.png").is_file()  # quality against tokens, for the n_tokens sweep


def test_glob_entries_stand_for_the_variants_present(tmp_path, monkeypatch):
    from tokbench.runner import plan_jobs

    weights = tmp_path / "w"
    for name, file in (("janus-pro-1b-vq", "pytorch_model.bin"), ("titok-l32", "model.safetensors")):
        (weights / name).mkdir(parents=True)
        (weights / name / file).write_bytes(b"stand-in")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(weights))
    suite = parse_suite({"tokenizers": ["jpeg-q50", "titok-l32", {"name": "*", "options": {"dtype": "bfloat16"}},
                                       {"name": "janus*"}]})
    names = [(j.entry.name, j.entry.options) for j in plan_jobs(suite)]
    # titok-l32 is named explicitly; the glob adds only janus-pro-1b-vq, once, with the glob's options
    assert names == [("jpeg-q50", {}), ("titok-l32", {}), ("janus-pro-1b-vq", {"dtype": "bfloat16"})]


def test_a_run_from_another_environment_is_moved_aside_never_deleted(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = parse_suite({"name": "env", "data": [f"folder:{folder}"], "resolution": 32, "metrics": ["psnr"],
                         "tokenizers": ["jpeg-q40"]})
    out = tmp_path / "run"
    logs: list[str] = []
    run_suite(suite, out, progress=False, log=logs.append)
    record = json.loads((out / "run.json").read_text())
    record["device"]["torch_threads"] += 7  # timings only: still resumed
    record["device"]["cpu_count"] = 1000
    record["versions"]["python"] = "2.7.18"
    (out / "run.json").write_text(json.dumps(record))
    run_suite(suite, out, progress=False, log=logs.append)
    assert "already done" in logs[-1] and not list(tmp_path.glob("run.*"))

    record = json.loads((out / "run.json").read_text())
    record["versions"]["torch"] = "0.0-elsewhere"
    record["created"] = "2024-01-02T03:04:05+0000"
    (out / "run.json").write_text(json.dumps(record))
    (marker := next((out / "jobs").iterdir()) / "from-elsewhere").write_text("x")
    logs.clear()
    (summary,) = run_suite(suite, out, progress=False, log=logs.append)
    kept = tmp_path / "run.20240102-030405"
    assert f"moved the previous run to {kept}" in logs[0] and "torch 0.0-elsewhere -> " in logs[0]
    assert summary["status"] == "ok" and "already done" not in logs[-1]
    assert (kept / "jobs" / marker.parent.name / "from-elsewhere").read_text() == "x"  # kept, whole
    assert (kept / "jobs" / marker.parent.name / "summary.json").is_file() and not marker.exists()
    assert json.loads((kept / "run.json").read_text())["versions"]["torch"] == "0.0-elsewhere"
    assert json.loads((out / "run.json").read_text())["versions"]["torch"] != "0.0-elsewhere"

    # --fresh measures again on the same machine, also keeping the previous run
    logs.clear()
    assert cli(["run", str(suite_file(tmp_path, suite)), "--out", str(out), "--quiet", "--fresh"]) == 0
    assert len(list(tmp_path.glob("run.*"))) == 2


def suite_file(tmp_path: Path, suite) -> Path:
    import yaml

    path = tmp_path / f"{suite.name}.yaml"
    d = suite.as_dict()
    d.pop("path")
    d["tokenizers"] = [t.name for t in suite.tokenizers]
    path.write_text(yaml.safe_dump(d))
    return path


def _one_job(tmp_path, **suite_fields) -> dict:
    suite = parse_suite({"name": "one", "resolution": 32, "batch_size": 2, "metrics": ["psnr"],
                         "tokenizers": ["jpeg-q40"], **suite_fields})
    (summary,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    return summary


def test_a_folder_of_unreadable_images_fails_the_job(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"x{i}.png").write_bytes(b"not a png")
    summary = _one_job(tmp_path, data=[f"folder:{folder}"])
    assert summary["status"] == "failed"
    assert "no image of folder:" in summary["reason"] and "3 unreadable" in summary["reason"]
    assert not (tmp_path / "run" / "jobs" / summary["job"] / "summary.json").exists()  # a re-run retries it


_CALLS = {"n": 0}


@register_metric("fails-on-second-batch")
class _FailsOnSecondBatch(BenchMetric):
    name = "fails_on_second_batch"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.add_state("n", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch):
        if int(self.n) >= 2:
            raise ValueError("a bug on the second batch")
        self.n += len(batch.index)
        self.last_rows = {}

    def compute(self):
        return {"fails_on_second_batch": float(self.n)}


def test_a_metric_that_raises_mid_run_fails_the_job(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=5, corrupt=False)
    summary = _one_job(tmp_path, data=[f"folder:{folder}"], metrics=["psnr", "fails-on-second-batch"])
    assert summary["status"] == "failed"
    assert "metric fails-on-second-batch failed on images [2, 3]: ValueError: a bug" in summary["reason"]
    # a metric that cannot apply for want of its network is a counted skip, not a failure
    summary = _one_job(tmp_path, data=[f"folder:{folder}"], metrics=["psnr", "lpips"])
    assert summary["status"] == "ok" and "lpips" in summary["metric_skips"]


@pytest.mark.parametrize(("fields", "where", "name"), [
    ({"protocol": "resize-crpo"}, "protocol", "resize-crpo"),
    ({"tokenizers": [{"name": "jpeg-q40", "protocol": "nope"}]}, "tokenizers[0].protocol", "nope"),
])
def test_an_unknown_protocol_stops_the_run_before_any_job(tmp_path, fields, where, name):
    from tokbench.suite import DataEntry, Suite, TokenizerEntry
    from tokbench.suite_check import SuiteInvalid

    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    with pytest.raises(SuiteInvalid) as parsed:  # a suite read from YAML or a dict: parse_suite refuses it
        _one_job(tmp_path, data=[f"folder:{folder}"], **fields)
    # a Suite built in Python has not been through parse_suite: the runner refuses it the same way
    entry = TokenizerEntry(**fields["tokenizers"][0]) if "tokenizers" in fields else TokenizerEntry("jpeg-q40")
    suite = Suite(name="py", tokenizers=[entry], data=[DataEntry(f"folder:{folder}")], metrics=[("psnr", {})],
                  resolution=32, batch_size=2, protocol=fields.get("protocol"))
    with pytest.raises(SuiteInvalid) as built:
        run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    for e in (parsed, built):
        ((at, value, message),) = e.value.problems
        assert (at, value) == (where, name)
        assert message.startswith("unknown preprocessing protocol; known: ") and "resize-crop" in message
    assert not (tmp_path / "run").exists()
    # an empty protocol in a Python-built suite is no protocol (the tokenizer's own), as before
    suite.protocol, suite.tokenizers = "", [TokenizerEntry("jpeg-q40", protocol="")]
    (summary,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert summary["status"] == "ok"


class _Takes:
    def __init__(self, quality: int = 1) -> None:
        self.quality = quality


def _genuine(b):
    return _Takes(**vars(b.options))


def _buggy(b):
    return _Takes(quality=int(None))  # a bug: TypeError from inside the builder


register_family(Family("options-test-genuine", build=_genuine))
register_family(Family("options-test-buggy", build=_buggy))


def test_only_a_genuine_options_mismatch_is_bad_options(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    genuine = _one_job(tmp_path, data=[f"folder:{folder}"],
                       tokenizers=[{"name": "options-test-genuine", "options": {"qualty": 3}}])
    assert genuine["status"] == "failed" and "bad options for options-test-genuine" in genuine["reason"]
    assert "qualty" in genuine["reason"]
    buggy = _one_job(tmp_path, data=[f"folder:{folder}"],
                     tokenizers=[{"name": "options-test-buggy", "options": {"quality": 3}}])
    assert buggy["status"] == "failed" and "bad options" not in buggy["reason"]
    assert "TypeError while building options-test-buggy" in buggy["reason"] and "int(None)" in buggy["reason"]


def test_sweep_points_share_the_loading_workers_and_give_the_same_numbers(tmp_path, monkeypatch):
    # one set of persistent workers for the jpeg sweep (same images, size and batch), a new one for the
    # job at another size; the numbers equal a run that loads in the main process
    import tokbench.data as data

    folder = make_folder(tmp_path / "imgs")
    built = []
    real_init = data.BatchLoader.__init__

    def counting_init(self, *args, **kwargs):
        built.append(args[2])  # the size
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(data.BatchLoader, "__init__", counting_init)
    base = {"name": "w", "data": [f"folder:{folder}"], "resolution": 32, "batch_size": 2, "download": False,
            "metrics": ["psnr", "ssim", "bpp"],
            "tokenizers": [{"name": "jpeg", "sweep": {"quality": [20, 50, 80]}},
                           {"name": "webp-q50", "resolution": 48}]}
    with_workers = run_suite(parse_suite({**base, "num_workers": 1}), tmp_path / "a", progress=False,
                             log=lambda _: None)
    assert built == [32, 48]
    in_main = run_suite(parse_suite({**base, "num_workers": 0}), tmp_path / "b", progress=False, log=lambda _: None)
    assert [s["status"] for s in with_workers] == ["ok"] * 4
    assert [s["results"] for s in with_workers] == [s["results"] for s in in_main]


def test_a_suite_dtype_goes_to_the_tokenizers_that_take_one_and_is_recorded(tmp_path):
    # `dtype: bfloat16` used to fail every codec job ("unknown codec settings ['dtype']")
    fixture = Path(__file__).parent / "data" / "llamagen_vq16"
    folder = make_folder(tmp_path / "imgs", n=3, corrupt=False)
    suite = parse_suite({"name": "bf16", "data": [f"folder:{folder}"], "resolution": 32, "batch_size": 2,
                         "download": False, "num_workers": 0, "dtype": "bfloat16", "metrics": ["psnr"],
                         "tokenizers": ["jpeg-q50", {"name": "llamagen-vq16-c2i", "resolution": 32,
                                                     "weights": str(fixture / "vq_ds16_c2i.pt"),
                                                     "config": str(fixture / "config.json")}]})
    codec, model = run_suite(suite, tmp_path / "run", progress=False, log=lambda _: None)
    assert codec["status"] == model["status"] == "ok", (codec.get("reason"), model.get("reason"))
    assert model["dtype"] == "bfloat16" and codec["dtype"] != "bfloat16"
