"""The worker: runs in a fresh process (forked by a fork server that imported its framework, or spawned), measures
one case, sends back a row (or an error).

The parent sends the frozen ``Case`` (it pickles); the job picks the framework's worker module (torch_worker or
keras_worker), which imports its framework, so one worker process holds one framework.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..measure.sections import Numerics, SetupResult
from .artifacts import artifact_path, load_arrays, load_weights


@dataclass
class Timed:
    """What a framework worker hands the serve loop once a case is set up: the call to time (``step``), the
    device sync, the context every block runs in (inference mode, autocast), and ``finish`` for the columns known
    only after timing (peak memory, recompiles). ``iter_s`` is the warm-up's seconds per call."""

    step: Callable[[], Any]
    sync: Callable[[], None]
    iter_s: float
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    finish: Callable[[], dict[str, Any]] = field(default=lambda: {})
    before_block: Callable[[], None] = field(default=lambda: None)
    after_block: Callable[[], None] = field(default=lambda: None)


Setup = Callable[[Any, str, bool], tuple[SetupResult, Timed]]


def setup_only(setup: Setup, case: Any, run_dir: str) -> dict[str, Any]:
    """Job 'setup': one case in a fresh process, everything measured but the timed blocks (build, memory of one
    forward, numerics, FLOPs, compile cold start, first call, warm-up); the row so far."""
    res, timed = setup(case, run_dir, False)
    return {**res.columns(), **timed.finish()}


def serve(conn: Any, setup: Setup, cases: list[Any], run_dir: str) -> list[dict[str, Any]]:
    """Job 'serve': a timing session for several sides of one framework. Each is built, compiled and warmed up
    (timing only: no memory, numerics or FLOPs), then the session says ready and times blocks on request until
    told to finish; the parent alternates the sides (and sessions) block by block, so all see the same machine.
    ("block", (side, iters, warmup)) -> ("block", Block.to_dict()); ("finish", None) -> ("ok", per-side finish
    columns).
    A side whose set-up fails is reported in the ready message; the others go on."""
    from ..measure.timing import time_block

    ready: list[dict[str, Any]] = []
    timed: list[Timed | None] = []
    for case in cases:
        try:
            _, t = setup(case, run_dir, True)
            timed.append(t)
            ready.append({"status": "ok", "iter_s": t.iter_s})
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            timed.append(None)
            ready.append({"status": classify(e), "error": one_line(e)})
    conn.send(("ready", ready))
    while True:
        cmd, arg = conn.recv()
        if cmd == "block":
            t = timed[arg[0]]
            if t is None:
                raise ValueError(f"side {arg[0]} was not set up")
            t.before_block()
            with t.context():
                block = time_block(t.step, t.sync, int(arg[1]), warmup=int(arg[2]))
            t.after_block()
            conn.send(("block", block.to_dict()))
        elif cmd == "finish":
            return [t.finish() if t else {} for t in timed]
        else:
            raise ValueError(f"unknown session command {cmd!r}")


def one_line(e: BaseException) -> str:
    """The exception as one line; Keras' generic first line ('Exception encountered when calling ...') is
    followed by the line that says what went wrong."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    if msg.startswith("Exception encountered") and len(lines) > 1:
        msg = f"{msg} {lines[1]}"
    return f"{type(e).__name__}: {msg}".rstrip(": ")[:400]


def classify(e: BaseException) -> str:
    name = type(e).__name__
    text = str(e).lower()
    oom_text = "out of memory" in text or "can't allocate memory" in text
    if name == "OutOfMemoryError" or isinstance(e, MemoryError) or oom_text:
        return "oom"
    return "error"


def compare_candidate(case: Any, run_dir: str | Path, port: Callable[[dict[str, np.ndarray]], None],
                      run: Callable[[np.ndarray], np.ndarray]) -> Numerics:
    """A candidate's numerics, the same for every framework: load the reference's artifacts, port the weights
    (``port(state)``), run the input (``run(x) -> output``), compare, judge against the tolerance.
    A failed port is ``port_failed`` (with the key counts), a broken output (zeros, NaN, Inf) is ``fail`` with the
    reason; either way the case's timing still counts."""
    from ..measure import numerics

    if not case.port:
        return Numerics("skipped", "port: false in the suite")
    path = artifact_path(run_dir, case.pair, case.device)
    if not path.exists():
        return Numerics("error", "no reference artifacts (did the reference fail?)")
    art = load_arrays(path)
    state = load_weights(path)
    try:
        method = port(state)
    except Exception as e:  # noqa: BLE001
        return Numerics("port_failed", f"weight port failed: {port_problem(e)}")
    try:
        res = numerics.compare(art["y"], run(art["x"]))
    except Exception as e:  # noqa: BLE001
        return Numerics("error", one_line(e))
    out = judged(case, res)
    out.port_method, out.port_tensors = method or "strict", len(state)
    return out


def judged(case: Any, res: dict[str, Any], whose: str = "") -> Numerics:
    """A comparison's figures judged against the case's tolerance at the precision it is timed at (fp32: the
    suite's max_abs; fp16/amp, bf16/amp_bf16: their own limits against the reference's fp32 output)."""
    from ..measure import numerics

    tol = case.settings.tolerance.at(case.precision)
    where = " ".join(x for x in (whose, f"at {case.precision}" if case.precision != "fp32" else "") if x)
    verdict = numerics.judge(res, tol.max_abs, tol.min_cosine, tol.max_rel, where)
    measured = {k: v for k, v in res.items() if k not in ("problem", "reference_broken")}
    return Numerics(**measured, **verdict, tolerance_max_abs=tol.max_abs)


def port_problem(e: BaseException) -> str:
    """A port error as one line; the key counts and a few names when the error carries them."""
    missing, unexpected = getattr(e, "missing", None), getattr(e, "unexpected", None)
    if not missing and not unexpected:  # a shape mismatch, or an error of the module's own port function
        return one_line(e)
    hint = getattr(e, "hint", "")
    return (f"{len(missing or [])} missing keys (e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected or [])} "
            f"unexpected keys (e.g. {', '.join(unexpected[:3]) or '-'})" + (f"; {hint}" if hint else ""))


def _preload(cases: list[Any]) -> None:
    """Imports that belong to start-up, not to the case's work (timeout_s starts after them): timm, for the
    sides that build a timm model."""
    import importlib.util

    if any(c.provider == "timm" for c in cases) and importlib.util.find_spec("timm") is not None:
        import timm  # noqa: F401


def main(case: Any, run_dir: str, conn: Any, log_path: str, env: dict[str, str], job: str) -> None:
    """Entry point of the child process. ``job``: 'setup' (a case measured but for its timing), 'serve' (a timing
    session; ``case`` is then the list of its sides), 'reference' (the pair's reference artifacts only), 'warm'
    (second-launch compile time), or 'package.module:function' (a job of another package, e.g. fine-tuning's)."""
    if hasattr(os, "setsid"):
        os.setsid()  # own process group: the runner ends it whole, compile-worker pools included
    from .launch import close_inherited_server_fd, randomize_layout, steady_allocator
    from .signals import die_with_parent

    close_inherited_server_fd()
    steady_allocator()  # every worker's allocator in one state, whatever the process freed before
    layout = randomize_layout()  # and a memory layout of its own, as a freshly spawned process has
    parent, forked_by = env.get("VITBENCH_PARENT_PID"), env.get("VITBENCH_FORKED_BY")
    # never outlive the run, even one killed with SIGKILL: the kernel ends this process when the one that started
    # it (the run, or its fork server, which exits with the run) dies
    die_with_parent(int(forked_by) if forked_by else None, int(parent) if parent else None)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)  # the run's environment when it started this worker
    cases = case if isinstance(case, list) else [case]
    case = cases[0]
    print(f"== vitbench worker pid {os.getpid()} job={job} " + ", ".join(f"{c.label} [{c.case_id}]" for c in cases)
          + f"; layout: {layout}", flush=True)
    jobs: dict[str, Callable[[Any, str], Any]]
    try:
        # artifacts come from the pair's reference, whatever framework this candidate is
        framework = case.reference.framework if job == "reference" and case.role == "candidate" else case.framework
        if ":" in job:  # a job another package registers by import path (fine-tuning: vitbench.finetune.job:...)
            module, _, name = job.partition(":")
            jobs = {job: getattr(importlib.import_module(module), name)}
        elif framework in ("keras", "tf_keras"):  # the Keras worker serves tf-keras (Keras 2) sides too
            from . import keras_worker

            setup: Setup = keras_worker.setup
            jobs = {"reference": keras_worker.write_reference}
        else:
            from . import torch_worker

            setup = torch_worker.setup
            jobs = {"reference": torch_worker.write_reference, "warm": torch_worker.warm_compile}
        if ":" not in job:
            jobs["setup"] = lambda c, d: setup_only(setup, c, d)
            jobs["serve"] = lambda c, d: serve(conn, setup, cases, d)
        _preload(cases)
        conn.send(("started", os.getpid()))  # start-up done: the job's timeout counts from here
        result = jobs[job](case, run_dir)
        conn.send(("ok", result))
    except BaseException as e:  # noqa: BLE001  (everything becomes a row; the traceback goes to the log)
        traceback.print_exc()
        sys.stdout.flush()
        conn.send(("error", {"status": classify(e), "error": one_line(e)}))
    finally:
        conn.close()

