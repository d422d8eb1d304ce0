"""Report of a `gen-eval` folder: report.md, summary.csv, per_prompt.csv, index.html and a sample grid.

Rebuilt from the files `gen-eval` writes (results.json, rows.jsonl, per_prompt.json) by `rebuild_report`.
Each number is shown under its result key, whose protocol the report lists.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..report import markdown_table
from ..runfolder import GEN_PER_PROMPT, GEN_RESULTS, ROWS_FILE

GRID_PROMPTS = 8  # best and worst prompts shown in the grid (each)
GRID_SAMPLES = 4


def _main_key(result: dict[str, Any]) -> str | None:
    keys = [k for k in result["protocols"] if k.startswith(("clip_score_", "clip_s_"))]
    return keys[0] if keys else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.4g}, {v[1]:.4g}]"
    return str(v)


def sample_grid(per_prompt: list[dict[str, Any]], rows: list[dict[str, Any]], root: Path, key: str | None,
                path: Path, cell: int = 128) -> bool:  # fmt: skip
    """Best and worst prompts by `key` (all when few), one row each: its samples and its score."""
    from PIL import Image, ImageDraw

    scored = [p for p in per_prompt if p.get("images")]
    if not scored:
        return False
    if key is not None:
        scored.sort(key=lambda p: -p.get(key, float("-inf")))
    shown = scored if len(scored) <= 2 * GRID_PROMPTS else scored[:GRID_PROMPTS] + scored[-GRID_PROMPTS:]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    label_h = 30
    canvas = Image.new("RGB", (cell * GRID_SAMPLES, (cell + label_h) * len(shown)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, p in enumerate(shown):
        y = i * (cell + label_h)
        score = f" {key.split('_')[0]}={p[key]:.2f}" if key and key in p else ""
        draw.text((4, y + 2), f"{p['id']} [{p['category']}]{score}"[:70], fill="black")
        draw.text((4, y + 15), p["prompt"][:70], fill="gray")
        for j, r in enumerate(by_id.get(p["id"], [])[:GRID_SAMPLES]):
            try:
                with Image.open(root / r["image"]) as im:
                    canvas.paste(im.convert("RGB").resize((cell, cell), Image.BICUBIC), (j * cell, y + label_h))
            except OSError:
                continue
            if key and key in r:
                draw.text((j * cell + 3, y + label_h + 3), f"{r[key]:.1f}", fill="white", stroke_width=1,
                          stroke_fill="black")  # fmt: skip
    canvas.save(path)
    return True


def write_gen_report(out: Path, result: dict[str, Any], rows: list[dict[str, Any]],
                     per_prompt: list[dict[str, Any]], root: Path) -> Path:  # fmt: skip
    summary = result["summary"]
    key = _main_key(result)
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    pd.DataFrame([{k: _fmt(v) if isinstance(v, list) else v for k, v in flat.items()}]).to_csv(
        out / "summary.csv", index=False)  # fmt: skip
    pp = pd.DataFrame(per_prompt)
    pp.to_csv(out / "per_prompt.csv", index=False)
    c = result["counts"]
    md = [f"# tokbench gen-eval: {result['images_dir']}", "",
          f"- layout: {result['layout']}; prompts {c['prompts']}, images scored {c['images_scored']}, "
          f"missing {c['missing']}, extra {c['extra']}, unreadable {c['unreadable']}"]  # fmt: skip
    gen = result.get("generator") or {}
    if gen:
        s = result.get("generation") or {}
        md.append(f"- generator: {gen.get('model')} ({gen.get('source')}, revision {gen.get('revision')}); "
                  f"cfg {s.get('cfg_weight')}, temperature {s.get('temperature')}, {s.get('per_prompt')} per prompt, "
                  f"seed {s.get('seed')}")  # fmt: skip
    md += ["", "## Summary", "", markdown_table(pd.DataFrame([{"result": k, "value": _fmt(v)} for k, v in flat.items()]))]
    cat_tables = {k: v for k, v in summary.items() if k.endswith("_by_category")}
    if cat_tables:
        df = pd.DataFrame(cat_tables)
        df.index.name = "category"
        counts = pp.groupby("category")["images"].sum() if not pp.empty else None
        df = df.reset_index()
        if counts is not None:
            df["images"] = df["category"].map(lambda x: int(counts.get(x, counts.get("", 0))))
        md += ["", "## Per category", "", markdown_table(df.apply(lambda col: col.map(_fmt)))]
    if key is not None and not pp.empty and key in pp:
        ranked = pp.dropna(subset=[key]).sort_values(key, ascending=False)
        cols = [c for c in ("id", "category", "prompt", key, "diversity", "retok_id_match", "retok_psnr") if c in pp]
        md += ["", f"## Best prompts ({key})", "", markdown_table(ranked[cols].head(10).apply(lambda col: col.map(_fmt)))]
        md += ["", f"## Worst prompts ({key})", "", markdown_table(ranked[cols].tail(10).iloc[::-1].apply(lambda col: col.map(_fmt)))]
    figures = []
    if sample_grid(per_prompt, rows, root, key, out / "grid.png"):
        figures.append("grid.png")
        md += ["", "## Samples", "", "![best and worst prompts](grid.png)"]
    md += ["", "## Protocols", ""] + [f"- `{k}`: {v}" for k, v in result["protocols"].items()]
    for name in ("missing", "extra", "unreadable", "problems"):
        if result.get(name):
            md += ["", f"## {name.capitalize()} ({len(result[name])})", ""] + [f"- {x}" for x in result[name][:200]]
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text)
    body = "".join(f"<pre>{html.escape(text)}</pre>")
    imgs = "".join(f'<img src="{f}" style="max-width:100%">' for f in figures)
    (out / "index.html").write_text(f"<!doctype html><meta charset=utf-8><title>tokbench gen-eval</title>{imgs}{body}")
    return out


def rebuild_report(out: str | Path) -> Path:
    """Write the report again from a gen-eval folder's files."""
    out = Path(out)
    result = json.loads((out / GEN_RESULTS).read_text())
    rows = [json.loads(x) for x in (out / ROWS_FILE).read_text().splitlines() if x.strip()]
    per_prompt = json.loads((out / GEN_PER_PROMPT).read_text())
    return write_gen_report(out, result, rows, per_prompt, Path(result["images_dir"]))
