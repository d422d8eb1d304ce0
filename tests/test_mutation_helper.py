"""benchmarks/mutation.py: seeded samples of mutmut's mutants and per-module counts with a Wilson interval
(scipy's as the reference), on a mutants/ folder written by hand in mutmut's meta layout."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parent.parent
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", None: "not checked"}  # mutmut 3's codes


@pytest.fixture(scope="module")
def mutation():
    spec = importlib.util.spec_from_file_location("tokbench_mutation_script", ROOT / "benchmarks" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _meta(root: Path, module: str, codes: dict[str, int | None]) -> None:
    path = root / f"{module}.py.meta"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes, "durations_by_key": {}}))


def test_sample_and_summary(mutation, tmp_path, capsys):
    mutants = tmp_path / "mutants"
    layout = {f"tokbench.geneval.layout.x_f__mutmut_{i}": (1 if i % 4 else 0) for i in range(1, 41)}
    _meta(mutants, "tokbench/geneval/layout", layout)
    _meta(mutants, "tokbench/geneval/rules", {"tokbench.geneval.rules.x_g__mutmut_1": 33,
                                              "tokbench.geneval.rules.x_g__mutmut_2": None})  # fmt: skip
    _meta(mutants, "tokbench/protocols", {"tokbench.protocols.x_h__mutmut_1": 1})
    files = mutation.meta_files(mutants, ["tokbench/geneval"])
    assert list(files) == ["tokbench/geneval/layout", "tokbench/geneval/rules"]
    drawn = mutation.sample(files, 10, seed=3)
    assert len(drawn) == len(set(drawn)) == 10 and drawn == sorted(drawn) and set(drawn) <= set(layout) | {
        "tokbench.geneval.rules.x_g__mutmut_1", "tokbench.geneval.rules.x_g__mutmut_2"}
    _meta(mutants, "tokbench/geneval/rules", {"tokbench.geneval.rules.x_g__mutmut_1": 1,
                                              "tokbench.geneval.rules.x_g__mutmut_2": 0})  # fmt: skip
    assert mutation.sample(files, 10, seed=3) == drawn  # what has been run does not change the draw
    assert mutation.sample(files, 100) == sorted([*layout, "tokbench.geneval.rules.x_g__mutmut_1",
                                                  "tokbench.geneval.rules.x_g__mutmut_2"])  # fmt: skip
    rows = {r["module"]: r for r in mutation.summary(files, STATUS.get)}
    assert rows["tokbench/geneval/layout"]["killed"] == 30 and rows["tokbench/geneval/layout"]["survived"] == 10
    ci = binomtest(30, 40).proportion_ci(confidence_level=0.95, method="wilson")
    assert rows["tokbench/geneval/layout"]["score"] == 0.75
    assert (rows["tokbench/geneval/layout"]["low"], rows["tokbench/geneval/layout"]["high"]) == pytest.approx(
        (ci.low, ci.high), abs=1e-6)
    some = {"tokbench.geneval.layout.x_f__mutmut_4", "tokbench.geneval.layout.x_f__mutmut_5"}
    only = mutation.summary(files, STATUS.get, names=some)[0]
    assert only["mutants"] == 2 and only["killed"] == 1 and only["survived"] == 1
    # the command line: a sample, then the table
    assert mutation.main(["--mutants", str(mutants), "sample", "tokbench/protocols", "5"]) == 0
    assert capsys.readouterr().out.split() == ["tokbench.protocols.x_h__mutmut_1"]
    with pytest.raises(SystemExit, match="run mutmut first"):
        mutation.main(["--mutants", str(tmp_path / "none"), "summary", "tokbench"])
