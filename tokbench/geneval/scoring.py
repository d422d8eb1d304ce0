"""Score GenEval prompts: given detections (`score_detections`) or images in GenEval's layout with the
transformers detector (`score_images`); `write_outputs` writes results.jsonl, summary.json and the report.

Labels: `geneval` = the official rules on detections the user supplies (official numbers only if those
came from the official mmdet detector); `geneval_hf` = the official rules on the transformers Mask2Former
+ open_clip colour classifier: GenEval-style, not the official numbers (other detector weights and
preprocessing); how far it moves from official GenEval is unmeasured.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..core import TokbenchError
from ..runfolder import SUMMARY_JSON
from .layout import (
    Layout,
    Metadata,
    load_detections,
    load_metadata,
    result_row,
    scan_layout,
    summarize,
    write_results,
)
from .rules import NOT_A_TASK, RuleOptions, decide, not_a_task

LABEL_GIVEN = "geneval"
LABEL_HF = "geneval_hf"
DEFAULT_IMAGE_ROOT = "images"  # the folder upstream's run was given; `filename` = ROOT/PPPPP/samples/SSSSS.png


@dataclass
class GenevalRun:
    """Rows of results.jsonl, their summary, what was skipped (path or id, why) and the protocol."""

    label: str
    rows: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    protocol: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rows and not self.summary:
            self.summary = summarize(self.rows)

    @property
    def problems(self) -> list[tuple[str, str]]:
        """The skips that are failures: all but images whose prompt names no GenEval task (skipped by design)."""
        return [s for s in self.skipped if not s[1].startswith(NOT_A_TASK)]


def _filename(image: str, image_root: str) -> str:
    parts = image.split("/")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return f"{image_root}/{parts[0]}/samples/{parts[1]}.png"
    return image


def score_detections(detections: str | os.PathLike, metadata: str | os.PathLike | Metadata,
                     options: RuleOptions | None = None, image_root: str = DEFAULT_IMAGE_ROOT) -> GenevalRun:  # fmt: skip
    """The official rules on a detections file (fixture README format) with per-image or per-prompt metadata.

    Rows come in image-id order (prompt folder, sample), as upstream's run over a sorted folder.
    """
    options = options or RuleOptions()
    meta = metadata if isinstance(metadata, Metadata) else load_metadata(metadata)
    rows, skipped = [], []
    dets = load_detections(detections)
    seen = {d.image_id for d in dets}
    # Per-image metadata names the images that should be there: one without a detections line is a gap.
    skipped += [(i, f"no line in {detections}") for i in sorted(meta.by_image) if i not in seen]
    for det in sorted(dets, key=lambda d: d.image_id):
        m = meta.for_image(det.image_id)
        if m is None:
            skipped.append((det.image_id, f"no metadata for this image in {meta.source}"))
            continue
        if reason := not_a_task(m):
            skipped.append((det.image_id, reason))
            continue
        try:
            decision = decide(det.detections, m, options=options)
        except TokbenchError as e:
            skipped.append((det.image_id, str(e)))
            continue
        rows.append(result_row(_filename(det.image_id, image_root), m, decision))
    protocol = {
        "label": LABEL_GIVEN,
        "rules": "GenEval evaluate_images.py (djghosh13/geneval af4902f), ported in tokbench.geneval.rules",
        "options": asdict(options),
        "detector": f"given detections: {detections}",
        "colors": "given with the detections",
        "metadata": meta.source,
    }
    return GenevalRun(LABEL_GIVEN, rows, skipped, protocol)


def score_images(images: str | os.PathLike | Layout, detector: Any, color_classifier: Any,
                 options: RuleOptions | None = None, metadata: Metadata | None = None,
                 progress: Callable[[int, int], None] | None = None) -> GenevalRun:  # fmt: skip
    """Detect and decide every sample of a GenEval folder.

    `detector(image: PIL.Image) -> dict[class, list[Instance]]` with masks, and `describe()`;
    `color_classifier.classify(image, classname, instances) -> list[str]` and `describe()` (see `detector.py`).
    `images` is the folder or its `scan_layout`. Images that cannot be read are skipped, counted and listed.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    options = options or RuleOptions()
    layout = images if isinstance(images, Layout) else scan_layout(images, metadata)
    rows, skipped = [], list(layout.skipped)
    for i, item in enumerate(layout.images):
        try:
            with Image.open(item.path) as raw:
                image = ImageOps.exif_transpose(raw).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            skipped.append((item.path, f"unreadable image ({type(e).__name__}: {e})"))
        else:
            dets = detector(image)
            decision = decide(dets, item.metadata, partial(color_classifier.classify, image), options)
            rows.append(result_row(item.path, item.metadata, decision))
        if progress is not None:  # every image counts as done, read or not: the last call is (n, n)
            progress(i + 1, len(layout.images))
    protocol = {
        "label": LABEL_HF,
        "rules": "GenEval evaluate_images.py (djghosh13/geneval af4902f), ported in tokbench.geneval.rules",
        "options": asdict(options),
        "detector": detector.describe(),
        "colors": color_classifier.describe(),
        "metadata": (metadata.source + " (for folders without metadata.jsonl)") if metadata else "per folder",
        "note": "GenEval-style: not the official detector; the deviation from official GenEval is unmeasured",
    }
    return GenevalRun(LABEL_HF, rows, skipped, protocol)


def write_outputs(run: GenevalRun, out: str | os.PathLike) -> Path:
    """OUT/results.jsonl (upstream's rows), OUT/summary.json (summary_scores.py's numbers plus label and
    protocol), OUT/report.md, OUT/summary.csv (per task and overall) and OUT/skipped.txt if anything was."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / "results.jsonl", run.rows)
    summary = dict(run.summary)
    summary.update({"label": run.label, "protocol": run.protocol, "skipped": len(run.skipped),
                    "skipped_not_a_task": len(run.skipped) - len(run.problems), "versions": _versions()})  # fmt: skip
    summary["scores"] = _keyed_scores(run)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=1) + "\n")
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "task", "score", "correct", "total", "detector"])
        det = _one_line(run.protocol.get("detector"))
        for t in run.summary.get("tasks", []):
            w.writerow([run.label, t["tag"], repr(t["score"]), t["correct"], t["total"], det])
        if run.summary:
            n = run.summary["total_images"]
            w.writerow([run.label, "overall", repr(run.summary["overall_score"]), "", n, det])
    (out / "report.md").write_text(_report_md(run))
    skipped_file = out / "skipped.txt"
    if run.skipped:
        skipped_file.write_text("".join(f"{what}\t{why}\n" for what, why in run.skipped))
    elif skipped_file.exists():
        skipped_file.unlink()  # a re-run that skipped nothing must not keep an old list
    return out


def _keyed_scores(run: GenevalRun) -> dict[str, float]:
    """Scores keyed by label, e.g. `geneval_hf_overall`, `geneval_hf_counting`."""
    if not run.summary:
        return {}
    scores = {f"{run.label}_overall": run.summary["overall_score"]}
    scores.update({f"{run.label}_{t['tag']}": t["score"] for t in run.summary["tasks"]})
    return scores


def _one_line(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tokbench", "numpy", "torch", "transformers", "open_clip_torch", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _report_md(run: GenevalRun) -> str:
    p = run.protocol
    lines = [f"# GenEval-style scores: `{run.label}`", ""]
    if run.label == LABEL_HF:
        lines += ["Scored with the official GenEval rules on a transformers detector, not GenEval's mmdet one: "
                  "GenEval-style numbers, not comparable one-to-one with published GenEval; the gap is unmeasured.", ""]  # fmt: skip
    if run.summary:
        s = run.summary
        lines += ["| task | score | correct / total |", "|---|---|---|"]
        lines += [f"| {t['tag']} | {t['score']:.4f} | {t['correct']} / {t['total']} |" for t in s["tasks"]]
        lines += [f"| **overall** (mean of tasks) | **{s['overall_score']:.4f}** | {s['total_images']} images |", ""]
        lines += [f"Images correct: {s['correct_images']:.2%}; prompts with at least one correct image: "
                  f"{s['correct_prompts']:.2%} ({s['total_prompts']} prompts).", ""]  # fmt: skip
    else:
        lines += ["No image was scored.", ""]
    lines += ["## Protocol", ""]
    for key in ("rules", "options", "detector", "colors", "metadata", "note"):
        if key in p:
            lines.append(f"- {key}: {_one_line(p[key])}")
    lines.append("")
    if run.skipped:
        lines += [f"## Skipped ({len(run.skipped)})", ""] + [f"- `{what}`: {why}" for what, why in run.skipped]
        lines.append("")
    return "\n".join(lines)
