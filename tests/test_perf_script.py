"""benchmarks/perf.py runs end to end at tiny sizes, writes its tables, and its baselines compute the
same numbers as the harness (speed is measured by the script, never asserted here)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tokbench.core import TokbenchError

ROOT = Path(__file__).resolve().parent.parent
TINY_LLAMAGEN = ROOT / "tests" / "data" / "llamagen_vq16" / "config.json"


@pytest.fixture(scope="module")
def perf():
    spec = importlib.util.spec_from_file_location("tokbench_perf_script", ROOT / "benchmarks" / "perf.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(perf, tmp_path_factory):
    out = tmp_path_factory.mktemp("perf") / "out"
    argv = ["--cases", "jpeg-q50:images=4,resolution=32",
            f"llamagen-vq16-c2i:images=4,resolution=32,config={TINY_LLAMAGEN}",
            "--batch-size", "2", "--reps", "1", "--scaling-procs", "2", "--scaling-images", "6", "--num-workers", "0", "--tokenizers", "jpeg-q50",
            "--batch-sizes", "1", "--warmup", "1", "--iters", "1", "--device", "cpu", "--out", str(out)]
    assert perf.main(argv) == 0
    return out, perf


def test_outputs_have_the_expected_columns(run):
    out, perf = run
    df = pd.read_csv(out / "perf.csv")
    for col in ("measure", "compared", "tokenizer", "weights", "resolution", "batch", "timed_images", "reps",
                "harness_ms_per_image", "baseline_ms_per_image", "ratio_median", "ratio_min", "ratio_max",
                "target", "meets_target", "status"):
        assert col in df.columns, col
    timed = df[df["measure"] != "scaling"]
    assert list(timed["measure"]) == ["overhead", "png-pipeline"] * 2
    assert list(timed["tokenizer"]) == ["jpeg-q50"] * 2 + ["llamagen-vq16-c2i"] * 2
    assert (timed["timed_images"] == 2).all() and (timed["resolution"] == 32).all()
    assert list(timed["weights"]) == ["codec"] * 2 + ["random"] * 2
    assert (timed["ratio_min"] <= timed["ratio_median"]).all() and (timed["ratio_median"] <= timed["ratio_max"]).all()
    (scaling,) = df[df["measure"] == "scaling"].to_dict("records")
    assert scaling["images"] == 6  # its own image count, not the case's
    if perf.distributed_runner_reason() is not None:
        assert scaling["status"] == "not available: the runner is single-process"
        assert math.isnan(scaling["ratio_median"])  # nothing is made up for it
    tp = pd.read_csv(out / "throughput.csv")
    assert list(tp[["tokenizer", "dtype", "batch", "resolution", "status"]].iloc[0]) == ["jpeg-q50", "uint8", 1, 256,
                                                                                        "ok"]
    assert (tp["encode_images_per_s"] > 0).all() and (tp["decode_images_per_s"] > 0).all()
    md = (out / "perf.md").read_text()
    assert "| overhead | harness / bare loop | jpeg-q50 | codec | 32 | 2 | 2 | 1 |" in md
    assert "## Encode / decode throughput" in md and "| jpeg-q50 | uint8 | contiguous | 1 | 256 | released |" in md
    assert (out / "perf.png").stat().st_size > 1000
    env = json.loads((out / "environment.json").read_text())
    assert env["command"].startswith("python benchmarks/perf.py --cases jpeg-q50") and env["device"] == "cpu"


def test_png_pipeline_computes_the_harness_numbers(run):
    out, _ = run
    rows = pd.read_csv(out / "perf.csv").set_index(["measure", "tokenizer"])
    jpeg = rows.loc[("png-pipeline", "jpeg-q50")]
    # A JPEG decodes to uint8 already: the PNG round trip is exact, so every number is the same.
    assert jpeg["psnr_png"] == pytest.approx(jpeg["psnr_harness"], rel=1e-9)
    assert jpeg["ssim_png"] == pytest.approx(jpeg["ssim_harness"], rel=1e-9)
    assert jpeg["bpp_png"] == jpeg["bpp_harness"] > 0
    vq = rows.loc[("png-pipeline", "llamagen-vq16-c2i")]
    # Same tokens in both pipelines: rate and codebook numbers are identical.
    assert vq["bpp_png"] == vq["bpp_harness"] and vq["codebook_usage_png"] == vq["codebook_usage_harness"]
    # Writing the reconstruction as uint8 moves each pixel by at most d = 0.5/255, so each image's RMS
    # error moves by at most d (triangle inequality) and its PSNR by at most -20 log10(1 - d / rms). The
    # largest per-image PSNR is at most mean + std * sqrt(n) (population std over n images), which
    # bounds rms from below.
    n, d = 4, 0.5 / 255
    rms_min = 10 ** (-(vq["psnr_harness"] + vq["psnr_std_harness"] * math.sqrt(n)) / 20)
    bound = -20 * math.log10(1 - d / rms_min)
    assert 0 < abs(vq["psnr_png"] - vq["psnr_harness"]) <= bound


def test_uint8_quantisation_is_llamagens(perf):
    x = torch.tensor([[[[0.0, 1.0, 0.5 / 255, 1.49 / 255, 0.999]]]]).expand(1, 3, 1, 5)
    s = 2 * x - 1  # LlamaGen's model output range
    expected = torch.clamp(127.5 * s + 128.0, 0, 255).to(torch.uint8)
    assert torch.equal(perf.quantise_uint8(x), expected)
    assert expected[0, 0, 0].tolist() == [0, 255, 1, 1, 255]


def test_scaling_row_runs_torchrun_only_when_the_runner_is_distributed(perf, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "runner.py").write_text("def run_suite(): pass\n")
    assert perf.distributed_runner_reason(plain) == "not available: the runner is single-process"
    dist = tmp_path / "dist"
    (dist / "run").mkdir(parents=True)
    (dist / "run" / "ranks.py").write_text("torch.distributed.init_process_group('gloo')\n")
    assert perf.distributed_runner_reason(dist) is None
    cmd = perf.torchrun_command(2, Path("s.yaml"), Path("o"), 10)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:] == ["tokbench", "run", "s.yaml", "--out", "o", "--limit", "10", "--quiet"]


def test_bad_cases_are_clear_errors(perf, tmp_path, capsys):
    with pytest.raises(TokbenchError, match="bad case option 'imgs=3'"):
        perf.Case.parse("jpeg-q50:imgs=3", random_weights=True)
    assert perf.main(["--cases", "jpeg-q50:images=3", "--batch-size", "2", "--skip", "throughput",
                      "--out", str(tmp_path)]) == 2
    assert "images=3 leaves nothing to time" in capsys.readouterr().err


def test_throughput_rows_per_memory_format_for_modules_only(perf):
    rows = perf.throughput_rows(["jpeg-q50", "llamagen-vq16-c2i"], [1], ["float32"], ["32"], torch.device("cpu"),
                                0, 1, True, 32, log=lambda _: None, memory_formats=("contiguous", "channels_last"))
    assert [(r["tokenizer"], r["memory_format"], r["status"]) for r in rows] == [
        ("jpeg-q50", "contiguous", "ok"), ("llamagen-vq16-c2i", "contiguous", "ok"),
        ("llamagen-vq16-c2i", "channels_last", "ok")]
