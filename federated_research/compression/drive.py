"""`drive`: one bit a coordinate after a random rotation, one scale a block (DRIVE).

Vargaftik et al. (NeurIPS 2021), "DRIVE: One-bit Distributed Mean Estimation".
Each client rotates its update with its own random rotation R (rotation.py), sends
sign(Rx) and one float32 scale S per rotation block, and the server returns
R^T (S sign(Rx)). With S = ||x||^2 / ||Rx||_1 (the paper's unbiased variant, the
default) the estimate is unbiased; with S = ||Rx||_1 / d (`unbiased: false`) its
error is smallest. Independent rotations make the clients' errors independent,
so the mean's error falls as 1/n. The rotation is regenerated on the server from
the client's 32-bit seed:

    bits = 32 * ceil(d' / 32) + 32 * blocks + 32 (seed),  d' = d padded to whole blocks

the blocks being of the power of two B, 64 to `block_size`, that makes this smallest:
about 1.008 bits a coordinate on the CNN. `eden` at bits=1 decodes the same.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.compression.rotated_quantize import check_block_size
from federated_research.compression.rotation import BlockRotation
from federated_research.lazy import tf


class DriveCodec(Codec):
    needs_seed = True

    def __init__(self, shape, block_size: int, unbiased: bool) -> None:
        super().__init__(shape)
        self.rotation = BlockRotation(self.size, block_size, bits=1, scalars=1)
        self.unbiased = unbiased

    def encode(self, x, seed):
        z = self.rotation.forward(x, seed)
        l1 = tf.reduce_sum(tf.abs(z), axis=1)
        if self.unbiased:
            scale = tf.math.divide_no_nan(tf.reduce_sum(tf.square(z), axis=1), l1)
        else:
            scale = l1 / float(self.rotation.block)
        positive = tf.cast(tf.reshape(z, [-1]) >= 0, tf.int32)
        return collections.OrderedDict(signs=pack(positive, 1), scales=scale)

    def decode(self, message, seed):
        rotation = self.rotation
        positive = unpack(message["signs"], 1, rotation.padded)
        signs = tf.reshape(tf.cast(positive, tf.float32) * 2.0 - 1.0, [rotation.blocks, -1])
        return rotation.inverse(signs * message["scales"][:, None], seed)

    def bits(self) -> int:
        return 32 * packed_words(self.rotation.padded, 1) + 32 * self.rotation.blocks


@dataclass
class Drive(Method):
    block_size: int = 4096   # the largest rotation block; smaller ones where that sends less
    unbiased: bool = True    # the paper's unbiased scale; false = the minimum-error scale

    def check(self) -> None:
        super().check()
        check_block_size(self.block_size)

    def make_codec(self, shape):
        return DriveCodec(shape, self.block_size, self.unbiased)
