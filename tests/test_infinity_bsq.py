"""Infinity's BSQ-VAE against outputs of the official upstream code.

Golden fixture tests/data/infinity_bsq/ (see its README): tiny random weights in the release layout
(`torch.save({"vae": state_dict})`, config A: base_ch 32, ch_mult [1, 1, 2], patch 4, d = 32), two 64 x 64
images, and what FoundationVision/Infinity's own `AutoEncoder` produced: the encoder output `h`, the summed
codes `z`, the bits of all 7 scales, the decodes from `z`, from all bits and from the first 3 scales.
`manifest_full.json` lists the parameter shapes of the six released VAEs, built with the official `vae_model()`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import tokbench
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol
from tokbench.tokenizers.infinity_bsq import (
    VARIANTS,
    InfinityBSQConfig,
    build_model,
    infinity_config,
    split_bits,
)

DATA = Path(__file__).parent / "data"
INF = DATA / "infinity_bsq"
CKPT = INF / "infinity_vae_tiny.pth"
CONFIG = INF / "config.json"
FAMILY = "infinity-bsq"

TORCH_THREADS = 1  # see conftest._torch_threads: the fixture was made with one thread


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(INF / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer(FAMILY, weights=CKPT, config=CONFIG)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """The README's map from the official [-1, 1] input to tokbench's [0, 1] (exact round trip)."""
    return (x + 1) / 2


def schedule_of(io) -> tuple[tuple[int, int], ...]:
    return tuple((int(h), int(w)) for _, h, w in io["scale_schedule"].tolist())


def _state_dict() -> dict[str, torch.Tensor]:
    return torch.load(CKPT, map_location="cpu", weights_only=True)["vae"]


# ------------------------------------------------------------------------------------------ golden outputs


def test_model_level_outputs_match_official(tok, io):
    model = tok.model
    x = io["input"]
    schedule = schedule_of(io)
    assert model.schedule_for(x) == schedule  # the dynamic template for a 16 x 16 latent
    with torch.no_grad():
        h, z, bits = model.encode(x)
        torch.testing.assert_close(h, io["h"], atol=1e-4, rtol=0)
        torch.testing.assert_close(z, io["z"], atol=1e-4, rtol=0)
        ids = torch.cat([b.reshape(2, -1, 32) for b in bits], dim=1).long()
        assert torch.equal(ids, io["indices"])
        torch.testing.assert_close(model.decode(z), io["recon"], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decoder(z), io["recon_unclamped"], atol=1e-4, rtol=0)
        # decoding from the STORED bits: all scales, then the first 3 (the full schedule either way)
        stored = split_bits(io["indices"], schedule)
        assert [tuple(b.shape) for b in stored] == [(2, 1, h_, w_, 32) for h_, w_ in schedule]
        codes, recon = model.decode_from_bits(stored, schedule)
        torch.testing.assert_close(codes, io["codes_summed"], atol=1e-6, rtol=0)
        torch.testing.assert_close(recon, io["recon_from_indices"], atol=1e-4, rtol=0)
        _, recon_k3 = model.decode_from_bits(stored[:3], schedule)
        torch.testing.assert_close(recon_k3, io["recon_k3"], atol=1e-4, rtol=0)


def test_public_api_matches_official(tok, io):
    x = as_unit(io["input"])
    assert torch.equal(x * 2 - 1, io["input"])  # the [0, 1] map loses nothing
    tokens = tok.encode(x)
    assert torch.equal(tokens.ids, io["indices"]) and tokens.ids.dtype == torch.int64
    assert tokens.grid == (16, 16) and tokens.codebook_size == 2
    assert tokens.meta["scale_lengths"] == [1, 4, 16, 36, 64, 144, 256]
    # the code length: 521 positions x 32 bits (not 521 x log2 of anything else)
    assert tokens.bits_per_image.tolist() == [521 * 32, 521 * 32]
    recon = tok.decode(tokens)
    torch.testing.assert_close(recon, as_unit(io["recon_from_indices"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(recon, as_unit(io["recon"]), atol=1e-4, rtol=0)  # README: 1.2e-5 apart
    # Tokens made from the stored bits alone (grid only: the schedule follows from the latent size)
    stored = tok.decode(Tokens(ids=io["indices"], grid=(16, 16), codebook_size=2))
    torch.testing.assert_close(stored, as_unit(io["recon_from_indices"]), atol=1e-4, rtol=0)


def test_prefix_of_scales_matches_official(tok, io):
    x = as_unit(io["input"])
    tokens = tok.encode(x, n_scales=3)
    assert torch.equal(tokens.ids, io["indices"][:, :21])
    assert (
        tokens.meta["scales"] == [[1, 1], [2, 2], [4, 4]] and tokens.bits_per_image.tolist() == [21 * 32] * 2
    )
    torch.testing.assert_close(tok.decode(tokens), as_unit(io["recon_k3"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        tok.decode(Tokens(ids=io["indices"][:, :21], grid=(16, 16), codebook_size=2)),
        as_unit(io["recon_k3"]), atol=1e-4, rtol=0,
    )  # fmt: skip
    counts = np.cumsum([1, 4, 16, 36, 64, 144, 256])
    for k in range(1, 8):
        t = tok.encode(x, n_scales=k)
        assert t.ids.shape == (2, counts[k - 1], 32) and torch.equal(t.ids, io["indices"][:, : counts[k - 1]])
        assert t.bits_per_image.tolist() == [float(counts[k - 1] * 32)] * 2


def test_features_are_the_encoder_output_and_the_summed_codes(tok, io):
    x = as_unit(io["input"])
    pre, post = tok.features(x, "pre_quant"), tok.features(x, "post_quant")
    assert pre.shape == post.shape == (2, 256, 32)
    torch.testing.assert_close(pre, io["h"].flatten(2).transpose(1, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(post, io["z"].flatten(2).transpose(1, 2), atol=1e-4, rtol=0)
    assert tok.feature_stages[0] == "pre_quant"
    with pytest.raises(TokbenchError, match="feature stages"):
        tok.features(x, "semantic")


def test_bits_are_signs_of_the_residual_with_unit_codes(io):
    """Independent of the model: the first scale's bit is the sign of the area-mean of h (l2 normalisation
    keeps signs) and every code is +-1/sqrt(d), so |z| at a 1x1 scale alone is 1/sqrt(32) per channel."""
    h = io["h"].double()
    first = (h.mean(dim=(2, 3)) > 0).long()
    assert torch.equal(first, io["indices"][:, 0])
    s = split_bits(io["indices"], schedule_of(io))
    codes = [(2 * b.double() - 1) / math.sqrt(32) for b in s]
    up = sum(F.interpolate(c[:, 0].permute(0, 3, 1, 2), size=(16, 16), mode="bilinear") for c in codes)
    torch.testing.assert_close(up.float(), io["codes_summed"][:, :, 0], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------- preprocessing


def test_infinity_protocol_reproduces_the_fixture_input(io):
    skdata = pytest.importorskip("skimage.data")
    fn = get_protocol("infinity").fn
    for i, arr in enumerate((skdata.astronaut()[0:300, 60:330], skdata.chelsea()[0:300, 0:451])):
        out = np.asarray(fn(Image.fromarray(arr), 64))
        t = torch.from_numpy(out.astype(np.float32) / 255).permute(2, 0, 1)
        assert torch.equal(t + t - 1, io["input"][i])  # to_tensor, then x + x - 1 as transform does


def test_infinity_protocol_geometry_and_crop():
    proto = get_protocol("infinity")
    # 270 x 300 (w x h): w/h 0.9 <= 1 -> width 64, height int(64 / 0.9) = 71; crop top (71 - 64) // 2 = 3
    g = proto.geometry(270, 300, 64)
    assert (g.sx, g.sy, g.tx, g.ty) == (64 / 270, 71 / 300, 0.0, -3.0)
    # torchvision's CenterCrop would round 3.5 to 4: the floor offset is Infinity's own
    arr = np.random.default_rng(0).integers(0, 256, (300, 270, 3), dtype=np.uint8)
    out = np.asarray(proto.fn(Image.fromarray(arr), 64))
    ref = np.asarray(Image.fromarray(arr).resize((64, 71), Image.LANCZOS))[3:67]
    assert out.shape == (64, 64, 3) and np.array_equal(out, ref)
    wide = np.asarray(proto.fn(Image.fromarray(np.zeros((40, 100, 3), np.uint8)), 32))
    assert wide.shape == (32, 32, 3)


# ------------------------------------------------------------------------------- a second configuration


SECOND = {  # other widths (GroupNorm falls back to 24 groups), levels, stride, blocks, bits
    "base_ch": 24, "encoder_ch_mult": [1, 2], "decoder_ch_mult": [1, 2], "num_res_blocks": 1,
    "patch_size": 2, "codebook_dim": 16, "codebook_size": 65536,
}  # fmt: skip
# The official dynamic template for a 16 x 20 latent (h/w 0.8 = 1/1.25, 7 scales), from ratio2hws[1.25] swapped.
SCHEDULE_16x20 = ((1, 1), (2, 2), (3, 3), (4, 5), (8, 10), (12, 15), (16, 20))


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    torch.manual_seed(3)
    model = build_model(SECOND)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # GroupNorm weights / biases away from 1 / 0, as the fixture does
                p.copy_(
                    (1.0 if name.endswith("norm.weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen)
                )
    path = tmp_path_factory.mktemp("second") / "infinity_vae_second.pth"
    torch.save({"vae": model.state_dict(), "epoch": 7}, path)
    return tokbench.load_tokenizer(FAMILY, weights=path, config=SECOND, resolution=32)


def test_second_config_non_square_batch_of_three(second):
    cfg = second.model.cfg
    assert cfg.downsample == 2 and cfg.groups_for(24) == 24 and cfg.groups_for(48) == 24
    x = torch.rand(3, 3, 32, 40, generator=torch.Generator().manual_seed(5))
    tokens = second.encode(x)
    n = sum(h * w for h, w in SCHEDULE_16x20)
    assert tokens.meta["schedule"] == [list(s) for s in SCHEDULE_16x20] and tokens.grid == (16, 20)
    assert tokens.ids.shape == (3, n, 16) and set(tokens.ids.unique().tolist()) <= {0, 1}
    assert tokens.bits_per_image.tolist() == [float(n * 16)] * 3
    assert second.decode(tokens).shape == (3, 3, 32, 40)
    assert second.features(x, "pre_quant").shape == (3, 320, 16)
    assert second.spec.tokens_per_image == 1 + 4 + 16 + 36 + 64 + 144 + 256  # 32 px -> 16 x 16 latent

    # reference written independently: 2-D area pooling, signs (l2 normalisation keeps them), codes
    # (2b - 1)/sqrt(d), bilinear upsampling (trilinear over a single frame)
    with torch.no_grad():
        h = second.model.encoder(x * 2 - 1).double()
        residual, z, ref_bits = h.clone(), torch.zeros_like(h), []
        for hs, ws in SCHEDULE_16x20:
            r = F.adaptive_avg_pool2d(residual, (hs, ws))
            b = (r > 0).double()
            q = F.interpolate((2 * b - 1) / 4.0, size=(16, 20), mode="bilinear", align_corners=False)
            residual, z = residual - q, z + q
            ref_bits.append(b.permute(0, 2, 3, 1).reshape(3, -1, 16))
    assert torch.equal(tokens.ids, torch.cat(ref_bits, dim=1).long())
    torch.testing.assert_close(
        second.features(x, "post_quant"), z.float().flatten(2).transpose(1, 2), atol=1e-5, rtol=0
    )

    # any prefix decodes as decoder(sum of the given scales' upsampled codes)
    t4 = second.encode(x, n_scales=4)
    assert t4.ids.shape == (3, 1 + 4 + 9 + 20, 16)
    with torch.no_grad():
        codes = sum(
            F.interpolate((2 * b.double() - 1) / 4.0, size=(16, 20), mode="bilinear")
            for b in (p.reshape(3, hs, ws, 16).permute(0, 3, 1, 2)
                      for p, (hs, ws) in zip(t4.ids.split([1, 4, 9, 20], dim=1), SCHEDULE_16x20))
        )  # fmt: skip
        expected = ((second.model.decoder(codes.float()).clamp(-1, 1) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(second.decode(t4), expected, atol=1e-5, rtol=0)


def test_second_config_refusals(second):
    with pytest.raises(TokbenchError, match="no entry for a 5x5 latent"):
        second.encode(torch.rand(1, 3, 10, 10))
    with pytest.raises(TokbenchError, match="divisible by 2"):
        second.encode(torch.rand(1, 3, 33, 40))
    with pytest.raises(TokbenchError, match="n_scales must be in 1..7"):
        second.encode(torch.rand(1, 3, 32, 40), n_scales=8)
    with pytest.raises(TokbenchError, match="takes n_scales"):
        second.encode(torch.rand(1, 3, 32, 40), n_tokens=3)
    tokens = second.encode(torch.rand(1, 3, 32, 40))
    with pytest.raises(TokbenchError, match="not a prefix"):
        second.decode(Tokens(ids=tokens.ids[:, :7], grid=(16, 20), codebook_size=2))
    with pytest.raises(TokbenchError, match="0 or 1"):
        second.decode(Tokens(ids=tokens.ids * 2, grid=(16, 20), codebook_size=2))
    with pytest.raises(TokbenchError, match=r"\(B, N, 16\)"):
        second.decode(Tokens(ids=tokens.ids[..., :8], grid=(16, 20), codebook_size=2))


def test_bfloat16_build_encodes(second, tmp_path):
    sd = second.model.state_dict()
    path = tmp_path / "x.pth"
    torch.save({"vae": sd}, path)
    tok = tokbench.load_tokenizer(FAMILY, weights=path, config=SECOND, dtype="bfloat16")
    tokens = tok.encode(torch.rand(2, 3, 32, 32))
    assert tokens.ids.shape == (2, 521, 16) and tok.decode(tokens).dtype == torch.float32


# ------------------------------------------------------------------------------------------- schedules


def test_release_schedules_follow_the_official_tables():
    cfg = InfinityBSQConfig()
    assert [len(cfg.schedule(s, s)) for s in (16, 32, 64)] == [7, 10, 13]  # 256, 512, 1024 px
    assert cfg.schedule(16, 16) == ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16))
    assert cfg.schedule(16, 20) == SCHEDULE_16x20
    assert cfg.schedule(20, 16) == tuple((w, h) for h, w in SCHEDULE_16x20)
    assert len(cfg.schedule(48, 48)) == 12  # the generation pipeline's 0.60M template (768 px)
    # the VAE's own original table keeps its 16:9 schedule; the 1:1 ones are replaced by the dynamic ones
    assert cfg.schedule(36, 64)[5:] == ((9, 12), (13, 16), (18, 24), (24, 32), (32, 48), (36, 64))
    assert len(cfg._table) == 45 + 15 + 1  # 15 templates x (7, 10, 13), 15 x 12, and (36, 64)
    assert cfg.schedule(111, 37)[-2:] == ((90, 30), (111, 37))  # h/w 3, 13 scales
    with pytest.raises(TokbenchError, match="square sizes"):
        cfg.schedule(17, 17)
    orig = infinity_config({"schedule_mode": "original"})
    assert orig.schedule(16, 16) == ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8), (10, 10), (13, 13),
                                     (16, 16))  # fmt: skip
    assert infinity_config({"schedule_mode": "same3"}).schedule(5, 7) == ((5, 7),) * 3
    assert len(infinity_config({"schedule_mode": "dense"}).schedule(32, 32)) == 20
    fixed = infinity_config({"scale_schedule": [[1, 1, 1], [1, 3, 2], [1, 6, 4]]})
    assert fixed.schedule(6, 4) == ((1, 1), (3, 2), (6, 4))
    with pytest.raises(TokbenchError, match="ends at"):
        fixed.schedule(8, 8)


def test_pipeline_templates_only_add_sizes_the_vae_table_lacks():
    """The 12-scale templates of infinity/utils/dynamic_resolution.py never change an entry of the VAE's own
    dynamic table (lengths 7, 10, 13): they only add 15 latent sizes (768 px-class, e.g. 48 x 48)."""
    ours = InfinityBSQConfig()._table
    vae_own = infinity_config({"template_lengths": [7, 10, 13]})._table
    assert all(ours[k] == v for k, v in vae_own.items())
    assert len(set(ours) - set(vae_own)) == 15 and (48, 48) not in vae_own


def test_fixed_schedule_from_config(io):
    fixed = json.loads(CONFIG.read_text()) | {"scale_schedule": [[1, 1], [4, 4], [16, 16]]}
    tok = tokbench.load_tokenizer(FAMILY, weights=CKPT, config=fixed)
    tokens = tok.encode(as_unit(io["input"]))
    assert tokens.ids.shape == (2, 1 + 16 + 256, 32) and torch.equal(tokens.ids[:, 0], io["indices"][:, 0])


# ------------------------------------------------------------------------------------------- configs


def test_config_forms_and_errors():
    namespace = json.loads(CONFIG.read_text())
    cfg = infinity_config(namespace)
    assert (cfg.base_ch, cfg.encoder_ch_mult, cfg.patch_size, cfg.codebook_dim) == (32, (1, 1, 2), 4, 32)
    assert infinity_config({"codebook_size": 2**64}).codebook_dim == 64
    assert infinity_config({}) == InfinityBSQConfig()
    with pytest.raises(TokbenchError, match="unknown infinity-bsq config keys"):
        infinity_config({"base_chh": 3})
    with pytest.raises(TokbenchError, match="cnn_attention"):
        infinity_config({**namespace, "cnn_attention": "yes"})
    with pytest.raises(TokbenchError, match="use_vae"):
        infinity_config({"use_vae": True})
    with pytest.raises(TokbenchError, match="2\\^codebook_dim"):
        infinity_config({"codebook_dim": 32, "codebook_size": 2**16})
    with pytest.raises(TokbenchError, match="divisible by none"):
        infinity_config({"base_ch": 20})
    with pytest.raises(TokbenchError, match="schedule_mode"):
        infinity_config({"schedule_mode": "fancy"})


def test_unknown_build_option_is_refused():
    with pytest.raises(TokbenchError, match="unknown infinity-bsq options"):
        tokbench.load_tokenizer(FAMILY, weights=CKPT, config=CONFIG, ema=True)


# ------------------------------------------------------------------------------------- checkpoints


def test_wrong_family_checkpoints_are_named():
    with pytest.raises(CheckpointError, match="not an Infinity BSQ-VAE.*LlamaGen"):
        tokbench.load_tokenizer(FAMILY, weights=DATA / "llamagen_vq16/vq_ds16_c2i.pt", config=CONFIG)
    with pytest.raises(CheckpointError, match="not an Infinity BSQ-VAE.*VAR"):
        tokbench.load_tokenizer(FAMILY, weights=DATA / "var_vqvae/vae_ch32v512z16.pth", config=CONFIG)


def test_wrapper_less_keys_extra_entries_and_missing_mask(tmp_path, io):
    """`load_cnn` also takes `...conv1.weight` for `...conv1.conv.weight`; the loader reads `vae` only."""
    sd = _state_dict()
    bare = {
        re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", k): v for k, v in sd.items() if "lfq.mask" not in k
    }
    assert "encoder.conv_in.weight" in bare and "encoder.down.0.downsample.conv.weight" in bare
    noise = {k: torch.randn_like(v.float()) for k, v in sd.items()}
    path = tmp_path / "bare.pth"
    torch.save({"vae": bare, "ema": noise, "step": 5}, path)
    tok = tokbench.load_tokenizer(FAMILY, weights=path, config=CONFIG)
    assert "remapped" in tok.spec.source["layout"] and "ignored_entries" not in tok.spec.source
    assert torch.equal(tok.encode(as_unit(io["input"])).ids, io["indices"])


def test_strict_inside_the_model_lenient_outside(tmp_path):
    """A tensor the encoder / decoder lacks is a config mismatch (error); one of another module saved beside
    the VAE is skipped (as load_cnn skips it) and recorded."""
    sd = _state_dict()
    path = tmp_path / "extra.pth"
    torch.save({"vae": {**sd, "perceptual_loss.net.0.weight": torch.zeros(2, 2)}}, path)
    tok = tokbench.load_tokenizer(FAMILY, weights=path, config=CONFIG)
    assert "perceptual_loss.net.0.weight" in tok.spec.source["ignored_entries"]
    torch.save({"vae": {**sd, "encoder.mid.attn_1.q.conv.weight": torch.zeros(64, 64, 1, 1)}}, path)
    with pytest.raises(CheckpointError, match="unexpected keys: encoder.mid.attn_1"):
        tokbench.load_tokenizer(FAMILY, weights=path, config=CONFIG)
    del sd["decoder.conv_out.conv.bias"]
    torch.save({"vae": sd}, path)
    with pytest.raises(CheckpointError, match="missing keys: decoder.conv_out.conv.bias"):
        tokbench.load_tokenizer(FAMILY, weights=path, config=CONFIG)


def test_codebook_dim_from_the_checkpoint(tmp_path):
    namespace = json.loads(CONFIG.read_text())
    bare = {k: v for k, v in namespace.items() if k not in ("codebook_dim", "codebook_size")}
    tok = tokbench.load_tokenizer(FAMILY, weights=CKPT, config=bare)
    assert tok.model.cfg.codebook_dim == 32 and "from the checkpoint" in tok.spec.source["codebook_dim"]
    with pytest.raises(CheckpointError, match="d=32 BSQ-VAE.*codebook_dim 16"):
        tokbench.load_tokenizer(
            FAMILY, weights=CKPT, config={**namespace, "codebook_dim": 16, "codebook_size": 65536}
        )


def test_state_dict_round_trips_the_release_layout(tok):
    assert set(tok.model.state_dict()) == set(_state_dict())  # both quantizer.* and quantize.lfq.mask
    assert torch.equal(tok.model.state_dict()["quantizer.lfq.mask"], _state_dict()["quantizer.lfq.mask"])


# ------------------------------------------------------------------------ released sizes (meta device)


def _manifest() -> dict:
    return json.loads((INF / "manifest_full.json").read_text())


def _shapes(config) -> dict[str, list[int]]:
    model = build_model(config, device="meta")
    return {k: list(v.shape) for k, v in model.named_parameters()}


def test_full_size_matches_release_manifest():
    m = _manifest()
    for filename, entry in m["variants"].items():
        shapes = _shapes(entry["vae_model_kwargs"])
        assert shapes == entry["params"], filename
        assert sum(math.prod(s) for s in shapes.values()) == entry["total_params"], filename
    assert _shapes({}) == m["params"]  # the default config is the d32 release
    for v in VARIANTS:
        entry = m["variants"][v.weights.filename]
        assert _shapes(v.config) == entry["params"], v.name


def test_d64_mask_buffer_wraps_as_upstream():
    model = build_model({"codebook_dim": 64}, device="meta")
    assert model.quantizer.lfq.mask.shape == (64,) and model.quantizer.lfq.mask.dtype == torch.int64
    assert (2 ** torch.arange(63, -1, -1))[0] == -(2**63)  # what the release stores


def test_random_weights_build_without_a_file():
    tok = tokbench.load_tokenizer(FAMILY, weights="random", config=SECOND, resolution=32)
    assert "RANDOM" in tok.spec.notes
    assert tok.encode(torch.rand(1, 3, 32, 32)).ids.shape == (1, 521, 16)


def test_variants_table():
    names = {v.name for v in VARIANTS}
    assert set(tokbench.registry.list_tokenizers("infinity-bsq*")) == names
    assert {"infinity-bsq-d32", "infinity-bsq-d64", "infinity-bsq-d32reg", "infinity-bsq-d64-512"} <= names
    files = {v.weights.filename for v in VARIANTS}
    assert files == {f"infinity_vae_{s}.pth" for s in ("d16", "d24", "d32", "d32reg", "d64")}
    for v in VARIANTS:
        assert v.weights.repo_id == "FoundationVision/Infinity" and len(v.weights.revision) == 40
        assert v.weights.licence.startswith("MIT") and "2412.04431" in v.paper
        assert set(v.published) == {"rfid_pytorch_fid"} and str(v.resolution) in v.published_source
        assert tokbench.weights._ARTIFACTS[v.weights.name] == v.weights
    d32 = next(v for v in VARIANTS if v.name == "infinity-bsq-d32")
    assert d32.published == {"rfid_pytorch_fid": 0.61} and "PSNR 22.7" in d32.published_source
    family = tokbench.registry.find(FAMILY)[0]
    assert (
        family.encode_options == {"n_scales": tokbench.options.PositiveInt}
        and family.default_variant in names
    )
