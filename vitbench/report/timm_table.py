"""timm's published benchmark table: same header, order, units, rounding, sort and CRLF line ends."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

TIMM_COLUMNS = ["model", "infer_img_size", "infer_samples_per_sec", "infer_step_time", "infer_batch_size",
                "param_count", "infer_gmacs", "infer_macts"]
PRECISION_TAG = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "amp": "amp", "amp_bf16": "amp-bf16"}
MODE_SUFFIX = {"eager": "", "full": "-dynamo", "regional": "-regional", "graph": "-graph", "xla": "-xla",
               "jit": "-jit"}


TIMM_TRAIN_COLUMNS = ["model", "train_samples_per_sec", "train_step_time", "train_batch_size", "train_img_size",
                      "param_count"]


def table_name(precision: str, torch_version: str, device_tag: str, compile_mode: str, task: str = "infer") -> str:
    ver = torch_version.split("+")[0].replace(".", "")
    return f"benchmark-{task}-{PRECISION_TAG.get(precision, precision)}-nchw-pt{ver}-{device_tag}" \
           f"{MODE_SUFFIX.get(compile_mode, '-' + compile_mode)}.csv"


def as_float(v: Any) -> float | None:
    """A CSV cell as a float; None for empty, NaN or text."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def timm_row(r: dict[str, Any]) -> dict[str, Any]:
    def rnd(key: str, nd: int) -> Any:
        v = as_float(r.get(key))
        return "" if v is None else round(v, nd)

    return {
        "model": r["label"],
        "infer_img_size": "" if as_float(r.get("img_size")) is None else int(float(r["img_size"])),
        "infer_samples_per_sec": rnd("samples_per_sec", 2),
        "infer_step_time": rnd("step_time_ms", 3),
        "infer_batch_size": int(float(r["batch_size"])),
        "param_count": rnd("param_count_m", 2),
        "infer_gmacs": rnd("gmacs", 2),
        "infer_macts": rnd("macts_m", 2),
    }


def write_timm_tables(rows: list[dict[str, Any]], out_dir: Path, torch_version: str,
                      device_tags: dict[str, str]) -> list[Path]:
    """One table per (device, precision, compile mode) over the rows that ended ok; failures are left out,
    as in timm (cases.csv keeps them with their errors)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get("task") != "finetune":
            groups[(r["device"], r["precision"], r["compile_mode"])].append(timm_row(r))
    written = []
    for (device, precision, mode), trs in sorted(groups.items()):
        trs.sort(key=lambda t: t["infer_samples_per_sec"] or 0, reverse=True)
        path = Path(out_dir) / table_name(precision, torch_version, device_tags.get(device, device), mode)
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TIMM_COLUMNS, lineterminator="\r\n")
            w.writeheader()
            w.writerows(trs)
        written.append(path)
    return written


def write_train_tables(rows: list[dict[str, Any]], out_dir: Path, torch_version: str,
                       device_tags: dict[str, str]) -> list[Path]:
    """timm's train benchmark table (benchmark-train-*.csv) from fine-tune rows: samples/s and mean step time
    of the optimizer steps (forward, backward, update; data loading excluded, as timm's synthetic-input bench)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get("task") == "finetune":
            v = as_float(r.get("samples_per_sec"))
            step = as_float(r.get("step_time_ms"))
            params = as_float(r.get("param_count_m"))
            groups[(r["device"], r["precision"])].append({
                "model": r["label"], "train_samples_per_sec": "" if v is None else round(v, 2),
                "train_step_time": "" if step is None else round(step, 3),
                "train_batch_size": int(float(r["batch_size"])),
                "train_img_size": "" if as_float(r.get("img_size")) is None else int(float(r["img_size"])),
                "param_count": "" if params is None else round(params, 2)})
    written = []
    for (device, precision), trs in sorted(groups.items()):
        trs.sort(key=lambda t: t["train_samples_per_sec"] or 0, reverse=True)
        path = Path(out_dir) / table_name(precision, torch_version, device_tags.get(device, device), "eager", "train")
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TIMM_TRAIN_COLUMNS, lineterminator="\r\n")
            w.writeheader()
            w.writerows(trs)
        written.append(path)
    return written
