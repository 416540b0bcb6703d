"""The entry point end to end: real TFF rounds, a real MLflow store, TensorBoard files
read back with TensorBoard's own reader, Hydra multirun, bad input, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import portpicker
import psutil
import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from tests.conftest import cli_env

CONTRACT = ["train/loss", "train/accuracy", "train/num_examples", "comm/broadcasted_bits",
            "comm/aggregated_bits", "comm/broadcasted_bits_cumulative",
            "comm/aggregated_bits_cumulative", "time/round_seconds"]
LINEAR_BITS = 7850 * 32  # the 784->10 model, float32


def _runs(uri: str):
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _tensorboard(logdir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
            for tag in acc.Tags()["tensors"]
            if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}  # not HParams


@pytest.mark.slow
def test_two_rounds_are_tracked_identically_in_mlflow_and_tensorboard(tmp_path, mlflow_uri):
    """EMNIST's 62 classes from a TFF cache, the 2NN, FedAvg by hand on TFF's Federated
    Core, and fed_eval/* beside eval/*: all in MLflow and TensorBoard alike. Run through
    `| tee`, which hangs if the TFF worker holds our stdout."""
    from tests.conftest import write_emnist_cache

    write_emnist_cache(tmp_path / "cache", writers=4, per_writer=6)
    cmd = (f"set -o pipefail; {sys.executable} -m federated_research.train rounds=2 "
           f"dataset=emnist dataset.cache_dir={tmp_path}/cache dataset.only_digits=false "
           "model=mlp algorithm=custom_fedavg clients_per_round=3 eval_every=5 "
           f"fed_eval.every=1 fed_eval.clients=3 hydra.run.dir={tmp_path}/out "
           f"2>&1 | tee {tmp_path}/log")
    done = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=cli_env(mlflow_uri),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "done: eval accuracy" in (tmp_path / "log").read_text()

    client, runs = _runs(mlflow_uri)
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset"] == "emnist" and run.data.tags["model"] == "mlp"
    assert run.data.tags["aggregator"] == "mean" and run.data.tags["client_optimizer"] == "sgd"
    assert run.data.tags["algorithm"] == "custom_fedavg"
    assert run.data.params["client_optimizer.learning_rate"] == "0.05"
    assert run.data.params["rounds"] == "2" and run.data.params["client.batch_size"] == "20"
    artifacts = {a.path for a in client.list_artifacts(run_id, ".hydra")}
    assert {".hydra/config.yaml", ".hydra/overrides.yaml"} <= artifacts
    # 62 classes: the 784-200-200-62 model is broadcast to each of the 3 clients
    mlp = (784 * 200 + 200 + 200 * 200 + 200 + 200 * 62 + 62) * 32
    comm = json.loads((Path(client.download_artifacts(run_id, "comm_bits.json",
                                                        str(tmp_path)))).read_text())
    assert comm["per_client_bits"]["model_down"] == mlp

    board = _tensorboard(tmp_path / "out" / "tensorboard")
    for key in [*CONTRACT, "fed_eval/accuracy", "fed_eval/loss", "fed_eval/clients",
                "fed_eval/client_accuracy_median", "fed_eval/client_accuracy_min",
                "fed_eval/broadcasted_bits"]:
        logged = _history(client, run_id, key)
        assert sorted(logged) == [0, 1], key  # fed_eval every round, on its own schedule
        assert board[key] == pytest.approx(logged, rel=1e-6), key
    for key in ("eval/loss", "eval/accuracy"):  # eval_every=5 > rounds: only the last round
        assert sorted(_history(client, run_id, key)) == [1]
        assert sorted(board[key]) == [1]
    assert _history(client, run_id, "comm/broadcasted_bits") == {0: 3 * mlp, 1: 3 * mlp}
    assert _history(client, run_id, "comm/aggregated_bits_cumulative")[1] == \
        2 * 3 * (mlp + 32)
    assert _history(client, run_id, "train/num_examples")[0] > 0
    assert _history(client, run_id, "data/train_clients") == {0: 4}  # the cache's writers
    assert _history(client, run_id, "fed_eval/clients")[1] == 3
    assert _history(client, run_id, "fed_eval/broadcasted_bits")[1] == 3 * mlp


@pytest.mark.parametrize(("overrides", "expected"), [
    (["rounds=-1"], "error: rounds=-1: must be 0 or more. Fix: pass e.g. rounds=20"),
    (["clients_per_round=0"], "error: clients_per_round=0: must be at least 1"),
    (["clients_per_round=41"], "error: clients_per_round=41: the dataset has only 40"),
    (["aggregator=nope"], "error: aggregator=nope: no such option. Fix: choose one of"),
    (["client_optimizer.learning_rate=abc"], "error: client_optimizer.learning_rate=abc:"),
    (["model=keras_file"], "error: model.path: model=keras_file needs the saved model"),
    (["aggregator=drive", "aggregator.block_size=1000"],
     "error: aggregator.block_size=1000: must be a power of two"),
    (["aggregator.error_feedback=ef14"],
     "error: aggregator.error_feedback: this aggregator keeps no client memory"),
])
def test_bad_input_is_one_line_exit_2_and_no_running_run(tmp_path, mlflow_uri, run_cli,
                                                         overrides, expected):
    done = run_cli(*overrides, timeout=200)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, lines
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    if Path(mlflow_uri.removeprefix("sqlite:///")).exists():
        assert all(r.info.status != "RUNNING" for r in _runs(mlflow_uri)[1])


def test_missing_cache_error_names_the_file_to_put_there(tmp_path, mlflow_uri, run_cli):
    """The one bad input found only once TFF is imported and the data read: still one
    line, exit 2, and no run left RUNNING."""
    done = run_cli("dataset=emnist", f"dataset.cache_dir={tmp_path}/c", timeout=200)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: dataset.cache_dir={tmp_path}/c: ")
    assert all(r.info.status != "RUNNING" for r in _runs(mlflow_uri)[1])
    assert f"{tmp_path}/c/emnist_all.sqlite does not exist" in done.stderr
    assert "put TFF's emnist_all.sqlite" in done.stderr
    assert "../" not in done.stderr  # no path that exists only on our machines


@pytest.mark.parametrize("sweep", [[], ["aggregator=mean,drive"]], ids=["run", "sweep"])
def test_unreachable_tracking_server_fails_fast_in_one_line(tmp_path, run_cli, sweep):
    """A sweep stops before its first job, not once per job."""
    port = portpicker.pick_unused_port()
    start = time.monotonic()
    done = run_cli(*sweep, env=cli_env(f"http://127.0.0.1:{port}"), timeout=120,
                   multirun=bool(sweep))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: tracking.mlflow_uri=http://127.0.0.1:{port}:")
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 60


@pytest.mark.parametrize(("uri", "says"), [
    ("ftp://example.invalid/mlruns", "MLflow cannot keep runs at a ftp:// URI. Fix: use "
                                     "sqlite:///"),
    ("sqlite:////proc/x/mlflow.db", "cannot create the store's folder /proc/x ("),
], ids=["unsupported-scheme", "unwritable-sqlite-folder"])
def test_a_tracking_uri_mlflow_cannot_use_is_one_line_before_training(tmp_path, run_cli, uri,
                                                                      says):
    done = run_cli(env=cli_env(uri), timeout=120)
    assert done.returncode == 2
    line, = done.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking.mlflow_uri={uri}: {says}"), line
    assert not list(tmp_path.glob("outputs/*/*/tff_worker.log"))  # refused before TFF started


def test_a_finite_divergence_stops_the_run_failed_under_on_nonfinite(tmp_path, mlflow_uri,
                                                                     run_cli):
    """A learning rate of 1e9: the loss stays finite but passes any healthy run's by far.
    (`on_nonfinite=continue` lifts it as it lifts a NaN, one `if` in loop.run_rounds,
    run end to end by test_long_runs.py with our FedAvg.)"""
    diverging = ["model=linear", "clients_per_round=3", "rounds=1",
                 "client_optimizer.learning_rate=1e9"]
    done = run_cli(*diverging)
    assert done.returncode == 1
    line, = done.stderr.strip().splitlines()
    assert line.startswith("error: client_optimizer.learning_rate=1000000000.0: training "
                           "diverged: eval/loss="), line
    assert "x the loss of a uniform guess) at round 0" in line and "on_nonfinite=contin" in line
    client, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert _history(client, runs[0].info.run_id, "eval/loss")[0] > 230  # logged, then out


@pytest.mark.parametrize(("sig", "sweep"), [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM-sharded", "SIGINT-sweep"])
@pytest.mark.slow
def test_a_signal_marks_the_run_killed_and_stops_the_worker(tmp_path, mlflow_uri, sig, sweep):
    """In a sweep, Ctrl-C also marks the parent run KILLED. (A single run meets Ctrl-C
    exactly as a sweep's job does, as Python's KeyboardInterrupt; the sweep adds the
    parent. SIGTERM is our own handler's exception: signals.py.) The SIGTERM'd run
    shards its rounds over two workers of its own: both are stopped."""
    where = ["-m", "aggregator=mean,drive", f"hydra.sweep.dir={tmp_path}",
             "hydra.sweep.subdir=out"] if sweep else [
        f"hydra.run.dir={tmp_path}/out", "runtime=sharded", "runtime.local_workers=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "federated_research.train", *where, "rounds=500",
         "model=linear", "tracking.progress_bar=false"], cwd=tmp_path,
        env=cli_env(mlflow_uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # As from a terminal, even when pytest itself runs as a background job (whose
        # children inherit SIGINT ignored, so Python would install no Ctrl-C handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        # Watch TensorBoard's files, not the store: a second MLflow client on a new
        # SQLite store would race the run's own schema migration. Two rounds logged: a
        # round counts (and is checkpointed on Ctrl-C) only after its metrics are
        # logged, so with one logged the signal could still land before it counted.
        while not (tmp_path / "out" / "tensorboard").is_dir() or len(_tensorboard(
                tmp_path / "out" / "tensorboard").get("train/loss", {})) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, (
                "no round was logged" if proc.poll() is None else proc.stderr.read()[-1500:])
            time.sleep(1)
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "worker_binary" in c.name()]
        assert len(workers) == (1 if sweep else 2), workers
        proc.send_signal(sig)  # SIGINT is what Ctrl-C sends
        assert proc.wait(60) == 130, proc.stderr.read()[-2000:]
        stderr = proc.stderr.read()
        assert stderr.strip(), "the run said nothing on its way out"
        said = stderr.strip().splitlines()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    client, runs = _runs(mlflow_uri)
    assert {r.info.status for r in runs} == {"KILLED"}  # the job's run (and a sweep's parent)
    assert len(runs) == (2 if sweep else 1)
    job = next(r for r in runs if r.data.tags.get("run_type") != "sweep")
    logged = _history(client, job.info.run_id, "train/loss")  # what was logged is kept
    assert logged
    # It says what it saved (the last round it finished, whatever the checkpoint schedule;
    # the signal may land after MLflow stored a round, before the round counted) and how
    # to go on from there.
    assert said.startswith("interrupted (") and said.endswith(
        f"; resume with: python -m federated_research.train resume={tmp_path}/out"), stderr[-3000:]
    done = int(said.split("the state after ")[1].split(" round")[0])
    assert done in (len(logged) - 1, len(logged)) and done >= 1, said
    assert f"is saved in {tmp_path}/out/checkpoints/round_{done};" in said
    assert (tmp_path / "out" / "checkpoints" / f"round_{done}" / "state.npz").is_file()
    time.sleep(1)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
