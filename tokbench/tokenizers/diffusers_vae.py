"""Latent-diffusion autoencoders hosted by diffusers: SD / SDXL (JanusFlow) / SD3.5 / FLUX.1 / FLUX.2 /
Qwen-Image VAEs, DC-AE, RAE, TAESD and Kandinsky's MoVQ.

diffusers is the official code of these releases, so this module only wraps its classes
(`AutoencoderKL`, `AutoencoderKLFlux2`, `AutoencoderKLQwenImage`, `AutoencoderDC`, `AutoencoderRAE`,
`AutoencoderTiny`, `VQModel`): the class comes from the folder's own `config.json` (`_class_name`), the
released variants are a table of repo, subfolder, licence, latent geometry and latent normalisation.
What is ours: [0, 1] images in and out, the latent normalisation the release's own pipeline applies
(scaling/shift, per-channel mean/std, FLUX.2's batch-norm statistics) done symmetrically in encode and
decode, the rate convention for continuous latents, and a clear error for non-finite reconstructions.

Continuous latents have no codebook. tokbench's rate convention (`RATE_CONVENTION`): an image costs its
C x h x w latent values, each stored at `storage_bits` bits (16 by default: the half-precision tensors
these latents are kept in); no quantisation or entropy coding is applied, so this is a storage size,
not a compressed rate. Reports label it and draw these tokenizers apart from VQ bit rates.
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
from typing import Any

import torch

from ..building import Build
from ..core import ModuleTokenizer, TokbenchError, TokenizerSpec, Tokens, bits_for, check_images
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

# The diffusers classes this family wraps, and whether the latent is a Gaussian posterior ("kl"), a
# deterministic code ("deterministic") or vector-quantised ids ("vq").
CLASSES = {
    "AutoencoderKL": "kl",
    "AutoencoderKLFlux2": "kl",
    "AutoencoderKLQwenImage": "kl",
    "AutoencoderDC": "deterministic",
    "AutoencoderRAE": "deterministic",
    "AutoencoderTiny": "deterministic",
    "VQModel": "vq",
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


def latent_geometry(class_name: str, config: Mapping[str, Any]) -> tuple[int, int]:
    """(latent values per grid position, pixels per grid position along a side) of a config.

    FLUX.2's grid is its pipeline's 2x2-patchified one (4 x 32 channels at 1/16); RAE's grid is the
    encoder's patch grid, one position per `patch_size` output pixels.
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
    if class_name in ("AutoencoderDC", "AutoencoderTiny"):
        return int(c["latent_channels"]), 2 ** (len(c["encoder_block_out_channels"]) - 1)
    if class_name == "AutoencoderRAE":
        return int(c["encoder_hidden_size"]), int(c["patch_size"])
    raise TokbenchError(f"no latent geometry for {class_name}")  # pragma: no cover - CLASSES is exhaustive


def latent_normalisation(class_name: str, config: Mapping[str, Any]) -> str:
    """How the release's pipeline maps the autoencoder's latent to the diffusion model's, in words."""
    c = full_config(class_name, config)
    if class_name == "AutoencoderKLFlux2":
        return "2x2 patchify, then (z - bn.running_mean) / sqrt(bn.running_var + batch_norm_eps) (FLUX.2 pipeline)"
    if class_name == "AutoencoderKLQwenImage":
        return "(z - latents_mean) / latents_std per channel (Qwen-Image pipeline)"
    if class_name == "AutoencoderRAE":
        return "inside the model: (z - latents_mean) / (latents_std + 1e-5), times scaling_factor"
    if class_name == "VQModel":
        return "none (ids of the codebook)"
    if c.get("latents_mean") is not None and c.get("latents_std") is not None:
        return f"(z - latents_mean) * {c.get('scaling_factor')} / latents_std per channel"
    shift = c.get("shift_factor") or 0.0
    return f"(z - {shift}) * {c.get('scaling_factor', 1.0)}"


# ---------------------------------------------------------------------------------------------------
# Released variants
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """One released autoencoder: where its diffusers folder lives and what it is.

    `config` is the release's config.json (diffusers constructor arguments; fields equal to the class
    default may be omitted); `single_file` names an original-layout checkpoint read through diffusers'
    `from_single_file` instead of a diffusers folder. `config_complete` is False where the table leaves
    out data the real config.json carries (RAE's latent statistics): loading then needs that file.
    `dtype` is the precision the release is meant to run in (tokbench measures float32 unless asked).
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
        return Artifact(name=name, repo_id=self.repo_id, filename=self.filename, licence=self.licence,
                        gated=self.gated, used_by=", ".join(users))


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

SD_CARD = (
    "Stability AI model cards (huggingface.co/stabilityai/sd-vae-ft-mse, /sdxl-vae): COCO 2017 val, 5000 images "
    "at 256x256; rFID / PSNR / SSIM means (PSNR and SSIM +/- std there); the cards do not name the FID, PSNR or "
    "SSIM implementation"
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
)  # fmt: skip
RELEASE_BY_NAME = {r.name: r for r in RELEASES}
DEFAULT_VARIANT = "sd-vae-ft-mse"


def _variant(r: Release) -> Variant:
    channels, f = r.geometry
    kind = CLASSES[r.class_name]
    latent = f"{channels} x {r.resolution // f} x {r.resolution // f} at {r.resolution} px (f{f})"
    return Variant(
        name=r.name,
        family=FAMILY_NAME,
        config={"_class_name": r.class_name, **r.config},
        weights=r.artifact(),
        resolution=r.resolution,
        description=f"{r.description}; {r.class_name}, {'ids' if kind == 'vq' else 'latent'} {latent}; "
        f"{r.repo_id}{'/' + r.subfolder if r.subfolder else ''}; {r.licence}{' (gated)' if r.gated else ''}; "
        f"meant for {r.dtype}",
        paper=r.paper,
        published=r.published,
        published_source=r.published_source,
    )


VARIANTS = tuple(_variant(r) for r in RELEASES)


def build_on_meta(name: str) -> torch.nn.Module:
    """A released variant's full-size architecture on the meta device (no weights, no memory)."""
    r = RELEASE_BY_NAME[name]
    with torch.device("meta"):
        return model_class(r.class_name).from_config(full_config(r.class_name, r.config))


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


def load_single_file(path: Path, config: Mapping[str, Any]) -> torch.nn.Module:
    """An original-layout checkpoint (e.g. CompVis `vae-ft-mse-840000-ema-pruned.safetensors`) through
    diffusers' `from_single_file`, offline: the diffusers config is given as a local folder, so diffusers
    neither guesses a repository nor downloads one."""
    class_name = config.get("_class_name")
    cls = model_class(class_name)
    if not hasattr(cls, "from_single_file"):
        raise TokbenchError(f"diffusers' {class_name} has no single-file loader; pass a diffusers folder instead")
    with tempfile.TemporaryDirectory(prefix="tokbench-diffusers-config-") as tmp:
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps(dict(config)))
        try:
            return cls.from_single_file(str(path), config=tmp, local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise TokbenchError(
                f"diffusers could not read {path.name} as a single-file {class_name} checkpoint: "
                f"{str(e).splitlines()[0]}; check the config ({json.dumps({k: config[k] for k in list(config)[:4]})}...)"
            ) from None


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


def _load(variant: Variant | None, weights: str | Path | None, user_config: dict[str, Any]):
    """(model, config, where it came from) for every accepted kind of `weights`."""
    release = RELEASE_BY_NAME.get(variant.name) if variant is not None else None
    if weights is None:
        if release is None:
            raise TokbenchError(f"{FAMILY_NAME} needs weights=DIR (a diffusers folder) or a variant name")
        artifact = release.artifact()
        path = resolve(artifact)
        if release.single_file:
            config = user_config or {"_class_name": release.class_name, **release.config}
            return load_single_file(path, config), config, {"checkpoint": str(path), "layout": "single file"}
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
            "'sd-vae-ft-mse-original' with weights=FILE"
        )
    if _is_diffusers_file(path):
        with tempfile.TemporaryDirectory(prefix="tokbench-diffusers-") as tmp:
            model, config = load_folder(_staged_folder(path, config, tmp))
        return model, config, {"checkpoint": str(path), "layout": "diffusers", "config": "given"}
    return load_single_file(path, config), config, {"checkpoint": str(path), "layout": "single file"}


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
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


class DiffusersVAETokenizer(ModuleTokenizer):
    """A diffusers autoencoder as a tokenizer: [0, 1] images <-> normalised latents (B, h*w, C) or VQ ids.

    Continuous classes return `Tokens.features` row-major over the latent grid, in the space the release's
    diffusion model sees (see `latent_normalisation`); decode inverts that normalisation exactly.
    `sample` draws from the KL posterior with a generator re-seeded with `seed` at every batch (so a
    resumed or re-run job draws the same noise); otherwise the posterior mode is used.
    """

    def __init__(self, model: torch.nn.Module, config: Mapping[str, Any], spec: TokenizerSpec,
                 dtype: torch.dtype, storage_bits: int, sample: bool, seed: int) -> None:  # fmt: skip
        super().__init__()
        with _quiet_diffusers():  # `.to(dtype)` warns about fp32 modules that these classes do not have
            self.model = model.eval().requires_grad_(False).to(dtype)
        self.class_name = str(config["_class_name"])
        self.config = full_config(self.class_name, config)
        self.kind = CLASSES[self.class_name]
        self.dtype = dtype
        self.spec = spec
        self.storage_bits = storage_bits
        self.sample = sample
        self.seed = seed
        self.channels, self.downsample = latent_geometry(self.class_name, config)

    # -- latent normalisation (the release pipeline's), as a pair of exact inverses --------------
    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.class_name == "AutoencoderKLFlux2":
            b, ch, h, w = z.shape
            z = z.view(b, ch, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, ch * 4, h // 2, w // 2)
            bn = self.model.bn
            std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + c["batch_norm_eps"]).to(z.dtype)
            return (z - bn.running_mean.view(1, -1, 1, 1).to(z.dtype)) / std
        if self.class_name == "AutoencoderKLQwenImage":
            return (z - _tensor(c["latents_mean"], z)) / _tensor(c["latents_std"], z)
        if self.class_name == "AutoencoderRAE":
            return z  # AutoencoderRAE normalises and scales inside encode/decode
        scale = c.get("scaling_factor", 1.0)
        if c.get("latents_mean") is not None and c.get("latents_std") is not None:
            return (z - _tensor(c["latents_mean"], z)) * scale / _tensor(c["latents_std"], z)
        return (z - (c.get("shift_factor") or 0.0)) * scale

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.class_name == "AutoencoderKLFlux2":
            bn = self.model.bn
            std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + c["batch_norm_eps"]).to(z.dtype)
            z = z * std + bn.running_mean.view(1, -1, 1, 1).to(z.dtype)
            b, ch, h, w = z.shape
            return z.reshape(b, ch // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, ch // 4, h * 2, w * 2)
        if self.class_name == "AutoencoderKLQwenImage":
            return z * _tensor(c["latents_std"], z) + _tensor(c["latents_mean"], z)
        if self.class_name == "AutoencoderRAE":
            return z
        scale = c.get("scaling_factor", 1.0)
        if c.get("latents_mean") is not None and c.get("latents_std") is not None:
            return z * _tensor(c["latents_std"], z) / scale + _tensor(c["latents_mean"], z)
        return z / scale + (c.get("shift_factor") or 0.0)

    # -- the class-specific calls ------------------------------------------------------------------
    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.class_name != "AutoencoderRAE":  # RAE takes [0, 1] and applies ImageNet mean/std itself
            x = x * 2 - 1
        x = x.to(self.dtype)
        return x.unsqueeze(2) if self.class_name == "AutoencoderKLQwenImage" else x

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def _raw_latent(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(x)
        if self.kind == "kl":
            dist = out.latent_dist
            z = dist.sample(generator=self._generator()) if self.sample else dist.mode()
        elif self.class_name == "AutoencoderTiny":
            z = out.latents
        elif self.class_name == "VQModel":
            z = out.latents
        else:  # AutoencoderDC, AutoencoderRAE
            z = out.latent
        return z[:, :, 0] if self.class_name == "AutoencoderKLQwenImage" else z

    def _check_size(self, images: torch.Tensor) -> None:
        h, w = images.shape[-2:]
        res = self.spec.resolution
        if self.class_name == "AutoencoderRAE" and (h, w) != (res, res):
            raise TokbenchError(
                f"{self.spec.name} decodes to {res}x{res} whatever it encodes (the encoder resizes to "
                f"{self.config['encoder_input_size']}), so inputs must be {res}x{res}, got {h}x{w}"
            )
        f = self.downsample  # FLUX.2: 8 for the encoder times 2 for the pipeline's patchify
        if self.class_name != "AutoencoderRAE" and (h % f or w % f):
            raise TokbenchError(
                f"{self.spec.name} needs image sides divisible by {f} (its downsample factor), got {h}x{w}; "
                f"preprocess to {res}x{res} (protocol '{self.spec.preprocessing}')"
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
        return x.view(x.shape[0], grid[0], grid[1], self.channels).permute(0, 3, 1, 2).to(self.dtype)

    def _vq_quant(self, tokens: Tokens) -> torch.Tensor:
        if tokens.ids is None:
            raise TokbenchError(f"{self.spec.name} decodes VQ ids; got continuous Tokens.features")
        ids = tokens.ids.to(self.device).long()
        b, n = ids.shape
        grid = tokens.grid or (math.isqrt(n),) * 2
        if grid[0] * grid[1] != n:
            raise TokbenchError(f"Tokens.grid {grid} does not match {n} ids per image")
        if n and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise TokbenchError(f"token ids must lie in [0, {self.codebook_size}), got [{int(ids.min())}, {int(ids.max())}]")
        return self.model.quantize.get_codebook_entry(ids.reshape(-1), (b, grid[0], grid[1], self.channels))

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if self.kind == "vq":
            # the codebook vectors, decoded without quantising again (diffusers' decode(h) path for quantised h)
            x = self.model.decode(self._vq_quant(tokens).to(self.dtype), force_not_quantize=True).sample
        else:
            z = self._denormalise(self._latent_grid(tokens))
            if self.class_name == "AutoencoderKLQwenImage":
                x = self.model.decode(z.unsqueeze(2)).sample[:, :, 0]
            else:
                x = self.model.decode(z).sample
        x = x.float()
        if not torch.isfinite(x).all():
            raise self._non_finite("reconstructions")
        if self.class_name == "AutoencoderRAE":
            return x.clamp(0, 1)
        return ((x + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------
# Build and family
# ---------------------------------------------------------------------------------------------------


def build(b: Build) -> DiffusersVAETokenizer:
    """Load a diffusers autoencoder (a folder, an original single file, a released variant or random weights).

    `sample` draws from the KL posterior instead of taking its mode, with `seed` (default: torch's
    initial seed, which `tokbench run` sets to the suite's seed); `storage_bits` is the precision at which
    continuous latent values are counted in the rate (bits per pixel).
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
        native = int(full.get("sample_size") or 256)
    resolution = int(b.option("resolution") or (release.resolution if release else native))
    if class_name == "AutoencoderRAE" and resolution != native:
        raise TokbenchError(f"{class_name} decodes to {native} px; resolution must be {native}, got {resolution}")
    if resolution % f:
        raise TokbenchError(f"resolution must be a multiple of {f} (the downsample factor), got {resolution}")
    side = resolution // f
    seed = int(torch.initial_seed() if seed is None else seed)
    import diffusers

    b.source.update({k: str(v) for k, v in source.items()})
    b.source["model"] = f"diffusers {diffusers.__version__} {class_name}"
    if release is not None:
        b.source["release"] = release.artifact().source
    kind = CLASSES[class_name]
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
        else "[-1, 1] (x * 2 - 1)",
        preprocessing="resize-crop",
    )
    return DiffusersVAETokenizer(model, cfg, spec, b.torch_dtype, storage_bits, sample, seed)


FAMILY = Family(
    name=FAMILY_NAME,
    build=build,
    convolutional=True,
    variants=VARIANTS,
    aliases=("diffusers",),
    description="latent-diffusion autoencoders through diffusers (SD/SDXL/SD3.5/FLUX/Qwen-Image VAEs, DC-AE, RAE, "
    "TAESD, MoVQ); continuous latents as features",
    default_variant=DEFAULT_VARIANT,
    build_options={"dtype": (DType, "float32"), "resolution": PositiveInt, "sample": (bool, False), "seed": int,
                   "storage_bits": (PositiveInt, DEFAULT_STORAGE_BITS)},
    code="https://github.com/huggingface/diffusers (the releases' own classes)",
)
