"""Every option of every group builds the real TFF/Keras object it names."""

from __future__ import annotations

import hydra
import pytest
import tensorflow_federated as tff

from federated_research.aggregators import build_aggregator
from federated_research.distributors import build_distributor
from federated_research.models import build_model
from tests.conftest import compose_config, options

PARAMS = {"cnn": 1_663_370, "linear": 7_850}


@pytest.mark.parametrize("option", options("model"))
def test_every_model_builds_with_the_published_size(option):
    model = build_model(compose_config([f"model={option}"]).model, (28, 28, 1), 10)
    assert model.keras_fn().count_params() == PARAMS[option]
    assert model.keras_fn() is not model.keras_fn()  # fresh per call, as TFF requires


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


@pytest.mark.parametrize("algorithm", options("algorithm"))
@pytest.mark.parametrize("aggregator", options("aggregator"))
def test_every_aggregator_builds_a_learning_process(aggregator, algorithm):
    built = _linear_process([f"aggregator={aggregator}", f"algorithm={algorithm}"])
    assert isinstance(built.process, tff.learning.templates.LearningProcess)
    state = built.process.initialize()  # runs on the real TFF worker
    weights = built.process.get_model_weights(state)
    assert [w.shape for w in weights.trainable] == [(784, 10), (10,)]


@pytest.mark.parametrize("distributor", options("distributor"))
def test_every_distributor_builds_a_learning_process(distributor):
    built = _linear_process([f"distributor={distributor}"])
    state = built.process.initialize()
    assert [w.shape for w in built.process.get_model_weights(state).trainable] == [
        (784, 10), (10,)]
