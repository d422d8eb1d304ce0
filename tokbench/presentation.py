"""How results are labelled, grouped and tabulated, shared by every report section (the main report,
the text section, comparisons): a sweep point's label, the curves of a rate-distortion figure, Markdown tables.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

# Families drawn as classical baselines (dashed) in every figure.
CODEC_FAMILIES = {"codec"}


def sweep_label(job: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (job.get("params") or {}).items())


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    header = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    lines = [header, sep]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in r.values) + " |")
    return "\n".join(lines) + "\n"


def rate_curves(df: pd.DataFrame, x: str, y: str):
    for (label, data), g in df.groupby(["tokenizer", "data"], sort=False):
        g = g.dropna(subset=[x, y]).sort_values(x)
        if len(g):
            yield f"{label}" + (f" ({data})" if df["data"].nunique() > 1 else ""), g


def metric_directions(jobs: list[dict[str, Any]]) -> dict[str, str]:
    """Result key -> "higher" or "lower", as each job's metrics recorded it in its summary (`directions`);
    a key two jobs disagree on has none. Summaries written before directions were recorded give none."""
    out: dict[str, str] = {}
    conflicting: set[str] = set()
    for j in jobs:
        for key, way in (j.get("directions") or {}).items():
            if out.setdefault(key, way) != way:
                conflicting.add(key)
    return {k: v for k, v in out.items() if k not in conflicting}


# Columns of the main table: (result key, header, unit). Values are formatted by their unit.
MAIN_COLUMNS = [
    ("tokens_per_image", "tokens/img", "count"),
    ("bpp", "bpp", "bits per pixel"),
    ("latent_values_per_pixel", "latent values/px", "values per pixel"),
    ("psnr", "PSNR (dB)", "dB"),
    ("ssim", "SSIM", "index"),
    ("ms_ssim", "MS-SSIM", "index"),
    ("lpips", "LPIPS", "index"),
    ("lpips_vgg", "LPIPS-VGG", "index"),
    ("rfid", "rFID", "FID"),
    ("rfid_torch_fidelity", "rFID (ADM)", "FID"),
    ("rfid_pytorch_fid", "rFID (pytorch-fid)", "FID"),
    ("psnr_llamagen", "PSNR* (dB)", "dB"),
    ("ssim_llamagen", "SSIM*", "index"),
    ("semantic_similarity", "sem. sim.", "index"),
    ("zeroshot_top1", "0-shot top-1", "percent"),  # the metric reports % already
    ("zeroshot_top1_recon", "0-shot top-1 recon", "percent"),
    ("knn_top1_k20", "k-NN top-1", "percent"),  # DINO weighted k-NN on the token features, k = 20
    ("linear_probe_top1", "lin. probe top-1", "percent"),
    ("clip_score", "CLIP-score", "score"),
    ("text_acc", "text acc", "fraction"),  # word accuracy 0..1, shown as %
    ("text_acc_orig", "text acc orig", "fraction"),
    ("text_ned", "text NED sim.", "index"),
    ("codebook_usage", "code usage", "fraction"),  # 0..1, shown as %
    ("code_perplexity", "perplexity", "score"),
    ("encode_images_per_s", "enc img/s", "per second"),
    ("decode_images_per_s", "dec img/s", "per second"),
    ("peak_memory_mb", "peak MiB", "MiB"),
]
UNIT_FORMATS = {
    "count": "{:.0f}", "bits per pixel": "{:.4f}", "dB": "{:.2f}", "index": "{:.4f}", "FID": "{:.3f}",
    "percent": "{:.2f}%", "fraction": "{:.1%}", "score": "{:.2f}", "MiB": "{:.0f}", "values per pixel": "{:.4f}",
}


def format_value(value: Any, unit: str) -> str:
    """A number as the report prints it in `unit` (see UNIT_FORMATS); '' for missing values. Rates
    keep three significant digits (CPU rows are well under 1 image/s) without an exponent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        if unit == "per second":
            v = float(value)
            if v == 0 or abs(v) >= 100:
                return f"{v:.0f}"
            return f"{v:.{2 - math.floor(math.log10(abs(v)))}f}"
        return UNIT_FORMATS[unit].format(value)
    except (ValueError, TypeError):
        return str(value)


CONTINUOUS_NOTE = (
    "continuous latents (no codebook): bpp counts C*h*w latent values at the stated storage precision "
    "(tokbench convention, no quantisation or entropy coding), not comparable to VQ bits"
)
