"""NVIDIA QLIP against outputs of the official upstream code, and in general.

Golden fixture (tests/data/qlip/, see its README): tiny random weights in the release layout (config.json +
model.safetensors + preprocessor_config.json), an input batch, two captions, and what the OFFICIAL
NVlabs/QLIP `QLIPModel` (transformers 4.37.2, float32, CPU) produced: the quantiser's input and output, the bits,
the exact 28-bit ids and upstream's float32-rounded ids, group ids, reconstructions (straight, from the exact ids,
from upstream's ids), image / text features and embeddings, logits; plus `manifest_full.json`, the full-size
layouts of the three releases. The generality tests build another config (other sizes, MLP instead of SwiGLU,
k bias, quick-GELU text, 12 bits in groups of 4) and compare with a float64 re-computation written below from the
upstream semantics.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import tokbench
from tokbench.checkpoint import RANDOM_WEIGHTS, CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import center_crop_offsets, get_protocol
from tokbench.tokenizers.qlip import BSQ, VARIANTS, BSQConfig, build_model, qlip_config, rope_tables

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "qlip"
CKPT = FIXTURE / "model.safetensors"
CONFIG = FIXTURE / "config.json"
TORCH_THREADS = 1  # see conftest._torch_threads
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
CAPTIONS = ["a photo of an astronaut", "a photo of a cat"]


def postprocess(x: torch.Tensor) -> torch.Tensor:
    """The official notebook's post-processing: inverse normalisation, clamp to [0, 1]."""
    return (x * STD + MEAN).clamp(0, 1)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer("qlip", weights=CKPT, config=CONFIG)


@pytest.fixture(scope="module")
def images(io) -> torch.Tensor:
    return io["input_01"]


# --- the fixture: ids, bits, reconstructions -------------------------------------------------------


def test_input_mapping_is_the_processor_normalisation(tok, io, images):
    assert torch.equal(images * 255, torch.round(images * 255))  # k / 255, as the processor's uint8 pixels
    assert (tok.normalise(images).float() - io["input"]).abs().max().item() < 1e-6


def test_exact_ids_bits_groups_and_upstream_rounding(tok, io, images):
    tokens = tok.encode(images)
    assert tokens.ids.dtype == torch.int64 and tokens.ids.shape == (2, 16) and tokens.grid == (4, 4)
    assert torch.equal(tokens.ids, io["indices"])
    # every fixture id is >= 2^24, and upstream's float32 sum got all 32 of them wrong
    assert int(io["indices"].min()) >= 2**24
    assert int((io["indices"] != io["indices_official"]).sum()) == 32
    assert not torch.equal(tokens.ids, io["indices_official"])
    assert torch.equal(tok.encode(images, ids="upstream").ids, io["indices_official"])
    bits = tok.encode(images, ids="bits")
    assert torch.equal(bits.ids, io["bits"]) and bits.codebook_size == 2
    groups = tok.encode(images, ids="groups")
    assert torch.equal(groups.ids, io["group_indices"]) and groups.codebook_size == 2**7
    # the code length is N * K = 16 * 28 bits in every form
    for t in (tokens, bits, groups, tok.encode(images, ids="upstream")):
        assert t.bits_per_token == pytest.approx(28.0)
        assert t.bits_per_image.tolist() == [16 * 28] * 2
    assert tokens.codebook_size == 2**28 == tok.spec.codebook_size and tok.spec.bits_per_token == 28
    assert tok.spec.tokens_per_image == 16 and tok.spec.resolution == 32 and tok.spec.preprocessing == "qlip"


def test_exact_ids_are_the_bits_read_msb_first(io):
    """Independent of the module: Python integers from the fixture's bits, channel 0 most significant."""
    for b in range(2):
        for n in range(16):
            bits = io["bits"][b, n].tolist()
            assert int("".join(map(str, bits)), 2) == int(io["indices"][b, n])
            groups = [int("".join(map(str, bits[g * 7 : (g + 1) * 7])), 2) for g in range(4)]
            assert groups == io["group_indices"][b, n].tolist()
            # upstream's value is exactly the float32 rounding of the true id's partial sums: within +-8
            assert abs(int(io["indices_official"][b, n]) - int(io["indices"][b, n])) <= 8


def test_decode_matches_official_reconstructions(tok, io):
    out = tok.decode(Tokens(ids=io["indices"], grid=(4, 4), codebook_size=2**28))
    assert out.shape == (2, 3, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1
    for ref in ("recon_01", "recon_from_indices_01"):
        assert (out - io[ref]).abs().max().item() < 1e-5, ref
    assert (out - postprocess(io["recon"])).abs().max().item() < 1e-5
    # the other forms decode to the same image
    for ids in (io["bits"], io["group_indices"]):
        assert (tok.decode(Tokens(ids=ids, grid=(4, 4))) - out).abs().max().item() == 0
    # upstream's rounded ids decode to upstream's wrong bits: the official recon_from_indices_official
    wrong = tok.decode(Tokens(ids=io["indices_official"], grid=(4, 4)))
    assert (wrong - postprocess(io["recon_from_indices_official"])).abs().max().item() < 1e-5
    assert (wrong - out).abs().max().item() > 1e-2
    assert int((tok.bits_of(Tokens(ids=io["indices_official"])) != io["bits"]).sum()) == 159  # the README's count


def test_model_level_intermediates(tok, io):
    m = tok.model
    with torch.no_grad():
        hidden = m.vision_model(io["input"])
        pre = m.vision_model.pre_quant(hidden[:, 1:])
        quant = m.bsq.codes(io["bits"])
        recon = m.decode_bits(io["bits"])
        feats = m.image_features(hidden)
        text = m.text_features(io["text_tokens"])
    for ours, ref in ((pre, "pre_quant"), (quant, "quant"), (recon, "recon"), (recon, "recon_from_indices"),
                      (feats, "image_features"), (text, "text_features")):  # fmt: skip
        assert ours.shape == io[ref].shape, ref
        assert (ours - io[ref]).abs().max().item() < 1e-5, ref
    # the quantiser margin the README states: no bit is near a tie
    assert float(io["pre_quant"].abs().min()) > 3e-4


def test_features_stages(tok, io, images):
    assert tok.feature_stages[0] == "pre_quant"
    pre = tok.features(images, "pre_quant")
    assert (pre - io["pre_quant"]).abs().max().item() < 1e-5
    post = tok.features(images, "post_quant")
    with torch.no_grad():
        expect = tok.model.vision_model.quant_embed_post(io["quant"])  # what the official decoder consumes
    assert post.shape == (2, 16, 32) and (post - expect).abs().max().item() < 1e-5
    sem = tok.features(images, "semantic")
    assert sem.shape == (2, 16, 32) and sem.dtype == torch.float32
    assert torch.equal(sem, tok.semantic(images)["tokens"])
    with pytest.raises(TokbenchError, match="feature stages pre_quant, post_quant, semantic"):
        tok.features(images, "decoder")


# --- the CLIP side ---------------------------------------------------------------------------------


def test_semantic_and_text_match_official(tok, io, images):
    sem = tok.semantic(images)
    assert (sem["embedding"] - io["image_features"]).abs().max().item() < 1e-5
    assert (sem["embedding_normalized"] - io["image_embeds"]).abs().max().item() < 1e-5
    assert torch.equal(sem["ids"], io["indices"])
    enc = tok.clip_encoder()
    ids = enc.text_ids(CAPTIONS)
    n = io["text_tokens"].shape[1]
    assert torch.equal(ids[:, :n], io["text_tokens"]) and int(ids[:, n:].abs().sum()) == 0  # open_clip pads 0
    text = enc.encode_text(CAPTIONS)
    assert (text - io["text_features"]).abs().max().item() < 1e-5
    assert (F.normalize(text, dim=-1) - io["text_embeds"]).abs().max().item() < 1e-5
    logits = tok.model.logit_scale.exp() * sem["embedding_normalized"] @ F.normalize(text, dim=-1).T
    assert (logits - io["logits_per_image"]).abs().max().item() < 1e-4
    # images at the model's size pass the `qlip` protocol unchanged
    assert (enc.encode_image(images) - io["image_features"]).abs().max().item() < 1e-5
    bigger = F.interpolate(images, size=(40, 52), mode="bilinear")
    assert enc.encode_image(bigger).shape == (2, 16)
    assert "qlip" in enc.describe()["input"] and "open_clip" in enc.describe()["text"]


def test_zeroshot_metric_with_qlip_as_encoder(tok, images):
    from tokbench.metrics.base import EvalBatch
    from tokbench.metrics.semantic import SemanticSimilarity, ZeroShotAccuracy

    idx = torch.arange(2)
    zs = ZeroShotAccuracy(encoder=tok.clip_encoder(), classnames=["astronaut", "cat"], templates=["a photo of a {}."])
    zs.update(EvalBatch(originals=images, tokens=None, tokenizer=tok, index=idx, labels=torch.tensor([0, 1])))
    out = zs.compute()
    assert out["zeroshot_qlip_images"] == 2 and 0 <= out["zeroshot_qlip_top1"] <= 100
    # by variant name, with the fixture file: the release's config.json beside the weights is read
    sim = SemanticSimilarity(encoder="qlip-b-16-256", weights=str(CKPT))
    assert sim.key == "semantic_similarity_qlip_b_16_256"
    assert sim.encoder.tokenizer.spec.source["config"].endswith("config.json")
    sim.update(EvalBatch(originals=images, tokens=None, tokenizer=tok, index=idx, reconstructions=images))
    assert sim.compute()["semantic_similarity_qlip_b_16_256"] == pytest.approx(1.0, abs=1e-5)


def test_small_text_vocabulary_is_a_clear_error(images):
    cfg = json.loads(CONFIG.read_text())
    cfg["text_config"] = {**cfg["text_config"], "vocab_size": 64}
    enc = tokbench.load_tokenizer("qlip", weights="random", config=cfg).clip_encoder()
    with pytest.raises(TokbenchError, match="vocabulary of 64"):
        enc.encode_text(["a cat"])


# --- preprocessing ---------------------------------------------------------------------------------


def test_qlip_protocol_reproduces_the_processor_output(io):
    skdata = pytest.importorskip("skimage.data")
    fn = get_protocol("qlip").fn
    for i, arr in enumerate([skdata.astronaut()[0:300, 60:420], skdata.chelsea()[0:300, 0:451]]):
        x = torch.from_numpy(np.asarray(fn(Image.fromarray(arr), 32)).copy()).permute(2, 0, 1).float() / 255
        assert torch.equal(x, io["input_01"][i])


def test_qlip_protocol_crops_with_floor_offsets():
    """transformers' center_crop takes (margin) // 2; torchvision's CenterCrop rounds (a 19 px margin: 9 vs 10)."""
    arr = np.random.default_rng(0).integers(0, 256, (32, 51, 3), dtype=np.uint8)
    out = np.asarray(get_protocol("qlip").fn(Image.fromarray(arr), 32))
    assert np.array_equal(out, arr[:, 9:41])
    assert center_crop_offsets(51, 32, 32)[0] == 10  # the torchvision convention the protocol does NOT use
    g = get_protocol("qlip").geometry(51, 32, 32)
    assert (g.tx, g.ty, g.sx, g.sy) == (-9.0, 0.0, 1.0, 1.0)


# --- generality: another config against a float64 re-computation -----------------------------------

CONFIG_B = {
    "projection_dim": 12, "vision_projection_bias": False, "text_projection_bias": True, "logit_scale_init_value": 2.0,
    "text_config": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "max_position_embeddings": 20, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-6},
    "vision_config": {"hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 3, "num_attention_heads": 3,
                      "image_size": 30, "patch_size": 5, "k_bias": True, "rope": True, "rope_pt_seq_len": 12,
                      "quantizer": "bsq", "quantizer_l2_norm": True, "quantizer_embed_type": "mlp",
                      "hidden_size_post_q": 20,
                      "quantizer_cfg": {"embed_dim": 12, "group_size": 4, "input_format": "blc", "l2_norm": True,
                                        "beta": 0.0, "inv_temperature": 100.0}},
    "decoder_config": {"hidden_size": 20, "intermediate_size": 36, "num_hidden_layers": 2, "num_attention_heads": 5,
                       "image_size": 30, "patch_size": 5, "k_bias": False, "subln": True, "swiglu": True,
                       "rope": True},
}  # fmt: skip


def _lin(x, sd, name):
    return x @ sd[name + ".weight"].T + (sd[name + ".bias"] if name + ".bias" in sd else 0)


def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _rope(x, grid, pt, theta=10000.0):
    """Rotary embedding written out per token (i, j): pair p < hd/4 turns by i*pt/grid * f_p, the rest by
    j*pt/grid * f_(p - hd/4), f_m = theta^(-2m / (hd/2)); pair (x0, x1) -> (x0 c - x1 s, x1 c + x0 s)."""
    hd = x.shape[-1]
    dim = hd // 2
    f = theta ** (-2 * torch.arange(dim // 2, dtype=torch.float64) / dim)
    pos = torch.arange(grid * grid)
    rows, cols = (pos // grid).double() * pt / grid, (pos % grid).double() * pt / grid
    ang = torch.cat((rows[:, None] * f, cols[:, None] * f), dim=-1)
    c, s = ang.cos(), ang.sin()
    out = torch.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 1::2] * c + x[..., 0::2] * s
    return out


def _tower(x, sd, prefix, c, *, rope_grid=None, shift=0, causal=False):
    act = {"gelu": F.gelu, "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t)}[c.get("hidden_act", "gelu")]
    eps, heads = c.get("layer_norm_eps", 1e-5), c["num_attention_heads"]
    i = 0
    while f"{prefix}.layers.{i}.layer_norm1.weight" in sd:
        p = f"{prefix}.layers.{i}."
        h = _ln(x, sd, p + "layer_norm1", eps)
        b, n, d = h.shape
        q, k, v = (_lin(h, sd, p + f"self_attn.{w}_proj").view(b, n, heads, -1).transpose(1, 2) for w in "qkv")
        q = q * (d // heads) ** -0.5
        if rope_grid is not None:
            pt = c.get("rope_pt_seq_len", 16)
            q = torch.cat((q[:, :, :shift], _rope(q[:, :, shift:], rope_grid, pt)), dim=2)
            k = torch.cat((k[:, :, :shift], _rope(k[:, :, shift:], rope_grid, pt)), dim=2)
        scores = q @ k.transpose(-1, -2)
        if causal:
            scores = scores + torch.full((n, n), float("-inf"), dtype=scores.dtype).triu(1)
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        if p + "self_attn.inner_attn_ln.weight" in sd:
            a = _ln(a, sd, p + "self_attn.inner_attn_ln", eps)
        x = x + _lin(a, sd, p + "self_attn.out_proj")
        h = _ln(x, sd, p + "layer_norm2", eps)
        if p + "mlp.w1.weight" in sd:
            h = F.silu(_lin(h, sd, p + "mlp.w1")) * _lin(h, sd, p + "mlp.w2")
        else:
            h = act(_lin(h, sd, p + "mlp.fc1"))
        if p + "mlp.ffn_ln.weight" in sd:
            h = _ln(h, sd, p + "mlp.ffn_ln", eps)
        x = x + _lin(h, sd, p + ("mlp.w3" if p + "mlp.w3.weight" in sd else "mlp.fc2"))
        i += 1
    return x


def reference(sd, cfg, pixels, text):
    """QLIPModel's forward in float64 from a state dict: pixels (B, 3, S, S) normalised, text ids (T, L)."""
    sd = {k: v.double() for k, v in sd.items()}
    v, d, t = cfg["vision_config"], cfg["decoder_config"], cfg["text_config"]
    p, g = v["patch_size"], v["image_size"] // v["patch_size"]
    x = F.conv2d(pixels.double(), sd["vision_model.embeddings.patch_embedding.weight"],
                 sd["vision_model.embeddings.patch_embedding.bias"], stride=p).flatten(2).transpose(1, 2)
    cls = sd["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat((cls, x), 1) + sd["vision_model.embeddings.position_embedding.weight"]
    x = _tower(x, sd, "vision_model.encoder", v, rope_grid=g, shift=1)
    image = _lin(_ln(x[:, 0], sd, "vision_model.post_layernorm", 1e-5), sd, "visual_projection")
    h = _lin(F.gelu(_lin(x[:, 1:], sd, "vision_model.quant_embed.c_fc")), sd, "vision_model.quant_embed.c_proj")
    pre = F.normalize(h, dim=-1)
    k = pre.shape[-1]
    bits = (pre > 0).long()
    q = (bits * 2 - 1).double() / math.sqrt(k)
    z = _lin(F.gelu(_lin(q, sd, "vision_model.quant_embed_post.c_fc")), sd, "vision_model.quant_embed_post.c_proj")
    y = _tower(z + sd["vision_decoder.position_embeddings"], sd, "vision_decoder.encoder", d, rope_grid=g)
    y = _lin(torch.tanh(_lin(_ln(y, sd, "vision_decoder.norm", 1e-5), sd, "vision_decoder.ffn.0")), sd,
             "vision_decoder.conv_out")
    recon = y.view(-1, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, g * p, g * p)
    e = sd["text_model.embeddings.token_embedding.weight"][text]
    e = e + sd["text_model.embeddings.position_embedding.weight"][: text.shape[1]]
    e = _ln(_tower(e, sd, "text_model.encoder", t, causal=True), sd, "text_model.final_layer_norm",
            t.get("layer_norm_eps", 1e-5))
    first_eos = torch.tensor([row.tolist().index(49407) for row in text])
    text_feat = _lin(e[torch.arange(len(text)), first_eos], sd, "text_projection")
    return {"pre": pre, "bits": bits, "image": image, "recon": recon, "text": text_feat}


@pytest.fixture(scope="module")
def release_b(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Config B saved as a release folder: seeded weights (every parameter perturbed so no LayerNorm is the
    identity), the per-layer rotary aliases a torch.save of the upstream module would add, config.json."""
    folder = tmp_path_factory.mktemp("qlip_b")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = build_model(CONFIG_B)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    for i in range(3):
        sd[f"vision_model.encoder.layers.{i}.self_attn.rope.freqs_cos"] = sd["vision_model.rope.freqs_cos"].clone()
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(CONFIG_B))
    return folder, sd


def test_second_config_matches_a_float64_recomputation(release_b):
    folder, sd = release_b
    tok = tokbench.load_tokenizer("qlip", weights=folder / "model.safetensors")  # config.json beside it
    assert tok.spec.source["config"] == str(folder / "config.json")
    assert "3 per-layer rotary aliases ignored" in tok.spec.source["layout"]
    assert (tok.spec.resolution, tok.spec.tokens_per_image, tok.spec.bits_per_token) == (30, 36, 12.0)
    images = torch.rand(3, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    texts = ["a photo of a cat", "a face", "two dogs on a red sofa"]
    enc = tok.clip_encoder()
    ref = reference(sd, CONFIG_B, (images - MEAN) / STD, enc.text_ids(texts))
    assert float(ref["pre"].abs().min()) > 1e-5  # no bit near a tie for this seed
    tokens = tok.encode(images)
    assert tokens.ids.shape == (3, 36) and tokens.grid == (6, 6) and tokens.codebook_size == 2**12
    expect_ids = (ref["bits"] * 2 ** torch.arange(11, -1, -1)).sum(-1)
    assert torch.equal(tokens.ids, expect_ids)
    # below 2^24 upstream's float32 sum is exact, so its ids agree here
    assert torch.equal(tok.encode(images, ids="upstream").ids, expect_ids)
    assert torch.equal(tok.encode(images, ids="bits").ids, ref["bits"])
    groups = tok.encode(images, ids="groups")
    assert groups.ids.shape == (3, 36, 3) and int(groups.ids.max()) < 16
    assert (tok.features(images, "pre_quant") - ref["pre"]).abs().max().item() < 1e-5
    assert (tok.semantic(images)["embedding"] - ref["image"]).abs().max().item() < 1e-4
    out = tok.decode(tokens)
    assert out.shape == (3, 3, 30, 30)
    assert (out - postprocess(ref["recon"].float())).abs().max().item() < 1e-4
    assert torch.equal(tok.decode(groups), out) and torch.equal(tok.decode(tok.encode(images, ids="bits")), out)
    assert (enc.encode_text(texts) - ref["text"]).abs().max().item() < 1e-4
    assert tokens.bits_per_image.tolist() == [36 * 12] * 3
    assert tok.features(images, "post_quant").shape == (3, 36, 20)
    assert tok.features(images, "semantic").shape == (3, 36, 24)
    # batch independence: one image alone gives its row of the batch
    assert torch.equal(tok.encode(images[1:2]).ids, tokens.ids[1:2])


def test_rotary_tables_are_recomputed_when_absent(release_b, tmp_path):
    folder, sd = release_b
    lean = {k: v for k, v in sd.items() if "rope" not in k}
    save_file(lean, str(tmp_path / "model.safetensors"))
    tok = tokbench.load_tokenizer("qlip", weights=tmp_path / "model.safetensors", config=CONFIG_B)
    assert "recomputed" in tok.spec.source["layout"]
    for tower in ("vision_model", "vision_decoder"):
        for which in ("cos", "sin"):
            assert torch.equal(getattr(tok.model.get_submodule(f"{tower}.rope"), f"freqs_{which}"),
                               sd[f"{tower}.rope.freqs_{which}"])
    # the fixture's stored tables equal ours bit for bit (float32, upstream's operation order)
    stored = load_file(str(CKPT))
    cos, sin = rope_tables(16, 4, 16, 10000.0)
    assert torch.equal(cos, stored["vision_model.rope.freqs_cos"]) and torch.equal(sin, stored["vision_decoder.rope.freqs_sin"])


# --- BSQ ids by hand ---------------------------------------------------------------------------------


def test_28_bit_ids_by_hand_exact_versus_upstream_rounding():
    bsq = BSQ(BSQConfig(embed_dim=28, group_size=7))
    rows = [[1] * 28, [1, 0] * 14, [0, 1] * 14, [1] + [0] * 27, [0] * 27 + [1], [0] * 4 + [1] * 24,
            [1] * 25 + [0, 0, 1]]  # fmt: skip
    rng = np.random.default_rng(0)
    rows += [[1] + rng.integers(0, 2, 27).tolist() for _ in range(40)]  # ids >= 2^27
    bits = torch.tensor(rows)
    exact = bsq.ids(bits)
    assert exact.tolist() == [int("".join(map(str, r)), 2) for r in rows]
    assert exact.tolist()[:2] == [2**28 - 1, int("10" * 14, 2)]
    assert torch.equal(bsq.bits_of_ids(exact), bits)
    assert torch.equal(bsq.bits_of_groups(bsq.group_ids(bits)), bits)
    upstream = bsq.upstream_ids(bits)
    big = exact >= 2**24
    # upstream's ids are float32 values: equal below 2^24 and for single powers of two, rounded (<= 8 off) above
    assert torch.equal(upstream[~big], exact[~big])
    assert int(upstream[3]) == 2**27
    assert all(float(np.float32(u)) == u for u in upstream.tolist())
    assert int((upstream[big] != exact[big]).sum()) > 20
    assert int((upstream - exact).abs().max()) <= 8
    # decoding upstream's id gives other bits where it was rounded
    assert not torch.equal(bsq.bits_of_ids(upstream[big]), bits[big])


def test_ids_of_other_bit_counts():
    bsq = BSQ(BSQConfig(embed_dim=40, group_size=8))
    bits = torch.tensor([[1] * 40, [1] + [0] * 39])
    assert bsq.ids(bits).tolist() == [2**40 - 1, 2**39]
    assert torch.equal(bsq.bits_of_ids(bsq.ids(bits)), bits)
    with pytest.raises(TokbenchError, match="do not fit int64"):
        BSQ(BSQConfig(embed_dim=64, group_size=8)).ids(torch.ones(1, 64, dtype=torch.long))


def test_hand_built_ids_above_2_24_decode_as_their_bits(tok):
    bits = torch.randint(0, 2, (3, 16, 28), generator=torch.Generator().manual_seed(5))
    bits[..., 0] = 1  # every id >= 2^27
    ids = torch.tensor([[int("".join(map(str, t)), 2) for t in row] for row in bits.tolist()])
    assert int(ids.min()) >= 2**27
    a = tok.decode(Tokens(ids=ids, grid=(4, 4)))
    assert torch.equal(a, tok.decode(Tokens(ids=bits, grid=(4, 4))))
    assert (a - postprocess(tok.model.decode_bits(bits))).abs().max().item() == 0


# --- full-size layouts and variants ------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_full_size_layout_matches_manifest(variant):
    manifest = json.loads((FIXTURE / "manifest_full.json").read_text())["variants"]
    entry = manifest[variant.weights.repo_id.split("/")[1]]
    assert variant.config == entry["reconstructed_config"]
    model = build_model(variant.config, device="meta")
    assert {k: list(p.shape) for k, p in model.named_parameters()} == entry["params"]
    assert sorted(model.state_dict()) == sorted(entry["checkpoint_keys"])
    assert sum(p.numel() for p in model.parameters()) == entry["total_params"]
    for k in ("vision_model.rope.freqs_cos", "vision_decoder.rope.freqs_sin"):
        assert list(model.state_dict()[k].shape) == entry["buffers"][k]["shape"]
    cfg = qlip_config(variant.config)
    assert cfg.bits == 28 and variant.resolution == cfg.vision.image_size


def test_variant_rows_say_non_commercial_and_cite_their_table():
    assert tokbench.list_tokenizers("qlip*") == ["qlip-b-16-256", "qlip-b-8-256", "qlip-l-14-392"]
    by_name = {v.name: v for v in VARIANTS}
    assert {n: (by_name[n].resolution, by_name[n].config["vision_config"]["patch_size"]) for n in by_name} == {
        "qlip-b-16-256": (256, 16), "qlip-b-8-256": (256, 8), "qlip-l-14-392": (392, 14)}
    for v in VARIANTS:
        assert v.weights.repo_id.startswith("nvidia/QLIP-") and v.weights.filename == "model.safetensors"
        assert "CC-BY-NC-4.0" in v.weights.licence and "NON-COMMERCIAL" in v.weights.licence
        assert "NON-COMMERCIAL" in v.description and "2502.05178" in v.paper
        assert "Model Zoo" in v.published_source
    assert by_name["qlip-b-16-256"].published == {"zeroshot_qlip_b_16_256_top1": 74.3, "rfid_pytorch_fid": 3.21}
    assert by_name["qlip-b-8-256"].published == {"zeroshot_qlip_b_8_256_top1": 75.6, "rfid_pytorch_fid": 0.70}
    assert by_name["qlip-l-14-392"].published == {"zeroshot_qlip_l_14_392_top1": 79.1, "rfid_pytorch_fid": 1.46}
    fam = tokbench.registry.find("qlip")[0]
    assert "NON-COMMERCIAL" in fam.description and "cf86fcc" in fam.code


def test_random_weights_build_small_and_match_a_real_load_layout(images):
    a = tokbench.load_tokenizer("qlip", weights="random", config=CONFIG)
    b = tokbench.load_tokenizer("qlip", weights="random", config=CONFIG)
    real = tokbench.load_tokenizer("qlip", weights=CKPT, config=CONFIG)
    assert a.spec.source["weights"] == RANDOM_WEIGHTS and "RANDOM WEIGHTS" in a.spec.notes
    sd_a, sd_b, sd_r = a.model.state_dict(), b.model.state_dict(), real.model.state_dict()
    assert {k: v.shape for k, v in sd_a.items()} == {k: v.shape for k, v in sd_r.items()}
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    # the rotary tables are constants of the config, rebuilt after the meta-device build
    assert torch.equal(sd_a["vision_model.rope.freqs_cos"], sd_r["vision_model.rope.freqs_cos"])
    for f in ("resolution", "tokens_per_image", "codebook_size", "bits_per_token", "preprocessing"):
        assert getattr(a.spec, f) == getattr(real.spec, f), f
    out = a.decode(a.encode(images))
    assert out.shape == images.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_variant_by_name_reads_its_release_files(tmp_path, monkeypatch, io, images):
    """`load_tokenizer("qlip-b-16-256")` with the release folder under TOKBENCH_WEIGHTS: the release's own
    config.json (here the fixture's) wins over the variant row's reconstructed config; offline without the
    file, the weights are reported unavailable."""
    from tokbench.weights import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="qlip-b-16-256"):
        tokbench.load_tokenizer("qlip-b-16-256")
    folder = tmp_path / "qlip-b-16-256"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((FIXTURE / name).read_bytes())
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path))
    tok = tokbench.load_tokenizer("qlip-b-16-256")
    assert tok.spec.name == "qlip-b-16-256" and tok.spec.source["config"] == str(folder / "config.json")
    assert "preprocessor_config.json" in tok.spec.notes
    assert torch.equal(tok.encode(images).ids, io["indices"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TOKBENCH_SLOW_TESTS"), reason="set TOKBENCH_SLOW_TESTS=1 (240M parameters)")
def test_released_size_builds_offline_with_random_weights():
    tok = tokbench.load_tokenizer("qlip-b-16-256", weights="random", text_tower=False)
    assert tok.spec.name == "qlip-b-16-256" and tok.spec.resolution == 256 and tok.spec.tokens_per_image == 256
    assert tok.spec.source["release"] == VARIANTS[0].weights.source
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    tokens = tok.encode(x)
    assert tokens.ids.shape == (1, 256) and int(tokens.ids.max()) < 2**28
    assert tok.decode(tokens).shape == (1, 3, 256, 256)


# --- options, loading and errors ---------------------------------------------------------------------


def test_text_tower_off_skips_its_keys(io, images):
    lean = tokbench.load_tokenizer("qlip", weights=CKPT, config=CONFIG, text_tower=False)
    assert not any(k.startswith(("text_model.", "text_projection")) for k in lean.model.state_dict())
    assert torch.equal(lean.encode(images).ids, io["indices"])
    assert (lean.semantic(images)["embedding"] - io["image_features"]).abs().max().item() < 1e-5
    with pytest.raises(TokbenchError, match="without its text tower"):
        lean.clip_encoder()


def test_bfloat16_build_encodes(images):
    tok = tokbench.load_tokenizer("qlip", weights=CKPT, config=CONFIG, dtype="bfloat16")
    assert tok.model.vision_model.post_layernorm.weight.dtype == torch.bfloat16 and tok.spec.dtype == "bfloat16"
    tokens = tok.encode(images)
    assert tokens.ids.shape == (2, 16) and tok.decode(tokens).dtype == torch.float32


def test_wrong_family_checkpoints_are_named():
    with pytest.raises(CheckpointError, match=r"not a QLIP checkpoint.*looks like a TiTok"):
        tokbench.load_tokenizer("qlip", weights=DATA / "titok" / "model.safetensors", config=CONFIG)
    with pytest.raises(CheckpointError, match=r"not a QLIP checkpoint.*LlamaGen"):
        tokbench.load_tokenizer("qlip", weights=DATA / "llamagen_vq16" / "vq_ds16_c2i.pt")


def test_strict_loading(tmp_path):
    sd = load_file(str(CKPT))
    save_file({k: v for k, v in sd.items() if k != "vision_decoder.norm.weight"}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys: vision_decoder.norm.weight"):
        tokbench.load_tokenizer("qlip", weights=tmp_path / "m.safetensors", config=CONFIG)
    cfg = json.loads(CONFIG.read_text())
    cfg["vision_config"] = {**cfg["vision_config"], "k_bias": True}  # a config that does not fit the file
    with pytest.raises(CheckpointError, match=r"missing keys: vision_model\.encoder\.layers\.0\.self_attn\.k_proj"):
        tokbench.load_tokenizer("qlip", weights=CKPT, config=cfg)


def test_options_and_inputs_refused_clearly(tok, images):
    with pytest.raises(TokbenchError, match=r"unknown qlip options \['colour'\]"):
        tokbench.load_tokenizer("qlip", weights=CKPT, config=CONFIG, colour=1)
    with pytest.raises(TokbenchError, match=r"takes ids; got \['n_tokens'\]"):
        tok.encode(images, n_tokens=3)
    with pytest.raises(TokbenchError, match="ids must be exact, bits, groups or upstream"):
        tok.encode(images, ids="hex")
    with pytest.raises(TokbenchError, match=r"encodes 32x32 images only"):
        tok.encode(images[..., :24, :])
    with pytest.raises(TokbenchError, match=r"decodes 16 tokens per image"):
        tok.decode(Tokens(ids=torch.zeros(1, 9, dtype=torch.long)))
    with pytest.raises(TokbenchError, match=r"28-bit ids must lie in \[0, 268435456\)"):
        tok.decode(Tokens(ids=torch.full((1, 16), 2**28)))
    with pytest.raises(TokbenchError, match=r"bits \(B, 16, 28\) or group ids \(B, 16, 4\)"):
        tok.decode(Tokens(ids=torch.zeros(1, 16, 5, dtype=torch.long)))
    with pytest.raises(TokbenchError, match=r"group ids must lie in \[0, 128\)"):
        tok.decode(Tokens(ids=torch.full((1, 16, 4), 128)))


def test_config_errors_are_clear(tmp_path):
    cfg = json.loads(CONFIG.read_text())
    with pytest.raises(TokbenchError, match=r"lacks \['vision_projection_bias'\]"):
        qlip_config({k: v for k, v in cfg.items() if k != "vision_projection_bias"})
    with pytest.raises(TokbenchError, match=r"unknown QLIP vision_config keys \['patch_sise'\]; accepted: .*patch_size"):
        qlip_config({**cfg, "vision_config": {**cfg["vision_config"], "patch_sise": 4}})
    with pytest.raises(TokbenchError, match=r"unknown QLIP config keys \['colour'\]"):
        qlip_config({**cfg, "colour": 1})
    with pytest.raises(TokbenchError, match="only 'bsq'"):
        qlip_config({**cfg, "vision_config": {**cfg["vision_config"], "quantizer": "none"}})
    with pytest.raises(TokbenchError, match="head size divisible by 4"):
        qlip_config({**cfg, "decoder_config": {**cfg["decoder_config"], "num_attention_heads": 16}})
    with pytest.raises(TokbenchError, match="not divisible by group_size"):
        q = {**cfg["vision_config"]["quantizer_cfg"], "group_size": 5}
        qlip_config({**cfg, "vision_config": {**cfg["vision_config"], "quantizer_cfg": q}})
    # transformers' generic keys and the older *_config_dict layout are accepted
    ok = qlip_config({**cfg, "_name_or_path": "x", "return_dict": True,
                      "vision_config_dict": {"num_hidden_layers": 3}})  # fmt: skip
    assert ok.vision.num_hidden_layers == 3 and ok.vision.hidden_size == 32
    (tmp_path / "model.safetensors").write_bytes(CKPT.read_bytes())  # no config.json beside it
    with pytest.raises(TokbenchError, match="needs the release's config.json"):
        tokbench.load_tokenizer("qlip", weights=tmp_path / "model.safetensors")
