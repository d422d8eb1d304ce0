"""Latent-diffusion and unified-model autoencoders hosted by diffusers: SD / SDXL (JanusFlow) / SD3.5 /
FLUX.1 / FLUX.2 / Qwen-Image VAEs, Wan 2.1 (Show-o2) and Wan 2.2, HunyuanImage 2.1, Cosmos, KVAE, DC-AE,
RAE, TAESD, Kandinsky's MoVQ, Lumina-DiMOO's aMUSEd VQ, MoVQGAN-270M (Lumina-mGPT 2.0) and MAR's KL-16
(MAR, Harmon).

diffusers is the official code of these releases, so this module only wraps its classes (`CLASSES`): the
class comes from the folder's own `config.json` (`_class_name`), the released variants are a table of
repo, subfolder, file, licence, latent geometry and latent normalisation. What is ours: [0, 1] images in
and out (each release's own pixel range inside), the latent normalisation the release's own pipeline
applies (scaling/shift, per-channel mean/std, Cosmos's sigma_data, FLUX.2's batch-norm statistics) done
symmetrically in encode and decode, still images through video VAEs as one-frame videos, the key maps
of three original single-file layouts that diffusers cannot read exactly (Wan's `.pth`, taming/LDM
`.ckpt` with attention in the encoder's down blocks or spatial norms: MAR, MoVQGAN), the rate convention
for continuous latents, and a clear error for non-finite reconstructions.

Continuous latents have no codebook. tokbench's rate convention (`RATE_CONVENTION`): an image costs its
C x h x w latent values, each stored at `storage_bits` bits (16 by default: the half-precision tensors
these latents are kept in); no quantisation or entropy coding is applied, so this is a storage size,
not a compressed rate. Reports label it and draw these tokenizers apart from VQ bit rates.

Image sides: any H x W (square or not) whose sides are multiples of the latent grid step f works (RAE:
only its fixed output size). Other sides are refused, with the size diffusers' pipelines would use: their
`VaeImageProcessor.get_default_height_width` rounds each side down to a multiple of the VAE scale
factor and resizes the image to it; tokbench does not resize behind the metric's back.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..building import Build
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, bits_for, check_images
from ..features import check_stage, grid_tokens
from ..options import DType, PositiveInt
from ..registry import Family, Variant
from ..weights import Artifact, WeightsUnavailable, resolve

FAMILY_NAME = "diffusers-vae"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_STORAGE_BITS = 16
RATE_CONVENTION = (
    "continuous latent: C x h x w values per image, each counted at {bits}-bit storage (tokbench convention; "
    "no quantisation or entropy coding), bpp = C*h*w*{bits} / (H*W)"
)
SIGNED, UNIT = "[-1, 1]", "[0, 1]"
PixelRange = Literal["[-1, 1]", "[0, 1]"]
# Cosmos-1.0's pipelines scale latents by their EDMEulerScheduler's sigma_data (scheduler_config.json of
# nvidia/Cosmos-1.0-Diffusion-*; diffusers' scripts/convert_cosmos_to_diffusers.py), which the VAE's config
# does not hold.
COSMOS_SIGMA_DATA = 0.5
VIDEO_NOTE = (
    "a video VAE: each image is encoded as a one-frame video (B, 3, 1, H, W) -> one latent frame (the causal "
    "first frame is coded on its own), and decoded back from that frame"
)


@dataclass(frozen=True)
class ClassSpec:
    """What tokbench needs to know about one diffusers autoencoder class.

    `kind`: the latent is a Gaussian posterior ("kl"), a deterministic code ("deterministic") or
    vector-quantised ids ("vq"); `video`: the class takes (B, C, T, H, W), so a still image is one frame;
    `latent`: the attribute of `encode()`'s output that holds it; `pixels`: the range the class takes
    images in (RAE applies ImageNet mean/std to [0, 1] itself; a release may override the default).
    """

    kind: Literal["kl", "deterministic", "vq"]
    video: bool = False
    latent: str = "latent_dist"
    pixels: str = SIGNED


CLASSES = {
    "AutoencoderKL": ClassSpec("kl"),
    "AutoencoderKLFlux2": ClassSpec("kl"),
    "AutoencoderKLQwenImage": ClassSpec("kl", video=True),
    "AutoencoderKLWan": ClassSpec("kl", video=True),
    "AutoencoderKLHunyuanImage": ClassSpec("kl"),
    "AutoencoderKLCosmos": ClassSpec("deterministic", video=True),  # its latent_dist is an identity
    "AutoencoderKLKVAE": ClassSpec("kl"),
    "AutoencoderDC": ClassSpec("deterministic", latent="latent"),
    "AutoencoderRAE": ClassSpec("deterministic", latent="latent", pixels=UNIT),
    "AutoencoderTiny": ClassSpec("deterministic", latent="latents"),
    "VQModel": ClassSpec("vq", latent="latents"),
}


def model_class(name: str | None) -> type:
    """The diffusers class called `name` (one of `CLASSES`), or a clear error."""
    if name not in CLASSES:
        raise TokbenchError(
            f"diffusers class {name!r} is not supported by {FAMILY_NAME}; supported: {', '.join(CLASSES)} "
            "(the class is read from the `_class_name` of the folder's config.json)"
        )
    try:
        import diffusers
    except ImportError:
        raise TokbenchError(f"{FAMILY_NAME} needs the diffusers package: pip install 'diffusers>=0.42,<0.43'") from None
    return getattr(diffusers, name)


def full_config(class_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` completed with the class's constructor defaults (what `from_config` would build)."""
    params = inspect.signature(model_class(class_name).__init__).parameters
    out = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}
    out.update({k: v for k, v in config.items() if not k.startswith("_")})
    return out


def _hunyuan_image_downsamples(c: Mapping[str, Any]) -> int:
    # HunyuanImageEncoder2D adds a downsample after block i when i < log2(ratio) and i is not the last
    levels = len(c["block_out_channels"])
    return sum(1 for i in range(levels) if i < math.log2(c["spatial_compression_ratio"]) and i != levels - 1)


def latent_geometry(class_name: str, config: Mapping[str, Any]) -> tuple[int, int]:
    """(latent values per grid position, pixels per grid position along a side) of a config.

    FLUX.2's grid is its pipeline's 2x2-patchified one (4 x 32 channels at 1/16); RAE's grid is the
    encoder's patch grid, one position per `patch_size` output pixels; Wan 2.2 patchifies 2x2 pixels
    before its 8x encoder (16x).
    """
    c = full_config(class_name, config)
    if class_name in ("AutoencoderKL", "VQModel"):
        channels = (c.get("vq_embed_dim") if class_name == "VQModel" else None) or c["latent_channels"]
        return int(channels), 2 ** (len(c["block_out_channels"]) - 1)
    if class_name == "AutoencoderKLFlux2":
        p = tuple(c["patch_size"])
        return int(c["latent_channels"]) * p[0] * p[1], 2 ** (len(c["block_out_channels"]) - 1) * p[0]
    if class_name == "AutoencoderKLQwenImage":
        return int(c["z_dim"]), 2 ** (len(c["dim_mult"]) - 1)
    if class_name == "AutoencoderKLWan":
        return int(c["z_dim"]), int(c.get("patch_size") or 1) * 2 ** (len(c["dim_mult"]) - 1)
    if class_name == "AutoencoderKLHunyuanImage":
        return int(c["latent_channels"]), 2 ** _hunyuan_image_downsamples(c)
    if class_name == "AutoencoderKLCosmos":  # patching, then spatial downsamples in all but the last two blocks
        p = int(c["patch_size"])
        layers = min(int(math.log2(c["spatial_compression_ratio"])) - int(math.log2(p)),
                     len(c["encoder_block_out_channels"]) - 2)
        return int(c["latent_channels"]), p * 2 ** max(0, layers)
    if class_name == "AutoencoderKLKVAE":
        return int(c["z_channels"]), 2 ** (len(c["ch_mult"]) - 1)
    if class_name in ("AutoencoderDC", "AutoencoderTiny"):
        return int(c["latent_channels"]), 2 ** (len(c["encoder_block_out_channels"]) - 1)
    if class_name == "AutoencoderRAE":
        return int(c["encoder_hidden_size"]), int(c["patch_size"])
    raise TokbenchError(f"no latent geometry for {class_name}")  # pragma: no cover - CLASSES is exhaustive


def _first_frame(values: Any, channels: int) -> list[float]:
    """Cosmos's latents_mean/std hold C x T values (channel-major); a still image uses latent frame 0."""
    flat = torch.as_tensor(values, dtype=torch.float64).reshape(channels, -1)
    return flat[:, 0].tolist()


def latent_statistics(class_name: str, config: Mapping[str, Any]) -> tuple[Any, Any, float] | None:
    """(mean, std, scale) such that the release's pipeline feeds its diffusion model
    (z - mean) * scale / std, and decodes z * std / scale + mean; mean and std are numbers or
    per-channel lists. None for the classes that normalise otherwise (FLUX.2: batch-norm statistics in the
    checkpoint; RAE: inside the model; VQ: ids)."""
    if class_name in ("AutoencoderKLFlux2", "AutoencoderRAE", "VQModel"):
        return None
    c = full_config(class_name, config)
    mean, std = c.get("latents_mean"), c.get("latents_std")
    if class_name == "AutoencoderKLCosmos":  # (z - mean) * sigma_data / std, per channel of frame 0
        if mean is None or std is None:
            return 0.0, 1.0, COSMOS_SIGMA_DATA
        ch = int(c["latent_channels"])
        return _first_frame(mean, ch), _first_frame(std, ch), COSMOS_SIGMA_DATA
    scale = float(c.get("scaling_factor") or 1.0)  # Wan, Qwen-Image, KVAE: no scaling factor
    if mean is not None and std is not None:  # SDXL-style pipelines, Wan, Qwen-Image
        return mean, std, scale
    return float(c.get("shift_factor") or 0.0), 1.0, scale


def latent_normalisation(class_name: str, config: Mapping[str, Any]) -> str:
    """How the release's pipeline maps the autoencoder's latent to the diffusion model's, in words."""
    if class_name == "AutoencoderKLFlux2":
        return "2x2 patchify, then (z - bn.running_mean) / sqrt(bn.running_var + batch_norm_eps) (FLUX.2 pipeline)"
    if class_name == "AutoencoderRAE":
        return "inside the model: (z - latents_mean) / (latents_std + 1e-5), times scaling_factor"
    if class_name == "VQModel":
        return "none (ids of the codebook)"
    mean, std, scale = latent_statistics(class_name, config)  # type: ignore[misc]
    if class_name == "AutoencoderKLCosmos":
        stats = "latents_mean/std of latent frame 0 per channel" if isinstance(mean, list) else "no latent statistics"
        return f"(z - mean) * sigma_data {scale} / std ({stats}; Cosmos-1.0 pipeline's EDM sigma_data)"
    if isinstance(mean, list):
        return "(z - latents_mean) / latents_std per channel" + (f", times {scale}" if scale != 1.0 else "")
    if mean == 0.0 and scale == 1.0:
        return "none (the latent as the encoder gives it)"
    return f"z * {scale}" if mean == 0.0 else f"(z - {mean}) * {scale}"


# ---------------------------------------------------------------------------------------------------
# Released variants
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """One released autoencoder: where its diffusers folder (or original file) lives and what it is.

    `config` is the release's config.json (diffusers constructor arguments; fields equal to the class
    default may be omitted); `single_file` names an original-layout checkpoint, read with the config given
    here (no download of a config) through the key map its class and config call for
    (`single_file_layout`: diffusers' `from_single_file` for LDM VAEs, tokbench's for Wan's `.pth` and
    taming/LDM `.ckpt` with encoder attention or spatial norms). `config_complete` is False where the
    table leaves out data the real config.json carries (RAE's latent statistics): loading then needs that
    file. `dtype` is the precision the release is meant to run in (tokbench measures float32 unless asked);
    `pixels` the range its own code feeds the autoencoder (None: the class's).
    """

    name: str
    class_name: str
    repo_id: str
    subfolder: str | None
    licence: str
    config: Mapping[str, Any]
    resolution: int
    dtype: str
    description: str
    gated: bool = False
    single_file: str | None = None
    config_complete: bool = True
    artifact_name: str | None = None
    revision: str = "main"
    pixels: str | None = None
    paper: str = ""
    published: Mapping[str, float] = field(default_factory=dict)
    published_source: str = ""

    @property
    def filename(self) -> str:
        name = self.single_file or WEIGHTS_FILE
        return f"{self.subfolder}/{name}" if self.subfolder else name

    @property
    def geometry(self) -> tuple[int, int]:
        return latent_geometry(self.class_name, self.config)

    def artifact(self) -> Artifact:
        name = self.artifact_name or self.name
        users = [r.name for r in RELEASES if (r.artifact_name or r.name) == name]  # JanusFlow shares SDXL's
        return Artifact(name=name, repo_id=self.repo_id, filename=self.filename, revision=self.revision,
                        licence=self.licence, gated=self.gated, used_by=", ".join(users))


_SD_BLOCKS = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "in_channels": 3,
    "out_channels": 3,
}
SD_VAE_CONFIG = {**_SD_BLOCKS, "latent_channels": 4, "sample_size": 256, "scaling_factor": 0.18215}
SDXL_VAE_CONFIG = {**_SD_BLOCKS, "latent_channels": 4, "sample_size": 1024, "scaling_factor": 0.13025,
                   "force_upcast": True}  # fmt: skip
# SD3.5 and FLUX.1: 16 channels, no quant convs (vae/config.json of stable-diffusion-3.5-large / FLUX.1-dev)
SD35_VAE_CONFIG = {**_SD_BLOCKS, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 1.5305,
                   "shift_factor": 0.0609, "force_upcast": True, "use_quant_conv": False,
                   "use_post_quant_conv": False}  # fmt: skip
FLUX1_VAE_CONFIG = {**SD35_VAE_CONFIG, "scaling_factor": 0.3611, "shift_factor": 0.1159}
# AutoencoderKLFlux2's and AutoencoderKLQwenImage's defaults are the released configs (latent 32 at 1/8,
# 2x2 patch, batch-norm statistics in the checkpoint; z_dim 16 with per-channel mean/std).
FLUX2_VAE_CONFIG: dict[str, Any] = {"sample_size": 1024}
QWEN_IMAGE_VAE_CONFIG: dict[str, Any] = {}
# DC-AE: diffusers' scripts/convert_dcae_to_diffusers.py (get_ae_config)
_DC_CONFIG = {
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
}
DC_AE_F32C32_SANA_CONFIG = {
    **_DC_CONFIG,
    "latent_channels": 32,
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
    "downsample_block_type": "Conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}
DC_AE_F64C128_IN_CONFIG = {
    "latent_channels": 128,
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 4,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 4,
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024, 2048],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024, 2048],
    "encoder_layers_per_block": [0, 4, 8, 2, 2, 2, 2],
    "decoder_layers_per_block": [0, 5, 10, 2, 2, 2, 2],
    "encoder_qkv_multiscales": [[]] * 7,
    "decoder_qkv_multiscales": [[]] * 7,
    "decoder_norm_types": ["batch_norm"] * 3 + ["rms_norm"] * 4,
    "decoder_act_fns": ["relu"] * 3 + ["silu"] * 4,
    "scaling_factor": 0.2889,
}
# RAE (DINOv2-B with registers, ViT-XL decoder): the architecture only; the release's config.json also
# carries the latent mean/std that the table leaves out (config_complete=False).
RAE_DINOV2_B_CONFIG = {
    "encoder_type": "dinov2",
    "encoder_hidden_size": 768,
    "encoder_patch_size": 14,
    "encoder_num_hidden_layers": 12,
    "decoder_hidden_size": 1152,
    "decoder_num_hidden_layers": 28,
    "decoder_num_attention_heads": 16,
    "decoder_intermediate_size": 4096,
    "patch_size": 16,
    "encoder_input_size": 224,
}
TAESD_CONFIG: dict[str, Any] = {}  # AutoencoderTiny's defaults are TAESD's; latents are SD's scaled ones
MOVQ_CONFIG = {
    "block_out_channels": [128, 256, 256, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
    "up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "norm_type": "spatial",
    "num_vq_embeddings": 16384,
    "vq_embed_dim": 4,
    "sample_size": 32,
    "scaling_factor": 0.18215,
}

# Wan 2.1: AutoencoderKLWan's defaults are its config (vae/config.json of Wan-AI/Wan2.1-T2V-*-Diffusers:
# base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 residual blocks, per-channel latents_mean/std).
WAN21_VAE_CONFIG: dict[str, Any] = {}
# Wan 2.2 (TI2V-5B): residual blocks, 2x2 patchify of 3 -> 12 channels, 48 channels at 16x; diffusers'
# scripts/convert_wan_to_diffusers.py (vae22_diffusers_config; its `clip_output: false` is not an argument
# of diffusers 0.42's class, which always clamps the decoder's output to [-1, 1]).
WAN22_VAE_CONFIG = {
    "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
    "out_channels": 12, "patch_size": 2, "scale_factor_temporal": 4, "scale_factor_spatial": 16,
    "latents_mean": [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
                     0.2813, 0.0891, 0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665,
                     -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799,
                     -0.123, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957,
                     0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667],
    "latents_std": [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894,
                    1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986,
                    0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065,
                    0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089,
                    0.7468, 0.7744],
}  # fmt: skip
# HunyuanImage 2.1: diffusers' scripts/convert_hunyuan_image_to_diffusers.py (vae_config_diffusers): 64
# channels at 32x; its pipeline divides by scaling_factor before decoding.
HUNYUANIMAGE21_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 64, "block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "layers_per_block": 2, "spatial_compression_ratio": 32, "sample_size": 384, "scaling_factor": 0.75289,
    "downsample_match_channel": True, "upsample_match_channel": True,
}  # fmt: skip
# Cosmos-1.0 CV8x8x8: AutoencoderKLCosmos's defaults are its config (diffusers' scripts/
# convert_cosmos_to_diffusers.py VAE_CONFIGS["CV8x8x8-1.0"], latents_mean/std from the release's mean_std.pt).
COSMOS_CV8X8X8_CONFIG: dict[str, Any] = {}
# KVAE 2D 1.0: AutoencoderKLKVAE's defaults (128 base channels, ch_mult (1, 2, 4, 8): 16 channels at 8x).
KVAE_2D_CONFIG: dict[str, Any] = {}
# aMUSEd's VQ-GAN (Lumina-DiMOO's vqvae folder): diffusers' scripts/convert_amused.py
AMUSED_VQ_CONFIG = {
    "block_out_channels": [128, 256, 256, 512, 768],
    "down_block_types": ["DownEncoderBlock2D"] * 5,
    "up_block_types": ["UpDecoderBlock2D"] * 5,
    "latent_channels": 64,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "num_vq_embeddings": 8192,
    "sample_size": 32,
    "mid_block_add_attention": False,
    "lookup_from_codebook": True,
}
# SBER-MoVQGAN 270M (ai-forever/MoVQGAN configs/movqgan_270M.yaml: ch 256, ch_mult [1, 2, 2, 4], 2 res
# blocks, attention at 32 px of 256, 16384 codes of 4): Kandinsky's MoVQ architecture at twice the width.
MOVQGAN_270M_CONFIG = {**MOVQ_CONFIG, "block_out_channels": [256, 512, 512, 1024], "sample_size": 256}
# MAR's KL-16 (LTH14/mar models/vae.py: ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks, embed_dim 16; the
# encoder attends at 16 px of 256, i.e. in its last level, the decoder only in its middle block); MAR
# multiplies latents by 0.2325 (engine_mar.py).
MAR_KL16_CONFIG = {
    "block_out_channels": [128, 128, 256, 256, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"] * 5,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.2325,
}

SD_CARD = (
    "Stability AI model cards (huggingface.co/stabilityai/sd-vae-ft-mse, /sdxl-vae): COCO 2017 val, 5000 images "
    "at 256x256; rFID / PSNR / SSIM means (PSNR and SSIM +/- std there); the cards do not name the FID, PSNR or "
    "SSIM implementation"
)
WAN_PAPER = "Wan Team, Wan: Open and Advanced Large-Scale Video Generative Models, arXiv:2503.20314"
MOVQ_PAPER = "Zheng et al., MoVQ: Modulating Quantized Vectors for High-Fidelity Image Generation, NeurIPS 2022"
MOVQGAN_README = (
    "github.com/ai-forever/MoVQGAN README table (ImageNet; FID, SSIM, PSNR of reconstructions; the README does "
    "not name the split, resolution or implementations: the models are trained at 256)"
)
LDM_PAPER = "Rombach et al., High-Resolution Image Synthesis with Latent Diffusion Models, CVPR 2022"
RELEASES = (
    Release("sd-vae-ft-ema", "AutoencoderKL", "stabilityai/sd-vae-ft-ema", None, "MIT", SD_VAE_CONFIG, 256,
            "float32", "Stable Diffusion 1.x VAE, decoder fine-tuned (EMA, L1 + LPIPS)", paper=LDM_PAPER,
            published={"rfid": 4.42, "psnr": 23.8, "ssim": 0.69}, published_source=SD_CARD),
    Release("sd-vae-ft-mse", "AutoencoderKL", "stabilityai/sd-vae-ft-mse", None, "MIT", SD_VAE_CONFIG, 256,
            "float32", "Stable Diffusion 1.x VAE, decoder fine-tuned further with MSE emphasis", paper=LDM_PAPER,
            published={"rfid": 4.70, "psnr": 24.5, "ssim": 0.71}, published_source=SD_CARD),
    Release("sd-vae-ft-mse-original", "AutoencoderKL", "stabilityai/sd-vae-ft-mse-original", None,
            "see the model card", SD_VAE_CONFIG, 256, "float32",
            "the same ft-MSE VAE in the original CompVis (LDM) single-file layout, via from_single_file",
            single_file="vae-ft-mse-840000-ema-pruned.safetensors", paper=LDM_PAPER,
            published={"rfid": 4.70, "psnr": 24.5, "ssim": 0.71}, published_source=SD_CARD),
    Release("sdxl-vae", "AutoencoderKL", "stabilityai/sdxl-vae", None, "MIT", SDXL_VAE_CONFIG, 1024, "float32",
            "SDXL's VAE (overflows in float16, so force_upcast: SDXL pipelines decode it in float32; "
            "float16 users take sdxl-vae-fp16-fix)",
            paper="Podell et al., SDXL, arXiv:2307.01952",
            published={"rfid": 4.42, "psnr": 24.7, "ssim": 0.73}, published_source=SD_CARD),
    Release("janusflow-1.3b-vae", "AutoencoderKL", "stabilityai/sdxl-vae", None, "MIT", SDXL_VAE_CONFIG, 384,
            "bfloat16", "JanusFlow-1.3B's generation latent space: stabilityai/sdxl-vae, run in bfloat16 "
            "('this vae doesn't work with fp16', JanusFlow README), 384 px images (48x48x4 latents)",
            artifact_name="sdxl-vae",
            paper="Ma et al., JanusFlow: Harmonizing Autoregression and Rectified Flow, arXiv:2411.07975"),
    Release("sdxl-vae-fp16-fix", "AutoencoderKL", "madebyollin/sdxl-vae-fp16-fix", None, "MIT",
            {**SDXL_VAE_CONFIG, "force_upcast": False}, 1024, "float16",
            "SDXL's VAE with the decoder fine-tuned to keep activations in float16 range (madebyollin)"),
    Release("sd3.5-large-vae", "AutoencoderKL", "stabilityai/stable-diffusion-3.5-large", "vae",
            "Stability AI Community License", SD35_VAE_CONFIG, 1024, "float32",
            "Stable Diffusion 3.5's 16-channel VAE (config: force_upcast)", gated=True,
            paper="Esser et al., Scaling Rectified Flow Transformers, arXiv:2403.03206"),
    Release("flux1-dev-vae", "AutoencoderKL", "black-forest-labs/FLUX.1-dev", "vae",
            "FLUX.1 [dev] Non-Commercial License", FLUX1_VAE_CONFIG, 1024, "bfloat16",
            "FLUX.1's 16-channel VAE from the gated [dev] repository", gated=True),
    Release("flux1-schnell-vae", "AutoencoderKL", "black-forest-labs/FLUX.1-schnell", "vae", "Apache-2.0",
            FLUX1_VAE_CONFIG, 1024, "bfloat16", "FLUX.1's 16-channel VAE from the ungated [schnell] repository"),
    Release("flux2-dev-vae", "AutoencoderKLFlux2", "black-forest-labs/FLUX.2-dev", "vae",
            "FLUX.2 [dev] Non-Commercial License", FLUX2_VAE_CONFIG, 1024, "bfloat16",
            "FLUX.2's VAE: 32 channels at 1/8, patchified to 128 at 1/16 and batch-normalised as its pipeline does",
            gated=True),
    Release("qwen-image-vae", "AutoencoderKLQwenImage", "Qwen/Qwen-Image", "vae", "Apache-2.0",
            QWEN_IMAGE_VAE_CONFIG, 1024, "bfloat16",
            "Qwen-Image's VAE (a causal video VAE; still images as one frame), 16 channels at 1/8",
            paper="Qwen-Image Technical Report, arXiv:2508.02324"),
    Release("dc-ae-f32c32-sana-1.0", "AutoencoderDC", "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers", None,
            "see the model card (code: Apache-2.0)", DC_AE_F32C32_SANA_CONFIG, 1024, "bfloat16",
            "Deep Compression Autoencoder, 32x downsampling, 32 channels (SANA's autoencoder)",
            paper="Chen et al., Deep Compression Autoencoder for Efficient High-Resolution Diffusion Models, "
            "arXiv:2410.10733"),
    Release("dc-ae-f64c128-in-1.0", "AutoencoderDC", "mit-han-lab/dc-ae-f64c128-in-1.0-diffusers", None,
            "see the model card (code: Apache-2.0)", DC_AE_F64C128_IN_CONFIG, 512, "bfloat16",
            "Deep Compression Autoencoder, 64x downsampling, 128 channels (ImageNet)",
            paper="Chen et al., Deep Compression Autoencoder, arXiv:2410.10733"),
    Release("rae-dinov2-b-vitxl", "AutoencoderRAE", "nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08", None,
            "see the model card", RAE_DINOV2_B_CONFIG, 256, "float32",
            "Representation Autoencoder: frozen DINOv2-B (registers) encoder, ViT-XL decoder; 16x16x768 latents",
            config_complete=False,
            paper="Zheng et al., Diffusion Transformers with Representation Autoencoders, arXiv:2510.11690"),
    Release("taesd", "AutoencoderTiny", "madebyollin/taesd", None, "MIT", TAESD_CONFIG, 512, "float16",
            "Tiny AutoEncoder for Stable Diffusion 1.x latents"),
    Release("taesdxl", "AutoencoderTiny", "madebyollin/taesdxl", None, "MIT", TAESD_CONFIG, 1024, "float16",
            "Tiny AutoEncoder for SDXL latents"),
    Release("kandinsky-2.2-movq", "VQModel", "kandinsky-community/kandinsky-2-2-decoder", "movq", "Apache-2.0",
            MOVQ_CONFIG, 512, "float32",
            "Kandinsky 2.2's MoVQ (spatially conditioned VQGAN, 16384 codes, f8; the pipeline's default 512 px)"),
    Release("wan2.1-vae", "AutoencoderKLWan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "vae", "Apache-2.0",
            WAN21_VAE_CONFIG, 480, "float32",
            "Wan 2.1's causal video VAE (16 channels at 8x, 4x in time; still images as one frame); Wan "
            "2.1's and Cosmos-Predict2's latent space", paper=WAN_PAPER),
    Release("wan2.1-vae-original", "AutoencoderKLWan", "Wan-AI/Wan2.1-T2V-1.3B", None, "Apache-2.0",
            WAN21_VAE_CONFIG, 480, "float32", "the same Wan 2.1 VAE as the original Wan2.1_VAE.pth",
            single_file="Wan2.1_VAE.pth", paper=WAN_PAPER),
    Release("showo2-wan2.1-vae", "AutoencoderKLWan", "Wan-AI/Wan2.1-T2V-1.3B", None, "Apache-2.0",
            WAN21_VAE_CONFIG, 432, "bfloat16",
            "Show-o2's generation latent space: Wan2.1_VAE.pth at Show-o2's 432 px (54x54x16 latents, which "
            "Show-o2 patchifies 2x2 and fuses with SigLIP features)", single_file="Wan2.1_VAE.pth",
            artifact_name="wan2.1-vae-original",
            paper="Xie et al., Show-o2: Improved Native Unified Multimodal Models, 2025 (github.com/showlab/Show-o)"),
    Release("wan2.2-vae", "AutoencoderKLWan", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "vae", "Apache-2.0",
            WAN22_VAE_CONFIG, 704, "float32",
            "Wan 2.2's high-compression video VAE (2x2 patchify, residual blocks: 48 channels at 16x; still "
            "images as one frame); Wan 2.2 TI2V-5B's latent space", paper=WAN_PAPER),
    Release("wan2.2-vae-original", "AutoencoderKLWan", "Wan-AI/Wan2.2-TI2V-5B", None, "Apache-2.0",
            WAN22_VAE_CONFIG, 704, "float32", "the same Wan 2.2 VAE as the original Wan2.2_VAE.pth",
            single_file="Wan2.2_VAE.pth", paper=WAN_PAPER),
    Release("hunyuanimage-2.1-vae", "AutoencoderKLHunyuanImage", "hunyuanvideo-community/HunyuanImage-2.1-Diffusers",
            "vae", "Tencent Hunyuan Community License", HUNYUANIMAGE21_VAE_CONFIG, 2048, "bfloat16",
            "HunyuanImage 2.1's VAE: 64 channels at 32x, for its 2K images (scaling_factor 0.75289)",
            paper="HunyuanImage 2.1 (Tencent Hunyuan, 2025; github.com/Tencent-Hunyuan/HunyuanImage-2.1)"),
    Release("cosmos-1.0-cv8x8x8", "AutoencoderKLCosmos", "nvidia/Cosmos-1.0-Diffusion-7B-Text2World", "vae",
            "NVIDIA Open Model License", COSMOS_CV8X8X8_CONFIG, 704, "bfloat16",
            "Cosmos tokenizer CV8x8x8 (continuous, 16 channels at 8x, 8x in time; still images as one frame): "
            "Cosmos-1.0 world models' latent space, normalised by latents_mean/std and EDM sigma_data 0.5",
            paper="NVIDIA, Cosmos World Foundation Model Platform for Physical AI, arXiv:2501.03575"),
    Release("kvae-2d-1.0", "AutoencoderKLKVAE", "kandinskylab/KVAE-2D-1.0", "diffusers", "see the model card",
            KVAE_2D_CONFIG, 1024, "bfloat16",
            "Kandinsky lab's KVAE 2D image VAE (16 channels at 8x), released beside Kandinsky 5; no latent "
            "scaling in its config (diffusers' Kandinsky 5 pipelines load other VAEs)"),
    Release("lumina-dimoo-vq", "VQModel", "Alpha-VLLM/Lumina-DiMOO", "vqvae", "Apache-2.0", AMUSED_VQ_CONFIG, 1024,
            "float32", "Lumina-DiMOO's image tokenizer: aMUSEd's VQ-GAN (8192 codes at 16x), fed [0, 1] images "
            "as Lumina-DiMOO's VaeImageProcessor(do_normalize=False) does; ids decoded by codebook lookup",
            pixels=UNIT,
            paper="Lumina-DiMOO: An Omni Diffusion Large Language Model for Multi-Modal Generation and Understanding, "
            "arXiv:2510.06308"),
    Release("movqgan-270m", "VQModel", "ai-forever/MoVQGAN", None, "see the model card", MOVQGAN_270M_CONFIG, 256,
            "float32", "SBER-MoVQGAN 270M (16384 codes of 4 at 8x, spatially normalised decoder), from the "
            "original movqgan_270M.ckpt", single_file="movqgan_270M.ckpt",
            paper=MOVQ_PAPER, published={"rfid": 0.686, "ssim": 0.741, "psnr": 27.037},
            published_source=MOVQGAN_README),
    Release("lumina-mgpt-2.0-movqgan", "VQModel", "ai-forever/MoVQGAN", None, "see the model card",
            MOVQGAN_270M_CONFIG, 768, "float32",
            "Lumina-mGPT 2.0's image tokenizer: movqgan_270M.ckpt at its 768 px (96x96 ids)",
            single_file="movqgan_270M.ckpt", artifact_name="movqgan-270m",
            paper="Lumina-mGPT 2.0 (Alpha-VLLM, 2025; github.com/Alpha-VLLM/Lumina-mGPT-2.0)"),
    Release("mar-kl16", "AutoencoderKL", "wusize/harmon", None, "MIT", MAR_KL16_CONFIG, 256, "float32",
            "MAR's KL-16 VAE (16 channels at 16x; MAR and Harmon generate in its latent space, times 0.2325), "
            "from the original kl16.ckpt", single_file="kl16.ckpt",
            paper="Li et al., Autoregressive Image Generation without Vector Quantization, NeurIPS 2024"),
)  # fmt: skip
RELEASE_BY_NAME = {r.name: r for r in RELEASES}
DEFAULT_VARIANT = "sd-vae-ft-mse"


def _variant(r: Release) -> Variant:
    channels, f = r.geometry
    spec = CLASSES[r.class_name]
    latent = f"{channels} x {r.resolution // f} x {r.resolution // f} at {r.resolution} px (f{f})"
    where = f"{r.repo_id}{'/' + r.subfolder if r.subfolder else ''}{'/' + r.single_file if r.single_file else ''}"
    return Variant(
        name=r.name,
        family=FAMILY_NAME,
        config={"_class_name": r.class_name, **r.config},
        weights=r.artifact(),
        resolution=r.resolution,
        description=f"{r.description}; {r.class_name}, {'ids' if spec.kind == 'vq' else 'latent'} {latent}; "
        f"{where}; {r.licence}{' (gated)' if r.gated else ''}; meant for {r.dtype}",
        paper=r.paper,
        published=r.published,
        published_source=r.published_source,
    )


VARIANTS = tuple(_variant(r) for r in RELEASES)


def build_on_meta(name: str) -> torch.nn.Module:
    """A released variant's full-size architecture on the meta device (no weights, no memory)."""
    r = RELEASE_BY_NAME[name]
    with torch.device("meta"):
        model = model_class(r.class_name).from_config(full_config(r.class_name, r.config))
    return model.to("meta")  # Cosmos clones its Haar wavelet buffers from a CPU table


# ---------------------------------------------------------------------------------------------------
# Original single-file layouts: Wan's .pth and taming/LDM .ckpt, mapped onto the diffusers classes
# ---------------------------------------------------------------------------------------------------

_WAN_BLOCK = (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
              ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))  # fmt: skip


def _wan_block(rest: str) -> str:
    for old, new in _WAN_BLOCK:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest  # attention (norm, to_qkv, proj) and resample (resample.1, time_conv) keep their names


def _wan_key(key: str, res_blocks: int, residual: bool) -> str:
    """One key of Wan's original VAE (wan/modules/vae2_1.py, vae2_2.py) -> AutoencoderKLWan's.

    Both versions: conv1/conv2 are the quant convs, `middle` is resnet/attention/resnet, `head` is norm +
    conv. Wan 2.1's encoder `downsamples` and decoder `upsamples` are flat lists (a level's residual blocks
    then its resample); Wan 2.2 (`is_residual`) nests them per level (`downsamples.i.downsamples.j`).
    """
    if key.startswith(("conv1.", "conv2.")):
        return ("quant_conv." if key.startswith("conv1.") else "post_quant_conv.") + key[6:]
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key
    name, _, rest = rest.partition(".")
    if name == "conv1":
        return f"{part}.conv_in.{rest}"
    if name == "head":
        index, _, rest = rest.partition(".")
        return f"{part}.{'norm_out' if index == '0' else 'conv_out'}.{rest}"
    if name == "middle":
        index, _, rest = rest.partition(".")
        where = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}.get(index)
        return f"{part}.mid_block.{where}.{_wan_block(rest)}" if where else key
    if name not in ("downsamples", "upsamples"):
        return key
    blocks = "down_blocks" if part == "encoder" else "up_blocks"
    index, _, rest = rest.partition(".")
    if residual:  # Wan 2.2: <level>.<down|up>samples.<j>.<block or resample>
        inner, _, rest = rest.partition(".")
        j, _, rest = rest.partition(".")
        if inner != name:
            return key
        if rest.startswith(("resample.", "time_conv.")):
            return f"{part}.{blocks}.{index}.{'downsampler' if part == 'encoder' else 'upsampler'}.{rest}"
        return f"{part}.{blocks}.{index}.resnets.{j}.{_wan_block(rest)}"
    if part == "encoder":  # Wan 2.1 encoder: the same flat list in diffusers
        return f"encoder.down_blocks.{index}.{_wan_block(rest)}"
    level, pos = divmod(int(index), res_blocks + 2)  # Wan 2.1 decoder: res_blocks + 1 blocks, then a resample
    if pos == res_blocks + 1:
        return f"decoder.up_blocks.{level}.upsamplers.0.{rest}"
    return f"decoder.up_blocks.{level}.resnets.{pos}.{_wan_block(rest)}"


def wan_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Wan's original VAE state dict (Wan2.1_VAE.pth, Wan2.2_VAE.pth) in AutoencoderKLWan's key names."""
    c = full_config("AutoencoderKLWan", config)
    if c["attn_scales"]:
        raise TokbenchError("Wan VAEs with attention inside their levels (attn_scales) are not mapped; the "
                            "released Wan 2.1 / 2.2 VAEs have none")
    return {_wan_key(k, int(c["num_res_blocks"]), bool(c["is_residual"])): v for k, v in state.items()}


_TAMING_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _taming_attention(rest: str) -> str:
    name, _, tail = rest.partition(".")
    if name == "norm":  # a GroupNorm (weight, bias), or MoVQ's SpatialNorm (norm_layer, conv_y, conv_b)
        return ("group_norm." if tail in ("weight", "bias") else "spatial_norm.") + tail
    return f"{_TAMING_ATTENTION.get(name, name)}.{tail}"


def _taming_resnet(rest: str) -> str:
    return rest.replace("nin_shortcut.", "conv_shortcut.", 1)


def _taming_key(key: str, levels: int) -> str:
    """One key of the taming/LDM autoencoder layout (taming-transformers, CompVis LDM, MAR's models/vae.py,
    MoVQGAN's movq_modules.py) -> diffusers' Encoder/Decoder (AutoencoderKL, VQModel). The decoder's
    `up.<i>` counts from the highest resolution, diffusers' `up_blocks` from the lowest."""
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv, quantize.embedding
    name, _, rest = rest.partition(".")
    if name == "norm_out":
        return f"{part}.conv_norm_out.{rest}"
    if name == "mid":
        block, _, rest = rest.partition(".")
        if block == "attn_1":
            return f"{part}.mid_block.attentions.0.{_taming_attention(rest)}"
        if block in ("block_1", "block_2"):
            return f"{part}.mid_block.resnets.{int(block[-1]) - 1}.{_taming_resnet(rest)}"
        return key
    if name not in ("down", "up"):
        return key  # conv_in, conv_out
    index, _, rest = rest.partition(".")
    i = int(index) if name == "down" else levels - 1 - int(index)
    blocks = f"{part}.{name}_blocks.{i}"
    kind, _, rest = rest.partition(".")
    if kind == "block":
        j, _, rest = rest.partition(".")
        return f"{blocks}.resnets.{j}.{_taming_resnet(rest)}"
    if kind == "attn":
        j, _, rest = rest.partition(".")
        return f"{blocks}.attentions.{j}.{_taming_attention(rest)}"
    if kind in ("downsample", "upsample"):
        return f"{blocks}.{kind}rs.0.{rest}"
    return key


def taming_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A taming/LDM-layout autoencoder state dict in diffusers' AutoencoderKL / VQModel key names (attention
    1x1 convolutions become the Linear weights diffusers' Attention holds)."""
    levels = len(config.get("up_block_types") or config.get("down_block_types") or ())
    if not levels:
        raise TokbenchError("the taming/LDM key map needs the config's down_block_types / up_block_types")
    out = {}
    for key, value in state.items():
        new = _taming_key(key, levels)
        attention = re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", new)
        if attention and value.ndim == 4 and tuple(value.shape[2:]) == (1, 1):
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


_WRAPPERS = ("state_dict", "model", "module")
_TRAINING_PREFIXES = ("loss.", "ema_", "model_ema.", "discriminator.")  # losses, EMA copies: not the model
_MODEL_PREFIXES = ("first_stage_model.", "vae.", "module.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an original checkpoint (.safetensors, or a torch file read with weights_only): a
    Lightning/DDP wrapper (`state_dict`, `model`, `module`) unwrapped, a model prefix (`first_stage_model.`)
    stripped, and training-only entries (loss networks, EMA copies) dropped, as the releases' own loaders
    do with strict=False."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one clear message
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise TokbenchError(
            f"could not read {path} as a checkpoint: {type(e).__name__}: {first}; tokbench reads torch files with "
            "weights_only=True (tensors, no arbitrary objects): if this is a trusted file in PyTorch's legacy .tar "
            "format or a training checkpoint holding other objects, re-save its state dict once as safetensors"
        ) from None
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[w] for w in _WRAPPERS if isinstance(state.get(w), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not state:
        raise TokbenchError(f"{path} holds no state dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not k.startswith(_TRAINING_PREFIXES)}
    if not any(k.startswith(("encoder.", "decoder.")) for k in tensors):
        for prefix in _MODEL_PREFIXES:
            if any(k.startswith(prefix + "encoder.") for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                break
    return tensors


KEY_MAPS = {"wan": wan_to_diffusers, "taming": taming_to_diffusers}


def single_file_layout(class_name: str, config: Mapping[str, Any]) -> str:
    """Which key map reads an original file of this class: diffusers' own `from_single_file` where it is
    exact ("ldm": AutoencoderKL without encoder attention), tokbench's elsewhere."""
    if class_name == "AutoencoderKLWan":
        return "wan"
    if class_name == "VQModel":
        return "taming"
    if class_name == "AutoencoderKL" and any("Attn" in t for t in config.get("down_block_types") or ()):
        return "taming"  # diffusers' convert_ldm_vae_checkpoint drops encoder down-block attentions
    return "ldm"


def load_mapped(path: Path, config: Mapping[str, Any], layout: str) -> torch.nn.Module:
    """An original checkpoint through tokbench's key map `layout`, loaded strictly into the diffusers class."""
    class_name = str(config["_class_name"])
    cls = model_class(class_name)
    state = KEY_MAPS[layout](read_state_dict(path), config)
    with _quiet_diffusers():
        model = cls.from_config(full_config(class_name, config))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = {"missing": [k for k in expected if k not in state],
                "unexpected": [k for k in state if k not in expected],
                "wrongly shaped": [k for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k}: {', '.join(v[:6])}" + (f" (+{len(v) - 6} more)" if len(v) > 6 else "")
                           for k, v in problems.items())  # fmt: skip
        raise TokbenchError(f"{path.name} ({layout} layout) does not fit the {class_name} config: {detail}; check "
                            "that the config belongs to these weights")
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------
# Loading: diffusers folders, original single files, random weights
# ---------------------------------------------------------------------------------------------------


def read_folder_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TokbenchError(f"could not read {path}: {e}") from None
    if not isinstance(config, dict) or "_class_name" not in config:
        raise TokbenchError(
            f"{path} is not a diffusers model config (no `_class_name`); pass a diffusers model folder "
            f"(config.json + {WEIGHTS_FILE})"
        )
    return config


def _check_loading_info(info: Mapping[str, Any], cls: type, source: str) -> None:
    ignored = getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or []
    unexpected = [k for k in info.get("unexpected_keys", []) if not any(re.search(p, k) for p in ignored)]
    problems = {
        "missing": list(info.get("missing_keys", [])),
        "unexpected": unexpected,
        "wrongly shaped": [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys", [])],
    }
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k}: {', '.join(v[:8])}" + (f" (+{len(v) - 8} more)" if len(v) > 8 else "")
                           for k, v in problems.items())  # fmt: skip
        raise TokbenchError(
            f"{source} does not fit its config ({cls.__name__}): {detail}; check that config.json belongs to "
            "these weights"
        )


def load_folder(folder: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A diffusers model folder (config.json + weights) through the class its config names, strictly."""
    config = read_folder_config(folder)
    cls = model_class(config["_class_name"])
    try:
        with _quiet_diffusers():  # a newer config's extra fields (Wan 2.2's clip_output) are only warned about
            model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                              low_cpu_mem_usage=False)  # fmt: skip
    except (OSError, ValueError, RuntimeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if "loading state_dict" in str(e) or "size mismatch" in str(e):
            raise TokbenchError(
                f"{folder} does not fit its config ({cls.__name__}): {' '.join(lines[1:4])[:600]}; check that "
                "config.json belongs to these weights"
            ) from None
        raise TokbenchError(f"diffusers could not load {folder}: {lines[0] if lines else type(e).__name__}") from None
    _check_loading_info(info, cls, str(folder))
    return model, config


def load_single_file(path: Path, config: Mapping[str, Any]) -> tuple[torch.nn.Module, str]:
    """An original-layout checkpoint with its diffusers config given here (nothing is downloaded): Wan's
    `.pth` and taming/LDM files through tokbench's key maps, CompVis LDM VAEs (e.g.
    `vae-ft-mse-840000-ema-pruned.safetensors`) through diffusers' `from_single_file`. Returns the model
    and the conversion used."""
    class_name = config.get("_class_name")
    cls = model_class(class_name)
    layout = single_file_layout(str(class_name), config)
    if layout in KEY_MAPS:
        return load_mapped(path, config, layout), f"tokbench's {layout} key map"
    if not hasattr(cls, "from_single_file"):
        raise TokbenchError(f"diffusers' {class_name} has no single-file loader; pass a diffusers folder instead")
    with tempfile.TemporaryDirectory(prefix="tokbench-diffusers-config-") as tmp:
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps(dict(config)))
        try:
            model = cls.from_single_file(str(path), config=tmp, local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise TokbenchError(
                f"diffusers could not read {path.name} as a single-file {class_name} checkpoint: "
                f"{str(e).splitlines()[0]}; check the config ({json.dumps({k: config[k] for k in list(config)[:4]})}...)"
            ) from None
    return model, "diffusers from_single_file"


def _is_diffusers_file(path: Path) -> bool:
    return path.name.startswith("diffusion_pytorch_model")


def _staged_folder(weights: Path, config: Mapping[str, Any], tmp: str) -> Path:
    """A temporary diffusers folder: `config` as config.json beside a link to the weights file."""
    folder = Path(tmp)
    (folder / CONFIG_FILE).write_text(json.dumps(dict(config)))
    (folder / weights.name).symlink_to(weights.resolve())
    return folder


def _release_config_path(artifact: Artifact, weights: Path) -> Path | None:
    """The release's config.json: beside the weights, or resolved (downloaded if allowed) like them."""
    beside = weights.parent / CONFIG_FILE
    if beside.is_file():
        return beside
    name = f"{Path(artifact.filename).parent}/{CONFIG_FILE}" if "/" in (artifact.filename or "") else CONFIG_FILE
    try:
        return resolve(artifact, filename=name)
    except WeightsUnavailable:
        return None


def _single(path: Path, config: Mapping[str, Any]) -> tuple[torch.nn.Module, dict[str, Any], dict[str, str]]:
    model, conversion = load_single_file(path, config)
    return model, dict(config), {"checkpoint": str(path), "layout": "single file", "conversion": conversion}


def _load(variant: Variant | None, weights: str | Path | None, user_config: dict[str, Any]):
    """(model, config, where it came from) for every accepted kind of `weights`."""
    release = RELEASE_BY_NAME.get(variant.name) if variant is not None else None
    if weights is None:
        if release is None:
            raise TokbenchError(f"{FAMILY_NAME} needs weights=DIR (a diffusers folder) or a variant name")
        artifact = release.artifact()
        path = resolve(artifact)
        if release.single_file:
            return _single(path, user_config or {"_class_name": release.class_name, **release.config})
        found = _release_config_path(artifact, path)
        if found is not None and found.parent == path.parent:
            model, config = load_folder(path.parent)
            return model, config, {"checkpoint": str(path), "layout": "diffusers", "config": str(found)}
        if found is not None:
            config, where = read_folder_config(found.parent), str(found)
        elif release.config_complete:
            config, where = {"_class_name": release.class_name, **release.config}, "tokbench release table"
        else:
            raise WeightsUnavailable(
                f"weights for {release.name!r} were found at {path}, but not the release's {CONFIG_FILE}, which "
                f"holds data this table does not ({release.class_name} latent statistics): put "
                f"{CONFIG_FILE} from {artifact.source.split(' ')[0]} beside the weights"
            )
        with tempfile.TemporaryDirectory(prefix="tokbench-diffusers-") as tmp:
            model, config = load_folder(_staged_folder(path, config, tmp))
        return model, config, {"checkpoint": str(path), "layout": "diffusers", "config": where}

    path = Path(weights).expanduser()
    if path.is_dir() and release is not None and release.single_file and (path / release.single_file).is_file():
        path = path / release.single_file  # a folder holding the release's original file
    if path.is_dir() and user_config:
        raise TokbenchError(
            f"{path} is a diffusers folder: its {CONFIG_FILE} defines the model, so config= is not used; edit "
            "that file, or pass config= with a single weights file"
        )
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise TokbenchError(
                f"{path} has no {CONFIG_FILE}; a diffusers model folder holds config.json and {WEIGHTS_FILE} "
                "(for a pipeline, pass its vae/ subfolder)"
            )
        model, config = load_folder(path)
        return model, config, {"checkpoint": str(path), "layout": "diffusers", "config": str(path / CONFIG_FILE)}
    if not path.is_file():
        raise TokbenchError(
            f"weights {str(path)!r} do not exist; pass a diffusers model folder (config.json + {WEIGHTS_FILE}) "
            "or an original single-file checkpoint with config=..."
        )
    if _is_diffusers_file(path) and (path.parent / CONFIG_FILE).is_file():
        model, config = load_folder(path.parent)
        return model, config, {"checkpoint": str(path), "layout": "diffusers", "config": str(path.parent / CONFIG_FILE)}
    config = dict(user_config)
    if not config and (path.parent / CONFIG_FILE).is_file():
        config = read_folder_config(path.parent)
    if not config and release is not None:  # a released variant's file: the table's config
        config = {"_class_name": release.class_name, **release.config}
    if "_class_name" not in config:
        raise TokbenchError(
            f"{path.name} is a single file: tokbench needs its diffusers config to build the model; pass "
            "config=<diffusers config.json or dict with _class_name>, or load a variant such as "
            "'sd-vae-ft-mse-original', 'wan2.1-vae-original', 'movqgan-270m' or 'mar-kl16' with weights=FILE"
        )
    if _is_diffusers_file(path):
        with tempfile.TemporaryDirectory(prefix="tokbench-diffusers-") as tmp:
            model, config = load_folder(_staged_folder(path, config, tmp))
        return model, config, {"checkpoint": str(path), "layout": "diffusers", "config": "given"}
    return _single(path, config)


# ---------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _tensor(values: Any, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return t.view(1, -1, 1, 1) if t.ndim else t


class DiffusersVAETokenizer(ModuleTokenizer):
    """A diffusers autoencoder as a tokenizer: [0, 1] images <-> normalised latents (B, h*w, C) or VQ ids.

    Continuous classes return `Tokens.features` row-major over the latent grid, in the space the release's
    diffusion model sees (see `latent_normalisation`); decode inverts that normalisation exactly. Video
    VAEs see each image as a one-frame video. `sample` draws from the KL posterior with a generator
    re-seeded with `seed` at every batch (so a resumed or re-run job draws the same noise); otherwise the
    posterior mode is used. `pixels` is the range the autoencoder is fed ([-1, 1] or [0, 1]).
    """

    def __init__(self, model: torch.nn.Module, config: Mapping[str, Any], spec: TokenizerSpec,
                 dtype: torch.dtype, storage_bits: int, sample: bool, seed: int, pixels: str = SIGNED) -> None:  # fmt: skip
        super().__init__()
        with _quiet_diffusers():  # `.to(dtype)` warns about fp32 modules that these classes do not have
            self.model = model.eval().requires_grad_(False).to(dtype)
        self.class_name = str(config["_class_name"])
        self.config = full_config(self.class_name, config)
        self.class_spec = CLASSES[self.class_name]
        self.kind = self.class_spec.kind
        self.dtype = dtype
        self.spec = spec
        self.storage_bits = storage_bits
        self.sample = sample
        self.seed = seed
        self.pixels = pixels
        self.channels, self.downsample = latent_geometry(self.class_name, config)
        self.statistics = latent_statistics(self.class_name, config)

    # -- latent normalisation (the release pipeline's), as a pair of exact inverses --------------
    def _flux2_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.model.bn
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.config["batch_norm_eps"]).to(like.dtype)
        return bn.running_mean.view(1, -1, 1, 1).to(like.dtype), std

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        if self.class_name == "AutoencoderKLFlux2":
            b, ch, h, w = z.shape
            z = z.view(b, ch, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, ch * 4, h // 2, w // 2)
            mean, std = self._flux2_statistics(z)
            return (z - mean) / std
        if self.statistics is None:  # RAE normalises and scales inside encode/decode
            return z
        mean, std, scale = self.statistics
        return (z - _tensor(mean, z)) * scale / _tensor(std, z)

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        if self.class_name == "AutoencoderKLFlux2":
            mean, std = self._flux2_statistics(z)
            z = z * std + mean
            b, ch, h, w = z.shape
            return z.reshape(b, ch // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, ch // 4, h * 2, w * 2)
        if self.statistics is None:
            return z
        mean, std, scale = self.statistics
        return z * _tensor(std, z) / scale + _tensor(mean, z)

    # -- the class-specific calls ------------------------------------------------------------------
    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.pixels == SIGNED:
            x = x * 2 - 1
        x = x.to(self.dtype)
        return x.unsqueeze(2) if self.class_spec.video else x

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def _raw_latent(self, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self.model.encode(x), self.class_spec.latent)
        if self.class_spec.latent == "latent_dist":
            out = out.sample(generator=self._generator()) if self.sample and self.kind == "kl" else out.mode()
        return out[:, :, 0] if self.class_spec.video else out

    def _decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        if self.class_spec.video:
            return self.model.decode(z.unsqueeze(2)).sample[:, :, 0]
        return self.model.decode(z).sample

    def _check_size(self, images: torch.Tensor) -> None:
        h, w = images.shape[-2:]
        res = self.spec.resolution
        if self.class_name == "AutoencoderRAE" and (h, w) != (res, res):
            raise TokbenchError(
                f"{self.spec.name} decodes to {res}x{res} whatever it encodes (the encoder resizes to "
                f"{self.config['encoder_input_size']}), so inputs must be {res}x{res}, got {h}x{w}"
            )
        f = self.downsample  # FLUX.2: 8 for the encoder times 2 for the pipeline's patchify; Wan 2.2: 2 x 8
        if self.class_name != "AutoencoderRAE" and (h % f or w % f):
            raise TokbenchError(
                f"{self.spec.name} needs image sides that are multiples of {f} (its latent grid step), got "
                f"{h}x{w}; diffusers' pipelines round each side down to such a multiple and resize "
                f"(VaeImageProcessor): resize to {h - h % f}x{w - w % f}, or preprocess to {res}x{res} "
                f"(protocol '{self.spec.preprocessing}')"
            )

    def _non_finite(self, what: str) -> TokbenchError:
        name = str(self.dtype).replace("torch.", "")
        fix = "float32 (or bfloat16)" if name == "float16" else "float32"
        hint = "; for SDXL's VAE in float16 use the variant sdxl-vae-fp16-fix" if name == "float16" else ""
        return TokbenchError(
            f"{self.spec.name} produced non-finite {what} in {name} (activations overflow this dtype); "
            f"run it with dtype: {fix}{hint}"
        )

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        check_images(images)
        self._check_size(images)
        z = self._raw_latent(self._model_input(images))
        size = {"size": tuple(int(s) for s in images.shape[-2:]), "dtype": str(self.dtype).replace("torch.", "")}
        if self.kind == "vq":
            _, _, (_, _, ids) = self.model.quantize(z)
            b, _, h, w = z.shape
            return Tokens(ids=ids.view(b, h * w), grid=(h, w), codebook_size=self.codebook_size, meta=size)
        z = self._normalise(z)
        if not torch.isfinite(z).all():
            raise self._non_finite("latents")
        b, c, h, w = z.shape
        features = z.permute(0, 2, 3, 1).reshape(b, h * w, c).float()
        bits = torch.full((b,), float(h * w * c * self.storage_bits), dtype=torch.float64)
        meta = {**size, "latent_values": h * w * c, "storage_bits": self.storage_bits,
                "rate_convention": RATE_CONVENTION.format(bits=self.storage_bits),
                "posterior": f"sample, seed {self.seed}" if self.sample else "mode"}  # fmt: skip
        return Tokens(features=features, grid=(h, w), bits=bits, meta=meta)

    @property
    def codebook_size(self) -> int:
        return int(self.config["num_vq_embeddings"])

    def _latent_grid(self, tokens: Tokens) -> torch.Tensor:
        if tokens.features is None:
            raise TokbenchError(f"{self.spec.name} decodes continuous Tokens.features; got ids")
        x = tokens.features.to(self.device)
        if x.ndim != 3 or x.shape[2] != self.channels:
            raise TokbenchError(
                f"{self.spec.name} decodes features of shape (B, h*w, {self.channels}), got {tuple(x.shape)}"
            )
        grid = tokens.grid or (math.isqrt(x.shape[1]),) * 2
        if grid[0] * grid[1] != x.shape[1]:
            raise TokbenchError(f"Tokens.grid {grid} does not match {x.shape[1]} latent positions")
        return x.view(x.shape[0], grid[0], grid[1], self.channels).permute(0, 3, 1, 2).float()

    def _decode_ids(self, tokens: Tokens) -> torch.Tensor:
        if tokens.ids is None:
            raise TokbenchError(f"{self.spec.name} decodes VQ ids; got continuous Tokens.features")
        ids = tokens.ids.to(self.device).long()
        b, n = ids.shape
        grid = tokens.grid or (math.isqrt(n),) * 2
        if grid[0] * grid[1] != n:
            raise TokbenchError(f"Tokens.grid {grid} does not match {n} ids per image")
        if n and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise TokbenchError(f"token ids must lie in [0, {self.codebook_size}), got [{int(ids.min())}, {int(ids.max())}]")
        shape = (b, grid[0], grid[1], self.channels)
        if self.config.get("lookup_from_codebook"):  # decode looks the ids up itself (Lumina-DiMOO's call)
            return self.model.decode(ids.view(b, grid[0], grid[1]), force_not_quantize=True, shape=shape).sample
        quant = self.model.quantize.get_codebook_entry(ids.reshape(-1), shape).to(self.dtype)
        # the codebook vectors, decoded without quantising again (diffusers' decode(h) path for quantised h)
        return self.model.decode(quant, force_not_quantize=True).sample

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if self.kind == "vq":
            x = self._decode_ids(tokens)
        else:
            x = self._decode_latent(self._denormalise(self._latent_grid(tokens)).to(self.dtype))
        x = x.float()
        if not torch.isfinite(x).all():
            raise self._non_finite("reconstructions")
        if self.pixels == UNIT:
            return x.clamp(0, 1)
        return ((x + 1) / 2).clamp(0, 1)

    # understanding: token features for the probes (tokbench.features)
    @property
    def feature_stages(self) -> tuple[str, ...]:
        return ("pre_quant", "post_quant") if self.kind == "vq" else ("post_quant",)

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str | None = None) -> torch.Tensor:
        """(B, h*w, C) float32, row-major. Continuous classes: `post_quant`, the normalised latent `encode`
        returns (the tokens; posterior mode, or the seeded sample with `sample`). VQModel: `pre_quant` the
        quantiser input (quant_conv output), `post_quant` the codebook rows of the ids (the decoder's input)."""
        stage = stage or self.feature_stages[0]
        check_stage(self, stage)
        if self.kind != "vq":
            return self.encode(images).features
        check_images(images)
        self._check_size(images)
        z = self._raw_latent(self._model_input(images))
        if stage == "post_quant":
            b, c, h, w = z.shape
            _, _, (_, _, ids) = self.model.quantize(z)  # as encode
            z = self.model.quantize.get_codebook_entry(ids.reshape(-1), (b, h, w, c))
        return grid_tokens(z)


# ---------------------------------------------------------------------------------------------------
# Build and family
# ---------------------------------------------------------------------------------------------------


def _pixel_range(class_name: str, release: Release | None, option: str | None) -> str:
    native = CLASSES[class_name].pixels
    if class_name == "AutoencoderRAE":
        if option not in (None, native):
            raise TokbenchError(f"{class_name} takes {native} images (it normalises them itself); pixel_range "
                                f"{option!r} does not apply")
        return native
    return option or (release.pixels if release is not None and release.pixels else native)


def build(b: Build) -> DiffusersVAETokenizer:
    """Load a diffusers autoencoder (a folder, an original single file, a released variant or random weights).

    `sample` draws from the KL posterior instead of taking its mode, with `seed` (default: torch's
    initial seed, which `tokbench run` sets to the suite's seed); `storage_bits` is the precision at which
    continuous latent values are counted in the rate (bits per pixel); `pixel_range` the range images are
    fed in (default: the release's, else [-1, 1]; Lumina-DiMOO's aMUSEd VQ takes [0, 1]).
    """
    variant, weights = b.variant, b.weights
    dtype, sample, seed, storage_bits = b.dtype, bool(b.option("sample", False)), b.option("seed"), b.option(
        "storage_bits", DEFAULT_STORAGE_BITS)
    release = RELEASE_BY_NAME.get(variant.name) if variant is not None else None
    variant_config = dict(variant.config) if variant is not None else {}
    user_config = dict(b.config)
    given_config = user_config != variant_config
    if b.random_weights:
        if release is None and "_class_name" not in user_config:
            release = RELEASE_BY_NAME[DEFAULT_VARIANT]
            user_config = {"_class_name": release.class_name, **release.config}
        class_name = user_config.get("_class_name")
        model = b.model(lambda: model_class(class_name).from_config(full_config(class_name, user_config)),
                        lambda m, p: None, "", library_init=True)
        cfg, source = {"_class_name": class_name, **user_config}, {"layout": "none"}
    else:
        model, cfg, source = _load(variant, weights, user_config if given_config else {})
    class_name = str(cfg["_class_name"])
    channels, f = latent_geometry(class_name, cfg)
    full = full_config(class_name, cfg)
    if class_name == "AutoencoderRAE":
        native = int(full.get("image_size") or f * (full["encoder_input_size"] // full["encoder_patch_size"]))
    else:
        native = int(full.get("sample_size") or full.get("resolution") or 256)
        native = native if native % f == 0 else f * max(1, native // f)
    resolution = int(b.option("resolution") or (release.resolution if release else native))
    if class_name == "AutoencoderRAE" and resolution != native:
        raise TokbenchError(f"{class_name} decodes to {native} px; resolution must be {native}, got {resolution}")
    if resolution % f:
        raise TokbenchError(f"resolution must be a multiple of {f} (the downsample factor), got {resolution}")
    pixels = _pixel_range(class_name, release, b.option("pixel_range"))
    stats = latent_statistics(class_name, cfg)
    for what, values in zip(("latents_mean", "latents_std"), stats[:2] if stats else ()):
        if isinstance(values, list) and len(values) != channels:
            raise TokbenchError(f"the config's {what} has {len(values)} values (per frame for Cosmos) for {channels} "
                                f"latent channels; fix config.json so the pipeline's normalisation is defined")
    side = resolution // f
    seed = int(torch.initial_seed() if seed is None else seed)
    import diffusers

    b.source.update({k: str(v) for k, v in source.items()})
    b.source["model"] = f"diffusers {diffusers.__version__} {class_name}"
    if release is not None:
        b.source["release"] = release.artifact().source
    spec_of_class = CLASSES[class_name]
    kind = spec_of_class.kind
    notes = b.notes
    if kind == "vq":
        codebook = int(full["num_vq_embeddings"])
        notes.append(f"{class_name}: ids of {codebook} codes on a {side}x{side} grid at {resolution} (f{f})")
    else:
        codebook = None
        notes.append(
            f"{class_name}: {channels}-value latents on a {side}x{side} grid at {resolution} (f{f}); normalisation "
            f"{latent_normalisation(class_name, cfg)}; "
            + (f"posterior sample (seed {seed}, re-seeded each batch)" if sample and kind == "kl" else
               "posterior mode" if kind == "kl" else "deterministic encoder")
        )
        notes.append("rate: " + RATE_CONVENTION.format(bits=storage_bits))
    if spec_of_class.video:
        notes.append(VIDEO_NOTE)
    if pixels == UNIT and class_name != "AutoencoderRAE":
        notes.append("images fed in [0, 1] (no x * 2 - 1), reconstructions clipped to [0, 1]")
    if sample and kind != "kl":
        raise TokbenchError(f"sample: true needs a KL posterior; {class_name} encodes deterministically")
    if release is not None and release.dtype != dtype:
        notes.append(f"the release is meant for {release.dtype}; measured in {dtype}")
    if full.get("force_upcast") and dtype == "float16":
        notes.append("config says force_upcast (its pipelines decode in float32); tokbench measures float16 as asked")
    spec = b.spec(
        resolution=resolution,
        tokens_per_image=side * side,
        codebook_size=codebook,
        bits_per_token=bits_for(codebook) if codebook else float(channels * storage_bits),
        normalisation="[0, 1] (ImageNet mean/std inside the model)" if class_name == "AutoencoderRAE"
        else "[0, 1]" if pixels == UNIT else "[-1, 1] (x * 2 - 1)",
        preprocessing="resize-crop",
    )
    return DiffusersVAETokenizer(model, cfg, spec, b.torch_dtype, storage_bits, sample, seed, pixels)


FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    convolutional=True,
    variants=VARIANTS,
    aliases=("diffusers",),
    description="latent-diffusion and unified-model autoencoders through diffusers (SD/SDXL/SD3.5/FLUX/Qwen-Image, "
    "Wan 2.1/2.2, HunyuanImage 2.1, Cosmos, KVAE VAEs, DC-AE, RAE, TAESD, MoVQ/MoVQGAN, aMUSEd VQ, MAR KL-16); "
    "continuous latents as features",
    default_variant=DEFAULT_VARIANT,
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt, "sample": (bool, False), "seed": int,
                   "storage_bits": (PositiveInt, DEFAULT_STORAGE_BITS), "pixel_range": PixelRange},
    code="https://github.com/huggingface/diffusers (the releases' own classes)",
    packages=("diffusers",),
)
