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
    "case_id", "suite", "pair", "role", "label", "provider", "model", "framework", "backend", "device",
    "device_name", "precision", "compile_mode", "batch_size", "img_size", "tokens", "attention", "status", "error",
    "samples_per_sec", "step_time_ms", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
    "latency_ms_stdev", "latency_ms_min", "iters", "timed_s", "cpu_steal_pct", "timing_attempts", "first_call_s",
    "eager_first_call_s",
    "compile_cold_s", "compile_warm_s", "compile_first_call_cold_s", "compile_first_call_warm_s",
    "compile_cache_hits_cold", "compile_cache_hits_warm", "compile_steal_pct_cold", "compile_steal_pct_warm",
    "compile_attempts", "regions",
    "graph_breaks", "recompiles", "compiled_max_abs_diff",
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
            tmp = self.cases.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CASE_COLUMNS, extrasaction="ignore")
                w.writeheader()
                w.writerows(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.cases)
        return len(rows) - len(keep)

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
