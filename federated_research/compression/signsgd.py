"""`signsgd`: signSGD with majority vote (Bernstein et al., ICLR 2019).

"signSGD with Majority Vote is Communication Efficient and Fault Tolerant": each
client sends only the sign of each coordinate of its update, one bit, no scale;
the server takes the majority vote, sign(sum of the clients' signs), one vote a
client whatever its number of examples (ties give 0), and the server optimizer
steps with it, so the step's size is the server learning rate's alone: with
`optimizer` SGD at learning rate eta every coordinate moves by eta (a rate near
the clients' typical per-coordinate change, e.g. 1e-3, not FedAvg's 1.0).

    bits = 32 * ceil(d / 32)      (no weight is sent: the vote is one a client)

The server rule is not the mean every other method uses (aggregators/majority_vote.py);
for signs averaged with a scale, and error feedback, see `aggregator=sign`.
"""

from __future__ import annotations

import collections
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

    def check(self) -> None:
        super().check()
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
