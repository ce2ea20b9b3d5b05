"""Timing primitives: sync-aware timed blocks with every latency kept, /proc/stat readings (hypervisor steal,
other processes' CPU time), percentiles, and re-running a contended attempt."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    """Watches one window: hypervisor steal, and the CPU time that processes other than ours used (machine busy
    time from /proc/stat minus this process's own CPU time and whatever ``add_ours`` was told, e.g. the CPU time
    our workers report), both as % of the machine's CPU time. Steal is blind to other processes on the same VM;
    ``foreign_cpu_pct`` is not. /proc/stat counts in jiffies (10 ms per CPU), so a window needs a few hundred ms
    for a figure good to a few percent."""

    def __enter__(self) -> Contention:
        self._m0, self._own0, self._t0 = machine_jiffies(), time.process_time(), time.perf_counter()
        self._ours = 0.0
        self.steal_pct: float | None = None
        self.foreign_cpu_pct: float | None = None
        self.wall_s = 0.0
        return self

    def add_ours(self, cpu_s: float) -> None:
        self._ours += cpu_s

    def __exit__(self, *exc: object) -> None:
        m1, own1, t1 = machine_jiffies(), time.process_time(), time.perf_counter()
        m0 = self._m0
        if m0 is None or m1 is None or m1[2] <= m0[2]:
            return
        total_j = m1[2] - m0[2]
        self.steal_pct = 100.0 * (m1[1] - m0[1]) / total_j
        # the machine's CPU-seconds in the window: jiffies are coarse (10 ms), wall time x CPUs is not
        wall = self.wall_s = t1 - self._t0
        capacity_s = wall * (os.cpu_count() or 1) if wall > 0 else total_j / _HZ
        foreign_s = (m1[0] - m0[0]) / _HZ - (own1 - self._own0) - self._ours
        self.foreign_cpu_pct = max(0.0, 100.0 * foreign_s / capacity_s)


@dataclass(frozen=True)
class Block:
    """One timed block of a round: ``iters`` synchronised calls after ``warmup`` untimed ones."""

    latencies_ms: list[float]
    wall_s: float
    steal_pct: float | None
    foreign_cpu_pct: float | None
    cpu_s: float = 0.0  # this process's CPU time over the whole block, warm-up included


    @property
    def iters(self) -> int:
        return len(self.latencies_ms)

    def to_dict(self) -> dict[str, object]:
        return {"latencies_ms": self.latencies_ms, "wall_s": self.wall_s, "steal_pct": self.steal_pct,
                "foreign_cpu_pct": self.foreign_cpu_pct, "cpu_s": self.cpu_s}


def time_block(step: Callable[[], object], sync: Callable[[], None], iters: int, warmup: int = 1,
               clock: Callable[[], float] = time.perf_counter) -> Block:
    """``warmup`` untimed calls (caches and threads come back after the other side's block), then ``iters``
    synchronised calls, each timed; contention is watched over the timed part only."""
    cpu0 = time.process_time()
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
    return Block(lat, now - start, c.steal_pct, c.foreign_cpu_pct, time.process_time() - cpu0)


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
