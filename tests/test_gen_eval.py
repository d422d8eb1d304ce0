"""`tokbench gen-eval`: CLIP-score conventions against open_clip's own pipeline and torchmetrics' formula,
re-tokenisation against a hand-written official quantiser, FID against scipy, input matching and counting."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tokbench.core import TokbenchError
from tokbench.generation.evaluate import CONVENTIONS, bootstrap_ci, collect_inputs, run_gen_eval
from tokbench.generation.generate import run_generate

sys.path.insert(0, str(Path(__file__).parent))
import janus_tiny  # noqa: E402
from tiny_open_clip import save_tiny_clip  # noqa: E402

TORCH_THREADS = 1
PROMPTS = ["a red cat", "two dogs on the left of a green car", "a sign says hello", "the house"]
TINY_CLIP = "tokbench-gen-tiny-clip"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_eval")
    janus_tiny.save_transformers(root / "ckpt")
    prompts = root / "prompts.jsonl"
    cats = ["single_object", "counting", "text", "scene"]
    prompts.write_text("".join(json.dumps({"prompt": t, "category": c}) + "\n" for t, c in zip(PROMPTS, cats)))
    run_generate(str(root / "ckpt"), root / "out", prompts=str(prompts), per_prompt=3, seed=1, batch_size=6,
                 dtype="float32", device="cpu", progress=False)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random-weight open_clip model: tokbench's encoder for it, and open_clip's own model + transform."""
    import open_clip

    from tokbench.metrics.encoders import load_encoder, open_clip_spec

    d = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_clip(d, TINY_CLIP)
    ours = load_encoder(open_clip_spec(TINY_CLIP, "none"), d / "w.safetensors")
    ref, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(d / "w.safetensors"))
    return SimpleNamespace(ours=ours, ref=ref.eval(), preprocess=preprocess, tokenizer=open_clip.get_tokenizer(TINY_CLIP))


def _ref_embeddings(tc, paths, texts):
    with torch.no_grad():
        img = tc.ref.encode_image(torch.stack([tc.preprocess(Image.open(p).convert("RGB")) for p in paths]))
        txt = tc.ref.encode_text(tc.tokenizer(texts))
    return img.double(), txt.double()


class HFStandIn:
    """The CLIP model/processor interface torchmetrics' functional clip_score calls, answering with given embeddings."""

    def __init__(self, img, txt, texts):
        self.img, self.txt, self.texts, self.config = img, txt, texts, SimpleNamespace()

    def to(self, device):
        return self

    def __call__(self, text=None, images=None, **kw):
        if images is not None:
            return {"pixel_values": torch.stack(images)}
        ids = torch.tensor([[self.texts.index(t)] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def get_image_features(self, pixel_values):
        return self.img[pixel_values[:, 0, 0, 0].long()]

    def get_text_features(self, input_ids, attention_mask):
        return self.txt[input_ids[:, 0]]


def test_generate_then_gen_eval_full_path(generated, tiny_clip):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    out = generated / "out"
    encoders = {"ViT-L-14/openai": tiny_clip.ours, "ViT-B-32/openai": tiny_clip.ours}
    r = run_gen_eval(out, clip=["torchmetrics", "hessel"], encoders=encoders, device="cpu", progress=False)
    assert r["counts"] == {"prompts": 4, "images_scored": 12, "missing": 0, "extra": 0, "unreadable": 0}
    rows = [json.loads(x) for x in (out / "gen_eval" / "rows.jsonl").read_text().splitlines()]
    tm_key, hs_key = CONVENTIONS["torchmetrics"].key, CONVENTIONS["hessel"].key
    assert tm_key == "clip_score_x100_vit_l_14_openai" and hs_key == "clip_s_hessel_w2.5_vit_b_32_openai"
    paths = [out / row["image"] for row in rows]
    prompts = [PROMPTS[int(row["id"])] for row in rows]
    img, txt = _ref_embeddings(tiny_clip, paths, prompts)
    # torchmetrics' formula on open_clip's own embeddings: 100 * cos, clamped at 0 per image
    texts = sorted(set(prompts))
    tstand = HFStandIn(img, torch.stack([txt[prompts.index(t)] for t in texts]), texts)
    marker = [torch.full((3, 2, 2), float(i)) for i in range(len(rows))]
    tm, _ = _clip_score_update(marker, prompts, tstand, tstand)
    ours = torch.tensor([row[tm_key] for row in rows], dtype=torch.float64)
    assert torch.allclose(ours, tm.double().clamp_min(0), atol=1e-3)
    _, txt_h = _ref_embeddings(tiny_clip, paths, ["A photo depicts " + p for p in prompts])
    hessel = 2.5 * torch.nn.functional.cosine_similarity(img, txt_h).clamp_min(0)
    assert torch.allclose(torch.tensor([row[hs_key] for row in rows], dtype=torch.float64), hessel, atol=1e-4)
    s = r["summary"]
    assert s[tm_key] == pytest.approx(float(ours.mean()))
    lo, hi = s[f"{tm_key}_ci95"]
    assert lo <= s[tm_key] <= hi
    per_prompt = json.loads((out / "gen_eval" / "per_prompt.json").read_text())
    for p in per_prompt:  # diversity: mean pairwise 1 - cos of the image embeddings
        e = torch.nn.functional.normalize(img[[i for i, row in enumerate(rows) if row["id"] == p["id"]]], dim=-1)
        sims = (e @ e.T).numpy()
        assert p["diversity"] == pytest.approx(np.mean([1 - sims[i, j] for i in range(3) for j in range(i + 1, 3)]), abs=1e-4)
    assert s["diversity"] == pytest.approx(np.mean([p["diversity"] for p in per_prompt]))  # the mean over prompts
    assert set(s[f"{tm_key}_by_category"]) == {"single_object", "counting", "text", "scene"}
    _check_retokenisation(generated, rows, s)
    report = (out / "gen_eval" / "report.md").read_text()
    assert "Per category" in report and tm_key in report and "Hessel" in report
    assert (out / "gen_eval" / "grid.png").is_file() and (out / "gen_eval" / "per_prompt.csv").is_file()
    # the report is rebuilt, the same, from the files gen-eval wrote
    from tokbench.generation.report import rebuild_report

    written = {name: (out / "gen_eval" / name).read_bytes() for name in ("report.md", "index.html", "summary.csv")}
    for name in written:
        (out / "gen_eval" / name).unlink()
    rebuild_report(out / "gen_eval")
    assert {name: (out / "gen_eval" / name).read_bytes() for name in written} == written


def _check_retokenisation(generated, rows, summary):
    """Re-tokenisation against transformers' Janus VQ encoder + the official l2-normalised nearest code."""
    from skimage.metrics import peak_signal_noise_ratio
    from transformers import JanusForConditionalGeneration

    model = JanusForConditionalGeneration.from_pretrained(generated / "ckpt").eval()
    vq = model.model.vqmodel
    matches, psnrs = [], []
    for row in rows:
        x = torch.from_numpy(np.array(Image.open(generated / "out" / row["image"]))).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            z = vq.quant_conv(vq.encoder(x[None] * 2 - 1)).permute(0, 2, 3, 1).reshape(-1, 8)
            zn = torch.nn.functional.normalize(z, dim=-1)
            en = torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)
            ids = torch.cdist(zn, en).argmin(-1)
            rec = ((vq.decode(ids[None]) + 1) / 2).clamp(0, 1)[0]
        codes = np.load(generated / "out" / row["id"] / "codes.npy")[int(Path(row["image"]).stem)]
        matches.append(float((ids.numpy() == codes).mean()))
        psnrs.append(peak_signal_noise_ratio(x.numpy(), rec.numpy(), data_range=1.0))
        assert row["retok_id_match"] == pytest.approx(matches[-1])
        assert row["retok_psnr"] == pytest.approx(psnrs[-1], abs=1e-3)
    assert summary["retok_id_match"] == pytest.approx(np.mean(matches))


class FakeEncoder:
    name = "fake"

    def encode_image(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.double(), 2).flatten(1)

    def encode_text(self, texts):
        return torch.stack([torch.full((12,), float(len(t))) for t in texts])


def _write_prompt_files(d: Path, entries: list[tuple[str, str]]) -> dict[str, Path]:
    files = {"jsonl": d / "p.jsonl", "csv": d / "p.csv", "json": d / "coco.json"}
    files["jsonl"].write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in entries))
    with open(files["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt"])
        w.writerows(entries)
    anns = [{"image_id": int(i), "id": n, "caption": t} for n, (i, t) in enumerate(entries)]
    anns.append({"image_id": 0, "id": 99, "caption": "a second caption of image 0 (ignored)"})
    files["json"].write_text(json.dumps({"annotations": anns}))
    files["txt"] = d / "p.txt"
    files["txt"].write_text("\n".join(t for _, t in entries) + "\n")
    files["geneval"] = d / "evaluation_metadata.jsonl"
    files["geneval"].write_text("".join(json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                                                    "prompt": t}) + "\n" for _, t in entries))  # fmt: skip
    return files


def test_flat_folder_matching_and_counting(tmp_path, generated):
    src = sorted((generated / "out").glob("*/samples/*.png"))
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(src[0], flat / "00000_0.png")
    shutil.copy(src[1], flat / "00000_1.png")
    shutil.copy(src[2], flat / "1.png")  # matches id 00001 as an integer
    shutil.copy(src[3], flat / "00002_0.png")
    (flat / "00002_1.png").write_bytes(b"not a png")  # unreadable
    shutil.copy(src[4], flat / "zzz.png")  # extra: no such prompt
    entries = [(f"{i:05d}", t) for i, t in enumerate(PROMPTS)]  # 00003 has no image: missing
    files = _write_prompt_files(tmp_path, entries)
    for fmt, path in files.items():
        inputs = collect_inputs(flat, path)
        assert [e.id for e in inputs.entries][:2] in (["00000", "00001"], ["0", "1"]), fmt
        assert len(inputs.missing) == 1 and inputs.extra == ["zzz.png"], fmt
        r = run_gen_eval(flat, prompts=path, out=tmp_path / f"eval_{fmt}", clip=["vitb32"],
                         encoders={"ViT-B-32/openai": FakeEncoder()}, device="cpu", progress=False)  # fmt: skip
        c = r["counts"]
        assert (c["prompts"], c["images_scored"], c["missing"], c["extra"], c["unreadable"]) == (4, 4, 1, 1, 1), fmt
        assert "00002_1.png" in r["unreadable"][0] and "retok_id_match" not in r["summary"]
    assert collect_inputs(flat, files["geneval"]).entries[0].category == "single_object"
    with pytest.raises(TokbenchError, match="pass --prompts"):
        collect_inputs(flat)
    with pytest.raises(TokbenchError, match="unknown CLIP-score convention"):
        run_gen_eval(flat, prompts=files["txt"], clip=["clip-vit-h"], progress=False)


def test_geneval_layout_counts_missing_samples(tmp_path, generated):
    out = tmp_path / "partial"
    shutil.copytree(generated / "out", out)
    (out / "00001" / "samples" / "0002.png").unlink()
    shutil.rmtree(out / "00003" / "samples")
    shutil.copy(out / "00000" / "samples" / "0000.png", out / "00000" / "samples" / "0007.png")
    inputs = collect_inputs(out)
    assert inputs.missing == ["00001: 2 of 3 images", "00003: no images"]
    assert inputs.extra == ["00000/samples/0007.png"] and len(inputs.entries[0].images) == 3


def test_fid_against_reference_folder_equals_scipy(tmp_path, generated):
    from scipy import linalg

    def extractor(x):
        return torch.nn.functional.adaptive_avg_pool2d(x.double(), 2).flatten(1)

    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    refs = []
    for i in range(20):
        a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(a).save(ref / f"{i}.png")
        refs.append(a)
    r = run_gen_eval(generated / "out", out=tmp_path / "e", clip=[], ref=ref, fid_extractor=extractor,
                     retokenize=False, device="cpu", progress=False)  # fmt: skip

    def feats(arrays):
        return np.stack([extractor(torch.from_numpy(a).permute(2, 0, 1)[None] / 255.0)[0].numpy() for a in arrays])

    gen = feats([np.asarray(Image.open(p)) for p in sorted((generated / "out").glob("*/samples/*.png"))])
    f1, f2 = gen, feats(refs)
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert r["summary"]["fid"] == pytest.approx(expected, rel=1e-4)
    assert r["summary"]["fid_images"] == 12 and r["summary"]["fid_reference_images"] == 20
    again = run_gen_eval(generated / "out", out=tmp_path / "e2", clip=[], ref_stats=tmp_path / "e" / "ref_stats_custom.npz",
                         fid_extractor=extractor, retokenize=False, device="cpu", progress=False)  # fmt: skip
    assert again["summary"]["fid"] == pytest.approx(r["summary"]["fid"])
    # the saved statistics are the reference's own (not only consistent with themselves): reusable elsewhere
    saved = np.load(tmp_path / "e" / "ref_stats_custom.npz")
    assert np.allclose(saved["mu"], mu2, atol=1e-9) and np.allclose(saved["sigma"], s2, atol=1e-9) and saved["n"] == 20


def test_bootstrap_interval_resamples_prompts():
    lo, hi = bootstrap_ci([[1.0, 1.0], [3.0], [2.0, 2.0, 2.0]], n_boot=2000)
    assert 1.0 <= lo < 2.0 < hi <= 3.0
    assert bootstrap_ci([[1.0, 1.0], [3.0]], n_boot=100, seed=1) == bootstrap_ci([[1.0, 1.0], [3.0]], n_boot=100, seed=1)
    assert all(np.isnan(bootstrap_ci([[1.0]])))


def test_gen_suite_and_cli_errors(tmp_path, generated, capsys):
    """A suite file runs generate then gen-eval per model; the CLI's offline CLIP skip names the fetch."""
    import yaml

    from tokbench.cli import main

    suite = {"kind": "generation", "name": "tiny", "models": [str(generated / "ckpt")],
             "generate": {"prompts": str(generated / "prompts.jsonl"), "per_prompt": 1, "dtype": "float32",
                          "device": "cpu"}, "gen_eval": {"clip": [], "device": "cpu"}}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "res"), "--quiet"]) == 0  # = gen-suite
    r = json.loads((tmp_path / "res" / "ckpt" / "gen_eval" / "results.json").read_text())
    assert r["counts"]["images_scored"] == 4 and "retok_id_match" in r["summary"]
    # without CLIP weights the rest is computed and written; the skip is listed with the fetch command
    assert main(["gen-eval", "--images", str(generated / "out"), "--out", str(tmp_path / "x"), "--quiet"]) == 0
    assert "tokbench fetch clip-vit-l-14-openai" in capsys.readouterr().out
    shipped = yaml.safe_load((Path(__file__).parent.parent / "benchmarks/generation/janus_pro.yaml").read_text())
    assert shipped["models"] == ["janus-pro-1b", "janus-pro-7b"] and shipped["generate"]["per_prompt"] == 4
