"""Compressed broadcast (Caldas et al. 2018): the server sends an encoded model.

The server encodes its model once with any compression Method's codecs (one per
tensor), broadcasts the message, and every client decodes it and trains from
what it decoded. The server keeps its exact model and adds the aggregated
update to it, so the downlink error does not accumulate round after round.
The message is the broadcast type, so comm/broadcasted_bits is what the encoder
emits. The server also decodes the message itself (no traffic) to log the
downlink error, `comm/broadcast_mse` and `comm/broadcast_nmse`.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.aggregators.error import error_metrics
from federated_research.compression.codec import decode_fn, encode_fn, restore
from federated_research.compression.method import Method
from federated_research.errors import ConfigError


class CompressedBroadcast:
    def __init__(self, method: Method) -> None:
        self.method = method

    def create(self, weights_type: tff.Type) -> tff.learning.templates.DistributionProcess:
        specs = type_conversions.type_to_tf_tensor_specs(weights_type)
        codecs = self.method.codecs([tuple(s.shape) for s in tf.nest.flatten(specs)])
        if any(c.variable for c in codecs):  # a broadcast's bits are read off its type
            raise ConfigError(f"distributor={type(self.method).__name__.lower()}",
                              "a variable-length code is measured on the uplink only",
                              "use it as aggregator=, or a fixed-length distributor")
        encode = tff.tensorflow.computation(weights_type)(encode_fn(codecs, self.method.seed))
        decode_flat = decode_fn(codecs, self.method.seed)

        decode = tff.tensorflow.computation(encode.type_signature.result)(
            lambda message: restore(decode_flat(message), specs))

        error = tff.tensorflow.computation(weights_type, weights_type)(
            lambda decoded, exact: error_metrics(decoded, exact, "broadcast"))

        init_fn = tff.federated_computation(lambda: tff.federated_value((), tff.SERVER))

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(weights_type, tff.SERVER))
        def next_fn(state, weights):
            message = tff.federated_map(encode, weights)
            received = tff.federated_map(decode, tff.federated_broadcast(message))
            measured = tff.federated_map(error, (tff.federated_map(decode, message), weights))
            return tff.templates.MeasuredProcessOutput(state, received, measured)

        return tff.learning.templates.DistributionProcess(init_fn, next_fn)
