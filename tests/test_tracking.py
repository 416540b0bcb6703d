"""Sinks on real stores: statuses for how a run ends, flat params, logging kept intact."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from federated_research.flat import flatten
from federated_research.signals import Terminated
from federated_research.tracking import Tracker
from federated_research.tracking.mlflow_sink import MlflowRun, MlflowSink
from federated_research.tracking.tensorboard_sink import TensorBoardSink


def _sink(uri: str, name: str) -> MlflowSink:
    return MlflowSink(uri, MlflowRun("exp", name, params={"a.b": 1}, tags={"model": "cnn"}))


@pytest.mark.parametrize(("raised", "status"), [
    (None, "FINISHED"), (RuntimeError("boom"), "FAILED"),
    (KeyboardInterrupt(), "KILLED"), (Terminated("SIGTERM"), "KILLED")])
def test_a_run_ends_with_the_status_of_how_it_ended(mlflow_uri, tmp_path, raised, status):
    sink = _sink(mlflow_uri, status)
    with pytest.raises(type(raised)) if raised else contextlib.nullcontext():
        with Tracker([TensorBoardSink(tmp_path / "tb"), sink]) as tracker:
            tracker.log_metrics({"train/loss": 1.5}, step=0)
            if raised:
                raise raised
    run = MlflowClient(mlflow_uri).get_run(sink.run_id)
    assert run.info.status == status
    assert run.data.metrics["train/loss"] == 1.5 and run.data.params["a.b"] == "1"


def test_a_failing_sink_does_not_keep_the_others_open(mlflow_uri):
    class Broken:
        def log_metrics(self, metrics, step):
            pass

        def close(self, status):
            raise OSError("disk full")

    sink = _sink(mlflow_uri, "x")
    Tracker([Broken(), sink]).close("FAILED")
    assert MlflowClient(mlflow_uri).get_run(sink.run_id).info.status == "FAILED"


def test_creating_a_sqlite_store_keeps_the_root_loggers_handlers(mlflow_uri):
    root = logging.getLogger()
    marker = logging.NullHandler()
    root.addHandler(marker)
    try:
        _sink(mlflow_uri, "logging")
        assert marker in root.handlers
    finally:
        root.removeHandler(marker)


def test_flatten_makes_dotted_param_names():
    assert flatten({"client": {"epochs": 1, "batch_size": 20}, "seed": 0}) == {
        "client.epochs": 1, "client.batch_size": 20, "seed": 0}



@pytest.mark.parametrize("command", [["tensorboard", "--version_tb"], ["mlflow", "--version"]])
def test_the_viewers_the_readme_names_start(command):
    """`tensorboard --logdir ...` and `mlflow ui ...` must run in the locked .venv/
    (TensorBoard 2.14 needs setuptools' pkg_resources, gone since setuptools 81)."""
    done = subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]


_SIGNAL_IN_A_COMMIT = """
import os, signal, sys
from mlflow import MlflowClient
from sqlalchemy import event
from federated_research.signals import Terminated, raise_on_sigterm
from federated_research.tracking import Tracker
from federated_research.tracking.mlflow_sink import MlflowRun, MlflowSink

raise_on_sigterm()
sink = MlflowSink(sys.argv[1], MlflowRun("exp", "signal", params={}, tags={}))
sent = []

def signal_mid_transaction(conn, cursor, statement, *args):
    # after a SELECT of the write's transaction has run, before its rows are read
    if statement.lstrip().upper().startswith("SELECT") and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, inside the transaction

event.listen(sink.client._tracking_client.store.engine, "after_cursor_execute",
             signal_mid_transaction)
try:
    with Tracker([sink]) as tracker:
        tracker.log_metrics({"train/loss": 1.5}, step=0)
        tracker.log_metrics({"train/loss": 1.0}, step=1)
except Terminated:
    print(sink.run_id)
"""


def test_a_signal_inside_a_store_write_waits_for_it(mlflow_uri, tmp_path):
    """A SIGTERM that lands inside SQLAlchemy's transaction used to leave SQLite's
    lock held: marking the run KILLED then waited forever (CI saw it once in ~40 runs)."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_IN_A_COMMIT, mlflow_uri],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.strip().splitlines()[-1]
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "KILLED"
    # the round being written when the signal came is stored whole, the next one never began
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [
        (0, 1.5)]
