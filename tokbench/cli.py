"""Command line: `tokbench run | report | compare | list | info | fetch | geneval | generate | gen-eval | gen-suite`.

Exit status, the same for every subcommand: 0 when everything asked for was done (jobs completed, or
skipped because their weights are not on this machine); 1 when something failed while running (a job
failed, a download failed; with `run --strict` also any skip); 2 when the command or suite cannot run
at all (bad arguments, an invalid suite, a folder that is not a run); 130 on Ctrl-C, 143 on SIGTERM
(both save the run's progress first: re-running the same command resumes it).

Every error reaches the user as one `tokbench: error:` line, never a traceback: a file that cannot be
written or read (a full disk, a read-only file system, no permission) names its path and what to do,
with exit 1 when a run was cut short by it and 2 when nothing could start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core import TokbenchError

DEFAULT_SUITE = "benchmarks/quick.yaml"


def _default_suite() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / DEFAULT_SUITE).is_file():
            return base / DEFAULT_SUITE
    raise TokbenchError(f"no suite given and {DEFAULT_SUITE} not found; pass a suite YAML file")


def cmd_run(args: argparse.Namespace) -> int:
    from .report import write_report
    from .runfolder import (
        REPORT_HTML,
        REPORT_MD,
        SUMMARY_CSV,
        SUMMARY_TEX,
        StoreError,
        describe_os_error,
        writer_lock,
    )
    from .runner import run_suite
    from .suite import parse_suite, read_suite_file

    suite_path = Path(args.suite) if args.suite else _default_suite()
    raw = read_suite_file(suite_path)
    if suite_path.parent.name == "generation" or (isinstance(raw, dict) and raw.get("kind") == "generation"):
        from .generation.commands import cmd_gen_suite

        return cmd_gen_suite(argparse.Namespace(suite=str(suite_path), out=args.out, limit=args.limit,
                                                quiet=args.quiet))  # fmt: skip
    if isinstance(raw, dict):  # command-line settings are checked with the suite's own (nothing runs before)
        raw = {**raw, **({"device": args.device} if args.device else {}),
               **({"batch_size": args.batch_size} if args.batch_size is not None else {})}
        if args.data:  # the suite's stratified split (for the probes) carries over to the sources named here
            split = next((d["split"] for d in raw.get("data") or [] if isinstance(d, dict) and d.get("split")), None)
            raw["data"] = [{"source": d, "split": split} if split else d for d in args.data]
        if args.limit is not None:
            raw["data"] = [{"source": d, "limit": args.limit} if isinstance(d, str) else {**d, "limit": args.limit}
                           for d in raw.get("data") or ["samples"]]
    suite = parse_suite(raw, str(suite_path), open_data=True, extra_tokenizers=args.tokenizers)
    out = Path(args.out) if args.out else Path("results") / suite.name
    if out.exists() and not out.is_dir():
        raise TokbenchError(f"--out {out} is a file, not a folder; give a folder (it is made if missing)")
    from .distributed import process_rank

    main_rank = process_rank() == 0  # under torchrun, rank 0 speaks and reports
    if main_rank:
        print(f"tokbench: running suite {suite.name!r} ({suite_path}) into {out}")
    out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out):  # the run and its report, with no other writer in between
        summaries = run_suite(suite, out, tokenizers=args.tokenizers, progress=not args.quiet,
                              fresh=args.fresh, prefetch=None if args.no_download else suite.prefetch,
                              log=print if main_rank else (lambda _: None))
        if not main_rank:
            return int(any(s["status"] == "failed" or (args.strict and s["status"] == "skipped")
                           for s in summaries))
        try:
            report = write_report(out)
        except OSError as e:  # the numbers are saved; only their report could not be written
            raise StoreError(describe_os_error(e), cut_short=True) from None
    print()
    print((report / REPORT_MD).read_text().split("\n## ", 2)[1].split("\n", 1)[1].strip()
          if (report / REPORT_MD).is_file() else "")
    print(f"\nreport: {report / REPORT_HTML} (also {REPORT_MD}, {SUMMARY_CSV}, {SUMMARY_TEX})")
    return run_outcome(summaries, strict=args.strict)


def run_outcome(summaries: list[dict], strict: bool = False) -> int:
    """Print the last line (jobs completed, skipped, failed) and return the exit status."""
    count = {status: sum(s["status"] == status for s in summaries) for status in ("ok", "skipped", "failed")}
    code = 1 if count["failed"] or (strict and count["skipped"]) else 0
    why = " (--strict: skips fail)" if strict and count["skipped"] and not count["failed"] else ""
    print(f"tokbench: {count['ok']} completed, {count['skipped']} skipped, {count['failed']} failed{why}")
    return code


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    report = write_report(Path(args.run_dir))
    print(f"report written to {report}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs
    from .runfolder import COMPARISON_CSV, COMPARISON_MD, COMPARISON_TEX, REPORT_HTML

    result = compare_runs(args.run_dirs, Path(args.out))
    out = Path(args.out)
    for problem in result.problems:
        print(f"tokbench: {problem}", file=sys.stderr)
    numbers = int((result.records["column"] != "").sum()) if not result.records.empty else 0
    print(f"tokbench: compared {len(result.runs)} run folder{'s' * (len(result.runs) != 1)} ({numbers} numbers in "
          f"the table, {len(result.notes)} footnoted protocol difference{'s' * (len(result.notes) != 1)})"
          + (f"; {len(result.problems)} left out" if result.problems else ""))
    print(f"comparison: {out / REPORT_HTML} (also {COMPARISON_MD}, {COMPARISON_CSV}, {COMPARISON_TEX})")
    return 1 if result.problems else 0


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import families, variants
    from .weights import is_available

    rows = []
    for v in variants(args.pattern):
        weights = "-" if v.weights is None else ("present" if is_available(v.weights) else "not downloaded")
        rows.append((v.name, v.family, str(v.resolution or "any"), weights, v.description))
    if args.families:
        for f in families():
            print(f"{f.name:22s} {', '.join(f.aliases):18s} {f.description}")
        return 0
    widths = [max(len(r[i]) for r in rows + [("name", "family", "res", "weights", "")]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(("name", "family", "res", "weights"), widths)) + "  description")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    from .catalogue import artifacts
    from .metrics.base import metric_names

    print("\nmetrics: " + ", ".join(metric_names()))
    variant_weights = {v.weights.name for v in variants() if v.weights is not None}
    others = {n: a for n, a in artifacts().items() if n not in variant_weights}
    if others:
        print("\nweights of metric networks (tokbench fetch NAME):")
        for name, a in others.items():
            state = "present" if is_available(a) else "not downloaded"
            print(f"  {name:34s} {state:15s} {a.used_by or a.source}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from .registry import find

    family, variant = find(args.name)
    print(f"family: {family.name} ({family.description})")
    if variant is not None:
        print(json.dumps({"variant": variant.name, "description": variant.description,
                          "config": dict(variant.config), "options": dict(variant.options),
                          "weights": variant.weights.source if variant.weights else None,
                          "licence": variant.weights.licence if variant.weights else None,
                          "resolution": variant.resolution, "paper": variant.paper,
                          "published": dict(variant.published), "published_source": variant.published_source},
                         indent=2, default=str))
    else:
        print("variants: " + ", ".join(v.name for v in family.variants))
    print("build options: " + (", ".join(family.build_options or {}) or "none")
          + "; encode options: " + (", ".join(family.encode_options) or "none"))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .catalogue import get_artifact
    from .fetch_record import record_path, verify_files
    from .weights import WeightsUnavailable, fetch

    to = Path(args.to) if args.to else None
    wanted = [get_artifact(name) for name in args.names]  # an unknown name stops everything (exit 2)
    failed = []
    for name, artifact in zip(args.names, wanted):
        try:
            paths = fetch(artifact, to=to)
        except WeightsUnavailable as e:
            print(f"tokbench: {name}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        for p in paths:
            print(f"{name}: {p}")
        if args.verify and (changed := verify_files(artifact.name, paths, to)):
            print("\n".join(f"tokbench: {name}: {line}" for line in changed), file=sys.stderr)
            failed.append(name)
    if to is not None and len(failed) < len(wanted):
        print(f"\npoint tokbench at them with: export TOKBENCH_WEIGHTS={to.resolve()}")
    if args.verify:
        print(f"sha256 of the files: {record_path(to)}")
    print(f"tokbench: {len(wanted) - len(failed)} fetched{' and verified' if args.verify else ''}, "
          f"{len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand, registered one way: each command module's `add_commands(sub)` (this module's
    benchmark commands, GenEval scoring, generation)."""
    from .generation import commands as generation_commands
    from .geneval import cli as geneval_commands

    p = argparse.ArgumentParser(prog="tokbench", description="Benchmark image tokenizers.")
    sub = p.add_subparsers(dest="command")
    for module_add_commands in (add_commands, geneval_commands.add_commands, generation_commands.add_commands):
        module_add_commands(sub)
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:
    """run, report, compare, list, info, fetch."""
    r = sub.add_parser("run", help="run a suite (default: benchmarks/quick.yaml) and write its report")
    r.add_argument("suite", nargs="?", help="suite YAML file")
    r.add_argument("--tokenizers", nargs="+", help="only these tokenizers (suite names or any variant name)")
    r.add_argument("--data", nargs="+", help="data sets instead of the suite's: samples, folder:PATH, "
                   "imagenet-val:PATH")
    r.add_argument("--out", help="run folder (default results/<suite name>); re-running resumes it on the same "
                   "machine; one made with another device kind or package versions is moved aside to a dated "
                   "sibling and measured again")
    r.add_argument("--device", help="cpu, cuda, cuda:1, mps, auto")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--limit", type=int, help="at most this many images per data set")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--no-download", action="store_true", help="do not fetch the suite's `prefetch` weights "
                   "(the quick suite's first-run tokenizers)")
    r.add_argument("--strict", action="store_true", help="exit 1 also when a job is skipped (weights not here)")
    r.add_argument("--fresh", action="store_true", help="measure everything again: the folder's previous run is "
                   "moved to a dated sibling, never deleted")
    r.set_defaults(fn=cmd_run)

    rep = sub.add_parser("report", help="(re)build the report of a run folder")
    rep.add_argument("run_dir")
    rep.set_defaults(fn=cmd_report)

    cmp = sub.add_parser("compare", help="one comparison (table, figures, sample viewer) from several run folders")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (from this or other machines)")
    cmp.add_argument("--out", required=True, help="folder for index.html, comparison.md/.csv/.tex and figures")
    cmp.set_defaults(fn=cmd_compare)

    li = sub.add_parser("list", help="released tokenizers, metrics, and whether their weights are present")
    li.add_argument("pattern", nargs="?", default="*", help="glob on variant names, e.g. 'janus*'")
    li.add_argument("--families", action="store_true", help="list families instead of variants")
    li.set_defaults(fn=cmd_list)

    inf = sub.add_parser("info", help="config, weights and published numbers of a variant")
    inf.add_argument("name")
    inf.set_defaults(fn=cmd_info)

    fe = sub.add_parser("fetch", help="download weights ahead of time (for offline machines)")
    fe.add_argument("names", nargs="+", help="tokenizer variants or metric artifacts (see tokbench list)")
    fe.add_argument("--to", help="put files in DIR/<name>/ (then export TOKBENCH_WEIGHTS=DIR)")
    fe.add_argument("--verify", action="store_true", help="record the sha256 of each file the first time, and "
                    "check it against the record every later time (a replaced or truncated file fails)")
    fe.set_defaults(fn=cmd_fetch)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    from .interrupts import TERMINATED_EXIT, Terminated, sigterm_as_interrupt
    from .runfolder import StoreError, describe_os_error

    try:
        with sigterm_as_interrupt():
            return args.fn(args)
    except StoreError as e:  # the run folder cannot be written: 1 if a run was cut short, 2 if none started
        print(f"tokbench: error: {e}", file=sys.stderr)
        return 1 if e.cut_short else 2
    except TokbenchError as e:
        print(f"tokbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the command needed could not be read or written before anything ran
        print(f"tokbench: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Terminated:
        print("\ntokbench: stopped by SIGTERM; progress saved; re-run the same command to resume", file=sys.stderr)
        return TERMINATED_EXIT
    except KeyboardInterrupt:
        print("\ntokbench: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
