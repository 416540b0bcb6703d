"""`rotated_quantize`: randomised Hadamard rotation, then k-bit stochastic quantisation.

Suresh et al. (2017), "Distributed Mean Estimation with Limited Communication":
rotating first spreads a vector's energy evenly over its coordinates, so the
min-max range each quantiser step covers shrinks from the largest coordinate's
size to about sqrt(2 ln d / d) of the norm, and k-bit codes lose far less. Each
rotated block (rotation.py) is quantised on its own [min, max], with stochastic
rounding, so the estimate is unbiased whatever the rotation. The rotation is
regenerated on the server from the client's 32-bit seed, never sent:

    bits = 32 * ceil(d' * k / 32) + 64 * blocks + 32 (seed),  d' = d padded to whole blocks

the blocks being of the power of two B, 64 to `block_size`, that makes this smallest.
"""

from __future__ import annotations

from dataclasses import dataclass

from federated_research.compression.bitpack import packed_words
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.compression.quantize import dequantize_rows, quantize_rows
from federated_research.compression.rotation import MIN_BLOCK, BlockRotation
from federated_research.lazy import tf
from federated_research.options import require


class RotatedQuantizeCodec(Codec):
    needs_seed = True

    def __init__(self, shape, bits: int, block_size: int) -> None:
        super().__init__(shape)
        self.code_bits = bits
        self.rotation = BlockRotation(self.size, block_size, bits=bits, scalars=2)

    def encode(self, x, seed):
        z = self.rotation.forward(x, seed)
        return quantize_rows(z, self.code_bits, tf.random.experimental.stateless_fold_in(seed, 1))

    def decode(self, message, seed):
        z = dequantize_rows(message, self.code_bits, self.rotation.blocks, self.rotation.block)
        return self.rotation.inverse(z, seed)

    def bits(self) -> int:
        return 32 * packed_words(self.rotation.padded, self.code_bits) + 64 * self.rotation.blocks


def check_block_size(block_size: int) -> None:
    require(block_size >= MIN_BLOCK and block_size & (block_size - 1) == 0
            and block_size <= 2**16, "block_size", block_size,
            f"must be a power of two from {MIN_BLOCK} to 65536 (smaller rotation blocks are "
            "biased: compression/rotation.py)", 4096)


@dataclass
class RotatedQuantize(Method):
    bits: int = 2
    block_size: int = 4096   # the largest rotation block; smaller ones where that sends less

    unbiased = True

    def check(self) -> None:
        super().check()
        require(1 <= self.bits <= 16, "bits", self.bits, "must be 1 to 16", 2)
        check_block_size(self.block_size)

    def make_codec(self, shape):
        return RotatedQuantizeCodec(shape, self.bits, self.block_size)
