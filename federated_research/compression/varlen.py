"""Variable-length integer codes, written for real and counted as written.

A method whose message length depends on the data (QSGD's Elias-coded levels and
gaps, STC's Golomb-coded positions) puts its code under a `varlen` key of its
message: `words`, an int32 buffer of static size (TFF needs static shapes; its
size is the worst case, never what is counted), and `bits`, the number of bits
the encoder really wrote. The bit accounting (comm_bits.py) counts a `varlen`
entry's `bits`, summed over the round's clients by the aggregation, not the
buffer; everything else in a message is counted off its static type as always.

The codes. Every code word here is a unary part (u zeros, then a one) and at most
two binary parts of w <= 31 bits:

  Elias gamma (n >= 1)   K = floor(log2 n): unary K, then the K low bits of n
                         length 2K + 1
  Elias delta (n >= 1)   N = floor(log2 n), K = floor(log2(N + 1)): unary K, the K low
                         bits of N + 1, the N low bits of n      length 2K + N + 1
  Golomb-Rice (n >= 0,   unary n >> k, then the k low bits of n  length (n >> k) + 1 + k
  parameter 2**k)

Layout. The code words of a sequence are stored *by part*: all the unary parts
first, in order, then all the first binary parts, then the second. Each part is
where a sequential decoder would find it once the parts before it are read, so
the stream holds exactly the bits of the code words written one after the other
(the same length, bit for bit the same information) and is decoded without
ambiguity; but every part is found with a prefix sum instead of a bit-by-bit walk,
so a 1.6 M-coordinate tensor is coded and decoded in vectorised TensorFlow. The
decoder needs the number of code words; a method sends it when it varies.

Bits within the stream run from the least significant bit of word 0 upwards.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from federated_research.lazy import tf

CODES = ("elias_gamma", "elias_delta")


def floor_log2(n: tf.Tensor) -> tf.Tensor:
    """floor(log2 n) of int32 n >= 1, exactly (no float rounding)."""
    n = tf.cast(n, tf.int32)
    result = tf.zeros_like(n)
    for shift in (16, 8, 4, 2, 1):
        big = tf.bitwise.right_shift(n, shift) > 0
        result = tf.where(big, result + shift, result)
        n = tf.where(big, tf.bitwise.right_shift(n, shift), n)
    return result


def code_length(code: str, n: np.ndarray) -> np.ndarray:
    """Length in bits of each code word of n (numpy; what the docstrings' formulas say)."""
    n = np.asarray(n, np.int64)
    big_k = np.floor(np.log2(n)).astype(np.int64)
    if code == "elias_gamma":
        return 2 * big_k + 1
    k = np.floor(np.log2(big_k + 1)).astype(np.int64)
    return 2 * k + big_k + 1


def worst_case_bits(code: str, max_count: int, total: int) -> int:
    """An upper bound on the bits of at most `max_count` Elias code words of positive
    integers summing to at most `total` (e.g. gaps between positions): every code's
    length is at most the concave f(n) = c log2 n + 2 log2(log2 n + 1) + 1 (c = 2 for
    gamma; 1 for delta, plus the middle term), so m words take at most m f(total / m),
    maximised here over m."""
    if max_count <= 0:
        return 64
    m = np.unique(np.concatenate([np.arange(1, min(max_count, 4096) + 1),
                                  np.geomspace(1, max_count, 512).astype(np.int64),
                                  [max_count]]))
    mean = np.maximum(1.0, total / m)
    if code == "elias_gamma":
        per_word = 2 * np.log2(mean) + 1
    else:
        per_word = np.log2(mean) + 2 * np.log2(np.log2(mean) + 1) + 1
    return int(math.ceil(float(np.max(m * per_word)) * 1.01)) + 64


def max_code_length(code: str, largest: int) -> int:
    """The longest code word of an integer in [1, largest] (lengths never fall with n)."""
    return int(code_length(code, np.array([largest]))[0])


class Parts:
    """Code words split into a unary part and binary parts, before layout."""

    def __init__(self, unary: tf.Tensor, binary: list[tuple[tf.Tensor, tf.Tensor]]) -> None:
        self.unary = tf.cast(unary, tf.int32)     # [n] zeros before each word's one
        self.binary = binary                      # [(values [n], widths [n]), ...]


def elias_parts(code: str, n: tf.Tensor) -> Parts:
    """The parts of Elias gamma or delta code words of int32 n >= 1."""
    n = tf.cast(n, tf.int32)
    if code == "elias_gamma":
        big_k = floor_log2(n)
        return Parts(big_k, [(_low_bits(n, big_k), big_k)])
    big_n = floor_log2(n)
    k = floor_log2(big_n + 1)
    return Parts(k, [(_low_bits(big_n + 1, k), k), (_low_bits(n, big_n), big_n)])


def rice_parts(n: tf.Tensor, k: int) -> Parts:
    """The parts of Golomb-Rice code words, parameter 2**k, of int32 n >= 0."""
    n = tf.cast(n, tf.int32)
    width = tf.fill(tf.shape(n), k)
    return Parts(tf.bitwise.right_shift(n, k), [(_low_bits(n, width), width)])


def _low_bits(n: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    return tf.bitwise.bitwise_and(n, tf.bitwise.left_shift(1, width) - 1)


def write(parts_list: list[Parts], capacity_words: int) -> dict[str, tf.Tensor]:
    """Lay out code words (one or more sequences, one after another) in a buffer.

    Returns the `varlen` entry of a message: int32 `words` [capacity_words], and
    int32 `bits`, the length of what was written."""
    positions, values, widths = [], [], []
    start = tf.constant(0, tf.int64)
    for parts in parts_list:
        ones = start + tf.cumsum(tf.cast(parts.unary, tf.int64) + 1) - 1
        positions.append(ones)
        values.append(tf.ones_like(parts.unary))
        widths.append(tf.ones_like(parts.unary))
        start = _end(ones, start)
    for parts in parts_list:
        for value, width in parts.binary:
            width = tf.cast(width, tf.int64)
            offsets = start + tf.cumsum(width, exclusive=True)
            positions.append(offsets)
            values.append(value)
            widths.append(tf.cast(width, tf.int32))
            start = start + tf.reduce_sum(width)
    words = _scatter_fields(tf.concat(positions, 0), tf.concat(values, 0), capacity_words)
    return collections.OrderedDict(words=words, bits=tf.cast(start, tf.int32))


def _end(ones: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
    return tf.cond(tf.size(ones) > 0, lambda: ones[-1] + 1, lambda: start)


def _scatter_fields(offsets: tf.Tensor, values: tf.Tensor, capacity_words: int) -> tf.Tensor:
    """Fields of <= 31 bits at bit offsets, into int32 words (fields never overlap, so a
    sum of their shifted values is their bitwise OR)."""
    value = tf.cast(values, tf.int64)
    word = offsets // 32
    shift = offsets % 32
    low = tf.bitwise.bitwise_and(tf.bitwise.left_shift(value, shift), 0xFFFFFFFF)
    high = tf.bitwise.right_shift(value, 32 - shift)  # bits that spill into the next word
    segments = tf.concat([word, word + 1], 0)
    total = tf.math.unsorted_segment_sum(tf.concat([low, high], 0), segments,
                                         capacity_words + 1)[:capacity_words]
    return tf.bitcast(tf.cast(total, tf.uint32), tf.int32)


def _read_fields(words: tf.Tensor, offsets: tf.Tensor, widths: tf.Tensor) -> tf.Tensor:
    """The fields of `widths` bits (<= 31) at bit `offsets`, as int32."""
    unsigned = tf.cast(tf.bitcast(words, tf.uint32), tf.int64)
    unsigned = tf.concat([unsigned, tf.zeros([1], tf.int64)], 0)
    word = offsets // 32
    joined = tf.bitwise.bitwise_or(tf.gather(unsigned, word),
                                   tf.bitwise.left_shift(tf.gather(unsigned, word + 1), 32))
    mask = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.cast(widths, tf.int64)) - 1
    return tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(joined, offsets % 32), mask),
                   tf.int32)


class Reader:
    """Reads back what `write` laid out: the unary parts of every sequence first."""

    def __init__(self, varlen: dict[str, tf.Tensor]) -> None:
        self.words = varlen["words"]
        self.position = tf.constant(0, tf.int64)

    def unary(self, count: tf.Tensor) -> tf.Tensor:
        """The unary parts of the next `count` code words: int32 [count]."""
        count = tf.cast(count, tf.int64)
        first = self.position // 32
        words = tf.cast(tf.bitcast(self.words[first:], tf.uint32), tf.int64)
        below = tf.bitwise.left_shift(tf.constant(1, tf.int64), self.position % 32) - 1
        words = tf.concat([tf.bitwise.bitwise_and(words[:1], 0xFFFFFFFF - below), words[1:]], 0)
        ones_per_word = tf.cast(tf.raw_ops.PopulationCount(x=words), tf.int64)
        last = tf.searchsorted(tf.cumsum(ones_per_word), count[None], side="left")[0]
        bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(
            words[:last + 1, None], tf.range(32, dtype=tf.int64)[None, :]), 1)
        ones = tf.where(tf.reshape(bits, [-1]) > 0)[:count, 0] + first * 32
        previous = tf.concat([[self.position - 1], ones[:-1]], 0)
        self.position = tf.cond(count > 0, lambda: ones[-1] + 1, lambda: self.position)
        return tf.cast(ones - previous - 1, tf.int32)

    def binary(self, widths: tf.Tensor) -> tf.Tensor:
        """The next binary parts, one of each width: int32."""
        widths = tf.cast(widths, tf.int64)
        offsets = self.position + tf.cumsum(widths, exclusive=True)
        self.position = self.position + tf.reduce_sum(widths)
        return _read_fields(self.words, offsets, widths)


def read_elias(code: str, unaries: list[tf.Tensor], reader: Reader) -> list[tf.Tensor]:
    """Finish decoding Elias sequences whose unary parts were read, in `write`'s order:
    each sequence's binary parts (one for gamma, two for delta) after the last's."""
    one = tf.constant(1, tf.int32)
    decoded = []
    for unary in unaries:
        if code == "elias_gamma":
            decoded.append(tf.bitwise.left_shift(one, unary) + reader.binary(unary))
        else:
            big_n = tf.bitwise.left_shift(one, unary) + reader.binary(unary) - 1
            decoded.append(tf.bitwise.left_shift(one, big_n) + reader.binary(big_n))
    return decoded


def read_rice(unary: tf.Tensor, k: int, reader: Reader) -> tf.Tensor:
    """Finish decoding Golomb-Rice code words whose unary parts were read."""
    low = reader.binary(tf.fill(tf.shape(unary), k))
    return tf.bitwise.left_shift(unary, k) + low
