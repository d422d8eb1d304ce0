"""Report figures and sections for the text and face metrics: word accuracy (and face similarity)
against bits per pixel per size bucket, one row of panels per data set (a language of text-synth is a
data set of its own), with the originals' accuracy as the OCR's ceiling; and original / reconstruction
crops side by side for the worst cases among the saved examples (the images whose reconstructions read
worst, by the per-image rows).

All is rebuilt from the run folder: the summaries give the curves; the crops come from the saved
example images (`jobs/<job>/images/`) and the data set's boxes, moved again by the job's protocol (the
data set must still be on the machine; `text-synth` and `face-synth` are re-rendered from the seed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from .presentation import CODEC_FAMILIES, markdown_table, rate_curves, sweep_label
from .runfolder import IMAGES_DIR, ROWS_FILE, job_dir, read_rows, sample_image

_BUCKET = re.compile(r"^text_acc_h([0-9.e-]+)-([0-9.e-]+)$")


def saved_samples(suite: dict[str, Any]) -> int:
    """How many sample images each job of a recorded run saved (run folders written before the option was
    renamed record only `grid_images`)."""
    return int(suite.get("save_samples", suite.get("grid_images")) or 0)


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

    found = buckets(df)
    if not found or "bpp" not in df.columns:
        return False
    sets = list(dict.fromkeys(df["data"])) if "data" in df.columns else [None]
    fig, axes = plt.subplots(len(sets), len(found), figsize=(4.2 * len(found), 3.8 * len(sets)), dpi=120,
                             squeeze=False)
    for row, name in enumerate(sets):
        part = df if name is None else df[df["data"] == name]
        _bucket_panels(axes[row], part, found, "text_acc_", "text_acc_orig_", f"{name}: " if len(sets) > 1 else "")
    axes[0][0].set_ylabel("word accuracy (OCR)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _bucket_panels(axes, df: pd.DataFrame, found, prefix: str, orig_prefix: str | None, title: str,
                   what: str = "text height") -> None:
    import matplotlib.ticker

    for ax, (lo, hi, col) in zip(axes, found):
        if col not in df.columns:
            continue
        for label, g in rate_curves(df, "bpp", col):
            codec = g["family"].iloc[0] in CODEC_FAMILIES
            ax.plot(g["bpp"], g[col], "--" if codec else "-", marker="." if codec else "o", label=label)
        orig = col.replace(prefix, orig_prefix) if orig_prefix else None
        if orig and orig in df.columns and df[orig].notna().any():
            ax.axhline(df[orig].mean(), color="grey", lw=1, ls=":", label="originals (ceiling)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("bits per pixel")
        ax.set_title(f"{title}{what} {lo:g}-{hi:g} of the side", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)


def _small_words(run: dict[str, Any], job: dict[str, Any], low: float, high: float, max_words: int):
    """(image position, box in input pixels, transcript) of words in [low, high) among the saved examples,
    the images whose reconstructions read worst first (`_worst_first`)."""
    from .data import open_dataset, open_image, place_text

    suite = run.get("suite", {})
    data = job["data"]
    ds = open_dataset(data["source"], data.get("limit"), seed=suite.get("seed", 0))
    side = job["resolution"]
    out = []
    for pos in job.get("_worst_first") or range(min(len(ds), saved_samples(suite))):
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
    ok = [j for j in ok if j["data"]["source"] == ok[0]["data"]["source"]]  # one data set (language) per figure
    low, high, _ = found[0]
    try:
        words = _small_words(run, {**ok[0], "_worst_first": worst_first(run_dir, run, ok, "text_acc")},
                             low, high, max_words)
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
    label_font = _label_font([t for _, _, t in words])
    for r, (row, (_, _, text)) in enumerate(zip(cells, words)):
        y = title_h + r * (cell_h + 6)
        draw.text((4, y + cell_h // 2 - 6), text, fill="black", font=label_font)
        x = label_w
        for c, im in enumerate(row):
            if im is not None:
                canvas.paste(im, (x, y))
            x += widths[c]
    canvas.save(path)
    return True


def _label_font(texts: list[str]):
    """PIL's default font, or a CJK font (where one is installed) when a transcript needs one."""
    from PIL import ImageFont

    from .core import TokbenchError
    from .ocr import script_language

    langs = {script_language(t) for t in texts} - {"en"}
    if not langs:
        return None
    try:
        from .textdata import cjk_fonts

        file, index = cjk_fonts("ja" if "ja" in langs else "zh")[0]
        return ImageFont.truetype(file, 13, index=index)
    except (TokbenchError, OSError):
        return None


def worst_first(run_dir: Path, run: dict[str, Any], jobs: list[dict[str, Any]], key: str) -> list[int]:
    """Positions of the saved example images, the lowest mean of the per-image row `key` over `jobs`
    first (the worst cases: words that the reconstructions lose, faces that change)."""
    shown = saved_samples(run.get("suite", {}))
    scores: dict[int, list[float]] = {}
    for j in jobs:
        for row in read_rows(job_dir(run_dir, j["job"]) / ROWS_FILE):
            v = row.get(key)
            if row.get("index", shown) < shown and isinstance(v, (int, float)) and v == v:
                scores.setdefault(int(row["index"]), []).append(float(v))
    ranked = sorted(scores, key=lambda p: (sum(scores[p]) / len(scores[p]), p))
    return ranked + [p for p in range(shown) if p not in scores]


def text_section(df: pd.DataFrame, jobs: list[dict[str, Any]] | None = None) -> str:
    """Markdown: word accuracy of reconstructions per text-size bucket (originals in the header row),
    and the overall drop; empty where the run has no text results."""

    found = buckets(df)
    if not found:
        return ""
    engines = sorted({str((j.get("metric_protocols") or {}).get(k)) for j in jobs or [] for k in
                      (j.get("metric_protocols") or {}) if k.startswith("text_preservation") and k.endswith("_ocr")})
    out = ["\n## Text preservation\n", "OCR word accuracy of the reconstructions per text height (fraction of the "
           "image side), and character accuracy (1 - CER); the originals' accuracy is the OCR's ceiling: a "
           "reconstruction reads at best as well as its original."
           + (f" OCR (engine | model | version): {'; '.join(engines)}." if engines else "") + "\n"]
    for name, part in (df.groupby("data", sort=False) if "data" in df.columns else [("", df)]):
        part = part[part["text_acc"].notna()] if "text_acc" in part else part.iloc[:0]
        if part.empty:
            continue
        rows = []
        for _, r in part.iterrows():
            row = {"tokenizer": r["tokenizer"] + (f" ({r['params']})" if r["params"] else ""),
                   "bpp": f"{r['bpp']:.3f}" if pd.notna(r.get("bpp")) else ""}
            for lo, hi, col in found:
                row[f"acc {lo:g}-{hi:g}"] = f"{r[col]:.1%}" if pd.notna(r.get(col)) else ""
            row["acc (all)"] = f"{r['text_acc']:.1%}"
            row["vs originals"] = f"{-100 * r['text_acc_drop']:+.1f} pts"
            if pd.notna(r.get("text_char_acc")):
                row["char acc"] = f"{r['text_char_acc']:.1%}"
            row["NED sim."] = f"{r['text_ned']:.3f}"
            rows.append(row)
        originals = ", ".join(f"{lo:g}-{hi:g}: {part[col.replace('text_acc_', 'text_acc_orig_')].mean():.1%}"
                              for lo, hi, col in found if col.replace("text_acc_", "text_acc_orig_") in part
                              and part[col.replace("text_acc_", "text_acc_orig_")].notna().any())
        chars = f", characters {part['text_char_acc_orig'].mean():.1%}" if "text_char_acc_orig" in part and \
            part["text_char_acc_orig"].notna().any() else ""
        words = ", ".join(f"{int(part[c].max())}" for c in (f"text_words_h{lo:g}-{hi:g}" for lo, hi, _ in found)
                          if c in part and part[c].notna().any())
        out.append(f"\n### {name}\n\nWords per bucket: {words}. Originals (ceiling): words {originals}{chars}.\n\n"
                   + markdown_table(pd.DataFrame(rows)))
    return "\n".join(out)


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


# ---------------------------------------------------------------------------------------------- faces

_FACE_BUCKET = re.compile(r"^face_sim_s([0-9.e-]+)-([0-9.e-]+)$")


def face_buckets(df: pd.DataFrame) -> list[tuple[float, float, str]]:
    """(low, high, column) of every face-size bucket the run measured, smallest first."""
    return sorted((float(m.group(1)), float(m.group(2)), c) for c in df.columns
                  if (m := _FACE_BUCKET.match(c)) and df[c].notna().any())


def face_similarity_plot(df: pd.DataFrame, path: Path) -> bool:
    """One panel per face-size bucket (a row per data set): face_sim against bpp, one curve per tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = face_buckets(df)
    if not found or "bpp" not in df.columns:
        return False
    sets = list(dict.fromkeys(df["data"]))
    fig, axes = plt.subplots(len(sets), len(found), figsize=(4.2 * len(found), 3.8 * len(sets)), dpi=120,
                             squeeze=False)
    for row, name in enumerate(sets):
        _bucket_panels(axes[row], df[df["data"] == name], found, "face_sim_", None,
                       f"{name}: " if len(sets) > 1 else "", what="face height")
    axes[0][0].set_ylabel("face identity (cosine, original vs reconstruction)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def face_crops_figure(run_dir: Path, run: dict[str, Any], jobs: list[dict[str, Any]], path: Path,
                      max_faces: int = 6, max_columns: int = 12, cell: int = 96) -> bool:
    """Rows: faces of the saved examples, the lowest face_sim first; columns: the original, then each
    job's reconstruction (the face's box with a fifth of margin, magnified with nearest neighbour)."""
    from PIL import Image, ImageDraw

    from .core import TokbenchError
    from .data import open_dataset, open_image
    from .facedata import place_faces

    ok = [j for j in jobs if j.get("status") == "ok" and "face_sim" in j.get("results", {})]
    if not ok:
        return False
    ok = sorted(ok, key=lambda j: (j["label"], j.get("results", {}).get("bpp") or 0))[:max_columns]
    ok = [j for j in ok if j["data"]["source"] == ok[0]["data"]["source"]]
    data = ok[0]["data"]
    try:
        ds = open_dataset(data["source"], data.get("limit"), seed=run.get("suite", {}).get("seed", 0))
    except (TokbenchError, OSError):
        return False
    faces = []
    for pos in worst_first(run_dir, run, ok, "face_sim"):
        rec = ds.records[pos] if pos < len(ds) else None
        if rec is None or rec.faces is None:
            continue
        placed = place_faces(rec.faces, ok[0]["protocol"], open_image(rec.path).size, ok[0]["resolution"])
        faces += [(pos, box) for box in placed.boxes][: max_faces - len(faces)]
        if len(faces) >= max_faces:
            break
    if not faces:
        return False
    label_w, title_h = 10, 40
    canvas = Image.new("RGB", (label_w + (len(ok) + 1) * (cell + 8), title_h + len(faces) * (cell + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, t in enumerate(["original"] + [f"{j['label']} {sweep_label(j)}".strip() for j in ok]):
        x = label_w + c * (cell + 8)
        draw.text((x, 4), t[:16], fill="black")
        if c:
            r = ok[c - 1].get("results", {})
            draw.text((x, 18), f"sim {r['face_sim']:.2f}" + (f", {r['bpp']:.2f} bpp" if r.get("bpp") else ""),
                      fill="black")
    for row, (pos, (x0, y0, x1, y1)) in enumerate(faces):
        m = 0.2 * max(x1 - x0, y1 - y0)
        for c, j in enumerate([ok[0]] + ok):
            p = sample_image(job_dir(run_dir, j["job"]) / IMAGES_DIR, pos, "original" if c == 0 else "recon")
            if not p.is_file():
                continue
            with Image.open(p) as im:
                f = im.size[0] / j["resolution"]
                crop = im.convert("RGB").crop(tuple(round(v * f) for v in (x0 - m, y0 - m, x1 + m, y1 + m)))
            canvas.paste(crop.resize((cell, cell), Image.NEAREST), (label_w + c * (cell + 8), title_h + row * (cell + 6)))
    canvas.save(path)
    return True


def face_section(df: pd.DataFrame, jobs: list[dict[str, Any]] | None = None) -> str:
    """Markdown: face identity (cosine) per face-size bucket per data set; empty without face results."""
    found = face_buckets(df)
    if not found or "face_sim" not in df.columns:
        return ""
    models = sorted({str(v) for j in jobs or [] for k, v in (j.get("metric_protocols") or {}).items()
                     if k.startswith("face_identity") and k.endswith("_model")})
    out = ["\n## Face identity\n", "Cosine similarity of face embeddings, original against reconstruction "
           "(TokBench's F-Sim; 1 = the same embedding), per face height (fraction of the image side)."
           + (f" Embedder (engine | model | version): {'; '.join(models)}." if models else "") + "\n"]
    for name, part in df.groupby("data", sort=False):
        part = part[part["face_sim"].notna()]
        if part.empty:
            continue
        rows = []
        for _, r in part.iterrows():
            row = {"tokenizer": r["tokenizer"] + (f" ({r['params']})" if r["params"] else ""),
                   "bpp": f"{r['bpp']:.3f}" if pd.notna(r.get("bpp")) else ""}
            for lo, hi, col in found:
                row[f"sim {lo:g}-{hi:g}"] = f"{r[col]:.3f}" if pd.notna(r.get(col)) else ""
            row["sim (all)"] = f"{r['face_sim']:.3f}"
            if pd.notna(r.get("face_dist")):
                row["dlib dist."] = f"{r['face_dist']:.3f}"
            rows.append(row)
        counts = ", ".join(f"{int(part[c].max())}" for c in (f"face_count_s{lo:g}-{hi:g}" for lo, hi, _ in found)
                           if c in part and part[c].notna().any())
        out.append(f"\n### {name}\n\nFaces per bucket: {counts}.\n\n" + markdown_table(pd.DataFrame(rows)))
    return "\n".join(out)


def face_figures(run_dir: Path, run: dict[str, Any], df: pd.DataFrame, jobs: list[dict[str, Any]],
                 out: Path) -> list[tuple[str, str]]:
    figures = []
    if df.empty:
        return figures
    if face_similarity_plot(df, out / "face_similarity.png"):
        figures.append(("face_similarity.png", "face identity (cosine) against bits per pixel, per face-size bucket"))
    if face_crops_figure(run_dir, run, jobs, out / "face_crops.png"):
        figures.append(("face_crops.png", "faces whose reconstructions changed most: original, then each "
                        "reconstruction"))
    return figures
