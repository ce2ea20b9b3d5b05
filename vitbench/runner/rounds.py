"""Paired rounds: the sides of a comparison are timed in alternation, block by block, so slow drift of the
machine hits every side alike; each round gives one speed ratio per candidate. Rounds run in several timing
processes (fresh model instances each), and the estimate's interval is over processes (``measure.stats``): a
process's offset does not average out within it. A block the machine was busy during (hypervisor steal or other
processes' CPU time above the limits) makes its round contended: such rounds are re-run, and never count towards
the estimate.

Pure logic over objects with ``block(iters) -> Block``: the runner hands it worker sessions, the tests fakes.
"""
from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..measure.contention import Contention, Limits
from ..measure.stats import CONFIDENCE, RatioEstimate, cluster_interval, process_ratio_estimate
from ..measure.timing import Block, percentile


class SideFailed(Exception):
    """A side's worker died or failed during a block; ``outcome`` says how. ``collateral``: this side did not
    fail, the session it shared with the side that did is gone (it goes on in the next session)."""

    def __init__(self, outcome: Any, collateral: bool = False) -> None:
        super().__init__(getattr(outcome, "error", str(outcome)))
        self.outcome, self.collateral = outcome, collateral


class Timeable(Protocol):
    def block(self, iters: int) -> Block: ...


@dataclass
class RoundsResult:
    """Rounds as run, each ``{"process", "order", "clean", "why", "blocks": {side: Block}}``; results of several
    timing processes add up (``+``), since every process times the same sides."""

    n_sides: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[int, Any] = field(default_factory=dict)  # side -> outcome of its failure
    target: int = 0  # clean rounds asked for

    def __add__(self, other: RoundsResult) -> RoundsResult:
        return RoundsResult(self.n_sides, self.rounds + other.rounds, {**self.failed, **other.failed},
                            self.target + other.target)

    @property
    def attempts(self) -> int:
        return len(self.rounds)

    @property
    def clean_rounds(self) -> int:
        return sum(1 for r in self.rounds if r["clean"])

    @property
    def contended(self) -> bool:
        """Too few clean rounds (under half of those asked for): no confident verdict may come from these."""
        return self.clean_rounds < max(self.target // 2, 1)

    def blocks(self, side: int) -> tuple[list[Block], list[bool]]:
        """A side's blocks in time order and whether each one's round was clean."""
        pairs = [(r["blocks"][side], r["clean"]) for r in self.rounds if side in r["blocks"]]
        return [b for b, _ in pairs], [c for _, c in pairs]

    def used_blocks(self, side: int) -> dict[int, list[Block]]:
        """The blocks a case's row is computed from, by timing process: the clean ones, or all of them if none
        was clean."""
        any_clean = any(r["clean"] for r in self.rounds if side in r["blocks"])
        out: dict[int, list[Block]] = {}
        for r in self.rounds:
            if side in r["blocks"] and (r["clean"] or not any_clean):
                out.setdefault(r.get("process", 0), []).append(r["blocks"][side])
        return out

    def processes(self) -> list[int]:
        return sorted({r.get("process", 0) for r in self.rounds})

    def round_ratios(self, candidate: int, reference: int = 0, clean_only: bool = True,
                     process: int | None = None) -> list[float]:
        """Per round (of one timing process, or all): candidate samples/s over the reference's (same batch size:
        time per call inverted)."""
        out = []
        for r in self.rounds:
            if process is not None and r.get("process", 0) != process:
                continue
            a, b = r["blocks"].get(reference), r["blocks"].get(candidate)
            if (r["clean"] or not clean_only) and a is not None and b is not None:
                out.append((a.wall_s / a.iters) / (b.wall_s / b.iters))
        return out

    def estimate(self, candidate: int, threshold_pct: float, reference: int = 0,
                 confidence: float = CONFIDENCE) -> RatioEstimate:
        """From the clean rounds, with the interval over timing processes at ``confidence``; when too few were
        clean, from all rounds, shown but with the verdict ``contended``."""
        by_process = [self.round_ratios(candidate, reference, not self.contended, p) for p in self.processes()]
        return process_ratio_estimate(by_process, threshold_pct, contended=self.contended, confidence=confidence)

    def why_contended(self) -> str:
        """What made rounds contended, the worst case of each kind."""
        bad = [r for r in self.rounds if not r["clean"]]
        if not bad:
            return ""
        worst: dict[str, float] = {}
        for r in bad:
            for kind in ("steal_pct", "foreign_cpu_pct"):
                if r.get(kind) is not None:
                    worst[kind] = max(worst.get(kind, 0.0), r[kind])
        kinds = sorted({str(r["why"]).split(" ")[0] for r in bad})
        return (f"{len(bad)} of {len(self.rounds)} rounds contended ({', '.join(kinds)}): other processes' CPU up "
                f"to {worst.get('foreign_cpu_pct', 0):.0f}%, hypervisor steal up to {worst.get('steal_pct', 0):.1f}%")

    def gpu_contention(self) -> str | None:
        """Other processes on the GPU over the rounds: 'none', 'N of M rounds', 'unknown' (NVML could not tell in
        some round); None on CPU."""
        seen = [r["gpu_procs"] for r in self.rounds if "gpu_procs" in r]
        if not seen:
            return None
        if any(g is None for g in seen):
            return "unknown"
        busy = sum(1 for g in seen if g)
        return f"other processes in {busy} of {len(seen)} rounds" if busy else "none"

    def gpu_note(self) -> str:
        """What a verdict must say about the GPU: nothing, unless contention there could not be checked."""
        if self.gpu_contention() == "unknown":
            return "GPU contention unknown: NVML could not list the GPU's processes in some rounds"
        return ""

    def contention(self) -> dict[str, float | None]:
        """Mean steal and foreign CPU over all rounds (weighted by time), and the worst round's."""
        out: dict[str, float | None] = {}
        for kind in ("steal_pct", "foreign_cpu_pct"):
            vals = [r[kind] for r in self.rounds if r.get(kind) is not None]
            out[f"{kind}_mean"] = sum(vals) / len(vals) if vals else None
            out[f"{kind}_max"] = max(vals) if vals else None
        return out


def order_for(round_index: int, n: int, rng: random.Random) -> list[int]:
    """Two sides alternate (AB, BA, AB, ...; the caller offsets ``round_index`` by the process, so that with an
    odd number of rounds per process each side still goes first equally often); more are shuffled each round
    (seeded)."""
    if n == 2:
        return [0, 1] if round_index % 2 == 0 else [1, 0]
    order = list(range(n))
    rng.shuffle(order)
    return order


def run_rounds(sides: list[Timeable], block_iters: list[int], rounds: int, limits: Limits, seed: int = 0,
               on_round: Callable[[int, int], None] | None = None,
               watch: Callable[[], Contention] = Contention, failed: dict[int, Any] | None = None,
               process: int = 0, left: set[int] | None = None) -> RoundsResult:
    """Time ``rounds`` clean rounds in timing process number ``process`` (each: one block per side, in
    alternating order; process 1 starts where process 0 would have gone on). Contention is judged per
    round, over the whole round (long enough for /proc/stat's coarse counters). Contended rounds are re-run,
    up to ``2 * rounds`` attempts; once half the rounds asked for have run with fewer than a quarter of them clean,
    the machine is busy and it stops early. A side that fails leaves the rounds; the others go on. ``left``: sides
    no longer timed (their comparisons are settled: ``stopping``)."""
    rng = random.Random(seed)
    res = RoundsResult(len(sides), target=rounds, failed=dict(failed or {}))  # failed before: left out
    gone: set[int] = set()  # sides whose session ended with another side's failure: out of this process's rounds
    while res.clean_rounds < rounds and res.attempts < 2 * rounds:
        if res.attempts >= max(4, rounds // 2) and res.clean_rounds < res.attempts / 4:
            break  # the machine is busy: more rounds would only cost time
        alive = [i for i in range(len(sides)) if i not in res.failed and i not in gone and i not in (left or ())]
        if not alive:
            break
        order = [alive[j] for j in order_for(res.attempts + process, len(alive), rng)]
        entry: dict[str, Any] = {"process": process, "order": order, "blocks": {}, "clean": True, "why": None}
        with watch() as c:  # the whole round, from here: our workers' CPU time is ours, the rest is foreign
            cpu0 = limits.our_cpu() if limits.our_cpu else 0.0
            for i in order:
                try:
                    b = sides[i].block(block_iters[i])
                except SideFailed as e:
                    if e.collateral:
                        gone.add(i)
                    else:
                        res.failed[i] = e.outcome
                    entry.update(clean=False, why=entry["why"] or "a side failed")
                    continue
                entry["blocks"][i] = b
                if not limits.our_cpu:
                    c.add_ours(b.cpu_s)
            if limits.our_cpu:
                c.add_ours(limits.our_cpu() - cpu0)
        entry.update(steal_pct=c.steal_pct, foreign_cpu_pct=c.foreign_cpu_pct)
        gpu = 0
        if limits.foreign_gpu_procs:
            gpu = entry["gpu_procs"] = limits.foreign_gpu_procs()  # None: NVML could not tell
        why = limits.why_contended(c.steal_pct, c.foreign_cpu_pct, gpu)
        if why:
            entry.update(clean=False, why=entry["why"] or why)
        res.rounds.append(entry)
        if on_round:
            on_round(res.clean_rounds, res.attempts)
    return res


def summarize(by_process: dict[int, list[Block]], batch_size: int) -> dict[str, Any]:
    """A case's timing columns over the timed iterations of its (clean) blocks, as timm defines them (samples over
    the wall time of the timed loop, mean ms per batch), plus the 95% interval of its samples/s over timing
    processes (each process's samples over its wall time, on the log scale, as the speed ratio's)."""
    blocks = [b for bs in by_process.values() for b in bs]
    lat = [v for b in blocks for v in b.latencies_ms]
    if not lat:
        return {}
    wall = sum(b.wall_s for b in blocks)
    per_process = [math.log(sum(b.iters for b in bs) * batch_size / w) for bs in by_process.values()
                   if (w := sum(b.wall_s for b in bs)) > 0]
    _, lo, hi = (math.exp(v) if not math.isnan(v) else math.nan for v in cluster_interval(per_process)[:3])

    return {
        "samples_per_sec": len(lat) * batch_size / wall, "step_time_ms": statistics.fmean(lat),
        "latency_ms_p50": percentile(lat, 50), "latency_ms_p90": percentile(lat, 90),
        "latency_ms_p99": percentile(lat, 99), "latency_ms_mean": statistics.fmean(lat),
        "latency_ms_stdev": statistics.stdev(lat) if len(lat) > 1 else 0.0, "latency_ms_min": min(lat),
        "iters": len(lat), "timed_s": wall, "rounds": len(blocks), "timing_processes": len(per_process),
        "samples_per_sec_ci_low": lo if not math.isnan(lo) else None,
        "samples_per_sec_ci_high": hi if not math.isnan(hi) else None,
    }


MIN_BLOCK_S = 0.15  # a round of two such blocks is long enough for /proc/stat's 10 ms counters


def block_iters_for(iter_s: float, rounds: int, min_iters: int, min_seconds: float, max_iters: int) -> int:
    """Calls per block so that, over ``rounds`` blocks, a side gets at least ``min_iters`` calls and
    ``min_seconds`` of timing (at the warm-up's pace), every block lasts at least MIN_BLOCK_S, and no side gets
    more than ``max_iters`` calls."""
    per_round_s = max(min_seconds / rounds, MIN_BLOCK_S)
    n = max(math.ceil(min_iters / rounds), math.ceil(per_round_s / iter_s) if iter_s > 0 else 1, 1)
    return max(1, min(n, max_iters // rounds if max_iters >= rounds else 1))
