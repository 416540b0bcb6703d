"""Federated Averaging (McMahan et al. 2017) through TFF's own builder."""

from __future__ import annotations

import numpy as np
import tensorflow_federated as tff

from federated_research.algorithms import FederatedAlgorithm
from federated_research.models import ModelSpec


def build_fedavg(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                 server_optimizer: tff.learning.optimizers.Optimizer,
                 aggregator: tff.aggregators.WeightedAggregationFactory) -> FederatedAlgorithm:
    """`tff.learning.algorithms.build_weighted_fed_avg`, clients weighted by example count.

    The distributor and the aggregation process are built here and handed to
    TFF (the same ones TFF would build by default), so the bit accounting
    measures exactly the parts the process runs.
    """
    weights_type = tff.learning.models.weights_type_from_model(model.tff_model_fn)
    distributor = tff.learning.templates.build_broadcast_process(weights_type)
    process = tff.learning.algorithms.build_weighted_fed_avg(
        model.tff_model_fn,
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer,
        model_distributor=distributor,
        model_aggregator=aggregator)
    aggregation = aggregator.create(weights_type.trainable, tff.TensorType(np.float32))
    return FederatedAlgorithm(process=process, distributor=distributor, aggregation=aggregation)
