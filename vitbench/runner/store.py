"""The run's result files: cases.csv, pairs.csv, latencies.jsonl; each finished row is written, flushed and fsynced
at once (the files are rewritten only to upgrade an old header or, on --resume, to drop unfinished groups)."""
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
    "device_name", "host", "precision", "compile_mode", "batch_size", "img_size", "tokens", "attention", "status",
    "error",
    "samples_per_sec", "step_time_ms", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
    "latency_ms_stdev", "latency_ms_min", "iters", "timed_s", "rounds", "timing_processes", "samples_per_sec_ci_low",
    "samples_per_sec_ci_high", "speed_ratio", "speed_ratio_ci_low", "speed_ratio_ci_high", "speed_verdict",
    "cpu_steal_pct", "foreign_cpu_pct", "contention_cpus", "gpu_contention", "contended_blocks", "timing_contended",
    "timing_attempts", "first_call_s",
    "eager_first_call_s",
    "compile_cold_s", "compile_warm_s", "compile_first_call_cold_s", "compile_first_call_warm_s",
    "compile_cache_hits_cold", "compile_cache_hits_warm", "compile_steal_pct_cold", "compile_steal_pct_warm",
    "compile_attempts", "regions",
    "graph_breaks", "recompiles", "compiled_max_abs_diff",
    # fine-tune rows (task=finetune): samples_per_sec, step_time_ms and latency_ms_* are then training steps
    "dataset", "num_classes", "train_samples", "val_samples", "train_steps", "epochs", "optimizer", "lr",
    "weight_decay", "schedule", "warmup_steps", "label_smoothing", "init", "top1", "top5", "topk", "val_loss",
    "train_loss_first", "train_loss_last", "data_wait_ms", "train_s", "eval_s", "train_gmacs", "trainable_params_m",
    "train_rss_delta_mb", "weights_path", "events_dir", "sample_grid", "curve_gap", "curve_gap_steps",
    "finetune_differences",
    "param_count_m", "gmacs", "macts_m", "flops_method",
    "numerics_status", "numerics_error", "max_abs_diff", "mean_abs_diff", "rel_err", "cosine_sim",
    "top1_agreement", "tolerance_max_abs", "port_method", "port_tensors", "first_divergence",
    "peak_rss_mb", "forward_rss_delta_mb", "cuda_peak_allocated_mb", "cuda_peak_reserved_mb", "cuda_forward_peak_mb",
    "nvml_used_mb",
    # where the wall time went: the case's set-up jobs by phase, its timing group's processes (shared by its sides)
    "phase_startup_s", "phase_build_s", "phase_flops_memory_s", "phase_numerics_s", "phase_compile_s",
    "phase_warmup_s", "group_sessions_s", "group_rounds_s",
    "threads", "tf32", "seed", "torch_version", "timm_version", "keras_version", "tf_version",
    "vitbench_version", "git_sha", "started_at", "duration_s",
]


# pairs.csv columns: one row per comparison timed in paired rounds: a candidate against its reference
# (comparison "reference"), a compiled mode against the same implementation's eager / full ("compile"), or the
# pair's A/A control against its reference ("control")
PAIR_COLUMNS = [
    "pair", "label", "framework", "backend", "device", "compile_mode", "precision", "batch_size", "img_size", "tokens",
    "reference_label", "reference_compile_mode", "comparison", "speed_ratio", "speed_ratio_ci_low",
    "speed_ratio_ci_high", "confidence", "interval_method", "rounds", "processes", "rounds_run", "contended_rounds",
    "stopped_at_round", "stopped_at_process", "stop_reason", "threshold_pct", "speed_verdict",
    "speed_note", "samples_per_sec", "reference_samples_per_sec", "cpu_steal_pct", "foreign_cpu_pct",
    "contention_cpus", "gpu_contention", "status", "numerics_status",
    "max_abs_diff", "cosine_sim", "numerics_error", "case_id", "reference_case_id",
]


class ResultStore:
    """``cases.csv`` (one row per case), ``pairs.csv`` (one row per candidate and setting: the paired speed ratio)
    and ``latencies.jsonl`` (raw per-iteration ms, by block) in a run directory. Rows are appended, flushed and
    fsynced as they come; the files are rewritten only to upgrade an old header or (``--resume``) to drop rows of
    cases that did not finish."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cases = self.dir / "cases.csv"
        self.latencies = self.dir / "latencies.jsonl"
        self.pairs = self.dir / "pairs.csv"
        self._upgrade_header()

    def _upgrade_header(self) -> None:
        """A cases.csv or pairs.csv from an older vitbench (other columns) is rewritten with today's header before
        rows are appended to it, so --resume never writes rows under the wrong column names."""
        if not self.cases.exists() or self.cases.stat().st_size == 0:
            return
        with self.cases.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != CASE_COLUMNS:
            self._rewrite(self.rows())
        if self.pairs.exists() and self.pairs.stat().st_size:
            with self.pairs.open(newline="") as f:
                header = next(csv.reader(f), [])
            if header != PAIR_COLUMNS:  # an older pairs.csv: its rows compared a candidate with its reference
                _write_csv(self.pairs, PAIR_COLUMNS, [{"comparison": "reference", **r} for r in self.pair_rows()])

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        _write_csv(self.cases, CASE_COLUMNS, rows)

    def rows(self) -> list[dict[str, str]]:
        if not self.cases.exists():
            return []
        with self.cases.open(newline="") as f:
            return list(csv.DictReader(f))

    def done_ids(self) -> set[str]:
        return {r["case_id"] for r in self.rows() if r.get("status") == "ok"}

    def drop_unfinished(self) -> int:
        """For --resume: forget rows of cases that did not end ok, so they run again, and with an inference case
        the rows of its group (the pair at that device, precision, batch size and input), since its sides are
        timed together. Returns how many rows were dropped."""
        rows = self.rows()

        def group(r: dict[str, str]) -> tuple[str, ...]:
            return tuple(r.get(k, "") for k in ("task", "pair", "device", "precision", "batch_size", "img_size",
                                                "tokens"))

        broken = {group(r) for r in rows if r.get("status") != "ok" and r.get("task") != "finetune"}
        keep = [r for r in rows if r.get("status") == "ok" and group(r) not in broken]
        if len(keep) != len(rows):
            self._rewrite(keep)
        if self.pairs.exists():
            done = {r["case_id"] for r in keep}
            pairs = [r for r in self.pair_rows() if r.get("case_id") in done]
            _write_csv(self.pairs, PAIR_COLUMNS, pairs)
        return len(rows) - len(keep)

    def pair_rows(self) -> list[dict[str, str]]:
        if not self.pairs.exists():
            return []
        with self.pairs.open(newline="") as f:
            return list(csv.DictReader(f))

    def append_pair(self, row: dict[str, Any]) -> None:
        _append_csv(self.pairs, PAIR_COLUMNS, row)

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

    def append(self, row: dict[str, Any], blocks: list[dict[str, Any]] | None = None) -> None:
        """One case's row; ``blocks``: its timed blocks (latencies in ms, wall time, contention, clean or not),
        kept in latencies.jsonl with every latency flattened in ``latencies_ms``."""
        _append_csv(self.cases, CASE_COLUMNS, row)
        if blocks:
            lat = [v for b in blocks for v in b["latencies_ms"]]
            meta = [{k: v for k, v in b.items() if k != "latencies_ms"} | {"iters": len(b["latencies_ms"])}
                    for b in blocks]
            with self.latencies.open("a") as f:
                f.write(json.dumps({"case_id": row["case_id"], "latencies_ms": lat, "blocks": meta}) + "\n")
                f.flush()
                os.fsync(f.fileno())


def _append_csv(path: Path, columns: list[str], row: dict[str, Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in columns})
        f.flush()
        os.fsync(f.fileno())


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}" if abs(v) < 1e-3 and v != 0 else round(v, 6)
    return v
