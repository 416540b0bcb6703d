"""DP-FTRL: differentially private tree aggregation (Kairouz et al. 2021), TFF's.

Clients clip their updates to `clip` (and may compress them); the server keeps a
binary tree over rounds whose nodes get Gaussian noise of standard deviation
`noise_multiplier x clip`, and releases each round's mean update as the difference
of noisy prefix sums. Use it with the server's plain SGD (its FTRL form). No
sampling amplification is needed or claimed: epsilon comes from how often each
client really took part (accounting.TreeAccountant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from federated_research.options import require
from federated_research.privacy.base import Privacy, PrivacySpec
from federated_research.privacy.dp_fixed import check_delta


@dataclass
class DpTree(Privacy):
    noise_multiplier: float = 1.0  # each tree node's noise std over the clip
    clip: float = 0.1              # L2 norm each client's update is clipped to
    efficient: bool = True         # Honaker's estimator: less noise from the same nodes
    delta: float | None = None     # epsilon's delta; null = 1 / population^1.1
    seed: int = 0

    compresses: ClassVar[bool] = True

    def check(self) -> None:
        require(self.noise_multiplier >= 0, "noise_multiplier", self.noise_multiplier,
                "is the noise's standard deviation over the clip: 0 or more", 1.0)
        require(self.clip > 0, "clip", self.clip, "is an L2 norm: positive", 0.1)
        check_delta(self.delta)

    def factory(self, method, spec: PrivacySpec):
        from federated_research.privacy.aggregation import TreeFactory, UnweightedMean, record_sum

        return UnweightedMean(TreeFactory(self.noise_multiplier, spec.clients_per_round,
                                          self.clip, self.efficient, self.seed,
                                          record_sum(method, self.clip)))

    def accountant(self, spec: PrivacySpec):
        from federated_research.privacy.accounting import TreeAccountant

        return TreeAccountant(self.noise_multiplier, spec, self.delta,
                              self.noise_multiplier * self.clip)
