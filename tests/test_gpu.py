"""GPU path checks: they run where CUDA is available (`benchmarks/gpu_checks.sh` runs them on a lent GPU)
and skip elsewhere. Each compares the GPU run with the same run on the CPU or with eager execution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokbench.data import BatchLoader, open_dataset
from tokbench.runner import read_rows, run_suite
from tokbench.suite import parse_suite

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FIXTURE = Path(__file__).parent / "data" / "llamagen_vq16"


def _suite(tmp_path: Path, device: str, **extra) -> dict:
    from PIL import Image

    folder = tmp_path / "imgs"
    if not folder.is_dir():
        folder.mkdir()
        g = torch.Generator().manual_seed(0)
        for i in range(7):  # 7 images, batch 2: a last batch of one
            img = (torch.rand(3, 40 + 3 * i, 56, generator=g) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(img).save(folder / f"{i}.png")
    return {"name": "gpu", "data": [f"folder:{folder}"], "resolution": 32, "batch_size": 2, "download": False,
            "device": device, "num_workers": 1, "metrics": ["psnr", "ssim", "bpp", "codebook", "speed"],
            "tokenizers": ["jpeg-q50", {"name": "llamagen-vq16-c2i", "label": "tiny", "resolution": 32,
                                        "weights": str(FIXTURE / "vq_ds16_c2i.pt"),
                                        "config": str(FIXTURE / "config.json")}], **extra}


def _run(tmp_path: Path, name: str, device: str, **extra) -> list[dict]:
    out = tmp_path / name
    summaries = run_suite(parse_suite(_suite(tmp_path, device, **extra)), out, progress=False, log=lambda _: None)
    assert [s["status"] for s in summaries] == ["ok", "ok"], [s.get("reason") for s in summaries]
    for s in summaries:
        s["rows"] = read_rows(out / "jobs" / s["job"] / "rows.jsonl")
    return summaries


def _close(a: list[dict], b: list[dict], tol: float) -> None:
    for x, y in zip(a, b):
        for key in ("psnr", "ssim", "bits_per_pixel", "codebook_usage"):
            if key in x["results"]:
                assert x["results"][key] == pytest.approx(y["results"][key], rel=tol, abs=tol), key
        assert [r["index"] for r in x["rows"]] == [r["index"] for r in y["rows"]]


def test_a_cuda_run_equals_the_cpu_run_and_times_with_events(tmp_path):
    cpu, gpu = _run(tmp_path, "cpu", "cpu"), _run(tmp_path, "cuda", "cuda")
    _close(gpu, cpu, 1e-4)
    for s in gpu:
        assert s["device"]["device"] == "cuda" and s["device"]["gpu"]
        speed = s["results"]
        assert speed["encode_images_per_s"] > 0 and speed["decode_p50_ms"] > 0 and speed["peak_memory_mb"] > 0


def test_channels_last_and_compile_give_the_eager_numbers(tmp_path):
    eager = _run(tmp_path, "eager", "cuda")
    fast = _run(tmp_path, "fast", "cuda", channels_last=True, compile=True)
    _close(fast, eager, 1e-3)
    assert all(s["channels_last"] and s["compile"] for s in fast)


def test_bfloat16_is_recorded_and_close_to_float32(tmp_path):
    f32 = _run(tmp_path, "f32", "cuda")
    bf16 = _run(tmp_path, "bf16", "cuda", dtype="bfloat16")
    assert bf16[1]["dtype"] == "bfloat16"
    assert bf16[1]["results"]["psnr"] == pytest.approx(f32[1]["results"]["psnr"], abs=0.5)


def test_batches_are_pinned_for_non_blocking_copies(tmp_path):
    _suite(tmp_path, "cuda")
    ds = open_dataset(f"folder:{tmp_path / 'imgs'}")
    loader = BatchLoader(ds, "resize-crop", 32, batch_size=3, num_workers=1, pin_memory=True)
    try:
        batches = list(loader.batches(range(len(ds))))
    finally:
        loader.close()
    assert batches and all(b.images.is_pinned() for b in batches)
