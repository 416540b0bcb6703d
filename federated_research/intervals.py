"""Confidence intervals over seeds: how the report tells a real difference from noise.

A configuration and its `mean` baseline run with the same seeds, so the report pairs
them seed by seed and gives the mean of the paired differences with a Student's t
interval (n - 1 degrees of freedom, 95%). t rather than a bootstrap: with the 3 to 5
seeds a sweep affords, a bootstrap resamples too few values to have a distribution
(3 seeds give 10 distinct resamples), while the t interval is exact when the seed
noise is normal. One seed gives a difference and no interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None  # None with one value: no spread to measure
    high: float | None
    n: int

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the difference is told apart from no difference (None: one value)."""
        if self.low is None or self.high is None:
            return None
        return bool(self.low > 0 or self.high < 0)

    @property
    def half_width(self) -> float:
        return 0.0 if self.low is None else (self.high - self.low) / 2


def t_interval(values: Iterable[float | None], level: float = LEVEL) -> Interval | None:
    """The mean of `values` (Nones dropped) with its Student's t interval."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, None, 1)
    from scipy import stats

    n = len(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def spread(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, standard deviation (None below two values) and count of `values`."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None, 0
    return (statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else None, len(values))
