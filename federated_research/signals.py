"""Turn SIGTERM into an exception, so cleanup code runs as it does on Ctrl-C."""

from __future__ import annotations

import signal


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so `finally` blocks and `with` exits run."""


def raise_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C does (Python's default just dies)."""
    def handler(signum, frame):
        raise Terminated(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
