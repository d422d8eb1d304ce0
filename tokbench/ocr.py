"""OCR backends for the text metric: read one word per crop.

- `tesseract` (default): the system Tesseract through pytesseract; runs offline wherever Debian's
  `tesseract-ocr` (or Homebrew's `tesseract`) is installed.
- `doctr`: python-doctr's text recogniser (PARSeq by default, with the French vocabulary and the 32 x 128
  input that TokBench evaluates with); weights through tokbench's resolver (URL + hash prefix).

Crops are uint8 (H, W, 3) arrays. Each backend states its settings (`describe()`): they are part of
the metric's protocol. Readings are cached by crop content and settings: the originals are the same
pixels in every job of a suite, so each is read once per process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from .core import MetricUnavailable, TokbenchError
from .weights import Artifact, register_artifact, resolve


class OCRUnavailable(MetricUnavailable):
    """An OCR backend whose program or package is not installed."""


TESSERACT_INSTALL = ("install Tesseract: `sudo apt-get install tesseract-ocr` (Debian/Ubuntu), "
                     "`brew install tesseract` (macOS), then `pip install pytesseract`")

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


class OCRBackend:
    name = "ocr"

    def describe(self) -> str:
        raise NotImplementedError

    def _read(self, crops: list[np.ndarray]) -> list[str]:
        raise NotImplementedError

    def read(self, crops: list[np.ndarray]) -> list[str]:
        """The text read in each crop (whitespace runs collapsed, ends stripped), cached by content."""
        settings = self.describe()
        keys = [_cache_key(c, settings) for c in crops]
        todo = [i for i, k in enumerate(keys) if k not in _CACHE]
        if todo:
            for i, text in zip(todo, self._read([crops[i] for i in todo])):
                if len(_CACHE) >= _CACHE_MAX:
                    _CACHE.clear()
                _CACHE[keys[i]] = " ".join(text.split())
        return [_CACHE[k] for k in keys]


class TesseractOCR(OCRBackend):
    """Tesseract's LSTM engine on each crop: upscaled with PIL bicubic to `height` px (aspect kept) and
    framed by a border of a quarter of that height in the crop's median edge colour (Tesseract reads
    text best at 20-40 px glyphs with a margin), page segmentation `psm` (7: one text line)."""

    name = "tesseract"

    def __init__(self, psm: int = 7, lang: str = "eng", oem: int = 1, height: int = 64,
                 workers: int | None = None) -> None:
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
        langs = set(pytesseract.get_languages(config=""))
        if not set(lang.split("+")) <= langs:
            raise OCRUnavailable(f"tesseract has no language data for {lang!r} (installed: {sorted(langs)}); "
                                 f"install it, e.g. `sudo apt-get install tesseract-ocr-{lang.split('+')[0]}`")
        self.psm, self.lang, self.oem, self.height = int(psm), lang, int(oem), int(height)
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))

    def describe(self) -> str:
        return (f"tesseract {self.version} (pytesseract) --oem {self.oem} --psm {self.psm} -l {self.lang}; crop "
                f"upscaled with PIL bicubic to {self.height} px height, border of {self.height // 4} px in the "
                "crop's median edge colour")

    def prepare(self, crop: np.ndarray) -> Image.Image:
        """The image Tesseract is given for one crop (the same steps for originals and reconstructions)."""
        h, w = crop.shape[:2]
        new_w = max(1, round(w * self.height / h))
        img = Image.fromarray(crop).resize((new_w, self.height), Image.BICUBIC)
        edge = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]).reshape(-1, crop.shape[-1])
        fill = tuple(int(v) for v in np.median(edge, axis=0))
        b = self.height // 4
        canvas = Image.new("RGB", (new_w + 2 * b, self.height + 2 * b), fill)
        canvas.paste(img, (b, b))
        return canvas

    def _page_list(self, crops: list[np.ndarray]) -> list[str]:
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
                   "--psm", str(self.psm), "-l", self.lang]
            # one thread per process: several run side by side
            done = subprocess.run(cmd, capture_output=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
        pages = done.stdout.decode("utf-8", errors="replace").split("\f")
        if done.returncode != 0 or len(pages) != len(crops):
            raise TokbenchError(f"tesseract failed on {len(crops)} crops (exit {done.returncode}, {len(pages)} "
                                f"pages): {done.stderr.decode(errors='replace').strip()[:300]}")
        return pages

    def _read(self, crops: list[np.ndarray]) -> list[str]:
        chunks = [crops[i::self.workers] for i in range(self.workers)]
        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(lambda c: self._page_list(c) if c else [], chunks))
        out = [""] * len(crops)
        for w, res in enumerate(results):
            out[w::self.workers] = res
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
        self.weights_note = "random weights (plumbing test only)" if weights == "random" else "released weights"
        if weights == "random":
            torch.manual_seed(0)
        self.model = recognition.__dict__[arch](pretrained=False, vocab=VOCABS[vocab],
                                                input_shape=(3, self.input_height, 4 * self.input_height)).eval()
        if weights != "random":
            path = resolve(DOCTR_WEIGHTS[arch], weights) if arch in DOCTR_WEIGHTS else weights
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
        self.model.to(device)

    def describe(self) -> str:
        return (f"doctr {self.arch} ({self.weights_note}), vocab {self.vocab}, input {self.input_height}x"
                f"{4 * self.input_height}, aspect-preserving resize, model mean/std")

    def _read(self, crops: list[np.ndarray]) -> list[str]:
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


BACKENDS = {"tesseract": TesseractOCR, "doctr": DoctrOCR}


def build_backend(name: str, **options: Any) -> OCRBackend:
    """An OCR backend by name; `OCRUnavailable` (with the install command) where it is not installed."""
    if name not in BACKENDS:
        raise TokbenchError(f"unknown OCR backend {name!r}; known: {', '.join(BACKENDS)}")
    try:
        return BACKENDS[name](**options)
    except TypeError as e:
        raise TokbenchError(f"bad options for OCR backend {name!r} {options}: {e}") from None
