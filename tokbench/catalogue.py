"""Every weights artifact tokbench knows, by name: the registered ones (metric networks, GenEval's
detector) and the weights of every tokenizer variant. Above `weights` (which resolves and fetches one
artifact) and `registry`, so neither needs to import the modules that register artifacts.
"""

from __future__ import annotations

from .core import TokbenchError
from .geneval import detector, layout  # noqa: F401 - they register GenEval's detector and metadata artifacts
from .metrics.base import metric_names
from .registry import find, variants
from .weights import Artifact, registered_artifacts


def artifacts() -> dict[str, Artifact]:
    """Every known artifact by name: the registered ones (metric modules register theirs on import)
    and the weights of every tokenizer variant."""
    metric_names()  # imports every metric module once
    known = registered_artifacts()
    for v in variants():
        if isinstance(v.weights, Artifact):
            known.setdefault(v.weights.name, v.weights)
    return dict(sorted(known.items()))


def get_artifact(name: str) -> Artifact:
    """The artifact called `name`, or the weights of the tokenizer variant called `name`.

    Raises a `TokbenchError` listing the known names otherwise.
    """
    known = artifacts()
    if name in known:
        return known[name]
    try:
        _, variant = find(name)
    except TokbenchError:
        variant = None
    if variant is not None and isinstance(variant.weights, Artifact):
        return variant.weights
    raise TokbenchError(
        f"unknown weights artifact {name!r}; known: {', '.join(known) or '(none)'} "
        "(or a tokenizer variant name, see `tokbench list`)"
    )
