"""CLIP-score equals torchmetrics' formula on the same embeddings; the open_clip path equals open_clip's own."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchmetrics.functional.multimodal.clip_score import _clip_score_update

from tokbench.core import TokbenchError, Tokens
from tokbench.metrics import EvalBatch, build_metric
from tokbench.metrics.clip_score import CLIPScore
from tokbench.weights import WeightsUnavailable

D = 8
CAPTIONS = ["a red bus", "two cats on a sofa", "a bowl of soup", "mountains at dawn", "a tiny robot", "surf"]


class FakeEncoder:
    """Images -> a fixed random projection of their pooled pixels; captions -> a fixed table row."""

    name = "fake"

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(12, D, generator=g, dtype=torch.float64)
        self.table = {c: torch.randn(D, generator=g, dtype=torch.float64) for c in CAPTIONS}

    def encode_image(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.double(), 2).flatten(1) @ self.proj - 0.5

    def encode_text(self, texts):
        return torch.stack([self.table[t] for t in texts])


class HFStandIn:
    """The CLIP model / processor interface torchmetrics calls, answering with FakeEncoder's embeddings."""

    def __init__(self, enc):
        self.enc, self.config = enc, SimpleNamespace()

    def to(self, device):
        return self

    def __call__(self, text=None, images=None, **kw):  # the processor
        if images is not None:
            return {"pixel_values": torch.stack(images)}
        ids = torch.tensor([[CAPTIONS.index(t)] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def get_image_features(self, pixel_values):
        return self.enc.encode_image(pixel_values)

    def get_text_features(self, input_ids, attention_mask):
        return torch.stack([self.enc.table[CAPTIONS[i]] for i in input_ids[:, 0].tolist()])


def _batch(images, captions, recon=None):
    return EvalBatch(originals=images, reconstructions=recon if recon is not None else images.flip(-1),
                     tokens=Tokens(ids=torch.zeros(len(images), 1, dtype=torch.long)), tokenizer=None,
                     index=torch.arange(len(images)), captions=captions)  # fmt: skip


def test_clip_score_equals_torchmetrics_formula():
    enc = FakeEncoder()
    metric = build_metric("clip_score", encoder=enc)
    g = torch.Generator().manual_seed(1)
    all_scores = []
    for captions in (CAPTIONS[:4], CAPTIONS[2:]):
        images = torch.rand(len(captions), 3, 16, 16, generator=g)
        batch = _batch(images, captions)
        metric.update(batch)
        tm_scores, n = _clip_score_update(list(batch.reconstructions), captions, HFStandIn(enc), HFStandIn(enc))
        assert n == len(captions)
        assert torch.allclose(metric.last_rows["clip_score"], tm_scores.double().clamp_min(0), rtol=1e-9)
        all_scores.append(tm_scores.double())
    scores = torch.cat(all_scores)
    assert (scores < 0).any() and (scores > 0).any()  # both sides of the clamp are exercised
    out = metric.compute()
    assert out["clip_score"] == pytest.approx(float(scores.clamp_min(0).mean()), rel=1e-9)
    # what torchmetrics.multimodal.CLIPScore.compute returns: the clamp on the mean
    assert out["clip_score_torchmetrics"] == pytest.approx(max(float(scores.mean()), 0.0), rel=1e-9, abs=1e-12)
    assert out["clip_score_images"] == 8


def test_no_captions_is_a_skip_reason_not_a_crash():
    metric = CLIPScore(encoder=FakeEncoder())
    with pytest.raises(TokbenchError, match="needs captions, and this data set has none"):
        metric.update(_batch(torch.rand(2, 3, 8, 8), None))
    with pytest.raises(TokbenchError, match="needs captions"):
        metric.update(_batch(torch.rand(2, 3, 8, 8), [None, ""]))


def test_images_without_a_caption_are_left_out():
    enc = FakeEncoder()
    metric = CLIPScore(encoder=enc, images="originals")
    images = torch.rand(3, 3, 16, 16)
    metric.update(_batch(images, ["a red bus", None, "surf"]))
    rows = metric.last_rows["clip_score"]
    assert torch.isnan(rows[1]) and not torch.isnan(rows[[0, 2]]).any()
    kept = images[[0, 2]]  # the originals are scored, not the (flipped) reconstructions
    tm, _ = _clip_score_update(list(kept), ["a red bus", "surf"], HFStandIn(enc), HFStandIn(enc))
    assert torch.allclose(rows[[0, 2]], tm.double().clamp_min(0))
    assert metric.compute()["clip_score_images"] == 2 and not metric.needs_decode
    with pytest.raises(TokbenchError, match="reconstructions, originals or generated"):
        CLIPScore(encoder=enc, images="pixels")


def test_default_model_offline_says_how_to_fetch():
    with pytest.raises(WeightsUnavailable) as e:
        build_metric("clip_score")
    msg = str(e.value)
    assert "tokbench fetch clip-vit-l-14-openai" in msg and "timm/vit_large_patch14_clip_224.openai" in msg


def test_openclip_encoder_equals_open_clip_loading_its_own_checkpoint(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
           "patch_size": 8}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
           "layers": 1}}  # fmt: skip
    (tmp_path / "tokbench-test-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "tokbench-test-tiny-clip.json")
    torch.manual_seed(0)
    net = open_clip.create_model("tokbench-test-tiny-clip", pretrained=None)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))

    ref, _, preprocess = open_clip.create_model_and_transforms("tokbench-test-tiny-clip",
                                                               pretrained=str(tmp_path / "w.safetensors"))  # fmt: skip
    ref.eval()
    tokenizer = open_clip.get_tokenizer("tokbench-test-tiny-clip")
    metric = CLIPScore(model="tokbench-test-tiny-clip", pretrained="none", weights=tmp_path / "w.safetensors",
                       images="originals")  # fmt: skip
    ours = metric._encoder[0]

    from torchvision.transforms.functional import to_pil_image

    u8 = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    images = u8.float() / 255
    captions = ["a red bus", "two cats on a sofa"]
    with torch.no_grad():
        ref_img = ref.encode_image(torch.stack([preprocess(to_pil_image(im)) for im in u8]))
        ref_txt = ref.encode_text(tokenizer(captions))
        assert torch.allclose(ours.encode_image(images), ref_img, atol=1e-5)
        assert torch.allclose(ours.encode_text(captions), ref_txt, atol=1e-5)
        metric.update(_batch(images, captions))
    cos = torch.nn.functional.cosine_similarity(ref_img.double(), ref_txt.double())
    assert torch.allclose(metric.last_rows["clip_score"], (100 * cos).clamp_min(0), atol=1e-4)
    assert "tokbench-test-tiny-clip" in metric.protocol()["clip_score"]


# A SigLIP release as open_clip's pretrained table describes it (INCEPTION mean/std, `squash` resize).
SIGLIP_RELEASE = {"hf_hub": "nobody/tokbench-tiny-siglip/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                  "interpolation": "bicubic", "resize_mode": "squash"}  # fmt: skip


def test_siglip_model_gets_its_release_preprocessing(tmp_path, monkeypatch):
    """A SigLIP pair chosen for clip_score is run with mean/std 0.5 and a squash resize of the whole image,
    not OpenAI CLIP's mean/std and short-side resize + centre crop."""
    import open_clip
    from PIL import Image
    from safetensors.torch import save_file

    from tokbench.metrics import encoders

    # the real releases carry exactly this preprocessing in open_clip's table
    real = encoders.open_clip_spec("ViT-B-16-SigLIP", "webli")
    assert real.weights.name == "openclip-ViT-B-16-SigLIP-webli" and real.weights.repo_id == "timm/ViT-B-16-SigLIP"
    assert real.tokenizer is not None and real.tokenizer.name == "openclip-ViT-B-16-SigLIP-webli-tokenizer"
    pre = encoders.pretrained_preprocess(real)
    assert pre["mean"] == (0.5, 0.5, 0.5) and pre["std"] == (0.5, 0.5, 0.5) and pre["resize_mode"] == "squash"
    assert encoders.open_clip_spec("ViT-L-16-SigLIP-384", "webli") is encoders.ENCODERS["ViT-L-16-SigLIP-384"]

    # a tiny model registered with a SigLIP-style release, its weights where the resolver looks
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
           "patch_size": 8}, "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
           "layers": 1}}  # fmt: skip
    (tmp_path / "tokbench-test-tiny-siglip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "tokbench-test-tiny-siglip.json")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tokbench-test-tiny-siglip", {"webli": SIGLIP_RELEASE})
    torch.manual_seed(0)
    net = open_clip.create_model("tokbench-test-tiny-siglip", pretrained=None).eval()
    folder = tmp_path / "weights" / "openclip-tokbench-test-tiny-siglip-webli"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "weights"))

    metric = build_metric("clip_score", model="tokbench-test-tiny-siglip", pretrained="webli", images="originals")
    enc = metric._encoder[0]
    assert tuple(enc.preprocess["mean"]) == (0.5, 0.5, 0.5) and tuple(enc.preprocess["std"]) == (0.5, 0.5, 0.5)
    assert enc.preprocess["resize_mode"] == "squash"
    assert "squash" in metric.protocol()["clip_score"] and "(0.5, 0.5, 0.5)" in metric.protocol()["clip_score"]

    # the reference: the whole (non-square) uint8 image resized to 32 x 32 bicubic by PIL, then (x - 0.5) / 0.5
    u8 = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ref_in = []
    for im in u8:
        small = Image.fromarray(im.permute(1, 2, 0).numpy()).resize((32, 32), Image.BICUBIC)
        ref_in.append(torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).float() / 255)
    with torch.no_grad():
        ref = net.encode_image((torch.stack(ref_in) - 0.5) / 0.5)
    torch.testing.assert_close(enc.encode_image(u8.float() / 255), ref, atol=1e-5, rtol=0)


def test_open_clip_pairs_without_a_release_say_what_to_do():
    with pytest.raises(TokbenchError, match="no Hugging Face release of model 'ViT-B-32' with pretrained 'mine'"):
        build_metric("clip_score", model="ViT-B-32", pretrained="mine")
    with pytest.raises(TokbenchError, match="open_clip has no model config 'ViT-Q-99'"):
        build_metric("clip_score", model="ViT-Q-99")
