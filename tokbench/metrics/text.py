"""Text preservation: can an OCR model still read the words after the tokenizer? (TokBench's T-ACC/T-NED)

For every annotated word the crop of its box is read in the original and in the reconstruction, by
the same OCR backend with the same crop preparation. Per word: exact match with the transcript
(case-sensitive, and case-insensitive), and the normalised edit similarity 1 - Levenshtein /
max(len(transcript), len(reading)) (ICDAR 2019, as TokBench computes it). Sums are kept per bucket of
relative text size, so the metric streams, reduces across ranks and resumes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..core import TokbenchError
from ..ocr import build_backend
from .base import BenchMetric, EvalBatch, register_metric

DEFAULT_BUCKETS = (0.0, 0.05, 0.075, 1.0)  # separate text-synth's default heights 0.04, 0.06, 0.09
TOKBENCH_BUCKETS = {256: (0.02, 0.03, 0.04, 1.0), 512: (0.01, 0.02, 0.03, 1.0), 1024: (0.005, 0.01, 0.02, 1.0)}
_STATS = ("words", "acc", "acc_ci", "ned")


def ned_similarity(truth: str, read: str) -> float:
    """1 - Levenshtein(truth, read) / max(len(truth), len(read)); 1 for two empty strings."""
    from torchmetrics.functional.text import edit_distance

    n = max(len(truth), len(read))
    return 1.0 if n == 0 else 1.0 - int(edit_distance([read], [truth], reduction="none")[0]) / n


def bucket_label(lo: float, hi: float) -> str:
    return f"h{lo:g}-{hi:g}"


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8, rounded (how a saved reconstruction would look)."""
    return (x.detach().float().clamp(0, 1).mul(255).add(0.5).floor().to(torch.uint8).permute(1, 2, 0)
            .cpu().numpy())


def crop_box(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
    """The whole pixels a box touches (rounded outward, clipped); None if under 2 px either way."""
    h, w = image.shape[:2]
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(w, math.ceil(box[2])), min(h, math.ceil(box[3]))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return image[y0:y1, x0:x1]


@register_metric("text_preservation")
class TextPreservation(BenchMetric):
    """Word accuracy and edit similarity of OCR on originals and reconstructions, per text-size bucket.

    Options: `backend` (`tesseract` default, `doctr`), `buckets` (edges of relative text size, the
    annotation's `ratio` where given, else box height / image side), and the backend's own settings
    (tesseract: psm, lang, oem, height; doctr: arch, vocab, weights). Needs annotated data.
    """

    name = "text_preservation"
    needs_decode = True
    higher_is_better = True

    def __init__(self, backend: str = "tesseract", buckets: list[float] | tuple[float, ...] = DEFAULT_BUCKETS,
                 **backend_options: Any) -> None:
        super().__init__()
        edges = tuple(float(b) for b in buckets)
        if len(edges) < 2 or any(b >= c for b, c in zip(edges, edges[1:])):
            raise TokbenchError(f"text_preservation buckets must be increasing edges (at least two), got {buckets}")
        self.edges = edges
        self.ocr = build_backend(backend, **backend_options)
        n = len(edges) - 1
        for which in ("", "_orig"):
            for stat in _STATS:
                self.add_state(f"{stat}{which}", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("dropped", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _bucket(self, ratio: float) -> int:
        return int(np.clip(np.searchsorted(self.edges, ratio, side="right") - 1, 0, len(self.edges) - 2))

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        placed = batch.extra.get("text")
        if placed is None:
            raise TokbenchError("text_preservation needs images with annotated words: data `text-synth`, "
                                "`tokbench-text:PATH`, or a folder with a `.text.json` beside each image")
        originals, recon = batch.originals, batch.reconstructions
        side = originals.shape[-1]
        factor = side / batch.extra["input_size"][-1]  # boxes are in input pixels; metrics may run resized
        crops, where = [], []  # where: (image, bucket, transcript)
        dropped = torch.zeros(len(placed), dtype=torch.float64)
        for i, p in enumerate(placed):
            if p is None:
                continue
            dropped[i] = p.dropped
            orig_u8, rec_u8 = to_uint8(originals[i]), to_uint8(recon[i])
            for box, text, ratio in zip(p.boxes, p.texts, p.ratios):
                box = tuple(v * factor for v in box)
                a, b = crop_box(orig_u8, box), crop_box(rec_u8, box)
                if a is None:  # under 2 px at this resolution: nothing to read, counted with the cut ones
                    dropped[i] += 1
                    continue
                r = ratio if ratio is not None else (box[3] - box[1]) / side
                crops += [a, b]
                where.append((i, self._bucket(r), text))
        readings = self.ocr.read(crops) if crops else []
        n = len(placed)
        rows = {k: torch.zeros(n, dtype=torch.float64) for k in
                ("text_words", "text_acc", "text_ned", "text_acc_orig", "text_ned_orig")}
        for k, (i, bucket, truth) in enumerate(where):
            for which, read in (("_orig", readings[2 * k]), ("", readings[2 * k + 1])):
                exact, caseless, sim = float(read == truth), float(read.lower() == truth.lower()), \
                    ned_similarity(truth, read)
                getattr(self, f"words{which}")[bucket] += 1
                getattr(self, f"acc{which}")[bucket] += exact
                getattr(self, f"acc_ci{which}")[bucket] += caseless
                getattr(self, f"ned{which}")[bucket] += sim
                rows[f"text_acc{which}"][i] += exact
                rows[f"text_ned{which}"][i] += sim
            rows["text_words"][i] += 1
        words = rows["text_words"]
        for k in ("text_acc", "text_ned", "text_acc_orig", "text_ned_orig"):
            rows[k] = torch.where(words > 0, rows[k] / words.clamp(min=1), torch.full_like(words, float("nan")))
        rows["text_boxes_dropped"] = dropped
        self.dropped += dropped.sum()
        self.last_rows = rows

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        words = self.words.sum().item()
        if words == 0:
            raise TokbenchError("text_preservation read no words: the data set's boxes were all cut by the "
                                f"protocol ({int(self.dropped.item())} dropped) or it has none")
        out: dict[str, float] = {}
        for which in ("", "_orig"):
            w = getattr(self, f"words{which}")
            for stat, key in (("acc", "text_acc"), ("acc_ci", "text_acc_ci"), ("ned", "text_ned")):
                s = getattr(self, f"{stat}{which}")
                out[f"{key}{which}"] = (s.sum() / w.sum()).item()
                for b in range(len(w)):
                    if w[b] > 0:
                        out[f"{key}{which}_{bucket_label(self.edges[b], self.edges[b + 1])}"] = (s[b] / w[b]).item()
            # TokBench's summary: the plain mean of the buckets' accuracies (buckets with words only)
            filled = w > 0
            out[f"text_acc{which}_mean_buckets"] = (getattr(self, f"acc{which}")[filled] / w[filled]).mean().item()
        out["text_acc_drop"] = out["text_acc_orig"] - out["text_acc"]
        out["text_ned_drop"] = out["text_ned_orig"] - out["text_ned"]
        out["text_words"] = words
        for b in range(len(self.words)):
            out[f"text_words_{bucket_label(self.edges[b], self.edges[b + 1])}"] = self.words[b].item()
        out["text_boxes_dropped"] = self.dropped.item()
        return out

    def protocol(self) -> dict[str, Any]:
        buckets = ", ".join(f"[{a:g}, {b:g})" for a, b in zip(self.edges, self.edges[1:]))
        return {"text_preservation": (
            f"OCR {self.ocr.describe()}; the same crop (box rounded outward to whole pixels, uint8) of original "
            "and reconstruction; word accuracy = exact match with the transcript (text_acc_ci: case-insensitive), "
            "text_ned = 1 - Levenshtein/max(len) (ICDAR 2019, TokBench); *_orig = the originals' crops; "
            f"buckets of relative text size (annotation ratio, else box height / side): {buckets}; boxes cut "
            "by the protocol's crop, or under 2 px, are dropped and counted")}
