"""PNG plots from result rows (headless: matplotlib's Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .timm_table import as_float


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def compile_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Cold/warm compile time per compiled mode and steady throughput per mode, per implementation and batch."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("framework", "torch") == "torch"]
    if not any(r.get("compile_mode", "eager") != "eager" for r in ok):
        return None
    plt = _plt()
    groups = sorted({(r["label"], int(float(r["batch_size"]))) for r in ok})
    modes = [m for m in ("eager", "full", "regional") if any(r["compile_mode"] == m for r in ok)]
    by = {(r["label"], int(float(r["batch_size"])), r["compile_mode"]): r for r in ok}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(groups) * 2), 4.8))
    width = 0.8 / max(len(modes), 1)
    xs = range(len(groups))
    colours = {"eager": "#999999", "full": "#1f77b4", "regional": "#ff7f0e"}
    for j, mode in enumerate(m for m in modes if m != "eager"):
        for kind, alpha, hatch in (("cold", 1.0, ""), ("warm", 0.45, "//")):
            vals = [as_float(by.get((g[0], g[1], mode), {}).get(f"compile_{kind}_s")) or 0 for g in groups]
            ax1.bar([x + (j - 0.5) * 0.4 + (0.1 if kind == "warm" else -0.1) for x in xs], vals, 0.2,
                    color=colours[mode], alpha=alpha, hatch=hatch, label=f"{mode} {kind}")
    ax1.set_ylabel("compile time, s (first call minus eager first call)")
    ax1.set_title("cold vs warm compile")
    for j, mode in enumerate(modes):
        vals = [as_float(by.get((g[0], g[1], mode), {}).get("samples_per_sec")) or 0 for g in groups]
        ax2.bar([x + (j - (len(modes) - 1) / 2) * width for x in xs], vals, width, color=colours[mode], label=mode)
    ax2.set_ylabel("steady-state samples/s")
    ax2.set_title("throughput after compile")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{g[0]}\nbs {g[1]}" for g in groups], fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("torch.compile: eager vs full vs regional")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _impl(row: dict[str, Any], source: str, kind: str) -> str:
    if kind == "timm":
        return Path(source).stem
    return row.get("provider") or "?"


def throughput_vs_params(sets: list[Any], path: Path) -> Path | None:
    """timm-style chart: samples/s vs parameters (log-log), one colour per implementation; Pareto front named."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 7))
    points = []
    for res in sets:
        for r in res.df.to_dict("records"):
            x, y = as_float(r.get("param_count_m")), as_float(r.get("samples_per_sec"))
            if r.get("status", "ok") == "ok" and r.get("task") != "finetune" and x and y:
                points.append((_impl(r, res.source, res.kind), x, y, str(r["label"]), r.get("batch_size")))
    if not points:
        plt.close(fig)
        return None
    impls = sorted({p[0] for p in points})
    cmap = plt.get_cmap("tab10")
    for i, impl in enumerate(impls):
        pts = [p for p in points if p[0] == impl]
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=14 if len(points) > 200 else 40, alpha=0.7,
                   color=cmap(i % 10), label=f"{impl} ({len(pts)})")
    front, best = [], 0.0  # fastest model at or above each size, scanning from the largest
    for p in sorted(points, key=lambda p: -p[1]):
        if p[2] > best:
            front.append(p)
            best = p[2]
    for p in front[:25] if len(points) > 40 else points:
        label = p[3] if len(points) > 40 else f"{p[3]} bs{p[4]}"
        ax.annotate(label, (p[1], p[2]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (M, log)")
    ax.set_ylabel("inference samples/s (log)")
    ax.set_title("throughput vs model size" + (" (named: fastest at or above each size)" if len(points) > 40 else ""))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_percentiles(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """p50 / p90 / p99 latency per case (horizontal bars, ms per batch)."""
    ok = [r for r in rows if r.get("status") == "ok" and as_float(r.get("latency_ms_p50"))]
    if not ok:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(ok) + 1.5))
    names = [f"{r['label']} {r.get('compile_mode', '')} {r.get('precision', '')} bs{r.get('batch_size', '')}"
             for r in ok]
    for q, colour in (("p99", "#d62728"), ("p90", "#ff7f0e"), ("p50", "#1f77b4")):
        ax.barh(names, [as_float(r.get(f"latency_ms_{q}")) or 0 for r in ok], color=colour, label=q)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms per batch (log)")
    ax.set_title("latency percentiles per case")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def numeric_diff(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Max abs diff of each candidate vs its reference (log), with the tolerance."""
    c = [r for r in rows if r.get("role") == "candidate" and as_float(r.get("max_abs_diff")) is not None]
    if not c:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(c) + 1.5))
    names = [f"{r.get('pair', '')}: {r['label']} {r.get('compile_mode', '')} bs{r.get('batch_size', '')}" for r in c]
    vals = [max(as_float(r["max_abs_diff"]) or 0.0, 1e-12) for r in c]
    colours = ["#2ca02c" if r.get("numerics_status") == "ok" else "#d62728" for r in c]
    ax.barh(names, vals, color=colours)
    tols = {as_float(r.get("tolerance_max_abs")) for r in c} - {None}
    for t in tols:
        ax.axvline(t, color="k", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("max |candidate - reference| (log; 0 shown at 1e-12; dashed: tolerance)")
    ax.set_title("numeric difference per candidate")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def token_sweep(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Latency (p50) and timed-loop memory vs token count (token-input cases) and vs image size (image cases),
    one line per implementation: where quadratic attention stops being the cost that matters."""
    ok = [r for r in rows if r.get("status") == "ok" and as_float(r.get("latency_ms_p50"))]
    panels = []
    for kind, key in (("tokens", "tokens"), ("image size, px", "img_size")):
        sub = [r for r in ok if as_float(r.get(key)) and (key == "tokens" or not as_float(r.get("tokens")))]
        sizes: dict[str, set] = {}
        for r in sub:
            sizes.setdefault(r["label"], set()).add(as_float(r[key]))
        if any(len(v) > 1 for v in sizes.values()):  # a sweep: some implementation measured at several sizes
            panels.append((kind, key, sub))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.5 * len(panels)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for row_axes, (kind, key, sub) in zip(axes, panels, strict=True):
        labels = sorted({r["label"] for r in sub}, key=lambda s: (s != "exact", s))
        for metric, ax, ylabel in (("latency_ms_p50", row_axes[0], "latency p50, ms per batch"),
                                   ("forward_rss_delta_mb", row_axes[1], "memory of one forward (RSS growth), MB")):
            for i, label in enumerate(labels):
                pts = sorted((as_float(r[key]), as_float(r.get(metric))) for r in sub if r["label"] == label)
                pts = [p for p in pts if p[1] is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=cmap(i % 10), label=label,
                            linewidth=2.5 if label == "exact" else 1.5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(kind)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        row_axes[0].set_title(f"latency vs {kind}")
        row_axes[1].set_title(f"memory vs {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finetune_accuracy_vs_throughput(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Final top-1 (and top-5 where measured) vs training samples/s, one point per fine-tuned model."""
    ok = [r for r in rows if r.get("task") == "finetune" and r.get("status") == "ok"
          and as_float(r.get("top1")) is not None and as_float(r.get("samples_per_sec"))]
    if not ok:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(ok):
        x, top1, top5 = as_float(r["samples_per_sec"]), as_float(r["top1"]), as_float(r.get("top5"))
        colour = f"C{i % 10}"
        ax.scatter([x], [top1], s=60, color=colour, label=f"{r['label']} ({r.get('pair', '')})")
        ax.annotate(f"{top1:.1f}", (x, top1), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if top5 is not None:
            ax.scatter([x], [top5], s=40, marker="^", facecolors="none", edgecolors=colour)
    n = as_float(ok[0].get("num_classes"))
    if n:
        ax.axhline(100 / n, color="grey", ls=":", lw=1, label=f"chance top-1 ({100 / n:.0f}%)")
    ax.set_xlabel("training samples/s (optimizer steps, data loading excluded)")
    ax.set_ylabel("validation accuracy, %  (o top-1, ^ top-5)")
    r0 = ok[0]
    ax.set_title(f"fine-tune: {r0.get('dataset')}, {r0.get('train_steps')} steps x batch {r0.get('batch_size')}, "
                 f"{r0.get('device')} {r0.get('precision')}", fontsize=10)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def finetune_curves(curves_csv: Path, path: Path) -> Path | None:
    """Training loss (raw and smoothed) and validation top-1 per step, per fine-tuned model."""
    import pandas as pd

    df = pd.read_csv(curves_csv)
    if df.empty:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (_cid, g) in enumerate(df.groupby("case_id", sort=False)):
        label, colour = g["label"].iloc[0], f"C{i % 10}"
        style = ("-", "--", "-.", ":")[i % 4]  # identical curves (a faithful port) stay visible on top of each other
        loss = g[g.metric == "train_loss"].sort_values("step")
        if len(loss):
            ax1.plot(loss.step, loss.value, color=colour, alpha=0.2, lw=0.7)
            ax1.plot(loss.step, loss.value.rolling(10, min_periods=1).mean(), color=colour, ls=style, label=label)
        top1 = g[g.metric == "val_top1"].sort_values("step")
        if len(top1):
            ax2.plot(top1.step, top1.value, marker="o", color=colour, ls=style, label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (label-smoothed CE; line = 10-step mean)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation top-1, %")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"fine-tune curves ({curves_csv.parent.name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
