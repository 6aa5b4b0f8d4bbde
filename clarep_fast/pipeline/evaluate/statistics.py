"""Intervals for the reports: over seeds (Student's t), paired differences, and binomial rates (Wilson).

Over seeds, a measure's 95% interval is mean ± t_{0.975, n-1} · s / sqrt(n) (s the sample standard
deviation). A paired difference takes, seed by seed, the difference of two students trained with
the same seed (same initial weights and data order), and gives that difference the same interval:
it is significant at the 5% level when its interval excludes 0. One seed has no interval.
The power of a paired comparison: with n seeds and paired differences of standard deviation s,
a true difference δ is found significant (5%, two-sided) with probability 0.8 when
δ ≥ (t_{0.975, n-1} + t_{0.8, n-1}) · s / sqrt(n) (the normal approximation with t quantiles);
that δ is the smallest difference the study could detect. The seeds a study needs to detect a given
δ: the smallest n whose δ(n) ≤ δ at the measured s (about n·(δ_now / δ_wanted)² for large n).
A table of many paired differences tests many hypotheses: at 5% each, one in twenty true nulls reads
significant. Holm's step-down correction keeps the chance of any false finding in the table at 5%:
sort the m two-sided p-values (p = 2·P(T_{n-1} > |mean| / (s / sqrt(n)))), and reject the i-th
smallest while p_(i) ≤ 0.05 / (m − i + 1).
A rate k/n (e.g. a class-consistency) gets Wilson's score interval, which stays inside [0, 1] and
is accurate for rates near 0 or 1 where the normal approximation is not.
"""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple, Sequence


class Interval(NamedTuple):
    mean: float
    half_width: float | None  # None: one value, no interval
    count: int

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0 (None without an interval)."""
        return None if self.half_width is None else abs(self.mean) > self.half_width

    def describe(self, scale: float = 100.0, digits: int = 1) -> str:
        if self.half_width is None:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.half_width:.{digits}f}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("an interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, None, 1)
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, float(half), len(values))


def paired_difference(treated: Sequence[float], control: Sequence[float], confidence: float = 0.95) -> Interval:
    """The t interval of treated[i] - control[i] (the same seed i in both)."""
    if len(treated) != len(control):
        raise ValueError(f"paired values need the same seeds: {len(treated)} and {len(control)} values")
    return t_interval([a - b for a, b in zip(treated, control)], confidence)


def detectable_difference(differences: Sequence[float], power: float = 0.8, confidence: float = 0.95) -> float | None:
    """The smallest true mean of these paired differences a study of this size finds significant
    with probability ``power`` (None with fewer than two values: no spread to measure)."""
    values = [float(v) for v in differences]
    if len(values) < 2:
        return None
    from scipy.stats import t

    n = len(values)
    return float((t.ppf(0.5 + confidence / 2, n - 1) + t.ppf(power, n - 1)) * statistics.stdev(values) / math.sqrt(n))


def seeds_needed(differences: Sequence[float], target: float, power: float = 0.8, limit: int = 10_000) -> int | None:
    """The fewest seeds whose paired study detects a true difference of ``target`` with probability
    ``power``, at the standard deviation these differences show; None with fewer than two values
    or a zero target, ``limit`` when even that many would not do."""
    values = [float(v) for v in differences]
    if len(values) < 2 or target == 0:
        return None
    from scipy.stats import t

    spread = statistics.stdev(values)
    for n in range(2, limit):
        if (t.ppf(0.975, n - 1) + t.ppf(power, n - 1)) * spread / math.sqrt(n) <= abs(target):
            return n
    return limit


def paired_p_value(differences: Sequence[float]) -> float | None:
    """The two-sided p-value of the paired t test that the differences' mean is 0 (None with
    fewer than two values). Below 0.05 exactly when t_interval's 95% interval excludes 0."""
    values = [float(v) for v in differences]
    if len(values) < 2:
        return None
    mean, spread = statistics.fmean(values), statistics.stdev(values)
    if spread == 0:
        return 1.0 if mean == 0 else 0.0
    from scipy.stats import t

    return float(2 * t.sf(abs(mean) / (spread / math.sqrt(len(values))), len(values) - 1))


def holm_rejected(p_values: dict[str, float], level: float = 0.05) -> list[str]:
    """The names whose null Holm's step-down procedure rejects at family-wise ``level``."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    rejected = []
    for rank, (name, p) in enumerate(ordered):
        if p > level / (len(ordered) - rank):
            break
        rejected.append(name)
    return rejected


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's 95% score interval (low, high) of a binomial rate successes / trials."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes} of {trials}")
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
