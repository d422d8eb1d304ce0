"""Benchmark suites as data: a YAML file names tokenizers (with sweeps), data sets and metrics."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .core import TokbenchError
from .options import DType, PositiveInt
from .safe_yaml import load_yaml
from .suite_check import SuiteInvalid, registry_problems, tokenizer_problems

DEFAULT_METRICS = ("psnr", "ssim", "bpp", "codebook", "speed")
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizerEntry(_Strict):
    """One tokenizer of a suite; `sweep` maps an option to the values to run (each value is a job).
    `published`: numbers to print beside the measured ones; by default the variant's own (one copy)."""

    name: str
    label: str = ""
    options: dict[str, Any] = {}
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
    resolution: PositiveInt | None = None
    eval_resolution: PositiveInt | None = None
    protocol: str | None = None
    weights: str | None = None
    config: dict[str, Any] | str | None = None
    published: dict[str, float] = {}
    published_source: str = ""

    def __init__(self, name: str | None = None, /, **fields: Any) -> None:
        super().__init__(**({"name": name} if name is not None else {}), **fields)

    @model_validator(mode="after")
    def _label_defaults_to_name(self) -> TokenizerEntry:
        self.label = self.label or self.name
        return self

    def points(self) -> list[dict[str, Any]]:
        """The cartesian product of the sweep, as option dicts ([{}] without a sweep)."""
        keys = list(self.sweep)
        return [dict(zip(keys, vals)) for vals in itertools.product(*(self.sweep[k] for k in keys))]


class Split(_Strict):
    """A stratified split of a labelled source: the fraction of each class that trains the probes."""

    train: Annotated[float, Field(gt=0, lt=1)] = 0.5
    seed: int = 0


class DataEntry(_Strict):
    """A data source. For the probes (knn, linear_probe) a labelled source needs a training split: `train`, a
    separate labelled source (with at most `train_per_class` images of each class), or `split`, a stratified
    split of the source itself (`{train: 0.5, seed: 0}`: the fraction of each class that trains)."""

    source: str
    limit: PositiveInt | None = None
    train: str | None = None  # a separate labelled training set for the probes
    train_per_class: PositiveInt | None = None
    split: Split | None = None  # or a stratified split of `source` itself

    def __init__(self, source: str | None = None, /, **fields: Any) -> None:
        super().__init__(**({"source": source} if source is not None else {}), **fields)

    @model_validator(mode="after")
    def _one_split_form(self) -> DataEntry:
        if self.train and self.split:
            raise ValueError("give either `train` (a separate training set) or `split` (a split of source), not both")
        if self.train_per_class and not self.train:
            raise ValueError("`train_per_class` limits a `train` set; this entry has none")
        return self

    def split_options(self) -> dict[str, Any] | None:
        """The keyword arguments of `data.with_train_split` (None without a training split)."""
        if self.train:
            return {"train": self.train, "train_per_class": self.train_per_class}
        if self.split:
            return {"fraction": float(self.split.train), "seed": int(self.split.seed)}
        return None


def _shorthand(key: str) -> Any:
    """A list item given as a bare string stands for `{key: item}` (`- jpeg-q75`, `- samples`)."""

    def expand(items: Any) -> Any:
        return [{key: x} if isinstance(x, str) else x for x in items] if isinstance(items, list) else items

    return expand


def _metric_pairs(items: Any) -> Any:
    """`psnr` and `{lpips: {net: vgg}}` as (name, options) pairs; other shapes are left for the metric check."""
    if not isinstance(items, list):
        return items
    out = []
    for x in items:
        if isinstance(x, str):
            out.append((x, {}))
        elif isinstance(x, dict) and len(x) == 1 and isinstance(next(iter(x.values())), (dict, type(None))):
            (name, opts), = x.items()
            out.append((name, dict(opts or {})))
        elif isinstance(x, (tuple, list)) and len(x) == 2:
            out.append(tuple(x))
        else:
            out.append(x)
    return out


class Suite(_Strict):
    """A benchmark suite: the one schema of the YAML files and of suites built in Python. Field types and
    ranges are checked here; what depends on the registries (tokenizer, metric and protocol names, the
    options each family takes, data sources) is the second pass, `suite_check.registry_problems`."""

    name: str = "suite"
    description: str = ""
    tokenizers: Annotated[list[TokenizerEntry], Field(min_length=1), BeforeValidator(_shorthand("name"))]
    data: Annotated[list[DataEntry], BeforeValidator(_shorthand("source"))] = [DataEntry("samples")]
    metrics: Annotated[list[tuple[str, dict[str, Any]]], BeforeValidator(_metric_pairs)] = [
        (m, {}) for m in DEFAULT_METRICS]
    batch_size: PositiveInt = 8
    device: Device = "auto"
    dtype: DType = "float32"
    seed: int = 0
    protocol: str | None = None
    resolution: PositiveInt = 256  # for tokenizers without a native one (codecs)
    eval_resolution: PositiveInt | None = None  # resize inputs and reconstructions before the metrics (384->256)
    download: bool = True
    grid_images: Annotated[int, Field(ge=0)] | None = None  # the older name of save_samples
    # the originals and reconstructions of the first N images of each job, saved as lossless PNG
    # (jobs/<job>/images/) for the report's viewer and grid
    save_samples: Annotated[int, Field(ge=0)] | None = Field(default=None, validate_default=True)
    num_workers: Annotated[int, Field(ge=0)] | None = None
    checkpoint_seconds: Annotated[float, Field(ge=0)] = 30.0
    # models and input batches in channels_last memory format (GPU convolutions): true, false, or "auto"
    # for the families that declare themselves convolutional (registry.Family.convolutional)
    channels_last: bool | Literal["auto"] = False
    compile: bool = False  # torch.compile the encode and decode of module-backed tokenizers
    prefetch: list[str] = []  # fetched first when the hub is reachable (first_run)
    path: str | None = None  # the file it was read from (recorded; not written in a suite file)

    @field_validator("save_samples", mode="after")
    @classmethod
    def _one_sample_count(cls, value: int | None, info: ValidationInfo) -> int:
        older = info.data.get("grid_images")
        if value is not None and older is not None and value != older:
            raise ValueError(f"grid_images ({older}) is the older name of save_samples; give one of them")
        return value if value is not None else older if older is not None else 4

    @model_validator(mode="after")
    def _grid_images_is_save_samples(self) -> Suite:
        self.grid_images = self.save_samples  # one number under both names
        return self

    @field_validator("data", mode="after")
    @classmethod
    def _samples_when_empty(cls, data: list[DataEntry]) -> list[DataEntry]:
        return data or [DataEntry("samples")]

    @field_validator("metrics", mode="after")
    @classmethod
    def _default_metrics_when_empty(cls, metrics: list[tuple[str, dict[str, Any]]]) -> list:
        return metrics or [(m, {}) for m in DEFAULT_METRICS]

    def as_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["metrics"] = [{n: o} if o else n for n, o in self.metrics]
        return d


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_branch(part: Any) -> bool:
    """A union member's tag in a pydantic error location (`str`, `dict[...]`)."""
    return isinstance(part, str) and (part == "str" or part.startswith("dict["))


def _schema_problems(raw: dict[str, Any]) -> list[tuple[str, Any, str]]:
    try:
        Suite.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = err["loc"]
            if loc and loc[0] == "metrics":
                continue  # the shape of each metric entry is reported by the metric check, with its name
            # a list item typed `str | Model` fails both members: report the one that fits its shape
            branch = next((i for i, p in enumerate(loc) if _is_branch(p)), None)
            if branch is not None:
                value: Any = raw
                for p in loc[:branch]:
                    value = value[p]
                if (loc[branch] == "str") != isinstance(value, str):
                    continue
            problems.append((_where(tuple(p for p in loc if not _is_branch(p))), err.get("input"), err["msg"]))
        return problems
    return []


def check_suite(raw: Any, path: str | None = None, open_data: bool = False) -> None:
    """Raise `SuiteInvalid` listing every problem of a suite given as its YAML mapping."""
    if not isinstance(raw, dict):
        raise SuiteInvalid([("(suite)", type(raw).__name__, "a suite must be a YAML mapping")], path)
    problems = _schema_problems(raw) + registry_problems(raw, open_data)
    if problems:
        raise SuiteInvalid(problems, path)


def parse_suite(data: dict[str, Any], path: str | None = None, open_data: bool = False,
                extra_tokenizers: list[str] | None = None) -> Suite:
    """A suite from its YAML mapping, checked first (`suite_check`: every problem at once, as
    `SuiteInvalid`). `open_data` also opens its data sources; `extra_tokenizers` (names given on the
    command line) must be the suite's own entries or known tokenizers."""
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
    fields = {k: v for k, v in data.items() if v is not None or k not in ("data", "metrics", "name")}
    fields.setdefault("name", Path(path).stem if path else "suite")
    return Suite.model_validate({**fields, "path": path})


def read_suite_file(path: str | Path) -> Any:
    """The YAML mapping of a suite file, unchecked (`load_yaml`: UTF-8, no alias bombs)."""
    path = Path(path)
    if not path.is_file():
        raise TokbenchError(f"suite file {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokbenchError(f"cannot read suite {str(path)!r}: {e.strerror or e}") from None
    raw = load_yaml(data, f"suite {str(path)!r}")
    if (bad := _non_name_key(raw)) is not None:
        from .suite_check import quote

        raise TokbenchError(f"suite {str(path)!r}: {bad[0] or '(top level)'}: a key must be a name, got {quote(bad[1])}")
    return raw


def _non_name_key(value: Any, where: str = "") -> tuple[str, Any] | None:
    """(where, key) of the first mapping key in `value` that is not a string (None: every key is a name)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return where, k
            if (bad := _non_name_key(v, f"{where}.{k}" if where else k)) is not None:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (bad := _non_name_key(v, f"{where}[{i}]")) is not None:
                return bad
    return None


def load_suite(path: str | Path) -> Suite:
    return parse_suite(read_suite_file(path), str(path))
