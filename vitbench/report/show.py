"""What the CLI prints for reports: the diff as a console table or Markdown."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def fmt(v: Any, nd: int = 2) -> str:
    """A number for a table: '' for empty/NaN, scientific below 0.01."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    if f != f:
        return ""
    if f == 0:
        return "0"
    return f"{f:.2e}" if 0 < abs(f) < 1e-2 else f"{f:.{nd}f}"


def _factor(v: Any) -> str:
    return f"{float(v):.3g}x" if fmt(v) else ""


def print_diff(console: Console, rep: Any, old: str, new: str, threshold: float, markdown: bool,
               show_all: bool) -> None:
    shown = rep.rows if show_all else rep.regressions
    cases = rep.rows["case"].nunique() if len(rep.rows) else 0
    reg_cases = rep.regressions["case"].nunique() if len(rep.regressions) else 0
    head = (f"{cases} matched cases, {reg_cases} regressed (worse by more than a factor {1 + threshold / 100:g}"
            f"{' and beyond the measured noise' if rep.rows.noise_pct.notna().any() else ''}), "
            f"{rep.improvements['case'].nunique() if len(rep.improvements) else 0} improved, "
            f"{len(rep.not_comparable)} not comparable, {len(rep.added)} added, {len(rep.removed)} removed")
    note = ("factor: new vs old, >1 = better (samples/s new/old; latency, time and memory old/new); change: "
            "100 ln(factor), symmetric; noise: the two runs' 95% between-round intervals combined (log %)")

    def val(v: Any) -> str:
        return fmt(v, 3) if not isinstance(v, str) else v

    if markdown:
        print(f"## vitbench diff\n\n`{old}` → `{new}`\n\n{head}\n\n{note}\n")
        if rep.env_changes:
            print("### Environment changes\n\n| field | old | new |\n|---|---|---|")
            for k, a, b in rep.env_changes:
                print(f"| {k} | {a} | {b} |")
            print()
        print("### " + ("All compared metrics" if show_all else "Regressions") + "\n")
        if len(shown):
            print("| case | metric | old | new | factor | change % (log) | noise % | verdict |\n"
                  "|---|---|---|---|---|---|---|---|")
            for r in shown.itertuples():
                print(f"| {r.case} | {r.metric} | {val(r.old)} | {val(r.new)} | {_factor(r.factor)} | "
                      f"{fmt(r.change_pct, 1)} | {fmt(r.noise_pct, 1)} | {r.verdict} |")
        else:
            print("none")
        for title, names in (("Not comparable", rep.not_comparable), ("Added", rep.added),
                             ("Removed", rep.removed)):
            if names:
                print(f"\n### {title} cases\n\n" + "\n".join(f"- {n}" for n in names))
        return
    console.print(escape(f"old: {old}\nnew: {new}\n{head}"), soft_wrap=True)
    for k, a, b in rep.env_changes:
        console.print("[yellow]environment:[/] " + escape(f"{k}: {a} -> {b}"), soft_wrap=True)
    if len(shown):
        t = Table(title="all compared metrics" if show_all else "regressions", caption=note)
        for col in ("case", "metric", "old", "new", "factor", "change %", "noise %", "verdict"):
            t.add_column(col, justify="left" if col in ("case", "metric", "verdict") else "right")
        for r in shown.itertuples():
            colour = {"regression": "red", "improvement": "green"}.get(r.verdict, "white")
            t.add_row(escape(str(r.case)), r.metric, escape(val(r.old)), val(r.new), _factor(r.factor),
                      fmt(r.change_pct, 1), fmt(r.noise_pct, 1), f"[{colour}]{r.verdict}[/]")
        console.print(t)
    elif not show_all:
        console.print("[green]no regressions[/]")
    for line in rep.not_comparable[:20]:
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    for title, names in (("added", rep.added), ("removed", rep.removed)):
        if names:
            more = f" (+{len(names) - 20} more)" if len(names) > 20 else ""
            console.print(escape(f"{title}: " + ", ".join(names[:20]) + more), soft_wrap=True)
