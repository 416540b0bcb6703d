"""`comm/update_mse`: how far the aggregate a compressor delivers is from the true mean.

A simulation-only diagnostic wrapped around the aggregator the run uses: besides
the aggregator's own result, the exact weighted mean of the clients' raw updates
is computed, and the server logs

    update_mse  = ||aggregate - exact mean||^2 / d
    update_nmse = ||aggregate - exact mean||^2 / ||exact mean||^2

(clipping and zeroing count as error too: they also move the aggregate). The raw
mean is traffic no real deployment sends, so it is kept out of every comm/* bit
metric: `diagnostic_process` is exactly that traffic, and the bit accounting
subtracts it (comm_bits.round_comm). Cost: one extra float32 sum per client on
the TFF worker, ~2-3% of a CNN round; `log_update_error=false` turns it off.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff


def error_metrics(estimate, exact, name: str) -> collections.OrderedDict:
    """`<name>_mse` (per coordinate) and `<name>_nmse` of structures of tensors."""
    pairs = list(zip(tf.nest.flatten(estimate), tf.nest.flatten(exact), strict=True))
    squared = tf.add_n([tf.reduce_sum(tf.square(e - x)) for e, x in pairs])
    norm = tf.add_n([tf.reduce_sum(tf.square(x)) for _, x in pairs])
    size = sum(x.shape.num_elements() for _, x in pairs)
    return collections.OrderedDict([(f"{name}_mse", squared / size),
                                    (f"{name}_nmse", tf.math.divide_no_nan(squared, norm))])


class UpdateErrorFactory(tff.aggregators.WeightedAggregationFactory):
    """`inner`, plus its error against the exact weighted mean in the measurements."""

    def __init__(self, inner: tff.aggregators.WeightedAggregationFactory) -> None:
        self.inner = inner

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        inner = self.inner.create(value_type, weight_type)

        error = tff.tensorflow.computation(value_type, value_type)(
            lambda estimate, exact: error_metrics(estimate, exact, "update"))

        @tff.federated_computation(inner.initialize.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS),
                                   tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            output = inner.next(state, value, weight)
            exact = tff.federated_mean(value, weight)
            measurements = tff.federated_zip(collections.OrderedDict(
                inner=output.measurements,
                update_error=tff.federated_map(error, (output.result, exact))))
            return tff.templates.MeasuredProcessOutput(output.state, output.result, measurements)

        return tff.templates.AggregationProcess(inner.initialize, next_fn)

    def diagnostic_process(self, value_type, weight_type) -> tff.templates.MeasuredProcess:
        """Only the traffic this wrapper adds: the raw weighted mean."""

        init_fn = tff.federated_computation(lambda: tff.federated_value((), tff.SERVER))

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS),
                                   tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            return tff.templates.MeasuredProcessOutput(
                state, tff.federated_mean(value, weight), state)

        return tff.templates.MeasuredProcess(init_fn, next_fn)
