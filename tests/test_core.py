import json
import math

import pytest
import torch

import tokbench
from tokbench.core import TokbenchError, Tokens, check_images
from tokbench.registry import find, read_config


def test_tokens_bits_from_codebook_size():
    t = Tokens(ids=torch.zeros(2, 576, dtype=torch.long), codebook_size=16384, grid=(24, 24))
    assert t.bits_per_token == 14.0
    assert t.bits_per_image.tolist() == [576 * 14.0, 576 * 14.0]
    # parallel codebooks: one size repeated over C, or one size each
    t = Tokens(ids=torch.zeros(1, 10, 2, dtype=torch.long), codebook_size=1024)
    assert t.bits_per_token == 20.0
    t = Tokens(ids=torch.zeros(1, 10, 2, dtype=torch.long), codebook_size=(1024, 32))
    assert t.bits_per_token == 10.0 + 5.0
    assert t.bits_per_image.item() == 150.0


def test_tokens_real_bits_and_lengths_win():
    t = Tokens(ids=torch.zeros(2, 8, dtype=torch.long), codebook_size=256, lengths=torch.tensor([5, 8]),
               bits=torch.tensor([40.0, 64.0]))
    assert t.tokens_per_image.tolist() == [5.0, 8.0]
    assert t.bits_per_image.tolist() == [40.0, 64.0]


def test_tokens_needs_exactly_one_payload():
    with pytest.raises(TokbenchError):
        Tokens()
    with pytest.raises(TokbenchError):
        Tokens(ids=torch.zeros(1, 1), features=torch.zeros(1, 1, 1))
    f = Tokens(features=torch.zeros(3, 576, 1024))
    assert f.bits_per_image is None and f.batch_size == 3


def test_check_images_messages():
    with pytest.raises(TokbenchError, match=r"\(B, 3, H, W\)"):
        check_images(torch.zeros(3, 8, 8))
    with pytest.raises(TokbenchError, match="divide uint8"):
        check_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_registry_lists_codecs_and_finds_variants():
    names = tokbench.list_tokenizers()
    assert {"jpeg-q75", "webp-q50", "avif-q90"} <= set(names)
    fam, var = find("JPEG-Q75")
    assert fam.name == "jpeg" and var.options["quality"] == 75
    fam, var = find("webp")
    assert var is None
    fam, var = find("avif-q33")  # any quality, not only the listed ones
    assert fam.name == "avif" and var.options == {"format": "avif", "quality": 33}


def test_unknown_tokenizer_error_names_it():
    with pytest.raises(TokbenchError, match="unknown tokenizer 'jpg-q1'.*tokbench list"):
        tokbench.load_tokenizer("jpg-q1")


def test_read_config_json_yaml(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "c.yaml").write_text("a: 2\nb: [1, 2]\n")
    assert read_config(tmp_path / "c.json") == {"a": 1}
    assert read_config(str(tmp_path / "c.yaml")) == {"a": 2, "b": [1, 2]}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(TokbenchError, match="could not parse"):
        read_config(tmp_path / "bad.json")
    with pytest.raises(TokbenchError, match="does not exist"):
        read_config(tmp_path / "missing.yaml")


def test_spec_as_dict_is_json():
    tok = tokbench.load_tokenizer("jpeg", quality=30)
    d = tok.spec.as_dict()
    json.dumps(d)
    assert d["name"] == "jpeg-q30" and math.isclose(d["bits_per_token"], 8.0)
