"""Worker processes as the parent sees them: one fresh process per job (forked by its framework's fork server, see
``launch``), with a timeout; a ``serve`` job stays alive between commands (a timing session). Nothing that happens
inside a worker raises here: it becomes a JobOutcome (ok | error | oom | timeout | crashed)."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..measure.timing import Block
from . import launch, worker
from .rounds import SideFailed


@dataclass
class JobOutcome:
    status: str  # ok | error | oom | timeout | crashed
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


STARTUP_S = 300.0  # a worker's start-up (interpreter, torch/TF/timm imports) has its own, generous limit


def default_memory_limit_gb() -> float:
    """A safe share of physical memory for one worker: 75%, so a runaway case cannot take the machine down."""
    import psutil

    return round(0.75 * psutil.virtual_memory().total / 1e9, 1)


def _tree_rss_gb(pid: int) -> float:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e9


def _await(proc: Any, conn: Any, deadline: float, log_path: Path, what: str,
           max_memory_gb: float | None = None) -> tuple[str, Any]:
    """The worker's next message, or a JobOutcome-shaped failure: ("failed", JobOutcome). Past ``deadline`` the
    worker is ended (``what`` says which limit it broke); above ``max_memory_gb`` (its RSS with its children's,
    watched every 0.2 s) too."""
    while True:
        if conn.poll(0.2):
            try:
                return conn.recv()
            except EOFError:
                break
        if not proc.is_alive() and not conn.poll(0):
            break
        if max_memory_gb is not None and proc.pid is not None:
            used = _tree_rss_gb(proc.pid)
            if used > max_memory_gb:
                _stop(proc)
                _kill_group(proc.pid)
                return "failed", JobOutcome("oom", error=f"worker used {used:.1f} GB, over the max_memory_gb limit "
                                                         f"of {max_memory_gb:g} GB: ended")
        if time.monotonic() > deadline:
            _stop(proc)
            return "failed", JobOutcome("timeout", error=what)
    proc.join(5)
    code = proc.exitcode
    if code is not None and code < 0:
        sig = -code
        hint = " (killed: out of memory?)" if sig == 9 else ""
        return "failed", JobOutcome("crashed", error=f"worker died from signal {sig}{hint}; see {log_path}")
    return "failed", JobOutcome("crashed", error=f"worker exited with code {code} without a result; see {log_path}")


class Session:
    """The parent's handle on one worker process. ``job='serve'`` keeps it alive between commands (a timing
    session, see worker.serve); other jobs answer once. ``timeout_s`` counts from the moment the worker says it
    has started (its imports done), and again for every command; start-up has its own limit (STARTUP_S)."""

    def __init__(self, case: Any, run_dir: Path, job: str, timeout_s: float, log_path: Path,
                 env: dict[str, str] | None = None, max_memory_gb: float | None = None) -> None:
        import multiprocessing as mp

        self.conn, child = mp.Pipe(duplex=True)
        kind = _worker_kind(case, job)
        # the worker gets this process's environment as it is now (a forked worker's would be its server's)
        env = {**os.environ, **(env or {}), "VITBENCH_PARENT_PID": str(os.getpid()),
               "VITBENCH_FORKED_BY": str(launch.parent_pid(kind))}
        self.proc = launch.new_process(kind, worker.main, (case, str(run_dir), child, str(log_path), env, job))
        self.timeout_s, self.log_path = timeout_s, log_path
        self.max_memory_gb = max_memory_gb
        self.started = False
        self.startup_s: float | None = None  # from start to "started" (fork, or interpreter and imports)
        self.failed: JobOutcome | None = None  # how the session ended, if it failed
        self._t0 = time.perf_counter()
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def receive(self, expect: str) -> JobOutcome:
        """Wait for the worker's answer ``expect`` (ready | block | ok)."""
        while True:
            if self.started:
                deadline, what = time.monotonic() + self.timeout_s, (
                    f"timed out after {self.timeout_s:g} s (hung or too slow; raise timeout_s in the suite)")
            else:
                deadline, what = time.monotonic() + max(STARTUP_S, self.timeout_s), (
                    f"the worker did not start within {max(STARTUP_S, self.timeout_s):g} s (interpreter and "
                    "framework imports; timeout_s counts only after that)")
            kind, payload = _await(self.proc, self.conn, deadline, self.log_path, what, self.max_memory_gb)
            if kind != "started":
                break
            self.started = True
            self.startup_s = time.perf_counter() - self._t0
        if kind == "failed":
            self.stop()
            return payload
        if kind == "error":
            self.stop()
            return JobOutcome(payload["status"], error=payload["error"])
        if kind != expect:
            self.stop()
            return JobOutcome("crashed", error=f"worker answered {kind!r} where {expect!r} was due")
        return JobOutcome("ok", payload)

    def block(self, side: int, iters: int, warmup: int = 1) -> Block:
        """Time ``iters`` calls of the session's side ``side``, after ``warmup`` untimed ones. Once the session
        failed (another side's block broke it), its other sides get a collateral SideFailed."""
        if self.failed is not None:
            raise SideFailed(self.failed, collateral=True)
        try:
            self.conn.send(("block", (side, iters, warmup)))
        except (OSError, ValueError):
            self.failed = JobOutcome("crashed", error=f"worker gone; see {self.log_path}")
            raise SideFailed(self.failed) from None
        out = self.receive("block")
        if out.status != "ok":
            self.failed = out
            raise SideFailed(out)
        return Block(**out.result)

    def finish(self) -> JobOutcome:
        try:
            self.conn.send(("finish", None))
        except (OSError, ValueError):
            return JobOutcome("crashed", error=f"worker gone before finishing; see {self.log_path}")
        out = self.receive("ok")
        self.stop()
        return out

    def stop(self) -> None:
        if self.proc.is_alive():
            _stop(self.proc)
        _kill_group(self.proc.pid)
        if not self.conn.closed:
            self.conn.close()


def _worker_kind(case: Any, job: str) -> str:
    """The kind of worker (framework, Keras backend) a job runs in: the case's, or its reference's for the job
    that writes a pair's reference artifacts."""
    c = case[0] if isinstance(case, list) else case
    side = c.reference if job == "reference" and c.role == "candidate" else c.side
    return launch.worker_kind(side.framework, side.backend)


def run_job(case: Any, run_dir: Path, job: str, timeout_s: float, log_path: Path,
            env: dict[str, str] | None = None, max_memory_gb: float | None = None) -> JobOutcome:
    """Run one worker job in a fresh process. Never raises for what happens inside the worker."""
    s = Session(case, run_dir, job, timeout_s, log_path, env, max_memory_gb)
    try:
        out = s.receive("ok")
        if s.startup_s is not None and out.status == "ok":
            out.result["phase_startup_s"] = s.startup_s + float(out.result.get("phase_startup_s") or 0)
        return out
    finally:
        s.stop()


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


def xla_cache_env(d: str) -> dict[str, str]:
    """TensorFlow's persistent XLA cache in ``d``: a timing process after the first loads the XLA executables the
    first compiled (~6 s of a Keras Swin-T's set-up here), appended to any TF_XLA_FLAGS already set."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    return {"TF_XLA_FLAGS": f"{flags} --tf_xla_persistent_cache_directory={d}/xla".strip()}


def cache_env(d: str | None) -> dict[str, str]:
    """Inductor's (and Triton's) cache in ``d``: a private cache for a cold compile, or one shared by a group."""
    return {"TORCHINDUCTOR_CACHE_DIR": d, "TRITON_CACHE_DIR": f"{d}/triton"} if d else {}
