"""runtime=sharded: a round's clients cut into shards over several real TFF workers,
merged in shard order, so the numbers depend on `shards` only."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

from federated_research.build import build_run_parts
from federated_research.errors import ConfigError
from federated_research.loop import client_datasets, sample_clients
from federated_research.options import build_options
from federated_research.runtime import workers
from federated_research.runtime.sharded import Sharded
from federated_research.runtime.sharding import ShardedContext
from tests.conftest import compose_config

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
