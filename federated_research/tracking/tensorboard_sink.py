"""TensorBoard scalars, one event-file directory per run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf

from federated_research.tracking.journal import Logged, unlogged


def logged_scalars(logdir: Path) -> Logged:
    """The (tag, step) pairs already in a run's event files (read with TensorBoard's loader)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    pairs: Logged = set()
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():  # stops at a record cut by a kill
            pairs.update((value.tag, event.step) for value in event.summary.value)
    return pairs


class TensorBoardSink:
    """Writes every metric as a scalar whose tag is the metric name, step = round.

    A resumed run (`resume=True`) writes a new event file beside the old ones and
    skips every (tag, step) they hold, so the curves go on with no step twice.
    """

    def __init__(self, logdir: Path, resume: bool = False) -> None:
        self.logdir = Path(logdir)
        self._logged = logged_scalars(self.logdir) if resume else set()
        self._writer = tf.summary.create_file_writer(str(self.logdir))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        new = unlogged(metrics, step, self._logged)
        if not new:
            return
        with self._writer.as_default(step=step):
            for name, value in new.items():
                tf.summary.scalar(name, float(value))
        self._writer.flush()  # a crash loses nothing already logged

    def close(self, status: str) -> None:
        self._writer.close()
