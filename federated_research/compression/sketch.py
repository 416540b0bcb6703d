"""`sketch`: a random-projection sketch of each weight matrix (Konecny et al. 2016).

"Federated Learning: Strategies for Improving Communication Efficiency" proposes
structured updates (low rank: H = A B with A random, fixed by a seed) and sketched
updates. This is the sketch form of their low-rank structure, applied after local
training so that it composes with any algorithm: a weight matrix M (rows x cols,
a kernel's last axis being cols) is sent as Y = M A, with A a cols x r Gaussian
matrix of variance 1/r regenerated from the client's seed, and the server returns
Y A^T. E[A A^T] = I, so the estimate is unbiased; its error grows as cols / r.
Vectors (biases) and matrices with cols <= rank are sent as float32:

    bits = 32 * rows * r + 32 (seed)  per sketched matrix
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from federated_research.compression.codec import Codec, Raw
from federated_research.compression.method import Method
from federated_research.lazy import tf
from federated_research.options import require


class SketchCodec(Codec):
    needs_seed = True

    def __init__(self, shape, rank: int) -> None:
        super().__init__(shape)
        self.cols = self.shape[-1]
        self.rows = self.size // self.cols
        self.rank = rank

    def _projection(self, seed: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_normal([self.cols, self.rank], seed=seed,
                                          stddev=1.0 / self.rank ** 0.5)

    def encode(self, x, seed):
        projected = tf.reshape(x, [self.rows, self.cols]) @ self._projection(seed)
        return collections.OrderedDict(sketch=projected)

    def decode(self, message, seed):
        m = tf.matmul(message["sketch"], self._projection(seed), transpose_b=True)
        return tf.reshape(m, [-1])

    def bits(self) -> int:
        return 32 * self.rows * self.rank


@dataclass
class Sketch(Method):
    rank: int = 16   # columns each matrix is projected onto

    unbiased = True

    def check(self) -> None:
        super().check()
        require(self.rank >= 1, "rank", self.rank, "must be at least 1", 16)

    def make_codec(self, shape):
        if len(shape) < 2 or shape[-1] <= self.rank:
            return Raw(shape)
        return SketchCodec(shape, self.rank)
