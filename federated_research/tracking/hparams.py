"""TensorBoard's HParams tab: each run's hyper-parameters, each sweep's table of them.

Every run writes a session-start record (its hyper-parameters and a trial id) into
its own `tensorboard/` folder, beside its scalars, so the HParams tab lists the run
with the last value of each metric. A sweep also writes, at its root, the
experiment's definition: which hyper-parameters and which metrics form the table.
Without it TensorBoard infers them (every scalar becomes a column), which is what a
plain `tensorboard --logdir outputs/` of single runs gets.

Written with TensorBoard's own protos and event-file writer (no TensorFlow), so the
launching process of a sweep does not import TensorFlow for it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Top-level keys every run reports, beside its group choices and the sweep's keys.
KEYS = ("seed", "rounds", "clients_per_round", "client_optimizer.learning_rate",
        "server_optimizer.learning_rate", "client.epochs", "client.batch_size")
# The metrics the sweep's table shows: the answer's columns.
METRICS = (("eval/accuracy", "final eval accuracy"), ("eval/loss", "final eval loss"),
           ("train/loss", "last round's train loss"),
           ("fed_eval/accuracy", "final federated eval accuracy (fed_eval.every > 0)"),
           ("fed_eval/client_accuracy_p10", "its 10th percentile over test clients"),
           ("comm/aggregated_bits_cumulative", "uplink bits, all rounds"),
           ("comm/broadcasted_bits_cumulative", "downlink bits, all rounds"),
           ("time/round_seconds", "last round's seconds"))


def _value(value: object) -> bool | float | str:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return str(value)


def run_hparams(cfg: DictConfig, choices: Mapping[str, str], swept: list[str]) -> dict:
    """This run's hyper-parameters: group options, the usual keys, the swept keys."""
    values: dict[str, bool | float | str] = {g: str(o) for g, o in choices.items()}
    for key in [*KEYS, *swept]:
        name = key.split("@")[-1]
        if name in values:
            continue
        found = OmegaConf.select(cfg, key, default=None)
        if found is not None and not isinstance(found, DictConfig):
            values[name] = _value(found)
    return values


def _write(logdir: Path, summary) -> None:
    """One event file holding `summary`, written with TensorBoard's record format.

    TensorBoard's `EventFileWriter` goes through `tf.io.gfile`, which imports
    TensorFlow when it is installed (5 s and 500 MiB in a launcher that needs none).
    """
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path = logdir / (f"events.out.tfevents.{int(now)}.{socket.gethostname()}."
                     f"{os.getpid()}.hparams")
    with open(path, "wb") as handle:
        writer = RecordWriter(handle)
        writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2")
                     .SerializeToString())
        writer.write(event_pb2.Event(wall_time=now, step=0, summary=summary)
                     .SerializeToString())
        writer.flush()


def write_session(logdir: Path, hparams: Mapping[str, bool | float | str],
                  trial_id: str) -> None:
    """The run's row of the HParams tab (its metrics are the scalars beside it)."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    _write(Path(logdir), hp.hparams_pb(dict(hparams), trial_id=trial_id))


def write_experiment(logdir: Path, names: list[str]) -> None:
    """The sweep's table: these hyper-parameters as columns, then the answer's metrics."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    Path(logdir).mkdir(parents=True, exist_ok=True)
    _write(Path(logdir), hp.hparams_config_pb(
        hparams=[hp.HParam(name) for name in names],
        metrics=[hp.Metric(tag, display_name=tag, description=text)
                 for tag, text in METRICS]))
