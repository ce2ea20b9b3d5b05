"""Timing primitives: sync-aware timed blocks with every latency kept (contention watched over each, see
``contention``), percentiles."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .contention import Contention


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


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
