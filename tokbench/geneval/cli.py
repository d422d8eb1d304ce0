"""`tokbench geneval`: GenEval's rules on given detections, or on images with the transformers detector."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core import TokbenchError

COLOR_OPTIONS = ("bgcolor", "crop", "clip_model")  # upstream `--options` of the colour classifier, not the rules


def add_commands(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "geneval",
        help="GenEval-style compositional scores (official rules; transformers detector for images)",
        description="Score GenEval prompts with a port of the official rules (djghosh13/geneval). With --images the "
        "detector is transformers' Mask2Former + open_clip ViT-L-14 colours: scores are labelled geneval_hf "
        "(GenEval-style, not the official numbers). Prompts whose metadata has no GenEval tag / include clauses "
        "(tokbench's text and scene prompts) are skipped and listed. Exit status: 0 ok, 1 some other images "
        "skipped, 2 bad usage.",
    )
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--detections", help="JSON lines of detections (format: tests/data/geneval_rules/README.md)")
    src.add_argument("--images", help="GenEval folder: <00000>/metadata.jsonl and <00000>/samples/*.png")
    g.add_argument("--metadata", help="with --detections: per-image metadata (lines with image_id) or GenEval's "
                   "evaluation_metadata.jsonl (default: fetched as artifact geneval-metadata); with --images: used "
                   "for prompt folders without metadata.jsonl")  # fmt: skip
    g.add_argument("--out", help="output folder (required with --detections; default results/geneval/<images name>)")
    g.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                   help="upstream's options: threshold, counting_threshold, max_objects, max_overlap, "
                   "position_threshold; with --images also bgcolor, crop, clip_model")  # fmt: skip
    g.add_argument("--image-root", default="images", help="with --detections: the folder name written in `filename` "
                   "(ROOT/PPPPP/samples/SSSSS.png)")  # fmt: skip
    g.add_argument("--device", default="auto", help="with --images: cpu, cuda, cuda:1, auto")
    g.add_argument("--detector-weights", help="folder with the Mask2Former checkpoint (config.json, "
                   "preprocessor_config.json, model.safetensors); default: artifact mask2former-swin-small-coco-instance")  # fmt: skip
    g.add_argument("--clip-weights", help="open_clip ViT-L-14 (OpenAI) weights file; default: artifact "
                   "clip-vit-l-14-openai")  # fmt: skip
    g.add_argument("--quiet", action="store_true", help="no progress")
    g.set_defaults(fn=cmd_geneval)


def cmd_geneval(args: argparse.Namespace) -> int:
    from .layout import load_metadata, official_metadata, scan_layout
    from .rules import RuleOptions, parse_key_values
    from .scoring import score_detections, score_images, write_outputs

    pairs = parse_key_values(args.options)
    color = {k: pairs.pop(k) for k in COLOR_OPTIONS if k in pairs}
    options = RuleOptions.from_options(pairs)
    if args.detections:
        if color:
            raise TokbenchError(f"options {sorted(color)} set up the colour classifier and need --images")
        if not args.out:
            raise TokbenchError("--detections needs --out OUT (the folder for results.jsonl and summary.json)")
        meta = load_metadata(args.metadata) if args.metadata else official_metadata()
        run = score_detections(args.detections, meta, options, image_root=args.image_root)
        out = Path(args.out)
    else:
        from .detector import load_color_classifier, load_detector

        meta = load_metadata(args.metadata) if args.metadata else None
        layout = scan_layout(args.images, meta)  # before loading models: a wrong folder fails fast
        if not layout.images:
            problems = "; ".join(f"{what}: {why}" for what, why in layout.skipped[:3])
            raise TokbenchError(f"no image to score in {args.images} ({problems or 'no samples/NNNNN.png'})")
        device = _device(args.device)
        detector = load_detector(args.detector_weights, device=device)
        colors = load_color_classifier(color.get("clip_model", "ViT-L-14"), weights=args.clip_weights, device=device,
                                       bgcolor=color.get("bgcolor", "#999"), crop=color.get("crop", "1") == "1")  # fmt: skip
        progress = None if args.quiet else _progress
        run = score_images(layout, detector, colors, options, meta, progress=progress)
        out = Path(args.out) if args.out else Path("results") / "geneval" / Path(args.images).resolve().name
    write_outputs(run, out)
    if run.summary:
        print("\n".join(run.summary["printed"]))
    print(f"\n{run.label}: {len(run.rows)} images scored, {len(run.skipped)} skipped; written to {out} "
          "(results.jsonl, summary.json, report.md, summary.csv)")  # fmt: skip
    if run.skipped:
        print(f"skipped images are listed in {out / 'skipped.txt'}", file=sys.stderr)
    if run.problems:
        return 1
    return 0 if run.rows else 1


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _progress(done: int, total: int) -> None:
    if done == total or done % 25 == 0:
        print(f"  {done}/{total} images", file=sys.stderr)
