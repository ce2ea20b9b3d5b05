"""timm's published benchmark table: same header, order, units, rounding, sort and CRLF line ends."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..modes import KERAS_DEFAULT_BACKEND, MODE_SUFFIX, layout

TIMM_COLUMNS = ["model", "infer_img_size", "infer_samples_per_sec", "infer_step_time", "infer_batch_size",
                "param_count", "infer_gmacs", "infer_macts"]
PRECISION_TAG = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "amp": "amp", "amp_bf16": "amp-bf16"}


TIMM_TRAIN_COLUMNS = ["model", "train_samples_per_sec", "train_step_time", "train_batch_size", "train_img_size",
                      "param_count"]


def framework_tag(row: dict[str, Any], torch_version: str) -> str:
    """Layout and framework of a row as timm's file names put them: ``nchw-pt2141`` for torch rows,
    ``nhwc-keras3151-tensorflow`` for Keras rows (channels-last, on their backend)."""
    if row.get("framework", "torch") == "torch":
        return f"{layout('torch')}-pt{_ver(str(row.get('torch_version') or torch_version))}"
    backend = row.get("backend") or KERAS_DEFAULT_BACKEND
    return f"{layout('keras')}-keras{_ver(str(row.get('keras_version') or 'unknown'))}-{backend}"


def _ver(v: str) -> str:
    return v.split("+")[0].replace(".", "")


def table_name(precision: str, fw_tag: str, device_tag: str, compile_mode: str, task: str = "infer") -> str:
    return f"benchmark-{task}-{PRECISION_TAG.get(precision, precision)}-{fw_tag}-{device_tag}" \
           f"{MODE_SUFFIX.get(compile_mode, '-' + compile_mode)}.csv"


def as_float(v: Any) -> float | None:
    """A CSV cell as a float; None for empty, NaN or text."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def _rounded(r: dict[str, Any], key: str, nd: int) -> Any:
    v = as_float(r.get(key))
    return "" if v is None else round(v, nd)


def _int(r: dict[str, Any], key: str) -> Any:
    v = as_float(r.get(key))
    return "" if v is None else int(v)


def timm_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": r["label"],
        "infer_img_size": _int(r, "img_size"),
        "infer_samples_per_sec": _rounded(r, "samples_per_sec", 2),
        "infer_step_time": _rounded(r, "step_time_ms", 3),
        "infer_batch_size": _int(r, "batch_size"),
        "param_count": _rounded(r, "param_count_m", 2),
        "infer_gmacs": _rounded(r, "gmacs", 2),
        "infer_macts": _rounded(r, "macts_m", 2),
    }


def timm_train_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": r["label"],
        "train_samples_per_sec": _rounded(r, "samples_per_sec", 2),
        "train_step_time": _rounded(r, "step_time_ms", 3),
        "train_batch_size": _int(r, "batch_size"),
        "train_img_size": _int(r, "img_size"),
        "param_count": _rounded(r, "param_count_m", 2),
    }


def _write(path: Path, columns: list[str], rows: list[dict[str, Any]], speed: str) -> Path:
    """Fastest (by the ``speed`` column) first, CRLF line ends: as timm writes its tables."""
    rows = sorted(rows, key=lambda t: t[speed] or 0, reverse=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)
    return path


def write_timm_tables(rows: list[dict[str, Any]], out_dir: Path, torch_version: str,
                      device_tags: dict[str, str]) -> list[Path]:
    """One table per (device, precision, framework and layout, compile mode) over the inference rows that ended ok;
    failures are left out, as in timm (cases.csv keeps them with their errors), and so are rows timed only in
    contended rounds (``timing_contended``: a busy machine's figures in a table of speeds would pass as real)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get("task") != "finetune" and str(r.get("timing_contended")) != "True":
            groups[(r["device"], r["precision"], framework_tag(r, torch_version), r["compile_mode"])].append(
                timm_row(r))
    return [_write(Path(out_dir) / table_name(precision, fw, device_tags.get(device, device), mode),
                   TIMM_COLUMNS, trs, "infer_samples_per_sec")
            for (device, precision, fw, mode), trs in sorted(groups.items())]


def write_train_tables(rows: list[dict[str, Any]], out_dir: Path, torch_version: str,
                       device_tags: dict[str, str]) -> list[Path]:
    """timm's train benchmark table (benchmark-train-*.csv) from fine-tune rows: samples/s and mean step time
    of the optimizer steps (forward, backward, update; data loading excluded, as timm's synthetic-input bench)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:  # a table per framework and layout, as for inference (Keras sides train on their backend)
        if r.get("status") == "ok" and r.get("task") == "finetune":
            groups[(r["device"], r["precision"], framework_tag(r, torch_version))].append(timm_train_row(r))
    return [_write(Path(out_dir) / table_name(precision, fw, device_tags.get(device, device), "eager", "train"),
                   TIMM_TRAIN_COLUMNS, trs, "train_samples_per_sec")
            for (device, precision, fw), trs in sorted(groups.items())]
