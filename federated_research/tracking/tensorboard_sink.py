"""TensorBoard scalars, one event-file directory per run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf


class TensorBoardSink:
    """Writes every metric as a scalar whose tag is the metric name, step = round."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = Path(logdir)
        self._writer = tf.summary.create_file_writer(str(self.logdir))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        with self._writer.as_default(step=step):
            for name, value in metrics.items():
                tf.summary.scalar(name, float(value))
        self._writer.flush()  # a crash loses nothing already logged

    def close(self, status: str) -> None:
        self._writer.close()
