"""PowerSGD (Vogels et al. 2019) against its paper, on real TFF computations.

A dense numpy reference of the paper's Algorithm 1 (one power iteration, warm start,
Gram-Schmidt) with Algorithm 2's error feedback, run beside the process for 3 rounds
and 3 clients; the known toys (a full-rank request is exact, a rank-r matrix is
recovered, the warm start converges to the best rank-r approximation as subspace
iteration does); the bits counted off the process against the formula; and a round of
the linear model through algorithm=fedavg / custom_fedavg / fedsgd, and a resumed run.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.aggregators.powersgd import PowerSgdFactory
from federated_research.algorithms import ClientStatefulProcess
from federated_research.build import build_run_parts
from federated_research.comm_bits import comm_cost
from federated_research.compression.powersgd import PowerSgd
from federated_research.errors import ConfigError
from tests.conftest import compose_config
from tests.test_resume import _deterministic, _journal_history, _train

pytestmark = pytest.mark.xdist_group("powersgd")

# A dense kernel (n, m) = (7, 12), a conv kernel (4, 18) as the authors view it, a bias.
SHAPES = [(12, 7), (3, 3, 2, 4), (7,)]
WEIGHT = tff.TensorType(np.float32)


def _process(shapes=SHAPES, **options):
    value_type = tff.types.to_type([(np.float32, s) for s in shapes])
    return PowerSgdFactory(PowerSgd(**options)).create(value_type, WEIGHT)


def _next(process, state, values, weights, memory=None):
    """One round; (state, result, client states or None)."""
    if memory is None and isinstance(getattr(process, "initial_client_state", None), list):
        memory = [process.initial_client_state] * len(values)
    if memory is None:
        out = process.next(state, values, weights)
        return out.state, [np.asarray(r) for r in out.result], None
    out = process.next(state, values, weights, memory)
    return out.state, [np.asarray(r) for r in out.result], [
        [np.asarray(e) for e in c] for c in out.client_state]


def _matrix(x: np.ndarray) -> np.ndarray:
    """The authors' view: (out, rest) = the Keras tensor as (rest, out), transposed."""
    return x.reshape(-1, x.shape[-1]).T.astype(np.float64)


def _gram_schmidt(p: np.ndarray) -> np.ndarray:
    """The paper's orthogonalisation, column by column."""
    p = p.copy()
    for j in range(p.shape[1]):
        for k in range(j):
            p[:, j] -= (p[:, k] @ p[:, j]) * p[:, k]
        p[:, j] /= np.linalg.norm(p[:, j])
    return p


def _reference(updates, weights, q0, against_aggregate=False):
    """Algorithms 1 and 2 in numpy (float64), the means weighted by `weights` (equal
    weights: the paper's); a client of weight 0 keeps its residual. Per round: the
    aggregate of each tensor, each client's residuals (out x rest) and the next Q.
    `against_aggregate`: the residual the authors' code keeps, Delta_i - P_hat Q^T."""
    weights = np.asarray(weights, np.float64)
    compressed = [i for i, s in enumerate(SHAPES) if len(s) > 1]
    residuals = [[np.zeros_like(_matrix(updates[0][0][i])) for i in compressed]
                 for _ in weights]
    qs, rounds = [q.astype(np.float64) for q in q0], []
    for step in updates:
        deltas = [[_matrix(u[i]) + e for i, e in zip(compressed, residuals[c], strict=True)]
                  for c, u in enumerate(step)]
        p_hat = [_gram_schmidt(sum(w * d[j] @ qs[j] for w, d in zip(weights, deltas,
                                                                     strict=True)))
                 for j in range(len(compressed))]
        local = [[d[j].T @ p_hat[j] for j in range(len(compressed))] for d in deltas]
        qs = [sum(w * q[j] for w, q in zip(weights, local, strict=True)) / weights.sum()
              for j in range(len(compressed))]
        if against_aggregate:
            local = [qs] * len(deltas)
        residuals = [[d[j] - p_hat[j] @ q[j].T for j in range(len(compressed))]
                     if w > 0 else residuals[c]
                     for c, (w, d, q) in enumerate(zip(weights, deltas, local, strict=True))]
        aggregate = [p @ q.T for p, q in zip(p_hat, qs, strict=True)]
        aggregate.append(sum(w * u[2] for w, u in zip(weights, step, strict=True))
                         / weights.sum())
        rounds.append((aggregate, residuals, qs))
    return rounds


@pytest.mark.parametrize("weights", [[2.0, 2.0, 2.0], [1.0, 3.0, 0.0]],
                         ids=["equal (the paper's)", "weighted, one silent"])
def test_three_rounds_of_three_clients_match_a_numpy_reference_of_the_paper(weights):
    rng = np.random.default_rng(3)
    updates = [[[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(3)]
               for _ in range(3)]
    process = _process()
    state = process.initialize()
    want = _reference(updates, weights, [np.asarray(q) for q in state])
    memory = None
    for step, (aggregate, residuals, qs) in zip(updates, want, strict=True):
        state, result, memory = _next(process, state, step, weights, memory)
        for got, shape, expected in zip(result, SHAPES, aggregate, strict=True):
            expected = expected.T.reshape(shape) if len(shape) > 1 else expected
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        for client, expected in zip(memory, residuals, strict=True):  # e = Delta - P_hat Q_i^T
            for got, e in zip(client, expected, strict=True):
                np.testing.assert_allclose(got, e.T, rtol=1e-4, atol=1e-4)
        for got, q in zip(state, qs, strict=True):  # the warm start the server keeps
            np.testing.assert_allclose(got, q, rtol=1e-4, atol=1e-4)
    assert max(float(np.abs(e).max()) for c in memory for e in c) > 0.1  # a real residual
    if weights[2] == 0:  # the silent client never sent: its residual is still zero
        assert all(not np.any(e) for e in memory[2])
    else:  # every client every round: the authors' code's residual gives the same aggregates
        others = _reference(updates, weights, [np.asarray(q) for q in process.initialize()],
                            against_aggregate=True)
        for (mine, _, _), (theirs, _, _) in zip(want, others, strict=True):
            for a, b in zip(mine, theirs, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_full_rank_from_one_client_is_exact():
    process = _process(rank=20, min_compression_rate=0.0)
    rng = np.random.default_rng(0)
    update = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    _, result, memory = _next(process, process.initialize(), [update], [5.0])
    for got, x in zip(result, update, strict=True):
        np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)
    assert all(float(np.abs(e).max()) < 1e-5 for e in memory[0])


def test_a_rank_r_matrix_on_every_client_is_recovered_in_its_first_round():
    rng = np.random.default_rng(1)
    low = [(rng.normal(size=(12, 2)) @ rng.normal(size=(2, 7))).astype(np.float32),
           (rng.normal(size=(18, 2)) @ rng.normal(size=(2, 4))).reshape(3, 3, 2, 4).astype(
               np.float32), rng.normal(size=7).astype(np.float32)]
    for warm in (True, False):
        process = _process(warm_start=warm)
        state, memory = process.initialize(), None
        for _ in range(2):
            state, result, memory = _next(process, state, [low] * 3, [1.0, 2.0, 3.0], memory)
            for got, x in zip(result, low, strict=True):
                np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)


def test_the_warm_start_converges_to_the_best_rank_r_approximation():
    """Warm-started, one power iteration a round is subspace iteration: the error of
    P_hat Q^T falls to Eckart-Young's sqrt(s3^2 + s4^2); a fresh Q each round does not."""
    rng = np.random.default_rng(2)
    u, _ = np.linalg.qr(rng.normal(size=(12, 4)))
    v, _ = np.linalg.qr(rng.normal(size=(7, 4)))
    matrix = (u @ np.diag([10.0, 5.0, 1.0, 0.5]) @ v.T).astype(np.float32)
    best = np.sqrt(1.0 ** 2 + 0.5 ** 2)
    errors = {}
    for warm in (True, False):
        process = _process(shapes=[(12, 7)], warm_start=warm, error_feedback=False)
        state, errors[warm] = process.initialize(), []
        for _ in range(4):
            state, result, _ = _next(process, state, [[matrix]], [1.0])
            errors[warm].append(float(np.linalg.norm(result[0] - matrix)))
    assert all(e >= best * (1 - 1e-4) for e in errors[True] + errors[False])
    assert errors[True][-1] == pytest.approx(best, rel=1e-3)
    assert errors[True][0] > errors[True][-1]
    assert min(errors[False]) > best * 1.01


@pytest.mark.parametrize(("options", "up", "down"), [
    # n, m, r: (7, 12, 2), (4, 18, 2); the bias raw. up = 32 ((19 + 22) 2 + 7) + 32
    ({}, 32 * (38 + 44 + 7) + 32, 32 * (7 * 2 + 4 * 2) + 32 * (12 * 2 + 18 * 2)),
    ({"warm_start": False}, 32 * (38 + 44 + 7) + 32, 32 * (7 * 2 + 4 * 2) + 32),
    ({"error_feedback": False, "rank": 1}, 32 * (19 + 22 + 7) + 32, 32 * (11 + 30)),
    # rank 4: the conv kernel (4 x 18) would send 88 floats of 72: it goes raw
    ({"rank": 4}, 32 * (19 * 4 + 72 + 7) + 32, 32 * (7 * 4 + 12 * 4)),
    ({"rank": 9, "min_compression_rate": 0.0},  # capped at min(n, m)
     32 * (19 * 7 + 22 * 4 + 7) + 32, 32 * (7 * 7 + 4 * 4 + 12 * 7 + 18 * 4))])
def test_bits_counted_off_the_process_are_the_formula(options, up, down):
    method = PowerSgd(**options)
    cost = comm_cost(_process(**options).next)
    assert (cost.up, cost.down) == (up, down) == (method.uplink_bits(SHAPES),
                                                   method.downlink_bits(SHAPES))
    assert sum(t.direction == "up" for t in cost.transfers) == 2  # P_i (+ weight), Q_i
    assert sum(t.direction == "down" for t in cost.transfers) == 2  # Q or the round, P_hat


def test_options_are_checked_in_one_line():
    for options, says in (({"rank": 0}, "rank=0: must be at least 1"),
                          ({"zeroing": True}, "aggregator.zeroing=true: PowerSGD"),
                          ({"clipping": True}, "aggregator.clipping=true: PowerSGD"),
                          ({"min_compression_rate": -1.0}, "min_compression_rate=-1.0")):
        with pytest.raises(ConfigError, match=says) as refused:
            PowerSgd(**options).check()
        assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="no weight matrix of this model is sent compressed"):
        _process(shapes=[(3, 2), (2,)])


TINY = ["model=linear", "dataset.num_clients=8", "clients_per_round=3", "rounds=2",
        "aggregator=powersgd"]
LINEAR = [(784, 10), (10,)]  # n = 10, m = 784


# (algorithm=fedavg with residuals builds this same process: ours, as clients keep state)
@pytest.mark.parametrize("overrides", [["algorithm=custom_fedavg"],
                                       ["algorithm=fedsgd", "aggregator.error_feedback=false"],
                                       ["algorithm=scaffold"]])
def test_a_round_of_the_linear_model_runs_and_counts_the_formula(overrides):
    parts = build_run_parts(compose_config([*TINY, *overrides]))
    method = PowerSgd(error_feedback="aggregator.error_feedback=false" not in overrides)
    process = parts.algorithm.process
    assert isinstance(process, ClientStatefulProcess) == (
        method.error_feedback or "algorithm=scaffold" in overrides)
    data = [parts.data.task.client_batches(parts.data.train.create_tf_dataset_for_client(c),
                                           1, 10, 10, 0) for c in parts.data.train.client_ids[:3]]
    kept = ([] if parts.algorithm.client_state is None
            else [[process.initial_client_state] * len(data)])
    output = process.next(parts.initial_state, data, *kept)
    assert all(np.all(np.isfinite(w)) for w in process.get_model_weights(output.state).trainable)
    bits = parts.comm.describe()["per_client_bits"]
    twice = 2 if "algorithm=scaffold" in overrides else 1  # its control change goes too
    assert bits["model_up"] == twice * method.uplink_bits(LINEAR)
    model = 32 * 7850
    assert bits["model_down"] == twice * (model + method.downlink_bits(LINEAR))
    assert bits["diagnostic_up"] > 0  # the exact mean behind comm/update_mse: not counted


def test_fedsgd_refuses_the_residuals_in_one_line():
    with pytest.raises(ConfigError, match="aggregator.error_feedback=true: algorithm=fedsgd"):
        build_run_parts(compose_config([*TINY, "algorithm=fedsgd"]))


def test_a_resumed_run_equals_one_that_never_stopped(tmp_path):
    overrides = [*TINY[:-2], "eval_every=1", "aggregator=powersgd"]
    parts = build_run_parts(compose_config(overrides))
    whole_dir, split_dir = tmp_path / "whole", tmp_path / "split"
    whole_dir.mkdir(), split_dir.mkdir()
    whole, _ = _train(parts, whole_dir, 5, 2, False, "memory")
    _train(parts, split_dir, 3, 2, False, "memory")
    resumed, _ = _train(build_run_parts(compose_config(overrides)), split_dir, 5, 2, True,
                        "memory")
    assert resumed.next_round == 5
    for a, b in zip(tf.nest.flatten(whole.state), tf.nest.flatten(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)  # the model, and the server's Q
    assert whole.clients.written == resumed.clients.written
    for cid in whole.clients.written:  # every client's residual, bit for bit
        for a, b in zip(whole.clients.read([cid])[0], resumed.clients.read([cid])[0],
                        strict=True):
            np.testing.assert_array_equal(a, b)
    whole_history = _deterministic(_journal_history(whole_dir))
    assert _deterministic(_journal_history(split_dir)) == whole_history
    assert whole_history[4]["client_state/residual_norm"] > 0


def test_a_sweep_report_pairs_powersgd_with_its_feedback_off():
    from types import SimpleNamespace

    from federated_research.feedback_gain import feedback_gains

    def runs(*accuracies):
        return [SimpleNamespace(seed=s, final_accuracy=a, train_clients=None)
                for s, a in enumerate(accuracies)]

    base = {"aggregator": "powersgd", "clients_per_round": "10", "dataset.num_clients": "40"}
    on = tuple(sorted({**base, "aggregator.error_feedback": "true"}.items()))
    off = tuple(sorted({**base, "aggregator.error_feedback": "false"}.items()))
    (row,) = feedback_gains({on: runs(0.9, 0.8), off: runs(0.85, 0.8)},
                            {on: "powersgd-true", off: "powersgd-false"})
    assert (row["without"], row["method"], row["feedback"]) == (
        "powersgd-false", "powersgd", "true")
    assert row["gain"] == pytest.approx(2.5) and row["participation"] == 0.25
