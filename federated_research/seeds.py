"""One run seed, separate random streams for each use of randomness.

Drawing sampling, partitioning, initialisation and shuffling from independent
streams means changing, say, the number of local epochs does not change which
clients are sampled, and a resumed run can re-derive round r's draws.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    PARTITION = 1
    SAMPLING = 2
    INIT = 3
    SHUFFLE = 4
    FED_EVAL = 5
    DROPOUT = 6  # federated dropout's sub-models


def rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """A generator for (seed, stream, *keys), e.g. rng(seed, Stream.SAMPLING, round)."""
    return np.random.default_rng([seed, int(stream), *keys])


def int_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 31-bit integer seed (for TensorFlow ops) from the same derivation."""
    return int(rng(seed, stream, *keys).integers(0, 2**31 - 1))
