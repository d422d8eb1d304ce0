"""Images with text whose boxes and transcripts are known: annotation files, `text-synth`, TokBench.

- Any folder image `photo.png` may have `photo.text.json` beside it: a list of
  `{"box": [x0, y0, x1, y1], "text": "...", "ratio": optional}` in the pixels of the image as displayed
  (EXIF rotation applied), x0/y0 inclusive, x1/y1 exclusive (continuous pixel edges).
- `text-synth[:options]` renders words in the DejaVu fonts that matplotlib ships onto the sample
  photographs, deterministically from the suite's seed, into a cache folder of such annotated images.
  `lang=zh` / `lang=ja` render Chinese / Japanese words in a Noto CJK font (Debian's `fonts-noto-cjk`,
  or a font file named by `TOKBENCH_CJK_FONT`); without one the data set is unavailable, with the
  install command, and the jobs on it are skipped.
- `tokbench-text:PATH` reads TokBench's released text set (wjf5203/TokBench, Hugging Face
  `Junfeng5/TokBench`): `PATH/annotations/text_<set>.json` with images under `PATH/images/text_data/<set>/`.

`ratio` is the text's size relative to the image (TokBench's field, by which its buckets are made);
where a file gives none, the metric uses the box height over the side of the protocol's output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core import TokbenchError

ANNOTATION_SUFFIX = ".text.json"


class BadAnnotation(TokbenchError):
    """An annotation file that cannot be read as text boxes."""


class FontUnavailable(TokbenchError):
    """No font on this machine draws the language text-synth was asked for."""


@dataclass(frozen=True)
class TextBox:
    """One word: its box (x0, y0, x1, y1) in pixels, its transcript, and optionally its relative size."""

    box: tuple[float, float, float, float]
    text: str
    ratio: float | None = None


def sidecar_path(image: str | os.PathLike, suffix: str) -> Path:
    """`photo.png` -> `photo<suffix>` beside it (`.text.json`, `.faces.json`)."""
    p = Path(image)
    return p.with_name(p.stem + suffix)


def read_sidecar(image: str | os.PathLike, suffix: str, parse: Callable[[Any, str], tuple]) -> tuple | None:
    """`parse(json, where)` of the image's sidecar file, or None where it has none; a file that cannot be
    read, is not UTF-8 or not JSON is a `BadAnnotation` naming it (a counted skip, not a traceback)."""
    path = sidecar_path(image, suffix)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadAnnotation(f"cannot read {path}: {e}") from None
    return parse(data, str(path))


def annotation_path(image: str | os.PathLike) -> Path:
    """`photo.png` -> `photo.text.json` beside it."""
    return sidecar_path(image, ANNOTATION_SUFFIX)


def parse_boxes(entries: Any, where: str) -> tuple[TextBox, ...]:
    """A JSON list of {"box": [x0, y0, x1, y1], "text": str, "ratio": float?} -> TextBoxes."""
    if not isinstance(entries, list):
        raise BadAnnotation(f"{where}: expected a list of {{'box': [x0, y0, x1, y1], 'text': ...}}, "
                            f"got {type(entries).__name__}")
    out = []
    for i, e in enumerate(entries):
        try:
            x0, y0, x1, y1 = (float(v) for v in e["box"])
            text = e["text"]
            ratio = e.get("ratio")
            if not isinstance(text, str) or x1 <= x0 or y1 <= y0:
                raise ValueError("needs a string text and x1 > x0, y1 > y0")
        except (KeyError, TypeError, ValueError) as err:
            raise BadAnnotation(f"{where}: entry {i} ({json.dumps(e)[:120]}) is not a text box: {err}; each entry "
                                "is {'box': [x0, y0, x1, y1], 'text': 'word'}") from None
        out.append(TextBox((x0, y0, x1, y1), text, None if ratio is None else float(ratio)))
    return tuple(out)


def read_annotations(image: str | os.PathLike) -> tuple[TextBox, ...] | None:
    """The boxes of the image's `.text.json`, or None where it has none."""
    return read_sidecar(image, ANNOTATION_SUFFIX, parse_boxes)


def write_annotations(image: str | os.PathLike, boxes: list[TextBox]) -> Path:
    path = annotation_path(image)
    path.write_text(json.dumps([{"box": list(b.box), "text": b.text, **({"ratio": b.ratio} if b.ratio else {})}
                                for b in boxes], indent=1))
    return path


# ----------------------------------------------------------------------------------------------
# TokBench's released text set


TOKBENCH_TEXT_SETS = ("ic13", "ic15", "tt", "textocr", "cord", "sroie", "infograph", "docvqa")  # eval.sh order


def tokbench_records(root: str | os.PathLike) -> list[tuple[str, str, tuple[TextBox, ...]]]:
    """(image path, id `<set>/<file>`, boxes) for every image of TokBench's annotation files.

    Each `annotations/text_<set>.json` is a list of {"file_name", "height", "width", "annotations":
    [{"bbox": [x0, y0, x1, y1] or 4 (x, y) points, "rec": transcript, "ratio": relative size}]}, the
    layout its `OCRJSONForTokBench` reads; a polygon becomes its bounding rectangle, as the crop of a
    straight box would hold it."""
    root = Path(root).expanduser()
    files = sorted((root / "annotations").glob("text_*.json"),
                   key=lambda p: (TOKBENCH_TEXT_SETS + (p.stem,)).index(p.stem[5:]) if p.stem[5:] in
                   TOKBENCH_TEXT_SETS else len(TOKBENCH_TEXT_SETS))
    if not files:
        raise BadAnnotation(f"no TokBench annotation files ({root}/annotations/text_*.json); download the data set "
                            "(huggingface.co/datasets/Junfeng5/TokBench) and give its folder")
    out = []
    for f in files:
        name = f.stem[5:]
        try:
            images = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadAnnotation(f"cannot read {f}: {e}") from None
        for k, img in enumerate(images):
            try:
                boxes = []
                for w in img["annotations"]:
                    pts = np.asarray(w["bbox"], dtype=np.float64).reshape(-1, 2)
                    x0, y0 = pts.min(axis=0)
                    x1, y1 = pts.max(axis=0)
                    boxes.append({"box": [x0, y0, x1, y1], "text": w["rec"], "ratio": w.get("ratio")})
                parsed = parse_boxes(boxes, f"{f} image {k}")
                file_name = img["file_name"]
            except (KeyError, TypeError, ValueError) as e:
                raise BadAnnotation(f"{f}: image entry {k} is not in TokBench's layout ({e}); expected "
                                    "file_name and annotations with bbox, rec, ratio") from None
            out.append((str(root / "images" / "text_data" / name / file_name), f"{name}/{file_name}", parsed))
    return out


# ----------------------------------------------------------------------------------------------
# text-synth

# Words with mixed case and digits, as signs and labels show them.
WORDS = (
    "Market", "Station", "Garden", "Bakery", "Coffee", "Ticket", "Museum", "Harbour", "Bridge", "Central",
    "Theatre", "Pharmacy", "Hotel", "Express", "Parking", "Kitchen", "Gallery", "Airport", "Orange", "Summer",
    "EXIT", "OPEN", "SALE", "STOP", "TAXI", "POLICE", "NORTH", "BANK", "DANGER", "MENU", "HOSPITAL", "CAFE",
    "street", "river", "yellow", "window", "garden", "quiet", "market", "morning", "bread", "paper", "forest",
    "2024", "1987", "365", "42", "7150", "80", "128", "9046", "555", "31", "B12", "A4", "Route66", "M25",
    "K9", "Gate7", "X19", "Bus42", "3rd", "5th", "PH7", "Room204", "Apt3B", "V8", "Line4",
)
# Chinese (simplified) and Japanese words of signs and labels, with digits and Latin as signs mix them;
# every Japanese word holds kana, so its script says it is Japanese (ocr.script_language).
WORDS_ZH = (
    "出口", "入口", "地铁站", "医院", "银行", "超市", "咖啡", "面包店", "停车场", "售票处", "公园", "图书馆",
    "博物馆", "火车站", "机场", "酒店", "药店", "餐厅", "学校", "邮局", "北京", "上海", "广州", "深圳", "杭州",
    "成都", "欢迎光临", "禁止吸烟", "安全出口", "营业中", "特价", "新鲜水果", "早餐", "电话", "东门", "西门",
    "人民广场", "中山路", "长江", "春天", "3号线", "8楼", "12号", "2024年", "A区", "100元",
)
WORDS_JA = (
    "ラーメン", "コーヒー", "さくら", "ありがとう", "いらっしゃいませ", "出口はこちら", "お手洗い", "きっぷうりば",
    "のりば", "タクシー", "ホテル", "レストラン", "パン屋", "本日のおすすめ", "押してください", "止まれ",
    "営業中です", "駐車場あります", "おにぎり", "すし", "てんぷら", "ようこそ", "東京タワー", "大阪ドーム",
    "京都えき", "みなと", "ひだり", "みぎ", "きた口", "みなみ口", "3ばんせん", "10時から", "セール",
    "カフェ", "バス停", "コンビニ", "やさい", "くだもの", "お弁当", "営業時間のご案内",
)
WORDS_BY_LANG = {"en": WORDS, "zh": WORDS_ZH, "ja": WORDS_JA}
# Noto CJK collections hold one face per region; the region's glyph forms are the ones a reader expects.
CJK_FACE = {"zh": "Noto Sans CJK SC", "ja": "Noto Sans CJK JP"}
CJK_FONT_FILES = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian/Ubuntu fonts-noto-cjk
                  "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
                  "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
                  "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",  # Fedora
                  "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc")  # Arch
CJK_FONT_INSTALL = ("install a CJK font: `sudo apt-get install fonts-noto-cjk` (Debian/Ubuntu; .ci/run does), "
                    "or set TOKBENCH_CJK_FONT to a .ttc/.otf/.ttf file with Chinese and Japanese glyphs")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
TEXT_SYNTH_DEFAULTS: dict[str, Any] = {"count": 16, "heights": (0.04, 0.06, 0.09), "words": 4, "size": 512,
                                       "lang": "en"}
TEXT_SYNTH_VERSION = 3  # bump when rendering changes: cached folders are keyed by it
EXCLUDED_PHOTOS = ("page.png",)  # a scanned page: its own text would sit under ours


def parse_options(arg: str, defaults: dict[str, Any], what: str = "text-synth") -> dict[str, Any]:
    """`count=8,heights=0.04/0.06,size=384` -> options (lists with '/'), checked against `defaults`."""
    opts = dict(defaults)
    for part in filter(None, (p.strip() for p in arg.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in defaults:
            raise TokbenchError(f"{what} option {part!r} not understood; options are "
                                f"{', '.join(f'{k}=' for k in defaults)} (e.g. {what}:count=8)")
        try:
            if isinstance(defaults[key], str):
                opts[key] = value
            elif isinstance(defaults[key], tuple):
                opts[key] = tuple(float(v) for v in value.split("/"))
            else:
                opts[key] = int(value)
        except ValueError:
            raise TokbenchError(f"{what} option {key}={value!r} is not a number") from None
    if what != "text-synth":
        if opts["count"] < 1 or opts["size"] < 32:
            raise TokbenchError(f"{what} options {opts} out of range: count >= 1, size >= 32")
        return opts
    if "lang" in opts and opts["lang"] not in WORDS_BY_LANG:
        raise TokbenchError(f"text-synth lang={opts['lang']!r} is not one of {', '.join(WORDS_BY_LANG)}")
    if opts["count"] < 1 or opts["words"] < 1 or opts["size"] < 32 or not opts["heights"] or not all(
            0.005 <= h <= 0.5 for h in opts["heights"]):
        raise TokbenchError(f"text-synth options {opts} out of range: count, words >= 1, size >= 32, "
                            "heights between 0.005 and 0.5 of the image side")
    return opts


def cache_dir() -> Path:
    return Path(os.environ.get("TOKBENCH_CACHE") or Path.home() / ".cache" / "tokbench").expanduser()


def font_path(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def cjk_fonts(lang: str) -> list[tuple[str, int]]:
    """(font file, face index) pairs that draw `lang` (`zh`, `ja`): TOKBENCH_CJK_FONT, else the Noto CJK
    collections of Debian, Fedora or Arch, the face of the language's region where the file has several.
    Raises `FontUnavailable` (with the install command) where there is none; the data set is then
    unavailable and its jobs are skipped."""
    from PIL import ImageFont

    given = os.environ.get("TOKBENCH_CJK_FONT")
    files = [given] if given else [f for f in CJK_FONT_FILES if Path(f).is_file()]
    if given and not Path(given).is_file():
        raise FontUnavailable(f"TOKBENCH_CJK_FONT={given!r} is not a file; {CJK_FONT_INSTALL}")
    out = []
    for f in files:
        faces = []
        for index in range(16):  # a collection's faces, in order; a single font has index 0 only
            try:
                faces.append((index, ImageFont.truetype(f, 12, index=index).getname()[0]))
            except OSError:
                break
        chosen = [i for i, name in faces if name == CJK_FACE[lang]] or [i for i, _ in faces[:1]]
        out += [(f, i) for i in chosen]
    if not out:
        raise FontUnavailable(f"text-synth lang={lang} needs a font with {'Chinese' if lang == 'zh' else 'Japanese'} "
                              f"glyphs and none was found ({', '.join(CJK_FONT_FILES[:1])} ...); {CJK_FONT_INSTALL}")
    return out


def text_synth_folder(options: dict[str, Any], seed: int, photos: list[str]) -> Path:
    """The folder of rendered images and their `.text.json` (made once, then reused from the cache)."""
    fonts = [] if options.get("lang", "en") == "en" else cjk_fonts(options["lang"])
    key = json.dumps({"v": TEXT_SYNTH_VERSION, "seed": seed, **{k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in options.items()},
                      "photos": [Path(p).name for p in photos],
                      # the font is part of the data: another font renders other images
                      **({"fonts": [[Path(f).name, i] for f, i in fonts]} if fonts else {})}, sort_keys=True)
    folder = cache_dir() / "text-synth" / hashlib.sha1(key.encode()).hexdigest()[:12]
    if (folder / "done").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        for i in range(options["count"]):
            img, boxes = render_text_image(photos, i, options, seed, fonts)
            path = tmp / f"{i:04d}.png"
            img.save(path)
            write_annotations(path, boxes)
        (tmp / "options.json").write_text(key)
        (tmp / "done").write_text("")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same folder first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def render_text_image(photos: list[str], index: int, options: dict[str, Any], seed: int,
                      fonts: list[tuple[str, int]] | None = None):
    """Image `index` of text-synth: a square crop of a sample photograph, `size` px, with `words` words at
    each relative height (font size = height x side) on translucent plates that keep them legible.
    `fonts`: (file, face index) for lang zh/ja (`cjk_fonts`); English draws from matplotlib's DejaVu.
    Returns (PIL RGB image, [TextBox]); box = the text with a margin inside its plate, ratio = the height."""
    from PIL import Image, ImageDraw, ImageFont

    from .images import open_image

    rng = np.random.default_rng([seed, index, TEXT_SYNTH_VERSION])
    side = options["size"]
    photo = open_image(photos[index % len(photos)]).convert("RGB")
    w, h = photo.size
    crop = int(min(w, h) * rng.uniform(0.7, 1.0))
    x, y = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
    img = photo.crop((x, y, x + crop, y + crop)).resize((side, side), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float64)
    draw = ImageDraw.Draw(img)
    placed: list[tuple[int, int, int, int]] = []
    boxes = []
    for height in sorted(options["heights"], reverse=True):  # big words first: they are hardest to place
        px = max(4, round(height * side))
        for _ in range(options["words"]):
            words = WORDS_BY_LANG[options.get("lang", "en")]
            word = words[int(rng.integers(len(words)))]
            if fonts:
                file, face = fonts[int(rng.integers(len(fonts)))]
                font = ImageFont.truetype(file, px, index=face)
            else:
                font = ImageFont.truetype(str(font_path(FONTS[int(rng.integers(len(FONTS)))])), px)
            ascent, descent = font.getmetrics()
            pad = max(2, round(0.3 * px))
            bw = int(np.ceil(font.getlength(word))) + 2 * pad
            bh = ascent + descent + 2 * pad
            if bw >= side - 4 or bh >= side - 4:
                continue
            for _attempt in range(200):
                x0 = int(rng.integers(2, side - bw - 1))
                y0 = int(rng.integers(2, side - bh - 1))
                box = (x0, y0, x0 + bw, y0 + bh)
                if all(box[2] + pad <= o[0] or o[2] + pad <= box[0] or box[3] + pad <= o[1] or o[3] + pad <= box[1]
                       for o in placed):
                    break
            else:
                continue
            placed.append(box)
            light_ground = arr[box[1]:box[3], box[0]:box[2]].mean() >= 128
            plate, ink = ((235, 235, 230), int(rng.integers(0, 60))) if light_ground else \
                ((25, 25, 30), int(rng.integers(200, 256)))
            region = np.asarray(img.crop(box), dtype=np.float64)
            blended = 0.2 * region + 0.8 * np.asarray(plate, dtype=np.float64)
            img.paste(Image.fromarray(np.round(blended).astype(np.uint8)), box[:2])
            tint = tuple(int(np.clip(ink + rng.integers(-20, 21), 0, 255)) for _ in range(3))
            draw.text((box[0] + pad, box[1] + pad), word, font=font, fill=tint, anchor="la")
            # the annotated box stops half a margin inside the plate: a crop never shows the plate's edge
            m = pad // 2
            boxes.append(TextBox((box[0] + m, box[1] + m, box[2] - m, box[3] - m), word, float(height)))
    return img, boxes
