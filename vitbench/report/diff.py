"""Compare two result sets: match rows on the case key, flag changes worse than a threshold (and, where raw
latencies exist on both sides, larger than the measured noise), list added/removed cases and environment changes."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .results import Results

CASE_KEY = ["task", "label", "framework", "device", "precision", "compile_mode", "batch_size", "img_size", "dataset",
            "train_steps"]
HIGHER_BETTER = ["samples_per_sec", "top1", "top5"]
LOWER_BETTER = ["latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "compile_cold_s", "compile_warm_s",
                "peak_rss_mb", "cuda_peak_allocated_mb"]
LATENCY_BASED = {"samples_per_sec", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99"}


@dataclass
class DiffReport:
    key: list[str]
    rows: pd.DataFrame  # one row per (case, metric): old, new, change_pct (+ = better), noise_pct, verdict
    added: list[str]
    removed: list[str]
    env_changes: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows.verdict == "regression"]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.rows[self.rows.verdict == "improvement"]


def _key(old: Results, new: Results) -> list[str]:
    key = [k for k in CASE_KEY if k in old.df.columns and k in new.df.columns]
    if "timm" in (old.kind, new.kind):  # timm's batch size is an outcome (OOM decay), not part of the case
        key = ["label", "img_size"]
        if any(r.df.duplicated(key).any() for r in (old, new)):
            key.append("batch_size")
    return key


def _case_name(row: pd.Series, key: list[str]) -> str:
    parts = [str(row[k]) for k in key if k in row.index and not pd.isna(row[k])]
    return " ".join(parts)


def _noise_pct(old_lat: list[float] | None, new_lat: list[float] | None) -> float | None:
    """~2 standard errors of the difference of mean latencies, as % of the old mean."""
    if not old_lat or not new_lat or len(old_lat) < 2 or len(new_lat) < 2:
        return None
    se = math.sqrt(statistics.variance(old_lat) / len(old_lat) + statistics.variance(new_lat) / len(new_lat))
    return 200.0 * se / statistics.fmean(old_lat)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif k not in ("git_sha",) and not isinstance(v, list):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = ", ".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in v)
    return out


def env_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    a, b = _flatten(old), _flatten(new)
    skip = ("memory_gb", "nvml.gpus", "platform")
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(skip)]


def diff(old: Results, new: Results, threshold_pct: float = 5.0) -> DiffReport:
    key = _key(old, new)
    a = old.df[old.df.status == "ok"] if "status" in old.df else old.df
    b = new.df[new.df.status == "ok"] if "status" in new.df else new.df
    metrics = [m for m in HIGHER_BETTER + LOWER_BETTER if m in a.columns and m in b.columns]
    if "timm" in (old.kind, new.kind):
        metrics = ["samples_per_sec"]
    keep = list(dict.fromkeys(key + metrics + ["case_id"]))  # only what is compared: a narrow, quick merge
    a, b = a[[c for c in keep if c in a.columns]], b[[c for c in keep if c in b.columns]]
    merged = a.merge(b, on=key, how="outer", suffixes=("_old", "_new"), indicator=True)
    added = [_case_name(r, key) for _, r in merged[merged._merge == "right_only"].iterrows()]
    removed = [_case_name(r, key) for _, r in merged[merged._merge == "left_only"].iterrows()]
    both = merged[merged._merge == "both"]
    out: list[dict[str, Any]] = []
    for _, r in both.iterrows():
        name = _case_name(r, key)
        noise = None
        if old.latencies and new.latencies and "case_id_old" in r:
            noise = _noise_pct(old.latencies.get(r["case_id_old"]), new.latencies.get(r["case_id_new"]))
        for m in metrics:
            o, n = r[f"{m}_old"], r[f"{m}_new"]
            if pd.isna(o) or pd.isna(n) or o == 0:
                continue
            change = (n / o - 1) * 100 if m in HIGHER_BETTER else (o / n - 1) * 100 if n else math.inf
            m_noise = noise if m in LATENCY_BASED else None
            worse = -change
            if worse > threshold_pct and (m_noise is None or worse > m_noise):
                verdict = "regression"
            elif change > threshold_pct and (m_noise is None or change > m_noise):
                verdict = "improvement"
            elif max(worse, change) > threshold_pct:
                verdict = "within noise"
            else:
                verdict = "unchanged"
            out.append({"case": name, **{k: r[k] for k in key}, "metric": m, "old": o, "new": n,
                        "change_pct": change, "noise_pct": m_noise, "verdict": verdict})
    # a case that measured before and fails now is a regression too
    if "status" in old.df and "status" in new.df and old.kind == new.kind == "cases":
        cols = [c for c in key + ["status", "error"] if c in old.df.columns and c in new.df.columns]
        st = old.df[cols].merge(new.df[cols], on=key, suffixes=("_old", "_new"))
        for _, r in st[(st.status_old == "ok") & (st.status_new != "ok")].iterrows():
            out.append({"case": _case_name(r, key), **{k: r[k] for k in key}, "metric": "status", "old": "ok",
                        "new": f"{r.status_new}: {r.get('error_new', '')}", "change_pct": None, "noise_pct": None,
                        "verdict": "regression"})
    cols = ["case", *key, "metric", "old", "new", "change_pct", "noise_pct", "verdict"]
    return DiffReport(key, pd.DataFrame(out, columns=cols), added, removed, env_changes(old.env, new.env))
