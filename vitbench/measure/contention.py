"""Contention: was the machine busy while we timed? In one place: hypervisor steal and other processes' CPU time
from /proc/stat, measured against the CPUs this run may use (affinity, cgroup quota, a Ray reservation), our own
workers' CPU time, other processes on the GPU (NVML), the limits that make a round contended, and re-running a
contended attempt.

Why against the run's CPUs: a run confined to 2 CPUs of a 64-CPU host (a container, a Ray unit) is halved by one
busy process on its CPUs, which is 1.6% of the host; as a share of the 2 CPUs it may use, it is 50%.
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class RunCpus:
    """The CPUs this run may use: how many (the denominator of ``foreign_cpu_pct``), which ones /proc/stat is read
    for (None: all), and where the count comes from."""

    count: float
    cpus: frozenset[int] | None
    source: str

    def describe(self) -> str:
        return f"{self.count:g} CPUs ({self.source})"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs the cgroup quota allows this process (v2 ``cpu.max`` up the hierarchy, or v1 ``cpu.cfs_quota_us``), the
    smallest on the way to the root; None without a quota."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    best: float | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            d = root / path.lstrip("/")
            while True:
                try:
                    quota, period = (d / "cpu.max").read_text().split()[:2]
                    if quota != "max":
                        q = int(quota) / int(period)
                        best = q if best is None else min(best, q)
                except (OSError, ValueError):
                    pass
                if d == root or root not in d.parents:
                    break
                d = d.parent
        elif "cpu" in controllers.split(","):  # v1
            d = root / "cpu" / path.lstrip("/")
            try:
                quota_us = int((d / "cpu.cfs_quota_us").read_text())
                period_us = int((d / "cpu.cfs_period_us").read_text())
                if quota_us > 0 and period_us > 0:
                    q = quota_us / period_us
                    best = q if best is None else min(best, q)
            except (OSError, ValueError):
                pass
    return best


def run_cpus() -> RunCpus:
    """The CPUs this run may use: its CPU affinity, capped by a cgroup CPU quota and by ``VITBENCH_CPUS`` (what a
    Ray unit reserved). Read once per process and reservation."""
    return _run_cpus(os.environ.get("VITBENCH_CPUS"))


@functools.lru_cache(maxsize=4)
def _run_cpus(reserved: str | None) -> RunCpus:
    total = os.cpu_count() or 1
    try:
        affinity: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    count, source = float(total), f"all {total} CPUs"
    cpus = None
    if affinity is not None and len(affinity) < total:
        count, source, cpus = float(len(affinity)), f"affinity: {len(affinity)} of {total} CPUs", frozenset(affinity)
    quota = _cgroup_quota()
    if quota is not None and quota < count:
        count, source = quota, f"cgroup CPU quota {quota:g}"
    if reserved:
        try:
            r = float(reserved)
            if 0 < r < count:
                count, source = r, f"Ray reservation of {r:g} CPUs"
        except ValueError:
            pass
    return RunCpus(count, cpus, source)


def machine_jiffies(cpus: Iterable[int] | None = None) -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies from /proc/stat (Linux), over all CPUs or over ``cpus``; None elsewhere. Busy is
    time some process (or the kernel for one) ran: user, nice, system, irq, softirq."""
    want = None if cpus is None else {f"cpu{c}" for c in cpus}
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu")]
    except OSError:
        return None
    busy = steal = total = 0
    for parts in lines:
        if (want is None and parts[0] != "cpu") or (want is not None and parts[0] not in want):
            continue
        try:
            v = [int(x) for x in parts[1:]]
        except ValueError:
            return None
        v += [0] * (8 - len(v))
        busy += v[0] + v[1] + v[2] + v[5] + v[6]
        steal += v[7]
        total += sum(v[:8])
    return (busy, steal, total) if total else None


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies over all CPUs from /proc/stat (Linux); None elsewhere."""
    m = machine_jiffies()
    return None if m is None else (m[1], m[2])


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of CPU time the hypervisor took from this machine between two readings: high values mean the
    timings were taken on a contended virtual machine."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


class Contention:
    """Watches one window: hypervisor steal, and the CPU time that processes other than ours used on the CPUs this
    run may use (busy time from /proc/stat minus this process's own CPU time and whatever ``add_ours`` was told,
    e.g. our workers' CPU time), both as % of the run's CPU capacity over the window (``RunCpus.count`` CPUs).
    Steal is blind to other processes on the same VM; ``foreign_cpu_pct`` is not. /proc/stat counts in jiffies
    (10 ms per CPU), so a window needs a few hundred ms for a figure good to a few percent."""

    def __init__(self, cpus: RunCpus | None = None) -> None:
        self.cpus = cpus or run_cpus()

    def __enter__(self) -> Contention:
        self._m0 = machine_jiffies(self.cpus.cpus)
        self._own0, self._t0 = time.process_time(), time.perf_counter()
        self._ours = 0.0
        self.steal_pct: float | None = None
        self.foreign_cpu_pct: float | None = None
        self.wall_s = 0.0
        return self

    def add_ours(self, cpu_s: float) -> None:
        self._ours += cpu_s

    def __exit__(self, *exc: object) -> None:
        m1, own1, t1 = machine_jiffies(self.cpus.cpus), time.process_time(), time.perf_counter()
        m0 = self._m0
        if m0 is None or m1 is None or m1[2] <= m0[2]:
            return
        total_j = m1[2] - m0[2]
        self.steal_pct = 100.0 * (m1[1] - m0[1]) / total_j
        # the run's CPU-seconds in the window: jiffies are coarse (10 ms), wall time x CPUs is not
        wall = self.wall_s = t1 - self._t0
        capacity_s = wall * self.cpus.count if wall > 0 else total_j / _HZ
        foreign_s = (m1[0] - m0[0]) / _HZ - (own1 - self._own0) - self._ours
        self.foreign_cpu_pct = max(0.0, 100.0 * foreign_s / capacity_s)


@dataclass
class Limits:
    """When a round is contended. ``foreign_gpu_procs``: other processes on the GPU now (CUDA; None on CPU), a
    callable returning their count or None when NVML cannot tell; ``our_cpu``: CPU seconds of our workers so far
    (else: what blocks report)."""

    max_steal_pct: float
    max_foreign_cpu_pct: float
    foreign_gpu_procs: Callable[[], int | None] | None = None
    our_cpu: Callable[[], float] | None = None

    def why_contended(self, steal: float | None, foreign: float | None, gpu_procs: int | None = 0) -> str | None:
        if steal is not None and steal > self.max_steal_pct:
            return f"steal {steal:.1f}% > {self.max_steal_pct:g}%"
        if foreign is not None and foreign > self.max_foreign_cpu_pct:
            return f"other processes used {foreign:.0f}% of the CPU > {self.max_foreign_cpu_pct:g}%"
        if gpu_procs:
            return f"{gpu_procs} other process(es) on the GPU"
        return None


def cpu_of(pids: Callable[[], Iterable[int | None]]) -> Callable[[], float]:
    """CPU seconds used so far by the processes ``pids()`` names and their children (OpenMP threads spinning after
    a block included), so a round's contention counts only other processes' CPU as foreign."""
    import psutil

    procs: list[psutil.Process] = []
    for pid in pids():
        try:
            procs.append(psutil.Process(pid))
        except (psutil.Error, TypeError, ValueError):
            pass

    def used() -> float:
        total = 0.0
        for p in procs:
            try:
                for q in (p, *p.children(recursive=True)):
                    t = q.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                continue
        return total

    return used


def gpu_others(device: str, ours: set[int]) -> Callable[[], int | None]:
    """Processes on the case's GPU other than this run's (NVML); None when NVML cannot tell (no library, no
    driver access): contention on the GPU is then unknown, never 'none'. Matched by pid where NVML's pids are ours
    (same pid namespace); in a container whose pids NVML cannot see, counted beyond our own sessions instead."""
    index = int(device.partition(":")[2] or 0)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        index = int(visible[index])  # NVML counts every GPU: a Ray task's cuda:0 is the GPU Ray gave it

    def count() -> int | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(index)
                pids = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)}
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001  (no NVML: contention on the GPU unknown)
            return None
        mine = ours | {os.getpid()}
        if pids & mine:
            return len(pids - mine)
        return max(0, len(pids) - len(ours) - 1)  # the parent may hold a context too: give it the benefit

    return count


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
