"""Randomised Hadamard rotation in blocks: H D x, with D random signs from a seed.

Why not `tff.aggregators.HadamardTransformFactory`: it pads every tensor to the
next power of two (the CNN's 1,605,632-element dense kernel becomes 2,097,152
coordinates, 31% more to send), seeds itself from the clock (runs do not
reproduce), and gives every client the same rotation (so 1-bit methods such as
DRIVE, whose only randomness is the rotation, lose their independent errors).

Here a tensor of d elements is cut into blocks of B = 2**k elements, B chosen
per tensor to waste the fewest padding coordinates (the CNN pads 230 of
1,663,370), and each block is rotated by the normalised Walsh-Hadamard matrix
written as a Kronecker product H_B = H_a (x) H_b, i.e. two small matrix
products, 3.3 ms for the CNN's 1.6M-element kernel against 17 ms for TFF's
butterfly `fast_walsh_hadamard_transform`. The random signs D are drawn once
per tensor, B of them, and applied to every block: each block is still rotated
by a random H D (so every block's estimate keeps its unbiasedness and its
expected error), at the cost of B random numbers instead of d (a full-length
sign vector costs ~4 ms a tensor). H_B is orthonormal and symmetric, so the
inverse is the same product followed by the signs.
"""

from __future__ import annotations

import math

import numpy as np

from federated_research.lazy import tf

MIN_BLOCK = 256


def block_size(d: int, max_block: int) -> int:
    """The power-of-two block (<= max_block) that pads d to the fewest coordinates."""
    top = min(max_block, 1 << max(0, math.ceil(math.log2(d))))
    candidates = [1 << k for k in range(int(math.log2(top)) + 1) if 1 << k >= min(MIN_BLOCK, top)]
    return min(candidates, key=lambda b: (math.ceil(d / b) * b, -b))


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n, dtype=np.float32)


class BlockRotation:
    """The rotation of one tensor: `forward` on a client, `inverse` on the server."""

    def __init__(self, size: int, max_block: int) -> None:
        self.size = size
        self.block = block_size(size, max_block)
        self.blocks = math.ceil(size / self.block)
        self.padded = self.blocks * self.block
        k = int(math.log2(self.block))
        self._a, self._b = 1 << (k // 2), 1 << (k - k // 2)
        self._h_a, self._h_b = _hadamard(self._a), _hadamard(self._b)

    def _signs(self, seed: tf.Tensor) -> tf.Tensor:
        uniform = tf.random.stateless_uniform([1, self.block], seed=seed)
        return tf.where(uniform < 0.5, -1.0, 1.0)

    def _hadamard(self, x: tf.Tensor) -> tf.Tensor:
        # (H_a (x) H_b) vec(X) = vec(H_a X H_b) for each block X of a x b: one GEMM on
        # the right over all blocks' rows, one broadcast batched GEMM on the left.
        x = tf.reshape(tf.reshape(x, [-1, self._b]) @ tf.constant(self._h_b),
                       [self.blocks, self._a, self._b])
        return tf.reshape(tf.matmul(tf.constant(self._h_a)[None], x), [self.blocks, self.block])

    def forward(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """float32 [size] -> rotated float32 [blocks, block]."""
        x = tf.reshape(tf.pad(x, [[0, self.padded - self.size]]), [self.blocks, self.block])
        return self._hadamard(x * self._signs(seed))

    def inverse(self, z: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Rotated float32 [blocks, block] -> float32 [size]."""
        x = self._hadamard(z) * self._signs(seed)
        return tf.reshape(x, [-1])[:self.size]
