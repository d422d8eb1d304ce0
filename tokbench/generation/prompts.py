"""Prompt sets: the built-in one (written for tokbench) and prompt files in the common formats.

Built-in (`builtin`, `builtin:CATEGORY`, or `builtin:geneval` for the six GenEval categories): 235 prompts
in `prompts.jsonl`, each with a category: single_object, two_object, counting, colors, position, color_attr
(GenEval's six object-centric skills, over GenEval's 80 COCO object names and 10 colours, counts 2-4, each
carrying GenEval's `tag`, `include` and (counting) `exclude` fields as GenEval's create_prompts.py writes
them), text (text rendered in the image) and scene (free-form descriptions); these two have no GenEval tag.

Files (`load_prompts(path)`), one `Prompt(id, prompt, category, metadata)` per entry:
- `.jsonl`: objects with `prompt` (or `text` / `caption`), optional `id` and `category` (or GenEval's
  `tag`; other fields such as GenEval's `include` are kept as metadata). GenEval's
  `evaluation_metadata.jsonl` is such a file.
- `.csv`: a header with a `prompt` (or `caption` / `text`) column, optional `id` and `category`.
- `.txt`: one prompt per non-empty line.
- `.json`: COCO captions (`annotations` with `image_id` and `caption`: one prompt per image, its first
  caption in file order, id = image_id), or a list of strings or of objects as in `.jsonl`.
Entries without an id get their position, zero-padded to 5 digits (GenEval's folder names).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import TokbenchError

BUILTIN = Path(__file__).with_name("prompts.jsonl")
GENEVAL_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
CATEGORIES = (*GENEVAL_CATEGORIES, "text", "scene")
_TEXT_KEYS = ("prompt", "text", "caption")


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    category: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _from_record(i: int, rec: Any, where: str) -> Prompt:
    if isinstance(rec, str):
        return Prompt(f"{i:05d}", rec)
    if not isinstance(rec, dict):
        raise TokbenchError(f"{where}: entry {i} is neither a string nor an object: {rec!r}")
    text = next((rec[k] for k in _TEXT_KEYS if isinstance(rec.get(k), str)), None)
    if text is None:
        raise TokbenchError(f"{where}: entry {i} has no 'prompt' (or 'text' / 'caption') field: {rec!r}")
    pid = rec.get("id")
    category = rec.get("category", rec.get("tag", ""))
    return Prompt(f"{i:05d}" if pid is None else str(pid), text, str(category or ""), dict(rec))


def load_prompts(spec: str | Path) -> list[Prompt]:
    """Prompts from `builtin[:CATEGORY]` or a file (see the module docstring); ids must be unique."""
    spec = str(spec)
    if spec == "builtin" or spec.startswith("builtin:"):
        prompts = _read_jsonl(BUILTIN)
        if ":" in spec:
            cat = spec.split(":", 1)[1]
            if cat not in (*CATEGORIES, "geneval"):
                raise TokbenchError(f"unknown built-in category {cat!r}; known: {', '.join(CATEGORIES)}, geneval")
            wanted = GENEVAL_CATEGORIES if cat == "geneval" else (cat,)
            prompts = [p for p in prompts if p.category in wanted]
        return prompts
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TokbenchError(f"prompt file {spec!r} does not exist; pass a .jsonl/.csv/.txt/.json file or 'builtin'")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        prompts = _read_jsonl(path)
    elif suffix == ".csv":
        prompts = _read_csv(path)
    elif suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        prompts = [Prompt(f"{i:05d}", t) for i, t in enumerate(t for t in lines if t)]
    elif suffix == ".json":
        prompts = _read_json(path)
    else:
        raise TokbenchError(f"prompt file {path} has an unknown format {suffix!r}; use .jsonl, .csv, .txt or .json")
    if not prompts:
        raise TokbenchError(f"prompt file {path} holds no prompts")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise TokbenchError(f"prompt file {path} repeats ids {dup}; ids must be unique")
    return prompts


def _read_jsonl(path: Path) -> list[Prompt]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise TokbenchError(f"{path}: line {n + 1} is not JSON ({e})") from None
        out.append(_from_record(len(out), rec, str(path)))
    return out


def _read_csv(path: Path) -> list[Prompt]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not any(k in rows[0] for k in _TEXT_KEYS):
        raise TokbenchError(f"{path}: the CSV header has no 'prompt' (or 'caption' / 'text') column: {list(rows[0])}")
    return [_from_record(i, {k: v for k, v in r.items() if v not in (None, "")}, str(path)) for i, r in enumerate(rows)]


def _read_json(path: Path) -> list[Prompt]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TokbenchError(f"{path} is not JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        first: dict[str, Prompt] = {}
        for a in data["annotations"]:  # COCO captions: the first caption of each image
            if isinstance(a, dict) and "image_id" in a and isinstance(a.get("caption"), str):
                iid = str(a["image_id"])
                first.setdefault(iid, Prompt(iid, a["caption"].strip(), "", {"annotation_id": a.get("id")}))
        return list(first.values())
    if isinstance(data, list):
        return [_from_record(i, r, str(path)) for i, r in enumerate(data)]
    raise TokbenchError(f"{path}: expected COCO captions (an 'annotations' list) or a list of prompts")
