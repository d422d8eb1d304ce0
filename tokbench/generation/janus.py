"""Janus / Janus-Pro text-to-image through transformers' `JanusForConditionalGeneration`.

What is ours: finding the checkpoint (transformers-format repos, or DeepSeek's original release whose
keys are renamed here into the transformers layout), the prompt (the chat template the processor does
not apply), and a sampling loop equal to the official `generation_inference.py` of deepseek-ai/Janus:

- prompt `<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>`, tokenised with BOS;
- classifier-free guidance: an unconditional row per sample keeping only the first (BOS) and last
  (`<begin_of_image>`) prompt tokens, every other position the pad token (attended, as upstream);
  logits = uncond + w * (cond - uncond), softmax(logits / temperature), multinomial over the FULL
  image vocabulary (no top-k: transformers' `generate` would apply top_k=50 unless given top_k=0);
- the next step's input is the sampled code's generation embedding (`gen_embed` + `gen_aligner`).

The loop is ours rather than `model.generate(generation_mode="image")` because every row draws from
its own `torch.Generator` (seeded per prompt and sample), so an image does not depend on which other
rows share its batch or on resuming. With one row it draws exactly what `generate(..., top_k=0)` does
from the same seed (tests/test_generation.py shows it).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import TokbenchError, torch_dtype
from ..weights import Artifact, WeightsUnavailable, resolve_snapshot, weights_dir

# transformers 5.0-5.4 feed the prompt ids instead of the image embeddings after the first step of
# Janus image generation (transformers issue 44792, fixed in 5.5.0); Janus itself ships in 4.52.1.
MIN_TRANSFORMERS = "5.5.0"

USER_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"  # deepseek sft format, empty system prompt
BOI_TOKEN = "<begin_of_image>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_SPECIAL_TOKENS = {"image_token": "<image_placeholder>", "boi_token": BOI_TOKEN, "eoi_token": "<end_of_image>"}


def check_transformers(version: str | None = None) -> str:
    """The installed transformers version, or a `TokbenchError` if it cannot generate Janus images correctly."""
    from packaging.version import Version

    if version is None:
        import transformers

        version = transformers.__version__
    if Version(version) < Version(MIN_TRANSFORMERS):
        raise TokbenchError(
            f"transformers {version} cannot generate Janus images correctly: Janus ships in 4.52.1, and 5.0 to "
            "5.4 feed the prompt ids instead of the image embeddings after the first step (transformers issue "
            f"44792). Install transformers>={MIN_TRANSFORMERS}: pip install -U 'transformers>={MIN_TRANSFORMERS}'"
        )
    return version


# ---------------------------------------------------------------------------------------------------
# Released models
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenModel:
    """A released text-to-image checkpoint: a whole Hugging Face repository (config, tokenizer, weights)."""

    name: str
    artifact: Artifact  # repo_id + revision; `filename` is the file that marks a complete download
    layout: str  # "transformers" (JanusForConditionalGeneration) or "janus" (DeepSeek's original)
    paper: str = ""
    description: str = ""


def _repo(name: str, repo_id: str, filename: str, licence: str) -> Artifact:
    return Artifact(name=name, repo_id=repo_id, filename=filename, licence=licence, used_by="tokbench generate")


_PRO = "Chen et al., Janus-Pro, arXiv:2501.17811"
GEN_MODELS: dict[str, GenModel] = {
    m.name: m
    for m in (
        GenModel("janus-pro-1b", _repo("janus-pro-1b", "deepseek-community/Janus-Pro-1B", "config.json", "MIT"),
                 "transformers", _PRO, "Janus-Pro-1B, transformers format"),
        GenModel("janus-pro-7b", _repo("janus-pro-7b", "deepseek-community/Janus-Pro-7B", "config.json", "MIT"),
                 "transformers", _PRO, "Janus-Pro-7B, transformers format"),
        GenModel("janus-1.3b", _repo("janus-1.3b", "deepseek-community/Janus-1.3B", "config.json",
                                     "DeepSeek Model License"),
                 "transformers", "Wu et al., Janus, arXiv:2410.13848", "Janus-1.3B, transformers format"),
        # DeepSeek's own files (those the janus-pro-*-vq tokenizer variants read), keys renamed on load.
        GenModel("janus-pro-1b-original", _repo("janus-pro-1b-original", "deepseek-ai/Janus-Pro-1B", "config.json",
                                                "MIT"), "janus", _PRO, "Janus-Pro-1B, DeepSeek's release"),
        GenModel("janus-pro-7b-original", _repo("janus-pro-7b-original", "deepseek-ai/Janus-Pro-7B", "config.json",
                                                "MIT"), "janus", _PRO, "Janus-Pro-7B, DeepSeek's release"),
    )
}  # fmt: skip

_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja"]


def resolve_model_dir(name: str) -> tuple[Path, dict[str, Any]]:
    """The folder of a model (a local folder, or a released name) and where it came from.

    Released names are looked for in `$TOKBENCH_WEIGHTS/<name>/`, then in the Hugging Face cache, then
    downloaded (unless offline); a missing model is one `WeightsUnavailable` with the fetch command.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TokbenchError(f"{str(path)!r} has no config.json; pass a transformers-format Janus checkpoint "
                                "folder (or DeepSeek's original release folder) or one of " + ", ".join(GEN_MODELS))  # fmt: skip
        return path, {"model": str(path.resolve()), "source": "local folder", "revision": None}
    if name not in GEN_MODELS:
        raise TokbenchError(f"unknown model {name!r}; pass one of {', '.join(GEN_MODELS)} or a checkpoint folder")
    a = GEN_MODELS[name].artifact
    info = {"model": name, "source": f"https://huggingface.co/{a.repo_id}", "requested_revision": a.revision}
    root = weights_dir()
    if root is not None and (root / a.name / "config.json").is_file():
        return root / a.name, {**info, "revision": None, "folder": str(root / a.name)}
    def unavailable(reason: str) -> WeightsUnavailable:
        where = weights_dir() or Path("DIR")
        then = "" if weights_dir() else f"; then export TOKBENCH_WEIGHTS=DIR (or pass --model DIR/{a.name})"
        return WeightsUnavailable(
            f"model {name!r} is not available: {reason}\n  source: https://huggingface.co/{a.repo_id} (whole "
            f"repository)\n  fetch it ahead of time: hf download {a.repo_id} --local-dir {where / a.name}{then}"
        )

    folder = resolve_snapshot(a.repo_id, a.revision, _SNAPSHOT_FILES, unavailable)
    # A hub snapshot folder is named by the commit it holds: the exact revision.
    return folder, {**info, "revision": folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None,
                    "folder": str(folder)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# DeepSeek's original layout -> transformers layout
# ---------------------------------------------------------------------------------------------------

# The renames of transformers' convert_janus_weights_to_hf.py, written as ordered prefix rules.
_VISION_BLOCK_RENAMES = (
    ("attn.proj.", "self_attn.projection_layer."),
    ("norm1.", "layer_norm1."),
    ("norm2.", "layer_norm2."),
    ("mlp.", "mlp."),
)


def _aligner(rest: str, target: str) -> str:
    """MlpProjector `layers.{0,2,4..}` (Linear, GELU, Linear, ...) -> `fc1` + `hidden_layers.{j}`."""
    m = re.fullmatch(r"layers\.(\d+)\.(.*)", rest)
    if m is None or int(m.group(1)) % 2:
        raise TokbenchError(f"unexpected aligner key {rest!r} in the original Janus checkpoint")
    i = int(m.group(1)) // 2
    return f"{target}.{'fc1' if i == 0 else f'hidden_layers.{i - 1}'}.{m.group(2)}"


def _vq_key(rest: str) -> str:
    from ..tokenizers.llamagen import _TRANSFORMERS_RENAMES

    for hf, official in _TRANSFORMERS_RENAMES:
        rest = rest.replace(official, hf)
    return rest


def janus_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeepSeek's `MultiModalityCausalLM` keys -> `JanusForConditionalGeneration` keys.

    The vision tower's fused `qkv` is split in three, `pos_embed` (1, N, D) loses its leading axis, and the
    attention-pooling head and the VQ usage buffer (unused by Janus) are dropped, as the converter does.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("language_model.model."):
            out["model.language_model." + key[len("language_model.model."):]] = value
        elif key == "language_model.lm_head.weight":
            out["lm_head.weight"] = value
        elif key.startswith("gen_vision_model."):
            rest = key[len("gen_vision_model."):]
            if rest != "quantize.codebook_used":
                out["model.vqmodel." + _vq_key(rest)] = value
        elif key.startswith("gen_aligner."):
            out[_aligner(key[len("gen_aligner."):], "model.generation_aligner")] = value
        elif key.startswith("aligner."):
            out[_aligner(key[len("aligner."):], "model.aligner")] = value
        elif key.startswith("gen_head.output_mlp_projector."):
            out["model.generation_head.proj_out." + key[len("gen_head.output_mlp_projector."):]] = value
        elif key.startswith("gen_head.vision_head."):
            out["model.generation_head.vision_head." + key[len("gen_head.vision_head."):]] = value
        elif key.startswith("gen_embed."):
            out["model.generation_embeddings." + key[len("gen_embed."):]] = value
        elif key.startswith("vision_model.vision_tower."):
            _vision_key(key[len("vision_model.vision_tower."):], value, out, unknown)
        else:
            unknown.append(key)
    if unknown:
        raise TokbenchError(f"the original Janus checkpoint has keys tokbench cannot place: {unknown[:8]}")
    return out


def _vision_key(rest: str, value: torch.Tensor, out: dict[str, torch.Tensor], unknown: list[str]) -> None:
    base = "model.vision_model."
    if rest.startswith("attn_pool."):
        return
    if rest == "pos_embed":
        out[base + "embeddings.position_embedding.weight"] = value.squeeze(0)
    elif rest.startswith("patch_embed.proj."):
        out[base + "embeddings.patch_embedding." + rest[len("patch_embed.proj."):]] = value
    elif rest.startswith("norm."):
        out[base + "post_layernorm." + rest[len("norm."):]] = value
    elif (m := re.fullmatch(r"blocks\.(\d+)\.(.*)", rest)) is not None:
        layer, inner = f"{base}encoder.layers.{m.group(1)}.", m.group(2)
        if inner.startswith("attn.qkv."):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{layer}self_attn.{name}.{inner[len('attn.qkv.'):]}"] = part
            return
        for old, new in _VISION_BLOCK_RENAMES:
            if inner.startswith(old):
                out[layer + new + inner[len(old):]] = value
                return
        unknown.append("vision_model.vision_tower." + rest)
    else:
        unknown.append("vision_model.vision_tower." + rest)


def config_from_original(cfg: Mapping[str, Any], tokenizer: Any) -> Any:
    """A `JanusConfig` from DeepSeek's config.json, as the converter builds it.

    Sizes the release leaves to its code (the SigLIP-L tower, VQ-16's channels) are transformers'
    defaults; any `JanusVisionConfig` / `JanusVQVAEConfig` field present in `vision_config.params` /
    `gen_vision_config.params` overrides them (how the tests describe a tiny model in this layout).
    """
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    lang = dict(cfg["language_config"])
    text = {k: lang[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "hidden_act",
                                 "max_position_embeddings", "rms_norm_eps", "rope_theta") if k in lang}  # fmt: skip
    text.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    vparams = dict(cfg["vision_config"].get("params", {}))
    vision_fields = set(JanusVisionConfig().to_dict())
    vision = {k: v for k, v in vparams.items() if k in vision_fields}
    aligner = cfg.get("aligner_config", {}).get("params", {})
    if "n_embed" in aligner:
        vision["projection_dim"] = aligner["n_embed"]
    if "depth" in aligner:
        vision["depth"] = aligner["depth"]
    gparams = dict(cfg["gen_vision_config"].get("params", {}))
    vq_fields = set(JanusVQVAEConfig().to_dict())
    vq = {k: v for k, v in gparams.items() if k in vq_fields}
    vq.update(embed_dim=gparams["n_embed"], num_embeddings=gparams["image_token_size"],
              projection_dim=cfg["gen_aligner_config"]["params"]["n_embed"],
              num_hidden_layers=cfg["gen_aligner_config"]["params"].get("depth", 2),
              image_token_embed_dim=cfg["gen_head_config"]["params"]["image_token_embed"])  # fmt: skip
    return JanusConfig(text_config=LlamaConfig(**text), vision_config=JanusVisionConfig(**vision),
                       vq_config=JanusVQVAEConfig(**vq),
                       image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_SPECIAL_TOKENS["image_token"]))  # fmt: skip


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # fmt: skip


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise TokbenchError(f"{folder} holds none of {', '.join(WEIGHT_FILES)}; the checkpoint is incomplete")


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    from ..checkpoint import read_state_dict

    if path.name.endswith(".index.json"):  # every shard: the whole model is needed here
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(read_state_dict(path.parent / shard))
        return out
    return read_state_dict(path)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


@dataclass
class JanusGenerator:
    """A loaded Janus model, its tokenizer and the ids the sampling loop needs."""

    model: Any  # JanusForConditionalGeneration
    tokenizer: Any
    info: dict[str, Any]
    dtype: str
    bos_id: int = 0
    pad_id: int = 0
    boi_id: int = 0
    grid: int = 24
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_image_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def image_size(self) -> int:
        return self.grid * 2 ** (len(self.model.config.vq_config.channel_multiplier) - 1)

    def vq_config(self) -> dict[str, Any]:
        """tokbench `llamagen-vq` config fields of this model's VQ (transformers names mapped back)."""
        c = self.model.config.vq_config
        mult = [int(m) for m in c.channel_multiplier]
        return {"codebook_size": int(c.num_embeddings), "codebook_embed_dim": int(c.embed_dim),
                "encoder_ch_mult": mult, "decoder_ch_mult": mult, "z_channels": int(c.latent_channels),
                "ch": int(c.base_channels), "num_res_blocks": int(c.num_res_blocks)}  # fmt: skip

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the official image-generation prompt: BOS + chat template + `<begin_of_image>`."""
        ids = list(self.tokenizer.encode(USER_TEMPLATE.format(prompt=prompt) + BOI_TOKEN))
        if not ids or ids[0] != self.bos_id:  # the released tokenizers add BOS; a bare one may not
            ids = [self.bos_id, *ids]
        if ids[-1] != self.boi_id:
            raise TokbenchError(f"the tokenizer does not end the prompt with {BOI_TOKEN} (id {self.boi_id}); "
                                "is it a Janus tokenizer?")  # fmt: skip
        return ids


def load_janus(name: str, device: str | torch.device = "cpu", dtype: str = "bfloat16") -> JanusGenerator:
    """Load a Janus model (released name or folder; transformers or DeepSeek layout) for generation."""
    tv = check_transformers()
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    td = torch_dtype(dtype)
    folder, info = resolve_model_dir(name)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") == "janus":
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = JanusForConditionalGeneration.from_pretrained(folder, dtype=td)
        layout = "transformers"
    elif "language_config" in cfg and "gen_vision_config" in cfg:
        tokenizer = AutoTokenizer.from_pretrained(folder, extra_special_tokens=IMAGE_SPECIAL_TOKENS)
        model = _from_original(folder, config_from_original(cfg, tokenizer), td)
        layout = "janus (keys renamed into the transformers layout)"
    else:
        raise TokbenchError(f"{folder / 'config.json'} is neither a transformers Janus config (model_type 'janus') "
                            "nor DeepSeek's original (language_config, gen_vision_config)")  # fmt: skip
    model = model.to(device).eval()
    vocab = tokenizer.get_vocab()
    gen_cfg = model.generation_config
    pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else vocab.get(PAD_TOKEN, tokenizer.pad_token_id)
    if pad is None or BOI_TOKEN not in vocab or tokenizer.bos_token_id is None:
        raise TokbenchError(f"the tokenizer in {folder} lacks a pad token, BOS or {BOI_TOKEN}; is it Janus's?")
    weights = weights_file(folder)
    info.update(layout=layout, weights=str(weights), transformers=tv, folder=str(folder))
    grid = int(model.config.vq_config.num_patches)
    return JanusGenerator(model, tokenizer, info, dtype, bos_id=int(tokenizer.bos_token_id), pad_id=int(pad),
                          boi_id=int(vocab[BOI_TOKEN]), grid=grid)  # fmt: skip


def _from_original(folder: Path, config: Any, dtype: torch.dtype) -> Any:
    from transformers import JanusForConditionalGeneration

    from ..checkpoint import load_strict

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the target dtype (7B in float32 is 28 GB)
    try:
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # pragma: no cover - older layouts of transformers
            from transformers.modeling_utils import no_init_weights
        with no_init_weights():  # every parameter is overwritten by the strict load below
            model = JanusForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    path = weights_file(folder)
    load_strict(model, janus_to_transformers(_read_all(path)), source=f"{path} (DeepSeek Janus layout)")
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one image: a hash of (run seed, prompt index, sample index), 63 bits."""
    digest = hashlib.sha256(f"tokbench-generate:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


SEED_RULE = "sha256('tokbench-generate:{seed}:{prompt_index}:{sample_index}')[:8] little-endian & (2^63-1)"


def _cache_keyword(lm: Any) -> str:
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def sample_image_tokens(
    gen: JanusGenerator,
    prompt_ids: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator],
    cfg_weight: float = 5.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Image code ids (B, grid*grid), raster order, one row per prompt-id list, each from its own generator.

    Rows of different lengths are left-padded and masked, with positions counted from each row's first
    real token, so a row's result does not depend on its neighbours (up to float reduction order).
    """
    if temperature <= 0:
        raise TokbenchError(f"temperature must be > 0 (the official loop divides by it), got {temperature}")
    model, device = gen.model, gen.device
    b = len(prompt_ids)
    length = max(len(p) for p in prompt_ids)
    cond = torch.full((b, length), gen.pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    uncond = cond.clone()
    for i, ids in enumerate(prompt_ids):
        n = len(ids)
        cond[i, length - n:] = torch.tensor(ids)
        mask[i, length - n:] = 1
        # Official unconditional row: the prompt with every token but the first and last set to pad.
        uncond[i, length - n] = ids[0]
        uncond[i, length - 1] = ids[-1]
    tokens = torch.cat([cond, uncond]).to(device)  # rows [0, b) conditional, [b, 2b) unconditional
    mask = torch.cat([mask, mask]).to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    lm = model.model.language_model
    cache_kw = _cache_keyword(lm)
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.text_config)
    embeds = model.get_input_embeddings()(tokens)
    out_ids = torch.zeros((b, gen.num_image_tokens), dtype=torch.long, device=device)
    for step in range(gen.num_image_tokens):
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                 **{cache_kw: cache})  # fmt: skip
        logits = model.model.generation_head(out.last_hidden_state[:, -1, :])
        cond_logits, uncond_logits = logits[:b], logits[b:]
        logits = uncond_logits + cfg_weight * (cond_logits - uncond_logits)
        probs = torch.softmax(logits / temperature, dim=-1)
        nxt = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=generators[i]) for i in range(b)])
        out_ids[:, step] = nxt.view(b)
        embeds = model.prepare_embeddings_for_image_generation(torch.cat([nxt, nxt]))  # (2b, 1, D)
        mask = torch.cat([mask, mask.new_ones((2 * b, 1))], dim=1)
        positions = positions[:, -1:] + 1
    return out_ids


def row_generators(device: torch.device, seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.inference_mode()
def decode_pixels(gen: JanusGenerator, ids: torch.Tensor) -> torch.Tensor:
    """The model's own decoding (`decode_image_tokens`): (B, H, W, 3), nominally [-1, 1], float32."""
    return gen.model.decode_image_tokens(ids.to(gen.device)).float()


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """The official conversion: clip((x + 1) / 2 * 255, 0, 255) in float32, then truncate to uint8."""
    x = decoded.float().cpu().numpy()
    return np.clip((x + 1) / 2 * 255, 0, 255).astype(np.uint8)


def vq_tokenizer(gen: JanusGenerator) -> Any:
    """tokbench's own `llamagen-vq` tokenizer, loaded from the same checkpoint file as the model."""
    from ..registry import load_tokenizer

    return load_tokenizer("llamagen-vq", weights=gen.info["weights"], config=gen.vq_config(), device=gen.device,
                          dtype=gen.dtype, resolution=gen.image_size)


@torch.inference_mode()
def decode_difference(gen: JanusGenerator, tok: Any, ids: torch.Tensor, decoded: torch.Tensor) -> float:
    """Max |tokbench llamagen-vq decode - model.decode_image_tokens| over the batch, in [-1, 1] units."""
    ours = tok.model.decode_code(ids.to(gen.device), (gen.grid, gen.grid)).float().permute(0, 2, 3, 1)
    return float((ours - decoded.to(ours.device)).abs().max())


def environment_versions() -> dict[str, str]:
    from ..environment import package_versions

    return package_versions()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else os.uname().machine
