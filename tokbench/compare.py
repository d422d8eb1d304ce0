"""One comparison from many run folders: `tokbench compare RUN_DIR... --out DIR`.

The run folders may come from other machines (copied whole); each is read as `tokbench report` reads
it (run.json + jobs/*/summary.json + per-image rows), nothing is measured again. Every number keeps where
it came from (run folder, device, versions, git revision, date) and what makes it comparable: the data set
and its identity (a hash of its file list and sizes, recorded with each job), the input resolution and
resize/crop protocol, and the metric's own protocol (which names an FID's reference statistics). Speed
numbers are comparable only on one device, dtype and batch size.

The table puts a number in a column only beside numbers of the same data set (a column per data set where
there are several). Within a column, the numbers measured under another resolution or protocol than the
column's most common one carry a footnote mark naming the difference, and the best value is marked only among
numbers measured alike. The same tokenizer measured in two runs is shown twice, each row with its run.

Outputs in DIR: comparison.md, comparison.csv (one row per number, with its conditions and provenance as
columns), comparison.tex (booktabs), comparison.json, index.html (the viewer: sortable table, sample images
of every run side by side, copied into DIR/viewer/ so the folder opens on its own) and the figures.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
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
    sweep_label,
)
from .report import rate_distortion_plot
from .runfolder import (
    COMPARISON_CSV,
    COMPARISON_JSON,
    COMPARISON_MD,
    COMPARISON_TEX,
    JOB_SKIPPED,
    JOB_SUMMARY,
    REPORT_HTML,
    RUN_RECORD,
    environment_changes,
    job_dir,
    write_json,
    writer_lock,
)
from .viewer import (
    SampleJob,
    column_titles,
    head_html,
    protocol_note,
    sample_group,
    script_html,
    table_html,
    viewer_data,
    viewer_section_html,
    write_assets,
)

# Result keys that time the device: comparable only on the same device, dtype and batch size.
SPEED_KEYS = {"encode_images_per_s", "decode_images_per_s", "encode_tokens_per_s", "encode_p50_ms",
              "encode_p95_ms", "decode_p50_ms", "decode_p95_ms", "peak_memory_mb"}
# Understanding metrics for the understanding/reconstruction figure, the first present is used.
UNDERSTANDING_KEYS = ("linear_probe_top1", "knn_top1", "zeroshot_top1", "semantic_similarity")
RECONSTRUCTION_KEYS = ("psnr", "rfid", "lpips", "ssim")


@dataclass
class RunInput:
    """One run folder as the comparison reads it: its tag (R1, R2, ... in the order given), record, and
    finished jobs (`jobs`) beside the number of jobs it planned."""

    tag: str
    path: Path
    run: dict[str, Any]
    jobs: list[dict[str, Any]]
    planned: int = 0
    not_ok: int = 0


@dataclass
class Comparison:
    runs: list[RunInput]
    records: pd.DataFrame  # one row per number: conditions and provenance as columns
    table: pd.DataFrame  # the formatted table (cells with **best**, [published], ^{footnote} marks)
    notes: dict[str, str]  # footnote mark -> what differs
    problems: list[str] = field(default_factory=list)


def read_runs(paths: list[str | Path], problems: list[str]) -> list[RunInput]:
    """The run folders, tagged R1, R2, ... A folder that is not a run (or given twice) stops the comparison
    (TokbenchError); an unreadable job summary is left out and named in `problems`."""
    if not paths:
        raise TokbenchError("give at least one run folder to compare")
    seen: dict[Path, str] = {}
    runs = []
    for n, p in enumerate(paths, 1):
        path = Path(p)
        record = path / RUN_RECORD
        if not record.is_file():
            raise TokbenchError(f"{path} is not a tokbench run folder (no {RUN_RECORD}); give folders written by "
                                "`tokbench run --out DIR`")
        if path.resolve() in seen:
            raise TokbenchError(f"{path} is given twice (as {seen[path.resolve()]} and R{n}); give each run once")
        seen[path.resolve()] = f"R{n}"
        try:
            run = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            raise TokbenchError(f"{record} cannot be read ({e}); is the copy complete?") from None
        jobs, not_ok = [], 0
        for job_id in run.get("jobs", []):
            folder = job_dir(path, job_id)
            summary = folder / JOB_SUMMARY
            if not summary.is_file():
                not_ok += 1 if (folder / JOB_SKIPPED).is_file() else 0
                continue
            try:
                job = json.loads(summary.read_text())
            except (OSError, ValueError) as e:
                problems.append(f"{summary}: cannot be read ({e}); that job is left out")
                continue
            if job.get("status") == "ok" and isinstance(job.get("results"), dict):
                jobs.append(job)
        runs.append(RunInput(f"R{n}", path, run, jobs, len(run.get("jobs", [])), not_ok))
    if not any(r.jobs for r in runs):
        raise TokbenchError("none of the run folders holds a finished job: nothing to compare "
                            f"({', '.join(str(r.path) for r in runs)})")
    return runs


# ----------------------------------------------------------------------------------------------
# Conditions and provenance of each number


def device_label(device: dict[str, Any]) -> str:
    kind = str(device.get("device") or "?")
    model = device.get("gpu") or device.get("cpu") or ""
    return f"{kind} {model}".strip()


def measured_on(job: dict[str, Any], run: dict[str, Any]) -> str:
    """When a job's numbers were made: its finish time where recorded, else its run's last update."""
    return str(job.get("finished") or run.get("updated") or run.get("created") or "")


def _data_labels(runs: list[RunInput]) -> dict[str, str]:
    """Data group key -> a label that tells apart different image sets under one name."""
    by_name: dict[str, list[str]] = {}
    for r in runs:
        for j in r.jobs:
            key, name = sample_group(j, r.tag)
            if key not in by_name.setdefault(name, []):
                by_name[name].append(key)
    labels = {}
    for name, keys in by_name.items():
        for key in keys:
            if len(keys) == 1:
                labels[key] = name
            elif "@" in key:
                labels[key] = f"{name} ({key.split('@', 1)[1][:8]})"
            else:
                labels[key] = f"{name} ({key.split('|', 1)[0]}, no identity recorded)"
    return labels


def measurements(runs: list[RunInput]) -> pd.DataFrame:
    """One record per number of every finished job: its value and published value, what makes it
    comparable (tokenizer and sweep point, data set and identity, resolution, protocols) and where it came
    from (run, folder, device, versions, git revision, date)."""
    labels = _data_labels(runs)
    records = []
    for r in runs:
        versions = r.run.get("versions") or {}
        for j in r.jobs:
            group, _ = sample_group(j, r.tag)
            data = j.get("data") or {}
            dev = j.get("device") or r.run.get("device") or {}
            notes = j.get("metric_protocols") or {}
            published = j.get("published") or {}
            for key, value in (j.get("results") or {}).items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                records.append({
                    "tokenizer": j.get("label") or j.get("tokenizer"), "sweep_point": sweep_label(j),
                    "tokenizer_name": j.get("tokenizer"), "family": (j.get("spec") or {}).get("family"),
                    "dtype": j.get("dtype"), "metric": key,
                    "value": float(value) if math.isfinite(value) else None,
                    "published": published.get(key), "published_source": j.get("published_source") if key in
                    published else None,
                    "data": data.get("name"), "data_label": labels[group], "data_source": data.get("source"),
                    "data_limit": data.get("limit"), "images": j.get("images_evaluated"),
                    "data_identity": data.get("list_identity") or "", "data_group": group,
                    "resolution": j.get("resolution"), "eval_resolution": j.get("eval_resolution"),
                    "preprocessing": j.get("protocol"), "metric_protocol": protocol_note(key, notes),
                    "batch_size": j.get("batch_size"),
                    "run": r.tag, "run_folder": str(r.path), "job": j.get("job"),
                    "device": device_label(dev), "tokbench": versions.get("tokbench"),
                    "torch": versions.get("torch"), "git_revision": r.run.get("git_revision"),
                    "date": measured_on(j, r.run),
                    "weights": ((j.get("spec") or {}).get("source") or {}).get("weights"),
                    "continuous": (j.get("results") or {}).get("latent_values_per_pixel") is not None,
                    "better": (j.get("directions") or {}).get(key),  # as the metric recorded it
                })
    return pd.DataFrame.from_records(records)


def condition(rec: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """What must agree for two numbers of one data set to share a column unmarked."""
    cond = [("resolution", rec.get("resolution")), ("metrics at", _blank(rec.get("eval_resolution"))),
            ("preprocessing", rec.get("preprocessing")), ("metric protocol", rec.get("metric_protocol") or "")]
    if rec.get("metric") in SPEED_KEYS:
        cond += [("device", rec.get("device")), ("dtype", rec.get("dtype")), ("batch size", rec.get("batch_size"))]
    return tuple(cond)


def _blank(v: Any) -> Any:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _difference(cond: tuple, ref: tuple) -> str:
    def show(name: str, v: Any) -> str:
        return f"{v} px" if name in ("resolution", "metrics at") and v != "" else str(v or "(none)")

    return "; ".join(f"{name} {show(name, value)} (the column's others: {show(name, other)})"
                     for (name, value), (_, other) in zip(cond, ref) if value != other)


# ----------------------------------------------------------------------------------------------
# The table


def comparison_table(records: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """(formatted table, footnotes, records with the column each number landed in and its note).
    Rows: a tokenizer's sweep point in one run (newest run first among repeats); columns: the report's
    metrics, one per data set where there are several."""
    records = records.copy()
    records["column"], records["note"] = "", ""
    shown = records[records["metric"].isin([k for k, _, _ in MAIN_COLUMNS])]
    if shown.empty:
        return pd.DataFrame(), {}, records
    # rows in order of first appearance, repeats of one tokenizer and point together, newest first
    first = {}
    for rec in shown.itertuples():
        first.setdefault((rec.tokenizer, rec.sweep_point), len(first))
    dates: dict[tuple[str, str, str], str] = {}
    for rec in shown.itertuples():
        key = (rec.tokenizer, rec.sweep_point, rec.run)
        dates[key] = max(dates.get(key, ""), str(rec.date))
    row_keys = sorted(dates, key=lambda k: (first[(k[0], k[1])], _neg_date(dates[k]), k[2]))
    row_index = {k: i for i, k in enumerate(row_keys)}
    groups = list(dict.fromkeys(shown["data_group"]))
    many_data = len(groups) > 1
    labels = dict(zip(shown["data_group"], shown["data_label"]))
    cells: dict[tuple[int, str], str] = {}
    headers: list[str] = []
    notes: dict[str, str] = {}
    for key, header, unit in MAIN_COLUMNS:
        for group in groups:
            part = shown[(shown["metric"] == key) & (shown["data_group"] == group)]
            part = part[part["value"].notna()]
            if part.empty:
                continue
            col = f"{header} · {labels[group]}" if many_data else header
            headers.append(col)
            conds = [condition(rec) for rec in part.to_dict("records")]
            ref = Counter(conds).most_common(1)[0][0]
            best = _best(part, conds, key)
            for (idx, rec), cond in zip(part.iterrows(), conds):
                text = format_value(rec["value"], unit)
                if idx in best:
                    text = f"**{text}**"
                if key == "bpp" and rec["continuous"]:
                    text += " †"
                if rec["published"] is not None and not _nan(rec["published"]):
                    text += f" [{format_value(rec['published'], unit)}]"
                note = ""
                if cond != ref:
                    note = _difference(cond, ref)
                    mark = next((m for m, t in notes.items() if t == note), None) or _mark(len(notes))
                    notes[mark] = note
                    text += f" ^{{{mark}}}"
                records.loc[idx, ["column", "note"]] = [col, note]
                cells[(row_index[(rec["tokenizer"], rec["sweep_point"], rec["run"])], col)] = text
    rows = []
    multi_run = shown["run"].nunique() > 1
    for i, (tok, point, run) in enumerate(row_keys):
        mine = shown[(shown["tokenizer"] == tok) & (shown["sweep_point"] == point) & (shown["run"] == run)]
        label = tok + (f" ({point})" if point else "")
        if str(mine["weights"].iloc[0] or "").startswith("random"):
            label += " [random weights: speed only]"
        res = sorted({_res(r) for r in mine.to_dict("records")})
        row = {"tokenizer": label}
        if multi_run:
            row["run"] = run
        row.update({"res": ", ".join(res), "protocol": ", ".join(sorted({str(p) for p in mine["preprocessing"]}))})
        row.update({col: cells.get((i, col), "") for col in headers})
        rows.append(row)
    return pd.DataFrame(rows), notes, records


def _neg_date(date: str) -> tuple:
    return tuple(-ord(c) for c in str(date))  # newest first, ISO dates compare as text


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _res(rec: dict[str, Any]) -> str:
    res = str(rec["resolution"])
    return f"{res}->{int(rec['eval_resolution'])}" if not _nan(rec.get("eval_resolution")) and rec.get(
        "eval_resolution") else res


def _mark(n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[n] if n < len(letters) else f"{letters[n // 26 - 1]}{letters[n % 26]}"


def _best(part: pd.DataFrame, conds: list[tuple], key: str) -> set[Any]:
    """Index labels of the best value of `key` among numbers measured alike (two or more distinct values),
    in the direction the metric recorded for it (none where runs disagree or recorded none)."""
    ways = set(part["better"].dropna()) if "better" in part else set()
    if len(ways) != 1 or not ways <= {"higher", "lower"}:
        return set()
    higher = ways == {"higher"}
    best: set[Any] = set()
    for cond in set(conds):
        values = pd.Series([v for v, c in zip(part["value"], conds) if c == cond],
                           index=[i for i, c in zip(part.index, conds) if c == cond], dtype=float)
        if len(values) < 2 or values.nunique() < 2:
            continue
        target = values.max() if higher else values.min()
        best |= set(values.index[values == target])
    return best


def published_rows(records: pd.DataFrame) -> pd.DataFrame:
    """Every published number a suite cites beside the number measured for it, with its run."""
    pub = records[records["published"].notna()] if "published" in records else records.iloc[:0]
    rows = []
    for rec in pub.to_dict("records"):
        measured = rec["value"]
        rows.append({"tokenizer": rec["tokenizer"] + (f" ({rec['sweep_point']})" if rec["sweep_point"] else ""),
                     "run": rec["run"], "data": rec["data_label"], "metric": rec["metric"],
                     "published": f"{rec['published']:.4g}", "measured": "" if measured is None else f"{measured:.4g}",
                     "difference": "" if measured is None else f"{measured - rec['published']:+.4g}",
                     "source": " ".join(str(rec.get("published_source") or "").split())})
    return pd.DataFrame(rows)


def provenance(runs: list[RunInput]) -> pd.DataFrame:
    """One row per run: where its numbers came from."""
    rows = []
    for r in runs:
        v = r.run.get("versions") or {}
        suite = r.run.get("suite") or {}
        changed = environment_changes(runs[0].run, r.run) if r is not runs[0] else []
        rows.append({"run": r.tag, "folder": str(r.path), "suite": suite.get("name", ""),
                     "device": device_label(r.run.get("device") or {}),
                     "versions": ", ".join(f"{p} {v[p]}" for p in ("tokbench", "torch", "torchvision", "pillow")
                                           if p in v),
                     "git": str(r.run.get("git_revision") or "")[:12],
                     "measured": f"{r.run.get('created', '')} .. {r.run.get('updated', '')}",
                     "jobs": f"{len(r.jobs)} of {r.planned} finished",
                     f"differs from {runs[0].tag}": "; ".join(changed)})
    df = pd.DataFrame(rows)
    if len(runs) == 1:
        df = df.drop(columns=[c for c in df.columns if c.startswith("differs from")])
    return df


def repeated(records: pd.DataFrame) -> list[str]:
    """A line per tokenizer sweep point measured in more than one run."""
    lines = []
    if records.empty:
        return lines
    runs = records.groupby(["tokenizer", "sweep_point", "data_group"], sort=False)
    for (tok, point, _), g in runs:
        if g["run"].nunique() > 1:
            dates = g.drop_duplicates("run").sort_values("date", ascending=False)
            lines.append(f"{tok}" + (f" ({point})" if point else "") + f" on {g['data_label'].iloc[0]}: "
                         + ", ".join(f"{r.run} ({r.date})" for r in dates.itertuples()))
    return lines


def metric_protocols(records: pd.DataFrame) -> list[str]:
    """`metric: protocol (runs)` lines; a metric measured under different protocols gets a line for each."""
    lines = []
    if records.empty:
        return lines
    shown = records[records["metric"].isin([k for k, _, _ in MAIN_COLUMNS]) & (records["metric_protocol"] != "")]
    for (metric, text), g in shown.groupby(["metric", "metric_protocol"], sort=True):
        lines.append(f"{metric}: {text} ({', '.join(sorted(g['run'].unique()))})")
    return lines


# ----------------------------------------------------------------------------------------------
# Figures


def figures(records: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """Rate-distortion figures (quality against bits per pixel) and an understanding/reconstruction figure,
    one per data set; a curve per tokenizer and run; curves under another resolution or protocol than the
    figure's most common one say so in their label."""
    made = []
    if records.empty:
        return made
    groups = list(dict.fromkeys(records["data_group"]))
    for n, group in enumerate(groups):
        part = records[records["data_group"] == group]
        label = part["data_label"].iloc[0]
        suffix = f"_{n + 1}" if len(groups) > 1 else ""
        wide = _wide(part)
        if wide.empty:
            continue
        for metric in ("psnr", "ssim", "lpips", "rfid"):
            name = f"rd_{metric}{suffix}.png"
            if rate_distortion_plot(wide, metric, out / name):
                made.append((name, f"{metric.upper()} against bits per pixel on {label}"))
        name = f"understanding{suffix}.png"
        if understanding_plot(wide, out / name, dict(zip(part["metric"], part["better"]))):
            made.append((name, f"understanding against reconstruction on {label}"))
    return made


def _wide(part: pd.DataFrame) -> pd.DataFrame:
    """One row per job, its results as columns, labelled for the figures."""
    multi_run = part["run"].nunique() > 1
    meta = part.drop_duplicates(["run", "job"])
    geometry = Counter(zip(meta["resolution"], meta["preprocessing"])).most_common(1)[0][0]
    rows = []
    for (run, _), g in part.groupby(["run", "job"], sort=False):
        first = g.iloc[0]
        label = first["tokenizer"] + (f" [{run}]" if multi_run else "")
        if (first["resolution"], first["preprocessing"]) != geometry:
            label += f" ({first['resolution']} px, {first['preprocessing']})"
        row = {"tokenizer": label, "data": first["data_label"], "family": first["family"], "params": first["sweep_point"]}
        row.update({rec["metric"]: rec["value"] for rec in g.to_dict("records")})
        rows.append(row)
    return pd.DataFrame(rows)


def understanding_plot(wide: pd.DataFrame, path: Path, better: dict[str, Any] | None = None) -> bool:
    """Each tokenizer as a point: an understanding score (probe or zero-shot accuracy, or semantic
    similarity) against a reconstruction score (PSNR, else rFID, LPIPS, SSIM)."""
    y = next((k for k in UNDERSTANDING_KEYS for c in wide.columns if c == k or c.startswith(k + "_k")), None)
    if y is not None and y not in wide.columns:
        y = next(c for c in wide.columns if c.startswith(y + "_k"))
    x = next((k for k in RECONSTRUCTION_KEYS if k in wide.columns), None)
    if x is None or y is None or wide[[x, y]].dropna().empty:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = wide.dropna(subset=[x, y])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for _, r in points.iterrows():
        codec = r["family"] in CODEC_FAMILIES
        ax.scatter(r[x], r[y], marker="s" if codec else "o", s=28)
        ax.annotate(r["tokenizer"] + (f" ({r['params']})" if r["params"] else ""), (r[x], r[y]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    names = {k: h for k, h, _ in MAIN_COLUMNS}
    ax.set_xlabel(names.get(x, x) + (" (lower is better)" if (better or {}).get(x) == "lower" else ""))
    ax.set_ylabel(names.get(y, y))
    ax.grid(True, alpha=0.3)
    ax.set_title("understanding against reconstruction")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------
# Writing


def _md_cells(table: pd.DataFrame) -> pd.DataFrame:
    return table.map(lambda t: re.sub(r"\^\{(.+?)\}", r"^\1", str(t)))


def _tex(text: str) -> str:
    out = []
    for ch in text:
        out.append({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                    "†": r"\dag{}", "·": r"$\cdot$"}.get(ch, ch))
    return "".join(out)


def _tex_cell(text: str) -> str:
    out = []
    for part in re.split(r"(\*\*.+?\*\*|\^\{.+?\})", str(text)):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append(r"\textbf{" + _tex(part[2:-2]) + "}")
        elif part.startswith("^{") and part.endswith("}"):
            out.append(r"\textsuperscript{" + _tex(part[2:-1]) + "}")
        else:
            out.append(_tex(part))
    return "".join(out)


def latex_table(table: pd.DataFrame, notes: dict[str, str], runs: list[RunInput]) -> str:
    """A booktabs tabular of the table, footnotes and runs in comments and a last row."""
    if table.empty:
        return "% no results\n"
    text_cols = {"tokenizer", "run", "res", "protocol"}
    spec = "".join("l" if c in text_cols else "r" for c in table.columns)
    lines = [f"% tokbench comparison of {', '.join(f'{r.tag}: {r.path}' for r in runs)}",
             *(f"% {m}: {t}" for m, t in notes.items()),
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_tex(str(c)) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_cell(v) for v in row) + r" \\" for row in table.astype(str).itertuples(index=False)]
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def compare_runs(paths: list[str | Path], out: str | Path, log=print) -> Comparison:
    """Write the comparison of `paths` into `out` (see the module docstring). Raises TokbenchError when it
    cannot run; `Comparison.problems` lists what was left out."""
    out = Path(out)
    problems: list[str] = []
    runs = read_runs(paths, problems)
    if (out / RUN_RECORD).is_file() or any(out.resolve() == r.path.resolve() for r in runs):
        raise TokbenchError(f"--out {out} is a run folder; give the comparison a folder of its own")
    out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out, log, what="compare"):
        return _write(runs, out, problems)


def _write(runs: list[RunInput], out: Path, problems: list[str]) -> Comparison:
    records = measurements(runs)
    table, notes, records = comparison_table(records)
    records.drop(columns=["data_group", "continuous"]).to_csv(out / COMPARISON_CSV, index=False)
    prov = provenance(runs)
    pub = published_rows(records)
    write_json(out / COMPARISON_JSON, {"runs": prov.to_dict("records"), "footnotes": notes,
                                       "numbers": json.loads(records.to_json(orient="records"))})
    figs = figures(records, out)
    again = repeated(records)
    protocols = metric_protocols(records)
    prep = {}
    for r in runs:
        for j in r.jobs:
            prep.setdefault(j.get("protocol"), j.get("protocol_description", ""))

    # Markdown
    md = [f"# tokbench comparison of {len(runs)} run{'s' * (len(runs) != 1)}", "", "## Runs", "",
          markdown_table(prov), "## Results", "", markdown_table(_md_cells(table)) if not table.empty else "_(none)_\n"]
    md += _table_notes(table, notes, again, markdown=True)
    if not pub.empty:
        md += ["", "## Published vs measured", "", markdown_table(pub)]
    md += ["", "## Protocols", ""] + [f"- {line}" for line in protocols]
    md += [f"- preprocessing **{k}**: {v}" for k, v in sorted(prep.items(), key=lambda kv: str(kv[0]))]
    if problems:
        md += ["", "## Left out", ""] + [f"- {p}" for p in problems]
    if figs:
        md += ["", "## Figures", ""] + [f"![{cap}]({name})\n" for name, cap in figs]
    (out / COMPARISON_MD).write_text("\n".join(md) + "\n")
    (out / COMPARISON_TEX).write_text(latex_table(table, notes, runs))

    # HTML: the viewer
    write_assets(out)
    labels = _data_labels(runs)
    samples = viewer_data(out, [SampleJob(j, r.path, sample_group(j, r.tag)[0], labels[sample_group(j, r.tag)[0]],
                                          run=r.tag if len(runs) > 1 else "",
                                          copy=True, seed=int((r.run.get("suite") or {}).get("seed") or 0))
                                for r in runs for j in r.jobs])
    e = html.escape
    notes_html = "".join(f"<li>{e(line)}</li>" for line in _table_notes(table, notes, again, markdown=False))
    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tokbench comparison of {len(runs)} runs</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1500px;color:#222}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}#results td{text-align:right}#results td:nth-child(-n+4){text-align:left}"
        "img{max-width:100%}.note{color:#555;font-size:13px}figure img{margin:1em 0}</style>",
        head_html(), "</head><body>",
        f"<h1>tokbench comparison of {len(runs)} run{'s' * (len(runs) != 1)}</h1>",
        "<h2>Runs</h2>", table_html(prov, "runs"),
        "<h2>Results</h2>",
        table_html(table, "results", column_titles(list(table.columns), _notes_by_key(records)),
                   {"protocol": [", ".join(prep.get(p.strip(), "") for p in str(v).split(","))
                                 for v in table["protocol"]]}) if not table.empty else "<p>(no results)</p>",
        f"<ul class='note'>{notes_html}</ul>" if notes_html else "",
        viewer_section_html(samples),
    ]
    if not pub.empty:
        page += ["<h2>Published vs measured</h2>", table_html(pub, "published")]
    page.append("<h2>Protocols</h2><ul class='note'>" + "".join(f"<li>{e(line)}</li>" for line in protocols)
                + "".join(f"<li>preprocessing <b>{e(str(k))}</b>: {e(str(v))}</li>" for k, v in prep.items()) + "</ul>")
    if problems:
        page.append("<h2>Left out</h2><ul class='note'>" + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>")
    if figs:
        page.append("<h2>Figures</h2>" + "".join(
            f"<figure><img src='{e(name, quote=True)}' alt='{e(cap, quote=True)}'><figcaption>{e(cap)}</figcaption>"
            "</figure>" for name, cap in figs))
    page.append(script_html() + "</body></html>")
    (out / REPORT_HTML).write_text("\n".join(page))
    return Comparison(runs, records, table, notes, problems)


def _notes_by_key(records: pd.DataFrame) -> dict[str, str]:
    """Result key -> its protocol text (several texts joined: the footnotes say which number has which)."""
    out: dict[str, str] = {}
    for rec in records.drop_duplicates(["metric", "metric_protocol"]).to_dict("records"):
        if rec["metric_protocol"]:
            out[rec["metric"]] = " | ".join(filter(None, (out.get(rec["metric"]), rec["metric_protocol"])))
    return out


def _table_notes(table: pd.DataFrame, notes: dict[str, str], again: list[str], markdown: bool) -> list[str]:
    lines = []
    if table.empty:
        return lines
    cells = " ".join(table.astype(str).values.ravel())
    if "**" in cells:
        lines.append(("Bold" if markdown else "bold") + ": the best value of a column among the numbers measured "
                     "alike (same data set, resolution and protocols; speed: same device, dtype and batch size).")
    if "[" in cells:
        lines.append("Numbers in [brackets] are the published values the suites cite (Published vs measured).")
    if "†" in cells:
        lines.append(f"† {CONTINUOUS_NOTE}.")
    for mark, text in notes.items():
        lines.append(f"{'^' if markdown else ''}{mark}: measured under another protocol than the column's other "
                     f"numbers: {text}.")
    if again:
        lines.append("Measured in more than one run (each row names its run; newest first): " + "; ".join(again) + ".")
    return [("- " if markdown else "") + line for line in lines] if markdown else lines
