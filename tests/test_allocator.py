"""tokbench.allocator: large blocks come from the reusable heap, not fresh mmaps, after keep_freed_memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import torch
from tokbench.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped_while_alive():
    x = torch.empty(48 * 2**20, dtype=torch.uint8)  # 48 MiB: above glibc's largest dynamic threshold
    x.fill_(1)
    mapped = libc.mallinfo2().hblkhd
    del x
    return mapped

before = mapped_while_alive()
state = keep_freed_memory()
after = mapped_while_alive()
print(before >= 48 * 2**20, after < 48 * 2**20, state)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_large_blocks_leave_mmap_for_the_heap(tmp_path):
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - glibc >= 2.33
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "True", "glibc,", "mmap/trim", "thresholds", "1", "GiB"]


def test_opt_out_is_recorded(monkeypatch):
    import tokbench.allocator as allocator

    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv("TOKBENCH_MALLOC", "default")
    assert allocator.keep_freed_memory() == "system default (TOKBENCH_MALLOC=default)"
