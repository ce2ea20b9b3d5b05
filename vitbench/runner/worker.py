"""The worker: runs in a fresh spawned process, measures one case, sends back a row (or an error).

Only this module's functions run in the child; torch/timm are imported here, never in the parent's hot path.
"""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT = "reference.npz"


def safe_name(text: str) -> str:
    """``text`` usable as a file or folder name: anything but letters, digits and -_. becomes _."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def artifact_path(run_dir: str | Path, pair: str, device: str) -> Path:
    return Path(run_dir) / "artifacts" / f"{safe_name(pair)}-{device.replace(':', '')}" / ARTIFACT


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


def compare_candidate(case: dict[str, Any], run_dir: str | Path,
                      run_candidate: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]) -> dict[str, Any]:
    """A candidate's numerics, the same for every framework: load the reference's artifacts, let the worker port
    the weights and run the input (``run_candidate(state, x) -> output``), compare, judge against the tolerance.
    A failed port is a numerics error; the case's timing still counts."""
    from ..measure import numerics

    if not case["port"]:
        return {"numerics_status": "skipped", "numerics_error": "port: false in the suite"}
    path = artifact_path(run_dir, case["pair"], case["device"])
    if not path.exists():
        return {"numerics_status": "error", "numerics_error": "no reference artifacts (did the reference fail?)"}
    art = np.load(path)
    state = {k[2:]: art[k] for k in art.files if k.startswith("w/")}
    try:
        res = numerics.compare(art["y"], run_candidate(state, art["x"]))
    except Exception as e:  # noqa: BLE001
        return {"numerics_status": "error", "numerics_error": one_line(e)}
    ok = res["max_abs_diff"] <= case["tolerance_max_abs"]
    if case.get("tolerance_min_cosine") is not None:
        ok = ok and res["cosine_sim"] >= case["tolerance_min_cosine"]
    return {**res, "numerics_status": "ok" if ok else "fail", "tolerance_max_abs": case["tolerance_max_abs"]}


def main(case: dict[str, Any], run_dir: str, conn: Any, log_path: str, env: dict[str, str], job: str) -> None:
    """Entry point of the child process. ``job``: 'measure', 'prepare' (reference
    artifacts only), 'warm' (second-launch compile time), 'finetune' or 'finetune_init' (a pair's initial weights)."""
    if hasattr(os, "setsid"):
        os.setsid()  # own process group: the runner ends it whole, compile-worker pools included
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.environ.update(env)
    print(f"== vitbench worker pid {os.getpid()} job={job} case={case}", flush=True)
    try:
        if job == "prepare" and case["role"] == "candidate":
            # artifacts come from the pair's reference, whatever framework this candidate is
            case = {**case, "framework": "keras" if case["reference"]["provider"] in ("keras", "vitbench_keras")
                    else "torch"}
        if job.startswith("finetune"):
            from ..finetune import job as finetune_job

            jobs = {"finetune": finetune_job.finetune, "finetune_init": finetune_job.init_weights}
        elif case["framework"] == "keras":
            from . import keras_worker

            jobs = {"measure": keras_worker.measure, "prepare": keras_worker.prepare}
        else:
            from . import torch_worker

            jobs = {"measure": torch_worker.measure, "prepare": torch_worker.prepare,
                    "warm": torch_worker.warm_compile}
        result = jobs[job](case, run_dir)
        conn.send(("ok", result))
    except BaseException as e:  # noqa: BLE001  (everything becomes a row; the traceback goes to the log)
        traceback.print_exc()
        sys.stdout.flush()
        conn.send(("error", {"status": classify(e), "error": one_line(e)}))
    finally:
        conn.close()

