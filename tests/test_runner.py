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
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from tokbench.cli import main as cli
from tokbench.data import open_image
from tokbench.protocols import get_protocol
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
        metrics: [psnr, ssim, {{psnr: {{protocol: llamagen}}}}, bpp, codebook, speed, lpips, no-such-metric]
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
    assert "unknown metric" in job["metric_skips"]["no-such-metric"]
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


KILLER = textwrap.dedent("""\
    import os, signal, sys
    from tokbench.registry import Family, register_family
    from tokbench.tokenizers.codecs import CodecTokenizer

    class Killer(CodecTokenizer):
        calls = 0
        def encode(self, images, **kw):
            Killer.calls += 1
            if Killer.calls == int(os.environ.get("KILL_AT", "0")):
                if os.environ.get("KILL_HOW") == "ctrl-c":
                    os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C
                else:
                    os._exit(137)  # as abrupt as SIGKILL: no cleanup, no flush
            return super().encode(images, **kw)

    register_family(Family("killer-jpeg", build=lambda **k: Killer("jpeg", 40, name="killer-jpeg")))
    from tokbench.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_resume_after_kill_gives_the_same_rows(tmp_path, how):
    folder = make_folder(tmp_path / "imgs", n=9, corrupt=True)
    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent(f"""\
        name: resume
        data: ["folder:{folder}"]
        resolution: 32
        batch_size: 2
        checkpoint_seconds: 0
        metrics: [psnr, ssim, bpp, speed]
        tokenizers: [killer-jpeg]
        """))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "KILL_AT": "4", "KILL_HOW": how}  # warm-up + 3 batches: stops mid data set
    cmd = [sys.executable, str(script), "run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if how == "kill":
        assert first.returncode == 137, first.stderr
    else:  # stops at the end of the batch, with its state saved, and says how to go on
        assert first.returncode == 130, first.stderr
        assert "interrupted; re-run the same command to resume" in first.stderr
    job_dir = next((tmp_path / "run" / "jobs").iterdir())
    assert (job_dir / "state.pt").is_file() and not (job_dir / "summary.json").exists()
    partial = read_rows(job_dir / "rows.jsonl")
    assert 0 < len(partial) < 9

    env["KILL_AT"] = "0"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout
    resumed = read_rows(job_dir / "rows.jsonl")
    summary = json.loads((job_dir / "summary.json").read_text())

    clean = subprocess.run([*cmd[:-3], "--out", str(tmp_path / "clean"), "--quiet"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    clean_dir = next((tmp_path / "clean" / "jobs").iterdir())
    reference = read_rows(clean_dir / "rows.jsonl")
    ref_summary = json.loads((clean_dir / "summary.json").read_text())

    assert [r["index"] for r in resumed] == sorted({r["index"] for r in resumed})  # no duplicates
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(reference)
    for key in ("psnr", "ssim", "bpp", "bits_per_image"):
        assert summary["results"][key] == pytest.approx(ref_summary["results"][key], rel=1e-12)
    assert summary["images_skipped"] == ref_summary["images_skipped"] == 1
    assert not (job_dir / "state.pt").exists()


def test_suite_validation_messages(tmp_path):
    from tokbench.core import TokbenchError

    with pytest.raises(TokbenchError, match="unknown suite keys"):
        parse_suite({"tokenizers": ["jpeg"], "batchsize": 3})
    with pytest.raises(TokbenchError, match="lists no tokenizers"):
        parse_suite({"data": ["samples"]})
    with pytest.raises(TokbenchError, match="sweep 'quality' must be a non-empty list"):
        parse_suite({"tokenizers": [{"name": "jpeg", "sweep": {"quality": 5}}]})
    with pytest.raises(TokbenchError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml")


def test_missing_data_set_is_a_skip_not_a_crash(tmp_path):
    suite = parse_suite({"name": "x", "data": ["imagenet-val:${TOKBENCH_NO_SUCH_VAR}"], "tokenizers": ["jpeg-q50"],
                         "metrics": ["psnr"]})
    (summary,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert summary["status"] == "skipped" and "unset" in summary["reason"]


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


def test_a_run_from_another_environment_is_measured_again_not_resumed(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = parse_suite({"name": "env", "data": [f"folder:{folder}"], "resolution": 32, "metrics": ["psnr"],
                         "tokenizers": ["jpeg-q40"]})
    out = tmp_path / "run"
    logs: list[str] = []
    run_suite(suite, out, progress=False, log=logs.append)
    run_suite(suite, out, progress=False, log=logs.append)
    assert "already done" in logs[-1]  # same machine: resumed
    record = json.loads((out / "run.json").read_text())
    record["versions"]["torch"] = "0.0-elsewhere"
    (out / "run.json").write_text(json.dumps(record))
    (marker := next((out / "jobs").iterdir()) / "from-elsewhere").write_text("x")
    logs.clear()
    (summary,) = run_suite(suite, out, progress=False, log=logs.append)
    assert "measuring again here" in logs[0] and summary["status"] == "ok" and "already done" not in logs[-1]
    assert not marker.exists()
    assert json.loads((out / "run.json").read_text())["versions"]["torch"] != "0.0-elsewhere"
