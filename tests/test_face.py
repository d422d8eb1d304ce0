"""Face identity: dlib's embedder against its golden outputs, the alignment against skimage, sidecars
through the protocols, and the metric on face-synth under JPEG and blur."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from tokbench.data import iterate_batches, open_dataset
from tokbench.metrics.base import EvalBatch, build_metric

GOLDEN = Path(__file__).resolve().parents[1] / "shared" / "golden" / "dlib_face"
if not GOLDEN.is_dir():
    GOLDEN = Path("/work/shared/golden/dlib_face")


def _has_dlib() -> bool:
    try:
        from tokbench.metrics.face import DlibFace

        DlibFace()
    except Exception:  # noqa: BLE001
        return False
    return True


needs_dlib = pytest.mark.skipif(not _has_dlib(), reason="dlib-bin / face-recognition-models not installed "
                                "(pip install 'dlib-bin>=19.24' 'face-recognition-models>=0.3')")


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "tokbench-cache"))


@pytest.fixture(scope="module")
def golden():
    if not (GOLDEN / "io.safetensors").is_file():
        pytest.skip(f"golden fixture {GOLDEN} not present")
    from safetensors.numpy import load_file

    return load_file(str(GOLDEN / "io.safetensors"))


@needs_dlib
def test_dlib_backend_reproduces_dlibs_reference_outputs(golden):
    """Detection, 5-point shape and the 128-d descriptor on six crops of astronaut(), against the golden
    file made with dlib 20.0.1 (`descriptor`): equal to 1e-5 (the same float32 network, same build)."""
    from tokbench.metrics.face import DlibFace

    be = DlibFace()
    for i, img in enumerate(golden["images_uint8"]):
        box = be.detect(img)[0]  # as the golden file: the detector's first face
        assert list(box) == golden["hog_boxes_ltrb"][i].tolist()
        shape = be.align(img, box, None)
        assert [[p.x, p.y] for p in shape.parts()] == golden["shape5"][i].tolist()
        (emb,) = be.embed([img], [shape])
        np.testing.assert_allclose(emb, golden["descriptor"][i], atol=1e-5)


@needs_dlib
def test_face_sim_under_jpeg_q5_matches_the_golden_range(golden):
    """The metric's cosine, original against the image saved at JPEG q5 with the shape of the original, is
    in the range the golden file gives for dlib re-detecting on the JPEG (0.926-0.961), give or take the
    landmarks' own shift (0.02)."""
    import io

    sims = []
    for img in golden["images_uint8"][:2]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=5)
        jpg = np.asarray(Image.open(buf).convert("RGB"))
        sims.append(_metric_on_pairs([img], [jpg])["face_sim"])
    d, q = golden["descriptor"][:2], golden["descriptor_jpeg_q5"][:2]
    ref = (d * q).sum(1) / (np.linalg.norm(d, axis=1) * np.linalg.norm(q, axis=1))
    assert 0.90 <= min(sims) and max(sims) <= 0.99
    np.testing.assert_allclose(sims, ref, atol=0.03)


def _metric_on_pairs(originals, recons, **options):
    m = build_metric("face_identity", **options)
    to_t = lambda arrs: torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    m.update(EvalBatch(originals=to_t(originals), tokens=None, tokenizer=None, index=torch.arange(len(originals)),
                       reconstructions=to_t(recons), extra={"input_size": originals[0].shape[:2], "faces": None}))
    return m.compute()


def test_similarity_transform_matches_skimage():
    """insightface estimates its alignment with skimage's SimilarityTransform: ours gives the same matrix."""
    from skimage.transform import SimilarityTransform

    from tokbench.metrics.face import ARCFACE_TEMPLATE, norm_crop, similarity_transform

    src = np.array([[93.5, 30.3], [121.3, 31.4], [108.2, 46.7], [94.3, 56.5], [118.8, 56.5]])
    ref = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE) if hasattr(SimilarityTransform, "from_estimate") \
        else SimilarityTransform()
    if not hasattr(SimilarityTransform, "from_estimate"):
        ref.estimate(src, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(similarity_transform(src, ARCFACE_TEMPLATE), ref.params[:2], atol=1e-9)
    # a face mirrored left-right is still a similarity (no reflection is fitted): the eyes swap sides
    img = np.zeros((128, 128, 3), np.uint8)
    chip = norm_crop(img, src)
    assert chip.shape == (112, 112, 3)


def test_faces_sidecar_follows_the_protocol(tmp_path):
    Image.new("RGB", (640, 480), "grey").save(tmp_path / "p.png")
    kps = [[110, 110], [150, 110], [130, 125], [115, 140], [145, 140]]
    (tmp_path / "p.faces.json").write_text(json.dumps([{"box": [100, 100, 200, 150], "keypoints": kps},
                                                       {"box": [0, 0, 30, 30]}]))
    ds = open_dataset(f"folder:{tmp_path}")
    (b,) = list(iterate_batches(ds, "resize-crop", 256, 1, num_workers=0))
    (placed,) = b.faces
    # resize-crop of 640x480 at 256: x * 341/640 - 42, y * 256/480 (as tests/test_text.py's boxes)
    fx, fy = 341 / 640, 256 / 480
    np.testing.assert_allclose(placed.boxes[0], (100 * fx - 42, 100 * fy, 200 * fx - 42, 150 * fy))
    np.testing.assert_allclose(placed.keypoints[0], [(x * fx - 42, y * fy) for x, y in kps])
    assert placed.dropped == 1 and len(placed.boxes) == 1


def test_bad_faces_sidecar_is_a_counted_skip(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "a.faces.json").write_text(json.dumps([{"box": [1, 1, 9, 9], "keypoints": [[1, 2]]}]))
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.records[0].faces is None and "keypoints" in ds.sidecar_skips[0]["reason"]


def test_tokbench_face_layout(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (300, 200)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "face_meta.json").write_text(json.dumps([{"image_name": "a.jpg", "img_height": 200, "img_width": 300,
        "faces": [{"kps": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]], "box": [0, 0, 50, 60], "ratio": 0.3,
                   "gt": 1}]}]))
    (rec,) = open_dataset(f"tokbench-face:{tmp_path}").records
    assert rec.path.endswith("images/a.jpg") and rec.faces[0].ratio == 0.3 and rec.faces[0].keypoints[4] == (9, 10)


@needs_dlib
def test_face_synth_jpeg_q90_keeps_identity_and_blur_loses_it():
    """Faces of face-synth at 256 px: JPEG q90 keeps face_sim > 0.9; a Gaussian blur of radius 6 drops it
    below 0.9 in every size bucket."""
    import io

    ds = open_dataset("face-synth:count=3,sizes=0.25/0.4/0.55", seed=0)
    (b,) = list(iterate_batches(ds, "resize-crop", 256, 3, num_workers=0))
    assert b.faces is not None and all(p is not None and len(p.boxes) == 1 for p in b.faces)

    def through(fn):
        out = []
        for x in b.images:
            im = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            out.append(torch.from_numpy(np.array(fn(im))).permute(2, 0, 1).float() / 255)
        return torch.stack(out)

    def jpeg(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return Image.open(buf).convert("RGB")

    results = {}
    for name, fn in (("q90", jpeg), ("blur", lambda im: im.filter(ImageFilter.GaussianBlur(6)))):
        m = build_metric("face_identity")
        m.update(EvalBatch(originals=b.images, tokens=None, tokenizer=None, index=b.index,
                           reconstructions=through(fn), extra={"input_size": (256, 256), "faces": b.faces}))
        results[name] = m.compute()
    assert results["q90"]["face_count"] == 3 and results["q90"]["face_sim"] > 0.9
    assert all(results["q90"][k] > 0.9 for k in results["q90"] if k.startswith("face_sim_s"))
    assert results["blur"]["face_sim"] < 0.9
    assert results["blur"]["face_dist"] > results["q90"]["face_dist"]


def test_insightface_without_weights_is_a_skip_with_the_fetch_command(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    from tokbench.core import MetricUnavailable

    monkeypatch.setenv("TOKBENCH_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MetricUnavailable, match="tokbench fetch insightface-antelopev2"):
        build_metric("face_identity", backend="insightface", weights=str(tmp_path / "missing.zip"))


@needs_dlib
def test_face_suite_rows_and_report(tmp_path):
    """Runner and report plumbing on face-synth: bucket results, per-image rows, the protocol with the
    embedder's version, the face figures and section."""
    from tokbench.report import write_report
    from tokbench.runner import run_suite
    from tokbench.suite import parse_suite

    suite = parse_suite({"data": ["face-synth:count=2,sizes=0.3/0.5,size=128"], "resolution": 128,
                         "metrics": ["bpp", "face_identity"], "tokenizers": [{"name": "jpeg", "sweep": {"quality": [5, 90]}}],
                         "num_workers": 0, "grid_images": 2, "batch_size": 2})
    summaries = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    for s in summaries:
        assert s["status"] == "ok" and not s["metric_skips"], s.get("reason") or s["metric_skips"]
        r = s["results"]
        assert r["face_count"] == 2 and r["face_count_s0.3-1"] == 2 and 0 < r["face_sim"] <= 1
        assert "dlib 20" in s["metric_protocols"]["face_identity_model"]
    sims = {s["params"]["quality"] if isinstance(s.get("params"), dict) else s["job"]: s["results"]["face_sim"]
            for s in summaries}
    assert min(sims.values()) < max(sims.values())
    out = write_report(tmp_path / "run")
    assert (out / "face_similarity.png").is_file() and (out / "face_crops.png").is_file()
    assert "## Face identity" in (out / "report.md").read_text()
