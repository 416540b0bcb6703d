"""Where metrics go: one interface, several sinks, the same dict to each.

A sink has `log_metrics(metrics, step)` and `close(status)`, status being
MLflow's FINISHED, FAILED or KILLED; a sink that stores files (MLflow) also has
`log_file(path, artifact_path)`. `Tracker` fans out to its sinks and closes
every one of them even when another fails, so a crash never leaves an MLflow
run RUNNING or a TensorBoard file unflushed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from federated_research.signals import Terminated, deferred

log = logging.getLogger(__name__)


class Sink(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self, status: str) -> None: ...


class Tracker:
    """Fan-out to several sinks; use as a context manager to close them with the right status."""

    def __init__(self, sinks: Sequence[Sink], run_name: str = "") -> None:
        self.sinks = list(sinks)
        self.run_name = run_name

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Every sink gets the round whole: a signal waits until they all have it (a
        signal inside a sink's write can tear an event file or lock the MLflow store)."""
        with deferred():
            for sink in self.sinks:
                sink.log_metrics(metrics, step)

    def log_file(self, path, artifact_path: str) -> None:
        """A file of the run (the trained model) to every sink that stores files."""
        with deferred():
            for sink in self.sinks:
                if hasattr(sink, "log_file"):
                    sink.log_file(path, artifact_path)

    def close(self, status: str) -> None:
        for sink in self.sinks:
            try:
                sink.close(status)
            except Exception:  # noqa: BLE001 - the other sinks must still close
                log.exception("could not close %s", type(sink).__name__)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(status_for(exc))


def status_for(exc: BaseException | None) -> str:
    """MLflow run status for how a run ended: interrupted runs are KILLED."""
    if exc is None:
        return "FINISHED"

    return "KILLED" if isinstance(exc, KeyboardInterrupt | Terminated) else "FAILED"
