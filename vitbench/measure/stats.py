"""Estimates with uncertainty from repeated rounds: the paired speed ratio with an interval over timing processes
and its verdict, the median with a distribution-free interval, and symmetric (log) changes between two runs.

Why these choices. Rounds are not independent draws: each timing process (with its pair of model instances:
memory layout, thread placement) carries an offset of a few percent that does not average out within it, so an
interval that pools all rounds as if independent is far too narrow for a handful of processes (an A/A pair got
1.039 [1.016, 1.076] 'faster'). The unit that varies is the process, so the interval comes from processes (the
top level of a hierarchical design, Kalibera & Jones, "Rigorous benchmarking in reasonable time", 2013): each
process's rounds are summarised by their median log ratio (robust to the single calls that spike 6x on a shared
machine), and the processes' values by the Hodges-Lehmann estimate with the Wilcoxon signed-rank interval:
distribution-free for a symmetric spread, nearly as tight as Student's t when the spread is normal, and robust to
the odd process that a burst of noise shifts by 20% (on 38 A/A runs here: median half-width 2.0% against t's
2.2%, widest 4.8% against 7.1%). Its width includes the process-to-process spread whatever its size; a 95%
interval needs at least 6 processes (98-99%: 8), and below that Student's t over the processes stands in (from 3),
as sequential stopping's early looks need (``looks_for``). A speed ratio is judged on a log scale, so 2x faster
and 2x slower weigh the same.
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


def _signed_rank_cdf(n: int) -> list[float]:
    """P(T <= w) for w = 0 .. n(n+1)/2, T the Wilcoxon signed-rank statistic of n values (exact, by counting)."""
    top = n * (n + 1) // 2
    counts = [1] + [0] * top
    for r in range(1, n + 1):
        for w in range(top, r - 1, -1):
            counts[w] += counts[w - r]
    out, acc = [], 0
    for c in counts:
        acc += c
        out.append(acc / 2.0**n)
    return out


def cluster_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(estimate, low, high, coverage) for the centre of ``values`` (one per independent unit, e.g. a timing
    process's median log ratio): the Hodges-Lehmann estimate (median of the pairwise means, Walsh averages) and
    the Wilcoxon signed-rank interval [W_(c), W_(N+1-c)] over the N sorted Walsh averages, with the largest c whose
    exact coverage is at least ``confidence``. With too few values for that coverage (under 6 at 95%) the bounds
    are NaN and ``coverage`` says what [min, max] would have had."""
    n = len(values)
    if not n:
        return math.nan, math.nan, math.nan, 0.0
    walsh = sorted((values[i] + values[j]) / 2 for i in range(n) for j in range(i, n))
    estimate = statistics.median(walsh)
    cdf = _signed_rank_cdf(n)
    c = 0
    while c + 1 <= len(walsh) // 2 and 1 - 2 * cdf[c] >= confidence:  # coverage of [W_(c+1), W_(N-c)]
        c += 1
    if c == 0:
        return estimate, math.nan, math.nan, 1 - 2 * cdf[0]
    return estimate, walsh[c - 1], walsh[len(walsh) - c], 1 - 2 * cdf[c - 1]


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (integer) degrees of freedom, in closed form (Abramowitz & Stegun
    26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd
        if df == 1:
            return 2 * theta / math.pi
        term, acc = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            acc += term
        return 2 / math.pi * (theta + s * math.cos(theta) * acc)
    term, acc = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        acc += term
    return s * acc


def t_quantile(confidence: float, df: int) -> float:
    """The t such that P(|T| <= t) = ``confidence`` (two-sided), by bisection."""
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < confidence:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def wilcoxon_reaches(n: int, confidence: float) -> bool:
    """Whether the signed-rank interval of ``n`` values can have ``confidence`` ([min, max] covers 1 - 2/2^n)."""
    return n >= 1 and 1 - 2 / 2.0**n >= confidence - 1e-12


def process_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float, str]:
    """(estimate, low, high, coverage, method) for the centre of per-process values: the Hodges-Lehmann estimate,
    with the Wilcoxon signed-rank interval where ``len(values)`` can reach ``confidence`` (6 values for 95%, 8 for
    99%), else Student's t interval over the values (from 3 of them), else no interval (NaN bounds)."""
    n = len(values)
    if wilcoxon_reaches(n, confidence):
        est, lo, hi, cov = cluster_interval(values, confidence)
        return est, lo, hi, cov, "wilcoxon"
    est = cluster_interval(values, confidence)[0] if n else math.nan
    if n < 3:
        return est, math.nan, math.nan, 0.0, "none"
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    h = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return est, mean - h, mean + h, confidence, "t"


@dataclass(frozen=True)
class Look:
    """A planned look at a comparison: after ``processes`` timing processes, at ``confidence``."""

    processes: int
    confidence: float


def looks_for(processes: int, sequential: bool = True, confidence: float = CONFIDENCE) -> list[Look]:
    """Where a comparison may stop: after 3, 6 and 10 timing processes (those below the maximum) and at the maximum,
    the error (1 - ``confidence``) spent across them, Bonferroni: 0.01 at each early look (for the default 0.05),
    the rest at the last. Every look's interval then covers the truth at once with ``confidence``, so stopping at
    whichever look settles the verdict keeps it (repeated confidence intervals; Jennison & Turnbull). Without
    ``sequential`` one look at the maximum, at ``confidence``."""
    alpha = 1 - confidence
    early = [n for n in (3, 6, 10) if n < processes] if sequential else []
    each = alpha / 5
    return [Look(n, 1 - each) for n in early] + [Look(processes, 1 - (alpha - each * len(early)))]


@dataclass(frozen=True)
class RatioEstimate:
    """A paired speed ratio (candidate samples/s over reference samples/s; >1 = candidate faster) with its 95%
    interval over timing processes. ``processes``: processes with clean rounds (the interval's units)."""

    ratio: float
    low: float
    high: float
    rounds: int  # clean rounds the estimate uses
    coverage: float
    verdict: str
    processes: int = 0
    method: str = "wilcoxon"  # the interval's: wilcoxon | t | none

    def text(self) -> str:
        if math.isnan(self.ratio):
            return self.verdict
        if math.isnan(self.low):
            return f"{self.ratio:.2f}x (no interval: {self.processes} timing processes) {self.verdict}"
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


def process_ratio_estimate(by_process: list[list[float]], threshold_pct: float, contended: bool = False,
                           confidence: float = CONFIDENCE) -> RatioEstimate:
    """The speed ratio from per-round ratios grouped by timing process: each process's median log ratio, then the
    Hodges-Lehmann estimate over processes and an interval over them at ``confidence`` (``process_interval``:
    Wilcoxon's where the processes are enough for it, Student's t from 3). With fewer than 3 processes there is no
    interval (the process-to-process spread is not measured) and the verdict is ``inconclusive``; ``contended``:
    too few rounds were clean (the estimate is still shown)."""
    logs = [[math.log(r) for r in g if r > 0 and math.isfinite(r)] for g in by_process]
    per_process = [statistics.median(g) for g in logs if g]
    rounds = sum(len(g) for g in logs)
    centre, lo, hi, coverage, method = process_interval(per_process, confidence)
    k = len(per_process)
    ratio, low, high = (math.exp(v) if not math.isnan(v) else math.nan for v in (centre, lo, hi))
    v = "contended" if contended else verdict(ratio, low, high, coverage, threshold_pct, confidence)
    return RatioEstimate(ratio, low, high, rounds, coverage, v, k, method)


def log_change_pct(old: float, new: float) -> float:
    """100 * ln(new / old): a symmetric change (x5 -> +161%, /5 -> -161%)."""
    return 100.0 * math.log(new / old)


def log_halfwidth_pct(low: float | None, high: float | None) -> float | None:
    """Half the width of an interval on the log scale, in log-percent; None if unknown."""
    if low is None or high is None or not (low > 0 and high > 0) or math.isnan(low) or math.isnan(high):
        return None
    return 50.0 * (math.log(high) - math.log(low))
