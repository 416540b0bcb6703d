"""FedSGD (McMahan et al. 2017's baseline) through TFF's own builder."""

from __future__ import annotations

import tensorflow_federated as tff

from federated_research.aggregators.error_feedback import ClientStepFactory
from federated_research.algorithms import CLIENT_LOOP, FederatedAlgorithm, tff_algorithm
from federated_research.clipping import GradientClipping
from federated_research.distributors import Distributor
from federated_research.errors import ConfigError
from federated_research.models import ModelSpec


def build_fedsgd(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                 server_optimizer: tff.learning.optimizers.Optimizer,
                 aggregator: tff.aggregators.WeightedAggregationFactory,
                 distributor: Distributor | None = None) -> FederatedAlgorithm:
    """`tff.learning.algorithms.build_fed_sgd`: each client sends the mean gradient of
    its whole local data (weighted by its examples); the server optimizer takes one step.

    Clients take no local step, so `client_optimizer` is not used: the step size is
    `server_optimizer.learning_rate`, and the uplink aggregator compresses gradients.
    """
    if isinstance(client_optimizer, GradientClipping):
        raise ConfigError("client.gradient_clip_norm", "algorithm=fedsgd takes no local "
                          "step, so there is no local gradient to clip",
                          "use client.update_clip_norm, which clips the gradient a client sends")
    if isinstance(aggregator, ClientStepFactory) and aggregator.keeps_client_state:
        raise ConfigError(aggregator.feedback, "algorithm=fedsgd is "
                          "TFF's builder, whose clients keep no state between rounds",
                          "use algorithm=fedavg (its clients keep the residual), or turn "
                          "aggregator.error_feedback off")
    return tff_algorithm(lambda distribution: tff.learning.algorithms.build_fed_sgd(
        model.tff_model_fn, server_optimizer_fn=server_optimizer,
        model_distributor=distribution, model_aggregator=aggregator,
        loop_implementation=CLIENT_LOOP), model, aggregator,
        distributor)
