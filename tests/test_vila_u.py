"""VILA-U's vision tower against outputs of the official upstream code.

Golden fixture tests/data/vila_u/ (see its README): tiny random weights in the layout of the release's
`vision_tower/` folder (config.json, model.safetensors with every alias stored, preprocessor_config.json), the tiny
SigLIP architecture config the official constructor reads (`siglip_config/`), and what mit-han-lab/vila-u's own
`RQVAESIGLIPTransformer` computed for two images: the quantiser input, the residual codes, the LLM features and
the decode of the codes (pixel decoder in bfloat16, as upstream forces), in float32 and with the whole tower in
bfloat16. `manifest_full.json` lists the state dict of the released 256 px tower.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tokbench
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol
from tokbench.tokenizers.vila_u import (
    FAMILY,
    RELEASE_256,
    RELEASE_384,
    SIGLIP_RELEASES,
    VARIANTS,
    build_model,
    rqtransformer_layout,
    vila_u_config,
)

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "vila_u"
WEIGHTS = FIXTURE / "model.safetensors"
CONFIG = FIXTURE / "config.json"
SIGLIP_CONFIG = json.loads((FIXTURE / "siglip_config" / "config.json").read_text())

TORCH_THREADS = 1  # see conftest._torch_threads

# README "Suggested checks": features atol 1e-4; recon atol 1e-2 for a bf16 decoder (upstream's own).
FEATURE_ATOL = 1e-4
RECON_ATOL = 1e-2


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer("vila-u", weights=WEIGHTS, config=CONFIG)


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return load_file(str(WEIGHTS))


def official_postprocess(recon: torch.Tensor) -> torch.Tensor:
    """`generate_image_content`: (x + 1) * 127.5 clamped to [0, 255]; divided by 255 for tokbench's [0, 1]."""
    return (recon.float() + 1).mul(127.5).clamp(0, 255) / 255


# ------------------------------------------------------------------------------------------ golden outputs


def test_model_level_outputs_match_official(tok, io):
    m = tok.model
    with torch.no_grad():
        pre = m.pre_quant(io["input"])
        torch.testing.assert_close(pre, io["features_prequant"], atol=FEATURE_ATOL, rtol=0)
        codes, z_q = m.quantize(pre)
        assert codes.dtype == torch.int64 and torch.equal(codes, io["indices"])
        torch.testing.assert_close(z_q.reshape(2, 64, -1), io["features_llm"], atol=FEATURE_ATOL, rtol=0)
        recon = m.decode_codes(io["indices"])
    assert recon.shape == io["recon_from_indices"].shape
    diff = (recon - io["recon_from_indices"]).abs()
    assert float(diff.max()) <= RECON_ATOL and float(diff.mean()) <= 1e-3


def test_public_api_matches_official(tok, io):
    x = io["input_01"]
    torch.testing.assert_close(x * 2 - 1, io["input"], atol=1e-6, rtol=0)  # README: input = (input_01 * 2 - 1)
    tokens = tok.encode(x)
    assert tokens.grid == (8, 8) and tokens.ids.shape == (2, 64, 4) and tokens.ids.dtype == torch.int64
    assert torch.equal(tokens.ids, io["indices"].reshape(2, 64, 4))  # raster order, depth last
    assert tokens.codebook_size == 256 and tokens.meta["depth"] == 4
    assert torch.equal(tokens.bits_per_image, torch.full((2,), 64 * 4 * 8.0, dtype=torch.float64))
    assert tok.spec.bits_per_token == 4 * 8 and tok.spec.tokens_per_image == 64 and tok.spec.resolution == 64
    out = tok.decode(tokens)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out, official_postprocess(io["recon_from_indices"]), atol=RECON_ATOL / 2, rtol=0)
    _, again = tok.reconstruct(x)
    assert torch.equal(again, out)


def test_feature_stages(tok, io):
    x = io["input_01"]
    assert tok.feature_stages[0] == "pre_quant"
    torch.testing.assert_close(tok.features(x, "pre_quant"), io["features_prequant"].reshape(2, 64, 64),
                               atol=FEATURE_ATOL, rtol=0)  # fmt: skip
    torch.testing.assert_close(tok.features(x, "post_quant"), io["features_llm"], atol=FEATURE_ATOL, rtol=0)
    sem = tok.features(x, "semantic")
    assert sem.shape == (2, 64, 64) and sem.dtype == torch.float32
    with pytest.raises(TokbenchError, match="feature stages"):
        tok.features(x, "latent")


def test_whole_tower_in_bfloat16_matches_the_official_bf16_run(io):
    """dtype=bfloat16 is how VILA-U loads the tower; the README calls these outputs informational (bf16 noise
    flips close argmins), so most, not all, ids must agree."""
    tok = tokbench.load_tokenizer("vila-u", weights=WEIGHTS, config=CONFIG, dtype="bfloat16")
    with torch.no_grad():
        pre = tok.model.pre_quant(io["input"].bfloat16())
        codes, z_q = tok.model.quantize(pre)
    assert pre.dtype == torch.bfloat16
    torch.testing.assert_close(pre.float(), io["features_prequant_bf16"], atol=0.05, rtol=0)
    assert float((codes == io["indices_bf16"]).float().mean()) >= 0.95
    if torch.equal(codes, io["indices_bf16"]):
        torch.testing.assert_close(z_q.float().reshape(2, 64, -1), io["features_llm_bf16"], atol=0.02, rtol=0)
    # README: decoding `indices` with the all-bf16 tower gives exactly recon_from_indices
    with torch.no_grad():
        recon = tok.model.decode_codes(io["indices"])
    assert float((recon - io["recon_from_indices"]).abs().max()) <= RECON_ATOL


def test_sdpa_attention_gives_the_same_ids(io):
    """README: transformers' SDPA SigLIP reproduced the indices (features within 2.1e-6)."""
    tok = tokbench.load_tokenizer("vila-u", weights=WEIGHTS, config=CONFIG, attention="sdpa", text_tower=False)
    assert torch.equal(tok.encode(io["input_01"]).ids, io["indices"].reshape(2, 64, 4))
    torch.testing.assert_close(tok.features(io["input_01"], "pre_quant"), io["features_prequant"].reshape(2, 64, 64),
                               atol=FEATURE_ATOL, rtol=0)  # fmt: skip
    assert "sdpa attention" in tok.spec.notes


def test_protocol_reproduces_the_fixture_inputs():
    """`vila-u` = process_image with image_aspect_ratio 'resize' (PIL bicubic to S x S); README: the two images
    are skimage's astronaut()[0:300, 100:400] and chelsea()[20:300, 60:340] at S = 64, input_01 = pixels / 255."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    io = load_file(str(FIXTURE / "io.safetensors"))
    proto = get_protocol("vila-u")
    crops = [data.astronaut()[0:300, 100:400], data.chelsea()[20:300, 60:340]]
    for i, crop in enumerate(crops):
        out = proto.fn(Image.fromarray(crop), 64)
        assert out.size == (64, 64) and out.mode == "RGB"
        x = torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(x, io["input_01"][i], atol=1e-6, rtol=0)
    # non-square sources are squashed, not cropped: boxes scale per axis
    g = proto.geometry(300, 280, 64)
    assert g.box((0, 0, 300, 280)) == pytest.approx((0, 0, 64, 64))


# ---------------------------------------------------------------------------------------------- depth


def test_depth_prefix_encodes_and_decodes_the_first_codes(tok, io, sd):
    x = io["input_01"]
    full = tok.encode(x)
    for d in (1, 2, 3):
        part = tok.encode(x, depth=d)
        assert part.ids.shape == (2, 64, d) and torch.equal(part.ids, full.ids[..., :d])
        assert torch.equal(part.bits_per_image, torch.full((2,), 64 * d * 8.0, dtype=torch.float64))
    # decoded as RQ-VAE does: the sum of the first d code vectors (rows of the file's codebook)
    part = tok.encode(x, depth=2)
    codebook = sd["rqvaesiglip.quantizer.codebooks.0.weight"].float()
    summed = (codebook[part.ids[..., 0]] + codebook[part.ids[..., 1]]).reshape(2, 8, 8, -1)
    with torch.no_grad():
        expected = official_postprocess(tok.model.decode_latent(summed))
    out = tok.decode(part)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert float((out - tok.decode(full)).abs().max()) > 1e-3


def test_chunked_distances_give_the_same_ids(tok, io, monkeypatch):
    from tokbench.tokenizers import vila_u

    monkeypatch.setattr(vila_u, "_DISTANCE_ELEMENTS", 7 * 256)  # 7 positions per chunk, a ragged last chunk
    assert torch.equal(tok.encode(io["input_01"]).ids, io["indices"].reshape(2, 64, 4))


@pytest.mark.parametrize("bad", [0, 5, 2.0, "2", True])
def test_bad_depth_is_refused(tok, io, bad):
    with pytest.raises(TokbenchError, match=r"depth must be an integer in \[1, 4\]"):
        tok.encode(io["input_01"], depth=bad)


def test_encode_options_are_declared(tok, io):
    assert tuple(FAMILY.encode_options) == ("depth",) and tok.encode_options == ("depth",)
    with pytest.raises(TokbenchError, match="takes depth"):
        tok.encode(io["input_01"], n_scales=2)


def test_decode_checks_ids(tok, io):
    ids = io["indices"].reshape(2, 64, 4)
    with pytest.raises(TokbenchError, match=r"\(B, h\*w, depth\)"):
        tok.decode(Tokens(ids=ids[..., 0], grid=(8, 8)))
    with pytest.raises(TokbenchError, match="at most 4"):
        tok.decode(Tokens(ids=torch.cat([ids, ids[..., :1]], -1), grid=(8, 8)))
    with pytest.raises(TokbenchError, match=r"must lie in \[0, 256\)"):
        tok.decode(Tokens(ids=ids.clone().fill_(256), grid=(8, 8)))
    assert tok.decode(Tokens(ids=ids)).shape == (2, 3, 64, 64)  # a square grid when none is given


def test_input_size_is_the_siglip_size(tok, io):
    x = io["input_01"]
    with pytest.raises(TokbenchError, match="takes 64x64 images"):
        tok.encode(x[:, :, :48, :])  # non-square: one position table, no interpolation upstream
    with pytest.raises(TokbenchError, match="takes 64x64 images"):
        tok.encode(torch.nn.functional.interpolate(x, size=(72, 72)))
    # the patch conv floors: 71 px still gives 8 patches of 8, as upstream would accept it
    assert tok.encode(torch.nn.functional.interpolate(x, size=(71, 71))).ids.shape == (2, 64, 4)


# -------------------------------------------------------------------------------- understanding side


def _independent_siglip(sd: dict[str, torch.Tensor]):
    """transformers' SiglipModel built from the fixture's SigLIP config, the file's keys loaded strictly."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(**SIGLIP_CONFIG)
    config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    model = SiglipModel(config).eval()
    prefix = "rqvaesiglip.siglip_model."
    model.load_state_dict({k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}, strict=True)
    return model


def test_semantic_embedding_continues_siglip_from_the_quantised_features(tok, io, sd):
    sem = tok.semantic(io["input_01"])
    assert sem["embedding"].shape == (2, 64) and torch.equal(sem["ids"], io["indices"].reshape(2, 64, 4))
    torch.testing.assert_close(sem["embedding_normalized"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(sem["post_quant"], io["features_llm"], atol=FEATURE_ATOL, rtol=0)
    siglip = _independent_siglip(sd)
    vision = siglip.vision_model
    with torch.no_grad():
        # plain SigLIP: the unquantised branch is transformers' own image embedding of the input
        plain = siglip.get_image_features(pixel_values=io["input"])
        plain = getattr(plain, "pooler_output", plain)
        torch.testing.assert_close(sem["embedding_continuous"], plain, atol=1e-5, rtol=0)
        # the official LLM features (features_llm) through SigLIP's last layer, post_layernorm and head
        h = io["features_llm"]
        for layer in vision.encoder.layers[2:]:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        expected = vision.head(vision.post_layernorm(h))
    torch.testing.assert_close(sem["embedding"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(tok.features(io["input_01"], "semantic"), vision.post_layernorm(h), atol=1e-5, rtol=0)


def test_clip_encoder(tok, io, sd):
    enc = tok.clip_encoder()
    img = enc.encode_image(io["input_01"])  # 64 x 64 already: the protocol leaves it as it is
    torch.testing.assert_close(img, tok.semantic(io["input_01"])["embedding"], atol=1e-6, rtol=0)
    assert enc.encode_image(torch.nn.functional.interpolate(io["input_01"], size=(80, 96))).shape == (2, 64)
    ids = torch.tensor([[5, 17, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [9, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    enc.text_tokenizer = lambda texts: ids[: len(texts)]  # the SigLIP tokenizer files are not available offline
    text = enc.encode_text(["a", "b"])
    with torch.no_grad():
        expected = _independent_siglip(sd).get_text_features(input_ids=ids)
    expected = getattr(expected, "pooler_output", expected)
    assert text.shape == (2, 64)
    torch.testing.assert_close(text, expected, atol=1e-5, rtol=0)
    enc.text_tokenizer = lambda texts: torch.full((len(texts), 16), 150)
    with pytest.raises(TokbenchError, match="vocabulary of 100"):
        enc.encode_text(["x"])
    d = enc.describe()
    assert "discrete codes" in d["encoder"] and str(WEIGHTS) == d["weights"]


def test_text_tower_is_optional(io):
    tok = tokbench.load_tokenizer("vila-u", weights=WEIGHTS, config=CONFIG, text_tower=False)
    assert not hasattr(tok.model.rqvaesiglip.siglip_model, "text_model")
    assert torch.equal(tok.encode(io["input_01"]).ids, io["indices"].reshape(2, 64, 4))
    assert "text tower not loaded" in tok.spec.notes
    with pytest.raises(TokbenchError, match="without its text tower"):
        tok.clip_encoder()


# ------------------------------------------------------------------------------------- full size


def _release_siglip() -> dict:
    return SIGLIP_RELEASES["google/siglip-large-patch16-256"]


def test_released_256_tower_on_meta_matches_the_manifest():
    manifest = json.loads((FIXTURE / "manifest_full.json").read_text())
    # our release config and SigLIP table are the manifest's
    assert {k: v for k, v in RELEASE_256["rqvaesiglip"].items()} == {
        k: v for k, v in manifest["constructor_config"]["rqvaesiglip"].items()
        if k not in ("architectures", "decay", "latent_loss_weight", "model_type", "restart_unused_codes")
    }
    for part in ("vision_config", "text_config"):
        ref = {k: v for k, v in manifest["siglip_config"][part].items() if k != "model_type"}
        assert _release_siglip()[part] == ref
    cfg = vila_u_config(RELEASE_256)  # the SigLIP config from the table of pretrained_model
    assert cfg.grid == 16 and cfg.depth == 4 and cfg.n_embed == (16384,) * 4 and cfg.output_size == (256, 256)
    # the whole release file's layout, rqtransformer included (option rqtransformer=True)
    model = build_model(cfg, rqtransformer=True, device="meta")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert sum(math.prod(s) for s in shapes.values()) == manifest["total_state_dict_numel"] == 1_356_296_327
    # the tokenizer's default build: everything but the LLM's depth-transformer head
    default = {k: list(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    rq = {k: list(v) for k, v in rqtransformer_layout(RELEASE_256["rqtransformer"]).items()}
    assert not set(default) & set(rq) and {**default, **rq} == manifest["state_dict"]
    assert sum(math.prod(s) for s in rq.values()) == manifest["parameters_by_prefix_unique"]["rqtransformer"]


def test_released_384_sizes_on_meta():
    cfg = vila_u_config(RELEASE_384)
    assert (cfg.grid, cfg.code_grid, cfg.depth, cfg.output_size) == (27, (27, 27), 16, (384, 384))
    model = build_model(cfg, text_tower=False, device="meta")
    vision = model.rqvaesiglip.siglip_model.vision_model
    assert tuple(vision.embeddings.position_embedding.weight.shape) == (729, 1152)
    assert len(vision.encoder.layers) == 27 and cfg.select_index == 25


def test_variants_and_family_declaration():
    names = [v.name for v in VARIANTS]
    assert names == ["vila-u-7b-256", "vila-u-7b-384"] and FAMILY.default_variant == "vila-u-7b-256"
    for v in VARIANTS:
        assert v.weights.repo_id == f"mit-han-lab/{v.name}" and v.weights.filename == "vision_tower/model.safetensors"
        assert "vision_tower/config.json" in v.weights.companions and "MIT" in v.weights.licence
        assert "2409.04429" in v.paper and not v.published and "Table 1" in v.published_source  # not checked: not entered
    assert tokbench.registry.find("vila-u-7b-384")[1] is VARIANTS[1]


# -------------------------------------------------------------------------------- files and configs


def test_variant_name_with_the_fixture_file_reads_the_config_beside_it(io):
    """A variant row holds the release's sizes; the config.json beside a given file is the release's own."""
    tok = tokbench.load_tokenizer("vila-u-7b-256", weights=WEIGHTS)
    assert tok.spec.source["config"] == str(CONFIG) and tok.spec.name == "vila-u-7b-256"
    assert torch.equal(tok.encode(io["input_01"]).ids, io["indices"].reshape(2, 64, 4))
    assert torch.equal(tokbench.load_tokenizer("vila-u", weights=WEIGHTS).encode(io["input_01"]).ids,
                       io["indices"].reshape(2, 64, 4))  # fmt: skip


def test_variant_artifact_found_under_tokbench_weights(tmp_path, monkeypatch, io):
    """`$TOKBENCH_WEIGHTS/<artifact>/` holds the release's vision_tower files under their base names."""
    folder = tmp_path / "vila-u-7b-256"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("io.safetensors", "manifest_full.json"))
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path))
    tok = tokbench.load_tokenizer("vila-u-7b-256")
    assert tok.spec.source["checkpoint"] == str(folder / "model.safetensors")
    assert tok.spec.source["config"] == str(folder / "config.json")
    assert torch.equal(tok.encode(io["input_01"]).ids, io["indices"].reshape(2, 64, 4))
    # without its config.json the row's (full-size) reconstruction is used, and the tiny file does not fit it
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="wrong shapes"):
        tokbench.load_tokenizer("vila-u-7b-256")


def test_missing_config_and_siglip_config_are_explained(tmp_path):
    shutil.copy(WEIGHTS, tmp_path / "model.safetensors")
    with pytest.raises(TokbenchError, match="needs the vision tower's config.json"):
        tokbench.load_tokenizer("vila-u", weights=tmp_path / "model.safetensors")
    shutil.copy(CONFIG, tmp_path / "config.json")
    with pytest.raises(TokbenchError, match="'siglip_config'.*was not found"):
        tokbench.load_tokenizer("vila-u", weights=tmp_path / "model.safetensors")
    # given in the config instead of a folder beside the weights
    config = {**json.loads(CONFIG.read_text()), "siglip_config": SIGLIP_CONFIG}
    tok = tokbench.load_tokenizer("vila-u", weights=tmp_path / "model.safetensors", config=config)
    assert tok.spec.source["siglip_config"] == "config['siglip_config']"


def test_other_family_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="not a VILA-U vision tower checkpoint.*LlamaGen / Janus VQ"):
        tokbench.load_tokenizer("vila-u", weights=DATA / "llamagen_vq16/vq_ds16_c2i.pt", config=CONFIG)


def test_unknown_build_option_and_config_keys_are_refused():
    with pytest.raises(TokbenchError, match=r"unknown vila-u options \['ema'\]"):
        tokbench.load_tokenizer("vila-u", weights=WEIGHTS, config=CONFIG, ema=True)
    raw = json.loads(CONFIG.read_text())
    with pytest.raises(TokbenchError, match=r"unknown vila-u rqvaesiglip keys \['code_shap'\]; accepted: .*code_shape"):
        vila_u_config({**raw, "rqvaesiglip": {**raw["rqvaesiglip"], "code_shap": [8, 8, 4]}}, SIGLIP_CONFIG)
    with pytest.raises(TokbenchError, match="embed_dim 32 must equal"):
        vila_u_config({**raw, "rqvaesiglip": {**raw["rqvaesiglip"], "embed_dim": 32}}, SIGLIP_CONFIG)
    with pytest.raises(TokbenchError, match="n_embed has 2 entries"):
        vila_u_config({**raw, "rqvaesiglip": {**raw["rqvaesiglip"], "n_embed": [8, 8], "shared_codebook": False}},
                      SIGLIP_CONFIG)  # fmt: skip


def test_aliases_stored_once_load_and_conflicting_aliases_are_refused(tmp_path, sd, io):
    for name in ("config.json", "siglip_config"):
        src = FIXTURE / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    once = {k: v for k, v in sd.items() if not k.startswith(("rqvaesiglip.quantizer.codebooks.1",
                                                              "rqvaesiglip.quantizer.codebooks.2",
                                                              "rqvaesiglip.quantizer.codebooks.3",
                                                              "rqvaesiglip.logit_"))}  # fmt: skip
    save_file(once, str(tmp_path / "model.safetensors"))
    tok = tokbench.load_tokenizer("vila-u", weights=tmp_path / "model.safetensors")
    assert torch.equal(tok.encode(io["input_01"]).ids, io["indices"].reshape(2, 64, 4))
    assert "aliases_filled" in tok.spec.source
    bad = dict(sd)
    bad["rqvaesiglip.quantizer.codebooks.2.weight"] = sd["rqvaesiglip.quantizer.codebooks.2.weight"] + 1
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="are one tensor in this model"):
        tokbench.load_tokenizer("vila-u", weights=tmp_path / "model.safetensors")


def test_rqtransformer_is_skipped_but_checked_against_the_config(tok):
    notes = tok.spec.notes
    assert "rqtransformer (the LLM's depth-transformer head) not loaded (25 tensors)" in notes
    assert not any(k.startswith("rqtransformer.") for k in tok.model.state_dict())
    raw = json.loads(CONFIG.read_text())
    raw["rqtransformer"] = {**raw["rqtransformer"], "head": {"block": {"n_head": 4}, "n_layer": 2}}
    with pytest.raises(CheckpointError, match="rqtransformer"):
        tokbench.load_tokenizer("vila-u", weights=WEIGHTS, config=raw)


def test_whole_file_loads_strictly_with_the_rqtransformer_option(io, sd):
    tok = tokbench.load_tokenizer("vila-u", weights=WEIGHTS, config=CONFIG, rqtransformer=True)
    own = tok.model.state_dict()
    assert set(own) == set(sd)  # every tensor of the file, aliases included
    assert torch.equal(own["rqtransformer.pos_emb_d"], sd["rqtransformer.pos_emb_d"].float())
    assert torch.equal(tok.encode(io["input_01"]).ids, io["indices"].reshape(2, 64, 4))
    assert "rqtransformer (the LLM's depth-transformer head) loaded" in tok.spec.notes
    with pytest.raises(TokbenchError, match="needs the config's rqtransformer section"):
        tokbench.load_tokenizer("vila-u", weights="random", config=_config_b(), rqtransformer=True)


def test_aliases_are_one_tensor_in_the_loaded_model(tok):
    m = tok.model.rqvaesiglip
    assert m.logit_scale is m.siglip_model.logit_scale and m.logit_bias is m.siglip_model.logit_bias
    assert all(cb is m.quantizer.codebooks[0] for cb in m.quantizer.codebooks)  # shared_codebook
    assert len({id(cb) for cb in tokbench.load_tokenizer("vila-u", weights="random", config=_config_b())
                .model.quantizer.codebooks}) == 3  # fmt: skip


def test_spec_notes_say_the_decoder_runs_in_bfloat16(tok):
    m = tok.model.rqvaesiglip
    assert m.decoder.conv_out.weight.dtype == torch.bfloat16 and m.post_quant_conv.weight.dtype == torch.bfloat16
    assert m.siglip_model.vision_model.post_layernorm.weight.dtype == torch.float32
    assert "pixel decoder in bfloat16 as upstream" in tok.spec.notes
    assert tok.spec.preprocessing == "vila-u" and tok.spec.source["code"].endswith("096623cef36a57c707d4bdc5cdfeec823b58d223")


# ------------------------------------------------------------------- a second configuration (generality)


def _config_b() -> dict:
    """Other sizes than the fixture: 48 px SigLIP with 6x6 patches of 8, 4 layers, width 32, quantising after
    layer 1 (select_layer -3); 2x2 latent positions merged into each code (3x3 codes of width 128), depth 3
    with per-depth codebooks of 40, 24, 16; a decoder of two levels from a 4x5 resized latent."""
    return {
        "hidden_size": 32,
        "select_layer": -3,
        "siglip_config": {
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                              "num_attention_heads": 2, "image_size": 48, "patch_size": 8},
            "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "vocab_size": 50, "max_position_embeddings": 8},
        },
        "rqvaesiglip": {
            "latent_shape": [6, 6, 32], "code_shape": [3, 3, 3], "n_embed": [40, 24, 16], "shared_codebook": False,
            "embed_dim": 32, "decoder_latent_shape": [4, 5], "pretrained_model": "nowhere/siglip-tiny",
            "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4],
                         "resolution": 8, "z_channels": 16, "out_ch": 3, "in_channels": 3, "dropout": 0.0},
        },
    }  # fmt: skip


def _greedy_rq(vectors: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """Independent residual quantisation: nearest code (float64 Euclidean) on the running residual."""
    residual = vectors.double()
    codes = []
    for cb in codebooks:
        code = torch.cdist(residual, cb.double()).argmin(dim=1)
        residual = residual - cb.double()[code]
        codes.append(code)
    return torch.stack(codes, dim=-1)


def test_second_configuration_against_an_independent_quantiser():
    tok = tokbench.load_tokenizer("vila-u", weights="random", config=_config_b())
    cfg = tok.cfg
    assert (cfg.grid, cfg.code_grid, cfg.code_dim, cfg.select_index, cfg.output_size) == (6, (3, 3), 128, 1, (8, 10))
    gen = torch.Generator().manual_seed(3)
    codebooks = []
    for i, n in enumerate(cfg.n_embed):  # codebooks on the scale of the features, so the residual matters
        w = torch.randn(n + 1, 128, generator=gen) * (1.5 / (i + 1))
        tok.model.quantizer.codebooks[i].weight.data.copy_(w)
        codebooks.append(w[:-1])
    x = torch.rand(3, 3, 48, 48, generator=gen)
    tokens = tok.encode(x)
    assert tokens.ids.shape == (3, 9, 3) and tokens.grid == (3, 3) and tokens.codebook_size == (40, 24, 16)
    bits = 9 * (math.log2(40) + math.log2(24) + math.log2(16))
    torch.testing.assert_close(tokens.bits_per_image, torch.full((3,), bits, dtype=torch.float64))
    assert tok.spec.bits_per_token == pytest.approx(bits / 9) and tok.spec.tokens_per_image == 9

    pre = tok.features(x, "pre_quant").reshape(3, 6, 6, 32)
    # each code vector holds the 2x2 latent block (row, then column), as RQBottleneck.to_code_shape
    blocks = torch.stack([torch.cat([pre[:, 2 * i + a, 2 * j + c] for a in (0, 1) for c in (0, 1)], dim=-1)
                          for i in range(3) for j in range(3)], dim=1)  # fmt: skip
    expected = _greedy_rq(blocks.reshape(-1, 128), codebooks).reshape(3, 9, 3)
    assert torch.equal(tokens.ids, expected)
    assert len(set(expected[..., 0].flatten().tolist())) > 3  # not a degenerate single-code case

    # post_quant: the summed code vectors spread back over their 2x2 latent blocks
    summed = sum(codebooks[d][expected[..., d]] for d in range(3)).reshape(3, 3, 3, 2, 2, 32)
    latent = summed.permute(0, 1, 3, 2, 4, 5).reshape(3, 36, 32)
    torch.testing.assert_close(tok.features(x, "post_quant"), latent, atol=1e-5, rtol=0)

    assert torch.equal(tok.encode(x, depth=2).ids, tokens.ids[..., :2])
    assert tok.encode(x, depth=2).codebook_size == (40, 24)
    out = tok.decode(tokens)
    assert out.shape == (3, 3, 8, 10) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert tok.decode(tok.encode(x, depth=1)).shape == (3, 3, 8, 10)
    assert tok.semantic(x)["embedding"].shape == (3, 32)
    assert "RANDOM WEIGHTS" in tok.spec.notes and tok.spec.source["siglip_config"] == "config['siglip_config']"


def test_random_weights_build_is_seeded_and_has_position_ids():
    a = tokbench.load_tokenizer("vila-u", weights="random", config=_config_b())
    b = tokbench.load_tokenizer("vila-u", weights="random", config=_config_b())
    vision = a.model.rqvaesiglip.siglip_model.vision_model
    assert torch.equal(vision.embeddings.position_ids, torch.arange(36).view(1, -1))
    x = torch.rand(2, 3, 48, 48)
    assert torch.equal(a.encode(x).ids, b.encode(x).ids)


def test_reproduce_suite_names_the_variants_and_the_protocol(monkeypatch):
    from tokbench.protocols import protocols
    from tokbench.suite import load_suite

    monkeypatch.setenv("IMAGENET_VAL", "/nonexistent")
    suite = load_suite(Path(__file__).parents[1] / "benchmarks" / "reproduce" / "vila_u.yaml")
    assert [(t.name, t.resolution) for t in suite.tokenizers] == [("vila-u-7b-256", 256), ("vila-u-7b-384", 384)]
    assert suite.protocol == "vila-u" and "vila-u" in protocols()
    assert all(not t.published for t in suite.tokenizers)  # they live in the variant rows
    assert {"zeroshot"} <= {name for name, _ in suite.metrics}
