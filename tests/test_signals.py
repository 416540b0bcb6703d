"""Signals stop a run even where Python drops the exception their handler raises."""

from __future__ import annotations

import gc
import os
import signal

import pytest

from federated_research.signals import Terminated, raise_if_signalled, raise_on_sigterm


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop
def test_a_signal_whose_exception_python_dropped_is_raised_again():
    """JAX registers a garbage-collector callback; a handler that runs inside it has its
    exception printed as "Exception ignored" and dropped, and the run trained on (CI saw
    a SIGTERM'd run still training 60 s later). The loop asks before every round."""
    sig = signal.SIGTERM
    before = signal.getsignal(sig)
    undo = raise_on_sigterm()
    sent = []

    def signal_inside_gc(phase, info):
        if not sent:
            sent.append(phase)
            os.kill(os.getpid(), sig)  # the handler runs here, inside the callback

    gc.callbacks.append(signal_inside_gc)
    try:
        gc.collect()  # the exception is dropped: nothing reaches this frame
        assert sent
        with pytest.raises(Terminated):
            raise_if_signalled()
    finally:
        gc.callbacks.remove(signal_inside_gc)
        undo()
    raise_if_signalled()  # undone: a later run in this process is not stopped
    assert signal.getsignal(sig) is before
