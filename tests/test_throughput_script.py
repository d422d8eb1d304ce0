"""The performance script runs and writes its tables (it measures speed; no timing is asserted)."""

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"


def test_throughput_script_writes_rows_and_skips_missing_weights(tmp_path):
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tp"
    assert mod.main(["--tokenizers", "jpeg-q50", "llamagen-vq16-c2i", "--batch-sizes", "1", "2",
                     "--warmup", "1", "--iters", "1", "--device", "cpu", "--out", str(out)]) == 0
    df = pd.read_csv(out / "throughput.csv")
    ok = df[df["status"] == "ok"]
    assert list(ok["batch"]) == [1, 2] and (ok["encode_images_per_s"] > 0).all()
    assert (ok["tokens_per_image"] > 0).all()
    (skipped,) = df[df["tokenizer"] == "llamagen-vq16-c2i"]["status"]
    assert skipped.startswith("skipped: weights for 'llamagen-vq16-c2i' are not available")
    assert "| jpeg-q50 | uint8 | contiguous | 1 | 256 |" in (out / "throughput.md").read_text()
