"""Shared-seed random subsampling: any method on a random fraction p of the coordinates.

Every method takes `subsample: p` (aggregator=subsampled is DRIVE at p = 0.5, the
sub-1-bit regime of EDEN, Vargaftik et al. ICML 2022). The client keeps a random
subset of the coordinates, drawn from its seed, and encodes only those with the
inner codec; the server regenerates the subset from the same 32-bit seed (no
index is sent), decodes, and scales by 1/p, so an unbiased inner codec stays
unbiased. Coordinates are drawn in chunks of 32 (sorting d/32 random keys costs
~5 ms on the CNN; sorting d keys costs ~200 ms), each chunk kept with the same
probability, so each coordinate is too:

    bits = inner codec's bits for m = 32 * round(p * ceil(d / 32)) coordinates + 32 (seed)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from federated_research.compression.codec import Codec
from federated_research.lazy import tf

CHUNK = 32


class SubsampledCodec(Codec):
    needs_seed = True

    def __init__(self, shape, fraction: float, make_inner: Callable[[tuple[int, ...]], Codec]):
        super().__init__(shape)
        self.chunk = min(CHUNK, self.size)
        self.chunks = math.ceil(self.size / self.chunk)
        self.kept = max(1, round(fraction * self.chunks))
        self.inner = make_inner((self.kept * self.chunk,))
        self.variable = self.inner.variable  # a variable-length inner code is measured

    def _kept_chunks(self, seed: tf.Tensor) -> tf.Tensor:
        keys = tf.random.stateless_uniform([self.chunks], seed=seed)
        return tf.argsort(keys)[:self.kept]

    def _inner_seed(self, seed: tf.Tensor) -> tf.Tensor:
        return tf.random.experimental.stateless_fold_in(seed, 2)

    def encode(self, x, seed):
        padded = tf.pad(x, [[0, self.chunks * self.chunk - self.size]])
        picked = tf.gather(tf.reshape(padded, [self.chunks, self.chunk]), self._kept_chunks(seed))
        return self.inner.encode(tf.reshape(picked, [-1]), self._inner_seed(seed))

    def decode(self, message, seed):
        values = tf.reshape(self.inner.decode(message, self._inner_seed(seed)),
                            [self.kept, self.chunk])
        full = tf.scatter_nd(self._kept_chunks(seed)[:, None], values,
                             [self.chunks, self.chunk]) * (self.chunks / self.kept)
        return tf.reshape(full, [-1])[:self.size]

    def bits(self) -> int:
        return self.inner.bits()
