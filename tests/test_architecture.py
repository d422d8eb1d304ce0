"""The repository's shape: each fact in one place, no import cycles, no reaches into private names.

These read the source as text or syntax trees: they fail when a change writes a fact a second time
(a run-folder file name, the process rank, an option check in a family) or ties two modules in a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tokbench"


def sources() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Line numbers of imports under `if TYPE_CHECKING:` (annotations only, never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Module -> the tokbench modules it imports (function-level imports included)."""
    mods = sources()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.lineno in skip:
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("tokbench"):
                target = node.module
            else:
                continue
            for alias in node.names:  # `from pkg import submodule` depends on the submodule only
                sub = f"{target}.{alias.name}"
                graph[m].add(sub if sub in mods else target)
        graph[m] &= set(mods) - {m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def grep(pattern: str, where: Path = PACKAGE) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in sorted(where.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if rx.search(line)]


def test_no_private_imports_across_modules():
    assert grep(r"from \.\.?[a-z_.]* import .*\b_[a-z]") == []


def test_option_checks_live_in_the_shared_builder_only():
    assert grep(r"known:|encode takes", PACKAGE / "tokenizers") == []
    assert {h.split(":")[0] for h in grep(r'== "random"')} <= {"tokbench/building.py"}


RUN_FOLDER_NAMES = r'"(run\.json|summary\.json|skipped\.json|job\.json|rows\.jsonl|state\.pt|rows\.parquet)"'


@pytest.mark.parametrize("pattern, allowed", [
    (RUN_FOLDER_NAMES, {"tokbench/runfolder.py"}),
    (r'"RANK"|"LOCAL_RANK"|"WORLD_SIZE"', {"tokbench/distributed.py"}),
])
def test_each_fact_is_spelled_in_one_module(pattern, allowed):
    assert {h.split(":")[0] for h in grep(pattern)} <= allowed


def test_report_and_generation_do_not_import_the_runner():
    graph = import_graph()
    users = [m for m, deps in graph.items() if "tokbench.runner" in deps]
    assert not [m for m in users if m.startswith(("tokbench.report", "tokbench.generation", "tokbench.text_report"))]


def test_no_reproduce_suite_repeats_a_variants_published_number():
    import yaml

    from tokbench.registry import find

    repeats = []
    for path in sorted((PACKAGE.parent / "benchmarks").rglob("*.yaml")):
        suite = yaml.safe_load(path.read_text()) or {}
        for entry in suite.get("tokenizers") or []:
            if not isinstance(entry, dict) or not entry.get("published"):
                continue
            _, variant = find(entry["name"])
            for key, value in entry["published"].items():
                if variant is not None and variant.published.get(key) == value:
                    repeats.append(f"{path.name}: {entry['name']} {key}")
    assert repeats == []


def test_a_suite_entry_inherits_its_variants_published_numbers_unless_it_gives_its_own():
    from tokbench.registry import find
    from tokbench.runner import published_numbers
    from tokbench.suite import TokenizerEntry

    _, variant = find("llamagen-vq16-c2i")
    inherited = published_numbers(TokenizerEntry("llamagen-vq16-c2i"))
    assert inherited == {"published": dict(variant.published), "published_source": variant.published_source}
    assert inherited["published"]["rfid_torch_fidelity"] == 2.19
    own = published_numbers(TokenizerEntry("llamagen-vq16-c2i", published={"psnr": 1.0}, published_source="x"))
    assert own == {"published": {"psnr": 1.0}, "published_source": "x"}
    assert published_numbers(TokenizerEntry("jpeg-q50")) == {"published": {}, "published_source": ""}
