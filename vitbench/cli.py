"""vitbench command line. Commands are thin: they parse, call the library, and turn VitbenchError into one
red line and an exit code (0 ok, 1 numerics/regression, 2 bad input or failed cases, 130 interrupted)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .errors import InputError, VitbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark vision transformers: your implementation vs timm / Keras / official.")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)
_state = {"debug": False}

SuiteArg = Annotated[Path | None, typer.Argument(help="Suite YAML (default: the embedded suites/quick.yaml).",
                                                 show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="cpu, cuda or cuda:N.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default results/<suite>-<time>).")]
OnlyOpt = Annotated[str | None, typer.Option("--only", help="Run only pairs whose name matches this glob.")]
BatchOpt = Annotated[str | None, typer.Option("--batch-sizes", "-b", help="Comma-separated, overrides the suite.")]
ResumeOpt = Annotated[Path | None, typer.Option("--resume", help="Continue the run in DIR, skipping done cases.")]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except VitbenchError as e:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


def suites_dir() -> Path:
    return Path(__file__).resolve().parent / "suites"


def resolve_suite(path: Path | None) -> Path:
    if path is not None:
        return path
    local = Path("suites/quick.yaml")
    return local if local.is_file() else suites_dir() / "quick.yaml"


def _parse_batch_sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--batch-sizes '{text}': expected integers like 1,32") from None
    if not sizes or any(b < 1 for b in sizes):
        raise InputError(f"--batch-sizes '{text}': batch sizes must be >= 1")
    return sizes


@app.command()
def validate(suite: Annotated[Path, typer.Argument(help="Suite YAML to check.")]) -> None:
    """Check a suite file: schema, and that every model exists."""
    from .suite import expand, load_suite

    with _errors():
        s = load_suite(suite)
        n = len(expand(s, "cpu"))
        console.print(f"{suite}: ok ({len(s.pairs)} pairs, {n} cases per device)")
        if s.finetune is not None:
            from .finetune.data import resolve_dataset

            spec = resolve_dataset(s.finetune.dataset, f"{suite.name}: finetune.dataset")
            console.print(f"finetune: {s.finetune.steps} steps x batch {s.finetune.batch_size} per model on "
                          f"{spec.label} ({len(spec.classes)} classes)")


@app.command("list")
def list_cmd() -> None:
    """Providers and our registered models."""
    from .providers import PLANNED, PROVIDERS, get_provider

    for name in PROVIDERS:
        names = get_provider(name).list_names()
        console.print(f"[bold]{name}[/]: {', '.join(names)}")
    for name, why in PLANNED.items():
        console.print(f"[bold]{name}[/]: not available yet ({why})")


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Framework versions, CPU, GPU, driver, CUDA and threads."""
    from . import env as env_mod

    info = env_mod.collect()
    if as_json:
        console.print_json(json.dumps(info))
        return
    t = info.get("torch", {})
    lines = [
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
    for line in lines:
        console.print(line)


def _out_dir(out: Path | None, resume: Path | None, suite_name: str) -> Path:
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise InputError("give --resume DIR or --out DIR, not both")
        if not (resume / "cases.csv").is_file():
            raise InputError(f"--resume {resume}: no cases.csv there to resume")
        return resume
    if out is None:
        out = Path("results") / f"{suite_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if (out / "cases.csv").exists():
        raise InputError(f"--out {out}: it already holds results (cases.csv); use --resume {out} or another --out")
    return out


def _start(runner_cls: Any, cases: list[Any], suite: Any, path: Path, only: str | None, out: Path | None,
           resume: Path | None, name: str) -> tuple[Any, list[Any], Path, dict[str, Any]]:
    """The output dir and its runner; on --resume only the cases still to run (rows that did not end ok are
    forgotten, so they run again); env.json and the suite as run."""
    from . import env as env_mod

    if not cases:
        raise InputError(f"--only '{only}': no pair of {path.name} matches "
                         f"(pairs: {', '.join(p.name for p in suite.pairs)})")
    out_dir = _out_dir(out, resume, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = runner_cls(out_dir, env_mod.row_versions())
    if resume is not None:
        dropped = runner.store.drop_unfinished()
        done = runner.store.done_ids()
        todo = [c for c in cases if c.case_id not in done]
        console.print(f"resuming {out_dir}: {len(cases) - len(todo)} cases done, {len(todo)} to run"
                      + (f" ({dropped} failed rows will run again)" if dropped else ""))
        cases = todo
    info = env_mod.collect()
    (out_dir / "env.json").write_text(json.dumps(info, indent=2))
    (out_dir / "suite.yaml").write_text(path.read_text())
    return runner, cases, out_dir, info


@app.command()
def run(
    suite: SuiteArg = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    only: OnlyOpt = None,
    batch_sizes: BatchOpt = None,
    resume: ResumeOpt = None,
) -> None:
    """Run a suite: every case in its own process; writes cases.csv, timm-format tables and env.json."""
    from . import env as env_mod
    from .runner.executor import Runner
    from .suite import expand, load_suite

    with _errors():
        path = resolve_suite(suite)
        s = load_suite(path)
        bss = _parse_batch_sizes(batch_sizes)
        env_mod.check_device(device)
        all_cases = expand(s, device, only=only, batch_sizes=bss)
        runner, cases, out_dir, info = _start(Runner, all_cases, s, path, only, out, resume, s.name)
        console.print(f"vitbench run {path} on {device}: {len(cases)} cases -> {out_dir}")
        interrupted = False
        try:
            _run_with_progress(runner, cases, all_cases)
        except KeyboardInterrupt:
            interrupted = True
        code = _finish(runner, out_dir, info, device, interrupted)
    raise typer.Exit(code)


@app.command()
def finetune(
    suite: Annotated[Path | None, typer.Argument(help="Suite YAML; its finetune: section sets the training "
                                                      "(default: the embedded suites/finetune.yaml).",
                                                 show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Built-in dataset (animal-shape, digits, "
                                                "mnist-5k) or an image folder (<class>/*.jpg or train/ + val/).")]
    = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps per model.", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Training batch size.", min=1)] = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    only: OnlyOpt = None,
    resume: ResumeOpt = None,
) -> None:
    """Fine-tune every PyTorch side of a suite's pairs on one dataset: top-k accuracy, loss curve, training
    samples/s, peak memory, FLOPs, params; TensorBoard events, weights and sample grids per model."""
    from pydantic import ValidationError

    from . import env as env_mod
    from .finetune.data import resolve_dataset
    from .finetune.plan import expand, resolve_settings
    from .finetune.runner import FinetuneRunner
    from .suite import load_suite

    with _errors():
        path = suite if suite is not None else _embedded("finetune.yaml")
        s = load_suite(path)
        try:
            settings = resolve_settings(s, dataset=dataset, steps=steps, batch_size=batch_size)
        except ValidationError as e:
            err = e.errors()[0]
            raise InputError(f"finetune.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        where = "--dataset" if dataset is not None else f"{path.name}: finetune.dataset"
        spec = resolve_dataset(settings.dataset, where)
        env_mod.check_device(device)
        cases = expand(s, settings, spec, device, only=only)
        runner, cases, out_dir, info = _start(FinetuneRunner, cases, s, path, only, out, resume, f"{s.name}-finetune")
        (out_dir / "finetune.json").write_text(json.dumps({"settings": settings.model_dump(),
                                                           "dataset": spec.to_dict()}, indent=2))
        console.print(f"vitbench finetune {path} on {device}: {len(cases)} models x {settings.steps} steps "
                      f"(batch {settings.batch_size}) on {spec.label} ({len(spec.classes)} classes) -> {out_dir}")
        interrupted = False
        try:
            _run_with_progress(runner, cases)
        except KeyboardInterrupt:
            interrupted = True
        code = _finish_finetune(runner, out_dir, info, device, interrupted, len(spec.classes))
    raise typer.Exit(code)


def _embedded(name: str) -> Path:
    local = Path("suites") / name
    return local if local.is_file() else suites_dir() / name


def _finish_finetune(runner: Any, out_dir: Path, info: dict[str, Any], device: str, interrupted: bool,
                     num_classes: int) -> int:
    from rich.table import Table

    from . import env as env_mod
    from .report.plots import finetune_accuracy_vs_throughput, finetune_curves
    from .report.timm_table import write_train_tables

    rows = [r for r in runner.store.rows() if r.get("task") == "finetune"]
    written = write_train_tables(rows, out_dir, info.get("torch", {}).get("version", "unknown"),
                                 {device: env_mod.device_tag(device, info)})
    curves = out_dir / "curves.csv"
    for plot in (finetune_accuracy_vs_throughput(rows, out_dir / "finetune_accuracy_vs_throughput.png"),
                 finetune_curves(curves, out_dir / "finetune_curves.png") if curves.exists() else None):
        if plot:
            written.append(plot)
    t = Table(title=f"vitbench finetune (chance top-1 = {100 / num_classes:.1f}%)")
    for col in ("implementation", "init", "status", "top-1 %", "top-5 %", "val loss", "train img/s", "step ms",
                "peak MB", "train GMACs/img", "params M"):
        t.add_column(col, justify="left" if col in ("implementation", "init", "status") else "right")
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]"
        mem = r.get("cuda_peak_allocated_mb") or r.get("peak_rss_mb")
        init = (r.get("init") or "").split(";")[0].split(",")[0]
        t.add_row(r["label"], init, status, _fmt(r.get("top1")), _fmt(r.get("top5")), _fmt(r.get("val_loss"), 3),
                  _fmt(r.get("samples_per_sec"), 1), _fmt(r.get("step_time_ms"), 1), _fmt(mem, 0),
                  _fmt(r.get("train_gmacs"), 3), _fmt(r.get("param_count_m"), 3))
    console.print(t)
    for r in rows:
        if r["status"] not in ("ok", "skipped"):
            console.print(f"[red]{r['status']}[/] {r['label']}: {r['error']}", soft_wrap=True)
        elif "port failed" in (r.get("init") or "") or "no reference weights" in (r.get("init") or ""):
            console.print(f"[yellow]note:[/] {r['label']} trained from its own init: {r['init']}", soft_wrap=True)
    console.print(f"results: {out_dir / 'cases.csv'}" + "".join(f"\n         {w}" for w in written) +
                  f"\n         TensorBoard: tensorboard --logdir {out_dir / 'tensorboard'}"
                  f"\n         weights: {out_dir / 'weights'}, sample grids: {out_dir / 'samples'}")
    return _end(rows, out_dir, interrupted, "finetune", "model(s)") or 0


def _end(rows: list[dict[str, Any]], out_dir: Path, interrupted: bool, command: str, what: str) -> int | None:
    """130 when interrupted (artifacts kept for --resume), 2 when a case failed, None when all ran. Artifacts
    (reference or initial weights) are only needed to resume: removed once a run was not interrupted."""
    if interrupted:
        err_console.print(f"[bold red]interrupted:[/] {len(rows)} finished rows kept in {out_dir}; "
                          f"continue with: vitbench {command} ... --resume {out_dir}")
        return 130
    import shutil

    shutil.rmtree(out_dir / "artifacts", ignore_errors=True)
    failed = [r for r in rows if r["status"] not in ("ok", "skipped")]
    if failed:
        err_console.print(f"[bold red]{len(failed)} {what} failed[/] (status/error in cases.csv, logs in "
                          f"{out_dir / 'logs'})")
        return 2
    return None


def _run_with_progress(runner: Any, cases: list[Any], partners: list[Any] | None = None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
                progress.console.print(f"[red]{row['status']}[/] " + escape(f"{c.pair} {c.label} bs{c.batch_size}: "
                                                                             f"{row['error']}"), soft_wrap=True)

        runner.on_progress = lambda text: progress.update(task, description=escape(text))
        runner.run(cases, on_start, on_done, partners)


def _finish(runner: Any, out_dir: Path, info: dict[str, Any], device: str, interrupted: bool) -> int:
    from . import env as env_mod
    from .report.timm_table import write_timm_tables

    rows = runner.store.rows()
    tables = write_timm_tables(rows, out_dir, info.get("torch", {}).get("version", "unknown"),
                               {device: env_mod.device_tag(device, info)})
    from .report.plots import compile_plot, speed_ratio, token_sweep

    for plot in (compile_plot(rows, out_dir / "compile.png"), token_sweep(rows, out_dir / "token_sweep.png"),
                 speed_ratio(runner.store.pair_rows(), out_dir / "speed_ratio.png")):
        if plot:
            tables.append(plot)
    _summary(rows)
    if (out_dir / "pairs.csv").exists():
        tables.insert(0, out_dir / "pairs.csv")
    console.print(f"results: {out_dir / 'cases.csv'}" + "".join(f"\n         {t}" for t in tables))
    code = _end(rows, out_dir, interrupted, "run", "case(s)")
    if code is not None:
        return code
    numerics_failed = [r for r in rows if r.get("numerics_status") in ("fail", "error", "port_failed")]
    if numerics_failed:
        ports = sum(r.get("numerics_status") == "port_failed" for r in numerics_failed)
        err_console.print(f"[bold red]{len(numerics_failed)} case(s) failed the numeric check[/]"
                          + (f" ({ports} of them: weight port failed)" if ports else ""))
        return 1
    return 0


def _fmt(v: Any, nd: int = 2) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    if f != f:
        return ""
    if f == 0:
        return "0"
    return f"{f:.2e}" if 0 < abs(f) < 1e-2 else f"{f:.{nd}f}"


def _summary(rows: list[dict[str, Any]]) -> None:
    """The run's table: one line per case; candidates show their paired speed ratio with its 95% interval and
    verdict, never one sample's ratio."""
    from rich.table import Table

    t = Table(title="vitbench summary (vs ref: paired speed ratio, median of rounds [95% interval] verdict)",
              show_lines=False)
    for col in ("implementation", "mode", "prec", "bs", "status", "img/s", "p50 ms", "p99 ms", "vs ref",
                "max|diff|", "GMACs"):
        t.add_column(col, justify="left" if col in ("implementation", "status", "vs ref") else "right")
    colours = {"faster": "green", "slower": "red", "same": "cyan", "contended": "yellow"}
    for r in rows:
        ratio = ""
        if r["role"] == "candidate" and r.get("speed_verdict"):
            v = r["speed_verdict"]
            est = (f"{float(r['speed_ratio']):.2f}x [{float(r['speed_ratio_ci_low']):.2f}, "
                   f"{float(r['speed_ratio_ci_high']):.2f}] " if _fmt(r.get("speed_ratio")) else "")
            ratio = f"{est}[{colours.get(v, 'white')}]{v}[/]"
        status = r["status"] if r["status"] == "ok" else f"[red]{escape(r['status'])}[/]"
        ns = r.get("numerics_status")
        if ns in ("fail", "error", "port_failed"):
            status += f" [red]({'port failed' if ns == 'port_failed' else 'numerics'})[/]"
        t.add_row(escape(str(r["label"])), r["compile_mode"], r["precision"], str(r["batch_size"]), status,
                  _fmt(r.get("samples_per_sec")), _fmt(r.get("latency_ms_p50")), _fmt(r.get("latency_ms_p99")),
                  ratio, _fmt(r.get("max_abs_diff")), _fmt(r.get("gmacs")))
    console.print(t)
    for r in rows:
        ns, where = r.get("numerics_status"), escape(f"{r['pair']}: {r['label']} {r['compile_mode']} "
                                                     f"bs{r['batch_size']}")
        if ns == "port_failed":
            console.print(f"[red]port failed:[/] {where}: " + escape(str(r.get("numerics_error"))), soft_wrap=True)
        elif ns in ("fail", "error"):
            console.print(f"[red]numerics {ns}:[/] {where}: " + escape(str(r.get("numerics_error") or "")),
                          soft_wrap=True)
        if r.get("speed_verdict") == "contended":
            console.print(f"[yellow]contended:[/] {where}: the machine was busy during most rounds ("
                          f"{_fmt(r.get('contended_blocks'), 0)} contended blocks; other processes used "
                          f"{_fmt(r.get('foreign_cpu_pct'), 0)}% of the CPU on average, hypervisor steal "
                          f"{_fmt(r.get('cpu_steal_pct'), 1)}%): no verdict; run again on a quiet machine",
                          soft_wrap=True)


@app.command()
def calibrate(
    device: DeviceOpt = "cpu",
    model: Annotated[str, typer.Option("--model", "-m", help="timm model timed against itself.")]
    = "vit_small_patch16_224",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size.", min=1)] = 1,
    img_size: Annotated[int | None, typer.Option("--img-size", help="Input size (default: the model's).", min=1)]
    = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Paired rounds (default: as run uses).", min=1)]
    = None,
    processes: Annotated[int | None, typer.Option("--processes", help="Timing processes (default: as run uses).",
                                                  min=1)] = None,
    out: OutOpt = None,
) -> None:
    """The machine's noise floor: an A/A pair (a model against itself) timed as run times a pair; prints the
    smallest speed difference this machine resolves in that time. Exit 1 if the A/A interval excludes 1 or the
    machine was busy."""
    from . import env as env_mod
    from .calibrate import calibrate as run_calibration
    from .calibrate import summary_lines

    with _errors():
        env_mod.check_device(device)
        from .providers import check_side
        from .suite import Side

        problem = check_side(Side(provider="timm", model=model))
        if problem:
            raise InputError(f"--model: {problem}")
        if out is not None and (out / "cases.csv").exists():
            raise InputError(f"--out {out}: it already holds results (cases.csv); choose another --out")
        console.print(f"calibrating on {device}: {escape(model)} against itself, batch {batch_size} ...")
        cal = run_calibration(model, device, batch_size, img_size, rounds, processes, None, out,
                              env_mod.row_versions())
        for line in summary_lines(cal):
            console.print(escape(line), soft_wrap=True)
        console.print(f"results: {cal.out_dir}")
    ok = cal.verdict not in ("failed", "contended") and cal.low is not None and cal.low <= 1.0 <= (cal.high or 0)
    raise typer.Exit(0 if ok else 1)


@app.command("diff")
def diff_cmd(
    old: Annotated[str, typer.Argument(help="Results dir, cases.csv, or timm-format table (path or URL).")],
    new: Annotated[str, typer.Argument(help="The same, for the newer results.")],
    threshold: Annotated[float, typer.Option("--threshold", "-t", help="Percent worse that counts.")] = 5.0,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown report.")] = False,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write every compared metric to this CSV.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List improvements and unchanged cases too.")] = False,
) -> None:
    """Compare two result sets. Exit 0: no regression; 1: regressions; 2: bad input."""
    from .report.diff import diff
    from .report.results import load

    with _errors():
        if threshold < 0:
            raise InputError(f"--threshold {threshold}: must be >= 0")
        a, b = load(old), load(new)
        rep = diff(a, b, threshold)
        if csv_out:
            rep.rows.to_csv(csv_out, index=False)
        from .report.show import print_diff

        print_diff(console, rep, a.source, b.source, threshold, markdown, show_all)
    raise typer.Exit(1 if len(rep.regressions) else 0)


@app.command("plot")
def plot_cmd(
    results: Annotated[list[str], typer.Argument(help="Results dirs, cases.csv files or timm-format tables.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PNGs.")] = Path("plots"),
) -> None:
    """PNG plots: throughput vs params (log), latency percentiles, compile time per mode, numeric diff, fine-tune
    accuracy vs training throughput."""
    from .report import plots
    from .report.results import load

    with _errors():
        sets = [load(r) for r in results]
        out.mkdir(parents=True, exist_ok=True)
        written = [plots.throughput_vs_params(sets, out / "throughput_vs_params.png")]
        case_rows = [row for s in sets if s.kind == "cases" for row in s.df.to_dict("records")]
        infer_rows = [r for r in case_rows if r.get("task") != "finetune"]
        if infer_rows:
            written += [plots.latency_percentiles(infer_rows, out / "latency_percentiles.png"),
                        plots.compile_plot(infer_rows, out / "compile.png"),
                        plots.token_sweep(infer_rows, out / "token_sweep.png"),
                        plots.numeric_diff(infer_rows, out / "numeric_diff.png"),
                        plots.speed_ratio([p for s in sets for p in s.pairs], out / "speed_ratio.png")]
        if len(infer_rows) < len(case_rows):
            written.append(plots.finetune_accuracy_vs_throughput(case_rows,
                                                                 out / "finetune_accuracy_vs_throughput.png"))
        written = [w for w in written if w]
        if not written:
            raise InputError("plot: nothing to draw (no measured rows)")
        for w in written:
            console.print(f"wrote {w}")


@app.command("scan")
def scan_cmd(
    tables: Annotated[list[str], typer.Argument(help="timm benchmark tables (paths or URLs), or vitbench results.")],
    previous: Annotated[str | None, typer.Option("--previous", help="Last quarter's table or scan CSV.")] = None,
    suites: Annotated[Path | None, typer.Option("--suites", help="Suite dir that marks coverage.")] = None,
    top: Annotated[int, typer.Option("--top", help="Families to list (and to emit).")] = 20,
    emit_suite: Annotated[Path | None, typer.Option("--emit-suite", help="Write a suite for the top new families.")]
    = None,
    csv_out: Annotated[Path, typer.Option("--csv", help="Where to write the scan CSV.")] = Path("vitbench-scan.csv"),
) -> None:
    """Group models into families, mark covered / new ones, rank by throughput at their size."""
    from rich.table import Table

    from .scan import emit_suite as write_suite
    from .scan import scan

    with _errors():
        suites_path = suites or (Path("suites") if Path("suites").is_dir() else suites_dir())
        res = scan(tables, previous, suites_path)
        res.models.to_csv(csv_out, index=False)
        fam = res.families
        counts = fam.status.value_counts().to_dict()
        console.print(f"{len(res.models)} models in {len(fam)} families: " +
                      ", ".join(f"{counts.get(k, 0)} {k}" for k in ("new", "new, covered", "uncovered", "covered"))
                      +
                      (" (no --previous: nothing is marked new)" if previous is None else ""))
        t = Table(title=f"families (top {top}; score = samples/s relative to the size trend, 1.0 = on trend)")
        for col in ("family", "status", "timm module", "models", "best model", "params M", "samples/s", "score",
                    "examples"):
            t.add_column(col, justify="right" if col in ("models", "params M", "samples/s", "score") else "left")
        for r in fam.head(top).itertuples():
            colour = {"new": "green", "new, covered": "green", "covered": "cyan"}.get(r.status, "white")
            t.add_row(r.family, f"[{colour}]{r.status}[/]", r.architecture, str(r.models), r.best_model,
                      _fmt(r.param_count_m), _fmt(r.samples_per_sec), _fmt(r.score), r.examples)
        console.print(t)
        new = fam[fam.status.str.startswith("new")]
        if len(new):
            console.print("new families since --previous: " + ", ".join(new.family), soft_wrap=True)
        console.print(f"scan CSV (use as next --previous): {csv_out}")
        if emit_suite:
            n = write_suite(res, emit_suite, top)
            from .suite import load_suite

            load_suite(emit_suite)
            console.print(f"suite with {n} timm references: {emit_suite}")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
