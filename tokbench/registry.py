"""One factory and one registry for every tokenizer family (the timm `create_model` pattern).

Each module in `tokbench.tokenizers` defines a module-level `FAMILY = Family(...)` (or `FAMILIES`); the registry
discovers them, so adding a family is one new file. Released variants are rows of `Family.variants`.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .core import TokbenchError, Tokenizer
from .weights import Artifact


@dataclass(frozen=True)
class Variant:
    """A released checkpoint: which config builds it, where its weights come from, what was published.

    `config` holds the official constructor arguments; `options` adapter settings (dtype, codec format
    and quality, preprocessing); `published` the numbers the authors report, keyed by the result they
    compare with under the protocol they were measured with (`psnr_llamagen`, `rfid_torch_fidelity`),
    with `published_source` naming where they come from.
    """

    name: str
    family: str
    config: Mapping[str, Any] = field(default_factory=dict)
    weights: Artifact | None = None
    resolution: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    published: Mapping[str, float] = field(default_factory=dict)
    published_source: str = ""


Builder = Callable[..., Tokenizer]


@dataclass(frozen=True)
class Family:
    """A tokenizer family: how to build it, the options it takes, and its released variants.

    `build(b)` receives one `tokbench.building.Build`: the variant row (or None when loaded by family
    name with a checkpoint), the weights (a path, "random", or None: the variant's artifact), the config
    dict (variant config updated by the user's) and the validated build options. `build_options` and
    `encode_options` declare what `load_tokenizer` and `Tokenizer.encode` take, apart (both may be swept):
    name -> the type pydantic checks values against (`tokbench.options`), or (type, default); the planner
    reads them to tell a model's load options from its encode options without loading it. `code` is
    the upstream code the module was written from (recorded in every spec).
    `convolutional`: the model is mostly 2-D convolutions (VQGAN-style encoder and decoder), the kind
    of network whose GPU kernels favour the channels_last memory format; a suite's
    `channels_last: auto` applies that format to these families only.
    """

    name: str
    build: Builder
    variants: tuple[Variant, ...] = ()
    aliases: tuple[str, ...] = ()
    description: str = ""
    default_variant: str | None = None
    build_options: Mapping[str, Any] | None = None
    encode_options: Mapping[str, Any] = field(default_factory=dict)
    code: str = ""
    # distributions whose version can change this family's numbers, beyond environment.CORE_PACKAGES
    packages: tuple[str, ...] = ()
    convolutional: bool = False
    # Names outside the table that the family understands (`jpeg-q30`): name -> Variant, or None.
    variant_for_name: Callable[[str], Variant | None] | None = None

    @property
    def options(self) -> dict[str, Any] | None:
        """Every option a suite may give this family, build and encode (None: undeclared)."""
        if self.build_options is None:
            return None
        return {**self.build_options, **self.encode_options}


_FAMILIES: dict[str, Family] = {}
_DISCOVERED = False
_IMPORT_ERRORS: dict[str, str] = {}


def register_family(family: Family) -> Family:
    for key in (family.name, *family.aliases):
        other = _FAMILIES.get(key)
        if other is not None and other is not family:
            raise TokbenchError(f"tokenizer family name {key!r} is registered twice")
        _FAMILIES[key] = family
    return family


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from . import tokenizers

    for mod in sorted(pkgutil.iter_modules(tokenizers.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{tokenizers.__name__}.{mod.name}")
        except ImportError as e:  # a family whose optional library is missing stays listed as broken
            _IMPORT_ERRORS[mod.name] = f"{type(e).__name__}: {e}"
            continue
        found = [getattr(module, "FAMILY", None), *getattr(module, "FAMILIES", ())]
        for family in found:
            if isinstance(family, Family):
                register_family(family)


def families() -> list[Family]:
    _discover()
    seen: dict[str, Family] = {}
    for f in _FAMILIES.values():
        seen.setdefault(f.name, f)
    return sorted(seen.values(), key=lambda f: f.name)


def variants(pattern: str = "*") -> list[Variant]:
    """All released variants whose name matches the glob `pattern`, sorted by family then name."""
    out = [v for f in families() for v in f.variants if fnmatch.fnmatch(v.name, pattern)]
    return sorted(out, key=lambda v: (v.family, v.name))


def list_tokenizers(pattern: str = "*") -> list[str]:
    return [v.name for v in variants(pattern)]


def family_of(name: str) -> Family | None:
    """The family of a variant or family name, or None for a name no family knows."""
    try:
        return find(name)[0]
    except TokbenchError:
        return None


def find(name: str) -> tuple[Family, Variant | None]:
    """Look up a variant name or a family name (or alias)."""
    _discover()
    key = name.strip().lower()
    for fam in families():
        for v in fam.variants:
            if v.name == key:
                return fam, v
    if key in _FAMILIES:
        return _FAMILIES[key], None
    for fam in families():
        if fam.variant_for_name is not None and (v := fam.variant_for_name(key)) is not None:
            return fam, v
    close = [n for n in list_tokenizers() + sorted(_FAMILIES) if key.split("-")[0] in n]
    hint = f" Close names: {', '.join(close[:8])}." if close else ""
    broken = f" (families that failed to import: {_IMPORT_ERRORS})" if _IMPORT_ERRORS else ""
    raise TokbenchError(f"unknown tokenizer {name!r}.{hint} Run `tokbench list` for all names.{broken}")


def read_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """A config given as a dict, or as a JSON / YAML file path."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if not path.is_file():
        raise TokbenchError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            from .safe_yaml import load_yaml  # no alias bombs

            data = load_yaml(text, f"config file {str(path)!r}")
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - parse errors of either library become one message
        raise TokbenchError(f"could not parse config file {str(path)!r}: {e}") from None
    if not isinstance(data, dict):
        raise TokbenchError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def load_tokenizer(
    name: str,
    weights: str | Path | None = None,
    config: Mapping[str, Any] | str | Path | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Tokenizer:
    """Build a tokenizer by released-variant or family name.

    `weights` is a checkpoint file in a released layout (default: the variant's artifact, resolved by
    `tokbench.weights`); `config` the official constructor arguments as a dict or JSON/YAML file,
    merged over the variant's; `options` adapter settings such as `dtype` or `quality`.
    """
    from .building import run_build

    family, variant = find(name)
    cfg = dict(variant.config) if variant is not None else {}
    cfg.update(read_config(config))
    opts = dict(variant.options) if variant is not None else {}
    opts.update(options)
    tokenizer = run_build(family, variant, weights, cfg, opts)
    tokenizer.encode_options = tuple(family.encode_options)
    return tokenizer.to(device)
