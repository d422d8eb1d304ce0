"""A suite's `prefetch` list: weights fetched before the run when the hub can be reached, so that a
first `make run` on a connected machine shows neural tokenizers beside the codecs.

It says first what it will download and how big it is, and how to skip it (`--no-download`, or
`HF_HUB_OFFLINE=1`); downloads show huggingface_hub's progress bars. Offline (or with the hub
unreachable) nothing is fetched and the run behaves as without the list: tokenizers whose weights
are missing are skipped with their fetch command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .weights import Artifact, WeightsUnavailable, fetch, is_available, offline

if TYPE_CHECKING:
    from .distributed import Context


@dataclass(frozen=True)
class Download:
    tokenizer: str
    artifact: Artifact
    size: int  # bytes


def prefetch_plan(names: list[str]) -> list[Download] | None:
    """The weights of `names` that are not on this machine, with their sizes as the hub reports them;
    None when downloads are off or the hub cannot be reached."""
    from .registry import find

    if offline():
        return None
    missing = []
    for name in names:
        variant = find(name)[1]  # a family name has no weights of its own to fetch
        artifact = variant.weights if variant is not None else None
        if isinstance(artifact, Artifact) and artifact.repo_id and not is_available(artifact):
            missing.append((name, artifact))
    if not missing:
        return []
    import huggingface_hub

    plan = []
    for name, artifact in missing:
        try:
            url = huggingface_hub.hf_hub_url(artifact.repo_id, artifact.filename, revision=artifact.revision)
            size = huggingface_hub.get_hf_file_metadata(url).size
        except Exception:  # noqa: BLE001 - no network, no DNS, hub down: behave as offline
            return None
        plan.append(Download(name, artifact, int(size or artifact.size or 0)))
    return plan


def announce(plan: list[Download]) -> str:
    total = sum(d.size for d in plan)
    items = ", ".join(f"{d.tokenizer} ({d.artifact.repo_id}/{d.artifact.filename}, {d.size / 2**20:.0f} MiB)"
                      for d in plan)
    return (f"tokbench: first run: downloading the weights of {len(plan)} neural tokenizer"
            f"{'s' * (len(plan) != 1)} so that the report compares them with the codecs: {items}; "
            f"{total / 2**30:.2f} GiB in all, once, into the Hugging Face cache. Skip this with --no-download "
            "(or HF_HUB_OFFLINE=1); `tokbench fetch NAME` fetches any of them later.")


def prefetch(names: list[str], log: Callable[[str], None] = print) -> list[str]:
    """Announce and fetch the missing weights of `names` (see module doc); returns the names fetched."""
    plan = prefetch_plan(names)
    if not plan:
        return []
    log(announce(plan))
    done = []
    for d in plan:
        try:
            fetch(d.artifact)
            done.append(d.tokenizer)
        except WeightsUnavailable as e:  # the run goes on; that tokenizer is skipped with its fetch command
            log(f"tokbench: could not fetch {d.tokenizer}: {str(e).splitlines()[0]}")
    return done


def prefetch_on_each_node(ctx: Context, names: list[str], log: Callable[[str], None] = print) -> None:
    """Under torchrun, the first process of each node fetches (nodes may have caches of their own) while
    the others wait for it, then load what it fetched; in one process, just `prefetch`."""
    if ctx.local_rank == 0:
        prefetch(names, log if ctx.is_main else (lambda _: None))
    ctx.barrier()
