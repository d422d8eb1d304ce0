"""Open-MAGVIT2 (LFQ) against outputs of the official upstream code.

Golden fixture tests/data/open_magvit2/ (see its README): tiny random raw AND EMA weights in the release's
Lightning `{"state_dict"}` layout (`imagenet_256_L.ckpt`), and what TencentARC/SEED-Voken's own
`lfqgan.VQModel` produced for two images under `ema_scope()` (and without it: `*_raw`).
`manifest_full.json` lists the parameter shapes of the released models, built by the unmodified classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tokbench
from tokbench.checkpoint import CheckpointError, lit_ema_key
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol
from tokbench.tokenizers.open_magvit2 import (
    VARIANTS,
    AdaptiveGroupNorm,
    build_model,
    depth_to_space,
    factorize_ids,
    lfq_codes,
    lfq_ids,
    open_magvit2_config,
    unfactorize_ids,
)

DATA = Path(__file__).parent / "data"
OM = DATA / "open_magvit2"
CKPT = OM / "imagenet_256_L.ckpt"
CONFIG = OM / "config.json"

TORCH_THREADS = 1  # see conftest._torch_threads


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(OM / "io.safetensors"))


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer("open-magvit2", weights=CKPT, config=CONFIG)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """Official [-1, 1] output -> the tokbench [0, 1] convention."""
    return ((x + 1) / 2).clamp(0, 1)


def _grid(io: dict[str, torch.Tensor]) -> tuple[int, int]:
    return tuple(io["latent"].shape[-2:])


# ------------------------------------------------------------------------------------------ golden outputs


@pytest.mark.parametrize(("options", "suffix"), [({}, ""), ({"ema": True}, ""), ({"ema": False}, "_raw")])
def test_ids_and_reconstruction_match_official(io, options, suffix):
    tok = tokbench.load_tokenizer("open-magvit2", weights=CKPT, config=CONFIG, **options)
    tokens = tok.encode(as_unit(io["input"]))
    assert tokens.grid == _grid(io)
    assert torch.equal(tokens.ids.flatten(), io["indices" + suffix])
    torch.testing.assert_close(tok.decode(tokens), as_unit(io["recon" + suffix]), atol=1e-4, rtol=0)
    assert tok.spec.source["weights_set"] == ("raw" if suffix else "EMA (model_ema.*)")


def test_latent_quant_and_decode_from_indices(tok, io):
    with torch.no_grad():
        latent = tok.model.encoder(io["input"])
        torch.testing.assert_close(latent, io["latent"], atol=1e-4, rtol=0)
        b, (h, w) = io["input"].shape[0], _grid(io)
        ids = io["indices"].view(b, h, w)
        assert torch.equal(tok.model.codes(ids), io["quant"])  # exactly +-1 here
        torch.testing.assert_close(tok.model.decode_ids(ids), io["recon_from_indices"], atol=1e-4, rtol=0)


def test_lfq_ids_follow_the_lsb_first_formula(io):
    """Independent of the model: id = sum_c [latent_c > 0] 2^c over the official latent (README step 2)."""
    latent = io["latent"].double()
    c = latent.shape[1]
    ref = sum((latent[:, i] > 0).long() << i for i in range(c))
    assert torch.equal(ref.flatten(), io["indices"])
    assert torch.equal(lfq_ids(io["latent"]).flatten(), io["indices"])
    # MSB-first (legacy B, lucidrains) reads the same bits backwards: the README counts 493 of 512 changed
    msb = lfq_ids(io["latent"], "msb")
    assert int((msb.flatten() != io["indices"]).sum()) == 493
    assert torch.equal(lfq_codes(msb, c, "msb"), lfq_codes(lfq_ids(io["latent"]), c, "lsb"))


def test_factorized_ids_match_the_ar_sub_tokens(tok, io):
    split = tuple(json.loads(CONFIG.read_text())["factorized_bits"])
    tokens = tok.encode(as_unit(io["input"]))
    pre, post = tok.factorized(tokens, split)
    assert torch.equal(pre.flatten(), io["indices_pre"]) and torch.equal(post.flatten(), io["indices_post"])
    assert torch.equal(unfactorize_ids(pre, post, split), tokens.ids)
    ids = unfactorize_ids(io["indices_pre"], io["indices_post"], split).view(2, *_grid(io))
    with torch.no_grad():
        torch.testing.assert_close(tok.model.decode_ids(ids), io["recon_from_factorized"], atol=1e-4, rtol=0)
    with pytest.raises(TokbenchError, match="split"):
        tok.factorized(tokens)  # the fixture config names no split, and 10 bits are not 6 + 12


def test_factorize_msb_keeps_high_bits_first():
    ids = torch.tensor([0b1011_000001, 5, 1023])
    pre, post = factorize_ids(ids, (4, 6), "msb")
    assert pre.tolist() == [0b1011, 0, 15] and post.tolist() == [1, 5, 63]
    assert torch.equal(unfactorize_ids(pre, post, (4, 6), "msb"), ids)


# ------------------------------------------------------------------------- the quirks, against formulas


def test_depth_to_space_is_dcr_not_pixel_shuffle():
    c, h, w = 3, 2, 5  # non-square on purpose
    x = torch.randn(2, 4 * c, h, w, generator=torch.Generator().manual_seed(0))
    out = depth_to_space(x, 2)
    assert out.shape == (2, c, 2 * h, 2 * w)
    for a in range(2):
        for b in range(2):
            for ch in range(c):  # out[c, 2y+a, 2x+b] = in[(2a+b)*C + c, y, x]
                assert torch.equal(out[:, ch, a::2, b::2], x[:, (2 * a + b) * c + ch])
    assert not torch.equal(out, torch.nn.functional.pixel_shuffle(x, 2))


def test_adaptive_group_norm_uses_unbiased_variance():
    gen = torch.Generator().manual_seed(1)
    norm = AdaptiveGroupNorm(z_channels=4, channels=32, groups=32)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x, style = torch.randn(2, 32, 6, 4, generator=gen), torch.randn(2, 4, 3, 5, generator=gen)
    flat = style.double().flatten(2)
    n = flat.shape[-1]
    var = ((flat - flat.mean(-1, keepdim=True)) ** 2).sum(-1) / (n - 1)  # unbiased, written out
    scale = (var + 1e-6).sqrt() @ norm.gamma.weight.double().t() + norm.gamma.bias.double()
    bias = flat.mean(-1) @ norm.beta.weight.double().t() + norm.beta.bias.double()
    xd = x.double().view(2, 32, -1)
    gn = ((xd - xd.mean(-1, keepdim=True)) / (xd.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()).view_as(x)
    ref = gn * scale[:, :, None, None] + bias[:, :, None, None]
    torch.testing.assert_close(norm(x, style).double(), ref, atol=1e-5, rtol=0)


def test_one_token_grid_cannot_be_decoded(tok):
    with pytest.raises(TokbenchError, match="variance"):
        tok.decode(Tokens(ids=torch.zeros(1, 1, dtype=torch.long), grid=(1, 1), codebook_size=1024))


def transposed_copy(model: torch.nn.Module, dcr_convs: tuple[str, ...] = ()) -> torch.nn.Module:
    """The same model for transposed images: every conv kernel transposed (kh <-> kw) and, for the convs
    feeding a DCR depth-to-space, the sub-pixel groups (a, b) -> (b, a). GroupNorm, attention (permutation
    equivariant), nearest upsampling and the (0, 1, 0, 1) padding commute with the transpose, so
    f_T(x^T) = f(x)^T: a reference for non-square inputs that a swapped h/w anywhere would break."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in out.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(m.weight.transpose(-1, -2).clone())
                if name in dcr_convs:
                    for p in (m.weight, m.bias):
                        groups = p.view(4, -1, *p.shape[1:])
                        p.copy_(groups[[0, 2, 1, 3]].reshape(p.shape).clone())
    return out


def test_non_square_images(tok, io):
    x = as_unit(io["input"])[:, :, :, 8:56]  # 64 x 48
    tokens = tok.encode(x)
    assert tokens.grid == (16, 12) and tokens.ids.shape == (2, 192)
    out = tok.decode(tokens)
    assert out.shape == (2, 3, 64, 48) and 0 <= float(out.min()) and float(out.max()) <= 1
    dcr = tuple(n for n, _ in tok.model.named_modules() if n.endswith("upsample.conv1"))
    model_t = transposed_copy(tok.model, dcr)
    with torch.no_grad():
        ids = tok.model.encode_ids(x * 2 - 1)
        assert torch.equal(model_t.encode_ids((x * 2 - 1).transpose(-1, -2)), ids.transpose(-1, -2))
        recon_t = model_t.decode_ids(ids.transpose(-1, -2).contiguous())
    torch.testing.assert_close(recon_t.transpose(-1, -2), tok.model.decode_ids(ids), atol=1e-4, rtol=0)
    with pytest.raises(TokbenchError, match="divisible by 4"):
        tok.encode(x[:, :, :, :46])


# ------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("checkpoint", "named"),
    [
        ("llamagen_vq16/vq_ds16_c2i.pt", "LlamaGen / Janus VQ"),
        ("ibq/imagenet256_262144.ckpt", "IBQ"),
        ("var_vqvae/vae_ch32v512z16.pth", "VAR multi-scale VQVAE"),
        ("tokenflow/tokenflow_clipb_32k_enhanced.pt", "TokenFlow"),
        ("titok/model.safetensors", "TiTok"),
        ("chameleon_vqgan/vqgan.ckpt", "taming VQGAN without EMA"),
    ],
)
def test_wrong_family_checkpoints_are_named(checkpoint, named):
    with pytest.raises(CheckpointError, match=named):
        tokbench.load_tokenizer("open-magvit2", weights=DATA / checkpoint, config=CONFIG)


def _state_dict() -> dict[str, torch.Tensor]:
    return torch.load(CKPT, map_location="cpu", weights_only=True)["state_dict"]


def test_ema_key_rule_and_missing_ema(tmp_path, io):
    sd = _state_dict()
    assert lit_ema_key("encoder.conv_in.weight") == "model_ema.encoderconv_inweight"
    assert torch.equal(sd[lit_ema_key("decoder.conv_out.bias")], sd["model_ema.decoderconv_outbias"])
    raw_only = tmp_path / "raw.ckpt"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("model_ema.")}}, raw_only)
    with pytest.raises(CheckpointError, match="ema=False"):
        tokbench.load_tokenizer("open-magvit2", weights=raw_only, config=CONFIG)
    tok = tokbench.load_tokenizer("open-magvit2", weights=raw_only, config=CONFIG, ema=False)
    assert torch.equal(tok.encode(as_unit(io["input"])).ids.flatten(), io["indices_raw"])


def test_config_use_ema_false_means_raw_weights(io):
    cfg = json.loads(CONFIG.read_text())
    cfg["model"]["init_args"]["use_ema"] = False  # the official ema_scope() is then a no-op
    tok = tokbench.load_tokenizer("open-magvit2", weights=CKPT, config=cfg)
    assert torch.equal(tok.encode(as_unit(io["input"])).ids.flatten(), io["indices_raw"])


def test_legacy_layouts_are_told_apart(tmp_path):
    cfg = json.loads(CONFIG.read_text())
    legacy_cfg = {**cfg["model"]["init_args"], "legacy": True}
    with pytest.raises(CheckpointError, match="adaptive"):  # a current checkpoint into the legacy model
        tokbench.load_tokenizer("open-magvit2", weights=CKPT, config=legacy_cfg)
    sd = _state_dict()
    b_file = tmp_path / "imagenet_256_B.ckpt"  # a legacy-B layout: no adaptive norm
    torch.save({"state_dict": {k: v for k, v in sd.items() if "adaptive" not in k}}, b_file)
    # the official YAML of the legacy code names taming.models.lfqgan.VQModel; a config that says nothing
    # about the layout takes it from the checkpoint (the current code always has decoder.adaptive.*)
    old_yaml = {"model": {"class_path": "taming.models.lfqgan.VQModel", "init_args": cfg["model"]["init_args"]}}
    for config in (legacy_cfg, old_yaml, CONFIG):
        tok = tokbench.load_tokenizer("open-magvit2", weights=b_file, config=config)
        assert tok.model.config.bit_order == "msb" and tok.model.decoder.adaptive is None
        assert "legacy B" in tok.spec.notes
    with pytest.raises(TokbenchError, match="asks for adaptive_norm"):
        tokbench.load_tokenizer("open-magvit2", weights=b_file, config={**cfg["model"]["init_args"], "adaptive_norm": True})


def test_unexpected_keys_are_refused(tmp_path):
    sd = _state_dict()
    sd["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="encoder.extra.weight"):
        tokbench.load_tokenizer("open-magvit2", weights=path, config=CONFIG)


# ---------------------------------------------------------------------------------------- configs


def test_config_forms_agree_and_errors_are_clear():
    init_args = json.loads(CONFIG.read_text())["model"]["init_args"]
    nested = open_magvit2_config(json.loads(CONFIG.read_text()))
    assert open_magvit2_config(init_args) == nested
    assert open_magvit2_config({**init_args.pop("ddconfig"), **init_args}) == nested  # ddconfig keys flat
    assert nested.ch_mult == (1, 1, 2) and nested.downsample == 4 and nested.n_embed == 1024
    with pytest.raises(TokbenchError, match="unknown open-magvit2 config keys"):
        open_magvit2_config({"n_embed": 1024, "embed_dim": 10, "z_channels": 10, "wat": 1})
    with pytest.raises(TokbenchError, match="no projection"):
        open_magvit2_config({"n_embed": 1024, "embed_dim": 10, "z_channels": 12})
    with pytest.raises(TokbenchError, match="power of 2"):
        open_magvit2_config({"n_embed": 1000, "embed_dim": 10, "z_channels": 10})
    with pytest.raises(TokbenchError, match="ibq"):
        open_magvit2_config({"model": {"class_path": "src.IBQ.models.ibqgan.IBQ", "init_args": {}}})
    with pytest.raises(TokbenchError, match="divisible"):
        open_magvit2_config({"ch": 48, "ch_mult": [1, 2], "n_embed": 1024, "embed_dim": 10, "z_channels": 10})


# ------------------------------------------------------------------------ released sizes (meta device)


def _manifest() -> dict:
    return json.loads((OM / "manifest_full.json").read_text())


def _shapes(cfg) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in build_model(cfg, "meta").named_parameters()}


def test_full_size_matches_release_manifest():
    m = _manifest()
    full = json.loads(CONFIG.read_text())["full_size_equivalent"]["init_args"]
    by_name = {v.name: v for v in VARIANTS}
    for cfg in (open_magvit2_config(full), open_magvit2_config(by_name["open-magvit2-256-l"].config)):
        shapes = _shapes(cfg)
        assert shapes == m["params"]
        assert sum(torch.Size(s).numel() for s in shapes.values()) == m["total_parameters"]
        assert 2 * len(shapes) + 2 == m["num_state_dict_entries_release"]  # raw + model_ema.* + decay, num_updates
    assert open_magvit2_config({}) == open_magvit2_config(by_name["open-magvit2-256-l"].config)


@pytest.mark.parametrize(
    ("variant", "key"),
    [
        ("open-magvit2-128-l", "imagenet_128_L"),
        ("open-magvit2-pretrain-256-262144", "pretrain256_262144"),
        ("open-magvit2-pretrain-256-16384", "pretrain256_16384"),
        ("open-magvit2-256-b", "imagenet_256_B"),
        ("open-magvit2-128-b", "imagenet_128_B"),
    ],
)
def test_other_released_variants_match_manifest(variant, key):
    m = _manifest()
    other = m["other_variants"][key]
    cfg = open_magvit2_config(next(v for v in VARIANTS if v.name == variant).config)
    shapes = _shapes(cfg)
    if "params" in other:
        assert shapes == other["params"]
    else:
        expected = {**m["params"], **other["shapes_differing_from_primary"]}
        assert shapes == expected
    assert sum(torch.Size(s).numel() for s in shapes.values()) == other["total_parameters"]


def test_variants_table_and_artifacts():
    names = {v.name for v in VARIANTS}
    assert set(tokbench.registry.list_tokenizers("open-magvit2*")) == names
    for v in VARIANTS:
        assert v.weights.repo_id.startswith("TencentARC/") and v.weights.filename.endswith(".ckpt")
        assert tokbench.weights._ARTIFACTS[v.weights.name] == v.weights  # registered on import
        assert set(v.published) <= {"rfid_pytorch_fid"} and v.published_source
    by_name = {v.name: v for v in VARIANTS}
    for name, side in (("open-magvit2-256-l", 256), ("open-magvit2-128-l", 128), ("open-magvit2-128-b", 128)):
        cfg = open_magvit2_config(by_name[name].config)
        assert by_name[name].resolution == side and side // cfg.downsample == 16  # 16x16 tokens, README table
    assert open_magvit2_config(by_name["open-magvit2-pretrain-256-16384"].config).bits == 14


# ------------------------------------------------------------------------------------ preprocessing


def test_protocol_reproduces_the_official_eval_transform(io):
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    fn = get_protocol("open-magvit2").fn
    for i, arr in enumerate((skdata.astronaut()[0:300, 100:400], skdata.chelsea())):
        img = fn(Image.fromarray(arr), io["input"].shape[-1])
        x = torch.from_numpy(__import__("numpy").asarray(img).astype("float32") / 127.5 - 1.0).permute(2, 0, 1)
        torch.testing.assert_close(x, io["input"][i], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- runner


def test_both_families_through_the_runner(tmp_path):
    """The golden checkpoints run through a suite as released ones would: protocol, weights set, rate."""
    from tests.test_runner import make_folder
    from tokbench.runner import run_suite
    from tokbench.suite import parse_suite

    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = parse_suite({
        "name": "seed-voken", "data": [f"folder:{folder}"], "batch_size": 2, "protocol": "open-magvit2",
        "metrics": ["psnr", "bpp"],
        "tokenizers": [
            {"name": "open-magvit2", "resolution": 32, "options": {"ema": False},
             "weights": str(CKPT), "config": str(CONFIG)},
            {"name": "ibq", "resolution": 32,
             "weights": str(DATA / "ibq/imagenet256_262144.ckpt"), "config": str(DATA / "ibq/config.json")},
        ],
    })  # fmt: skip
    summaries = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert [s["status"] for s in summaries] == ["ok", "ok"], [s.get("reason") for s in summaries]
    lfq, vq = summaries
    assert lfq["protocol"] == "open-magvit2" and lfq["spec"]["source"]["weights_set"] == "raw"
    assert vq["spec"]["source"]["weights_set"] == "EMA (model_ema.*)"
    # 32 px / 4 = 8x8 ids: 10 bits each (2^10 LFQ codes) and 9 bits (512 IBQ codes)
    assert lfq["results"]["bpp"] == pytest.approx(64 * 10 / 32**2)
    assert vq["results"]["bpp"] == pytest.approx(64 * 9 / 32**2)
