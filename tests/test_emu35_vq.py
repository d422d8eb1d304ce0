"""Emu3.5's vision tokenizer against outputs of the official upstream code.

Golden fixture tests/data/emu35_vq/ (see its README): tiny random weights in the release's layout (`config.yaml` +
`model.ckpt` = `{"state_dict": ...}`) and what baaivision/Emu3.5's own `IBQ` produced for two images that its
`smart_resize` made 64 x 64. `manifest_full.json` lists the parameter shapes of the released model.

The second config is tests/data/ibq_alt/ (ibq's fixture): TencentARC SEED-Voken's IBQ on another config
(n_embed 48, attention at every level, batch 3, NON-SQUARE 16 x 24). The golden README compares the two code
bases: same modules, parameter names, logits and ids; so its raw weights, re-saved in Emu3.5's layout, must give
its `*_raw` outputs here.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import tokbench
from tests.test_open_magvit2 import transposed_copy
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError
from tokbench.protocols import get_protocol, move_boxes
from tokbench.registry import find
from tokbench.tokenizers import emu35_vq
from tokbench.tokenizers.emu35_vq import Emu35VQ, emu35_config, smart_resize_size

DATA = Path(__file__).parent / "data"
EMU35 = DATA / "emu35_vq"
CKPT = EMU35 / "model.ckpt"
CONFIG_YAML = EMU35 / "config.yaml"
CONFIG_JSON = EMU35 / "config.json"
IBQ_ALT = DATA / "ibq_alt"
FAMILY = "emu35-vq"

TORCH_THREADS = 1  # see conftest._torch_threads


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(EMU35 / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer(FAMILY, weights=CKPT, config=CONFIG_YAML)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def official_uint8(x: torch.Tensor) -> torch.Tensor:
    """decode_image's postprocessing of a raw decode: ((x + 1) * 127.5).clamp(0, 255), truncated, NHWC."""
    return ((x + 1.0) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8).long()


# ------------------------------------------------------------------------------------------ golden outputs


@pytest.mark.parametrize("config", [CONFIG_YAML, CONFIG_JSON], ids=["config.yaml", "config.json"])
def test_public_api_matches_official(io, config):
    tok = tokbench.load_tokenizer(FAMILY, weights=CKPT, config=config)
    tokens = tok.encode(as_unit(io["input"]))
    assert tokens.grid == (4, 4) and tokens.ids.shape == (2, 16) and tokens.ids.dtype == torch.int64
    # upstream's ids are flat (b, y, x); .view(B, h * w) is tokbench's row-major (B, N)
    assert torch.equal(tokens.ids, io["indices"].view(2, 16))
    assert tokens.bits_per_image.tolist() == [16 * math.log2(1024)] * 2
    recon = tok.decode(tokens)
    assert recon.shape == (2, 3, 64, 64)
    torch.testing.assert_close(recon, as_unit(io["recon_from_indices"]), atol=1e-4, rtol=0)
    # the official uint8 image from ours: truncation may move a value by one step
    ours = (recon * 255).permute(0, 2, 3, 1).to(torch.uint8).long()
    diff = (ours - io["recon_uint8"]).abs()
    assert int(diff.max()) <= 1 and float((diff == 0).double().mean()) > 0.99


def test_model_level_outputs_match_official(tok, io):
    model = tok.model
    with torch.no_grad():
        torch.testing.assert_close(model.latent(io["input"]), io["latent"], atol=1e-4, rtol=0)
        ids = model.encode_ids(io["input"])
        assert ids.shape == (2, 4, 4) and torch.equal(ids.flatten(), io["indices"])
        torch.testing.assert_close(model.quantize.codes(ids), io["quant"], atol=1e-6, rtol=0)
        torch.testing.assert_close(model.decode_codes(io["quant"]), io["recon"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode_ids(ids), io["recon_from_indices"], atol=1e-4, rtol=0)


def test_features_are_the_quantiser_input_and_the_codebook_rows(tok, io):
    x = as_unit(io["input"])
    pre = tok.features(x, "pre_quant")
    post = tok.features(x, "post_quant")
    assert tok.feature_stages[0] == "pre_quant" and pre.shape == post.shape == (2, 16, 16)
    torch.testing.assert_close(pre, io["latent"].flatten(2).transpose(1, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(post, io["quant"].flatten(2).transpose(1, 2), atol=1e-6, rtol=0)
    assert tok.features(x[:, :, :48], "post_quant").shape == (2, 12, 16)  # non-square: 3 x 4 tokens
    with pytest.raises(TokbenchError, match="feature stages"):
        tok.features(x, "semantic")


def test_ids_are_the_inner_product_argmax_not_the_nearest_code(io):
    """Independent of the model: the codebook straight from the checkpoint and the official latent."""
    codebook = torch.load(CKPT, map_location="cpu", weights_only=True)["state_dict"]["quantize.embedding.weight"]
    z = io["latent"].double().permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
    assert torch.equal((z @ codebook.double().t()).argmax(1), io["indices"])
    nearest = torch.cdist(z, codebook.double()).argmin(1)
    assert int((nearest != io["indices"]).sum()) > 16  # most ids would change


def test_chunked_search_gives_the_same_ids(tok, io, monkeypatch):
    monkeypatch.setattr(emu35_vq, "_LOGIT_ELEMENTS", 5 * 1024)  # 5 positions per chunk, a ragged last chunk
    with torch.no_grad():
        assert torch.equal(tok.model.encode_ids(io["input"]).flatten(), io["indices"])


def test_non_square_images_commute_with_the_transpose(tok, io):
    x = as_unit(io["input"])[:, :, 8:56, :]  # 48 x 64
    tokens = tok.encode(x)
    assert tokens.grid == (3, 4) and tokens.ids.shape == (2, 12)
    out = tok.decode(tokens)
    assert out.shape == (2, 3, 48, 64) and 0 <= float(out.min()) and float(out.max()) <= 1
    model_t = transposed_copy(tok.model)  # the reference for transposed images (see its docstring)
    with torch.no_grad():
        ids = tok.model.encode_ids(x * 2 - 1)
        assert torch.equal(ids.flatten(1), tokens.ids)
        assert torch.equal(model_t.encode_ids((x * 2 - 1).transpose(-1, -2)), ids.transpose(-1, -2))
        recon_t = model_t.decode_ids(ids.transpose(-1, -2).contiguous())
    torch.testing.assert_close(recon_t.transpose(-1, -2), tok.model.decode_ids(ids), atol=1e-4, rtol=0)
    with pytest.raises(TokbenchError, match="divisible by 16"):
        tok.encode(x[:, :, :40])


# ------------------------------------------------------------------------------------- preprocessing


def test_emu35_protocol_reproduces_the_official_input(io):
    skimage_data = pytest.importorskip("skimage.data")
    sources = [skimage_data.astronaut()[0:400, 50:450], skimage_data.coffee()[0:400, 100:500]]
    protocol = get_protocol("emu35").fn
    # build_image: smart_resize(img, area=64*64), then torch.tensor(np.array(img) / 127.5 - 1.0) in float64
    x = torch.stack([torch.tensor(np.array(protocol(Image.fromarray(s), 64)) / 127.5 - 1.0).float().permute(2, 0, 1)
                     for s in sources])
    assert torch.equal(x, io["input"])
    tok = tokbench.load_tokenizer(FAMILY, weights=CKPT, config={**yaml.safe_load(CONFIG_YAML.read_text()),
                                                                 "image_area": 64 * 64})
    pixels = (tok.preprocess(Image.fromarray(sources[0]))[0] * 255).round().to(torch.uint8)  # k / 255 -> k
    assert torch.equal(pixels, torch.from_numpy(np.array(protocol(Image.fromarray(sources[0]), 64))).permute(2, 0, 1))


@pytest.mark.parametrize(("source", "size", "expected"), [
    ((640, 480), 256, (288, 224)),     # h = int(sqrt(65536 / (4/3))) = 221 -> 224; w = int(221 * 4/3) = 294 -> 288
    ((1920, 1080), 720, (960, 544)),   # h = 540 -> 544 (halves round up); w = 960
    ((300, 400), 720, (624, 832)),     # h = int(831.38) = 831 -> 832; w = int(623.25) = 623 -> 624
    ((400, 300), 64, (80, 48)),        # h = 55 -> 48; w = int(73.33) = 73 -> 80
    ((777, 777), 1024, (1024, 1024)),  # square sources give size x size
])  # fmt: skip
def test_smart_resize_sizes_worked_by_hand(source, size, expected):
    assert smart_resize_size(*source, size * size) == expected
    img = Image.new("RGBA", source, (10, 200, 30, 0))
    out = get_protocol("emu35").fn(img, size)
    assert out.mode == "RGB" and out.size == expected
    assert np.asarray(out)[0, 0].tolist() == [10, 200, 30]  # alpha dropped (convert("RGB")), not composited


def test_emu35_geometry_is_a_plain_resize():
    # (640, 480) at 256 -> 288 x 224: x * 0.45, y * 224 / 480, no crop offset
    kept, boxes = move_boxes([(100.0, 100.0, 200.0, 150.0)], "emu35", (640, 480), 256)
    assert kept == [0]
    np.testing.assert_allclose(boxes[0], (45.0, 100 * 224 / 480, 90.0, 150 * 224 / 480), atol=1e-9)
    with pytest.raises(TokbenchError, match="too extreme"):
        smart_resize_size(4000, 10, 64 * 64)


# --------------------------------------------------------------------------------- full size, variant


def test_released_architecture_on_meta_matches_the_manifest():
    manifest = json.loads((EMU35 / "manifest_full.json").read_text())
    cfg = emu35_config(manifest["config"])
    assert cfg == emu35_config({}) == emu35_config(find(FAMILY)[1].config)
    with torch.device("meta"):
        model = Emu35VQ(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes.items()) == list(manifest["params"].items())  # names, shapes and the release's order
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"] == 455_336_963
    assert sum(p.numel() for p in model.encoder.parameters()) == manifest["parts"]["encoder"]
    assert sum(p.numel() for p in model.decoder.parameters()) == manifest["parts"]["decoder"]
    assert cfg.attention_levels() == ([4], [4]) and cfg.downsample == 16
    # the official default pixel budget 720 x 720 -> 45 x 45 ids of 17 bits
    assert cfg.default_resolution() == 720 and cfg.image_area == 518400 and cfg.ds_factor == 16


def test_variant_row_and_family():
    family, variant = find(FAMILY)
    assert variant is not None and variant.name == FAMILY and family.default_variant == FAMILY
    assert variant.weights.repo_id == "BAAI/Emu3.5-VisionTokenizer" and variant.weights.filename == "model.ckpt"
    assert variant.weights.companions == ("config.yaml",) and variant.weights.licence.startswith("Apache-2.0")
    assert "arXiv:2510.26583" in variant.paper and variant.published == {}
    assert "baaivision/Emu3.5 @ 8fcf1da" in family.code and family.convolutional
    assert find("emu3.5-vq")[0] is family
    assert variant.resolution == emu35_config(variant.config).default_resolution()


def test_golden_config_fields_and_attention(tok):
    meta = json.loads(CONFIG_JSON.read_text())["_fixture"]
    cfg = tok.model.config
    assert (cfg.ch, cfg.ch_mult, cfg.z_channels, cfg.embed_dim, cfg.n_embed) == (32, (1, 1, 1, 1, 2), 32, 16, 1024)
    assert cfg.attention_levels() == (meta["attention_levels_encoder"], meta["attention_levels_decoder"])
    assert [i for i, s in enumerate(tok.model.encoder.down) if len(s.attn)] == meta["attention_levels_encoder"]
    assert [i for i, s in enumerate(tok.model.decoder.up) if len(s.attn)] == meta["attention_levels_decoder"]
    assert sum(p.numel() for p in tok.model.parameters()) == 979_123
    assert tok.spec.preprocessing == "emu35" and tok.spec.codebook_size == 1024 and tok.spec.bits_per_token == 10


# ------------------------------------------------------------------------------------- a second config


def _ibq_alt_as_emu35(folder: Path) -> dict:
    """ibq_alt's raw weights saved as Emu3.5's model.ckpt, its IBQ keywords as config.yaml, in `folder`."""
    sd = torch.load(IBQ_ALT / "imagenet256_262144.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("model_ema.")}}, folder / "model.ckpt")
    init = json.loads((IBQ_ALT / "config.json").read_text())["model"]["init_args"]
    cfg = {k: init[k] for k in ("ddconfig", "n_embed", "embed_dim")}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def test_second_config_non_square_batch_3_matches_official_ibq(tmp_path):
    if not IBQ_ALT.is_dir():
        pytest.skip("tests/data/ibq_alt is not here")
    cfg = _ibq_alt_as_emu35(tmp_path)
    io = load_file(str(IBQ_ALT / "io.safetensors"))
    # no config given: the config.yaml beside the checkpoint, as the official build_vision_tokenizer reads
    for tok in (tokbench.load_tokenizer(FAMILY, weights=tmp_path / "model.ckpt"),
                tokbench.load_tokenizer(FAMILY, weights=tmp_path),  # a release folder, as build_vision_tokenizer
                tokbench.load_tokenizer(FAMILY, weights=tmp_path / "model.ckpt", config=cfg)):
        assert tok.model.config.n_embed == 48 and tok.model.config.downsample == 2
        tokens = tok.encode(as_unit(io["input"]))
        assert tokens.grid == (8, 12) and tokens.ids.shape == (3, 96)
        assert torch.equal(tokens.ids.flatten(), io["indices_raw"])
        assert torch.allclose(tokens.bits_per_image, torch.full((3,), 96 * math.log2(48), dtype=torch.float64))
        torch.testing.assert_close(tok.decode(tokens), as_unit(io["recon_from_indices_raw"]), atol=1e-4, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(tok.model.latent(io["input"]), io["latent_raw"], atol=1e-4, rtol=0)
            torch.testing.assert_close(tok.model.decode_codes(io["quant_raw"]), io["recon_raw"], atol=1e-4, rtol=0)
        post = tok.features(as_unit(io["input"]), "post_quant")
        torch.testing.assert_close(post, io["quant_raw"].flatten(2).transpose(1, 2), atol=1e-6, rtol=0)
        assert tok.spec.source["checkpoint"] == str(tmp_path / "model.ckpt")


SMALL = {
    "ddconfig": {"double_z": False, "z_channels": 6, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 16,
                 "ch_mult": [1, 2, 2, 1], "num_res_blocks": 2, "attn_resolutions": [8], "dropout": 0.0,
                 "resamp_with_conv": False},
    "n_embed": 300, "embed_dim": 5, "norm_groups": 8, "image_area": 96 * 96,
}  # fmt: skip


def test_other_sizes_batch_and_non_square_with_random_weights():
    tok = tokbench.load_tokenizer(FAMILY, weights="random", config=SMALL)
    cfg = tok.model.config
    assert cfg.downsample == 8 and cfg.norm_groups == 8 and not cfg.resamp_with_conv
    assert cfg.attention_levels() == ([2], [2])  # encoder 32 -> 16 -> 8; decoder 4 -> 8 at level 2
    assert tok.model.encoder.down[0].downsample.with_conv is False and not hasattr(tok.model.encoder.down[0]
                                                                                   .downsample, "conv")
    assert tok.spec.resolution == 96 and tok.spec.tokens_per_image == 144 and "RANDOM WEIGHTS" in tok.spec.notes
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 24, 40, generator=g)
    tokens = tok.encode(x)
    assert tokens.grid == (3, 5) and tokens.ids.shape == (3, 15) and tokens.ids.dtype == torch.int64
    assert int(tokens.ids.min()) >= 0 and int(tokens.ids.max()) < 300
    assert torch.allclose(tokens.bits_per_image, torch.full((3,), 15 * math.log2(300), dtype=torch.float64))
    # upstream encodes one image at a time: the batch must not change any image's ids
    for i in range(3):
        assert torch.equal(tok.encode(x[i : i + 1]).ids, tokens.ids[i : i + 1])
    # the quantiser as a formula, in float64 on the model's own latent
    with torch.no_grad():
        z = tok.model.latent(x * 2 - 1).double().permute(0, 2, 3, 1).reshape(-1, 5)
    codebook = tok.model.quantize.embedding.weight.double()
    assert torch.equal((z @ codebook.t()).argmax(1).view(3, 15), tokens.ids)
    out = tok.decode(tokens)
    assert out.shape == (3, 3, 24, 40) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert tok.features(x, "pre_quant").shape == (3, 15, 5)
    half = tokbench.load_tokenizer(FAMILY, weights="random", config=SMALL, dtype="bfloat16")
    assert half.encode(x).ids.shape == (3, 15) and half.spec.dtype == "bfloat16"


# ------------------------------------------------------------------------------------- refusals


def test_checkpoints_of_other_families_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="LlamaGen / Janus VQ"):
        tokbench.load_tokenizer(FAMILY, weights=DATA / "llamagen_vq16/vq_ds16_c2i.pt", config=CONFIG_YAML)
    with pytest.raises(CheckpointError, match=r"model_ema.*load it with 'ibq'"):
        tokbench.load_tokenizer(FAMILY, weights=DATA / "ibq/imagenet256_262144.ckpt", config=CONFIG_YAML)
    with pytest.raises(CheckpointError, match="Emu3's MoVQGAN.*'emu3-vq'"):
        tokbench.load_tokenizer(FAMILY, weights=DATA / "emu3_vq/model.safetensors", config=CONFIG_YAML)
    # Chameleon's vqgan.ckpt carries its training loss.* entries, which the strict official loader refuses
    chameleon = DATA / "chameleon_vqgan/vqgan.ckpt"
    with pytest.raises(CheckpointError, match=r"training entries \(loss\..*'chameleon-vqgan'"):
        tokbench.load_tokenizer(FAMILY, weights=chameleon, config=CONFIG_YAML)
    # without them its key names are the same as Emu3.5's: its other sizes do not fit this config
    sd = torch.load(chameleon, map_location="cpu", weights_only=True)["state_dict"]
    torch.save({k: v for k, v in sd.items() if not k.startswith("loss.")}, tmp_path / "vqgan.ckpt")
    with pytest.raises(CheckpointError, match=r"(?s)does not match the model.*wrong shapes"):
        tokbench.load_tokenizer(FAMILY, weights=tmp_path / "vqgan.ckpt", config=CONFIG_YAML)
    sd = torch.load(CKPT, map_location="cpu", weights_only=True)["state_dict"]
    del sd["post_quant_conv.bias"]
    torch.save(sd, tmp_path / "bare.ckpt")  # a bare state dict is read too (upstream accepts one)
    with pytest.raises(CheckpointError, match="missing keys: post_quant_conv.bias"):
        tokbench.load_tokenizer(FAMILY, weights=tmp_path / "bare.ckpt", config=CONFIG_YAML)


def test_options_are_checked():
    with pytest.raises(TokbenchError, match=r"unknown emu35-vq options \['ema'\]; known: dtype, resolution"):
        tokbench.load_tokenizer(FAMILY, weights=CKPT, config=CONFIG_YAML, ema=False)
    with pytest.raises(TokbenchError, match="resolution must be a multiple of 16"):
        tokbench.load_tokenizer(FAMILY, weights=CKPT, config=CONFIG_YAML, resolution=100)
    tok = tokbench.load_tokenizer(FAMILY, weights=CKPT, config=CONFIG_YAML, resolution=1024)
    assert tok.spec.resolution == 1024 and tok.spec.tokens_per_image == 64 * 64
    with pytest.raises(TokbenchError, match="encode takes no options"):
        tok.encode(torch.rand(1, 3, 32, 32), n_tokens=4)


def test_config_errors_and_ignored_keys():
    base = yaml.safe_load(CONFIG_YAML.read_text())
    dd = base["ddconfig"]
    cases = [
        ({**base, "use_entropy_loss": True}, "UnboundLocalError"),
        ({**base, "ddconfig": {k: v for k, v in dd.items() if k != "double_z"}}, "double_z must be false"),
        ({**base, "ddconfig": {**dd, "give_pre_end": True}}, "give_pre_end"),
        ({"model": {"class_path": "src.IBQ.models.ibqgan.IBQ", "init_args": base}}, "load SEED-Voken IBQ"),
        ({"ddconfig": dd, "n_embed": 1024}, r"lacks \['embed_dim'\]"),
        ({**base, "ddconfig": {k: v for k, v in dd.items() if k != "z_channels"}}, r"lacks \['z_channels'\]"),
        ({**base, "norm_groups": 24}, "divisible by 24"),
        ({**base, "n_embed": 0}, "n_embed must be a positive integer"),
    ]
    for cfg, message in cases:
        with pytest.raises(TokbenchError, match=message):
            emu35_config(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loss weights and "_" metadata are accepted silently
        emu35_config({**base, "beta": 0.25, "entropy_temperature": 0.01, "_fixture": {"seed": 0}})
    with pytest.warns(UserWarning, match=r"ignoring config keys \['lossconfig'\]"):
        emu35_config({**base, "lossconfig": {}})
    with pytest.warns(UserWarning, match=r"ignoring ddconfig keys \['tanh_out'\]"):
        assert emu35_config({**base, "ddconfig": {**dd, "tanh_out": True}}) == emu35_config(base)
    # model.py's ch_mult default when the ddconfig has none
    assert emu35_config({**base, "ddconfig": {k: v for k, v in dd.items() if k != "ch_mult"}}).ch_mult == (1, 2, 4, 8)


def test_reproduce_suite_names_known_tokenizers_and_protocols(monkeypatch):
    from tokbench.protocols import protocols
    from tokbench.suite import load_suite

    monkeypatch.setenv("IMAGENET_VAL", "/nonexistent")
    suite = load_suite(Path(__file__).parents[1] / "benchmarks" / "reproduce" / "emu35_vq.yaml")
    assert {t.name for t in suite.tokenizers} >= {FAMILY}
    for entry in suite.tokenizers:
        find(entry.name)
        assert entry.protocol in protocols() and not entry.published  # no published numbers (see its header)
