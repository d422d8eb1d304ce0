"""Writes the tiny random diffusers folders in this directory (run from the repository root):

    python tests/data/diffusers_vae/make_fixtures.py

Each folder is what diffusers' own `save_pretrained` writes (config.json with `_class_name` +
diffusion_pytorch_model.safetensors), from a seeded random model of each wrapped class, stored in
float16 to stay small (the tests load and compare in float32). Random buffers (FLUX.2's batch-norm
statistics) are set so the normalisation is not the identity.
"""

from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).parent

CONFIGS = {
    "autoencoder_kl": ("AutoencoderKL", dict(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=32, scaling_factor=0.5, shift_factor=0.1)),
    "autoencoder_kl_flux2": ("AutoencoderKLFlux2", dict(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=32)),
    "autoencoder_kl_qwenimage": ("AutoencoderKLQwenImage", dict(
        base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.3, -0.4], latents_std=[1.5, 0.5, 2.0, 1.1])),
    "autoencoder_dc": ("AutoencoderDC", dict(
        latent_channels=4, attention_head_dim=4, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)), scaling_factor=0.41)),
    "autoencoder_rae": ("AutoencoderRAE", dict(
        encoder_type="dinov2", encoder_hidden_size=64, encoder_patch_size=14, encoder_num_hidden_layers=1,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, patch_size=8, encoder_input_size=28,
        latents_mean=[[[0.05 * (i % 5)]] for i in range(64)], latents_std=[[[0.5 + 0.1 * (i % 7)]] for i in range(64)], scaling_factor=0.7)),
    "autoencoder_tiny": ("AutoencoderTiny", dict(
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1), latent_channels=4)),
    "vq_model": ("VQModel", dict(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=8,
        num_vq_embeddings=32, vq_embed_dim=4, norm_type="spatial", sample_size=32)),
}


def main() -> None:
    import diffusers

    for folder, (class_name, config) in CONFIGS.items():
        torch.manual_seed(0)
        model = getattr(diffusers, class_name)(**config)
        if class_name == "AutoencoderKLFlux2":
            model.bn.running_mean.normal_(0, 0.3)
            model.bn.running_var.uniform_(0.5, 2.0)
        model.to(torch.float16).save_pretrained(HERE / folder)


if __name__ == "__main__":
    main()
