"""The `generate`, `gen-eval` and `gen-suite` subcommands (added to `tokbench.cli`'s parser)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..core import TokbenchError


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import run_generate

    m = run_generate(args.model, args.out, prompts=args.prompts, per_prompt=args.per_prompt, seed=args.seed,
                     cfg_weight=args.cfg_weight, temperature=args.temperature, batch_size=args.batch_size,
                     dtype=args.dtype, device=args.device, limit=args.limit, progress=not args.quiet)  # fmt: skip
    check = m.get("decode_check", {})
    print(f"{m['prompts']['count']} prompts x {m['sampling']['per_prompt']} images in {args.out} "
          f"({'complete' if m.get('complete') else 'INCOMPLETE'}); decode check max |diff| "
          f"{check.get('max_abs_diff', float('nan')):.3g} over {check.get('images', 0)} images")  # fmt: skip
    print(f"score them with: tokbench gen-eval --images {args.out}")
    if check.get("passed") is False:
        print(f"tokbench: WARNING: decode check failed: tokbench's llamagen-vq decode differs from the model's "
              f"decode_image_tokens by {check['max_abs_diff']:.3g} > {check['tolerance']} ({args.dtype}); the "
              "checkpoint's VQ and tokbench's reading of it disagree", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_gen_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_gen_eval

    r = run_gen_eval(args.images, prompts=args.prompts, out=args.out, clip=args.clip, ref=args.ref,
                     ref_stats=args.ref_stats, fid_mode=args.fid_mode, tokenizer=args.tokenizer,
                     retokenize=False if args.no_retokenize else None, batch_size=args.batch_size,
                     device=args.device, progress=not args.quiet)  # fmt: skip
    out = Path(args.out) if args.out else Path(args.images) / "gen_eval"
    for k, v in r["summary"].items():
        if not isinstance(v, dict):
            print(f"{k:45s} {v}")
    print(f"counts: {json.dumps(r['counts'])}\nreport: {out / 'report.md'} (also index.html, summary.csv, "
          "per_prompt.csv, rows.jsonl)")  # fmt: skip
    from ..runfolder import short_reason

    for what, why in r.get("skipped", {}).items():  # a network not on this machine: the rest was computed
        print(f"skipped {what}: {short_reason(why)}")
    return 1 if args.strict and r.get("skipped") else 0


def cmd_gen_suite(args: argparse.Namespace) -> int:
    """Run a generation suite YAML: generate with each model, then gen-eval each output."""

    from ..suite import read_suite_file
    from .evaluate import run_gen_eval
    from .generate import run_generate

    path = Path(args.suite)
    suite: dict[str, Any] = read_suite_file(path) or {}  # UTF-8, no alias bombs: one clear error
    if not isinstance(suite, dict):
        raise TokbenchError(f"generation suite {path} must hold a mapping, got {type(suite).__name__}")
    unknown = sorted(set(suite) - {"kind", "name", "description", "models", "out", "generate", "gen_eval"})
    if unknown:
        raise TokbenchError(f"unknown generation suite keys {unknown} in {path}; known: kind, name, description, "
                            "models, out, generate, gen_eval")  # fmt: skip
    g = dict(suite.get("generate") or {})
    e = dict(suite.get("gen_eval") or {})
    models = suite.get("models") or []
    if not models:
        raise TokbenchError(f"{path} lists no models (a `models:` list of names or checkpoint folders)")
    _check_keys(g, run_generate, "generate", {"model", "out", "progress"})
    _check_keys(e, run_gen_eval, "gen_eval", {"images", "out", "progress", "encoders", "fid_extractor", "tokenizer"})
    root = Path(args.out or suite.get("out") or Path("results") / str(suite.get("name", path.stem)))
    for model in models:
        name = model if isinstance(model, str) else model["name"]
        out = root / Path(str(name)).name
        print(f"tokbench: generating with {name} into {out}")
        run_generate(name, out, progress=not args.quiet, **({"limit": args.limit} if args.limit else {}), **g)
        run_gen_eval(out, progress=not args.quiet, **e)
        print(f"  report: {out / 'gen_eval' / 'report.md'}")
    return 0


def _check_keys(section: dict[str, Any], fn: Any, name: str, reserved: set[str]) -> None:
    import inspect

    allowed = set(inspect.signature(fn).parameters) - reserved
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise TokbenchError(f"unknown `{name}` settings {unknown} in the generation suite; known: {sorted(allowed)}")


def add_commands(sub: Any) -> None:
    g = sub.add_parser("generate", help="text-to-image with Janus / Janus-Pro into GenEval's layout (resumable)")
    g.add_argument("--model", default="janus-pro-1b", help="janus-pro-1b, janus-pro-7b, janus-1.3b, "
                   "janus-pro-{1b,7b}-original (DeepSeek's files), or a checkpoint folder")
    g.add_argument("--prompts", default="builtin", help="builtin[:CATEGORY or :geneval] or a .jsonl/.csv/.txt/.json file")
    g.add_argument("--per-prompt", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="output folder; the same command again resumes it")
    g.add_argument("--cfg-weight", type=float, default=5.0)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--batch-size", type=int, default=8, help="(prompt, sample) rows per batch")
    g.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    g.add_argument("--device", default="auto")
    g.add_argument("--limit", type=int, help="only the first N prompts")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(fn=cmd_generate)

    e = sub.add_parser("gen-eval", help="CLIP-score, FID, diversity and re-tokenisation of generated images")
    e.add_argument("--images", required=True, help="GenEval-layout folder, or a flat folder (with --prompts)")
    e.add_argument("--prompts", help="prompts file for a flat folder (.jsonl/.csv/.txt, GenEval metadata, COCO)")
    e.add_argument("--out", help="result folder (default IMAGES/gen_eval)")
    e.add_argument("--clip", nargs="+", default=["torchmetrics"],
                   help="CLIP-score conventions: torchmetrics (default), vitb32, hessel, custom:MODEL:PRETRAINED")
    e.add_argument("--ref", help="folder of reference images for FID")
    e.add_argument("--ref-stats", help="reference statistics .npz for FID (written there when --ref is given)")
    e.add_argument("--fid-mode", default="clean", help="clean (default), torch-fidelity (ADM), pytorch-fid")
    e.add_argument("--tokenizer", help="tokenizer for re-tokenisation (default: the one in manifest.json)")
    e.add_argument("--no-retokenize", action="store_true")
    e.add_argument("--strict", action="store_true", help="exit 1 when anything was left out for want of a "
                   "network's weights (the rest is still computed and written)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(fn=cmd_gen_eval)

    s = sub.add_parser("gen-suite", help="run a generation suite YAML (benchmarks/generation/*.yaml)")
    s.add_argument("suite")
    s.add_argument("--out", help="root folder (default results/<suite name>)")
    s.add_argument("--limit", type=int, help="only the first N prompts")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_gen_suite)
