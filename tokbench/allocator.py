"""Host-memory allocator settings for benchmark processes.

glibc's malloc serves blocks above a threshold (128 KiB, raised on the fly up to 32 MiB) with fresh
mmap()s and gives freed heap memory back to the system past a trim threshold. A model's activations
(tens of MiB a layer on a CPU) are then mapped anew and page-faulted in on every call, and the metric
buffers freed between batches make the heap shrink and grow again: measured on a 2-core CPU, LlamaGen
VQ-16 encode + decode ran 1.7x slower inside the harness than in a bare loop for that reason alone
(benchmarks/perf.py). `keep_freed_memory` raises both thresholds once per process, so freed blocks are
reused instead; the resident memory then stays at its peak, which a benchmark process reaches anyway.

PyTorch's CPU performance guide suggests swapping in jemalloc or tcmalloc (LD_PRELOAD) for the same
reason; that needs a system library and a restart, while glibc's `mallopt` can be set from a running
process. Other C libraries (macOS, musl) are left as they are. `TOKBENCH_MALLOC=default` opts out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB: blocks below it come from the heap and stay there once freed

_state: str | None = None


def keep_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds to 1 GiB (once per process); returns what is in effect,
    for the run record: `glibc, mmap/trim thresholds 1 GiB`, or why nothing was changed."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get("TOKBENCH_MALLOC", "").lower() == "default":
        _state = "system default (TOKBENCH_MALLOC=default)"
    elif not sys.platform.startswith("linux"):
        _state = "system default"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            ok = False
        _state = "glibc, mmap/trim thresholds 1 GiB" if ok else "system default (no glibc mallopt)"
    return _state
