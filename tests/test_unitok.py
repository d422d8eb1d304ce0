"""UniTok against outputs of the official upstream code.

Golden fixture (tests/data/unitok/, see its README): a tiny random-weight checkpoint in the release container
({"args": Args fields, "trainer": {"unitok": state_dict}}), its config (official `Args` fields + the ViTamin
sizes), the inputs, and what the official `models/unitok.py::UniTok` produced: encoder tokens, pre-quant
features, (B, C, N) ids, codes, decoder input, raw and clamped reconstructions, the CLIP embedding, and the
LLaVA encoder's ids / features (other head count); plus `manifest_full.json`, the full-size release's layout.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tokbench
from tokbench.checkpoint import RANDOM_WEIGHTS, CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol
from tokbench.tokenizers.unitok import VARIANTS, UniTokConfig, build_model
from tokbench.weights import WeightsUnavailable

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "unitok"
CKPT = FIXTURE / "unitok_tokenizer.pth"
CONFIG = FIXTURE / "config.json"
TORCH_THREADS = 1  # see conftest._torch_threads


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """Official [-1, 1] output -> the tokbench [0, 1] convention."""
    return ((x + 1) / 2).clamp(0, 1)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer("unitok", weights=CKPT, config=CONFIG)


@pytest.fixture(scope="module")
def images(io) -> torch.Tensor:
    return (io["input"] + 1) / 2


# --- the fixture through load_tokenizer ------------------------------------------------------------


def test_ids_exact_in_b_n_c_layout(tok, io, images):
    tokens = tok.encode(images)
    official = io["indices"]  # (B, C, N)
    assert tokens.ids.dtype == torch.long
    assert tokens.ids.shape == (official.shape[0], official.shape[2], official.shape[1])
    assert torch.equal(tokens.ids, official.transpose(1, 2))
    assert tokens.grid == (4, 4)
    args = json.loads(CONFIG.read_text())["unitok_args"]
    k = args["vocab_size"] // args["num_codebooks"]
    assert tokens.codebook_size == k == tok.spec.codebook_size
    # bits per token sum over the C codebooks
    assert (
        tokens.bits_per_token
        == pytest.approx(args["num_codebooks"] * math.log2(k))
        == tok.spec.bits_per_token
    )
    assert tokens.bits_per_image.tolist() == [16 * args["num_codebooks"] * math.log2(k)] * 2


def test_decode_matches_official_idx_to_img(tok, io):
    out = tok.decode(
        Tokens(ids=io["indices"].transpose(1, 2), grid=(4, 4), codebook_size=tok.spec.codebook_size)
    )
    for ref in ("recon_from_indices", "recon_forward"):
        assert (out - as_unit(io[ref])).abs().max().item() < 1e-4, ref
    assert (out - as_unit(io["recon"])).abs().max().item() < 1e-4  # raw output, clamped as upstream does
    assert out.min() >= 0 and out.max() <= 1


def test_intermediate_tensors_match_official(tok, io):
    m = tok.model
    with torch.no_grad():
        enc = m.encoder(io["input"])
        pre = m.quant_proj(enc)
        quant = m.quantizer.idx_to_f(io["indices"].transpose(1, 2))
        post = m.post_quant_proj(quant)
    for ours, ref in ((enc, "encoder_tokens"), (pre, "pre_quant"), (quant, "quant"), (post, "post_quant")):
        assert ours.shape == io[ref].shape, ref
        assert (ours - io[ref]).abs().max().item() < 1e-4, ref


def test_clip_embedding_matches_encode_image(tok, io, images):
    sem = tok.semantic(images)
    assert (sem["embedding"] - io["semantic"]).abs().max().item() < 1e-4
    assert (sem["embedding_normalized"] - io["semantic_normalized"]).abs().max().item() < 1e-4
    assert (sem["post_quant"] - io["post_quant"]).abs().max().item() < 1e-4
    assert (sem["pre_quant"] - io["pre_quant"]).abs().max().item() < 1e-4
    assert torch.equal(sem["ids"], io["indices"].transpose(1, 2))


def test_llava_head_convention_reproduces_llava_encoder(io, images):
    """The LLaVA eval builds the same projections with num_codebooks heads: other ids, same weights."""
    args = json.loads(CONFIG.read_text())["unitok_args"]
    tok = tokbench.load_tokenizer(
        "unitok",
        weights=CKPT,
        config={**json.loads(CONFIG.read_text()), "projection_heads": args["num_codebooks"]},
    )
    sem = tok.semantic(images)
    assert torch.equal(sem["ids"], io["llava_indices"].transpose(1, 2))
    assert (sem["post_quant"] - io["llava_features"]).abs().max().item() < 1e-4


def test_causal_variant_differs_as_the_readme_says(io, images):
    """Causal attention in the projections (the first release) on the same weights: the fixture README reports
    22/64 ids changed and idx_to_img(indices) moved by up to 0.84."""
    tok = tokbench.load_tokenizer("unitok", weights=CKPT, config={"causal_projection": True})
    ids = tok.encode(images).ids
    assert int((ids != io["indices"].transpose(1, 2)).sum()) == 22
    out = tok.decode(Tokens(ids=io["indices"].transpose(1, 2), grid=(4, 4), codebook_size=1024))
    assert abs((out * 2 - 1 - io["recon_from_indices"]).abs().max().item() - 0.84) < 0.005
    assert "causal" in tok.spec.notes


def test_config_read_from_the_checkpoint_args(io, images):
    """Without a config, the stored `args` (+ custom_vitamin) build the model, as the official loaders do."""
    tok = tokbench.load_tokenizer("unitok", weights=CKPT)
    assert torch.equal(tok.encode(images).ids, io["indices"].transpose(1, 2))


def test_plain_kwargs_config(io, images):
    cfg = json.loads(CONFIG.read_text())
    flat = {**cfg["unitok_args"], "vitamin": cfg["custom_vitamin"]}
    tok = tokbench.load_tokenizer("unitok", weights=CKPT, config=flat)
    assert torch.equal(tok.encode(images).ids, io["indices"].transpose(1, 2))
    # the fixture layout: notes on how it was made are ignored, every Args field is accepted
    args = torch.load(CKPT, map_location="cpu", weights_only=True)["args"]
    nested = {
        **cfg,
        "note": "made by hand",
        "unitok_args": {k: v for k, v in args.items() if k != "custom_vitamin"},
    }
    tok = tokbench.load_tokenizer("unitok", weights=CKPT, config=nested)
    assert torch.equal(tok.encode(images).ids, io["indices"].transpose(1, 2))


def test_preprocessing_protocol_reproduces_official_inputs(io):
    """`unitok` = inference.py's Resize(int(1.125 S)) (bilinear) + CenterCrop(S)."""
    skdata = pytest.importorskip("skimage.data")
    for i, arr in enumerate([skdata.astronaut()[30:330, 90:390], skdata.chelsea()]):
        img = get_protocol("unitok").fn(Image.fromarray(arr), 64)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 * 2 - 1
        assert (x - io["input"][i]).abs().max().item() < 1e-6


# --- errors -----------------------------------------------------------------------------------------


def test_wrong_family_checkpoint_is_named():
    with pytest.raises(CheckpointError, match=r"not a UniTok checkpoint.*\['model'\].*encoder"):
        tokbench.load_tokenizer("unitok", weights=DATA / "llamagen_vq16" / "vq_ds16_c2i.pt")
    with pytest.raises(CheckpointError, match=r"not a UniTok checkpoint.*tensors under \[.*'encoder'"):
        tokbench.load_tokenizer("unitok", weights=DATA / "titok" / "model.safetensors")


def test_strict_loading_and_ignored_extras(tmp_path, io, images):
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    sd = ckpt["trainer"]["unitok"]
    broken = {k: v for k, v in sd.items() if k != "decoder.norm.weight"}
    torch.save({"args": ckpt["args"], "trainer": {"unitok": broken}}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="decoder.norm.weight"):
        tokbench.load_tokenizer("unitok", weights=tmp_path / "missing.pth")
    # the release also holds the discriminator under trainer.disc: ignored, as the official loaders do
    torch.save(
        {"args": ckpt["args"], "trainer": {"unitok": sd, "disc": {"w": torch.zeros(3)}}}, tmp_path / "d.pth"
    )
    tok = tokbench.load_tokenizer("unitok", weights=tmp_path / "d.pth")
    assert torch.equal(tok.encode(images).ids, io["indices"].transpose(1, 2))
    # a tokenizer-only build skips the text tower's keys
    lean = tokbench.load_tokenizer("unitok", weights=CKPT, config={"text_tower": False})
    assert not any(k.startswith("text_encoder.") for k in lean.model.state_dict())
    assert torch.equal(lean.encode(images).ids, io["indices"].transpose(1, 2))
    with pytest.raises(TokbenchError, match="text tower"):
        lean.clip_encoder()


def test_bad_inputs_and_configs_are_clear(tok, images):
    with pytest.raises(TokbenchError, match="divisible by 16"):
        tok.encode(images[..., :-3])
    with pytest.raises(TokbenchError, match=r"\(B, N, 2\)"):
        tok.decode(Tokens(ids=torch.zeros(2, 2, 16, dtype=torch.long), codebook_size=1024))
    with pytest.raises(TokbenchError, match=r"\[0, 1024\)"):
        tok.decode(Tokens(ids=torch.full((1, 16, 2), 1024), codebook_size=1024))
    with pytest.raises(TokbenchError, match="unknown UniTok config keys"):
        UniTokConfig.from_dict({"vocab_sise": 3})
    with pytest.raises(TokbenchError, match="no built-in sizes"):
        UniTokConfig.from_dict({"model": "vitamin_tiny_a"})
    with pytest.raises(TokbenchError, match="needs weights"):
        tokbench.load_tokenizer("unitok", config={"model": "vitamin_large"})
    with pytest.raises(WeightsUnavailable, match="unitok-large"):  # the family name alone: its default release
        tokbench.load_tokenizer("unitok")


# --- semantic metrics -------------------------------------------------------------------------------


def test_clip_encoder_serves_the_semantic_metrics(tok, io, images):
    """The encoder object follows UniTok's zero-shot transform; at the native size it is the official
    `encode_image` on the uint8 image."""
    from tokbench.metrics.base import EvalBatch
    from tokbench.metrics.semantic import SemanticSimilarity, ZeroShotAccuracy

    enc = tok.clip_encoder()
    assert (enc.encode_image(images) - io["semantic"]).abs().max().item() < 1e-4
    # at another size the zero-shot transform (bicubic short side + centre crop) brings it to img_size
    bigger = torch.nn.functional.interpolate(images, size=(80, 96), mode="bilinear")
    assert enc.encode_image(bigger).shape == io["semantic"].shape
    sim = SemanticSimilarity(encoder=enc)
    idx = torch.arange(2)
    sim.update(EvalBatch(originals=images, tokens=None, tokenizer=tok, index=idx, reconstructions=images))
    assert sim.compute()["semantic_similarity_unitok"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(TokbenchError, match="vocabulary of 64"):  # the fixture's text tower is tiny
        enc.encode_text(["a cat"])
    # a text tower with CLIP's vocabulary: zero-shot with UniTok's own image and text embeddings
    cfg = {**json.loads(CONFIG.read_text()), "text_vocab_size": 49408, "text_context_length": 16}
    rand = tokbench.load_tokenizer("unitok", weights="random", config=cfg).clip_encoder()
    text = rand.encode_text(["a photo of a cat", "a face"])
    assert text.shape == (2, cfg["unitok_args"]["embed_dim"]) and torch.isfinite(text).all()
    zs = ZeroShotAccuracy(encoder=rand, classnames=["cat", "person"], templates=["a photo of a {}."])
    zs.update(EvalBatch(originals=images, tokens=None, tokenizer=tok, index=idx, labels=torch.tensor([1, 0])))
    out = zs.compute()
    assert out["zeroshot_unitok_images"] == 2 and 0 <= out["zeroshot_unitok_top1"] <= 100


# --- variants, random weights, the full-size layout ------------------------------------------------------


def test_variants_say_which_attention():
    assert tokbench.list_tokenizers("unitok*") == ["unitok-large", "unitok-large-causal"]
    by_name = {v.name: v for v in VARIANTS}
    assert by_name["unitok-large"].config["causal_projection"] is False
    assert by_name["unitok-large-causal"].config["causal_projection"] is True
    assert by_name["unitok-large"].weights.repo_id == "FoundationVision/unitok_tokenizer"
    assert by_name["unitok-large-causal"].weights.repo_id == "FoundationVision/UniTok"
    assert {v.weights.filename for v in VARIANTS} == {"unitok_tokenizer.pth"}


def test_full_size_layout_matches_manifest():
    manifest = json.loads((FIXTURE / "manifest_full.json").read_text())
    variant = VARIANTS[0]
    cfg = UniTokConfig.from_dict(variant.config)
    assert cfg.as_dict()["vitamin"] == {
        **manifest["vitamin_large"],
        "conv_dims": tuple(manifest["vitamin_large"]["conv_dims"]),
        "conv_depths": tuple(manifest["vitamin_large"]["conv_depths"]),
        "decoder_dims": tuple(manifest["vitamin_large"]["decoder_dims"]),
        "decoder_conv_depths": tuple(manifest["vitamin_large"]["decoder_conv_depths"]),
    }
    for key in (
        "img_size",
        "vocab_size",
        "vocab_width",
        "num_codebooks",
        "embed_dim",
        "text_width",
        "text_layers",
    ):
        assert getattr(cfg, key) == manifest["unitok_args"][key], key
    model = build_model(variant.config, device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == manifest["params"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]
    assert cfg.grid**2 == 256 and cfg.heads == 16


def test_random_weights_match_a_real_load_layout(images):
    a = tokbench.load_tokenizer("unitok", weights="random", config=CONFIG)
    b = tokbench.load_tokenizer("unitok", weights="random", config=CONFIG)
    real = tokbench.load_tokenizer("unitok", weights=CKPT, config=CONFIG)
    assert a.spec.source["weights"] == RANDOM_WEIGHTS and "RANDOM WEIGHTS" in a.spec.notes
    sd_a, sd_b, sd_r = a.model.state_dict(), b.model.state_dict(), real.model.state_dict()
    assert {k: v.shape for k, v in sd_a.items()} == {k: v.shape for k, v in sd_r.items()}
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    for field in ("resolution", "tokens_per_image", "codebook_size", "bits_per_token", "preprocessing"):
        assert getattr(a.spec, field) == getattr(real.spec, field), field
    # the text tower's causal mask is rebuilt after the meta build
    assert torch.equal(a.model.text_encoder.attn_mask, real.model.text_encoder.attn_mask)
    tokens = a.encode(images)
    out = a.decode(tokens)
    assert out.shape == images.shape and 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("TOKBENCH_SLOW_TESTS"),
    reason="set TOKBENCH_SLOW_TESTS=1 (about 20 s: 700M parameters)",
)
def test_released_size_builds_offline_with_random_weights():
    tok = tokbench.load_tokenizer("unitok-large-causal", weights="random", config={"text_tower": False})
    assert tok.spec.name == "unitok-large-causal" and tok.spec.resolution == 256
    assert tok.spec.tokens_per_image == 256 and tok.spec.bits_per_token == pytest.approx(8 * 12)
    assert tok.spec.source["release"] == VARIANTS[1].weights.source
    assert tok.model.quant_proj.attn.causal
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # 2x2 tokens: fast on a CPU
    tokens = tok.encode(x)
    assert tokens.ids.shape == (1, 4, 8) and int(tokens.ids.max()) < 4096
    assert tok.decode(tokens).shape == (1, 3, 32, 32)


def test_semantic_metrics_take_a_unitok_variant_by_name(io, images):
    """`{semantic-similarity: {encoder: unitok-large, weights: FILE}}` in a suite: UniTok's own CLIP head."""
    from tokbench.metrics.base import EvalBatch
    from tokbench.metrics.semantic import SemanticSimilarity
    from tokbench.weights import WeightsUnavailable

    metric = SemanticSimilarity(encoder="unitok-large", weights=str(CKPT))
    assert metric.key == "semantic_similarity_unitok_large"
    assert (metric.encoder.encode_image(images) - io["semantic"]).abs().max().item() < 1e-4
    tok = tokbench.load_tokenizer("unitok", weights=CKPT)
    recon = tok.decode(tok.encode(images))
    metric.update(
        EvalBatch(originals=images, tokens=None, tokenizer=tok, index=torch.arange(2), reconstructions=recon)
    )
    expect = torch.nn.functional.cosine_similarity(
        metric.encoder.encode_image(images), metric.encoder.encode_image(recon), dim=-1
    ).mean()
    assert metric.compute()["semantic_similarity_unitok_large"] == pytest.approx(float(expect), abs=1e-5)
    assert "UniTok CLIP head" in metric.protocol()["semantic_similarity_unitok_large"]
    with pytest.raises(WeightsUnavailable):  # offline, no release file: the runner records a skip
        SemanticSimilarity(encoder="unitok-large-causal")
    with pytest.raises(TokbenchError, match="unknown semantic encoder"):
        SemanticSimilarity(encoder="no-such-encoder")


def test_suite_run_with_unitok_as_tokenizer_and_semantic_encoder(tmp_path, io):
    """Through the runner: (B, N, C) ids reach bpp / codebook per codebook; UniTok's CLIP head is the
    semantic encoder by variant name; the `unitok` protocol prepares the inputs."""
    skdata = pytest.importorskip("skimage.data")
    from tokbench.runner import read_rows, run_suite
    from tokbench.suite import parse_suite

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(skdata.astronaut()[30:330, 90:390]).save(folder / "a.png")
    Image.fromarray(skdata.chelsea()).save(folder / "b.png")
    suite = parse_suite(
        {
            "name": "unitok-small",
            "data": [f"folder:{folder}"],
            "batch_size": 2,
            "checkpoint_seconds": 0,
            "grid_images": 0,
            "metrics": [
                "psnr",
                "bpp",
                "codebook",
                {"semantic-similarity": {"encoder": "unitok-large", "weights": str(CKPT)}},
            ],
            "tokenizers": [{"name": "unitok", "weights": str(CKPT), "config": str(CONFIG)}],
        }
    )
    (summary,) = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert summary["status"] == "ok", summary
    rows = read_rows(tmp_path / "run" / "jobs" / summary["job"] / "rows.jsonl")
    assert len(rows) == 2
    # 16 tokens x 2 codebooks x log2(1024) bits over 64 x 64 pixels
    assert rows[0]["bpp"] == pytest.approx(16 * 2 * 10 / 64**2)
    metrics = summary["results"]
    assert {"codebook_usage_0", "codebook_usage_1"} <= set(metrics)
    # the reconstruction of the official input, scored against it with the metric's own formula
    tok = tokbench.load_tokenizer("unitok", weights=CKPT, config=CONFIG)
    x = (io["input"] + 1) / 2
    ref = 10 * torch.log10(1 / (tok.decode(tok.encode(x)) - x).pow(2).mean(dim=(1, 2, 3)))
    assert sorted(r["psnr"] for r in rows) == pytest.approx(sorted(ref.tolist()), abs=1e-3)
    assert "semantic_similarity_unitok_large" in metrics


def _text_reference(sd: dict[str, torch.Tensor], text: torch.Tensor, heads: int) -> torch.Tensor:
    """UniTok's vendored open_clip `TextTransformer.forward`, written out with plain torch ops: token + position
    embeddings, pre-LN blocks (causal multi-head attention, GELU MLP), ln_final, the EOT (argmax id) token,
    @ text_projection. LayerNorm eps 1e-5."""
    p = {k[len("text_encoder.") :]: v.double() for k, v in sd.items() if k.startswith("text_encoder.")}
    n = text.shape[1]
    x = p["token_embedding.weight"][text] + p["positional_embedding"][:n]

    def ln(t: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(t, t.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"])

    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in p:
        b = f"transformer.resblocks.{i}."
        h = ln(x, b + "ln_1")
        q, k, v = (h @ p[b + "attn.in_proj_weight"].T + p[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(t.shape[0], n, heads, -1).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask).softmax(-1) @ v
        att = att.transpose(1, 2).reshape(x.shape)
        x = x + att @ p[b + "attn.out_proj.weight"].T + p[b + "attn.out_proj.bias"]
        h = torch.nn.functional.gelu(ln(x, b + "ln_2") @ p[b + "mlp.c_fc.weight"].T + p[b + "mlp.c_fc.bias"])
        x = x + h @ p[b + "mlp.c_proj.weight"].T + p[b + "mlp.c_proj.bias"]
        i += 1
    x = ln(x, "ln_final")
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ p["text_projection"]


def test_text_tower_matches_the_vendored_open_clip_forward(tok):
    """The fixture has no text output: the text tower (open_clip's current TextTransformer) against a plain
    re-implementation of the vendored one, on the fixture's weights (vocabulary 64, context 8)."""
    args = json.loads(CONFIG.read_text())["unitok_args"]
    text = torch.randint(
        0,
        args["text_vocab_size"] - 1,
        (3, args["text_context_length"]),
        generator=torch.Generator().manual_seed(0),
    )
    text[:, -1] = args["text_vocab_size"] - 1  # the EOT id is the largest
    text[1, 4:] = 0
    text[1, 3] = args["text_vocab_size"] - 1  # a shorter, padded prompt
    sd = torch.load(CKPT, map_location="cpu", weights_only=True)["trainer"]["unitok"]
    with torch.no_grad():
        ours = tok.model.text_encoder(text)
    ref = _text_reference(sd, text, args["text_heads"])
    assert ours.shape == (3, args["embed_dim"])
    assert (ours.double() - ref).abs().max().item() < 1e-4


def test_bfloat16_keeps_the_projections_and_quantiser_in_float32(io, images):
    """As the official forward runs quant_proj / quantizer / post_quant_proj outside autocast."""
    tok = tokbench.load_tokenizer("unitok", weights=CKPT, dtype="bfloat16")
    assert tok.spec.dtype == "bfloat16" and tok.model.encoder.norm.weight.dtype == torch.bfloat16
    assert tok.model.quant_proj.proj.weight.dtype == torch.float32
    ids = tok.encode(images).ids
    agree = (ids == io["indices"].transpose(1, 2)).float().mean().item()
    assert agree > 0.9  # bf16 rounding in the encoder flips only near-tied codes
    out = tok.decode(Tokens(ids=io["indices"].transpose(1, 2), grid=(4, 4), codebook_size=1024))
    assert out.dtype == torch.float32
    assert (out - as_unit(io["recon_from_indices"])).abs().max().item() < 0.1


def test_non_square_inputs_keep_their_grid(tok, images):
    """The convolutional stem and the position-free ViT take any multiple of 16; the decoder follows
    `Tokens.grid` (upstream's decoder assumes a square grid)."""
    x = torch.nn.functional.interpolate(images, size=(64, 96), mode="bilinear")
    tokens = tok.encode(x)
    assert tokens.ids.shape == (2, 24, 2) and tokens.grid == (4, 6)
    assert tok.decode(tokens).shape == (2, 3, 64, 96)
    square = tok.encode(images)
    assert torch.equal(tok.decode(Tokens(ids=square.ids, codebook_size=1024)), tok.decode(square))


@pytest.mark.parametrize("name", ["c", "d"])
def test_other_sizes_made_by_the_official_code(name):
    """tests/data/unitok_sizes/: a stem wider than stage 0, equal ViT and vocab widths, 4 codebooks, mlp_ratio 3
    (c); Linear projections and a single codebook (d). Made with the official code (see its README)."""
    folder = DATA / "unitok_sizes"
    io = load_file(str(folder / f"{name}_io.safetensors"))
    tok = tokbench.load_tokenizer(
        "unitok", weights=folder / f"{name}.pth", config=folder / f"{name}_config.json"
    )
    images = (io["input"] + 1) / 2
    tokens = tok.encode(images)
    assert torch.equal(tokens.ids, io["indices"].transpose(1, 2))
    assert (tok.decode(tokens) - as_unit(io["recon"])).abs().max().item() < 1e-4
    assert (tok.semantic(images)["embedding"] - io["semantic"]).abs().max().item() < 1e-4
    with torch.no_grad():
        text = tok.model.text_encoder(io["text"])
    assert (text - io["text_features"]).abs().max().item() < 1e-4
