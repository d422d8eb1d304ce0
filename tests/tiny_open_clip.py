"""A random-weight open_clip model small enough for tests: its config registered with open_clip under a name,
its weights saved as safetensors (the release format tokbench's encoder loader reads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_CONFIG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                    "patch_size": 8}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                    "layers": 1}}  # fmt: skip


def save_tiny_clip(folder: Path, name: str, seed: int = 0) -> Path:
    """Register `name` with open_clip, build it with seeded random weights, save them; returns the weights file."""
    import open_clip
    from safetensors.torch import save_file

    (folder / f"{name}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(seed)
    net = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "w.safetensors"))
    return folder / "w.safetensors"
