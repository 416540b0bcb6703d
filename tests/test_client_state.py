"""Clients that remember: error feedback against a numpy reference, the client-state
store, state that is never counted as traffic, the stateful FedAvg against the plain
one, and SCAFFOLD's first round and control variates, on real TFF computations."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.error_feedback import ErrorFeedbackFactory, KeepNothing
from federated_research.algorithms.custom_fedavg import build_custom_fedavg
from federated_research.build import build_run_parts
from federated_research.client_state import DiskStore, MemoryStore
from federated_research.compression.topk import TopK
from federated_research.config import validate
from federated_research.errors import ConfigError
from federated_research.loop import Evaluations, RunState, run_rounds, sample_clients
from tests.conftest import compose_config, options

pytestmark = pytest.mark.xdist_group("client_state")

# signsgd's majority vote refuses feedback (tests/test_baseline_methods.py): it has no
# mean to correct;
# powersgd is no codec to wrap: its feedback is its own (tests/test_powersgd.py);
# fetchsgd refuses it: its error accumulation is the server's, in sketch space
METHODS = sorted(set(options("aggregator")) - {"mean", "compression", "tff_compression",
                                                 "topk", "signsgd", "powersgd", "fetchsgd"})
TINY = ["model=linear", "dataset.num_clients=8", "clients_per_round=3", "rounds=2"]
SHAPES = [(12,), (3, 4)]
FRACTION = 0.25  # k = 3 of 12 coordinates per tensor


def _top(x: np.ndarray) -> np.ndarray:
    """Top-k by magnitude, the rest zero: what the decoder returns."""
    k = max(1, round(FRACTION * x.size))
    out = np.zeros_like(x)
    keep = np.argsort(-np.abs(x))[:k]
    out[keep] = x[keep]
    return out


def _reference(kind: str, updates, weights, participation: float):
    """EF14 / EF21(-PP) in numpy, step by step: the aggregates, the clients' memories
    and the norms of what they still owe."""
    clients = len(updates[0])
    memory = [[np.zeros(int(np.prod(s)), np.float32) for s in SHAPES] for _ in range(clients)]
    estimate = [np.zeros(int(np.prod(s)), np.float32) for s in SHAPES]
    steps = []
    for step_updates in updates:
        decoded, owed = [], []
        for i, update in enumerate(step_updates):
            flat = [u.reshape(-1) for u in update]
            if kind == "ef14":
                corrected = [x + e for x, e in zip(flat, memory[i], strict=True)]
                sent = [_top(c) for c in corrected]
                if weights[i] > 0:  # a client the server ignores keeps what it owes
                    memory[i] = [c - s for c, s in zip(corrected, sent, strict=True)]
                owed.append(memory[i])
            else:
                sent = [_top(x - g) for x, g in zip(flat, memory[i], strict=True)]
                memory[i] = [g + s for g, s in zip(memory[i], sent, strict=True)]
                owed.append([x - g for x, g in zip(flat, memory[i], strict=True)])
            decoded.append(sent)
        used = weights if kind == "ef14" else [1.0] * clients  # EF21 averages clients
        mean = [sum(w * d[t] for w, d in zip(used, decoded, strict=True)) / sum(used)
                for t in range(len(SHAPES))]
        if kind == "ef21":
            estimate = [g + participation * m for g, m in zip(estimate, mean, strict=True)]
            mean = estimate
        steps.append(([m.reshape(s) for m, s in zip(mean, SHAPES, strict=True)],
                      [list(m) for m in memory],
                      [float(np.sqrt(sum(np.sum(o ** 2) for o in owing))) for owing in owed]))
    return steps


@pytest.mark.parametrize("kind", ["ef14", "ef21"])
def test_error_feedback_matches_a_numpy_reference_step_by_step(kind):
    rng = np.random.default_rng(7)
    updates = [[[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(3)]
               for _ in range(4)]
    weights = [1.0, 5.0, 0.0]  # the last client trained on nothing
    value_type = tff.types.to_type([(np.float32, s) for s in SHAPES])
    process = ErrorFeedbackFactory(TopK(fraction=FRACTION), kind, participation=0.5).create(
        value_type, tff.TensorType(np.float32))
    state = process.initialize()
    memory = [process.initial_client_state] * 3
    for step, (mean, want_memory, want_owed) in zip(
            updates, _reference(kind, updates, weights, 0.5), strict=True):
        out = process.next(state, step, weights, memory)
        state, memory = out.state, out.client_state
        for got, want in zip(out.result, mean, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        for got_client, want_client in zip(memory, want_memory, strict=True):
            for got, want in zip(got_client, want_client, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out.client_measurements["residual_norm"], want_owed,
                                   rtol=1e-5)
    assert max(want_owed) > 0.1  # top-k dropped something, so there was feedback to test


@pytest.fixture(scope="module")
def built():
    """A few configurations built once (linear model), read by several tests: built
    parts keep no run's state."""
    configs = {
        "topk": ["aggregator=topk", "aggregator.fraction=0.1", "algorithm=custom_fedavg"],
        "topk-tff": ["aggregator=topk", "aggregator.fraction=0.1"],
        "topk-ef14": ["aggregator=topk", "aggregator.fraction=0.1",
                      "aggregator.error_feedback=ef14"],
        "topk-ef21": ["aggregator=topk", "aggregator.fraction=0.1",
                      "aggregator.error_feedback=ef21", "client.update_clip_norm=1.0"],
        "topk-clip": ["aggregator=topk", "aggregator.fraction=0.1",
                      "client.update_clip_norm=1.0", "algorithm=custom_fedavg"],
        "drive": ["aggregator=drive", "algorithm=custom_fedavg"],
        "custom_fedavg": ["algorithm=custom_fedavg"],
        "scaffold": ["algorithm=scaffold"],
        "scaffold-drive": ["algorithm=scaffold", "aggregator=drive"],
    }
    return {name: build_run_parts(compose_config([*TINY, *o])) for name, o in configs.items()}


def test_client_state_is_never_counted_as_traffic(built):
    bits = {name: parts.comm.describe()["per_client_bits"] for name, parts in built.items()}
    # algorithm=fedavg as typed runs on our Federated Core FedAvg when clients keep
    # state: the model's traffic is the same; TFF's builder also broadcasts the client
    # learning rate (32 control bits down), which ours does not
    for key in ("model_down", "model_up", "diagnostic_up", "control_up"):
        assert bits["topk-ef14"][key] == bits["topk-tff"][key]
    assert bits["topk-ef14"] == bits["topk"]  # every direction, every part
    # ef21's mean is over clients: no weight is sent; clipping under feedback happens on
    # the client, without TFF's clipped-count sum
    assert bits["topk-ef21"]["model_up"] == bits["topk"]["model_up"] - 32
    assert bits["topk"]["model_up"] < bits["topk-clip"]["model_up"]
    # SCAFFOLD sends the model and its control variate down, the update and the control
    # change up: twice FedAvg's model traffic both ways (plus the weights' 32 bits each)
    fedavg, scaffold = bits["custom_fedavg"], bits["scaffold"]
    assert scaffold["model_down"] == 2 * fedavg["model_down"]
    assert scaffold["model_up"] == 2 * fedavg["model_up"]
    assert scaffold["control_up"] == fedavg["control_up"]
    assert bits["scaffold-drive"]["model_up"] == 2 * bits["drive"]["model_up"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_takes_feedback_and_sends_what_it_sends_without(method):
    """The uplink's own bits, method by method: ef14's equal the method's; ef21's are
    the message without the weight (32 bits less)."""
    from federated_research.aggregators.codec_sum import method_aggregator
    from federated_research.comm_bits import comm_cost
    from federated_research.compression.method import build_method

    built = build_method(compose_config([f"aggregator={method}"]).aggregator, "aggregator")
    value_type = tff.types.to_type([(np.float32, (300, 20)), (np.float32, (20,))])
    weight = tff.TensorType(np.float32)
    plain = comm_cost(method_aggregator(built).create(value_type, weight).next)
    for kind, less in (("ef14", 0), ("ef21", 32)):
        feedback = comm_cost(ErrorFeedbackFactory(built, kind).create(value_type, weight).next)
        assert (feedback.up, feedback.down) == (plain.up - less, plain.down), kind


def _run(parts, rounds: int, clients=None):
    spec = parts.spec.__class__(**{**parts.spec.__dict__, "rounds": rounds})

    class Collect:
        logged: dict[int, dict] = {}

        def log_metrics(self, metrics, step):
            self.logged[step] = dict(metrics)

    tracker = Collect()
    tracker.logged = {}
    run = run_rounds(parts.__class__(**{**parts.__dict__, "spec": spec}),
                     RunState(parts.initial_state, clients=clients), Evaluations(lambda w: {}),
                     tracker)
    return run, tracker.logged


def test_stateful_fedavg_without_state_equals_the_plain_one_bit_for_bit():
    parts = build_run_parts(compose_config([*TINY, "algorithm=custom_fedavg",
                                            "log_update_error=false"]))
    stateful = build_custom_fedavg(
        parts.model, tff.learning.optimizers.build_sgdm(0.05),
        tff.learning.optimizers.build_sgdm(1.0), KeepNothing(tff.aggregators.MeanFactory()))
    assert stateful.client_state == ()
    state = stateful.process.set_model_weights(
        stateful.process.initialize(), parts.algorithm.process.get_model_weights(
            parts.initial_state))
    other = parts.__class__(**{**parts.__dict__, "algorithm": stateful, "initial_state": state})
    plain_run, plain_logged = _run(parts, 3)
    stateful_run, stateful_logged = _run(other, 3)
    for a, b in zip(tf.nest.flatten(parts.algorithm.process.get_model_weights(plain_run.state)),
                    tf.nest.flatten(stateful.process.get_model_weights(stateful_run.state)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for step, metrics in plain_logged.items():
        assert {k: v for k, v in metrics.items() if k.startswith(("train/", "comm/"))} == {
            k: v for k, v in stateful_logged[step].items() if k.startswith(("train/", "comm/"))}


def test_fedavg_with_error_feedback_logs_its_memory_and_staleness(built):
    parts = built["topk-ef14"]
    run, logged = _run(parts, 4)
    store = run.clients
    assert isinstance(store, MemoryStore) and len(store.written) > 3
    assert logged[0]["client_state/fraction_with_state"] == 0
    assert "client_state/mean_staleness" not in logged[0]
    ids = list(parts.data.train.client_ids)
    seen: set[str] = set()
    for step, metrics in logged.items():  # the population's states met so far, no more
        assert metrics["client_state/residual_norm"] > 0
        assert metrics["client_state/memory_bytes"] == len(seen) * store.state_bytes()
        seen |= set(sample_clients(ids, 3, parts.spec.seed, step))
    assert store.memory_bytes() == len(seen) * store.state_bytes() > 0
    later = [m for m in logged.values() if "client_state/mean_staleness" in m]
    assert later and all(1 <= m["client_state/mean_staleness"] <= m[
        "client_state/max_staleness"] for m in later)
    # what the store holds is the residual the clients' last round left them with
    residual = store.read([next(iter(store.written))])[0]
    assert sum(float(np.sum(leaf ** 2)) for leaf in residual) > 0


def test_scaffold_first_round_is_fedavg_and_the_server_control_averages_the_clients(built):
    fedavg, scaffold = built["custom_fedavg"], built["scaffold"]
    fedavg_run, _ = _run(fedavg, 1)
    scaffold_run, logged = _run(scaffold, 1)
    for a, b in zip(tf.nest.flatten(fedavg.algorithm.process.get_model_weights(fedavg_run.state)),
                    tf.nest.flatten(scaffold.algorithm.process.get_model_weights(
                        scaffold_run.state)), strict=True):
        np.testing.assert_array_equal(a, b)  # every control variate starts at zero
    store = scaffold_run.clients
    clients = [store.read([cid])[0] for cid in store.written]
    template = scaffold.algorithm.client_state
    controls = [tf.nest.pack_sequence_as(template, leaves)["control"] for leaves in clients]
    p = 3 / 8  # clients a round over the population
    server = scaffold_run.state.control
    for t, server_tensor in enumerate(server):
        want = p * np.mean([c[t] for c in controls], axis=0)
        np.testing.assert_allclose(server_tensor, want, rtol=1e-5, atol=1e-8)
    assert max(float(np.abs(c[0]).max()) for c in controls) > 0


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_the_store_reads_initial_states_stages_writes_and_checkpoints(tmp_path, kind):
    initial = [np.zeros(3, np.float32), np.zeros((2, 2), np.float32)]
    ids = ["a/1", "b", "c"]
    make = (lambda: MemoryStore(initial, ids)) if kind == "memory" else (
        lambda: DiskStore(initial, ids, tmp_path / "store"))
    store = make()
    state = [np.arange(3, dtype=np.float32), np.ones((2, 2), np.float32)]
    assert all(np.array_equal(a, b) for a, b in zip(store.read(["a/1"])[0], initial,
                                                     strict=True))
    store.write(["a/1"], [state], round_num=0)
    assert store.read(["a/1"])[0][0].sum() == 0  # staged: not yet the client's state
    store.commit()
    assert np.array_equal(store.read(["a/1"])[0][0], state[0])
    assert store.metrics(["a/1", "b"], 3) == {
        "client_state/fraction_with_state": 0.5, "client_state/mean_staleness": 3.0,
        "client_state/max_staleness": 3.0,
        "client_state/memory_bytes": 28.0 if kind == "memory" else 0.0,
        "client_state/disk_bytes": float(store.disk_bytes())}
    if kind == "disk":
        assert store.disk_bytes() >= 28 and store.memory_bytes() == 0
    store.save(tmp_path / "ckpt")
    store.write(["a/1"], [[state[0] * 7, state[1]]], round_num=4)  # after the checkpoint
    store.commit()
    assert json.loads((tmp_path / "ckpt" / "written.json").read_text()) == {"a/1": 0}
    fresh = make()
    fresh.load(tmp_path / "ckpt")
    assert fresh.written == {"a/1": 0}
    np.testing.assert_array_equal(fresh.read(["a/1"])[0][0], state[0])  # not the later write


@pytest.mark.parametrize(("overrides", "says"), [
    (["aggregator=mean", "aggregator.error_feedback=ef14"],
     "aggregator.error_feedback: this aggregator keeps no client memory"),
    (["distributor=quantize", "+distributor.error_feedback=ef21"],
     "distributor.error_feedback=ef21: downlink error feedback (EF21-P) needs every client"),
    (["aggregator=topk", "aggregator.error_feedback=ef3"],
     "aggregator.error_feedback=ef3: must be one of none, ef14, ef21"),
    (["aggregator=topk", "aggregator.error_feedback=ef14", "aggregator.clipping=true"],
     "aggregator.clipping=true: TFF's adaptive clipping wraps the weighted mean"),
    (["client_state.store=cloud"], "client_state.store=cloud: must be memory or disk"),
    (["aggregator=topk", "aggregator.error_feedback=ef14", "algorithm=fedsgd"],
     "aggregator.error_feedback=ef14: algorithm=fedsgd is TFF's builder"),
    (["algorithm=scaffold", "aggregator=topk", "aggregator.error_feedback=ef21"],
     "aggregator.error_feedback=ef21: EF21's server keeps a running estimate"),
    (["algorithm=scaffold", "optimizer@client_optimizer=sgdm", "client_optimizer.momentum=0.9"],
     "algorithm=scaffold: its control variates are (x - y) / (K lr)"),
    (["algorithm=scaffold", "client.gradient_clip_norm=1.0"],
     "client.gradient_clip_norm: SCAFFOLD corrects each local gradient"),
    (["algorithm=scaffold", "client.update_clip_norm=1.0"],
     "client.update_clip_norm=1.0: SCAFFOLD sends its control change"),
])
def test_feedback_where_it_makes_no_sense_is_refused_in_one_line(overrides, says):
    from federated_research.errors import exit_for

    with pytest.raises(Exception) as caught:  # noqa: PT011 - compose, validate or build
        cfg = compose_config([*TINY, *overrides])
        validate(cfg)
        build_run_parts(cfg)
    line, code = exit_for(caught.value)
    assert code == 2 and "\n" not in line and line.startswith(f"error: {says}"), line
    assert isinstance(caught.value, ConfigError) or "Fix:" in line


def test_the_disk_store_keeps_states_in_files_and_a_resumed_loop_reads_them(tmp_path, built):
    parts = built["topk-ef21"]
    store = DiskStore([np.asarray(x) for x in tf.nest.flatten(parts.algorithm.client_state)],
                      list(parts.data.train.client_ids), tmp_path / "client_state")
    run, logged = _run(parts, 2, clients=store)
    files = list((tmp_path / "client_state").glob("*.npy"))
    assert len(files) == len(store.written) * len(store.initial)
    assert logged[1]["client_state/disk_bytes"] > 0 and logged[1][
        "client_state/memory_bytes"] == 0
    memory_run, memory_logged = _run(parts, 2)
    for step in logged:  # where the states live changes nothing else
        assert {k: v for k, v in logged[step].items() if k.startswith("train/")} == {
            k: v for k, v in memory_logged[step].items() if k.startswith("train/")}
    assert collections.Counter(store.written.values()) == collections.Counter(
        memory_run.clients.written.values())


def test_a_signal_waits_until_a_round_counts_whole():
    """SIGTERM inside RunState.advance arrives after the server state and the client
    states both moved: a checkpoint never pairs one round's server with another's clients."""
    import os
    import signal

    from federated_research.signals import Terminated, raise_on_sigterm

    undo = raise_on_sigterm()
    store = MemoryStore([np.zeros(2, np.float32)], ["a"])
    run = RunState(state="round 0", clients=store)
    store.write(["a"], [[np.ones(2, np.float32)]], round_num=0)
    original = store.commit

    def commit_then_signal():
        original()
        os.kill(os.getpid(), signal.SIGTERM)  # lands between the two halves of advance

    store.commit = commit_then_signal
    try:
        with pytest.raises(Terminated):
            run.advance("round 1", {"comm/broadcasted_bits_cumulative": 0,
                                    "comm/aggregated_bits_cumulative": 0}, 1.0)
    finally:
        undo()
    assert run.state == "round 1" and run.next_round == 1 and store.written == {"a": 0}


def test_a_run_that_diverges_under_feedback_blames_the_feedback_in_one_line():
    """1-bit stochastic quantize inside ef14 diverged on the MNIST CNN at round 29 (its
    error exceeds the update, so the residual grows): the line names the feedback."""
    from federated_research.errors import diverged, exit_for

    detail = "eval/loss=6.8e+06 (over 230) at round 29"
    line, code = exit_for(diverged(compose_config(
        [*TINY, "aggregator=quantize", "aggregator.bits=1", "aggregator.error_feedback=ef14"]),
        detail))
    assert code == 1 and "\n" not in line
    assert line.startswith(f"error: aggregator.error_feedback=ef14: training diverged: {detail}")
    assert "Fix: error feedback needs a compressor whose error is smaller" in line
    line, _ = exit_for(diverged(compose_config([*TINY, "aggregator=quantize"]), detail))
    assert line.startswith("error: client_optimizer.learning_rate=0.05: training diverged")
