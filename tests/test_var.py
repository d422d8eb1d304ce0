"""VAR's multi-scale VQVAE (`var-vqvae`) against outputs of the official upstream code.

Golden fixture tests/data/var_vqvae/ (see its README): a tiny random-weight checkpoint in the release's
container (plain state dict), its config (`vqvae_kwargs`, `build_vae_var_equivalent`, derived values),
the input batch (VAR's val transform at 64 px) and what FoundationVision/VAR's `VQVAE` produced: the ids
of every scale, the latent, the per-scale f_hat and the reconstruction; plus `manifest_full.json`, the
names and shapes of the released `vae_ch160v4096z32.pth` built by the unpatched upstream class.
tests/data/var_vqvae_alt/ (its README): the same kind of fixture for another config (ch_mult (1, 1), one
res block, 3 phis, scales 1..8, batch 3), so that nothing is right only for the golden config.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import tokbench
from tokbench.checkpoint import RANDOM_WEIGHTS, CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.data import pil_to_tensor
from tokbench.protocols import get_protocol
from tokbench.tokenizers.var import VARIANTS, build_model, phi_index, var_config

DATA = Path(__file__).parent / "data"
VAR = DATA / "var_vqvae"
CKPT = VAR / "vae_ch32v512z16.pth"
CONFIG = VAR / "config.json"

TORCH_THREADS = 1  # see conftest._torch_threads: the fixture was made with one thread


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """Official [-1, 1] output -> the tokbench [0, 1] convention."""
    return ((x + 1) / 2).clamp(0, 1)


@pytest.fixture(scope="module")
def tok():
    return tokbench.load_tokenizer("var-vqvae", weights=CKPT, config=CONFIG)


@pytest.fixture(scope="module")
def io():
    return load_file(str(VAR / "io.safetensors"))


@pytest.fixture(scope="module")
def fixture_config():
    return json.loads(CONFIG.read_text())


# ------------------------------------------------------------------------------------ golden outputs


def test_ids_exact_and_per_scale_split(tok, io, fixture_config):
    tokens = tok.encode((io["input"] + 1) / 2)
    assert tokens.ids.dtype == torch.long and tokens.ids.shape == (2, fixture_config["total_tokens"])
    assert torch.equal(tokens.ids, io["indices"])
    assert tokens.meta["scales"] == fixture_config["vqvae_kwargs"]["v_patch_nums"]
    assert tokens.meta["scale_lengths"] == fixture_config["scale_lengths"]
    assert tokens.codebook_size == fixture_config["vqvae_kwargs"]["vocab_size"]
    assert tokens.bits_per_token == pytest.approx(math.log2(512))
    assert tok.spec.tokens_per_image == 680 and tok.spec.resolution == 64 and tok.spec.preprocessing == "var"


def test_latent_and_fhat_match_official(tok, io):
    model = tok.model
    f = model.latent(io["input"])
    assert (f - io["f"]).abs().max().item() < 1e-5
    ids, fhat = model.quantize.f_to_ids(f)
    assert (fhat - io["fhat"]).abs().max().item() < 1e-5
    assert torch.equal(torch.cat(ids, 1), io["indices"])
    per_scale = model.split_ids(io["indices"])
    for k in range(1, len(per_scale) + 1):  # the cumulative f_hat after each scale (embed_to_fhat, last_one=False)
        got = model.quantize.fhat_from_ids(per_scale[:k])
        assert (got - io["fhat_per_scale"][k - 1]).abs().max().item() < 1e-5, k


def test_decode_matches_official_recon(tok, io):
    out = tok.decode(Tokens(ids=io["indices"], codebook_size=512))
    assert out.shape == io["recon"].shape and out.dtype == torch.float32
    assert (out - as_unit(io["recon"])).abs().max().item() < 1e-4
    assert (out - as_unit(io["recon_from_fhat"])).abs().max().item() < 1e-4
    # the official decode clamps: the unclamped decoder output leaves [-1, 1] on this fixture
    assert (io["recon_unclamped"].abs() > 1).any()
    assert (out - as_unit(io["recon_unclamped"])).abs().max().item() < 1e-4


def test_n_scales_prefix_encodes_and_decodes(tok, io):
    """`n_scales=k` keeps the first k scales; their decode is the official decoder on the f_hat after k scales."""
    images = (io["input"] + 1) / 2
    offsets = json.loads(CONFIG.read_text())["scale_offsets"] + [680]
    for k in (1, 4, 9):
        tokens = tok.encode(images, n_scales=k)
        assert torch.equal(tokens.ids, io["indices"][:, : offsets[k]])
        assert tokens.meta["scales"] == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16][:k]
        out = tok.decode(tokens)
        with torch.no_grad():
            ref = tok.model.decoder(tok.model.post_quant_conv(io["fhat_per_scale"][k - 1])).clamp(-1, 1)
        assert (out - as_unit(ref)).abs().max().item() < 1e-4
        assert (out - as_unit(io["recon"])).abs().max().item() > 1e-2  # later scales carry detail
    full = tok.encode(images, n_scales=10)
    assert torch.equal(full.ids, io["indices"])
    with pytest.raises(TokbenchError, match="prefix of the scales"):
        tok.decode(Tokens(ids=io["indices"][:, :6], codebook_size=512))
    with pytest.raises(TokbenchError, match="n_scales"):
        tok.encode(images, n_scales=11)
    with pytest.raises(TokbenchError, match=r"\[0, 512\)"):
        tok.decode(Tokens(ids=io["indices"] + 10, codebook_size=512))


def test_wrong_input_size_is_refused(tok, io):
    images = (io["input"] + 1) / 2
    with pytest.raises(TokbenchError, match="takes 64x64"):
        tok.encode(images[..., :-4, :-4])
    with pytest.raises(TokbenchError, match="takes 64x64"):
        tok.encode(images[..., :-4])
    with pytest.raises(TokbenchError, match=r"encode takes n_scales; got \[.n_tokens.\]"):
        tok.encode(images, n_tokens=3)


# ------------------------------------------------------------------------------------ another config

ALT = DATA / "var_vqvae_alt"  # official outputs for ch_mult (1, 1), 1 res block, K=3 phis, scales 1..8, batch 3


def test_alternative_config_matches_official():
    """tests/data/var_vqvae_alt/ (its README): a config other than the golden one, nothing read from the fixture
    that the config implies; ids exact, latent / f_hat 1e-5, decode 1e-4 as the golden README suggests."""
    cfg = json.loads((ALT / "config.json").read_text())
    io = load_file(str(ALT / "io.safetensors"))
    tok = tokbench.load_tokenizer("var-vqvae", weights=ALT / "vae_ch32v64z8.pth", config=ALT / "config.json")
    assert tok.spec.resolution == 16 and tok.spec.tokens_per_image == 103 == cfg["total_tokens"]
    assert list(tok.model.cfg.phi_index_per_scale) == cfg["phi_index_per_scale"] == [0, 0, 1, 2, 2]  # K=3 ticks
    tokens = tok.encode((io["input"] + 1) / 2)
    assert torch.equal(tokens.ids, io["indices"]) and tokens.meta["scale_lengths"] == cfg["scale_lengths"]
    model = tok.model
    assert (model.latent(io["input"]) - io["f"]).abs().max().item() < 1e-5
    per_scale = model.split_ids(io["indices"])
    for k in range(1, len(per_scale) + 1):
        got = model.quantize.fhat_from_ids(per_scale[:k])
        assert (got - io["fhat_per_scale"][k - 1]).abs().max().item() < 1e-5, k
    out = tok.decode(tokens)
    assert (out - as_unit(io["recon"])).abs().max().item() < 1e-4
    assert (out - as_unit(io["recon_from_fhat"])).abs().max().item() < 1e-4


def test_resnet_block_uses_upstream_silu():
    """Upstream basic_vae's ResnetBlock activates with F.silu (not x * sigmoid(x), which rounds differently and
    moved `f` by ~5e-6 on generated configs): the block equals the functional upstream formula bit for bit."""
    from tokbench.tokenizers.var import VARResnetBlock

    torch.manual_seed(0)
    block = VARResnetBlock(32, 64, num_groups=32, eps=1e-6).eval()
    x = torch.randn(2, 32, 6, 6)
    h = F.conv2d(F.silu(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, 1e-6)), block.conv1.weight,
                 block.conv1.bias, padding=1)
    h = F.conv2d(F.silu(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, 1e-6)), block.conv2.weight,
                 block.conv2.bias, padding=1)
    with torch.no_grad():
        assert torch.equal(block(x), F.conv2d(x, block.nin_shortcut.weight, block.nin_shortcut.bias) + h)


# ------------------------------------------------------------------------------------ phi selection


def _nearest_tick_exact(si: int, sn: int, k: int) -> list[int]:
    """Every tick index at minimal exact (rational) distance from si / (sn - 1)."""
    third = 3 if k == 4 else 2
    ticks = [Fraction(1, third * k) + i * (1 - Fraction(2, third * k)) / (k - 1) for i in range(k)]
    dist = [abs(t - Fraction(si, sn - 1)) for t in ticks]
    return [i for i, d in enumerate(dist) if d == min(dist)]


def test_phi_index_follows_numpy_float64_ties(fixture_config):
    cfg = var_config(CONFIG)
    assert list(cfg.phi_index_per_scale) == fixture_config["phi_index_per_scale"] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    # si = 2 and 7 of 10 are exact ties; numpy's float64 linspace resolves both towards the later tick
    assert _nearest_tick_exact(2, 10, 4) == [0, 1] and _nearest_tick_exact(7, 10, 4) == [2, 3]
    for sn in (2, 5, 7, 10, 13, 16):  # other schedules and K: away from ties, the exact nearest tick
        for k in (2, 3, 4, 5, 6):
            for si in range(sn):
                exact = _nearest_tick_exact(si, sn, k)
                got = phi_index(si / (sn - 1), k)
                assert got in exact, (sn, k, si)
                if len(exact) == 1:
                    assert got == exact[0]


def test_phi_layouts_follow_share_quant_resi():
    base = {"ch": 32, "ch_mult": [1, 2], "z_channels": 8, "vocab_size": 16, "v_patch_nums": [1, 2, 4]}
    keys = lambda cfg: {k for k in build_model(cfg, device="meta").state_dict() if "quant_resi" in k}  # noqa: E731
    assert keys({**base, "share_quant_resi": 0}) == {f"quantize.quant_resi.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert keys({**base, "share_quant_resi": 0, "default_qresi_counts": 2}) == {
        f"quantize.quant_resi.{i}.{p}" for i in range(2) for p in ("weight", "bias")
    }
    assert keys({**base, "share_quant_resi": 1}) == {"quantize.quant_resi.qresi.weight", "quantize.quant_resi.qresi.bias"}
    assert keys({**base, "share_quant_resi": 3}) == {
        f"quantize.quant_resi.qresi_ls.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }
    assert keys({**base, "quant_resi": 0.0}) == set()  # |quant_resi| <= 1e-6: identity, no conv
    assert var_config({**base, "share_quant_resi": 3}).phi_index_per_scale == (0, 1, 2)
    with pytest.raises(TokbenchError, match="at least 2 scales"):
        var_config({**base, "v_patch_nums": [4]})


# ------------------------------------------------------------------------------------ config formats


def test_config_formats_agree(fixture_config):
    nested = var_config(fixture_config)
    kwargs = dict(fixture_config["vqvae_kwargs"])
    assert var_config(kwargs) == nested  # plain constructor kwargs
    assert var_config({"vqvae_kwargs": kwargs}) == nested
    bvv = fixture_config["build_vae_var_equivalent"]
    assert var_config({**bvv, "ch_mult": kwargs["ch_mult"]}) == nested  # build_vae_var names, flat
    assert var_config({"build_vae_var_equivalent": bvv, "ch_mult": kwargs["ch_mult"]}) == nested
    assert nested.ch_mult == (1, 1, 2) and nested.v_patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert nested.norm_num_groups == 32 and nested.norm_eps == 1e-6 and nested.quant_conv_ks == 3
    full = var_config(fixture_config["full_size_equivalent"])
    assert full == var_config({}) == var_config(VARIANTS[0].config)  # the release = build_vae_var()'s VQVAE
    assert var_config({"vqvae_kwargs": {}}).ch == 128  # VQVAE's own default, unlike build_vae_var's 160


def test_config_errors_say_what_is_wrong(fixture_config):
    with pytest.raises(TokbenchError, match="twice with different values"):
        var_config({"vqvae_kwargs": {"vocab_size": 512}, "build_vae_var_equivalent": {"V": 1024}})
    with pytest.raises(TokbenchError, match="phi_index_per_scale"):
        var_config({**fixture_config, "phi_index_per_scale": [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]})
    with pytest.raises(TokbenchError, match="unknown var-vqvae config keys"):
        var_config({"depth": 16})
    with pytest.warns(UserWarning, match="notes"):  # beside a fixture's nested arguments: a description
        assert var_config({**fixture_config, "notes": "config B"}) == var_config(fixture_config)
    with pytest.raises(TokbenchError, match="divisible"):
        var_config({"ch": 40})
    with pytest.raises(CheckpointError, match=r"does not match the model VARVQVAE(.|\n)*quantize.embedding.weight"):
        tokbench.load_tokenizer("var-vqvae", weights=CKPT, config={"vqvae_kwargs": {**fixture_config["vqvae_kwargs"], "vocab_size": 1024}})
    with pytest.raises(TokbenchError, match="needs weights"):
        tokbench.load_tokenizer("var-vqvae", config=CONFIG)


def test_hard_coded_sizes_are_config_fields(fixture_config):
    cfg = {**fixture_config["vqvae_kwargs"], "norm_num_groups": 8, "using_sa": False, "using_mid_sa": False,
           "phi_kernel_size": 1, "quant_conv_ks": 1, "num_res_blocks": 1, "in_channels": 4}  # fmt: skip
    sd = build_model(cfg, device="meta").state_dict()
    assert not any(".attn" in k for k in sd)
    assert tuple(sd["quantize.quant_resi.qresi_ls.0.weight"].shape) == (16, 16, 1, 1)
    assert tuple(sd["quant_conv.weight"].shape) == (16, 16, 1, 1)
    assert tuple(sd["encoder.conv_in.weight"].shape) == (32, 4, 3, 3)
    assert tuple(sd["decoder.conv_out.weight"].shape) == (4, 32, 3, 3)
    assert "encoder.down.0.block.1.conv1.weight" not in sd and "decoder.up.0.block.1.conv1.weight" in sd
    model = build_model(cfg)
    assert model.encoder.norm_out.num_groups == 8
    # the fixtures' names for upstream constants work anywhere; unknown descriptions of constants are ignored, said so
    with pytest.warns(UserWarning, match="SiLU"):
        aliased = var_config({**fixture_config, "hard_coded_upstream": {"GroupNorm_groups": 8, "SiLU": True}})
    assert aliased.norm_num_groups == 8 and var_config({**cfg, "GroupNorm_eps": 1e-5}).norm_eps == 1e-5


# ------------------------------------------------------------------------------------ checkpoints


def test_full_size_model_matches_release_manifest():
    manifest = json.loads((VAR / "manifest_full.json").read_text())
    expected = {k: tuple(v) for k, v in manifest["state_dict"].items()}
    for variant in VARIANTS:  # both schedules load the same file
        model = build_model(variant.config, device="meta")
        sd = model.state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == expected, variant.name
        assert [k for k, _ in model.named_buffers()] == manifest["buffers"]
        assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
        assert sum(v.numel() for v in sd.values()) == manifest["total_state_dict_elements"]


@pytest.mark.parametrize(
    ("checkpoint", "found"),
    [
        ("llamagen_vq16/vq_ds16_c2i.pt", "LlamaGen"),
        ("chameleon_vqgan/vqgan.ckpt", "taming / LDM VQGAN"),
        ("titok/model.safetensors", "TiTok"),
        ("tokenflow/tokenflow_clipb_32k_enhanced.pt", "TokenFlow"),
    ],
)
def test_wrong_family_checkpoint_is_named(checkpoint, found):
    with pytest.raises(CheckpointError, match=f"not a VAR multi-scale VQVAE: it holds .*{found}"):
        tokbench.load_tokenizer("var-vqvae", weights=DATA / checkpoint, config=CONFIG)


def test_ema_buffer_of_another_schedule_is_replaced(tmp_path, io):
    """Upstream's load_state_dict override: a checkpoint's ema_vocab_hit_SV with another scale count is swapped."""
    cfg = {**json.loads(CONFIG.read_text())["vqvae_kwargs"], "v_patch_nums": [1, 2, 4, 8, 16]}
    tok5 = tokbench.load_tokenizer("var-vqvae", weights=CKPT, config=cfg)
    assert tuple(tok5.model.quantize.ema_vocab_hit_SV.shape) == (5, 512)
    tokens = tok5.encode((io["input"] + 1) / 2)
    assert tokens.ids.shape == (2, 1 + 4 + 16 + 64 + 256)
    sd = torch.load(CKPT, weights_only=True)
    sd["quantize.ema_vocab_hit_SV"] = torch.zeros(10, 256)  # another vocabulary is still an error
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="ema_vocab_hit_SV"):
        tokbench.load_tokenizer("var-vqvae", weights=tmp_path / "bad.pth", config=CONFIG)


# ------------------------------------------------------------------------------------ random weights


def test_random_build_matches_a_real_load(tok):
    a = tokbench.load_tokenizer("var-vqvae", weights="random", config=CONFIG)
    b = tokbench.load_tokenizer("var-vqvae", weights="random", config=CONFIG)
    assert a.spec.source["weights"] == RANDOM_WEIGHTS and "RANDOM WEIGHTS" in a.spec.notes
    sd_a, sd_b, sd_real = a.model.state_dict(), b.model.state_dict(), tok.model.state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in sd_a.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in sd_real.items()
    }
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    for field in ("family", "resolution", "tokens_per_image", "codebook_size", "bits_per_token", "preprocessing"):
        assert getattr(a.spec, field) == getattr(tok.spec, field), field
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    tokens = a.encode(x)
    assert tokens.ids.shape == (1, 680) and 0 <= int(tokens.ids.min()) and int(tokens.ids.max()) < 512
    out = a.decode(tokens)
    assert out.shape == (1, 3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_released_variants_build_offline():
    manifest = json.loads((VAR / "manifest_full.json").read_text())
    tok256 = tokbench.load_tokenizer("var-vqvae-256", weights="random")
    assert {k: list(v.shape) for k, v in tok256.model.state_dict().items()} == manifest["state_dict"]
    assert tok256.spec.source["release"] == VARIANTS[0].weights.source
    assert "FoundationVision/var" in tok256.spec.source["release"] and "vae_ch160v4096z32.pth" in tok256.spec.source["release"]
    assert (tok256.spec.resolution, tok256.spec.tokens_per_image, tok256.spec.codebook_size) == (256, 680, 4096)
    _, v512 = tokbench.registry.find("var-vqvae-512")
    cfg512 = var_config(v512.config)
    assert v512.resolution == cfg512.resolution == 512
    assert cfg512.tokens_per_image == sum(p * p for p in (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)) == 2240
    assert v512.weights == VARIANTS[0].weights
    assert "var-vqvae-256" in tokbench.list_tokenizers() and "var-vqvae-512" in tokbench.list_tokenizers()


# ------------------------------------------------------------------------------------ preprocessing


def test_var_protocol_reproduces_official_inputs(io):
    """`var` = VAR's val_aug (Resize(round(1.125 R), LANCZOS) + CenterCrop(R)); the fixture's input at R = 64."""
    skdata = pytest.importorskip("skimage.data")
    for i, arr in enumerate([skdata.astronaut()[30:330, 90:390], skdata.coffee()]):
        img = get_protocol("var").fn(Image.fromarray(arr).convert("RGB"), 64)
        assert img.size == (64, 64)
        x = pil_to_tensor(img) * 2 - 1
        assert (x - io["input"][i]).abs().max().item() < 1e-6


def test_var_protocol_equals_torchvision_transform():
    tv = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    for w, h in ((97, 61), (61, 97), (300, 300), (257, 256)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ref = tv.Compose([tv.Resize(round(1.125 * 56), interpolation=tv.InterpolationMode.LANCZOS), tv.CenterCrop(56)])
        assert np.array_equal(np.asarray(get_protocol("var").fn(img, 56)), np.asarray(ref(img))), (w, h)


# ------------------------------------------------------------------------------------ through the runner


def test_n_scales_sweep_through_the_runner(tmp_path):
    """The fixture checkpoint in a suite as users run the release: one job per n_scales, one model load."""
    from tests.test_runner import make_folder
    from tokbench.data import open_image
    from tokbench.report import write_report
    from tokbench.runner import read_rows, run_suite
    from tokbench.suite import parse_suite

    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = parse_suite({
        "name": "var-scales", "data": [f"folder:{folder}"], "batch_size": 2,
        "metrics": ["psnr", "bpp", "codebook"],
        "tokenizers": [
            {"name": "var-vqvae", "label": "var-fixture", "sweep": {"n_scales": [1, 4, 10]},
             "weights": str(CKPT), "config": str(CONFIG)},
        ],
    })  # fmt: skip
    summaries = run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    assert [s["status"] for s in summaries] == ["ok"] * 3, [s.get("reason") for s in summaries]
    assert [s["params"] for s in summaries] == [{"n_scales": k} for k in (1, 4, 10)]
    assert all(s["spec"]["preprocessing"] == "var" and s["spec"]["resolution"] == 64 for s in summaries)
    counts = [s["results"]["tokens_per_image"] for s in summaries]
    assert counts == [1, 1 + 4 + 9 + 16, 680]  # sum(pn^2) over the kept scales
    for s, n in zip(summaries, counts):
        assert s["results"]["bpp"] == pytest.approx(n * math.log2(512) / 64**2)
    # the full-scale job's PSNR is that of the tokenizer on the `var`-preprocessed images
    rows = read_rows(tmp_path / "run" / "jobs" / summaries[2]["job"] / "rows.jsonl")
    tok = tokbench.load_tokenizer("var-vqvae", weights=CKPT, config=CONFIG)
    for row in rows:
        img = get_protocol("var").fn(open_image(folder / row["id"]), 64)
        x = pil_to_tensor(img)[None]
        y = tok.decode(tok.encode(x)).double()
        ref = 10 * torch.log10(1 / (x.double() - y).pow(2).mean())
        assert row["psnr"] == pytest.approx(float(ref), rel=1e-5)
    report = write_report(tmp_path / "run")
    assert (report / "tokens_psnr.png").is_file()  # quality against tokens, for the n_scales sweep


def test_listed_and_missing_weights_say_how_to_fetch(capsys):
    from tokbench.cli import main as cli

    assert cli(["list", "var-*"]) == 0
    out = capsys.readouterr().out
    assert "var-vqvae-256" in out and "var-vqvae-512" in out and "not downloaded" in out
    with pytest.raises(TokbenchError, match="var-vae-ch160v4096z32(.|\\n)*vae_ch160v4096z32.pth"):
        tokbench.load_tokenizer("var-vqvae-512")  # offline, no local copy
