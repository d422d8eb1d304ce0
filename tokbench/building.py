"""The shared family builder: what every tokenizer family's `build` does, written once.

In the spirit of timm's `build_model_with_cfg`: `load_tokenizer` validates the caller's build options
against the family's declaration (`Family.build_options`), picks the variant, and hands the family's
`build` one `Build`. The family keeps only what is its own (its config parser, its model class, its
checkpoint filter, its tokenizer class); the rest is here:

- weights resolution: an explicit file, a folder holding the variant's file, the variant's release
  artifact (`tokbench.weights`), or `"random"` (seeded random parameters, speed benchmarks only);
- the random-or-load step (`Build.model`);
- the source record and the notes (`Build.spec` fills name, family, dtype, source and notes of the
  `TokenizerSpec`).

Options are declared as `name -> type` (default None) or `name -> (type, default)`; pydantic checks them
(`declared_model`), so a suite's values, `load_tokenizer`'s keywords and the planner all read one table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .checkpoint import RANDOM_WEIGHTS, RANDOM_WEIGHTS_NOTE, random_init, seeded_rng
from .core import TokbenchError, TokenizerSpec, torch_dtype
from .weights import resolve, shard_resolver

if TYPE_CHECKING:
    from .registry import Family, Variant

RANDOM = "random"


def option_type(declared: Any) -> Any:
    """The pydantic type of one option declaration (`type` or `(type, default)`)."""
    return declared[0] if isinstance(declared, tuple) else declared


def option_default(declared: Any) -> Any:
    return declared[1] if isinstance(declared, tuple) else None


def declared_model(owner: str, kind: str, declared: Mapping[str, Any]) -> type[BaseModel]:
    """A pydantic model of the declared options: unknown names refused, values checked, defaults filled."""
    return _declared_model(owner, kind, tuple((k, declared[k]) for k in declared))


@cache
def _declared_model(owner: str, kind: str, items: tuple[tuple[str, Any], ...]) -> type[BaseModel]:
    fields = {name: (Optional[option_type(d)], option_default(d)) for name, d in items}  # noqa: UP045
    name = "".join(p.capitalize() for p in f"{owner}-{kind}".replace("_", "-").split("-") if p)
    return create_model(name, __config__=ConfigDict(extra="forbid", frozen=True, strict=True), **fields)  # type: ignore[call-overload]


def check_options(owner: str, kind: str, declared: Mapping[str, Any], given: Mapping[str, Any]) -> BaseModel:
    """`given` validated against `declared`: a `TokbenchError` naming the option, its value and the known
    names when one is unknown or of the wrong type (the same information as every family's message)."""
    if unknown := sorted(set(given) - set(declared)):
        known = ", ".join(declared) or "none"
        raise TokbenchError(f"unknown {owner} {kind} {unknown}; known: {known}")
    try:
        return declared_model(owner, kind, declared)(**given)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise TokbenchError(f"{owner} {kind[:-1] if kind.endswith('s') else kind} {where}={given.get(where)!r}: "
                            f"{err['msg']}") from None


def refuse_unknown(what: str, given: Iterable[Any], accepted: Iterable[Any], note: str = "") -> None:
    """Refuse the names in `given` that are not in `accepted`: a `TokbenchError` naming them, every accepted
    name and `note` (a parenthesis: what else is accepted, what is ignored), e.g. `unknown ibq config keys
    ['n_emb']; accepted: ddconfig, embed_dim, n_embed (training-only keywords are ignored)`. The one wording
    of every family's unknown-config-key refusal; callers drop the keys they ignore from `given` first."""
    accepted = set(accepted)
    if extra := sorted(set(given) - accepted, key=str):
        names = ", ".join(sorted(map(str, accepted))) or "none"
        raise TokbenchError(f"unknown {what} {extra}; accepted: {names}" + (f" {note}" if note else ""))


@dataclass
class Build:
    """One build request, as a family's `build(b)` receives it.

    `config` is the variant's config updated by the caller's (a dict; files are read already);
    `weights` an explicit checkpoint path, `"random"` or None (the variant's artifact); `options` the
    validated build options (attribute access, defaults filled). `source` and `notes` collect what the
    spec records; the family adds its own entries to both.
    """

    family: Family
    variant: Variant | None
    config: dict[str, Any]
    weights: str | Path | None
    options: Any
    source: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.variant.name if self.variant is not None else self.family.name

    @property
    def random_weights(self) -> bool:
        return isinstance(self.weights, str) and self.weights == RANDOM

    @property
    def dtype(self) -> str:
        return getattr(self.options, "dtype", None) or "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    def option(self, name: str, default: Any = None) -> Any:
        value = getattr(self.options, name, None)
        return default if value is None else value

    def checkpoint(self, hint: str) -> Path:
        """The checkpoint file: an explicit file, a folder holding the variant's file, else the variant's
        release artifact (found on disk or downloaded; `WeightsUnavailable` when neither works).
        `hint` names what to pass, for the error messages (`the .pth of FoundationVision/Infinity`)."""
        if self.weights is not None and not self.random_weights:
            path = Path(self.weights).expanduser()
            if path.is_dir() and self.variant is not None and self.variant.weights is not None:
                path = resolve(self.variant.weights, explicit=path)
            if not path.is_file():
                raise TokbenchError(f"weights file {str(path)!r} does not exist; pass {hint}")
            return path
        if self.variant is None or self.variant.weights is None:
            names = ", ".join(v.name for v in self.family.variants[:6])
            raise TokbenchError(
                f"{self.family.name} needs weights: pass weights=<{hint}>"
                + (f", or load a released variant by name ({names}; `tokbench list '{self.family.name}*'`)"
                   if names else "")
            )
        return resolve(self.variant.weights)

    def shards(self) -> Callable[[str], Path] | None:
        """How to find the other shards of a sharded release (`*.index.json`) when the checkpoint is the
        variant's artifact; None for an explicit file (its shards lie beside it)."""
        if self.weights is None and self.variant is not None and self.variant.weights is not None:
            return shard_resolver(self.variant.weights)
        return None

    def beside(self, checkpoint: Path, *names: str) -> Path | None:
        """The first of `names` found beside `checkpoint` (a release's config.json next to its weights)."""
        for n in names:
            if (p := checkpoint.parent / n).is_file():
                return p
        return None

    def model(
        self,
        make: Callable[[], torch.nn.Module],
        load: Callable[[torch.nn.Module, Path], Mapping[str, str] | None],
        hint: str,
        library_init: bool = False,
        checkpoint: Path | None = None,
        random_keep: tuple[str, ...] = (),
    ) -> torch.nn.Module:
        """The family's model with its weights: `make()` then `load(model, checkpoint)` (strict; it may
        return source entries such as the key layout it found), or, for `weights="random"`, `make()` on
        the meta device and seeded random parameters (the same architecture, for speed benchmarks);
        `library_init`: the library class's own initialisation under a fixed seed instead; `random_keep`:
        sub-modules (a library's text or vision tower) that keep that seeded initialisation while the
        rest is randomised as above. `checkpoint`:
        the file, when the family resolved (and read) it already to choose the architecture."""
        if self.random_weights:
            if library_init or random_keep:
                with seeded_rng(0):
                    model = make()
                if random_keep:
                    random_init(model, keep=random_keep)
            else:
                with torch.device("meta"):
                    model = make()
                random_init(model)
            self.source["weights"] = RANDOM_WEIGHTS
            self.notes.insert(0, RANDOM_WEIGHTS_NOTE)
            return model
        path = checkpoint or self.checkpoint(hint)
        model = make()
        self.source["checkpoint"] = str(path)
        self.source.update(load(model, path) or {})
        return model

    def spec(self, **fields: Any) -> TokenizerSpec:
        """The `TokenizerSpec`, with name, family, dtype, source (+ the release and upstream code) and the
        notes filled from this build; `fields` give the rest (resolution, tokens, codebook, ...)."""
        source = dict(self.source)
        if self.variant is not None and self.variant.weights is not None:
            source.setdefault("release", self.variant.weights.source)
        if self.family.code:
            source.setdefault("code", self.family.code)
        notes = [n for n in (*self.notes, fields.pop("notes", "")) if n]
        return TokenizerSpec(name=fields.pop("name", self.name), family=self.family.name, dtype=self.dtype,
                             source=source, notes="; ".join(notes), **fields)


def run_build(family: Family, variant: Variant | None, weights: str | Path | None, config: dict[str, Any],
              options: Mapping[str, Any]) -> Any:
    """Validate `options` against the family's build options and call its `build` with one `Build`.

    A family loaded by name with no config and no weights (or `weights="random"`) stands for its default
    variant, so `load_tokenizer("ibq", weights="random")` is the released architecture; a config without
    weights is the caller's own model, which needs a checkpoint.
    """
    if family.build_options is None:  # undeclared (a family registered outside tokbench, e.g. by a test)
        checked: Any = SimpleNamespace(**options)
    else:
        checked = check_options(family.name, "options", family.build_options, options)
    if getattr(checked, "dtype", None) is not None:
        torch_dtype(checked.dtype)  # a bad dtype fails before the model is built
    if variant is None and family.default_variant and not config and (
        weights is None or (isinstance(weights, str) and weights == RANDOM)
    ):
        variant = next(v for v in family.variants if v.name == family.default_variant)
        config = {**variant.config, **config}
    return family.build(Build(family=family, variant=variant, config=config, weights=weights, options=checked))
