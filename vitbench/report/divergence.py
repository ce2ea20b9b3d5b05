"""Where candidates part from their reference: the per-block tables a run writes (``numerics/<case_id>.csv``)
drawn as one line per candidate, block on x, max|diff| on a log y-axis, the tolerance marked."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .timm_table import as_float


def tables(run_dir: Path, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, str]]]]:
    """(case row, its per-block rows) for every candidate with a table, failed or within 10x of its tolerance."""
    out = []
    for r in rows:
        path = run_dir / "numerics" / f"{r.get('case_id')}.csv"
        if r.get("role") != "candidate" or not path.is_file():
            continue
        diff, tol = as_float(r.get("max_abs_diff")), as_float(r.get("tolerance_max_abs"))
        close = diff is not None and tol is not None and diff > tol / 10
        if r.get("numerics_status") == "fail" or close:
            with path.open(newline="") as f:
                out.append((r, list(csv.DictReader(f))))
    return out


def divergence_plot(run_dir: Path, rows: list[dict[str, Any]], path: Path) -> Path | None:
    found = tables(run_dir, rows)
    if not found:
        return None
    from .plots import _plt

    plt = _plt()
    longest = max(len(t) for _, t in found)
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * longest + 3), 4.5))
    for r, t in found:
        ys = [max(as_float(b.get("max_abs_diff")) or 0.0, 1e-12) for b in t]
        ax.plot(range(len(t)), ys, marker="o", label=f"{r['pair']}: {r['label']} ({r.get('numerics_status')})")
        tol = as_float(r.get("tolerance_max_abs"))
        if tol:
            ax.axhline(tol, color="#999999", linestyle="--", linewidth=0.8)
    names = [b["block"] for b in max((t for _, t in found), key=len)]
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("max |candidate - reference| (block output)")
    ax.set_title("where candidates part from their reference (dashed: tolerance)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
