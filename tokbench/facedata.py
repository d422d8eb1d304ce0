"""Images with faces whose boxes (and optionally 5 keypoints) are known: sidecars, `face-synth`, TokBench.

- Any folder image `photo.png` may have `photo.faces.json` beside it: a list of
  `{"box": [x0, y0, x1, y1], "keypoints": [[x, y] x 5] (optional), "ratio": optional}` in the pixels of
  the image as displayed (EXIF rotation applied), like `.text.json`. Keypoints in insightface's order:
  the eye on the image's left, the other eye, the nose tip, the mouth corner on the image's left, the
  other corner. Boxes and keypoints follow the resize/crop protocol (`place_faces`); a face whose box
  the crop cuts is dropped and counted.
- `face-synth[:options]`: crops of scikit-image's `astronaut()` photograph (the face photograph that ships
  in a wheel) at several face sizes and positions, deterministically from the suite's seed, cached as a
  folder of such annotated images.
- `tokbench-face:PATH` reads TokBench's face set: `PATH/face_meta.json` (its `eval_face.py` meta: a list of
  {"image_name", "img_height", "img_width", "faces": [{"kps", "box", "ratio", ...}]}) with the images in
  `PATH/images/` (or beside the meta file).

`ratio` is the face's size relative to the image (TokBench's field, by which its buckets are made);
where a file gives none, the metric uses the box height over the side of the protocol's output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .textdata import BadAnnotation, cache_dir, parse_options, read_sidecar, sidecar_path

FACES_SUFFIX = ".faces.json"


@dataclass(frozen=True)
class FaceBox:
    """One face: its box (x0, y0, x1, y1) in pixels, optionally 5 keypoints (insightface's order) and its
    relative size."""

    box: tuple[float, float, float, float]
    keypoints: tuple[tuple[float, float], ...] | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class PlacedFaces:
    """An image's faces after its protocol: boxes and keypoints in the S x S input's pixels; `dropped`
    faces were cut by the crop."""

    boxes: tuple[tuple[float, float, float, float], ...]
    keypoints: tuple[tuple[tuple[float, float], ...] | None, ...]
    ratios: tuple[float | None, ...]
    dropped: int


def faces_path(image: str | os.PathLike) -> Path:
    """`photo.png` -> `photo.faces.json` beside it."""
    return sidecar_path(image, FACES_SUFFIX)


def parse_faces(entries: Any, where: str) -> tuple[FaceBox, ...]:
    """A JSON list of {"box": [x0, y0, x1, y1], "keypoints": [[x, y] x 5]?, "ratio": float?} -> FaceBoxes."""
    if not isinstance(entries, list):
        raise BadAnnotation(f"{where}: expected a list of {{'box': [x0, y0, x1, y1], 'keypoints': [[x, y] x 5]}}, "
                            f"got {type(entries).__name__}")
    out = []
    for i, e in enumerate(entries):
        try:
            x0, y0, x1, y1 = (float(v) for v in e["box"])
            if not (x1 > x0 and y1 > y0):
                raise ValueError("needs x1 > x0 and y1 > y0")
            kps = e.get("keypoints")
            if kps is not None:
                kps = tuple((float(p[0]), float(p[1])) for p in kps)
                if len(kps) != 5 or any(len(p) != 2 for p in e["keypoints"]):
                    raise ValueError(f"keypoints are 5 [x, y] points, got {len(kps)}")
            ratio = e.get("ratio")
            out.append(FaceBox((x0, y0, x1, y1), kps, None if ratio is None else float(ratio)))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise BadAnnotation(f"{where}: entry {i} ({json.dumps(e)[:120]}) is not a face: {err}; each entry is "
                                "{'box': [x0, y0, x1, y1], 'keypoints': [[x, y] x 5] (optional)}") from None
    return tuple(out)


def read_faces(image: str | os.PathLike) -> tuple[FaceBox, ...] | None:
    """The faces of the image's `.faces.json`, or None where it has none."""
    return read_sidecar(image, FACES_SUFFIX, parse_faces)


def write_faces(image: str | os.PathLike, faces: list[FaceBox]) -> Path:
    path = faces_path(image)
    path.write_text(json.dumps([{"box": list(f.box), **({"keypoints": [list(p) for p in f.keypoints]}
                                                        if f.keypoints else {}),
                                 **({"ratio": f.ratio} if f.ratio else {})} for f in faces], indent=1))
    return path


def place_faces(faces: tuple[FaceBox, ...] | None, protocol: str, source_size: tuple[int, int],
                size: int) -> PlacedFaces | None:
    """The faces moved by `protocol` from a source of `source_size` to its size x size output: boxes as
    text boxes are, keypoints as boxes of no size (the same geometry)."""
    from .protocols import move_boxes

    if faces is None:
        return None
    kept, boxes = move_boxes([f.box for f in faces], protocol, source_size, size)
    keypoints = []
    for i in kept:
        kps = faces[i].keypoints
        if kps is None:
            keypoints.append(None)
            continue
        # a keypoint may sit just outside the output while its box is inside: points move through the
        # protocol's geometry without the bounds check that drops cut boxes
        moved = _move_points(kps, protocol, source_size, size)
        keypoints.append(tuple((b[0], b[1]) for b in moved))
    return PlacedFaces(tuple(boxes), tuple(keypoints), tuple(faces[i].ratio for i in kept), len(faces) - len(kept))


def _move_points(points, protocol: str, source_size: tuple[int, int], size: int):
    from .protocols import get_protocol

    g = get_protocol(protocol).geometry(source_size[0], source_size[1], size)
    return [g.box((x, y, x, y)) for x, y in points]


# ----------------------------------------------------------------------------------------------
# TokBench's face set


def tokbench_face_records(root: str | os.PathLike) -> list[tuple[str, str, tuple[FaceBox, ...]]]:
    """(image path, id, faces) for every image of TokBench's `face_meta.json` (the file its
    `eval_face.py` reads: image_name, img_height, img_width, faces with kps, box, ratio)."""
    root = Path(root).expanduser()
    meta = next((p for p in (root / "face_meta.json", root / "annotations" / "face_meta.json") if p.is_file()), None)
    if meta is None:
        raise BadAnnotation(f"no TokBench face meta file ({root}/face_meta.json); download the data set "
                            "(huggingface.co/datasets/Junfeng5/TokBench) and give its folder")
    try:
        images = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadAnnotation(f"cannot read {meta}: {e}") from None
    image_dir = next((d for d in (root / "images" / "face_data", root / "images", meta.parent)
                      if d.is_dir() and any(d.iterdir())), root)
    out = []
    for k, img in enumerate(images):
        try:
            faces = [{"box": f["box"][:4], "keypoints": f.get("kps"), "ratio": f.get("ratio")} for f in img["faces"]]
            parsed = parse_faces(faces, f"{meta} image {k}")
            name = img["image_name"]
        except (KeyError, TypeError) as e:
            raise BadAnnotation(f"{meta}: image entry {k} is not in TokBench's face layout ({e}); expected "
                                "image_name and faces with kps, box, ratio") from None
        out.append((str(image_dir / name), name, parsed))
    return out


# ----------------------------------------------------------------------------------------------
# face-synth

# astronaut(): the face placed from dlib's 68-point landmarks on the 512 px photograph (eye centres,
# nose tip, mouth corners), the box in the proportions of a hand-drawn face box (forehead to chin).
ASTRONAUT_FACE = FaceBox((181.0, 72.0, 263.0, 184.0),
                         ((203.2, 101.5), (246.5, 104.2), (225.0, 127.0), (201.0, 139.0), (246.0, 141.0)))
FACE_SYNTH_DEFAULTS: dict[str, Any] = {"count": 12, "sizes": (0.15, 0.25, 0.4), "size": 256}
FACE_SYNTH_VERSION = 1


def face_synth_options(arg: str) -> dict[str, Any]:
    opts = parse_options(arg, FACE_SYNTH_DEFAULTS, what="face-synth")
    if not all(0.1 <= s <= 0.6 for s in opts["sizes"]):
        raise BadAnnotation(f"face-synth sizes {opts['sizes']} out of range: the face's box height as a fraction "
                            "of the image side, between 0.1 and 0.6")
    return opts


def render_face_image(index: int, options: dict[str, Any], seed: int):
    """Image `index` of face-synth: a square crop of astronaut() in which the face's box height is one of
    `sizes` of the side (cycled), shifted at random within the photograph, resized (LANCZOS) to `size`.
    Returns (PIL RGB image, [FaceBox]) in the output's pixels, ratio = the box height / side."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng([seed, index, FACE_SYNTH_VERSION])
    photo = skimage.data.astronaut()
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = ASTRONAUT_FACE.box
    target = options["sizes"][index % len(options["sizes"])]
    side = min(int(round((y1 - y0) / target)), h, w)
    # any crop position that holds the whole box
    lo_x, hi_x = max(0, int(np.ceil(x1)) - side), min(w - side, int(x0))
    lo_y, hi_y = max(0, int(np.ceil(y1)) - side), min(h - side, int(y0))
    cx = int(rng.integers(lo_x, hi_x + 1))
    cy = int(rng.integers(lo_y, hi_y + 1))
    out = options["size"]
    f = out / side
    img = Image.fromarray(photo[cy:cy + side, cx:cx + side]).resize((out, out), Image.LANCZOS)
    box = ((x0 - cx) * f, (y0 - cy) * f, (x1 - cx) * f, (y1 - cy) * f)
    kps = tuple(((x - cx) * f, (y - cy) * f) for x, y in ASTRONAUT_FACE.keypoints)
    return img, [FaceBox(box, kps, (box[3] - box[1]) / out)]


def face_synth_folder(options: dict[str, Any], seed: int) -> Path:
    """The folder of rendered images and their `.faces.json` (made once, then reused from the cache)."""
    key = json.dumps({"v": FACE_SYNTH_VERSION, "seed": seed, **{k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in options.items()}}, sort_keys=True)
    folder = cache_dir() / "face-synth" / hashlib.sha1(key.encode()).hexdigest()[:12]
    if (folder / "done").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        for i in range(options["count"]):
            img, faces = render_face_image(i, options, seed)
            path = tmp / f"{i:04d}.png"
            img.save(path)
            write_faces(path, faces)
        (tmp / "options.json").write_text(key)
        (tmp / "done").write_text("")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same folder first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
