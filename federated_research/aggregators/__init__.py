"""Model-update aggregators (tff.aggregators factories) and their bit accounting."""

from __future__ import annotations

import hydra
import tensorflow_federated as tff
from omegaconf import DictConfig


def build_aggregator(cfg: DictConfig) -> tff.aggregators.WeightedAggregationFactory:
    """Call the aggregator group's `_target_` (a TFF factory or factory builder)."""
    factory = hydra.utils.instantiate(cfg)
    if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
        raise TypeError(f"aggregator {cfg._target_} built a {type(factory).__name__}; "
                        "FedAvg needs a tff.aggregators.WeightedAggregationFactory")
    return factory
