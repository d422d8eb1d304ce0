"""The built-in prompt set's GenEval tags, and a built-in run scored by `tokbench geneval`.

The tags are checked against GenEval's own vocabulary, taken independently of tokbench's code: the class
names from upstream's `object_names.txt` (fixture copy), and the colours, relations, number words, count
range and metadata shapes of upstream's `prompts/create_prompts.py` (djghosh13/geneval), restated here.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tokbench.cli import main
from tokbench.generation.generate import run_generate
from tokbench.generation.prompts import BUILTIN, load_prompts
from tokbench.geneval import score_detections
from tokbench.geneval.rules import check_metadata

sys.path.insert(0, str(Path(__file__).parent))
import janus_tiny  # noqa: E402
from tiny_mask2former import save_tiny_mask2former  # noqa: E402
from tiny_open_clip import save_tiny_clip  # noqa: E402

TORCH_THREADS = 1
DATA = Path(__file__).parent / "data" / "geneval_rules"
OBJECT_NAMES = DATA.joinpath("object_names.txt").read_text().splitlines()
# upstream create_prompts.py: colours, positions, number words; counts drawn from 2..4 (max_count=4)
COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
POSITIONS = ["left of", "right of", "above", "below"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
GENEVAL_TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
TINY_CLIP = "tokbench-test-tiny-prompt-tags-clip"


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _lines() -> list[dict]:
    return [json.loads(line) for line in BUILTIN.read_text().splitlines() if line.strip()]


def _expected(rec: dict) -> tuple[list, list | None, str]:
    """The include / exclude lists upstream's generator builds for this tag, and a regex for its prompt text
    (ours may say "to the left of" and "benches" where upstream says "left of" and "benchs")."""
    tag, inc = rec["tag"], rec["include"]
    c = [i["class"] for i in inc]
    if tag == "single_object":
        return [{"class": c[0], "count": 1}], None, re.escape(f"a photo of {_a(c[0])}")
    if tag == "two_object":
        return [{"class": c[0], "count": 1}, {"class": c[1], "count": 1}], None, \
            re.escape(f"a photo of {_a(c[0])} and {_a(c[1])}")  # fmt: skip
    if tag == "counting":
        n = inc[0]["count"]
        assert 2 <= n <= 4, rec
        return [{"class": c[0], "count": n}], [{"class": c[0], "count": n + 1}], \
            re.escape(f"a photo of {NUMBERS[n]} {c[0]}") + "(e?s)"  # fmt: skip
    if tag == "colors":
        col = inc[0]["color"]
        return [{"class": c[0], "count": 1, "color": col}], None, re.escape(f"a photo of {_a(col)} {c[0]}")
    if tag == "position":
        rel = inc[1]["position"][0]
        assert rel in POSITIONS, rec
        text = f"a photo of {re.escape(_a(c[1]))} (to the )?{re.escape(rel)} {re.escape(_a(c[0]))}"
        return [{"class": c[0], "count": 1}, {"class": c[1], "count": 1, "position": [rel, 0]}], None, text
    assert tag == "color_attr", rec
    ca, cb = inc[0]["color"], inc[1]["color"]
    return [{"class": c[0], "count": 1, "color": ca}, {"class": c[1], "count": 1, "color": cb}], None, \
        re.escape(f"a photo of {_a(ca)} {c[0]} and {_a(cb)} {c[1]}")  # fmt: skip


def test_object_names_fixture_is_upstreams_80_classes():
    assert len(OBJECT_NAMES) == 80 == len(set(OBJECT_NAMES)) and OBJECT_NAMES[64] == "computer mouse"


def test_builtin_prompts_carry_geneval_tags_in_geneval_vocabulary():
    recs = _lines()
    tagged = [r for r in recs if r["category"] in GENEVAL_TAGS]
    assert len(tagged) == 180 and len(recs) == 235
    for rec in recs:
        if rec["category"] not in GENEVAL_TAGS:  # text and scene: no GenEval equivalent, no GenEval fields
            assert not {"tag", "include", "exclude"} & set(rec), rec
            continue
        assert rec["tag"] == rec["category"], rec
        for clause in rec["include"] + rec.get("exclude", []):
            assert clause["class"] in OBJECT_NAMES, rec
            assert set(clause) <= {"class", "count", "color", "position"} and type(clause["count"]) is int, rec
            assert clause.get("color", "red") in COLORS, rec
        assert "person" not in {i["class"] for i in rec["include"] if "color" in i}  # upstream never colours people
        include, exclude, text = _expected(rec)
        assert rec["include"] == include and rec.get("exclude") == exclude, rec
        assert re.fullmatch(text, rec["prompt"]), rec
        assert len({i["class"] for i in include}) == len(include), rec  # two distinct objects, as upstream
        check_metadata(rec)  # and tokbench's rules read it
    # the loader keeps the fields as the prompt's metadata
    by_id = {p.id: p for p in load_prompts("builtin")}
    assert all(by_id[r["id"]].metadata.get("include") == r.get("include") for r in recs)
    assert {p.category for p in load_prompts("builtin:geneval")} == set(GENEVAL_TAGS)
    assert len(load_prompts("builtin:geneval")) == 180


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The tiny random Janus on one built-in prompt per category (the lines of the built-in file), 1 image each."""
    root = tmp_path_factory.mktemp("builtin_run")
    janus_tiny.save_transformers(root / "ckpt")
    picked: dict[str, dict] = {}
    for rec in _lines():
        picked.setdefault(rec["category"], rec)
    subset = root / "prompts.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in picked.values()))
    out = root / "run"
    run_generate(str(root / "ckpt"), out, prompts=str(subset), per_prompt=1, seed=0, batch_size=8,
                 dtype="float32", device="cpu", progress=False, decode_check=False)  # fmt: skip
    return out, list(picked.values())


def test_generate_writes_geneval_metadata_per_prompt(builtin_run):
    out, recs = builtin_run
    for i, rec in enumerate(recs):
        text = (out / f"{i:05d}" / "metadata.jsonl").read_text()
        meta = json.loads(text)
        if "tag" in rec:  # upstream's line (tag, include, [exclude,] prompt), then tokbench's id and category
            upstream = {k: rec[k] for k in ("tag", "include", "exclude", "prompt") if k in rec}
            assert text.startswith(json.dumps(upstream)[:-1] + ", "), text
            assert meta == {**upstream, "id": rec["id"], "category": rec["category"]}
        else:
            assert meta == {"prompt": rec["prompt"], "id": rec["id"], "category": rec["category"]}


def test_geneval_scores_a_builtin_run_and_skips_text_and_scene(builtin_run, tmp_path):
    out, recs = builtin_run
    weights = tmp_path / "w"
    save_tiny_mask2former(weights / "m2f")
    clip = save_tiny_clip(weights, TINY_CLIP, seed=1)
    res = tmp_path / "geneval"
    rc = main(["geneval", "--images", str(out), "--out", str(res), "--detector-weights", str(weights / "m2f"),
               "--clip-weights", str(clip), "--options", "threshold=0", f"clip_model={TINY_CLIP}", "--quiet",
               "--device", "cpu"])  # fmt: skip
    assert rc == 0  # skipping prompts with no GenEval task is not a failure
    rows = [json.loads(x) for x in (res / "results.jsonl").read_text().splitlines()]
    tagged = [(i, r) for i, r in enumerate(recs) if "tag" in r]
    assert [r["filename"] for r in rows] == [str(out / f"{i:05d}" / "samples" / "0000.png") for i, _ in tagged]
    for row, (_, rec) in zip(rows, tagged):
        assert row["tag"] == rec["tag"] and row["prompt"] == rec["prompt"]
        assert json.loads(row["metadata"])["include"] == rec["include"]
        assert row["correct"] or row["reason"]
    summary = json.loads((res / "summary.json").read_text())
    assert [t["tag"] for t in summary["tasks"]] == GENEVAL_TAGS
    assert summary["skipped"] == summary["skipped_not_a_task"] == 2
    skipped = (res / "skipped.txt").read_text().splitlines()
    untagged = [(i, r) for i, r in enumerate(recs) if "tag" not in r]
    assert sorted(line.split("\t")[0] for line in skipped) == [str(out / f"{i:05d}" / "samples" / "0000.png")
                                                               for i, _ in untagged]  # fmt: skip
    assert all("not a GenEval task (category" in line for line in skipped)
    assert "## Skipped (2)" in (res / "report.md").read_text()


def test_given_detections_on_a_builtin_run(builtin_run, tmp_path):
    """--detections path: per-image metadata from the run's folders; detections that satisfy each prompt's
    include clauses (and no excluded extra) make every tagged image correct; text / scene are skipped."""
    out, recs = builtin_run
    meta_lines, det_lines = [], []
    for i in range(len(recs)):
        meta = json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text())
        meta_lines.append({"image_id": f"{i:05d}/00000", **meta})
        dets: dict[str, list] = {}
        for k, clause in enumerate(meta.get("include", [])):
            # boxes far apart along the clause's relation to the target (clause 0 at the centre)
            dx, dy = {"left of": (-60, 0), "right of": (60, 0), "above": (0, -60), "below": (0, 60)}.get(
                clause.get("position", ["", 0])[0], (0, 0))  # fmt: skip
            for n in range(clause["count"]):
                x, y = 80 + dx + 4 * n, 80 + dy + 4 * n
                dets.setdefault(clause["class"], []).append(
                    {"box": [x, y, x + 20, y + 20], "score": 0.95 - 0.01 * n - 0.1 * k,
                     "color": clause.get("color", "red")})  # fmt: skip
        det_lines.append({"image_id": f"{i:05d}/00000", "width": 192, "height": 192, "detections": dets})
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta_lines))
    (tmp_path / "dets.jsonl").write_text("".join(json.dumps(d) + "\n" for d in det_lines))
    run = score_detections(tmp_path / "dets.jsonl", tmp_path / "meta.jsonl")
    assert len(run.rows) == 6 and all(r["correct"] for r in run.rows), [r["reason"] for r in run.rows]
    assert run.summary["overall_score"] == 1.0 and not run.problems
    assert sorted(i for i, _ in run.skipped) == [f"{i:05d}/00000" for i, r in enumerate(recs) if "tag" not in r]


def test_metadata_with_no_geneval_task_is_a_listed_skip_not_an_error(tmp_path):
    from tokbench.geneval.layout import scan_layout

    metas = [{"tag": "text", "prompt": "a sign that says hi"},  # what generate wrote for text prompts before
             {"prompt": "a foggy harbour", "category": "scene"},
             {"include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},  # malformed: no tag
             {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}]  # fmt: skip
    for i, meta in enumerate(metas):
        (tmp_path / f"{i:05d}" / "samples").mkdir(parents=True)
        (tmp_path / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(meta))
        (tmp_path / f"{i:05d}" / "samples" / "00000.png").write_bytes(b"")
    layout = scan_layout(tmp_path)
    assert [im.image_id for im in layout.images] == ["00003/00000"]
    reasons = [why for _, why in layout.skipped]
    assert reasons[0].startswith("not a GenEval task (tag 'text'") and "category 'scene'" in reasons[1]
    assert "missing 'tag'" in reasons[2] and not reasons[2].startswith("not a GenEval task")
