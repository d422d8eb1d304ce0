"""`tokbench generate`: prompts -> Janus images and code ids in GenEval's layout, resumable.

Work is a list of (prompt, sample) units; those already done on disk are skipped, the rest are batched
over prompts and samples. Each unit's sampling generator is seeded by (seed, prompt index, sample
index), so a re-run (after kill -9 too) writes the same files and never a unit twice. The manifest
holds every setting that changes an image; a re-run with other settings into the same folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ..core import TokbenchError
from ..environment import git_revision, resolve_device
from ..geneval.layout import official_order
from ..runfolder import write_json
from . import janus as J
from .layout import (
    finish_prompt,
    iter_units,
    remove_stale_temporaries,
    sample_done,
    write_metadata,
    write_sample,
)
from .prompts import Prompt, load_prompts

# Float32 decodes differ only by attention arithmetic (SDPA in tokbench, bmm + softmax in transformers);
# in bfloat16 both round every layer to 8 mantissa bits, so whole steps of 2^-7 relative appear.
DECODE_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.1, "float16": 0.02}


def _prompts_digest(prompts: list[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.id, p.prompt, p.category]).encode())
    return h.hexdigest()


def prompt_metadata(p: Prompt) -> dict[str, Any]:
    """A prompt folder's metadata.jsonl: GenEval's fields in its key order (`tag`, `include`, [`exclude`,]
    `prompt`) where the prompt has them, then tokbench's `id` and `category`. No `tag` without GenEval
    fields: `tokbench geneval` then skips the prompt as no GenEval task instead of calling it correct."""
    return official_order({**p.metadata, "prompt": p.prompt, "id": p.id, "category": p.category})


def _identity(m: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields that change the images: a resumed run must agree on all of them."""
    return {"model": {k: m["model"].get(k) for k in ("model", "source", "revision", "layout")},
            "sampling": m["sampling"], "dtype": m["dtype"], "device_type": m["device_type"],
            "prompts": {k: m["prompts"][k] for k in ("count", "sha256")}}  # fmt: skip


def run_generate(
    model: str,
    out: str | Path,
    prompts: str = "builtin",
    per_prompt: int = 4,
    seed: int = 0,
    cfg_weight: float = 5.0,
    temperature: float = 1.0,
    batch_size: int = 8,
    dtype: str = "bfloat16",
    device: str = "auto",
    limit: int | None = None,
    progress: bool = True,
    decode_check: bool = True,
) -> dict[str, Any]:
    """Generate `per_prompt` images per prompt into `out` (GenEval layout); returns the manifest."""
    if per_prompt < 1 or batch_size < 1:
        raise TokbenchError(f"--per-prompt and --batch-size must be >= 1, got {per_prompt} and {batch_size}")
    out = Path(out)
    plist = load_prompts(prompts)
    plist = plist[:limit] if limit else plist
    dev = resolve_device(device)
    gen = J.load_janus(model, device=dev, dtype=dtype)
    manifest: dict[str, Any] = {
        "kind": "tokbench-generation",
        "model": gen.info,
        "sampling": {
            "prompt_template": J.USER_TEMPLATE + J.BOI_TOKEN + " (tokenised with BOS)",
            "cfg_weight": cfg_weight, "temperature": temperature, "top_k": None, "top_p": None,
            "vocabulary": f"all {gen.model.config.vq_config.num_embeddings} image codes (multinomial, no top-k)",
            "unconditional_rows": "BOS and <begin_of_image> kept, every other prompt token = pad (attended)",
            "image_tokens": gen.num_image_tokens, "grid": [gen.grid, gen.grid], "image_size": gen.image_size,
            "per_prompt": per_prompt, "seed": seed, "seed_rule": J.SEED_RULE,
            "png": "official: clip((x + 1) / 2 * 255, 0, 255) in float32, truncated to uint8",
            "reference": "deepseek-ai/Janus generation_inference.py",
        },
        "dtype": dtype, "device_type": dev.type,
        "prompts": {"source": str(prompts), "count": len(plist), "sha256": _prompts_digest(plist)},
        "tokenizer": {"family": "llamagen-vq", "weights": gen.info["weights"], "config": gen.vq_config(),
                      "resolution": gen.image_size},
        "layout": "GenEval: <00000>/metadata.jsonl, <00000>/samples/<0000>.png; codes: <00000>/codes.npy int32 (N, T)",
    }  # fmt: skip
    path = out / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if _identity(old) != _identity(manifest):
            raise TokbenchError(
                f"{out} holds images made with other settings ({path}); use another --out, or the same "
                f"settings to resume. Recorded: {json.dumps(_identity(old))}"
            )
        manifest["decode_check"] = old.get("decode_check", {})
        manifest["runs"] = old.get("runs", [])
    out.mkdir(parents=True, exist_ok=True)
    manifest.update(packages=J.environment_versions(), git_revision=git_revision(),
                    device=str(dev), device_name=J.device_name(dev))  # fmt: skip
    check = manifest.setdefault("decode_check", {})
    check.setdefault("max_abs_diff", 0.0)
    check.setdefault("images", 0)
    check.update(what="max |tokbench llamagen-vq decode_code(ids) - model.decode_image_tokens(ids)| on [-1, 1]",
                 tolerance=DECODE_TOLERANCE.get(dtype), enabled=decode_check)  # fmt: skip
    write_json(path, manifest)

    remove_stale_temporaries(out)
    for i, p in enumerate(plist):
        write_metadata(out, i, prompt_metadata(p))
    todo = [(i, k) for i, k in iter_units(len(plist), per_prompt) if not sample_done(out, i, k, per_prompt)]
    tok = J.vq_tokenizer(gen) if decode_check and todo else None
    ids_cache: dict[int, list[int]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="img")
    started, n_done = time.perf_counter(), 0
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompt_ids = [ids_cache.setdefault(i, gen.prompt_ids(plist[i].prompt)) for i, _ in batch]
            gens = J.row_generators(gen.device, [J.sample_seed(seed, i, k) for i, k in batch])
            ids = J.sample_image_tokens(gen, prompt_ids, gens, cfg_weight=cfg_weight, temperature=temperature)
            decoded = J.decode_pixels(gen, ids)
            if tok is not None:
                diff = J.decode_difference(gen, tok, ids, decoded)
                check["max_abs_diff"] = max(check["max_abs_diff"], diff)
                check["images"] += len(batch)
            images = J.to_uint8(decoded)
            codes = ids.cpu().numpy()
            for row, (i, k) in enumerate(batch):
                write_sample(out, i, k, images[row], codes[row])
            for i in sorted({i for i, _ in batch}):
                finish_prompt(out, i, per_prompt)
            n_done += len(batch)
            if bar is not None:
                bar.update(len(batch))
            write_json(path, manifest)  # the decode check so far survives a kill
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    incomplete = [i for i in range(len(plist)) if not finish_prompt(out, i, per_prompt)]
    if n_done:
        manifest.setdefault("runs", []).append({
            "images": n_done, "seconds": round(seconds, 3), "batch_size": batch_size, "device": str(dev),
            "images_per_s": n_done / seconds if seconds else None,
            "tokens_per_s": n_done * gen.num_image_tokens / seconds if seconds else None,
            "note": "sampling + decoding + PNG writing, wall clock; the first batch includes warm-up"})  # fmt: skip
    manifest["complete"] = not incomplete
    if tok is not None and check["tolerance"] is not None:
        # Recorded, not raised: the images are written either way; the CLI exits non-zero on a failure.
        check["passed"] = check["max_abs_diff"] <= check["tolerance"]
    write_json(path, manifest)
    return manifest
