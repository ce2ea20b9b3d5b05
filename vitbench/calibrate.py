"""The machine's noise floor: an A/A pair (one model against itself) timed exactly as ``run`` times a pair. Its
interval is the smallest speed difference this machine can resolve with these settings; the time it took says
what that costs. Half-widths shrink as 1/sqrt(rounds), which gives the rounds a tighter target would need."""
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

    @property
    def ok(self) -> bool:
        """Measured, on a quiet machine, with an interval that contains 1.00 (as an A/A's must)."""
        return (self.verdict not in ("failed", "contended") and self.low is not None and self.high is not None
                and self.low <= 1.0 <= self.high)

    @property
    def half_width_pct(self) -> float | None:
        if self.low is None or self.high is None:
            return None
        return 100.0 * (self.high - self.low) / 2

    def rounds_for(self, target_pct: float) -> int | None:
        h = self.half_width_pct
        return None if not h else max(6, math.ceil(self.rounds * (h / target_pct) ** 2))


def suite_text(model: str, batch_size: int, img_size: int | None, rounds: int | None, processes: int | None,
               min_seconds: float | None) -> str:
    defaults: dict[str, Any] = {"batch_sizes": [batch_size], "precision": "fp32", "compile": ["eager"]}
    for k, v in (("img_size", img_size), ("rounds", rounds), ("processes", processes), ("min_seconds", min_seconds)):
        if v is not None:
            defaults[k] = v
    return yaml.safe_dump({"name": "calibrate", "description": "A/A: one model against itself",
                           "defaults": defaults,
                           "pairs": [{"name": f"aa_{model}", "reference": {"provider": "timm", "model": model},
                                      "candidates": [{"provider": "timm", "model": model,
                                                      "label": f"{model} (A/A)"}]}]},
                          sort_keys=False)


def calibrate(model: str, device: str, batch_size: int, img_size: int | None, rounds: int | None,
              processes: int | None, min_seconds: float | None, out: Path | None, env_row: dict[str, Any]
              ) -> Calibration:
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
    path.write_text(suite_text(model, batch_size, img_size, rounds, processes, min_seconds))
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
                           why, out_dir, None)
    p = pairs[0]

    def num(k: str) -> float | None:
        try:
            return float(p[k])
        except (TypeError, ValueError):
            return None

    note = p.get("speed_note") or ""
    return Calibration(model, device, batch_size, num("speed_ratio"), num("speed_ratio_ci_low"),
                       num("speed_ratio_ci_high"), int(p["rounds"] or 0), c.settings.processes, p["speed_verdict"],
                       seconds, note, out_dir, num("reference_samples_per_sec"))


def summary_lines(cal: Calibration) -> list[str]:
    """What calibrate prints: the A/A estimate, the resolvable difference, and what tighter would cost."""
    head = f"A/A {cal.model} bs{cal.batch_size} on {cal.device}"
    if cal.verdict == "failed":
        return [f"{head}: could not be measured: {cal.note}"]
    if cal.ratio is None or cal.low is None or cal.high is None:
        return [f"{head}: no estimate ({cal.verdict}): {cal.note}"]
    h = cal.half_width_pct or 0.0
    which = "rounds, all kept though contended" if cal.verdict == "contended" else "clean rounds"
    lines = [f"{head}: {cal.ratio:.3f}x [{cal.low:.3f}, {cal.high:.3f}] {cal.verdict}, {cal.rounds} {which} over "
             f"{cal.processes} processes, {cal.seconds:.0f} s (model at {cal.samples_per_sec or 0:.1f} samples/s)"]
    if cal.verdict == "contended":
        lines.append(f"the machine was busy: {cal.note}. Calibrate again when nothing else runs.")
        return lines
    if not cal.low <= 1.0 <= cal.high:
        lines.append("warning: the interval of a model against itself excludes 1.00: something on this machine "
                     "favours one side (a busy neighbour, thermal or frequency changes); distrust close verdicts.")
    lines.append(f"noise floor: differences smaller than +-{h:.1f}% cannot be resolved with these settings "
                 f"(interval half-width; a speed ratio outside [{1 - h / 100:.3f}, {1 + h / 100:.3f}] can be).")
    for target in (1.0, 2.0, 5.0):
        n = cal.rounds_for(target)
        if n and target < h:
            cost = cal.seconds * n / max(cal.rounds, 1)
            lines.append(f"to resolve +-{target:g}%: about {n} rounds (at most ~{cost:.0f} s for this model; suite "
                         f"setting 'rounds: {n}')")
    return lines

