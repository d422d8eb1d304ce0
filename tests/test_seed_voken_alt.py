"""Open-MAGVIT2 and IBQ on alternative configs, against outputs of the official upstream code.

Fixtures tests/data/open_magvit2_alt/ and tests/data/ibq_alt/ (see their READMEs): made like the golden
`open_magvit2` / `ibq` ones (tiny random raw AND EMA weights, Lightning `{"state_dict"}` layout) with other
widths, levels, codebooks, seeds, batch 3 and NON-SQUARE inputs, so a loader right only for config A fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tokbench
from tokbench.core import TokbenchError
from tokbench.tokenizers.ibq import attention_levels, ibq_config
from tokbench.tokenizers.open_magvit2 import open_magvit2_config

DATA = Path(__file__).parent / "data"
FIXTURES = {
    "open-magvit2": (DATA / "open_magvit2_alt", "imagenet_256_L.ckpt"),
    "ibq": (DATA / "ibq_alt", "imagenet256_262144.ckpt"),
}


def _load(family: str, **options):
    folder, ckpt = FIXTURES[family]
    return tokbench.load_tokenizer(family, weights=folder / ckpt, config=folder / "config.json", **options)


def _latent(tok, family: str, x: torch.Tensor) -> torch.Tensor:
    return tok.model.encoder(x) if family == "open-magvit2" else tok.model.latent(x)


@pytest.mark.parametrize("family", sorted(FIXTURES))
@pytest.mark.parametrize(("options", "suffix"), [({}, ""), ({"ema": False}, "_raw")])
def test_alternative_config_matches_official(family, options, suffix):
    folder, _ = FIXTURES[family]
    io = load_file(str(folder / "io.safetensors"))
    meta = json.loads((folder / "config.json").read_text())
    b, (h, w) = meta["input"]["batch"], meta["token_grid"]
    tok = _load(family, **options)
    tokens = tok.encode(((io["input"] + 1) / 2).clamp(0, 1))
    assert tokens.grid == (h, w) and h != w and b == 3
    assert torch.equal(tokens.ids.flatten(), io["indices" + suffix])
    torch.testing.assert_close(tok.decode(tokens), ((io["recon" + suffix] + 1) / 2).clamp(0, 1), atol=1e-4, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(_latent(tok, family, io["input"]), io["latent" + suffix], atol=1e-4, rtol=0)
        recon = tok.model.decode_ids(io["indices" + suffix].view(b, h, w))
    torch.testing.assert_close(recon, io["recon_from_indices" + suffix], atol=1e-4, rtol=0)


def test_ibq_alt_attention_at_every_level():
    meta = json.loads((FIXTURES["ibq"][0] / "config.json").read_text())
    tok = _load("ibq")
    assert [i for i, lv in enumerate(tok.model.encoder.down) if len(lv.attn)] == meta["attention_levels"]["encoder"]
    assert [i for i, lv in enumerate(tok.model.decoder.up) if len(lv.attn)] == meta["attention_levels"]["decoder"]


def _ibq_args(**dd) -> dict:
    init = json.loads((FIXTURES["ibq"][0] / "config.json").read_text())["model"]["init_args"]
    return {**init, "ddconfig": {**init["ddconfig"], **dd}}


def test_ibq_resolution_not_a_multiple_of_the_downsample_factor():
    """taming's encoder halves `resolution` level by level, its decoder doubles `resolution // f`: with 90 and
    f = 4 the encoder has attention at levels [1, 2] (sides 45, 22) and the decoder only at [2] (22, 44, 88), as
    the official IBQ modules build it (checked on generated checkpoints). 90 only places attention."""
    config = _ibq_args(ch_mult=[1, 1, 1], resolution=90, attn_resolutions=[45, 22])
    cfg, _ = ibq_config(config)
    assert attention_levels(cfg) == ([1, 2], [2])
    tok = tokbench.load_tokenizer("ibq", weights="random", config=config)
    assert [i for i, lv in enumerate(tok.model.encoder.down) if len(lv.attn)] == [1, 2]
    assert [i for i, lv in enumerate(tok.model.decoder.up) if len(lv.attn)] == [2]
    assert tok.spec.resolution == 88  # the nominal side rounded down to a multiple of 4
    with pytest.raises(TokbenchError, match="multiple of 4"):
        tokbench.load_tokenizer("ibq", weights="random", config=config, resolution=90)


def test_ibq_ignores_ddconfig_keys_its_modules_do_not_have():
    """IBQ's model.py has no tanh_out / attn_type / use_linear_attn (swallowed by **ignore_kwargs)."""
    with pytest.warns(UserWarning, match="tanh_out"):
        cfg, _ = ibq_config(_ibq_args(tanh_out=True, attn_type="none", use_linear_attn=True))
    assert cfg == ibq_config(_ibq_args())[0] and not cfg.tanh_out and cfg.attn_type == "vanilla"


def test_open_magvit2_config_keywords_as_upstream():
    meta = json.loads((FIXTURES["open-magvit2"][0] / "config.json").read_text())
    cfg = open_magvit2_config(meta)
    assert cfg.ch_mult == (1, 1) and cfg.downsample == 2 and cfg.bits == 6
    model = meta["model"]
    # improved_model accepts double_z and ignores it
    dd = {**model["init_args"]["ddconfig"], "double_z": True}
    assert open_magvit2_config({"model": {**model, "init_args": {**model["init_args"], "ddconfig": dd}}}) == cfg
    # a ddconfig without ch_mult gets the Encoder/Decoder default (1, 2, 2, 4), not the release's value
    dd = {k: v for k, v in model["init_args"]["ddconfig"].items() if k != "ch_mult"}
    assert open_magvit2_config({"model": {**model, "init_args": {**model["init_args"], "ddconfig": dd}}}).ch_mult == (
        1, 2, 2, 4,
    )  # fmt: skip
    dd = {k: v for k, v in model["init_args"]["ddconfig"].items() if k != "num_res_blocks"}
    with pytest.raises(TokbenchError, match="num_res_blocks"):
        open_magvit2_config({"model": {**model, "init_args": {**model["init_args"], "ddconfig": dd}}})
