"""Reading released checkpoints safely, and loading them into modules strictly.

Never executes code from a weight file: safetensors, or `torch.load(weights_only=True)`. A pickle
that needs more than tensors and plain containers is refused with `UnsafeCheckpoint`.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

from .core import TokbenchError

CONTAINER_KEYS = ("ema", "model", "state_dict")


class CheckpointError(TokbenchError):
    """A checkpoint file that cannot be read or does not fit the model."""


class UnsafeCheckpoint(CheckpointError):
    """A pickle that would run code or build arbitrary objects when loaded."""


def _unsafe(path: Path, error: Exception) -> CheckpointError:
    # torch's message advises weights_only=False; keep only the part naming what the pickle wanted.
    text = str(error)
    if "global" not in text.lower():  # a bad opcode, a cut stream: damaged or not a pickle at all, nothing unsafe
        first = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("Unsupported")), text[:120])
        return CheckpointError(f"{path} is not a checkpoint, or a damaged one: it does not unpickle ({first}). "
                               "Is the download complete, and is it the right file?")
    detail = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln or "global" in ln.lower()), "")
    detail = detail.replace("WeightsUnpickler error:", "").strip() or "it needs more than tensors"
    return UnsafeCheckpoint(
        f"refused to load {path}: it is a pickle that would build arbitrary objects or run code when "
        f"loaded ({detail}). tokbench never loads such files. Use the release's safetensors file, or "
        "convert the checkpoint to a plain state dict on a machine you trust."
    )


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


# How the files torch.load reads begin: a zip archive (torch >= 1.6) or a pickle (protocol 2 to 5).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_STARTS = tuple(bytes([0x80, p]) for p in range(2, 6))


def _not_a_checkpoint(path: Path) -> CheckpointError | None:
    """A clear error for a file that is neither a zip archive nor a pickle (random bytes, an HTML page)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return CheckpointError(f"could not read checkpoint {path}: {e.strerror or e}")
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_STARTS):
        return None
    shown = head.hex(" ") if head else "an empty file"
    return CheckpointError(f"{path} is not a checkpoint: not a safetensors file, a torch.save zip archive or a "
                           f"pickle (it begins {shown}). Is the download complete, and is it the right file?")


def _torch_load(path: Path) -> object:
    if (problem := _not_a_checkpoint(path)) is not None:
        raise problem
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive, not a state dict; tokbench reads state dicts only "
            "(safetensors or torch.save of tensors). Is this the right file for this model?"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise _unsafe(path, e) from None
    except RuntimeError as e:
        if "mmap" in str(e) or "zip" in str(e).lower():  # legacy (non-zip) torch.save format cannot be mmapped
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e2:
                raise _unsafe(path, e2) from None
            except Exception as e2:  # noqa: BLE001
                raise CheckpointError(f"could not read checkpoint {path}: {type(e2).__name__}: {e2}") from None
        raise CheckpointError(f"could not read checkpoint {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated / non-checkpoint files
        raise CheckpointError(
            f"could not read checkpoint {path}: {type(e).__name__}: {e}. Is the download complete?"
        ) from None


def unwrap_container(obj: object, containers: Iterable[str] = CONTAINER_KEYS) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint ({"ema": sd} / {"model": sd} / {"state_dict": sd})."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a state dict")
    for key in containers:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def shards_for_prefix(index_path: Path, prefix: str | None) -> list[str]:
    """Shard file names that an `*.index.json` lists for the keys under `prefix` (all if None)."""
    weight_map = json.loads(Path(index_path).read_text()).get("weight_map", {})
    names = {f for k, f in weight_map.items() if prefix is None or k.startswith(prefix)}
    return sorted(names)


def _read_safetensors(path: Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not read safetensors file {path}: {type(e).__name__}: {e}") from None


def read_state_dict(
    path: str | Path,
    *,
    prefix: str | None = None,
    containers: Iterable[str] = CONTAINER_KEYS,
    resolve_shard: Callable[[str], Path] | None = None,
) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors (from .safetensors, a torch pickle, or a sharded *.index.json).

    With `prefix`, only keys starting with it are kept, and the prefix is stripped. For an index, only
    the shards that hold such keys are read; `resolve_shard(name)` may fetch a missing shard.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    keep = (lambda k: k.startswith(prefix)) if prefix else (lambda k: True)
    if path.name.endswith(".index.json"):
        out: dict[str, torch.Tensor] = {}
        for shard in shards_for_prefix(path, prefix):
            shard_path = path.parent / shard
            if not shard_path.is_file() and resolve_shard is not None:
                shard_path = resolve_shard(shard)
            out.update(read_state_dict(shard_path, prefix=prefix, containers=containers))
        return out
    if path.suffix == ".safetensors":
        sd = _read_safetensors(path, keep)
    else:
        sd = {k: v for k, v in unwrap_container(_torch_load(path), containers).items() if keep(k)}
    if prefix:
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def checkpoint_keys(path: str | Path) -> list[str] | None:
    """Tensor names of a safetensors file or a sharded `*.index.json`, read without the tensors;
    None for a torch pickle (whose names need the file unpickled)."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        return list(json.loads(path.read_text()).get("weight_map", {}))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return list(f.keys())
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"could not read safetensors file {path}: {type(e).__name__}: {e}") from None
    return None


def read_under_prefix(
    path: str | Path,
    candidates: Iterable[str],
    probe: str,
    *,
    what: str,
    resolve_shard: Callable[[str], Path] | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of one model inside a release file, and the key prefix they were stored under.

    The prefix is the first of `candidates` ('' = bare keys) under which `probe` exists. Safetensors
    files and sharded indexes are searched by name and only the matching tensors (and shards) are read;
    a pickle is unpickled once. `what` names the model in the error when no candidate matches.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    candidates = tuple(candidates)
    keys = checkpoint_keys(path)
    full = None
    if keys is None:
        full = read_state_dict(path)
        keys = list(full)
    prefix = detect_prefix(keys, candidates, probe)
    if prefix is None:
        shown = ", ".join(sorted(keys)[:8])
        where = " or ".join(repr(p + probe) for p in candidates)
        raise CheckpointError(f"{path} holds no {what}: no key {where} (its first keys: {shown})")
    if full is None:
        return read_state_dict(path, prefix=prefix or None, resolve_shard=resolve_shard), prefix
    return {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}, prefix


def detect_prefix(keys: Iterable[str], candidates: Iterable[str], probe: str) -> str | None:
    """The first candidate prefix such that `prefix + probe` is among `keys` ('' = bare keys)."""
    keys = set(keys)
    for p in candidates:
        if p + probe in keys:
            return p
    return None


def _summarise(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    ignore_unexpected: Callable[[str], bool] | None = None,
    ignore_missing: Callable[[str], bool] | None = None,
) -> None:
    """Load a state dict into `module`, refusing any missing, unexpected or wrongly-shaped key.

    Tensors are cast to the module's dtypes. `ignore_*` name keys the release is known to carry or lack
    (training-only buffers); everything else must match exactly, never a silent partial load.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not (ignore_missing and ignore_missing(k))]
    unexpected = [k for k in state_dict if k not in own and not (ignore_unexpected and ignore_unexpected(k))]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"{source} does not match the model {type(module).__name__}:"]
        if missing:
            parts.append(f"  missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys: {_summarise(unexpected)}")
        if shapes:
            parts.append(f"  wrong shapes: {_summarise(shapes, 6)}")
        parts.append("  Check that the checkpoint is this tokenizer's and that the config matches it.")
        raise CheckpointError("\n".join(parts))
    to_load = {k: state_dict[k].to(own[k].dtype) for k in own if k in state_dict}
    module.load_state_dict(to_load, strict=False)


# ---------------------------------------------------------------------------------------------------
# Random weights (speed benchmarks on machines without the release)
# ---------------------------------------------------------------------------------------------------

RANDOM_WEIGHTS = "random (speed benchmarks only)"
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS (weights='random'): the released architecture with seeded random parameters, for speed "
    "benchmarks only; its reconstructions and features are meaningless"
)


@contextlib.contextmanager
def seeded_rng(seed: int = 0) -> Iterator[None]:
    """Run a block under `torch.manual_seed(seed)` and restore the caller's CPU RNG state afterwards.

    For library modules that initialise themselves in their constructor (transformers, open_clip, timm):
    built inside this block, two builds give equal weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _materialise(module: torch.nn.Module, device: torch.device) -> None:
    """Give every meta parameter and buffer real (uninitialised) storage on `device`; ties stay tied."""
    done: dict[int, torch.Tensor] = {}
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in done:
                    done[id(p)] = torch.nn.Parameter(torch.empty_like(p, device=device), p.requires_grad)
                m._parameters[name] = done[id(p)]
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                if id(b) not in done:
                    done[id(b)] = torch.zeros_like(b, device=device)  # a meta buffer has no value to keep
                m._buffers[name] = done[id(b)]


def random_init(
    module: torch.nn.Module,
    seed: int = 0,
    *,
    keep: Iterable[str] = (),
    std: float = 0.02,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Deterministic random weights for `module` (built normally or on the meta device); returns it.

    Meta tensors are first given storage on `device` (meta buffers become zeros: build modules whose
    buffers hold constants on a real device). Then, under `seeded_rng(seed)`, every submodule with
    torch's `reset_parameters` (or `_reset_parameters`, nn.MultiheadAttention) is reset by it (so
    GroupNorm / LayerNorm / BatchNorm get weight 1, bias 0), a norm layer without one gets weight 1 and
    bias 0, and any other parameter (class / position / latent tokens) is drawn from N(0, std).
    Submodules named in `keep` (dotted names, e.g. "encoder_vqkd") are left as they are: library towers
    built under `seeded_rng` keep their library's own init. Buffers that were real are left unchanged.
    """
    keep = tuple(keep)
    names = {name for name, _ in module.named_modules()}
    missing = [k for k in keep if k not in names]
    if missing:
        raise ValueError(f"random_init: no submodules {missing} in {type(module).__name__}")
    skip = {id(m) for k in keep for m in module.get_submodule(k).modules()}
    kept = [p for k in keep for p in module.get_submodule(k).parameters()]
    if any(p.is_meta for p in kept):
        raise ValueError("random_init: submodules in `keep` must be built on a real device (they are on meta)")
    _materialise(module, torch.device(device))
    with seeded_rng(seed), torch.no_grad():
        for m in module.modules():
            if id(m) in skip:
                continue
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if callable(reset):
                reset()
                continue
            is_norm = "norm" in type(m).__name__.lower()
            for name, p in m.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    p.fill_(1.0)
                elif is_norm and name == "bias":
                    p.zero_()
                else:
                    p.normal_(0.0, std)
    return module


# ---------------------------------------------------------------------------------------------------
# Lightning EMA copies (taming / latent-diffusion `LitEma`): raw weights and `model_ema.*` side by side
# ---------------------------------------------------------------------------------------------------

LIT_EMA_PREFIX = "model_ema."
LIT_EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")


def lit_ema_key(name: str) -> str:
    """`LitEma`'s buffer name for parameter `name`: 'model_ema.' + the name without dots."""
    return LIT_EMA_PREFIX + name.replace(".", "")


def has_lit_ema(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(LIT_EMA_PREFIX) and k not in LIT_EMA_BOOKKEEPING for k in state_dict)


def select_lit_ema(
    state_dict: Mapping[str, torch.Tensor], names: Iterable[str], *, ema: bool, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The raw weights of a Lightning checkpoint with the EMA copies left out (`ema=False`), or the
    same names filled from their `model_ema.*` copies (`ema=True`, what `ema_scope()` does).

    `names` are the model's own parameter names: the dot-free EMA names are mapped back through them
    (refused if two collapse onto one). A parameter without an EMA copy is an error, never a silent mix.
    """
    names = list(names)
    raw = {k: v for k, v in state_dict.items() if not k.startswith(LIT_EMA_PREFIX)}
    if not ema:
        return raw
    by_ema: dict[str, str] = {}
    for n in names:
        key = lit_ema_key(n)
        if key in by_ema:
            raise CheckpointError(f"parameters {by_ema[key]!r} and {n!r} share the EMA name {key!r}")
        by_ema[key] = n
    if not has_lit_ema(state_dict):
        raise CheckpointError(
            f"{source} holds no EMA weights (no model_ema.* entries); load it with ema=False to use its raw "
            "weights, or pass the release's Lightning checkpoint"
        )
    missing = [n for k, n in by_ema.items() if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"{source} lacks the EMA copies of {len(missing)} parameters: {_summarise(missing)}; "
            "check the config, or load with ema=False for the raw weights"
        )
    # parameters come from their EMA copies; anything else (buffers, unexpected keys) stays raw
    own = set(names)
    out = {k: v for k, v in raw.items() if k not in own}
    out.update({n: state_dict[k] for k, n in by_ema.items()})
    # EMA copies of parameters the model lacks stay under their own names: load_strict reports them
    out.update({k: v for k, v in state_dict.items() if k.startswith(LIT_EMA_PREFIX) and k not in by_ema})
    return out


# ---------------------------------------------------------------------------------------------------
# What a checkpoint of the wrong family is, in words
# ---------------------------------------------------------------------------------------------------

# Distinctive key patterns of the tokenizers a user may confuse with each other -> what they are.
_SIGNATURES: tuple[tuple[Callable[[set[str]], bool], str], ...] = (
    (lambda ks: any(k.startswith(("quantize.quant_resi.", "quantize.ema_vocab_hit_SV")) for k in ks),
     "a VAR multi-scale VQVAE (quantize.quant_resi.*): load it with 'var-vqvae'"),
    (lambda ks: any(k.startswith("encoder_vqkd.") for k in ks),
     "a TokenFlow model (encoder_vqkd.*): load it with 'tokenflow'"),
    (lambda ks: any(k == "latent_tokens" or k.endswith(".latent_tokens") for k in ks),
     "a TiTok / One-D-Piece model (latent_tokens): load it with 'titok' or 'one-d-piece'"),
    (lambda ks: any(k.startswith("decoder.adaptive.") for k in ks),
     "an Open-MAGVIT2 LFQ tokenizer (decoder.adaptive.*): load it with 'open-magvit2'"),
    (lambda ks: any(k.startswith("encoder.mid_block.") for k in ks),
     "a legacy Open-MAGVIT2 'B' LFQ tokenizer (encoder.mid_block.*, no decoder.adaptive.*): load it with "
     "'open-magvit2-256-b' / 'open-magvit2-128-b' or config legacy: true"),
    (lambda ks: any(k.startswith("encoder.conv_blocks.") for k in ks),
     "a LlamaGen / Janus VQ tokenizer (encoder.conv_blocks.*): load it with 'llamagen-vq'"),
    (lambda ks: any(k.startswith("gen_vision_model.") for k in ks),
     "a Janus model file (gen_vision_model.*): load its tokenizer with 'llamagen-vq'"),
    (lambda ks: "quantize.embedding.weight" in ks and "encoder.mid.block_1.conv1.weight" in ks and has_lit_ema(
        dict.fromkeys(ks)), "an IBQ / taming VQGAN with EMA copies (quantize.embedding.weight, model_ema.*): "
     "load it with 'ibq'"),
    (lambda ks: "quantize.embedding.weight" in ks and "encoder.mid.block_1.conv1.weight" in ks,
     "a taming VQGAN without EMA copies (quantize.embedding.weight, encoder.mid.*): e.g. 'chameleon-vqgan', "
     "'emu35-vq', or 'ibq' with ema=False"),
    (lambda ks: "quantize.power_vals" in ks and "encoder.quant_conv.weight" in ks,
     "a Show-o / MMaDA MAGVIT-v2 (quantize.power_vals, encoder.quant_conv.*): load it with 'showo-magvitv2'"),
    (lambda ks: any(k.startswith("quantizer.lfq.") for k in ks),
     "an Infinity BSQ-VAE (quantizer.lfq.*): load it with 'infinity-bsq'"),
    (lambda ks: any(k.startswith(("low_level_encoder.", "vision.low_level_encoder.")) for k in ks),
     "a MingTok-Vision model (low_level_encoder.*): load it with 'mingtok'"),
    (lambda ks: any(k.startswith("vision_decoder.") for k in ks) and any(k.startswith("text_model.") or
                                                                         k.startswith("text_") for k in ks),
     "a QLIP model (vision_decoder.*, text tower): load it with 'qlip'"),
    (lambda ks: any(k.startswith("rqtransformer.") for k in ks) or any(".rqvaesiglip." in f".{k}" for k in ks),
     "a VILA-U vision tower (rqtransformer.*, rqvaesiglip.*): load it with 'vila-u'"),
    (lambda ks: any(k.startswith(("vision_model.", "visual.")) for k in ks),
     "a vision-encoder checkpoint (vision_model.* / visual.*), not an image tokenizer with a decoder"),
)  # fmt: skip


def describe_checkpoint(keys: Iterable[str]) -> str:
    """What a checkpoint's keys look like, in words (for errors about a file of the wrong family)."""
    ks = set(keys)
    for test, what in _SIGNATURES:
        if test(ks):
            return what
    shown = ", ".join(sorted(ks)[:6]) or "(no tensors)"
    return f"an unrecognised checkpoint (first keys: {shown})"
