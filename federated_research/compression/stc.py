"""`stc`: Sparse Ternary Compression (Sattler et al., IEEE TNNLS 2019).

"Robust and Communication-Efficient Federated Learning from Non-IID Data": each
tensor keeps its k = max(1, round(p d)) largest-magnitude coordinates, replaces
them by mu sign(x_i) with mu their mean magnitude (ternary: -mu, 0, +mu), and
sends the positions as Golomb-coded gaps. With p the density, the paper's
Golomb parameter is 2**b, b = 1 + floor(log2(ln(phi - 1) / ln(1 - p))), phi the
golden ratio; a gap g >= 1 is coded as unary((g - 1) >> b) and the b low bits of
g - 1 (Golomb-Rice, varlen.py). STC is biased; the paper accumulates what was not
sent on each client (`error_feedback: ef14`, its default here), which the
client-state store keeps between the rounds a client is sampled in.

    bits = 32 (mu) + 32 * ceil(k / 32) (signs)
           + sum over the k positions [((g - 1) >> b) + 1 + b]     (measured)

The paper's expected position cost, b + 1 / (1 - (1 - p)**(2**b)) bits, is what
the measured length averages to on uniformly spread positions (tests check it).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from federated_research.compression import varlen
from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.topk import TopK, TopKCodec
from federated_research.lazy import tf

GOLDEN = (1 + math.sqrt(5)) / 2


def golomb_bits(density: float) -> int:
    """The paper's b*: the Golomb parameter 2**b* of gaps between positions kept at this density."""
    if density >= 1:
        return 0
    return max(0, 1 + math.floor(math.log2(math.log(GOLDEN - 1) / math.log(1 - density))))


class StcCodec(Codec):
    variable = True

    def __init__(self, shape, fraction: float) -> None:
        super().__init__(shape)
        self.top = TopKCodec(shape, fraction)
        self.k = self.top.k
        self.rice = golomb_bits(self.k / self.size)
        self.capacity = packed_words((self.size >> self.rice) + self.k * (1 + self.rice) + 64, 1)

    def encode(self, x, seed):
        where = tf.sort(self.top._top(tf.abs(x)))
        picked = tf.gather(x, where)
        gaps = where - tf.concat([[-1], where[:-1]], 0)
        code = varlen.write([varlen.rice_parts(gaps - 1, self.rice)], self.capacity)
        return collections.OrderedDict(mu=tf.reduce_mean(tf.abs(picked))[None],
                                       signs=pack(tf.cast(picked < 0, tf.int32), 1),
                                       varlen=code)

    def decode(self, message, seed):
        reader = varlen.Reader(message["varlen"])
        gaps = varlen.read_rice(reader.unary(self.k), self.rice, reader) + 1
        where = tf.cumsum(gaps) - 1
        negative = tf.cast(unpack(message["signs"], 1, self.k), tf.float32)
        values = message["mu"][0] * (1.0 - 2.0 * negative)
        return tf.scatter_nd(where[:, None], values, [self.size])

    def bits(self) -> int:
        """The fixed part; the positions' code is measured."""
        return 32 + 32 * packed_words(self.k, 1)


@dataclass
class Stc(TopK):  # top-k's `fraction` and its check; a ternary message; feedback on
    error_feedback: str = "ef14"  # the paper's residual accumulation

    def make_codec(self, shape):
        return StcCodec(shape, self.fraction)
