"""Text preservation: can an OCR model still read the words after the tokenizer? (TokBench's T-ACC/T-NED)

For every annotated word the crop of its box is read in the original and in the reconstruction, by
the same OCR backend with the same crop preparation. Transcript and reading are compared after
`ocr.normalise_text` (Unicode NFKC, whitespace runs to one space, none beside CJK characters). Per
word: exact match (TokBench's accuracy; `text_acc_ci` also folds case, as the ICDAR protocols do),
the normalised edit similarity 1 - Levenshtein / max(len(transcript), len(reading)) (ICDAR 2019, as
TokBench computes it), and character errors min(Levenshtein, len(transcript)), from which the
character accuracy 1 - errors / characters (1 - CER, each word's errors capped at its length so that
one long misreading cannot outweigh the rest). Sums are kept per bucket of relative text size, so the
metric streams, reduces across ranks and resumes. The originals' numbers (`*_orig`) are the OCR's
ceiling on the data set: a reconstruction is read at best as well as its original.

A word's language is its script's (`ocr.script_language`: kana ja, Han zh, Hangul ko, else en), or the
`lang` option; a backend that cannot read a language (Tesseract without `chi_sim`) leaves its words
unread, counted in `text_words_unread` with the reason in the protocol.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..core import TokbenchError
from ..ocr import build_backend, normalise_text, script_language, tesseract_version
from .base import BenchMetric, EvalBatch, register_metric

DEFAULT_BUCKETS = (0.0, 0.05, 0.075, 1.0)  # separate text-synth's default heights 0.04, 0.06, 0.09
TOKBENCH_BUCKETS = {256: (0.02, 0.03, 0.04, 1.0), 512: (0.01, 0.02, 0.03, 1.0), 1024: (0.005, 0.01, 0.02, 1.0)}
_STATS = ("words", "acc", "acc_ci", "ned", "chars", "char_err")


def edit_distance(a: str, b: str) -> int:
    from torchmetrics.functional.text import edit_distance as levenshtein

    if not a or not b:
        return max(len(a), len(b))
    return int(levenshtein([b], [a], reduction="none")[0])


def ned_similarity(truth: str, read: str) -> float:
    """1 - Levenshtein(truth, read) / max(len(truth), len(read)); 1 for two empty strings."""
    n = max(len(truth), len(read))
    return 1.0 if n == 0 else 1.0 - edit_distance(truth, read) / n


def char_errors(truth: str, read: str) -> int:
    """Levenshtein(truth, read), at most len(truth): the word's share of the character error rate."""
    return min(edit_distance(truth, read), len(truth))


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


@register_metric("text_preservation",
                 packages=("pytesseract", "python-doctr", "rapidocr", "rapidocr-onnxruntime", "onnxruntime",
                           "opencv-python-headless"),
                 programs={"tesseract": tesseract_version})
class TextPreservation(BenchMetric):
    """Word accuracy, edit similarity and character accuracy of OCR on originals and reconstructions, per
    text-size bucket.

    Options: `backend` (`auto` default: `ppocr` where installed, else `tesseract`; or `doctr`),
    `buckets` (edges of relative text size, the annotation's `ratio` where given, else box height / image
    side; a ratio on an edge belongs to the bucket above it), `lang` (`auto`: by script, or `en`, `zh`,
    `ja` for every word), and the backend's own settings (tesseract: psm, lang, oem, glyph_height, trim;
    ppocr: model, height, trim; doctr: arch, vocab, weights). Needs annotated data.
    """

    name = "text_preservation"
    needs_decode = True
    higher_is_better = True

    def __init__(self, backend: str = "auto", buckets: list[float] | tuple[float, ...] = DEFAULT_BUCKETS,
                 lang: str = "auto", **backend_options: Any) -> None:
        super().__init__()
        edges = tuple(float(b) for b in buckets)
        if len(edges) < 2 or any(b >= c for b, c in zip(edges, edges[1:])):
            raise TokbenchError(f"text_preservation buckets must be increasing edges (at least two), got {buckets}")
        if lang not in ("auto", "en", "zh", "ja", "ko"):
            raise TokbenchError(f"text_preservation lang={lang!r}: use auto (by script), en, zh, ja or ko")
        self.edges, self.lang = edges, lang
        self.ocr = build_backend(backend, **backend_options)
        self.unread_reasons: dict[str, str] = {}
        n = len(edges) - 1
        for which in ("", "_orig"):
            for stat in _STATS:
                self.add_state(f"{stat}{which}", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("dropped", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("unread", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

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
        crops, langs, where = [], [], []  # where: (image, bucket, transcript)
        n = len(placed)
        dropped = torch.zeros(n, dtype=torch.float64)
        unread = torch.zeros(n, dtype=torch.float64)
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
                lang = script_language(text) if self.lang == "auto" else self.lang
                why = self.ocr.reads(lang)
                if why is not None:
                    self.unread_reasons[lang] = why
                    unread[i] += 1
                    continue
                r = ratio if ratio is not None else (box[3] - box[1]) / side
                crops += [a, b]
                langs += [lang, lang]
                where.append((i, self._bucket(r), normalise_text(text)))
        readings = self.ocr.read(crops, langs) if crops else []
        rows = {k: torch.zeros(n, dtype=torch.float64) for k in
                ("text_words", "text_acc", "text_ned", "text_acc_orig", "text_ned_orig", "text_chars",
                 "text_char_err", "text_char_err_orig")}
        for k, (i, bucket, truth) in enumerate(where):
            for which, raw in (("_orig", readings[2 * k]), ("", readings[2 * k + 1])):
                read = normalise_text(raw)
                exact, caseless = float(read == truth), float(read.casefold() == truth.casefold())
                sim, errors = ned_similarity(truth, read), char_errors(truth, read)
                getattr(self, f"words{which}")[bucket] += 1
                getattr(self, f"acc{which}")[bucket] += exact
                getattr(self, f"acc_ci{which}")[bucket] += caseless
                getattr(self, f"ned{which}")[bucket] += sim
                getattr(self, f"chars{which}")[bucket] += len(truth)
                getattr(self, f"char_err{which}")[bucket] += errors
                rows[f"text_acc{which}"][i] += exact
                rows[f"text_ned{which}"][i] += sim
                rows[f"text_char_err{which}"][i] += errors
            rows["text_words"][i] += 1
            rows["text_chars"][i] += len(truth)
        words, chars = rows["text_words"], rows["text_chars"]
        nan = torch.full_like(words, float("nan"))
        for k in ("text_acc", "text_ned", "text_acc_orig", "text_ned_orig"):
            rows[k] = torch.where(words > 0, rows[k] / words.clamp(min=1), nan)
        for which in ("", "_orig"):
            rows[f"text_char_acc{which}"] = torch.where(
                chars > 0, 1 - rows.pop(f"text_char_err{which}") / chars.clamp(min=1), nan)
        del rows["text_chars"]
        rows["text_boxes_dropped"] = dropped
        rows["text_words_unread"] = unread
        self.dropped += dropped.sum()
        self.unread += unread.sum()
        self.last_rows = rows

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        words = self.words.sum().item()
        if words == 0:
            why = "; ".join(self.unread_reasons.values())
            raise TokbenchError("text_preservation read no words: the data set's boxes were all cut by the "
                                f"protocol ({int(self.dropped.item())} dropped), its words are in a language the "
                                f"OCR cannot read ({int(self.unread.item())} unread{': ' + why if why else ''}), "
                                "or it has none")
        out: dict[str, float] = {}
        for which in ("", "_orig"):
            w = getattr(self, f"words{which}")
            for stat, key in (("acc", "text_acc"), ("acc_ci", "text_acc_ci"), ("ned", "text_ned")):
                s = getattr(self, f"{stat}{which}")
                out[f"{key}{which}"] = (s.sum() / w.sum()).item()
                for b in range(len(w)):
                    if w[b] > 0:
                        out[f"{key}{which}_{bucket_label(self.edges[b], self.edges[b + 1])}"] = (s[b] / w[b]).item()
            c, e = getattr(self, f"chars{which}"), getattr(self, f"char_err{which}")
            if c.sum() > 0:
                out[f"text_char_acc{which}"] = (1 - e.sum() / c.sum()).item()
            for b in range(len(c)):
                if c[b] > 0:
                    out[f"text_char_acc{which}_{bucket_label(self.edges[b], self.edges[b + 1])}"] = \
                        (1 - e[b] / c[b]).item()
            # TokBench's summary: the plain mean of the buckets' accuracies (buckets with words only)
            filled = w > 0
            out[f"text_acc{which}_mean_buckets"] = (getattr(self, f"acc{which}")[filled] / w[filled]).mean().item()
        out["text_acc_drop"] = out["text_acc_orig"] - out["text_acc"]
        out["text_ned_drop"] = out["text_ned_orig"] - out["text_ned"]
        out["text_words"] = words
        for b in range(len(self.words)):
            out[f"text_words_{bucket_label(self.edges[b], self.edges[b + 1])}"] = self.words[b].item()
        out["text_boxes_dropped"] = self.dropped.item()
        out["text_words_unread"] = self.unread.item()
        return out

    def directions(self, results: dict[str, Any]) -> dict[str, str]:
        """Accuracies and similarities of the reconstructions higher, their drops lower; the originals'
        (the OCR's ceiling) and the counts neither."""
        out = {}
        for k in results:
            if "_orig" in k or k.startswith(("text_words", "text_boxes")):
                continue
            out[k] = "lower" if k.endswith("_drop") else "higher"
        return out

    def protocol(self) -> dict[str, Any]:
        buckets = ", ".join(f"[{a:g}, {b:g})" for a, b in zip(self.edges, self.edges[1:]))
        engine = self.ocr.engine()
        unread = "".join(f"; {lang} words unread: {why}" for lang, why in sorted(self.unread_reasons.items()))
        return {
            "text_preservation": (
                f"OCR {self.ocr.describe()}; the same crop (box rounded outward to whole pixels, uint8) of "
                "original and reconstruction; transcript and reading compared after NFKC, whitespace runs to one "
                "space and none beside CJK characters; word accuracy = exact match (text_acc_ci: case folded too), "
                "text_ned = 1 - Levenshtein/max(len) (ICDAR 2019, TokBench), text_char_acc = 1 - sum of "
                "min(Levenshtein, len(transcript)) / characters (1 - CER); *_orig = the originals' crops, the "
                "OCR's ceiling; word language "
                + ("by script (kana ja, Han zh, Hangul ko, else en)" if self.lang == "auto" else self.lang)
                + f"; buckets of relative text size (annotation ratio, else box height / side): {buckets}; "
                "boxes cut by the protocol's crop, or under 2 px, are dropped and counted" + unread),
            "text_preservation_ocr": f"{engine['engine']} | {engine['model']} | {engine['version']}",
        }
