"""Reports of a run folder: Markdown, CSV, LaTeX, an HTML page, plots and a reconstruction grid.

Everything is rebuilt from the run folder alone (run.json + jobs/*), so `tokbench report RUN_DIR`
can redo it at any later time. Each number is shown with the protocol it was measured under.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .core import TokbenchError
from .presentation import (
    CODEC_FAMILIES,
    CONTINUOUS_NOTE,
    MAIN_COLUMNS,
    format_value,
    markdown_table,
    metric_directions,
    rate_curves,
    sweep_label,
)
from .runfolder import (
    IMAGES_DIR,
    JOB_SKIPPED,
    JOB_SUMMARY,
    REPORT_DIR,
    REPORT_HTML,
    REPORT_MD,
    ROWS_FILE,
    ROWS_PARQUET,
    RUN_RECORD,
    SUMMARY_CSV,
    SUMMARY_JSON,
    SUMMARY_TEX,
    CorruptFile,
    job_dir,
    read_json,
    read_rows,
    sample_image,
    sample_positions,
    short_reason,
    write_json,
)
from .text_report import face_figures, face_section, text_figures, text_section
from .understanding_report import tradeoff_plot, understanding_html, understanding_section
from .viewer import (
    SampleJob,
    column_titles,
    sample_group,
    table_html,
    viewer_data,
    viewer_section_html,
    write_assets,
)
from .viewer import head_html as viewer_head_html
from .viewer import script_html as viewer_script_html


def _continuous(r: Any) -> bool:
    """A result row of a continuous-latent tokenizer (its bpp is a storage convention, not a code length)."""
    v = r.get("latent_values_per_pixel")
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def continuous_rate_lines(df: pd.DataFrame) -> list[str]:
    """One line per continuous-latent tokenizer: latent values per pixel, storage bits and the resulting bpp."""
    if "latent_values_per_pixel" not in df.columns:
        return []
    lines = []
    for _, r in df.iterrows():
        if _continuous(r):
            label = r["tokenizer"] + (f" ({r['params']})" if r["params"] else "")
            lines.append(f"- {label}: {r['latent_values_per_pixel']:.4f} latent values/px x "
                         f"{r.get('latent_storage_bits', float('nan')):g} bits = {r['bpp']:.4f} bpp")
    return lines


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run record and one entry per job (summary, or skip record, or 'not run')."""
    run_path = run_dir / RUN_RECORD
    if not run_path.is_file():
        raise TokbenchError(f"{run_dir} is not a tokbench run folder (no {RUN_RECORD}); give the --out folder of "
                            "a `tokbench run`")
    run = read_json(run_path)  # cut or edited by hand: one line naming it (CorruptFile), not a traceback
    jobs = []
    for job_id in run.get("jobs", []):
        d = job_dir(run_dir, job_id)
        for name in (JOB_SUMMARY, JOB_SKIPPED):
            if (d / name).is_file():
                try:  # the other jobs are still reported; a re-run measures this one again
                    jobs.append(read_json(d / name, "re-run the same `tokbench run` command to measure this job again"))
                except CorruptFile as e:
                    jobs.append({"job": job_id, "status": "not run", "reason": str(e)})
                break
        else:
            jobs.append({"job": job_id, "status": "not run", "reason": "interrupted before this job"})
    return run, jobs


def summary_frame(jobs: list[dict[str, Any]]) -> pd.DataFrame:
    records = []
    for j in jobs:
        if j.get("status") != "ok":
            continue
        spec = j.get("spec", {})
        rec = {
            "job": j["job"], "tokenizer": j["label"], "params": sweep_label(j), "family": spec.get("family"),
            "data": j["data"]["name"], "images": j.get("images_evaluated"), "skipped_images": j.get("images_skipped"),
            "resolution": j.get("resolution"), "eval_resolution": j.get("eval_resolution"),
            "protocol": j.get("protocol"), "dtype": j.get("dtype"),
            "weights": (spec.get("source") or {}).get("weights"),
            "device": j.get("device", {}).get("device"),
        }
        rec.update(j.get("results", {}))
        for k, v in (j.get("published") or {}).items():
            rec[f"published_{k}"] = v
        records.append(rec)
    return pd.DataFrame.from_records(records)


def best_rows(df: pd.DataFrame, key: str, directions: dict[str, str]) -> set[int]:
    """Positions of the rows holding the best value of column `key` among rows on the same data set
    (none where the metric gives no direction for it, or fewer than two rows have a value).
    `directions`: key -> "higher" / "lower", as the metrics recorded them (`metric_directions`)."""
    if directions.get(key) not in ("higher", "lower") or key not in df.columns:
        return set()
    best: set[int] = set()
    for _, group in df.reset_index(drop=True).groupby("data", sort=False):
        values = pd.to_numeric(group[key], errors="coerce").dropna()
        if len(values) < 2 or values.nunique() < 2:
            continue
        target = values.max() if directions[key] == "higher" else values.min()
        best |= set(values.index[values == target])
    return best


def main_table(df: pd.DataFrame, jobs: list[dict[str, Any]]) -> pd.DataFrame:
    """Formatted main table; published numbers, where a suite gives them, in brackets after ours; the
    best value of each score column (per data set) in **bold**."""
    published = {j["job"]: j.get("published") or {} for j in jobs if j.get("status") == "ok"}
    cols = [c for c in MAIN_COLUMNS if c[0] in df.columns and df[c[0]].notna().any()]
    directions = metric_directions(jobs)
    best = {key: best_rows(df, key, directions) for key, _, _ in cols}
    rows = []
    for i, (_, r) in enumerate(df.iterrows()):
        res = r["resolution"]
        if pd.notna(r.get("eval_resolution")) and r.get("eval_resolution"):
            res = f"{res}->{int(r['eval_resolution'])}"  # metrics measured after a resize
        label = r["tokenizer"] + (f" ({r['params']})" if r["params"] else "")
        if str(r.get("weights") or "").startswith("random"):
            label += " [random weights: speed only]"
        row = {"tokenizer": label, "data": r["data"],
               "res": res, "protocol": r["protocol"]}
        pub = published.get(r["job"], {})
        for key, header, unit in cols:
            text = format_value(r.get(key), unit)
            if i in best[key] and text:
                text = f"**{text}**"
            if key == "bpp" and text and _continuous(r):
                text += " †"  # a storage convention, explained under the table
            if key in pub:
                text += f" [{format_value(pub[key], unit)}]"
            row[header] = text
        rows.append(row)
    return pd.DataFrame(rows)


def published_table(jobs: list[dict[str, Any]]) -> pd.DataFrame:
    """Every published number a suite cites, next to the value measured under the same protocol."""
    rows = []
    for j in jobs:
        if j.get("status") != "ok":
            continue
        for key, value in (j.get("published") or {}).items():
            measured = (j.get("results") or {}).get(key)
            rows.append({"tokenizer": j["label"] + (f" ({sweep_label(j)})" if sweep_label(j) else ""), "metric": key,
                         "published": value, "measured": "" if measured is None else f"{measured:.4g}",
                         "difference": "" if measured is None else f"{measured - value:+.4g}",
                         "source": " ".join(str(j.get("published_source", "")).split())})
    return pd.DataFrame(rows)


def _protocol_notes(jobs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    metric_notes: dict[str, str] = {}
    prep_notes: dict[str, str] = {}
    for j in jobs:
        if j.get("status") != "ok":
            continue
        for k, v in j.get("metric_protocols", {}).items():
            known = metric_notes.get(k, v)  # jobs may add to a note (bpp of continuous latents): keep the longer
            metric_notes[k] = v if known in v else known if v in known else f"{known} | {v}"
        prep_notes[j["protocol"]] = j.get("protocol_description", "")
    return metric_notes, prep_notes


# ----------------------------------------------------------------------------------------------
# Figures


def rate_distortion_plot(df: pd.DataFrame, metric: str, path: Path, x: str = "bpp") -> bool:
    """Quality against bits per pixel (or tokens), one curve per tokenizer; codecs dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in df.columns or x not in df.columns or df[[x, metric]].dropna().empty:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    any_continuous = False
    for label, g in rate_curves(df, x, metric):
        codec = g["family"].iloc[0] in CODEC_FAMILIES
        if x == "bpp" and _continuous(g.iloc[0]):  # own marker and line: a storage convention, not code bits
            any_continuous = True
            ax.plot(g[x], g[metric], ":", marker="s", markerfacecolor="none", label=f"{label} (continuous)")
            continue
        ax.plot(g[x], g[metric], "--" if codec else "-", marker="o" if not codec else ".", label=label,
                alpha=0.8 if codec else 1.0)
    log_axis_plain_labels(ax.xaxis)
    ax.set_xlabel({"bpp": "bits per pixel", "tokens_per_image": "tokens per image"}.get(x, x))
    ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "rfid": "rFID"}.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best",
              title="open squares, dotted: continuous latents at\nstated storage bits (not VQ bits)"
              if any_continuous else None, title_fontsize=6)
    ax.set_title(f"{metric.upper()} vs {'bits per pixel' if x == 'bpp' else 'tokens'}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def log_axis_plain_labels(axis) -> None:
    """A log-scale axis labelled with plain numbers at 1, 2, 5 x 10^k (no unlabelled-minor clutter and no
    "3x10^-1 4x10^-1" minor labels running into each other)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (axis.axes.set_xscale if axis.axis_name == "x" else axis.axes.set_yscale)("log")
    lo, hi = sorted(abs(v) for v in axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 else 99.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def throughput_plot(df: pd.DataFrame, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in ("encode_images_per_s", "decode_images_per_s") if c in df.columns]
    if not cols or df[cols].dropna(how="all").empty:
        return False
    names = (df["tokenizer"] + df["params"].map(lambda p: f" ({p})" if p else "")).tolist()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(df) + 1)), dpi=120)
    ypos = range(len(df))
    h = 0.8 / len(cols)
    for i, c in enumerate(cols):
        ax.barh([y + i * h for y in ypos], df[c].fillna(0), height=h, label=c.split("_")[0])
    ax.set_yticks([y + h * (len(cols) - 1) / 2 for y in ypos], names, fontsize=7)
    log_axis_plain_labels(ax.xaxis)
    ax.set_xlabel(f"images / s ({df['device'].iloc[0]})")
    ax.legend(fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def reconstruction_grid(run_dir: Path, jobs: list[dict[str, Any]], path: Path, cell: int = 160,
                        max_columns: int = 10) -> bool:
    """Originals (first column) next to each tokenizer's reconstruction of the same image, plus a
    zoomed centre crop (same region in every column) below each row."""
    from PIL import Image, ImageDraw

    ok = [j for j in jobs if j.get("status") == "ok" and j.get("spec", {}).get("supports_decode", True)]
    # one column per tokenizer: its middle sweep point
    by_label: dict[str, list[dict[str, Any]]] = {}
    for j in ok:
        by_label.setdefault(f"{j['label']}|{j['data']['name']}", []).append(j)
    columns = [v[len(v) // 2] for v in by_label.values()][:max_columns]
    if not columns:
        return False
    first = job_dir(run_dir, columns[0]["job"]) / IMAGES_DIR
    originals = sample_positions(first)
    if not originals:
        return False
    label_h = 28
    w = cell * (len(columns) + 1)
    h = label_h + 2 * cell * len(originals)
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    titles = ["original"] + [f"{c['label']} {sweep_label(c)}".strip() for c in columns]
    for i, t in enumerate(titles):
        draw.text((i * cell + 4, 8), t[:26], fill="black")
    for r, stem in enumerate(originals):
        cells = [sample_image(first, int(stem), "original")] + [
            sample_image(job_dir(run_dir, c["job"]) / IMAGES_DIR, int(stem), "recon") for c in columns]
        for i, p in enumerate(cells):
            if not p.is_file():
                continue
            with Image.open(p) as im:
                im = im.convert("RGB")
                y0 = label_h + 2 * r * cell
                canvas.paste(im.resize((cell, cell), Image.BICUBIC), (i * cell, y0))
                s = im.size[0]
                box = (s * 3 // 8, s * 3 // 8, s * 5 // 8, s * 5 // 8)  # central quarter, same region
                canvas.paste(im.crop(box).resize((cell, cell), Image.NEAREST), (i * cell, y0 + cell))
    canvas.save(path)
    return True


# ----------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report/{report.md, summary.csv, summary.tex, index.html, *.png} and
    RUN_DIR/rows.parquet (all per-image rows). Returns the report folder."""
    from .runfolder import writer_lock

    run_dir = Path(run_dir)
    load_run(run_dir)  # a clear error for a folder that is not a run, before taking its lock
    with writer_lock(run_dir, what="report"):
        return _write_report(run_dir)


def _write_report(run_dir: Path) -> Path:
    run, jobs = load_run(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    df = summary_frame(jobs)
    df.to_csv(out / SUMMARY_CSV, index=False)
    write_json(out / SUMMARY_JSON, jobs)

    all_rows = []
    for j in jobs:
        if j.get("status") == "ok":
            for row in read_rows(job_dir(run_dir, j["job"]) / ROWS_FILE):
                all_rows.append({"job": j["job"], "tokenizer": j["label"], "params": sweep_label(j), **row})
    if all_rows:
        pd.DataFrame.from_records(all_rows).to_parquet(run_dir / ROWS_PARQUET, index=False)

    table = main_table(df, jobs) if not df.empty else pd.DataFrame()
    skipped = pd.DataFrame([{"tokenizer": j.get("label", j["job"]), "params": sweep_label(j), "status": j["status"],
                             "reason": (j.get("reason") or "").strip()} for j in jobs if j.get("status") != "ok"])
    metric_skips: dict[str, str] = {}
    for j in jobs:
        for name, why in (j.get("metric_skips") or {}).items():
            metric_skips.setdefault(name, why)
    metric_notes, prep_notes = _protocol_notes(jobs)

    figures = []
    if not df.empty:
        for metric in ("psnr", "ssim", "lpips"):
            name = f"rd_{metric}.png"
            if rate_distortion_plot(df, metric, out / name):
                figures.append((name, f"{metric.upper()} against bits per pixel"))
        variable = df[df["params"].str.contains("n_tokens|n_scales", na=False)] if "params" in df else df.iloc[:0]
        if not variable.empty:
            for metric in ("psnr", "lpips", "rfid"):
                name = f"tokens_{metric}.png"
                if rate_distortion_plot(variable, metric, out / name, x="tokens_per_image"):
                    figures.append((name, f"{metric.upper()} against tokens per image"))
        if throughput_plot(df, out / "throughput.png"):
            figures.append(("throughput.png", "encode and decode throughput"))
    if reconstruction_grid(run_dir, jobs, out / "grid.png"):
        figures.append(("grid.png", "reconstructions (bottom of each pair: zoomed centre crop, same region)"))
    figures += text_figures(run_dir, run, df, jobs, out)
    figures += face_figures(run_dir, run, df, jobs, out)
    if tradeoff_plot(jobs, out / "tradeoff.png"):
        figures.append(("tradeoff.png", "understanding (k-NN top-1) against reconstruction, one point per tokenizer"))
    write_assets(out)  # the viewer: index.html's script and stylesheet, heat maps (tokbench/viewer.py)
    samples = viewer_data(out, [SampleJob(j, run_dir, *sample_group(j), seed=int(run.get("suite", {}).get("seed") or 0))
                                for j in jobs if j.get("status") == "ok"])

    versions = run.get("versions", {})
    device = run.get("device", {})
    suite = run.get("suite", {})
    header = [
        f"# tokbench report: {suite.get('name', run_dir.name)}",
        "",
        f"{suite.get('description', '')}",
        "",
        f"- run folder: `{run_dir}`; created {run.get('created')}, updated {run.get('updated')}",
        f"- device: {device.get('device')} {device.get('gpu', device.get('cpu', ''))}; "
        f"torch {versions.get('torch')}, tokbench {versions.get('tokbench')}, git {run.get('git_revision')}",
        f"- data: {', '.join(str(d.get('source')) for d in suite.get('data', []))}; batch size "
        f"{suite.get('batch_size')}, dtype {suite.get('dtype')}, seed {suite.get('seed')}",
    ]
    md = "\n".join(header) + "\n\n## Results\n\n" + markdown_table(table)
    if "**" in md:
        md += "\nBold: the best value of each column on its data set.\n"
    if any(j.get("published") for j in jobs if j.get("status") == "ok"):
        md += "\nNumbers in [brackets] are the published values the suite cites (sources below).\n"
    if continuous := continuous_rate_lines(df):
        md += f"\n† {CONTINUOUS_NOTE}:\n\n" + "\n".join(continuous) + "\n"
    if any(k.endswith("_llamagen") for k in metric_notes):
        md += "\n`PSNR*`/`SSIM*` use the LlamaGen protocol (see Protocols): only for comparing with numbers published that way.\n"
    md += text_section(df, jobs) if not df.empty else ""
    md += face_section(df, jobs) if not df.empty else ""
    md += understanding_section(jobs)
    published = published_table(jobs)
    if not published.empty:
        md += "\n## Published vs measured\n\n" + markdown_table(published)
    md += "\n## Protocols\n\n" + "".join(f"- **{k}**: {v}\n" for k, v in sorted(metric_notes.items()))
    md += "".join(f"- preprocessing **{k}**: {v}\n" for k, v in sorted(prep_notes.items()))
    if metric_skips:
        md += "\n## Metrics not computed\n\n" + "".join(
            f"- **{k}**: {short_reason(v)}\n" for k, v in sorted(metric_skips.items()))
    md += "\n## Skipped or failed\n\n" + (markdown_table(skipped.assign(reason=skipped["reason"].map(short_reason)))
                                          if not skipped.empty else "_(none)_\n")
    bad_files = sum(int(j.get("images_skipped") or 0) for j in jobs)
    if bad_files:
        md += f"\n{bad_files} unreadable images were skipped (listed in each job's summary.json).\n"
    if figures:
        md += "\n## Figures\n\n" + "".join(f"![{cap}]({name})\n\n" for name, cap in figures)
    (out / REPORT_MD).write_text(md)

    if not table.empty:
        latex = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}",
                       table.drop(columns=["protocol"]).to_latex(index=False, escape=True))
        (out / SUMMARY_TEX).write_text(
            f"% tokbench {versions.get('tokbench')}, suite {suite.get('name')}; protocols: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(metric_notes.items())) + "\n" + latex)
    else:
        (out / SUMMARY_TEX).write_text("% no results\n")

    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tokbench report: {html.escape(str(suite.get('name')))}</title>",
        # numbers right-aligned in the results; text (names, skip reasons) left-aligned everywhere
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}#results td{text-align:right}#results td:nth-child(-n+4){text-align:left}"
        "#skipped td:last-child{max-width:60em}img{max-width:100%;margin:1em 0}.note{color:#555;font-size:13px}"
        "</style>", viewer_head_html(),
        "</head><body>",
        f"<h1>tokbench report: {html.escape(str(suite.get('name')))}</h1>",
        "<ul class='note'>" + "".join(f"<li>{html.escape(h[2:])}</li>" for h in header if h.startswith("- ")) + "</ul>",
        "<h2>Results</h2>",
        table_html(table, "results", column_titles(list(table.columns), metric_notes),
                   {"protocol": [prep_notes.get(p, "") for p in table["protocol"]]})
        if not table.empty else "<p>(no results)</p>",
        "<p class='note'><b>bold</b>: the best value of each column on its data set. [brackets]: published values "
        "cited by the suite. PSNR*/SSIM*: LlamaGen protocol (see Protocols).</p>",
        (f"<p class='note'>† {html.escape(CONTINUOUS_NOTE)}:<br>"
         + "<br>".join(html.escape(line[2:]) for line in continuous_rate_lines(df)) + "</p>")
        if continuous_rate_lines(df) else "",
        viewer_section_html(samples),
        understanding_html(jobs),
        ("<h2>Published vs measured</h2>" + published.to_html(index=False, table_id="published", border=0)
         if not published.empty else ""),
        "<h2>Protocols</h2><ul class='note'>"
        + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in sorted(metric_notes.items()))
        + "".join(f"<li>preprocessing <b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in prep_notes.items())
        + "</ul>",
    ]
    if not skipped.empty:
        page += ["<h2>Skipped or failed</h2>", skipped.assign(reason=skipped["reason"].map(short_reason)).to_html(
            index=False, table_id="skipped", border=0)]
    if figures:
        page.append("<h2>Figures</h2>")
        page += [f"<figure><img src='{name}' alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}"
                 "</figcaption></figure>" for name, cap in figures]
    page.append(viewer_script_html() + "</body></html>")
    (out / REPORT_HTML).write_text("\n".join(page))
    return out
