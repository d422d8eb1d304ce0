"""Real OCR: PP-OCR (rapidocr's wheel) and Tesseract on text-synth in three languages and on a layout
text-synth was not designed on; the crop preparation; the metric's bucket edges and crop rounding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from tokbench.data import iterate_batches, open_dataset
from tokbench.metrics.base import EvalBatch, build_metric
from tokbench.metrics.text import char_errors, crop_box
from tokbench.ocr import BACKENDS, OCRBackend, normalise_text, script_language, trim_edges

try:
    from tokbench.ocr import PPOCR

    PPOCR()
    HAS_PPOCR = True
except Exception:  # noqa: BLE001 - not installed: the tests that need it skip with the install command
    HAS_PPOCR = False
needs_ppocr = pytest.mark.skipif(not HAS_PPOCR, reason="rapidocr/onnxruntime not installed "
                                 "(pip install 'rapidocr>=3.10,<4' 'onnxruntime>=1.17,<2')")
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")


def _has_cjk_font() -> bool:
    from tokbench.textdata import cjk_fonts

    try:
        cjk_fonts("zh")
    except Exception:  # noqa: BLE001
        return False
    return True


needs_cjk_font = pytest.mark.skipif(not _has_cjk_font(), reason="no CJK font (sudo apt-get install fonts-noto-cjk)")


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "tokbench-cache"))


# ---------------------------------------------------------------------------------- pure functions


def test_normalise_and_script():
    assert normalise_text("  Ｅｘｉｔ\t 42 ") == "Exit 42"          # NFKC folds full-width forms
    assert normalise_text("博 物馆 A4") == "博物馆A4"                 # no space beside CJK characters
    assert normalise_text("Route 66") == "Route 66"                  # Latin keeps its word space
    assert [script_language(t) for t in ("Exit", "出口", "出口はこちら", "コーヒー", "출구", "12号")] == \
        ["en", "zh", "ja", "ja", "ko", "zh"]
    # character errors: Levenshtein capped at the transcript's length
    assert char_errors("博物馆", "博物这") == 1 and char_errors("A4", "xxxxxxxx") == 2 and char_errors("ab", "") == 2


def test_crop_box_rounds_outward():
    """Box edges on fractions of a pixel: every pixel the box touches is in the crop (a crop rounded
    inward would lose the partly covered rows and columns: 9 x 7 here, not 7 x 5)."""
    img = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    crop = crop_box(img, (2.5, 3.25, 10.5, 9.75))
    assert crop.shape[:2] == (7, 9)
    assert np.array_equal(crop, img[3:10, 2:11])
    assert crop_box(img, (5.2, 5.2, 6.8, 6.8)) is not None and crop_box(img, (5.2, 5.2, 5.9, 9)) is None


class _Echo(OCRBackend):
    name = "echo"

    def __init__(self, **_):
        pass

    def describe(self):
        return "echo"

    def _read(self, crops, lang):
        return ["w"] * len(crops)


def test_ratio_on_a_bucket_edge_goes_to_the_bucket_above(monkeypatch):
    """Buckets are [lo, hi): a word whose ratio is exactly 0.05 is counted in [0.05, 0.075), as TokBench's
    `find_group` does (x_min <= x < x_max)."""
    from tokbench.data import PlacedText

    monkeypatch.setitem(BACKENDS, "echo", _Echo)
    m = build_metric("text_preservation", backend="echo")
    imgs = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    placed = PlacedText(((2, 2, 30, 20), (2, 30, 30, 50), (2, 52, 30, 62)), ("w", "w", "w"), (0.05, 0.075, 0.0499), 0)
    m.update(EvalBatch(originals=imgs, tokens=None, tokenizer=None, index=torch.arange(1), reconstructions=imgs,
                       extra={"input_size": (64, 64), "text": [placed]}))
    r = m.compute()
    assert r["text_words_h0-0.05"] == 1 and r["text_words_h0.05-0.075"] == 1 and r["text_words_h0.075-1"] == 1


def test_trim_edges_removes_a_photo_line_and_keeps_letters():
    """A plate crop that kept one line of the photo at its left and top: those lines go; text that fills
    its box (capitals in a tight box: every line more ink than background) loses nothing. (A lone stroke
    along the very edge with background inside it looks like a rim and goes: the rule's known cost.)"""
    rng = np.random.default_rng(0)
    plate = np.full((20, 40, 3), 232, np.uint8)
    plate[6:14, 5:35] = 30  # a dark bar of 'text', well inside
    crop = plate.copy()
    crop[0, :] = rng.integers(60, 200, (40, 3))  # photo line on top
    crop[:, 0] = rng.integers(60, 200, (20, 3))  # and at the left
    assert np.array_equal(trim_edges(crop), plate[1:, 1:])
    assert np.array_equal(trim_edges(plate), plate)
    tight = np.full((8, 40, 3), 232, np.uint8)
    yy, xx = np.mgrid[:8, :40]
    tight[(xx + yy) % 5 < 3] = 20  # 60% ink in every row and column
    assert trim_edges(tight).shape == tight.shape


# ------------------------------------------------------------------------------------------- PP-OCR


def _synth_crops(spec: str) -> tuple[list[np.ndarray], list[str], list[float]]:
    from tokbench.metrics.text import to_uint8

    ds = open_dataset(spec, seed=0)
    crops, words, ratios = [], [], []
    for b in iterate_batches(ds, "resize-crop", 256, 4, num_workers=0):
        for i, p in enumerate(b.text):
            img = to_uint8(b.images[i])
            for box, text, ratio in zip(p.boxes, p.texts, p.ratios):
                crops.append(crop_box(img, box))
                words.append(text)
                ratios.append(ratio)
    return crops, words, ratios


@needs_ppocr
def test_ppocr_matches_rapidocrs_own_recogniser():
    """Our preprocessing and CTC decoding against rapidocr's `TextRecognizer` on the same crops (one crop
    per call, so its batch padding cannot differ): the same text and the same class probabilities."""
    pytest.importorskip("rapidocr")
    from rapidocr import RapidOCR
    from rapidocr.ch_ppocr_rec import TextRecInput

    crops, words, _ = _synth_crops("text-synth:count=1,size=256,heights=0.08/0.12,words=3")
    ours = PPOCR(trim=False)
    engine = RapidOCR(params={"Global.log_level": "error"})
    rec = engine._load_rec_model()  # noqa: SLF001 - the recogniser alone, as our backend runs it
    theirs = [rec(TextRecInput(img=[np.ascontiguousarray(c[..., ::-1])])).txts[0] for c in crops]
    assert ours.read(crops) == list(theirs)
    assert sum(t == w for t, w in zip(theirs, words)) >= len(words) - 1  # and they read the words


@needs_ppocr
def test_ppocr_reading_does_not_depend_on_the_batch():
    crops, _, _ = _synth_crops("text-synth:count=1,size=256,heights=0.08/0.12,words=3")
    wide = np.full((20, 400, 3), 240, np.uint8)  # a crop wider than 320 px at 48 high, read alone
    alone = [PPOCR()._read([c], "en")[0] for c in crops]
    assert PPOCR()._read(crops + [wide], "en")[:-1] == alone


@needs_ppocr
def test_ppocr_reads_latin_text_synth_and_jpeg_q5_hurts_the_smallest():
    """Originals at >= 95% word accuracy; at the smallest size JPEG q5 reads clearly worse than q90."""
    from tokbench.registry import load_tokenizer

    ds = open_dataset("text-synth:count=2", seed=0)
    out = {}
    for q in (5, 90):
        m = build_metric("text_preservation", backend="ppocr")
        tok = load_tokenizer("jpeg", quality=q)
        for b in iterate_batches(ds, "resize-crop", 256, 2, num_workers=0):
            t = tok.encode(b.images)
            m.update(EvalBatch(originals=b.images, tokens=t, tokenizer=tok, index=b.index,
                               reconstructions=tok.decode(t), extra={"input_size": (256, 256), "text": b.text}))
        out[q] = m.compute()
        assert "PP-OCR" in m.protocol()["text_preservation"] and "rapidocr" in m.protocol()["text_preservation_ocr"]
    assert out[90]["text_words"] == 24 and out[90]["text_acc_orig"] >= 0.95
    assert out[90]["text_char_acc_orig"] >= out[90]["text_acc_orig"]
    small = "text_acc_h0-0.05"
    assert out[5][small] <= out[90][small] - 0.25


@needs_ppocr
@needs_cjk_font
def test_ppocr_reads_chinese_characters_at_the_largest_size():
    crops, words, ratios = _synth_crops("text-synth:count=2,lang=zh")
    big = [i for i, r in enumerate(ratios) if r == max(ratios)]
    reads = PPOCR().read([crops[i] for i in big], ["zh"] * len(big))
    errors = sum(char_errors(normalise_text(words[i]), normalise_text(r)) for i, r in zip(big, reads))
    chars = sum(len(words[i]) for i in big)
    assert len(big) == 8 and 1 - errors / chars >= 0.90


@needs_cjk_font
def test_text_synth_lang_renders_cjk_words(tmp_path):
    from tokbench.textdata import WORDS_JA

    ds = open_dataset("text-synth:count=1,size=128,heights=0.12,words=2,lang=ja", seed=0)
    (rec,) = ds.records
    assert all(t.text in WORDS_JA and script_language(t.text) == "ja" for t in rec.text)


def test_no_cjk_font_is_data_unavailable(monkeypatch, tmp_path):
    from tokbench.data import DataUnavailable

    monkeypatch.setenv("TOKBENCH_CJK_FONT", str(tmp_path / "none.ttc"))
    with pytest.raises(DataUnavailable, match="fonts-noto-cjk"):
        open_dataset("text-synth:count=1,lang=zh")
    with pytest.raises(Exception, match="lang"):
        open_dataset("text-synth:lang=fr")


def test_unread_language_is_counted_not_read(monkeypatch):
    from tokbench.data import PlacedText

    class LatinOnly(_Echo):
        def reads(self, lang):
            return None if lang == "en" else "no traineddata (apt-get install tesseract-ocr-chi-sim)"

    monkeypatch.setitem(BACKENDS, "latin", LatinOnly)
    m = build_metric("text_preservation", backend="latin")
    imgs = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    placed = PlacedText(((2, 2, 30, 20), (2, 30, 30, 50)), ("w", "出口"), (None, None), 0)
    m.update(EvalBatch(originals=imgs, tokens=None, tokenizer=None, index=torch.arange(1), reconstructions=imgs,
                       extra={"input_size": (64, 64), "text": [placed]}))
    r = m.compute()
    assert r["text_words"] == 1 and r["text_words_unread"] == 1 and r["text_acc"] == 1.0
    assert "chi-sim" in m.protocol()["text_preservation"]


# --------------------------------------------------------------------- a layout text-synth is not


def _plates(n: int = 8, seed: int = 1) -> list[tuple[np.ndarray, list]]:
    """320 px photo crops, two words on light plates (STIX / Computer Modern / DejaVu), resized to 256:
    text 12-22 px, the annotated box = the plate, so its edges fall on fractions of a pixel."""
    import skimage.data
    from matplotlib import get_data_path

    from tokbench.textdata import WORDS

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    fonts = [f"{get_data_path()}/fonts/ttf/{f}" for f in ("STIXGeneral.ttf", "cmss10.ttf", "DejaVuSans.ttf")]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        ph = photos[k % len(photos)]
        s = min(ph.shape[:2])
        img = Image.fromarray(ph[:s, :s]).resize((320, 320), Image.LANCZOS)
        draw = ImageDraw.Draw(img)
        boxes = []
        for row in (40, 190):
            word = WORDS[int(rng.integers(len(WORDS)))]
            font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(15, 28)))
            left, t, r, b = draw.textbbox((0, 0), word, font=font, anchor="la")
            pad = 4
            w, h = r - left + 2 * pad, b - t + 2 * pad
            x0, y0 = int(rng.integers(3, 317 - w)), row + int(rng.integers(0, 20))
            draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=(232, 230, 225))
            draw.text((x0 + pad - left, y0 + pad - t), word, font=font, fill=(20, 20, 20), anchor="la")
            boxes.append((tuple(v * 0.8 for v in (x0, y0, x0 + w, y0 + h)), word))
        out.append((np.asarray(img.resize((256, 256), Image.BICUBIC)), boxes))
    return out


@needs_tesseract
def test_tesseract_reads_plates_whose_box_edges_hold_photo_pixels():
    """The layout of the robustness report: the old protocol (crop rounded outward, upscaled to 64 px)
    read such crops at about 50%, taking the photo's edge line for `|`; trimming it reads >= 85%."""
    from tokbench.ocr import TesseractOCR

    crops, words = [], []
    for img, boxes in _plates():
        for box, word in boxes:
            crops.append(crop_box(img, box))
            words.append(word)
    reads = TesseractOCR().read(crops)
    untrimmed = TesseractOCR(trim=False).read(crops)
    acc = np.mean([normalise_text(r) == w for r, w in zip(reads, words)])
    acc_untrimmed = np.mean([normalise_text(r) == w for r, w in zip(untrimmed, words)])
    assert acc >= 0.85 and acc >= acc_untrimmed + 0.15, (acc, acc_untrimmed)


@needs_ppocr
def test_ppocr_reads_the_plates_layout():
    crops, words = [], []
    for img, boxes in _plates():
        for box, word in boxes:
            crops.append(crop_box(img, box))
            words.append(word)
    reads = PPOCR().read(crops)
    assert np.mean([normalise_text(r) == w for r, w in zip(reads, words)]) >= 0.9

