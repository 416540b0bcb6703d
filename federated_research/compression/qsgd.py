"""`qsgd`: QSGD (Alistarh et al., NeurIPS 2017), s levels, Elias-coded.

Each bucket v of `bucket_size` coordinates (the paper's bucketing; 0 = the whole
tensor) is sent as its norm ||v||_2 and, per coordinate, a sign and a level l in
{0..s}: with r = s |v_i| / ||v||, l = floor(r) + 1 with probability r - floor(r),
else floor(r), so that ||v|| sign(v_i) l / s is an unbiased estimate of v_i, with
variance at most min(d/s^2, sqrt(d)/s) ||v||^2 (the paper's Lemma 3.1).

`norm: max` scales each bucket by its largest |v_i| instead of ||v||_2: still
unbiased, far less noisy at few levels (every level is used), more non-zeros to
send. It is what the authors ran in their experiments (called QSGDinf in
NUQSGD, by the same group; "max as per paper empirical details" in public ports);
`l2`, the default, is the algorithm the paper analyses.

Few levels leave most coordinates at 0, which the paper's coded form exploits
(its Section 3.2): only the non-zero coordinates are sent, each as the gap to the
previous one, its sign and its level, the gaps and levels Elias-coded
(`coding: elias_delta`, default, or `elias_gamma`; the paper's recursive Elias
code is omega, whose length differs from delta's by O(log log) bits a word). The
message length then depends on the data, and is counted as written (varlen.py):

    bits = 32 * buckets + 32 (the count of non-zeros)
           + sum over non-zeros [len(gap) + 1 + len(level)]     (measured)

`coding: fixed` sends every coordinate instead, its sign and level in
1 + ceil(log2(s + 1)) bits, bit-packed, a length known in advance:

    bits = 32 * buckets + 32 * ceil(d * (1 + ceil(log2(s + 1))) / 32)
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from federated_research.compression import varlen
from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.lazy import tf
from federated_research.options import require

CODINGS = (*varlen.CODES, "fixed")
NORMS = ("l2", "max")


class QsgdCodec(Codec):
    def __init__(self, shape, levels: int, bucket_size: int, coding: str,
                 norm: str = "l2") -> None:
        super().__init__(shape)
        self.levels, self.coding, self.norm = levels, coding, norm
        self.bucket = self.size if bucket_size == 0 else min(bucket_size, self.size)
        self.buckets = math.ceil(self.size / self.bucket)
        self.level_bits = 1 + math.ceil(math.log2(levels + 1))
        self.variable = coding != "fixed"
        if self.variable:
            bound = (varlen.worst_case_bits(coding, self.size, self.size)
                     + self.size * (1 + varlen.max_code_length(coding, levels)))
            self.capacity = packed_words(bound, 1)

    def _quantize(self, x, seed):
        padded = tf.pad(x, [[0, self.buckets * self.bucket - self.size]])
        v = tf.reshape(padded, [self.buckets, self.bucket])
        norms = tf.norm(v, axis=1) if self.norm == "l2" else tf.reduce_max(tf.abs(v), axis=1)
        r = tf.math.divide_no_nan(tf.abs(v), norms[:, None]) * float(self.levels)
        noise = tf.random.stateless_uniform(tf.shape(v), seed=seed)
        level = tf.cast(tf.floor(r + noise), tf.int32)  # floor(r) + 1 w.p. r - floor(r)
        level = tf.minimum(tf.reshape(level, [-1])[:self.size], self.levels)
        return norms, level, tf.cast(x < 0, tf.int32)

    def encode(self, x, seed):
        norms, level, negative = self._quantize(x, seed)
        if not self.variable:
            codes = level * 2 + negative
            return collections.OrderedDict(norms=norms, codes=pack(codes, self.level_bits))
        where = tf.cast(tf.where(level > 0)[:, 0], tf.int32)
        gaps = where - tf.concat([[-1], where[:-1]], 0)
        levels = varlen.elias_parts(self.coding, tf.gather(level, where))
        levels.binary.append((tf.gather(negative, where), tf.ones_like(where)))
        code = varlen.write([varlen.elias_parts(self.coding, gaps), levels], self.capacity)
        return collections.OrderedDict(norms=norms, count=tf.size(where)[None], varlen=code)

    def decode(self, message, seed):
        del seed  # the rounding noise is the sender's alone
        if not self.variable:  # every coordinate: no positions to scatter
            codes = unpack(message["codes"], self.level_bits, self.size)
            norm = tf.reshape(tf.tile(message["norms"][:, None], [1, self.bucket]),
                              [-1])[:self.size]
            return self._values(norm, tf.bitwise.right_shift(codes, 1),
                                tf.bitwise.bitwise_and(codes, 1))
        reader = varlen.Reader(message["varlen"])
        count = message["count"][0]
        gap_unary, level_unary = reader.unary(count), reader.unary(count)
        gaps, level = varlen.read_elias(self.coding, [gap_unary, level_unary], reader)
        negative = reader.binary(tf.ones_like(level))
        where = tf.cumsum(gaps) - 1
        values = self._values(tf.gather(message["norms"], where // self.bucket), level, negative)
        return tf.scatter_nd(where[:, None], values, [self.size])

    def _values(self, norm, level, negative):
        sign = 1.0 - 2.0 * tf.cast(negative, tf.float32)
        return norm * sign * tf.cast(level, tf.float32) / float(self.levels)

    def bits(self) -> int:
        """The fixed part (coding: fixed, all of it); the code's bits are measured."""
        if self.variable:
            return 32 * self.buckets + 32
        return 32 * self.buckets + 32 * packed_words(self.size, self.level_bits)


@dataclass
class Qsgd(Method):
    levels: int = 4          # s: levels of |v_i| / ||v|| above 0
    bucket_size: int = 512   # coordinates sharing one norm (0: the whole tensor)
    coding: str = "elias_delta"  # elias_delta, elias_gamma, or fixed (every coordinate)
    norm: str = "l2"         # a bucket's scale: l2 (Lemma 3.1) or max (the experiments')

    unbiased = True

    def check(self) -> None:
        super().check()
        require(1 <= self.levels <= 2**15, "levels", self.levels, "must be 1 to 32768", 4)
        require(self.bucket_size >= 0, "bucket_size", self.bucket_size,
                "must be 0 (the whole tensor) or a number of coordinates", 512)
        require(self.coding in CODINGS, "coding", self.coding,
                f"must be one of {', '.join(CODINGS)}", "elias_delta")
        require(self.norm in NORMS, "norm", self.norm,
                "is a bucket's scale: l2 (the paper's analysis) or max (its experiments)",
                "l2")

    def make_codec(self, shape):
        return QsgdCodec(shape, self.levels, self.bucket_size, self.coding, self.norm)
