"""Local executor: each case in its own spawned process with a timeout; results appended as they finish."""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..measure.timing import least_contended
from ..suite import Case
from . import worker
from .store import ResultStore

_CTX = mp.get_context("spawn")


@dataclass
class JobOutcome:
    status: str  # ok | error | oom | timeout | crashed
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_job(case: dict[str, Any], run_dir: Path, job: str, timeout_s: float, log_path: Path,
            env: dict[str, str] | None = None) -> JobOutcome:
    """Run one worker job in a fresh process. Never raises for what happens inside the worker."""
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=worker.main, args=(case, str(run_dir), child, str(log_path), env or {}, job),
                        daemon=True)
    proc.start()
    child.close()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if parent.poll(0.2):
                try:
                    kind, payload = parent.recv()
                except EOFError:
                    break
                proc.join(10)
                if kind == "ok":
                    return JobOutcome("ok", payload)
                return JobOutcome(payload["status"], error=payload["error"])
            if not proc.is_alive() and not parent.poll(0):
                break
            if time.monotonic() > deadline:
                _stop(proc)
                return JobOutcome("timeout", error=f"timed out after {timeout_s:g} s (hung or too slow; "
                                                   "raise timeout_s in the suite)")
    finally:
        if proc.is_alive():
            _stop(proc)
        _kill_group(proc.pid)
        parent.close()
    proc.join(5)
    code = proc.exitcode
    if code is not None and code < 0:
        sig = -code
        hint = " (killed: out of memory?)" if sig == 9 else ""
        return JobOutcome("crashed", error=f"worker died from signal {sig}{hint}; see {log_path}")
    return JobOutcome("crashed", error=f"worker exited with code {code} without a result; see {log_path}")


def _kill_group(pid: int | None) -> None:
    """End whatever the worker left behind (e.g. Inductor's compile-worker pool), so it cannot load the CPU
    while the next case is timed."""
    if pid is None or not hasattr(os, "killpg"):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stop(proc: Any) -> None:
    proc.terminate()
    proc.join(3)
    if proc.is_alive():
        proc.kill()
        proc.join(3)


class Runner:
    """Runs cases in order, skipping those already done, and appends one row per finished case."""

    def __init__(self, out_dir: Path, env_row: dict[str, Any]) -> None:
        self.out = Path(out_dir)
        self.store = ResultStore(self.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env_row = env_row
        self._prepared: dict[str, str] = {}  # artifact path -> error ("" when fine)

    def _ensure_reference(self, case: Case) -> None:
        path = worker.artifact_path(self.out, case.pair, case.device)
        if path.exists() or str(path) in self._prepared:
            return
        out = run_job(case.to_dict(), self.out, "prepare", case.timeout_s, self.logs / f"prepare-{case.case_id}.log")
        self._prepared[str(path)] = out.error

    def run_case(self, case: Case) -> dict[str, Any]:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        log = self.logs / f"{case.case_id}.log"
        if case.role == "candidate" and case.port:
            self._ensure_reference(case)
        compiled = case.framework == "torch" and case.compile_mode in ("full", "regional")
        cache: dict[str, Any] = {"dir": None, "env": {}}

        def attempt() -> tuple[JobOutcome, float | None]:
            if cache["dir"]:
                shutil.rmtree(cache["dir"], ignore_errors=True)
            if compiled:  # a fresh, private Inductor cache: the first compiled call is a cold start
                d = tempfile.mkdtemp(prefix=f"vitbench-inductor-{case.case_id}-")
                cache.update(dir=d, env={"TORCHINDUCTOR_CACHE_DIR": d, "TRITON_CACHE_DIR": f"{d}/triton"})
            trial = run_job(case.to_dict(), self.out, "measure", case.timeout_s, log, cache["env"])
            return trial, trial.result.get("compile_steal_pct_cold") if trial.status == "ok" else None

        # a cold compile the hypervisor took too much CPU from is timed again, in a fresh worker and cache
        out, _, attempts = least_contended(attempt, case.max_steal_pct, case.timing_attempts if compiled else 1)
        if compiled and out.status == "ok":
            out.result["compile_attempts"] = attempts  # cold compiles run; the least-contended one is kept
        # the warm start below reuses the on-disk cache of the last cold compile (each one compiled the same case)
        cache_dir, env = cache["dir"], cache["env"]
        row: dict[str, Any] = {**self.env_row, **_case_columns(case), "started_at": started}
        row.update(out.result)
        latencies = row.pop("latencies_ms", None)
        row["status"] = out.status
        row["error"] = out.error
        if out.status == "ok" and cache_dir:
            warm = run_job(case.to_dict(), self.out, "warm", case.timeout_s, log, env)
            if warm.status == "ok":
                row.update(warm.result)
            else:
                row["error"] = f"warm compile: {warm.error}"
        if cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
        if row.get("numerics_status") == "error" and not row.get("numerics_error"):
            row["numerics_error"] = self._prepared.get(str(worker.artifact_path(self.out, case.pair, case.device)))
        row["duration_s"] = time.perf_counter() - t0
        self.store.append(row, latencies)
        return row

    def run(self, cases: list[Case], on_start: Callable[[int, Case], None] | None = None,
            on_done: Callable[[int, Case, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        rows = []
        for i, case in enumerate(cases):
            if on_start:
                on_start(i, case)
            row = self.run_case(case)
            rows.append(row)
            if on_done:
                on_done(i, case, row)
        return rows


def _case_columns(case: Case) -> dict[str, Any]:
    d = case.to_dict()
    keep = ("suite", "pair", "role", "label", "provider", "model", "framework", "backend", "device", "precision",
            "compile_mode", "batch_size", "img_size", "tokens", "seed", "tolerance_max_abs", "regions")
    out = {k: d[k] for k in keep}
    out["case_id"] = case.case_id
    out["task"] = "infer"
    out["attention"] = attention_of(case)
    return out


def attention_of(case: Any) -> str | None:
    """The attention variant a case runs: our ViT's ``attention=`` kwarg, or an efficient-attention layer class."""
    if case.kwargs.get("attention"):
        return str(case.kwargs["attention"])
    module, _, name = case.model.partition(":")
    if module.endswith("efficient_attention") and name.endswith("Attention"):
        return name.removesuffix("Attention").lower()
    return None
