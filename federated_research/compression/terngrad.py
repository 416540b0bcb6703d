"""`terngrad`: TernGrad (Wen et al., NeurIPS 2017), ternary updates, one scale a tensor.

Each tensor (the paper's layer-wise scalar sharing) is sent as s = max|x| and,
per coordinate, a trit t_i in {-1, 0, +1}: t_i = sign(x_i) with probability
|x_i| / s, else 0, so that s t is an unbiased estimate of x. The paper clips each
tensor to [-c sigma, c sigma] first (sigma its standard deviation, c = 2.5, its
default: `clip_sigma`), which shrinks s and so the variance at the price of a
small bias on the clipped coordinates; `clip_sigma: 0` turns it off (unbiased).
The trits are bit-packed two bits each (the paper's 2-bit encoding):

    bits = 32 * ceil(2 d / 32) + 32
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.lazy import tf
from federated_research.options import require


class TernGradCodec(Codec):
    def __init__(self, shape, clip_sigma: float) -> None:
        super().__init__(shape)
        self.clip_sigma = clip_sigma

    def encode(self, x, seed):
        if self.clip_sigma > 0:
            bound = self.clip_sigma * tf.math.reduce_std(x)
            x = tf.clip_by_value(x, -bound, bound)
        scale = tf.reduce_max(tf.abs(x))
        keep = tf.random.stateless_uniform(tf.shape(x), seed=seed) < tf.math.divide_no_nan(
            tf.abs(x), scale)
        trits = tf.where(keep, tf.where(x < 0, 2, 1), 0)  # 0, +1 -> 1, -1 -> 2
        return collections.OrderedDict(trits=pack(trits, 2), scale=scale[None])

    def decode(self, message, seed):
        del seed  # the sender's randomness alone
        trits = unpack(message["trits"], 2, self.size)
        # tf.equal, not ==: in the graphs TFF traces (not tf.functions) a Tensor's == is
        # Python identity, always False: every trit decoded as 0
        sign = tf.cast(tf.where(tf.equal(trits, 2), -1, tf.where(tf.equal(trits, 1), 1, 0)),
                       tf.float32)
        return sign * message["scale"][0]

    def bits(self) -> int:
        return 32 * packed_words(self.size, 2) + 32


@dataclass
class TernGrad(Method):
    clip_sigma: float = 2.5   # clip to +-c sigma first (the paper's c); 0 = no clipping

    def check(self) -> None:
        super().check()
        require(self.clip_sigma == 0 or self.clip_sigma >= 1, "clip_sigma", self.clip_sigma,
                "is c of the clipping to +-c sigma: 0 (off) or at least 1", 2.5)

    def is_unbiased(self) -> bool:
        return self.clip_sigma == 0

    def make_codec(self, shape):
        return TernGradCodec(shape, self.clip_sigma)
