"""Federated Averaging (McMahan et al. 2017) through TFF's own builder."""

from __future__ import annotations

import numpy as np
import tensorflow_federated as tff

from federated_research.algorithms import FederatedAlgorithm, aggregation_parts
from federated_research.distributors import Distributor
from federated_research.distributors.plain import PlainBroadcast
from federated_research.models import ModelSpec


def build_fedavg(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                 server_optimizer: tff.learning.optimizers.Optimizer,
                 aggregator: tff.aggregators.WeightedAggregationFactory,
                 distributor: Distributor | None = None) -> FederatedAlgorithm:
    """`tff.learning.algorithms.build_weighted_fed_avg`, clients weighted by example count.

    The distributor (downlink) and the aggregation process (uplink) are built here
    and handed to TFF, so the bit accounting measures exactly the parts the
    process runs.
    """
    weights_type = tff.learning.models.weights_type_from_model(model.tff_model_fn)
    distribution = (distributor or PlainBroadcast()).create(weights_type)
    process = tff.learning.algorithms.build_weighted_fed_avg(
        model.tff_model_fn,
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer,
        model_distributor=distribution,
        model_aggregator=aggregator)
    aggregation, diagnostics = aggregation_parts(aggregator, weights_type.trainable,
                                                 tff.TensorType(np.float32))
    return FederatedAlgorithm(process=process, distributor=distribution,
                              aggregation=aggregation, diagnostics=diagnostics)
