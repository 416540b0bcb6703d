"""`quantize`: k-bit uniform quantisation with unbiased stochastic rounding, k = 1..16.

TFF's `compression_aggregator` generalised (Alistarh et al. 2017's QSGD family in its
min/max form): each tensor is mapped onto 2**k - 1 equal steps between its min and
max, every value rounded up or down at random with the probabilities that make the
rounding unbiased (E[decode(encode(x))] = x). Sent per tensor: the codes, tightly
bit-packed, and the float32 min and max:

    bits = 32 * ceil(d * k / 32) + 64
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.lazy import tf
from federated_research.options import require


def quantize_rows(z: tf.Tensor, bits: int, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Each row of float32 [r, n] on its own [min, max] grid; codes packed in one stream."""
    levels = float(2**bits - 1)
    low = tf.reduce_min(z, axis=1, keepdims=True)
    high = tf.reduce_max(z, axis=1, keepdims=True)
    scaled = tf.math.divide_no_nan(z - low, high - low) * levels
    noise = tf.random.stateless_uniform(tf.shape(z), seed=seed)
    codes = tf.clip_by_value(tf.floor(scaled + noise), 0.0, levels)
    return collections.OrderedDict(
        codes=pack(tf.reshape(tf.cast(codes, tf.int32), [-1]), bits),
        bounds=tf.concat([low, high], axis=1))


def dequantize_rows(message: dict[str, tf.Tensor], bits: int, rows: int, n: int) -> tf.Tensor:
    """The inverse of `quantize_rows`, up to the rounding: float32 [rows, n]."""
    codes = tf.cast(tf.reshape(unpack(message["codes"], bits, rows * n), [rows, n]), tf.float32)
    low, high = message["bounds"][:, :1], message["bounds"][:, 1:]
    return low + codes * (high - low) / float(2**bits - 1)


class QuantizeCodec(Codec):
    def __init__(self, shape, bits: int) -> None:
        super().__init__(shape)
        self.code_bits = bits

    def encode(self, x, seed):
        return quantize_rows(x[None, :], self.code_bits, seed)

    def decode(self, message, seed):
        return dequantize_rows(message, self.code_bits, 1, self.size)[0]

    def bits(self) -> int:
        return 32 * packed_words(self.size, self.code_bits) + 64


@dataclass
class Quantize(Method):
    bits: int = 8

    unbiased = True

    def check(self) -> None:
        super().check()
        require(1 <= self.bits <= 16, "bits", self.bits, "must be 1 to 16", 8)

    def make_codec(self, shape):
        return QuantizeCodec(shape, self.bits)
