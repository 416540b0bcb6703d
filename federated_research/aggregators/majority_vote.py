"""signSGD's server rule (Bernstein et al., ICLR 2019): the majority vote of the clients' signs.

    clients:  federated_map(encode)            the signs, one bit a coordinate
    wire:     federated_aggregate(messages)    no weight: the vote is one a client
    server:   step * sign(sum of decoded signs)   ties (an even split) give 0

A `WeightedAggregationFactory` so that every algorithm takes it, but the weight
never leaves the client: a vote weighted by example counts would be a different
rule (and 32 more bits a client).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.aggregators.decoded_sum import sum_parts
from federated_research.compression.codec import decode_fn, encode_fn, restore
from federated_research.compression.method import Method


class MajorityVoteFactory(tff.aggregators.WeightedAggregationFactory):
    """sign(sum of the clients' decoded messages), for a method with `server_rule =
    "majority_vote"`."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        specs = type_conversions.type_to_tf_tensor_specs(value_type)
        codecs = self.method.codecs([tuple(s.shape) for s in tf.nest.flatten(specs)])
        step = getattr(self.method, "step", 1.0)
        encode = tff.tensorflow.computation(value_type)(encode_fn(codecs, self.method.seed))
        parts = sum_parts(codecs, decode_fn(codecs, self.method.seed),
                          encode.type_signature.result,
                          lambda sums: restore([step * tf.sign(s) for s in sums], specs))
        init_fn = tff.federated_computation(lambda: tff.federated_value((), tff.SERVER))

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS),
                                   tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            del weight  # one vote a client
            vote = tff.federated_aggregate(tff.federated_map(encode, value), *parts)
            return tff.templates.MeasuredProcessOutput(
                state, vote, tff.federated_value((), tff.SERVER))

        return tff.templates.AggregationProcess(init_fn, next_fn)
