"""A compression method as a TFF aggregation factory (the uplink adapter).

    clients:  federated_map(encode)              one message per client
    wire:     federated_aggregate(messages, ...)  the message type is what is counted
    server:   accumulate = sum of decode(message) over clients, report = reshape

so a method's bits are what its encoder really emits (comm_bits.py reads them
off the `federated_aggregate` argument type), with nothing to declare by hand.
A variable-length code (varlen.py) is the exception the types cannot tell: the
server also sums the lengths the clients' codes really took, and reports the
total as the measurement `measured_bits`, which the loop adds to
comm/aggregated_bits. `method_aggregator` wraps the sum in TFF's weighted mean,
and in TFF's adaptive zeroing and clipping when the method's options ask for
them; a method whose server rule is not the mean (signSGD's majority vote,
FetchSGD's sketch-space momentum and top-k) gets its own aggregation.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.aggregators.decoded_sum import sum_parts
from federated_research.aggregators.fetchsgd import FetchSgdFactory
from federated_research.aggregators.majority_vote import MajorityVoteFactory
from federated_research.compression.codec import decode_fn, encode_fn, restore
from federated_research.compression.method import Method


def method_aggregator(method: Method) -> tff.aggregators.WeightedAggregationFactory:
    """The weighted mean of the clients' encoded updates, wrapped as TFF wraps its own."""
    from tensorflow_federated.python.learning.model_update_aggregator import (
        _default_clipping,
        _default_zeroing,
    )

    rule = getattr(method, "server_rule", "mean")
    if rule == "majority_vote":
        return MajorityVoteFactory(method)
    if rule == "fetchsgd":
        return FetchSgdFactory(method)

    factory = tff.aggregators.MeanFactory(CodecSumFactory(method))
    if method.clipping:
        factory = _default_clipping(factory)
    if method.zeroing:
        factory = _default_zeroing(factory)
    return factory


class CodecSumFactory(tff.aggregators.UnweightedAggregationFactory):
    """Sum of client values sent through a method's codecs (one per tensor); with `clip`,
    of the decoded values each clipped to that L2 norm (privacy/aggregation.py)."""

    def __init__(self, method: Method, clip: float | None = None) -> None:
        self.method = method
        self.clip = clip

    def create(self, value_type) -> tff.templates.AggregationProcess:
        specs = type_conversions.type_to_tf_tensor_specs(value_type)
        codecs = self.method.codecs([tuple(s.shape) for s in tf.nest.flatten(specs)])
        encode = tff.tensorflow.computation(value_type)(encode_fn(codecs, self.method.seed))
        parts = sum_parts(codecs, decode_fn(codecs, self.method.seed),
                          encode.type_signature.result, lambda sums: restore(sums, specs),
                          self.clip)
        init_fn = tff.federated_computation(lambda: tff.federated_value((), tff.SERVER))

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS))
        def next_fn(state, value):
            messages = tff.federated_map(encode, value)
            result = tff.federated_aggregate(messages, *parts)
            if any(c.variable for c in codecs):
                return tff.templates.MeasuredProcessOutput(
                    state, result[0], tff.federated_zip(collections.OrderedDict(
                        measured_bits=result[1])))
            return tff.templates.MeasuredProcessOutput(
                state, result, tff.federated_value((), tff.SERVER))

        return tff.templates.AggregationProcess(init_fn, next_fn)
