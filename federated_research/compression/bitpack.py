"""Tight bit packing: n unsigned b-bit integers in exactly ceil(n * b / 32) int32 words.

TFMOT's `BitpackingEncodingStage` (what TFF's `compression_aggregator` uses) fills
only 28 of every 32 bits, so a 1-bit code costs 1.14 bits a coordinate before
anything else is sent. Here every bit of every word carries data; the only waste
is the tail of the last word (< 32 bits a tensor).
"""

from __future__ import annotations

import math

from federated_research.lazy import tf


def packed_words(n: int, bits: int) -> int:
    """Number of int32 words that `pack` returns for n values of `bits` bits."""
    return math.ceil(n * bits / 32)


def pack(values: tf.Tensor, bits: int) -> tf.Tensor:
    """int32 [n] with every value in [0, 2**bits) -> int32 [packed_words(n, bits)]."""
    _check_bits(bits)
    n = int(values.shape[0])
    per_group, words, slots = _layout(bits)
    groups = _pad_reshape(tf.cast(values, tf.int32), per_group)
    if words == 1:  # whole values per word: one broadcast shift
        shifts = tf.constant([offset for _, offset in slots], tf.int32)
        packed = tf.reduce_sum(tf.bitwise.left_shift(groups, shifts[None, :]), axis=1)
        return tf.ensure_shape(packed[:packed_words(n, bits)], [packed_words(n, bits)])
    columns = []
    for k in range(words):
        # Each value lands in its word at its offset, and a value that straddles two
        # words leaves its high bits at the bottom of the next. The fields occupy
        # disjoint bits, so their (wrapping) int32 sum is their bitwise OR.
        parts = [tf.bitwise.left_shift(groups[:, j], offset)
                 for j, (word, offset) in enumerate(slots) if word == k]
        parts += [tf.bitwise.right_shift(groups[:, j], 32 - offset)
                  for j, (word, offset) in enumerate(slots)
                  if word == k - 1 and offset + bits > 32]
        columns.append(tf.add_n(parts))
    packed = tf.reshape(tf.stack(columns, axis=1), [-1])[:packed_words(n, bits)]
    return tf.ensure_shape(packed, [packed_words(n, bits)])


def unpack(words: tf.Tensor, bits: int, n: int) -> tf.Tensor:
    """The inverse of `pack`: int32 [packed_words(n, bits)] -> int32 [n]."""
    _check_bits(bits)
    per_group, per_word_group, slots = _layout(bits)
    groups = _pad_reshape(words, per_word_group)  # the dropped tail words were all zero
    mask = (1 << bits) - 1
    if per_word_group == 1:  # whole values per word: one broadcast shift
        shifts = tf.constant([offset for _, offset in slots], tf.int32)
        fields = tf.bitwise.bitwise_and(tf.bitwise.right_shift(groups, shifts[None, :]), mask)
        return tf.reshape(fields, [-1])[:n]
    values = []
    for word, offset in slots:
        low = tf.bitwise.right_shift(groups[:, word], offset)  # arithmetic: mask below
        if offset + bits > 32:
            low = tf.bitwise.bitwise_and(low, (1 << (32 - offset)) - 1)
            low = tf.bitwise.bitwise_or(low, tf.bitwise.left_shift(groups[:, word + 1],
                                                                   32 - offset))
        values.append(tf.bitwise.bitwise_and(low, mask))
    return tf.reshape(tf.stack(values, axis=1), [-1])[:n]


def _layout(bits: int) -> tuple[int, int, list[tuple[int, int]]]:
    """A group of lcm(bits, 32) bits: its values, its words, each value's (word, offset)."""
    per_group = math.lcm(bits, 32) // bits
    slots = [(j * bits // 32, j * bits % 32) for j in range(per_group)]
    return per_group, per_group * bits // 32, slots


def _pad_reshape(values: tf.Tensor, width: int) -> tf.Tensor:
    n = int(values.shape[0])
    rows = math.ceil(n / width)
    return tf.reshape(tf.pad(values, [[0, rows * width - n]]), [rows, width])


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 31:
        raise ValueError(f"bit width {bits} is outside 1..31")
