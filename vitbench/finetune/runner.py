"""Parent side of ``vitbench finetune``: one worker process per case (timeout, process group ended), the pair's
initial weights made once, rows appended to the same result store as inference cases."""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..runner.artifacts import init_path
from ..runner.executor import Runner, attention_of
from ..runner.session import default_memory_limit_gb, run_job
from .data import DatasetSpec
from .plan import FinetuneCase

JOBS = "vitbench.finetune.job"  # the worker runs f"{JOBS}:finetune" and f"{JOBS}:init_weights"
KERAS_JOBS = "vitbench.finetune.keras_job"  # a Keras side's f"{KERAS_JOBS}:finetune", in a worker of its backend
CURVE_GAP_STEPS = 20  # curve_gap: over the first 20 steps, before float differences alone part two runs
CASE_KEYS = ("suite", "pair", "role", "label", "provider", "model", "framework", "backend", "device", "precision",
             "batch_size", "img_size", "seed")
SETTINGS_COLUMNS = ("optimizer", "lr", "weight_decay", "schedule", "warmup_steps", "label_smoothing")


class FinetuneRunner:
    """Trains the cases one after the other (training is not paired). It uses an inference ``Runner`` for what
    the two share - the result store, the logs folder, the environment columns - and runs its own jobs."""

    task = "finetune"

    def __init__(self, out_dir: Path, env_row: dict[str, Any]) -> None:
        self.runner = Runner(out_dir, env_row)
        self.out, self.store, self.logs = self.runner.out, self.runner.store, self.runner.logs
        self.env_row = env_row
        self.on_progress: Callable[[str], None] | None = None
        self._init_errors: dict[str, str] = {}
        self._ref_loss: dict[tuple[str, str], list[float]] = {}  # a pair's reference's training loss, by step

    def _ensure_init(self, case: FinetuneCase) -> None:
        """The pair's reference, built once with the dataset's classes: the initial weights of every side."""
        if case.settings.init != "reference":
            return
        path = init_path(self.out, case.pair, case.device)
        if path.exists() or str(path) in self._init_errors:
            return
        if (case.reference or case.side).framework != "torch":
            self._init_errors[str(path)] = "the reference is a Keras model"
            return
        out = run_job(case, self.out, f"{JOBS}:init_weights", case.settings.timeout_s,
                      self.logs / f"init-{case.case_id}.log", max_memory_gb=default_memory_limit_gb())
        self._init_errors[str(path)] = out.error

    def run(self, cases: list[FinetuneCase], on_start: Callable[[int, FinetuneCase], None] | None = None,
            on_done: Callable[[int, FinetuneCase, dict[str, Any]], None] | None = None,
            partners: list[FinetuneCase] | None = None) -> list[dict[str, Any]]:
        rows = []
        for i, case in enumerate(cases):
            if on_start:
                on_start(i, case)
            rows.append(self.run_case(case))
            if on_done:
                on_done(i, case, rows[-1])
        return rows

    def run_unit(self, case: FinetuneCase, store: Any) -> None:  # one case, its row written into ``store``
        self.store = self.runner.store = store
        self.run_case(case)

    @staticmethod
    def case_columns(case: FinetuneCase) -> dict[str, Any]:
        return case_row(case)

    def run_case(self, case: FinetuneCase) -> dict[str, Any]:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        row: dict[str, Any] = {**self.env_row, **case_row(case), "started_at": started}
        curve: list[dict[str, Any]] = []
        latencies = None
        if case.framework != "torch" and case.device != "cpu":
            row.update(status="skipped", error=f"Keras fine-tuning runs on cpu here, not {case.device}")
        else:
            self._ensure_init(case)
            job = f"{JOBS}:finetune" if case.framework == "torch" else f"{KERAS_JOBS}:finetune"
            out = run_job(case, self.out, job, case.settings.timeout_s,
                          self.logs / f"{case.case_id}.log", max_memory_gb=default_memory_limit_gb())
            row.update(out.result)
            curve = row.pop("curve", None) or []
            latencies = row.pop("latencies_ms", None)
            row["status"], row["error"] = out.status, out.error
            init_error = self._init_errors.get(str(init_path(self.out, case.pair, case.device)))
            if init_error and row.get("init", "").startswith("own"):
                row["init"] = f"{row['init']} (init job: {init_error})"
        row["duration_s"] = time.perf_counter() - t0
        row.update(self._curve_gap(case, curve))
        self.store.append(row, [{"latencies_ms": latencies}] if latencies else None)
        if curve:
            self.store.append_curve(case.case_id, case.label, curve)
        return row


    def _curve_gap(self, case: FinetuneCase, curve: list[dict[str, Any]]) -> dict[str, Any]:
        """How closely a candidate's training loss follows its reference's over the first CURVE_GAP_STEPS steps (same
        initial weights, same batches): the largest |difference|. The reference's curve is kept for its pair."""
        loss = [p["value"] for p in sorted((p for p in curve if p["metric"] == "train_loss"), key=lambda p: p["step"])]
        key = (case.pair, case.device)
        if case.role == "reference":
            self._ref_loss[key] = loss
            return {}
        ref = self._ref_loss.get(key)
        n = min(CURVE_GAP_STEPS, len(loss), len(ref or []))
        if not n or not case.port or case.settings.init != "reference" or ref is None:
            return {}
        return {"curve_gap": max(abs(a - b) for a, b in zip(loss[:n], ref[:n], strict=True)), "curve_gap_steps": n}


def case_row(case: FinetuneCase) -> dict[str, Any]:
    """A fine-tune row's identity and settings columns (what was trained, and how)."""
    return {**{k: getattr(case, k) for k in CASE_KEYS}, "task": "finetune", "case_id": case.case_id,
            "compile_mode": "eager", "attention": attention_of(case),
            "dataset": DatasetSpec.from_dict(case.dataset).label, "train_steps": case.settings.steps,
            **{k: getattr(case.settings, k) for k in SETTINGS_COLUMNS}}
