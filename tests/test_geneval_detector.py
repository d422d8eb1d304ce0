"""The geneval_hf detector path with tiny random models: colour crops (pixels by hand), label mapping to
COCO's 80 classes, mmdet-style post-processing (by hand), the colour classifier (against open_clip's own
loading and clip_benchmark's formula), and GenEval layout -> results.jsonl through the CLI."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokbench.cli import main
from tokbench.core import TokbenchError
from tokbench.geneval import GENEVAL_CLASSES, Instance
from tokbench.geneval.detector import (
    color_crop,
    instance_postprocess,
    load_color_classifier,
    load_detector,
    map_labels,
)
from tokbench.geneval.rules import COLOR_TEMPLATES, COLORS
from tokbench.weights import WeightsUnavailable

sys.path.insert(0, str(Path(__file__).parent))
from tiny_mask2former import COCO_NAMES, save_tiny_mask2former  # noqa: E402
from tiny_open_clip import save_tiny_clip  # noqa: E402

TORCH_THREADS = 1
TINY_CLIP = "tokbench-test-tiny-geneval-clip"


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    return save_tiny_mask2former(tmp_path_factory.mktemp("mask2former"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), TINY_CLIP, seed=1)


def test_color_crop_composites_on_grey_then_crops_like_pil_rounds():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    mask = np.zeros((7, 9), dtype=bool)
    mask[1:5, 2:6] = True
    mask[3, 7] = True
    box = np.array([1.5, 0.5, 7.5, 5.2], dtype=np.float32)  # round half to even: (2, 0, 8, 5)
    crop = np.asarray(color_crop(Image.fromarray(pixels), box, mask))
    expected = np.where(mask[..., None], pixels, np.uint8(0x99))[0:5, 2:8]  # "#999" = (153, 153, 153)
    assert crop.shape == (5, 6, 3) and np.array_equal(crop, expected)
    kept = np.asarray(color_crop(Image.fromarray(pixels), box, mask, bgcolor="original"))
    assert np.array_equal(kept, pixels[0:5, 2:8])
    whole = np.asarray(color_crop(Image.fromarray(pixels), box, mask, crop=False))
    assert whole.shape == (7, 9, 3) and np.array_equal(whole[mask], pixels[mask]) and (whole[~mask] == 153).all()
    with pytest.raises(TokbenchError, match="mask shape"):
        color_crop(Image.fromarray(pixels), box, mask[:5])


def test_labels_map_to_geneval_names_by_coco_class():
    assert map_labels(dict(enumerate(COCO_NAMES))) == dict(enumerate(GENEVAL_CLASSES))
    # a panoptic checkpoint: things under other spellings, stuff classes in between (ignored)
    panoptic = {0: "person", 1: "wall-other-merged", 2: "motorbike", 3: "sky"}
    panoptic.update({i + 4: n for i, n in enumerate(COCO_NAMES) if n not in ("person", "motorcycle")})
    mapped = map_labels({str(k): v for k, v in panoptic.items()})
    assert mapped[0] == "person" and mapped[2] == "motorcycle" and 1 not in mapped and 3 not in mapped
    assert mapped[4 + COCO_NAMES.index("mouse")] == "computer mouse"
    assert sorted(mapped.values()) == sorted(GENEVAL_CLASSES)
    with pytest.raises(TokbenchError, match="do not cover GenEval's classes"):
        map_labels(dict(enumerate(COCO_NAMES[:79])))
    with pytest.raises(TokbenchError, match="both map to GenEval's 'couch'"):
        map_labels({**dict(enumerate(COCO_NAMES)), 80: "sofa"})


def test_instance_postprocess_by_hand():
    # 2 queries, 3 classes (+ no-object); mask logits already at the image size, no padding
    class_logits = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0]])
    masks = torch.full((2, 4, 5), -2.0)
    masks[0, 1:3, 1:4] = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    masks[1, 0, 4] = 0.5
    out = instance_postprocess(class_logits, masks, valid=(4, 5), padded=(4, 5), size=(4, 5), max_per_image=2)
    probs = torch.softmax(class_logits, -1)
    by_label = {label: (score, box, mask) for label, score, box, mask in out}
    assert set(by_label) == {0, 1}  # the two most probable (query, class) pairs
    mean0 = torch.sigmoid(torch.tensor([1.0, 2.0, 3.0])).mean()
    assert by_label[0][0] == pytest.approx(float(probs[0, 0] * mean0), rel=1e-5)
    assert by_label[0][1].tolist() == [1, 1, 4, 3]  # [x0, y0, x1 + 1, y1 + 1]
    assert by_label[0][2].sum() == 6
    assert by_label[1][0] == pytest.approx(float(probs[1, 1] * torch.sigmoid(torch.tensor(0.5))), rel=1e-5)
    assert by_label[1][1].tolist() == [4, 0, 5, 1]
    # padding: the mask's right half lies in the padded area and is cut before resizing to the image
    pad = torch.full((1, 4, 8), -5.0)
    pad[0, :, 4:] = 5.0
    (_, _, box, mask), = instance_postprocess(torch.tensor([[3.0, 0.0]]), pad, valid=(4, 4), padded=(4, 8),
                                              size=(8, 8), max_per_image=1)  # fmt: skip
    assert not mask.any() and box.tolist() == [0, 0, 0, 0]


def test_color_classifier_equals_open_clip_and_clip_benchmark_formula(tiny_clip):
    import open_clip

    clf = load_color_classifier(TINY_CLIP, weights=tiny_clip)
    ref, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(tiny_clip))
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:30, 10:45] = True
    insts = [Instance([10, 5, 45, 30], 0.9, mask=mask), Instance([0, 0, 20, 20], 0.8, mask=np.ones((40, 50), bool))]
    with torch.no_grad():
        weights = []
        for c in COLORS:
            texts = [f"a photo of a {c} dog", f"a photo of a {c}-colored dog", f"a photo of a {c} object"]
            e = torch.nn.functional.normalize(ref.eval().encode_text(tokenizer(texts)), dim=-1).mean(0)
            weights.append(e / e.norm())
        crops = [np.where(mask[..., None], np.asarray(image), 153).astype(np.uint8)[5:30, 10:45],
                 np.asarray(image)[0:20, 0:20]]  # fmt: skip
        feats = ref.encode_image(torch.stack([preprocess(Image.fromarray(c)) for c in crops]))
        expected = 100 * torch.nn.functional.normalize(feats, dim=-1) @ torch.stack(weights, 1)
    assert [t.format(c="red", cls="dog") for t in COLOR_TEMPLATES][1] == "a photo of a red-colored dog"
    assert torch.allclose(clf.logits(image, "dog", insts), expected, atol=1e-4)
    assert clf.classify(image, "dog", insts) == [COLORS[i] for i in expected.argmax(1).tolist()]


def test_detector_offline_says_how_to_fetch():
    with pytest.raises(WeightsUnavailable, match="tokbench fetch mask2former-swin-small-coco-instance"):
        load_detector()


def _layout(root, prompts):
    for index, (meta, n) in enumerate(prompts):
        folder = root / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        if meta is not None:
            (folder / "metadata.jsonl").write_text(json.dumps(meta))
        for s in range(n):
            rng = np.random.default_rng(index * 10 + s)
            Image.fromarray(rng.integers(0, 256, (48 + 8 * s, 64, 3), dtype=np.uint8)).save(folder / "samples" / f"{s:05d}.png")


def test_layout_to_results_jsonl_end_to_end(tiny_mask2former, tiny_clip, tmp_path, capsys):
    images = tmp_path / "images"
    _layout(images, [
        ({"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}, 2),
        ({"tag": "position", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1,
          "position": ["left of", 0]}], "prompt": "a photo of a dog left of a cat"}, 1),
        (None, 1),  # no metadata.jsonl: skipped
    ])  # fmt: skip
    (images / "00001" / "samples" / "00001.png").write_bytes(b"not a png")  # unreadable: skipped
    out = tmp_path / "out"
    # threshold 0 so that the random detector's low scores pass and the colour and position rules run
    rc = main(["geneval", "--images", str(images), "--out", str(out), "--detector-weights", str(tiny_mask2former),
               "--clip-weights", str(tiny_clip), "--options", "threshold=0", f"clip_model={TINY_CLIP}",
               "--device", "cpu"])  # fmt: skip
    assert rc == 1  # two things skipped
    assert "  4/4 images" in capsys.readouterr().err  # progress reaches the end, the last image unreadable
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["filename"] for r in rows] == [str(images / "00000" / "samples" / "00000.png"),
                                             str(images / "00000" / "samples" / "00001.png"),
                                             str(images / "00001" / "samples" / "00000.png")]  # fmt: skip
    assert all(list(r) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"] for r in rows)
    assert json.loads(rows[2]["metadata"])["tag"] == "position"
    for r in rows:
        details = json.loads(r["details"])
        assert set(details) <= set(GENEVAL_CLASSES)
        for boxes in details.values():
            scores = [b[4] for b in boxes]
            assert scores == sorted(scores, reverse=True) and len(boxes) <= 16 and all(s > 0 for s in scores)
        if not r["correct"]:
            assert r["reason"]
    colour = [r for r in rows[:2] if "dog" in json.loads(r["details"])]
    assert colour and all(r["correct"] or "expected red dog>=1, found 0 red; and 1 " in r["reason"] for r in colour)
    skipped = (out / "skipped.txt").read_text()
    assert "00001.png\tunreadable image" in skipped and "00002" in skipped and "no metadata.jsonl" in skipped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label"] == "geneval_hf" and summary["total_images"] == 3
    assert "Mask2FormerForUniversalSegmentation" in summary["protocol"]["detector"]["backend"]
    assert TINY_CLIP in summary["protocol"]["colors"]["backend"]
    # GenEval's colour defaults: the mask composited on grey #999 and cropped to the box
    assert summary["protocol"]["colors"]["crops"] == "mask composited on #999, cropped to the box"
    assert set(summary["scores"]) == {"geneval_hf_overall", "geneval_hf_colors", "geneval_hf_position"}
    report = (out / "report.md").read_text()
    assert "`geneval_hf`" in report and "unmeasured" in report and "## Skipped (2)" in report
    assert (out / "summary.csv").read_text().splitlines()[-1].startswith("geneval_hf,overall,")


def test_detector_resolves_its_three_files_from_tokbench_weights(tiny_mask2former, tmp_path, monkeypatch):
    import shutil

    from tokbench.geneval.detector import MASK2FORMER_SWIN_S_COCO
    from tokbench.weights import fetch

    folder = tmp_path / "w" / MASK2FORMER_SWIN_S_COCO.name
    shutil.copytree(tiny_mask2former, folder)
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))
    assert sorted(p.name for p in fetch(MASK2FORMER_SWIN_S_COCO)) == ["config.json", "model.safetensors",
                                                                      "preprocessor_config.json"]  # fmt: skip
    detector = load_detector()
    assert detector.labels == dict(enumerate(GENEVAL_CLASSES))
    (folder / "config.json").unlink()
    with pytest.raises(WeightsUnavailable, match="mask2former-swin-small-coco-instance"):
        load_detector()


def test_wrong_images_folder_fails_before_loading_models(tmp_path, capsys):
    assert main(["geneval", "--images", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "00000" / "samples").mkdir(parents=True)
    assert main(["geneval", "--images", str(tmp_path)]) == 2  # no weights here, yet the message is about the images
    assert "no image to score" in capsys.readouterr().err


def test_masks_are_resized_with_half_pixel_centres_like_mmdet(tmp_path):
    """The two mask resizes (to the padded input, then from its valid part to the image) are bilinear with
    align_corners=False, as mmdet's `F.interpolate` calls; OpenCV's INTER_LINEAR (the same half-pixel
    convention) is the reference. (Mutation testing: align_corners=True passed the hand-worked cases, whose
    masks are already at the image size.)"""
    import cv2

    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(0, 3, (2, 3, 4)), dtype=torch.float32)
    valid, padded, size = (5, 7), (6, 8), (10, 13)
    out = instance_postprocess(torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]), logits, valid=valid, padded=padded,
                               size=size, max_per_image=2)  # fmt: skip
    for label, score, _, mask in out:
        m = cv2.resize(logits[label].numpy(), (padded[1], padded[0]), interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(m[: valid[0], : valid[1]], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(mask, m > 0)
        prob = float(torch.softmax(torch.tensor([4.0, 0.0, 0.0]), 0)[0])
        mean = (1 / (1 + np.exp(-m)) * (m > 0)).sum() / ((m > 0).sum() + 1e-6)
        assert score == pytest.approx(prob * mean, rel=1e-5)


class _OneDog:
    """A detector that finds one dog in every image it is given, and counts the images."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, image):
        self.seen += 1
        return {"dog": [Instance(np.array([0, 0, image.width // 2, image.height // 2]), 0.9)]}

    def describe(self):
        return {"backend": "one dog"}


class _Red:
    def classify(self, image, classname, instances):
        return ["red"] * len(instances)

    def describe(self):
        return {"backend": "always red"}


def test_score_images_goes_on_after_an_unreadable_image_and_falls_back_to_the_prompt_list(tmp_path):
    """`score_images` with a folder whose first image cannot be read (the rest are still scored), folders
    without metadata.jsonl taking line i of the given prompt list (line 0 included; a folder past its end is
    skipped), progress counted over the folder's images, and the protocol naming where metadata came from."""
    from tokbench.geneval import score_images
    from tokbench.geneval.layout import Metadata

    dog = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    red = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}
    two = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "prompt": "a photo of two dogs"}
    images = tmp_path / "images"
    _layout(images, [(None, 2), (two, 1), (None, 1)])
    (images / "00000" / "samples" / "00000.png").write_bytes(b"not a png")
    fallback = Metadata(prompts=[dog, red], source="prompts.jsonl")
    detector, calls = _OneDog(), []
    run = score_images(images, detector, _Red(), metadata=fallback, progress=lambda i, n: calls.append((i, n)))
    assert [(Path(r["filename"]).parent.parent.name, Path(r["filename"]).name, r["tag"], r["correct"])
            for r in run.rows] == [("00000", "00001.png", "single_object", True), ("00001", "00000.png", "counting", False)]
    assert detector.seen == 2 and calls == [(1, 3), (2, 3), (3, 3)]
    assert [(Path(p).relative_to(images).as_posix(), why.split(" (")[0]) for p, why in run.skipped] == [
        ("00002/samples/00000.png", "no metadata.jsonl"), ("00000/samples/00000.png", "unreadable image")]
    assert run.protocol["metadata"] == "prompts.jsonl (for folders without metadata.jsonl)"
    assert run.protocol["detector"] == {"backend": "one dog"} and run.protocol["colors"] == {"backend": "always red"}
    assert {"label", "rules", "options", "note"} <= set(run.protocol) and "not the official" in run.protocol["note"]
    alone = score_images(images, _OneDog(), _Red())  # no prompt list: only the folder with its own metadata
    assert [r["tag"] for r in alone.rows] == ["counting"] and alone.protocol["metadata"] == "per folder"
    # what write_outputs makes of it, in a folder that does not exist yet
    from tokbench.geneval.scoring import write_outputs

    out = write_outputs(run, tmp_path / "new" / "out")
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [["label", "task", "score", "correct", "total", "detector"],
                     ["geneval_hf", "single_object", "1.0", "1", "1", "backend: one dog"],
                     ["geneval_hf", "counting", "0.0", "0", "1", "backend: one dog"],
                     ["geneval_hf", "overall", "0.5", "", "2", "backend: one dog"]]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 2 and summary["skipped_not_a_task"] == 0 and summary["versions"]["torch"]
    assert summary["scores"] == {"geneval_hf_overall": 0.5, "geneval_hf_single_object": 1.0, "geneval_hf_counting": 0.0}
    report = (out / "report.md").read_text()
    assert "| single_object | 1.0000 | 1 / 1 |" in report and "- note: GenEval-style: not the official" in report
    assert "- metadata: prompts.jsonl (for folders without metadata.jsonl)" in report and "## Skipped (2)" in report
    from tokbench.geneval.scoring import GenevalRun

    write_outputs(GenevalRun("geneval_hf", [], run.skipped, run.protocol), out)  # no image could be scored
    assert "No image was scored." in (out / "report.md").read_text()


def test_official_metadata_takes_a_prompt_list_and_refuses_per_image_metadata(tmp_path):
    from tokbench.geneval import official_metadata

    prompts = tmp_path / "evaluation_metadata.jsonl"
    line = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    prompts.write_text(json.dumps(line) + "\n" + json.dumps({**line, "prompt": "a dog"}) + "\n")
    meta = official_metadata(prompts, download=False)
    assert [m["prompt"] for m in meta.prompts] == ["a photo of a dog", "a dog"] and meta.source == str(prompts)
    # blank lines (a trailing newline, an empty line between two) are skipped, never the end of the file
    prompts.write_text(json.dumps(line) + "\n\n  \n" + json.dumps({**line, "prompt": "a dog"}) + "\n\n")
    assert [m["prompt"] for m in official_metadata(prompts, download=False).prompts] == ["a photo of a dog", "a dog"]
    per_image = tmp_path / "per_image.jsonl"
    per_image.write_text(json.dumps({**line, "image_id": "00000/00000"}) + "\n")
    with pytest.raises(TokbenchError, match="holds per-image metadata, not GenEval's prompt list"):
        official_metadata(per_image, download=False)
