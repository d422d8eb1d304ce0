"""MingTok-Vision against outputs of the official upstream code.

Golden fixture tests/data/mingtok/ (see its README): tiny random weights in the layout of inclusionAI/MingTok-Vision
(`config.json` + `model.safetensors`) and what Ming-UniVision's own `MingTok` (@3bbdd2f, CPU, float32) produced
for two images: the raw and normalised latents (CLS last), the semantic decoder's features, the reconstruction
(`forward_enc_dec`), the decode of the latents (`recon_from_latent`) and the understanding path at 1.5x the
trained size (interpolated position embedding). `manifest_full.json` lists the released model's state dict.

A second configuration (other widths and depths, a GELU encoder MLP, one attention head, batch 3, non-square and
interpolated inputs) is checked against `reference_mingtok` below, a literal transcription of the official
forward (eager attention with the triu mask, `unsqueeze().repeat()` shortcut, einsum unpatchify), which reads
the state dict directly and shares no code with the module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import tokbench
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol
from tokbench.tokenizers.mingtok import (
    FAMILY,
    RELEASE_CONFIG,
    VARIANTS,
    MingTokModel,
    build_model,
    mingtok_config,
)

DATA = Path(__file__).parent / "data"
MT = DATA / "mingtok"
WEIGHTS = MT / "model.safetensors"
CONFIG = MT / "config.json"

TORCH_THREADS = 1  # see conftest._torch_threads
ATOL = 1e-4  # the README's suggested check (observed: <= 4.6e-6)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(MT / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG)


def unit(x: torch.Tensor) -> torch.Tensor:
    """The official model input in [-1, 1] (Normalize(0.5, 0.5)) as tokbench's [0, 1] images."""
    return (x + 1) / 2


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------ golden outputs


def test_model_level_outputs_match_official(tok, io):
    m = tok.model
    with torch.no_grad():
        close(m.encode_raw(io["input"]), io["latent_raw"])
        out = m(io["input"])
        close(out["latent"], io["latent"])
        close(out["x_norm_patchtokens"], io["semantic_features"])
        close(m.forward_enc_dec(io["input"]), io["recon"])
        close(m.recon_from_latent(io["latent"]), io["recon_from_latent"])
        close(m(io["und_input"])["x_norm_patchtokens"], io["und_semantic_features"])


def test_public_api_matches_official(tok, io):
    x = io["input_01"]
    assert torch.equal(x, unit(io["input"])) or torch.allclose(x, unit(io["input"]), atol=1e-6, rtol=0)
    tokens = tok.encode(x)
    assert tokens.ids is None and tokens.features.shape == (2, 16, 8) and tokens.grid == (4, 4)
    assert tokens.features.dtype == torch.float32 and tokens.codebook_size is None
    close(tokens.features, io["latent"][:, :-1])  # the N patch latents; the CLS latent (last) is not a token
    out = tok.decode(tokens)
    assert out.shape == (2, 3, 64, 64) and float(out.min()) >= 0 and float(out.max()) <= 1
    close(out, io["recon_from_latent"] * 0.5 + 0.5)  # the official post-processing before uint8
    close(out, io["recon"] * 0.5 + 0.5)
    _, again = tok.reconstruct(x)
    assert torch.equal(again, out)


def test_semantic_and_feature_stages_match_official(tok, io):
    x = io["input_01"]
    sem = tok.semantic(x)
    assert set(sem) == {"semantic_features", "embedding", "latent"}
    close(sem["semantic_features"], io["semantic_features"])
    close(sem["latent"], io["latent"][:, :-1])
    with torch.no_grad():
        close(sem["embedding"], tok.model(io["input"])["x_norm_clstoken"], atol=0)
    assert tok.feature_stages[0] == "pre_quant" and set(tok.feature_stages) == {
        "pre_quant",
        "post_quant",
        "semantic",
    }
    close(tok.features(x, "pre_quant"), io["latent"][:, :-1])
    assert torch.equal(tok.features(x, "post_quant"), tok.features(x, "pre_quant"))
    assert torch.equal(tok.features(x), tok.features(x, "pre_quant"))
    close(tok.features(x, "semantic"), io["semantic_features"])
    # the understanding path: 96 px, a 6x6 grid from the 4x4 position embedding
    close(tok.features(unit(io["und_input"]), "semantic"), io["und_semantic_features"])
    with pytest.raises(TokbenchError, match="feature stages"):
        tok.features(x, "quantised")


def test_the_cls_latent_cannot_change_the_decode(tok, io):
    """README: CLS comes last and the semantic decoder is causal, so the N patch latents decide the output."""
    latent = io["latent"]
    zeroed = torch.cat([latent[:, :-1], torch.zeros_like(latent[:, -1:])], dim=1)
    with torch.no_grad():
        ref = tok.model.recon_from_latent(latent)
        assert torch.equal(tok.model.recon_from_latent(zeroed), ref)
        assert torch.equal(tok.model.recon_from_latent(latent[:, :-1], (4, 4)), ref)


def test_public_api_with_the_variant_name_and_release_folder(io):
    """The released variant loads the fixture through its folder's config.json; the family name too."""
    for tok in (tokbench.load_tokenizer("mingtok-vision", weights=WEIGHTS),
                tokbench.load_tokenizer("mingtok", weights=WEIGHTS)):  # fmt: skip
        assert tok.spec.source["config"] == str(CONFIG)
        close(tok.encode(io["input_01"]).features, io["latent"][:, :-1])
    tok = tokbench.load_tokenizer("mingtok-vision", weights=WEIGHTS, config=CONFIG)
    assert (
        tok.spec.name == "mingtok-vision"
        and tok.spec.preprocessing == "mingtok"
        and tok.spec.resolution == 512
    )
    close(tok.decode(tok.encode(io["input_01"])), io["recon"] * 0.5 + 0.5)


# -------------------------------------------------------------------------------------------------- rate


def test_bits_are_the_stated_storage_convention(tok, io):
    tokens = tok.encode(io["input_01"])
    n, c = 16, 8
    assert torch.equal(tokens.bits_per_image, torch.full((2,), n * c * 16.0, dtype=torch.float64))
    assert (
        tok.spec.bits_per_token == c * 16
        and tok.spec.codebook_size is None
        and tok.spec.tokens_per_image == 16
    )
    assert tokens.meta["storage_bits"] == 16 and tokens.meta["latent_values"] == n * c
    assert "16-bit storage" in tokens.meta["rate_convention"] and "16-bit storage" in tok.spec.notes
    eight = tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG, storage_bits=8)
    assert torch.equal(
        eight.encode(io["input_01"]).bits_per_image, torch.full((2,), n * c * 8.0, dtype=torch.float64)
    )
    assert eight.spec.bits_per_token == c * 8


def test_released_rate_is_256_tokens_of_32_values_at_16_bits():
    tok = tokbench.load_tokenizer("mingtok", weights="random", config=_SMALL)  # the spec arithmetic, cheap
    assert tok.spec.tokens_per_image == 16 and tok.spec.bits_per_token == 4 * 16
    cfg = mingtok_config(RELEASE_CONFIG)
    grid = cfg.low_level_encoder.img_size // cfg.low_level_encoder.patch_size
    assert grid * grid == 256 and cfg.low_level_encoder.out_dim == 32 and cfg.output_patch == 32


# ------------------------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_is_the_official_autocast(io, dtype):
    """The encoder and semantic decoder autocast (the official model_dtype path); the pixel decoder stays float32."""
    tok = tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG, dtype=dtype)
    assert all(p.dtype == torch.float32 for p in tok.model.parameters())
    tokens = tok.encode(io["input_01"])
    diff = (tokens.features - io["latent"][:, :-1]).abs().max()
    assert 0 < diff < 0.1  # autocast took effect, and it is a rounding of the float32 result
    close(tok.decode(tokens), io["recon"] * 0.5 + 0.5, atol=0.1)
    assert tok.spec.dtype == dtype and f"autocast to {dtype}" in tok.spec.notes


# ------------------------------------------------------------------------------------- checkpoints, options


def test_other_families_checkpoints_are_refused_and_named():
    with pytest.raises(CheckpointError, match="not a MingTok checkpoint.*LlamaGen / Janus VQ"):
        tokbench.load_tokenizer("mingtok", weights=DATA / "llamagen_vq16/vq_ds16_c2i.pt", config=CONFIG)
    with pytest.raises(CheckpointError, match="not a MingTok checkpoint.*IBQ"):
        tokbench.load_tokenizer("mingtok", weights=DATA / "ibq/imagenet256_262144.ckpt", config=CONFIG)


def test_a_config_that_does_not_fit_the_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="missing keys: low_level_encoder.blocks.0.2"):
        tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=RELEASE_CONFIG)


def test_checkpoint_inside_ming_univision_is_found(tmp_path, io):
    """MingTok held as `self.vision` of MingUniVisionForConditionalGeneration: keys under `vision.`."""
    sd = load_file(str(WEIGHTS))
    path = tmp_path / "model.safetensors"
    save_file(
        {**{f"vision.{k}": v for k, v in sd.items()}, "linear_proj.0.weight": torch.zeros(2, 2)}, str(path)
    )
    tok = tokbench.load_tokenizer("mingtok", weights=path, config=CONFIG)
    assert "'vision.'" in tok.spec.source["layout"]
    close(tok.encode(io["input_01"]).features, io["latent"][:, :-1])


def test_options_are_checked_from_the_declaration():
    with pytest.raises(TokbenchError, match=r"unknown mingtok options \['wat'\]"):
        tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG, wat=1)
    with pytest.raises(TokbenchError, match="storage_bits"):
        tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG, storage_bits=0)
    with pytest.raises(TokbenchError, match="unknown preprocessing protocol"):
        tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG, protocol="nope")
    with pytest.raises(TokbenchError, match="multiple of 16"):
        tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG, resolution=72)
    tok = tokbench.load_tokenizer("mingtok", weights=WEIGHTS, config=CONFIG)
    with pytest.raises(TokbenchError, match="encode takes no options"):
        tok.encode(torch.zeros(1, 3, 64, 64), n_tokens=3)


def test_bad_inputs_and_tokens_are_refused(tok, io):
    with pytest.raises(TokbenchError, match="divisible by 16"):
        tok.encode(torch.zeros(1, 3, 64, 56))
    tokens = tok.encode(io["input_01"])
    with pytest.raises(TokbenchError, match="does not match 16 latents"):
        tok.decode(Tokens(features=tokens.features, grid=(2, 4)))
    with pytest.raises(TokbenchError, match=r"\(B, h\*w, 8\)"):
        tok.decode(Tokens(features=tokens.features[..., :4], grid=(4, 4)))
    with pytest.raises(TokbenchError, match="continuous Tokens.features"):
        tok.decode(Tokens(ids=torch.zeros(2, 16, dtype=torch.long)))
    assert torch.equal(tok.decode(Tokens(features=tokens.features)), tok.decode(tokens))  # no grid: square


# ------------------------------------------------------------------------------------------------- configs


def test_config_forms_and_errors():
    fixture = json.loads(CONFIG.read_text())
    cfg = mingtok_config(fixture)
    assert cfg.low_level_encoder.embed_dim == 128 and cfg.low_level_encoder.heads == 2 and cfg.up == 2
    assert cfg.scaling_factor == fixture["scaling_factor"] and cfg.mean == fixture["mean"]
    assert mingtok_config({}) == mingtok_config(RELEASE_CONFIG) == mingtok_config(None)
    released = mingtok_config({})
    assert (
        released.low_level_encoder.heads,
        released.semantic_decoder.heads,
        released.pixel_decoder.heads,
    ) == (12, 16, 16)
    with pytest.raises(TokbenchError, match=r"unknown mingtok low_level_encoder keys \['depht'\]"):
        mingtok_config({"low_level_encoder": {**fixture["low_level_encoder"], "depht": 3}})
    with pytest.raises(TokbenchError, match=r"unknown mingtok config keys \['scale'\]"):
        mingtok_config({**fixture, "scale": 2.0})
    with pytest.raises(TokbenchError, match="not MingTok"):
        mingtok_config({**fixture, "model_type": "siglip_vision_model"})
    with pytest.raises(TokbenchError, match="in_dim 8 must equal low_level_encoder.out_dim 16"):
        mingtok_config({**fixture, "low_level_encoder": {**fixture["low_level_encoder"], "out_dim": 16}})
    with pytest.raises(TokbenchError, match="cannot split width 96"):
        mingtok_config(
            {**fixture, "pixel_decoder": {**fixture["pixel_decoder"], "embed_dim": 96, "num_heads": 5}}
        )
    with pytest.raises(TokbenchError, match="ffn_layer must be one of"):
        mingtok_config({**fixture, "semantic_decoder": {**fixture["semantic_decoder"], "ffn_layer": "geglu"}})
    # training-only keys and transformers' bookkeeping are ignored
    mingtok_config({**fixture, "transformers_version": "4.52.4", "_name_or_path": "x",
                    "pixel_decoder": {**fixture["pixel_decoder"], "drop_path_rate": 0.1, "frozen": True}})  # fmt: skip
    with pytest.warns(UserWarning, match="pixel_decoder.ffn_layer"):  # upstream never reads it
        assert (
            mingtok_config(
                {**fixture, "pixel_decoder": {**fixture["pixel_decoder"], "ffn_layer": "swiglufused"}}
            )
            == cfg
        )


# -------------------------------------------------------------------------- released size (meta device)


def _manifest() -> dict:
    return json.loads((MT / "manifest_full.json").read_text())


def test_full_size_matches_release_manifest():
    m = _manifest()
    for config in (m["constructor_config"], VARIANTS[0].config, {}):
        model = build_model(config, device="meta")
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == m["state_dict"] and len(shapes) == m["n_state_dict_keys"]
        assert sum(p.numel() for p in model.parameters()) == m["total_parameters"]
        for prefix, count in m["parameters_by_prefix"].items():
            assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix + ".")) == count


def test_variant_table_and_family():
    (v,) = VARIANTS
    assert v.name == "mingtok-vision" and v.resolution == 512 and FAMILY.default_variant == v.name
    assert v.weights.repo_id == "inclusionAI/MingTok-Vision" and v.weights.filename == "model.safetensors"
    assert "config.json" in v.weights.companions and "Apache-2.0" in v.weights.licence
    assert tokbench.weights._ARTIFACTS[v.weights.name] == v.weights
    assert set(v.published) == {"rfid", "psnr", "ssim", "lpips"} and "Table 1" in v.published_source
    assert "2510.06590" in v.paper and "3bbdd2f" in FAMILY.code
    assert tokbench.registry.list_tokenizers("mingtok*") == ["mingtok-vision"]
    assert FAMILY.encode_options == {} and not FAMILY.convolutional


def test_random_weights_build_the_released_architecture(monkeypatch):
    """`weights="random"` with no config stands for the released size (its layout checked on meta, then stopped:
    filling 0.7B parameters is a speed-benchmark matter, not a unit test's)."""

    class Built(Exception):
        pass

    def record(model, *args, **kwargs):
        raise Built({k: list(v.shape) for k, v in model.state_dict().items()})

    monkeypatch.setattr("tokbench.building.random_init", record)
    with pytest.raises(Built) as built:
        tokbench.load_tokenizer("mingtok", weights="random")
    assert built.value.args[0] == _manifest()["state_dict"]


# ------------------------------------------------------------------- a second configuration, independently

_SMALL = {
    "low_level_encoder": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "ffn_layer": "mlp",
                          "out_dim": 4},
    "semantic_decoder": {"in_dim": 4, "patch_size": 8, "embed_dim": 128, "decoder_depth": 2, "ffn_layer": "swiglu"},
    "pixel_decoder": {"patch_size": 4, "decoder_depth": 2, "embed_dim": 64, "norm_pix_loss": True,
                      "loss_type": "L1-plain"},
    "scaling_factor": 1.7,
    "mean": 0.3,
}  # fmt: skip


def _random_state_dict(config: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """Weights in the release's layout with enough spread to exercise every layer (as the fixture's)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in build_model(config, device="meta").state_dict().items():
        if name.endswith(("pos_embed", "cls_token")):
            out[name] = 0.3 * torch.randn(t.shape, generator=g)
        elif t.ndim >= 2:
            out[name] = torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel())
        elif "norm" in name and name.endswith("weight"):
            out[name] = 1 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[name] = 0.05 * torch.randn(t.shape, generator=g)
    return out


def reference_mingtok(sd: dict[str, torch.Tensor], config: dict, x: torch.Tensor):
    """The official MingTok.forward, transcribed literally: (raw latent (B, N+1, C), x_norm_patchtokens,
    x_norm_clstoken) of images x in [-1, 1]. Heads are embed_dim // 64, as upstream."""

    def lin(t, pre):
        return F.linear(t, sd[pre + ".weight"], sd[pre + ".bias"])

    def ln(t, pre):
        return F.layer_norm(t, t.shape[-1:], sd[pre + ".weight"], sd[pre + ".bias"], eps=1e-6)

    def attn(t, pre, heads, causal):
        b, n, c = t.shape
        qkv = lin(t, pre + ".qkv").reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
        a = q @ k.transpose(-2, -1)
        if causal:
            a = a.masked_fill(torch.triu(torch.ones(n, n), diagonal=1).bool(), float("-inf"))
        return lin((a.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c), pre + ".proj")

    def ffn(t, pre, kind):
        if kind == "mlp":
            return lin(F.gelu(lin(t, pre + ".fc1")), pre + ".fc2")
        x1, x2 = lin(t, pre + ".w12").chunk(2, dim=-1)
        return lin(F.silu(x1) * x2, pre + ".w3")

    def blocks(t, pre, depth, kind, causal):
        heads = t.shape[-1] // 64
        for i in range(depth):
            blk = f"{pre}.blocks.0.{i}"
            t = t + attn(ln(t, blk + ".norm1"), blk + ".attn", heads, causal)
            t = t + ffn(ln(t, blk + ".norm2"), blk + ".mlp", kind)
        return t

    enc, sem = config["low_level_encoder"], config["semantic_decoder"]
    p, c = enc["patch_size"], enc["embed_dim"]
    e = "low_level_encoder"
    t = F.conv2d(x, sd[e + ".patch_embed.proj.weight"], sd[e + ".patch_embed.proj.bias"], stride=p)
    t = t.flatten(2).transpose(1, 2)
    b = t.shape[0]
    t = torch.cat([t, sd[e + ".cls_token"].expand(b, -1, -1)], dim=1)
    pos = sd[e + ".pos_embed"]
    n_pos = pos.shape[1] - 1
    m = int(math.sqrt(n_pos))
    w0, h0 = x.shape[2] // p, x.shape[3] // p  # upstream's (misnamed) w = H, h = W
    if not (t.shape[1] - 1 == n_pos and x.shape[2] == x.shape[3]):
        grid = F.interpolate(pos[:, :-1].reshape(1, m, m, c).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
                             scale_factor=((w0 + 0.1) / m, (h0 + 0.1) / m))  # fmt: skip
        pos = torch.cat([grid.permute(0, 2, 3, 1).reshape(1, -1, c), pos[:, -1:]], dim=1)
    t = blocks(t + pos, e, enc["depth"], enc["ffn_layer"], causal=False)
    out = enc["out_dim"]
    raw = t.reshape(b, t.shape[1], out, c // out).mean(-1) + lin(
        F.gelu(ln(t, e + ".out_norm")), e + ".out_proj"
    )
    d = sem["embed_dim"]
    u = raw.unsqueeze(-1).repeat(1, 1, 1, d // sem["in_dim"]).reshape(b, raw.shape[1], d)
    u = lin(raw, "semantic_decoder.in_proj") + u
    u = ln(
        blocks(u, "semantic_decoder", sem["decoder_depth"], sem["ffn_layer"], causal=True),
        "semantic_decoder.norm",
    )
    return raw, u[:, :-1], u[:, -1]


def reference_pixels(sd: dict[str, torch.Tensor], config: dict, feats: torch.Tensor) -> torch.Tensor:
    """The official forward_pixel_decoder (square grids only, as upstream), transcribed literally."""
    sem, pix = config["semantic_decoder"], config["pixel_decoder"]
    r, cp, p = sem["patch_size"] // pix["patch_size"], pix["embed_dim"], pix["patch_size"]
    b, n, _ = feats.shape
    h = int(math.sqrt(n))
    y = F.linear(feats, sd["sem_to_pix.weight"], sd["sem_to_pix.bias"]).reshape(b, h, h, r, r, cp)
    y = torch.einsum("bhwxyc->bhxwyc", y).reshape(b, -1, cp)
    heads = cp // 64
    for i in range(pix["decoder_depth"]):
        pre = f"pixel_decoder.blocks.0.{i}"
        z = F.layer_norm(y, (cp,), sd[pre + ".norm1.weight"], sd[pre + ".norm1.bias"], eps=1e-6)
        qkv = F.linear(z, sd[pre + ".attn.qkv.weight"], sd[pre + ".attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, heads, cp // heads).permute(2, 0, 3, 1, 4)
        a = ((q * (cp // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        y = y + F.linear((a @ v).transpose(1, 2).reshape(b, -1, cp), sd[pre + ".attn.proj.weight"],
                         sd[pre + ".attn.proj.bias"])  # fmt: skip
        z = F.layer_norm(y, (cp,), sd[pre + ".norm2.weight"], sd[pre + ".norm2.bias"], eps=1e-6)
        z = F.gelu(F.linear(z, sd[pre + ".mlp.fc1.weight"], sd[pre + ".mlp.fc1.bias"]))
        y = y + F.linear(z, sd[pre + ".mlp.fc2.weight"], sd[pre + ".mlp.fc2.bias"])
    y = F.layer_norm(y, (cp,), sd["pixel_decoder.norm.weight"], sd["pixel_decoder.norm.bias"], eps=1e-6)
    y = F.linear(y, sd["pixel_decoder.head.weight"], sd["pixel_decoder.head.bias"])
    side = int(math.sqrt(y.shape[1]))
    y = torch.einsum("nhwpqc->nchpwq", y.reshape(b, side, side, p, p, 3))
    return y.reshape(b, 3, side * p, side * p).clamp(-1, 1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    sd = _random_state_dict(_SMALL)
    path = tmp_path_factory.mktemp("mingtok_small") / "model.safetensors"
    save_file(sd, str(path))
    return sd, tokbench.load_tokenizer("mingtok", weights=path, config=_SMALL)


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (24, 40), (40, 16)])
def test_second_config_encoder_and_semantic_decoder_match_reference(small, size):
    """Native grid 4x4, an interpolated 6x6, non-square 3x5 and 5x2 grids (the understanding path), batch 3."""
    sd, tok = small
    x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    raw, patches, cls = reference_mingtok(sd, _SMALL, x * 2 - 1)
    grid = (size[0] // 8, size[1] // 8)
    tokens = tok.encode(x)
    assert tokens.features.shape == (3, grid[0] * grid[1], 4) and tokens.grid == grid
    close(tokens.features, ((raw - 0.3) / 1.7)[:, :-1])
    sem = tok.semantic(x)
    close(sem["semantic_features"], patches)
    close(sem["embedding"], cls)
    assert sem["semantic_features"].shape == (3, grid[0] * grid[1], 128)
    with torch.no_grad():
        close(tok.model(x * 2 - 1)["latent"], (raw - 0.3) / 1.7)


@pytest.mark.parametrize("side", [32, 48])
def test_second_config_decode_matches_reference(small, side):
    """decode(encode(x)) = the official recon_from_latent on the patch latents = forward_enc_dec."""
    sd, tok = small
    x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(side))
    _, patches, _ = reference_mingtok(sd, _SMALL, x * 2 - 1)
    ref = reference_pixels(sd, _SMALL, patches)
    out = tok.decode(tok.encode(x))
    assert out.shape == (3, 3, side, side)
    close(out, ref * 0.5 + 0.5)
    with torch.no_grad():
        close(tok.model.forward_enc_dec(x * 2 - 1), ref)
    assert float((ref.abs() < 1).float().mean()) > 0.5  # the comparison is not only of clamped pixels


def test_second_config_non_square_decode_is_a_rearrangement_of_the_square_computation(small):
    """Upstream decodes square grids only. The pixel decoder has no position embedding, so decoding an h x w grid
    must give exactly the blocks of decoding the same semantic tokens laid out as one 1 x (h*w) strip."""
    _, tok = small
    x = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(7))
    tokens = tok.encode(x)
    out = tok.decode(tokens)
    assert out.shape == (3, 3, 24, 40) and float(out.min()) >= 0 and float(out.max()) <= 1
    with torch.no_grad():
        raw = tok.model.denormalise(tokens.features)
        feats = tok.model.semantic_tokens(raw)
        strip = tok.model.decode_pixels(feats, (1, 15))  # (B, 3, 8, 120): token j at columns 8j .. 8j+7
        grid = tok.model.decode_pixels(feats, (3, 5))
    blocks = strip.view(3, 3, 8, 15, 8).permute(0, 1, 3, 2, 4)  # (B, C, token, 8, 8)
    rebuilt = blocks.reshape(3, 3, 3, 5, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(3, 3, 24, 40)
    close(grid, rebuilt, atol=1e-5)
    close(out, grid * 0.5 + 0.5, atol=1e-6)


def test_model_level_and_tokenizer_level_paths_agree(small):
    _, tok = small
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tokens = tok.encode(x)
    with torch.no_grad():
        out = tok.model(x * 2 - 1)
        assert torch.equal(out["latent"][:, :-1], tokens.features)
        assert torch.equal(
            tok.model.recon_from_latent(out["latent"]), tok.model.recon_from_latent(tokens.features, (4, 4))
        )
        # 1e-5: the latent normalisation round trip
        close(tok.decode(tokens), tok.model.forward_enc_dec(x * 2 - 1) * 0.5 + 0.5, atol=1e-5)


def test_random_weights_of_a_small_config(io):
    tok = tokbench.load_tokenizer("mingtok", weights="random", config=_SMALL)
    assert isinstance(tok.model, MingTokModel) and "RANDOM WEIGHTS" in tok.spec.notes
    assert not any(p.is_meta for p in tok.model.parameters())
    x = torch.rand(2, 3, 32, 48)
    tokens = tok.encode(x)
    assert tokens.features.shape == (2, 24, 4) and tok.decode(tokens).shape == (2, 3, 32, 48)


# ----------------------------------------------------------------------------------------- preprocessing


def test_protocols_reproduce_the_fixture_inputs(io):
    """`mingtok` = CenterCropProcessor (Resize(S) bicubic + CenterCrop(S)); `mingtok-und` = MingTokUndProcessor
    (Resize((S, S)) bicubic), on the README's two crops of skimage images."""
    skdata = pytest.importorskip("skimage.data")
    import numpy as np
    from PIL import Image

    images = (skdata.astronaut()[0:320, 60:460], skdata.chelsea()[10:300, 0:451])
    for name, size, key in (("mingtok", 64, "input_01"), ("mingtok-und", 96, "und_input")):
        fn = get_protocol(name).fn
        for i, arr in enumerate(images):
            out = np.asarray(fn(Image.fromarray(arr), size))
            x = torch.from_numpy(out.astype(np.float32) / 255).permute(2, 0, 1)
            want = io[key][i] if key == "input_01" else unit(io[key][i])
            close(x, want, atol=1e-6)


def test_protocol_geometry():
    crop = get_protocol("mingtok").geometry(400, 320, 64)  # short side 320 -> 64: 80 x 64, crop 8 px left
    assert crop.box((0, 0, 400, 320)) == pytest.approx((-8, 0, 72, 64))
    und = get_protocol("mingtok-und").geometry(400, 320, 96)
    assert und.box((0, 0, 400, 320)) == pytest.approx((0, 0, 96, 96))


def test_reproduce_suite_names_the_variant_and_its_protocol(monkeypatch):
    from tokbench.protocols import protocols
    from tokbench.registry import find
    from tokbench.suite import load_suite

    monkeypatch.setenv("IMAGENET_VAL", "/nonexistent")
    suite = load_suite(Path(__file__).parents[1] / "benchmarks" / "reproduce" / "mingtok.yaml")
    assert [t.name for t in suite.tokenizers] == ["mingtok-vision", "mingtok-vision"]
    assert [t.options.get("dtype") for t in suite.tokenizers] == [None, "bfloat16"]
    for entry in suite.tokenizers:
        assert (
            find(entry.name)[1] is VARIANTS[0] and not entry.published
        )  # the numbers live in the variant row
        assert (entry.protocol or suite.protocol) == "mingtok" and "mingtok" in protocols()
