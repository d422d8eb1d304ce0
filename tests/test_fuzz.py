"""Fuzzing for a bounded time (TOKBENCH_FUZZ_SECONDS, default 3 s per test; seeded, so a failure repeats):
mutated suite files and mutated image files. The suite loader answers any bytes with a suite or one
`TokbenchError`; the image reader answers any bytes with an image or a counted skip. Never a traceback,
never a hang, never an image outside [0, 1]. A failing input is saved beside the test's temporary folder."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokbench.core import TokbenchError

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("TOKBENCH_FUZZ_SECONDS", "3"))
MIN_CASES = 40  # however slow the machine, at least this many inputs

# Fragments a mutation inserts: YAML syntax (anchors, aliases, merge keys, tags, flow collections) and
# bytes that are not text.
YAML_TOKENS = [b"&a ", b"*a", b"<<: *a\n", b"!!python/object:os.system ", b"!!binary ", b"{", b"}", b"[", b"]",
               b"- ", b": ", b"? ", b"\t", b"'", b'"', b"\n  ", b"\n", b"#", b"%YAML 1.1\n", b"---\n", b"~", b"1e999",
               b"-.inf", b"0x1F", b"2001-12-14", b"\xff", b"\x00", b"\xc3\x28", b"\xef\xbb\xbf", b"null", b"[*a, *a]"]


def _mutate(rng: np.random.Generator, data: bytes, tokens: list[bytes]) -> bytes:
    """1 to 4 random edits: flip a bit, overwrite a byte, cut or repeat a span, insert a fragment, truncate."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        n = len(out)
        op = int(rng.integers(0, 6))
        i = int(rng.integers(0, n)) if n else 0
        if op == 0 and n:
            out[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and n:
            out[i] = int(rng.integers(0, 256))
        elif op == 2 and n:
            del out[i:i + int(rng.integers(1, 64))]
        elif op == 3 and n:
            span = bytes(out[i:i + int(rng.integers(1, 64))])
            out[i:i] = span * int(rng.integers(1, 4))
        elif op == 4:
            out[i:i] = tokens[int(rng.integers(0, len(tokens)))]
        else:
            del out[int(rng.integers(0, n + 1)):]
    return bytes(out)


def _cases(seed: int):
    """Random generators for at least MIN_CASES inputs and until SECONDS have passed."""
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + SECONDS
    n = 0
    while n < MIN_CASES or time.monotonic() < deadline:
        yield rng
        n += 1


def test_the_suite_loader_answers_any_bytes_with_a_suite_or_one_error(tmp_path):
    from tokbench.suite import parse_suite, read_suite_file

    seeds = [p.read_bytes() for p in sorted((ROOT / "benchmarks").glob("*.yaml"))]
    seeds.append(b"name: x\ntokenizers:\n  - &t {name: jpeg, sweep: {quality: [10, 50]}}\n  - *t\n"
                 b"metrics: [psnr, {ssim: {protocol: llamagen}}]\ndata: [samples, {source: samples, limit: 2}]\n")
    path = tmp_path / "suite.yaml"
    for rng in _cases(0):
        data = _mutate(rng, seeds[int(rng.integers(0, len(seeds)))], YAML_TOKENS)
        path.write_bytes(data)
        try:
            raw = read_suite_file(path)
            if isinstance(raw, dict):
                parse_suite(raw, str(path))  # checked only: data sets are not opened
        except TokbenchError as e:
            assert len(str(e)) < 20_000, f"an error message of {len(str(e))} characters"
        except Exception as e:  # noqa: BLE001 - anything else is the bug this test looks for
            kept = tmp_path.parent / f"fuzz-suite-{type(e).__name__}.yaml"
            kept.write_bytes(data)
            pytest.fail(f"{type(e).__name__}: {e} (input kept in {kept})")


def _image_seeds() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    out = []
    for suffix, image, kw in ((".png", Image.fromarray(rgb), {}), (".png", Image.fromarray(rgba), {}),
                              (".png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), {}),
                              (".png", Image.fromarray(rgb).convert("P"), {}), (".jpg", Image.fromarray(rgb), {}),
                              (".gif", Image.fromarray(rgb).convert("P"), {}), (".webp", Image.fromarray(rgba), {}),
                              (".tif", Image.fromarray(rgb), {}), (".bmp", Image.fromarray(rgb), {}),
                              (".ppm", Image.fromarray(rgb), {})):
        buf = io.BytesIO()
        image.save(buf, format={".jpg": "JPEG", ".tif": "TIFF"}.get(suffix, suffix[1:].upper()), **kw)
        out.append((suffix, buf.getvalue()))
    return out


# PIL's notes on damaged TIFF tags and claimed sizes: the damage is the input
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
def test_the_image_reader_answers_any_bytes_with_an_image_or_a_counted_skip(tmp_path, monkeypatch):
    from tokbench.data import ImageDataset, ImageRecord, _ProtocolDataset

    # a flipped header byte can claim 10^8 pixels: PIL's decompression-bomb error (the same path as the default
    # limit's) comes at 2M pixels here, so that the seconds go to many inputs rather than to a few huge allocations
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)

    seeds = _image_seeds()
    tokens = [b"\x00" * 8, b"\xff" * 8, b"\xff\xd8\xff", b"IHDR", b"\x7f\xff\xff\xff", b"GIF89a", b"\x00\x00\xff\xff"]
    for n, rng in enumerate(_cases(2)):
        suffix, seed = seeds[int(rng.integers(0, len(seeds)))]
        data = _mutate(rng, seed, tokens)
        path = tmp_path / f"{n % 8}{suffix}"
        path.write_bytes(data)
        ds = ImageDataset("fuzz", "fuzz", [ImageRecord(str(path), path.name)])
        try:
            item = _ProtocolDataset(ds, "resize-crop", 16)[0]  # (position, image, error, ...annotations)
            image, error = item[1], item[2]
        except Exception as e:  # noqa: BLE001 - a reader that raises would stop a whole job
            kept = tmp_path.parent / f"fuzz-image{suffix}"
            kept.write_bytes(data)
            pytest.fail(f"{type(e).__name__}: {e} (input kept in {kept})")
        assert (image is None) != (error is None)
        if image is not None:
            assert tuple(image.shape) == (3, 16, 16) and float(image.min()) >= 0 and float(image.max()) <= 1
        else:
            assert isinstance(error, str) and error
