"""`sign`: the scaled sign of each tensor, one bit a coordinate (biased).

Karimireddy et al. (ICML 2019), "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes": C(x) = (||x||_1 / d) sign(x), the compressor their error
feedback (EF-SGD, `aggregator.error_feedback=ef14`) was shown to rescue. The scale
makes C(x) the best multiple of sign(x) in L1 terms, not an unbiased estimate, so
without feedback the mean of the clients' messages is biased towards the signs'
average. Sent per tensor: the signs, tightly bit-packed (0 counts as positive), and
the float32 scale:

    bits = 32 * ceil(d / 32) + 32

Signs aggregated by majority vote (signSGD, Bernstein et al. 2019) are a different
server rule, not this one: here the server averages the scaled signs like any method.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.lazy import tf


class SignCodec(Codec):
    def encode(self, x, seed):
        del seed  # deterministic
        positive = tf.cast(x >= 0, tf.int32)
        return collections.OrderedDict(signs=pack(positive, 1),
                                       scale=tf.reduce_mean(tf.abs(x))[None])

    def decode(self, message, seed):
        del seed
        positive = tf.cast(unpack(message["signs"], 1, self.size), tf.float32)
        return (positive * 2.0 - 1.0) * message["scale"][0]

    def bits(self) -> int:
        return 32 * packed_words(self.size, 1) + 32


@dataclass
class Sign(Method):
    unbiased = False

    def make_codec(self, shape):
        return SignCodec(shape)
