"""Report values are formatted by their unit: every column the main table can show, rendered."""

from __future__ import annotations

import pandas as pd
import pytest

from tokbench.report import MAIN_COLUMNS, main_table, markdown_table, summary_frame

# Each metric's unit from its own definition (metrics/*.py docstrings and compute()), with the text the
# report must print for a value in that unit. Written out here, independent of report.py's tables.
EXPECTED = {
    "tokens_per_image": (256.0, "256"),
    "bpp": (0.0390625, "0.0391"),
    "psnr": (31.23456, "31.23"),
    "ssim": (0.912345, "0.9123"),
    "ms_ssim": (0.97, "0.9700"),
    "lpips": (0.1234, "0.1234"),
    "lpips_vgg": (0.2, "0.2000"),
    "rfid": (2.1894, "2.189"),
    "rfid_torch_fidelity": (0.94, "0.940"),
    "rfid_pytorch_fid": (1.5, "1.500"),
    "psnr_llamagen": (24.5, "24.50"),
    "ssim_llamagen": (0.75, "0.7500"),
    "semantic_similarity": (0.8765, "0.8765"),
    "zeroshot_top1": (75.0, "75.00%"),  # zero-shot reports percent: 75 % is not 7500 %
    "zeroshot_top1_recon": (62.5, "62.50%"),
    "clip_score": (31.4159, "31.42"),
    "codebook_usage": (0.5, "50.0%"),  # a fraction of the codebook
    "code_perplexity": (812.345, "812.35"),
    "encode_images_per_s": (0.0345, "0.0345"),
    "decode_images_per_s": (1234.5, "1234"),
    "peak_memory_mb": (2048.4, "2048"),
}


def _job(results: dict, published: dict | None = None) -> dict:
    return {"job": "j1", "status": "ok", "label": "tok", "params": {}, "data": {"name": "samples"},
            "spec": {"family": "llamagen-vq"}, "resolution": 256, "protocol": "resize-crop", "results": results,
            "published": published or {}}


def test_every_main_column_has_an_expected_rendering():
    assert {k for k, _, _ in MAIN_COLUMNS} == set(EXPECTED)


def test_values_render_by_unit_in_the_main_table_and_markdown():
    jobs = [_job({k: v for k, (v, _) in EXPECTED.items()}, published={"zeroshot_top1": 80.0, "psnr": 30.0})]
    table = main_table(summary_frame(jobs), jobs)
    headers = {k: h for k, h, _ in MAIN_COLUMNS}
    for key, (_, text) in EXPECTED.items():
        cell = table.iloc[0][headers[key]]
        expected = {"zeroshot_top1": f"{text} [80.00%]", "psnr": f"{text} [30.00]"}.get(key, text)
        assert cell.replace("**", "") == expected, key
    md = markdown_table(table)
    assert "75.00%" in md and "7500.00%" not in md


@pytest.mark.parametrize("value, text", [(0.0, "0"), (0.5, "0.500"), (12.345, "12.3"), (99.94, "99.9"),
                                         (100.4, "100"), (0.000123, "0.000123")])
def test_rates_keep_three_significant_digits(value, text):
    from tokbench.report import format_value

    assert format_value(value, "per second") == text
    assert format_value(float("nan"), "per second") == "" and format_value(None, "dB") == ""


def test_summary_frame_keeps_raw_numbers():
    df = summary_frame([_job({"zeroshot_top1": 75.0})])
    assert isinstance(df, pd.DataFrame) and df["zeroshot_top1"].iloc[0] == 75.0
