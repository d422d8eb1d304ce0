"""IBQ against outputs of the official upstream code.

Golden fixture tests/data/ibq/ (see its README): tiny random raw AND EMA weights in the release's Lightning
`{"state_dict"}` layout (`imagenet256_262144.ckpt`), and what TencentARC/SEED-Voken's own `ibqgan.IBQ`
produced for two images under `ema_scope()` (and without it: `*_raw`). `manifest_full.json` lists the
parameter shapes of the released IBQ-262144 (and which shapes the other releases change).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tokbench
from tests.test_open_magvit2 import transposed_copy
from tokbench.checkpoint import CheckpointError, lit_ema_key
from tokbench.core import TokbenchError
from tokbench.protocols import get_protocol
from tokbench.tokenizers import ibq
from tokbench.tokenizers.ibq import VARIANTS, IBQModel, ibq_config

DATA = Path(__file__).parent / "data"
IBQ = DATA / "ibq"
CKPT = IBQ / "imagenet256_262144.ckpt"
CONFIG = IBQ / "config.json"

TORCH_THREADS = 1  # see conftest._torch_threads


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(IBQ / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer("ibq", weights=CKPT, config=CONFIG)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def _state_dict() -> dict[str, torch.Tensor]:
    return torch.load(CKPT, map_location="cpu", weights_only=True)["state_dict"]


# ------------------------------------------------------------------------------------------ golden outputs


@pytest.mark.parametrize(("options", "suffix"), [({}, ""), ({"ema": True}, ""), ({"ema": False}, "_raw")])
def test_ids_and_reconstruction_match_official(io, options, suffix):
    tok = tokbench.load_tokenizer("ibq", weights=CKPT, config=CONFIG, **options)
    tokens = tok.encode(as_unit(io["input"]))
    assert tokens.grid == tuple(json.loads(CONFIG.read_text())["token_grid"])
    assert torch.equal(tokens.ids.flatten(), io["indices" + suffix])
    torch.testing.assert_close(tok.decode(tokens), as_unit(io["recon" + suffix]), atol=1e-4, rtol=0)


def test_latent_quant_and_decode_from_indices(tok, io):
    with torch.no_grad():
        torch.testing.assert_close(tok.model.latent(io["input"]), io["latent"], atol=1e-4, rtol=0)
        ids = io["indices"].view(2, 16, 16)
        quant = tok.model.quantize.embedding(ids).permute(0, 3, 1, 2)
        torch.testing.assert_close(quant, io["quant"], atol=1e-6, rtol=0)
        torch.testing.assert_close(tok.model.decode_ids(ids), io["recon_from_indices"], atol=1e-4, rtol=0)


def test_ids_are_the_inner_product_argmax_not_the_nearest_code(io):
    """Independent of the model: the EMA codebook straight from the checkpoint and the official latent."""
    codebook = _state_dict()[lit_ema_key("quantize.embedding.weight")].double()
    z = io["latent"].double().permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
    assert torch.equal((z @ codebook.t()).argmax(1), io["indices"])
    nearest = torch.cdist(z, codebook).argmin(1)
    assert int((nearest != io["indices"]).sum()) == 505  # the README's count


def test_chunked_search_gives_the_same_ids(tok, io, monkeypatch):
    monkeypatch.setattr(ibq, "_LOGIT_ELEMENTS", 7 * 512)  # 7 positions per chunk, a ragged last chunk
    with torch.no_grad():
        assert torch.equal(tok.model.encode_ids(io["input"]).flatten(), io["indices"])


def test_attention_levels_come_from_the_config(tok):
    expected = json.loads(CONFIG.read_text())["attention_levels"]
    for part, levels in (("encoder", tok.model.encoder.down), ("decoder", tok.model.decoder.up)):
        with_attn = [i for i, level in enumerate(levels) if len(level.attn) > 0]
        assert with_attn == expected, part


def test_non_square_images(tok, io):
    x = as_unit(io["input"])[:, :, 8:56, :]  # 48 x 64
    tokens = tok.encode(x)
    assert tokens.grid == (12, 16) and tokens.ids.shape == (2, 192)
    out = tok.decode(tokens)
    assert out.shape == (2, 3, 48, 64) and 0 <= float(out.min()) and float(out.max()) <= 1
    model_t = transposed_copy(tok.model)  # the reference for transposed images (see its docstring)
    with torch.no_grad():
        ids = tok.model.encode_ids(x * 2 - 1)
        assert torch.equal(model_t.encode_ids((x * 2 - 1).transpose(-1, -2)), ids.transpose(-1, -2))
        recon_t = model_t.decode_ids(ids.transpose(-1, -2).contiguous())
    torch.testing.assert_close(recon_t.transpose(-1, -2), tok.model.decode_ids(ids), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------- checkpoints


def test_wrong_family_checkpoints_are_named():
    with pytest.raises(CheckpointError, match="LlamaGen / Janus VQ"):
        tokbench.load_tokenizer("ibq", weights=DATA / "llamagen_vq16/vq_ds16_c2i.pt", config=CONFIG)
    with pytest.raises(CheckpointError, match="Open-MAGVIT2"):
        tokbench.load_tokenizer("ibq", weights=DATA / "open_magvit2/imagenet_256_L.ckpt", config=CONFIG)


def test_chameleon_vqgan_without_ema_needs_raw_weights():
    """A taming VQGAN without model_ema.* (Chameleon's): a clear error, not random EMA weights."""
    cham = DATA / "chameleon_vqgan"
    with pytest.raises(CheckpointError, match="ema=False"):
        tokbench.load_tokenizer("ibq", weights=cham / "vqgan.ckpt", config=cham / "config.json")


def test_missing_ema_copy_is_listed(tmp_path):
    sd = _state_dict()
    del sd[lit_ema_key("post_quant_conv.bias")]
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="post_quant_conv.bias"):
        tokbench.load_tokenizer("ibq", weights=path, config=CONFIG)
    tokbench.load_tokenizer("ibq", weights=path, config=CONFIG, ema=False)  # the raw set is complete


def test_bad_ema_option():
    with pytest.raises(TokbenchError, match="ema=.yes.: Input should be a valid boolean"):
        tokbench.load_tokenizer("ibq", weights=CKPT, config=CONFIG, ema="yes")


# ---------------------------------------------------------------------------------------- configs


def test_config_forms_and_errors():
    nested = json.loads(CONFIG.read_text())
    cfg, use_ema = ibq_config(nested)
    assert ibq_config(nested["model"]["init_args"]) == (cfg, use_ema) and use_ema is True
    assert cfg.ch_mult == (2, 1, 1) and cfg.attn_resolutions == (16,) and cfg.n_embed == 512
    with pytest.raises(TokbenchError, match=r"unknown ibq config keys \['wat'\]; accepted: ddconfig, embed_dim, "
                       r"n_embed, use_ema \(training-only keywords are ignored\)$"):
        ibq_config({**nested["model"]["init_args"], "wat": 1})
    with pytest.raises(TokbenchError, match="open-magvit2"):
        ibq_config({"model": {"class_path": "src.Open_MAGVIT2.models.lfqgan.VQModel", "init_args": {}}})
    with pytest.raises(TokbenchError, match="remap"):
        ibq_config({**nested["model"]["init_args"], "remap": "used.npy"})


# ------------------------------------------------------------------------ released sizes (meta device)


def _manifest() -> dict:
    return json.loads((IBQ / "manifest_full.json").read_text())


def _shapes(config) -> dict[str, list[int]]:
    cfg, _ = ibq_config(config)
    with torch.device("meta"):
        model = IBQModel(cfg)
    return {k: list(v.shape) for k, v in model.named_parameters()}


def test_full_size_matches_release_manifest():
    m = _manifest()
    by_name = {v.name: v for v in VARIANTS}
    full = json.loads(CONFIG.read_text())["full_size_equivalent"]["init_args"]
    for config in (full, by_name["ibq-262144"].config, {}):
        shapes = _shapes(config)
        assert shapes == m["params"]
        assert sum(torch.Size(s).numel() for s in shapes.values()) == m["total_parameters"]
        assert 2 * len(shapes) + 2 == m["num_state_dict_entries_release"]  # raw + model_ema.* + bookkeeping


@pytest.mark.parametrize(
    ("variant", "key"),
    [
        ("ibq-16384", "imagenet256_16384"),
        ("ibq-8192", "imagenet256_8192"),
        ("ibq-1024", "imagenet256_1024"),
        ("ibq-pretrain-262144", "IBQ_pretrain_262144"),
        ("ibq-pretrain-16384", "IBQ_pretrain_16384"),
    ],
)
def test_other_released_variants_match_manifest(variant, key):
    m = _manifest()
    other = m["other_variants"][key]
    shapes = _shapes(next(v for v in VARIANTS if v.name == variant).config)
    assert shapes == {**m["params"], **other["shapes_differing_from_primary"]}
    assert sum(torch.Size(s).numel() for s in shapes.values()) == other["total_parameters"]


def test_variants_table_and_protocols():
    names = {v.name for v in VARIANTS}
    assert set(tokbench.registry.list_tokenizers("ibq*")) == names
    for v in VARIANTS:
        assert v.weights.repo_id.startswith("TencentARC/IBQ-Tokenizer-") and v.resolution == 256
        assert tokbench.weights._ARTIFACTS[v.weights.name] == v.weights
        assert set(v.published) == {"rfid_pytorch_fid"} and v.published_source
        # ImageNet releases: IBQ's albumentations pipeline; pretrain releases validate with Open-MAGVIT2's
        assert v.options["protocol"] == ("open-magvit2" if "pretrain" in v.name else "ibq")


def test_ibq_protocol_reproduces_the_fixture_input(io):
    """The README: albumentations SmallestMaxSize + CenterCrop is the identity on the pre-sized images."""
    skdata = pytest.importorskip("skimage.data")
    import numpy as np
    from PIL import Image

    fn = get_protocol("ibq").fn
    for i, arr in enumerate((skdata.chelsea(), skdata.coffee()[0:400, 100:500])):
        img = Image.fromarray(arr).resize((64, 64), Image.BICUBIC)
        x = torch.from_numpy((np.asarray(fn(img, 64)) / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1)
        assert torch.equal(x, io["input"][i])


def test_ibq_protocol_resizes_the_short_side_with_opencv(monkeypatch):
    import numpy as np
    from PIL import Image

    cv2 = pytest.importorskip("cv2")
    arr = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)  # h 100, w 150
    out = np.asarray(get_protocol("ibq").fn(Image.fromarray(arr), 64))
    # short side 100 -> 64: (h, w) = (64, round(150 * 0.64) = 96); centre crop with floor offsets (0, 16)
    ref = cv2.resize(arr, (96, 64), interpolation=cv2.INTER_LINEAR)[:, 16:80]
    assert out.shape == (64, 64, 3) and np.array_equal(out, ref)
    # INTER_LINEAR does not antialias: not PIL's bilinear (which the open-magvit2 protocol uses)
    assert not np.array_equal(out, np.asarray(get_protocol("open-magvit2").fn(Image.fromarray(arr), 64)))
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # as on a machine without OpenCV
    with pytest.raises(TokbenchError, match="opencv"):
        get_protocol("ibq").fn(Image.fromarray(arr), 64)


def test_training_entries_are_ignored_and_reported(tmp_path, io):
    sd = _state_dict()
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)  # a training checkpoint's loss module
    path = tmp_path / "train.ckpt"
    torch.save({"state_dict": sd, "optimizer_states": [], "epoch": 3}, path)
    tok = tokbench.load_tokenizer("ibq", weights=path, config=CONFIG)
    assert "loss.discriminator.main.0.weight" in tok.spec.notes and "model_ema.decay" in tok.spec.notes
    assert torch.equal(tok.encode(as_unit(io["input"])).ids.flatten(), io["indices"])
