"""Runs under torchrun: the process group, the rank's device, sharding, and metric-state reduction.

`torchrun --nproc_per_node=N -m tokbench run SUITE --out DIR` sets WORLD_SIZE, RANK and LOCAL_RANK;
`Context.from_env` joins the group (env:// rendezvous; gloo on the CPU, nccl on CUDA) and gives each
rank its own device (`cuda:LOCAL_RANK`). Without WORLD_SIZE (or with 1) nothing is initialised and
every collective below is the identity, so one code path serves one process and many.

Metric states are reduced with the reduction each metric declares (`add_state(..., dist_reduce_fx=...)`:
sums, maxima, concatenations), keeping their dtype (FID moments stay float64). The reduction runs on
rank 0 over the per-rank states saved in the run folder (`runfolder.JobStore`), the same code that
merges the states of an interrupted run with a different world size, so resume and many ranks share
one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist
from torchmetrics.utilities.data import dim_zero_cat, dim_zero_max, dim_zero_min, dim_zero_sum

from .core import TokbenchError


def process_rank() -> int:
    """This process's rank under torchrun (0 without it): the one place the environment is read for it."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank in [0, world), and whether it initialised the group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Context:
        """Join the torchrun process group when WORLD_SIZE > 1 (no-op when already joined)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = process_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda" and local_rank >= (gpus := torch.cuda.device_count()):
            raise TokbenchError(f"torchrun started more processes on this node than it has GPUs ({gpus}): each "
                                f"process needs a GPU of its own; use --nproc_per_node={gpus} (or --device cpu)")
        owns = False
        if not tdist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(local_rank)
            # The other ranks wait at a barrier while rank 0 fits a job's linear probe (minutes to tens of
            # minutes on ImageNet): a longer wait than the 10-minute default, TOKBENCH_DIST_TIMEOUT_MIN to change it.
            timeout = timedelta(minutes=float(os.environ.get("TOKBENCH_DIST_TIMEOUT_MIN", "120")))
            tdist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                                     timeout=timeout)
            owns = True
        return cls(rank=rank, world=world, local_rank=local_rank, owns_group=owns)

    def device(self, device: torch.device) -> torch.device:
        """Each rank its own GPU; the CPU is shared."""
        if device.type == "cuda" and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable objects)."""
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()


def shard(positions: list[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s contiguous share of `positions` (sizes differ by at most one; every position is
    in exactly one share, with no padding: unlike DistributedSampler, nothing is evaluated twice)."""
    n = len(positions)
    return positions[rank * n // world:(rank + 1) * n // world]


_REDUCE = {dim_zero_sum: "sum", dim_zero_max: "max", dim_zero_min: "min", dim_zero_cat: "cat"}


def reduce_states(metric: torch.nn.Module, states: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge several `metric.state_dict()`s (ranks, or earlier parts of a resumed run) into one, with
    each state's `dist_reduce_fx`. A state still empty (size 0: a codebook histogram sized on the first
    batch, on a rank that saw no image) is left out of sums and maxima; dtypes are kept."""
    # Not torchmetrics' public `merge_state`: it concatenates an incoming state before the local one (data-set
    # order matters for `cat` states such as the probes' features) and cannot add a rank's still-empty
    # histogram to a sized one. The reduction of each state is torchmetrics' own record of `dist_reduce_fx`.
    out: dict[str, Any] = {}
    for name, fx in metric._reductions.items():  # noqa: SLF001 - no public accessor for dist_reduce_fx
        how = _REDUCE.get(fx)
        values = [s[name] for s in states if name in s]
        if not values:
            continue
        if isinstance(values[0], list) or how == "cat":
            out[name] = [t for v in values for t in (v if isinstance(v, list) else [v])]
            continue
        sized = [v for v in values if v.numel() > 0] or values[:1]
        if how is None or len({tuple(v.shape) for v in sized}) > 1:
            raise TokbenchError(f"cannot merge state {name!r} of metric {type(metric).__name__}: reduction "
                                f"{getattr(fx, '__name__', fx)} over shapes {[tuple(v.shape) for v in sized]}")
        stacked = torch.stack([v.to(sized[0].dtype) for v in sized])
        out[name] = {"sum": lambda s: s.sum(0), "max": lambda s: s.amax(0), "min": lambda s: s.amin(0)}[how](stacked)
    return out


def metric_states(metric: torch.nn.Module) -> dict[str, Any]:
    """A metric's accumulated states on the CPU (not its networks' weights): what a rank saves."""
    return {name: [t.detach().cpu() for t in value] if isinstance(value, list) else value.detach().cpu()
            for name, value in metric.metric_state.items()}


def load_states(metric: torch.nn.Module, state: dict[str, Any]) -> None:
    """Set a metric's states (as `reduce_states` gives them) on the metric's device."""
    device = getattr(metric, "device", torch.device("cpu"))
    for name, value in state.items():
        if isinstance(value, list):
            setattr(metric, name, [t.to(device) for t in value])
        else:
            setattr(metric, name, value.to(device))
    # counted as updated (torchmetrics warns on compute() otherwise; it has no public setter) and no cached
    # result kept (`reset` drops it too, but a caller may load into a metric it computed before)
    metric._update_count = max(1, metric.update_count)  # noqa: SLF001
    metric._computed = None  # noqa: SLF001
