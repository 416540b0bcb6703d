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


def test_a_cancelled_cluster_job_is_one_line_for_the_sweep():
    """A SLURM job's error reaches the sweep only as its traceback's text (submitit's
    FailedJobError): the sweep prints our last line, and exits 130 for a cancelled job."""
    from submitit.core.utils import FailedJobError

    from federated_research.errors import exit_for

    trace = ("Traceback (most recent call last):\n  File \"train.py\", line 152, in hydra_main\n"
             "federated_research.errors.JobCancelled: SLURM job 4: received SIGTERM (scancel, "
             "its time limit, or preemption); its run is marked KILLED in MLflow. Fix: the "
             "state after 9 rounds is saved in out/checkpoints/round_9; resume with: python "
             "-m federated_research.train resume=out\n")
    line, code = exit_for(FailedJobError(f"Job (task=0) failed during processing with "
                                         f"trace:\n----------------------\n{trace}"))
    assert code == 130
    assert line.startswith("error: SLURM job 4: received SIGTERM") and line.endswith(
        "resume=out")
    lost = trace.replace("JobCancelled: SLURM job 4", "WorkerLost: runtime.workers=n1:8000")
    assert exit_for(FailedJobError(lost)) == (  # a lost worker exits 1, as in one process
        "error: " + lost.splitlines()[-1].split(": ", 1)[1], 1)
    assert exit_for(FailedJobError("Traceback ...\nZeroDivisionError: division by zero")) \
        is None  # not ours: its traceback stays
