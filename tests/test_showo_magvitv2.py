"""Show-o / MMaDA MAGVIT-v2 (showlab/magvitv2) against outputs of the official upstream code.

Golden fixture tests/data/showo_magvitv2/ (see its README): tiny random weights (config A: encoder ch 32 x
[1, 1, 1, 2, 2] with blocks [1, 2, 1, 1, 1], decoder blocks [1, 1, 2, 1, 1], 13-bit LFQ) saved as the release's
`pytorch_model.safetensors` + `config.json`, and what Show-o's own `MAGVITv2.get_code` / `decode_code` produced for
two 64 x 64 images. `manifest_full.json` lists the released model's state dict (`MAGVITv2()` on the meta device).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tokbench
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol, resize_crop
from tokbench.tokenizers.showo_magvitv2 import (
    FAMILY,
    VARIANTS,
    MagvitV2,
    ShowoMagvitV2Tokenizer,
    showo_magvitv2_config,
)

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "showo_magvitv2"
WEIGHTS = FIXTURE / "pytorch_model.safetensors"
CONFIG = FIXTURE / "config.json"
NAME = "showo-magvitv2"

TORCH_THREADS = 1  # see conftest._torch_threads


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def tok() -> ShowoMagvitV2Tokenizer:
    return tokbench.load_tokenizer(NAME, weights=WEIGHTS, config=CONFIG)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """The official [-1, 1] input as tokbench's [0, 1] images (exact here, see the README)."""
    return (x + 1) / 2


def lfq_ids(latent: torch.Tensor) -> torch.Tensor:
    """The README's id formula, written independently: bits [latent_c > 0], channel 0 most significant."""
    bits = (latent.detach().double().numpy() > 0).astype(np.int64)  # (B, D, h, w)
    d = bits.shape[1]
    weights = np.array([2 ** (d - 1 - c) for c in range(d)], dtype=np.int64)
    ids = np.einsum("bdhw,d->bhw", bits, weights)
    return torch.from_numpy(ids).flatten(1)


def code_vectors(ids: torch.Tensor, d: int, grid: tuple[int, int]) -> torch.Tensor:
    """+-1 code vectors (B, d, h, w) of ids, from their binary expansion (MSB first), not from the model."""
    rows = [[1.0 if ch == "1" else -1.0 for ch in np.binary_repr(int(i), width=d)] for i in ids.flatten()]
    return torch.tensor(rows).view(ids.shape[0], *grid, d).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------ golden outputs


def test_model_matches_the_official_outputs(tok, io):
    model = tok.model
    with torch.no_grad():
        latent = model.latent(io["input"])
        torch.testing.assert_close(latent, io["latent"], atol=1e-4, rtol=0)
        assert torch.equal(model.quantize.quantize(latent), io["quant"])
        ids = model.get_code(io["input"])
        assert ids.dtype == torch.int64 and torch.equal(ids, io["indices"])
        recon = model.decode_code(io["indices"], shape=(4, 4))
        torch.testing.assert_close(recon, io["recon_from_indices"], atol=1e-4, rtol=0)
        torch.testing.assert_close(
            model.decode_code(io["indices"]), recon, atol=0, rtol=0
        )  # square by default


def test_public_api_matches_the_official_outputs(tok, io):
    x = as_unit(io["input"])
    tokens = tok.encode(x)
    assert tokens.grid == (4, 4) and tokens.ids.shape == (2, 16) and tokens.ids.dtype == torch.int64
    assert torch.equal(tokens.ids, io["indices"])  # (B, h*w) row-major, exactly as get_code returns them
    assert tokens.codebook_size == 8192
    assert torch.equal(tokens.bits_per_image, torch.full((2,), 13.0 * 16, dtype=torch.float64))
    out = tok.decode(tokens)
    official = torch.clamp((io["recon_from_indices"] + 1.0) / 2.0, 0, 1)
    torch.testing.assert_close(out, official, atol=1e-4, rtol=0)
    as_uint8 = (out * 255.0).permute(0, 2, 3, 1).numpy().astype(np.uint8).astype(np.int64)
    assert np.abs(as_uint8 - io["recon_uint8"].numpy()).max() <= 1  # the README: truncation may differ by 1
    _, recon = tok.reconstruct(x)
    torch.testing.assert_close(recon, out, atol=0, rtol=0)


def test_feature_stages(tok, io):
    x = as_unit(io["input"])
    assert tok.feature_stages[0] == "pre_quant" and set(tok.feature_stages) == {"pre_quant", "post_quant"}
    pre = tok.features(x, "pre_quant")
    assert pre.shape == (2, 16, 13) and pre.dtype == torch.float32
    torch.testing.assert_close(pre, io["latent"].flatten(2).transpose(1, 2), atol=1e-4, rtol=0)
    post = tok.features(x, "post_quant")
    assert torch.equal(post, io["quant"].flatten(2).transpose(1, 2))
    assert torch.equal(tok.features(x), pre)
    with pytest.raises(TokbenchError, match="pre_quant, post_quant"):
        tok.features(x, "semantic")


def test_ids_follow_the_lfq_formula_on_the_official_latent(io):
    assert torch.equal(lfq_ids(io["latent"]), io["indices"])
    quant = code_vectors(io["indices"], 13, (4, 4))
    assert torch.equal(quant, io["quant"])


def test_structure_of_the_fixture_model(tok):
    model = tok.model
    assert [len(level.block) for level in model.encoder.down] == [1, 2, 1, 1, 1]
    assert [len(level.block) for level in model.decoder.up] == [1, 1, 2, 1, 1]  # not num_res_blocks + 1
    assert all(len(level.attn) == 0 for level in (*model.encoder.down, *model.decoder.up))  # 256/2^i vs [5]
    assert model.encoder.quant_conv.weight.shape == (13, 13, 1, 1)
    assert model.decoder.post_quant_conv.weight.shape == (13, 13, 1, 1)


# ---------------------------------------------------------------------------------- preprocessing


def test_showo_protocol_is_the_official_image_transform(io):
    """Reproduces the fixture's input from the README's images: image_transform(image, resolution=64)."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    proto = get_protocol("showo")
    assert proto.fn is resize_crop  # the shared resize-crop transform, registered under the official name
    for i, arr in enumerate((skdata.astronaut(), skdata.chelsea())):
        out = proto.fn(Image.fromarray(arr), 64)
        x = torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).float().div(255)  # ToTensor
        x = x.sub(0.5).div(0.5)  # Normalize(0.5, 0.5)
        assert torch.equal(x, io["input"][i])


def test_showo_protocol_matches_torchvision_on_other_shapes():
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w in ((100, 150), (301, 97), (64, 64)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ref = transforms.CenterCrop((48, 48))(
            transforms.Resize(48, interpolation=transforms.InterpolationMode.BICUBIC)(img)
        )
        assert np.array_equal(np.asarray(get_protocol("showo").fn(img, 48)), np.asarray(ref))


# ------------------------------------------------------------------------------ another config


OTHER = {
    "_class_name": "MAGVITv2",
    "encoder": {"ch": 32, "ch_mult": [1, 2, 2, 1], "num_res_blocks": [2, 1, 0, 3], "attn_resolutions": [16, 4],
                "resolution": 32, "z_channels": 10},
    "decoder": {"ch": 64, "ch_mult": [2, 1, 1, 1], "num_res_blocks": [1, 3, 2, 1], "attn_resolutions": [8],
                "resolution": 32, "z_channels": 10},
    "quantize": {"codebook_dim": 10},
}  # fmt: skip


@pytest.fixture(scope="module")
def other() -> ShowoMagvitV2Tokenizer:
    tok = tokbench.load_tokenizer(NAME, weights="random", config=OTHER)
    # random_init gives GroupNorm weight 1 / bias 0; spread them so that the norms are exercised too
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in tok.model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return tok


def test_other_config_structure(other):
    model = other.model
    # attention where the official curr_res is in attn_resolutions: encoder sides 32, 16, 8, 4 (levels 1 and 3),
    # decoder sides from 32 // 8 = 4 up: 4, 8, 16, 32 at levels 3, 2, 1, 0 (level 2 has side 8)
    assert [len(level.attn) for level in model.encoder.down] == [0, 1, 0, 3]
    assert [len(level.attn) for level in model.decoder.up] == [0, 0, 2, 0]
    assert [len(level.block) for level in model.encoder.down] == [2, 1, 0, 3]
    assert [len(level.block) for level in model.decoder.up] == [1, 3, 2, 1]
    assert model.decoder.conv_in.weight.shape == (64, 10, 3, 3)  # decoder ch * ch_mult[-1] = 64
    assert model.quantize.embedding.shape == (1024, 10) and model.quantize.power_vals.tolist()[0] == 512
    assert other.spec.codebook_size == 1024 and other.spec.bits_per_token == 10
    # the name is the 256 px variant's, whose resolution the spec keeps; 8x downsampling -> 32 x 32 tokens
    assert other.spec.resolution == 256 and other.spec.tokens_per_image == 1024


def test_other_config_ids_decode_and_features(other):
    """Odd batch, non-square input; ids against the LFQ formula on the latent, decode against code vectors
    built from the ids' binary expansion and run through the decoder module directly."""
    x = torch.rand(3, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    tokens = other.encode(x)
    assert tokens.grid == (6, 10) and tokens.ids.shape == (3, 60)
    latent = other.model.latent(x * 2 - 1)
    assert float(latent.abs().min()) > 1e-4  # no id sits on a float tie
    assert torch.equal(tokens.ids, lfq_ids(latent))
    assert int(tokens.ids.unique().numel()) > 20
    assert torch.equal(tokens.bits_per_image, torch.full((3,), 10.0 * 60, dtype=torch.float64))
    pre = other.features(x, "pre_quant")
    post = other.features(x, "post_quant")
    assert pre.shape == post.shape == (3, 60, 10)
    torch.testing.assert_close(pre, latent.flatten(2).transpose(1, 2), atol=0, rtol=0)
    codes = code_vectors(tokens.ids, 10, (6, 10))
    assert torch.equal(post, codes.flatten(2).transpose(1, 2))
    out = other.decode(tokens)
    assert out.shape == (3, 3, 48, 80) and 0 <= float(out.min()) and float(out.max()) <= 1
    with torch.no_grad():
        ref = ((other.model.decoder(codes) + 1) / 2).clamp(0, 1)
        flat = other.model.decode_code(tokens.ids, shape=(6, 10))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ((flat + 1) / 2).clamp(0, 1), atol=0, rtol=0)
    # without a grid the official decode_code assumes a square: 60 ids are not one
    with pytest.raises(TokbenchError, match="square"):
        other.decode(Tokens(ids=tokens.ids, codebook_size=1024))


def test_other_config_roundtrips_through_a_release_style_file(other, tmp_path):
    path = tmp_path / "pytorch_model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in other.model.state_dict().items()}, str(path), metadata={"format": "pt"}
    )
    (tmp_path / "config.json").write_text(json.dumps(OTHER))
    loaded = tokbench.load_tokenizer(NAME, weights=path, config=tmp_path / "config.json")
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.encode(x).ids, other.encode(x).ids)


def test_bfloat16_runs(io):
    tok = tokbench.load_tokenizer(NAME, weights=WEIGHTS, config=CONFIG, dtype="bfloat16")
    tokens = tok.encode(as_unit(io["input"]))
    assert tokens.ids.shape == (2, 16) and 0 <= int(tokens.ids.min()) and int(tokens.ids.max()) < 8192
    assert tok.decode(tokens).dtype == torch.float32 and tok.spec.dtype == "bfloat16"


def test_image_sides_must_divide_by_the_downsample_factor(tok):
    with pytest.raises(TokbenchError, match="divisible by 16"):
        tok.encode(torch.rand(1, 3, 64, 40))
    with pytest.raises(TokbenchError, match="divisible by 16"):
        tok.features(torch.rand(1, 3, 24, 64), "pre_quant")


# ---------------------------------------------------------------------- released size (meta device)


def _manifest() -> dict:
    return json.loads((FIXTURE / "manifest_full.json").read_text())


@pytest.mark.parametrize(
    "config",
    [{}, {"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}, "manifest"],
    ids=["empty", "release_config_json", "manifest_kwargs"],
)
def test_full_size_matches_the_release_manifest(config):
    m = _manifest()
    if config == "manifest":
        config = m["config"]
    with torch.device("meta"):
        model = MagvitV2(config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes.items()) == list(m["params"].items())  # names, shapes and the release's order
    assert len(shapes) == m["num_state_dict_entries_release"] == 382
    assert sum(p.numel() for p in model.parameters()) == m["total_parameters"] == 95_387_004
    assert model.quantize.power_vals.dtype == torch.int64 and model.quantize.embedding.dtype == torch.float32
    cfg = model.config
    assert cfg.downsample == 16 and cfg.n_embed == 8192
    assert cfg.encoder.num_res_blocks == (4, 3, 4, 3, 4) and cfg.decoder.num_res_blocks == (4, 4, 3, 4, 3)
    assert cfg.encoder.ch_mult == (1, 2, 2, 4, 4) and cfg.decoder.ch_mult == (1, 1, 2, 2, 4)


def test_the_fixture_config_reads_the_constructor_keywords():
    fixture = json.loads(CONFIG.read_text())
    cfg = showo_magvitv2_config(fixture)
    assert cfg.encoder.num_res_blocks == (1, 2, 1, 1, 1) and cfg.decoder.num_res_blocks == (1, 1, 2, 1, 1)
    assert cfg.encoder.ch == 32 and cfg.codebook_dim == 13
    # a partial mapping takes the other keywords from that class's own defaults (encoder and decoder differ)
    partial = showo_magvitv2_config({"encoder": {"ch": 64}, "decoder": {"ch": 32}})
    assert partial.encoder.ch_mult == (1, 2, 2, 4, 4) and partial.decoder.ch_mult == (1, 1, 2, 2, 4)


def test_random_weights_build_the_layout_of_a_real_load(tok):
    rnd = tokbench.load_tokenizer(NAME, weights="random", config=CONFIG)
    assert "RANDOM WEIGHTS" in rnd.spec.notes
    real, fake = tok.model.state_dict(), rnd.model.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in real.items()} == {
        k: (v.shape, v.dtype) for k, v in fake.items()
    }
    assert torch.equal(fake["quantize.embedding"], real["quantize.embedding"])  # constants, not zeros
    assert torch.equal(fake["quantize.power_vals"], real["quantize.power_vals"])


# ---------------------------------------------------------------------------- checkpoints, options


def test_other_families_checkpoints_are_refused_with_what_they_are():
    with pytest.raises(CheckpointError, match="not a Show-o MAGVIT-v2 checkpoint.*Open-MAGVIT2"):
        tokbench.load_tokenizer(NAME, weights=DATA / "open_magvit2/imagenet_256_L.ckpt", config=CONFIG)
    with pytest.raises(CheckpointError, match="LlamaGen / Janus VQ"):
        tokbench.load_tokenizer(NAME, weights=DATA / "llamagen_vq16/vq_ds16_c2i.pt", config=CONFIG)


def test_a_mismatched_config_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="wrong shapes"):
        tokbench.load_tokenizer(NAME, weights=WEIGHTS, config={"encoder": {"ch": 64}, "decoder": {"ch": 32}})
    with pytest.raises(CheckpointError, match="quantize.embedding.*LFQ bit table"):
        cfg = json.loads(CONFIG.read_text())
        tokbench.load_tokenizer(
            NAME,
            weights=WEIGHTS,
            config={
                **cfg,
                "encoder": {**cfg["encoder"], "z_channels": 12},
                "decoder": {**cfg["decoder"], "z_channels": 12},
                "quantize": {"codebook_dim": 12},
            },
        )


def test_lfq_buffers_are_checked_and_may_be_absent(tmp_path, io):
    sd = load_file(str(WEIGHTS))
    flipped = dict(sd, **{"quantize.embedding": sd["quantize.embedding"].flip(0).contiguous()})
    save_file(flipped, str(tmp_path / "flipped.safetensors"))
    with pytest.raises(CheckpointError, match="not the LFQ bit table"):
        tokbench.load_tokenizer(NAME, weights=tmp_path / "flipped.safetensors", config=CONFIG)
    bare = {k: v for k, v in sd.items() if k != "quantize.embedding"}
    save_file(bare, str(tmp_path / "bare.safetensors"))
    tok = tokbench.load_tokenizer(NAME, weights=tmp_path / "bare.safetensors", config=CONFIG)
    assert torch.equal(tok.encode(as_unit(io["input"])).ids, io["indices"])


def test_unknown_options_and_bad_configs_are_refused():
    with pytest.raises(TokbenchError, match="unknown showo-magvitv2 options"):
        tokbench.load_tokenizer(NAME, weights=WEIGHTS, config=CONFIG, ema=True)
    with pytest.raises(TokbenchError, match="not MAGVITv2"):
        showo_magvitv2_config({"_class_name": "AutoencoderKL"})
    with pytest.raises(TokbenchError, match="unknown showo-magvitv2 config keys"):
        showo_magvitv2_config({"ddconfig": {}})
    with pytest.raises(TokbenchError, match="unknown encoder keys"):
        showo_magvitv2_config({"encoder": {"channels": 32}})
    with pytest.raises(TokbenchError, match="one block count per level"):
        showo_magvitv2_config({"encoder": {"num_res_blocks": 2}})
    with pytest.raises(TokbenchError, match="3 entries for 5 levels"):
        showo_magvitv2_config({"decoder": {"num_res_blocks": [1, 2, 3]}})
    with pytest.raises(TokbenchError, match="must be equal"):
        showo_magvitv2_config({"quantize": {"codebook_dim": 12}})
    with pytest.raises(TokbenchError, match="double_z"):
        showo_magvitv2_config({"encoder": {"double_z": True}})
    with pytest.raises(TokbenchError, match="GroupNorm"):
        showo_magvitv2_config({"encoder": {"ch": 48}})
    with pytest.raises(TokbenchError, match="reconstructions would not"):
        tokbench.load_tokenizer(
            NAME,
            weights="random",
            config={"decoder": {"ch_mult": [1, 2, 2, 4], "num_res_blocks": [1, 1, 1, 1]}},
        )


# ------------------------------------------------------------------------------ variants, family


def test_variants_and_family():
    assert [v.name for v in VARIANTS] == ["showo-magvitv2", "showo-magvitv2-512"]
    assert set(tokbench.registry.list_tokenizers("showo-magvitv2*")) == {v.name for v in VARIANTS}
    assert FAMILY.default_variant == "showo-magvitv2" and FAMILY.convolutional
    for v, side in zip(VARIANTS, (256, 512)):
        assert v.resolution == side and v.config == {}
        assert v.weights.repo_id == "showlab/magvitv2" and v.weights.filename == "pytorch_model.safetensors"
        assert "config.json" in v.weights.companions and v.weights.licence.startswith("MIT")
        assert v.published == {} and v.published_source.startswith("none")
        assert "2408.12528" in v.paper


@pytest.mark.parametrize(("name", "options", "side"), [
    ("showo-magvitv2", {}, 256), ("showo-magvitv2-512", {}, 512), ("showo-magvitv2", {"resolution": 384}, 384),
])  # fmt: skip
def test_spec_at_each_resolution(name, options, side):
    tok = tokbench.load_tokenizer(name, weights=WEIGHTS, config=CONFIG, **options)
    spec = tok.spec
    assert spec.resolution == side and spec.tokens_per_image == (side // 16) ** 2
    assert spec.codebook_size == 8192 and spec.bits_per_token == 13.0 and spec.preprocessing == "showo"
    assert spec.source["release"].startswith("https://huggingface.co/showlab/magvitv2")
    assert "45a5a2de01d1ebd10cd5864d29310a76476cdf23" in spec.source["code"]
    with pytest.raises(TokbenchError, match="multiple of 16"):
        tokbench.load_tokenizer(name, weights=WEIGHTS, config=CONFIG, resolution=200)


def test_reproduce_suite_loads(monkeypatch):
    from tokbench.registry import find
    from tokbench.suite import load_suite

    monkeypatch.setenv("IMAGENET_VAL", "/nonexistent")
    suite = load_suite(Path(__file__).parents[1] / "benchmarks" / "reproduce" / "showo_magvitv2.yaml")
    assert [(t.name, t.resolution) for t in suite.tokenizers] == [
        ("showo-magvitv2", 256),
        ("showo-magvitv2-512", 512),
    ]
    for entry in suite.tokenizers:
        assert find(entry.name)[0] is FAMILY and not entry.published  # none published (see the Variant rows)
    assert get_protocol("showo").name == "showo"
