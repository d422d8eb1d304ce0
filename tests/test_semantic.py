"""Semantic metrics: zero-shot accuracy and embedding cosine similarity against hand computations, the
classifier against open_clip's own `build_zero_shot_classifier`, named encoders through the weight resolver."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tokbench.core import TokbenchError
from tokbench.metrics import EvalBatch, build_metric, encoders, semantic
from tokbench.weights import Artifact, WeightsUnavailable


class StubEncoder:
    """Deterministic image and text embedders (no weights): images -> fixed projection of 4x4 pooled
    pixels; texts -> sum of seeded per-character vectors. Enough structure for non-trivial rankings."""

    name = "stub"

    def __init__(self, dim: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * 16, dim, generator=g, dtype=torch.float64)
        self.chars = torch.randn(256, dim, generator=g, dtype=torch.float64)
        self.text_calls = 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images.double(), 4).flatten(1)
        return (pooled - 0.5) @ self.proj

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.text_calls += 1
        out = []
        for t in texts:
            idx = torch.tensor([min(ord(c), 255) for c in t])
            w = torch.arange(1, len(t) + 1, dtype=torch.float64)[:, None]  # position-weighted: order matters
            out.append((self.chars[idx] * w.sin()).sum(0))
        return torch.stack(out)


CLASSES = ["apple", "bus", "cat", "dog", "eel", "fox", "gnu"]
TEMPLATES = ["a photo of a {}.", "a blurry {}"]


def labelled_folder(tmp_path, per_class: int = 2, size: int = 16):
    """A tiny ImageNet-style folder (class sub-directories), read back as the runner would: float [0, 1]
    images, labels = index of the sorted folder name."""
    rng = np.random.default_rng(1)
    for c in CLASSES:
        (tmp_path / c).mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    names = sorted(d.name for d in tmp_path.iterdir() if d.is_dir())
    images, labels = [], []
    for li, c in enumerate(names):
        for p in sorted((tmp_path / c).glob("*.png")):
            images.append(torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1) / 255)
            labels.append(li)
    return torch.stack(images).float(), torch.tensor(labels), names


def batch(originals, recon=None, labels=None, names=None, index=None) -> EvalBatch:
    from tokbench.core import Tokens

    b = originals.shape[0]
    return EvalBatch(
        originals=originals,
        tokens=Tokens(features=torch.zeros(b, 1, 1)),
        tokenizer=None,
        index=index if index is not None else torch.arange(b),
        reconstructions=recon,
        labels=labels,
        extra={"class_names": names},
    )


def hand_zero_shot(enc: StubEncoder, images, labels, names, templates):
    """The CLIP recipe written out: per class, normalise each prompt embedding, average, normalise; then
    cosine logits of the normalised image embedding; top-k hits."""
    w = []
    for c in names:
        e = enc.encode_text([t.format(c) for t in templates])
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        w.append(m / m.norm())
    w = torch.stack(w)
    x = enc.encode_image(images)
    x = x / x.norm(dim=-1, keepdim=True)
    order = (x @ w.T).argsort(dim=-1, descending=True)
    top1 = (order[:, 0] == labels).double()
    top5 = (order[:, :5] == labels[:, None]).any(-1).double()
    return top1, top5, order[:, 0]


def test_zeroshot_equals_hand_computation(tmp_path):
    images, labels, names = labelled_folder(tmp_path)
    recon = (images + 0.25 * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    enc = StubEncoder()
    m = build_metric("zeroshot", encoder=enc, templates=TEMPLATES)
    # two batches: the states are running counts
    for sl in (slice(0, 9), slice(9, None)):
        m.update(batch(images[sl], recon[sl], labels[sl], names))
    got = m.compute()

    t1, t5, pred = hand_zero_shot(enc, images, labels, names, TEMPLATES)
    r1, r5, pred_r = hand_zero_shot(enc, recon, labels, names, TEMPLATES)
    assert 0 < t1.mean() < 1 and 0 < t5.mean() < 1  # the fixture is not degenerate
    assert got["zeroshot_stub_top1"] == pytest.approx(100 * t1.mean().item())
    assert got["zeroshot_stub_top5"] == pytest.approx(100 * t5.mean().item())
    assert got["zeroshot_stub_top1_recon"] == pytest.approx(100 * r1.mean().item())
    assert got["zeroshot_stub_top5_recon"] == pytest.approx(100 * r5.mean().item())
    assert got["zeroshot_stub_top1_drop"] == pytest.approx(100 * (t1.mean() - r1.mean()).item())
    assert got["zeroshot_stub_agreement"] == pytest.approx(100 * (pred == pred_r).double().mean().item())
    assert got["zeroshot_stub_images"] == len(images)
    # per-image rows of the last batch
    assert torch.equal(m.last_rows["zeroshot_stub_top1"], t1[9:])
    assert "the data set's class folders" in json.dumps(m.protocol())


def test_zeroshot_without_decoder_scores_originals_only(tmp_path):
    images, labels, names = labelled_folder(tmp_path)
    enc = StubEncoder()
    m = build_metric("zeroshot", encoder=enc, templates=TEMPLATES)
    assert m.needs_decode is False
    m.update(batch(images, None, labels, names))
    got = m.compute()
    t1, t5, _ = hand_zero_shot(enc, images, labels, names, TEMPLATES)
    assert set(got) == {"zeroshot_stub_top1", "zeroshot_stub_top5", "zeroshot_stub_images"}
    assert got["zeroshot_stub_top1"] == pytest.approx(100 * t1.mean().item())
    # unlabelled images and no reconstructions: nothing to measure, a clear error
    with pytest.raises(TokbenchError, match="labelled"):
        m.update(batch(images, None, None, names))


def test_zeroshot_unlabelled_rows_and_wordnet_ids(tmp_path):
    images, labels, names = labelled_folder(tmp_path)
    labels = labels.clone()
    labels[:4] = -1  # the runner's marker for images without a label
    enc = StubEncoder()
    m = build_metric("zeroshot", encoder=enc, templates=TEMPLATES)
    m.update(batch(images, images, labels, names))
    got = m.compute()
    t1, _, _ = hand_zero_shot(enc, images[4:], labels[4:], names, TEMPLATES)
    assert got["zeroshot_stub_top1"] == pytest.approx(100 * t1.mean().item())
    assert got["zeroshot_stub_agreement"] == 100.0  # identical reconstructions, all images counted
    assert torch.isnan(m.last_rows["zeroshot_stub_top1"][:4]).all()
    # 1000 WordNet-id folders are ImageNet: open_clip's class names are used, not the ids
    wnids = [f"n{i:08d}" for i in range(1000)]
    m2 = semantic.ZeroShotAccuracy(encoder=enc, templates=["{}"])
    names2, source = m2._resolve_classnames(batch(images, labels=labels, names=wnids))
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert names2 == list(IMAGENET_CLASSNAMES) and "IMAGENET_CLASSNAMES" in source


def test_zeroshot_label_out_of_range(tmp_path):
    images, labels, names = labelled_folder(tmp_path)
    m = build_metric("zeroshot", encoder=StubEncoder(), classnames=["a", "b"], templates=["{}"])
    with pytest.raises(TokbenchError, match="out of range"):
        m.update(batch(images, None, labels, names))


def test_streaming_states_merge(tmp_path):
    images, labels, names = labelled_folder(tmp_path)
    enc = StubEncoder()
    whole = build_metric("zeroshot", encoder=enc, templates=TEMPLATES)
    whole.update(batch(images, images.flip(-1), labels, names))
    a = build_metric("zeroshot", encoder=enc, templates=TEMPLATES)
    b = build_metric("zeroshot", encoder=enc, templates=TEMPLATES)
    a.update(batch(images[:5], images[:5].flip(-1), labels[:5], names))
    b.update(batch(images[5:], images[5:].flip(-1), labels[5:], names))
    a.merge_state(b)  # what a distributed reduce (sum) does
    assert a.compute() == pytest.approx(whole.compute())
    assert enc.text_calls == 1  # 7 classes fit one text batch; the classifier is cached across metric objects


# --------------------------------------------------------------------------------------------- similarity


def test_semantic_similarity_equals_hand_cosine(tmp_path):
    images, _, _ = labelled_folder(tmp_path)
    recon = (images * 0.7 + 0.1).clamp(0, 1)
    enc = StubEncoder()
    m = build_metric("semantic-similarity", encoder=enc)
    assert m.needs_decode is True
    m.update(batch(images[:6], recon[:6]))
    m.update(batch(images[6:], recon[6:]))
    a, b = enc.encode_image(images), enc.encode_image(recon)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    got = m.compute()
    assert got["semantic_similarity_stub"] == pytest.approx(cos.mean().item(), abs=1e-6)
    assert got["semantic_similarity_stub_std"] == pytest.approx(cos.std(unbiased=False).item(), abs=1e-5)
    torch.testing.assert_close(m.last_rows["semantic_similarity_stub"], cos[6:], atol=1e-6, rtol=0)
    assert 0.2 < cos.mean() < 0.999  # not degenerate


# --------------------------------------------------------------------------------------------- open_clip


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture()
def tiny_clip(tmp_path, monkeypatch):
    """A tiny open_clip CLIP registered as a model config, its random weights in $TOKBENCH_WEIGHTS."""
    import open_clip

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tokbench-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model("tokbench-tiny-clip").eval()
    weights = tmp_path / "weights"
    (weights / "openclip-tiny").mkdir(parents=True)
    torch.save(model.state_dict(), weights / "openclip-tiny" / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(weights))
    spec = encoders.EncoderSpec(
        "tiny",
        "tokbench-tiny-clip",
        "random",
        Artifact(name="openclip-tiny", repo_id="nobody/tiny", filename="open_clip_pytorch_model.bin"),
    )
    monkeypatch.setitem(encoders.ENCODERS, "tiny", spec)
    return model


def test_named_encoder_loads_through_resolver(tiny_clip):
    import open_clip

    m = build_metric("semantic-similarity", encoder="tiny")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = x.flip(-2)
    m.update(batch(x, y))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    q = lambda t: torch.floor(t * 255 + 0.5) / 255  # noqa: E731 - uint8 quantisation, as saved images
    with torch.no_grad():  # the library model called directly on normalised native-size inputs
        a = tiny_clip.encode_image((q(x) - mean) / std, normalize=True)
        b = tiny_clip.encode_image((q(y) - mean) / std, normalize=True)
    torch.testing.assert_close(m.last_rows["semantic_similarity_tiny"].float(), (a * b).sum(-1), atol=1e-5, rtol=0)


def test_classifier_equals_open_clip(tiny_clip):
    import open_clip

    enc = encoders.load_encoder("tiny")
    names = ["tabby cat", "golden retriever", "school bus"]
    _, templates = semantic.templates_for("simple")
    ours = semantic.zero_shot_classifier(enc, names, templates, classes_per_batch=2)
    tokenizer = open_clip.get_tokenizer("tokbench-tiny-clip")
    ref = open_clip.build_zero_shot_classifier(tiny_clip, tokenizer, names, templates, num_classes_per_batch=None)
    torch.testing.assert_close(ours, ref.T, atol=1e-5, rtol=0)


def test_named_encoders_take_their_release_preprocessing():
    siglip = encoders.pretrained_preprocess(encoders.ENCODERS["ViT-L-16-SigLIP-384"])
    assert siglip["mean"] == (0.5, 0.5, 0.5) and siglip["std"] == (0.5, 0.5, 0.5)
    assert siglip["resize_mode"] == "squash" and siglip["interpolation"] == "bicubic"
    openai = encoders.pretrained_preprocess(encoders.ENCODERS["ViT-L-14-openai"])
    assert openai["quick_gelu"] is True and openai["resize_mode"] == "shortest"


def test_offline_named_encoder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailable, match="timm/ViT-L-16-SigLIP-384"):
        build_metric("zeroshot")
    with pytest.raises(TokbenchError, match="unknown semantic encoder"):
        build_metric("semantic-similarity", encoder="ViT-Q-99")


def test_hf_text_tokenizer_files_are_resolved_and_loaded(tmp_path, monkeypatch):
    """SigLIP text towers read tokenizer.json & co. through the resolver (here: TOKBENCH_WEIGHTS)."""
    import json as _json

    from tokenizers import Tokenizer as HFTok
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from tokbench.metrics.encoders import HF_TOKENIZER_FILES, EncoderSpec, hf_tokenizer_loader
    from tokbench.weights import Artifact

    art = Artifact(name="toy-tokenizer", repo_id="o/toy", filename="tokenizer.json")
    folder = tmp_path / "w" / art.name
    folder.mkdir(parents=True)
    tok = HFTok(WordLevel({"<pad>": 0, "<unk>": 1, "a": 2, "photo": 3, "of": 4, "cat": 5}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(_json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "unk_token": "<unk>"}))
    (folder / "special_tokens_map.json").write_text(_json.dumps({"pad_token": "<pad>", "unk_token": "<unk>"}))
    assert {p.name for p in folder.iterdir()} == set(HF_TOKENIZER_FILES)
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))
    spec = EncoderSpec("toy", "toy-model", "none", weights=art, tokenizer=art)
    tokenize = hf_tokenizer_loader(spec, {"context_length": 6})()
    ids = tokenize(["a photo of a cat"])
    assert ids.tolist() == [[2, 3, 4, 2, 5, 0]]  # padded to the context length
