"""`fetchsgd`: FetchSGD (Rothchild et al. 2020): count sketches; momentum and error on the server.

"FetchSGD: Communication-Efficient Federated Learning with Sketching", Algorithm 1.
Each client sends a count sketch (count_sketch.py) of its whole update, all
tensors as one vector, as the paper sketches the whole gradient: r rows of c
float32, hashed from the run seed so that the clients' tables add up. The server
(aggregators/fetchsgd.py) averages the tables weighted by the clients' examples, as
the authors' code does (the paper's S = (1/W) sum_i S_i is the equal-weight case; each
client sends its weight, as for `mean`), and keeps in sketch space

    S_u <- rho S_u + S                       momentum
    S_e <- S_e + S_u                         error accumulation
    Delta = top-k of U(S_e)                  U: every coordinate's median estimate
    S_e <- S_e - S(Delta)                    what was applied leaves the error
           (error_reset: subtract, the paper's), or
    S_e <- 0 in the buckets of Delta's k coordinates (error_reset: zero, the
           authors' code's, the default)
    S_u <- 0 in the buckets of Delta's k coordinates (momentum masking)

and returns the sparse Delta as the aggregate, which the server optimizer applies
(Algorithm 1 scales S_u by the learning rate before accumulating; with plain SGD
at a constant rate, scaling Delta afterwards is the same). Clients are stateless:
S_u and S_e are the aggregation's server state, checkpointed with the rest. This
is the paper's one-round variant (no second round asking clients for the exact
values of the k coordinates). The authors' code (CommEfficient, fed_aggregator.py)
zeroes S_e in Delta's buckets rather than subtracting S(Delta), with a comment that
subtracting made their model diverge. It does here too: on FEMNIST-300 with the CNN,
k = 0.002 d and c = 0.00625 d (about 1 bit a coordinate), `subtract` blew up at round
14 (eval loss 4e10 at round 19, seed 0). Zeroing drains the error of every coordinate
that shares a bucket with an applied one, which bounds it when k is small against the
mass the clients add each round; so `zero` is the default.

    bits = 32 * rows * columns + 32    (one table and its weight a client; no seed)

`columns` and `k` are a fraction of d, the model's number of weights, if below 1,
else a count; the defaults are the authors' code's (5 rows, 500,000 columns and
k = 50,000 for their ResNet9 of about 6.5 M weights); rho = 0.9 is the paper's.
The momentum makes the long-run step up to 1 / (1 - rho) times the mean update, but
only k coordinates move a round: with a small k the server's learning rate must be
larger, not smaller (FEMNIST-300, k = 0.002 d: 3 was the best of 0.1 to 10, see
docs/explanation/compression.md).

Round time (`scripts/bench_aggregators.py mean fetchsgd --rounds 4`, the CNN, 10
clients, 2 cores, idle): 2.80 s against `mean`'s 0.91 s, 3.06x (3.7x on shared cores),
not the 1.15x the other methods aim at. The cost is the sketch itself, paid by every client: hashing
and adding r d = 8.3 M signed values (~210 ms a client, count_sketch.py), then the
server's estimate of all d coordinates (~200 ms with the hashes and the top-k). It
scales with `rows`: one row costs about a fifth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from federated_research.compression.count_sketch import CountSketchCodec
from federated_research.compression.method import Method
from federated_research.errors import ConfigError
from federated_research.options import require

# Method options that do not fit one sketch of the whole update with the server's rule,
# each with why (one line each, from `check`).
_REFUSED = {
    "threshold": "every coordinate is in the one sketch of the whole update",
    "subsample": "every coordinate is in the one sketch of the whole update",
    "zeroing": "FetchSGD's server rule replaces the weighted mean that zeroing wraps",
    "clipping": "FetchSGD's server rule replaces the weighted mean that clipping wraps",
    "error_feedback": "FetchSGD's error accumulation is built in, on the server, in sketch "
                      "space",
}
_DEFAULTS = {"threshold": 0, "subsample": 1.0, "zeroing": False, "clipping": False,
             "error_feedback": "none"}


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def count_or_fraction(value: float, size: int) -> int:
    """`value` of `size` if below 1, else `value` itself; at least 1, at most `size`
    (columns may exceed it: a wider sketch is merely wasteful)."""
    return max(1, round(value * size) if value < 1 else round(value))


@dataclass
class FetchSgd(Method):
    rows: int = 5            # r: independent hashes; an estimate is their median
    columns: float = 0.077   # c: a fraction of d if below 1, else a count
    k: float = 0.0077        # coordinates applied a round: a fraction of d if below 1, else a count
    momentum: float = 0.9    # rho, in sketch space
    error_reset: str = "zero"  # zero Delta's buckets of S_e (authors' code), or subtract S(Delta)

    server_rule: ClassVar[str] = "fetchsgd"  # aggregators/fetchsgd.py

    def check(self) -> None:
        super().check()
        require(self.rows >= 1, "rows", self.rows, "must be at least 1", 5)
        require(self.columns > 0, "columns", self.columns,
                "is a fraction of the model's weights (below 1) or a count", 0.077)
        require(self.k > 0, "k", self.k,
                "is a fraction of the model's weights (below 1) or a count", 0.0077)
        require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)", 0.9)
        require(self.error_reset in ("zero", "subtract"), "error_reset", self.error_reset,
                "is what applying Delta does to the error sketch: zero (the authors' code) "
                "or subtract (the paper)", "zero")
        for key, why in _REFUSED.items():
            if getattr(self, key) != _DEFAULTS[key]:
                raise ConfigError(f"{key}={getattr(self, key)}", why,
                                  f"leave it at {key}={_shown(_DEFAULTS[key])}")

    def codecs(self, shapes):
        """One codec for the whole update: the tensors are sketched as one vector."""
        return [self.make_codec((sum(math.prod(s) for s in shapes),))]

    def make_codec(self, shape):
        d = math.prod(shape)
        return CountSketchCodec(shape, self.rows, count_or_fraction(self.columns, d), self.seed)

    def top(self, size: int) -> int:
        """k for a model of `size` weights."""
        return min(size, count_or_fraction(self.k, size))
