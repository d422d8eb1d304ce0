"""Benchmark suites as data: a YAML file names tokenizers (with sweeps), data sets and metrics."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .core import TokbenchError

DEFAULT_METRICS = ("psnr", "ssim", "bpp", "codebook", "speed")


@dataclass
class TokenizerEntry:
    """One tokenizer of a suite; `sweep` maps an option to the values to run (each value is a job)."""

    name: str
    label: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    resolution: int | None = None
    eval_resolution: int | None = None
    protocol: str | None = None
    weights: str | None = None
    config: Any = None
    published: dict[str, float] = field(default_factory=dict)
    published_source: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name
        for k, v in self.sweep.items():
            if not isinstance(v, list) or not v:
                raise TokbenchError(f"suite tokenizer {self.name!r}: sweep {k!r} must be a non-empty list, got {v!r}")

    def points(self) -> list[dict[str, Any]]:
        """The cartesian product of the sweep, as option dicts ([{}] without a sweep)."""
        keys = list(self.sweep)
        return [dict(zip(keys, vals)) for vals in itertools.product(*(self.sweep[k] for k in keys))]


@dataclass
class DataEntry:
    source: str
    limit: int | None = None


@dataclass
class Suite:
    name: str
    tokenizers: list[TokenizerEntry]
    data: list[DataEntry]
    metrics: list[tuple[str, dict[str, Any]]]
    description: str = ""
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    protocol: str | None = None
    resolution: int = 256  # for tokenizers without a native one (codecs)
    eval_resolution: int | None = None  # resize inputs and reconstructions before the metrics (LlamaGen 384->256)
    download: bool = True
    grid_images: int = 4
    num_workers: int | None = None
    checkpoint_seconds: float = 30.0
    # models and input batches in channels_last memory format (GPU convolutions): true, false, or "auto"
    # for the families that declare themselves convolutional (registry.Family.convolutional)
    channels_last: bool | str = False
    compile: bool = False  # torch.compile the encode and decode of module-backed tokenizers
    prefetch: list[str] = field(default_factory=list)  # fetched first when the hub is reachable (first_run)
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = [{n: o} if o else n for n, o in self.metrics]
        return d


def _metric_list(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for item in raw or DEFAULT_METRICS:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            (name, opts), = item.items()
            out.append((name, dict(opts or {})))
        else:
            raise TokbenchError(f"suite metric entries are names or {{name: {{options}}}}, got {item!r}")
    return out


def parse_suite(data: dict[str, Any], path: str | None = None, open_data: bool = False,
                extra_tokenizers: list[str] | None = None) -> Suite:
    """A suite from its YAML mapping, checked first (`suite_check`: every problem at once, as
    `SuiteInvalid`). `open_data` also opens its data sources; `extra_tokenizers` (names given on the
    command line) must be the suite's own entries or known tokenizers."""
    from .suite_check import SuiteInvalid, check_suite, tokenizer_problems

    problems: list = []
    try:
        check_suite(data, path, open_data=open_data)
    except SuiteInvalid as e:
        problems += e.problems
    if extra_tokenizers and isinstance(data, dict):
        own = {t if isinstance(t, str) else t.get("name") for t in data.get("tokenizers") or [] if t}
        own |= {t.get("label") for t in data.get("tokenizers") or [] if isinstance(t, dict)}
        problems += tokenizer_problems([None if n in own else n for n in extra_tokenizers],
                                       where="--tokenizers")
    if problems:
        raise SuiteInvalid(problems, path)
    known = set(Suite.__dataclass_fields__) - {"path"}
    unknown = set(data) - known
    if unknown:
        raise TokbenchError(f"unknown suite keys {sorted(unknown)} in {path or 'suite'}; known: {sorted(known)}")
    toks = []
    for t in data.get("tokenizers") or []:
        t = {"name": t} if isinstance(t, str) else dict(t)
        try:
            toks.append(TokenizerEntry(**t))
        except TypeError as e:
            raise TokbenchError(f"bad tokenizer entry {t!r} in {path or 'suite'}: {e}") from None
    if not toks:
        raise TokbenchError(f"suite {path or ''} lists no tokenizers")
    data_entries = []
    for d in data.get("data") or ["samples"]:
        d = {"source": d} if isinstance(d, str) else dict(d)
        data_entries.append(DataEntry(**d))
    fields = {k: v for k, v in data.items() if k not in ("tokenizers", "data", "metrics")}
    return Suite(
        name=fields.pop("name", Path(path).stem if path else "suite"),
        tokenizers=toks,
        data=data_entries,
        metrics=_metric_list(data.get("metrics")),
        path=path,
        **fields,
    )


def read_suite_file(path: str | Path) -> Any:
    """The YAML mapping of a suite file, unchecked."""
    path = Path(path)
    if not path.is_file():
        raise TokbenchError(f"suite file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TokbenchError(f"could not parse suite {str(path)!r}: {e}") from None


def load_suite(path: str | Path) -> Suite:
    return parse_suite(read_suite_file(path), str(path))
