"""distributor=federated_dropout (Caldas et al. 2018): a client trains exactly the
sub-model, the server maps its update back, the bits are the sub-model's, and what
it cannot cut is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from federated_research.algorithms.fedavg import build_fedavg
from federated_research.build import build_run_parts
from federated_research.comm_bits import comm_cost
from federated_research.config import validate
from federated_research.data.task import ImageClassification
from federated_research.distributors import build_distributor
from federated_research.distributors.federated_dropout import FederatedDropout, plan_sub_models
from federated_research.distributors.plain import PlainBroadcast
from federated_research.errors import ConfigError, exit_for
from federated_research.models import ModelSpec
from tests.conftest import compose_config

INPUT = (8, 8, 1)
CLASSES = 3
RATE = 0.25
LR = 0.5


def _cnn(filters=(4, 8), units=12, activation="relu") -> tf.keras.Model:
    """model=cnn's shape, small: conv, pool, conv, pool, flatten, dense, dense."""
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=INPUT),
        layers.Conv2D(filters[0], 3, padding="same", activation=activation),
        layers.MaxPool2D(2),
        layers.Conv2D(filters[1], 3, padding="same", activation=activation),
        layers.MaxPool2D(2),
        layers.Flatten(),
        layers.Dense(units, activation=activation),
        layers.Dense(CLASSES, activation="softmax"),
    ])


def _spec(keras_fn=_cnn) -> ModelSpec:
    task = ImageClassification()
    return ModelSpec(keras_fn=keras_fn, input_spec=task.input_spec(INPUT), task=task)


def _batch(seed: int, n: int = 6):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *INPUT)).astype(np.float32),
            rng.integers(0, CLASSES, n).astype(np.int32))


def _weights(seed: int) -> list[np.ndarray]:
    tf.keras.utils.set_random_seed(seed)
    model = _cnn()
    rng = np.random.default_rng(seed)  # biases too, so that a missed cut would show
    return [w.numpy() + 0.1 * rng.normal(size=w.shape).astype(np.float32)
            for w in model.trainable_weights]


def _sgd_step(model: tf.keras.Model, weights, batch, optimizer=None,
              steps: int = 1) -> list[np.ndarray]:
    model.set_weights(weights)
    optimizer = optimizer or tf.keras.optimizers.SGD(LR)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.keras.losses.SparseCategoricalCrossentropy()(batch[1], model(batch[0]))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights),
                                      model.trainable_weights, strict=True))
    return [w.numpy() for w in model.trainable_weights]


def _sub_model(plan, activation="relu") -> tf.keras.Model:
    return _cnn(filters=plan.kept[:2], units=plan.kept[2], activation=activation)


@pytest.mark.parametrize(("round_num", "activation", "optimizer"), [
    (0, "relu", "sgd"), (7, "relu", "sgd"), (3, "tanh", "adam")])
def test_the_full_model_with_zeros_trains_exactly_as_the_sub_model(round_num, activation,
                                                                    optimizer):
    """Cut, train the small Keras model by hand; put back, train the full one: the same
    numbers on the kept weights and zeros elsewhere (a wrong row order after Flatten, a
    missed bias or a unit kept on one side only would all break it). tanh has slope 1 at
    0, so only the zero weights out of a dropped unit keep its weights in at zero; Adam
    takes three steps from its own state."""
    make = {"sgd": lambda: tf.keras.optimizers.SGD(LR),
            "adam": lambda: tf.keras.optimizers.Adam(0.01)}[optimizer]
    plan = plan_sub_models(_cnn(activation=activation), RATE, seed=11)
    assert plan.units == (4, 8, 12) and plan.kept == (3, 6, 9)
    weights, batch = _weights(1), _batch(2)
    sub = [t.numpy() for t in plan.gather([tf.constant(w) for w in weights], round_num)]
    assert [s.shape for s in sub] == [w.shape for w in _sub_model(plan).trainable_weights]
    padded = [t.numpy() for t in plan.scatter([tf.constant(s) for s in sub], round_num)]
    assert sum(np.count_nonzero(p) for p in padded) == sum(s.size for s in sub)

    trained_sub = _sgd_step(_sub_model(plan, activation), sub, batch, make(), steps=3)
    trained_full = _sgd_step(_cnn(activation=activation), padded, batch, make(), steps=3)
    back = plan.gather([tf.constant(w) for w in trained_full], round_num)
    for got, want in zip(back, trained_sub, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert sum(np.count_nonzero(w) for w in trained_full) == sum(
        np.count_nonzero(w) for w in trained_sub)  # nothing grew outside the sub-model


def test_each_round_draws_its_own_sub_model_from_the_seed():
    plan = plan_sub_models(_cnn(), RATE, seed=11)
    draws = [[u.numpy().tolist() for u in plan.kept_units(r)] for r in range(6)]
    assert draws[2] == [u.numpy().tolist() for u in plan.kept_units(2)]  # stateless
    assert len({str(d) for d in draws}) == 6
    other = plan_sub_models(_cnn(), RATE, seed=12)
    assert [u.numpy().tolist() for u in other.kept_units(0)] != draws[0]


@pytest.fixture(scope="module")
def dropout_fedavg():
    spec = _spec()
    distributor, aggregator = FederatedDropout(RATE, 5, PlainBroadcast()).bind(
        spec, tff.aggregators.MeanFactory())
    algorithm = build_fedavg(spec, tff.learning.optimizers.build_sgdm(LR),
                             tff.learning.optimizers.build_sgdm(1.0), aggregator, distributor)
    return algorithm, distributor.plan


def _dataset(batch) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(batch).batch(len(batch[1]))


def test_a_fedavg_round_trains_the_sub_model_and_leaves_dropped_weights(dropout_fedavg):
    """TFF's FedAvg with the distributor on the worker: two clients, one step each; the
    server's new model is the old one plus the mean of the sub-models' updates, computed
    by hand, put back in place; round 2 cuts another sub-model."""
    algorithm, plan = dropout_fedavg
    process = algorithm.process
    weights = _weights(3)
    state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights(
        trainable=weights, non_trainable=[]))
    batches = [_batch(4), _batch(5)]
    for round_num in (0, 1):
        state = process.next(state, [_dataset(b) for b in batches]).state
        after = [np.asarray(w) for w in process.get_model_weights(state).trainable]
        sub = [t.numpy() for t in plan.gather([tf.constant(w) for w in weights], round_num)]
        updates = [[t - s for t, s in zip(_sgd_step(_sub_model(plan), sub, b), sub,
                                           strict=True)] for b in batches]
        mean = [(a + b) / 2 for a, b in zip(*updates, strict=True)]  # 6 examples each
        expected = [w + d.numpy() for w, d in zip(weights, plan.scatter(
            [tf.constant(m) for m in mean], round_num), strict=True)]
        for got, want in zip(after, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        kept = np.zeros_like(weights[4], dtype=bool)  # the dense kernel: kept rows x units
        rows = plan.gather([tf.reshape(tf.range(w.size), w.shape) for w in weights],
                           round_num)[4].numpy().ravel()
        kept.ravel()[rows] = True
        assert np.array_equal(after[4][~kept], weights[4][~kept])  # dropped: untouched
        assert np.count_nonzero(after[4][kept] != weights[4][kept]) > 0.5 * kept.sum()
        weights = after


def test_the_bits_are_the_sub_models_both_ways(dropout_fedavg):
    algorithm, plan = dropout_fedavg
    sub = sum(int(np.prod(s)) for s in plan.sub_shapes)
    full = sum(int(np.prod(s)) for s in plan.shapes)
    assert sub < 0.7 * full
    comm = algorithm.round_comm()
    assert comm.model.down == 32 * sub + 32 + 32  # the sub-model; each part's round number
    assert comm.model.up == 32 * sub + 32        # the sub-model's update and its weight


def test_a_quantising_codec_sends_the_sub_model():
    """distributor@distributor.codec=rotated_quantize: its bits for the sub-model's shapes."""
    cfg = compose_config(["distributor=federated_dropout",
                          "distributor@distributor.codec=rotated_quantize"]).distributor
    spec = _spec()
    distributor, _ = build_distributor(cfg).bind(spec, tff.aggregators.MeanFactory())
    weights_type = tff.learning.models.weights_type_from_model(spec.tff_model_fn)
    process = distributor.create(weights_type)
    sub_type = tff.types.to_type(tff.learning.models.ModelWeights(
        trainable=[(np.float32, s) for s in distributor.plan.sub_shapes], non_trainable=[]))
    codec = build_distributor(cfg.codec).create(sub_type)
    assert comm_cost(process.next).down == comm_cost(codec.next).down + 32
    assert comm_cost(codec.next).down < 32 * sum(np.prod(s) for s in distributor.plan.sub_shapes)

    @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER),
                               tff.FederatedType(np.int32, tff.CLIENTS))
    def broadcast(model, clients):  # `clients` only says how many there are
        return process.next(process.initialize(), model).result

    model = tff.learning.models.ModelWeights(trainable=_weights(6), non_trainable=[])
    received = [np.asarray(w) for w in broadcast(model, [0])[0].trainable]
    sub = distributor.plan.gather([tf.constant(w) for w in received], 0)
    assert sum(np.count_nonzero(w) for w in received) == sum(
        np.count_nonzero(s) for s in sub)  # zeros outside the sub-model
    exact = distributor.plan.gather([tf.constant(w) for w in model.trainable], 0)
    error = sum(float(tf.reduce_sum((s - e) ** 2)) for s, e in zip(sub, exact, strict=True))
    assert 0 < error < 0.01 * sum(float(tf.reduce_sum(e ** 2)) for e in exact)  # 6 bits


def _functional() -> tf.keras.Model:
    inputs = tf.keras.Input((4,))
    hidden = tf.keras.layers.Dense(6, activation="relu")(inputs)
    return tf.keras.Model(inputs, [tf.keras.layers.Dense(3)(hidden),
                                   tf.keras.layers.Dense(2)(hidden)])


@pytest.mark.parametrize(("model", "says"), [
    (lambda: _cnn(activation="sigmoid"), "activation is not 0 at 0"),
    (lambda: tf.keras.Sequential([
        tf.keras.layers.Embedding(10, 4, input_length=3), tf.keras.layers.GRU(5),
        tf.keras.layers.Dense(CLASSES)]), "no units to drop"),
    (lambda: tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=INPUT),
        tf.keras.layers.Conv2DTranspose(4, 3, activation="relu"), tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(CLASSES)]), "no units to drop"),
    (lambda: tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(8, 8, 4)),
        tf.keras.layers.Conv2D(4, 3, groups=2, activation="relu"), tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(CLASSES)]), "no units to drop"),
    (_functional, "only a Sequential chain"),
])
def test_refuses_a_model_it_would_cut_wrong(model, says):
    with pytest.raises(ConfigError, match=says):
        plan_sub_models(model(), RATE, 0)


TINY = ["dataset.num_clients=8", "clients_per_round=3", "rounds=2"]


@pytest.mark.parametrize(("overrides", "says"), [
    (["model=linear"], "distributor=federated_dropout: the model has no hidden layer"),
    (["model=mlp", "aggregator=topk", "aggregator.error_feedback=ef14"],
     "distributor=federated_dropout: with aggregator.error_feedback=ef14 each client keeps"),
    (["model=mlp", "aggregator=fetchsgd"],
     "distributor=federated_dropout: FetchSGD keeps momentum and error sketches"),
    (["model=mlp", "aggregator=powersgd", "aggregator.error_feedback=false"],
     "distributor=federated_dropout: PowerSGD's warm start reuses last round's Q"),
    (["model=mlp", "algorithm=scaffold"],
     "distributor=federated_dropout: SCAFFOLD's control variates are full-model"),
    (["model=mlp", "distributor.rate=1.0"], "distributor.rate=1.0: must be between 0 and 1"),
    (["model=mlp", "distributor.rate=half"], "distributor.rate=half: wrong type"),
    (["model=mlp", "distributor.codec=quantize"],
     "distributor.codec=quantize: the codec that sends the sub-model is an option of the "
     "distributor group. Fix: pass distributor@distributor.codec=quantize"),
    (["model=mlp", "distributor@distributor.codec=federated_dropout"],
     "distributor.codec=federated_dropout: a sub-model of a sub-model"),
    (["model=mlp", "distributor@distributor.codec=quantize", "distributor.codec.bits=0"],
     "distributor.codec.bits=0: must be 1 to 16"),
])
def test_what_it_cannot_cut_is_refused_in_one_line(overrides, says):
    with pytest.raises(Exception) as caught:  # noqa: PT011 - compose, validate or build
        cfg = compose_config([*TINY, "distributor=federated_dropout", *overrides])
        validate(cfg)
        build_run_parts(cfg)
    line, code = exit_for(caught.value)
    assert code == 2 and "\n" not in line and line.startswith(f"error: {says}"), line


@pytest.mark.parametrize(("overrides", "says"), [
    (["distributor.rate=half"], "distributor.rate=half: wrong type"),
    (["distributor.rate=0"], "distributor.rate=0: must be between 0 and 1"),
    (["+distributor.rates=0.5"], "distributor.rates: FederatedDropoutConfig has no such option"),
    (["distributor@distributor.codec=quantize", "distributor.codec.bits=0"],
     "distributor.codec.bits=0: must be 1 to 16"),
])
def test_building_it_checks_its_options_without_validate(overrides, says):
    """A script that builds the distributor from a config node, with no validate() first,
    gets the same one-line error."""
    cfg = compose_config(["distributor=federated_dropout", *overrides]).distributor
    with pytest.raises(ConfigError) as caught:
        build_distributor(cfg)
    line, code = exit_for(caught.value)
    assert code == 2 and "\n" not in line and line.startswith(f"error: {says}"), line


def test_a_run_with_federated_dropout_learns():
    """The run's own parts (build_run_parts) on the embedded MNIST, model=mlp: eight rounds
    on three clients lower the full model's loss on their data; the bits are the sub-model's."""
    parts = build_run_parts(compose_config([*TINY, "model=mlp", "model.hidden_units=[32]",
                                            "distributor=federated_dropout"]))
    data, process = parts.data, parts.algorithm.process
    clients = [data.train.create_tf_dataset_for_client(c) for c in data.train.client_ids[:3]]
    pooled = data.task.eval_batches(clients[0].concatenate(clients[1]).concatenate(
        clients[2]), 100)
    keras_model = parts.model.compiled_keras()

    def loss(state) -> float:
        keras_model.set_weights(process.get_model_weights(state).trainable)
        return keras_model.evaluate(pooled, verbose=0)[0]

    state = parts.initial_state
    for round_num in range(8):
        state = process.next(state, [data.task.client_batches(c, 1, 20, 10, round_num)
                                     for c in clients]).state
    assert loss(state) < 0.9 * loss(parts.initial_state)  # 2.50 -> 2.15 (plain: 2.15)
    sub = 784 * 24 + 24 + 24 * 10 + 10  # 32 hidden units at rate 0.25: 24 kept
    assert parts.comm.model.up == 32 * sub + 32
