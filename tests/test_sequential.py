"""Sequential stopping, by simulation on this VM's own noise: thousands of A/A pairs and pairs with a 7.7% slowdown,
their rounds resampled from the 25 committed A/A runs (per-round log ratios by timing process, quiet and busy
stretches alike), each run through the runner's own stopping logic (``runner.stopping``: planned looks at 3, 6 and
10 processes and the maximum of 16, the error spent across them)."""
from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from types import SimpleNamespace

from vitbench.measure.stats import looks_for
from vitbench.runner.rounds import RoundsResult
from vitbench.runner.stopping import Comparison, evaluate, still_timed

DATA = Path(__file__).parent.parent / "results/published/2026-12-07-cpu-2vcpu-process-interval/aa-rounds.json"
SLOWER = math.log(1 / 1.077)  # the candidate 7.7% slower


def _simulate(rng: random.Random, runs: list[list[list[float]]], delta: float, processes: int = 16,
              per_process: int = 6) -> Comparison:
    """One pair: a committed run drawn at random; each timing process one of its processes (drawn with
    replacement), its rounds resampled and centred on the run's median (the truth is then exactly ``delta``)."""
    run = rng.choice(runs)
    centre = statistics.median(x for p in run for x in p)
    live = [SimpleNamespace(case=SimpleNamespace(settings=SimpleNamespace(speed_threshold_pct=2.0)))] * 2
    comps = [Comparison(1, 0, "reference")]
    looks = looks_for(processes)
    at_look = {lk.processes: n for n, lk in enumerate(looks, 1)}
    total = RoundsResult(2)
    for p in range(processes):
        proc = rng.choice(run)
        res = RoundsResult(2, target=per_process)
        for _ in range(per_process):
            r = rng.choice(proc) - centre + delta  # ln(candidate samples/s / reference's)
            res.rounds.append({"process": p, "clean": True, "blocks": {
                0: SimpleNamespace(wall_s=1.0, iters=1), 1: SimpleNamespace(wall_s=math.exp(-r), iters=1)}})
        total = total + res
        if p + 1 in at_look:
            n = at_look[p + 1]
            evaluate(comps, total, live, looks[n - 1], n, n == len(looks), p + 1)
            if not still_timed(comps, 2):
                break
    return comps[0]


def test_sequential_stopping_keeps_its_error_rates_on_this_vms_noise():
    runs = list(json.loads(DATA.read_text())["runs"].values())
    rng = random.Random(29)
    n = 2000
    aa = [_simulate(rng, runs, 0.0) for _ in range(n)]
    slow = [_simulate(rng, runs, SLOWER) for _ in range(n)]
    false = sum(c.estimate.verdict in ("faster", "slower") for c in aa) / n
    found = sum(c.estimate.verdict == "slower" for c in slow) / n
    rounds_slow = statistics.fmean(c.rounds_run for c in slow)
    rounds_aa = statistics.fmean(c.rounds_run for c in aa)
    print(f"A/A: false faster/slower {false:.3f}, same {sum(c.estimate.verdict == 'same' for c in aa) / n:.3f}, "
          f"mean rounds {rounds_aa:.1f}; 7.7% slower: found {found:.3f}, mean rounds {rounds_slow:.1f} of 96")
    assert false <= 0.05
    assert found >= 0.95
    assert rounds_slow <= 0.6 * 96  # a clear difference stops early
    assert all(c.frozen and c.why for c in aa + slow)
    stopped = [c for c in slow if c.why.startswith("settled")]
    assert stopped and all(c.processes in (3, 6, 10, 16) and c.rounds_run == 6 * c.processes for c in stopped)


def test_without_sequential_stopping_the_pair_runs_to_the_maximum_at_95_percent():
    runs = list(json.loads(DATA.read_text())["runs"].values())
    looks = looks_for(16, sequential=False)
    assert [(lk.processes, lk.confidence) for lk in looks] == [(16, 0.95)]
    c = _simulate(random.Random(1), runs, SLOWER, processes=3)  # 3 processes: a single look, at 95%
    assert c.processes == 3 and c.confidence == 0.95
