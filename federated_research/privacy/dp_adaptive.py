"""Central differential privacy with adaptive clipping (Andrew et al. 2021), TFF's.

The clip follows a private estimate of the `target_quantile` of the update norms,
moving by at most a factor exp(`learning_rate`) a round; the count of unclipped
updates that steers it is noised too, and its share of the privacy budget is taken
from `noise_multiplier` (TFF's `adaptive_clip_noise_params`), which is the total.
The clip changes at the server each round, so no compressor can run under it: a
decoded update could not be clipped again to a bound the clients were sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from omegaconf import DictConfig

from federated_research.errors import ConfigError
from federated_research.options import require
from federated_research.privacy.base import (
    Privacy,
    PrivacySpec,
    check_delta,
    check_noise,
    check_target,
    count_stddev,
)
from federated_research.privacy.dp_fixed import with_target_noise


@dataclass
class DpAdaptive(Privacy):
    noise_multiplier: float = 0.5   # total, clip count included: below 0.1 x clients_per_round
    initial_clip: float = 0.1       # the clip of round 0
    target_quantile: float = 0.5    # the share of updates left unclipped (0.5: the median)
    learning_rate: float = 0.2      # geometric: the clip moves by at most exp(0.2) a round
    clipped_count_stddev: float | None = None  # null = 0.05 x clients_per_round (TFF's)
    delta: float | None = None      # epsilon's delta; null = 1 / population^1.1
    target_epsilon: float | None = None  # set: noise_multiplier is chosen to end the run at it
    seed: int = 0

    why_not_compressed: ClassVar[str] = (
        "its clip moves at the server every round, so a decoded update cannot be "
        "clipped again to it and a codec could raise the sensitivity; "
        "privacy=dp_fixed composes with compression")

    def check(self) -> None:
        check_noise(self.noise_multiplier)
        require(self.initial_clip > 0, "initial_clip", self.initial_clip,
                "is an L2 norm: positive", 0.1)
        require(0 <= self.target_quantile <= 1, "target_quantile", self.target_quantile,
                "is a quantile: 0 to 1", 0.5)
        require(self.learning_rate >= 0, "learning_rate", self.learning_rate,
                "must be 0 or more", 0.2)
        require(self.clipped_count_stddev is None or self.clipped_count_stddev > 0,
                "clipped_count_stddev", self.clipped_count_stddev,
                "must be positive (null = 0.05 x clients_per_round)", 1.0)
        check_delta(self.delta)
        check_target(self.target_epsilon)

    def for_run(self, spec: PrivacySpec) -> DpAdaptive:
        chosen = with_target_noise(self, spec)
        stddev = chosen.count_stddev(spec.clients_per_round)
        if chosen.noise_multiplier >= 2 * stddev > 0:
            raise ConfigError(f"privacy.target_epsilon={self.target_epsilon}",
                              f"it needs noise multiplier {chosen.noise_multiplier:.3g}, and "
                              f"the clip count's noise ({stddev:g}) leaves no budget for it",
                              f"raise privacy.clipped_count_stddev above "
                              f"{chosen.noise_multiplier / 2:.3g}, or privacy.target_epsilon")
        return chosen

    def count_stddev(self, clients_per_round: int) -> float:
        if self.clipped_count_stddev is not None:
            return self.clipped_count_stddev
        return count_stddev(clients_per_round) if self.noise_multiplier > 0 else 0.0

    def check_run(self, cfg: DictConfig) -> None:
        super().check_run(cfg)
        stddev = self.count_stddev(cfg.clients_per_round)
        if self.noise_multiplier > 0 and self.noise_multiplier >= 2 * stddev:
            raise ConfigError(f"privacy.noise_multiplier={self.noise_multiplier}",
                              f"the clip count's noise ({stddev:g}) leaves no budget for the "
                              "update's: noise_multiplier must stay below twice it",
                              f"raise privacy.clipped_count_stddev above "
                              f"{self.noise_multiplier / 2:g}, or clients_per_round")

    def value_noise_multiplier(self, clients_per_round: int) -> float:
        from tensorflow_federated.python.aggregators.differential_privacy import (
            adaptive_clip_noise_params,
        )

        return adaptive_clip_noise_params(self.noise_multiplier, float(clients_per_round),
                                          self.count_stddev(clients_per_round))[0]

    def factory(self, method, spec: PrivacySpec):
        import tensorflow_federated as tff
        import tensorflow_privacy as tfp

        from federated_research.privacy.aggregation import (
            SeededAdaptiveClipSumQuery,
            UnweightedMean,
        )

        query = tfp.NormalizedQuery(SeededAdaptiveClipSumQuery(self, spec.clients_per_round),
                                    denominator=float(spec.clients_per_round))
        return UnweightedMean(tff.aggregators.DifferentiallyPrivateFactory(query))

    def accountant(self, spec: PrivacySpec):
        from federated_research.privacy.accounting import SampledGaussian

        return SampledGaussian(self.noise_multiplier, spec, self.delta,
                               value_noise=self.value_noise_multiplier(spec.clients_per_round),
                               initial_clip=self.initial_clip)
