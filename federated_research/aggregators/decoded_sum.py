"""The server's half of a codec aggregation: decode each message and add it up.

Shared by the mean (codec_sum.py) and signSGD's vote (majority_vote.py), which
differ only in what they do with the sum.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff

from federated_research.compression.codec import measured_bits


def sum_parts(codecs, decode, message_type, finish, clip: float | None = None):
    """`federated_aggregate`'s zero, accumulate, merge and report for the sum of the
    decoded messages, `finish`ed (reshaped, or voted); with variable-length codes the
    sum also carries their total length, and report returns (value, bits).

    `clip`: each decoded message is scaled to L2 norm at most `clip` before it is
    added (differential privacy: a codec's error must not raise one client's
    influence on the sum above the clip the noise is calibrated to)."""
    variable = any(c.variable for c in codecs)
    zero = tff.tensorflow.computation(lambda: ([tf.zeros([c.size], tf.float32) for c in codecs],
                                               tf.constant(0, tf.int64)))
    sum_type = zero.type_signature.result

    @tff.tensorflow.computation(sum_type, message_type)
    def accumulate(total, message):
        sums, bits = total
        decoded = decode(message)
        if clip is not None:
            decoded, _ = tf.clip_by_global_norm(decoded, clip)
        return ([t + x for t, x in zip(sums, decoded, strict=True)],
                bits + measured_bits(codecs, message))

    @tff.tensorflow.computation(sum_type, sum_type)
    def merge(a, b):
        return [x + y for x, y in zip(a[0], b[0], strict=True)], a[1] + b[1]

    @tff.tensorflow.computation(sum_type)
    def report(total):
        return (finish(total[0]), total[1]) if variable else finish(total[0])

    return zero(), accumulate, merge, report
