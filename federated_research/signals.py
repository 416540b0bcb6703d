"""Signals as exceptions: SIGTERM unwinds the stack like Ctrl-C, so cleanup code runs.

A handler's exception can be lost. Python runs the handler in the main thread
wherever it happens to be, and drops what is raised inside a garbage-collector
callback or a `__del__` ("Exception ignored in ..."; JAX, which TFF imports,
registers such a callback): the run would go on training as if never asked to
stop. So SIGTERM is also recorded, and `raise_if_signalled()`, called where the
loop can stop cleanly (before each round), raises it again. (Ctrl-C keeps Python's
own handler: a lost KeyboardInterrupt is rare, and a second Ctrl-C stops the run.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so `finally` blocks and `with` exits run."""


_received: list[int] = []  # SIGTERMs whose exception was raised (and maybe lost)


def _handler(signum, frame) -> None:
    _received.append(signum)
    raise Terminated("received SIGTERM")


def raise_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM unwind the stack like Ctrl-C does (Python's default just dies), and
    record it, for `raise_if_signalled`. (Ctrl-C keeps Python's own handler.) Returns
    what undoes it (for a process that goes on, e.g. a test's)."""
    previous = signal.signal(signal.SIGTERM, _handler)

    def undo() -> None:
        signal.signal(signal.SIGTERM, previous)
        _received.clear()

    return undo


def raise_if_signalled() -> None:
    """Raise again a signal whose exception was lost (see the module's docstring)."""
    if _received:
        raise Terminated("received SIGTERM")


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
