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

from federated_research.privacy.base import ClippedGaussian, PrivacySpec


@dataclass
class DpTree(ClippedGaussian):
    """noise_multiplier: each tree node's noise standard deviation over the clip."""

    efficient: bool = True         # Honaker's estimator: less noise from the same nodes
    seed: int = 0

    def factory(self, method, spec: PrivacySpec):
        from federated_research.privacy.aggregation import TreeFactory, UnweightedMean, record_sum

        return UnweightedMean(TreeFactory(self.noise_multiplier, spec.clients_per_round,
                                          self.clip, self.efficient, self.seed,
                                          record_sum(method, self.clip)))

    def accountant(self, spec: PrivacySpec):
        from federated_research.privacy.accounting import TreeAccountant

        return TreeAccountant(self.noise_multiplier, spec, self.delta,
                              self.noise_multiplier * self.clip)
