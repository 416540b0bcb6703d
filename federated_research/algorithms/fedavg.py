"""Federated Averaging (McMahan et al. 2017) through TFF's own builder."""

from __future__ import annotations

import tensorflow_federated as tff

from federated_research.aggregators.error_feedback import ClientStepFactory
from federated_research.algorithms import CLIENT_LOOP, FederatedAlgorithm, tff_algorithm
from federated_research.algorithms.custom_fedavg import build_custom_fedavg
from federated_research.distributors import Distributor
from federated_research.models import ModelSpec


def build_fedavg(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                 server_optimizer: tff.learning.optimizers.Optimizer,
                 aggregator: tff.aggregators.WeightedAggregationFactory,
                 distributor: Distributor | None = None) -> FederatedAlgorithm:
    """`tff.learning.algorithms.build_weighted_fed_avg`, clients weighted by example count.

    TFF's builder keeps nothing per client; with an uplink whose clients keep state
    (`aggregator.error_feedback`, PowerSGD's residuals), the same FedAvg is built on the
    Federated Core
    (custom_fedavg.py: the same numbers as TFF's builder, bit for bit, as long as every
    update is finite; it does not zero a client's non-finite update as TFF's does).
    """
    if isinstance(aggregator, ClientStepFactory) and aggregator.keeps_client_state:
        return build_custom_fedavg(model, client_optimizer, server_optimizer, aggregator,
                                   distributor)
    return tff_algorithm(lambda distribution: tff.learning.algorithms.build_weighted_fed_avg(
        model.tff_model_fn, client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer, model_distributor=distribution,
        model_aggregator=aggregator, loop_implementation=CLIENT_LOOP), model, aggregator,
        distributor)
