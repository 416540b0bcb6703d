"""FetchSGD (Rothchild et al., ICML 2020) against the count sketch's analysis and the paper's
Algorithm 1: unbiased estimates with variance ||x||^2 / c per row, heavy hitters recovered
exactly, a shared sparse update delivered as it is, and momentum and error accumulation in
sketch space step for step against a numpy Algorithm 1 on the same hashes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from omegaconf import OmegaConf

from federated_research.aggregators.codec_sum import method_aggregator
from federated_research.comm_bits import comm_cost
from federated_research.compression.count_sketch import CountSketch, median_of_rows
from federated_research.compression.method import build_method
from federated_research.errors import ConfigError
from federated_research.train import CONF_DIR

pytestmark = pytest.mark.xdist_group("fetchsgd")

SHAPES = [(40, 25), (7,)]  # a kernel and a bias: sketched as one vector of 1,007
D = 1007


def _method(**options):
    cfg = OmegaConf.load(CONF_DIR / "aggregator" / "fetchsgd.yaml")
    cfg.seed = 3
    cfg.update(options)
    return build_method(cfg, "aggregator")


def _process(**options):
    value_type = tff.types.to_type([(np.float32, s) for s in SHAPES])
    method = _method(**options)
    return method, method_aggregator(method).create(value_type, tff.TensorType(np.float32))


def _split(flat: np.ndarray) -> list[np.ndarray]:
    return [flat[:1000].reshape(SHAPES[0]), flat[1000:]]


def _roundtrip(sketcher: CountSketch, x: np.ndarray) -> np.ndarray:
    return sketcher.estimate(sketcher.sketch(tf.constant(x))).numpy()


def test_a_row_estimates_each_coordinate_unbiased_with_variance_norm_over_columns():
    """Over the hashes, s(i) T[h(i)] has mean x_i and variance sum_{l != i} x_l^2 / c
    (Charikar et al. 2002), on a heavy-tailed vector; the median of 5 rows errs less."""
    rng = np.random.default_rng(0)
    d, c, draws = 400, 40, 1000
    x = (rng.lognormal(0, 1.5, d) * rng.choice([-1, 1], d)).astype(np.float32)
    one = np.stack([_roundtrip(CountSketch(d, 1, c, seed), x) for seed in range(draws)])
    variance = (np.sum(x ** 2) - x ** 2) / c
    z = (one.mean(axis=0) - x) / np.sqrt(variance / draws)
    assert 0.8 < np.mean(z ** 2) < 1.25  # no bias beyond the sampling noise
    assert np.mean(one.var(axis=0) / variance) == pytest.approx(1.0, abs=0.1)
    five = np.stack([_roundtrip(CountSketch(d, 5, c, seed), x) for seed in range(50)])
    assert np.mean((five - x) ** 2) < 0.5 * np.mean((one - x) ** 2)


def test_the_median_of_rows_is_numpys_for_odd_and_even_rows():
    values = np.random.default_rng(1).normal(size=(12, 50)).astype(np.float32)
    for rows in (1, 2, 3, 4, 5, 9, 12):
        np.testing.assert_allclose(median_of_rows(tf.constant(values[:rows])),
                                   np.median(values[:rows], axis=0), rtol=1e-6)


def test_heavy_hitters_are_recovered_exactly():
    """20 large coordinates among 20,000 small ones: the 20 largest estimates are exactly
    theirs, each within the noise of its true value."""
    rng = np.random.default_rng(2)
    d, heavy = 20_000, rng.choice(20_000, 20, replace=False)
    x = rng.normal(0, 0.01, d).astype(np.float32)
    x[heavy] = rng.uniform(1, 2, 20) * rng.choice([-1, 1], 20)
    codec = _method(rows=5, columns=2000).codecs([(d,)])[0]
    estimate = codec.decode(codec.encode(tf.constant(x), None), None).numpy()
    top = np.argsort(-np.abs(estimate))[:20]
    assert set(top) == set(heavy)
    assert np.max(np.abs(estimate[heavy] - x[heavy])) < 0.05


def test_clients_sending_the_same_sparse_update_get_it_back_and_nothing_stays_behind():
    """k = its support, a sketch wide enough that no coordinate collides in most rows:
    round 1 applies it exactly; S_e - S(Delta) and the masked momentum are then empty,
    so round 2 applies it exactly again."""
    rng = np.random.default_rng(3)
    flat = np.zeros(D, np.float32)
    support = rng.choice(D, 10, replace=False)
    flat[support] = rng.normal(size=10)
    update = _split(flat)
    _, process = _process(rows=5, columns=1000, k=10)
    state = process.initialize()
    for _ in range(2):
        output = process.next(state, [update] * 4, [1.0, 5.0, 2.0, 1.0])
        for got, want in zip(output.result, update, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        state = output.state
        assert np.abs(state.error).max() < 1e-6 and np.abs(state.momentum).max() < 1e-6


def _algorithm_1(hashes, rounds, columns: int, k: int, method, weights):
    """The paper's Algorithm 1 at the method's momentum (its `error_reset`: the paper's
    subtraction, or the authors' zeroing), dense numpy: the applied Delta and (S_u, S_e)
    each round; the tables' mean weighted by `weights`, as the authors' code weights it.
    Ties among the estimates are common (coordinates that share their median bucket):
    the lower index goes first, as in tf.math.top_k."""
    where, signs = hashes
    rows, rho = where.shape[0], method.momentum

    def sketch(x):
        table = np.zeros(rows * columns, np.float64)
        np.add.at(table, where.ravel(), (signs * x[None, :]).ravel())
        return table.reshape(rows, columns)

    momentum = np.zeros((rows, columns))
    error = np.zeros((rows, columns))
    steps = []
    for clients in rounds:
        mean = np.average([sketch(g) for g in clients], axis=0, weights=weights)
        momentum = rho * momentum + mean
        error = error + momentum
        estimate = np.median(error.ravel()[where] * signs, axis=0)
        chosen = np.argsort(-np.abs(estimate), kind="stable")[:k]  # ties: the lower index
        delta = np.zeros_like(estimate)
        delta[chosen] = estimate[chosen]
        if method.error_reset == "subtract":  # the paper
            error = error - sketch(delta)
        else:  # the authors' code: the error in the buckets of Delta's coordinates
            error.ravel()[where[:, chosen].ravel()] = 0
        momentum.ravel()[where[:, chosen].ravel()] = 0  # the buckets of Delta's coordinates
        steps.append((delta, momentum.copy(), error.copy()))
    return steps


@pytest.mark.parametrize(("rows", "reset"), [(3, "zero"), (4, "subtract")])  # odd, even rows
def test_momentum_and_error_accumulation_match_algorithm_1_step_by_step(rows, reset):
    rng = np.random.default_rng(4)
    method, process = _process(rows=rows, columns=100, k=25, momentum=0.9, error_reset=reset)
    sketcher = method.codecs(SHAPES)[0].sketcher
    hashes = tuple(h.numpy() for h in sketcher.hashes())
    rounds = [[(rng.standard_t(3, D) * 0.1).astype(np.float32) for _ in range(3)]
              for _ in range(4)]
    state = process.initialize()
    for (delta, momentum, error), clients in zip(
            _algorithm_1(hashes, rounds, 100, 25, method, [1.0, 7.0, 2.0]), rounds, strict=True):
        output = process.next(state, [_split(g) for g in clients], [1.0, 7.0, 2.0])
        state = output.state
        got = np.concatenate([np.ravel(r) for r in output.result])
        assert np.count_nonzero(got) == 25
        np.testing.assert_allclose(got, delta, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(state.momentum, momentum, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(state.error, error, rtol=1e-4, atol=1e-6)


def test_a_client_sends_one_table_and_its_weight():
    method, process = _process(rows=3, columns=0.1, k=5)
    assert comm_cost(process.next).up == 32 * 3 * 101 + 32 == method.message_bits(SHAPES) + 32
    assert comm_cost(process.next).down == 0
    assert method.top(D) == 5 and _method(k=0.01).top(D) == 10  # a count, or a fraction


@pytest.mark.parametrize(("key", "value"), [("error_feedback", "ef14"), ("zeroing", True),
                                            ("clipping", True), ("threshold", 100),
                                            ("subsample", 0.5)])
def test_fetchsgd_refuses_what_does_not_fit_one_sketch_and_its_rule_in_one_line(key, value):
    with pytest.raises(ConfigError) as caught:
        _method(**{key: value})
    message = str(caught.value)
    assert message.startswith(f"aggregator.{key}=") and "\n" not in message
    assert f"Fix: leave it at aggregator.{key}=" in message


@pytest.mark.parametrize("algorithm", ["fedavg", "custom_fedavg"])
def test_rounds_run_with_the_sketches_in_the_server_state(algorithm):
    """Two rounds of the linear model: the bits are one table and a weight a client; the
    aggregator's S_u and S_e are in the learning process's state (so in every checkpoint)."""
    from federated_research.build import build_run_parts
    from federated_research.loop import Evaluations, RunState, run_rounds
    from tests.conftest import compose_config

    parts = build_run_parts(compose_config([
        "model=linear", "dataset.num_clients=8", "clients_per_round=3", "rounds=2",
        f"algorithm={algorithm}", "aggregator=fetchsgd", "server_optimizer.learning_rate=0.1"]))
    logged = {}

    class Collect:
        def log_metrics(self, metrics, step):
            logged[step] = dict(metrics)

    run = run_rounds(parts, RunState(parts.initial_state), Evaluations(lambda w: {}), Collect())
    columns = round(0.077 * 7850)
    assert logged[1]["comm/aggregated_bits"] == 3 * (32 * 5 * columns + 32)  # and a weight
    sketches = run.state.aggregator
    assert np.shape(sketches.error) == np.shape(sketches.momentum) == (5, columns)
    assert np.any(sketches.error != 0) and np.all(np.isfinite(sketches.error))
    weights = parts.algorithm.process.get_model_weights(run.state).trainable
    assert all(np.all(np.isfinite(w)) for w in weights)
