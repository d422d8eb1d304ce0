"""Mutation-testing helpers on top of mutmut's `mutants/` folder (see docs/robustness.md).

    python benchmarks/mutation.py sample tokbench/generation 150 > names.txt   # a seeded random sample
    mutmut run --max-children 2 $(cat names.txt)                              # run just those
    python benchmarks/mutation.py summary tokbench/geneval tokbench/protocols  # counts per module

mutmut (installed by hand: `pip install 'mutmut>=3.3,<4'`) writes one `<module>.py.meta` JSON file per
mutated module under `mutants/`, whose `exit_code_by_key` maps every mutant's name to the exit code of its
test run (None: not run yet). mutmut reports per mutant, not per module, and has no sampling: a module of
a thousand mutants whose tests take seconds each cannot be run whole on a small machine, and a seeded
random sample gives an unbiased estimate of its score. Names are sampled from all of a module's mutants,
run or not, so a sample's score does not depend on what earlier runs happened to reach.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

META_SUFFIX = ".py.meta"


def meta_files(root: Path, prefixes: Iterable[str]) -> dict[str, Path]:
    """{module path without .py (tokbench/geneval/layout): its meta file} under `root`, for the prefixes."""
    out = {}
    for path in sorted(root.rglob(f"*{META_SUFFIX}")):
        module = path.relative_to(root).as_posix()[: -len(META_SUFFIX)]
        if any(module.startswith(p) for p in prefixes):
            out[module] = path
    return out


def exit_codes(path: Path) -> dict[str, int | None]:
    return json.loads(path.read_text())["exit_code_by_key"]


def sample(files: dict[str, Path], n: int, seed: int = 0) -> list[str]:
    """`n` mutant names drawn without replacement from every mutant of the modules, in sorted order."""
    names = sorted(name for path in files.values() for name in exit_codes(path))
    return sorted(random.Random(seed).sample(names, min(n, len(names))))


def summary(files: dict[str, Path], status: Callable[[int | None], str],
            names: set[str] | None = None) -> list[dict[str, object]]:  # fmt: skip
    """Per module (and `names` only, where given): mutants, how many ended in each status, and the score
    killed / (killed + survived) with its 95 % Wilson interval (a sample's score estimates the module's)."""
    rows = []
    for module, path in files.items():
        codes = {k: v for k, v in exit_codes(path).items() if names is None or k in names}
        counts = Counter(status(code) for code in codes.values())
        killed, survived = counts.get("killed", 0), counts.get("survived", 0)
        row: dict[str, object] = {"module": module, "mutants": len(codes), **dict(sorted(counts.items()))}
        if killed + survived:
            row["score"] = killed / (killed + survived)
            row["low"], row["high"] = wilson(killed, killed + survived)
        rows.append(row)
    return rows


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion k / n (scipy's)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _mutmut_status() -> Callable[[int | None], str]:
    try:
        from mutmut.stats import status_by_exit_code
    except ImportError:
        sys.exit("mutmut is not installed: pip install 'mutmut>=3.3,<4'")
    return lambda code: status_by_exit_code[code]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's folder (default: mutants)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="print a seeded random sample of mutant names, one per line")
    s.add_argument("prefix", help="module path prefix, e.g. tokbench/generation")
    s.add_argument("n", type=int)
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("summary", help="a Markdown table of the statuses per module")
    t.add_argument("prefixes", nargs="+")
    t.add_argument("--names", type=Path, help="count only the mutants named in this file (a sample)")
    args = p.parse_args(argv)
    if not args.mutants.is_dir():
        sys.exit(f"no {args.mutants}/ folder: run mutmut first (it writes the mutants there)")
    if args.command == "sample":
        print("\n".join(sample(meta_files(args.mutants, [args.prefix]), args.n, args.seed)))
        return 0
    names = set(args.names.read_text().split()) if args.names else None
    rows = summary(meta_files(args.mutants, args.prefixes), _mutmut_status(), names)
    keys = ["module", "mutants", "killed", "survived", "no tests", "timeout", "not checked", "score"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        if not row["mutants"]:
            continue  # a module with nothing to mutate (an __init__ of imports)
        cells = [str(row.get(k, 0)) for k in keys[:-1]]
        score = f"{row['score']:.0%} ({row['low']:.0%}-{row['high']:.0%})" if "score" in row else ""
        print("| " + " | ".join(cells + [score]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
