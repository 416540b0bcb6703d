"""Turn SIGTERM into an exception, so cleanup code runs as it does on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
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
    (a round's server state and its clients' states). Then they act as usual.

    (Masking the signals would not do: the process's other threads, TensorFlow's,
    would take them, and Python runs its handler in the main thread all the same.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in caught[:1]:  # now, as it would have acted
            if callable(handler := previous[signum]):
                handler(signum, None)
            else:
                os.kill(os.getpid(), signum)
