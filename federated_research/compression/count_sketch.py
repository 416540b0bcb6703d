"""A count sketch of a vector (Charikar, Chen & Farach-Colton 2002), hashes shared by all senders.

Row j of an r x c table adds s_j(i) x_i into bucket h_j(i), for every coordinate
i, with h_j uniform over the c buckets and s_j a uniform sign. Row j's estimate
of x_i is s_j(i) T[j, h_j(i)]: over the hashes it is unbiased, with variance
sum over l != i of x_l^2 / c (about ||x||^2 / c). The sketch's estimate is the
median over the r rows, which a few large collisions cannot move (FetchSGD's
unsketch U; Charikar et al.'s heavy-hitter guarantee).

The hashes are drawn from the run seed alone: every client and the server hash
alike, so the sketch is linear across senders, S(a) + S(b) = S(a + b), and a
sum of clients' tables is the sketch of the sum of their vectors. One Philox
draw of r x d 32-bit words gives both: the low 31 bits modulo c the bucket, the
top bit the sign. Nothing but the table is sent (the hashes are never sent):

    bits = 32 * r * c

Cost on CPU (2 cores), d = 1.66 M (the CNN), r = 5, per sketch: ~55 ms to draw
the hashes and ~155 ms to add the r x d signed values into their buckets
(`unsorted_segment_sum`; `bincount` and `scatter_nd` are no faster); estimating
every coordinate (a gather and a median of r values each) ~100 ms. Both scale with
r d. Hashing by arithmetic instead, ((a i + b) mod p) mod c as the authors' CSVec
does, measured slower in TensorFlow (int64 ops: ~105 ms), and so did summing a
gathered permutation. Drawing the hashes once per worker and keeping them between
calls would save about a quarter; TFF's computations are stateless, and a 33 MB
constant in each of them is what that would take.
"""

from __future__ import annotations

import collections

from federated_research.compression.codec import Codec
from federated_research.lazy import tf

_HASH_STREAM = 0x5CE7C4  # the hashes' stateless stream, apart from every codec's seeds
_SORTING_NETWORK_ROWS = 9  # up to this many rows the median is min/max compare-exchanges


class CountSketch:
    """The r x c count sketch of vectors of `size` coordinates, hashed from `seed`."""

    def __init__(self, size: int, rows: int, columns: int, seed: int) -> None:
        self.size, self.rows, self.columns = int(size), int(rows), int(columns)
        self.seed = int(seed) % 2**31

    def hashes(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(where [r, d] int32: row j's bucket of coordinate i as an index of the
        flattened table, j c + h_j(i); signs [r, d] float32 of +-1)."""
        words = tf.random.stateless_uniform(
            [self.rows, self.size], seed=tf.constant([self.seed, _HASH_STREAM], tf.int32),
            minval=None, maxval=None, dtype=tf.int32)
        buckets = tf.math.floormod(tf.bitwise.bitwise_and(words, 0x7FFFFFFF), self.columns)
        rows = tf.range(self.rows, dtype=tf.int32)[:, None] * self.columns
        return buckets + rows, tf.where(words < 0, -1.0, 1.0)

    def sketch(self, x: tf.Tensor, hashes=None) -> tf.Tensor:
        """float32 [d] -> the table [r, c]."""
        where, signs = hashes or self.hashes()
        return self._table(tf.reshape(signs * x[None, :], [-1]), tf.reshape(where, [-1]))

    def sketch_sparse(self, indices: tf.Tensor, values: tf.Tensor, hashes) -> tf.Tensor:
        """The table of the vector that is `values` at `indices` and 0 elsewhere."""
        where, signs = hashes
        where, signs = tf.gather(where, indices, axis=1), tf.gather(signs, indices, axis=1)
        return self._table(tf.reshape(signs * values[None, :], [-1]), tf.reshape(where, [-1]))

    def estimate(self, table: tf.Tensor, hashes=None) -> tf.Tensor:
        """Every coordinate's estimate, the median over rows of s_j(i) T[j, h_j(i)]: [d]."""
        where, signs = hashes or self.hashes()
        return median_of_rows(tf.gather(tf.reshape(table, [-1]), where) * signs)

    def zero_buckets(self, table: tf.Tensor, indices: tf.Tensor, hashes) -> tf.Tensor:
        """The table with the buckets of `indices` (in every row) set to 0."""
        where = tf.reshape(tf.gather(hashes[0], indices, axis=1), [-1, 1])
        flat = tf.reshape(table, [-1])
        flat = tf.tensor_scatter_nd_update(flat, where, tf.zeros(tf.shape(where)[:1], flat.dtype))
        return tf.reshape(flat, [self.rows, self.columns])

    def _table(self, values: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
        flat = tf.math.unsorted_segment_sum(values, where, self.rows * self.columns)
        return tf.reshape(flat, [self.rows, self.columns])


def median_of_rows(values: tf.Tensor) -> tf.Tensor:
    """The median over axis 0 of [r, d] (the mean of the middle two for even r). For few
    rows a sorting network of elementwise min/max (twice as fast as tf.sort on axis 0)."""
    rows = int(values.shape[0])
    if rows > _SORTING_NETWORK_ROWS:
        ordered = tf.sort(values, axis=0)
        return 0.5 * (ordered[(rows - 1) // 2] + ordered[rows // 2])
    ordered = tf.unstack(values)
    for sweep in range(rows):  # odd-even transposition sort: r sweeps sort r values
        for j in range(sweep % 2, rows - 1, 2):
            low = tf.minimum(ordered[j], ordered[j + 1])
            ordered[j + 1] = tf.maximum(ordered[j], ordered[j + 1])
            ordered[j] = low
    return 0.5 * (ordered[(rows - 1) // 2] + ordered[rows // 2])


class CountSketchCodec(Codec):
    """A vector sent as its count sketch; decoded, every coordinate's median estimate."""

    def __init__(self, shape, rows: int, columns: int, seed: int) -> None:
        super().__init__(shape)
        self.sketcher = CountSketch(self.size, rows, columns, seed)

    def encode(self, x, seed):
        del seed  # the hashes are the run's, shared by every sender
        return collections.OrderedDict(table=self.sketcher.sketch(x))

    def decode(self, message, seed):
        del seed
        return self.sketcher.estimate(message["table"])

    def bits(self) -> int:
        return 32 * self.sketcher.rows * self.sketcher.columns
