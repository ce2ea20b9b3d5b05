"""Sequential stopping of a timing group: after each planned look (``measure.stats.looks_for``: 3, 6 and 10 timing
processes and the maximum, the error spent across them) every comparison whose verdict is settled (faster or slower
beyond the threshold band, checked against the pair's A/A control, or same inside it) is frozen at that look; a
side leaves the rounds once every comparison it drives is frozen, and the group stops when none is left. The
intervals of all looks hold together at the run's confidence, so a verdict taken at whichever look settled it keeps
that confidence; a close call (a `same` needs a narrow interval) goes on to the maximum.

What drives a side: a candidate's comparison with its reference and a compiled side's with its baseline modes. The
A/A control's own comparison does not hold the group: the control stays while a candidate's verdict still needs
checking against it, and its row is frozen when it leaves.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..measure.stats import CONFIDENCE, Look, RatioEstimate
from .pairing import GroupSide, against_control, mode_baselines, reference_side

SETTLED = ("faster", "slower", "same")


@dataclass
class Comparison:
    """One pairs.csv row to come: live side ``j`` against live side ``k`` (None: no partner timed beside it);
    ``control``: the live index of the A/A control its verdict is checked against."""

    j: int
    k: int | None
    kind: str  # reference | control | compile
    control: int | None = None
    estimate: RatioEstimate | None = None
    note: str = ""
    frozen: bool = False
    look: int = 0  # 1-based index of the look it was frozen at (0: not yet)
    processes: int = 0  # timing processes done when it was frozen
    confidence: float = 0.0  # of the interval at that look
    rounds_run: int = 0  # rounds run (clean or not) when it was frozen
    contended_rounds: int = 0
    why: str = ""  # why it stopped where it did

    @property
    def drives(self) -> bool:
        return self.kind != "control"


def comparisons(group: list[GroupSide], live: list[GroupSide]) -> list[Comparison]:
    """The comparisons of a group's live sides, in pairs.csv order: each recorded candidate against its reference,
    each A/A control against the reference, each recorded compiled side against its baseline modes."""
    at = {id(s): i for i, s in enumerate(live)}

    def index(s: GroupSide | None) -> int | None:
        return at.get(id(s)) if s is not None else None

    out = []
    for j, s in enumerate(live):
        if s.case.role == "candidate" and s.record:
            out.append(Comparison(j, index(reference_side(s, group)), "reference",
                                  index(reference_side(s, group, role="control"))))
    for j, s in enumerate(live):
        if s.case.role == "control":
            out.append(Comparison(j, index(reference_side(s, group)), "control"))
    for j, s in enumerate(live):
        if s.record:
            out.extend(Comparison(j, at[id(b)], "compile") for b in mode_baselines(s, live))
    return out


def estimate(result: Any, live: list[GroupSide], j: int, k: int | None, confidence: float = CONFIDENCE
             ) -> RatioEstimate | None:
    """Side ``j`` against side ``k`` from the rounds so far at ``confidence``; None when there is no partner or a side
    died while timing (no verdict from the rounds)."""
    if k is None or {j, k} & set(result.failed):
        return None
    return result.estimate(j, live[j].case.settings.speed_threshold_pct, reference=k, confidence=confidence)


def evaluate(comps: list[Comparison], result: Any, live: list[GroupSide], look: Look, number: int, last: bool,
             processes_done: int) -> None:
    """At look ``number`` (1-based; ``last``: the final one): estimate every comparison not yet frozen at the look's
    confidence and freeze those that are settled, those that cannot be timed any more (a side failed, no partner),
    and, at the last look, all. Controls are frozen once no candidate that checks against them is still open."""
    def freeze(c: Comparison, est: RatioEstimate | None, note: str, why: str) -> None:
        c.estimate, c.note, c.frozen, c.why = est, note, True, why
        c.look, c.processes, c.confidence = number, processes_done, look.confidence
        c.rounds_run, c.contended_rounds = result.attempts, result.attempts - result.clean_rounds

    for c in comps:
        if c.frozen or not c.drives:
            continue
        est, note = estimate(result, live, c.j, c.k, look.confidence), ""
        if est is not None and c.control is not None:
            v, note = against_control(est, estimate(result, live, c.j, c.control, look.confidence))
            est = dataclasses.replace(est, verdict=v)
        pct = f"{100 * look.confidence:g}% interval"
        if est is None:
            freeze(c, None, "", "no estimate (a side failed or had no partner)")
        elif est.verdict in SETTLED:
            freeze(c, est, note, f"settled at look {number} ({processes_done} processes, {pct})")
        elif last:
            freeze(c, est, note, f"not settled by the last look ({processes_done} processes, {pct})")
    for c in comps:
        if c.frozen or c.drives:
            continue
        needed = any(not d.frozen and d.control == c.j for d in comps)
        if last or not needed:
            est = estimate(result, live, c.j, c.k, look.confidence)
            freeze(c, est, "", f"control no longer needed at look {number} ({processes_done} processes, "
                               f"{100 * look.confidence:g}% interval)")


def still_timed(comps: list[Comparison], n_live: int) -> set[int]:
    """The live sides some open comparison still needs (its own sides, and the control it checks against)."""
    need: set[int] = set()
    for c in comps:
        if not c.frozen:
            need |= {x for x in (c.j, c.k, c.control) if x is not None}
    return need & set(range(n_live))
