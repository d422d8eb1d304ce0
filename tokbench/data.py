"""Image data sets and loading: `samples`, `folder:PATH`, `imagenet-val:PATH`, and the annotated-text
sets `text-synth` and `tokbench-text:PATH` (`tokbench.textdata`).

Every image is decoded to RGB (RGBA kept for protocols that composite transparency), EXIF rotation
applied, then turned into the tokenizer's square input by a named protocol (`tokbench.protocols`).
Unreadable or truncated files are skipped and counted, never a crash.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .core import TokbenchError
from .facedata import FaceBox, PlacedFaces, faces_path, place_faces, read_faces
from .images import BadImage, open_image, to_rgb_or_rgba  # noqa: F401 - re-exported: data's public names
from .protocols import get_protocol, move_boxes
from .runfolder import is_run_folder
from .textdata import BadAnnotation, FontUnavailable, TextBox, annotation_path, read_annotations

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}

# Real photographs shipped inside the scikit-image and scikit-learn wheels (no download needed).
SAMPLE_FILES = {
    "skimage": [
        "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
        "motorcycle_left.png", "retina.jpg", "rocket.jpg", "brick.png", "grass.png", "gravel.png",
        "moon.png", "page.png",
    ],
    "sklearn": ["china.jpg", "flower.jpg"],
}


class DataUnavailable(TokbenchError):
    """A data set that cannot be opened (missing folder, unset variable)."""


@dataclass(frozen=True)
class ImageRecord:
    path: str
    id: str
    label: int | None = None
    caption: str | None = None
    text: tuple[TextBox, ...] | None = None  # words with boxes in the file's pixels (annotated data)
    split: str | None = None  # "train" or "eval" where the data entry has a training split (the probes)
    faces: tuple[FaceBox, ...] | None = None  # faces with boxes (and keypoints) in the file's pixels (facedata)


@dataclass
class ImageDataset:
    """A fixed, sorted list of image files; position i is always the same image (resume relies on it)."""

    name: str
    source: str
    records: list[ImageRecord]
    class_names: list[str] | None = None
    # entries of the folder that are not in `records` though named like images, each {"path", "reason"}: not
    # regular files (a FIFO), links that lead nowhere, sub-folders that cannot be read. Counted and listed.
    unlisted: list[dict[str, str]] = field(default_factory=list)
    # captions and annotations that could not be read, each {"id", "path", "reason"}: their image is in
    # `records` without them (it counts for every metric that needs neither)
    sidecar_skips: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def file_fingerprints(ds: ImageDataset) -> list[tuple[str, int, int]]:
    """(id, size in bytes, modification time in ns) of each image, in data-set order; (id, -1, -1) for a
    file that cannot be looked up."""
    out = []
    for r in ds.records:
        try:
            st = os.stat(r.path)
            out.append((r.id, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((r.id, -1, -1))
    return out


def dataset_identity(ds: ImageDataset, fingerprints: Sequence[tuple[str, int, int]] | None = None) -> str:
    """A data set's identity: sha256 (hex) over its images in order (for a folder, sorted by relative
    name): each one's id, size and modification time, streamed into the hash (one stat per file, no file
    read: cheap for 50k images). It changes when an image is added, removed, renamed, rewritten or
    touched; captions and annotations beside the images are not part of it."""
    h = hashlib.sha256()
    for name, size, mtime in fingerprints if fingerprints is not None else file_fingerprints(ds):
        h.update(f"{name}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def list_identity(fingerprints: Sequence[tuple[str, int, int]]) -> str:
    """The identity of a data set's file list, the same on every machine that holds the same files: sha256
    (hex) over each image's id (its name relative to the data set) and size, in data-set order (a folder's:
    sorted by relative name), so position p names one picture wherever it matches. `tokbench compare`
    puts numbers side by side only when it matches; modification times (`dataset_identity`, for resuming
    on one machine) change with every copy and are left out. `fingerprints`: `file_fingerprints(ds)`."""
    h = hashlib.sha256()
    for name, size, _ in fingerprints:
        h.update(f"{name}\0{size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float (3, H, W) in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


def list_images(root: Path) -> list[Path]:
    return scan_images(root)[0]


_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
            (stat.S_ISBLK, "a device"))


def scan_images(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The image files under `root`, sorted by relative path, and the entries left out that a reader would
    expect among them, each {"path", "reason"}: files named like images that are not regular files (FIFOs,
    sockets, devices: never opened, a FIFO would block), links that lead nowhere or in a loop, sub-folders
    that cannot be read. Links to files are followed, links to folders are not; sub-folders that are
    tokbench run folders are left out without a word (a run's own PNGs are never part of a data set)."""
    files: list[Path] = []
    problems: list[dict[str, str]] = []

    def walk(folder: Path) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.append({"path": str(folder), "reason": f"folder cannot be read ({e.strerror or type(e).__name__}); "
                             "its images are left out"})
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                if not is_run_folder(path):
                    walk(path)
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                mode = os.stat(path).st_mode  # follows a link
            except OSError as e:
                loop = e.errno == errno.ELOOP
                problems.append({"path": str(path), "reason": "a symbolic link in a loop" if loop else
                                 f"a symbolic link that leads nowhere ({e.strerror})" if entry.is_symlink() else
                                 f"cannot be looked up ({e.strerror})"})
                continue
            if stat.S_ISREG(mode):
                files.append(path)
            elif not stat.S_ISDIR(mode):  # a link to a folder named like an image is not followed
                kind = next((name for test, name in _SPECIAL if test(mode)), "not a regular file")
                problems.append({"path": str(path), "reason": f"{kind}, not an image file: not read"})

    walk(root)
    return sorted(files, key=lambda p: str(p.relative_to(root))), problems


def _caption_for(path: Path) -> tuple[str | None, str | None]:
    """The image's caption (`photo.txt` beside `photo.png`; None without one) and why it could not be read."""
    side = path.with_suffix(".txt")
    if not side.is_file():
        return None, None
    try:
        return side.read_bytes().decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as e:
        return None, (f"{side} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); caption left "
                      "out: save the file as UTF-8")
    except OSError as e:
        return None, f"{side} cannot be read ({e.strerror or type(e).__name__}); caption left out"


def _samples() -> ImageDataset:
    import skimage.data
    import sklearn.datasets

    roots = {
        "skimage": Path(skimage.data.__file__).parent,
        "sklearn": Path(sklearn.datasets.__file__).parent / "images",
    }
    records = []
    for lib, names in SAMPLE_FILES.items():
        for n in names:
            p = roots[lib] / n
            if p.is_file():
                records.append(ImageRecord(path=str(p), id=f"{lib}/{n}"))
    if not records:
        raise DataUnavailable("no sample images found in the scikit-image / scikit-learn installs")
    return ImageDataset("samples", "samples", records)


def _folder(path: str, name: str) -> ImageDataset:
    root = Path(path).expanduser()
    if not path or "$" in path:
        raise DataUnavailable(f"data path {path!r} is unset; set the environment variable it names")
    if not root.is_dir():
        raise DataUnavailable(f"image folder {str(root)!r} does not exist")
    files, unlisted = scan_images(root)
    if not files:
        why = f"; {unlisted[0]['path']}: {unlisted[0]['reason']}" if unlisted else ""
        raise DataUnavailable(f"image folder {str(root)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}){why}")
    records, sidecars = [], []
    for p in files:
        rel = str(p.relative_to(root))
        caption, why = _caption_for(p)
        if why:
            sidecars.append({"id": rel, "path": str(p.with_suffix(".txt")), "reason": why})
        try:
            text = read_annotations(p)
        except BadAnnotation as e:  # the image still counts for the metrics that need no annotations
            text = None
            sidecars.append({"id": rel, "path": str(annotation_path(p)), "reason": f"{e}; annotations left out"})
        try:
            faces = read_faces(p)
        except BadAnnotation as e:  # as a bad .text.json: the image counts without its faces
            faces = None
            sidecars.append({"id": rel, "path": str(faces_path(p)), "reason": f"{e}; faces left out"})
        records.append(ImageRecord(str(p), rel, caption=caption, text=text, faces=faces))
    return ImageDataset(name, f"folder:{root}", records, unlisted=unlisted, sidecar_skips=sidecars)


IMAGENET_VAL_LABELS = "LOC_val_solution.csv"  # Kaggle's ImageNet release: ImageId,PredictionString (wnid first)


def _imagenet_val(path: str) -> ImageDataset:
    """ImageNet validation images in class sub-folders (labels = sorted folder index, the torchvision
    ImageFolder order) or flat; flat images get labels from a `LOC_val_solution.csv` in the folder or
    its parent, with the same sorted-WordNet-id order. 1000 WordNet ids get open_clip's class names."""
    ds = _folder(path, "imagenet-val")
    root = Path(path).expanduser()
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if classes:
        index = {c: i for i, c in enumerate(classes)}
        records = [ImageRecord(r.path, r.id, index.get(Path(r.id).parts[0]), r.caption) for r in ds.records]
    else:
        wnid_of = _loc_val_solution(root)
        if wnid_of is None:
            return replace(ds, name="imagenet-val", source=f"imagenet-val:{root}")
        classes = sorted(set(wnid_of.values()))
        index = {c: i for i, c in enumerate(classes)}
        records = [ImageRecord(r.path, r.id, index.get(wnid_of.get(Path(r.id).stem, "")), r.caption)
                   for r in ds.records]
    names = classes
    if len(classes) == 1000 and all(c.startswith("n") and c[1:].isdigit() for c in classes):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
    return replace(ds, name="imagenet-val", source=f"imagenet-val:{root}", records=records, class_names=names)


def _loc_val_solution(root: Path) -> dict[str, str] | None:
    """image stem -> WordNet id, from LOC_val_solution.csv beside or above the images (None if absent)."""
    import csv

    for candidate in (root / IMAGENET_VAL_LABELS, root.parent / IMAGENET_VAL_LABELS):
        if candidate.is_file():
            with open(candidate, newline="") as f:
                return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    return None


KARPATHY_IMAGE_FOLDERS = ("", "images", "flickr30k-images", "flickr8k-images")


def _karpathy(path: str) -> ImageDataset:
    """The test split of a Karpathy-split caption file (`dataset_coco.json`, `dataset_flickr30k.json`): images
    at `filepath/filename` (COCO: val2014/...) or `filename` beside the JSON (or in images/, flickr30k-images/),
    each with its captions (`sentences[].raw`, one per line of `caption`), in the file's order."""
    import json

    if not path or "$" in path:
        raise DataUnavailable(f"data path {path!r} is unset; set the environment variable it names")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataUnavailable(f"Karpathy caption file {str(file)!r} does not exist (dataset_coco.json or "
                              "dataset_flickr30k.json)")
    try:
        entries = [e for e in json.loads(file.read_text())["images"] if e.get("split") == "test"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataUnavailable(f"{file} is not a Karpathy-split caption file ({{'images': [{{'split', 'filename', "
                              f"'sentences'}}]}}): {type(e).__name__}: {e}") from None
    records, missing = [], []
    for e in entries:
        rel = Path(e.get("filepath", "")) / e["filename"]
        found = next((file.parent / d / rel for d in KARPATHY_IMAGE_FOLDERS if (file.parent / d / rel).is_file()),
                     None)
        if found is None:
            missing.append(str(rel))
            continue
        caption = "\n".join(" ".join(s["raw"].split()) for s in e.get("sentences", []) if s.get("raw"))
        records.append(ImageRecord(str(found), str(rel), caption=caption or None))
    if not records:
        first = f" (first: {missing[0]})" if missing else ""
        raise DataUnavailable(f"none of the {len(entries)} test images of {file} was found beside it{first}")
    return ImageDataset(file.stem, f"karpathy:{file}", records)


def _text_synth(arg: str, seed: int) -> ImageDataset:
    from .textdata import EXCLUDED_PHOTOS, TEXT_SYNTH_DEFAULTS, parse_options, text_synth_folder

    photos = [r.path for r in _samples().records if Path(r.path).name not in EXCLUDED_PHOTOS]
    options = parse_options(arg, TEXT_SYNTH_DEFAULTS)
    try:
        folder = text_synth_folder(options, seed, photos)
    except FontUnavailable as e:  # a CJK language without a CJK font: the jobs on it are skipped
        raise DataUnavailable(str(e)) from None
    # one name per language, so that reports keep the languages apart (text-synth, text-synth-zh, ...)
    name = "text-synth" if options["lang"] == "en" else f"text-synth-{options['lang']}"
    ds = _folder(str(folder), name)
    return replace(ds, name=name, source=f"text-synth:{arg}" if arg else "text-synth")


def _tokbench_text(path: str) -> ImageDataset:
    from .textdata import tokbench_records

    if not path or "$" in path:
        raise DataUnavailable(f"data path {path!r} is unset; set the environment variable it names")
    try:
        found = tokbench_records(path)
    except BadAnnotation as e:
        raise DataUnavailable(str(e)) from None
    records = [ImageRecord(p, i, text=boxes) for p, i, boxes in found]
    return ImageDataset("tokbench-text", f"tokbench-text:{Path(path).expanduser()}", records)


def _face_synth(arg: str, seed: int) -> ImageDataset:
    from .facedata import face_synth_folder, face_synth_options

    try:
        folder = face_synth_folder(face_synth_options(arg), seed)
    except BadAnnotation as e:
        raise DataUnavailable(str(e)) from None
    ds = _folder(str(folder), "face-synth")
    return replace(ds, name="face-synth", source=f"face-synth:{arg}" if arg else "face-synth")


def _tokbench_face(path: str) -> ImageDataset:
    from .facedata import tokbench_face_records

    if not path or "$" in path:
        raise DataUnavailable(f"data path {path!r} is unset; set the environment variable it names")
    try:
        found = tokbench_face_records(path)
    except BadAnnotation as e:
        raise DataUnavailable(str(e)) from None
    records = [ImageRecord(p, i, faces=faces) for p, i, faces in found]
    return ImageDataset("tokbench-face", f"tokbench-face:{Path(path).expanduser()}", records)


# Every data source kind and how a suite writes it (the one list that suite checks and `open_dataset` share).
SOURCE_KINDS = {"samples": "samples", "folder": "folder:PATH", "imagenet-val": "imagenet-val:PATH",
                "text-synth": "text-synth[:OPTIONS]", "tokbench-text": "tokbench-text:PATH",
                "imagenet-train": "imagenet-train:PATH", "face-synth": "face-synth[:OPTIONS]",
                "tokbench-face": "tokbench-face:PATH", "karpathy": "karpathy:PATH"}


def source_syntax_problem(spec: str) -> str | None:
    """Why `spec` is not a data source as a suite writes one (None when it parses; nothing is opened)."""
    kind, sep, arg = spec.strip().partition(":")
    if kind not in SOURCE_KINDS:
        return f"a data source is one of {', '.join(SOURCE_KINDS.values())}"
    if SOURCE_KINDS[kind].endswith(":PATH") and not arg.strip():
        return f"{kind} needs a path: {SOURCE_KINDS[kind]}"
    if kind == "samples" and sep:
        return "samples takes no argument"
    return None


def open_dataset(spec: str, limit: int | None = None, seed: int = 0) -> ImageDataset:
    """`samples`, `folder:PATH`, `imagenet-val:PATH`, `text-synth[:OPTIONS]` (rendered from `seed`) or
    `tokbench-text:PATH` (environment variables expanded)."""
    spec = os.path.expandvars(spec.strip())
    kind, _, arg = spec.partition(":")
    if kind == "samples":
        ds = _samples()
    elif kind == "text-synth":
        ds = _text_synth(arg, seed)
    elif kind == "face-synth":
        ds = _face_synth(arg, seed)
    elif kind == "tokbench-face":
        ds = _tokbench_face(arg)
    elif kind == "tokbench-text":
        ds = _tokbench_text(arg)
    elif kind == "folder":
        ds = _folder(arg, Path(arg).name or "folder")
        if (c := sorted({Path(r.id).parts[0] for r in ds.records if len(Path(r.id).parts) > 1})) and all(
            len(Path(r.id).parts) > 1 for r in ds.records
        ):
            index = {name: i for i, name in enumerate(c)}
            ds.records = [ImageRecord(r.path, r.id, index[Path(r.id).parts[0]], r.caption) for r in ds.records]
            ds.class_names = c
    elif kind == "imagenet-val":
        ds = _imagenet_val(arg)
    elif kind == "karpathy":
        ds = _karpathy(arg)
    elif kind == "imagenet-train":  # class sub-folders (WordNet ids), labelled as imagenet-val's
        ds = _imagenet_val(arg)
        ds.name, ds.source = "imagenet-train", f"imagenet-train:{Path(arg).expanduser()}"
    else:
        raise DataUnavailable(f"unknown data source {spec!r}; use one of {', '.join(SOURCE_KINDS.values())}")
    if limit is not None:
        ds.records = ds.records[: int(limit)]
        kept = {r.id for r in ds.records}
        ds.sidecar_skips = [s for s in ds.sidecar_skips if s["id"] in kept]
    return ds


def with_train_split(ds: ImageDataset, fraction: float | None = None, seed: int = 0, train: str | None = None,
                     train_per_class: int | None = None) -> ImageDataset:
    """`ds` with every record marked `split` "train" or "eval", for the probes (knn, linear_probe).

    `fraction`: a stratified split of `ds` itself: of each class's n images (in `ds` order, shuffled with
    `seed`), fraction * n rounded half up train, kept within [1, n - 1] when n >= 2; a class with one image
    trains.
    `train`: a separate labelled source, appended after `ds`'s images (all "eval"), at most
    `train_per_class` images of each class (the first ones in its sorted order); its labels are matched to
    `ds`'s by class name, and its images of classes `ds` does not have are left out. Unlabelled images are
    "eval" (the probes ignore them; the other metrics count them)."""
    labelled = [r for r in ds.records if r.label is not None]
    if not labelled:
        raise DataUnavailable(f"{ds.source} has no class labels (class sub-folders, or imagenet-val with its "
                              "labels): a training split for the probes needs them")
    if train is None:
        if fraction is None or not 0 < fraction < 1:
            raise DataUnavailable(f"a stratified split needs a train fraction in (0, 1), got {fraction!r}")
        rng = np.random.default_rng(seed)
        by_class: dict[int, list[int]] = {}
        for i, r in enumerate(ds.records):
            if r.label is not None:
                by_class.setdefault(r.label, []).append(i)
        chosen: set[int] = set()
        for label in sorted(by_class):
            rows = by_class[label]
            n = len(rows)
            m = n if n == 1 else min(max(1, int(np.floor(fraction * n + 0.5))), n - 1)  # half rounds up
            chosen.update(rows[j] for j in rng.permutation(n)[:m])
        records = [replace(r, split="train" if i in chosen else "eval") for i, r in enumerate(ds.records)]
        return ImageDataset(ds.name, ds.source, records, ds.class_names)
    other = open_dataset(train)
    if not ds.class_names or not other.class_names:
        raise DataUnavailable(f"the training set {train!r} and {ds.source} must both name their classes (class "
                              "sub-folders) so that their labels can be matched")
    index = {name: i for i, name in enumerate(ds.class_names)}
    taken: dict[int, int] = {}
    extra = []
    for r in other.records:
        if r.label is None or (label := index.get(other.class_names[r.label])) is None:
            continue
        if train_per_class is not None and taken.get(label, 0) >= train_per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        extra.append(replace(r, id=f"train/{r.id}", label=label, split="train"))
    if not extra:
        raise DataUnavailable(f"the training set {train!r} has no image of {ds.source}'s classes "
                              f"({', '.join(ds.class_names[:5])}, ...)")
    records = [replace(r, split="eval") for r in ds.records] + extra
    return ImageDataset(ds.name, f"{ds.source}+train:{other.source}", records, ds.class_names)


def split_counts(ds: ImageDataset) -> dict[str, int]:
    """Images per split and labelled classes of a data set made by `with_train_split`."""
    out = {"train": 0, "eval": 0}
    for r in ds.records:
        if r.split in out:
            out[r.split] += 1
    out["classes"] = len({r.label for r in ds.records if r.label is not None})
    return out


@dataclass
class Batch:
    index: torch.Tensor  # (B,) positions in the data set
    images: torch.Tensor  # (B, 3, S, S) float [0, 1]
    records: list[ImageRecord]
    skipped: list[tuple[int, str, str]]  # (position, path, reason) of unreadable files in this span
    text: list[PlacedText | None] | None = None  # per image, where the data set is annotated
    faces: list[PlacedFaces | None] | None = None  # per image, where the data set has face annotations


@dataclass(frozen=True)
class PlacedText:
    """An image's words after its protocol: boxes in the S x S input's pixels; `dropped` words were cut."""

    boxes: tuple[tuple[float, float, float, float], ...]
    texts: tuple[str, ...]
    ratios: tuple[float | None, ...]
    dropped: int


def place_text(rec: ImageRecord, protocol: str, source_size: tuple[int, int], size: int) -> PlacedText | None:
    """The record's words moved by `protocol` from a source of `source_size` to its size x size output."""
    if rec.text is None:
        return None
    kept, boxes = move_boxes([t.box for t in rec.text], protocol, source_size, size)
    return PlacedText(tuple(boxes), tuple(rec.text[i].text for i in kept), tuple(rec.text[i].ratio for i in kept),
                      len(rec.text) - len(kept))


class _ProtocolDataset(torch.utils.data.Dataset):
    """Item `pos` is the data set's image at position `pos` after the protocol (the sampler picks them)."""

    def __init__(self, ds: ImageDataset, protocol: str, size: int) -> None:
        self.ds, self.fn, self.size, self.protocol = ds, get_protocol(protocol).fn, size, protocol

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, pos: int):
        rec = self.ds.records[pos]
        try:
            source = open_image(rec.path)
            img = self.fn(source, self.size)
            if img.size != (self.size, self.size):
                raise BadImage(f"protocol returned {img.size}, expected {(self.size, self.size)}")
            return (pos, pil_to_tensor(img), None, place_text(rec, self.protocol, source.size, self.size),
                    place_faces(rec.faces, self.protocol, source.size, self.size))
        except Exception as e:  # noqa: BLE001 - any failure on one image is a counted skip
            return pos, None, f"{type(e).__name__}: {e}", None, None


class _Spans:
    """Batch sampler: `batch_size` consecutive entries of `positions`, which the loader's owner sets
    before each pass (the main process reads it at the start of every pass, also with persistent workers)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size, self.positions = batch_size, []

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.positions), self.batch_size):
            yield self.positions[i:i + self.batch_size]


def _collate(items):
    """(position, error, placed text) per item and the stacked good images (None if none): stacking in
    the worker lets the DataLoader pin the batch for a non-blocking copy to the GPU."""
    good = [t for _, t, err, _, _ in items if err is None]
    return [(p, err, text, faces) for p, _, err, text, faces in items], (torch.stack(good) if good else None)


class BatchLoader:
    """Batches of one data set under one protocol and size, read by DataLoader workers that live as long
    as this object (persistent workers): the sweep points and jobs that read the same images at the same
    size pay the workers' start-up once. `batches(positions)` is one pass over the given positions (one
    rank's share, the part a resumed job has left), in their order.

    Decoding and resizing run in the workers, `prefetch_factor` batches ahead of the model; each batch is
    stacked in the worker and, with `pin_memory`, pinned for a non-blocking copy to the GPU.
    """

    def __init__(self, ds: ImageDataset, protocol: str, size: int, batch_size: int,
                 num_workers: int | None = None, pin_memory: bool = False, persistent: bool = True) -> None:
        if num_workers is None:
            num_workers = min(8, max(0, (os.cpu_count() or 1) // 2))
        self.ds, self.size = ds, size
        self._spans = _Spans(batch_size)
        self.loader = torch.utils.data.DataLoader(
            _ProtocolDataset(ds, protocol, size),
            batch_sampler=self._spans,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            prefetch_factor=4 if num_workers > 0 else None,
            persistent_workers=persistent and num_workers > 0,
        )

    def batches(self, positions: Sequence[int]) -> Iterator[Batch]:
        """Each batch covers `batch_size` consecutive entries of `positions`; unreadable images are
        listed in `skipped` (a batch may then hold fewer images, or none)."""
        ds, size = self.ds, self.size
        self._spans.positions = list(positions)
        for items, stacked in self.loader:
            good = [(p, text) for p, err, text, _ in items if err is None]
            faces = [f for _, err, _, f in items if err is None]
            skipped = [(p, ds.records[p].path, err) for p, err, _, _ in items if err is not None]
            yield Batch(
                index=torch.tensor([p for p, _ in good], dtype=torch.long),
                images=stacked if stacked is not None else torch.empty(0, 3, size, size),
                records=[ds.records[p] for p, _ in good],
                skipped=skipped,
                text=[text for _, text in good] if any(ds.records[p].text is not None for p, _ in good) else None,
                faces=faces if any(ds.records[p].faces is not None for p, _ in good) else None,
            )

    def close(self) -> None:
        """Stop the workers now (they also stop when this object is collected)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # noqa: SLF001 - DataLoader has no public way to stop persistent workers
        self.loader._iterator = None  # noqa: SLF001


class LoaderCache:
    """The one `BatchLoader` a run keeps alive: reused while consecutive jobs read the same data set with
    the same protocol, size and batch size; replaced (its workers stopped) when they do not."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.loader: BatchLoader | None = None

    def get(self, ds: ImageDataset, protocol: str, size: int, batch_size: int, num_workers: int | None,
            pin_memory: bool) -> BatchLoader:
        key = (id(ds), protocol, size, batch_size, num_workers, pin_memory)
        if key != self.key or self.loader is None:
            self.close()
            self.loader = BatchLoader(ds, protocol, size, batch_size, num_workers, pin_memory)
            self.key = key
        return self.loader

    def close(self) -> None:
        """Stop the workers; the next `get` starts new ones (after a job failed mid-pass, say)."""
        if self.loader is not None:
            self.loader.close()
        self.loader, self.key = None, None


def iterate_batches(
    ds: ImageDataset,
    protocol: str,
    size: int,
    batch_size: int,
    start: int = 0,
    num_workers: int | None = None,
    positions: Sequence[int] | None = None,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """One pass of batches from position `start` on (or over the given `positions`), in data set order,
    with workers started for this pass only (`BatchLoader` keeps them across passes)."""
    loader = BatchLoader(ds, protocol, size, batch_size, num_workers, pin_memory, persistent=False)
    yield from loader.batches(range(start, len(ds)) if positions is None else positions)
