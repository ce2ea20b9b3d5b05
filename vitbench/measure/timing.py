"""Sync-aware timing loop with timm's throughput definition and raw per-iteration latencies kept."""
from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class TimingResult:
    """Latencies in ms per batch; throughput as timm's benchmark.py defines it."""

    batch_size: int
    latencies_ms: list[float] = field(repr=False)
    loop_s: float  # wall time of the whole timed loop
    warmup_iters: int
    first_call_s: float  # the very first call (includes any compilation), measured apart

    @property
    def iters(self) -> int:
        return len(self.latencies_ms)

    @property
    def samples_per_sec(self) -> float:
        """timm's infer_samples_per_sec: samples over the wall time of the timed loop."""
        return self.iters * self.batch_size / self.loop_s

    @property
    def step_time_ms(self) -> float:
        """timm's infer_step_time: mean ms per batch."""
        return statistics.fmean(self.latencies_ms)

    def stats(self) -> dict[str, float]:
        v = self.latencies_ms
        return {
            "latency_ms_p50": percentile(v, 50),
            "latency_ms_p90": percentile(v, 90),
            "latency_ms_p99": percentile(v, 99),
            "latency_ms_mean": statistics.fmean(v),
            "latency_ms_stdev": statistics.stdev(v) if len(v) > 1 else 0.0,
            "latency_ms_min": min(v),
        }


def time_loop(
    step: Callable[[], object],
    sync: Callable[[], None],
    *,
    batch_size: int,
    warmup_iters: int,
    min_iters: int,
    min_seconds: float,
    max_iters: int = 1_000_000,
    clock: Callable[[], float] = time.perf_counter,
) -> TimingResult:
    """First call timed apart, then warm-up, then iterate until both ``min_iters`` and ``min_seconds`` are met.

    Each iteration is synchronised (``sync`` waits for the device), so every latency is a whole request.
    """
    sync()
    t0 = clock()
    step()
    sync()
    first = clock() - t0
    for _ in range(max(warmup_iters - 1, 0)):
        step()
    sync()
    lat: list[float] = []
    start = clock()
    now = start
    while len(lat) < max_iters and (len(lat) < min_iters or now - start < min_seconds):
        t = clock()
        step()
        sync()
        now = clock()
        lat.append((now - t) * 1e3)
    return TimingResult(batch_size=batch_size, latencies_ms=lat, loop_s=now - start, warmup_iters=warmup_iters,
                        first_call_s=first)


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies over all CPUs from /proc/stat (Linux); None elsewhere."""
    m = machine_jiffies()
    return None if m is None else (m[1], m[2])


def machine_jiffies() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies over all CPUs from /proc/stat (Linux); None elsewhere. Busy is time some
    process (or the kernel for one) ran: user, nice, system, irq, softirq."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    v += [0] * (8 - len(v))
    return v[0] + v[1] + v[2] + v[5] + v[6], v[7], sum(v[:8])


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of CPU time the hypervisor took from this machine between two readings: high values mean the
    timings were taken on a contended virtual machine."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Contention:
    """Watches one timed window: hypervisor steal, and the CPU time that processes other than this one used
    (machine busy time from /proc/stat minus this process's own CPU time), both as % of the machine's CPU time.
    Steal is blind to other processes on the same VM; ``foreign_cpu_pct`` is not."""

    def __enter__(self) -> Contention:
        self._m0, self._own0, self._t0 = machine_jiffies(), time.process_time(), time.perf_counter()
        self.steal_pct: float | None = None
        self.foreign_cpu_pct: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        m1, own1, t1 = machine_jiffies(), time.process_time(), time.perf_counter()
        m0 = self._m0
        if m0 is None or m1 is None or m1[2] <= m0[2]:
            return
        total_j = m1[2] - m0[2]
        self.steal_pct = 100.0 * (m1[1] - m0[1]) / total_j
        # the machine's CPU-seconds in the window: jiffies are coarse (10 ms), wall time x CPUs is not
        wall = t1 - self._t0
        capacity_s = wall * (os.cpu_count() or 1) if wall > 0 else total_j / _HZ
        foreign_s = (m1[0] - m0[0]) / _HZ - (own1 - self._own0)
        self.foreign_cpu_pct = max(0.0, 100.0 * foreign_s / capacity_s)


@dataclass(frozen=True)
class Block:
    """One timed block of a round: ``iters`` synchronised calls after ``warmup`` untimed ones."""

    latencies_ms: list[float]
    wall_s: float
    steal_pct: float | None
    foreign_cpu_pct: float | None

    @property
    def iters(self) -> int:
        return len(self.latencies_ms)

    def to_dict(self) -> dict[str, object]:
        return {"latencies_ms": self.latencies_ms, "wall_s": self.wall_s, "steal_pct": self.steal_pct,
                "foreign_cpu_pct": self.foreign_cpu_pct}


def time_block(step: Callable[[], object], sync: Callable[[], None], iters: int, warmup: int = 1,
               clock: Callable[[], float] = time.perf_counter) -> Block:
    """``warmup`` untimed calls (caches and threads come back after the other side's block), then ``iters``
    synchronised calls, each timed; contention is watched over the timed part only."""
    for _ in range(warmup):
        step()
    sync()
    lat: list[float] = []
    with Contention() as c:
        start = now = clock()
        for _ in range(max(iters, 1)):
            t = clock()
            step()
            sync()
            now = clock()
            lat.append((now - t) * 1e3)
    return Block(lat, now - start, c.steal_pct, c.foreign_cpu_pct)


def least_contended(attempt: Callable[[], tuple[T, float | None]], max_steal_pct: float, max_attempts: int
                    ) -> tuple[T, float | None, int]:
    """Run ``attempt() -> (result, steal %)`` until the hypervisor took at most ``max_steal_pct`` of the CPU during
    it (or ``max_attempts`` ran); keep the least-contended result. Returns (result, its steal %, attempts run)."""
    best: tuple[T, float | None] | None = None
    n = 0
    for n in range(1, max_attempts + 1):  # noqa: B007  (n is reported)
        result, steal = attempt()
        if best is None or (steal is not None and (best[1] is None or steal < best[1])):
            best = (result, steal)
        if steal is None or steal <= max_steal_pct:
            break
    assert best is not None
    return best[0], best[1], n


def time_loop_quiet(run: Callable[[], TimingResult], max_steal_pct: float, max_attempts: int
                    ) -> tuple[TimingResult, float | None, int]:
    """A timed loop, re-timed while the hypervisor took more than ``max_steal_pct`` of the CPU during it."""

    def attempt() -> tuple[TimingResult, float | None]:
        before = cpu_times()
        t = run()
        return t, steal_pct(before, cpu_times())

    return least_contended(attempt, max_steal_pct, max_attempts)
