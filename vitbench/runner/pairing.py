"""Which sides are timed together and what each is compared with: the groups of a run (a pair at one setting, every
compile mode), a candidate's reference, a compiled side's baseline modes, the pair's A/A control, and the pairs.csv
row of each comparison. Shared by the local and the Ray executor."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..measure.stats import RatioEstimate
from ..modes import MODE_BASELINES, MODE_ORDER
from ..suite import Case


@dataclass
class GroupSide:
    """One side of a timing group. ``record``: False for a partner already measured (``--resume``) or the A/A
    control, timed only for the pairing (no set-up job, no cases.csv row)."""

    case: Case
    record: bool
    row: dict[str, Any] = field(default_factory=dict)
    ok: bool = True  # set up fine: takes part in the timing


def group_key(c: Case) -> tuple:
    return c.pair, c.device, c.precision, c.batch_size, c.settings.img_size, c.settings.tokens, c.settings.dim


def control_case(ref: Case) -> Case:
    """The pair's A/A control: a second instance of the reference (same provider, model, weights, mode), timed in
    the same rounds; in its own timing process with ``control: own_process`` (the spread of a cross-process pair,
    as a Keras side against a torch one is timed)."""
    side = dataclasses.replace(ref.side, label=f"{ref.label} (A/A control)")
    own = ref.settings.control == "own_process"
    return dataclasses.replace(ref, role="control", index=-1, side=side,
                               settings=ref.settings.model_copy(update={"own_process": own}))


def plan_groups(cases: list[Case], partners: list[Case]) -> list[list[GroupSide]]:
    """Groups of cases timed together in paired rounds: every case of one pair at one device, precision, batch
    size and input, whatever its compile mode, so that a candidate vs its reference and one compile mode vs another
    are both measured side by side. References first (eager, then the compiled modes), then the A/A controls the
    pair asks for (one per reference mode), then the candidates. A reference the run does not record
    (``--resume``, ``--only``) joins only where a candidate is compared with it: the one at the candidate's compile
    mode, else its eager case (a Keras graph/XLA candidate against timm eager)."""
    todo = {c.case_id for c in cases}
    refs = {(group_key(c), c.compile_mode): c for c in partners if c.role == "reference"}
    groups: dict[tuple, dict[str, Case]] = {}
    for c in cases:
        g = groups.setdefault(group_key(c), {})
        g[c.case_id] = c
        if c.role != "reference":
            ref = refs.get((group_key(c), c.compile_mode)) or refs.get((group_key(c), "eager"))
            if ref is not None:
                g.setdefault(ref.case_id, ref)
    out = []
    for g in groups.values():
        for c in [c for c in g.values() if c.role == "reference" and c.settings.control]:
            ctl = control_case(c)
            g[ctl.case_id] = ctl
        order = {"reference": 0, "control": 1, "candidate": 2}
        sides = sorted(g.values(), key=lambda c: (order[c.role], MODE_ORDER.index(c.compile_mode)
                                                  if c.role != "candidate" else 0))
        out.append([GroupSide(c, c.case_id in todo) for c in sides])
    return out


def reference_side(side: GroupSide, group: list[GroupSide], role: str = "reference") -> GroupSide | None:
    """The reference a candidate is compared with: the one at its compile mode, else the eager one (``role``
    'control': the A/A control at that mode)."""
    refs = {s.case.compile_mode: s for s in group if s.case.role == role}
    return refs.get(side.case.compile_mode) or refs.get("eager")


def mode_baselines(side: GroupSide, group: list[GroupSide]) -> list[GroupSide]:
    """The same implementation (label, framework, backend) at the modes a compiled side is compared with."""
    same = {s.case.compile_mode: s for s in group if s is not side and (s.case.role, s.case.label, s.case.framework,
            s.case.backend) == (side.case.role, side.case.label, side.case.framework, side.case.backend)}
    return [same[m] for m in MODE_BASELINES.get(side.case.compile_mode, ()) if m in same]


def against_control(est: RatioEstimate, vs_control: RatioEstimate | None) -> tuple[str, str]:
    """A candidate's verdict against its reference, checked against the pair's A/A control: a faster/slower that
    the candidate does not also show against the control (a second instance of the reference in the same rounds)
    does not stand out from instance-to-instance noise and becomes inconclusive. Returns (verdict, note)."""
    if vs_control is None or est.verdict not in ("faster", "slower") or vs_control.verdict == est.verdict:
        return est.verdict, ""
    return "inconclusive", (f"{est.verdict} than the reference but not than its A/A control (vs control "
                            f"{_interval(vs_control)} {vs_control.verdict})")


def _interval(e: RatioEstimate) -> str:
    if math.isnan(e.low):
        return f"{e.ratio:.3f}"
    return f"{e.ratio:.3f} [{e.low:.3f}, {e.high:.3f}]"


def pair_row(side: GroupSide, ref: GroupSide | None, est: RatioEstimate | None, result: Any,
             comparison: str = "reference", note: str = "", stop: Any = None) -> dict[str, Any]:
    """One line of pairs.csv: a candidate at one setting against its reference (``comparison`` 'reference'), a
    compiled side against the same implementation at a baseline mode ('compile'), or the A/A control against the
    reference ('control'); only 'reference' rows carry numerics columns. ``note``: why the verdict is what it
    is, beyond the estimate's own; ``stop``: where sequential stopping froze it (``stopping.Comparison``)."""
    c, r = side.case, side.row
    looked = stop if stop is not None and stop.look else None  # frozen at a look: its figures are that look's
    if est is None:
        why = "no reference timed beside it" if ref is None else (side.row.get("error") or "not timed")
        ratio = lo = hi = None
        v = "inconclusive" if ref is not None and side.row.get("status") == "ok" else "not measured"
        rounds = processes = 0
    else:
        ratio, lo, hi, rounds, processes = est.ratio, est.low, est.high, est.rounds, est.processes
        v = est.verdict
        why = result.why_contended() if v == "contended" else ""
        if math.isnan(est.low) and v != "contended":
            why = f"{est.processes} timing process(es): too few for an interval over processes (3 or more)"
        why = "; ".join(x for x in (why, note, result.gpu_note()) if x)
    return {
        "pair": c.pair, "label": c.label, "framework": c.framework, "backend": c.backend, "device": c.device,
        "compile_mode": c.compile_mode, "precision": c.precision, "batch_size": c.batch_size,
        "img_size": r.get("img_size", c.settings.img_size), "tokens": c.settings.tokens,
        "reference_label": ref.case.label if ref else None, "reference_compile_mode": ref.case.compile_mode if ref
        else None, "comparison": comparison, "speed_ratio": ratio, "speed_ratio_ci_low": lo,
        "speed_ratio_ci_high": hi, "confidence": looked.confidence if looked and est is not None else None,
        "interval_method": est.method if est is not None else None, "rounds": rounds, "processes": processes,
        "rounds_run": looked.rounds_run if looked else result.attempts,
        "contended_rounds": looked.contended_rounds if looked else result.attempts - result.clean_rounds,
        "stopped_at_round": looked.rounds_run if looked else None,
        "stopped_at_process": looked.processes if looked else None,
        "stop_reason": stop.why if stop is not None else None,
        "threshold_pct": c.settings.speed_threshold_pct, "speed_verdict": v, "speed_note": why,
        "samples_per_sec": r.get("samples_per_sec"),
        "reference_samples_per_sec": ref.row.get("samples_per_sec") if ref else None,
        "cpu_steal_pct": r.get("cpu_steal_pct"), "foreign_cpu_pct": r.get("foreign_cpu_pct"),
        "contention_cpus": r.get("contention_cpus"), "gpu_contention": r.get("gpu_contention"),
        "status": r.get("status"), **({"numerics_status": r.get("numerics_status"),
                                       "max_abs_diff": r.get("max_abs_diff"), "cosine_sim": r.get("cosine_sim"),
                                       "numerics_error": r.get("numerics_error")} if comparison == "reference"
                                      else {}), "case_id": c.case_id,
        "reference_case_id": ref.case.case_id if ref else None,
    }

