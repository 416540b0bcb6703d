"""Every option of every group builds the real TFF/Keras object it names."""

from __future__ import annotations

import importlib

import hydra
import pytest
import tensorflow_federated as tff

from federated_research.aggregators import build_aggregator
from federated_research.algorithms import ClientStatefulProcess
from federated_research.distributors import build_distributor
from federated_research.models import build_model
from tests.conftest import REPO, compose_config, in_shards, options

IMAGES, TEXT = ((28, 28, 1), 10), ((100,), 90)  # (input shape, classes or vocabulary)
PARAMS = {"cnn": (IMAGES, 1_663_370), "linear": (IMAGES, 7_850),
          "mlp": (IMAGES, 199_210),  # McMahan et al.'s 2NN, as the paper counts it
          # 90 x 256 embedding, GRU(1024) with reset_after biases, 1024 x 90 dense + bias
          "char_rnn": (TEXT, 90 * 256 + 3 * (256 * 1024 + 1024 * 1024 + 2 * 1024) + 1024 * 90 + 90),
          "char_rnn_small": (TEXT, 90 * 64 + 3 * (64 * 256 + 256 * 256 + 2 * 256) + 256 * 90 + 90)}


@pytest.mark.parametrize("option", options("model"))
def test_every_model_builds_with_the_published_size(option, tmp_path):
    overrides = [f"model={option}"]
    if option == "keras_file":  # a file saved from another option: the same model back
        saved = build_model(compose_config(["model=cnn"]).model, *IMAGES).keras_fn()
        saved.save(tmp_path / "cnn.keras")
        overrides.append(f"model.path={tmp_path / 'cnn.keras'}")
    (shape, classes), params = PARAMS.get(option, PARAMS["cnn"])
    model = build_model(compose_config(overrides).model, shape, classes)
    assert model.keras_fn().count_params() == params
    assert model.keras_fn() is not model.keras_fn()  # fresh per call, as TFF requires
    assert model.from_logits == option.startswith("char_rnn")  # image models end in softmax


@pytest.mark.parametrize(("option", "data", "problem"), [
    ("char_rnn", IMAGES, "takes sequences of character ids"),
    ("cnn", TEXT, "cannot take the dataset's inputs of shape (100,)"),
    ("linear", ((28, 28, 1), 62), None),  # 62 EMNIST classes: every image model fits
    ("mlp", ((28, 28, 1), 62), None),
    ("cnn", ((28, 28, 1), 62), None),
])
def test_a_model_that_does_not_fit_the_dataset_is_one_line(option, data, problem):
    from federated_research.errors import ConfigError

    cfg = compose_config([f"model={option}"]).model
    if problem is None:
        assert build_model(cfg, *data).keras_fn().output_shape[-1] == 62
        return
    with pytest.raises(ConfigError) as err:
        build_model(cfg, *data)
    assert str(err.value).startswith(f"model={option}: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_a_saved_model_is_checked_against_the_dataset(tmp_path):
    from federated_research.errors import ConfigError

    build_model(compose_config(["model=linear"]).model, *IMAGES).keras_fn().save(
        tmp_path / "m.h5")
    (tmp_path / "bad.keras").write_bytes(b"PK not really a zip")
    cfg = compose_config(["model=keras_file", f"model.path={tmp_path / 'm.h5'}"]).model
    with pytest.raises(ConfigError, match="the model predicts 10 classes, the dataset has 62"):
        build_model(cfg, (28, 28, 1), 62)
    cfg.path = str(tmp_path / "bad.keras")
    with pytest.raises(ConfigError, match="bad.keras is not a Keras model TensorFlow 2.14 can"):
        build_model(cfg, *IMAGES)


@pytest.mark.parametrize("option", options("optimizer"))
def test_every_optimizer_builds_a_tff_optimizer(option):
    cfg = compose_config([f"optimizer@client_optimizer={option}"])
    optimizer = hydra.utils.instantiate(cfg.client_optimizer)
    assert isinstance(optimizer, tff.learning.optimizers.Optimizer)
    assert optimizer.initialize({})["learning_rate"] == pytest.approx(
        cfg.client_optimizer.learning_rate)


def _linear_process(overrides: list[str]):
    """The learning process `overrides` compose, on the linear model."""
    cfg = compose_config([*overrides, "model=linear"])
    return hydra.utils.instantiate(cfg.algorithm, _partial_=True)(
        model=build_model(cfg.model, (28, 28, 1), 10),
        aggregator=build_aggregator(cfg.aggregator),
        distributor=build_distributor(cfg.distributor),
        client_optimizer=hydra.utils.instantiate(cfg.client_optimizer),
        server_optimizer=hydra.utils.instantiate(cfg.server_optimizer))


FEDERATED = [a for a in options("algorithm") if a != "centralized"]


# Methods whose own test file runs FedAvg rounds of the run's own parts (and counts their
# bits by the paper's formula): built once there, not again here.
ROUNDS_RUN_ELSEWHERE = {
    "qsgd": "test_baseline_methods.test_a_run_logs_the_fixed_bits_plus_what_the_codes_took",
    "stc": "test_baseline_methods.test_a_run_logs_the_fixed_bits_plus_what_the_codes_took",
    "powersgd": "test_powersgd.test_a_round_of_the_linear_model_runs_and_counts_the_formula",
    "fetchsgd": "test_fetchsgd.test_rounds_run_with_the_sketches_in_the_server_state",
}


def _one_aggregator_of_each_kind() -> list[str]:
    """An aggregator meets a learning process only through its factory: TFF's mean of a
    plain sum, the mean of our codecs' sum (every rotating, quantising or sparsifying
    method), TFF's robust (compression) factory, error feedback, a server state
    (PowerSGD, FetchSGD), the majority vote. One of each, picked from the factories the
    options really build, so a new kind is picked up by itself; those whose own tests run
    our FedAvg (ROUNDS_RUN_ELSEWHERE) are not built again."""
    kinds = {}
    for name in [a for a in options("aggregator") if a not in ROUNDS_RUN_ELSEWHERE]:
        factory = build_aggregator(compose_config([f"aggregator={name}"]).aggregator)
        inner = getattr(factory, "_value_sum_factory", None)  # tff.aggregators.MeanFactory's
        kinds.setdefault((type(factory), type(inner)), name)
    return sorted(kinds.values())


# TFF's fedavg with every aggregator is built *and run* by
# test_every_aggregator_runs_a_round_of_fedavg below; here ours, with one aggregator of
# each kind (a FedAvg process costs seconds to build).
@pytest.mark.parametrize(("algorithm", "aggregator"), [
    *[("custom_fedavg", a) for a in _one_aggregator_of_each_kind()],
    *[(a, "mean") for a in FEDERATED if a != "custom_fedavg"]])
def test_every_aggregator_builds_a_learning_process(aggregator, algorithm):
    built = _linear_process([f"aggregator={aggregator}", f"algorithm={algorithm}"])
    # a process whose clients keep state (SCAFFOLD's control variates, the residuals of a
    # method whose paper keeps them, e.g. stc) is ours: TFF's LearningProcess takes none
    feedback = compose_config([f"aggregator={aggregator}"]).aggregator.get("error_feedback")
    expected = (ClientStatefulProcess if algorithm == "scaffold" or feedback not in (None, "none")
                else tff.learning.templates.LearningProcess)
    assert isinstance(built.process, expected)
    state = built.process.initialize()  # runs on the real TFF worker
    weights = built.process.get_model_weights(state)
    assert [w.shape for w in weights.trainable] == [(784, 10), (10,)]


@pytest.mark.parametrize("distributor", options("distributor"))
def test_every_distributor_builds_a_learning_process(distributor):
    if distributor == "federated_dropout":  # it needs hidden units; it is bound to the model
        cfg = compose_config(["distributor=federated_dropout", "model=mlp",
                              "model.hidden_units=[8]"])
        model = build_model(cfg.model, (28, 28, 1), 10)
        bound, aggregator = build_distributor(cfg.distributor).bind(
            model, build_aggregator(cfg.aggregator))
        built = hydra.utils.instantiate(cfg.algorithm, _partial_=True)(
            model=model, aggregator=aggregator, distributor=bound,
            client_optimizer=hydra.utils.instantiate(cfg.client_optimizer),
            server_optimizer=hydra.utils.instantiate(cfg.server_optimizer))
        shapes = [(784, 8), (8,), (8, 10), (10,)]
    else:
        built, shapes = _linear_process([f"distributor={distributor}"]), [(784, 10), (10,)]
    state = built.process.initialize()
    assert [w.shape for w in built.process.get_model_weights(state).trainable] == shapes


def test_the_methods_run_elsewhere_are_run_there():
    for aggregator, where in ROUNDS_RUN_ELSEWHERE.items():
        module, test = where.split(".")
        assert aggregator in options("aggregator"), aggregator
        assert callable(getattr(importlib.import_module(f"tests.{module}"), test)), where
        assert f"aggregator={aggregator}" in (REPO / "tests" / f"{module}.py").read_text() or (
            module == f"test_{aggregator}"), where


@pytest.mark.parametrize("aggregator", [a for a in options("aggregator")
                                        if a not in ROUNDS_RUN_ELSEWHERE])
def test_every_aggregator_runs_a_round_of_fedavg(aggregator):
    """A round on the real worker, the run's own parts (TFF's builder, or ours where the
    clients keep state): the model stays finite and the uplink's bits are ordered."""
    import numpy as np

    from federated_research.build import build_run_parts

    parts = build_run_parts(compose_config([f"aggregator={aggregator}", "model=linear",
                                            "clients_per_round=2", "dataset.num_clients=4"]))
    datasets = [parts.data.task.client_batches(parts.data.train.create_tf_dataset_for_client(
        cid), 1, 4, 10, 0) for cid in parts.data.train.client_ids[:2]]
    process = parts.algorithm.process
    kept = [] if parts.algorithm.client_state is None else [  # e.g. stc's residuals
        [process.initial_client_state] * len(datasets)]
    output = process.next(parts.initial_state, datasets, *kept)
    before = process.get_model_weights(parts.initial_state).trainable
    after = process.get_model_weights(output.state).trainable
    assert all(np.all(np.isfinite(w)) for w in after)
    if aggregator != "powersgd":  # runtime=sharded refuses it (its sums depend on each other)
        # The same round cut into 2 shards (1 client each) and merged: the aggregator's
        # own `merge`, which one worker never runs, must give what one call gives.
        sharded = in_shards(process.next, parts.initial_state, datasets, *kept)
        for a, b in zip(process.get_model_weights(sharded.state).trainable, after,
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    up = parts.comm.round_metrics(2)["comm/aggregated_bits"]
    mean_bits = 2 * (sum(w.size for w in after) * 32 + 32)  # float32 weights + the weight
    if aggregator == "mean":
        assert up == mean_bits
    elif aggregator in ("compression", "tff_compression"):
        assert up >= mean_bits  # tensors under its 20,000-element threshold go as they are
    elif aggregator == "sketch":
        assert up == mean_bits  # 10 columns, rank 16: the linear model's kernel goes as it is
    else:
        assert up < mean_bits
