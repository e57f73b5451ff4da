"""SIGTERM handled like Ctrl-C: what ``timeout``, ``kill`` and cluster schedulers send before they kill a job.

Inside :func:`sigterm_as_interrupt` a SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so every
clean-up written for Ctrl-C runs for it too: the run is marked ``interrupted``, the checkpoint of the last finished
round stays, and rerunning the same command resumes. Only the exit code differs (128 + the signal's number).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_CTRL_C = 128 + signal.SIGINT  # 130, what a shell reports for a process stopped by Ctrl-C
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM was received; raised where Ctrl-C's ``KeyboardInterrupt`` would be, and handled alike."""


def exit_code(err: BaseException) -> int:
    """The shell's exit code for a process stopped by ``err``: 143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_SIGTERM if isinstance(err, Terminated) else EXIT_CTRL_C


def raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    """A SIGTERM handler: raise :class:`Terminated` once; later SIGTERMs are ignored so the clean-up finishes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored afterwards.

    Signal handlers belong to the main thread: called from another thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
