"""GenEval's decision rules (djghosh13/geneval, `evaluation/evaluate_images.py` at commit af4902f), ported.

Everything after detection: per-class score threshold (0.9 for every class of a `counting` prompt), the cap
on instances per class, optional greedy NMS, then the prompt's `include` clauses (count, colour of the top
instances, relative position to an earlier clause's top instance) and `exclude` clauses, with the official
reason strings. Pure functions on NumPy float32 boxes; no model is loaded here.

Written by hand because upstream is a script (no importable package, mmdet 2.x at import, a CUDA assert).
Every threshold is a field of `RuleOptions` named as upstream's `--options KEY=VALUE`; the quirks the port
copies on purpose (float32 comparisons, strict `>`, cap before NMS, top-`count` only, the twice-nominal
position margin) are commented where they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..core import TokbenchError

# GenEval's `evaluation/object_names.txt`: COCO's 80 thing classes in mmdet's contiguous label order
# (label id = index), with three names changed (mouse, remote, keyboard).
GENEVAL_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# GenEval name -> COCO's (mmdet `CocoDataset.CLASSES`) name, where they differ.
GENEVAL_RENAMED: dict[str, str] = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}

# Zero-shot colour labels, in upstream's order (reason strings tally colours in this order).
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# `{c}` is the colour, `{cls}` the class name (upstream formats the class in first, then clip_benchmark the colour).
COLOR_TEMPLATES: tuple[str, ...] = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")  # order used to print a relation set

RELATION_EPSILON = 1e-3  # |revised offset| below this on both axes: no relation at all
RELATION_COSINE = 0.5  # a direction counts when its share of the (unrevised) offset exceeds this, strictly
COUNTING_TAG = "counting"  # the tag whose images use `counting_threshold` for every class
# The six tasks of GenEval's evaluation_metadata.jsonl: a tag outside them would be a seventh task in the overall mean.
GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class RuleOptions:
    """Upstream's `--options` (names and defaults as in `evaluate_images.py`).

    `threshold`: keep a detection iff score > threshold (float32, strict). `counting_threshold`: the same for
    every class of a `counting` image. `max_objects`: per class, after thresholding, before NMS.
    `max_overlap`: greedy NMS drops boxes with IoU >= this; exactly 1 disables NMS (the default).
    `position_threshold`: fraction of the summed box sizes subtracted from the centre offset.
    """

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0
    position_threshold: float = 0.1

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | Sequence[str] | None) -> RuleOptions:
        """From `{"max_overlap": "0.5"}` or upstream's `["max_overlap=0.5", ...]`; unknown keys are an error."""
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            options = parse_key_values(options)
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TokbenchError(f"unknown GenEval rule option(s) {unknown}; known: {sorted(known)}")
        values = {}
        for key, value in options.items():
            kind = int if key == "max_objects" else float
            try:
                values[key] = kind(value)
            except (TypeError, ValueError):
                raise TokbenchError(f"GenEval option {key}={value!r} is not a {kind.__name__}") from None
        return cls(**values)


def parse_key_values(options: Sequence[str]) -> dict[str, str]:
    """Upstream's `--options KEY=VALUE ...` as a dict (split at the first `=`)."""
    pairs = {}
    for opt in options:
        if "=" not in opt:
            raise TokbenchError(f"option {opt!r} is not KEY=VALUE (e.g. max_overlap=0.5)")
        key, value = opt.split("=", 1)
        pairs[key] = value
    return pairs


@dataclass
class Instance:
    """One detection: `box` [x0, y0, x1, y1] in pixels (x1, y1 exclusive, float32), `score` (float32),
    optionally its binary `mask` (H, W) and a `color` already decided (given-detections mode)."""

    box: np.ndarray
    score: np.float32
    mask: np.ndarray | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.score = np.float32(self.score)

    @property
    def row(self) -> np.ndarray:
        """[x0, y0, x1, y1, score] as float32, the row of mmdet's per-class bbox array."""
        return np.concatenate([self.box, np.asarray([self.score], dtype=np.float32)])


Detections = dict[str, list[Instance]]
# (class name, its top instances) -> one colour per instance, from COLORS
ColorClassifier = Callable[[str, list[Instance]], list[str]]


def compute_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.float32:
    """IoU with upstream's inclusive-pixel areas (width = x1 - x0 + 1), in float32; 0 for an empty union."""
    a = np.asarray(box_a, dtype=np.float32)
    b = np.asarray(box_b, dtype=np.float32)

    def area(x0, y0, x1, y1):
        one = np.float32(1)
        return max(x1 - x0 + one, np.float32(0)) * max(y1 - y0 + one, np.float32(0))

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else np.float32(0)


def keep_instances(instances: Sequence[Instance], threshold: float, options: RuleOptions) -> list[Instance]:
    """Upstream's per-class selection: descending score, score > threshold, first `max_objects`, greedy NMS."""
    if not instances:
        return []
    scores = np.asarray([inst.score for inst in instances], dtype=np.float32)
    # NumPy's default (unstable) argsort reversed, as upstream: ties keep whatever order NumPy gives.
    order = np.argsort(scores)[::-1]
    # float32 against float32 and strict: a score of exactly float32(0.3) is dropped.
    order = order[scores[order] > np.float32(threshold)]
    order = order[: options.max_objects].tolist()  # the cap comes before NMS
    kept: list[Instance] = []
    while order:
        best = instances[order.pop(0)]
        kept.append(best)
        if options.max_overlap != 1:  # exactly 1 switches NMS off, even for identical boxes
            limit = np.float32(options.max_overlap)
            order = [i for i in order if compute_iou(best.box, instances[i].box) < limit]
    return kept


def select_detections(detections: Mapping[str, Sequence[Instance]], tag: str, options: RuleOptions) -> Detections:
    """The kept instances per class, classes in GenEval's order, empty classes left out."""
    unknown = sorted(set(detections) - set(GENEVAL_CLASSES))
    if unknown:
        raise TokbenchError(f"detections name classes GenEval does not know: {unknown}; use the 80 names of "
                            "GenEval's object_names.txt")  # fmt: skip
    threshold = options.counting_threshold if tag == COUNTING_TAG else options.threshold
    kept = {}
    for name in GENEVAL_CLASSES:
        chosen = keep_instances(detections.get(name, ()), threshold, options)
        if chosen:
            kept[name] = chosen
    return kept


def relative_position(box_a: np.ndarray, box_b: np.ndarray, position_threshold: float = 0.1) -> set[str]:
    """Where box A lies relative to box B ({"left of", "right of", "above", "below"}; y grows downwards).

    float32 throughout, like upstream: centre offset, shrunk per axis by `position_threshold` * (size A +
    size B), divided by the norm of the unshrunk offset; a direction holds when that share exceeds 0.5,
    so a pure-axis offset needs more than twice the nominal margin.
    """
    a = np.asarray(box_a, dtype=np.float32)[:4]
    b = np.asarray(box_b, dtype=np.float32)[:4]
    two = np.float32(2)
    offset = (a[:2] + a[2:]) / two - (b[:2] + b[2:]) / two
    size = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    margin = np.float32(position_threshold) * size
    revised = np.maximum(np.abs(offset) - margin, np.float32(0)) * np.sign(offset)
    if np.all(np.abs(revised) < RELATION_EPSILON):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -RELATION_COSINE:
        found.add("left of")
    if dx > RELATION_COSINE:
        found.add("right of")
    if dy < -RELATION_COSINE:
        found.add("above")
    if dy > RELATION_COSINE:
        found.add("below")
    return found


def join_relations(relations: set[str]) -> str:
    """Upstream joins a Python set (order follows string hashing); we print in `RELATIONS` order."""
    return " and ".join(r for r in RELATIONS if r in relations)


def given_colors(classname: str, instances: list[Instance]) -> list[str]:
    """The colour classifier of given-detections mode: each instance's own `color`."""
    missing = [i for i, inst in enumerate(instances) if inst.color is None]
    if missing:
        raise TokbenchError(f"a colour is needed for {classname!r} but its detection has no \"color\"")
    return [inst.color for inst in instances]


def evaluate(detected: Detections, metadata: Mapping[str, Any], classify_colors: ColorClassifier = given_colors,
             options: RuleOptions | None = None) -> tuple[bool, str]:  # fmt: skip
    """Upstream's `evaluate`: (correct, reason lines joined by newlines; "" when correct).

    `detected` is what `select_detections` kept (score-descending per class). Only the top-`count`
    instances of an include clause are checked for colour and position.
    """
    options = options or RuleOptions()
    correct = True
    reasons: list[str] = []
    groups: list[list[Instance] | None] = []  # per include clause: its top instances, or None if it failed
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        found = detected.get(name, [])[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = classify_colors(name, found)
                hits = colors.count(req["color"])
                if hits < count:
                    ok = False
                    tally = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(f"expected {req['color']} {name}>={count}, found {hits} {req['color']}; and {tally}")
            if "position" in req and ok:
                relation, target = req["position"]
                if groups[target] is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:  # the first miss ends the clause (one reason line)
                        for tgt in groups[target]:
                            rels = relative_position(obj.box, tgt.box, options.position_threshold)
                            if relation not in rels:
                                ok = False
                                reasons.append(f"expected {name} {relation} target, found {join_relations(rels)} target")
                                break
                        if not ok:
                            break
        correct = correct and ok
        groups.append(found if ok else None)
    for req in metadata.get("exclude", []):
        name, count = req["class"], req["count"]
        n = len(detected.get(name, []))  # after threshold, cap and NMS: at most max_objects
        if n >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {n}")
    return correct, "\n".join(reasons)


@dataclass
class Decision:
    """One image's verdict and the instances the rules kept (the `details` of results.jsonl)."""

    correct: bool
    reason: str
    detected: Detections


def decide(detections: Mapping[str, Sequence[Instance]], metadata: Mapping[str, Any],
           classify_colors: ColorClassifier = given_colors, options: RuleOptions | None = None) -> Decision:  # fmt: skip
    """Select instances for the image's tag, then evaluate its metadata."""
    options = options or RuleOptions()
    check_metadata(metadata)
    detected = select_detections(detections, metadata["tag"], options)
    correct, reason = evaluate(detected, metadata, classify_colors, options)
    return Decision(correct, reason, detected)


NOT_A_TASK = "not a GenEval task"  # reason prefix of a clean skip (e.g. tokbench's text / scene prompts)


def not_a_task(metadata: Mapping[str, Any]) -> str | None:
    """Why a prompt's metadata names no GenEval task (no `tag`, or no `include` clause), else None.

    Upstream would raise on a missing tag and call an image with no include clause correct; every line of
    GenEval's own metadata has both, so skipping these changes no official number.
    """
    if not isinstance(metadata, Mapping) or metadata.get("include") or "exclude" in metadata:
        return None  # a GenEval task, or malformed: `check_metadata` reports the latter
    what = f"tag {metadata['tag']!r}" if "tag" in metadata else f"category {metadata.get('category', '')!r}, no tag"
    return f"{NOT_A_TASK} ({what}, no include clauses): not scored"


def check_metadata(metadata: Mapping[str, Any], where: str = "metadata") -> None:
    """A clear error for a metadata dict the rules cannot read (upstream would raise a KeyError)."""
    if not isinstance(metadata, Mapping):
        raise TokbenchError(f"{where}: expected a JSON object, got {type(metadata).__name__}")
    for key in ("tag", "prompt"):
        if key not in metadata:
            raise TokbenchError(f"{where}: missing {key!r} (GenEval metadata has tag, include, [exclude,] prompt)")
    if metadata["tag"] not in GENEVAL_TAGS:
        import difflib

        near = difflib.get_close_matches(str(metadata["tag"]), GENEVAL_TAGS, n=1)
        raise TokbenchError(f"{where}: tag {metadata['tag']!r} is not one of GenEval's tasks "
                            f"({', '.join(GENEVAL_TAGS)})" + (f"; did you mean {near[0]!r}?" if near else ""))
    n = 0
    for kind in ("include", "exclude"):
        clauses = metadata.get(kind, [])
        if not isinstance(clauses, list):
            raise TokbenchError(f"{where}: {kind!r} must be a list of clauses, got {clauses!r}")
        for clause in clauses:
            if not isinstance(clause, Mapping) or "class" not in clause or not isinstance(clause.get("count"), int):
                raise TokbenchError(f"{where}: {kind} clause {clause!r} needs a 'class' and an integer 'count'")
            if clause["class"] not in GENEVAL_CLASSES:
                raise TokbenchError(f"{where}: class {clause['class']!r} is not one of GenEval's 80 object names")
            if "color" in clause and clause["color"] not in COLORS:
                raise TokbenchError(f"{where}: colour {clause['color']!r} is not one of {list(COLORS)}")
            if kind == "include" and "position" in clause:
                pos = clause["position"]
                if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                        or not isinstance(pos[1], int) or not 0 <= pos[1] < n):  # fmt: skip
                    raise TokbenchError(f"{where}: position {pos!r} must be [relation, index of an earlier clause]")
            n += kind == "include"
