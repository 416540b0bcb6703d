"""Distributed differential privacy under secure aggregation, TFF's `DistributedDpSumFactory`.

Each client clips its update (adaptively, `auto_clip`), rotates it (`rotation`: a
randomised Hadamard or discrete Fourier transform, padded to a power of two or an
even length), scales and rounds it onto an integer grid, adds its share of discrete
noise (`mechanism`: Skellam, Agarwal et al. 2021; or distributed discrete Gaussian,
Kairouz et al. 2021) and sends it reduced modulo 2^`bits` into a secure sum. The
server never sees an update without everyone's noise. `bits` is the ring of the
*sum*: it must hold log2(clients_per_round) bits of growth, and fewer bits mean a
coarser grid (more rounding error) for the same modular-wrap probability.
"""

from __future__ import annotations

import math
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

MECHANISMS = ("skellam", "dgauss")
ROTATIONS = ("hd", "dft")
_MODCLIP_STDDEVS = 3.8906  # TFF's modclip_prob 1e-4 as standard deviations (two-sided)


@dataclass
class DistributedDp(Privacy):
    noise_multiplier: float = 0.5  # central noise std over the clip; auto_clip: < 0.1 x clients
    bits: int = 16                 # SecAgg's ring for the sum: 2^bits; 1 to 22 (TFF's float32 cap)
    mechanism: str = "skellam"     # skellam or dgauss (distributed discrete Gaussian)
    rotation: str = "hd"           # hd (randomised Hadamard) or dft
    clip: float = 0.1              # L2 clip (the initial one when auto_clip)
    auto_clip: bool = True         # adapt the clip to the median norm (Andrew et al. 2021)
    zeroing: bool = True           # TFF's adaptive zeroing of outlier updates, secure too
    delta: float | None = None     # epsilon's delta; null = 1 / population^1.1
    target_epsilon: float | None = None  # set: the noise is chosen to end the run at it

    built: ClassVar[object] = None  # the DistributedDpSumFactory, once factory() ran
    why_not_compressed: ClassVar[str] = (
        "it quantises the rotated update itself, onto a grid every client shares, and a "
        "compression method's per-client scales cannot go into a secure sum; set "
        "privacy.bits for fewer bits")

    def check(self) -> None:
        check_noise(self.noise_multiplier)
        require(1 <= self.bits <= 22, "bits", self.bits,
                "is the secure sum's ring width: 1 to 22 (TFF keeps it in float32)", 16)
        require(self.mechanism in MECHANISMS, "mechanism", self.mechanism,
                f"must be one of {', '.join(MECHANISMS)}", "skellam")
        require(self.rotation in ROTATIONS, "rotation", self.rotation,
                f"must be one of {', '.join(ROTATIONS)}", "hd")
        require(self.clip > 0, "clip", self.clip, "is an L2 norm: positive", 0.1)
        check_delta(self.delta)
        check_target(self.target_epsilon)

    def check_run(self, cfg: DictConfig) -> None:
        super().check_run(cfg)
        n = cfg.clients_per_round
        need = max(math.ceil(math.log2(n)) if n > 1 else 1,
                   math.ceil(math.log2(math.sqrt(n) * _MODCLIP_STDDEVS)))
        if self.bits < need:
            raise ConfigError(f"privacy.bits={self.bits}", f"a secure sum of {n} clients "
                              "would wrap around its ring too often", f"pass privacy.bits={need} "
                              "or more, or lower clients_per_round")
        if (self.target_epsilon is None and self.auto_clip  # a target's noise: checked when chosen
                and self.noise_multiplier >= 2 * count_stddev(n) > 0):
            raise ConfigError(f"privacy.noise_multiplier={self.noise_multiplier}",
                              "with auto_clip the clip count's noise (0.05 x clients_per_round) "
                              "must be more than half the total noise multiplier",
                              f"lower it below {2 * count_stddev(n):g}, raise clients_per_round, "
                              "or pass privacy.auto_clip=false")

    def factory(self, method, spec: PrivacySpec):
        from federated_research.privacy.aggregation import DistributedDpFactory, UnweightedMean
        from federated_research.runtime import allow_deep_computations

        del method
        allow_deep_computations()  # its nested aggregators exceed protobuf's default depth
        return UnweightedMean(DistributedDpFactory(self, spec))

    def accountant(self, spec: PrivacySpec):
        from federated_research.privacy.accounting import DistributedAccountant

        return DistributedAccountant(self, spec)
