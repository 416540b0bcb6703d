"""runtime=sharded: a round's clients cut into shards over several real TFF workers,
merged in shard order, so the numbers depend on `shards` only."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf
from mlflow import MlflowClient
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

from federated_research.build import build_run_parts
from federated_research.errors import ConfigError
from federated_research.loop import RoundInputs, client_datasets, sample_clients
from federated_research.options import build_options
from federated_research.runtime import workers
from federated_research.runtime.sharded import Sharded
from federated_research.runtime.sharding import ShardedContext
from tests.conftest import cli_env, compose_config

# The module's workers and process are built once, on one xdist worker (~13 s each time).
pytestmark = pytest.mark.xdist_group("sharding")

TINY = ["model=linear", "dataset.num_clients=12", "clients_per_round=7",
        "client_optimizer.learning_rate=0.02"]


@pytest.fixture(scope="module")
def three_workers(tmp_path_factory):
    """Three real workers, started once for the module (about a second each)."""
    root = tmp_path_factory.mktemp("workers")
    services = [workers.WorkerService(root / f"w{i}.log", restart=False) for i in range(3)]
    for service in services:
        service.stub()
    yield services
    for service in services:
        service.close()


@pytest.fixture(scope="module")
def parts():
    return build_run_parts(compose_config(TINY))


def _rounds(parts, context, rounds: int = 2):
    """Two rounds of the run's own process under `context`: the weights, flat."""
    process, state = parts.algorithm.process, parts.initial_state
    ids = list(parts.data.train.client_ids)
    with context_stack_impl.context_stack.install(context):
        for r in range(rounds):
            sampled = sample_clients(ids, parts.spec.clients_per_round, parts.spec.seed, r)
            output = process.next(state, client_datasets(parts.data, sampled, parts.spec, r))
            state = output.state
        weights = process.get_model_weights(state).trainable
    return np.concatenate([np.ravel(w) for w in weights]), output.metrics


def _sharded(services, shards, calls=None):
    return ShardedContext([workers.worker_context(s) for s in services], shards,
                          on_call=None if calls is None else
                          lambda *call: calls.append(call))


def test_shards_give_the_same_numbers_with_one_two_and_three_workers(parts, three_workers):
    """7 clients in 3 shards (3, 2, 2): merged in shard order, so which worker ran which
    shard, and which finished first, changes nothing, bit for bit."""
    by_workers = {n: _rounds(parts, _sharded(three_workers[:n], 3)) for n in (1, 2, 3)}
    for n in (2, 3):
        assert np.array_equal(by_workers[1][0], by_workers[n][0])
        assert by_workers[1][1] == by_workers[n][1]  # metrics too, loss and example counts
    local, local_metrics = _rounds(parts, workers.worker_context(three_workers[0]))
    # More shards only reorder the float sums: close to one call, not equal to it.
    assert np.allclose(by_workers[1][0], local, rtol=1e-5, atol=1e-7)
    assert by_workers[1][1]["client_work"]["train"]["num_examples"] == \
        local_metrics["client_work"]["train"]["num_examples"]


def test_one_shard_is_the_local_runtime_bit_for_bit(parts, three_workers):
    local = _rounds(parts, workers.worker_context(three_workers[0]))
    one = _rounds(parts, _sharded(three_workers[:2], 1))
    assert np.array_equal(local[0], one[0])
    assert local[1] == one[1]


def test_the_workers_calls_overlap_in_time(parts, three_workers):
    """Each shard's call blocks only its own thread: with 3 workers the 3 shards' calls
    run at the same time (TFF's own mergeable context runs them in turn)."""
    calls: list[tuple] = []
    _rounds(parts, _sharded(three_workers, 3, calls), rounds=1)
    firsts = [c for c in calls if c[1] == "up_to_merge"]
    assert sorted(c[0] for c in firsts) == [0, 1, 2]  # one shard on each worker
    latest_start = max(c[2] for c in firsts)
    earliest_end = min(c[3] for c in firsts)
    assert latest_start < earliest_end  # all three were in flight together


def test_more_shards_than_workers_run_in_turn_on_the_free_ones(parts, three_workers):
    calls: list[tuple] = []
    result = _rounds(parts, _sharded(three_workers[:2], 5, calls), rounds=1)
    shards = [c for c in calls if c[1] == "up_to_merge"]
    assert len(shards) == 5 and {c[0] for c in shards} == {0, 1}
    in_flight = max(sum(1 for o in shards if o[2] <= c[2] < o[3]) for c in shards)
    assert in_flight <= 2  # never more calls than workers
    assert np.all(np.isfinite(result[0]))


def test_an_algorithm_whose_aggregations_depend_on_each_other_is_refused():
    """PowerSGD sends the sum of its P factors back to the clients and sums again: the
    mergeable form cannot cut that round; one line, before any round runs."""
    with pytest.raises(ConfigError) as caught:
        build_run_parts(compose_config([*TINY, "aggregator=powersgd", "runtime=sharded"]))
    message = str(caught.value)
    assert message.startswith("runtime=sharded: ")
    assert "depend on each other" in message and "Fix: use runtime=local" in message
    assert "\n" not in message


@pytest.mark.parametrize(("override", "words"), [
    ("runtime.shards=0", "runtime.shards=0: must be 1 or more"),
    ("runtime.local_workers=-1", "runtime.local_workers=-1: must be 0 or more"),
    ("runtime.local_workers=0", "no worker to run on"),
    ("runtime.workers=[node1]", "node1 is not host:port"),
    ("runtime.workers=[node1:99999]", "port 1-65535"),
    ("runtime.workers=[a:1,a:1]", "names a worker twice"),
    ("runtime.max_concurrent_calls=0", "runtime.max_concurrent_calls=0: must be 1 or more"),
    ("runtime.shards_in_flight=-2", "runtime.shards_in_flight=-2: must be 1 or more"),
    ("runtime.examples_cache_mib=0", "runtime.examples_cache_mib=0: must be 1 or more"),
    ("runtime.shards=two", "runtime.shards=two: wrong type"),
    ("runtime.connect_timeout=0", "must be more than 0 seconds"),
])
def test_bad_sharded_options_are_one_line(override, words):
    cfg = compose_config(["runtime=sharded", override])
    with pytest.raises(ConfigError) as caught:
        build_options(Sharded, cfg.runtime, "runtime")
    assert words in str(caught.value)


def test_a_remote_worker_that_does_not_answer_is_one_line():
    import portpicker

    port = portpicker.pick_unused_port()
    remote = workers.RemoteWorker(f"localhost:{port}", timeout=0.5)
    try:
        with pytest.raises(ConfigError) as caught:
            remote.stub()
    finally:
        remote.close()
    assert str(caught.value).startswith(f"runtime.workers=localhost:{port}: the TFF worker "
                                        "there did not answer within 0.5 s")


def test_a_remote_worker_runs_shards(parts, three_workers):
    """A worker started elsewhere, reached by host:port: the same numbers as our own."""
    port = next(a.split("=", 1)[1] for a in three_workers[2].process.args
                if a.startswith("--port="))
    remote = workers.RemoteWorker(f"localhost:{port}", timeout=10)
    try:
        mixed = _rounds(parts, ShardedContext(
            [workers.worker_context(three_workers[0]), workers.worker_context(remote)], 3))
    finally:
        remote.close()
    ours = _rounds(parts, _sharded(three_workers[:1], 3))
    assert np.array_equal(mixed[0], ours[0])
    assert threading.active_count() < 200  # the shard threads are not leaked per call


# Every algorithm, distributor and the aggregators whose rounds run outside test_build
# (test_build's every-aggregator round also runs in 2 shards), grouped so that each
# group builds one process. Their merge functions never run on one worker.
COMBINATIONS = [
    ["algorithm=scaffold", "distributor=quantize"],
    ["aggregator=stc", "algorithm=fedprox", "distributor=rotated_quantize"],  # residuals
    ["aggregator=fetchsgd", "algorithm=fedsgd"],
    ["aggregator=qsgd", "algorithm=custom_fedavg", "distributor=federated_dropout",
     "model=mlp"],
    ["algorithm=centralized"],
]


def _one_round(parts, context):
    process = parts.algorithm.process
    sampled, data = RoundInputs(parts)(0)  # the centralised baseline: no clients, one call
    kept = [] if parts.algorithm.client_state is None else [
        [process.initial_client_state] * len(sampled)]
    with context_stack_impl.context_stack.install(context):
        return process.next(parts.initial_state, data, *kept)


@pytest.mark.parametrize("overrides", COMBINATIONS, ids=lambda o: ",".join(o))
def test_every_algorithm_and_distributor_runs_a_sharded_round(overrides, three_workers):
    """A round in 3 shards on 2 workers is close to one call on one worker (the float
    sums only reordered), and the clients' kept state (residuals, control variates)
    comes back for the same clients in the same order."""
    groups = {o.split("=")[0] for o in overrides}
    parts = build_run_parts(compose_config(
        [o for o in TINY if o.split("=")[0] not in groups] + overrides))
    local = _one_round(parts, workers.worker_context(three_workers[0]))
    sharded = _one_round(parts, _sharded(three_workers[:2], 3))
    get = parts.algorithm.process.get_model_weights
    for a, b in zip(get(sharded.state).trainable, get(local.state).trainable, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(np.any(a != b) for a, b in zip(
        get(local.state).trainable, get(parts.initial_state).trainable, strict=True))
    if parts.algorithm.client_state is not None:
        assert len(sharded.client_state) == len(local.client_state) == 7
        for mine, theirs in zip(sharded.client_state, local.client_state, strict=True):
            for a, b in zip(tf.nest.flatten(mine), tf.nest.flatten(theirs), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert any(np.any(a != b) for a, b in zip(  # clients differ: not one state copied
            tf.nest.flatten(sharded.client_state[0]),
            tf.nest.flatten(sharded.client_state[1]), strict=True))


def test_federated_evaluation_runs_in_shards(parts, three_workers):
    """Federated evaluation's per-client metrics come back in client order: the pooled
    accuracy and the spread over clients equal one call's."""
    from federated_research.fed_evaluation import FederatedEvaluator

    evaluate = FederatedEvaluator(parts.model, parts.data.test_clients, clients=5,
                                  batch_size=16, seed=0)
    one_worker = workers.worker_context(three_workers[0])
    output = _one_round(parts, one_worker)  # trained weights: the clients' scores differ
    with context_stack_impl.context_stack.install(one_worker):
        trained = parts.algorithm.process.get_model_weights(output.state)
        one = evaluate(trained, 3)
    with context_stack_impl.context_stack.install(_sharded(three_workers, 3)):
        three = evaluate(trained, 3)
    assert one["fed_eval/client_accuracy_max"] > one["fed_eval/client_accuracy_min"]
    assert three == pytest.approx(one, rel=1e-5)


@pytest.mark.slow
def test_a_worker_that_dies_mid_run_is_one_line_and_the_run_resumes(tmp_path, mlflow_uri):
    """SIGKILL one of the run's two workers (as the OOM killer would): the run stops with
    one line naming the key, is FAILED with its rounds saved, and resumes into the same
    run to its end (the dead worker is not quietly restarted mid-round)."""
    out = tmp_path / "out"
    common = ["model=linear", "runtime=sharded", "runtime.local_workers=2", "clients_per_round=4",
              "checkpoint_every=1", "tracking.progress_bar=false", "tracking.tensorboard=false",
              "tracking.save_model=false"]
    env = cli_env(mlflow_uri)
    proc = subprocess.Popen([sys.executable, "-m", "federated_research.train",
                             f"hydra.run.dir={out}", "rounds=400", *common], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(_rounds_logged(out)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.5)
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "worker_binary" in c.name()]
        assert len(workers) == 2
        workers[1].kill()
        code, stderr = proc.wait(120), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = stderr.strip().splitlines()[-1]
    assert code == 1, stderr[-2000:]
    assert said.startswith(f"error: runtime.local_workers=2: TFF worker {workers[1].pid} ended "
                           "(killed by SIGKILL) during the round"), stderr[-2000:]
    assert said.endswith(f"resume with: python -m federated_research.train resume={out}")
    saved = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("round_*"))
    assert saved >= 2 and f"round_{saved}" in said
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

    done = subprocess.run([sys.executable, "-m", "federated_research.train", f"resume={out}",
                           f"rounds={saved + 2}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (again,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(saved + 2))  # rounds 0..saved+1, each once: none lost or redone


def _rounds_logged(out) -> list[int]:
    journal = out / "metrics.jsonl"
    if not journal.is_file():
        return []
    lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return [e["step"] for e in lines if "train/loss" in e.get("metrics", {})]


def test_a_remote_worker_that_comes_back_on_its_port_is_reconnected(parts, three_workers,
                                                                     tmp_path):
    """A worker started elsewhere that is restarted on the same port (a preempted node
    coming back) is connected to again, on fresh executors, within connect_timeout."""
    import portpicker

    port = portpicker.pick_unused_port()

    def start():
        return subprocess.Popen([str(workers.WORKER_BINARY), f"--port={port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    first = start()
    remote = workers.RemoteWorker(f"localhost:{port}", timeout=30)
    context = ShardedContext([workers.worker_context(remote)], 1)
    try:
        before = _rounds(parts, context, rounds=1)
        first.kill()
        first.wait()
        second = start()
        try:
            after = _rounds(parts, context, rounds=1)  # the same round again, on the new one
        finally:
            second.kill()
            second.wait()
    finally:
        remote.close()
        if first.poll() is None:
            first.kill()
    assert remote.generation == 2  # connected twice: to each worker once
    assert np.array_equal(before[0], after[0])
