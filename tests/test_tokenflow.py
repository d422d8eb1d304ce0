"""TokenFlow (CLIP-B and SigLIP paths) against outputs of the official upstream code.

Golden fixtures (tests/data/{tokenflow,tokenflow_siglip}/, see their READMEs; tokenflow_alt/ is a
regression fixture made the same way with other sizes): tiny random-weight
checkpoints in the release layout (`{"model": sd}`; SigLIP tower under transformers-4
`encoder_vqkd.vision_model.*`), the config (official ModelArgs + explicit sizes), the inputs, and
what the official `vq_model.TokenFlow` produced: shared ids, features, reconstructions; plus
`manifest_full.json`, the names and shapes of both full-size releases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tokbench
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError, Tokens
from tokbench.protocols import get_protocol
from tokbench.tokenizers.tokenflow import (
    VARIANTS,
    SharedQuantizer,
    TokenFlowConfig,
    build_model,
    release_to_module_keys,
)

DATA = Path(__file__).parent / "data"
CLIP = DATA / "tokenflow"
SIGLIP = DATA / "tokenflow_siglip"
CLIP_ALT = DATA / "tokenflow_alt"
CASES = {
    "clip": (CLIP, "tokenflow_clipb_32k_enhanced.pt", 1e-4),
    "siglip": (SIGLIP, "tokenflow_siglip_32k.pt", 1e-3),
    # Other sizes than `clip` (no pos-embed interpolation 12 -> 14 grid, 8 scales, one CNN halving,
    # plain decoder with 1 res block per level, batch 3); made with the official code, see its README.
    "clip_alt": (CLIP_ALT, "tokenflow_clipb_32k_enhanced.pt", 1e-4),
}


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    """Official [-1, 1] output -> the tokbench [0, 1] convention."""
    return ((x + 1) / 2).clamp(0, 1)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    folder, ckpt, recon_tol = CASES[request.param]
    tok = tokbench.load_tokenizer("tokenflow", weights=folder / ckpt, config=folder / "config.json")
    io = load_file(str(folder / "io.safetensors"))
    images = (io["input"] + 1) / 2
    return {"name": request.param, "tok": tok, "io": io, "images": images, "tol": recon_tol, "folder": folder}


def test_ids_exact(case):
    io, tok = case["io"], case["tok"]
    tokens = tok.encode(case["images"])
    assert tokens.ids.dtype == torch.long
    assert torch.equal(tokens.ids, io["indices"])
    assert tokens.meta["scales"] == io["scales"].tolist()
    assert tokens.codebook_size == json.loads((case["folder"] / "config.json").read_text())["codebook_size"]
    assert tok.spec.tokens_per_image == io["indices"].shape[1] == sum(s * s for s in io["scales"].tolist())


def test_decode_matches_official_recon(case):
    io, tok = case["io"], case["tok"]
    out = tok.decode(Tokens(ids=io["indices"], codebook_size=tok.spec.codebook_size))
    ref = as_unit(io["recon"])
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < case["tol"]
    assert out.min() >= 0 and out.max() <= 1


def test_semantic_branch_matches_official(case):
    io, tok = case["io"], case["tok"]
    sem = tok.semantic(case["images"])
    pairs = {
        "teacher_tokens": "semantic_encoder_tokens",
        "semantic_features": "semantic_features",
        "quant_semantic": "quant_semantic",
        "quant_pixel": "quant_pixel",
        "semantic_recon": "semantic_recon",
    }
    for ours, ref in pairs.items():
        assert sem[ours].shape == io[ref].shape, ours
        assert (sem[ours] - io[ref]).abs().max().item() < 1e-4, ours
    assert torch.equal(sem["ids"], io["indices"])
    from_ids = tok.decode_semantic(Tokens(ids=io["indices"], codebook_size=tok.spec.codebook_size))
    assert (from_ids - io["semantic_recon_from_indices"]).abs().max().item() < 1e-4


def test_coarse_prefix(case):
    """`n_scales=k` keeps the first k scales; decoding a prefix follows the official decode_code."""
    io, tok = case["io"], case["tok"]
    scales = io["scales"].tolist()
    tokens = tok.encode(case["images"], n_scales=3)
    n = sum(s * s for s in scales[:3])
    assert torch.equal(tokens.ids, io["indices"][:, :n])
    assert tokens.meta["scales"] == scales[:3]
    out = tok.decode(tokens)
    assert out.shape == io["recon"].shape
    # coarse codes alone differ from the full reconstruction (the later scales carry detail)
    assert (out - as_unit(io["recon"])).abs().max().item() > 1e-2
    with pytest.raises(TokbenchError, match="prefix of the scales"):
        tok.decode(Tokens(ids=io["indices"][:, : n + 1], codebook_size=tok.spec.codebook_size))
    with pytest.raises(TokbenchError, match="n_scales"):
        tok.encode(case["images"], n_scales=len(scales) + 1)


def test_wrong_input_size_is_refused(case):
    images = case["images"]
    with pytest.raises(TokbenchError, match="takes"):
        case["tok"].encode(images[..., :-3, :-3])  # a smaller token grid than the last scale
    with pytest.raises(TokbenchError, match="takes"):
        case["tok"].encode(images[..., :-3])


def _pil_to_model_range(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 * 2 - 1


def test_preprocessing_protocols_reproduce_official_inputs():
    """adm-center-crop = the official reconstruction transform; pad-square = LLaVA expand2square (grey 127)."""
    skdata = pytest.importorskip("skimage.data")
    clip_in = load_file(str(CLIP / "io.safetensors"))["input"]
    for i, arr in enumerate([skdata.astronaut()[30:330, 90:390], skdata.chelsea()]):
        x = _pil_to_model_range(get_protocol("adm-center-crop").fn(Image.fromarray(arr), 64))
        assert (x - clip_in[i]).abs().max().item() < 1e-6
    siglip_in = load_file(str(SIGLIP / "io.safetensors"))["input"]
    x = _pil_to_model_range(get_protocol("pad-square").fn(Image.fromarray(skdata.chelsea()), 55))
    assert (x - siglip_in[0]).abs().max().item() < 1e-6


def test_spec_and_preprocessing_per_teacher(case):
    spec = case["tok"].spec
    assert spec.family == "tokenflow"
    assert spec.preprocessing == ("pad-square" if case["name"] == "siglip" else "adm-center-crop")
    assert spec.resolution == case["images"].shape[-1]
    assert spec.bits_per_token == pytest.approx(math.log2(spec.codebook_size))


# --- the shared-index rule, against a brute-force formula ---------------------------------------------


def test_shared_index_rule_bruteforce():
    g = torch.Generator().manual_seed(1)
    q = SharedQuantizer(50, (6, 3), usage_size=None)
    with torch.no_grad():
        q.embedding_vqkd.weight.copy_(torch.randn(50, 6, generator=g) * 3)
        q.embedding_vqgan.weight.copy_(torch.randn(50, 3, generator=g) * 0.2)
    r = torch.randn(2, 9, 3, 4, generator=g)
    quant, ids = q(r)
    vec = r.permute(0, 2, 3, 1).reshape(-1, 9).double()
    es = q.embedding_vqkd.weight.double()
    ep = q.embedding_vqgan.weight.double()
    es, ep = es / es.norm(dim=1, keepdim=True), ep / ep.norm(dim=1, keepdim=True)
    zs, zp = vec[:, :6], vec[:, 6:]
    zs, zp = zs / zs.norm(dim=1, keepdim=True), zp / zp.norm(dim=1, keepdim=True)
    d = torch.cdist(zs, es) ** 2 + torch.cdist(zp, ep) ** 2
    expect = d.argmin(1)
    assert torch.equal(ids.reshape(-1), expect)
    rows = torch.cat([es, ep], 1)[expect].float().reshape(2, 3, 4, 9).permute(0, 3, 1, 2)
    assert torch.allclose(quant, rows, atol=1e-6)
    # the index is shared: the semantic-only or pixel-only nearest row differs for some positions
    assert not torch.equal(expect, (torch.cdist(zs, es)).argmin(1)) or not torch.equal(
        expect, torch.cdist(zp, ep).argmin(1)
    )


def test_shared_index_ties_pick_first():
    q = SharedQuantizer(4, (2, 2), usage_size=None)
    with torch.no_grad():
        q.embedding_vqkd.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]]))
        q.embedding_vqgan.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]))
    _, ids = q(torch.tensor([1.0, 0.0, 3.0, 3.0]).reshape(1, 4, 1, 1))
    assert ids.item() == 1  # rows 1, 2, 3 tie after normalisation


# --- checkpoint layouts ---------------------------------------------------------------------------


def _release_sd(folder: Path, ckpt: str) -> dict[str, torch.Tensor]:
    return torch.load(folder / ckpt, map_location="cpu", weights_only=True)["model"]


def test_container_order_ema_first_and_transformers5_keys(tmp_path):
    """Official loaders take "ema", then "model", then "state_dict"; transformers-5 SigLIP keys also load."""
    sd = _release_sd(SIGLIP, "tokenflow_siglip_32k.pt")
    broken = {k: torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / "ema_first.pt"
    torch.save({"state_dict": broken, "ema": release_to_module_keys(sd), "model": broken}, path)
    tok = tokbench.load_tokenizer("tokenflow", weights=path, config=SIGLIP / "config.json")
    io = load_file(str(SIGLIP / "io.safetensors"))
    assert torch.equal(tok.encode((io["input"] + 1) / 2).ids, io["indices"])


def test_strict_loading_refuses_missing_and_unexpected(tmp_path):
    sd = _release_sd(CLIP, "tokenflow_clipb_32k_enhanced.pt")
    missing = {k: v for k, v in sd.items() if k != "decoder_vqkd.fc_norm.weight"}
    torch.save({"model": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="decoder_vqkd.fc_norm.weight"):
        tokbench.load_tokenizer("tokenflow", weights=tmp_path / "missing.pt", config=CLIP / "config.json")
    extra = dict(sd, **{"encoder_vqkd.proj": torch.zeros(128, 64)})
    torch.save({"model": extra}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="encoder_vqkd.proj"):
        tokbench.load_tokenizer("tokenflow", weights=tmp_path / "extra.pt", config=CLIP / "config.json")


def test_key_layouts_follow_the_installed_transformers():
    release = {
        "encoder_vqkd.vision_model.post_layernorm.weight": 1,
        "encoder_vqkd.conv1.weight": 2,
        "encoder.x": 3,
    }
    flat = release_to_module_keys(release, ["encoder_vqkd.post_layernorm.weight"])
    assert flat == {"encoder_vqkd.post_layernorm.weight": 1, "encoder_vqkd.conv1.weight": 2, "encoder.x": 3}
    # transformers 4 keeps `vision_model.`: stripped (transformers-5) keys are nested again
    nested = release_to_module_keys(
        {"encoder_vqkd.post_layernorm.weight": 1}, ["encoder_vqkd.vision_model.a"]
    )
    assert nested == {"encoder_vqkd.vision_model.post_layernorm.weight": 1}


def test_config_errors_are_clear():
    cfg = json.loads((CLIP / "config.json").read_text())
    with pytest.raises(TokbenchError, match="unknown TokenFlow config keys"):
        TokenFlowConfig.from_dict(dict(cfg, codebook_dim=3))
    with pytest.raises(TokbenchError, match="teacher"):
        TokenFlowConfig.from_dict(dict(cfg, teacher="vitamin_xlarge_256"))
    with pytest.raises(TokbenchError, match="needs weights"):
        tokbench.load_tokenizer("tokenflow", config=cfg)


# --- full-size layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_full_size_layout_matches_manifest(variant):
    manifest = json.loads((CLIP / "manifest_full.json").read_text())
    entry = (
        manifest
        if manifest["file"] == variant.weights.filename
        else manifest["other_variants"][variant.weights.filename]
    )
    assert entry["model_args"] == dict(variant.config)
    model = build_model(variant.config, device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = release_to_module_keys(entry["params"], ours)  # release names in this transformers' layout
    assert sorted(ours) == sorted(ref)
    assert ours == ref
    assert sum(p.numel() for p in model.parameters()) == entry["total_params"]
    cfg = TokenFlowConfig.from_dict(variant.config)
    assert cfg.input_size == variant.resolution
    assert (
        cfg.tokens_per_image
        == {"tokenflow-clipb-32k-enhanced": 817, "tokenflow-siglip-32k": 2227}[variant.name]
    )


def test_variants_registered():
    names = tokbench.list_tokenizers("tokenflow-*")
    assert names == ["tokenflow-clipb-32k-enhanced", "tokenflow-siglip-32k"]
    for v in VARIANTS:
        assert v.weights.repo_id == "ByteVisionLab/TokenFlow" and v.weights.licence.startswith("MIT")
        assert set(v.published) == {"rfid_pytorch_fid", "psnr_llamagen", "ssim_llamagen"}
