"""Turn SIGTERM into an exception, so cleanup code runs as it does on Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so `finally` blocks and `with` exits run."""


def raise_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C does (Python's default just dies)."""
    def handler(signum, frame):
        raise Terminated(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def deferred():
    """Hold SIGINT and SIGTERM until the block is done: what it changes changes whole
    (a round's server state and its clients' states). Then they act as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
