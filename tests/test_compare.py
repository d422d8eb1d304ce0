"""`tokbench compare`: numbers of several run folders in one table only where they were measured alike
(same images by the data set's list identity, same resolution and protocols; speed also on the same device),
footnoted or in separate columns where not, each with its provenance; bad input gives exit 2 or 1."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.test_runner import make_folder
from tokbench.cli import main as cli
from tokbench.compare import compare_runs
from tokbench.runfolder import (
    COMPARISON_CSV,
    COMPARISON_MD,
    COMPARISON_TEX,
    REPORT_HTML,
    RUN_RECORD,
    VIEWER_DIR,
    VIEWER_SAMPLES_DIR,
)
from tokbench.runner import run_suite
from tokbench.suite import parse_suite

LABEL = "<b>webp</b>"


def _run(out: Path, data: list[str], resolution: int) -> Path:
    suite = parse_suite({"name": "cmp", "data": data, "resolution": resolution, "batch_size": 2, "download": False,
                         "metrics": ["psnr", "bpp", "speed"], "save_samples": 2,
                         "tokenizers": [{"name": "jpeg", "sweep": {"quality": [20, 80]}},
                                        {"name": "webp-q50", "label": LABEL}]})
    run_suite(suite, out, progress=False, log=lambda s: None)
    return out


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """R1: two codecs at 32 px on `imgs`; R2: a copy of R1 as if made on a GPU machine later (the same
    numbers, another device, date and torch); R3: 48 px on the same images and on another folder."""
    root = tmp_path_factory.mktemp("compare")
    imgs = make_folder(root / "imgs", n=4, corrupt=False)
    other = make_folder(root / "other", n=3, corrupt=False)
    a = _run(root / "a", [f"folder:{imgs}"], 32)
    b = root / "b"
    shutil.copytree(a, b)
    for summary in b.glob("jobs/*/summary.json"):
        _edit_json(summary, device={"device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.8"},
                   finished="2099-01-01T00:00:00+0000")
    record = json.loads((b / RUN_RECORD).read_text())
    _edit_json(b / RUN_RECORD, versions={**record["versions"], "torch": "9.9.9"})
    c = _run(root / "c", [f"folder:{imgs}", f"folder:{other}"], 48)
    return root, imgs, other, a, b, c


def _identity(folder: Path) -> str:
    """The list identity by its definition: sha256 over (relative name, size) in sorted-name order."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        h.update(f"{p.name}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _summaries(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run.glob("jobs/*/summary.json")}


def test_compare_puts_numbers_together_only_when_measured_alike(runs, capsys):
    root, imgs, other, a, b, c = runs
    out = root / "cmp"
    assert cli(["compare", str(a), str(b), str(c), "--out", str(out)]) == 0
    assert "compared 3 run folders" in capsys.readouterr().out

    # every number of the CSV is its job's own, with what makes it comparable and where it came from
    csv = pd.read_csv(out / COMPARISON_CSV, keep_default_na=False)
    for col in ("tokenizer", "sweep_point", "resolution", "preprocessing", "metric_protocol", "data",
                "data_identity", "run_folder", "device", "date", "git_revision", "column", "note"):
        assert col in csv.columns
    folders = {"R1": a, "R2": b, "R3": c}
    summaries = {tag: _summaries(path) for tag, path in folders.items()}
    assert len(csv) == sum(len(s["results"]) for v in summaries.values() for s in v.values())
    for rec in csv.to_dict("records"):
        job = summaries[rec["run"]][rec["job"]]
        assert rec["run_folder"] == str(folders[rec["run"]])
        assert float(rec["value"]) == pytest.approx(job["results"][rec["metric"]], rel=1e-12)
        assert rec["resolution"] == job["resolution"] and rec["data"] == job["data"]["name"]
    # the same files copied elsewhere keep their identity (names and sizes, not modification times)
    assert set(csv[csv["data"] == "imgs"]["data_identity"]) == {_identity(imgs)}
    assert set(csv[csv["data"] == "other"]["data_identity"]) == {_identity(other)}
    assert set(csv[csv["run"] == "R2"]["device"]) == {"cuda:0 NVIDIA H100 80GB HBM3"}

    # PSNR on imgs: one column for R1, R2 and R3; R3's 48 px numbers carry a footnote naming the difference
    psnr = csv[(csv["metric"] == "psnr") & (csv["data"] == "imgs")]
    assert set(psnr["column"]) == {"PSNR (dB) · imgs"}
    assert set(psnr[psnr["run"] != "R3"]["note"]) == {""}
    assert set(psnr[psnr["run"] == "R3"]["note"]) == {"resolution 48 px (the column's others: 32 px)"}
    # another data set: its own column, never mixed
    assert set(csv[(csv["metric"] == "psnr") & (csv["data"] == "other")]["column"]) == {"PSNR (dB) · other"}
    # speed: the GPU copy's numbers are not comparable with the CPU runs'
    speed = csv[(csv["metric"] == "encode_images_per_s") & (csv["data"] == "imgs")]
    assert all("device cuda:0 NVIDIA H100 80GB HBM3 (the column's others: cpu" in n
               for n in speed[speed["run"] == "R2"]["note"])
    assert set(speed[speed["run"] == "R1"]["note"]) == {""}

    md = (out / COMPARISON_MD).read_text()
    table = md.split("## Results")[1].split("\n\n")[1]
    lines = [ln for ln in table.splitlines() if ln.startswith("| jpeg (quality=80)")]
    assert [ln.split(" | ")[1] for ln in lines] == ["R2", "R3", "R1"]  # every measurement, newest first
    header = table.splitlines()[0].split(" | ")
    col = header.index("PSNR (dB) · imgs")
    cells = [ln.split(" | ")[col] for ln in table.splitlines()[2:]]
    # best marked within each group measured alike: R1's and R2's q80 (equal), and R3's own q80
    assert sum("**" in cell for cell in cells) == 3
    runs_of = [ln.split(" | ")[1] for ln in table.splitlines()[2:]]
    assert all(("^" in cell) == (run == "R3") for cell, run in zip(cells, runs_of))  # footnote marks: R3's only
    assert "resolution 48 px (the column's others: 32 px)" in md
    assert "torch 2" in md and "9.9.9" in md  # provenance: versions, and how R2 differs from R1
    assert "Measured in more than one run" in md

    tex = (out / COMPARISON_TEX).read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textsuperscript{" in tex and "\\textbf{" in tex and "quality=80" in tex
    assert "PSNR (dB) $\\cdot$ imgs" in tex and "resize-crop" in tex

    page = (out / REPORT_HTML).read_text()
    assert LABEL not in page and "&lt;b&gt;webp&lt;/b&gt;" in page
    data = json.loads(page.split("id='viewer-data'>")[1].split("</script>")[0])
    assert len(data["columns"]) == 3 * 3 + 3  # R1, R2, R3 on imgs, R3 on other
    imgs_rows = [i for i in data["images"] if i["where"].startswith("imgs")]
    assert len(imgs_rows) == 2  # the same 2 images of all three runs, pooled by identity
    assert all(len(i["cells"]) == 9 for i in imgs_rows)
    assert all(len(i["originals"]) == 2 for i in imgs_rows)  # 32 px and 48 px inputs, each shown
    copied = list((out / VIEWER_DIR / VIEWER_SAMPLES_DIR).rglob("*.png"))
    assert copied and all("R" in p.relative_to(out / VIEWER_DIR / VIEWER_SAMPLES_DIR).parts[0] for p in copied)
    assert (out / "rd_psnr_1.png").is_file() and (out / "rd_psnr_2.png").is_file()


def test_compare_bad_input(runs, tmp_path, capsys):
    root, imgs, other, a, b, c = runs
    assert cli(["compare", str(imgs), "--out", str(tmp_path / "x")]) == 2
    assert "is not a tokbench run folder" in capsys.readouterr().err
    assert cli(["compare", str(a), str(a), "--out", str(tmp_path / "x")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert cli(["compare", str(a), "--out", str(a)]) == 2
    assert "is a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["compare", str(a)])
    assert e.value.code == 2
    # a copy with one summary cut short: the others are compared, the command says what it left out
    broken = tmp_path / "broken"
    shutil.copytree(a, broken)
    cut = sorted(broken.glob("jobs/*/summary.json"))[0]
    cut.write_text(cut.read_text()[:50])
    assert cli(["compare", str(broken), "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert str(cut) in err and "cannot be read" in err
    result = compare_runs([broken], tmp_path / "z", log=lambda s: None)
    assert result.problems and set(result.records["job"]) == {p.parent.name for p in broken.glob("jobs/*/summary.json")
                                                               if p != cut}
    # a run with no finished job: nothing to compare
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / RUN_RECORD).write_text(json.dumps({"jobs": ["gone"]}))
    assert cli(["compare", str(empty), "--out", str(tmp_path / "w")]) == 2
    assert "nothing to compare" in capsys.readouterr().err
