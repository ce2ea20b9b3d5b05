"""Worker processes as the parent sees them: one spawned process per job, with a timeout; a ``serve`` job stays
alive between commands (a timing session). Nothing that happens inside a worker raises here: it becomes a
JobOutcome (ok | error | oom | timeout | crashed)."""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..measure.timing import Block
from . import worker
from .rounds import SideFailed

_CTX = mp.get_context("spawn")


@dataclass
class JobOutcome:
    status: str  # ok | error | oom | timeout | crashed
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _await(proc: Any, conn: Any, deadline: float, log_path: Path, timeout_s: float) -> tuple[str, Any]:
    """The worker's next message, or a JobOutcome-shaped failure: ("failed", JobOutcome)."""
    while True:
        if conn.poll(0.2):
            try:
                return conn.recv()
            except EOFError:
                break
        if not proc.is_alive() and not conn.poll(0):
            break
        if time.monotonic() > deadline:
            _stop(proc)
            return "failed", JobOutcome("timeout", error=f"timed out after {timeout_s:g} s (hung or too slow; "
                                                          "raise timeout_s in the suite)")
    proc.join(5)
    code = proc.exitcode
    if code is not None and code < 0:
        sig = -code
        hint = " (killed: out of memory?)" if sig == 9 else ""
        return "failed", JobOutcome("crashed", error=f"worker died from signal {sig}{hint}; see {log_path}")
    return "failed", JobOutcome("crashed", error=f"worker exited with code {code} without a result; see {log_path}")


class Session:
    """The parent's handle on one worker process. ``job='serve'`` keeps it alive between commands (a timing
    session, see worker.serve); other jobs answer once."""

    def __init__(self, case: dict[str, Any], run_dir: Path, job: str, timeout_s: float, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.conn, child = _CTX.Pipe(duplex=True)
        self.proc = _CTX.Process(target=worker.main, args=(case, str(run_dir), child, str(log_path), env or {}, job),
                                 daemon=True)
        self.timeout_s, self.log_path = timeout_s, log_path
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def receive(self, expect: str) -> JobOutcome:
        """Wait for the worker's answer ``expect`` (ready | block | ok)."""
        kind, payload = _await(self.proc, self.conn, time.monotonic() + self.timeout_s, self.log_path,
                               self.timeout_s)
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
        """Time ``iters`` calls of the session's side ``side``, after ``warmup`` untimed ones."""
        try:
            self.conn.send(("block", (side, iters, warmup)))
        except (OSError, ValueError):
            raise SideFailed(JobOutcome("crashed", error=f"worker gone; see {self.log_path}")) from None
        out = self.receive("block")
        if out.status != "ok":
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


def run_job(case: dict[str, Any], run_dir: Path, job: str, timeout_s: float, log_path: Path,
            env: dict[str, str] | None = None) -> JobOutcome:
    """Run one worker job in a fresh process. Never raises for what happens inside the worker."""
    s = Session(case, run_dir, job, timeout_s, log_path, env)
    try:
        return s.receive("ok")
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
