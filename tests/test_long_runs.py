"""Runs that survive, end to end: kill -9 and resume into the same MLflow run and
TensorBoard curves, a tracking server that goes away and comes back, divergence, a
full disk. Real processes, a real SQLite store and a real `mlflow server`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import portpicker
import pytest
import tensorflow as tf
from mlflow import MlflowClient

from federated_research.resume import RunRecord
from federated_research.sync import sync
from federated_research.tracking import Tracker
from federated_research.tracking.journal import MetricJournal, read_journal
from federated_research.tracking.mlflow_sink import Delivery, MlflowRun, MlflowSink
from tests.conftest import REPO, cli_env, start_mlflow_server, stop_mlflow_server
from tests.test_train_cli import LINEAR_BITS, _runs, _tensorboard

LINEAR = ["model=linear", "clients_per_round=3"]
QUIET = "tracking.progress_bar=false"  # run_cli passes it; Popen runs need it
NOT_REPRODUCIBLE = ("time/", "system/")


def _logged_steps(folder: Path) -> int:
    """How many rounds a running job has logged (its journal), -1 for none."""
    entries = read_journal(folder / "metrics.jsonl")[0] if folder.is_dir() else []
    return max((step for step, m, _ in entries if "train/loss" in m), default=-1)


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    values = client.get_metric_history(run_id, key)
    steps = [m.step for m in values]
    assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {sorted(steps)}"
    return {m.step: m.value for m in values}


def _weights(folder: Path) -> list[np.ndarray]:
    return tf.keras.models.load_model(folder / "model.keras", compile=False).get_weights()


def _client_states(folder: Path) -> dict[str, np.ndarray]:
    return {f.name: np.load(f) for f in folder.glob("*.npy")}


def test_kill_9_then_resume_equals_a_run_that_never_stopped(tmp_path, mlflow_uri, run_cli):
    """A stochastic compressor inside error feedback, its clients' residuals in files
    (the disk store), checkpoints every 3 rounds, killed after its second: SIGKILL may
    land between a round's client files and its checkpoint."""
    rounds = 9  # killed at round 6 or 7, resumed from round 6: the last third is redone
    common = [*LINEAR, "aggregator=drive", "aggregator.error_feedback=ef14",
              "client_state.store=disk", "dataset.num_clients=8", f"rounds={rounds}",
              "eval_every=1", "checkpoint_every=3"]
    whole = run_cli(*common, f"hydra.run.dir={tmp_path}/whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "federated_research.train", *common, QUIET,
                             f"hydra.run.dir={killed}"], cwd=tmp_path, env=cli_env(mlflow_uri),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / "round_6").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, "no second checkpoint"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: nothing of ours runs
        proc.wait()
    client, runs = _runs(mlflow_uri)
    by_dir = {r.data.tags["output_dir"]: r for r in runs}
    assert by_dir[str(killed)].info.status == "RUNNING"  # what a kill -9 leaves
    assert _logged_steps(killed) < rounds - 1

    resumed = run_cli(f"resume={by_dir[str(killed)].info.run_id}")  # by MLflow run id
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "(checkpoint round_" in resumed.stdout

    client, runs = _runs(mlflow_uri)
    assert len(runs) == 2  # the same run went on: no new one
    by_dir = {r.data.tags["output_dir"]: r for r in runs}
    again, reference = by_dir[str(killed)], by_dir[str(tmp_path / "whole")]
    assert again.info.status == "FINISHED" and again.data.tags["resumes"] == "1"
    keys = [k for k in reference.data.metrics if not k.startswith(NOT_REPRODUCIBLE)]
    assert {"train/loss", "eval/accuracy", "comm/update_mse",
            "comm/aggregated_bits_cumulative"} <= set(keys)
    for key in keys:  # every round once, the same values as the run that never stopped
        want = _history(client, reference.info.run_id, key)
        assert _history(client, again.info.run_id, key) == want, key
    board, want = _tensorboard(killed / "tensorboard"), _tensorboard(tmp_path / "whole" /
                                                                     "tensorboard")
    for tag in keys:
        assert board[tag] == want[tag], tag
    for a, b in zip(_weights(killed), _weights(tmp_path / "whole"), strict=True):
        np.testing.assert_array_equal(a, b)
    # every client's residual, in the live store and in the last checkpoint, bit for bit
    for folder in ("client_state", f"checkpoints/round_{rounds}/client_state"):
        want = _client_states(tmp_path / "whole" / folder)
        got = _client_states(killed / folder)
        assert sorted(got) == sorted(want) and len(want) >= 2 * 6, folder
        for name, values in want.items():
            np.testing.assert_array_equal(got[name], values, err_msg=f"{folder}/{name}")
        assert any(np.any(v) for v in want.values())
    assert (killed / f"checkpoints/round_{rounds}/client_state/written.json").read_text() == (
        tmp_path / f"whole/checkpoints/round_{rounds}/client_state/written.json").read_text()
    _client_memory_is_tracked(client, reference.info.run_id, tmp_path / "whole", rounds)

    changed = run_cli(f"resume={killed}", "client_optimizer.learning_rate=0.5")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [
        f"error: client_optimizer.learning_rate=0.5: the run in {killed} was trained with "
        f"client_optimizer.learning_rate=0.05; resuming must train the same rounds. Fix: pass "
        f"client_optimizer.learning_rate=0.05 (or just resume={killed}), or start a new run "
        "in another output folder"]


def _client_memory_is_tracked(client: MlflowClient, run_id: str, out: Path, rounds: int):
    """client_state/* every round, in MLflow and TensorBoard alike; the disk store's
    files, counted in disk_bytes and none in memory_bytes; every kept checkpoint holds
    the states."""
    assert {p.name for p in (out / "checkpoints").iterdir()} == {
        f"round_{r}" for r in (3, 6, 9)}
    written = json.loads((out / "checkpoints" / f"round_{rounds}" / "client_state" /
                          "written.json").read_text())
    assert set(written.values()) <= set(range(rounds)) and len(written) >= 6
    files = list((out / "client_state").glob("*.npy"))
    assert len(files) == 2 * len(written)  # the residual of the kernel and of the bias
    board = _tensorboard(out / "tensorboard")
    for key in ("client_state/fraction_with_state", "client_state/disk_bytes",
                "client_state/residual_norm", "client_state/memory_bytes"):
        logged = _history(client, run_id, key)
        assert sorted(logged) == list(range(rounds)), key
        assert board[key] == pytest.approx(logged, rel=1e-6), key
    assert set(_history(client, run_id, "client_state/memory_bytes").values()) == {0}
    assert _history(client, run_id, "client_state/disk_bytes")[rounds - 1] >= sum(
        f.stat().st_size for f in files) > 0
    # 3 of 8 clients a round: by the last round the sampled ones last sent rounds ago
    assert _history(client, run_id, "client_state/mean_staleness")[rounds - 1] >= 1


@pytest.mark.slow
def test_a_tracking_server_that_goes_away_and_comes_back_misses_nothing(tmp_path):
    """Rounds go on while the server is away; what they logged waits in the queue and is
    delivered when it is back (at the latest while the run closes: it waits for it)."""
    rounds = 12
    port = portpicker.pick_unused_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "federated_research.train", *LINEAR, QUIET,
                             f"rounds={rounds}", "checkpoint_every=0", f"hydra.run.dir={out}"],
                            cwd=tmp_path, env=cli_env(uri), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while _logged_steps(out) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no round logged"
            time.sleep(0.1)
        stop_mlflow_server(server)
        down_at = _logged_steps(out)
        while _logged_steps(out) < down_at + 3 and proc.poll() is None:
            time.sleep(0.1)  # training goes on without the server
        server = start_mlflow_server(tmp_path, port)
        output = proc.communicate(timeout=240)[0]
        assert proc.returncode == 0, output[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_mlflow_server(server)
        server = start_mlflow_server(tmp_path, port)
    try:
        print(output)  # the evidence, with -s
        assert "stopped answering at round" in output and "is back" in output, output[-3000:]
        client, runs = _runs(uri)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        run_id = runs[0].info.run_id
        for key in ("train/loss", "comm/aggregated_bits", "time/round_seconds"):
            assert sorted(_history(client, run_id, key)) == list(range(rounds)), key
        assert _history(client, run_id, "comm/broadcasted_bits")[0] == 3 * LINEAR_BITS
        assert {a.path for a in client.list_artifacts(run_id)} >= {
            ".hydra", "comm_bits.json", "model"}  # the model, sent after the server came back
    finally:
        stop_mlflow_server(server)


@pytest.mark.slow
def test_what_a_gone_server_missed_is_named_and_synced_later(tmp_path, caplog, monkeypatch):
    # Hydra apps run in-process earlier in the session may have disabled our loggers.
    monkeypatch.setattr(logging.getLogger("federated_research.tracking.mlflow_sink"),
                        "disabled", False)
    port = portpicker.pick_unused_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    try:
        sink = MlflowSink(uri, MlflowRun("sync", "run"), Delivery(
            timeout=0, retry_seconds=0, sync_hint=f"python -m federated_research.sync {tmp_path}"))
        RunRecord(uri, sink.run_id, "sync", [], {}).write(tmp_path)
        with Tracker([MetricJournal(tmp_path), sink]) as tracker:
            tracker.log_metrics({"train/loss": 1.0, "comm/aggregated_bits": 8}, step=0)
            stop_mlflow_server(server)
            for step in (1, 2):
                tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        assert ("did not receive 2 values of rounds 1-2 nor the run's end (FINISHED)"
                in caplog.text)
        assert f"send it with: python -m federated_research.sync {tmp_path}" in caplog.text
        server = start_mlflow_server(tmp_path, port)
        assert sync(tmp_path) == (f"sent 2 values of rounds 1-2 to MLflow run {sink.run_id} at "
                                  f"{uri}; run status FINISHED")
        client = MlflowClient(uri)
        assert client.get_run(sink.run_id).info.status == "FINISHED"
        assert _history(client, sink.run_id, "train/loss") == {0: 1.0, 1: 0.5, 2: 1 / 3}
        assert sync(tmp_path).startswith("sent nothing")  # twice: nothing again
    finally:
        stop_mlflow_server(server)


def test_a_diverging_run_stops_failed_in_one_line(tmp_path, mlflow_uri, run_cli):
    """TFF's FedAvg zeroes the weight of a client whose update is not finite: a blown-up
    round shows as no examples trained on, not as a NaN loss."""
    done = run_cli(*LINEAR, "rounds=5", "client_optimizer.learning_rate=1e38")
    assert done.returncode == 1
    line, = done.stderr.strip().splitlines()
    assert line.startswith("error: client_optimizer.learning_rate=1e+38: training diverged: ")
    assert "train/num_examples=0 (every client's update" in line and "at round 0" in line
    assert "on_nonfinite=continue" in line
    client, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert list(_history(client, runs[0].info.run_id, "train/loss")) == [0]  # logged, then out


def test_on_nonfinite_continue_lets_a_nan_run_finish(tmp_path, mlflow_uri, run_cli):
    """Our FedAvg averages what it gets: the loss turns NaN (the rule that stops it is
    test_the_divergence_rule_stops_finite_blowups_and_spares_healthy_losses), and
    `on_nonfinite=continue` keeps going and logs it."""
    done = run_cli(*LINEAR, "rounds=2", "on_nonfinite=continue", "algorithm=custom_fedavg",
                   "client_optimizer.learning_rate=1e38")
    assert done.returncode == 0, done.stderr[-2000:]
    client, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FINISHED"]
    losses = _history(client, runs[0].info.run_id, "train/loss")
    assert sorted(losses) == [0, 1] and all(np.isnan(v) for v in losses.values()), losses


def test_the_divergence_rule_stops_finite_blowups_and_spares_healthy_losses():
    from federated_research.loop import divergence, loss_limit

    limit = loss_limit(10)
    assert limit == pytest.approx(100 * np.log(10))
    assert divergence({"train/loss": 2.3, "eval/loss": 16.1, "train/accuracy": 1e9}, 3,
                      limit) == []
    assert divergence({"eval/loss": 4.9e10}, 3, limit)[0].startswith("eval/loss=4.9e+10 (over")
    assert divergence({"train/loss": float("nan")}, 3, limit) == ["train/loss=nan"]
    assert divergence({"train/loss": 1.0, "train/num_examples": 0}, 3, limit)[0].startswith(
        "train/num_examples=0")
    assert loss_limit(90) > limit  # more classes, a higher loss for a guess


@pytest.mark.parametrize("case", ["file-in-the-way", "disk-full"])
def test_an_output_folder_that_cannot_be_written_fails_in_one_line(tmp_path, run_cli, case):
    if case == "file-in-the-way":
        (tmp_path / "afile").touch()
        out, says = tmp_path / "afile" / "out", "Not a directory. Fix: move the file"
    else:  # /dev/full: every write fails as on a full disk
        out, says = tmp_path / "full", "No space left on device. Fix: free space on that disk"
        (out / ".hydra").mkdir(parents=True)
        (out / ".hydra" / "config.yaml").symlink_to("/dev/full")
    done = run_cli(f"hydra.run.dir={out}")
    assert done.returncode == 1
    line, = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot write ") and says in line
    assert "hydra.run.dir=<a writable folder>" in line


def test_the_memory_profile_holds_a_stateful_run_to_its_rss_net_of_the_store(tmp_path):
    """scripts/memory_profile.py --run-dir on a journal: a memory store that fills up
    passes when the rest stays flat, and fails when the rest grows."""
    for name, leak in (("flat", 0.0), ("leaking", 2.0)):
        (tmp_path / name).mkdir()
        journal = MetricJournal(tmp_path / name)
        for step in range(100):
            store = min(step, 40) * 6.0 * 2**20  # 40 clients of 6 MiB, then all met
            journal.log_metrics({"system/rss_mib": 1000 + store / 2**20 + leak * step,
                                 "system/worker_rss_mib": 900.0,
                                 "client_state/memory_bytes": store,
                                 "client_state/disk_bytes": 0.0}, step)
        journal.close("FINISHED")
    script = [sys.executable, "scripts/memory_profile.py", "--every", "50", "--run-dir"]
    flat = subprocess.run([*script, str(tmp_path / "flat")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert flat.returncode == 0, flat.stdout + flat.stderr
    assert "run-store" in flat.stdout and "net: +0.0% from round 50 to 100" in flat.stdout
    assert "run: +" in flat.stdout  # the store's growth shows, and is not held against it
    leaking = subprocess.run([*script, str(tmp_path / "leaking")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert leaking.returncode == 1 and "memory grew by more than 5.0%" in leaking.stderr
    missing = subprocess.run([*script, str(tmp_path / "nothing")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("error: --run-dir")
