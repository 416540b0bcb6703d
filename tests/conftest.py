"""Shared fixtures: composed configs, a CLI runner, real MLflow stores, fixture data."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import runpy
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from federated_research import runtime
from federated_research.config import register_schemas
from federated_research.train import CONF_DIR

REPO = CONF_DIR.parent
register_schemas()
# Computations run in tests without a TffRuntime use a worker this module owns
# (started on first use, stopped at exit) instead of TFF's unmanaged default.
runtime.install_default_context(runtime.WorkerService())


def pytest_collection_modifyitems(config, items):
    """The long tests first (a CLI run, a sweep, a server: marked `slow`, or using
    `run_cli`), each group in its file order: parallel workers (pytest-xdist, see
    setup.cfg) then start on them and finish together, rather than one worker
    picking up a minute-long test at the end."""
    for item in items:
        if "run_cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def compose_config(overrides: list[str] | None = None, hydra_config: bool = False):
    """The config `python -m federated_research.train <overrides>` would run: composed by
    Hydra once per test process for each list of overrides (a composition takes ~0.2 s
    and hundreds repeat), each caller getting its own copy to change."""
    return copy.deepcopy(_composed(tuple(overrides or []), hydra_config))


@functools.cache
def _composed(overrides: tuple[str, ...], hydra_config: bool):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides),
                           return_hydra_config=hydra_config)
    finally:
        GlobalHydra.instance().clear()


def in_shards(computation, *args, shards: int = 2):
    """`computation(*args)` under runtime=sharded's context: the clients cut into
    `shards` slices, run one after another on this session's worker, merged in order."""
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

    from federated_research.runtime.sharding import ShardedContext

    context = ShardedContext([context_stack_impl.context_stack.current], shards)
    with context_stack_impl.context_stack.install(context):
        return computation(*args)


def options(group: str) -> list[str]:
    """Every selectable option of a config group (the YAML files in conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory) -> Path:
    """A new MLflow SQLite store, made by MLflow once per test process: creating one runs
    its ~45 schema migrations (1-2 s), which every test would otherwise pay again.
    (Two tests still start from nothing: they check that a new store is made quietly.)"""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, _empty_mlflow_store: Path) -> str:
    """A store of the test's own, a copy of the new one above."""
    shutil.copyfile(_empty_mlflow_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def cli_env(mlflow_uri: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "HYDRA_", "TF_CPP_"))}  # the CLI's own defaults
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    return env


@pytest.fixture
def run_script(monkeypatch, capsys):
    """Run one of scripts/*.py as `python scripts/<name> <args>` would, but in this
    process: its imports (TensorFlow, TFF, MLflow) are paid already, ~10 CPU-s a run.
    Its TFF context is the one this session installed (a script installs a worker of its
    own). Returns (exit code, stdout, stderr)."""
    from federated_research import runtime

    monkeypatch.setattr(runtime, "install_default_context", lambda service: None)

    def run(name: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", [name, *args])
        try:
            runpy.run_path(str(REPO / "scripts" / name), run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
            if not isinstance(stop.code, int | None):
                print(stop.code, file=sys.stderr)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def run_cli(tmp_path: Path, mlflow_uri: str):
    """Run the real entry point in a subprocess, from `tmp_path` (outputs land there)."""

    def run(*overrides: str, timeout: float = 400, env: dict | None = None,
            multirun: bool = False) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "federated_research.train", *(["-m"] if multirun else []),
                "tracking.progress_bar=false", *overrides]
        return subprocess.run(args, cwd=tmp_path, env=env or cli_env(mlflow_uri),
                              capture_output=True, text=True, timeout=timeout)

    return run


def _write_tff_sql(path: Path, rows) -> Path:
    """A SQLite file in the exact schema TFF 0.87's SqlClientData reads.

    `rows`: (split, client_id, [tf.train.Example]) triples.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL,"
                " serialized_example_proto BLOB NOT NULL)")
    con.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT"
                " NOT NULL, num_examples INTEGER NOT NULL)")
    for split, cid, examples in rows:
        con.executemany("INSERT INTO examples VALUES (?,?,?)",
                        [(split, cid, ex.SerializeToString()) for ex in examples])
        con.execute("INSERT INTO client_metadata VALUES (?,?,?)", (cid, split, len(examples)))
    con.commit()
    con.close()
    return path


def write_emnist_cache(cache_dir: Path, writers: int = 4, per_writer: int = 6,
                       seed: int = 0) -> Path:
    """A tiny `emnist_all.sqlite`: random pixels, half digits and half letters a writer."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "test"):
        for w in range(writers):
            half = per_writer // 2  # half digits (0-9), half letters (10-61)
            labels = np.concatenate([rng.integers(0, 10, half),
                                     rng.integers(10, 62, per_writer - half)])
            examples = [tf.train.Example(features=tf.train.Features(feature={
                "pixels": tf.train.Feature(float_list=tf.train.FloatList(
                    value=rng.random(784).astype(np.float32))),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}))
                for label in labels]
            rows.append((f"all_{split}", f"f{w:04d}_00", examples))
            rows.append((f"digits_only_{split}", f"f{w:04d}_00",
                         [ex for ex, label in zip(examples, labels, strict=True)
                          if label < 10]))
    return _write_tff_sql(cache_dir / "emnist_all.sqlite", rows)


SHAKESPEARE_TEXT = {  # role -> (train snippets, test snippets); real lines, tiny
    "THE_TRAGEDY_OF_KING_LEAR_MACBETH": (
        ["Hark! When shall we three meet again?", "My name's Macbeth.",
         "'Twas a rough fight, and came they not by you?"], ["No, nor more fearful."]),
    "MUCH_ADO_ABOUT_NOTHING_EMILIA": (
        ["Never.", "But now, my lord.", "How if fair and foolish?", "Is not this man jealous?"],
        ["Why, with my lord, madam."]),
    "THE_TAMING_OF_THE_SHREW_CUPID": (["Hail to thee, worthy Timon, and to all"], ["Hail!"]),
    "A_SHORT_ROLE": (["Hi!"], ["Ay."]),  # 3 characters: the tutorial would drop it
}


def write_shakespeare_cache(cache_dir: Path, text: dict | None = None) -> Path:
    """A tiny `shakespeare.sqlite` (splits train and test, feature `snippets`)."""
    import tensorflow as tf

    def example(snippet: str):
        return tf.train.Example(features=tf.train.Features(feature={
            "snippets": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[snippet.encode()]))}))

    rows = [(split, role, [example(s) for s in snippets])
            for role, both in (text or SHAKESPEARE_TEXT).items()
            for split, snippets in zip(("train", "test"), both, strict=True)]
    return _write_tff_sql(cache_dir / "shakespeare.sqlite", rows)


SESSION_MARK = "FEDERATED_RESEARCH_TEST_SESSION"
os.environ[SESSION_MARK] = str(uuid.uuid4())  # inherited by every process the tests start


def worker_binaries() -> list[psutil.Process]:
    """TFF workers started by this test session (directly or by a CLI subprocess)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if not (cmd and cmd[0].endswith("worker_binary") and "tensorflow_federated" in cmd[0]):
            continue
        try:
            if proc.environ().get(SESSION_MARK) == os.environ[SESSION_MARK]:
                found.append(proc)
        except psutil.Error:
            continue  # exited meanwhile
    return found


@pytest.fixture(scope="session", autouse=True)
def no_worker_binary_left():
    """Fails the suite if any test leaves a TFF worker_binary behind."""
    yield
    runtime.stop_all_workers()  # the in-process default worker ends with the session
    time.sleep(0.5)
    leaked = worker_binaries()
    for proc in leaked:
        proc.send_signal(signal.SIGKILL)
    assert not leaked, f"worker_binary processes left running: {[p.pid for p in leaked]}"


def start_mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on `port` with its store in tmp_path (the same on a restart)."""
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        cwd=tmp_path, env=cli_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            server.port = port
            return server
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "no mlflow server"
            time.sleep(0.3)


def stop_mlflow_server(server: subprocess.Popen) -> None:
    """Stop the server and wait until its port refuses connections: `mlflow server`
    exits before its uvicorn worker has finished shutting down."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                pass
        except OSError:
            return
        if time.monotonic() > deadline - 20:  # still serving after 10 s: no more grace
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
        assert time.monotonic() < deadline, "the mlflow server does not stop"
        time.sleep(0.2)
