"""`tokbench gen-eval`: score any generator's images against their prompts.

Inputs: a GenEval-layout folder (what `tokbench generate` and GenEval's scripts write), or a flat folder
of `<id>_<k>.png` / `<id>.png` plus a prompts file (formats: `tokbench.generation.prompts`). Missing
prompts, extra and unreadable images are counted and listed, never fatal.

Numbers, each keyed by its protocol:
- CLIP-score per image, per prompt, per category and overall (mean over images) with a 95% percentile
  bootstrap interval that resamples prompts (a prompt's samples are not independent). Conventions
  (`CONVENTIONS`): `torchmetrics` (default; 100 * max(cos, 0), ViT-L/14 OpenAI, as
  torchmetrics' CLIPScore), `vitb32` (100 * max(cos, 0), ViT-B/32 OpenAI, common in papers),
  `hessel` (Hessel et al.'s CLIP-S: 2.5 * max(cos, 0), ViT-B/32, captions prefixed "A photo depicts").
  They differ by 2.5x and by backbone: compare only numbers under the same key.
- Diversity per prompt: mean pairwise 1 - cos between the CLIP image embeddings of its samples.
- FID against a reference folder or cached statistics, under tokbench's FID protocols (`--fid-mode`).
- Re-tokenisation consistency (images with their generated codes): encode each image with the
  tokenizer that made it, report the fraction of generated ids recovered and the PSNR of the re-decode
  against the image.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import TokbenchError
from ..environment import package_versions, resolve_device
from ..runfolder import GEN_PER_PROMPT, GEN_RESULTS, ROWS_FILE, atomic_file, write_json
from .layout import IMAGE_SUFFIXES, PromptEntry, is_geneval_layout, read_geneval_layout
from .prompts import load_prompts


@dataclass(frozen=True)
class Convention:
    """How a CLIP-score is computed: backbone, scale on max(cos, 0), caption prefix, and its result key."""

    name: str
    model: str
    pretrained: str
    scale: float
    prefix: str = ""
    description: str = ""

    @property
    def key(self) -> str:
        backbone = re.sub(r"[^a-z0-9]+", "_", f"{self.model}_{self.pretrained}".lower()).strip("_")
        if self.name == "hessel":
            return f"clip_s_hessel_w2.5_{backbone}"
        return f"clip_score_x{self.scale:g}_{backbone}"


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("torchmetrics", "ViT-L-14", "openai", 100.0,
                   description="torchmetrics CLIPScore convention: per image 100 * max(cos(image, prompt), 0), "
                               "OpenAI CLIP ViT-L/14"),
        Convention("vitb32", "ViT-B-32", "openai", 100.0,
                   description="per image 100 * max(cos(image, prompt), 0), OpenAI CLIP ViT-B/32 (common in papers)"),
        Convention("hessel", "ViT-B-32", "openai", 2.5, prefix="A photo depicts ",
                   description="Hessel et al. 2021 CLIP-S: per image 2.5 * max(cos(image, 'A photo depicts ' + "
                               "prompt), 0), OpenAI CLIP ViT-B/32"),
    )
}  # fmt: skip


def convention(name: str) -> Convention:
    """A named convention, or `custom:MODEL:PRETRAINED` (100 * max(cos, 0) with any open_clip pair)."""
    if name in CONVENTIONS:
        return CONVENTIONS[name]
    if name.startswith("custom:") and name.count(":") == 2:
        _, model, pretrained = name.split(":")
        return Convention(f"custom-{model}-{pretrained}", model, pretrained, 100.0,
                          description=f"per image 100 * max(cos(image, prompt), 0), open_clip {model} ({pretrained})")  # fmt: skip
    raise TokbenchError(f"unknown CLIP-score convention {name!r}; known: {', '.join(CONVENTIONS)}, "
                        "or custom:MODEL:PRETRAINED (an open_clip pair)")  # fmt: skip


def clip_values(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: float) -> np.ndarray:
    """scale * max(cos, 0) of paired rows, float64."""
    a = torch.nn.functional.normalize(image_emb.double(), dim=-1)
    b = torch.nn.functional.normalize(text_emb.double(), dim=-1)
    return (scale * (a * b).sum(-1).clamp_min(0)).cpu().numpy()


def bootstrap_ci(values: Sequence[Sequence[float]], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over all items, resampling the groups (prompts) with replacement."""
    groups = [np.asarray(v, np.float64) for v in values if len(v)]
    if len(groups) < 2:
        return (float("nan"), float("nan"))
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def pairwise_diversity(emb: torch.Tensor) -> float:
    """Mean over pairs i < j of 1 - cos(e_i, e_j); NaN for fewer than two samples."""
    if emb.shape[0] < 2:
        return float("nan")
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    iu = torch.triu_indices(len(e), len(e), 1)
    return float((1 - sim[iu[0], iu[1]]).mean())


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


@dataclass
class EvalInputs:
    layout: str
    entries: list[PromptEntry]
    missing: list[str] = field(default_factory=list)  # prompts (or samples) with no image
    extra: list[str] = field(default_factory=list)  # images matching no prompt
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None


def _match_flat(images: Sequence[Path], ids: Sequence[str]) -> tuple[dict[str, list[Path]], list[Path]]:
    """Assign `<id>_<k>` / `<id>` files to prompt ids (exact, then as integers: `7` matches `00007`)."""
    by_id = {i: i for i in ids}
    by_int = {int(i): i for i in ids if i.isdigit()}
    matched: dict[str, list[Path]] = {i: [] for i in ids}
    extra = []
    for p in images:
        stem = p.stem
        cands = [stem]
        if (m := re.fullmatch(r"(.+)_(\d+)", stem)) is not None:
            cands.append(m.group(1))
        hit = next((by_id[c] for c in cands if c in by_id), None)
        if hit is None:
            hit = next((by_int[int(c)] for c in cands if c.isdigit() and int(c) in by_int), None)
        if hit is None:
            extra.append(p)
        else:
            matched[hit].append(p)
    return matched, extra


def collect_inputs(images: str | Path, prompts: str | Path | None = None) -> EvalInputs:
    root = Path(images).expanduser()
    if not root.is_dir():
        raise TokbenchError(f"--images {str(root)!r} is not a folder")
    manifest = None
    if (root / "manifest.json").is_file():
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except ValueError:
            manifest = None
    if is_geneval_layout(root):
        entries, problems = read_geneval_layout(root)
        out = EvalInputs("geneval", entries, problems=problems, manifest=manifest)
        expected = (manifest or {}).get("sampling", {}).get("per_prompt")
        for e in entries:
            extra = [p for p in e.images if expected and (not p.stem.isdigit() or int(p.stem) >= expected)]
            out.extra += [str(p.relative_to(root)) for p in extra]  # listed, not scored (as in a flat folder)
            e.images = [p for p in e.images if p not in extra]
            if not e.images:
                out.missing.append(f"{e.id}: no images")
            elif expected and len(e.images) < expected:
                out.missing.append(f"{e.id}: {len(e.images)} of {expected} images")
        if prompts is not None:
            out.problems.append("--prompts ignored: a GenEval-layout folder carries its prompts in metadata.jsonl")
        return out
    if prompts is None:
        raise TokbenchError(f"{root} is not in GenEval layout (<00000>/metadata.jsonl); pass --prompts FILE "
                            "(.jsonl, .csv, .txt, GenEval evaluation_metadata.jsonl or COCO captions .json)")  # fmt: skip
    plist = load_prompts(prompts)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    matched, extra = _match_flat(files, [p.id for p in plist])
    entries = [PromptEntry(p.id, p.prompt, p.category, p.metadata, sorted(matched[p.id])) for p in plist]
    return EvalInputs("flat", entries, missing=[f"{e.id}: no images" for e in entries if not e.images],
                      extra=[p.name for p in extra], manifest=manifest)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


def _load_image(path: Path) -> torch.Tensor:
    from ..data import open_image, pil_to_tensor

    img = open_image(path)
    if img.mode == "RGBA":  # generators write opaque images; a stray alpha is dropped, as PIL's RGB convert
        img = img.convert("RGB")
    return pil_to_tensor(img)


def _sample_index(path: Path) -> int | None:
    m = re.search(r"(\d+)$", path.stem)
    return int(m.group(1)) if m else None


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _load_retok_tokenizer(spec: Any, manifest: Mapping[str, Any] | None, device: torch.device) -> tuple[Any, str]:
    """The tokenizer for re-tokenisation: an object, a tokbench variant name, or the manifest's record."""
    if spec is not None and not isinstance(spec, str):
        return spec, getattr(getattr(spec, "spec", None), "name", type(spec).__name__)
    from ..registry import load_tokenizer

    if isinstance(spec, str):
        return load_tokenizer(spec, device=device), spec
    t = (manifest or {}).get("tokenizer")
    if not t:
        raise TokbenchError("no tokenizer for re-tokenisation: pass --tokenizer NAME (the images have codes but "
                            "no manifest saying which tokenizer made them)")  # fmt: skip
    tok = load_tokenizer(t["family"], weights=t["weights"], config=t["config"], resolution=t["resolution"],
                         device=device)  # fmt: skip
    return tok, f"{t['family']} from {t['weights']} (the generator's own VQ, per manifest.json)"


def run_gen_eval(
    images: str | Path,
    prompts: str | Path | None = None,
    out: str | Path | None = None,
    clip: Sequence[str] = ("torchmetrics",),
    encoders: Mapping[str, Any] | None = None,
    ref: str | Path | None = None,
    ref_stats: str | Path | None = None,
    fid_mode: str = "clean",
    fid_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    retokenize: bool | None = None,
    tokenizer: Any = None,
    batch_size: int = 16,
    device: str = "auto",
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a folder of generated images; writes `out` (default IMAGES/gen_eval) and returns the summary.

    `encoders` maps a convention's "MODEL/PRETRAINED" to any object with `encode_image` / `encode_text`
    (instead of open_clip weights); `fid_extractor` replaces the Inception network (tests).
    `retokenize`: None = when the images carry codes; True = required; False = off.
    A network whose weights are not on this machine (a CLIP backbone, Inception, the tokenizer) leaves
    out what needs it, listed in the result's `skipped` with the fetch command; the rest is computed.
    """
    from ..metrics.encoders import describe_encoder, load_encoder, move_encoder, open_clip_spec
    from ..weights import WeightsUnavailable

    inputs = collect_inputs(images, prompts)
    root = Path(images).expanduser()
    out = Path(out) if out else root / "gen_eval"
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    conventions = [convention(c) for c in clip]
    backbones: dict[str, Any] = {}
    missing: dict[str, str] = {}  # backbone -> why its weights could not be had (the fetch command)
    for c in conventions:
        name = f"{c.model}/{c.pretrained}"
        if name not in backbones and name not in missing:
            enc = (encoders or {}).get(name)
            try:
                backbones[name] = enc if enc is not None else load_encoder(open_clip_spec(c.model, c.pretrained))
            except WeightsUnavailable as e:
                missing[name] = str(e)
                continue
            move_encoder(backbones[name], dev)
    # what was left out for want of a network's weights -> why; everything else is computed
    skipped = {c.key: missing[f"{c.model}/{c.pretrained}"] for c in conventions if f"{c.model}/{c.pretrained}" in missing}
    conventions = [c for c in conventions if c.key not in skipped]
    div_backbone = f"{conventions[0].model}/{conventions[0].pretrained}" if conventions else None
    if div_backbone is None and clip:
        skipped["diversity"] = f"needs a CLIP backbone: {next(iter(skipped.values()))}"

    tok, tok_name = None, None
    has_codes = any(e.codes is not None for e in inputs.entries)
    if retokenize or (retokenize is None and has_codes):
        if not has_codes:
            raise TokbenchError("re-tokenisation needs the generated code ids (codes.npy per prompt, as tokbench "
                                "generate writes); these images have none")  # fmt: skip
        try:
            tok, tok_name = _load_retok_tokenizer(tokenizer, inputs.manifest, dev)
        except WeightsUnavailable as e:
            skipped["retokenization"] = str(e)

    fid_state = None
    if ref is not None or ref_stats is not None:
        from ..metrics.fid import canonical_mode, inception_extractor

        fid_mode = canonical_mode(fid_mode)
        try:
            extractor = fid_extractor if fid_extractor is not None else inception_extractor(fid_mode)
            fid_state = _FIDStats(extractor, dev)
        except WeightsUnavailable as e:
            skipped[f"fid ({fid_mode})"] = str(e)

    rows: list[dict[str, Any]] = []
    unreadable: list[str] = []
    per_prompt: list[dict[str, Any]] = []
    total = sum(len(e.images) for e in inputs.entries)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="gen-eval", unit="img")
    for e in inputs.entries:
        imgs, paths = [], []
        for p in e.images:
            try:
                imgs.append(_load_image(p))
                paths.append(p)
            except TokbenchError as err:
                unreadable.append(f"{p.relative_to(root)}: {err}")
        if bar is not None:
            bar.update(len(e.images))
        prow: dict[str, Any] = {"id": e.id, "prompt": e.prompt, "category": e.category, "images": len(imgs)}
        if not imgs:
            per_prompt.append(prow)
            continue
        img_rows = [{"id": e.id, "category": e.category, "image": str(p.relative_to(root))} for p in paths]
        embs: dict[str, torch.Tensor] = {}
        for name, enc in backbones.items():
            embs[name] = _encode_images(enc, imgs, batch_size, dev)
        for c in conventions:
            enc = backbones[f"{c.model}/{c.pretrained}"]
            with torch.inference_mode():
                txt = enc.encode_text([c.prefix + e.prompt]).float()
            vals = clip_values(embs[f"{c.model}/{c.pretrained}"], txt.expand(len(imgs), -1), c.scale)
            for r, v in zip(img_rows, vals):
                r[c.key] = float(v)
            prow[c.key] = float(vals.mean())
        if div_backbone is not None:
            prow["diversity"] = pairwise_diversity(embs[div_backbone])
        if fid_state is not None:
            fid_state.add_images(imgs, batch_size)
        if tok is not None and e.codes is not None:
            _retokenize(tok, e, imgs, paths, img_rows, prow, dev)
        rows += img_rows
        per_prompt.append(prow)
    if bar is not None:
        bar.close()

    summary = _summarise(rows, per_prompt, conventions, n_boot)
    protocols: dict[str, str] = {c.key: f"{c.description}; {describe_encoder(backbones[f'{c.model}/{c.pretrained}'])}; "
                                 f"mean over images, 95% CI: percentile bootstrap over prompts ({n_boot} resamples)"
                                 for c in conventions}  # fmt: skip
    if div_backbone is not None:
        protocols["diversity"] = (f"per prompt, mean over sample pairs of 1 - cos of {div_backbone} CLIP image "
                                  "embeddings; overall = mean over prompts with >= 2 samples")  # fmt: skip
    if fid_state is not None:
        summary.update(fid_state.compute(fid_mode, ref, ref_stats, out, fid_extractor is not None, protocols))
    if tok is not None:
        protocols["retok_id_match"] = (f"fraction of the generated code ids that {tok_name} re-encodes from the saved "
                                       "image (uint8 PNG), mean over images")  # fmt: skip
        protocols["retok_psnr"] = "PSNR (data range 1) of decode(encode(image)) against the image, mean over images"
    result = {
        "kind": "tokbench-gen-eval",
        "images_dir": str(root.resolve()),
        "layout": inputs.layout,
        "prompts_file": str(prompts) if prompts is not None and inputs.layout == "flat" else None,
        "counts": {"prompts": len(inputs.entries), "images_scored": len(rows), "missing": len(inputs.missing),
                   "extra": len(inputs.extra), "unreadable": len(unreadable)},
        "missing": inputs.missing, "extra": inputs.extra, "unreadable": unreadable, "problems": inputs.problems,
        "skipped": skipped, "summary": summary, "protocols": protocols,
        "generation": (inputs.manifest or {}).get("sampling"), "generator": (inputs.manifest or {}).get("model"),
        "packages": package_versions(), "device": str(dev),
    }  # fmt: skip
    write_json(out / GEN_RESULTS, result)
    with atomic_file(out / ROWS_FILE) as f:  # whole or not at all, as results.json
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    write_json(out / GEN_PER_PROMPT, per_prompt)
    from .report import write_gen_report

    write_gen_report(out, result, rows, per_prompt, root)
    return result


def same_size_batches(imgs: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Consecutive images stacked into batches of at most `batch_size` that share one size (a folder may mix sizes)."""
    out, i = [], 0
    while i < len(imgs):
        j = i + 1
        while j < len(imgs) and j - i < batch_size and imgs[j].shape == imgs[i].shape:
            j += 1
        out.append(torch.stack(imgs[i:j]))
        i = j
    return out


def _encode_images(enc: Any, imgs: list[torch.Tensor], batch_size: int, dev: torch.device) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([enc.encode_image(b.to(dev)).float().cpu() for b in same_size_batches(imgs, batch_size)])


def _retokenize(tok: Any, e: PromptEntry, imgs: list[torch.Tensor], paths: list[Path], img_rows: list[dict],
                prow: dict[str, Any], dev: torch.device) -> None:  # fmt: skip
    codes = np.load(e.codes)
    matches, psnrs = [], []
    res = getattr(getattr(tok, "spec", None), "resolution", None)
    for img, p, r in zip(imgs, paths, img_rows):
        k = _sample_index(p)
        if k is None or k >= len(codes):
            r["retok_skipped"] = "no generated codes for this file"
            continue
        if res and tuple(img.shape[-2:]) != (res, res):
            r["retok_skipped"] = f"image is {img.shape[-1]}x{img.shape[-2]}, the tokenizer's resolution is {res}"
            continue
        x = img.unsqueeze(0).to(dev)
        with torch.inference_mode():
            tokens = tok.encode(x)
            rec = tok.decode(tokens).float().cpu()
        ids = tokens.ids.reshape(-1).cpu().numpy()
        gen_ids = codes[k].reshape(-1)
        if ids.shape != gen_ids.shape:
            r["retok_skipped"] = f"{ids.size} re-encoded ids vs {gen_ids.size} generated"
            continue
        r["retok_id_match"] = float((ids == gen_ids).mean())
        r["retok_psnr"] = _psnr(rec[0], img)
        matches.append(r["retok_id_match"])
        psnrs.append(r["retok_psnr"])
    if matches:
        prow["retok_id_match"] = float(np.mean(matches))
        prow["retok_psnr"] = float(np.mean(psnrs))


def _summarise(rows: list[dict], per_prompt: list[dict], conventions: Sequence[Convention], n_boot: int) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for c in conventions:
        vals = [r[c.key] for r in rows if c.key in r]
        if not vals:
            continue
        groups: dict[str, list[float]] = {}
        for r in rows:
            if c.key in r:
                groups.setdefault(r["id"], []).append(r[c.key])
        lo, hi = bootstrap_ci(list(groups.values()), n_boot)
        s[c.key] = float(np.mean(vals))
        s[f"{c.key}_ci95"] = [lo, hi]
        s[f"{c.key}_images"] = len(vals)
        cats: dict[str, list[float]] = {}
        for r in rows:
            if c.key in r:
                cats.setdefault(r["category"] or "(none)", []).append(r[c.key])
        s[f"{c.key}_by_category"] = {k: float(np.mean(v)) for k, v in sorted(cats.items())}
    div = [p["diversity"] for p in per_prompt if isinstance(p.get("diversity"), float) and not math.isnan(p["diversity"])]
    if div:
        s["diversity"] = float(np.mean(div))
    for key in ("retok_id_match", "retok_psnr"):
        vals = [r[key] for r in rows if key in r and math.isfinite(r[key])]
        if vals:
            s[key] = float(np.mean(vals))
            s[f"{key}_images"] = len(vals)
    return s


class _FIDStats:
    """Running float64 sums of generated-image features (and, for a reference folder, of its images)."""

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor], dev: torch.device) -> None:
        self.extractor, self.dev = extractor, dev
        self.sums: dict[str, list] = {}

    def _add(self, name: str, feats: torch.Tensor) -> None:
        f = feats.detach().double().cpu()
        s = self.sums.setdefault(name, [torch.zeros(f.shape[1], dtype=torch.float64),
                                        torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64), 0])  # fmt: skip
        s[0] += f.sum(0)
        s[1] += f.T @ f
        s[2] += f.shape[0]

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        if isinstance(self.extractor, torch.nn.Module):
            self.extractor.to(self.dev)
        with torch.inference_mode():
            return self.extractor(batch.to(self.dev).float())

    def add_images(self, imgs: list[torch.Tensor], batch_size: int, name: str = "gen") -> None:
        for batch in same_size_batches(imgs, batch_size):
            self._add(name, self._features(batch))

    def compute(self, mode: str, ref: Any, ref_stats: Any, out: Path, custom: bool,
                protocols: dict[str, str]) -> dict[str, Any]:  # fmt: skip
        from ..metrics.fid import (
            MODES,
            frechet_distance,
            load_reference_npz,
            moments,
            result_key,
            save_reference_npz,
        )

        key = result_key("fid", mode, custom)
        if "gen" not in self.sums:
            return {key: float("nan")}
        mu, sigma = moments(*self.sums["gen"])
        stored_mode = "custom" if custom else mode
        if ref_stats is not None and Path(ref_stats).is_file():
            refd = load_reference_npz(ref_stats)
            if refd["mode"] is not None and refd["mode"] != stored_mode:
                raise TokbenchError(f"--ref-stats {ref_stats} holds FID mode {refd['mode']!r} statistics, this run "
                                    f"uses {stored_mode!r}; pass --fid-mode {refd['mode']} or other statistics")  # fmt: skip
            mu_r, sigma_r, n_r, where = refd["mu"], refd["sigma"], refd["n"], str(ref_stats)
        elif ref is not None:
            from ..data import list_images

            ref_root = Path(ref).expanduser()
            if not ref_root.is_dir():
                raise TokbenchError(f"--ref {str(ref_root)!r} is not a folder of reference images")
            bad = 0
            batch: list[torch.Tensor] = []
            for p in list_images(ref_root):
                try:
                    batch.append(_load_image(p))
                except TokbenchError:
                    bad += 1
                if len(batch) >= 32:
                    self.add_images(batch, 32, "ref")
                    batch = []
            if batch:
                self.add_images(batch, 32, "ref")
            if "ref" not in self.sums:
                raise TokbenchError(f"--ref {ref_root} holds no readable images")
            mu_r, sigma_r = moments(*self.sums["ref"])
            n_r = int(self.sums["ref"][2])
            target = Path(ref_stats) if ref_stats is not None else out / f"ref_stats_{stored_mode}.npz"
            save_reference_npz(target, mu_r, sigma_r, n_r, stored_mode)
            where = f"{ref_root} ({n_r} images, {bad} unreadable skipped; statistics saved to {target})"
        else:
            raise TokbenchError(f"--ref-stats {ref_stats} does not exist; pass --ref DIR to compute it")
        spec = MODES.get(mode, {})
        protocols[key] = (f"FID of the generated images vs {where}; mode {stored_mode}: {spec.get('resize', '')}; "
                          f"{spec.get('network', 'custom feature extractor')}; clean-fid frechet_distance")  # fmt: skip
        return {key: frechet_distance(mu, sigma, mu_r, sigma_r), f"{key}_images": int(self.sums["gen"][2]),
                f"{key}_reference_images": n_r}  # fmt: skip
