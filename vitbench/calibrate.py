"""The machine's noise floor: an A/A pair (one model against itself) timed exactly as ``run`` times a pair. Its
interval is the smallest speed difference this machine can resolve with these settings; the time it took says
what that costs. ``cross_process``: the two instances in timing processes of their own, as a Keras side and a
torch side are timed (the spread between processes is then part of every round). Half-widths shrink about as
1/sqrt(rounds) at a fixed number of rounds per process, which gives the rounds a tighter target would need."""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Calibration:
    model: str
    device: str
    batch_size: int
    ratio: float | None
    low: float | None
    high: float | None
    rounds: int
    processes: int
    verdict: str
    seconds: float
    note: str
    out_dir: Path
    samples_per_sec: float | None
    cross_process: bool = False

    @property
    def ok(self) -> bool:
        """Measured, on a quiet machine, with an interval that contains 1.00 (as an A/A's must)."""
        return (self.verdict not in ("failed", "contended") and self.low is not None and self.high is not None
                and self.low <= 1.0 <= self.high)

    @property
    def half_width_pct(self) -> float | None:
        """Half the interval's width on the log scale, in percent (a symmetric +-h%)."""
        if self.low is None or self.high is None or self.low <= 0:
            return None
        return 50.0 * math.log(self.high / self.low)

    def processes_for(self, target_pct: float) -> int | None:
        """Timing processes (at today's rounds per process) for a half-width of ``target_pct``: the interval is over
        processes, so its width falls about as 1/sqrt(processes) (at least 6 for a 95% interval)."""
        h, k = self.half_width_pct, self.processes
        if not h or k < 2:
            return None
        return max(6, math.ceil(k * (h / target_pct) ** 2))


def suite_text(model: str, batch_size: int, img_size: int | None, rounds: int | None, processes: int | None,
               min_seconds: float | None, cross_process: bool = False) -> str:
    # the noise at a fixed number of processes: an A/A pair stopped at its first settled look would say less
    defaults: dict[str, Any] = {"batch_sizes": [batch_size], "precision": "fp32", "compile": ["eager"],
                                "sequential": False}
    for k, v in (("img_size", img_size), ("rounds", rounds), ("processes", processes), ("min_seconds", min_seconds)):
        if v is not None:
            defaults[k] = v
    return yaml.safe_dump({"name": "calibrate", "description": "A/A: one model against itself",
                           "defaults": defaults,
                           "pairs": [{"name": f"aa_{model}", "reference": {"provider": "timm", "model": model},
                                      "candidates": [{"provider": "timm", "model": model,
                                                      "label": f"{model} (A/A)",
                                                      **({"own_process": True} if cross_process else {})}]}]},
                          sort_keys=False)


def calibrate(model: str, device: str, batch_size: int, img_size: int | None, rounds: int | None,
              processes: int | None, min_seconds: float | None, out: Path | None, env_row: dict[str, Any],
              cross_process: bool = False) -> Calibration:
    from .errors import InputError
    from .providers import check_side
    from .runner.executor import Runner
    from .suite import Side, expand, load_suite

    problem = check_side(Side(provider="timm", model=model))
    if problem:
        raise InputError(f"--model: {problem}")
    if out is not None and (out / "cases.csv").exists():
        raise InputError(f"--out {out}: it already holds results (cases.csv); choose another --out")
    out_dir = out or Path(tempfile.mkdtemp(prefix="vitbench-calibrate-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "suite.yaml"
    path.write_text(suite_text(model, batch_size, img_size, rounds, processes, min_seconds, cross_process))
    cases = expand(load_suite(path), device)
    t0 = time.perf_counter()
    runner = Runner(out_dir, env_row)
    rows = runner.run(cases)
    seconds = time.perf_counter() - t0
    failed = [r for r in rows if r["status"] != "ok"]
    pairs = runner.store.pair_rows()
    c = cases[1]
    if failed or not pairs:
        why = "; ".join(f"{r['label']}: {r['status']}: {r['error']}" for r in failed) or "no pair row"
        return Calibration(model, device, batch_size, None, None, None, 0, c.settings.processes, "failed", seconds,
                           why, out_dir, None, cross_process)
    p = pairs[0]

    def num(k: str) -> float | None:
        try:
            return float(p[k])
        except (TypeError, ValueError):
            return None

    note = p.get("speed_note") or ""
    return Calibration(model, device, batch_size, num("speed_ratio"), num("speed_ratio_ci_low"),
                       num("speed_ratio_ci_high"), int(p["rounds"] or 0), int(p.get("processes") or 0),
                       p["speed_verdict"], seconds, note, out_dir, num("reference_samples_per_sec"), cross_process)


def summary_lines(cal: Calibration) -> list[str]:
    """What calibrate prints: the A/A estimate, the resolvable difference, and what tighter would cost."""
    head = f"A/A {cal.model} bs{cal.batch_size} on {cal.device}" + (
        " (cross-process: each instance in a timing process of its own)" if cal.cross_process else "")
    if cal.verdict == "failed":
        return [f"{head}: could not be measured: {cal.note}"]
    if cal.ratio is None or cal.low is None or cal.high is None:
        return [f"{head}: no interval ({cal.verdict}): {cal.note or 'nothing measured'}"]
    h = cal.half_width_pct or 0.0
    which = "rounds, all kept though contended" if cal.verdict == "contended" else "clean rounds"
    lines = [f"{head}: {cal.ratio:.3f}x [{cal.low:.3f}, {cal.high:.3f}] {cal.verdict}, {cal.rounds} {which} over "
             f"{cal.processes} timing processes, {cal.seconds:.0f} s (model at {cal.samples_per_sec or 0:.1f} "
             "samples/s)"]
    if cal.verdict == "contended":
        lines.append(f"the machine was busy: {cal.note}. Calibrate again when nothing else runs.")
        return lines
    if not cal.low <= 1.0 <= cal.high:
        lines.append("warning: the interval of a model against itself excludes 1.00: something on this machine "
                     "favours one side (a busy neighbour, thermal or frequency changes); distrust close verdicts.")
    lines.append(f"noise floor: differences smaller than +-{h:.1f}% cannot be resolved with these settings "
                 f"(interval half-width; a speed ratio outside [{math.exp(-h / 100):.3f}, {math.exp(h / 100):.3f}] "
                 "can be).")
    per = max(1, round(cal.rounds / max(cal.processes, 1)))
    for target in (1.0, 2.0, 5.0):
        n = cal.processes_for(target)
        if n and target < h:
            cost = cal.seconds * n / max(cal.processes, 1)
            lines.append(f"to resolve +-{target:g}%: about {n} timing processes of {per} rounds (at most ~{cost:.0f} "
                         f"s for this model; suite settings 'processes: {n}, rounds: {n * per}')")
    return lines

