"""Central differential privacy with a fixed clip (McMahan et al. 2018, DP-FedAvg).

Each client clips its update to L2 norm `clip` (and may compress the clipped update);
the server adds Gaussian noise of standard deviation `noise_multiplier x clip` to the
sum and divides by the expected clients a round. Noise comes from the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from federated_research.privacy.base import ClippedGaussian, PrivacySpec, check_target


@dataclass
class DpFixed(ClippedGaussian):
    target_epsilon: float | None = None  # set: noise_multiplier is chosen to end the run at it
    seed: int = 0

    def check(self) -> None:
        super().check()
        check_target(self.target_epsilon)

    def for_run(self, spec: PrivacySpec) -> DpFixed:
        return with_target_noise(self, spec)

    def factory(self, method, spec: PrivacySpec):
        import tensorflow_federated as tff
        import tensorflow_privacy as tfp

        from federated_research.privacy.aggregation import (
            SeededGaussianSumQuery,
            UnweightedMean,
            record_sum,
        )

        query = tfp.NormalizedQuery(
            SeededGaussianSumQuery(self.clip, self.clip * self.noise_multiplier, self.seed),
            denominator=float(spec.clients_per_round))
        return UnweightedMean(tff.aggregators.DifferentiallyPrivateFactory(
            query, record_sum(method, self.clip)))

    def accountant(self, spec: PrivacySpec):
        from federated_research.privacy.accounting import SampledGaussian

        return SampledGaussian(self.noise_multiplier, spec, self.delta,
                               noise_stddev=self.noise_multiplier * self.clip)


def with_target_noise(options, spec: PrivacySpec):
    """The options with `noise_multiplier` chosen so that the configured rounds end at
    `target_epsilon` (the smallest noise that does); as they are without a target."""
    if options.target_epsilon is None:
        return options
    from federated_research.privacy.accounting import default_delta, noise_for

    delta = default_delta(spec.population) if options.delta is None else options.delta
    noise = noise_for(options.target_epsilon, spec.rounds, delta, population=spec.population,
                      sample_size=spec.clients_per_round)
    return replace(options, noise_multiplier=noise)
