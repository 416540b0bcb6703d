"""`powersgd`: PowerSGD's options and its bit formulas (Vogels et al., NeurIPS 2019).

"PowerSGD: Practical Low-Rank Gradient Compression for Distributed Optimization",
Algorithm 1 with the error feedback of Algorithm 2, one power iteration a round, warm
started. A weight tensor is viewed as a matrix M (n x m); for a rank r = min(`rank`, n, m):

    server -> clients   Q (m x r): last round's mean Q (warm start), random at round 0
    client i            Delta_i = update_i + e_i;  P_i = Delta_i Q
    clients -> server   P_i (n x r)              server: P = weighted mean, P_hat = orth(P)
    server -> clients   P_hat (n x r)
    client i            Q_i = Delta_i^T P_hat;  e_i <- Delta_i - P_hat Q_i^T
    clients -> server   Q_i (m x r)              server: Q = weighted mean of the Q_i
    aggregate           P_hat Q^T,  and Q is the next round's warm start

A round is no single message: two uplink messages and two downlink ones, which
`aggregators/powersgd.py` builds as one aggregation process (the factory); this module
holds what the config check reads before TensorFlow is imported, and the formulas.

Which tensors. As the authors' code does, a tensor of one dimension (a bias) is sent
as float32, and a tensor of shape (..., k) is the matrix (n, m) = (k, rest): the
authors' (out, in x kh x kw), which Keras stores transposed. Of those, a matrix is
compressed only where it sends fewer floats: n m / (r (n + m)) > `min_compression_rate`
(1 by default: never more floats than the tensor. The authors' library (powersgd.py,
`min_compression_rate=2` against r (n + m) / 2, as it sends P or Q alternately) is the
same rule for a matrix; the paper's code compresses every matrix,
`min_compression_rate: 0`).

The residual. Client i keeps e_i = Delta_i - P_hat Q_i^T, its own error (the paper's
Algorithm 2, "memorize local errors"); the paper's code (gradient_reducers.py,
RankKReducer) keeps Delta_i - P_hat Q^T, the error against the aggregate. Every step
above is linear in the clients' mean, and the two residuals have the same mean, so with
every client in every round at equal weights the aggregates are the same (the tests
check it); under client sampling only the first is what client i still owes.

    up   = 32 (sum over compressed matrices (n + m) r + sum over raw tensors d) + 32
           (the weight, once, with P_i: the server weights the Q_i by what it heard)
    down = 32 sum over compressed matrices n r            (P_hat)
           + 32 sum over compressed matrices m r          (Q, warm_start: true)
           or 32                                          (the round number from which
                                                           clients draw a fresh Q, warm_start:
                                                           false)

(nothing is added down when no tensor is compressed). The means are weighted by the
clients' examples, FedAvg's rule, where the paper's workers average uniformly: with
equal weights it is the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from federated_research.errors import ConfigError
from federated_research.options import Options, require


@dataclass
class PowerSgd(Options):
    rank: int = 2                   # r; the paper's CIFAR-10 experiments use 2
    error_feedback: bool = True     # clients keep e_i = Delta_i - P_hat Q_i^T (Algorithm 2)
    warm_start: bool = True         # Q from last round (true) or fresh from the seed
    min_compression_rate: float = 1.0  # compress a matrix only if n m / (r (n+m)) exceeds it
    zeroing: bool = False           # refused: no TFF weighted mean to wrap
    clipping: bool = False          # refused, likewise (client.update_clip_norm clips)
    seed: int = 0                   # the run seed: Q at round 0 (and every round, cold)

    def check(self) -> None:
        require(self.rank >= 1, "rank", self.rank, "must be at least 1", 2)
        require(self.min_compression_rate >= 0, "min_compression_rate",
                self.min_compression_rate, "is a ratio of floats: 0 or more", 1.0)
        for key in ("zeroing", "clipping"):
            if getattr(self, key):
                raise ConfigError(f"aggregator.{key}=true", f"PowerSGD's two-message round "
                                  f"replaces the weighted mean that TFF's adaptive {key} "
                                  "wraps", f"drop aggregator.{key}, or clip each update "
                                  "with client.update_clip_norm=<norm>")

    def layout(self, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        """(n, m, r) of a tensor sent compressed, or None if it is sent as float32."""
        if len(shape) < 2:
            return None
        n = int(shape[-1])
        m = math.prod(int(d) for d in shape[:-1])
        r = min(self.rank, n, m)
        if r < 1 or n * m <= self.min_compression_rate * r * (n + m):
            return None
        return n, m, r

    def uplink_bits(self, shapes: list[tuple[int, ...]]) -> int:
        """Exact bits a client sends in a round (both messages and the weight)."""
        floats = 0
        for shape in shapes:
            plan = self.layout(shape)
            floats += math.prod(shape) if plan is None else (plan[0] + plan[1]) * plan[2]
        return 32 * floats + 32

    def downlink_bits(self, shapes: list[tuple[int, ...]]) -> int:
        """Exact bits a client receives in a round beside the model (Q and P_hat)."""
        plans = [p for p in (self.layout(s) for s in shapes) if p is not None]
        if not plans:
            return 0
        p_hat = sum(n * r for n, _, r in plans)
        q = sum(m * r for _, m, r in plans) if self.warm_start else 1
        return 32 * (p_hat + q)
