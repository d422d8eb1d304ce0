"""The report's viewer: a static page (report/index.html of a run, or of a comparison) that shows the
saved sample images, each original beside every tokenizer's reconstruction, and the results as a table
to sort.

What it needs from a run folder is what the run saved: the originals and reconstructions of the first
`save_samples` images of each job (`jobs/<job>/images/`, lossless PNG, `runfolder.sample_image`) and the
per-image rows (`rows.jsonl`). The page itself is plain HTML with the project's own script and stylesheet
(`tokbench/viewer_assets/`, copied to `report/viewer/`): it opens from disk with no server and no network.
Images stay separate files; only numbers and labels are embedded (as JSON in the page, read by the script and
put in the page as text, never as markup).

Absolute-error heat maps are made here, not in the browser: a page opened from disk may not read its own
images' pixels (file:// images taint a canvas), so `report/viewer/diff/<job>/<position>.png` is written
beside the page, mean |original - reconstruction| over RGB on a fixed scale (`DIFF_FULL_SCALE`).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from .presentation import MAIN_COLUMNS, format_value, metric_directions, sweep_label
from .runfolder import (
    IMAGES_DIR,
    ROWS_FILE,
    VIEWER_DIFF_DIR,
    VIEWER_DIR,
    VIEWER_SAMPLES_DIR,
    job_dir,
    read_rows,
    sample_image,
    sample_positions,
)

ASSETS = Path(__file__).parent / "viewer_assets"
ASSET_FILES = ("viewer.js", "viewer.css")
DIFF_LEGEND = "diff_scale.png"
# The heat map's top colour: a mean absolute error of a quarter of the range (64 of 255 levels) or more.
DIFF_FULL_SCALE = 0.25
DIFF_COLORMAP = "inferno"
# Per-image values shown under each image (the others are in its tooltip and the sort menu).
SHOWN_VALUES = ("psnr", "ssim", "ms_ssim", "lpips", "lpips_vgg", "bpp", "text_acc", "text_ned", "clip_score",
                "semantic_similarity")
SHORT_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "lpips_vgg": "LPIPS-VGG",
               "bpp": "bpp", "text_acc": "text acc", "text_ned": "NED", "clip_score": "CLIP",
               "semantic_similarity": "sem."}
# Row fields that are bookkeeping, not per-image numbers.
NOT_VALUES = {"index", "id", "split", "label"}
MAX_CROPS = 24  # words or faces listed per image


def write_assets(out: Path) -> Path:
    """Copy the viewer's script and stylesheet into `out/viewer/` (the page links them relatively)."""
    dest = Path(out) / VIEWER_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for name in ASSET_FILES:
        shutil.copyfile(ASSETS / name, dest / name)
    return dest


def head_html() -> str:
    return f"<link rel='stylesheet' href='{VIEWER_DIR}/viewer.css'>"


def script_html() -> str:
    return f"<script src='{VIEWER_DIR}/viewer.js'></script>"


# ----------------------------------------------------------------------------------------------
# Tables

_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _leading_number(text: str) -> float | None:
    m = _NUMBER.match(text.replace("**", ""))
    return float(m.group(0)) if m else None


def table_html(table: pd.DataFrame, table_id: str, titles: dict[str, str] | None = None,
               cell_titles: dict[str, list[str]] | None = None) -> str:
    """A table that sorts by any column in the browser (the viewer script), every text escaped. Cells
    are the report's formatted strings: `**x**` marks a best value, shown bold. A column whose non-empty
    cells all start with a number sorts by that number; `titles` are the headers' tooltips (the protocol
    each column was measured under), `cell_titles` per-column lists of cell tooltips."""
    titles, cell_titles = titles or {}, cell_titles or {}
    numeric = {}
    for col in table.columns:
        texts = [str(v) for v in table[col].tolist() if str(v).strip() and not _is_missing(v)]
        numeric[col] = bool(texts) and all(_leading_number(t) is not None for t in texts)
    head = "".join(f"<th{_attr('title', titles.get(col))}>{html.escape(str(col))}</th>" for col in table.columns)
    body = []
    for i, (_, row) in enumerate(table.iterrows()):
        cells = []
        for col in table.columns:
            value = row[col]
            text = "" if _is_missing(value) else str(value)
            sort = _leading_number(text) if numeric[col] and text else None
            tip = (cell_titles.get(col) or [None] * len(table))[i]
            cells.append(f"<td{_attr('data-sort', None if sort is None else repr(sort))}{_attr('title', tip)}>"
                         f"{_marked(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table id='{html.escape(table_id, quote=True)}' class='dataframe sortable'><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _attr(name: str, value: Any) -> str:
    return "" if value is None or value == "" else f" {name}='{html.escape(str(value), quote=True)}'"


def _marked(text: str) -> str:
    """Escaped cell text; `**x**` -> <b>x</b> (a best value), `^{a}` -> a footnote mark."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b class='best'>\1</b>", out)
    return re.sub(r"\^\{(.+?)\}", r"<sup class='note-mark'>\1</sup>", out)


def column_titles(columns: list[str], metric_notes: dict[str, str]) -> dict[str, str]:
    """Header -> the protocol of the metric behind it (from the jobs' `metric_protocols`)."""

    out = {"res": "input side in pixels (A->B: metrics after resizing to B)",
           "protocol": "how each image became the tokenizer's square input (see Protocols)"}
    for key, header, unit in MAIN_COLUMNS:
        note = protocol_note(key, metric_notes)
        for col in columns:  # a comparison's columns may name their data set: `PSNR (dB) · imagenet-val`
            if col == header or col.startswith(header + " · "):
                out[col] = f"{unit}; {note}" if note else unit
    return out


# result keys whose protocol is recorded under another metric's key
_PROTOCOL_OF = {"tokens_per_image": "bpp", "bits_per_image": "bpp", "latent_values_per_pixel": "bpp",
                "codebook_usage": "codebook", "code_perplexity": "codebook", "code_entropy": "codebook",
                "encode_images_per_s": "speed", "decode_images_per_s": "speed", "peak_memory_mb": "speed",
                "encode_tokens_per_s": "speed"}


def protocol_note(key: str, metric_notes: dict[str, str]) -> str:
    """The protocol text recorded for result `key`: its own entry, else the metric that produced it (the
    longest recorded name that `key` starts with, or the known producer), else ''."""
    if key in metric_notes:
        return str(metric_notes[key])
    if _PROTOCOL_OF.get(key) in metric_notes:
        return str(metric_notes[_PROTOCOL_OF[key]])
    prefixes = [k for k in metric_notes if key.startswith(k + "_") or key.startswith(k)]
    return str(metric_notes[max(prefixes, key=len)]) if prefixes else ""


# ----------------------------------------------------------------------------------------------
# Samples


@dataclass
class SampleJob:
    """A finished job whose saved samples the viewer shows. `group`: jobs of one group saw the same images
    (position p is one picture in all of them; a data-set identity, or one run's data source); `run`: the
    run's tag in a comparison ("R2"), empty in a run's own report; `copy`: copy the PNGs beside the page
    (a comparison, so that it opens without the run folders) instead of linking into the run folder."""

    job: dict[str, Any]
    run_dir: Path
    group: str
    group_label: str = ""
    run: str = ""
    copy: bool = False
    seed: int = 0  # the run's seed (a rendered data set, text-synth, is made again from it for the text crops)


def sample_group(job: dict[str, Any], run: str = "") -> tuple[str, str]:
    """(group key, label) of a job's images: jobs with one key saw the same pictures at each position. The
    key is the data set's recorded `list_identity` (a hash of its file names and sizes); a job recorded without
    one is grouped only with its own run's jobs on the same source and limit (`run`: the run's tag)."""
    data = job.get("data") or {}
    identity = data.get("list_identity")
    name = str(data.get("name") or data.get("source") or "data")
    if identity:
        return f"{name}@{str(identity)[:12]}", name
    return f"{run}|{data.get('source')}|{data.get('limit')}", name


def _url(path: Path, page_dir: Path) -> str:
    rel = os.path.relpath(path, page_dir)
    return "/".join(quote(part) for part in Path(rel).parts)


def _diff_lut():
    import numpy as np
    from matplotlib import colormaps

    return (np.asarray(colormaps[DIFF_COLORMAP](np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(np.uint8)


def diff_map(original: Path, recon: Path, dest: Path) -> bool:
    """Write the absolute-error heat map of a reconstruction (mean |a - b| over RGB, 0 -> black,
    >= DIFF_FULL_SCALE -> the colour map's top). False when the two images differ in size or fail to open."""
    import numpy as np
    from PIL import Image

    if dest.is_file() and dest.stat().st_mtime >= max(original.stat().st_mtime, recon.stat().st_mtime):
        return True
    try:
        with Image.open(original) as a, Image.open(recon) as b:
            x = np.asarray(a.convert("RGB"), dtype=np.float64)
            y = np.asarray(b.convert("RGB"), dtype=np.float64)
    except OSError:
        return False
    if x.shape != y.shape:
        return False
    error = np.abs(x - y).mean(axis=2) / 255.0
    level = np.clip(np.round(error / DIFF_FULL_SCALE * 255), 0, 255).astype(np.uint8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.png")
    heat = Image.fromarray(level, mode="L").convert("P")  # palette image: a third of an RGB file's size
    heat.putpalette(_diff_lut().reshape(-1).tolist())
    heat.save(tmp, optimize=True)
    os.replace(tmp, dest)
    return True


def _diff_legend(dest: Path) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.repeat(_diff_lut()[None], 8, axis=0)).save(dest)


def metric_info(keys: list[str], directions: dict[str, str]) -> list[dict[str, Any]]:
    """Sort and display entries for per-image value keys: label, short name, which way is better (as the
    metrics recorded it: `presentation.metric_directions`)."""
    headers = {k: h for k, h, _ in MAIN_COLUMNS}
    order = {k: i for i, k in enumerate(SHOWN_VALUES)}
    out = []
    for k in sorted(keys, key=lambda k: (order.get(k, len(order)), k)):
        better = directions.get(k)
        out.append({"key": k, "label": headers.get(k, k), "short": SHORT_NAMES.get(k, k), "better": better,
                    "show": k in SHOWN_VALUES})
    return out


def _value_text(key: str, value: float) -> str:
    units = {k: u for k, _, u in MAIN_COLUMNS}
    return format_value(value, units[key]) if key in units else f"{value:.4g}"


def viewer_data(page_dir: Path, jobs: list[SampleJob], log=lambda s: None) -> dict[str, Any]:
    """The viewer's data for the page in `page_dir`: one column per job that saved reconstructions, one
    image per (group, data-set position) any of them saved, with each job's per-image numbers. Writes the
    heat maps (and, for `copy` jobs, the PNG copies) under `page_dir/viewer/`."""
    page_dir = Path(page_dir)
    assets = page_dir / VIEWER_DIR
    columns: list[dict[str, Any]] = []
    images: dict[tuple[str, int], dict[str, Any]] = {}
    originals_seen: dict[tuple[str, int, str], str] = {}
    value_keys: set[str] = set()
    crop_jobs: dict[tuple[str, str], SampleJob] = {}  # (group, "text" or "faces") -> a job that measured them
    for n, sj in enumerate(jobs):
        j = sj.job
        if j.get("status") != "ok" or not j.get("spec", {}).get("supports_decode", True):
            continue
        folder = job_dir(sj.run_dir, j["job"]) / IMAGES_DIR
        stems = [s for s in sample_positions(folder) if s.isdigit()]
        if not stems:
            continue
        col_id = f"c{n}"
        point = sweep_label(j)
        label = j["label"] + (f" ({point})" if point else "") + (f" [{sj.run}]" if sj.run else "")
        res = j.get("resolution")
        columns.append({"id": col_id, "label": label, "tokenizer": j["label"],
                        "point": " ".join(x for x in (point, f"[{sj.run}]" if sj.run else "") if x),
                        "title": f"{j.get('protocol')} at {res} px" + (
                            f", metrics at {j['eval_resolution']} px" if j.get("eval_resolution") else "")
                        + (f"; run {sj.run}" if sj.run else "")})
        rows = {int(r["index"]): r for r in read_rows(job_dir(sj.run_dir, j["job"]) / ROWS_FILE) if "index" in r}
        for kind, key in (("text", "text_acc"), ("faces", "face_sim")):  # the metrics whose regions are known
            if any(k.startswith(key) for k in j.get("results") or {}):
                crop_jobs.setdefault((sj.group, kind), sj)
        # a comparison copies what the page shows (one original per image and geometry, not every job's)
        copy_to = assets / VIEWER_SAMPLES_DIR / (sj.run or "run") / j["job"] if sj.copy else None
        for stem in stems:
            pos = int(stem)
            original, recon = sample_image(folder, pos, "original"), sample_image(folder, pos, "recon")
            row = rows.get(pos, {})
            entry = images.setdefault((sj.group, pos), {
                "key": f"{sj.group}:{pos}", "id": str(row.get("id", f"image {pos}")), "position": pos,
                "where": f"{sj.group_label}, position {pos}" if sj.group_label else f"position {pos}",
                "originals": [], "cells": {}})
            where = (j.get("protocol"), res)
            if (sj.group, pos, repr(where)) not in originals_seen and original.is_file():
                originals_seen[(sj.group, pos, repr(where))] = col_id
                entry["originals"].append({"label": "original", "src": _url(_copy(original, copy_to), page_dir),
                                           "title": f"input after {where[0]} at {where[1]} px"})
            values = {k: [v, _value_text(k, v)] for k, v in row.items()
                      if k not in NOT_VALUES and isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v)}
            value_keys |= set(values)
            cell: dict[str, Any] = {"values": values}
            if recon.is_file():
                cell["src"] = _url(_copy(recon, copy_to), page_dir)
                diff = assets / VIEWER_DIFF_DIR / (sj.run or "run") / j["job"] / f"{pos:05d}.png"
                if original.is_file() and diff_map(original, recon, diff):
                    cell["diff"] = _url(diff, page_dir)
            else:
                cell["missing"] = "no reconstruction saved"
            entry["cells"][col_id] = cell
    if any(len(e["originals"]) > 1 for e in images.values()):
        for e in images.values():  # several input geometries for one image: say which original is which
            for o in e["originals"]:
                o["label"] = f"original ({o['title'].removeprefix('input after ')})"
    for (group, kind), sj in crop_jobs.items():
        _add_crops(sj, kind, [e for (g, _), e in images.items() if g == group])
    data = {"columns": columns, "images": [images[k] for k in sorted(images)], "metrics": metric_info(sorted(value_keys), metric_directions([sj.job for sj in jobs])),
            "size": 256, "empty": "no sample images were saved (suite option save_samples: N)"}
    if images:
        assets.mkdir(parents=True, exist_ok=True)
        _diff_legend(assets / DIFF_LEGEND)
        data.update(diff_legend=f"{VIEWER_DIR}/{DIFF_LEGEND}", diff_scale_low="|error| 0",
                    diff_scale_high=f"{DIFF_FULL_SCALE:g} of the range or more (mean over RGB)")
        data["note"] = ("Click an image to zoom in there (shift-click: out), scroll to zoom, drag to move: every "
                        "column of that image follows. Numbers under each image are its own (per-image rows).")
    return data


def _copy(src: Path, dest_dir: Path | None) -> Path:
    """`src` copied into `dest_dir` (unless an identical copy is there); `src` itself without a `dest_dir`."""
    if dest_dir is None:
        return src
    dest = dest_dir / src.name
    if src.is_file() and not (dest.is_file() and dest.stat().st_mtime >= src.stat().st_mtime
                              and dest.stat().st_size == src.stat().st_size):
        dest_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return dest


def _add_crops(sj: SampleJob, kind: str, entries: list[dict[str, Any]]) -> None:
    """The words (`kind` "text") or faces ("faces") of each sample of an annotated data set, as boxes in
    fractions of the image, smallest first, so that a click zooms every column to one of them. Needs the
    data set on this machine, unchanged at those positions (else none)."""
    from .core import TokbenchError
    from .data import open_dataset, open_image, place_faces, place_text

    j = sj.job
    data = j.get("data") or {}
    try:
        ds = open_dataset(data["source"], data.get("limit"), seed=sj.seed)
        side = int(j["resolution"])
        for e in entries:
            pos = e["position"]
            if pos >= len(ds) or ds.records[pos].id != e["id"]:
                continue  # not the image the run saved (the data set changed since)
            rec = ds.records[pos]
            size = open_image(rec.path).size
            if kind == "text":
                placed = place_text(rec, j["protocol"], size, side)
                found = list(zip(placed.boxes, placed.texts)) if placed else []
            else:
                placed = place_faces(rec.faces, j["protocol"], size, side)
                found = [(box, f"face {n + 1}") for n, box in enumerate(placed.boxes)] if placed else []
            found = sorted(found, key=lambda w: w[0][3] - w[0][1])[:MAX_CROPS]
            if found:
                e.setdefault("crops", []).extend(
                    {"text": text, "box": [round(v / side, 5) for v in box], "title": f"{box[3] - box[1]:.0f} px high"}
                    for box, text in found)
                e["crops_label"] = "regions (click to zoom):" if "crops_label" in e else f"{kind} (click to zoom):"
    except (TokbenchError, OSError, KeyError, ValueError, TypeError):
        return


def _json_for_script(data: Any) -> str:
    """JSON that can sit inside <script>: '<', '>' and '&' escaped, so no text can close the element."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def viewer_section_html(data: dict[str, Any], heading: str = "Samples") -> str:
    """The viewer's place in a page: a heading, the element the script fills, and its data."""
    count = len(data.get("images", []))
    intro = (f"{count} image{'s' * (count != 1)}, each original beside every reconstruction"
             if count else "no sample images were saved (suite option <code>save_samples: N</code>)")
    return (f"<h2 id='samples'>{html.escape(heading)}</h2><p class='note'>{intro}.</p>"
            "<div id='viewer'></div>"
            f"<script type='application/json' id='viewer-data'>{_json_for_script(data)}</script>")


def screenshot(page: str | Path, dest: str | Path | None = None, width: int = 1400, height: int = 900) -> Path:
    """A PNG of the viewer of `page` (default: `viewer.png` beside it) as headless Chromium shows it: the
    images sorted worst PSNR first, the first one zoomed x4 at its centre in every column. Needs Debian's
    chromium and chromium-driver and Selenium (the test extra)."""
    import shutil as _shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from .runfolder import VIEWER_SCREENSHOT

    page = Path(page).resolve()
    dest = Path(dest) if dest else page.parent / VIEWER_SCREENSHOT
    chromium = _shutil.which("chromium") or _shutil.which("chromium-browser")
    driver_path = _shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise RuntimeError("the screenshot needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return document.getElementById('viewer').dataset.ready === '1' && [...document.images].every(i => i.complete)"))
        driver.execute_script("""
            const sort = document.getElementById('viewer-sort');
            if ([...sort.options].some(o => o.value === 'psnr|asc')) { sort.value = 'psnr|asc'; sort.dispatchEvent(new Event('change')); }
            const size = document.getElementById('viewer-size'); size.value = '192'; size.dispatchEvent(new Event('change'));
            const vp = document.querySelector('.sample .vp');
            if (vp) for (let i = 0; i < 2; i++) {
              const r = vp.getBoundingClientRect();
              const at = {clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, button: 0, bubbles: true};
              vp.dispatchEvent(new PointerEvent('pointerdown', at)); vp.dispatchEvent(new PointerEvent('pointerup', at));
            }
            document.getElementById('samples').scrollIntoView();""")
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
        driver.save_screenshot(str(dest))
    finally:
        driver.quit()
    return dest
