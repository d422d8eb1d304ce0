"""A suite checked before anything runs: every problem at once, with its field path and value.

Two layers: the suite's own pydantic schema (`suite.Suite`: types and ranges of every field, declared
once), then checks against what tokbench knows (metric names and their options, tokenizer names and
globs, the options and sweeps each family declares, preprocessing protocols, data sources).
`suite.check_suite` runs both and raises `SuiteInvalid` listing all of them; nothing has been written by
then. A suite built in Python is validated by its constructor and meets this pass in `check_built_suite`.
"""

from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from .building import option_type
from .core import TokbenchError

Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]


class SuiteInvalid(TokbenchError):
    """A suite with one or more problems; `problems` holds (field path, value, message) for each."""

    def __init__(self, problems: list[tuple[str, Any, str]], path: str | None = None) -> None:
        self.problems = problems
        lines = [f"  {_cut(where, 200)}: {_cut(message, 600)} (got {quote(value)})" for where, value, message in problems]
        super().__init__(f"suite {path or ''} has {len(problems)} problem{'s' * (len(problems) != 1)}; "
                         "nothing was run:\n" + "\n".join(lines))


def _cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (a message that quotes a huge value must stay a line)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(value: Any, limit: int = 160) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters (in bounded time, however large
    the value: nested containers are cut at a few items and levels)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 4, 8, 8, 8, 8
    r.maxstring = r.maxother = r.maxlong = limit
    return _cut(r.repr(value), limit)


# Metric modules without networks: building one is instant, so its option values are checked by building it.
_CHEAP_METRIC_MODULES = ("tokbench.metrics.pixel", "tokbench.metrics.rate", "tokbench.metrics.speed")


def _metric_options(factory: Any) -> set[str] | None:
    """Named options a metric factory takes (its own classes' __init__ parameters; None: any)."""
    if not inspect.isclass(factory):
        params = inspect.signature(factory).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params}
    names: set[str] = set()
    for cls in factory.__mro__:
        if not cls.__module__.startswith("tokbench") or "__init__" not in vars(cls):
            continue
        names |= {n for n, p in inspect.signature(cls.__init__).parameters.items()
                  if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def _metric_problems(raw: Any) -> list[tuple[str, Any, str]]:
    from .metrics.base import _METRICS, build_metric, metric_names

    known = metric_names()
    problems = []
    for i, item in enumerate(raw or []):
        if isinstance(item, str):
            name, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, opts), = item.items()
            opts = opts or {}
            if not isinstance(opts, dict):
                problems.append((f"metrics[{i}].{name}", opts, "a metric's options are a mapping {option: value}"))
                continue
        else:
            problems.append((f"metrics[{i}]", item, "a metric is a name or {name: {options}}"))
            continue
        if name not in known:
            problems.append((f"metrics[{i}]", name, f"unknown metric; known: {', '.join(known)}"))
            continue
        factory = _METRICS[name]
        accepted = _metric_options(factory)
        if accepted is not None and (bad := sorted(set(opts) - accepted)):
            problems.append((f"metrics[{i}].{name}", opts, f"unknown options {bad}; {name} takes "
                             f"{', '.join(sorted(accepted)) or 'no options'}"))
            continue
        if getattr(factory, "__module__", "") in _CHEAP_METRIC_MODULES:
            try:
                build_metric(name, **opts)
            except TokbenchError as e:
                problems.append((f"metrics[{i}].{name}", opts, str(e)))
        elif name.startswith("lpips") and "net" in opts:
            from .metrics.perceptual import canonical_net

            try:
                canonical_net(opts["net"])
            except TokbenchError as e:
                problems.append((f"metrics[{i}].{name}.net", opts["net"], str(e)))
    return problems


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def tokenizer_problems(entries: list[Any], where: str = "tokenizers") -> list[tuple[str, Any, str]]:
    """Unknown names, globs that match nothing, and options or sweep values the family does not take."""
    from .registry import find, list_tokenizers

    problems = []
    for i, entry in enumerate(entries or []):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue  # the schema reported it
        name, at = entry["name"], f"{where}[{i}]"
        if _is_glob(name):
            if not fnmatch.filter(list_tokenizers(), name):
                problems.append((f"{at}.name", name, "this glob matches no released variant (see `tokbench list`)"))
            continue
        try:
            family, _ = find(name)
        except TokbenchError as e:
            problems.append((f"{at}.name", name, str(e).split(" Run `tokbench list`")[0]))
            continue
        accepted = family.options
        if accepted is None:  # undeclared (families registered outside tokbench.tokenizers, e.g. by tests)
            continue
        for field in ("options", "sweep"):
            values = entry.get(field)
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                if key not in accepted:
                    problems.append((f"{at}.{field}.{key}", value, f"{family.name} does not take {key!r}; it takes "
                                     f"{', '.join(sorted(accepted))}"))
                    continue
                for j, v in enumerate(value if field == "sweep" and isinstance(value, list) else [value]):
                    try:
                        TypeAdapter(option_type(accepted[key])).validate_python(v, strict=True)
                    except ValidationError as e:
                        path = f"{at}.{field}.{key}" + (f"[{j}]" if field == "sweep" else "")
                        problems.append((path, v, e.errors()[0]["msg"]))
        for field, value in (("weights", entry.get("weights")), ("config", entry.get("config"))):
            if isinstance(value, str) and value != "random" and not Path(value).expanduser().exists():
                problems.append((f"{at}.{field}", value, "no such file"))
    return problems


def protocol_problems(raw: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Protocol names, of the suite and of its tokenizer entries, that no module registers."""
    from .protocols import protocols

    known = protocols()
    found = [("protocol", raw.get("protocol"))]
    found += [(f"tokenizers[{i}].protocol", t.get("protocol")) for i, t in enumerate(raw.get("tokenizers") or [])
              if isinstance(t, dict)]
    return [(where, p, f"unknown preprocessing protocol; known: {', '.join(sorted(known))}")
            for where, p in found if isinstance(p, str) and p and p not in known]  # "": the tokenizer's own


def data_problems(entries: list[Any], where: str = "data", open_them: bool = False) -> list[tuple[str, Any, str]]:
    """Data sources that do not parse (kind:PATH) or, with `open_them`, cannot be opened."""
    from .data import DataUnavailable, open_dataset, source_syntax_problem

    problems = []
    for i, entry in enumerate(entries or []):
        source = entry if isinstance(entry, str) else entry.get("source") if isinstance(entry, dict) else None
        if not isinstance(source, str):
            continue
        at = f"{where}[{i}]" if isinstance(entry, str) else f"{where}[{i}].source"
        if (why := source_syntax_problem(source)) is not None:
            problems.append((at, source, why))
        elif open_them:
            try:
                open_dataset(source, None)
            except DataUnavailable as e:
                problems.append((at, source, str(e)))
        train = entry.get("train") if isinstance(entry, dict) else None
        if isinstance(train, str):
            if (why := source_syntax_problem(train)) is not None:
                problems.append((f"{where}[{i}].train", train, why))
            elif open_them:
                try:
                    open_dataset(train, None)
                except DataUnavailable as e:
                    problems.append((f"{where}[{i}].train", train, str(e)))
    return problems


# Metrics that fit on a training split: every data entry of a suite that asks for one must name a split.
TRAINED_METRICS = ("knn", "linear_probe")


def split_problems(raw: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Data entries without a training split in a suite whose metrics need one (knn, linear_probe)."""
    names = {m if isinstance(m, str) else next(iter(m), None) for m in raw.get("metrics") or []
             if isinstance(m, (str, dict))}
    wanted = sorted(names & set(TRAINED_METRICS))
    if not wanted:
        return []
    problems = []
    for i, entry in enumerate(raw.get("data") or ["samples"]):
        if isinstance(entry, dict) and (entry.get("train") or entry.get("split")):
            continue
        at = f"data[{i}]" if isinstance(entry, str) else f"data[{i}].source"
        source = entry if isinstance(entry, str) else entry.get("source") if isinstance(entry, dict) else entry
        problems.append((at, source, f"{', '.join(wanted)} need a training split: write the entry as {{source: ..., "
                         "split: {train: 0.5, seed: 0}} or {source: ..., train: OTHER_LABELLED_SOURCE}"))
    return problems


def check_built_suite(suite: Any) -> None:
    """The registry pass for a `Suite` built in Python (its constructor checked the schema)."""
    if problems := registry_problems(suite.as_dict()):
        raise SuiteInvalid(problems, suite.path)


def registry_problems(raw: dict[str, Any], open_data: bool = False) -> list[tuple[str, Any, str]]:
    """Everything a suite names that tokbench must know: tokenizers, metrics, protocols, data sources."""
    problems = tokenizer_problems(raw.get("tokenizers"))
    if isinstance(raw.get("prefetch"), list):
        problems += [(w.replace("].name", "]"), v, m) for w, v, m in tokenizer_problems(raw["prefetch"], "prefetch")]
    problems += _metric_problems(raw.get("metrics"))
    problems += protocol_problems(raw)
    problems += data_problems(raw.get("data"), open_them=open_data)
    problems += split_problems(raw)
    return problems
