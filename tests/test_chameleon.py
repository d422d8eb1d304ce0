"""Chameleon / Anole VQGAN against outputs of the official upstream code (facebookresearch/chameleon).

Golden fixture (tests/data/chameleon_vqgan/, see its README): tiny random weights in the layout of Meta's
`tokenizer/vqgan.ckpt` (Lightning dict with `state_dict` and `loss.*` training entries) + `vqgan.yaml`, with
the indices, latents and reconstructions that `chameleon/inference/vqgan.py` produced and the output of
the official `ImageTokenizer` preprocessing on a partly transparent, non-square image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import tokbench
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol
from tokbench.registry import find
from tokbench.tokenizers.chameleon import ChameleonVQGAN, vqgan_config, whiten_transparency
from tokbench.weights import WeightsUnavailable

DATA = Path(__file__).parent / "data" / "chameleon_vqgan"
CKPT = DATA / "vqgan.ckpt"


TORCH_THREADS = 2  # see conftest._torch_threads


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "io.safetensors"))


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return torch.load(CKPT, map_location="cpu", weights_only=True)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """Official [-1, 1] output -> the tokbench [0, 1] convention, clamped as the official postprocessing."""
    return ((x.clamp(-1, 1) + 1) / 2).clamp(0, 1)


def transformers_vq_config() -> dict:
    """The fixture's config as transformers' converter writes it into ChameleonConfig.vq_config."""
    params = json.loads((DATA / "config.json").read_text())
    dd = params["ddconfig"]
    return {
        "vq_config": {
            "model_type": "chameleon_vqgan",
            "embed_dim": params["embed_dim"],
            "num_embeddings": params["n_embed"],
            "double_latent": dd["double_z"],
            "latent_channels": dd["z_channels"],
            "resolution": dd["resolution"],
            "in_channels": dd["in_channels"],
            "out_channels": dd["out_ch"],
            "base_channels": dd["ch"],
            "channel_multiplier": dd["ch_mult"],
            "num_res_blocks": dd["num_res_blocks"],
            "attn_resolutions": None,
            "dropout": dd["dropout"],
            "attn_type": "vanilla",
            "initializer_range": 0.02,
        },
        "model_type": "chameleon",
        "hidden_size": 4096,
    }


@pytest.mark.parametrize("config", ["vqgan.yaml", "config.json"])
def test_golden_indices_and_reconstruction(io, config):
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=CKPT, config=DATA / config)
    assert tok.spec.supports_decode and tok.spec.preprocessing == "chameleon"
    images = (io["input"] + 1) / 2
    tokens = tok.encode(images)
    b, _, h, w = io["latent"].shape
    assert tokens.ids.shape == (b, h * w) and tokens.grid == (h, w)
    assert torch.equal(tokens.ids, io["indices"].view(b, h * w))
    assert tok.spec.tokens_per_image == h * w and tok.spec.codebook_size == 256

    recon = tok.decode(tokens)
    torch.testing.assert_close(recon, as_unit(io["recon_from_indices"]), atol=1e-4, rtol=0)
    # the official uint8 postprocessing (truncation) of our floats: at most one level off at float boundaries
    ours_u8 = (recon * 255).permute(0, 2, 3, 1).to(torch.uint8).long()
    diff = (ours_u8 - io["recon_from_indices_uint8"]).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


def test_golden_latent_and_quant(io):
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=CKPT, config=DATA / "vqgan.yaml")
    m = tok.model
    with torch.inference_mode():
        latent = m.quant_conv(m.encoder(io["input"]))
        quant = m.quantize.embedding(io["indices"]).view(2, 4, 4, -1).permute(0, 3, 1, 2)
        recon = m.decoder(m.post_quant_conv(io["quant"]))
    torch.testing.assert_close(latent, io["latent"], atol=1e-4, rtol=0)
    torch.testing.assert_close(quant, io["quant"], atol=1e-4, rtol=0)
    torch.testing.assert_close(recon, io["recon"], atol=1e-4, rtol=0)


def test_yaml_training_entries_ignored_and_reported(checkpoint):
    cfg = yaml.safe_load((DATA / "vqgan.yaml").read_text())
    assert "ckpt_path" in cfg["model"]["params"] and "lossconfig" in cfg["model"]["params"]
    assert vqgan_config(cfg) == vqgan_config(json.loads((DATA / "config.json").read_text()))
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=CKPT, config=cfg)
    loss_keys = sorted(k for k in checkpoint["state_dict"] if k.startswith("loss."))
    assert loss_keys and sorted(tok.ignored_keys) == loss_keys
    assert f"ignored {len(loss_keys)} training-only" in tok.spec.notes


def test_chameleon_protocol_matches_official_preprocessing(io):
    rgba = io["raw_rgba"].numpy().astype(np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    assert (rgba[:, :, 3] < 255).any()  # the fixture exercises the alpha blend
    side = io["raw_preprocessed"].shape[-1]
    out = get_protocol("chameleon").fn(img, side)
    assert out.mode == "RGB" and out.size == (side, side)
    # the official conversion to the model input: x / 255 * 2 - 1 in float64, then float32
    ours = torch.from_numpy(np.array(out) / 255.0 * 2 - 1).permute(2, 0, 1).float()[None]
    assert float((ours - io["raw_preprocessed"]).abs().max()) <= 2 / 255 + 1e-6  # 1/255 in [0, 1] units


def test_whiten_transparency_truncates():
    # value 1 at alpha 128 over white: 255 * (1 - 128/255) + 1 * 128/255 = 127.50..., truncated to 127 (not 128)
    px = np.array([[[1, 1, 1, 128], [10, 20, 30, 255]]], dtype=np.uint8)
    out = np.array(whiten_transparency(Image.fromarray(px, "RGBA")))
    assert tuple(out[0, 0]) == (127, 127, 127) and tuple(out[0, 1]) == (10, 20, 30)
    arr = np.full((2, 2, 4), 200, dtype=np.uint8)
    arr[..., 3] = 255  # fully opaque: plain conversion, no blend
    opaque = Image.fromarray(arr, "RGBA")
    assert np.array_equal(np.array(whiten_transparency(opaque)), np.full((2, 2, 3), 200, dtype=np.uint8))


def _transformers_shards(tmp_path: Path, checkpoint: dict) -> Path:
    """The fixture in the transformers-format layout: `model.vqmodel.` keys among LM keys, no decoder, sharded."""
    sd = checkpoint["state_dict"]
    vq = {f"model.vqmodel.{k}": v.clone() for k, v in sd.items() if not k.startswith(("decoder.", "loss."))}
    save_file(vq, str(tmp_path / "model-00001-of-00002.safetensors"))
    weight_map = dict.fromkeys(vq, "model-00001-of-00002.safetensors")
    # the LM shard is never written: loading must not need it
    weight_map.update(
        dict.fromkeys(["model.embed_tokens.weight", "lm_head.weight"], "model-00002-of-00002.safetensors")
    )
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("config", ["config.json", "transformers"])
def test_transformers_format_is_encode_only(io, checkpoint, tmp_path, config):
    index = _transformers_shards(tmp_path, checkpoint)
    cfg = DATA / "config.json" if config == "config.json" else transformers_vq_config()
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=index, config=cfg)
    assert tok.spec.supports_decode is False and "no VQGAN decoder" in tok.spec.notes
    assert tok.model.decoder is None and tok.spec.source["layout"] == "transformers"
    tokens = tok.encode((io["input"] + 1) / 2)
    assert torch.equal(tokens.ids.reshape(-1), io["indices"])
    with pytest.raises(TokbenchError, match="decoder"):
        tok.decode(tokens)


def test_transformers_format_single_file(io, checkpoint, tmp_path):
    sd = checkpoint["state_dict"]
    keys = {f"model.vqmodel.{k}": v.clone() for k, v in sd.items() if not k.startswith(("decoder.", "loss."))}
    keys["model.norm.weight"] = torch.ones(8)  # LM tensors beside it are not the tokenizer's
    save_file(keys, str(tmp_path / "model.safetensors"))
    tok = tokbench.load_tokenizer(
        "chameleon-vqgan", weights=tmp_path / "model.safetensors", config=DATA / "config.json"
    )
    assert not tok.spec.supports_decode
    assert torch.equal(tok.encode((io["input"] + 1) / 2).ids.reshape(-1), io["indices"])


def test_full_size_matches_manifest():
    manifest = json.loads((DATA / "manifest_full.json").read_text())
    with torch.device("meta"):
        model = ChameleonVQGAN(vqgan_config(manifest["config"]))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert list(shapes) == list(manifest["state_dict"])  # the release's key order too
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    cfg = vqgan_config(manifest["config"])
    assert cfg.downsample == 16 and (cfg.resolution // cfg.downsample) ** 2 == 1024


def test_release_config_is_the_default():
    manifest = json.loads((DATA / "manifest_full.json").read_text())
    assert vqgan_config(None) == vqgan_config(manifest["config"])
    _, variant = find("chameleon-vqgan-anole")
    assert vqgan_config(variant.config) == vqgan_config(manifest["config"])
    assert (
        variant.weights.repo_id == "GAIR/Anole-7b-v0.1" and variant.weights.filename == "tokenizer/vqgan.ckpt"
    )
    assert not variant.weights.gated


@pytest.mark.parametrize("mutation", ["wrong_shape", "missing", "unknown"])
def test_bad_checkpoint_is_refused(checkpoint, tmp_path, mutation):
    sd = dict(checkpoint["state_dict"])
    if mutation == "wrong_shape":
        sd["quant_conv.weight"] = torch.zeros(17, 32, 1, 1)
    elif mutation == "missing":
        del sd["decoder.conv_out.bias"]
    else:
        sd["discriminator.main.0.weight"] = torch.zeros(1)
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": sd, "epoch": 0}, path)
    with pytest.raises(
        CheckpointError,
        match={
            "wrong_shape": "quant_conv.weight",
            "missing": "decoder.conv_out.bias",
            "unknown": "discriminator",
        }[mutation],
    ):
        tokbench.load_tokenizer("chameleon-vqgan", weights=path, config=DATA / "config.json")


def test_config_errors():
    with pytest.raises(TokbenchError, match="params"):
        vqgan_config({"model": {"target": "taming.models.vqgan.VQModel"}})
    base = json.loads((DATA / "config.json").read_text())
    with pytest.raises(TokbenchError, match="double_z"):
        vqgan_config({**base, "ddconfig": {**base["ddconfig"], "double_z": True}})
    with pytest.raises(TokbenchError, match="unknown VQModel arguments"):
        vqgan_config({**base, "n_embeds": 3})
    with pytest.raises(TokbenchError, match="lacks"):
        vqgan_config({"embed_dim": 4, "n_embed": 8})


def test_encode_checks_sizes_and_decode_checks_ids(io):
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=CKPT, config=DATA / "config.json")
    with pytest.raises(TokbenchError, match="divisible by 16"):
        tok.encode(torch.rand(1, 3, 40, 64))
    bad = Tokens(ids=torch.full((1, 16), 256), grid=(4, 4), codebook_size=256)
    with pytest.raises(TokbenchError, match=r"\[0, 256\)"):
        tok.decode(bad)
    # grid-less ids decode as the square grid the official pil_from_img_toks assumes
    ids = io["indices"].view(2, 16)
    torch.testing.assert_close(
        tok.decode(Tokens(ids=ids, codebook_size=256)), as_unit(io["recon_from_indices"]), atol=1e-4, rtol=0
    )


def test_gated_variants_explain_access(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailable, match="request access") as e:
        tokbench.load_tokenizer("chameleon-vqgan-meta")
    assert "chameleon-vqgan-anole" in str(e.value)
    with pytest.raises(WeightsUnavailable, match="gated") as e:
        tokbench.load_tokenizer("chameleon-7b-vqgan-hf")
    assert "facebook/chameleon-7b" in str(e.value)


# ---------------------------------------------------------------------------------------------------
# Emu3's vision tokenizer (family emu3-vq): fixture made with BAAI's official Emu3VisionVQModel code
# ---------------------------------------------------------------------------------------------------

EMU3 = Path(__file__).parent / "data" / "emu3_vq"


@pytest.fixture(scope="module")
def emu3_io() -> dict[str, torch.Tensor]:
    return load_file(str(EMU3 / "io.safetensors"))


@pytest.fixture(scope="module")
def emu3_tok():
    return tokbench.load_tokenizer("emu3-vq", weights=EMU3 / "model.safetensors", config=EMU3 / "config.json")


def test_emu3_golden_indices_and_reconstruction(emu3_io, emu3_tok):
    assert emu3_tok.spec.source["layout"] == "baai"
    tokens = emu3_tok.encode((emu3_io["input"] + 1) / 2)
    b, h, w = emu3_io["indices"].shape
    assert tokens.grid == (h, w) and torch.equal(tokens.ids, emu3_io["indices"].view(b, h * w))
    recon = emu3_tok.decode(tokens)
    torch.testing.assert_close(recon, as_unit(emu3_io["recon"]), atol=1e-4, rtol=0)
    ours_u8 = (recon * 255).permute(0, 2, 3, 1).to(torch.uint8).long()
    assert int((ours_u8 - emu3_io["recon_uint8"]).abs().max()) <= 1


def test_emu3_transformers_layout(emu3_io, emu3_tok, tmp_path):
    # the transformers conversion stores Emu3VQVAE's own names under model.vqmodel. beside the LM
    sd = {f"model.vqmodel.{k}": v.clone() for k, v in emu3_tok.model.state_dict().items()}
    sd["model.text_model.norm.weight"] = torch.ones(4)
    save_file(sd, str(tmp_path / "model.safetensors"))
    vq_config = {"vq_config": {**json.loads((EMU3 / "config.json").read_text()), "model_type": "emu3_vqgan"}}
    tok = tokbench.load_tokenizer("emu3-vq", weights=tmp_path / "model.safetensors", config=vq_config)
    assert tok.spec.source["layout"] == "transformers"
    assert torch.equal(tok.encode((emu3_io["input"] + 1) / 2).ids.reshape(-1), emu3_io["indices"].reshape(-1))


def test_emu3_full_size_release_keys_map_onto_transformers():
    from transformers import Emu3VQVAE

    from tokbench.tokenizers.chameleon import emu3_config, emu3_from_baai_keys

    manifest = json.loads((EMU3 / "manifest_full.json").read_text())
    official = {k: torch.empty(v, device="meta") for k, v in manifest["state_dict"].items()}
    mapped = {k: list(v.shape) for k, v in emu3_from_baai_keys(official).items()}
    with torch.device("meta"):
        model = Emu3VQVAE(emu3_config(manifest["config"]))
    assert mapped == {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    assert emu3_config(None).to_dict()["codebook_size"] == manifest["config"]["codebook_size"] == 32768


def test_emu3_missing_key_is_refused(tmp_path):
    sd = load_file(str(EMU3 / "model.safetensors"))
    del sd["decoder.conv_out.bias"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="decoder.conv_out.bias"):
        tokbench.load_tokenizer(
            "emu3-vq", weights=tmp_path / "model.safetensors", config=EMU3 / "config.json"
        )


def test_config_beside_the_checkpoint_is_used(io, tmp_path):
    # an original-format tokenizer/ folder: vqgan.ckpt + vqgan.yaml, no config argument
    for name in ("vqgan.ckpt", "vqgan.yaml"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=tmp_path)
    assert tok.spec.source["config"] == str(tmp_path / "vqgan.yaml")
    assert torch.equal(tok.encode((io["input"] + 1) / 2).ids.reshape(-1), io["indices"])


ALT = Path(__file__).parent / "data" / "chameleon_vqgan_alt"


@pytest.mark.parametrize("config", ["vqgan.yaml", "config.json"])
def test_alternative_config_matches_official_outputs(config):
    """Another size than config A (see its README): attention at both levels (attn_resolutions [16, 8] for
    ddconfig.resolution 16, while the images are 16x32), num_res_blocks 2, batch 3, downsample 2."""
    alt = load_file(str(ALT / "io.safetensors"))
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=ALT / "vqgan.ckpt", config=ALT / config)
    b, _, h, w = alt["latent"].shape
    tokens = tok.encode((alt["input"] + 1) / 2)
    assert tokens.grid == (h, w) and torch.equal(tokens.ids, alt["indices"].view(b, h * w))
    recon = tok.decode(tokens)
    torch.testing.assert_close(recon, as_unit(alt["recon_from_indices"]), atol=1e-4, rtol=0)
    diff = ((recon * 255).permute(0, 2, 3, 1).to(torch.uint8).long() - alt["recon_from_indices_uint8"]).abs()
    assert int(diff.max()) <= 1
    m = tok.model
    with torch.inference_mode():
        torch.testing.assert_close(m.quant_conv(m.encoder(alt["input"])), alt["latent"], atol=1e-4, rtol=0)
        torch.testing.assert_close(m.decoder(m.post_quant_conv(alt["quant"])), alt["recon"], atol=1e-4, rtol=0)
    # the preprocessing on another aspect ratio and target size (37x23 RGBA -> 32x32)
    rgba = alt["raw_rgba"].numpy().astype(np.uint8)
    side = alt["raw_preprocessed"].shape[-1]
    out = get_protocol("chameleon").fn(Image.fromarray(rgba, "RGBA"), side)
    ours = torch.from_numpy(np.array(out) / 255.0 * 2 - 1).permute(2, 0, 1).float()[None]
    assert float((ours - alt["raw_preprocessed"]).abs().max()) <= 2 / 255 + 1e-6


def test_config_resolution_need_not_be_a_multiple_of_the_factor(tmp_path):
    """ddconfig.resolution only places attention upstream (50 with factor 16 builds there): the default
    benchmark size becomes the largest multiple below it; an explicit size must still be a multiple."""
    cfg = json.loads((DATA / "config.json").read_text())
    cfg["ddconfig"]["resolution"] = 50
    tok = tokbench.load_tokenizer("chameleon-vqgan", weights=CKPT, config=cfg)
    assert tok.spec.resolution == 48 and tok.spec.tokens_per_image == 9
    with pytest.raises(TokbenchError, match="multiple of 16"):
        tokbench.load_tokenizer("chameleon-vqgan", weights=CKPT, config=cfg, resolution=50)
