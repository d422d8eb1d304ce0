"""A tiny random Janus checkpoint built offline, in the transformers layout and in DeepSeek's original one.

The tokenizer is a word-level `tokenizers` model over a small vocabulary plus the Janus special tokens
(BOS/EOS/pad of DeepSeek-LLM, `<|User|>`, `<|Assistant|>`, the three image tokens), whose post-processor
prepends BOS as the released tokenizer does. The VQ is 4x4 codes of a 64-entry codebook decoding to 16 px.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
SPECIALS = [BOS, EOS, PAD, "<|User|>", "<|Assistant|>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>"]
WORDS = ["a", "an", "the", "photo", "of", "red", "blue", "green", "cat", "dog", "cats", "dogs", "two", "three",
         "on", "left", "right", "sign", "says", "hello", "car", "tree", "house", ":", "<unk>"]


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(":", behavior="isolated")])
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token="<unk>",
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"},
    )  # fmt: skip


def build_model(tokenizer, seed: int = 0):
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                               patch_size=16, projection_dim=32, num_image_tokens=16)  # fmt: skip
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=64, base_channels=32, channel_multiplier=[1, 1, 2],
                          num_res_blocks=1, latent_channels=32, projection_dim=32, image_token_embed_dim=32)  # fmt: skip
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))  # fmt: skip
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    with torch.no_grad():  # the default init leaves a near-uniform head; sharper logits exercise sampling more
        model.model.generation_head.vision_head.weight.mul_(20)
    g = model.generation_config
    g.pad_token_id = tokenizer.pad_token_id
    g.bos_token_id = tokenizer.bos_token_id
    g.guidance_scale = 5
    g.temperature = 1.0
    g.boi_token_id = tokenizer.convert_tokens_to_ids("<begin_of_image>")
    return model


def save_transformers(folder: Path, seed: int = 0):
    tok = build_tokenizer()
    model = build_model(tok, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


# --- the inverse of the converter's renames: transformers layout -> DeepSeek's original layout ---------

_VQ_BACK = (("encoder.down.", "encoder.conv_blocks."), ("decoder.up.", "decoder.conv_blocks."), (".block.", ".res."),
            ("mid.block_1.", "mid.0."), ("mid.attn_1.", "mid.1."), ("mid.block_2.", "mid.2."))  # fmt: skip


def to_original_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            out["language_model.model." + k[len("model.language_model."):]] = v
        elif k == "lm_head.weight":
            out["language_model.lm_head.weight"] = v
        elif k.startswith("model.vqmodel."):
            rest = k[len("model.vqmodel."):]
            for hf, orig in _VQ_BACK:
                rest = rest.replace(hf, orig)
            out["gen_vision_model." + rest] = v
        elif m := re.fullmatch(r"model\.(generation_aligner|aligner)\.(fc1|hidden_layers\.(\d+))\.(.*)", k):
            name = "gen_aligner" if m.group(1) == "generation_aligner" else "aligner"
            idx = 0 if m.group(2) == "fc1" else 2 * (int(m.group(3)) + 1)
            out[f"{name}.layers.{idx}.{m.group(4)}"] = v
        elif k.startswith("model.generation_head.proj_out."):
            out["gen_head.output_mlp_projector." + k[len("model.generation_head.proj_out."):]] = v
        elif k.startswith("model.generation_head.vision_head."):
            out["gen_head.vision_head." + k[len("model.generation_head.vision_head."):]] = v
        elif k.startswith("model.generation_embeddings."):
            out["gen_embed." + k[len("model.generation_embeddings."):]] = v
        elif k == "model.vision_model.embeddings.position_embedding.weight":
            out["vision_model.vision_tower.pos_embed"] = v.unsqueeze(0)
        elif k.startswith("model.vision_model.embeddings.patch_embedding."):
            out["vision_model.vision_tower.patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("model.vision_model.post_layernorm."):
            out["vision_model.vision_tower.norm." + k.rsplit(".", 1)[1]] = v
        elif m := re.fullmatch(r"model\.vision_model\.encoder\.layers\.(\d+)\.(.*)", k):
            base, inner = f"vision_model.vision_tower.blocks.{m.group(1)}.", m.group(2)
            if q := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", inner):
                qkv.setdefault(base + "attn.qkv." + q.group(2), {})[q.group(1)] = v
                continue
            inner = (inner.replace("self_attn.projection_layer.", "attn.proj.")
                     .replace("layer_norm1.", "norm1.").replace("layer_norm2.", "norm2."))  # fmt: skip
            out[base + inner] = v
        else:
            raise AssertionError(f"test inverse map misses {k}")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    # DeepSeek's release also carries the SigLIP attention-pool head and the VQ usage buffer (both dropped).
    out["vision_model.vision_tower.attn_pool.latent"] = torch.zeros(1, 1, 32)
    out["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    return out


def save_original(folder: Path, seed: int = 0):
    """The same tiny model as `save_transformers(seed)`, written as DeepSeek's release lays it out."""
    tok = build_tokenizer()
    model = build_model(tok, seed)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(to_original_keys(sd), folder / "pytorch_model.bin")
    c = model.config
    v, q = c.vision_config, c.vq_config
    t = c.text_config
    config = {
        "model_type": "multi_modality",
        "language_config": {"model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
                            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
                            "max_position_embeddings": t.max_position_embeddings},
        "vision_config": {"cls": "CLIPVisionTower", "params": {
            "image_size": v.image_size, "model_name": "siglip_tiny", "hidden_size": v.hidden_size,
            "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
            "patch_size": v.patch_size, "num_image_tokens": v.num_image_tokens}},
        "aligner_config": {"cls": "MlpProjector", "params": {"depth": v.depth, "n_embed": v.projection_dim}},
        "gen_vision_config": {"cls": "VQ-16", "params": {
            "image_token_size": q.num_embeddings, "n_embed": q.embed_dim, "base_channels": q.base_channels,
            "channel_multiplier": list(q.channel_multiplier), "num_res_blocks": q.num_res_blocks,
            "latent_channels": q.latent_channels}},
        "gen_aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "n_embed": q.projection_dim}},
        "gen_head_config": {"cls": "vision_head", "params": {"image_token_embed": q.image_token_embed_dim,
                                                             "image_token_size": q.num_embeddings,
                                                             "n_embed": q.projection_dim}},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    tok.save_pretrained(folder)
    return model, tok
