"""The process a run lives in: set up once, before Hydra and TensorFlow start.

Apart from the run itself (train.py) because none of it is about one run: the
malloc settings must precede TensorFlow's threads, the environment reaches the
sweep's worker processes, and SIGTERM must unwind the stack like Ctrl-C so that
every run is closed (KILLED) and checkpointed.
"""

from __future__ import annotations

import os
import warnings

from federated_research.resources import tune_malloc
from federated_research.signals import raise_on_sigterm


def prepare_process() -> None:
    """Quiet, flat-memory, signal-safe: what every run of this process needs first."""
    tune_malloc()  # before TensorFlow's threads: flat memory over long runs
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, to print them in one line
    # TF's C++ INFO lines drown the progress bar and its import-time "Unable to
    # register cuDNN factory" lines (CPU build) read like errors; set it to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # google.rpc (via TFF) imports pkg_resources, which warns on every run; the
    # setuptools pin that keeps TensorBoard's CLI working keeps the module, not the noise.
    quiet = "ignore:pkg_resources is deprecated:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                          quiet]))  # sweep workers too
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                            category=UserWarning)
    raise_on_sigterm()


class StartupClock:
    """When a job's start-up began, for `time/startup_seconds`.

    A process's first job counts from the process's start (the imports are its
    start-up); a later job of the same process (a basic-launcher sweep) counts
    from its own start. `started(job_start)` answers; `ready()` marks the
    process's first job as past its start-up.
    """

    _ready_pid: int | None = None

    @classmethod
    def started(cls, job_start: float) -> float:
        if cls._ready_pid == os.getpid():
            return job_start
        import psutil

        return psutil.Process().create_time()

    @classmethod
    def ready(cls) -> None:
        cls._ready_pid = os.getpid()
