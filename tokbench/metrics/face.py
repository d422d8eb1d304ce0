"""Face identity preservation: is the face in the reconstruction still the same person? (TokBench's F-Sim)

For every face of an image (given by a `.faces.json` sidecar, TokBench's face meta, `face-synth`, or
detected on the original where the data set gives none) the face is aligned once, from the original,
and the same alignment is applied to the reconstruction (as TokBench passes the same keypoints for
both); a face-recognition network embeds both and the cosine similarity of the two embeddings is the
face's `face_sim` (TokBench's F-Sim). Sums are kept per bucket of relative face size (the annotation's
`ratio`, else box height / side; a ratio on an edge belongs to the bucket above), so the metric streams,
reduces across ranks and resumes.

Backends:
- `dlib` (default; offline out of the box): dlib's ResNet face embedder (128-d, 99.38% on LFW per dlib)
  and its 5-point landmark model, the files that the `face-recognition-models` package ships, run by
  dlib itself (the `dlib-bin` wheel): the reference implementation, not a port. The face's box (given,
  or dlib's HOG detector on the original, upsampled once) seeds the landmark model on the original;
  dlib's `get_face_chip` (150 px, padding 0.25) aligns; no jitter. Also reports dlib's Euclidean
  distance (`face_dist`; dlib's same-person threshold is 0.6), since dlib's descriptors are not
  zero-centred and cosines between different people are high too.
- `insightface`: an insightface recognition ONNX model (antelopev2's glintr100, TokBench's, or
  buffalo_l's w600k_r50; weights the user fetches: `tokbench list` names them) run by onnxruntime, on
  the face aligned to the 112 px ArcFace template by the 5-point similarity transform (insightface's
  `norm_crop`). Needs keypoints (a sidecar or TokBench's meta); faces without them are counted unread.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import MetricUnavailable, TokbenchError
from ..weights import Artifact, register_artifact, resolve
from .base import BenchMetric, EvalBatch, register_metric
from .text import bucket_label, to_uint8

DEFAULT_FACE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 1.0)
# TokBench's face buckets per resolution (compute_all_metrics.py; faces under the first edge are not counted)
TOKBENCH_FACE_BUCKETS = {256: (0.1, 0.2, 0.3, 1.0), 512: (0.05, 0.1, 0.2, 1.0), 1024: (0.02, 0.05, 0.1, 1.0)}
# insightface's ArcFace template for a 112 x 112 chip (face_align.arcface_dst), insightface's keypoint order
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)
DLIB_INSTALL = "`pip install 'dlib-bin>=19.24' 'face-recognition-models>=0.3'` (tokbench's dependencies)"

INSIGHTFACE_MODELS = {
    "antelopev2": register_artifact(Artifact(
        name="insightface-antelopev2", url="https://github.com/deepinsight/insightface/releases/download/v0.7/"
        "antelopev2.zip", filename="antelopev2.zip", size=360_000_000, licence="non-commercial research "
        "(insightface model zoo)", used_by="face_identity (backend insightface, TokBench's glintr100.onnx)")),
    "buffalo_l": register_artifact(Artifact(
        name="insightface-buffalo-l", url="https://github.com/deepinsight/insightface/releases/download/v0.7/"
        "buffalo_l.zip", filename="buffalo_l.zip", size=288_000_000, licence="non-commercial research "
        "(insightface model zoo)", used_by="face_identity (backend insightface, model buffalo_l: w600k_r50.onnx)")),
}
INSIGHTFACE_RECOGNISER = {"antelopev2": "glintr100.onnx", "buffalo_l": "w600k_r50.onnx"}


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 least-squares similarity (rotation, uniform scale, translation; no reflection) taking
    points `src` onto `dst` (Umeyama 1991), as insightface estimates its alignment."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = (sv * np.diag(sign)).sum() / s.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def norm_crop(image: np.ndarray, keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """The face warped onto insightface's ArcFace template (uint8 (size, size, 3)), OpenCV bilinear,
    black outside the image, as insightface's `face_align.norm_crop`."""
    import cv2

    m = similarity_transform(keypoints, ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), borderValue=0.0)


class FaceEmbedder:
    name = "face"
    detects = False  # whether faces can be found without annotations

    def describe(self) -> str:
        raise NotImplementedError

    def engine(self) -> dict[str, str]:
        raise NotImplementedError

    def align(self, original: np.ndarray, box, keypoints) -> Any | None:
        """How to align this face, found on the original (None: no alignment possible, counted)."""
        raise NotImplementedError

    def embed(self, images: list[np.ndarray], alignments: list[Any]) -> np.ndarray:
        """(N, D) embeddings of each image's face under its alignment."""
        raise NotImplementedError

    def detect(self, original: np.ndarray) -> list[tuple[float, float, float, float]]:
        raise TokbenchError(f"the {self.name} face backend finds no faces by itself; give boxes and keypoints "
                            "(a `.faces.json` beside each image, face-synth or tokbench-face:PATH), or use "
                            "backend dlib")


def _dlib_models() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")  # not imported: it needs pkg_resources
    if spec is None or spec.origin is None:
        raise MetricUnavailable(f"the dlib face backend needs the face-recognition-models package: {DLIB_INSTALL}")
    return Path(spec.origin).parent / "models"


class DlibFace(FaceEmbedder):
    """dlib's own pipeline: 5-point shape predictor on the original's box, `get_face_chip` (150 px,
    padding 0.25), the ResNet embedder; the shape from the original aligns the reconstruction too."""

    name = "dlib"
    detects = True

    def __init__(self, upsample: int = 1) -> None:
        try:
            import dlib
        except ImportError:
            raise MetricUnavailable(f"the dlib face backend needs dlib: {DLIB_INSTALL}") from None
        models = _dlib_models()
        files = {k: models / f for k, f in (("shape", "shape_predictor_5_face_landmarks.dat"),
                                             ("resnet", "dlib_face_recognition_resnet_model_v1.dat"))}
        for f in files.values():
            if not f.is_file():
                raise MetricUnavailable(f"{f} is missing from face-recognition-models; reinstall it: {DLIB_INSTALL}")
        self.dlib, self.upsample = dlib, int(upsample)
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(files["shape"]))
        self.resnet = dlib.face_recognition_model_v1(str(files["resnet"]))
        from importlib.metadata import version

        self.versions = f"dlib {dlib.__version__}, face-recognition-models {version('face-recognition-models')}"

    def describe(self) -> str:
        return (f"dlib ResNet face embedder (dlib_face_recognition_resnet_model_v1.dat, 128-d) on {self.versions}: "
                "the 5-point shape predictor seeded by the face's box on the original, dlib.get_face_chip 150 px "
                f"padding 0.25, no jitter; faces without a box found by dlib's HOG detector (upsample {self.upsample})")

    def engine(self) -> dict[str, str]:
        return {"engine": "dlib", "model": "dlib_face_recognition_resnet_model_v1 + shape_predictor_5_face_landmarks",
                "version": self.versions}

    def detect(self, original: np.ndarray) -> list[tuple[float, float, float, float]]:
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in self.detector(original, self.upsample)]

    def align(self, original: np.ndarray, box, keypoints):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return self.shape(np.ascontiguousarray(original), self.dlib.rectangle(x0, y0, x1, y1))

    def embed(self, images: list[np.ndarray], alignments: list[Any]) -> np.ndarray:
        return np.stack([np.asarray(self.resnet.compute_face_descriptor(np.ascontiguousarray(img), shape),
                                    dtype=np.float64) for img, shape in zip(images, alignments)])


class InsightFace(FaceEmbedder):
    """An insightface ArcFace recogniser (ONNX) on 112 px chips from `norm_crop`: RGB, (x - 127.5) / 127.5,
    as insightface's `ArcFaceONNX.get_feat`. `weights`: the `.onnx` file, the model's zip or its folder;
    default the registered release through the resolver."""

    name = "insightface"

    def __init__(self, model: str = "antelopev2", weights: str | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MetricUnavailable("the insightface face backend needs onnxruntime (`pip install onnxruntime`)") \
                from None
        if model not in INSIGHTFACE_MODELS:
            raise TokbenchError(f"insightface model {model!r}: use one of {sorted(INSIGHTFACE_MODELS)}")
        path = Path(weights).expanduser() if weights and Path(weights).expanduser().suffix == ".onnx" else \
            _insightface_onnx(model, weights)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or max(1, min(4, os.cpu_count() or 1)))
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        with open(path, "rb") as f:
            self.sha256 = hashlib.sha256(f.read()).hexdigest()
        self.model, self.path, self.ort_version = model, path, ort.__version__

    def describe(self) -> str:
        return (f"insightface {self.model} recogniser {self.path.name} (sha256 {self.sha256[:12]}) on onnxruntime "
                f"{self.ort_version} CPU; faces aligned to the 112 px ArcFace template by the 5-point similarity "
                "transform (insightface's norm_crop, OpenCV bilinear), RGB, (x - 127.5) / 127.5")

    def engine(self) -> dict[str, str]:
        return {"engine": "insightface", "model": f"{self.model}/{self.path.name} sha256:{self.sha256[:12]}",
                "version": f"onnxruntime {self.ort_version}"}

    def align(self, original: np.ndarray, box, keypoints):
        return None if keypoints is None else np.asarray(keypoints, np.float64)

    def embed(self, images: list[np.ndarray], alignments: list[Any]) -> np.ndarray:
        chips = np.stack([norm_crop(img, kps) for img, kps in zip(images, alignments)]).astype(np.float32)
        x = ((chips - 127.5) / 127.5).transpose(0, 3, 1, 2)
        return self.session.run(None, {self.session.get_inputs()[0].name: x})[0].astype(np.float64)


def _insightface_onnx(model: str, weights: str | None) -> Path:
    """The recogniser's .onnx from the model's zip (extracted beside it once) or folder."""
    import zipfile

    name = INSIGHTFACE_RECOGNISER[model]
    if weights and Path(weights).expanduser().is_dir():
        found = list(Path(weights).expanduser().rglob(name))
        if found:
            return found[0]
    try:
        archive = resolve(INSIGHTFACE_MODELS[model], weights)
    except Exception as e:  # noqa: BLE001 - not on this machine: a metric skip with the fetch command
        raise MetricUnavailable(f"insightface {model} weights are not on this machine ({e}); fetch them "
                                f"(`tokbench fetch {INSIGHTFACE_MODELS[model].name}`) or give weights=PATH") from None
    target = archive.parent / f"{archive.stem}-extracted" / name
    if not target.is_file():
        with zipfile.ZipFile(archive) as z:
            member = next((m for m in z.namelist() if m.endswith("/" + name) or m == name), None)
            if member is None:
                raise TokbenchError(f"{archive} holds no {name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(member))
    return target


FACE_BACKENDS = {"dlib": DlibFace, "insightface": InsightFace}


def build_face_backend(name: str, **options: Any) -> FaceEmbedder:
    if name not in FACE_BACKENDS:
        raise TokbenchError(f"unknown face backend {name!r}; known: {', '.join(FACE_BACKENDS)}")
    try:
        return FACE_BACKENDS[name](**options)
    except TypeError as e:
        raise TokbenchError(f"bad options for face backend {name!r} {options}: {e}") from None


_EMBED_CACHE: dict[str, np.ndarray] = {}


@register_metric("face_identity", packages=("dlib-bin", "face-recognition-models", "onnxruntime",
                                            "opencv-python-headless"))
class FaceIdentity(BenchMetric):
    """Cosine similarity of face embeddings, original against reconstruction, per face-size bucket.

    Options: `backend` (`dlib` default, `insightface`), `buckets` (edges of relative face size), and the
    backend's own (insightface: model, weights; dlib: upsample). Faces come from the data set's
    annotations, else the backend's detector on the original (dlib).
    """

    name = "face_identity"
    needs_decode = True
    higher_is_better = True

    def __init__(self, backend: str = "dlib", buckets: list[float] | tuple[float, ...] = DEFAULT_FACE_BUCKETS,
                 **backend_options: Any) -> None:
        super().__init__()
        edges = tuple(float(b) for b in buckets)
        if len(edges) < 2 or any(b >= c for b, c in zip(edges, edges[1:])):
            raise TokbenchError(f"face_identity buckets must be increasing edges (at least two), got {buckets}")
        self.edges = edges
        self.backend = build_face_backend(backend, **backend_options)
        self.detected = False
        n = len(edges) - 1
        for stat in ("faces", "sim", "dist"):
            self.add_state(stat, torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        for stat in ("dropped", "unaligned"):
            self.add_state(stat, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _bucket(self, ratio: float) -> int:
        return int(np.clip(np.searchsorted(self.edges, ratio, side="right") - 1, 0, len(self.edges) - 2))

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        placed = batch.extra.get("faces")
        originals, recon = batch.originals, batch.reconstructions
        side = originals.shape[-1]
        factor = side / batch.extra["input_size"][-1]  # boxes are in input pixels; metrics may run resized
        n = originals.shape[0]
        rows = {k: torch.zeros(n, dtype=torch.float64) for k in ("faces", "face_sim", "faces_dropped")}
        pairs, where = [], []  # (orig, recon, alignment), (image, bucket)
        for i in range(n):
            orig_u8, rec_u8 = to_uint8(originals[i]), to_uint8(recon[i])
            if placed is None:  # no annotations in this data set: find the faces on the original
                self.detected = True
                faces = [(b, None, None) for b in self.backend.detect(orig_u8)]
            elif placed[i] is None:
                continue
            else:
                p = placed[i]
                rows["faces_dropped"][i] = p.dropped
                faces = [(tuple(v * factor for v in b), None if k is None else [(x * factor, y * factor) for x, y in k],
                          r) for b, k, r in zip(p.boxes, p.keypoints, p.ratios)]
            for box, kps, ratio in faces:
                alignment = self.backend.align(orig_u8, box, kps)
                if alignment is None:
                    self.unaligned += 1
                    continue
                r = ratio if ratio is not None else (box[3] - box[1]) / side
                pairs.append((orig_u8, rec_u8, alignment, box, kps))
                where.append((i, self._bucket(r)))
        if pairs:
            e_orig = self._embed_originals(pairs)
            e_rec = self.backend.embed([p[1] for p in pairs], [p[2] for p in pairs])
            cos = (e_orig * e_rec).sum(1) / (np.linalg.norm(e_orig, axis=1) * np.linalg.norm(e_rec, axis=1))
            dist = np.linalg.norm(e_orig - e_rec, axis=1)
            for (i, b), c, d in zip(where, cos, dist):
                self.faces[b] += 1
                self.sim[b] += float(c)
                self.dist[b] += float(d)
                rows["faces"][i] += 1
                rows["face_sim"][i] += float(c)
        rows["face_sim"] = torch.where(rows["faces"] > 0, rows["face_sim"] / rows["faces"].clamp(min=1),
                                       torch.full_like(rows["faces"], float("nan")))
        self.dropped += rows["faces_dropped"].sum()
        self.last_rows = rows

    def _embed_originals(self, pairs) -> np.ndarray:
        """The originals' embeddings, cached by content and face (the same in every job of a suite)."""
        keys = []
        for orig, _, _, box, kps in pairs:
            h = hashlib.sha1(self.backend.describe().encode())
            h.update(orig.tobytes())
            h.update(repr((box, kps, orig.shape)).encode())
            keys.append(h.hexdigest())
        todo = [j for j, k in enumerate(keys) if k not in _EMBED_CACHE]
        if todo:
            if len(_EMBED_CACHE) > 50_000:
                _EMBED_CACHE.clear()
            for j, e in zip(todo, self.backend.embed([pairs[j][0] for j in todo], [pairs[j][2] for j in todo])):
                _EMBED_CACHE[keys[j]] = e
        return np.stack([_EMBED_CACHE[k] for k in keys])

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        faces = self.faces.sum().item()
        if faces == 0:
            raise TokbenchError(f"face_identity compared no faces: {int(self.dropped.item())} cut by the protocol, "
                                f"{int(self.unaligned.item())} without the keypoints the backend needs, and none "
                                "found otherwise")
        out = {"face_sim": (self.sim.sum() / faces).item()}
        if self.backend.name == "dlib":
            out["face_dist"] = (self.dist.sum() / faces).item()
        for b in range(len(self.faces)):
            label = bucket_label(self.edges[b], self.edges[b + 1]).replace("h", "s", 1)
            if self.faces[b] > 0:
                out[f"face_sim_{label}"] = (self.sim[b] / self.faces[b]).item()
            out[f"face_count_{label}"] = self.faces[b].item()
        out["face_count"] = faces
        out["faces_dropped"] = self.dropped.item()
        out["faces_unaligned"] = self.unaligned.item()
        return out

    def directions(self, results: dict[str, Any]) -> dict[str, str]:
        """face_sim (and its buckets) higher, face_dist lower; counts neither."""
        out = {k: "higher" for k in results if k.startswith("face_sim")}
        out.update({k: "lower" for k in results if k == "face_dist"})
        return out

    def protocol(self) -> dict[str, Any]:
        buckets = ", ".join(f"[{a:g}, {b:g})" for a, b in zip(self.edges, self.edges[1:]))
        engine = self.backend.engine()
        return {
            "face_identity": (
                f"{self.backend.describe()}; the face aligned once from the original (uint8) and the same "
                "alignment applied to the reconstruction; face_sim = cosine similarity of the two embeddings "
                "(TokBench's F-Sim)" + ("; face_dist = their Euclidean distance (dlib's same-person threshold "
                                        "0.6)" if self.backend.name == "dlib" else "")
                + f"; buckets of relative face size (annotation ratio, else box height / side): {buckets}; faces "
                "cut by the protocol's crop dropped and counted" + ("; faces detected on the originals"
                                                                   if self.detected else "")),
            "face_identity_model": f"{engine['engine']} | {engine['model']} | {engine['version']}",
        }
