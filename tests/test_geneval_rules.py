"""GenEval's rules, results.jsonl and summary against the decisions the OFFICIAL code made
(tests/data/geneval_rules, made with djghosh13/geneval's evaluate_images.py / summary_scores.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokbench.cli import main
from tokbench.core import TokbenchError
from tokbench.geneval import GENEVAL_CLASSES, Instance, RuleOptions, score_detections
from tokbench.geneval.layout import dumps_pandas_record, load_metadata
from tokbench.geneval.rules import compute_iou, keep_instances, relative_position

SUMMARY_FIELDS = ("total_images", "total_prompts", "correct_images", "correct_prompts", "tasks", "overall_score",
                  "printed")  # fmt: skip


@pytest.fixture
def fixture(data_dir):
    return data_dir / "geneval_rules"


def _relations_as_sets(line: str) -> str:
    """Upstream joins a set of relations in hash order (fixture README quirk 11): compare them as sets."""
    row = json.loads(line)
    lines = []
    for reason in row["reason"].split("\n"):
        if reason.startswith("expected ") and reason.endswith(" target") and ", found " not in reason:
            head, found = reason[: -len(" target")].split(" target, found ")
            reason = head + " target, found " + " and ".join(sorted(found.split(" and ")))
        lines.append(reason)
    row["reason"] = "\n".join(lines)
    return json.dumps(row)


def _assert_same_rows(mine: list[str], official: list[str]) -> None:
    assert len(mine) == len(official)
    for a, b in zip(mine, official):
        ra, rb = json.loads(a), json.loads(b)
        assert ra["filename"] == rb["filename"]
        assert ra["correct"] == rb["correct"], rb["filename"]
        assert _relations_as_sets(a) == _relations_as_sets(b), rb["filename"]
        assert list(ra) == list(rb)  # the official field order


@pytest.mark.parametrize("variant,options", [("official_results.jsonl", None),
                                             ("official_results_max_overlap_0.5.jsonl", {"max_overlap": "0.5"})])  # fmt: skip
def test_python_api_reproduces_official_decisions(fixture, variant, options):
    run = score_detections(fixture / "detections.jsonl", fixture / "metadata.jsonl", RuleOptions.from_options(options))
    assert run.skipped == []
    official = (fixture / variant).read_text().splitlines()
    mine = [dumps_pandas_record(r) for r in run.rows]
    _assert_same_rows(mine, official)
    # byte for byte, up to the relation order upstream leaves to string hashing
    assert [_relations_as_sets(x) for x in mine] == [_relations_as_sets(x) for x in official]


def test_python_api_reproduces_official_summary(fixture):
    run = score_detections(fixture / "detections.jsonl", fixture / "metadata.jsonl")
    official = json.loads((fixture / "official_summary.json").read_text())
    assert {k: run.summary[k] for k in SUMMARY_FIELDS} == official  # exact floats and the printout


@pytest.mark.parametrize("variant,extra", [("official_results.jsonl", []),
                                           ("official_results_max_overlap_0.5.jsonl", ["--options", "max_overlap=0.5"])])  # fmt: skip
def test_cli_reproduces_official_files(fixture, tmp_path, variant, extra, capsys):
    out = tmp_path / "out"
    rc = main(["geneval", "--detections", str(fixture / "detections.jsonl"), "--metadata",
               str(fixture / "metadata.jsonl"), "--out", str(out), *extra])  # fmt: skip
    assert rc == 0
    mine = (out / "results.jsonl").read_text()
    official = (fixture / variant).read_text()
    assert mine.endswith("\n")
    _assert_same_rows(mine.splitlines(), official.splitlines())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label"] == "geneval" and "given detections" in summary["protocol"]["detector"]
    if not extra:
        assert {k: summary[k] for k in SUMMARY_FIELDS} == json.loads((fixture / "official_summary.json").read_text())
        assert "Overall score (avg. over tasks): 0.51292" in capsys.readouterr().out
        assert summary["scores"]["geneval_overall"] == summary["overall_score"]
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("label,task,score") and csv[-1].startswith("geneval,overall,")
    assert "| **overall** (mean of tasks)" in (out / "report.md").read_text()


def test_official_per_prompt_metadata_file_gives_the_same_rows(fixture, tmp_path):
    """Upstream's evaluation_metadata.jsonl layout (line i = prompt folder i, keys tag, include, [exclude,] prompt)."""
    per_image = [json.loads(x) for x in (fixture / "metadata.jsonl").read_text().splitlines()]
    lines = {}
    for m in per_image:
        lines[m["prompt_index"]] = {k: m[k] for k in ("tag", "include", "exclude", "prompt") if k in m}
    filler = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(lines.get(i, filler)) + "\n" for i in range(max(lines) + 1)))
    assert load_metadata(prompts).prompts and not load_metadata(prompts).by_image
    run = score_detections(fixture / "detections.jsonl", prompts)
    _assert_same_rows([dumps_pandas_record(r) for r in run.rows], (fixture / "official_results.jsonl").read_text().splitlines())


def test_class_names_are_upstreams_object_names(fixture):
    assert GENEVAL_CLASSES == tuple((fixture / "object_names.txt").read_text().splitlines())


def test_relative_position_worked_example_of_the_fixture_readme():
    b = [100, 100, 200, 200]
    assert relative_position([140, 100, 240, 200], b) == set()  # dx = 20 / 40 = 0.5, not > 0.5
    assert relative_position([141, 100, 241, 200], b) == {"right of"}  # dx = 21 / 41
    assert relative_position([100, 141, 200, 241], b) == {"below"}  # y grows downwards
    assert relative_position([100, 100, 200, 200], b) == set()
    assert relative_position([141, 100, 241, 200, 0.9], b + [0.8]) == {"right of"}  # mmdet rows: score fifth
    # an offset inside the margin (1 < 0.1 * 200) is no offset, however small the norm it is divided by
    assert relative_position([101, 100, 201, 200], b) == set()


def test_float32_threshold_and_cap_before_nms():
    opts = RuleOptions()
    box = np.array([0, 0, 10, 10], dtype=np.float32)
    at, above = np.float32(0.3), np.nextafter(np.float32(0.3), np.float32(1))
    assert float(at) > 0.3  # in float64 it would pass ...
    assert keep_instances([Instance(box, at)], 0.3, opts) == []  # ... but upstream compares float32
    assert len(keep_instances([Instance(box, above)], 0.3, opts)) == 1
    many = [Instance(box + i, 0.5 + i / 100) for i in range(20)]
    assert [float(x.score) for x in keep_instances(many, 0.3, opts)][:2] == [float(np.float32(0.69)),
                                                                              float(np.float32(0.68))]  # fmt: skip
    assert len(keep_instances(many, 0.3, opts)) == 16
    # IoU with +1-pixel areas: [0,0,10,10] vs [1,1,11,11] = 100 / 142
    assert compute_iou([0, 0, 10, 10], [1, 1, 11, 11]) == pytest.approx(100 / 142, rel=1e-6)
    nms = RuleOptions(max_overlap=0.5)
    assert len(keep_instances(many, 0.3, nms)) < 16  # near-duplicates removed after the cap


def test_nms_switch_and_bound_and_the_position_rule_over_every_object():
    """max_overlap=1 keeps identical boxes (NMS off); an IoU exactly at max_overlap is dropped (>=); a
    position clause with count 2 fails when its second object is misplaced (every object is checked, the
    first miss ends the clause); position_threshold reaches the rule. (Mutation testing found each
    unchecked.)"""
    from tokbench.geneval.rules import evaluate

    box = np.array([0, 0, 9, 9], dtype=np.float32)
    twins = [Instance(box, 0.9), Instance(box, 0.8)]
    assert len(keep_instances(twins, 0.3, RuleOptions())) == 2  # the default: NMS off
    assert len(keep_instances(twins, 0.3, RuleOptions(max_overlap=0.99))) == 1
    half = [Instance(box, 0.9), Instance(np.array([0, 0, 9, 19]), 0.8)]  # inclusive areas 100 and 200: IoU 0.5
    assert compute_iou(half[0].box, half[1].box) == np.float32(0.5)
    assert len(keep_instances(half, 0.3, RuleOptions(max_overlap=0.5))) == 1
    assert len(keep_instances(half, 0.3, RuleOptions(max_overlap=0.51))) == 2
    meta = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                           {"class": "dog", "count": 2, "position": ["left of", 0]}]}  # fmt: skip
    cat = [Instance(np.array([100, 0, 120, 20]), 0.9)]
    both_left = {"cat": cat, "dog": [Instance(np.array([0, 0, 20, 20]), 0.9), Instance(np.array([30, 0, 50, 20]), 0.8)]}
    assert evaluate(both_left, meta) == (True, "")
    second_right = {"cat": cat, "dog": [both_left["dog"][0], Instance(np.array([200, 0, 220, 20]), 0.8)]}
    correct, reason = evaluate(second_right, meta)
    assert not correct and reason == "expected dog left of target, found right of target"
    # a dog 30 px left of the cat: left of with the default margin (0.1 x 40 each side), not with 0.45 x 40
    near = {"cat": cat, "dog": [Instance(np.array([70, 0, 90, 20]), 0.9), Instance(np.array([60, 0, 80, 20]), 0.8)]}
    assert evaluate(near, meta)[0]
    assert not evaluate(near, meta, options=RuleOptions(position_threshold=0.45))[0]


def test_bad_inputs_are_clear_errors_not_tracebacks(fixture, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "00000/00000", "detections": {"dog": [{"box": [1, 2], "score": 0.5}]}}\n')
    rc = main(["geneval", "--detections", str(bad), "--metadata", str(fixture / "metadata.jsonl"), "--out",
               str(tmp_path / "o")])  # fmt: skip
    assert rc == 2 and "malformed detection line" in capsys.readouterr().err
    bad.write_text('{"image_id": "00000/00000", "detections": {"dragon": []}}\n')
    assert main(["geneval", "--detections", str(bad), "--metadata", str(fixture / "metadata.jsonl"), "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "'dragon' is not one of GenEval's 80" in capsys.readouterr().err
    bad.write_text("not json\n")
    assert main(["geneval", "--detections", str(bad), "--metadata", str(fixture / "metadata.jsonl"), "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "bad.jsonl:1: not valid JSON" in capsys.readouterr().err
    assert main(["geneval", "--detections", str(fixture / "detections.jsonl"), "--metadata", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "cannot read the metadata file" in capsys.readouterr().err
    assert main(["geneval", "--detections", str(fixture / "detections.jsonl"), "--metadata",
                 str(fixture / "metadata.jsonl"), "--out", str(tmp_path / "o"), "--options", "thresold=0.2"]) == 2  # fmt: skip
    assert "unknown GenEval rule option(s) ['thresold']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # neither --detections nor --images: argparse's usage error
        main(["geneval", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    with pytest.raises(TokbenchError, match="needs a 'class' and an integer 'count'"):
        score_detections(fixture / "detections.jsonl", _write(tmp_path / "m.jsonl", {"image_id": "00005/00000",
                         "tag": "single_object", "prompt": "x", "include": [{"class": "cat"}]}))  # fmt: skip


def _write(path, *rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_images_without_metadata_are_skipped_counted_and_listed(fixture, tmp_path, capsys):
    rows = [json.loads(x) for x in (fixture / "metadata.jsonl").read_text().splitlines()]
    meta = _write(tmp_path / "meta.jsonl", *rows[1:])  # the first image loses its metadata
    out = tmp_path / "out"
    rc = main(["geneval", "--detections", str(fixture / "detections.jsonl"), "--metadata", str(meta), "--out", str(out)])
    assert rc == 1
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows) - 1
    assert (out / "skipped.txt").read_text().startswith(rows[0]["image_id"] + "\t")
    assert "## Skipped (1)" in (out / "report.md").read_text()
    dets = (fixture / "detections.jsonl").read_text().splitlines()
    fewer = tmp_path / "dets.jsonl"
    fewer.write_text("\n".join(dets[1:]) + "\n")  # an image with metadata but no detections line
    rc = main(["geneval", "--detections", str(fewer), "--metadata", str(fixture / "metadata.jsonl"), "--out", str(out)])
    assert rc == 1 and (out / "skipped.txt").read_text().startswith(rows[0]["image_id"] + "\tno line in")


def test_missing_official_metadata_offline_says_how_to_fetch(fixture, tmp_path, capsys):
    rc = main(["geneval", "--detections", str(fixture / "detections.jsonl"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "geneval-metadata" in err and "tokbench fetch geneval-metadata" in err
    assert "Traceback" not in err
