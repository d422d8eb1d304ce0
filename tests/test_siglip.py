"""SigLIP adapter: tiny random towers in every released layout load through `load_tokenizer` and give the
same features as the library model (transformers / timm) called directly, with the official normalisation."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from PIL import Image

import tokbench
from tokbench.checkpoint import CheckpointError
from tokbench.core import TokbenchError
from tokbench.protocols import get_protocol

# Tiny sizes; 19 = 4 * 4 + 3 leaves pixels the 'valid' patch convolution drops, as 384 = 27 * 14 + 6 does.
TINY_HF = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 19,
    "patch_size": 4,
}
TINY_JANUS = {"image_size": 20, "patch_size": 4, "width": 32, "layers": 3, "heads": 2, "mlp_ratio": 2.5}


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (LayerNorm affine included), so a wrong key or a skipped norm shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)


def hf_tower(cfg: dict, seed: int = 0, use_head: bool = True):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = SiglipVisionModel(SiglipVisionConfig(**cfg, vision_use_head=use_head)).eval()
    randomise(model, seed)
    return model


def janus_tower(cfg: dict, depth: int, seed: int = 1):
    """A timm ViT built the way Janus's create_siglip_vit builds it (global_pool='map': attn_pool is stored)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        embed_dim=cfg["width"],
        depth=depth,
        num_heads=cfg["heads"],
        mlp_ratio=cfg["mlp_ratio"],
        class_token=False,
        global_pool="map",
        num_classes=0,
        act_layer=torch.nn.GELU,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        weight_init="skip",
    ).eval()
    randomise(model, seed)
    return model


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def save_safetensors(sd: dict, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})


TORCH_THREADS = 1  # see conftest._torch_threads


# --------------------------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("layout", ["siglip_model", "vision_model_4x", "bare_5x"])
def test_transformers_layouts_match_library(tmp_path, layout):
    ref = hf_tower(TINY_HF)
    sd = ref.state_dict()
    if layout == "siglip_model":  # full SiglipModel release: vision + text towers + logit scale/bias
        sd = {f"vision_model.{k}": v for k, v in sd.items()}
        sd["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)
        sd["logit_scale"] = torch.tensor([2.3])
        sd["logit_bias"] = torch.tensor([-10.0])
    elif layout == "vision_model_4x":  # SiglipVisionModel saved by transformers 4.x
        sd = {f"vision_model.{k}": v for k, v in sd.items()}
    path = tmp_path / "model.safetensors"
    save_safetensors(sd, path)

    tok = tokbench.load_tokenizer("siglip", weights=path, config={"arch": "transformers", **TINY_HF})
    x = images(19)
    got = tok.encode(x)
    with torch.no_grad():
        want = ref(pixel_values=(x - 0.5) / 0.5).last_hidden_state
    assert got.features.shape == (2, 16, 32)
    assert got.grid == (4, 4)
    torch.testing.assert_close(got.features, want, atol=1e-5, rtol=1e-5)
    assert tok.spec.supports_decode is False
    assert tok.spec.tokens_per_image == 16 and tok.spec.codebook_size is None
    assert tok.spec.preprocessing == "resize"


def test_transformers_arch_is_detected_and_select_layer(tmp_path):
    ref = hf_tower(TINY_HF, seed=3)
    path = tmp_path / "vision.safetensors"
    save_safetensors({f"vision_model.{k}": v for k, v in ref.state_dict().items()}, path)
    # No `arch`: read from the key names. select_layer=-2 without post_norm = LLaVA-style penultimate features.
    tok = tokbench.load_tokenizer("siglip", weights=path, config={**TINY_HF, "select_layer": -2, "post_norm": False})
    assert tok.arch == "transformers"
    x = images(19, 1)
    with torch.no_grad():
        want = ref(pixel_values=x * 2 - 1, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(tok.encode(x).features, want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- Janus


def janus_checkpoint(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tower's keys under `vision_model.vision_tower.` next to unrelated Janus submodules."""
    sd = {f"vision_model.vision_tower.{k}": v for k, v in ref.state_dict().items()}
    sd["aligner.layers.0.weight"] = torch.randn(16, 32)
    sd["gen_vision_model.quantize.embedding.weight"] = torch.randn(12, 8)
    sd["gen_embed.weight"] = torch.randn(12, 8)
    sd["language_model.model.embed_tokens.weight"] = torch.randn(20, 16)
    return sd


@pytest.mark.parametrize("container", ["pytorch_model.bin", "model.safetensors", "sharded"])
def test_janus_tower_matches_timm(tmp_path, container):
    import json

    ref = janus_tower(TINY_JANUS, depth=3)
    sd = {k: v.to(torch.bfloat16) for k, v in janus_checkpoint(ref).items()}  # Janus releases bf16 weights
    if container == "pytorch_model.bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save(sd, path)
    elif container == "model.safetensors":
        path = tmp_path / "model.safetensors"
        save_safetensors(sd, path)
    else:  # Janus-Pro-7B: an index over two shards; the tower is in the second one only
        first = {k: v for k, v in sd.items() if not k.startswith("vision_model.")}
        second = {k: v for k, v in sd.items() if k.startswith("vision_model.")}
        torch.save(first, tmp_path / "pytorch_model-00001-of-00002.bin")
        torch.save(second, tmp_path / "pytorch_model-00002-of-00002.bin")
        weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in first}
        weight_map.update({k: "pytorch_model-00002-of-00002.bin" for k in second})
        path = tmp_path / "pytorch_model.bin.index.json"
        path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (tmp_path / "pytorch_model-00001-of-00002.bin").unlink()  # never needed: proves only one shard is read

    tok = tokbench.load_tokenizer("siglip", weights=path, config={"arch": "janus", **TINY_JANUS})
    assert tok.arch == "janus"
    x = images(20)
    got = tok.encode(x)
    ref = ref.to(torch.float32)
    with torch.no_grad():  # reference from the rounded bf16 weights, as the adapter sees them
        ref.load_state_dict({k[len("vision_model.vision_tower.") :]: v.float() for k, v in sd.items() if "vision_tower" in k})
        want = ref.forward_features((x - 0.5) / 0.5)
    assert got.features.shape == (2, 25, 32) and got.grid == (5, 5)
    torch.testing.assert_close(got.features, want, atol=1e-5, rtol=1e-5)
    assert tok.spec.preprocessing == "janus-resize-pad"
    assert tok.spec.supports_decode is False


def test_janus_select_layer_keeps_first_blocks_and_final_norm(tmp_path):
    ref = janus_tower(TINY_JANUS, depth=3, seed=7)
    path = tmp_path / "model.safetensors"
    save_safetensors(janus_checkpoint(ref), path)
    tok = tokbench.load_tokenizer("siglip", weights=path, config={**TINY_JANUS, "select_layer": -2})
    assert len(tok.model.blocks) == 2
    x = images(20, 1)
    with torch.no_grad():  # Janus: blocks 0..L-2, then `norm` (it is applied whatever select_layer is)
        h = ref.patch_embed((x - 0.5) / 0.5) + ref.pos_embed
        for blk in ref.blocks[:2]:
            h = blk(h)
        want = ref.norm(h)
    torch.testing.assert_close(tok.encode(x).features, want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- errors


def test_no_decoder_path(tmp_path):
    path = tmp_path / "model.safetensors"
    save_safetensors(hf_tower(TINY_HF).state_dict(), path)
    tok = tokbench.load_tokenizer("siglip", weights=path, config=TINY_HF)
    tokens = tok.encode(images(19, 1))
    with pytest.raises(TokbenchError, match="no decoder"):
        tok.decode(tokens)
    with pytest.raises(TokbenchError, match="no decoder"):
        tok.reconstruct(images(19, 1))
    with pytest.raises(TokbenchError, match="19x19"):
        tok.encode(images(24, 1))


def test_mismatched_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_safetensors(hf_tower(TINY_HF).state_dict(), path)
    with pytest.raises(CheckpointError, match="wrong shapes|missing"):
        tokbench.load_tokenizer("siglip", weights=path, config={**TINY_HF, "hidden_size": 48})
    with pytest.raises(CheckpointError, match="no janus SigLIP vision tower"):
        tokbench.load_tokenizer("siglip", weights=path, config={"arch": "janus", **TINY_JANUS})


def test_variants_and_offline_error(tmp_path, monkeypatch):
    names = tokbench.list_tokenizers("*siglip*")
    for n in ("siglip-large-patch16-384", "siglip-so400m-patch14-384", "siglip2-large-patch16-384",
              "siglip2-so400m-patch14-384", "janus-siglip-l-384", "janus-pro-7b-siglip-l-384"):
        assert n in names
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from tokbench.weights import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="deepseek-ai/Janus-Pro-1B"):
        tokbench.load_tokenizer("janus-siglip-l-384")


def test_janus_variant_loads_from_tokbench_weights(tmp_path, monkeypatch):
    """A released variant finds its file under $TOKBENCH_WEIGHTS/<name>/ (config overridden to the tiny size)."""
    ref = janus_tower(TINY_JANUS, depth=3)
    (tmp_path / "janus-siglip-l-384").mkdir()
    torch.save(janus_checkpoint(ref), tmp_path / "janus-siglip-l-384" / "pytorch_model.bin")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path))
    tok = tokbench.load_tokenizer("janus-siglip-l-384", config=TINY_JANUS)
    x = images(20, 1)
    with torch.no_grad():
        want = ref.forward_features(x * 2 - 1)
    torch.testing.assert_close(tok.encode(x).features, want, atol=1e-5, rtol=1e-5)
    assert tok.spec.name == "janus-siglip-l-384"


# --------------------------------------------------------------------------------------------- protocol


def reference_janus_resize_pad(img: Image.Image, size: int) -> Image.Image:
    """Janus VLMImageProcessor.resize, written with torchvision as the official code does."""
    import torchvision.transforms.functional as TF

    w, h = img.size
    m = max(w, h)
    out = TF.resize(img, [max(int(h / m * size), 14), max(int(w / m * size), 14)],
                    interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    ow, oh = out.size
    if ow == oh:
        return out
    side = max(ow, oh)
    canvas = Image.new(out.mode, (side, side), (127, 127, 127))
    canvas.paste(out, (0, (ow - oh) // 2) if ow > oh else ((oh - ow) // 2, 0))
    return canvas


@pytest.mark.parametrize("wh", [(300, 200), (97, 411), (64, 64), (1000, 30)])
def test_janus_protocol_matches_processor(wh):
    import numpy as np

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    got = get_protocol("janus-resize-pad").fn(img, 96)
    want = reference_janus_resize_pad(img, 96)
    assert got.size == (96, 96)
    assert np.array_equal(np.asarray(got), np.asarray(want))
