"""The algorithm group on real TFF processes: FedAvg by hand equals TFF's, FedProx, FedSGD,
clipping, the centralised baseline and federated evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.build import build_run_parts
from federated_research.errors import ConfigError
from federated_research.loop import client_datasets, sample_clients
from federated_research.seeds import Stream
from tests.conftest import compose_config

ROUNDS = 3
TINY = ["model=linear", "dataset.num_clients=8", "clients_per_round=3",
        "client_optimizer.learning_rate=0.01"]


def _train(overrides: list[str], rounds: int = ROUNDS):
    """Build a run's parts and train `rounds` rounds on the same clients as the loop."""
    parts = build_run_parts(compose_config([*TINY, *overrides]))
    process, state = parts.algorithm.process, parts.initial_state
    ids = list(parts.data.train.client_ids)
    outputs = []
    for r in range(rounds):
        sampled = sample_clients(ids, parts.spec.clients_per_round, parts.spec.seed, r)
        outputs.append(process.next(state, client_datasets(parts.data, sampled, parts.spec, r)))
        state = outputs[-1].state
    return parts, process.get_model_weights(state), outputs


class _Discard:
    def log_metrics(self, metrics, step):
        pass


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a.trainable, b.trainable, strict=True))


_TRAINED: dict[tuple[str, str], tuple] = {}  # each process is built and trained once


def _trained(algorithm: str, aggregator: str):
    key = (algorithm, aggregator)
    if key not in _TRAINED:
        _TRAINED[key] = _train([f"algorithm={algorithm}", f"aggregator={aggregator}"])
    return _TRAINED[key]


@pytest.fixture(scope="module", params=["mean", "drive"])
def fedavg_pair(request):
    """TFF's FedAvg and ours, same seed, data, initial weights and clients."""
    return (request.param, _trained("fedavg", request.param),
            _trained("custom_fedavg", request.param))


@pytest.mark.xdist_group("fedavg_pair")  # shares a module-scoped TFF process: one worker
def test_custom_fedavg_reaches_tffs_weights(fedavg_pair):
    aggregator, (tff_parts, tff_weights, tff_out), (our_parts, our_weights, our_out) = fedavg_pair
    start = tff_parts.algorithm.process.get_model_weights(tff_parts.initial_state)
    moved = _max_diff(tff_weights, start)
    diff = _max_diff(our_weights, tff_weights)
    print(f"{aggregator}: max |custom - tff| after {ROUNDS} rounds = {diff:.3g} "
          f"(weights moved up to {moved:.3g})")
    assert moved > 1e-3  # they trained
    assert diff <= 1e-6 * max(1.0, moved)
    for ours, theirs in zip(our_out, tff_out, strict=True):
        train = (ours.metrics["client_work"]["train"], theirs.metrics["client_work"]["train"])
        assert train[0]["num_examples"] == train[1]["num_examples"]
        assert train[0]["loss"] == pytest.approx(train[1]["loss"], rel=1e-5)


@pytest.mark.xdist_group("fedavg_pair")  # shares a module-scoped TFF process: one worker
def test_custom_fedavg_is_counted_by_the_same_accounting(fedavg_pair):
    aggregator, (tff_parts, *_), (our_parts, *_) = fedavg_pair
    theirs, ours = tff_parts.comm.round_metrics(3), our_parts.comm.round_metrics(3)
    for key in ("comm/broadcasted_bits", "comm/aggregated_bits", "comm/control_aggregated_bits"):
        assert ours[key] == theirs[key] > 0, key
    # TFF's builder also broadcasts the client learning rate; ours bakes it in.
    assert (theirs["comm/control_broadcasted_bits"], ours["comm/control_broadcasted_bits"]) \
        == (3 * 32, 0)
    if aggregator == "drive":  # compressed: a fraction of the 32 bits a weight
        assert ours["comm/aggregated_bits"] < ours["comm/broadcasted_bits"] / 8


@pytest.mark.xdist_group("fedavg_pair")  # shares a module-scoped TFF process: one worker
def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_towards_the_server():
    tff_parts, tff_weights, _ = _trained("fedavg", "mean")
    start = tff_parts.algorithm.process.get_model_weights(tff_parts.initial_state)
    _, prox0, _ = _train(["algorithm=fedprox", "algorithm.mu=0"])
    _, prox, _ = _train(["algorithm=fedprox", "algorithm.mu=10"])
    assert _max_diff(prox0, tff_weights) <= 1e-6
    # lr 0.01 x mu 10: each local step pulls 10% of the way back to the server model.
    assert 0 < _max_diff(prox, start) < 0.8 * _max_diff(tff_weights, start)


def test_fedsgd_steps_once_with_the_mean_gradient():
    lr = 0.5
    parts, weights, outputs = _train(["algorithm=fedsgd", f"server_optimizer.learning_rate={lr}"],
                                     rounds=1)
    # Recompute the round by hand: the example-weighted mean gradient of the sampled clients.
    model = parts.model.compiled_keras()
    start = parts.algorithm.process.get_model_weights(parts.initial_state)
    start.assign_weights_to(model)
    sampled = sample_clients(list(parts.data.train.client_ids), 3, 0, 0)
    loss_fn = parts.model.task.loss(parts.model.from_logits)
    total, count = [tf.zeros_like(v) for v in model.trainable_variables], 0
    for ds in client_datasets(parts.data, sampled, parts.spec, 0):
        for x, y in ds:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            total = [t + g * len(y) for t, g in zip(total, grads, strict=True)]
            count += len(y)
    expected = [w - lr * t.numpy() / count for w, t in zip(start.trainable, total, strict=True)]
    assert outputs[0].metrics["client_work"]["train"]["num_examples"] == count
    assert max(float(np.max(np.abs(a - b)))
               for a, b in zip(weights.trainable, expected, strict=True)) < 1e-5


def test_gradient_clipping_scales_each_step_to_the_norm():
    from federated_research.clipping import GradientClipping

    sgd = tff.learning.optimizers.build_sgdm(learning_rate=1.0)
    clipped = GradientClipping(sgd, clip_norm=0.5)
    weights = (tf.zeros([3]), tf.zeros([2]))
    gradients = (tf.constant([3.0, 0.0, 0.0]), tf.constant([0.0, 4.0]))  # global norm 5
    _, stepped = clipped.next(clipped.initialize(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), weights)), weights, gradients)
    np.testing.assert_allclose(np.concatenate([s.numpy() for s in stepped]),
                               [-0.3, 0, 0, 0, -0.4], rtol=1e-6)


def test_update_clipping_bounds_what_a_round_moves_the_model():
    parts, weights, outputs = _train(["client.update_clip_norm=0.001",
                                      "client.gradient_clip_norm=1.0"], rounds=1)
    start = parts.algorithm.process.get_model_weights(parts.initial_state)
    moved = np.sqrt(sum(float(np.sum((a - b) ** 2))
                        for a, b in zip(weights.trainable, start.trainable, strict=True)))
    assert 0 < moved <= 0.001 * (1 + 1e-5)  # a weighted mean of updates of norm <= 0.001
    clipping = outputs[0].metrics["aggregator"]
    assert "clipped_count" in str(clipping)


def test_centralized_trains_on_every_pooled_example_and_sends_nothing():
    from federated_research.loop import Evaluations, RunState, run_rounds

    parts = build_run_parts(compose_config([*TINY, "algorithm=centralized", "rounds=1"]))
    logged = []

    class Collect:
        def log_metrics(self, metrics, step):
            logged.append((step, dict(metrics)))

    run = run_rounds(parts, RunState(parts.initial_state),
                     Evaluations(lambda w: {"eval/accuracy": 0.0}), Collect())
    (step, metrics), = logged
    pooled = sum(1 for _ in parts.data.train.create_tf_dataset_from_all_clients())
    assert step == 0 and metrics["train/num_examples"] == pooled == 4000
    assert metrics["comm/broadcasted_bits"] == metrics["comm/aggregated_bits"] == 0
    start = parts.algorithm.process.get_model_weights(parts.initial_state)
    assert _max_diff(run.state, start) > 1e-3


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm=centralized", "aggregator=drive"], "algorithm=centralized: central training"),
    (["algorithm=fedsgd", "client.gradient_clip_norm=1"], "client.gradient_clip_norm: algorithm"),
    (["algorithm=fedprox", "algorithm.mu=-1"], "algorithm.mu=-1.0: the proximal strength"),
    (["model=mlp", "model.hidden_units=[200,0]"], "model.hidden_units=[200, 0]: every layer"),
])
def test_bad_algorithm_settings_are_one_line(overrides, message):
    with pytest.raises(Exception) as err:  # noqa: PT011 - hydra wraps what builders raise
        build_run_parts(compose_config([*TINY, *overrides]))
    from federated_research.errors import config_error_in

    error = config_error_in(err.value)
    assert isinstance(error, ConfigError) and str(error).startswith(message)
    assert "\n" not in str(error)


def test_federated_evaluation_pools_and_spreads_per_client_scores():
    from federated_research.fed_evaluation import FederatedEvaluator

    parts = build_run_parts(compose_config(TINY))
    evaluator = FederatedEvaluator(parts.model, parts.data.test_clients, clients=5,
                                   batch_size=7, seed=0)
    start = parts.algorithm.process.get_model_weights(parts.initial_state)
    kernel = np.random.default_rng(0).normal(0, 0.05, start.trainable[0].shape).astype(np.float32)
    weights = tff.learning.models.ModelWeights([kernel, start.trainable[1]], [])
    metrics = evaluator(weights, round_num=4)
    # The pooled score equals a central evaluation on the union of the sampled clients.
    sampled = sample_clients(list(parts.data.test_clients.client_ids), 5, 0, 4,
                             stream=Stream.FED_EVAL)
    union = parts.data.test_clients.create_tf_dataset_for_client(sampled[0])
    for cid in sampled[1:]:
        union = union.concatenate(parts.data.test_clients.create_tf_dataset_for_client(cid))
    keras = parts.model.compiled_keras()
    weights.assign_weights_to(keras)
    central = keras.evaluate(parts.model.task.eval_batches(union, 7), verbose=0,
                             return_dict=True)
    assert metrics["fed_eval/accuracy"] == pytest.approx(central["accuracy"], abs=1e-6)
    assert metrics["fed_eval/loss"] == pytest.approx(central["loss"], rel=1e-5)
    assert metrics["fed_eval/num_examples"] == sum(1 for _ in union)
    assert metrics["fed_eval/clients"] == 5
    spread = [metrics[f"fed_eval/client_accuracy_{q}"] for q in
              ("min", "p10", "median", "p90", "max")]
    assert spread == sorted(spread) and spread[0] < spread[-1]
    assert metrics["fed_eval/broadcasted_bits"] == 5 * 7_850 * 32  # the float32 model
    assert 0 < metrics["fed_eval/aggregated_bits"] < 5 * 32 * 32  # a few metric scalars
    with pytest.raises(ConfigError, match="fed_eval.clients=9: the dataset has only 8"):
        FederatedEvaluator(parts.model, parts.data.test_clients, 9, 7, 0)


def test_centralized_text_is_not_capped_per_client(tmp_path):
    """`dataset.max_sequences` caps what each client trains on; pooled, nothing is capped."""
    from federated_research.loop import Evaluations, RunState, run_rounds
    from tests.conftest import write_shakespeare_cache

    write_shakespeare_cache(tmp_path)
    parts = build_run_parts(compose_config([
        "dataset=shakespeare", f"dataset.cache_dir={tmp_path}", "dataset.seq_length=5",
        "dataset.max_sequences=1", "model=char_rnn_small", "algorithm=centralized",
        "clients_per_round=1", "rounds=1"]))
    logged = []

    class Collect:
        def log_metrics(self, metrics, step):
            logged.append(dict(metrics))

    run_rounds(parts, RunState(parts.initial_state), Evaluations(lambda w: {}), Collect())
    capped = parts.data.task.client_batches(
        parts.data.train.create_tf_dataset_from_all_clients(), 1, 8, 10, seed=0)
    assert sum(len(x) for x, _ in capped) == 1
    assert logged[0]["train/num_examples"] > 20  # every piece of every role's text


def test_centralized_keeps_what_training_updates_in_non_trainable_weights(tmp_path):
    """A user's model with batch normalisation: its moving statistics train centrally."""
    layers = tf.keras.layers
    tf.keras.Sequential([layers.InputLayer(input_shape=(28, 28, 1)), layers.Flatten(),
                         layers.BatchNormalization(), layers.Dense(10, activation="softmax")]
                        ).save(tmp_path / "bn.keras")
    from federated_research.loop import Evaluations, RunState, run_rounds

    parts = build_run_parts(compose_config([*TINY, "model=keras_file", "rounds=1",
                                            f"model.path={tmp_path / 'bn.keras'}",
                                            "algorithm=centralized"]))
    weights = run_rounds(parts, RunState(parts.initial_state), Evaluations(lambda w: {}),
                         _Discard()).state
    start = parts.algorithm.process.get_model_weights(parts.initial_state)
    assert len(start.non_trainable) == 2  # moving mean and variance
    assert all(float(np.max(np.abs(a - b))) > 1e-3
               for a, b in zip(weights.non_trainable, start.non_trainable, strict=True))
