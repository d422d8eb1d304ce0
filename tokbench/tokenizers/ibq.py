"""IBQ (Index Backpropagation Quantization): TencentARC's VQGAN tokenizers with up to 262,144 codes.

Written from the official code (TencentARC/SEED-Voken, `src/IBQ/models/ibqgan.py`,
`modules/vqvae/quantize.py::IndexPropagationQuantize`, `modules/diffusionmodules/model.py`). The encoder
and decoder are taming-transformers' VQGAN ones, the same computation and key names as Chameleon's
tokenizer, so they are reused from `chameleon.py` (transformers' `ChameleonVQVAEEncoder` + our taming
`Decoder`; attention at the levels whose nominal side `resolution / 2^i` is in `attn_resolutions`).
What differs is the quantiser, written here: the id is the argmax of the INNER PRODUCT z . e over the
codebook (no |e|^2 term, no normalisation), which picks other codes than the nearest neighbour. Its
training-only entropy terms (a (B*h*w) x 262,144 softmax) are never computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..building import refuse_unknown
from ..core import TokbenchError
from ..features import check_stage, grid_tokens, grid_vq_input
from ..options import DType, PositiveInt
from ..registry import Variant
from ..weights import Artifact, register_artifact
from .chameleon import ChameleonVQGAN, VQGANConfig, vqgan_config
from .seed_voken import TRAINING_ARGS, SeedVokenFamily, SeedVokenTokenizer, constructor_args

FAMILY_NAME = "ibq"
# Positions whose logits over the codebook are formed at once: ~128 MiB of float32 at any codebook size.
_LOGIT_ELEMENTS = 1 << 25

# IBQ(**init_args) keywords with no effect on an IBQ model's outputs (IndexPropagationQuantize ignores
# `l2_normalize` and never reads `cosine_similarity`).
_NO_EFFECT = {"l2_normalize", "cosine_similarity"}
_IGNORED_DDCONFIG = ("tanh_out", "attn_type", "use_linear_attn")


def ibq_config(config: Mapping[str, Any] | None) -> tuple[VQGANConfig, bool | None]:
    """(taming VQGAN config, the config's `use_ema`) from the official YAML / config.json (`model.init_args`)
    or the constructor keywords. Empty: the released IBQ-262144. Training-only keywords are ignored."""
    args, class_path = constructor_args(dict(config or {}) or RELEASE_262144)
    if class_path is not None and "IBQ" not in class_path and "ibqgan" not in class_path:
        raise TokbenchError(
            f"the config builds {class_path!r}, not IBQ (src.IBQ.models.ibqgan.IBQ); "
            + ("load it with 'open-magvit2'" if "MAGVIT" in class_path else "is this the right config?")
        )
    args = {k: v for k, v in args.items() if k not in TRAINING_ARGS and k not in _NO_EFFECT}
    use_ema = args.pop("use_ema", None)
    if args.pop("remap", None) is not None:
        raise TokbenchError("IBQ remap (index remapping to a used-code list) is not supported; no release uses it")
    refuse_unknown("ibq config keys", args, {"ddconfig", "n_embed", "embed_dim", "use_ema"},
                   "(training-only keywords are ignored)")
    dd = args.get("ddconfig")
    if isinstance(dd, Mapping):
        # IBQ's own model.py has no tanh_out / attn_type / use_linear_attn (always vanilla attention, no tanh)
        # and swallows them with **ignore_kwargs, so they must not reach the taming config, which honours them
        dropped = sorted(k for k in _IGNORED_DDCONFIG if k in dd)
        if dropped:
            warnings.warn(
                f"ibq: ignoring ddconfig keys {dropped} (the official IBQ Encoder/Decoder ignore them)", stacklevel=3
            )
            args["ddconfig"] = {k: v for k, v in dd.items() if k not in _IGNORED_DDCONFIG}
    return vqgan_config(args), use_ema


class IBQModel(ChameleonVQGAN):
    """ibqgan.IBQ for inference: taming encoder, `quant_conv`, index-propagation quantiser, `post_quant_conv`,
    taming decoder (keys as the release: `quantize.embedding.weight` (n_embed, embed_dim), ...)."""

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Quantiser input z (B, embed_dim, h, w) of images in [-1, 1]."""
        return self.quant_conv(self.encoder(x))

    @torch.no_grad()
    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> ids (B, H/f, W/f): argmax_n softmax(z . e_n), `IBQ.encode(x)[2][2]`.

        The search runs in float32 whatever the model dtype, in chunks of positions; the softmax is kept
        (as upstream, whose argmax is over the probabilities) although it only matters on float ties.
        """
        return self.ids_of(self.latent(x))

    @torch.no_grad()
    def ids_of(self, z: torch.Tensor) -> torch.Tensor:
        """Quantiser input z (B, embed_dim, h, w) -> ids (B, h, w) (the search of `encode_ids`)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        emb = self.quantize.embedding.weight.float()
        chunk = max(1, _LOGIT_ELEMENTS // emb.shape[0])
        ids = [F.softmax(part @ emb.t(), dim=1).argmax(dim=1) for part in flat.split(chunk)]
        return torch.cat(ids).view(b, h, w)


class IBQTokenizer(SeedVokenTokenizer):
    """IBQ: images [0, 1] (any H, W divisible by f) <-> ids (B, h*w), row-major (y, x).

    The model sees x * 2 - 1 (the official x / 127.5 - 1); decoded images are (x + 1) / 2 clamped to [0, 1].
    Decoding goes ids -> codebook rows -> decode (the official AR `decode_to_img` path; the upstream
    `VQModel.decode_code` is broken).
    """

    # understanding: token features for the probes (tokbench.features)
    feature_stages = ("pre_quant", "post_quant")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, stage: str = "pre_quant") -> torch.Tensor:
        """(B, h*w, embed_dim) float32, row-major: `pre_quant` the quantiser input quant_conv(encoder(x)),
        `post_quant` the codebook rows of the ids (the official `quant`, exactly the selected rows)."""
        check_stage(self, stage)
        z = self.model.latent(grid_vq_input(self, images))
        if stage == "post_quant":
            z = self.model.quantize.embedding(self.model.ids_of(z)).permute(0, 3, 1, 2)
        return grid_tokens(z)


# ---------------------------------------------------------------------------------------------------
# Released variants, build, family
# ---------------------------------------------------------------------------------------------------

PAPER = "Shi et al., Taming Scalable Visual Tokenizer for Autoregressive Image Generation (IBQ), arXiv:2412.02692"
LICENCE = "Apache-2.0 (SEED-Voken)"

RELEASE_262144: dict[str, Any] = {
    "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 4, "attn_resolutions": [16], "dropout": 0.0},
    "n_embed": 262144, "embed_dim": 256, "use_ema": True,
}  # fmt: skip
_IN1K = (
    "SEED-Voken docs/IBQ.md tokenizer table (evaluation_image.py: ImageNet val 50k at 256, albumentations "
    "SmallestMaxSize + CenterCrop, EMA weights; rFID with pytorch-fid's Inception on float reconstructions)"
)
_PRETRAIN = (
    "SEED-Voken docs/IBQ.md text-conditional table, ImageNet 256x256 (Open-MAGVIT2's torchvision Resize + "
    "CenterCrop validation pipeline)"
)


def _variant(codes: int, repo: str, filename: str, description: str, protocol: str, published: dict, source: str) -> Variant:
    name = f"ibq-{'pretrain-' if 'Pretrain' in repo else ''}{codes}"
    artifact = register_artifact(Artifact(name=name, repo_id=repo, filename=filename, licence=LICENCE, used_by=name))
    return Variant(
        name=name, family=FAMILY_NAME, config={**RELEASE_262144, "n_embed": codes}, weights=artifact,
        resolution=256, options={"protocol": protocol}, description=description, paper=PAPER,
        published=published, published_source=source,
    )  # fmt: skip


VARIANTS = (
    _variant(262144, "TencentARC/IBQ-Tokenizer-262144", "imagenet256_262144.ckpt",
             "IBQ tokenizer, ImageNet 256 px, 16x16 tokens of 262,144 codes", "ibq",
             {"rfid_pytorch_fid": 1.00}, _IN1K + ": rFID 1.00, LPIPS 0.2030, usage 84%"),
    _variant(16384, "TencentARC/IBQ-Tokenizer-16384", "imagenet256_16384.ckpt",
             "IBQ tokenizer, ImageNet 256 px, 16x16 tokens of 16,384 codes", "ibq",
             {"rfid_pytorch_fid": 1.37}, _IN1K + ": rFID 1.37, LPIPS 0.2235, usage 96%"),
    _variant(8192, "TencentARC/IBQ-Tokenizer-8192", "imagenet256_8192.ckpt",
             "IBQ tokenizer, ImageNet 256 px, 16x16 tokens of 8,192 codes", "ibq",
             {"rfid_pytorch_fid": 1.87}, _IN1K + ": rFID 1.87, LPIPS 0.2437, usage 98%"),
    _variant(1024, "TencentARC/IBQ-Tokenizer-1024", "imagenet256_1024.ckpt",
             "IBQ tokenizer, ImageNet 256 px, 16x16 tokens of 1,024 codes", "ibq",
             {"rfid_pytorch_fid": 2.24}, _IN1K + ": rFID 2.24, LPIPS 0.2580, usage 99%"),
    _variant(262144, "TencentARC/IBQ-Tokenizer-262144-Pretrain", "IBQ_pretrain_262144.ckpt",
             "IBQ tokenizer pretrained on ~200M web images (262,144 codes), for text-to-image", "open-magvit2",
             {"rfid_pytorch_fid": 1.53}, _PRETRAIN + ": rFID 1.53, PSNR 22.69, SSIM 0.64 (COCO: 6.79 / 22.28 / 0.65)"),
    _variant(16384, "TencentARC/IBQ-Tokenizer-16384-Pretrain", "IBQ_pretrain_16384.ckpt",
             "IBQ tokenizer pretrained on ~200M web images (16,384 codes), for text-to-image", "open-magvit2",
             {"rfid_pytorch_fid": 2.06}, _PRETRAIN + ": rFID 2.06, PSNR 22.01, SSIM 0.61 (COCO: 7.67 / 21.58 / 0.62)"),
)  # fmt: skip
DEFAULT_VARIANT = "ibq-262144"


def _is_ibq(keys: set[str]) -> bool:
    return "quantize.embedding.weight" in keys and "encoder.mid.block_1.conv1.weight" in keys


def attention_levels(cfg: VQGANConfig) -> tuple[list[int], list[int]]:
    """(encoder, decoder) levels with attention. taming's encoder halves `resolution` level by level while
    its decoder doubles `resolution // f` back up, so they disagree when `resolution` is not a multiple of
    f (e.g. 90 with f = 4: encoder sides 90, 45, 22; decoder 22, 44, 88)."""
    n, attn = len(cfg.ch_mult), set(cfg.attn_resolutions)
    enc = [i for i in range(n) if cfg.resolution // 2**i in attn]
    dec = [i for i in range(n) if cfg.resolution // 2 ** (n - 1) * 2 ** (n - 1 - i) in attn]
    return enc, dec


def _describe(cfg: VQGANConfig, side: int, resolution: int) -> str:
    enc, dec = attention_levels(cfg)
    where = f"levels {enc}" if enc == dec else f"encoder levels {enc}, decoder levels {dec}"
    return (
        f"taming VQGAN, downsample {cfg.downsample}, codebook {cfg.n_embed} x {cfg.embed_dim}, ids = argmax of the "
        f"inner product z.e (not the nearest code); attention at {where} and mid; ids row-major on a "
        f"{side}x{side} grid at {resolution}"
    )


# `protocol` names the preprocessing recorded in the spec (each variant's row sets its official one)
OPTIONS = {"dtype": (DType, "float32"), "resolution": PositiveInt, "ema": bool, "protocol": str}
BUILD = SeedVokenFamily(
    name=FAMILY_NAME, variants=VARIANTS, default_variant=DEFAULT_VARIANT, what="an IBQ",
    checkpoint_hint="an IBQ Lightning checkpoint such as imagenet256_262144.ckpt", parse=ibq_config,
    make_model=IBQModel, is_family=_is_ibq, describe=_describe, tokenizer=IBQTokenizer, preprocessing="ibq",
    default_resolution=lambda cfg: cfg.resolution, options=OPTIONS,
    packages=("opencv-python", "opencv-python-headless"),  # the `ibq` protocol's resize
)  # fmt: skip

FAMILY = BUILD.family(
    "IBQ (index backpropagation quantization) VQGAN tokenizers, 1,024 to 262,144 codes (TencentARC SEED-Voken)"
)
