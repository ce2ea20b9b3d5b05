"""The files a finished (or interrupted) run writes from its rows: timm-format tables and plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import env as env_mod
from ..runner.artifacts import safe_name
from . import plots
from .divergence import divergence_plot
from .timm_table import write_timm_tables, write_train_tables

PHASES = ("startup", "build", "flops_memory", "numerics", "compile", "warmup")


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    return f if f == f else 0.0


def time_by_phase(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Where the run's wall time went, in seconds: set-up jobs by phase (worker start-up, build, FLOPs and memory,
    numerics, compile, warm-up), the timing processes' start-up and set-up (``sessions``) and their paired rounds,
    the timed calls within them, and the whole (the groups' wall time). ``timed_share``: timed calls / whole."""
    infer = [r for r in rows if r.get("task") != "finetune"]
    out = {p: sum(_num(r.get(f"phase_{p}_s")) for r in infer) for p in PHASES}
    groups: dict[tuple, dict[str, Any]] = {}
    for r in infer:
        groups.setdefault(tuple(str(r.get(k)) for k in ("pair", "device", "precision", "batch_size", "img_size",
                                                        "tokens", "started_at")), r)
    out["sessions"] = sum(_num(r.get("group_sessions_s")) for r in groups.values())
    out["rounds"] = sum(_num(r.get("group_rounds_s")) for r in groups.values())
    out["timed_calls"] = sum(_num(r.get("timed_s")) for r in infer)
    out["wall"] = sum(_num(r.get("duration_s")) for r in groups.values())
    out["timed_share"] = out["timed_calls"] / out["wall"] if out["wall"] else 0.0
    return out


def _record_phases(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """run.json gains ``phases`` (this run dir's rows, resumed parts included)."""
    import json

    path = out_dir / "run.json"
    try:
        info = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        info = {}
    info["phases"] = {k: round(v, 3) for k, v in time_by_phase(rows).items()}
    path.write_text(json.dumps(info, indent=2))


def write_run_outputs(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], out_dir: Path,
                      info: dict[str, Any], device: str) -> list[Path]:
    _record_phases(rows, out_dir)
    written = [out_dir / "pairs.csv"] if (out_dir / "pairs.csv").exists() else []
    written += write_timm_tables(*by_device_name(rows, device, info, out_dir, info.get("torch", {}).get(
        "version", "unknown")))
    for plot in (plots.compile_plot(rows, out_dir / "compile.png"),
                 plots.token_sweep(rows, out_dir / "token_sweep.png"),
                 plots.speed_ratio(pairs, out_dir / "speed_ratio.png"),
                 divergence_plot(out_dir, rows, out_dir / "divergence.png")):
        if plot:
            written.append(plot)
    return written


def write_finetune_outputs(rows: list[dict[str, Any]], out_dir: Path, info: dict[str, Any], device: str
                           ) -> list[Path]:
    written = write_train_tables(*by_device_name(rows, device, info, out_dir, info.get("torch", {}).get(
        "version", "unknown")))
    curves = out_dir / "curves.csv"
    for plot in (plots.finetune_accuracy_vs_throughput(rows, out_dir / "finetune_accuracy_vs_throughput.png"),
                 plots.finetune_curves(curves, out_dir / "finetune_curves.png") if curves.exists() else None):
        if plot:
            written.append(plot)
    return written


def by_device_name(rows: list[dict[str, Any]], device: str, info: dict[str, Any], out_dir: Path, torch_version: str
                   ) -> tuple[list[dict[str, Any]], Path, str, dict[str, str]]:
    """The timm tables' arguments: rows and device tags, a GPU's tag from the GPU that measured the rows (on a Ray
    cluster not the driver's). A mixed cluster (rows of ``device`` naming several GPUs or CPUs in ``device_name``)
    gets one table per device name, tagged from that name."""
    # a Keras worker names its GPU by the device string ("cuda"): not a device name of its own
    names = sorted({str(r.get("device_name")) for r in rows if r.get("device") == device and r.get("device_name")
                    and not str(r.get("device_name")).startswith(("cuda", "cpu:"))})

    def tag(name: str) -> str:
        if device.startswith("cuda"):
            return env_mod.device_tag("cuda", {"torch": {**info.get("torch", {}), "gpus": [name]}})
        return "cpu-" + safe_name(name.lower().split("@")[0].strip())[:40] if len(names) > 1 else "cpu"

    if len(names) < 2:
        return rows, out_dir, torch_version, {device: tag(names[0]) if names else env_mod.device_tag(device, info)}
    out = [{**r, "device": f"{device}@{r['device_name']}"}
           if r.get("device") == device and r.get("device_name") in names else r for r in rows]
    tags = {f"{device}@{n}": tag(n) for n in names}
    if any(r.get("device") == device for r in out):  # rows naming no device of their own keep the driver's tag
        tags[device] = env_mod.device_tag(device, info)
    return out, out_dir, torch_version, tags


def write_plots(sets: list[Any], out: Path) -> list[Path]:
    """Every plot the result sets can fill (``vitbench plot``)."""
    from ..errors import InputError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror or type(e).__name__})") from None
    written = [plots.throughput_vs_params(sets, out / "throughput_vs_params.png")]
    case_rows = [row for s in sets if s.kind == "cases" for row in s.df.to_dict("records")]
    infer_rows = [r for r in case_rows if r.get("task") != "finetune"]
    if infer_rows:
        written += [plots.latency_percentiles(infer_rows, out / "latency_percentiles.png"),
                    plots.compile_plot(infer_rows, out / "compile.png"),
                    plots.token_sweep(infer_rows, out / "token_sweep.png"),
                    plots.numeric_diff(infer_rows, out / "numeric_diff.png"),
                    plots.speed_ratio([p for s in sets for p in s.pairs], out / "speed_ratio.png")]
        for i, s in enumerate(x for x in sets if x.kind == "cases"):  # per-block tables beside a run's cases.csv
            written.append(divergence_plot(Path(s.source).parent, s.df.to_dict("records"),
                                           out / f"divergence{'-' + str(i) if i else ''}.png"))
    if len(infer_rows) < len(case_rows):
        written.append(plots.finetune_accuracy_vs_throughput(case_rows, out / "finetune_accuracy_vs_throughput.png"))
    done = [w for w in written if w]
    if not done:
        raise InputError("plot: nothing to draw (no measured rows)")
    return done
