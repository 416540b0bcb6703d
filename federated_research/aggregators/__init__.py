"""Model-update aggregators (tff.aggregators factories) and their bit accounting.

An `aggregator=` option's `_target_` is either a TFF factory (or a function that
returns one), built as is, or a compression `Method` (codec.py), type- and
range-checked against its own dataclass and turned into a weighted-mean factory.
"""

from __future__ import annotations

import hydra
import tensorflow_federated as tff
from omegaconf import DictConfig

from federated_research.aggregators.codec import Method, build_method


def is_method(cfg: DictConfig) -> bool:
    """Whether the node builds a compression Method (rather than a TFF factory)."""
    target = hydra.utils.get_object(cfg._target_)
    return isinstance(target, type) and issubclass(target, Method)


def build_aggregator(cfg: DictConfig) -> tff.aggregators.WeightedAggregationFactory:
    """The uplink: a weighted aggregation factory for the model update."""
    if is_method(cfg):
        return build_method(cfg, "aggregator").aggregator()
    factory = hydra.utils.instantiate(cfg)
    if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
        raise TypeError(f"aggregator {cfg._target_} built a {type(factory).__name__}; "
                        "FedAvg needs a tff.aggregators.WeightedAggregationFactory")
    return factory


def with_update_error(factory: tff.aggregators.WeightedAggregationFactory):
    """Wrap a lossy factory so the run logs comm/update_mse; the exact mean stays as is."""
    from federated_research.aggregators.error import UpdateErrorFactory

    inner = getattr(factory, "_value_sum_factory", None)  # MeanFactory's sum of values
    if type(factory) is tff.aggregators.MeanFactory and type(inner) is tff.aggregators.SumFactory:
        return factory
    return UpdateErrorFactory(factory)
