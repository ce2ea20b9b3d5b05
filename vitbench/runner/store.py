"""Append-only per-case CSV: each finished case is written, flushed and fsynced at once."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

# cases.csv columns, in order (units in the names). Empty cell = not measured (status/error say why).
CASE_COLUMNS = [
    "case_id", "task", "suite", "pair", "role", "label", "provider", "model", "framework", "backend", "device",
    "device_name", "precision", "compile_mode", "batch_size", "img_size", "tokens", "attention", "status", "error",
    "samples_per_sec", "step_time_ms", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
    "latency_ms_stdev", "latency_ms_min", "iters", "timed_s", "cpu_steal_pct", "timing_attempts", "first_call_s",
    "eager_first_call_s",
    "compile_cold_s", "compile_warm_s", "compile_first_call_cold_s", "compile_first_call_warm_s",
    "compile_cache_hits_cold", "compile_cache_hits_warm", "compile_steal_pct_cold", "compile_steal_pct_warm",
    "compile_attempts", "regions",
    "graph_breaks", "recompiles", "compiled_max_abs_diff",
    # fine-tune rows (task=finetune): samples_per_sec, step_time_ms and latency_ms_* are then training steps
    "dataset", "num_classes", "train_samples", "val_samples", "train_steps", "epochs", "optimizer", "lr",
    "weight_decay", "schedule", "warmup_steps", "label_smoothing", "init", "top1", "top5", "topk", "val_loss",
    "train_loss_first", "train_loss_last", "data_wait_ms", "train_s", "eval_s", "train_gmacs", "trainable_params_m",
    "train_rss_delta_mb", "weights_path", "events_dir", "sample_grid",
    "param_count_m", "gmacs", "macts_m", "flops_method",
    "numerics_status", "numerics_error", "max_abs_diff", "mean_abs_diff", "rel_err", "cosine_sim",
    "top1_agreement", "tolerance_max_abs",
    "peak_rss_mb", "forward_rss_delta_mb", "cuda_peak_allocated_mb", "cuda_peak_reserved_mb", "nvml_used_mb",
    "threads", "tf32", "seed", "torch_version", "timm_version", "keras_version", "tf_version",
    "vitbench_version", "git_sha", "started_at", "duration_s",
]


class ResultStore:
    """``cases.csv`` (one row per case) and ``latencies.jsonl`` (raw per-iteration ms) in a run directory."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cases = self.dir / "cases.csv"
        self.latencies = self.dir / "latencies.jsonl"
        self._upgrade_header()

    def _upgrade_header(self) -> None:
        """A cases.csv from an older vitbench (other columns) is rewritten with today's header before rows are
        appended to it, so --resume never writes rows under the wrong column names."""
        if not self.cases.exists() or self.cases.stat().st_size == 0:
            return
        with self.cases.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != CASE_COLUMNS:
            self._rewrite(self.rows())

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = self.cases.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CASE_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cases)

    def rows(self) -> list[dict[str, str]]:
        if not self.cases.exists():
            return []
        with self.cases.open(newline="") as f:
            return list(csv.DictReader(f))

    def done_ids(self) -> set[str]:
        return {r["case_id"] for r in self.rows() if r.get("status") == "ok"}

    def drop_unfinished(self) -> int:
        """For --resume: forget rows of cases that did not end ok, so they run again. Returns how many."""
        rows = self.rows()
        keep = [r for r in rows if r.get("status") == "ok"]
        if len(keep) != len(rows):
            self._rewrite(keep)
        return len(rows) - len(keep)

    def append_curve(self, case_id: str, label: str, points: list[dict[str, Any]]) -> None:
        """Fine-tune curves, long format (case_id, label, step, metric, value) in ``curves.csv``."""
        path = self.dir / "curves.csv"
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["case_id", "label", "step", "metric", "value"])
            w.writerows([case_id, label, p["step"], p["metric"], _cell(p["value"])] for p in points)
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: dict[str, Any], latencies_ms: list[float] | None = None) -> None:
        new = not self.cases.exists() or self.cases.stat().st_size == 0
        with self.cases.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CASE_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _cell(row.get(k)) for k in CASE_COLUMNS})
            f.flush()
            os.fsync(f.fileno())
        if latencies_ms:
            with self.latencies.open("a") as f:
                f.write(json.dumps({"case_id": row["case_id"], "latencies_ms": latencies_ms}) + "\n")
                f.flush()
                os.fsync(f.fileno())


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}" if abs(v) < 1e-3 and v != 0 else round(v, 6)
    return v
