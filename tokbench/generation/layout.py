"""GenEval's output layout, written resumably and read back.

    DIR/manifest.json                 every setting (tokbench's addition)
    DIR/<00000>/metadata.jsonl        one JSON line: GenEval's tag/include/exclude/prompt (where known), id, category
    DIR/<00000>/samples/<0000>.png    the images
    DIR/<00000>/codes.npy             int32 (N, T) generated code ids, raster order (tokbench's addition)

This is the layout GenEval's `generation/diffusers_generate.py` writes and its `evaluation/evaluate_images.py`
reads (folder per prompt, `metadata.jsonl`, `samples/`), so the official evaluator runs on it unchanged.
While a prompt is incomplete its per-sample codes sit in `DIR/<00000>/.codes/<0000>.npy`; a sample is
done when both its PNG and its codes exist (each written to a temporary name and renamed, so a kill
leaves either a whole file or none). When all N are done they are joined into `codes.npy`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_PROMPT_DIR = re.compile(r"^\d{5,}$")


def prompt_dir(root: Path, index: int) -> Path:
    return root / f"{index:05d}"


def sample_path(root: Path, index: int, k: int) -> Path:
    return prompt_dir(root, index) / "samples" / f"{k:04d}.png"


def _partial_codes(root: Path, index: int, k: int) -> Path:
    return prompt_dir(root, index) / ".codes" / f"{k:04d}.npy"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_metadata(root: Path, index: int, metadata: Mapping[str, Any]) -> None:
    path = prompt_dir(root, index) / "metadata.jsonl"
    data = (json.dumps(dict(metadata), ensure_ascii=False) + "\n").encode()
    if not path.is_file() or path.read_bytes() != data:
        _atomic_write_bytes(path, data)


def write_sample(root: Path, index: int, k: int, image: np.ndarray, codes: np.ndarray) -> None:
    """One image (H, W, 3) uint8 as PNG, then its codes: the codes file marks the sample as done."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    _atomic_write_bytes(sample_path(root, index, k), buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, np.asarray(codes, dtype=np.int32))
    _atomic_write_bytes(_partial_codes(root, index, k), buf.getvalue())


def _codes_path(root: Path, index: int) -> Path:
    return prompt_dir(root, index) / "codes.npy"


def sample_done(root: Path, index: int, k: int, n: int) -> bool:
    if not sample_path(root, index, k).is_file():
        return False
    joined = _codes_path(root, index)
    if joined.is_file():
        try:
            return np.load(joined, mmap_mode="r").shape[0] == n
        except (OSError, ValueError):
            return False
    return _partial_codes(root, index, k).is_file()


def finish_prompt(root: Path, index: int, n: int) -> bool:
    """Join the per-sample codes into `codes.npy` once all n samples are done; True if the prompt is complete."""
    joined = _codes_path(root, index)
    if joined.is_file() and all(sample_path(root, index, k).is_file() for k in range(n)):
        return True
    if not all(sample_done(root, index, k, n) for k in range(n)):
        return False
    codes = np.stack([np.load(_partial_codes(root, index, k)) for k in range(n)])
    import io

    buf = io.BytesIO()
    np.save(buf, codes)
    _atomic_write_bytes(joined, buf.getvalue())
    for k in range(n):
        _partial_codes(root, index, k).unlink(missing_ok=True)
    try:
        (prompt_dir(root, index) / ".codes").rmdir()
    except OSError:
        pass
    return True


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


@dataclass
class PromptEntry:
    """One prompt of a generator's output: its id, text, category, metadata and image files."""

    id: str
    prompt: str
    category: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    codes: Path | None = None


def is_geneval_layout(root: Path) -> bool:
    return any(p.is_dir() and _PROMPT_DIR.match(p.name) and (p / "metadata.jsonl").is_file() for p in root.iterdir())


def read_geneval_layout(root: Path) -> tuple[list[PromptEntry], list[str]]:
    """The prompts of a GenEval-layout folder (read by `geneval.layout.prompt_folders`, the one reader of
    that layout), and the problems found (folders without readable metadata or a prompt)."""
    from ..geneval.layout import prompt_folders

    entries, problems = [], []
    for pf in prompt_folders(root):
        if not _PROMPT_DIR.match(pf.path.name):
            continue
        meta = pf.metadata
        if meta is None or "prompt" not in meta:
            problems.append(f"{pf.path.name}: unreadable metadata.jsonl ({pf.problem or 'it names no prompt'})")
            continue
        images = [p for p in pf.samples if p.suffix.lower() in IMAGE_SUFFIXES]
        codes = pf.path / "codes.npy"
        entries.append(PromptEntry(id=pf.path.name, prompt=str(meta["prompt"]),
                                   category=str(meta.get("tag", meta.get("category", ""))), metadata=meta,
                                   images=images, codes=codes if codes.is_file() else None))  # fmt: skip
    return entries, problems


def remove_stale_temporaries(root: Path) -> int:
    """Delete the half-written `.NAME.tmpPID` files a killed run leaves behind; returns how many."""
    n = 0
    for d in root.iterdir():
        if d.is_dir() and _PROMPT_DIR.match(d.name):
            for tmp in d.rglob(".*.tmp*"):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    n += 1
    return n


def iter_units(n_prompts: int, per_prompt: int) -> Iterator[tuple[int, int]]:
    for p in range(n_prompts):
        for k in range(per_prompt):
            yield p, k
