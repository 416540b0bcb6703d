"""Uplink: the model-update aggregator (the `aggregator` group), as a TFF factory.

An `aggregator=` option's `_target_` is either a compression `Method`
(federated_research.compression), typed and range-checked against its own
dataclass and sent through `CodecSumFactory`; or the options of a method whose
round is not one message a client (PowerSGD's two), built by its own factory
(`FACTORIES`); or a TFF factory (or a function that returns one), built as is.
"""

from __future__ import annotations

from dataclasses import replace

import hydra
import tensorflow_federated as tff
from omegaconf import DictConfig

from federated_research.aggregators.codec_sum import method_aggregator
from federated_research.aggregators.error import UpdateErrorFactory
from federated_research.aggregators.error_feedback import ClientStepFactory, ErrorFeedbackFactory
from federated_research.aggregators.powersgd import PowerSgdFactory
from federated_research.compression.method import build_method, check_uplink, is_method
from federated_research.compression.powersgd import PowerSgd
from federated_research.options import build_options

# Options dataclass -> the factory that builds its aggregation process.
FACTORIES = {PowerSgd: PowerSgdFactory}


def build_aggregator(cfg: DictConfig, participation: float = 1.0):
    """The uplink: a weighted aggregation factory for the model update, or, for a method
    with `error_feedback`, an ErrorFeedbackFactory (whose clients keep state).
    `participation` (clients a round over the population) is EF21's p."""
    target = hydra.utils.get_object(cfg._target_)
    if target in FACTORIES:
        return FACTORIES[target](build_options(target, cfg, "aggregator"))
    if is_method(target):
        method = build_method(cfg, "aggregator")
        check_uplink(method)
        if method.error_feedback != "none":
            return ErrorFeedbackFactory(method, method.error_feedback, participation)
        return method_aggregator(method)
    factory = hydra.utils.instantiate(cfg)
    if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
        raise TypeError(f"aggregator {cfg._target_} built a {type(factory).__name__}; "
                        "FedAvg needs a tff.aggregators.WeightedAggregationFactory")
    return factory


def with_update_error(factory: tff.aggregators.WeightedAggregationFactory):
    """Wrap a lossy factory so the run logs comm/update_mse; the exact mean stays as is."""
    if isinstance(factory, ClientStepFactory):
        return replace(factory, log_error=True)
    inner = getattr(factory, "_value_sum_factory", None)  # MeanFactory's sum of values
    if type(factory) is tff.aggregators.MeanFactory and type(inner) is tff.aggregators.SumFactory:
        return factory
    return UpdateErrorFactory(factory)
