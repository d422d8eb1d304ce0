"""GenEval's files: the image folder layout, metadata, given detections, `results.jsonl` and its summary.

- Layout (what upstream's generation script writes and `evaluate_images.py` reads): `DIR/<PPPPP>/metadata.jsonl`
  (one JSON object: the prompt's line of `prompts/evaluation_metadata.jsonl`) and `DIR/<PPPPP>/samples/<SSSSS>.png`.
- `results.jsonl`: upstream's rows (`filename, tag, prompt, correct, reason, metadata, details`), written the way
  pandas' `to_json(orient="records", lines=True)` writes them, so upstream's `summary_scores.py` reads it.
- `summarize(rows)`: what `summary_scores.py` computes (and prints) from those rows.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import TokbenchError
from ..weights import Artifact, register_artifact, resolve
from .rules import COLORS, GENEVAL_CLASSES, Decision, Instance, check_metadata, not_a_task

GENEVAL_COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
OFFICIAL_METADATA = register_artifact(
    Artifact(
        name="geneval-metadata",
        url=f"https://raw.githubusercontent.com/djghosh13/geneval/{GENEVAL_COMMIT}/prompts/evaluation_metadata.jsonl",
        sha256="5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
        licence="MIT (djghosh13/geneval)",
        used_by="tokbench geneval (the 553 official prompts and their tags)",
    )
)
METADATA_FILE = "metadata.jsonl"  # per prompt folder: a single JSON object despite the suffix
SAMPLES_DIR = "samples"
SAMPLE_PATTERN = re.compile(r"\d+\.png")  # upstream uses re.match: a prefix match, as here
# Key order of upstream's metadata lines, which the `metadata` string of results.jsonl keeps.
METADATA_KEY_ORDER = ("tag", "include", "exclude", "prompt")
BOOKKEEPING_KEYS = ("image_id", "prompt_index")  # per-image metadata files carry these; upstream's do not
RESULT_FIELDS = ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")


def read_jsonl(path: str | os.PathLike, what: str) -> list[dict[str, Any]]:
    """Every non-empty line of a JSON-lines file as an object, with a clear error naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokbenchError(f"cannot read the {what} file {str(path)!r}: {e}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TokbenchError(f"{path}:{n}: not valid JSON ({e.msg}); the {what} file needs one JSON object "
                                "per line") from None  # fmt: skip
        if not isinstance(row, dict):
            raise TokbenchError(f"{path}:{n}: expected a JSON object in the {what} file, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise TokbenchError(f"the {what} file {str(path)!r} is empty")
    return rows


def official_order(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata dict as upstream's line holds it: tag, include, [exclude,] prompt, then any other keys;
    without the per-image bookkeeping keys."""
    meta = {k: metadata[k] for k in METADATA_KEY_ORDER if k in metadata}
    meta.update({k: v for k, v in metadata.items() if k not in meta and k not in BOOKKEEPING_KEYS})
    return meta


def image_id(prompt_folder: str | int, sample: str | int) -> str:
    """"PPPPP/SSSSS" as in the fixture and upstream's folder names."""
    return f"{int(prompt_folder):05d}/{int(sample):05d}"


@dataclass
class Metadata:
    """Prompt metadata for images: per image (`by_image`, from a file whose lines carry `image_id`) or per prompt
    (`prompts`, upstream's `evaluation_metadata.jsonl`: line i is prompt folder i)."""

    by_image: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    def for_image(self, image: str) -> dict[str, Any] | None:
        if image in self.by_image:
            return self.by_image[image]
        folder = image.split("/", 1)[0]
        return self.for_prompt(int(folder)) if folder.isdigit() else None

    def for_prompt(self, index: int) -> dict[str, Any] | None:
        return self.prompts[index] if 0 <= index < len(self.prompts) else None


def load_metadata(path: str | os.PathLike) -> Metadata:
    """Per-image metadata (lines with `image_id`) or upstream's per-prompt `evaluation_metadata.jsonl`."""
    rows = read_jsonl(path, "metadata")
    per_image = ["image_id" in r for r in rows]
    if any(per_image) and not all(per_image):
        raise TokbenchError(f"{path}: some lines have an image_id and some do not; use one kind of metadata file")
    for n, row in enumerate(rows, 1):
        if not not_a_task(row):  # prompts with no GenEval task are kept, and skipped when scored
            check_metadata(row, where=f"{path}:{n}")
    if all(per_image):
        by_image = {}
        for row in rows:
            key = str(row["image_id"])
            if key in by_image:
                raise TokbenchError(f"{path}: image_id {key!r} appears twice")
            by_image[key] = official_order(row)
        return Metadata(by_image=by_image, source=str(path))
    return Metadata(prompts=[dict(r) for r in rows], source=str(path))


def official_metadata(path: str | os.PathLike | None = None, download: bool = True) -> Metadata:
    """Upstream's 553 prompts: from `path`, else through the resolver (`tokbench fetch geneval-metadata`)."""
    meta = load_metadata(resolve(OFFICIAL_METADATA, explicit=path, download=download))
    if not meta.prompts:
        raise TokbenchError(f"{meta.source} holds per-image metadata, not GenEval's prompt list")
    return meta


@dataclass
class ImageDetections:
    """One line of a detections file (see the fixture README): size and per-class instances."""

    image_id: str
    width: int
    height: int
    detections: dict[str, list[Instance]]


def load_detections(path: str | os.PathLike) -> list[ImageDetections]:
    """`{"image_id", "width", "height", "detections": {class: [{"box", "score", "color"}, ...]}}` per line.

    Boxes are pixels [x0, y0, x1, y1] (x1, y1 exclusive), scores read as float32, colours from `COLORS`.
    """
    out, seen = [], set()
    for n, row in enumerate(read_jsonl(path, "detections"), 1):
        where = f"{path}:{n}"
        try:
            key = str(row["image_id"])
            width, height = int(row.get("width", 0)), int(row.get("height", 0))
            if "detections" not in row:  # a typo would otherwise read as "nothing detected" and score 0
                near = difflib.get_close_matches("detections", [str(k) for k in row], n=1, cutoff=0.6)
                raise TokbenchError(f"{where}: no \"detections\" key" + (f" ({near[0]!r} is a typo?)" if near else "")
                                    + '; an image with nothing detected has "detections": {}')
            dets = row["detections"]
            if not isinstance(dets, dict):
                raise TypeError("'detections' must map class names to lists")
            by_class = {}
            for name, items in dets.items():
                if name not in GENEVAL_CLASSES:
                    raise TokbenchError(f"{where}: class {name!r} is not one of GenEval's 80 object names")
                insts = []
                for item in items:
                    color = item.get("color")
                    if color is not None and color not in COLORS:
                        raise TokbenchError(f"{where}: colour {color!r} of a {name!r} is not one of {list(COLORS)}")
                    box = [float(v) for v in item["box"]]
                    if len(box) != 4:
                        raise TypeError(f"box {item['box']!r} must be [x0, y0, x1, y1]")
                    score = float(item["score"])
                    if not all(math.isfinite(v) for v in (*box, score)):  # NaN compares false: it would pass no rule
                        raise TokbenchError(f"{where}: a {name!r} has a box or score that is not a finite number "
                                            f"(box {item['box']!r}, score {item['score']!r})")
                    insts.append(Instance(np.asarray(box, dtype=np.float32), np.float32(score), color=color))
                by_class[name] = insts
        except TokbenchError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TokbenchError(f"{where}: malformed detection line ({type(e).__name__}: {e}); the format is "
                                '{"image_id": "00042/00000", "detections": {"dog": [{"box": [x0, y0, x1, y1], '
                                '"score": 0.9, "color": "red"}]}}') from None  # fmt: skip
        if key in seen:
            raise TokbenchError(f"{where}: image_id {key!r} appears twice")
        seen.add(key)
        out.append(ImageDetections(key, width, height, by_class))
    return out


def _py_float(v: np.floating) -> float:
    return float(v)  # a float32 printed as the Python float it widens to, as upstream's `.tolist()`


def result_row(filename: str, metadata: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """Upstream's row: `metadata` and `details` are JSON strings (json.dumps with its default separators)."""
    details = {name: [[_py_float(v) for v in inst.row] for inst in insts] for name, insts in decision.detected.items()}
    return {
        "filename": filename,
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": bool(decision.correct),
        "reason": decision.reason,
        "metadata": json.dumps(dict(metadata)),
        "details": json.dumps(details),
    }


def dumps_pandas_record(row: Mapping[str, Any]) -> str:
    """One line as pandas' `to_json(orient="records", lines=True)` writes it: compact, ASCII, `/` as `\\/`."""
    # "/" only ever appears inside strings in JSON text, so escaping every one is what pandas' ujson does.
    return json.dumps(dict(row), separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")


def write_results(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """results.jsonl, one upstream row per line with a trailing newline; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text("".join(dumps_pandas_record({k: r[k] for k in RESULT_FIELDS}) + "\n" for r in rows))
    tmp.replace(path)
    return path


def summarize(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """What upstream's `summary_scores.py` computes: image and prompt accuracy, per-task means (tasks in order of
    first appearance), and the overall score = unweighted mean of the task means; `printed` = its printout."""
    if not rows:
        raise TokbenchError("no results to summarise")
    n = len(rows)
    correct = [bool(r["correct"]) for r in rows]
    by_prompt: dict[str, bool] = {}
    for r, c in zip(rows, correct):
        by_prompt[r["metadata"]] = by_prompt.get(r["metadata"], False) or c
    tasks: dict[str, list[bool]] = {}
    for r, c in zip(rows, correct):
        tasks.setdefault(r["tag"], []).append(c)
    task_rows = [{"tag": t, "score": sum(v) / len(v), "correct": sum(v), "total": len(v)} for t, v in tasks.items()]
    overall = float(np.mean([t["score"] for t in task_rows]))  # NumPy's summation order, as upstream
    summary = {
        "total_images": n,
        "total_prompts": len(by_prompt),
        "correct_images": sum(correct) / n,
        "correct_prompts": sum(by_prompt.values()) / len(by_prompt),
        "tasks": task_rows,
        "overall_score": overall,
    }
    printed = ["Summary", "=======", f"Total images: {n}", f"Total prompts: {len(by_prompt)}",
               f"% correct images: {summary['correct_images']:.2%}",
               f"% correct prompts: {summary['correct_prompts']:.2%}", "", "Task breakdown", "=============="]  # fmt: skip
    printed += [f"{t['tag']:<16} = {t['score']:.2%} ({t['correct']} / {t['total']})" for t in task_rows]
    printed += ["", f"Overall score (avg. over tasks): {overall:.5f}"]
    summary["printed"] = printed
    return summary


@dataclass
class LayoutImage:
    """A sample found in a GenEval folder: its id, path (as upstream writes `filename`) and prompt metadata."""

    image_id: str
    path: str
    metadata: dict[str, Any]


@dataclass
class Layout:
    """What a GenEval folder holds: the images to score, and what had to be skipped (path, why)."""

    images: list[LayoutImage]
    skipped: list[tuple[str, str]]


@dataclass
class PromptFolder:
    """One `<NNNNN>/` folder of a GenEval-layout folder as found on disk, before any rule is applied."""

    path: Path
    metadata: dict[str, Any] | None  # the parsed metadata.jsonl; None when missing or unreadable
    problem: str  # why metadata is None ("" otherwise)
    samples: list[Path]  # the files in samples/, sorted by name
    has_samples_dir: bool


def prompt_folders(root: str | os.PathLike) -> list[PromptFolder]:
    """Every all-digit sub-folder of `root`, sorted, with its metadata and sample files: the one reader of
    GenEval's folder layout, shared by `geneval` (scoring, `scan_layout`) and `gen-eval` (generation
    metrics, `generation.layout.read_geneval_layout`), which each apply their own rules to what it finds."""
    out = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name.isdigit()):
        file, meta, problem = folder / METADATA_FILE, None, ""
        if file.is_file():
            try:
                meta = json.loads(file.read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    meta, problem = None, f"unreadable {METADATA_FILE} (a JSON {type(meta).__name__}, not an object)"
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                problem = f"unreadable {METADATA_FILE} ({type(e).__name__}: {e})"
        else:
            problem = f"no {METADATA_FILE}"
        samples_dir = folder / SAMPLES_DIR
        samples = sorted((p for p in samples_dir.iterdir() if p.is_file()), key=lambda p: p.name) \
            if samples_dir.is_dir() else []
        out.append(PromptFolder(folder, meta, problem, samples, samples_dir.is_dir()))
    return out


def scan_layout(root: str | os.PathLike, fallback: Metadata | None = None) -> Layout:
    """Prompt folders (all-digit names) in sorted order, each with its metadata and `samples/NNNNN.png`.

    A folder without a readable `metadata.jsonl` takes prompt `int(folder)` of `fallback` if given, else
    its samples are skipped; so are folders without `samples/`, and those whose metadata names no GenEval
    task (no tag / include clauses: tokbench's text and scene prompts), with a reason starting `NOT_A_TASK`. Upstream walks `os.listdir` order; sorting
    changes only the row order of results.jsonl.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise TokbenchError(f"--images {str(root)!r} is not a folder; give the folder that holds GenEval's "
                            "<00000>/metadata.jsonl and <00000>/samples/*.png")  # fmt: skip
    images, skipped = [], []
    folders = prompt_folders(root_path)
    for pf in folders:
        meta, problem = _folder_metadata(pf, fallback)
        names = [p.name for p in pf.samples if SAMPLE_PATTERN.match(p.name)]
        if not pf.has_samples_dir:
            problem = problem or f"no {SAMPLES_DIR}/ folder"
        for name in names:
            path = os.path.join(str(root), pf.path.name, SAMPLES_DIR, name)
            if meta is None:
                skipped.append((path, problem))
            else:
                images.append(LayoutImage(image_id(pf.path.name, name.split(".")[0]), path, meta))
        if problem and not names:
            skipped.append((str(pf.path), problem))
    if not folders:
        raise TokbenchError(f"{root} has no prompt folders (<00000>/ with metadata.jsonl and samples/); is it the "
                            "GenEval image folder?")  # fmt: skip
    return Layout(images, skipped)


def _folder_metadata(pf: PromptFolder, fallback: Metadata | None) -> tuple[dict[str, Any] | None, str]:
    """The metadata a folder's samples are scored against, or (None, why they are skipped)."""
    problem = pf.problem
    if pf.metadata is not None:
        try:
            if reason := not_a_task(pf.metadata):
                return None, reason  # the folder says what it is: no fallback prompt replaces it
            check_metadata(pf.metadata, where=str(pf.path / METADATA_FILE))
            return pf.metadata, ""
        except TokbenchError as e:
            problem = str(e)
    if fallback is not None and (meta := fallback.for_prompt(int(pf.path.name))) is not None:
        return meta, ""
    return None, problem
