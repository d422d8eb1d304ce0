"""Text preservation: boxes through every protocol, text-synth, TokBench's layout, the metric, OCR backends."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tokbench.core import TokbenchError
from tokbench.data import ImageRecord, iterate_batches, open_dataset, place_text
from tokbench.metrics.base import EvalBatch, build_metric
from tokbench.ocr import BACKENDS, OCRBackend, OCRUnavailable
from tokbench.protocols import get_protocol, move_boxes
from tokbench.textdata import TextBox

HAS_TESSERACT = shutil.which("tesseract") is not None
needs_tesseract = pytest.mark.skipif(not HAS_TESSERACT, reason="the tesseract program is not installed "
                                     "(sudo apt-get install tesseract-ocr; .ci/run installs it)")


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "tokbench-cache"))


# ------------------------------------------------------------------------------------------ boxes

BOX = (100.0, 100.0, 200.0, 150.0)

# (protocol, source size, target, expected box), each worked out by hand from the protocol's steps.
# short side 480 -> 256: (int(256*640/480), 256) = (341, 256); centre crop left = round(42.5) = 42
HAND_RESIZE_CROP = (100 * 341 / 640 - 42, 100 * 256 / 480, 200 * 341 / 640 - 42, 150 * 256 / 480)
HAND = [
    ("resize-crop", (640, 480), 256, HAND_RESIZE_CROP),
    # both sides to 256: x * 256/640, y * 256/480
    ("resize", (640, 480), 256, (40.0, 100 * 256 / 480, 80.0, 150 * 256 / 480)),
    # canvas 640 x 640 with the image at (0, 80), then x 256/640 = 0.4
    ("pad-square", (640, 480), 256, (40.0, 72.0, 80.0, 92.0)),
    # an odd difference: the image pasted at (0, 161 // 2 = 80) on a 641 canvas, then x 256/641
    ("pad-square", (641, 480), 256, (100 * 256 / 641, 180 * 256 / 641, 200 * 256 / 641, 230 * 256 / 641)),
    ("pad-square", (480, 641), 256, (180 * 256 / 641, 100 * 256 / 641, 280 * 256 / 641, 150 * 256 / 641)),
    # 1200x600: one BOX halving to 600x300 (300 < 512), bicubic to (round(600*256/300), 256) = (512, 256),
    # crop left = (512 - 256) // 2 = 128
    ("adm-center-crop", (1200, 600), 256, (400 * 512 / 1200 - 128, 100 * 256 / 600, 800 * 512 / 1200 - 128,
                                           200 * 256 / 600)),
    # 1203x601: one halving to (601, 300) (floor), bicubic to (round(601*256/300) = 513, 256), crop left
    # (513 - 256) // 2 = 128: x * 601/1203 * 513/601 - 128, y * 300/601 * 256/300
    ("adm-center-crop", (1203, 601), 256, (400 * 513 / 1203 - 128, 100 * 256 / 601, 800 * 513 / 1203 - 128,
                                           200 * 256 / 601)),
    # 650x480 -> (round(650*256/480), 256) = (347, 256) with LANCZOS; crop left = (347 - 256) // 2 = 45
    ("chameleon", (650, 480), 256, (100 * 347 / 650 - 45, 100 * 256 / 480, 200 * 347 / 650 - 45, 150 * 256 / 480)),
    # long side 640 -> 384: (384, int(480/640*384) = 288), pasted at (0, (384-288)//2 = 48)
    ("janus-resize-pad", (640, 480), 384, (60.0, 108.0, 120.0, 138.0)),
    # short side 480 -> round(1.125*256) = 288: (int(288*640/480), 288) = (384, 288); crop left = round(64) = 64,
    # top = round(16) = 16; source box (200, 100, 300, 150) x 0.6, minus (64, 16)
    ("var", (640, 480), 256, (120.0 - 64, 60.0 - 16, 180.0 - 64, 90.0 - 16)),
    # as resize-crop (short side 256, long int(341.33) = 341, left round(42.5) = 42), with bilinear
    ("open-magvit2", (640, 480), 256, HAND_RESIZE_CROP),
    # short side int(1.125*256) = 288: (384, 288), left round(64) = 64, top round(16) = 16 (as var)
    ("unitok", (640, 480), 256, (120.0 - 64, 60.0 - 16, 180.0 - 64, 90.0 - 16)),
    # OpenCV: (round(640*256/480), 256) = (341, 256); floor offsets: left (341-256)//2 = 42
    ("ibq", (640, 480), 256, HAND_RESIZE_CROP),
]


@pytest.mark.parametrize("protocol,src,size,expected", HAND, ids=[h[0] for h in HAND])
def test_boxes_follow_every_protocol(protocol, src, size, expected):
    source_box = {"adm-center-crop": (400.0, 100.0, 800.0, 200.0), "var": (200.0, 100.0, 300.0, 150.0),
                  "unitok": (200.0, 100.0, 300.0, 150.0)}.get(protocol, BOX)
    kept, boxes = move_boxes([source_box], protocol, src, size)
    assert kept == [0]
    np.testing.assert_allclose(boxes[0], expected, atol=1e-9)
    # and the protocol's own pixels agree: a white box on black lands where the moved box says
    img = Image.new("RGB", src, "black")
    img.paste((255, 255, 255), tuple(int(v) for v in source_box))
    out = np.asarray(get_protocol(protocol).fn(img, size).convert("L")) > 191  # above grey padding + ringing
    ys, xs = np.nonzero(out)
    np.testing.assert_allclose((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), expected, atol=1.5)


def test_every_registered_protocol_moves_boxes():
    """Every protocol, also those that families registered after the hand-worked table above was written:
    a white box on black lands where its geometry says (the protocol's own pixels as the reference)."""
    from tokbench.protocols import protocols

    assert {h[0] for h in HAND} <= set(protocols())
    # landscape, portrait (the other branch of every short-side rule), a square at exactly twice the
    # target, and one large enough for two of adm-center-crop's BOX halvings
    for src in ((640, 480), (300, 700), (512, 512), (1100, 1030)):
        w, h = src
        box = (round(0.36 * w), round(0.4 * h), round(0.6 * w), round(0.58 * h))
        for name, proto in sorted(protocols().items()):
            assert proto.geometry is not None, name
            kept, boxes = move_boxes([box], name, src, 256)
            img = Image.new("RGB", src, "black")
            img.paste((255, 255, 255), box)
            out = np.asarray(proto.fn(img, 256).convert("L")) > 191
            ys, xs = np.nonzero(out)
            if not kept:  # dropped: the protocol's crop must really cut it (white on an edge, or none left)
                assert not len(xs) or min(xs.min(), ys.min()) == 0 or max(xs.max(), ys.max()) == 255, (name, src)
                continue
            np.testing.assert_allclose((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), boxes[0], atol=1.5,
                                       err_msg=f"{name} {src}")


def test_boxes_cut_by_the_crop_are_dropped_and_counted():
    # resize-crop of 640x480 at 256 keeps source x in [42*640/341, 298*640/341] = [78.8, 559.3]
    rec = ImageRecord("x.png", "x", text=(TextBox((10, 10, 60, 40), "left"), TextBox((100, 10, 200, 40), "in"),
                                          TextBox((500, 10, 600, 40), "right")))
    placed = place_text(rec, "resize-crop", (640, 480), 256)
    assert placed.texts == ("in",) and placed.dropped == 2
    placed = place_text(rec, "pad-square", (640, 480), 256)  # padding cuts nothing
    assert placed.dropped == 0 and len(placed.boxes) == 3
    corner = ImageRecord("x.png", "x", text=(TextBox((540, 400, 640, 480), "corner"), TextBox((0, 0, 100, 80), "top")))
    placed = place_text(corner, "resize", (640, 480), 256)  # on the output's edges: kept
    assert placed.texts == ("corner", "top") and placed.boxes[0] == pytest.approx((216.0, 213.333333, 256.0, 256.0))
    assert placed.boxes[1] == pytest.approx((0.0, 0.0, 40.0, 42.666667))


def test_annotated_folder_reaches_the_batches(tmp_path):
    Image.new("RGB", (640, 480), "grey").save(tmp_path / "photo.jpg")
    (tmp_path / "photo.text.json").write_text(json.dumps([{"box": [100, 100, 200, 150], "text": "Hello"},
                                                          {"box": [0, 0, 30, 30], "text": "cut"}]))
    Image.new("RGB", (64, 64), "grey").save(tmp_path / "plain.png")
    ds = open_dataset(f"folder:{tmp_path}")
    batch = next(iterate_batches(ds, "resize-crop", 256, 4, num_workers=0))
    by_id = dict(zip([r.id for r in batch.records], batch.text))
    assert by_id["plain.png"] is None
    assert by_id["photo.jpg"].texts == ("Hello",) and by_id["photo.jpg"].dropped == 1
    np.testing.assert_allclose(by_id["photo.jpg"].boxes[0], HAND[0][3])


def test_bad_annotation_file_is_a_counted_sidecar_skip(tmp_path):
    """A broken `.text.json` leaves its image in the set without words, the reason listed (data.py)."""
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "a.text.json").write_text(json.dumps([{"box": [5, 5, 1, 1], "text": "x"}]))
    ds = open_dataset(f"folder:{tmp_path}")
    assert [r.text for r in ds.records] == [None]
    (skip,) = ds.sidecar_skips
    assert skip["path"].endswith("a.text.json") and "entry 0" in skip["reason"]


# ------------------------------------------------------------------------------------- text-synth


def test_text_synth_is_deterministic_from_the_seed(tmp_path, monkeypatch):
    spec = "text-synth:count=2,size=128,heights=0.08/0.12,words=2"
    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path / "a"))
    a = open_dataset(spec, seed=3)
    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path / "b"))
    b = open_dataset(spec, seed=3)
    c = open_dataset(spec, seed=4)
    assert [r.text for r in a.records] == [r.text for r in b.records]
    for ra, rb in zip(a.records, b.records):
        assert np.array_equal(np.asarray(Image.open(ra.path)), np.asarray(Image.open(rb.path)))
    assert [r.text for r in a.records] != [r.text for r in c.records]
    for r in a.records:
        assert Image.open(r.path).size == (128, 128)
        assert sorted({t.ratio for t in r.text}) == [0.08, 0.12]
        assert all(0 <= t.box[0] < t.box[2] <= 128 and 0 <= t.box[1] < t.box[3] <= 128 for t in r.text)
        assert all(any(ch.isalnum() for ch in t.text) for t in r.text)


def test_text_synth_options_are_checked():
    with pytest.raises(TokbenchError, match="heights"):
        open_dataset("text-synth:heights=0.9")
    with pytest.raises(TokbenchError, match="options are"):
        open_dataset("text-synth:fonts=3")


# --------------------------------------------------------------------------------------- TokBench


def test_tokbench_layout(tmp_path):
    """TokBench's annotations/text_<set>.json (OCRJSONForTokBench's fields) with images/text_data/<set>/."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "text_data" / "ic13").mkdir(parents=True)
    Image.new("RGB", (960, 1280)).save(tmp_path / "images" / "text_data" / "ic13" / "img_1.jpg")
    (tmp_path / "annotations" / "text_ic13.json").write_text(json.dumps([{
        "file_name": "img_1.jpg", "height": 1280, "width": 960,
        "annotations": [{"bbox": [10, 20, 110, 60], "rec": "Tiredness", "ratio": 0.102},
                        {"bbox": [[5, 5], [50, 8], [48, 30], [4, 28]], "rec": "kills", "ratio": 0.081}]}]))
    ds = open_dataset(f"tokbench-text:{tmp_path}")
    (rec,) = ds.records
    assert rec.id == "ic13/img_1.jpg" and rec.path.endswith("images/text_data/ic13/img_1.jpg")
    assert rec.text == (TextBox((10, 20, 110, 60), "Tiredness", 0.102), TextBox((4, 5, 50, 30), "kills", 0.081))


def test_tokbench_layout_missing_is_a_clear_error(tmp_path):
    from tokbench.data import DataUnavailable

    with pytest.raises(DataUnavailable, match="Junfeng5/TokBench"):
        open_dataset(f"tokbench-text:{tmp_path}")


# ------------------------------------------------------------------------------------------ metric


class ScriptedOCR(OCRBackend):
    """Reads what it is told to, in order: the metric's arithmetic checked against hand values."""

    name = "scripted"
    readings: list[str] = []

    made = 0

    def __init__(self, **_):
        ScriptedOCR.made += 1
        self.serial = ScriptedOCR.made  # in the OCR cache's key: no reading of another instance is reused

    def describe(self) -> str:
        return f"scripted {self.serial}"

    def _read(self, crops, lang):
        assert all(c.dtype == np.uint8 and c.ndim == 3 for c in crops)
        return [ScriptedOCR.readings.pop(0) for _ in crops]


def _batch(placed, size=64):
    from tokbench.data import PlacedText

    imgs = torch.rand(len(placed), 3, size, size, generator=torch.Generator().manual_seed(0))
    return EvalBatch(originals=imgs, tokens=None, tokenizer=None, index=torch.arange(len(placed)),
                     reconstructions=imgs.flip(-1), extra={"input_size": (size, size), "text": [
                         None if p is None else PlacedText(*p) for p in placed]})


def test_metric_arithmetic(monkeypatch):
    monkeypatch.setitem(BACKENDS, "scripted", ScriptedOCR)
    m = build_metric("text_preservation", backend="scripted", buckets=[0, 0.3, 1])
    # words: (box, transcript, ratio); readings alternate original, reconstruction
    # (a third box, 1 px wide, cannot be read: dropped and counted with the one the protocol cut)
    placed = [(((2, 2, 30, 10), (2, 20, 60, 60), (40, 40, 40.5, 50)), ("Hello", "kitten", "thin"),
               (None, None, None), 1), None]
    ScriptedOCR.readings = ["Hello", "hello", "kitten", "sitting"]
    m.update(_batch(placed))
    r = m.compute()
    # "Hello" is 8/64 high (bucket 0): original exact; reconstruction case-only; "kitten" 40/64 (bucket 1)
    assert r["text_acc_orig"] == 1.0 and r["text_acc"] == 0.0 and r["text_acc_ci"] == 0.5
    assert r["text_ned_h0-0.3"] == pytest.approx(1 - 1 / 5)        # one substitution in 5
    assert r["text_ned_h0.3-1"] == pytest.approx(1 - 3 / 7)        # kitten -> sitting: 3 edits, max len 7
    assert r["text_acc_drop"] == 1.0 and r["text_boxes_dropped"] == 2 and r["text_words"] == 2
    rows = m.last_rows
    assert rows["text_acc_orig"][0] == 1.0 and torch.isnan(rows["text_acc"][1])
    assert rows["text_boxes_dropped"].tolist() == [2.0, 0.0]
    assert "scripted" in m.protocol()["text_preservation"]


class NoChineseOCR(ScriptedOCR):
    def reads(self, lang):
        return "no Chinese model" if lang == "zh" else None


def test_metric_character_accuracy_rows_buckets_and_counts_by_hand(monkeypatch):
    """Character accuracy (1 - CER with each word's errors capped at its length), the per-image rows, the
    drops and their directions, unread and dropped counts over two batches, ratios outside the edges
    clipped into the end buckets, the box-height ratio, a box exactly 2 px high on the image's top edge,
    boxes given in input pixels of another size; all worked out by hand. (Mutation testing: the character
    accuracy, the per-image rows and the counts were not checked.)"""
    monkeypatch.setitem(BACKENDS, "noChinese", NoChineseOCR)
    m = build_metric("text_preservation", backend="noChinese")  # buckets [0, 0.05), [0.05, 0.075), [0.075, 1)
    placed = [
        # HELLO (ratio 0.04: bucket 0), world (ratio 1.5: clipped into the last), hi (2 px high at y = 0)
        (((2, 10, 30, 18), (2, 20, 40, 30), (40, 0, 50, 2)), ("HELLO", "world", "hi"), (0.04, 1.5, 0.04), 0),
        # cat (no ratio: its box is 3.84 / 64 = 0.06 high, the middle bucket), two Chinese words the OCR cannot
        # read, a box under 2 px (dropped, with the 2 the protocol cut)
        (((2, 40, 30, 43.84), (2, 2, 30, 12), (2, 50, 30, 60), (40, 40, 40.5, 50)), ("cat", "你好", "中文", "thin"),
         (None, 0.04, 0.04, None), 2),
        None,
    ]
    # boxes in the pixels of a 128 px input, the metric's images at 64 px: every box is halved
    doubled = [None if q is None else (tuple(tuple(2 * v for v in b) for b in q[0]), *q[1:]) for q in placed]
    # original, reconstruction per read word, in order: HELLO, world, hi, cat
    ScriptedOCR.readings = ["HELLO", "HELL0", "world", "World", "hi", "hi", "cat", ""]
    batch = _batch(doubled)
    batch.extra["input_size"] = (128, 128)
    m.update(batch)
    r = m.compute()
    assert ScriptedOCR.readings == []
    # reconstruction: HELLO -> HELL0 (1 edit), world -> World (1), hi exact, cat -> "" (3 edits, 3 letters)
    assert r["text_acc"] == 0.25 and r["text_acc_ci"] == 0.5 and r["text_ned"] == pytest.approx((0.8 + 0.8 + 1) / 4)
    assert r["text_acc_orig"] == r["text_acc_ci_orig"] == r["text_ned_orig"] == 1.0
    assert r["text_char_acc"] == pytest.approx(1 - 5 / 15) and r["text_char_acc_orig"] == 1.0
    assert r["text_acc_h0-0.05"] == 0.5 and r["text_ned_h0-0.05"] == pytest.approx(0.9)
    assert r["text_char_acc_h0-0.05"] == pytest.approx(1 - 1 / 7) and r["text_char_acc_h0.05-0.075"] == 0.0
    assert r["text_acc_ci_h0.075-1"] == 1.0 and r["text_ned_h0.075-1"] == pytest.approx(0.8)
    assert r["text_char_acc_h0.075-1"] == pytest.approx(0.8)
    assert r["text_words_h0-0.05"] == 2 and r["text_words_h0.05-0.075"] == 1 and r["text_words_h0.075-1"] == 1
    assert r["text_acc_mean_buckets"] == pytest.approx(0.5 / 3) and r["text_acc_orig_mean_buckets"] == 1.0
    assert r["text_acc_drop"] == 0.75 and r["text_ned_drop"] == pytest.approx(1 - 0.65)
    assert r["text_words"] == 4 and r["text_words_unread"] == 2 and r["text_boxes_dropped"] == 3
    rows = m.last_rows
    assert rows["text_acc"][:2].tolist() == pytest.approx([1 / 3, 0.0])
    assert rows["text_ned"][:2].tolist() == pytest.approx([2.6 / 3, 0.0])
    assert rows["text_char_acc"][:2].tolist() == pytest.approx([1 - 2 / 12, 0.0])
    assert rows["text_char_acc_orig"][:2].tolist() == [1.0, 1.0] and torch.isnan(rows["text_char_acc"][2])
    assert rows["text_words"].tolist() == [3, 1, 0] and rows["text_words_unread"].tolist() == [0, 2, 0]
    assert rows["text_boxes_dropped"].tolist() == [0, 3, 0]
    directions = m.directions(r)
    assert directions["text_acc_drop"] == directions["text_ned_drop"] == "lower"
    assert directions["text_char_acc"] == directions["text_acc_h0-0.05"] == "higher"
    assert not {"text_acc_orig", "text_words", "text_boxes_dropped", "text_words_unread"} & set(directions)
    assert "zh words unread: no Chinese model" in m.protocol()["text_preservation"]
    # a second batch adds to every count: one-letter words, one read right and one wrong, one more cut box
    ScriptedOCR.readings = ["A", "A", "B", "C"]
    m.update(_batch([(((5, 44, 25, 52),), ("A",), (0.04,), 1), (((33, 5, 60, 15), (2, 30, 30, 40)), ("B", "字"),
                                                                    (0.04, 0.04), 0)]))  # fmt: skip
    rows = m.last_rows
    assert rows["text_acc"].tolist() == [1.0, 0.0] and rows["text_char_acc"].tolist() == [1.0, 0.0]
    r = m.compute()
    assert r["text_words"] == 6 and r["text_words_unread"] == 3 and r["text_boxes_dropped"] == 4
    assert r["text_char_acc"] == pytest.approx(1 - 6 / 17)
    # TokBench's 256 px edges start at 0.02: smaller text joins the first bucket
    m = build_metric("text_preservation", backend="noChinese", buckets=[0.02, 0.03, 0.04, 1.0])
    ScriptedOCR.readings = ["HELLO", "HELLO"]
    m.update(_batch([(((2, 10, 30, 18),), ("HELLO",), (0.01,), 0)]))
    assert m.compute()["text_words_h0.02-0.03"] == 1


def test_metric_options_are_checked(monkeypatch):
    monkeypatch.setitem(BACKENDS, "scripted", ScriptedOCR)
    for lang in ("auto", "en", "zh", "ja", "ko"):
        assert build_metric("text_preservation", backend="scripted", lang=lang).lang == lang
    with pytest.raises(TokbenchError, match="lang='fr'"):
        build_metric("text_preservation", backend="scripted", lang="fr")
    assert build_metric("text_preservation", backend="scripted", buckets=[0, 1]).edges == (0.0, 1.0)
    for bad in ([0.5], [0, 0.5, 0.5, 1], [0, 0.6, 0.5]):
        with pytest.raises(TokbenchError, match="increasing edges"):
            build_metric("text_preservation", backend="scripted", buckets=bad)


def test_ned_and_character_errors_of_empty_and_capped_words():
    from tokbench.metrics.text import char_errors, crop_box, ned_similarity

    assert ned_similarity("", "") == 1.0 and ned_similarity("ab", "") == 0.0 and ned_similarity("a", "b") == 0.0
    assert ned_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert char_errors("ab", "xyzw") == 2 and char_errors("", "xyz") == 0  # capped at the transcript's length
    from tokbench.metrics.text import to_uint8

    assert to_uint8(torch.tensor([-0.5, 0.5, 1.5, 0.998]).view(1, 1, 4).expand(3, 1, 4))[0, :, 0].tolist() == [
        0, 128, 255, 254]  # clamped to [0, 1], rounded half up
    image = np.zeros((10, 10, 3), np.uint8)
    assert crop_box(image, (0.5, 0.2, 2.1, 1.9)).shape == (2, 3, 3)  # rounded outward from the top edge
    assert crop_box(image, (3, 3, 4.9, 4.0)) is None and crop_box(image, (3, 3, 3.9, 6)) is None
    assert crop_box(image, (3, 3, 4.9, 6)).shape == (3, 2, 3)
    assert crop_box(image, (3, 3, 4.9, 4.0)) is None and crop_box(image, (-5, 8, 30, 12)).shape == (2, 10, 3)


def test_metric_needs_annotated_data(monkeypatch):
    monkeypatch.setitem(BACKENDS, "scripted", ScriptedOCR)
    m = build_metric("text_preservation", backend="scripted")
    b = _batch([None])
    b.extra["text"] = None
    with pytest.raises(TokbenchError, match="text-synth"):
        m.update(b)


def test_missing_tesseract_is_a_skip_with_the_install_command(monkeypatch):
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(OCRUnavailable, match="apt-get install tesseract-ocr"):
        build_metric("text_preservation", backend="tesseract")


def test_runner_records_a_missing_backend_as_a_metric_skip(tmp_path, monkeypatch):
    import pytesseract

    from tokbench.runner import run_suite
    from tokbench.suite import parse_suite

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    suite = parse_suite({"data": ["text-synth:count=1,size=64,heights=0.2,words=1"], "resolution": 64,
                         "metrics": ["psnr", {"text_preservation": {"backend": "tesseract"}}],
                         "tokenizers": [{"name": "jpeg"}], "num_workers": 0, "grid_images": 0})
    (summary,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert summary["status"] == "ok" and "psnr" in summary["results"]
    assert "apt-get install tesseract-ocr" in summary["metric_skips"]["text_preservation[backend=tesseract]"]


def test_doctr_missing_is_a_clear_skip():
    try:
        import doctr  # noqa: F401
    except ImportError:
        with pytest.raises(OCRUnavailable, match="pip install python-doctr"):
            build_metric("text_preservation", backend="doctr")
    else:
        pytest.skip("python-doctr is installed: test_doctr_random_weights covers it")


def test_doctr_random_weights_plumbing():
    pytest.importorskip("doctr", reason="python-doctr is not installed (it needs huggingface-hub<2)")
    m = build_metric("text_preservation", backend="doctr", weights="random")
    placed = [(((2, 2, 60, 20),), ("word",), (None,), 0)]
    m.update(_batch(placed))
    r = m.compute()
    assert r["text_words"] == 1 and 0 <= r["text_ned"] <= 1
    assert "random weights" in m.protocol()["text_preservation"]


# ------------------------------------------------------------------------------- real OCR facts
# (more in tests/test_ocr_real.py: PP-OCR against rapidocr's own recogniser, other layouts, CJK)


@pytest.fixture(scope="module")
def synth_results(tmp_path_factory):
    """text-synth (2 images, 24 words) at 256 px through JPEG q5 and q90, read by Tesseract."""
    from tokbench.registry import load_tokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKBENCH_CACHE", str(tmp_path_factory.mktemp("synth-cache")))
        ds = open_dataset("text-synth:count=2", seed=0)
    out = {}
    for q in (5, 90):
        m = build_metric("text_preservation", backend="tesseract")
        tok = load_tokenizer("jpeg", quality=q)
        for b in iterate_batches(ds, "resize-crop", 256, 2, num_workers=0):
            t = tok.encode(b.images)
            m.update(EvalBatch(originals=b.images, tokens=t, tokenizer=tok, index=b.index,
                               reconstructions=tok.decode(t), extra={"input_size": (256, 256), "text": b.text}))
        out[q] = m.compute()
    return out


@needs_tesseract
def test_tesseract_reads_text_synth_originals(synth_results):
    assert synth_results[90]["text_words"] == 24
    assert synth_results[90]["text_acc_orig"] >= 0.95


@needs_tesseract
def test_jpeg_q5_reads_worse_than_q90_at_the_smallest_size(synth_results):
    small = "text_acc_h0-0.05"
    assert synth_results[5][small] < synth_results[90][small]
    assert synth_results[5]["text_acc_drop"] > synth_results[90]["text_acc_drop"]


class ConstantOCR(OCRBackend):
    name = "constant"

    def __init__(self, **_):
        pass

    def describe(self) -> str:
        return "constant"

    def _read(self, crops, lang):
        return ["x"] * len(crops)


def test_suite_rows_and_report_figures(tmp_path, monkeypatch):
    """Runner and report plumbing (no real OCR): rows per image, bucket results, the two text figures."""
    from tokbench.report import write_report
    from tokbench.runner import read_rows, run_suite
    from tokbench.suite import parse_suite

    monkeypatch.setitem(BACKENDS, "constant", ConstantOCR)
    suite = parse_suite({"data": ["text-synth:count=2,size=96,heights=0.15/0.25,words=1"], "resolution": 64,
                         "metrics": ["bpp", {"text_preservation": {"backend": "constant", "buckets": [0, 0.2, 1]}}],
                         "tokenizers": [{"name": "jpeg", "sweep": {"quality": [10, 90]}}], "num_workers": 0,
                         "grid_images": 1, "batch_size": 2})
    summaries = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    for s in summaries:
        assert s["status"] == "ok" and not s["metric_skips"]
        r = s["results"]
        assert r["text_words"] == 4 and r["text_words_h0-0.2"] == 2 and r["text_acc"] == 0.0
        assert "constant" in s["metric_protocols"]["text_preservation"]
        rows = read_rows(tmp_path / "run" / "jobs" / s["job"] / "rows.jsonl")
        assert [row["text_words"] for row in rows] == [2, 2]
    out = write_report(tmp_path / "run")
    assert (out / "text_accuracy.png").is_file() and (out / "text_crops.png").is_file()
    assert "text acc" in (out / "report.md").read_text()
