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
    "latent_values_per_pixel": (0.046875, "0.0469"),  # continuous latents: C*h*w values / pixels
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
    "knn_top1_k20": (41.25, "41.25%"),  # the probes report percent too
    "linear_probe_top1": (55.5, "55.50%"),
    "clip_score": (31.4159, "31.42"),
    "text_acc": (0.8125, "81.2%"),  # word accuracy, a fraction of the words
    "text_acc_orig": (0.96875, "96.9%"),
    "text_ned": (0.93456, "0.9346"),  # normalised edit similarity in [0, 1]
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
        # a row with latent values per pixel is a continuous tokenizer: its bpp is marked as a storage convention
        expected = {"zeroshot_top1": f"{text} [80.00%]", "psnr": f"{text} [30.00]", "bpp": f"{text} †"}.get(key, text)
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


def _tick_labels(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True):
            if t.get_visible() and t.get_text():
                out.append((t.get_text(), t.get_window_extent(renderer)))
    return out


@pytest.mark.parametrize("bpp", [[0.25, 0.31, 0.42, 0.6, 0.95, 1.8], [0.004, 0.01, 0.3, 2.5, 9.0], [0.5, 0.55]])
def test_rate_distortion_axis_labels_are_plain_and_never_overlap(tmp_path, monkeypatch, bpp):
    import matplotlib.pyplot as plt

    from tokbench.report import rate_distortion_plot

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    df = pd.DataFrame({"tokenizer": ["jpeg"] * len(bpp), "data": "samples", "family": "codec", "bpp": bpp,
                       "psnr": [20 + 3 * i for i in range(len(bpp))]})
    assert rate_distortion_plot(df, "psnr", tmp_path / "rd.png")
    labels = _tick_labels(figures[0])
    assert len(labels) >= 2, labels
    assert not any("10^" in text or "times" in text for text, _ in labels), labels  # no 3x10^-1 mathtext
    boxes = sorted((b.x0, b.x1) for _, b in labels)
    assert all(a1 < b0 for (_, a1), (b0, _) in zip(boxes, boxes[1:])), [t for t, _ in labels]


def _two_rows():
    # as the runner records them: each metric's direction for the numbers it computed (bpp has none)
    directions = {"psnr": "higher", "lpips": "lower", "encode_images_per_s": "higher"}
    jobs = [{**_job({"psnr": 30.0, "lpips": 0.2, "bpp": 0.5, "encode_images_per_s": 3.0}), "directions": directions},
            {**_job({"psnr": 28.0, "lpips": 0.1, "bpp": 0.25, "encode_images_per_s": 3.0}), "job": "j2",
             "label": "other", "directions": directions}]
    return jobs


def test_best_value_of_each_score_column_is_bold_in_markdown_html_and_latex():
    jobs = _two_rows()
    table = main_table(summary_frame(jobs), jobs)
    assert list(table["PSNR (dB)"]) == ["**30.00**", "28.00"]  # higher is better
    assert list(table["LPIPS"]) == ["0.2000", "**0.1000**"]  # lower is better
    assert list(table["bpp"]) == ["0.5000", "0.2500"]  # the rate is the axis, not a score
    assert list(table["enc img/s"]) == ["3.00", "3.00"]  # a tie marks nothing


def test_html_report_is_self_contained_and_aligns_text_left(tmp_path):
    import re

    from tests.test_runner import make_folder
    from tokbench.report import write_report
    from tokbench.runner import run_suite
    from tokbench.suite import parse_suite

    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = parse_suite({"name": "h", "data": [f"folder:{folder}"], "resolution": 32, "download": False,
                         "metrics": ["psnr", "bpp"],
                         "tokenizers": [{"name": "jpeg", "sweep": {"quality": [20, 80]}}, "llamagen-vq16-c2i"]})
    run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    report = write_report(tmp_path / "run")
    page = (report / "index.html").read_text()
    # no CDN, no remote fonts or scripts: every src/href is a file beside the page
    refs = re.findall(r"(?:src|href)=['\"]([^'\"]+)", page)
    assert refs and all(not r.startswith(("http:", "https:", "//")) and (report / r).is_file() for r in refs), refs
    assert "<b>" in page and "the best value of each column" in page
    css = re.search(r"<style>(.*?)</style>", page).group(1)
    assert "td,th{" in css and "text-align:left" in css.split("td,th{")[1].split("}")[0]  # skip reasons: left
    assert "#results td{text-align:right}" in css  # numbers right
    tex = (report / "summary.tex").read_text()
    assert "\\textbf{" in tex and "**" not in tex


def test_directions_come_from_the_metrics_into_the_summary_and_mark_the_best(tmp_path):
    from tokbench.report import write_report
    from tokbench.runner import run_suite
    from tokbench.suite import parse_suite

    suite = parse_suite({"name": "dir", "data": ["samples"], "resolution": 32, "batch_size": 2, "download": False,
                         "metrics": ["psnr", "bpp", "codebook", "speed"],
                         "tokenizers": [{"name": "jpeg", "sweep": {"quality": [5, 95]}}]})
    low, high = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    for s in (low, high):
        d = s["directions"]
        assert d["psnr"] == "higher" and "psnr_std" not in d  # a spread has no direction
        assert "bpp" not in d  # the rate is the axis, not a score
        assert d["encode_images_per_s"] == "higher" and "encode_p50_ms" not in d
    assert high["results"]["psnr"] > low["results"]["psnr"]
    md = (write_report(tmp_path / "run") / "report.md").read_text()
    best = f"**{high['results']['psnr']:.2f}**"
    assert best in md and f"**{low['results']['psnr']:.2f}**" not in md


def test_metric_directions_drop_keys_the_jobs_disagree_on():
    from tokbench.presentation import metric_directions

    jobs = [{"directions": {"psnr": "higher", "x": "lower"}}, {"directions": {"x": "higher"}}, {"status": "old"}]
    assert metric_directions(jobs) == {"psnr": "higher"}
