"""A random-weight Mask2Former (Swin backbone) with COCO's 80 thing classes as labels, small enough for tests,
saved as a checkpoint folder (config.json, preprocessor_config.json, model.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch

from tokbench.geneval.rules import GENEVAL_CLASSES, GENEVAL_RENAMED

# COCO's names as mmdet / Detectron2 / the Hugging Face Mask2Former COCO checkpoints spell them (label id = index).
COCO_NAMES = [GENEVAL_RENAMED.get(n, n) for n in GENEVAL_CLASSES]


def save_tiny_mask2former(folder: Path, seed: int = 0) -> Path:
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    cfg = Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, mask_feature_size=32, feature_size=32,
                            num_queries=6, encoder_layers=1, decoder_layers=2, dim_feedforward=32,
                            num_attention_heads=2, encoder_feedforward_dim=32, num_labels=80,
                            id2label=dict(enumerate(COCO_NAMES)), label2id={n: i for i, n in enumerate(COCO_NAMES)})  # fmt: skip
    torch.manual_seed(seed)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32).save_pretrained(folder)
    return folder
