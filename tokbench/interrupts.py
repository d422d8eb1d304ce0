"""SIGTERM handled as Ctrl-C is: a scheduler, `kill` or torchrun stopping a run saves its progress.

`tokbench.cli` turns SIGTERM into `Terminated` (a `KeyboardInterrupt`) for the whole command, so that
locks are released and temporary files removed on the way out; while a job evaluates, the first
SIGINT or SIGTERM asks it to stop at the end of its batch with its state saved (`evaluation`), and
under torchrun every rank does so for its own part (torchrun passes SIGTERM on to each rank).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

TERMINATED_EXIT = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM: handled as Ctrl-C is, with exit status 143."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a signal stops a run with: `Terminated` for SIGTERM, `KeyboardInterrupt` for SIGINT."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises `Terminated` wherever the program is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame) -> None:
        raise Terminated

    old = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
