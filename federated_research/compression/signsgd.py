"""`signsgd`: signSGD with majority vote (Bernstein et al., ICLR 2019).

"signSGD with Majority Vote is Communication Efficient and Fault Tolerant": each
client sends only the sign of each coordinate of its update, one bit, no scale;
the server takes the majority vote, sign(sum of the clients' signs), one vote a
client whatever its number of examples (ties give 0). The aggregate is `step` times
the vote, and the server optimizer steps with it: with FedAvg's server SGD at 1.0
every coordinate moves by `step` (the paper's eta, in the model's units; near the
clients' typical per-coordinate change, e.g. 1e-3). `step` is the method's, not the
server learning rate, so that a sweep compares it with `mean` at the same server
optimizer (step=1 with a server learning rate of eta is the same run).

    bits = 32 * ceil(d / 32)      (no weight is sent: the vote is one a client)

The server rule is not the mean every other method uses (aggregators/majority_vote.py);
for signs averaged with a scale, and error feedback, see `aggregator=sign`.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import ClassVar

from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.errors import ConfigError
from federated_research.lazy import tf


class SignOnlyCodec(Codec):
    def encode(self, x, seed):
        del seed
        return collections.OrderedDict(signs=pack(tf.cast(x >= 0, tf.int32), 1))

    def decode(self, message, seed):
        del seed
        return tf.cast(unpack(message["signs"], 1, self.size), tf.float32) * 2.0 - 1.0

    def bits(self) -> int:
        return 32 * packed_words(self.size, 1)


@dataclass
class SignSgd(Method):
    server_rule: ClassVar[str] = "majority_vote"
    step: float = 0.003  # each coordinate's move: step * sign(sum of the clients' signs)

    def check(self) -> None:
        super().check()
        if not 0 < self.step < math.inf:
            raise ConfigError(f"step={self.step}", "is how far the vote moves each "
                              "coordinate: more than 0", "pass e.g. step=0.001")
        for key, value in (("error_feedback", self.error_feedback != "none"),
                           ("zeroing", self.zeroing), ("clipping", self.clipping)):
            if value:
                raise ConfigError(f"{key}={str(getattr(self, key)).lower()}",
                                  "signSGD's majority vote replaces the weighted mean that "
                                  f"{key} is built around",
                                  f"drop it, or use aggregator=sign (scaled signs, "
                                  f"averaged) with {key}")

    def make_codec(self, shape):
        return SignOnlyCodec(shape)
