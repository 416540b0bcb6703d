"""FedProx (Li et al. 2020) through TFF's own builder: FedAvg whose clients minimise
loss + mu/2 * ||w - w_server||^2, which keeps heterogeneous clients near the server model."""

from __future__ import annotations

import tensorflow_federated as tff

from federated_research.algorithms import FederatedAlgorithm, tff_algorithm
from federated_research.distributors import Distributor
from federated_research.errors import ConfigError
from federated_research.models import ModelSpec


def build_fedprox(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                  server_optimizer: tff.learning.optimizers.Optimizer,
                  aggregator: tff.aggregators.WeightedAggregationFactory,
                  distributor: Distributor | None = None, mu: float = 0.01) -> FederatedAlgorithm:
    """`tff.learning.algorithms.build_weighted_fed_prox` with `proximal_strength=mu`
    (mu = 0 is FedAvg)."""
    if not mu >= 0:  # also catches nan
        raise ConfigError(f"algorithm.mu={mu}", "the proximal strength must be 0 or more",
                          "pass e.g. algorithm.mu=0.01 (0 is FedAvg)")
    return tff_algorithm(lambda distribution: tff.learning.algorithms.build_weighted_fed_prox(
        model.tff_model_fn, proximal_strength=mu, client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer, model_distributor=distribution,
        model_aggregator=aggregator), model, aggregator, distributor)
