"""Local executor: each case set up in its own worker with a timeout; a pair's sides timed in paired rounds over
several timing processes; results appended as each group finishes."""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..measure.contention import Contention, Limits, cpu_of, gpu_others, least_contended, run_cpus
from ..measure.stats import looks_for
from ..measure.timing import Block
from ..modes import KERAS_JIT, TORCH_COMPILED
from ..suite import Case
from .artifacts import artifact_path
from .pairing import GroupSide, pair_row, plan_groups, reference_side
from .rounds import RoundsResult, SideFailed, block_iters_for, run_rounds, summarize
from .session import JobOutcome, Session, cache_env, default_memory_limit_gb, run_job, xla_cache_env
from .signals import deferred_signals
from .stopping import Comparison, comparisons, estimate, evaluate, still_timed
from .store import ResultStore


class _SessionSide:
    """One side hosted by a timing session, as run_rounds sees it. A block starts with one untimed call (caches
    and threads come back after the other side's block) unless a call takes 0.25 s or more."""

    def __init__(self, session: Session, index: int, iter_s: float) -> None:
        self.session, self.index = session, index
        self.warmup = 1 if iter_s < 0.25 else 0

    def block(self, iters: int) -> Block:
        return self.session.block(self.index, iters, self.warmup)


class _Failed:
    def __init__(self, outcome: JobOutcome) -> None:
        self.outcome = outcome

    def block(self, iters: int) -> Block:
        raise SideFailed(self.outcome)


class Runner:
    """Runs cases group by group. Each case is first set up alone in a fresh worker (memory, numerics, FLOPs,
    compile cold/warm start); then the group's sides are timed together in paired rounds, in ``processes`` fresh
    timing sessions (one per framework, hosting all that framework's sides), so that neither the machine's drift
    nor one process's luck decides a comparison. Rows are appended when their group ends; cases already done
    (``--resume``) are skipped. ``task``, ``run_unit`` and ``case_columns``: what the Ray executor runs on a node."""

    task = "infer"

    def __init__(self, out_dir: Path, env_row: dict[str, Any]) -> None:
        self.out = Path(out_dir)
        self.store = ResultStore(self.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env_row = env_row
        self._prepared: dict[str, str] = {}  # artifact path -> error ("" when fine)
        self.on_progress: Callable[[str], None] | None = None

    def _ensure_reference(self, case: Case) -> None:
        path = artifact_path(self.out, case.pair, case.device)
        if path.exists() or str(path) in self._prepared:
            return
        out = run_job(case, self.out, "reference", case.settings.timeout_s,
                      self.logs / f"reference-{case.case_id}.log")
        self._prepared[str(path)] = out.error

    def _setup(self, case: Case) -> JobOutcome:
        """The case measured but for its timing, in a fresh worker. A cold compile the hypervisor took too much
        CPU from is run again in a fresh worker and cache (the least-contended is kept); its cache then serves
        the warm start, a second worker."""
        compiled = case.framework == "torch" and case.compile_mode in TORCH_COMPILED
        log = self.logs / f"{case.case_id}.log"
        dirs: list[str] = []

        def attempt() -> tuple[tuple[JobOutcome, str | None], float | None]:
            d, env = None, {}
            if compiled:  # a fresh, private Inductor cache: the first compiled call is a cold start
                d = tempfile.mkdtemp(prefix=f"vitbench-inductor-{case.case_id}-")
                dirs.append(d)
                env = cache_env(d)
            out = run_job(case, self.out, "setup", case.settings.timeout_s, log, env,
                          max_memory_gb=_memory_limit(case))
            return (out, d), out.result.get("compile_steal_pct_cold") if out.status == "ok" else None

        try:
            (out, cache_dir), _, attempts = least_contended(attempt, case.settings.max_steal_pct,
                                                            case.settings.timing_attempts if compiled else 1)
            if compiled and out.status == "ok":
                out.result["compile_attempts"] = attempts  # cold compiles run; the least-contended one is kept
                warm = run_job(case, self.out, "warm", case.settings.timeout_s, log, cache_env(cache_dir),
                               max_memory_gb=_memory_limit(case))
                if warm.status == "ok":
                    warm.result["phase_startup_s"] = (float(out.result.get("phase_startup_s") or 0)
                                                      + float(warm.result.get("phase_startup_s") or 0))
                    out.result.update(warm.result)
                else:
                    out.error = f"warm compile: {warm.error}"
        finally:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        return out

    def run_unit(self, group: list[GroupSide], store: Any) -> None:  # one group, its rows written into ``store``
        self.store = store
        self.run_group(group)

    @staticmethod
    def case_columns(case: Case) -> dict[str, Any]:
        """The row's identity columns (what was measured)."""
        st = case.settings
        return {"case_id": case.case_id, "task": "infer", **{k: getattr(case, k) for k in (
            "suite", "pair", "role", "label", "provider", "model", "framework", "backend", "device", "precision",
            "compile_mode", "batch_size")}, "img_size": st.img_size, "tokens": st.tokens, "seed": st.seed,
                "tolerance_max_abs": st.tolerance.max_abs, "regions": st.regions, "attention": attention_of(case)}

    def run_group(self, group: list[GroupSide], on_start: Callable[[Case], None] | None = None) -> list[dict[str, Any]]:
        """Set up every side, time them in paired rounds (the first side is the reference when there is one),
        write their rows and the pairs' rows. Returns the recorded rows."""
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        for side in group:
            if side.case.role == "candidate" and side.case.port:
                self._ensure_reference(side.case)
            if not side.record:
                continue
            if on_start:
                on_start(side.case)
            out = self._setup(side.case)
            side.row = {**self.env_row, **self.case_columns(side.case), "started_at": started, **out.result,
                        "status": out.status, "error": out.error}
            side.ok = out.status == "ok"
        for side in group:  # the A/A control is timed only beside a reference that set up fine
            if side.case.role == "control":
                ref = reference_side(side, group)
                side.row, side.ok = {"status": "ok"}, ref is not None and ref.ok
        live = [s for s in group if s.ok]
        comps = comparisons(group, live)
        result = self._time(live, comps) if live else None
        pair_rows = self._pair_rows(group, live, result, comps) if result else []
        rows = []
        duration = time.perf_counter() - t0
        with deferred_signals():  # a group's rows, blocks and pair rows are written whole, or not at all
            for s in group:
                if not s.record:
                    continue
                if s.row.get("numerics_status") == "error" and not s.row.get("numerics_error"):
                    s.row["numerics_error"] = self._prepared.get(str(artifact_path(self.out, s.case.pair,
                                                                                          s.case.device)))
                s.row["duration_s"] = duration
                self.store.append(s.row, s.row.pop("_blocks", None))
                rows.append(s.row)
            for pr in pair_rows:
                self.store.append_pair(pr)
        return rows

    def _time(self, live: list[GroupSide], comps: list[Comparison]) -> RoundsResult:
        """Paired rounds over at most ``processes`` timing processes: in each, one fresh session per framework (and
        per side that asks for a process of its own) builds its sides anew; rows get their timing columns. At each
        planned look (``stopping``) the settled comparisons are frozen and the sides no open comparison needs leave;
        the group stops when none is open. A side that fails in a block leaves the rounds; the sides that shared its
        session go on in the next process."""
        c0 = live[0].case
        st = c0.settings
        per_process = math.ceil(st.rounds / st.processes)
        looks = looks_for(st.processes, st.sequential)
        at_look = {lk.processes: n for n, lk in enumerate(looks, 1)}
        driving = any(c.drives for c in comps)
        compiled = any(s.case.compile_mode in TORCH_COMPILED for s in live)
        xla = any(s.case.compile_mode in KERAS_JIT for s in live)  # Keras' and tf-keras' jit_compile modes
        cache_dir = tempfile.mkdtemp(prefix="vitbench-compile-timing-") if compiled or xla else None
        # the timing processes share a compile cache: Inductor's, and XLA's for Keras jit_compile (TensorFlow)
        env = {**cache_env(cache_dir), **xla_cache_env(cache_dir)} if cache_dir else {}
        cpus = run_cpus()
        dead: dict[int, JobOutcome] = {}
        left: set[int] = set()  # sides whose comparisons are all settled: no longer timed
        iter_s: dict[int, float] = {}  # seconds per call, from the first process's warm-ups
        iters: list[int] = []
        total: RoundsResult | None = None
        sessions: list[tuple[Session, list[int]]] = []
        after: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(live))}  # sessions' finish columns
        spent = {"sessions": 0.0, "rounds": 0.0}  # wall: timing processes' start-up and set-up; their rounds
        try:
            for p in range(st.processes):
                sessions = []
                t_open = time.perf_counter()
                sides = self._open_sessions(live, dead, left, env, p, sessions, iter_s)
                t_rounds = time.perf_counter()
                spent["sessions"] += t_rounds - t_open
                if not iters:
                    iters = [block_iters_for(s.iter_s, st.rounds, s.case.settings.min_iters,
                                             s.case.settings.min_seconds, s.case.settings.max_iters) for s in sides]
                pids = [x.pid for x, _ in sessions]
                limits = Limits(st.max_steal_pct, st.max_foreign_cpu_pct,
                                gpu_others(c0.device, {q for q in pids if q}) if c0.device.startswith("cuda")
                                else None, our_cpu=cpu_of(lambda pids=pids: pids))
                res = run_rounds([s.timeable for s in sides], iters, per_process, limits, seed=st.seed + p,
                                 on_round=self._round_progress(c0, p, per_process), failed=dead,
                                 watch=lambda: Contention(cpus), process=p, left=left)
                spent["rounds"] += time.perf_counter() - t_rounds
                for x, idx in sessions:
                    out = x.finish()
                    for k, i in enumerate(idx):
                        if out.status == "ok" and k < len(out.result):
                            after[i].append(out.result[k])
                dead.update(res.failed)
                total = res if total is None else total + res
                if p + 1 in at_look and driving:
                    n = at_look[p + 1]
                    total.failed.update(dead)
                    evaluate(comps, total, live, looks[n - 1], n, n == len(looks), p + 1)
                    need = still_timed(comps, len(live))
                    if not need:
                        break
                    left = set(range(len(live))) - need
        except BaseException:  # Ctrl-C, SIGTERM: end the sessions at once, ask nothing more of them
            for x, _ in sessions:
                x.stop()
            raise
        finally:
            if cache_dir:
                shutil.rmtree(cache_dir, ignore_errors=True)
        assert total is not None
        total.failed.update(dead)
        load = total.contention()
        for i, s in enumerate(live):
            s.row.update(summarize(total.used_blocks(i), s.case.batch_size))
            blocks = [(r["blocks"][i], r["clean"], r.get("process", 0)) for r in total.rounds if i in r["blocks"]]
            s.row["contended_blocks"] = sum(1 for _, c, _ in blocks if not c)
            s.row["timing_contended"] = total.contended  # under half the rounds clean: figures from busy rounds
            s.row["cpu_steal_pct"], s.row["foreign_cpu_pct"] = load["steal_pct_mean"], load["foreign_cpu_pct_mean"]
            s.row["contention_cpus"], s.row["gpu_contention"] = cpus.count, total.gpu_contention()
            s.row["_blocks"] = [b.to_dict() | {"clean": c, "process": q} for b, c, q in blocks]
            s.row.update(_timing_columns(s.row, after[i]))
            s.row["group_sessions_s"], s.row["group_rounds_s"] = spent["sessions"], spent["rounds"]
            if i in dead and s.row.get("status") == "ok":
                s.row.update(status=dead[i].status, error=f"timing: {dead[i].error}")
        return total

    def _open_sessions(self, live: list[GroupSide], dead: dict[int, JobOutcome], left: set[int],
                       env: dict[str, str], p: int, sessions: list[tuple[Session, list[int]]],
                       iter_s: dict[int, float]) -> list[Any]:
        """Timing process ``p``: one session per framework (and backend), hosting every live side of it, and one per
        side that asks for a process of its own (``own_process``), each a fresh process (appended to ``sessions``
        with its sides as it starts, so an interrupt can end it); not the sides in ``left``. After the first process
        they start together (their set-up overlaps: nothing is timed then); every other process starts them in the
        reverse order, so no side always comes from the first-started process. Its limits cover all its sides."""
        by_fw: dict[tuple[str, str | None, str | None], list[int]] = {}
        for i, s in enumerate(live):
            if i not in dead and i not in left:
                own = s.case.case_id if s.case.settings.own_process else None
                by_fw.setdefault((s.case.framework, s.case.backend, own), []).append(i)
        sides: list[Any] = [_TimingSide(_Failed(dead.get(i, JobOutcome("ok"))), live[i].case, 0.0)
                            if i in dead or i in left else None for i in range(len(live))]
        starts = list(by_fw.items())
        opened: list[tuple[Session, list[int]]] = []
        for (fw, backend, own), idx in (starts[::-1] if p % 2 else starts):
            name = (f"timing-{live[0].case.case_id}-{fw}{'-' + backend if backend else ''}"
                    f"{'-' + own if own else ''}-{p}.log")
            x = Session([_session_case(live[i].case, p) for i in idx], self.out, "serve",
                        sum(live[i].case.settings.timeout_s for i in idx), self.logs / name, env,
                        sum(_memory_limit(live[i].case) for i in idx))
            sessions.append((x, idx))
            opened.append((x, idx))
            if p == 0:  # the first process's warm-ups size every block: one session at a time, undisturbed
                self._ready(x, idx, live, dead, sides, iter_s)
        for x, idx in opened if p else ():
            self._ready(x, idx, live, dead, sides, iter_s)
        return sides

    @staticmethod
    def _ready(x: Session, idx: list[int], live: list[GroupSide], dead: dict[int, JobOutcome], sides: list[Any],
               iter_s: dict[int, float]) -> None:
        """A session's sides once it says ready (their seconds per call: the first process's warm-up's)."""
        ready = x.receive("ready")
        for k, i in enumerate(idx):
            r = ready.result[k] if ready.status == "ok" else {"status": ready.status, "error": ready.error}
            if r["status"] == "ok":
                it = iter_s.setdefault(i, r["iter_s"])
                sides[i] = _TimingSide(_SessionSide(x, k, it), live[i].case, it)
            else:
                outcome = JobOutcome(r["status"], error=r["error"])
                dead[i] = outcome
                sides[i] = _TimingSide(_Failed(outcome), live[i].case, 0.0)

    def _round_progress(self, c: Case, p: int, per_process: int) -> Callable[[int, int], None]:
        def progress(clean: int, attempts: int) -> None:
            if self.on_progress:
                self.on_progress(f"{c.pair} bs{c.batch_size}: process {p + 1}/{c.settings.processes}, round "
                                 f"{clean}/{per_process}" + (f" ({attempts - clean} contended)"
                                                             if attempts > clean else ""))
        return progress

    def _pair_rows(self, group: list[GroupSide], live: list[GroupSide], result: RoundsResult,
                   comps: list[Comparison]) -> list[dict[str, Any]]:
        """pairs.csv rows: each comparison (``stopping.comparisons``) with its estimate where it was frozen (each
        recorded candidate against its reference, its verdict checked against the pair's A/A control; the control
        against the reference; each recorded compiled side against its baseline modes), and a row for each
        candidate that could not be timed."""
        rows = []
        for c in comps:
            if not c.frozen:  # not evaluated (no look was reached: an interrupted or reference-only group)
                c.estimate = estimate(result, live, c.j, c.k)
            s, ref = live[c.j], live[c.k] if c.k is not None else None
            r = pair_row(s, ref, c.estimate, result, comparison=c.kind, note=c.note, stop=c)
            if c.kind == "reference":
                s.row.update({k: r[k] for k in ("speed_ratio", "speed_ratio_ci_low", "speed_ratio_ci_high",
                                                "speed_verdict")})
            rows.append(r)
        at = {id(s) for s in live}
        for s in group:  # candidates that could not be timed still get a pairs row
            if s.case.role == "candidate" and s.record and id(s) not in at:
                rows.append(pair_row(s, reference_side(s, group), None, result))
        order = {"reference": 0, "control": 1, "compile": 2}
        return sorted(rows, key=lambda r: order[r["comparison"]])

    def run(self, cases: list[Case], on_start: Callable[[int, Case], None] | None = None,
            on_done: Callable[[int, Case, dict[str, Any]], None] | None = None,
            partners: list[Case] | None = None) -> list[dict[str, Any]]:
        """Run ``cases`` in paired groups. ``partners``: every case of the suite, so that a candidate resumed
        without its (already measured) reference is still timed against it."""
        index = {c.case_id: i for i, c in enumerate(cases)}
        rows = []

        def started(c: Case) -> None:
            if on_start:
                on_start(index[c.case_id], c)

        for group in plan_groups(cases, partners or cases):
            for row in self.run_group(group, started):
                rows.append(row)
                if on_done:
                    case = next(s.case for s in group if s.case.case_id == row["case_id"])
                    on_done(index[case.case_id], case, row)
        return rows


@dataclass
class _TimingSide:
    timeable: Any
    case: Case
    iter_s: float


def _timing_columns(row: dict[str, Any], sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """What the timing sessions measured of a side besides time: frames compiled during its timed blocks (added to
    the set-up's warm-up recompiles) and the CUDA memory its timed forwards allocated (the most over any block)."""
    out: dict[str, Any] = {}
    timed = [x["timing_recompiles"] for x in sessions if x.get("timing_recompiles") is not None]
    if timed:
        out["recompiles"] = int(float(row.get("recompiles") or 0)) + sum(timed)
    peaks = [x["cuda_forward_peak_mb"] for x in sessions if x.get("cuda_forward_peak_mb") is not None]
    if peaks:
        out["cuda_forward_peak_mb"] = max(peaks)
    return out


def _memory_limit(case: Case) -> float:
    return case.settings.max_memory_gb if case.settings.max_memory_gb is not None else default_memory_limit_gb()


def _session_case(case: Case, p: int) -> Case:
    """A side as timing process ``p`` sets it up: after the first process (whose warm-ups size the blocks), one
    warm-up call beside the first call; every block still starts with its own untimed call."""
    if p == 0 or case.settings.warmup_iters <= 1:
        return case
    return dataclasses.replace(case, settings=case.settings.model_copy(update={"warmup_iters": 1}))


def attention_of(case: Any) -> str | None:
    """The attention variant a case runs: our ViT's ``attention=`` kwarg, or an efficient-attention layer class."""
    if case.kwargs.get("attention"):
        return str(case.kwargs["attention"])
    if case.provider == "vit_pytorch":
        from ..providers.vit_pytorch_provider import attention_of as vit_pytorch_attention

        return vit_pytorch_attention(case.model, case.kwargs)
    module, _, name = case.model.partition(":")
    if module.endswith("efficient_attention") and name.endswith("Attention"):
        return name.removesuffix("Attention").lower()
    return None
