"""Randomised Hadamard rotation in blocks, two rounds: H D2 H D1 x, D1 and D2 signs from a seed.

Why not `tff.aggregators.HadamardTransformFactory`: it pads every tensor to the
next power of two (the CNN's 1,605,632-element dense kernel becomes 2,097,152
coordinates, 31% more to send), seeds itself from the clock (runs do not
reproduce), and gives every client the same rotation (so 1-bit methods such as
DRIVE, whose only randomness is the rotation, lose their independent errors).

Here a tensor of d elements is cut into blocks of B = 2**k elements and each
block is rotated by the normalised Walsh-Hadamard matrix written as a Kronecker
product H_B = H_a (x) H_b, i.e. two small matrix products (3.3 ms a round for
the CNN's 1.6M-element kernel against 17 ms for TFF's butterfly
`fast_walsh_hadamard_transform`). B is chosen per tensor for the smallest
message, counting what the method sends per block (`block_size`). The random
signs of a round are drawn once per tensor, B of them, and applied to every
block (B random numbers instead of d; a full-length sign vector costs ~4 ms a
tensor). H_B is orthonormal and symmetric, so the inverse is the same products
in reverse order.

Why two rounds. DRIVE's and EDEN's unbiased scales assume the rotated block is
what a uniformly random rotation would give: coordinates that look Gaussian.
One round, H D x, is far from that when one coordinate dominates its block: a
spike becomes a flat +-vector, and the mean of DRIVE's decodings misses x by 23%
of its norm on a lognormal (sigma 2) vector in 256-blocks, by 33% on a spike and
by 32% on the CNN's 10-element output bias early in training, one 16-block
(tests/test_rotation_bias.py). A second round, H D2 H D1 x, turns the flat
vector into a Gaussian-like one and the bias falls to the Monte-Carlo floor. It
costs no bits (the signs come from the seed the message already carries), only
a second pair of matrix products (drive's encode and decode on the CNN: 1.3x).

Why at least 64 coordinates a block. Even two rounds leave a bias in small
blocks: up to 7% of the norm in 16-blocks and 2.6% in 32-blocks, at most 0.4%
in 64-blocks (1- and 2-bit quantisers, spikes and lognormal inputs). A tensor
smaller than MIN_BLOCK is therefore zero-padded into one block of MIN_BLOCK:
unbiased like any other, 96 bits for drive's 10-element bias where float32
costs 320 (and its error is smaller: most of it lands on the dropped padding).
"""

from __future__ import annotations

import math

import numpy as np

from federated_research.lazy import tf

ROUNDS = 2
MIN_BLOCK = 64  # the smallest block two rounds make unbiased (measured, see above)
SIGN_STREAM = 100  # the signs of round r come from fold_in(seed, SIGN_STREAM + r)


def rotated_bits(d: int, block: int, bits: float, scalars: int) -> int:
    """Bits of d coordinates rotated in blocks of `block`: `bits` a padded
    coordinate, tightly packed, plus `scalars` float32 values a block."""
    blocks = math.ceil(d / block)
    return 32 * math.ceil(blocks * block * bits / 32) + 32 * scalars * blocks


def block_size(d: int, max_block: int, bits: float = 1, scalars: int = 1) -> int:
    """The power-of-two block, MIN_BLOCK to max_block, whose message is smallest
    (`rotated_bits`); ties go to the larger block. A tensor of fewer than MIN_BLOCK
    elements is one block of MIN_BLOCK, zero-padded."""
    top = max(MIN_BLOCK, min(max_block, 1 << max(0, math.ceil(math.log2(d)))))
    candidates = [1 << k for k in range(MIN_BLOCK.bit_length() - 1, top.bit_length())]
    return min(candidates, key=lambda b: (rotated_bits(d, b, bits, scalars), -b))


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n, dtype=np.float32)


class BlockRotation:
    """The rotation of one tensor: `forward` on a client, `inverse` on the server.

    `bits` (per padded coordinate) and `scalars` (float32 values per block) are
    what the method sends, so that the block it gets is its cheapest."""

    def __init__(self, size: int, max_block: int, bits: float = 1, scalars: int = 1,
                 rounds: int = ROUNDS) -> None:
        self.size = size
        self.block = block_size(size, max_block, bits, scalars)
        self.blocks = math.ceil(size / self.block)
        self.padded = self.blocks * self.block
        self.rounds = rounds
        k = int(math.log2(self.block))
        self._a, self._b = 1 << (k // 2), 1 << (k - k // 2)
        self._h_a, self._h_b = _hadamard(self._a), _hadamard(self._b)

    def _signs(self, seed: tf.Tensor, round_: int) -> tf.Tensor:
        seed = tf.random.experimental.stateless_fold_in(seed, SIGN_STREAM + round_)
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
        for r in range(self.rounds):
            x = self._hadamard(x * self._signs(seed, r))
        return x

    def inverse(self, z: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Rotated float32 [blocks, block] -> float32 [size]."""
        for r in reversed(range(self.rounds)):
            z = self._hadamard(z) * self._signs(seed, r)
        return tf.reshape(z, [-1])[:self.size]
