"""`kashin`: Kashin's representation, then k-bit quantisation (Lyubarskii & Vershynin 2010).

"Uncertainty principles and vector quantization": in a tight frame of N > d
vectors (here a randomly signed, subsampled Hadamard frame) every x has a
representation whose coefficients are all at most K ||x|| / sqrt(N), the smallest
dynamic range possible up to the constant; uniform quantisation of so flat a
vector loses little, as Caldas et al. (2018) use it to compress what is broadcast
and uploaded. The representation is computed by TFMOT's research stage
`KashinHadamardEncodingStage` (iterated clipping in the frame, `iterations`,
`eta`, `delta` its parameters), seeded from the client's seed so the server
regenerates the signs. Each tensor is cut into blocks of L = floor(N / `redundancy`)
coordinates, N = 2^j <= `frame_size`, each block represented in N coefficients,
and each block's coefficients quantised on their own [min, max] with unbiased
stochastic rounding, so the estimate is unbiased (the decoding is linear and the
representation exact). The redundancy is paid in bits:

    bits = 32 * ceil(blocks * N * k / 32) + 64 * blocks + 32 (seed),  blocks = ceil(d / L)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tensorflow_model_optimization.python.core.internal.tensor_encoding.stages.research.kashin import (  # noqa: E501
    KashinHadamardEncodingStage,
)

from federated_research.compression.bitpack import packed_words
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.compression.quantize import dequantize_rows, quantize_rows
from federated_research.lazy import tf
from federated_research.options import require


class KashinCodec(Codec):
    needs_seed = True

    def __init__(self, shape, method: Kashin) -> None:
        super().__init__(shape)
        self.code_bits = method.bits
        frame = min(method.frame_size,
                    1 << max(1, math.ceil(math.log2(self.size * method.redundancy))))
        self.length = min(self.size, math.floor(frame / method.redundancy))  # L: a block's
        self.blocks = math.ceil(self.size / self.length)
        # the stage pads L to the next power of two, doubled above 0.85 of it; pass the
        # threshold that makes that exactly `frame`
        self.stage = KashinHadamardEncodingStage(
            num_iters=method.iterations, eta=method.eta, delta=method.delta,
            last_iter_clip=False, pad_extra_level_threshold=self._threshold(frame))
        self.frame = frame

    def _threshold(self, frame: int) -> float:
        upper = 1 << math.ceil(math.log2(self.length))
        return 1.0 if upper == frame else self.length / upper - 1e-9

    def _params(self, seed):
        seed64 = tf.cast(seed, tf.int64)
        return {"eta": self.stage._eta, "delta": self.stage._delta, "seed": seed64}

    def encode(self, x, seed):
        padded = tf.pad(x, [[0, self.blocks * self.length - self.size]])
        rows = tf.reshape(padded, [self.blocks, self.length])
        coefficients = self.stage.encode(rows, self._params(seed))[
            KashinHadamardEncodingStage.ENCODED_VALUES_KEY]
        return quantize_rows(tf.ensure_shape(coefficients, [self.blocks, self.frame]),
                             self.code_bits, tf.random.experimental.stateless_fold_in(seed, 1))

    def decode(self, message, seed):
        coefficients = dequantize_rows(message, self.code_bits, self.blocks, self.frame)
        rows = self.stage.decode(
            {KashinHadamardEncodingStage.ENCODED_VALUES_KEY: coefficients},
            {"seed": tf.cast(seed, tf.int64)},
            shape=tf.constant([self.blocks, self.length]))
        return tf.reshape(rows, [-1])[:self.size]

    def bits(self) -> int:
        return 32 * packed_words(self.blocks * self.frame, self.code_bits) + 64 * self.blocks


@dataclass
class Kashin(Method):
    bits: int = 2
    redundancy: float = 1.25  # lambda = N / L, the frame's overcompleteness (> 1)
    frame_size: int = 4096    # the largest N
    iterations: int = 3       # TFMOT's default
    eta: float = 0.9          # clipping level shrink per iteration (TFMOT's default)
    delta: float = 1.0        # initial clipping level ||x|| / sqrt(delta N)

    unbiased = True

    def check(self) -> None:
        super().check()
        require(1 <= self.bits <= 16, "bits", self.bits, "must be 1 to 16", 2)
        require(1 < self.redundancy <= 4, "redundancy", self.redundancy,
                "is the frame's overcompleteness N / L: in (1, 4]", 1.25)
        require(self.frame_size >= 4 and self.frame_size & (self.frame_size - 1) == 0,
                "frame_size", self.frame_size, "must be a power of two, 4 or more", 4096)
        require(1 <= self.iterations <= 20, "iterations", self.iterations, "must be 1 to 20", 3)
        require(0 < self.eta < 1, "eta", self.eta, "must be in (0, 1)", 0.9)
        require(self.delta > 0, "delta", self.delta, "must be above 0", 1.0)

    def make_codec(self, shape):
        return KashinCodec(shape, self)
