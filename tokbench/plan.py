"""Planning a run: the jobs of a suite (tokenizer x sweep point x data set), and which of them share
one loaded model."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core import Tokenizer
from .suite import Suite, TokenizerEntry


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")


@dataclass
class Job:
    entry: TokenizerEntry
    load_options: dict[str, Any]
    encode_options: dict[str, Any]
    data_source: str
    data_limit: int | None
    # the data entry's training split for the probes (`DataEntry.split_options()`), None without one
    data_split: dict[str, Any] | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {**self.load_options, **self.encode_options}

    def key(self, suite: Suite) -> dict[str, Any]:
        return {
            "tokenizer": self.entry.name, "label": self.entry.label, "options": self.entry.options,
            "params": self.params, "weights": self.entry.weights, "config": self.entry.config,
            "resolution": self.entry.resolution or None, "protocol": self.entry.protocol or suite.protocol,
            "eval_resolution": self.entry.eval_resolution or suite.eval_resolution,
            "data": self.data_source, "limit": self.data_limit, "dtype": suite.dtype,
            "metrics": suite.metrics,
            # speed options only where set, so the ids of runs made before they existed stay valid
            **{k: v for k in ("channels_last", "compile") if (v := getattr(suite, k))},
            **({"data_split": self.data_split} if self.data_split else {}),
        }

    def id(self, suite: Suite) -> str:
        digest = hashlib.sha1(json.dumps(self.key(suite), sort_keys=True, default=str).encode()).hexdigest()[:8]
        params = "_".join(f"{k}={v}" for k, v in self.params.items())
        data_name = self.data_source.split(":")[0]
        return slug(f"{self.entry.label}{'_' + params if params else ''}__{data_name}__{digest}")


def plan_jobs(suite: Suite, tokenizer_names: list[str] | None = None, data: list[str] | None = None) -> list[Job]:
    entries = suite.tokenizers
    if tokenizer_names:
        entries = [e for e in entries if e.name in tokenizer_names or e.label in tokenizer_names]
        known = {e.name for e in suite.tokenizers} | {e.label for e in suite.tokenizers}
        entries += [TokenizerEntry(name=n) for n in tokenizer_names if n not in known]
    entries = expand_globs(entries)
    data_entries = [(d.source, d.limit, d.split_options()) for d in suite.data]
    if data:  # sources named on the command line take the suite's stratified split form, if it has one
        split = next((d.split_options() for d in suite.data if d.split), None)
        data_entries = [(d, None, split) for d in data]
    jobs = []
    for entry in entries:
        takes = encode_option_names(entry.name)
        fixed = {k: v for k, v in entry.options.items() if k in takes}  # encode options given once, not swept
        for point in entry.points():
            load = {k: v for k, v in point.items() if k not in takes}
            encode = {**fixed, **{k: v for k, v in point.items() if k in takes}}
            for source, limit, split in data_entries:
                jobs.append(Job(entry, load, encode, source, limit, split))
    return jobs


def encode_option_names(name: str) -> set[str]:
    """The options that tokenizer `name`'s family takes at encode time (its declaration; none for a name
    that does not resolve: its loader then says what is wrong)."""
    from .registry import family_of

    family = family_of(name)
    return set(family.encode_options) if family is not None else set()


def expand_globs(entries: list[TokenizerEntry]) -> list[TokenizerEntry]:
    """An entry whose name is a glob (`"*"`, `"janus*"`) stands for every released variant it matches
    whose weights are already on this machine and that no other entry names; the rest are left out."""
    from .registry import variants
    from .weights import is_available

    named = {e.name for e in entries if not any(c in e.name for c in "*?[")}
    out = []
    for e in entries:
        if not any(c in e.name for c in "*?["):
            out.append(e)
            continue
        for v in variants(e.name):
            if v.name not in named and v.weights is not None and is_available(v.weights):
                named.add(v.name)
                out.append(e.model_copy(update={"name": v.name, "label": v.name}))
    return out



class ModelCache:
    """One loaded model at a time, shared by consecutive jobs that can use it.

    A sweep over encode options (`n_tokens` of One-D-Piece) reuses the loaded model; any other option (a
    codec's `quality`, a `dtype`) is a load option, one model per value: the planner split them from the
    families' declarations. `load(entry, load_options)` returns the tokenizer or the exception that
    stopped it (kept, so the job can report it).
    """

    def __init__(self, load: Callable[[TokenizerEntry, dict[str, Any]], Tokenizer | Exception]) -> None:
        self.load = load
        self.key: str | None = None
        self.model: Tokenizer | Exception | None = None

    def get(self, job: Job) -> Tokenizer | Exception:
        key = json.dumps([job.entry.name, job.entry.weights, job.entry.config, job.entry.options, job.load_options],
                         sort_keys=True, default=str)
        if key != self.key:
            self.model = None  # free the previous model before loading the next
            self.key, self.model = key, self.load(job.entry, job.load_options)
        assert self.model is not None
        return self.model
