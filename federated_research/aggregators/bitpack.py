"""Tight bit packing: n unsigned b-bit integers in exactly ceil(n * b / 32) int32 words.

TFMOT's `BitpackingEncodingStage` (what TFF's `compression_aggregator` uses) fills
only 28 of every 32 bits, so a 1-bit code costs 1.14 bits a coordinate before
anything else is sent. Here every bit of every word carries data; the only waste
is the tail of the last word (< 32 bits a tensor).
"""

from __future__ import annotations

import math

import tensorflow as tf


def packed_words(n: int, bits: int) -> int:
    """Number of int32 words that `pack` returns for n values of `bits` bits."""
    return math.ceil(n * bits / 32)


def pack(values: tf.Tensor, bits: int) -> tf.Tensor:
    """int32 [n] with every value in [0, 2**bits) -> int32 [packed_words(n, bits)]."""
    _check_bits(bits)
    n = int(values.shape[0])
    values = tf.cast(values, tf.int32)
    if 32 % bits == 0:  # whole values per word: shift each into its slot
        per_word = 32 // bits
        fields = _pad_reshape(values, per_word)
        shifts = tf.range(per_word, dtype=tf.int32) * bits
    else:  # values straddle words: lay out the bit stream, then 32 bits per word
        fields = tf.bitwise.bitwise_and(
            tf.bitwise.right_shift(values[:, None], tf.range(bits, dtype=tf.int32)[None, :]), 1)
        fields = _pad_reshape(tf.reshape(fields, [-1]), 32)
        shifts = tf.range(32, dtype=tf.int32)
    # The fields occupy disjoint bits, so their (wrapping) int32 sum is their bitwise OR.
    words = tf.reduce_sum(tf.bitwise.left_shift(fields, shifts[None, :]), axis=1)
    return tf.ensure_shape(words, [packed_words(n, bits)])


def unpack(words: tf.Tensor, bits: int, n: int) -> tf.Tensor:
    """The inverse of `pack`: int32 [packed_words(n, bits)] -> int32 [n]."""
    _check_bits(bits)
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = tf.range(per_word, dtype=tf.int32) * bits
        fields = tf.bitwise.bitwise_and(tf.bitwise.right_shift(words[:, None], shifts[None, :]),
                                        (1 << bits) - 1)
        return tf.reshape(fields, [-1])[:n]
    stream = tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(words[:, None], tf.range(32, dtype=tf.int32)[None, :]), 1)
    stream = tf.reshape(tf.reshape(stream, [-1])[:n * bits], [n, bits])
    return tf.reduce_sum(tf.bitwise.left_shift(stream, tf.range(bits, dtype=tf.int32)[None, :]),
                         axis=1)


def _pad_reshape(values: tf.Tensor, width: int) -> tf.Tensor:
    n = int(values.shape[0])
    rows = math.ceil(n / width)
    return tf.reshape(tf.pad(values, [[0, rows * width - n]]), [rows, width])


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 31:
        raise ValueError(f"bit width {bits} is outside 1..31")
