"""PNG plots from result rows (headless: matplotlib's Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _f(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def compile_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Cold/warm compile time per compiled mode and steady throughput per mode, per implementation and batch."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("framework", "torch") == "torch"]
    if not any(r["compile_mode"] != "eager" for r in ok):
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
            vals = [_f(by.get((g[0], g[1], mode), {}).get(f"compile_{kind}_s")) or 0 for g in groups]
            ax1.bar([x + (j - 0.5) * 0.4 + (0.1 if kind == "warm" else -0.1) for x in xs], vals, 0.2,
                    color=colours[mode], alpha=alpha, hatch=hatch, label=f"{mode} {kind}")
    ax1.set_ylabel("compile time, s (first call minus eager first call)")
    ax1.set_title("cold vs warm compile")
    for j, mode in enumerate(modes):
        vals = [_f(by.get((g[0], g[1], mode), {}).get("samples_per_sec")) or 0 for g in groups]
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
