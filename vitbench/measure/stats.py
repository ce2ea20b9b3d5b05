"""Estimates with uncertainty from repeated rounds: the median and a distribution-free confidence interval for it,
the paired speed ratio and its verdict, and symmetric (log) changes between two runs.

Why these choices: per-round values on a shared machine are skewed by bursts of contention, so the median is the
robust centre, and an order-statistic interval for it (asv's choice) needs no assumption about the noise's shape.
A speed ratio is judged on a log scale, so 2x faster and 2x slower weigh the same.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
VERDICTS = ("faster", "slower", "same", "inconclusive", "contended")


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2.0**n


def median_ci(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(median, low, high, coverage): the order-statistic interval [x_(k), x_(n-k+1)] for the median, with the
    largest k whose exact binomial coverage is at least ``confidence``. With too few values for that coverage the
    interval is [min, max] and ``coverage`` says how much it really has (n=5: 94%)."""
    if not values:
        return math.nan, math.nan, math.nan, 0.0
    s = sorted(values)
    n = len(s)
    med = statistics.median(s)
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * _binom_cdf(k, n) >= confidence:  # coverage of [x_(k+1), x_(n-k)]
        k += 1
    coverage = 1 - 2 * _binom_cdf(k - 1, n)
    return med, s[k - 1], s[n - k], coverage


def min_rounds_for(confidence: float = CONFIDENCE) -> int:
    """The fewest values whose [min, max] covers the median with ``confidence`` (6 for 95%)."""
    n = 1
    while 1 - 2 * _binom_cdf(0, n) < confidence:
        n += 1
    return n


@dataclass(frozen=True)
class RatioEstimate:
    """A paired speed ratio (candidate samples/s over reference samples/s; >1 = candidate faster)."""

    ratio: float
    low: float
    high: float
    rounds: int  # clean rounds the estimate uses
    coverage: float
    verdict: str

    def text(self) -> str:
        if math.isnan(self.ratio):
            return self.verdict
        return f"{self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}] {self.verdict}"


def verdict(ratio: float, low: float, high: float, coverage: float, threshold_pct: float,
            confidence: float = CONFIDENCE) -> str:
    """faster / slower: the interval excludes 1 and the estimate is beyond the threshold band; same: the whole
    interval lies inside the band [1/(1+t), 1+t]; otherwise inconclusive (as when the rounds were too few for the
    interval to have its nominal coverage)."""
    band = 1 + threshold_pct / 100.0
    if math.isnan(ratio) or coverage < confidence - 1e-9:
        return "inconclusive"
    if low > 1.0 and ratio > band:
        return "faster"
    if high < 1.0 and ratio < 1 / band:
        return "slower"
    if low >= 1 / band and high <= band:
        return "same"
    return "inconclusive"


def ratio_estimate(round_ratios: list[float], threshold_pct: float, contended: bool = False,
                   min_rounds: int | None = None) -> RatioEstimate:
    """Median of per-round ratios with its order-statistic interval and verdict. ``contended``: too few rounds
    were clean; the estimate is still shown, but its verdict is ``contended``, never a confident one."""
    vals = [r for r in round_ratios if r > 0 and math.isfinite(r)]
    med, low, high, cov = median_ci(vals)
    need = min_rounds or min_rounds_for()
    if contended:
        v = "contended"
    elif len(vals) < need:
        v = "inconclusive"
    else:
        v = verdict(med, low, high, cov, threshold_pct)
    return RatioEstimate(med, low, high, len(vals), cov, v)


def log_change_pct(old: float, new: float) -> float:
    """100 * ln(new / old): a symmetric change (x5 -> +161%, /5 -> -161%)."""
    return 100.0 * math.log(new / old)


def log_halfwidth_pct(low: float | None, high: float | None) -> float | None:
    """Half the width of an interval on the log scale, in log-percent; None if unknown."""
    if low is None or high is None or not (low > 0 and high > 0) or math.isnan(low) or math.isnan(high):
        return None
    return 50.0 * (math.log(high) - math.log(low))
