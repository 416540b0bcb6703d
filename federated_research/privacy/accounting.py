"""Epsilon, from Google's `dp_accounting` (RDP accountant), for the way the loop samples.

The loop draws exactly `clients_per_round` of the `population` clients each round,
without replacement (loop.sample_clients). That is fixed-size sampling, whose privacy
is stated for neighbouring populations that differ by *replacing* one client, so:

  * each round is `SampledWithoutReplacementDpEvent(population, clients_per_round,
    GaussianDpEvent(z / 2))`, composed over rounds by the RDP accountant (the bound of
    Wang, Balle & Kasiviswanathan 2019 that dp_accounting implements);
  * z / 2: replacing one client can move the sum of updates clipped to C by 2C, and
    dp_accounting's noise multiplier is the noise's standard deviation over the
    sensitivity. Poisson sampling at the same rate (add/remove one client, sensitivity
    C) would report a smaller epsilon that does not hold for this loop; `epsilon()`
    computes it too, for comparison with published values.

delta defaults to 1 / population^1.1: below 1 / population, so that "publish one
random client's data" (which is (0, 1/population)-DP) does not satisfy the guarantee.
RDP, not PLD: dp_accounting's PLD accountant has no sampling without replacement.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import dp_accounting

from federated_research.privacy.base import PrivacySpec, count_stddev

# TF Privacy's orders (compute_dp_sgd_privacy_lib), so its published values reproduce.
ORDERS = ([1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5] + list(range(5, 64))
          + [128, 256, 512])


def default_delta(population: int) -> float:
    return 1.0 / population ** 1.1


def epsilon(noise_multiplier: float, rounds: int, delta: float, *, population: int,
            sample_size: int, sampling: str = "fixed") -> float:
    """(epsilon, delta)-DP of `rounds` rounds of the sampled Gaussian mechanism.

    `sampling="fixed"`: `sample_size` of `population` without replacement, replace-one
    neighbours (this loop). `sampling="poisson"`: each client with probability
    sample_size / population, add/remove-one neighbours (DP-SGD's usual statement)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    one = round_rdp_gaussian(noise_multiplier, population, sample_size, sampling)
    return rdp_epsilon([rounds * r for r in one], ORDERS, delta)


@functools.lru_cache(maxsize=256)
def round_rdp_gaussian(noise_multiplier: float, population: int, sample_size: int,
                       sampling: str) -> tuple[float, ...]:
    """One round's RDP at ORDERS, from dp_accounting's RDP accountant; composition over
    rounds is a product (RDP adds up), so a run computes this once, not every round."""
    if sampling == "poisson":
        relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        event = dp_accounting.PoissonSampledDpEvent(
            sample_size / population, dp_accounting.GaussianDpEvent(noise_multiplier))
    elif sampling == "fixed":
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE
        gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
        event = (gaussian if sample_size >= population else
                 dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size,
                                                                gaussian))
    else:
        raise ValueError(f"sampling={sampling}: fixed or poisson")
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS, relation)
    accountant.compose(event)
    return tuple(float(r) for r in accountant._rdp)  # its RDP vector: no public getter


def noise_for(target_epsilon: float, rounds: int, delta: float, *, population: int,
              sample_size: int) -> float:
    """The smallest noise multiplier (to 0.1%) whose `rounds` rounds stay within
    `target_epsilon` at `delta`, sampled as the loop samples (bisection: epsilon falls
    as the noise rises)."""
    def spent(z: float) -> float:
        return epsilon(z, rounds, delta, population=population, sample_size=sample_size)

    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier keeps {rounds} rounds within epsilon "
                             f"{target_epsilon}")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > target_epsilon else (low, middle)
    return high


def dp_measurement(measurements, key: str) -> float | None:
    """A value TFF's DP factory reports (e.g. the adaptive clip), wherever it is nested."""
    if not hasattr(measurements, "items"):
        return None
    for name, value in measurements.items():
        if name == key:
            return float(value)
        found = dp_measurement(value, key)
        if found is not None:
            return found
    return None


class SampledGaussian:
    """privacy/* metrics of a run whose rounds are the sampled Gaussian mechanism:
    epsilon so far, and the noise added (`noise_stddev`, or for adaptive clipping
    `value_noise` x the clip the round used)."""

    def __init__(self, noise_multiplier: float, spec: PrivacySpec, delta: float | None, *,
                 noise_stddev: float | None = None, value_noise: float | None = None,
                 initial_clip: float | None = None) -> None:
        self.noise_multiplier = noise_multiplier
        self.spec = spec
        self.delta = default_delta(spec.population) if delta is None else delta
        self.noise_stddev, self.value_noise = noise_stddev, value_noise
        self.clip = initial_clip  # adaptive: the clip the next round will use

    def epsilon(self, rounds: int) -> float:
        return epsilon(self.noise_multiplier, rounds, self.delta,
                       population=self.spec.population, sample_size=self.spec.clients_per_round)

    def after_round(self, round_num: int, sampled: list[str], measurements) -> dict:
        """Metrics once round `round_num` (0-based) has run: rounds 0..round_num spent."""
        del sampled  # every client is equally likely: only the rate counts
        metrics = {"privacy/epsilon": self.epsilon(round_num + 1), "privacy/delta": self.delta,
                   "privacy/noise_multiplier": self.noise_multiplier}
        stddev = self.noise_stddev
        if self.value_noise is not None:  # adaptive: TFF reports the clip of the next round
            clip, self.clip = self.clip, dp_measurement(measurements, "clip")
            metrics["privacy/clip"] = clip
            stddev = self.value_noise * clip
        if stddev is not None:
            metrics["privacy/noise_stddev"] = stddev
        return metrics


class TreeAccountant:
    """Epsilon of DP-FTRL's tree aggregation for the clients the loop really sampled.

    Every round is a leaf of a binary tree whose nodes (dyadic ranges of rounds) are
    each released with Gaussian noise of standard deviation z x C; what the run
    publishes is computed from those nodes. A client that took part in rounds S moves a
    node covering range I by at most 2C |S n I| (replace-one), so the whole tree is one
    Gaussian mechanism of sensitivity 2C sqrt(max over clients of the sum over complete
    nodes of |S n I|^2): epsilon is that mechanism's, RDP, no sampling amplification
    (DP-FTRL's point is not to need it). Participation is data-independent (seeded),
    so counting it is no leak.
    """

    def __init__(self, noise_multiplier: float, spec: PrivacySpec, delta: float | None,
                 noise_stddev: float) -> None:
        self.noise_multiplier = noise_multiplier
        self.delta = default_delta(spec.population) if delta is None else delta
        self.noise_stddev = noise_stddev
        self.rounds_of: dict[str, list[int]] = {}

    def sensitivity(self, rounds: int) -> float:
        """max over clients of sqrt(sum of squared counts over complete nodes), in units
        of the replace-one leaf sensitivity 2C."""
        worst = 0
        for taken in self.rounds_of.values():
            total, level = 0, 0
            while (1 << level) <= rounds:
                counts: dict[int, int] = {}
                for r in taken:
                    node = r >> level
                    if (node + 1) << level <= rounds:  # only nodes already released
                        counts[node] = counts.get(node, 0) + 1
                total += sum(c * c for c in counts.values())
                level += 1
            worst = max(worst, total)
        return math.sqrt(worst)

    def after_round(self, round_num: int, sampled: list[str], measurements) -> dict:
        del measurements
        for client in sampled:
            self.rounds_of.setdefault(client, []).append(round_num)
        sensitivity = self.sensitivity(round_num + 1)
        metrics = {"privacy/delta": self.delta, "privacy/noise_multiplier": self.noise_multiplier,
                   "privacy/noise_stddev": self.noise_stddev,
                   "privacy/tree_sensitivity": sensitivity}
        if self.noise_multiplier == 0:
            metrics["privacy/epsilon"] = math.inf
            return metrics
        accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
        accountant.compose(dp_accounting.GaussianDpEvent(
            self.noise_multiplier / (2 * sensitivity)))
        metrics["privacy/epsilon"] = float(accountant.get_epsilon(self.delta))
        return metrics


# Distributed DP: the discrete mechanisms' RDP, subsampled without replacement.
INT_ORDERS = list(range(2, 64)) + [128, 256]


def skellam_rdp(alpha: int, l1: float, l2: float, variance: float) -> float:
    """RDP of the multi-dimensional Skellam mechanism (Agarwal, Kairouz & Liu 2021), in
    the scaled integer domain: total variance `variance`, L1 and L2 sensitivities
    (the authors' `distributed_dp/accounting_utils.py`)."""
    return (alpha * l2 ** 2 / (2 * variance)
            + min(((2 * alpha - 1) * l2 ** 2 + 6 * l1) / (4 * variance ** 2),
                  3 * l1 / (2 * variance)))


def ddgauss_rdp(alpha: int, l1: float, l2: float, local_stddev: float, clients: int,
                dim: int) -> float:
    """RDP of the sum of `clients` discrete Gaussians of std `local_stddev` (Kairouz, Liu &
    Steinke 2021, Prop. 14), scaled domain, as the authors' accounting computes it."""
    tau = 10 * sum(math.exp(-2 * (math.pi * local_stddev) ** 2 * k / (k + 1))
                   for k in range(1, clients))
    l2s = l2 / (math.sqrt(clients) * local_stddev)
    l1s = l1 / (math.sqrt(clients) * local_stddev)
    return min(alpha / 2 * l2s ** 2 + tau * dim,
               alpha / 2 * (l2s ** 2 + 2 * l1s * tau + tau ** 2 * dim),
               alpha / 2 * (l2s + math.sqrt(dim) * tau) ** 2)


def sampled_without_replacement(rdp, alpha: int, q: float) -> float:
    """RDP at integer order `alpha` of a mechanism run on a uniformly random subset of a
    fraction `q` of a fixed population, replace-one neighbours: Theorem 9 of Wang, Balle
    & Kasiviswanathan 2019 for a mechanism with unbounded epsilon(inf), never above the
    mechanism's own RDP. `rdp(j)` is the mechanism's RDP at order j."""
    if q >= 1:
        return rdp(alpha)
    eps2 = rdp(2)
    second = min(math.log(4) + _log_expm1(eps2), math.log(2) + eps2)
    terms = [0.0, 2 * math.log(q) + _log_comb(alpha, 2) + second]
    terms += [math.log(2) + j * math.log(q) + _log_comb(alpha, j) + (j - 1) * rdp(j)
              for j in range(3, alpha + 1)]
    top = max(terms)
    log_a = top + math.log(sum(math.exp(t - top) for t in terms))
    return min(log_a / (alpha - 1), rdp(alpha))


def _log_expm1(x: float) -> float:
    """log(e^x - 1), without overflow for large x."""
    return x + math.log1p(-math.exp(-x)) if x > 1 else math.log(math.expm1(x))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def rdp_epsilon(rdp: list[float], orders: list[int], delta: float) -> float:
    """(epsilon, delta) from RDP at these orders (dp_accounting's conversion)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    return float(compute_epsilon(orders, rdp, delta)[0])


@dataclass(frozen=True)
class DdpRound:
    """What one round of TFF's distributed DP is, for its accounting: the clip, the
    expected clients, the padded dimension, the noise on the values (over the clip) and
    on the clip count (null without auto_clip), the ring, TFF's modular-clip standard
    deviations, the rounding's beta and the mechanism."""

    clip: float
    clients: int
    dim: int
    value_noise: float
    count_stddev: float | None
    bits: int
    k_stddevs: float
    beta: float
    mechanism: str

    @classmethod
    def of(cls, factory) -> DdpRound:
        """Read off a built `DistributedDpSumFactory` (after `create`)."""
        auto = factory._auto_l2_clip
        count = (count_stddev(factory._num_clients) if auto and factory._noise_multiplier > 0
                 else None)
        return cls(factory._initial_l2_clip, factory._num_clients, factory._padded_dim,
                   factory._value_noise_mult, count, factory._bits, factory._k_stddevs,
                   factory._beta, factory._mechanism)


class DistributedAccountant:
    """Epsilon of TFF's distributed DP: each round, the discrete mechanism on the
    clipped, rotated, scaled and rounded updates (the bounds TFF's query enforces:
    inflated L2, and L1 <= L2 min(sqrt(d), L2), doubled for replace-one), composed with
    the Gaussian noise on the adaptive clip's count (sensitivity 1), then subsampled
    without replacement. Read off the built factory: its padded dimension, scale and
    noise are TFF's own."""

    def __init__(self, privacy, spec: PrivacySpec) -> None:
        self.privacy, self.spec = privacy, spec
        self.delta = default_delta(spec.population) if privacy.delta is None else privacy.delta
        self._per_round: list[float] | None = None

    def epsilon(self, rounds: int) -> float:
        built = self.privacy.built  # set when the process was built
        if built._noise_multiplier == 0:
            return math.inf
        if self._per_round is None:
            self._per_round = round_rdp(DdpRound.of(built), self.spec)
        return rdp_epsilon([rounds * r for r in self._per_round], INT_ORDERS, self.delta)

    def after_round(self, round_num: int, sampled: list[str], measurements) -> dict:
        del sampled, measurements
        return {"privacy/epsilon": self.epsilon(round_num + 1), "privacy/delta": self.delta,
                "privacy/noise_multiplier": self.privacy.built._noise_multiplier}


def round_rdp(ddp: DdpRound, spec: PrivacySpec) -> list[float]:
    """One round of distributed DP at INT_ORDERS (see DistributedAccountant), with TFF's
    own scale and inflated L2 bound."""
    from tensorflow_federated.python.aggregators import discretization
    from tensorflow_federated.python.aggregators import distributed_dp as tff_ddp

    clip, n, dim = ddp.clip, ddp.clients, ddp.dim
    local = ddp.value_noise * clip / math.sqrt(n)
    scale = min(float(tff_ddp._heuristic_scale_factor(local, clip, ddp.bits, n, dim,
                                                      ddp.k_stddevs)), tff_ddp.MAX_SCALE_FACTOR)
    inflated = float(discretization.inflated_l2_norm_bound(
        l2_norm_bound=clip, gamma=1.0 / scale, beta=ddp.beta, dim=dim))
    l2 = (inflated + 1e-5) * scale
    l1 = math.ceil(l2 * min(math.sqrt(dim), l2))
    l2, l1 = 2 * l2, 2 * l1  # replace-one

    def value(alpha):
        if ddp.mechanism == "distributed_skellam":
            return skellam_rdp(alpha, l1, l2, n * (local * scale) ** 2)
        return ddgauss_rdp(alpha, l1, l2, local * scale, n, dim)

    def mechanism(alpha):
        count = ddp.count_stddev
        return value(alpha) + (alpha / (2 * count ** 2) if count else 0.0)

    q = spec.clients_per_round / spec.population
    return [sampled_without_replacement(mechanism, alpha, q) for alpha in INT_ORDERS]


def ddp_noise_for(target_epsilon: float, ddp: DdpRound, spec: PrivacySpec,
                  delta: float) -> float:
    """The smallest total noise multiplier (to 0.1%) whose `spec.rounds` rounds of
    distributed DP stay within `target_epsilon` (bisection, as noise_for)."""
    from tensorflow_federated.python.aggregators.differential_privacy import (
        adaptive_clip_noise_params,
    )

    def spent(z: float) -> float:
        count = count_stddev(ddp.clients) if ddp.count_stddev is not None else None
        value = adaptive_clip_noise_params(z, ddp.clients, count)[0] if count else z
        rdp = round_rdp(replace(ddp, value_noise=value, count_stddev=count), spec)
        return rdp_epsilon([spec.rounds * r for r in rdp], INT_ORDERS, delta)

    low, high = 0.0, 0.5
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise ValueError(f"no noise keeps {spec.rounds} rounds within {target_epsilon}")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > target_epsilon else (low, middle)
    return high
