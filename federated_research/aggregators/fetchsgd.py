"""FetchSGD's server rule (Rothchild et al. 2020, Algorithm 1): momentum and error, sketched.

    clients:  federated_map(encode)             w_i S_i: the count sketch of the whole
                                                update, times the client's weight
    wire:     federated_aggregate(tables)       each w_i S_i and w_i
    server:   S = sum w_i S_i / sum w_i         the weighted mean of the tables
              S_u <- rho S_u + S;  S_e <- S_e + S_u
              Delta = top-k of the median estimates of S_e
              S_e <- 0 in Delta's buckets (or S_e - S(Delta));  S_u <- 0 in them
              the aggregate is Delta, restored to the model's tensors

The mean is weighted by examples, as the authors' code weights it (each worker's
sketch times its batch size, divided by the round's examples) and as `mean` is;
Algorithm 1's plain mean (1/W) sum_i S_i is the case of equal weights, which an
algorithm that weighs clients alike passes. The server adds the tables as they come
(the sketch is linear); it estimates coordinates once a round, from S_e. The state
(S_u, S_e), two r x c float32 tables, is the aggregation's SERVER state, so it lives
in the learning process's state and is checkpointed with it; it never crosses the
network. Options and the bit formula: compression/fetchsgd.py.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions

from federated_research.compression.codec import encode_fn, restore
from federated_research.compression.count_sketch import CountSketch
from federated_research.compression.fetchsgd import FetchSgd
from federated_research.compression.topk import TopKCodec

SketchState = collections.namedtuple("SketchState", ["momentum", "error"])


class FetchSgdFactory(tff.aggregators.WeightedAggregationFactory):
    """Delta of FetchSGD's Algorithm 1 from the clients' count sketches, their mean
    weighted by the clients' weights."""

    def __init__(self, method: FetchSgd) -> None:
        self.method = method

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        specs = type_conversions.type_to_tf_tensor_specs(value_type)
        codecs = self.method.codecs([tuple(s.shape) for s in tf.nest.flatten(specs)])
        sketcher = codecs[0].sketcher
        encode = encode_fn(codecs, self.method.seed)

        @tff.tensorflow.computation(value_type, weight_type)
        def weighted_table(value, weight):
            weight = tf.cast(weight, tf.float32)
            return encode(value)["tensors"][0]["table"] * weight, weight

        parts = _mean_table(sketcher, weighted_table.type_signature.result)
        zeros = tff.tensorflow.computation(lambda: SketchState(
            *[tf.zeros([sketcher.rows, sketcher.columns], tf.float32)] * 2))
        init_fn = tff.federated_computation(lambda: tff.federated_eval(zeros, tff.SERVER))
        server_step = tff.tensorflow.computation(
            zeros.type_signature.result, parts[-1].type_signature.result)(
            server_step_fn(sketcher, self.method.top(sketcher.size), self.method.momentum,
                           self.method.error_reset == "subtract", specs))

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS),
                                   tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            mean = tff.federated_aggregate(
                tff.federated_map(weighted_table, (value, weight)), *parts)
            stepped = tff.federated_map(server_step, (state, mean))
            return tff.templates.MeasuredProcessOutput(
                stepped[0], stepped[1], tff.federated_value((), tff.SERVER))

        return tff.templates.AggregationProcess(init_fn, next_fn)


def _mean_table(sketcher: CountSketch, message_type):
    """`federated_aggregate`'s parts for the weighted mean of the clients' tables: the
    sums of w_i S_i and of w_i."""
    shape = [sketcher.rows, sketcher.columns]
    zero = tff.tensorflow.computation(lambda: (tf.zeros(shape, tf.float32), tf.constant(0.0)))
    sum_type = zero.type_signature.result

    @tff.tensorflow.computation(sum_type, message_type)
    def accumulate(total, message):
        return total[0] + message[0], total[1] + message[1]

    @tff.tensorflow.computation(sum_type, sum_type)
    def merge(a, b):
        return a[0] + b[0], a[1] + b[1]

    report = tff.tensorflow.computation(sum_type)(
        lambda total: tf.math.divide_no_nan(total[0], total[1]))
    return zero(), accumulate, merge, report


def server_step_fn(sketcher: CountSketch, k: int, rho: float, subtract: bool, specs):
    """(state, mean table) -> (new state, Delta in the shapes of `specs`): the server's
    half of Algorithm 1, in TensorFlow."""
    top = TopKCodec((sketcher.size,), k / sketcher.size)  # its fast exact top-k of k

    def server_step(state, table):
        hashes = sketcher.hashes()
        momentum = rho * state.momentum + table
        error = state.error + momentum
        estimate = sketcher.estimate(error, hashes)
        chosen = top._top(tf.abs(estimate))
        values = tf.gather(estimate, chosen)
        if subtract:  # the paper's Algorithm 1
            error = error - sketcher.sketch_sparse(chosen, values, hashes)
        else:  # the authors' code: what shares a bucket with Delta is dropped too
            error = sketcher.zero_buckets(error, chosen, hashes)
        momentum = sketcher.zero_buckets(momentum, chosen, hashes)
        delta = tf.scatter_nd(chosen[:, None], values, [sketcher.size])
        return SketchState(momentum, error), restore([delta], specs)

    return server_step
