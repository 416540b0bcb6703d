"""Secure aggregation (Bonawitz et al. 2017) of the weighted mean update, TFF's.

TFF's `secure_aggregator`: adaptive zeroing and clipping (their norm estimates summed
securely too), then each coordinate clipped to a securely estimated range and
quantised to 32-bit integers that `federated_secure_sum_bitwidth` adds up, so the
server sees only the sum. In simulation the secure sums run as plain sums; their
bits are counted at the ring width SecAgg needs (comm_bits.py). No compression
method composes: theirs are per-client scales and positions, and a secure sum only
adds integers on a grid every client shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from federated_research.privacy.base import Privacy, PrivacySpec


@dataclass
class Secure(Privacy):
    zeroing: bool = True   # TFF's adaptive zeroing of outlier updates
    clipping: bool = True  # TFF's adaptive L2 clipping before the per-coordinate range

    why_not_compressed: ClassVar[str] = (
        "compression methods send per-client scales (and top-k per-client positions), "
        "which a secure sum cannot add; privacy=distributed_dp quantises on a grid "
        "every client shares, at privacy.bits")

    def factory(self, method, spec: PrivacySpec):
        import tensorflow_federated as tff

        del method, spec
        return tff.learning.secure_aggregator(zeroing=self.zeroing, clipping=self.clipping,
                                              weighted=True)
