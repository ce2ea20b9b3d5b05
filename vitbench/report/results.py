"""Reading results: a run directory, a ``cases.csv``, or a timm-format table (ours or timm's published ones),
into one normalised DataFrame. Shared by ``diff``, ``plot`` and ``scan``."""
from __future__ import annotations

import io
import json
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from ..modes import MODE_SUFFIX

# normalised column names (cases.csv names); timm tables are mapped onto them
TIMM_TO_CASES = {"model": "label", "infer_img_size": "img_size", "infer_samples_per_sec": "samples_per_sec",
                 "infer_step_time": "step_time_ms", "infer_batch_size": "batch_size", "param_count": "param_count_m",
                 "infer_gmacs": "gmacs", "infer_macts": "macts_m"}
TABLE_NAME = re.compile(r"benchmark-infer-(?P<precision>[a-z0-9_-]+?)-(?P<layout>nchw|nhwc)-"
                        r"(?:pt(?P<torch>\d+)|keras(?P<keras>\d+)-(?P<backend>tensorflow|jax|torch))-"
                        r"(?P<device>.+?)(?P<mode>-dynamo|-regional|-hierarchical|-graph|-xla|-jit)?\.csv$")
MODE_FROM_SUFFIX = {(suffix or None): mode for mode, suffix in MODE_SUFFIX.items()}


@dataclass
class Results:
    """One set of results: rows (normalised columns), where they came from, and the environment if known."""

    source: str
    kind: str  # "cases" | "timm"
    df: pd.DataFrame
    env: dict[str, Any] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # case_id -> raw ms
    blocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # case_id -> timed blocks (iters, wall_s)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # pairs.csv rows (paired speed ratios)


def _read_csv(path: str) -> pd.DataFrame:
    if re.match(r"https?://", path):
        try:
            with urllib.request.urlopen(path, timeout=15) as r:  # noqa: S310  (user-given URL)
                text = r.read().decode()
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: cannot fetch ({type(e).__name__}: {e}); download it and pass the file") from None
        return pd.read_csv(io.StringIO(text))
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None


def load(path: str | Path) -> Results:
    """Load a run dir, cases.csv, timm-format table or scan CSV (path or http(s) URL)."""
    src = str(path)
    env: dict[str, Any] = {}
    lat: dict[str, list[float]] = {}
    blocks: dict[str, list[dict[str, Any]]] = {}
    pairs: list[dict[str, Any]] = []
    p = Path(src)
    if p.is_dir():
        if not (p / "cases.csv").is_file():
            raise InputError(f"{src}: a results directory needs a cases.csv")
        if (p / "env.json").is_file():
            env = json.loads((p / "env.json").read_text())
        if (p / "latencies.jsonl").is_file():
            for line in (p / "latencies.jsonl").read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    lat[d["case_id"]] = d["latencies_ms"]
                    if d.get("blocks"):
                        blocks[d["case_id"]] = d["blocks"]
        if (p / "pairs.csv").is_file() and (p / "pairs.csv").stat().st_size:
            pairs = pd.read_csv(p / "pairs.csv").to_dict("records")
        p = p / "cases.csv"
        src = str(p)
    elif p.name == "cases.csv" and (p.parent / "env.json").is_file():
        env = json.loads((p.parent / "env.json").read_text())
    df = _read_csv(src)
    if "infer_samples_per_sec" in df.columns and "model" in df.columns:
        df = df.rename(columns=TIMM_TO_CASES)
        m = TABLE_NAME.search(Path(src).name)
        if m:
            env = {"precision": m["precision"], "torch": m["torch"], "keras": m["keras"], "backend": m["backend"],
                   "device": m["device"], "compile_mode": MODE_FROM_SUFFIX[m["mode"]]}
            # what the file name says is part of every row: a changed precision or device is not comparable
            df["precision"], df["device"] = m["precision"], re.sub(r"^cu\d+-", "", m["device"])  # CUDA may change
        df["status"] = "ok"
        return Results(src, "timm", df, env, lat, blocks)
    if {"case_id", "label", "status"} <= set(df.columns):
        return Results(src, "cases", df, env, lat, blocks, pairs)
    raise InputError(f"{src}: neither a vitbench cases.csv nor a timm benchmark table "
                     f"(columns: {', '.join(map(str, df.columns[:6]))}...)")
