"""`load_tokenizer(name, weights="random")`: the released architecture with seeded random weights (speed
benchmarks without the release), built offline without any weights file.

References: the full-size parameter names and shapes come from `manifest_full.json` (built by the official
code, see each fixture's README); a random build at a fixture's tiny config must have the same state-dict
layout and the same spec as a real load of that fixture's official checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import tokbench
from tokbench.checkpoint import RANDOM_WEIGHTS, random_init, seeded_rng
from tokbench.core import TokbenchError

DATA = Path(__file__).parent / "data"

# Spec fields that must not depend on where the weights came from.
SPEC_FIELDS = (
    "family",
    "resolution",
    "tokens_per_image",
    "codebook_size",
    "bits_per_token",
    "supports_decode",
    "variable_length",
    "normalisation",
    "preprocessing",
    "dtype",
)

SIGLIP_TINY = {
    "arch": "transformers",
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
JANUS_TINY = {"arch": "janus", "image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2}

# family -> (tiny config, the fixture's official checkpoint (None: made from the random build itself),
#            side to run at (None: the spec's resolution)). infinity-bsq (ids are bits, (B, N, d)) and vila-u
# (its SigLIP config lies beside the weights) check their random builds in their own test files.
TINY = {
    "llamagen-vq": (DATA / "llamagen_vq16/config.json", DATA / "llamagen_vq16/vq_ds16_c2i.pt", 32),
    "chameleon-vqgan": (DATA / "chameleon_vqgan/config.json", DATA / "chameleon_vqgan/vqgan.ckpt", None),
    "emu3-vq": (DATA / "emu3_vq/config.json", DATA / "emu3_vq/model.safetensors", 16),
    "tokenflow": (DATA / "tokenflow/config.json", DATA / "tokenflow/tokenflow_clipb_32k_enhanced.pt", None),
    "titok": (DATA / "titok/config.json", DATA / "titok/model.safetensors", None),
    "one-d-piece": (DATA / "one_d_piece/config.json", DATA / "one_d_piece/pytorch_model.bin", None),
    "open-magvit2": (DATA / "open_magvit2/config.json", DATA / "open_magvit2/imagenet_256_L.ckpt", None),
    "ibq": (DATA / "ibq/config.json", DATA / "ibq/imagenet256_262144.ckpt", None),
    "showo-magvitv2": (DATA / "showo_magvitv2/config.json", DATA / "showo_magvitv2/pytorch_model.safetensors", 64),
    "emu35-vq": (DATA / "emu35_vq/config.json", DATA / "emu35_vq/model.ckpt", 32),
    "qlip": (DATA / "qlip/config.json", DATA / "qlip/model.safetensors", None),
    "mingtok": (DATA / "mingtok/config.json", DATA / "mingtok/model.safetensors", None),
    "siglip": (SIGLIP_TINY, None, None),
    "siglip-janus": (JANUS_TINY, None, None),
}


TORCH_THREADS = 1  # see conftest._torch_threads


def _images(side: int, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(3))


def _is_random(tok) -> None:
    assert tok.spec.source["weights"] == RANDOM_WEIGHTS
    assert "RANDOM WEIGHTS" in tok.spec.notes
    assert not any("checkpoint" in k or k == "file" for k in tok.spec.source)


def _layout(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def _check_outputs(tok, side: int) -> None:
    """Encode (and decode) one image at `side` px: shapes and ranges as the spec says at that size."""
    spec = tok.spec
    x = _images(side)
    tokens = tok.encode(x)
    if spec.codebook_size is None:  # continuous features
        assert tokens.ids is None and tokens.features.shape[:2] == (1, spec.tokens_per_image)
        assert torch.isfinite(tokens.features).all()
    else:
        ratio = (side / spec.resolution) ** 2  # convolutional tokenizers run below their native size too
        assert tokens.ids.shape == (1, round(spec.tokens_per_image * ratio))
        assert tokens.ids.dtype == torch.int64
        assert 0 <= int(tokens.ids.min()) and int(tokens.ids.max()) < spec.codebook_size
        assert tokens.bits_per_token == pytest.approx(spec.bits_per_token)
    if spec.supports_decode:
        out = tok.decode(tokens)
        assert out.shape == (1, 3, side, side) and out.dtype == torch.float32
        assert 0 <= float(out.min()) and float(out.max()) <= 1 and float(out.std()) > 0
    else:
        with pytest.raises(TokbenchError, match="decode"):
            tok.decode(tokens)


# ------------------------------------------------------------------------------------------- the helper


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.codebook = nn.Embedding(16, 8)
        self.token = nn.Parameter(torch.empty(4, 8))
        self.register_buffer("usage", torch.zeros(5))
        self.tower = nn.Linear(8, 8)


def test_random_init_materialises_meta_modules_deterministically():
    with torch.device("meta"):
        a, b = _Toy(), _Toy()
    state = torch.random.get_rng_state()
    random_init(a), random_init(b, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG stream is untouched
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert all(not v.is_meta and torch.isfinite(v).all() for v in sd_a.values())
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    for norm in (a.norm, a.ln):
        assert torch.equal(norm.weight, torch.ones(8)) and torch.equal(norm.bias, torch.zeros(8))
    assert torch.equal(a.usage, torch.zeros(5))
    assert (
        0.01 < float(a.token.detach().std()) < 0.03
    )  # N(0, 0.02) for parameters without an init of their own
    assert float(a.codebook.weight.detach().std()) > 0.5  # nn.Embedding's own N(0, 1)
    assert float(a.attn.in_proj_weight.detach().std()) > 0 and float(a.conv.weight.detach().std()) > 0
    with torch.device("meta"):
        c = _Toy()
    random_init(c, seed=1)
    assert not torch.equal(c.conv.weight, a.conv.weight)


def test_random_init_keeps_library_submodules():
    with seeded_rng(0):
        model = _Toy()
    tower = model.tower.weight.clone()
    random_init(model, keep=("tower",))
    assert torch.equal(model.tower.weight, tower)
    with pytest.raises(ValueError, match="nope"):
        random_init(model, keep=("nope",))


# ---------------------------------------------------------------------- tiny configs, every family


@pytest.mark.parametrize("family", sorted(TINY))
def test_random_build_matches_a_real_load(family, tmp_path):
    config, checkpoint, side = TINY[family]
    name = "siglip" if family.startswith("siglip") else family
    a = tokbench.load_tokenizer(name, weights="random", config=config)
    b = tokbench.load_tokenizer(name, weights="random", config=config)
    _is_random(a)
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert list(sd_a) == list(sd_b)
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), "two random builds differ"
    assert all(torch.isfinite(v.float()).all() for v in sd_a.values())
    if checkpoint is None:  # SigLIP has no official fixture: a checkpoint in the release's layout
        from safetensors.torch import save_file

        checkpoint = tmp_path / "model.safetensors"
        prefix = {"transformers": "vision_model.", "janus": "vision_model.vision_tower."}[config["arch"]]
        save_file({prefix + k: v.contiguous() for k, v in sd_a.items()}, str(checkpoint))
    real = tokbench.load_tokenizer(name, weights=checkpoint, config=config)
    assert _layout(a.model) == _layout(real.model)
    for field in SPEC_FIELDS:
        assert getattr(a.spec, field) == getattr(real.spec, field), field
    _check_outputs(a, side or a.spec.resolution)


def test_random_build_follows_dtype():
    config = TINY["llamagen-vq"][0]
    tok = tokbench.load_tokenizer("llamagen-vq", weights="random", config=config, dtype="bfloat16")
    real = tokbench.load_tokenizer(
        "llamagen-vq", weights=TINY["llamagen-vq"][1], config=config, dtype="bfloat16"
    )
    assert _layout(tok.model) == _layout(real.model)
    assert tok.spec.dtype == "bfloat16"
    _check_outputs(tok, 32)


def test_random_siglip_needs_an_arch():
    cfg = {k: v for k, v in SIGLIP_TINY.items() if k != "arch"}
    with pytest.raises(TokbenchError, match="arch"):
        tokbench.load_tokenizer("siglip", weights="random", config=cfg)


# ------------------------------------------------------------------ released sizes (smallest variants)


def _manifest(folder: str) -> dict:
    return json.loads((DATA / folder / "manifest_full.json").read_text())


def _llamagen_reference() -> dict[str, tuple[int, ...]]:
    m = _manifest("llamagen_vq16")
    return {k: tuple(v) for k, v in m["state_dict"].items()}


def _chameleon_reference(decoder: bool = True) -> dict[str, tuple[int, ...]]:
    sd = _manifest("chameleon_vqgan")["state_dict"]
    return {k: tuple(v) for k, v in sd.items() if decoder or not k.startswith("decoder.")}


def _emu3_reference() -> dict[str, tuple[int, ...]]:
    from tokbench.tokenizers.chameleon import emu3_from_baai_keys

    official = {k: torch.empty(v, device="meta") for k, v in _manifest("emu3_vq")["state_dict"].items()}
    return {k: tuple(v.shape) for k, v in emu3_from_baai_keys(official).items()}


def _tokenflow_reference() -> dict[str, tuple[int, ...]]:
    from tokbench.tokenizers.tokenflow import build_model, release_to_module_keys

    m = _manifest("tokenflow")
    assert m["file"] == "tokenflow_clipb_32k_enhanced.pt"
    module_keys = build_model(m["model_args"], device="meta").state_dict().keys()
    return {k: tuple(v) for k, v in release_to_module_keys(m["params"], module_keys).items()}


def _titok_reference(folder: str, repo: str) -> dict[str, tuple[int, ...]]:
    m = _manifest(folder)
    params = m["params"] if m["variant"] == repo else m["other_variants"][repo]["params"]
    return {k: tuple(v) for k, v in params.items()}


def _seed_voken_reference(folder: str, variant: str) -> dict[str, tuple[int, ...]]:
    """A SEED-Voken manifest's released parameter shapes (other variants: full list or the differing shapes)."""
    m = _manifest(folder)
    other = m["other_variants"][variant]
    params = other.get("params") or {**m["params"], **other["shapes_differing_from_primary"]}
    return {k: tuple(v) for k, v in params.items()}


def _siglip_l_reference() -> dict[str, int]:
    """SigLIP-L/16-384 as transformers defines it (built on meta): its parameter count, no pooling head."""
    from tokbench.tokenizers.siglip import _SIGLIP_L16_384, build_transformers_model

    with torch.device("meta"):
        model = build_transformers_model(_SIGLIP_L16_384)
    return {"num_params": sum(p.numel() for p in model.parameters())}


# variant -> (reference layout, side to run at (None: build only), whether to decode)
FULL = {
    "llamagen-vq16-c2i": (_llamagen_reference, 32),
    "chameleon-vqgan-anole": (_chameleon_reference, 32),
    "chameleon-7b-vqgan-hf": (lambda: _chameleon_reference(decoder=False), 32),
    "emu3-vision-tokenizer": (_emu3_reference, 16),
    "tokenflow-clipb-32k-enhanced": (_tokenflow_reference, None),
    "titok-s128": (lambda: _titok_reference("titok", "yucornetto/tokenizer_titok_s128_imagenet"), 256),
    "one-d-piece-s-256": (lambda: _titok_reference("one_d_piece", "turing-motors/One-D-Piece-S-256"), None),
    "janus-siglip-l-384": (_siglip_l_reference, None),
    "open-magvit2-128-b": (lambda: _seed_voken_reference("open_magvit2", "imagenet_128_B"), 32),
    "ibq-1024": (lambda: _seed_voken_reference("ibq", "imagenet256_1024"), 32),
}


@pytest.mark.parametrize("name", list(FULL))
def test_released_size_builds_offline(name):
    reference, side = FULL[name]
    tok = tokbench.load_tokenizer(name, weights="random")
    _is_random(tok)
    _, variant = tokbench.registry.find(name)
    assert tok.spec.name == name and tok.spec.resolution == variant.resolution
    assert tok.spec.source["release"] == variant.weights.source
    sd = tok.model.state_dict()
    ref = reference()
    if "num_params" in ref:
        assert sum(p.numel() for p in tok.model.parameters()) == ref["num_params"]
    else:
        assert {k: tuple(v.shape) for k, v in sd.items()} == ref
    assert all(torch.isfinite(v.float()).all() for v in sd.values())
    for key, value in sd.items():  # every weight matrix / kernel / codebook is really drawn
        if value.ndim >= 2:
            assert float(value.float().std()) > 0, key
    if name.endswith("-hf"):
        assert not tok.spec.supports_decode  # the transformers-format release has no decoder
    if side is not None:
        _check_outputs(tok, side)


def test_released_size_is_deterministic():
    a = tokbench.load_tokenizer("llamagen-vq16-c2i", weights="random")
    b = tokbench.load_tokenizer("llamagen-vq16-c2i", weights="random")
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("TOKBENCH_SLOW_TESTS"), reason="set TOKBENCH_SLOW_TESTS=1 (about a minute)"
)
@pytest.mark.parametrize("name", ["siglip-large-patch16-384", "tokenflow-clipb-32k-enhanced"])
def test_released_size_runs_at_native_resolution(name):
    tok = tokbench.load_tokenizer(name, weights="random")
    _check_outputs(tok, tok.spec.resolution)
