"""Report figures for the text metric: word accuracy against bits per pixel per text-size bucket, and
original / reconstruction crops of the smallest bucket side by side.

Both are rebuilt from the run folder: the summaries give the curves; the crops come from the saved
example images (`jobs/<job>/images/`) and the data set's boxes, moved again by the job's protocol (the
data set must still be on the machine; `text-synth` is re-rendered from the suite's seed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from .presentation import CODEC_FAMILIES, markdown_table, rate_curves, sweep_label
from .runfolder import IMAGES_DIR, job_dir, sample_image

_BUCKET = re.compile(r"^text_acc_h([0-9.e-]+)-([0-9.e-]+)$")


def buckets(df: pd.DataFrame) -> list[tuple[float, float, str]]:
    """(low, high, column) of every word-accuracy bucket the run measured, smallest first."""
    out = []
    for c in df.columns:
        if (m := _BUCKET.match(c)) and df[c].notna().any():
            out.append((float(m.group(1)), float(m.group(2)), c))
    return sorted(out)


def text_accuracy_plot(df: pd.DataFrame, path: Path) -> bool:
    """One panel per text-size bucket: reconstructions' word accuracy against bpp, one curve per
    tokenizer (codecs dashed); the originals' accuracy (the OCR's ceiling) as a grey line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker


    found = buckets(df)
    if not found or "bpp" not in df.columns:
        return False
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.8), dpi=120, squeeze=False)
    for ax, (lo, hi, col) in zip(axes[0], found):
        for label, g in rate_curves(df, "bpp", col):
            codec = g["family"].iloc[0] in CODEC_FAMILIES
            ax.plot(g["bpp"], g[col], "--" if codec else "-", marker="." if codec else "o", label=label)
        orig = col.replace("text_acc_", "text_acc_orig_")
        if orig in df.columns and df[orig].notna().any():
            ax.axhline(df[orig].mean(), color="grey", lw=1, ls=":", label="originals")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("bits per pixel")
        ax.set_title(f"text height {lo:g}-{hi:g} of the side")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("word accuracy (OCR)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _small_words(run: dict[str, Any], job: dict[str, Any], low: float, high: float, max_words: int):
    """(image position, box in input pixels, transcript) of words in [low, high) among the saved examples."""
    from .data import open_dataset, open_image, place_text

    suite = run.get("suite", {})
    data = job["data"]
    ds = open_dataset(data["source"], data.get("limit"), seed=suite.get("seed", 0))
    side = job["resolution"]
    out = []
    for pos in range(min(len(ds), suite.get("grid_images", 0))):
        rec = ds.records[pos]
        if rec.text is None:
            continue
        placed = place_text(rec, job["protocol"], open_image(rec.path).size, side)
        for box, text, ratio in zip(placed.boxes, placed.texts, placed.ratios):
            r = ratio if ratio is not None else (box[3] - box[1]) / side
            if low <= r < high and len(out) < max_words:
                out.append((pos, box, text))
    return out


def crops_figure(run_dir: Path, run: dict[str, Any], jobs: list[dict[str, Any]], df: pd.DataFrame, path: Path,
                 max_words: int = 8, max_columns: int = 12, cell_h: int = 48) -> bool:
    """Rows: words of the smallest bucket; columns: the original crop, then each job's reconstruction
    of it (crops magnified with nearest neighbour, so pixels stay visible)."""
    from PIL import Image, ImageDraw

    from .core import TokbenchError

    found = buckets(df)
    ok = [j for j in jobs if j.get("status") == "ok" and any(k.startswith("text_acc") for k in j.get("results", {}))]
    if not found or not ok:
        return False
    ok = sorted(ok, key=lambda j: (j["label"], j.get("results", {}).get("bpp") or 0))[:max_columns]
    low, high, _ = found[0]
    try:
        words = _small_words(run, ok[0], low, high, max_words)
    except (TokbenchError, OSError):
        return False  # the data set is no longer on this machine
    if not words:
        return False
    cells: list[list[Image.Image | None]] = []
    for pos, box, _ in words:
        row = []
        for k, j in enumerate([ok[0]] + ok):
            p = sample_image(job_dir(run_dir, j["job"]) / IMAGES_DIR, pos, "original" if k == 0 else "recon")
            if not p.is_file():
                row.append(None)
                continue
            with Image.open(p) as im:
                f = im.size[0] / j["resolution"]
                crop = im.convert("RGB").crop(tuple(round(v * f) for v in box))
            row.append(crop.resize((max(1, round(crop.width * cell_h / crop.height)), cell_h), Image.NEAREST))
        cells.append(row)
    widths = [max((r[c].width for r in cells if r[c] is not None), default=cell_h) + 8 for c in range(len(ok) + 1)]
    label_w, title_h = 90, 40
    canvas = Image.new("RGB", (label_w + sum(widths), title_h + len(cells) * (cell_h + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    titles = ["original"] + [f"{j['label']} {sweep_label(j)}".strip() for j in ok]
    x = label_w
    for c, t in enumerate(titles):
        draw.text((x, 4), t[:24], fill="black")
        if c:
            acc = ok[c - 1].get("results", {}).get(found[0][2])
            bpp = ok[c - 1].get("results", {}).get("bpp")
            draw.text((x, 18), f"acc {acc:.0%}" + (f", {bpp:.2f} bpp" if bpp else "") if acc is not None else "",
                      fill="black")
        x += widths[c]
    for r, (row, (_, _, text)) in enumerate(zip(cells, words)):
        y = title_h + r * (cell_h + 6)
        draw.text((4, y + cell_h // 2 - 6), text, fill="black")
        x = label_w
        for c, im in enumerate(row):
            if im is not None:
                canvas.paste(im, (x, y))
            x += widths[c]
    canvas.save(path)
    return True


def text_section(df: pd.DataFrame) -> str:
    """Markdown: word accuracy of reconstructions per text-size bucket (originals in the header row),
    and the overall drop; empty where the run has no text results."""

    found = buckets(df)
    if not found:
        return ""
    rows = []
    for _, r in df.iterrows():
        row = {"tokenizer": r["tokenizer"] + (f" ({r['params']})" if r["params"] else ""),
               "bpp": f"{r['bpp']:.3f}" if pd.notna(r.get("bpp")) else ""}
        for lo, hi, col in found:
            row[f"acc {lo:g}-{hi:g}"] = f"{r[col]:.1%}" if pd.notna(r.get(col)) else ""
        row["acc (all)"] = f"{r['text_acc']:.1%}"
        row["vs originals"] = f"{-100 * r['text_acc_drop']:+.1f} pts"
        row["NED sim."] = f"{r['text_ned']:.3f}"
        rows.append(row)
    originals = ", ".join(f"{lo:g}-{hi:g}: {df[col.replace('text_acc_', 'text_acc_orig_')].mean():.1%}"
                          for lo, hi, col in found if col.replace("text_acc_", "text_acc_orig_") in df)
    words = ", ".join(f"{int(df[c].max())}" for c in (f"text_words_h{lo:g}-{hi:g}" for lo, hi, _ in found)
                      if c in df)
    return ("\n## Text preservation\n\nOCR word accuracy of the reconstructions per text height (fraction of "
            f"the image side; words per bucket: {words}). Originals read at {originals}.\n\n"
            + markdown_table(pd.DataFrame(rows)))


def text_figures(run_dir: Path, run: dict[str, Any], df: pd.DataFrame, jobs: list[dict[str, Any]],
                 out: Path) -> list[tuple[str, str]]:
    """The text figures this run has data for, as (file name, caption)."""
    figures = []
    if df.empty:
        return figures
    if text_accuracy_plot(df, out / "text_accuracy.png"):
        figures.append(("text_accuracy.png", "OCR word accuracy against bits per pixel, per text-size bucket"))
    if crops_figure(run_dir, run, jobs, df, out / "text_crops.png"):
        low, high, _ = buckets(df)[0]
        figures.append(("text_crops.png", f"words of the smallest text bucket ({low:g}-{high:g} of the side): "
                        "original crop, then each reconstruction's"))
    return figures
