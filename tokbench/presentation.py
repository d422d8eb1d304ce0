"""How results are labelled, grouped and tabulated, shared by every report section (the main report,
the text section, comparisons): a sweep point's label, the curves of a rate-distortion figure, Markdown tables.
"""

from __future__ import annotations

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
