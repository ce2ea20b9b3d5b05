"""PNG plots from result rows (headless: matplotlib's Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..modes import MODES
from .figfit import finish, wrap_note
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
    modes = [m for m in MODES["torch"] if any(r["compile_mode"] == m for r in ok)]
    by = {(r["label"], int(float(r["batch_size"])), r["compile_mode"]): r for r in ok}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(groups) * 2), 4.8))
    width = 0.8 / max(len(modes), 1)
    xs = range(len(groups))
    colours = {"eager": "#999999", "full": "#1f77b4", "regional": "#ff7f0e", "hierarchical": "#2ca02c"}
    compiled = [m for m in modes if m != "eager"]
    slot = 0.8 / len(compiled)  # one slot per compiled mode, split into cold | warm
    for j, mode in enumerate(compiled):
        for kind, alpha, hatch in (("cold", 1.0, ""), ("warm", 0.45, "//")):
            vals = [as_float(by.get((g[0], g[1], mode), {}).get(f"compile_{kind}_s")) or 0 for g in groups]
            shift = (j - (len(compiled) - 1) / 2) * slot + (slot / 4 if kind == "warm" else -slot / 4)
            ax1.bar([x + shift for x in xs], vals, slot / 2, color=colours[mode], alpha=alpha, hatch=hatch,
                    label=f"{mode} {kind}")
    ax1.set_ylabel("compile time, s (first call minus eager first call)")
    ax1.set_title("cold vs warm compile")
    for j, mode in enumerate(modes):
        cells = [by.get((g[0], g[1], mode), {}) for g in groups]
        vals = [as_float(c.get("samples_per_sec")) or 0 for c in cells]
        err = list(zip(*[_ci(c, "samples_per_sec_ci_low", "samples_per_sec_ci_high", v)
                         for c, v in zip(cells, vals, strict=True)], strict=True))
        ax2.bar([x + (j - (len(modes) - 1) / 2) * width for x in xs], vals, width, color=colours[mode], label=mode,
                yerr=err, capsize=3, error_kw={"lw": 1})
    ax2.set_ylabel("steady-state samples/s (bars: interval over timing processes)")
    ax2.set_title("throughput after compile")
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{g[0]}\nbs {g[1]}" for g in groups], fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("torch.compile: eager vs " + " vs ".join(compiled))
    finish(fig, path, 120)
    return path


def _impl(row: dict[str, Any], source: str, kind: str) -> str:
    """The implementation a row measured: the table for timm's tables, else the provider (and Keras backend)."""
    if kind == "timm":
        return Path(source).stem
    prov = str(row.get("provider") or "?")
    backend = row.get("backend")
    return f"{prov}-{backend}" if isinstance(backend, str) and backend else prov


def _run_name(source: str) -> str:
    p = Path(source)
    return p.parent.name if p.name == "cases.csv" else p.stem


def _ci(row: dict[str, Any], lo: str, hi: str, v: float) -> tuple[float, float]:
    """Error-bar lengths (below, above) from interval columns; (0, 0) where the row has none."""
    low, high = as_float(row.get(lo)), as_float(row.get(hi))
    if low is None or high is None:
        return 0.0, 0.0
    return max(v - low, 0.0), max(high - v, 0.0)


def _note_left_out(fig: Any, left_out: list[str]) -> float:
    """The series a figure could not draw, named at its foot (wrapped to its width); returns the share of the
    figure's height the note takes (0 without one), for the layout to keep clear."""
    if not left_out:
        return 0.0
    more = f" (+{len(left_out) - 6} more)" if len(left_out) > 6 else ""
    text = wrap_note(fig, f"not drawn ({len(left_out)}): " + "; ".join(left_out[:6]) + more)
    fig.text(0.01, 0.005, text, fontsize=7, color="#d62728", va="bottom")
    return ((text.count("\n") + 1) * 7 * 1.3 / 72 + 0.05) / fig.get_size_inches()[1]


def throughput_vs_params(sets: list[Any], path: Path) -> Path | None:
    """timm-style chart: samples/s vs parameters (log-log), one colour per implementation and one marker per
    result set, with each point's 95% between-round interval as an error bar; Pareto front named. Rows that
    cannot be drawn (failed, or no parameter count) are listed on the figure, never dropped silently."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 7))
    points, left_out = [], []
    for res in sets:
        run = _run_name(res.source)
        for r in res.df.to_dict("records"):
            if r.get("task") == "finetune":
                continue
            x, y = as_float(r.get("param_count_m")), as_float(r.get("samples_per_sec"))
            if r.get("status", "ok") == "ok" and x and y:
                err = _ci(r, "samples_per_sec_ci_low", "samples_per_sec_ci_high", y)
                points.append((_impl(r, res.source, res.kind), x, y, str(r["label"]), r.get("batch_size"), run, err))
            else:
                why = r.get("status") if r.get("status", "ok") != "ok" else "no params" if not x else "no speed"
                left_out.append(f"{r.get('label')} bs{r.get('batch_size')} ({why}, {run})")
    if not points:
        plt.close(fig)
        return None
    impls = sorted({p[0] for p in points})
    runs = list(dict.fromkeys(p[5] for p in points))
    cmap, markers = plt.get_cmap("tab10"), "osD^vP*X"
    for i, impl in enumerate(impls):
        for j, run in enumerate(runs):
            pts = [p for p in points if p[0] == impl and p[5] == run]
            if not pts:
                continue
            label = f"{impl} ({len(pts)})" + (f" - {run}" if len(runs) > 1 else "")
            ax.errorbar([p[1] for p in pts], [p[2] for p in pts], yerr=[[p[6][0] for p in pts], [p[6][1] for p in pts]],
                        fmt=markers[j % len(markers)], ms=4 if len(points) > 200 else 6, alpha=0.75,
                        color=cmap(i % 10), capsize=2, label=label)
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
    ax.set_ylabel("inference samples/s (log; bars: 95% interval over rounds)")
    ax.set_title("throughput vs model size" + (" (named: fastest at or above each size)" if len(points) > 40 else ""))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    finish(fig, path, 120, rect=(0, _note_left_out(fig, left_out), 1, 1))
    return path


def latency_percentiles(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """p50 / p90 / p99 latency per case (horizontal bars, ms per batch); the black whisker is the 95% interval of
    the mean step time over rounds. Failed cases are listed, not drawn."""
    ok = [r for r in rows if r.get("status") == "ok" and as_float(r.get("latency_ms_p50"))]
    left_out = [f"{r.get('label')} bs{r.get('batch_size')} ({r.get('status')})" for r in rows if r not in ok]
    if not ok:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(ok) + 1.5))
    names = [f"{r['label']} {r.get('compile_mode', '')} {r.get('precision', '')} bs{r.get('batch_size', '')}"
             for r in ok]
    for q, colour in (("p99", "#d62728"), ("p90", "#ff7f0e"), ("p50", "#1f77b4")):
        ax.barh(names, [as_float(r.get(f"latency_ms_{q}")) or 0 for r in ok], color=colour, label=q)
    for y, r in enumerate(ok):
        bs, lo, hi = (as_float(r.get(k)) for k in ("batch_size", "samples_per_sec_ci_high", "samples_per_sec_ci_low"))
        if bs and lo and hi:  # samples/s interval as ms per batch (high samples/s = low latency)
            ax.plot([1e3 * bs / lo, 1e3 * bs / hi], [y, y], color="k", lw=1.5, marker="|",
                    label="95% interval of mean step" if y == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms per batch (log)")
    ax.set_title("latency percentiles per case")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    finish(fig, path, 120, rect=(0, _note_left_out(fig, left_out), 1, 1))
    return path


def numeric_diff(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Max abs diff of each candidate vs its reference (log), with the tolerance. Candidates whose check failed
    without a number (NaN output, failed port) are drawn as red crosses at the right edge, with the reason."""
    c = [r for r in rows if r.get("role") == "candidate" and (
        as_float(r.get("max_abs_diff")) is not None or r.get("numerics_status") in ("fail", "error", "port_failed"))]
    if not c:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(c) + 1.5))
    names = [f"{r.get('pair', '')}: {r['label']} {r.get('compile_mode', '')} bs{r.get('batch_size', '')}" for r in c]
    vals = [as_float(r.get("max_abs_diff")) for r in c]
    drawn = [max(v, 1e-12) if v is not None else 0.0 for v in vals]
    colours = ["#2ca02c" if r.get("numerics_status") == "ok" else "#d62728" for r in c]
    ax.barh(names, drawn, color=colours)
    tols = {as_float(r.get("tolerance_max_abs")) for r in c} - {None}
    for t in tols:
        ax.axvline(t, color="k", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    finite = [v for v in drawn if v > 0] + list(tols)
    right = max(finite) * 100 if finite else 1.0
    for y, (r, v) in enumerate(zip(c, vals, strict=True)):
        if v is None:
            ax.plot([right], [y], marker="x", color="#d62728", ms=10, mew=2)
            why = str(r.get("numerics_status"))
            ax.annotate(f"{why}: {str(r.get('numerics_error') or '')[:60]}", (right, y), fontsize=7, color="#d62728",
                        xytext=(-6, 4), textcoords="offset points", ha="right")
        elif r.get("numerics_status") != "ok":
            ax.annotate(str(r.get("numerics_status")), (drawn[y], y), fontsize=7, color="#d62728", xytext=(3, -3),
                        textcoords="offset points")
    ax.set_xlim(right=right * 10)
    ax.set_xlabel("max |candidate - reference| (log; 0 at 1e-12; dashed: tolerance; x: failed)")
    ax.set_title("numeric difference per candidate (green ok, red failed)")
    ax.invert_yaxis()
    finish(fig, path, 120)
    return path


def _short(label: str, pair: str) -> str:
    """A side's label without the pair's model name it repeats ('vitbench_keras-tensorflow/swin_t' in pair
    'swin_t' -> 'vitbench_keras-tensorflow')."""
    return label[: -len(pair) - 1] if label.endswith("/" + pair) and len(label) > len(pair) + 1 else label


def _ratio_rows(ax: Any, pts: list[dict[str, Any]], colours: dict[str, str], seen: set[str], compile_: bool) -> None:
    """One panel of speed ratios: the pair as a bold heading row, then a row per comparison (side, mode, batch;
    a compiled mode says what it is against), its ratio [interval] and verdict written beside it."""
    import matplotlib.transforms as mtransforms

    labels, y = [], 0
    text_at = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)
    for pair in dict.fromkeys(str(p["pair"]) for p in pts):
        labels.append((y, pair, True))
        y += 1
        for p in (q for q in pts if str(q["pair"]) == pair):
            v = as_float(p["speed_ratio"]) or 0.0
            lo, hi = _ci(p, "speed_ratio_ci_low", "speed_ratio_ci_high", v)
            verdict = str(p.get("speed_verdict"))
            ax.errorbar([v], [y], xerr=[[lo], [hi]], fmt="o", color=colours.get(verdict, "k"), capsize=3,
                        label=verdict if verdict not in seen else None)
            seen.add(verdict)
            what = f"vs its {p.get('reference_compile_mode', '')}" if compile_ else ""
            labels.append((y, f"{_short(str(p['label']), pair)} {p.get('compile_mode', '')} {what} "
                              f"bs{p.get('batch_size', '')}".replace("  ", " "), False))
            interval = f" [{v - lo:.2f}, {v + hi:.2f}]" if lo or hi else ""
            ax.text(1.01, y, f"{v:.2f}x{interval} {verdict}", transform=text_at, va="center", fontsize=8,
                    color=colours.get(verdict, "k"))
            y += 1
    ax.set_yticks([t[0] for t in labels])
    ax.set_yticklabels([t[1] for t in labels], fontsize=8)
    for tick, (_, _, bold) in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_fontweight("bold" if bold else "normal")
    ax.set_ylim(y - 0.5, -0.5)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=1)
    ax.grid(axis="x", which="major", alpha=0.3)


def speed_ratio(pairs: list[dict[str, Any]], path: Path) -> Path | None:
    """Each candidate's paired speed ratio vs its reference, with its interval (the value written beside it),
    coloured by verdict; the band around 1 is the threshold within which 'same' is called. What a compiled mode
    gains over the same implementation's eager (comparison 'compile') is a panel of its own, apart from the
    comparisons with the reference."""
    pts = [p for p in pairs if as_float(p.get("speed_ratio")) is not None]
    if not pts:
        return None
    plt = _plt()
    panels = [(title, rows) for title, rows in (
        ("vs the reference (and the A/A control vs the reference)",
         [p for p in pts if p.get("comparison") != "compile"]),
        ("compiled mode vs the same implementation's eager (what compiling buys)",
         [p for p in pts if p.get("comparison") == "compile"])) if rows]
    heights = [len(rows) + len({p["pair"] for p in rows}) for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 0.32 * sum(heights) + 1.6 * len(panels)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colours = {"faster": "#2ca02c", "slower": "#d62728", "same": "#1f77b4", "inconclusive": "#7f7f7f",
               "contended": "#ff7f0e"}
    seen: set[str] = set()
    for ax, (title, rows) in zip(axes[:, 0], panels, strict=True):
        _ratio_rows(ax, rows, colours, seen, compile_=title.startswith("compiled"))
        t = as_float(rows[0].get("threshold_pct")) or 0.0
        if not title.startswith("compiled"):
            ax.axvspan(1 / (1 + t / 100), 1 + t / 100, color="#1f77b4", alpha=0.1, label=f"+-{t:g}% (same)")
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("speed ratio, samples/s over the other side's (log; >1 = faster; bars: interval)")
    fig.suptitle("paired speed ratios", fontsize=10)
    axes[0, 0].legend(fontsize=7, loc="best")
    finish(fig, path, 120)
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
            missing = []
            for i, label in enumerate(labels):
                pts = sorted((as_float(r[key]), as_float(r.get(metric))) for r in sub if r["label"] == label)
                pts = [p for p in pts if p[1] is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=cmap(i % 10), label=label,
                            linewidth=2.5 if label == "exact" else 1.5)
                else:
                    missing.append(label)
            if missing:  # a series the other panel has, named with why it is not here
                ax.text(0.01, 0.01, wrap_note(fig, f"not drawn: {', '.join(missing)} (no {metric} in their "
                                              "rows)", 7)[:400],
                        transform=ax.transAxes, fontsize=7, color="#d62728", va="bottom")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(kind)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        row_axes[0].set_title(f"latency vs {kind}")
        row_axes[1].set_title(f"memory vs {kind}")
    finish(fig, path, 110)
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
    finish(fig, path, 120)
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
    finish(fig, path, 120)
    return path
