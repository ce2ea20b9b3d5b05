"""What the CLI prints for reports: the diff as a console table or Markdown."""
from __future__ import annotations

import json
import time
from pathlib import Path
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
        for line in rep.device_decisions:
            print(f"- {line}\n")
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
    for line in rep.device_decisions:
        console.print("[yellow]device:[/] " + escape(line), soft_wrap=True)
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
    k = rep.slower_elsewhere  # every one that got slower at another setting is listed; of the rest, a few
    for line in rep.not_comparable[:k] + rep.not_comparable[k:k + 10]:
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    if len(rep.not_comparable) > k + 10:
        console.print(f"[yellow]... and {len(rep.not_comparable) - k - 10} more not comparable[/] (--markdown "
                      "lists them all)")
    for title, names in (("added", rep.added), ("removed", rep.removed)):
        if names:
            more = f" (+{len(names) - 20} more)" if len(names) > 20 else ""
            console.print(escape(f"{title}: " + ", ".join(names[:20]) + more), soft_wrap=True)


def print_results(console: Console, written: list[Any]) -> None:
    console.print(escape("results: " + "\n         ".join(str(w) for w in written)))


def numerics_exit(err_console: Console, rows: list[dict[str, Any]]) -> int:
    """1 when a candidate failed its numeric check (said in one line), else 0."""
    bad = [r for r in rows if r.get("numerics_status") in ("fail", "error", "port_failed")]
    ports = sum(r.get("numerics_status") == "port_failed" for r in bad)
    if bad:
        err_console.print(f"[bold red]{len(bad)} case(s) failed the numeric check[/]"
                          + (f" ({ports} of them: weight port failed)" if ports else ""))
    return 1 if bad else 0


def ratio_text(r: dict[str, Any]) -> str:
    """'1.02x [0.99, 1.05] ' from a row's speed ratio and its interval ('1.02x (no interval) ' without one)."""
    if not fmt(r.get("speed_ratio")):
        return ""
    if not fmt(r.get("speed_ratio_ci_low")):
        return f"{float(r['speed_ratio']):.2f}x (no interval) "
    lo, hi = float(r["speed_ratio_ci_low"]), float(r["speed_ratio_ci_high"])
    return f"{float(r['speed_ratio']):.2f}x [{lo:.2f}, {hi:.2f}] "


def print_run_summary(console: Console, rows: list[dict[str, Any]], written: list[Any],
                      pairs: list[dict[str, Any]] | None = None) -> None:
    """The run's table: one line per case; candidates show their paired speed ratio with its 95% interval over
    timing processes and verdict, never one sample's ratio. Then the pairs' A/A controls, why a verdict is what it
    is where pairs.csv says so, and one line per failed numeric check and per contended pair."""
    t = Table(title="vitbench summary (vs ref: paired speed ratio [interval over timing processes, 95% over all "
                    "looks] verdict)")
    for col in ("implementation", "mode", "prec", "bs", "status", "img/s", "p50 ms", "p99 ms", "vs ref",
                "max|diff|", "GMACs"):
        t.add_column(col, justify="left" if col in ("implementation", "status", "vs ref") else "right")
    colours = {"faster": "green", "slower": "red", "same": "cyan", "contended": "yellow"}
    for r in rows:
        ratio = ""
        if r["role"] == "candidate" and r.get("speed_verdict"):
            v = r["speed_verdict"]
            ratio = f"{ratio_text(r)}[{colours.get(v, 'white')}]{escape(v)}[/]"
        status = escape(r["status"]) if r["status"] == "ok" else f"[red]{escape(r['status'])}[/]"
        ns = r.get("numerics_status")
        if ns in ("fail", "error", "port_failed"):
            status += f" [red]({'port failed' if ns == 'port_failed' else 'numerics'})[/]"
        t.add_row(escape(str(r["label"])), escape(str(r["compile_mode"])), escape(str(r["precision"])),
                  str(r["batch_size"]), status, fmt(r.get("samples_per_sec")), fmt(r.get("latency_ms_p50")),
                  fmt(r.get("latency_ms_p99")), ratio, fmt(r.get("max_abs_diff")), fmt(r.get("gmacs")))
    console.print(t)
    from .outputs import time_by_phase

    t = time_by_phase(rows)
    if t["wall"]:
        names = {"startup": "worker start-up", "build": "build", "flops_memory": "FLOPs and memory",
                 "numerics": "numerics", "compile": "compile", "warmup": "warm-up",
                 "sessions": "timing processes' set-up", "rounds": "paired rounds"}
        parts = ", ".join(f"{name} {t[k]:.0f} s" for k, name in names.items() if t[k] >= 0.5)
        console.print(f"wall time {t['wall']:.0f} s: {parts}; timed calls {t['timed_calls']:.0f} s "
                      f"({100 * t['timed_share']:.0f}% of the wall time)", soft_wrap=True)
    stops = [p for p in pairs or [] if p.get("stopped_at_process") not in (None, "")]
    if stops:
        early = sorted(int(float(p["stopped_at_process"])) for p in stops
                       if str(p.get("stop_reason", "")).startswith("settled"))
        console.print(f"sequential stopping: {len(early)} of {len(stops)} comparisons settled"
                      + (f" (after {', '.join(map(str, early))} timing processes)" if early else ""), soft_wrap=True)
    for p in pairs or []:
        where = escape(f"{p['pair']}: {p['label']} {p['compile_mode']} {p['precision']} bs{p['batch_size']}")
        if p.get("comparison") == "control":
            console.print(f"A/A control: {where} vs {escape(str(p['reference_label']))}: {ratio_text(p)}"
                          f"{escape(str(p['speed_verdict']))} (how far apart two instances of the reference land)",
                          soft_wrap=True)
        elif p.get("comparison") == "reference" and p.get("speed_note") and p.get("speed_verdict") != "contended":
            console.print(f"[yellow]note:[/] {where}: {escape(str(p['speed_note']))}", soft_wrap=True)
    for r in rows:
        ns, where = r.get("numerics_status"), escape(f"{r['pair']}: {r['label']} {r['compile_mode']} "
                                                     f"{r['precision']} bs{r['batch_size']}")
        if ns == "port_failed":
            console.print(f"[red]port failed:[/] {where}: " + escape(str(r.get("numerics_error"))), soft_wrap=True)
        elif ns in ("fail", "error"):
            first = r.get("first_divergence")
            where_from = (f"; fails from {first}: the blocks before it agree (numerics/{r['case_id']}.csv)"
                          if first else "")
            console.print(f"[red]numerics {ns}:[/] {where}: " + escape(str(r.get("numerics_error") or "") + where_from),
                          soft_wrap=True)
        if r.get("speed_verdict") == "contended" or str(r.get("timing_contended")) == "True":
            console.print(f"[yellow]contended:[/] {where}: the machine was busy during most rounds ("
                          f"{fmt(r.get('contended_blocks'), 0)} contended blocks; other processes used "
                          f"{fmt(r.get('foreign_cpu_pct'), 0)}% of the CPU on average, hypervisor steal "
                          f"{fmt(r.get('cpu_steal_pct'), 1)}%): no verdict, left out of the timm tables; run again "
                          "on a quiet machine", soft_wrap=True)
    print_results(console, written)
    import psutil

    console.print(f"done in {time.time() - psutil.Process().create_time():.0f} s (wall time from the command's start)")


def print_finetune_summary(console: Console, rows: list[dict[str, Any]], num_classes: int, written: list[Any],
                           run_dir: Path) -> None:
    """The fine-tune table, failures and init notes, then the files written (``written`` after cases.csv) and
    where the TensorBoard events, weights and sample grids are."""
    t = Table(title=f"vitbench finetune (chance top-1 = {100 / num_classes:.1f}%)")
    for col in ("implementation", "init", "status", "top-1 %", "top-5 %", "val loss", "train img/s", "step ms",
                "peak MB", "train GMACs/img", "params M"):
        t.add_column(col, justify="left" if col in ("implementation", "init", "status") else "right")
    for r in rows:
        status = escape(r["status"]) if r["status"] == "ok" else f"[red]{escape(r['status'])}[/]"
        mem = r.get("cuda_peak_allocated_mb") or r.get("peak_rss_mb")
        init = (r.get("init") or "").split(";")[0].split(",")[0]
        t.add_row(escape(str(r["label"])), escape(init), status, fmt(r.get("top1")), fmt(r.get("top5")),
                  fmt(r.get("val_loss"), 3), fmt(r.get("samples_per_sec"), 1), fmt(r.get("step_time_ms"), 1),
                  fmt(mem, 0), fmt(r.get("train_gmacs"), 3), fmt(r.get("param_count_m"), 3))
    console.print(t)
    for r in rows:
        if r["status"] not in ("ok", "skipped"):
            console.print(f"[red]{escape(r['status'])}[/] " + escape(f"{r['label']}: {r['error']}"), soft_wrap=True)
        elif "port failed" in (r.get("init") or "") or "no reference weights" in (r.get("init") or ""):
            console.print("[yellow]note:[/] " + escape(f"{r['label']} trained from its own init: {r['init']}"),
                          soft_wrap=True)
    print_results(console, [run_dir / "cases.csv", *written,
                            f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}",
                            f"weights: {run_dir / 'weights'}, sample grids: {run_dir / 'samples'}"])


def print_scan(console: Console, res: Any, top: int, previous: str | None, csv_out: Any, emit: Any = None,
               emitted: int = 0) -> None:
    fam = res.families
    counts = fam.status.value_counts().to_dict()
    kinds = ("new", "new, covered", "uncovered", "covered", "test models (ignored)")
    console.print(f"{len(res.models)} models in {len(fam)} families: "
                  + ", ".join(f"{counts.get(k, 0)} {k}" for k in kinds if k in counts or k != kinds[-1])
                  + (" (no --previous: nothing is marked new)" if previous is None else ""))
    t = Table(title=f"families (top {top}; score = samples/s relative to the size trend, 1.0 = on trend)")
    for col in ("family", "status", "timm module", "models", "best model", "params M", "samples/s", "score",
                "examples"):
        t.add_column(col, justify="right" if col in ("models", "params M", "samples/s", "score") else "left")
    for r in fam.head(top).itertuples():
        colour = {"new": "green", "new, covered": "green", "covered": "cyan"}.get(r.status, "white")
        t.add_row(escape(r.family), f"[{colour}]{escape(r.status)}[/]", escape(str(r.architecture)), str(r.models),
                  escape(str(r.best_model)), fmt(r.param_count_m), fmt(r.samples_per_sec), fmt(r.score),
                  escape(str(r.examples)))
    console.print(t)
    new = fam[fam.status.str.startswith("new")]
    if len(new):
        console.print(escape("new families since --previous: " + ", ".join(new.family)), soft_wrap=True)
    console.print(escape(f"scan CSV (use as next --previous): {csv_out}"))
    if emit:
        console.print(escape(f"suite with {emitted} timm references: {emit}"))


def print_port_reports(console: Console, reports: list[Any], write: Any = None) -> int:
    """``vitbench port``: per candidate, how each reference tensor reaches it (matched by name only counted), what
    is left, and its port function (printed, or written to ``write``). Exit code: 0 all complete, 1 not, 2 none."""
    if not reports:
        console.print("[red]error:[/] no candidate that ports (port: true) in the pairs chosen")
        return 2
    for r in reports:
        head = f"{r.pair}: {r.label} ({r.framework})"
        o = r.outcome
        if "error" in o:
            console.print(f"[red]{escape(head)}: {escape(o['error'])}[/]", soft_wrap=True)
            continue
        now = "its module's port function" if o["hook"] else "the names as they are" if o["names_fit"] else "nothing"
        colour = "green" if o["complete"] else "red"
        console.print(f"[bold]{escape(head)}[/]: [{colour}]{escape(o['summary'])}[/] (today it ports by {now})",
                      soft_wrap=True)
        t = Table(show_header=True)
        for col in ("reference", "candidate", "transform", "how"):
            t.add_column(col)
        for m in o["matches"]:
            if m["how"] != "name":
                t.add_row(escape(m["reference"]), escape(m["candidate"]), m["transform"], m["how"])
        if t.row_count:
            console.print(t)
        for what in ("missing", "unexpected", "ambiguous"):
            for name in o[what][:20]:
                console.print(f"[red]{what}:[/] {escape(name)}", soft_wrap=True)
    done = [r for r in reports if r.complete]
    if write is not None:
        if len(reports) != 1 or not done:
            console.print("[red]error:[/] --write needs exactly one candidate with a complete mapping (use --only)")
            return 2
        Path(write).write_text(done[0].outcome["source"])
        console.print(escape(f"wrote {write}: paste it into the candidate's module (or import it there)"))
    elif len(done) == 1 and len(reports) == 1:
        console.print(escape(done[0].outcome["source"]), soft_wrap=True)
    return 0 if len(done) == len(reports) else 1


def print_list(console: Console) -> None:
    """``vitbench list``: embedded suites, then each provider with the models it names."""
    from ..providers import PROVIDERS, get_provider, plugin_package, plugins
    from ..runner.run_dir import embedded_suites

    console.print(f"[bold]embedded suites[/] (vitbench run NAME): {', '.join(embedded_suites())}", soft_wrap=True)
    for name in PROVIDERS:
        console.print(f"[bold]{name}[/]: " + escape(", ".join(get_provider(name).list_names())), soft_wrap=True)
    for name in plugins():
        try:
            p = get_provider(name)
            names = ", ".join(p.list_names()) if hasattr(p, "list_names") else "(names not listed)"
            console.print(f"[bold]{escape(name)}[/] (plug-in, {escape(plugin_package(name))}): " + escape(names),
                          soft_wrap=True)
        except KeyError as e:
            console.print(f"[bold]{escape(name)}[/] (plug-in): [red]{escape(str(e))}[/]", soft_wrap=True)


def print_env(console: Console, info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(info))
        return
    for line in env_lines(info):
        console.print(escape(line))


def env_lines(info: dict[str, Any]) -> list[str]:
    t = info.get("torch", {})
    return [
        f"vitbench {info['vitbench']} ({info['git_sha'] or 'not a git checkout'}), Python {info['python']}",
        f"platform: {info['platform']}",
        f"cpu: {info['cpu']} ({info['cpu_count_physical']} cores / {info['cpu_count_logical']} threads), "
        f"{info['memory_gb']} GB",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v),
        f"torch: threads {t.get('num_threads')}, CUDA available {t.get('cuda_available')}, "
        f"CUDA {t.get('cuda_version')}, cuDNN {t.get('cudnn')}",
        f"gpus: {', '.join(g['name'] for g in info['nvml'].get('gpus', [])) or 'none'}; "
        f"driver {info['nvml'].get('driver', 'none')}",
    ]


def end_of_run(err_console: Console, rows: list[dict[str, Any]], rd: Any, signal_no: int | None, command: str,
               what: str) -> int | None:
    """128+signal when interrupted (130 Ctrl-C, 143 SIGTERM; artifacts kept for --resume), 2 when a case failed,
    None when all ran. Artifacts (reference or initial weights) are only needed to resume: removed otherwise."""
    rd.release()
    if signal_no is not None:
        err_console.print("[bold red]interrupted:[/] " + escape(
            f"{len(rows)} finished rows kept in {rd.path}; continue with: vitbench {command} --resume {rd.path}"),
            soft_wrap=True)
        return 128 + signal_no
    import shutil

    shutil.rmtree(rd.path / "artifacts", ignore_errors=True)
    failed = [r for r in rows if r["status"] not in ("ok", "skipped")]
    if failed:
        err_console.print(f"[bold red]{len(failed)} {what} failed[/] " + escape(
            f"(status/error in cases.csv, logs in {rd.path / 'logs'})"))
        return 2
    return None


def run_with_progress(console: Console, runner: Any, cases: list[Any], partners: list[Any] | None = None
                      ) -> int | None:
    """Run with a progress bar. Returns the signal that interrupted the run (SIGINT, SIGTERM, SIGHUP), if one
    did: every worker has then been ended, and finished rows are on disk."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..runner.signals import Interrupted

    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task("starting", total=len(cases))

        def on_start(i: int, c: Any) -> None:
            progress.update(task, description=escape(f"set-up {i + 1}/{len(cases)} {c.label} {c.compile_mode} "
                                                     f"{c.precision} bs{c.batch_size}"))

        def on_done(i: int, c: Any, row: dict[str, Any]) -> None:
            progress.advance(task)
            if row["status"] != "ok":
                progress.console.print(f"[red]{escape(row['status'])}[/] " + escape(
                    f"{c.pair} {c.label} bs{c.batch_size}: {row['error']}"), soft_wrap=True)

        runner.on_progress = lambda text: progress.update(task, description=escape(text))
        try:
            runner.run(cases, on_start, on_done, partners)
        except Interrupted as e:
            return e.signal_no
        except KeyboardInterrupt:
            return 2
    return None
