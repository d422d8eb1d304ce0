"""The probes (knn, linear_probe) against independent references, and token features against official outputs.

- `knn` equals a plain-Python implementation of DINO's weighted k-NN formula (eval_knn.py) on hand-made features
  with exact ties, k above the training-set size and top-5 with k < 5.
- `linear_probe` equals scikit-learn's LogisticRegression (lbfgs, the same C) fitted here on the same
  standardised features.
- `features(images, stage)` of each family equals the tensors its golden fixture holds (tests/data/*/io.safetensors,
  made by the official code): `latent`/`quant`, `f`/`fhat`, `encoder_latents`/`quant`, `pre_quant`/`post_quant`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tokbench
from tokbench.core import TokbenchError, Tokenizer, TokenizerSpec, Tokens
from tokbench.data import ImageDataset, ImageRecord, split_counts, with_train_split
from tokbench.distributed import load_states, metric_states, reduce_states
from tokbench.features import default_stage, stage_problem
from tokbench.metrics import EvalBatch, build_metric

DATA = Path(__file__).parent / "data"
TORCH_THREADS = 1  # see conftest._torch_threads


class TableTokenizer(Tokenizer):
    """A stand-in whose `features` looks the images' rows up in a table: feature row i is image i's (N = 1)."""

    feature_stages = ("pre_quant", "post_quant")

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.spec = TokenizerSpec("table", "table", None, 1, 2, 1.0)

    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        rows = images[:, 0, 0, 0].round().long()  # the row number is painted into the image
        sign = 1.0 if stage == "post_quant" else -1.0
        return sign * self.table[rows][:, None, :]


def feed(metric, table: torch.Tensor, labels: list[int], split: list[str], batch: int = 3) -> None:
    """Update `metric` with every row of `table`, in batches, as the runner would."""
    tok = TableTokenizer(table)
    for start in range(0, len(labels), batch):
        rows = list(range(start, min(start + batch, len(labels))))
        images = torch.tensor(rows, dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2).contiguous()
        ev = EvalBatch(originals=images, tokens=Tokens(ids=torch.zeros(len(rows), 1, dtype=torch.long)),
                       tokenizer=tok, index=torch.tensor(rows), labels=torch.tensor([labels[r] for r in rows]),
                       extra={"split": [split[r] for r in rows]})
        metric.update(ev)


# --------------------------------------------------------------------------------------------- k-NN


def dino_knn_reference(train, train_labels, test, k, temperature, num_classes):
    """DINO's eval_knn.knn_classifier written out for one test row at a time, in float64 and plain Python.
    Its ties (which torch.topk / sort leave unspecified) are fixed as tokbench documents them: the earlier
    training row is nearer, the lower class ranks first, and classes without a vote after every voted one."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    train = [unit(v) for v in train]
    top1, top5 = [], []
    for q in test:
        q = unit(q)
        sims = [(sum(a * b for a, b in zip(q, t)), i) for i, t in enumerate(train)]
        nearest = sorted(sims, key=lambda s: (-s[0], s[1]))[:k]
        votes = {}
        for sim, i in nearest:
            votes[train_labels[i]] = votes.get(train_labels[i], 0.0) + math.exp(sim / temperature)
        voted = sorted(votes, key=lambda c: (-votes[c], c))
        ranked = voted + [c for c in range(num_classes) if c not in votes]
        top1.append(ranked[0])
        top5.append(ranked[: min(5, k)])
    return top1, top5


def _knn_case():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(9, 4, generator=g)
    train[4] = train[1]  # an exact tie between training rows of different classes
    train[7] = 2.5 * train[2]  # same direction, same cosine
    train_labels = [0, 1, 2, 3, 0, 1, 2, 0, 3]
    test = torch.randn(6, 4, generator=g)
    test[0] = train[1]  # nearest are two tied rows of classes 1 and 0
    test[1] = -train[3]
    table = torch.cat([train, test])
    labels = train_labels + [1, 3, 0, 2, 1, 0]
    split = ["train"] * 9 + ["eval"] * 6
    # interleave the splits in data-set order, as a stratified split would
    order = [0, 9, 1, 2, 10, 3, 11, 4, 5, 12, 6, 13, 7, 14, 8]
    return table[order], [labels[i] for i in order], [split[i] for i in order]


def test_knn_equals_dino_formula_with_ties_k_above_n_and_top5_below_k5():
    table, labels, split = _knn_case()
    m = build_metric("knn", k=[1, 3, 5, 20])
    feed(m, table, labels, split)
    out = m.compute()
    tr = [i for i, s in enumerate(split) if s == "train"]
    te = [i for i, s in enumerate(split) if s == "eval"]
    for k in (1, 3, 5, 20):
        top1, top5 = dino_knn_reference(table[tr].double().tolist(), [labels[i] for i in tr],
                                        table[te].double().tolist(), min(k, len(tr)), 0.07, 4)
        target = [labels[i] for i in te]
        want1 = 100 * np.mean([p == t for p, t in zip(top1, target)])
        want5 = 100 * np.mean([t in p for p, t in zip(top5, target)])
        assert out[f"knn_top1_k{k}"] == pytest.approx(want1, abs=1e-9), k
        assert out[f"knn_top5_k{k}"] == pytest.approx(want5, abs=1e-9), k
    assert out["knn_k20_effective"] == 9 and "knn_k5_effective" not in out  # clamped and recorded
    assert out["knn_top5_k1"] == out["knn_top1_k1"]  # top-5 counts min(5, k) classes
    assert out["knn_train_images"] == 9 and out["knn_eval_images"] == 6
    assert "k=20 clamped to 9" in m.protocol()["knn"]
    assert set(m.directions(out)) == {k for k in out if "_top" in k}  # counts and clamped k are no score


def test_knn_tie_goes_to_the_earlier_training_image():
    # two training images identical to the query, classes 1 (earlier) and 0: k = 1 must pick class 1
    table = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = build_metric("knn", k=[1])
    feed(m, table, [1, 0, 1, 0], ["train", "train", "eval", "train"])
    assert m.compute()["knn_top1_k1"] == 100.0
    m = build_metric("knn", k=[1])
    feed(m, table, [0, 1, 1, 0], ["train", "train", "eval", "train"])
    assert m.compute()["knn_top1_k1"] == 0.0


def test_probe_states_gather_in_data_set_order_whatever_the_rank_parts():
    table, labels, split = _knn_case()
    whole = build_metric("knn", k=[3])
    feed(whole, table, labels, split)
    parts = []
    for lo, hi in ((8, 15), (0, 8)):  # rank 1's part merged before rank 0's
        m = build_metric("knn", k=[3])
        tok = TableTokenizer(table)
        rows = list(range(lo, hi))
        images = torch.tensor(rows, dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2).contiguous()
        m.update(EvalBatch(originals=images, tokens=Tokens(ids=torch.zeros(len(rows), 1, dtype=torch.long)),
                           tokenizer=tok, index=torch.tensor(rows), labels=torch.tensor([labels[r] for r in rows]),
                           extra={"split": [split[r] for r in rows]}))
        parts.append(metric_states(m))
    merged = build_metric("knn", k=[3])
    load_states(merged, reduce_states(merged, parts))
    assert merged.compute() == whole.compute()


def test_stage_option_suffixes_keys_and_reads_that_stage():
    table, labels, split = _knn_case()
    m = build_metric("knn", k=[1], features="pre_quant")
    feed(m, table, labels, split)
    out = m.compute()
    assert set(out) == {"knn_top1_k1_pre_quant", "knn_top5_k1_pre_quant", "knn_train_images_pre_quant",
                        "knn_eval_images_pre_quant"}
    assert "'pre_quant'" in m.protocol()["knn_pre_quant"]
    with pytest.raises(TokbenchError, match="features must be one of"):
        build_metric("knn", features="latent")


def test_missing_split_and_codecs_are_clear():
    tok = TableTokenizer(torch.eye(3))
    ev = EvalBatch(originals=torch.zeros(1, 3, 2, 2), tokens=Tokens(ids=torch.zeros(1, 1, dtype=torch.long)),
                   tokenizer=tok, index=torch.tensor([0]), labels=torch.tensor([0]))
    with pytest.raises(TokbenchError, match="needs a training split"):
        build_metric("knn").update(ev)
    jpeg = tokbench.load_tokenizer("jpeg-q40")
    assert "no learned encoder features" in stage_problem(jpeg, None)
    assert build_metric("linear_probe").unavailable_for(jpeg)
    assert build_metric("knn", features="semantic").unavailable_for(tok) == (
        "table has feature stages pre_quant, post_quant; it has no 'semantic' stage")
    assert default_stage(tok) == "post_quant"


# ------------------------------------------------------------------------------------------ linear probe


def _blobs(n_per_class: int, overlap: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 6)) * 3
    x, y = [], []
    for c in range(4):
        x.append(centres[c] + overlap * rng.normal(size=(n_per_class, 6)) * [1, 10, 0.1, 1, 100, 1])
        y += [c] * n_per_class
    x = np.concatenate(x).astype(np.float32)
    split = ["train" if rng.random() < 0.6 else "eval" for _ in y]
    return torch.from_numpy(x), y, split


@pytest.mark.parametrize("overlap", [0.3, 3.0], ids=["separable", "overlapping"])
def test_linear_probe_equals_sklearn_on_standardised_features(overlap):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y, split = _blobs(40, overlap, seed=1)
    m = build_metric("linear_probe")
    feed(m, x, y, split, batch=16)
    out = m.compute()
    tr = np.array([s == "train" for s in split])
    ya = np.array(y)
    scaler = StandardScaler().fit(x.numpy()[tr].astype(np.float64))
    ref = LogisticRegression(C=out["linear_probe_C"], solver="lbfgs", max_iter=1000)
    ref.fit(scaler.transform(x.numpy()[tr].astype(np.float64)), ya[tr])
    proba = ref.predict_proba(scaler.transform(x.numpy()[~tr].astype(np.float64)))
    top1 = 100 * np.mean(ref.classes_[proba.argmax(1)] == ya[~tr])
    assert out["linear_probe_top1"] == pytest.approx(top1, abs=1e-3)
    if overlap > 1:
        assert 30 < top1 < 100  # the overlapping set is not solved by every C: the choice matters
    assert out["linear_probe_converged"] == 1.0 and out["linear_probe_iterations"] >= 1
    assert "hold-out top-1 per C" in m.protocol()["linear_probe"]
    fixed = build_metric("linear_probe", C=0.01)
    feed(fixed, x, y, split, batch=16)
    assert fixed.compute()["linear_probe_C"] == 0.01


def test_linear_probe_selection_picks_the_best_holdout_c():
    x, y, split = _blobs(30, 3.0, seed=2)
    m = build_metric("linear_probe", refine=0)
    feed(m, x, y, split, batch=50)
    out = m.compute()
    best = max(m.sweep.values())
    assert m.sweep[out["linear_probe_C"]] == best
    tied = [c for c, a in m.sweep.items() if a == best]
    assert out["linear_probe_C"] == min(tied, key=lambda c: (abs(math.log10(c)), c))
    assert sorted(m.sweep) == [10.0**e for e in range(-6, 7, 2)]  # no refinement: CLIP's 7 starting points


# ------------------------------------------------------------------------------------------ data splits


def _labelled(n_per_class: dict[str, int]) -> ImageDataset:
    records, names = [], sorted(n_per_class)
    for c, name in enumerate(names):
        records += [ImageRecord(f"/x/{name}/{i}.png", f"{name}/{i}.png", c) for i in range(n_per_class[name])]
    return ImageDataset("t", "folder:/x", records, names)


def test_stratified_split_is_per_class_seeded_and_keeps_both_sides():
    ds = _labelled({"a": 10, "b": 3, "c": 1, "d": 2})
    one = with_train_split(ds, fraction=0.5, seed=0)
    per = {}
    for r in one.records:
        per.setdefault(r.label, []).append(r.split)
    assert [p.count("train") for p in per.values()] == [5, 2, 1, 1]  # round(0.5 n), within [1, n - 1]; n = 1 trains
    assert [r.path for r in one.records] == [r.path for r in ds.records]  # positions unchanged
    assert with_train_split(ds, fraction=0.5, seed=0).records == one.records
    assert with_train_split(ds, fraction=0.5, seed=1).records != one.records
    assert split_counts(one) == {"train": 9, "eval": 7, "classes": 4}


def test_separate_training_set_is_matched_by_class_name(tmp_path):
    from PIL import Image

    for name, n in (("b", 3), ("z", 2), ("a", 4)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / name / f"{i}.png")
    ds = _labelled({"a": 2, "b": 2})
    out = with_train_split(ds, train=f"folder:{tmp_path}", train_per_class=2)
    trained = [(r.id, r.label) for r in out.records if r.split == "train"]
    assert trained == [("train/a/0.png", 0), ("train/a/1.png", 0), ("train/b/0.png", 1), ("train/b/1.png", 1)]
    assert [r.split for r in out.records[:4]] == ["eval"] * 4  # the evaluation images keep positions 0..3


# -------------------------------------------------------------------------------- features vs official


def _unit(x):
    return (x + 1) / 2


def _grid(x):
    return x.flatten(2).transpose(1, 2)


def _case(name):
    d = DATA
    if name == "llamagen":
        io = load_file(str(d / "llamagen_vq16/io.safetensors"))
        tok = tokbench.load_tokenizer("llamagen-vq", weights=d / "llamagen_vq16/vq_ds16_c2i.pt",
                                      config=d / "llamagen_vq16/config.json")
        return tok, _unit(io["input"]), {"pre_quant": _grid(io["latent"]), "post_quant": _grid(io["quant"])}
    if name == "chameleon":
        io = load_file(str(d / "chameleon_vqgan/io.safetensors"))
        tok = tokbench.load_tokenizer("chameleon-vqgan", weights=d / "chameleon_vqgan/vqgan.ckpt",
                                      config=d / "chameleon_vqgan/config.json")
        return tok, _unit(io["input"]), {"pre_quant": _grid(io["latent"]), "post_quant": _grid(io["quant"])}
    if name == "emu3":
        io = load_file(str(d / "emu3_vq/io.safetensors"))
        tok = tokbench.load_tokenizer("emu3-vq", weights=d / "emu3_vq/model.safetensors", config=d / "emu3_vq/config.json")
        rows = tok.model.quantize.embedding.weight.detach()[io["indices"].flatten(1)]  # the fixture has no quant
        return tok, _unit(io["input"]), {"pre_quant": _grid(io["latent"][:, 0]), "post_quant": rows}
    if name == "ibq":
        io = load_file(str(d / "ibq/io.safetensors"))
        tok = tokbench.load_tokenizer("ibq", weights=d / "ibq/imagenet256_262144.ckpt", config=d / "ibq/config.json")
        return tok, _unit(io["input"]), {"pre_quant": _grid(io["latent"]), "post_quant": _grid(io["quant"])}
    if name == "open_magvit2":
        io = load_file(str(d / "open_magvit2/io.safetensors"))
        tok = tokbench.load_tokenizer("open-magvit2", weights=d / "open_magvit2/imagenet_256_L.ckpt",
                                      config=d / "open_magvit2/config.json")
        return tok, _unit(io["input"]), {"pre_quant": _grid(io["latent"]), "post_quant": _grid(io["quant"])}
    if name == "var":
        io = load_file(str(d / "var_vqvae/io.safetensors"))
        tok = tokbench.load_tokenizer("var-vqvae", weights=d / "var_vqvae/vae_ch32v512z16.pth",
                                      config=d / "var_vqvae/config.json")
        return tok, _unit(io["input"]), {"pre_quant": _grid(io["f"]), "post_quant": _grid(io["fhat"])}
    if name == "titok":
        io = load_file(str(d / "titok/io.safetensors"))
        tok = tokbench.load_tokenizer("titok", weights=d / "titok/model.safetensors", config=d / "titok/config.json")
        return tok, io["input"], {"pre_quant": io["encoder_latents"][:, :, 0].transpose(1, 2),
                                  "post_quant": io["quant"][:, :, 0].transpose(1, 2)}
    if name == "tokenflow":
        io = load_file(str(d / "tokenflow/io.safetensors"))
        tok = tokbench.load_tokenizer("tokenflow", weights=d / "tokenflow/tokenflow_clipb_32k_enhanced.pt",
                                      config=d / "tokenflow/config.json")
        return tok, _unit(io["input"]), {
            "pre_quant": _grid(torch.cat([io["semantic_features"], io["pixel_features"]], 1)),
            "post_quant": _grid(torch.cat([io["quant_semantic"], io["quant_pixel"]], 1)),
            "semantic": _grid(io["quant_semantic"])}
    if name == "unitok":
        io = load_file(str(d / "unitok/io.safetensors"))
        tok = tokbench.load_tokenizer("unitok", weights=d / "unitok/unitok_tokenizer.pth", config=d / "unitok/config.json")
        return tok, _unit(io["input"]), {"pre_quant": io["pre_quant"], "post_quant": io["post_quant"],
                                         "semantic": io["semantic"][:, None]}
    raise AssertionError(name)


@pytest.mark.parametrize("family", ["llamagen", "chameleon", "emu3", "ibq", "open_magvit2", "var", "titok",
                                    "tokenflow", "unitok"])
def test_features_equal_the_official_outputs(family):
    tok, images, ref = _case(family)
    assert set(tok.feature_stages) == set(ref)
    for stage, want in ref.items():
        got = tok.features(images, stage)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=0, msg=f"{family} {stage}")
    assert default_stage(tok) == "post_quant"


def test_continuous_tokenizers_have_one_stage(tmp_path):
    vae = tokbench.load_tokenizer("diffusers-vae", weights=DATA / "diffusers_vae" / "autoencoder_kl", resolution=32)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert vae.feature_stages == ("post_quant",)
    torch.testing.assert_close(vae.features(images), vae.encode(images).features)
    vq = tokbench.load_tokenizer("diffusers-vae", weights=DATA / "diffusers_vae" / "vq_model", resolution=32)
    tokens = vq.encode(images)
    rows = vq.model.quantize.embedding.weight.detach()[tokens.ids]
    torch.testing.assert_close(vq.features(images, "post_quant"), rows)
    with torch.inference_mode():
        latents = vq.model.encode(images * 2 - 1).latents  # diffusers' own encoder output, the quantiser input
    torch.testing.assert_close(vq.features(images, "pre_quant"), _grid(latents))


# ------------------------------------------------------------------------------------------------ retrieval


class LookupEncoder:
    """Image embeddings looked up by the row painted into the image; text embeddings by the caption's text."""

    name = "lookup"

    def __init__(self, images: torch.Tensor, texts: dict[str, torch.Tensor]) -> None:
        self.images, self.texts = images, texts

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.images[images[:, 0, 0, 0].round().long()] * (1 + images[:, 1, 0, 0:1])  # scale: no effect

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self.texts[t] for t in texts])


class TowerTokenizer(TableTokenizer):
    def __init__(self, encoder) -> None:
        super().__init__(torch.eye(2))
        self.encoder = encoder

    def clip_encoder(self):
        return self.encoder


def recall_reference(img, captions, txt_of, k):
    """Recall@K written out with numpy argsort: img (N, E), captions[i] the caption strings of image i."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    texts = [(t, i) for i, caps in enumerate(captions) for t in caps]
    txt = np.stack([txt_of[t] for t, _ in texts])
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    sim = img @ txt.T
    i2t = np.mean([any(texts[j][1] == i for j in np.argsort(-sim[i])[:k]) for i in range(len(img))])
    t2i = np.mean([texts[j][1] in np.argsort(-sim[:, j])[:k] for j in range(len(texts))])
    return 100 * i2t, 100 * t2i


def _retrieval_case():
    g = torch.Generator().manual_seed(3)
    img = torch.randn(7, 5, generator=g, dtype=torch.float64)
    captions = [[f"c{i}a", f"c{i}b"] if i % 3 else [f"c{i}a"] for i in range(7)]
    captions[4] = []  # an image without a caption: left out
    txt = {t: img[i] + 1.5 * torch.randn(5, generator=g, dtype=torch.float64) for i, c in enumerate(captions)
           for t in c}
    return img, captions, txt


def _feed_captions(m, tok, captions, recon_shift=None, batch=3):
    n = len(captions)
    for start in range(0, n, batch):
        rows = list(range(start, min(start + batch, n)))
        images = torch.zeros(len(rows), 3, 2, 2)
        images[:, 0] = torch.tensor(rows, dtype=torch.float32)[:, None, None]
        recon = None
        if recon_shift is not None:
            recon = images.clone()
            recon[:, 0] = torch.tensor([recon_shift[r] for r in rows], dtype=torch.float32)[:, None, None]
        m.update(EvalBatch(originals=images, tokens=Tokens(ids=torch.zeros(len(rows), 1, dtype=torch.long)),
                           tokenizer=tok, index=torch.tensor(rows), reconstructions=recon,
                           captions=["\n".join(captions[r]) for r in rows]))


def test_retrieval_own_towers_equal_the_recall_formula():
    img, captions, txt = _retrieval_case()
    enc = LookupEncoder(img, txt)
    m = build_metric("retrieval")
    assert m.unavailable_for(TableTokenizer(torch.eye(2))).startswith("table has no text tower")
    tok = TowerTokenizer(enc)
    assert m.unavailable_for(tok) is None
    _feed_captions(m, tok, captions)
    out = m.compute()
    kept = [i for i, c in enumerate(captions) if c]
    for k in (1, 5, 10):
        i2t, t2i = recall_reference(img[kept].numpy(), [captions[i] for i in kept], {t: v.numpy() for t, v in txt.items()},
                                    k)
        assert out[f"retrieval_i2t_r{k}"] == pytest.approx(i2t) and out[f"retrieval_t2i_r{k}"] == pytest.approx(t2i)
    assert 0 < out["retrieval_i2t_r1"] < 100 and out["retrieval_images"] == 6 and out["retrieval_captions"] == 9
    assert "left out (1)" in m.protocol()["retrieval"]
    assert set(m.directions(out)) == {k for k in out if k.endswith(("_r1", "_r5", "_r10"))}


def test_retrieval_with_a_named_encoder_scores_the_reconstructions():
    img, captions, txt = _retrieval_case()
    m = build_metric("retrieval", encoder=LookupEncoder(img, txt))
    assert m.needs_decode and m.unavailable_for(TableTokenizer(torch.eye(2))) is None
    swap = {0: 1, 1: 0, 2: 2, 3: 3, 4: 4, 5: 6, 6: 5}  # the "reconstructions" of 0/1 and 5/6 look like each other
    _feed_captions(m, TableTokenizer(torch.eye(2)), captions, recon_shift=swap)
    out = m.compute()
    kept = [i for i, c in enumerate(captions) if c]
    i2t, _ = recall_reference(img[[swap[i] for i in kept]].numpy(), [captions[i] for i in kept],
                              {t: v.numpy() for t, v in txt.items()}, 1)
    assert out["retrieval_lookup_i2t_r1_recon"] == pytest.approx(i2t)
    assert "retrieval_lookup_i2t_r1" in out and out["retrieval_lookup_i2t_r1_recon"] != out["retrieval_lookup_i2t_r1"]


def test_karpathy_split_files_are_read(tmp_path):
    import json as _json

    from PIL import Image

    from tokbench.data import open_dataset

    (tmp_path / "val2014").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / "val2014" / name)
    entries = [{"filepath": "val2014", "filename": "a.jpg", "split": "test",
                "sentences": [{"raw": "A  dog."}, {"raw": "a cat"}]},
               {"filepath": "val2014", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "no"}]}]
    (tmp_path / "dataset_coco.json").write_text(_json.dumps({"images": entries}))
    ds = open_dataset(f"karpathy:{tmp_path / 'dataset_coco.json'}")
    assert [(r.id, r.caption) for r in ds.records] == [("val2014/a.jpg", "A dog.\na cat")]
    from tokbench.data import DataUnavailable

    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataUnavailable, match="not a Karpathy-split caption file"):
        open_dataset(f"karpathy:{tmp_path / 'bad.json'}")


def test_retrieval_states_merge_in_data_set_order():
    img, captions, txt = _retrieval_case()
    tok = TowerTokenizer(LookupEncoder(img, txt))
    whole = build_metric("retrieval")
    _feed_captions(whole, tok, captions)
    parts = []
    for lo, hi in ((3, 7), (0, 3)):  # the later images' part first, as a rank merged before rank 0
        m = build_metric("retrieval")
        sub = [captions[i] if lo <= i < hi else [] for i in range(len(captions))]
        _feed_captions(m, tok, sub)
        parts.append(metric_states(m))
    merged = build_metric("retrieval")
    load_states(merged, reduce_states(merged, parts))
    assert merged.compute() == whole.compute()


def test_every_family_but_the_codecs_has_token_features():
    import importlib
    import pkgutil

    from tokbench import tokenizers
    from tokbench.tokenizers.codecs import CodecTokenizer

    for mod in pkgutil.iter_modules(tokenizers.__path__):
        importlib.import_module(f"tokbench.tokenizers.{mod.name}")

    def leaves(cls):
        subs = cls.__subclasses__()
        return [c for s in subs for c in leaves(s)] if subs else [cls]

    found = [c for c in leaves(Tokenizer) if c.__module__.startswith("tokbench.tokenizers.")]
    assert len(found) >= 17
    lacking = [c.__name__ for c in found if not issubclass(c, CodecTokenizer)
               and not (callable(getattr(c, "features", None)) and hasattr(c, "feature_stages"))]
    assert lacking == []
