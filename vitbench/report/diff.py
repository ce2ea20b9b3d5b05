"""Compare two result sets, honestly both ways.

- Changes are symmetric: ``factor`` is new/old for higher-is-better metrics (old/new for lower-is-better), so >1 is
  better, and ``change_pct`` is 100 * ln(factor) (x5 -> +161, /5 -> -161). A threshold of t% means a factor
  beyond 1+t/100 either way.
- Noise comes from the between-round variation of each run (the 95% interval of each case's samples/s over its
  timed blocks, or of the paired speed ratio over rounds), combined on the log scale; never from the standard
  error of per-iteration latencies, which are not independent. A row from an older run without blocks gets its
  noise from batch means of its latencies.
- Rows that match by identity but ran at another batch size, precision or device are "not comparable (batch 12
  -> 6)", never a regression (timm's tables decay the batch on OOM).
- Nothing matched at all is an input error: the two sets are not about the same cases.
- One device under two names is one device: timm named its RTX 4090 ``rtx4090`` in one release and ``4090`` in the
  next. Device names are compared normalised (case, separators, vendor words such as nvidia/geforce/rtx dropped),
  ``--device-map OLD=NEW`` says two names are one device, and every such decision is printed.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import InputError
from ..measure.stats import log_change_pct, log_halfwidth_pct, median_ci
from .results import Results

IDENTITY = ["task", "pair", "label", "framework", "compile_mode", "img_size", "tokens", "dataset", "train_steps"]
SETTINGS = {"batch_size": "batch", "precision": "precision", "device": "device"}
HIGHER_BETTER = ["samples_per_sec", "speed_ratio", "top1", "top5"]
LOWER_BETTER = ["latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "compile_cold_s", "compile_warm_s",
                "peak_rss_mb", "cuda_peak_allocated_mb"]
SPEED_NOISE = {"samples_per_sec", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99"}
COLUMNS = ["case", "metric", "old", "new", "factor", "change_pct", "noise_pct", "verdict"]


_VENDOR = {"nvidia", "geforce", "tesla", "quadro", "amd", "intel", "radeon", "instinct"}


def normalize_device(name: Any) -> str:
    """A device name as diff compares it: lower case, split on separators, vendor words dropped and the 'rtx'/'gtx'
    prefix of a model number (rtx4090 -> 4090), joined with '-'."""
    tokens = [t for t in re.split(r"[-_\s]+", str(name).lower()) if t and t not in _VENDOR]
    tokens = [re.sub(r"^(?:rtx|gtx)(?=\d)", "", t) for t in tokens if t not in ("rtx", "gtx")]
    return "-".join(tokens)


def parse_device_map(items: list[str] | None) -> dict[str, str]:
    """``--device-map OLD=NEW`` options as {normalised OLD: normalised NEW}."""
    out: dict[str, str] = {}
    for item in items or []:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise InputError(f"--device-map {item!r}: expected OLD=NEW, e.g. rtx4090=4090")
        out[normalize_device(old)] = normalize_device(new)
    return out


def _unify_devices(a: pd.DataFrame, b: pd.DataFrame, mapping: dict[str, str]) -> list[str]:
    """Put both sets' ``device`` column under one name where the names are one device (normalised equal, or
    mapped); returns one line per decision."""
    if "device" not in a.columns or "device" not in b.columns:
        return []
    decisions = []
    olds, news = sorted(set(a.device.astype(str))), sorted(set(b.device.astype(str)))
    for o in olds:
        key = mapping.get(normalize_device(o), normalize_device(o))
        same = [n for n in news if normalize_device(n) == key and n != o]
        for n in same:
            how = "--device-map" if key != normalize_device(o) else f"the same name normalised ({key})"
            decisions.append(f"device '{o}' (old) and '{n}' (new) taken as one device: {how}")
            b.loc[b.device.astype(str) == n, "device"] = o
    return decisions


@dataclass
class DiffReport:
    key: list[str]
    rows: pd.DataFrame  # one row per (case, metric): old, new, factor (>1 better), change_pct (log), noise, verdict
    added: list[str]
    removed: list[str]
    env_changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    not_comparable: list[str] = field(default_factory=list)  # the first ``slower_elsewhere`` got slower too
    slower_elsewhere: int = 0
    device_decisions: list[str] = field(default_factory=list)  # names taken as one device, and why

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows.verdict == "regression"]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.rows[self.rows.verdict == "improvement"]


def _case_name(row: pd.Series, key: list[str]) -> str:
    return " ".join(str(row[k]) for k in key if k in row.index and not pd.isna(row[k]))


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


def speed_noise_pct(res: Results, row: pd.Series, suffix: str = "") -> float | None:
    """Half-width (log %) of a case's 95% between-round interval of samples/s: from the row's columns, else
    from its blocks in latencies.jsonl, else from batch means of its raw latencies (older runs)."""
    h = log_halfwidth_pct(_num(row.get(f"samples_per_sec_ci_low{suffix}")),
                          _num(row.get(f"samples_per_sec_ci_high{suffix}")))
    if h is not None:
        return h
    cid = row.get(f"case_id{suffix}")
    per_block: list[float] = []
    if cid in res.blocks and len(res.blocks[cid]) >= 3:
        per_block = [b["iters"] / b["wall_s"] for b in res.blocks[cid] if b.get("wall_s") and b.get("clean", True)]
    elif cid in res.latencies and len(res.latencies[cid]) >= 6:
        lat = res.latencies[cid]
        k = min(10, len(lat) // 2)
        chunks = [lat[i * len(lat) // k:(i + 1) * len(lat) // k] for i in range(k)]
        per_block = [len(c) / sum(c) for c in chunks if sum(c) > 0]
    if len(per_block) < 3:
        return None
    _, lo, hi, _ = median_ci(per_block)
    return log_halfwidth_pct(lo, hi)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _verdict(change: float, noise: float | None, threshold_pct: float) -> str:
    limit = 100.0 * math.log1p(threshold_pct / 100.0)
    beyond = max(limit, noise or 0.0)
    if change < -beyond:
        return "regression"
    if change > beyond:
        return "improvement"
    if abs(change) > limit:
        return "within noise"
    return "unchanged"


def _keys(old: Results, new: Results) -> tuple[list[str], list[str]]:
    """(identity, settings): the case identity both sets carry, and the settings that must match for a change
    to mean anything."""
    both = set(old.df.columns) & set(new.df.columns)
    ident = [k for k in IDENTITY if k in both]
    if "timm" in (old.kind, new.kind):  # timm's batch size is an outcome (OOM decay), not part of the case
        ident = [k for k in ("label", "img_size") if k in both]
    settings = [k for k in SETTINGS if k in both]
    if old.kind != new.kind:  # a timm table names its device (rtx4090), a run its device kind (cuda:0)
        settings = [k for k in settings if k != "device"]
    return ident, settings


def diff(old: Results, new: Results, threshold_pct: float = 5.0, device_map: dict[str, str] | None = None
         ) -> DiffReport:
    if threshold_pct < 0:
        raise InputError(f"--threshold {threshold_pct:g}: must be >= 0")
    old = dataclasses.replace(old, df=old.df.copy())
    new = dataclasses.replace(new, df=new.df.copy())
    decisions = _unify_devices(old.df, new.df, device_map or {}) if old.kind == new.kind else []
    ident, settings = _keys(old, new)
    key = ident + settings
    names = ident if "timm" in (old.kind, new.kind) else key  # how a case is named in the report
    a = old.df[old.df.status == "ok"] if "status" in old.df else old.df
    b = new.df[new.df.status == "ok"] if "status" in new.df else new.df
    metrics = [m for m in HIGHER_BETTER + LOWER_BETTER if m in a.columns and m in b.columns]
    if "timm" in (old.kind, new.kind):
        metrics = ["samples_per_sec"]
    extra = ["case_id", "samples_per_sec_ci_low", "samples_per_sec_ci_high", "speed_ratio_ci_low",
             "speed_ratio_ci_high"]
    keep = list(dict.fromkeys(key + metrics + extra))  # only what is compared: a narrow, quick merge
    a, b = a[[c for c in keep if c in a.columns]], b[[c for c in keep if c in b.columns]]
    merged = a.merge(b, on=key, how="outer", suffixes=("_old", "_new"), indicator=True)
    both = merged[merged._merge == "both"]
    left, right = merged[merged._merge == "left_only"], merged[merged._merge == "right_only"]
    not_comparable: list[str] = []
    slower_elsewhere = 0
    if settings and len(left) and len(right):  # same case, other batch size / precision / device
        lo = a.merge(left[key], on=key)
        ro = b.merge(right[key], on=key)
        cross = lo.merge(ro, on=ident, suffixes=("_old", "_new"))
        worse: list[str] = []
        for _, r in cross.iterrows():
            changed = [f"{SETTINGS[s]} {r[f'{s}_old']} -> {r[f'{s}_new']}" for s in settings
                       if str(r[f"{s}_old"]) != str(r[f"{s}_new"])]
            line = f"{_case_name(r, ident)}: not comparable ({', '.join(changed)})"
            o, n = _num(r.get("samples_per_sec_old")), _num(r.get("samples_per_sec_new"))
            if o and n and n / o < 1 / (1 + threshold_pct / 100):  # slower too: worth a look, but no verdict
                worse.append(f"{line}; samples/s {o:.4g} -> {n:.4g} ({n / o:.2f}x)")
            else:
                not_comparable.append(line)
        not_comparable = worse + not_comparable
        slower_elsewhere = len(worse)
        paired = cross[ident].drop_duplicates()
        left = left.merge(paired, on=ident, how="left", indicator="_m").query("_m == 'left_only'")
        right = right.merge(paired, on=ident, how="left", indicator="_m").query("_m == 'left_only'")
    anything = old.df[[k for k in key if k in old.df]].merge(new.df[[k for k in key if k in new.df]], on=key)
    if not len(both) and not not_comparable and not len(anything):
        raise InputError(f"no case of {old.source} matches one of {new.source} (matched on {', '.join(key)}): "
                         "these results are not about the same models")
    out: list[dict[str, Any]] = []
    for _, r in both.iterrows():
        name = _case_name(r, names)
        speed_noise = None
        if any(m in SPEED_NOISE for m in metrics):
            ho, hn = speed_noise_pct(old, r, "_old"), speed_noise_pct(new, r, "_new")
            speed_noise = math.hypot(ho, hn) if ho is not None and hn is not None else None
        for m in metrics:
            o, n = _num(r[f"{m}_old"]), _num(r[f"{m}_new"])
            if o is None or n is None or o <= 0 or n <= 0:
                continue
            factor = n / o if m in HIGHER_BETTER else o / n
            change = log_change_pct(1.0, factor)
            noise = speed_noise if m in SPEED_NOISE else None
            if m == "speed_ratio":
                ho = log_halfwidth_pct(_num(r.get("speed_ratio_ci_low_old")), _num(r.get("speed_ratio_ci_high_old")))
                hn = log_halfwidth_pct(_num(r.get("speed_ratio_ci_low_new")), _num(r.get("speed_ratio_ci_high_new")))
                noise = math.hypot(ho, hn) if ho is not None and hn is not None else None
            out.append({"case": name, **{k: r[k] for k in key}, "metric": m, "old": o, "new": n, "factor": factor,
                        "change_pct": change, "noise_pct": noise, "verdict": _verdict(change, noise, threshold_pct)})
    # a case that measured before and fails now is a regression too
    if "status" in old.df and "status" in new.df and old.kind == new.kind == "cases":
        cols = [c for c in key + ["status", "error"] if c in old.df.columns and c in new.df.columns]
        st = old.df[cols].merge(new.df[cols], on=key, suffixes=("_old", "_new"))
        for _, r in st[(st.status_old == "ok") & (st.status_new != "ok")].iterrows():
            out.append({"case": _case_name(r, names), **{k: r[k] for k in key}, "metric": "status", "old": "ok",
                        "new": f"{r.status_new}: {r.get('error_new', '')}", "factor": None, "change_pct": None,
                        "noise_pct": None, "verdict": "regression"})
    return DiffReport(key, pd.DataFrame(out, columns=[*COLUMNS[:1], *key, *COLUMNS[1:]]),
                      [_case_name(r, names) for _, r in right.iterrows()],
                      [_case_name(r, names) for _, r in left.iterrows()], env_changes(old.env, new.env), not_comparable,
                      slower_elsewhere, decisions)
