"""Coarse-to-fine multi-scale ids (VAR-style residual quantisation: TokenFlow, VAR): which prefix of the
scales a sequence holds, and the `n_scales=k` encode option shared by those tokenizers.

Ids are the scales' row-major maps concatenated coarse to fine, so a prefix of k scales is a valid
(coarser) sequence of sum(s^2 for the first k sides) ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core import TokbenchError, Tokens


def scales_for_count(n_ids: int, scales: Sequence[int]) -> tuple[int, ...]:
    """The prefix of `scales` (sides, coarse to fine) whose token counts add up to `n_ids`, or a clear error."""
    counts = [sum(s * s for s in scales[: i + 1]) for i in range(len(scales))]
    if n_ids not in counts:
        raise TokbenchError(
            f"{n_ids} ids per image is not a prefix of the scales {list(scales)} (valid counts: {counts})"
        )
    return tuple(scales[: counts.index(n_ids) + 1])


def multiscale_tokens(
    ids: torch.Tensor, scales: Sequence[int], n_scales: int | None, codebook_size: int
) -> Tokens:
    """Tokens of all-scale ids (B, sum(s^2)), keeping the first `n_scales` scales (None: all);
    the meta gets `scales` (the kept sides), `scale_lengths` and `grid` (the finest side, squared)."""
    kept = tuple(scales)
    if n_scales is not None:
        if not 1 <= int(n_scales) <= len(scales):
            raise TokbenchError(f"n_scales must be in 1..{len(scales)}, got {n_scales}")
        kept = kept[: int(n_scales)]
        ids = ids[:, : sum(s * s for s in kept)]
    return Tokens(
        ids=ids,
        codebook_size=codebook_size,
        meta={"scales": list(kept), "scale_lengths": [s * s for s in kept], "grid": (scales[-1], scales[-1])},
    )
