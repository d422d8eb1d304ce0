"""OCR backends for the text metric: read one word (or line) per crop.

- `ppocr` (default where installed): PaddleOCR's PP-OCR text recogniser, the ONNX file that ships inside
  the `rapidocr` wheel, run by onnxruntime on the annotated crops only (no detection, no direction
  classifier, as TokBench runs PARSeq). Reads Chinese, Japanese, Latin and more with one model.
- `tesseract`: the system Tesseract through pytesseract; runs offline wherever Debian's `tesseract-ocr`
  (or Homebrew's `tesseract`) is installed; a word's language picks its traineddata (`chi_sim`, `jpn`).
- `doctr`: python-doctr's text recogniser (PARSeq by default, with the French vocabulary and the 32 x 128
  input that TokBench evaluates with); weights through tokbench's resolver (URL + hash prefix).

Crops are uint8 (H, W, 3) RGB arrays. Each backend states its settings (`describe()`) and its engine,
model and version (`engine()`): they are part of the metric's protocol, and the packages they come
from are in the run record, so a new OCR version is a new run. Readings are cached by crop content,
language and settings: the originals are the same pixels in every job of a suite, so each is read once
per process.

Preparing a crop (`trim_edges`, `ink_rows`) is shared by tesseract and ppocr: an annotated box rarely
sits on whole pixels, and the crop, rounded outward, can keep a line of whatever surrounds the text
(a photo behind a plate); magnified, that line reads as `|` or `l`. Edge lines unlike the crop's
background are trimmed (at most 8% of the side, from each side) before a backend sees the crop.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .building import RANDOM  # the one spelling of random weights
from .core import MetricUnavailable, TokbenchError
from .weights import Artifact, register_artifact, resolve


class OCRUnavailable(MetricUnavailable):
    """An OCR backend whose program or package is not installed."""


TESSERACT_INSTALL = ("install Tesseract: `sudo apt-get install tesseract-ocr` (Debian/Ubuntu), "
                     "`brew install tesseract` (macOS), then `pip install pytesseract`")
PPOCR_INSTALL = "`pip install 'rapidocr>=3.10,<4' 'onnxruntime>=1.17,<2'` (tokbench's dependencies)"

# Tesseract's traineddata per language (Debian: tesseract-ocr-eng, -chi-sim, -jpn, -kor).
TESSERACT_LANGS = {"en": "eng", "zh": "chi_sim", "ja": "jpn", "ko": "kor"}

# doctr's released recognisers (doctr.models.recognition default_cfgs): URL, and the sha256 prefix its
# file name carries.
DOCTR_WEIGHTS = {
    "parseq": register_artifact(Artifact(
        name="doctr-parseq", url="https://doctr-static.mindee.com/models?id=v0.7.0/parseq-56125471.pt&src=0",
        filename="parseq-56125471.pt", sha256="56125471", size=95_000_000, licence="Apache-2.0 (Mindee docTR)",
        used_by="text_preservation (backend doctr, TokBench's recogniser)")),
    "crnn_vgg16_bn": register_artifact(Artifact(
        name="doctr-crnn-vgg16-bn",
        url="https://doctr-static.mindee.com/models?id=v0.3.1/crnn_vgg16_bn-9762b0b0.pt&src=0",
        filename="crnn_vgg16_bn-9762b0b0.pt", sha256="9762b0b0", size=63_000_000,
        licence="Apache-2.0 (Mindee docTR)", used_by="text_preservation (backend doctr, arch crnn_vgg16_bn)")),
}

_CACHE: dict[str, str] = {}
_CACHE_MAX = 200_000


def _cache_key(crop: np.ndarray, settings: str) -> str:
    h = hashlib.sha1(settings.encode())
    h.update(np.ascontiguousarray(crop).tobytes())
    h.update(str(crop.shape).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ scripts


def _is_kana(ch: str) -> bool:
    return "\u3040" <= ch <= "\u30ff" or "\u31f0" <= ch <= "\u31ff" or "\uff66" <= ch <= "\uff9f"


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def _is_hangul(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7af" or "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f"


def is_cjk(ch: str) -> bool:
    """A character of a script written without spaces between words (Han, kana, Hangul, CJK punctuation)."""
    return _is_kana(ch) or _is_han(ch) or _is_hangul(ch) or "\u3000" <= ch <= "\u303f"


def script_language(text: str) -> str:
    """The language a transcript's script implies: `ja` (any kana), `zh` (Han without kana), `ko`
    (Hangul), else `en` (Latin, digits, anything else)."""
    if any(_is_kana(c) for c in text):
        return "ja"
    if any(_is_hangul(c) for c in text):
        return "ko"
    if any(_is_han(c) for c in text):
        return "zh"
    return "en"


def normalise_text(text: str) -> str:
    """A transcript or reading as compared: Unicode NFKC (full-width forms and compatibility characters
    folded, as OCR engines emit them inconsistently), whitespace runs to one space, no space next to a
    CJK character (Tesseract's Chinese and Japanese models put one between characters), ends stripped."""
    text = " ".join(unicodedata.normalize("NFKC", text).split())
    if " " in text:
        parts = text.split(" ")
        out = parts[0]
        for p in parts[1:]:
            out += p if (out and is_cjk(out[-1])) or (p and is_cjk(p[0])) else " " + p
        text = out
    return text


# ------------------------------------------------------------------------------- crop preparation


def _luma(crop: np.ndarray) -> np.ndarray:
    c = crop.astype(np.float32)
    return 0.299 * c[..., 0] + 0.587 * c[..., 1] + 0.114 * c[..., 2]


def background_colour(crop: np.ndarray) -> tuple[int, ...]:
    """The crop's background: the per-channel median (text covers well under half of a word's box)."""
    return tuple(int(v) for v in np.median(crop.reshape(-1, crop.shape[-1]), axis=0))


def _ink(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """(|luma - background luma| per pixel, the ink threshold): ink is further from the background's luma
    than halfway to the farthest 2% of the crop (a threshold that follows the crop's own contrast), and
    at least 24 levels."""
    y = _luma(crop)
    diff = np.abs(y - float(np.median(y)))
    return diff, max(24.0, 0.5 * float(np.percentile(diff, 98)))


def trim_edges(crop: np.ndarray, max_fraction: float = 0.08) -> np.ndarray:
    """The crop without edge lines unlike its background (a line of the photo that a box rounded
    outward took in, a plate's rim). A line is foreign when its median distance from the background's
    luma is over a fifth of the ink threshold (a line through letters is mostly background; a line of
    another surface is not). From each side, the outermost run of foreign lines, at most max(1, 8%) of
    the side, goes only where the line inside it is background: text that fills its box (capitals in a
    tight box) keeps every line. Uniform crops come back whole."""
    diff, threshold = _ink(crop)
    tol = max(8.0, 0.2 * threshold)
    foreign_rows = np.median(diff, axis=1) > tol
    foreign_cols = np.median(diff, axis=0) > tol

    def run(flags: np.ndarray) -> int:
        limit = max(1, int(max_fraction * len(flags)))
        k = 0
        while k < limit and k < len(flags) - 1 and flags[k]:
            k += 1
        return k if k < len(flags) and not flags[k] else 0

    top, bottom = run(foreign_rows), run(foreign_rows[::-1])
    left, right = run(foreign_cols), run(foreign_cols[::-1])
    h, w = diff.shape
    if h - top - bottom < 2 or w - left - right < 2:
        return crop
    return crop[top:h - bottom, left:w - right]


def ink_rows(crop: np.ndarray) -> int:
    """The text's height in the crop, in pixels: from the first to the last row holding ink (at least 2%
    of the row, so a stray dark pixel of compression noise does not count); the crop's height if none."""
    diff, threshold = _ink(crop)
    rows = np.nonzero((diff > threshold).mean(axis=1) >= 0.02)[0]
    return int(rows[-1] - rows[0] + 1) if len(rows) else crop.shape[0]


# ------------------------------------------------------------------------------------------ backends


class OCRBackend:
    name = "ocr"

    def describe(self) -> str:
        raise NotImplementedError

    def engine(self) -> dict[str, str]:
        """{"engine", "model", "version"}: what read the words, recorded with every number."""
        return {"engine": self.name, "model": "", "version": ""}

    def reads(self, lang: str) -> str | None:
        """None where this backend reads `lang` (`en`, `zh`, `ja`, `ko`), else why not (what to install)."""
        return None

    def _read(self, crops: list[np.ndarray], lang: str) -> list[str]:
        raise NotImplementedError

    def read(self, crops: list[np.ndarray], langs: list[str] | None = None) -> list[str]:
        """The text read in each crop (whitespace runs collapsed, ends stripped), cached by content and
        language; `langs`: each crop's language (default `en`), for backends that pick a model by it."""
        langs = langs or ["en"] * len(crops)
        settings = self.describe()
        keys = [_cache_key(c, f"{settings}|{lang}") for c, lang in zip(crops, langs)]
        found = {k: _CACHE[k] for k in keys if k in _CACHE}
        for lang in dict.fromkeys(langs):
            todo = [i for i, k in enumerate(keys) if k not in found and langs[i] == lang]
            if todo:
                for i, text in zip(todo, self._read([crops[i] for i in todo], lang)):
                    found[keys[i]] = " ".join(text.split())
        if len(_CACHE) + len(found) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE.update(found)
        return [found[k] for k in keys]


class TesseractOCR(OCRBackend):
    """Tesseract's LSTM engine on each crop: edge lines unlike the background trimmed (`trim_edges`),
    scaled with PIL bicubic so that the text is `glyph_height` px tall (the text's rows found by
    `ink_rows`; scale between 1/2 and 8: Tesseract reads glyphs of 20-40 px best), framed by a border of
    half that height in the crop's background colour, page segmentation `psm` (7: one text line).
    `lang`: `auto` picks the traineddata from each word's script (`TESSERACT_LANGS`), or a fixed one
    (`eng`, `chi_sim+eng`)."""

    name = "tesseract"

    def __init__(self, psm: int = 7, lang: str = "auto", oem: int = 1, glyph_height: int = 32,
                 trim: bool = True, workers: int | None = None) -> None:
        try:
            import pytesseract
        except ImportError:
            raise OCRUnavailable(f"the tesseract OCR backend needs the pytesseract package; {TESSERACT_INSTALL}") \
                from None
        if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
            raise OCRUnavailable(f"the tesseract program ({pytesseract.pytesseract.tesseract_cmd!r}) is not "
                                 f"installed; {TESSERACT_INSTALL}")
        self._tess = pytesseract
        self.version = str(pytesseract.get_tesseract_version()).split()[0]
        self.installed = set(pytesseract.get_languages(config=""))
        if lang != "auto" and not set(lang.split("+")) <= self.installed:
            raise OCRUnavailable(f"tesseract has no language data for {lang!r} (installed: "
                                 f"{sorted(self.installed)}); install it, e.g. `sudo apt-get install "
                                 f"tesseract-ocr-{lang.split('+')[0].replace('_', '-')}`")
        self.psm, self.lang, self.oem, self.glyph_height = int(psm), lang, int(oem), int(glyph_height)
        self.trim = bool(trim)
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))

    def traineddata(self, lang: str) -> str:
        return self.lang if self.lang != "auto" else TESSERACT_LANGS.get(lang, "eng")

    def reads(self, lang: str) -> str | None:
        data = self.traineddata(lang)
        missing = set(data.split("+")) - self.installed
        if missing:
            package = "tesseract-ocr-" + sorted(missing)[0].replace("_", "-")
            return (f"tesseract has no {'+'.join(sorted(missing))} traineddata for {lang!r} text "
                    f"(`sudo apt-get install {package}`)")
        return None

    def describe(self) -> str:
        langs = "by script (" + ", ".join(f"{k}: {v}" for k, v in TESSERACT_LANGS.items()) + ")" \
            if self.lang == "auto" else self.lang
        return (f"tesseract {self.version} (pytesseract) --oem {self.oem} --psm {self.psm}, traineddata {langs}; "
                + ("edge lines unlike the background trimmed, " if self.trim else "")
                + f"scaled with PIL bicubic to {self.glyph_height} px text height (scale 0.5-8), border of "
                f"{self.glyph_height // 2} px in the crop's background colour")

    def engine(self) -> dict[str, str]:
        return {"engine": "tesseract", "model": f"LSTM traineddata {self.lang}", "version": self.version}

    def prepare(self, crop: np.ndarray) -> Image.Image:
        """The image Tesseract is given for one crop (the same steps for originals and reconstructions)."""
        if self.trim:
            crop = trim_edges(crop)
        h, w = crop.shape[:2]
        scale = float(np.clip(self.glyph_height / max(1, ink_rows(crop)), 0.5, 8.0))
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        img = Image.fromarray(crop).resize((new_w, new_h), Image.BICUBIC)
        b = self.glyph_height // 2
        canvas = Image.new("RGB", (new_w + 2 * b, new_h + 2 * b), background_colour(crop))
        canvas.paste(img, (b, b))
        return canvas

    def _page_list(self, crops: list[np.ndarray], traineddata: str) -> list[str]:
        """One tesseract process reads a list of images as pages (the model loads once); its text output
        separates pages with a form feed."""
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tokbench-ocr-") as tmp:
            paths = []
            for i, crop in enumerate(crops):
                paths.append(os.path.join(tmp, f"{i:05d}.png"))
                self.prepare(crop).save(paths[-1])
            listing = os.path.join(tmp, "pages.txt")
            with open(listing, "w") as f:
                f.write("\n".join(paths) + "\n")
            cmd = [self._tess.pytesseract.tesseract_cmd, listing, "stdout", "--oem", str(self.oem),
                   "--psm", str(self.psm), "-l", traineddata]
            # one thread per process: several run side by side
            done = subprocess.run(cmd, capture_output=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
        pages = done.stdout.decode("utf-8", errors="replace").split("\f")
        if done.returncode != 0 or len(pages) != len(crops):
            raise TokbenchError(f"tesseract failed on {len(crops)} crops (exit {done.returncode}, {len(pages)} "
                                f"pages): {done.stderr.decode(errors='replace').strip()[:300]}")
        return pages

    def _read(self, crops: list[np.ndarray], lang: str) -> list[str]:
        data = self.traineddata(lang)
        chunks = [crops[i::self.workers] for i in range(self.workers)]
        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(lambda c: self._page_list(c, data) if c else [], chunks))
        out = [""] * len(crops)
        for w, res in enumerate(results):
            out[w::self.workers] = res
        return out


def _ppocr_model(model: str | None) -> tuple[Path, str, str]:
    """(model file, package, package version) of the PP-OCR recogniser: `model` a path to an ONNX file
    with its character list in the metadata, or None for the one the installed `rapidocr` wheel ships
    (else `rapidocr_onnxruntime`'s PP-OCRv4)."""
    from importlib.metadata import PackageNotFoundError, version

    if model is not None:
        path = Path(model).expanduser()
        if not path.is_file():
            raise TokbenchError(f"PP-OCR model {str(path)!r} is not a file; give an ONNX recogniser with its "
                                "characters in the metadata (PaddleOCR's export), or leave `model` out")
        return path, "file", ""
    for package, dist in (("rapidocr", "rapidocr"), ("rapidocr_onnxruntime", "rapidocr-onnxruntime")):
        try:
            import importlib

            mod = importlib.import_module(package)
        except ImportError:
            continue
        found = sorted((Path(mod.__file__).parent / "models").glob("*rec*.onnx"))
        if found:
            try:
                v = version(dist)
            except PackageNotFoundError:
                v = "unknown"
            return found[-1], dist, v
    raise OCRUnavailable(f"the ppocr OCR backend needs the rapidocr package, which ships PP-OCR's recogniser: "
                         f"{PPOCR_INSTALL}; or use backend tesseract")


_PPOCR_SESSIONS: dict[tuple[str, int, int], tuple[Any, str]] = {}


class PPOCR(OCRBackend):
    """PaddleOCR's PP-OCR recogniser (CTC) on each crop, as PaddleOCR's `TextRecognizer` prepares one:
    BGR, resized (OpenCV bilinear) to `height` (48) px keeping the aspect ratio, scaled to [-1, 1], and
    padded on the right with 0 to max(320, the resized width) px; greedy CTC decoding over the character
    list stored in the model (blank first, space last). Crops are read one width at a time, so a crop's
    reading never depends on the other crops of its batch. Edge lines unlike the background are trimmed
    first (`trim_edges`; `trim=False` to skip). onnxruntime on the CPU, `threads` intra-op threads."""

    name = "ppocr"

    def __init__(self, model: str | None = None, height: int = 48, min_width: int = 320, trim: bool = True,
                 threads: int | None = None, batch_size: int = 32) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise OCRUnavailable(f"the ppocr OCR backend needs onnxruntime: {PPOCR_INSTALL}") from None
        self.path, self.package, self.package_version = _ppocr_model(model)
        threads = int(threads or max(1, min(4, os.cpu_count() or 1)))
        key = (str(self.path), self.path.stat().st_mtime_ns, threads)
        if key not in _PPOCR_SESSIONS:  # one session per model file and process (loading takes a second)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            with open(self.path, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            _PPOCR_SESSIONS[key] = (ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"]),
                                    sha)
        self.session, self.sha256 = _PPOCR_SESSIONS[key]
        meta = self.session.get_modelmeta().custom_metadata_map
        if "character" not in meta:
            raise TokbenchError(f"PP-OCR model {self.path} has no `character` list in its metadata; tokbench "
                                "reads the characters from the model (PaddleOCR's ONNX export stores them)")
        self.characters = ["<blank>"] + meta["character"].splitlines() + [" "]
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.characters):
            raise TokbenchError(f"PP-OCR model {self.path} has {outputs} classes but {len(self.characters)} "
                                "characters (with blank and space): not a CTC recogniser tokbench knows")
        self.ort_version = ort.__version__
        self.height, self.min_width, self.trim = int(height), int(min_width), bool(trim)
        self.batch_size = int(batch_size)

    def describe(self) -> str:
        source = f"{self.package} {self.package_version}" if self.package != "file" else "a given file"
        return (f"PP-OCR recogniser {self.path.name} (sha256 {self.sha256[:12]}, from {source}; "
                f"{len(self.characters) - 2} characters) on onnxruntime {self.ort_version} CPU; "
                + ("edge lines unlike the background trimmed, " if self.trim else "")
                + f"BGR, OpenCV bilinear resize to {self.height} px height keeping the aspect, (x/255 - 0.5)/0.5, "
                f"right-padded with 0 to max({self.min_width}, width) px; greedy CTC decoding")

    def engine(self) -> dict[str, str]:
        return {"engine": "ppocr", "model": f"{self.path.name} sha256:{self.sha256[:12]}",
                "version": f"{self.package} {self.package_version}, onnxruntime {self.ort_version}"}

    def prepare(self, crop: np.ndarray) -> np.ndarray:
        """(3, height, W) float32 input for one crop, W = max(min_width, the resized width)."""
        import cv2

        if self.trim:
            crop = trim_edges(crop)
        h, w = crop.shape[:2]
        new_w = max(1, int(np.ceil(self.height * w / h)))
        resized = cv2.resize(np.ascontiguousarray(crop[..., ::-1]), (new_w, self.height))
        x = resized.astype(np.float32).transpose(2, 0, 1) / 255.0
        x = (x - 0.5) / 0.5
        out = np.zeros((3, self.height, max(self.min_width, new_w)), dtype=np.float32)
        out[:, :, :new_w] = x
        return out

    def decode(self, probs: np.ndarray) -> str:
        """Greedy CTC: the best class per step, repeats merged, blanks dropped."""
        best = probs.argmax(axis=-1)
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        return "".join(self.characters[i] for i in best[keep] if i != 0)

    def _read(self, crops: list[np.ndarray], lang: str) -> list[str]:
        inputs = [self.prepare(c) for c in crops]
        out = [""] * len(crops)
        by_width: dict[int, list[int]] = {}
        for i, x in enumerate(inputs):
            by_width.setdefault(x.shape[-1], []).append(i)
        name = self.session.get_inputs()[0].name
        for idx in by_width.values():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                probs = self.session.run(None, {name: np.stack([inputs[i] for i in part])})[0]
                for i, p in zip(part, probs):
                    out[i] = self.decode(p)
        return out


class DoctrOCR(OCRBackend):
    """python-doctr's recogniser as TokBench runs it: `recognition.<arch>(vocab=VOCABS[vocab],
    input_shape=(3, 32, 128))`, crops resized into 32 x 128 keeping their aspect ratio (doctr's
    `Resize(preserve_aspect_ratio=True)`), normalised with the model's mean/std. `weights`: a file,
    `"random"` (seeded random weights: for testing the plumbing only, its readings mean nothing), or
    None for the released checkpoint through the resolver."""

    name = "doctr"

    def __init__(self, arch: str = "parseq", vocab: str = "french", input_height: int = 32,
                 weights: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        try:
            import doctr  # noqa: F401
            from doctr.datasets import VOCABS
            from doctr.models import recognition
        except ImportError:
            raise OCRUnavailable("the doctr OCR backend needs python-doctr, which is not installed "
                                 "(`pip install python-doctr`; it pins huggingface-hub<2, check that it fits "
                                 "your environment), or use the default backend tesseract") from None
        import torch

        if arch not in DOCTR_WEIGHTS and weights is None:
            raise TokbenchError(f"doctr recogniser {arch!r} has no registered weights; use one of "
                                f"{sorted(DOCTR_WEIGHTS)} or give weights=PATH")
        self.arch, self.vocab, self.input_height, self.device = arch, vocab, int(input_height), device
        self.batch_size = int(batch_size)
        self.weights_note = "random weights (plumbing test only)" if weights == RANDOM else "released weights"
        if weights == RANDOM:
            torch.manual_seed(0)
        self.model = recognition.__dict__[arch](pretrained=False, vocab=VOCABS[vocab],
                                                input_shape=(3, self.input_height, 4 * self.input_height)).eval()
        if weights != "random":
            path = resolve(DOCTR_WEIGHTS[arch], weights) if arch in DOCTR_WEIGHTS else weights
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
        self.model.to(device)

    def engine(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"engine": "doctr", "model": f"{self.arch} ({self.weights_note})", "version": version("python-doctr")}

    def describe(self) -> str:
        return (f"doctr {self.arch} ({self.weights_note}), vocab {self.vocab}, input {self.input_height}x"
                f"{4 * self.input_height}, aspect-preserving resize, model mean/std")

    def _read(self, crops: list[np.ndarray], lang: str) -> list[str]:
        import torch
        from doctr import transforms as T
        from torchvision.transforms import Normalize

        resize_op = T.Resize((self.input_height, 4 * self.input_height), preserve_aspect_ratio=True)
        try:  # doctr >= 1.0: transforms take and return a `Sample`; older releases take the tensor itself
            from doctr.utils import Sample

            def resize(t: torch.Tensor) -> torch.Tensor:
                return resize_op(Sample(image=t)).image
        except ImportError:
            resize = resize_op
        norm = Normalize(mean=self.model.cfg["mean"], std=self.model.cfg["std"])
        out: list[str] = []
        for i in range(0, len(crops), self.batch_size):
            x = torch.stack([resize(torch.from_numpy(c).permute(2, 0, 1).float().div(255))
                             for c in crops[i:i + self.batch_size]])
            with torch.inference_mode():
                preds = self.model(norm(x).to(self.device), return_preds=True)["preds"]
            out += [word for word, _ in preds]
        return out


BACKENDS = {"ppocr": PPOCR, "tesseract": TesseractOCR, "doctr": DoctrOCR}


def default_backend() -> str:
    """`ppocr` where rapidocr and onnxruntime are installed, else `tesseract`. PP-OCR reads the originals
    of text-synth at least as well as Tesseract in every language (docs/text.md gives the measurement)
    and needs no system program."""
    try:
        _ppocr_model(None)
        import onnxruntime  # noqa: F401
    except (OCRUnavailable, ImportError):
        return "tesseract"
    return "ppocr"


def tesseract_version() -> str:
    """The tesseract binary's version (its numbers change with it), or `not installed`."""
    try:
        import pytesseract

        return str(pytesseract.get_tesseract_version()).split()[0]
    except Exception:  # noqa: BLE001 - no pytesseract, no binary, or a binary that does not answer
        return "not installed"


def build_backend(name: str, **options: Any) -> OCRBackend:
    """An OCR backend by name; `OCRUnavailable` (with the install command) where it is not installed."""
    if name == "auto":
        name = default_backend()
    if name not in BACKENDS:
        raise TokbenchError(f"unknown OCR backend {name!r}; known: {', '.join(BACKENDS)}")
    try:
        return BACKENDS[name](**options)
    except TypeError as e:
        raise TokbenchError(f"bad options for OCR backend {name!r} {options}: {e}") from None
