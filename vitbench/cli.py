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
        cases = expand(s, device, only=only, batch_sizes=bss)
        if not cases:
            raise InputError(f"--only '{only}': no pair of {path.name} matches "
                             f"(pairs: {', '.join(p.name for p in s.pairs)})")
        out_dir = _out_dir(out, resume, s.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        runner = Runner(out_dir, env_mod.row_versions())
        skipped = 0
        if resume is not None:
            dropped = runner.store.drop_unfinished()
            done = runner.store.done_ids()
            todo = [c for c in cases if c.case_id not in done]
            skipped = len(cases) - len(todo)
            console.print(f"resuming {out_dir}: {skipped} cases done, {len(todo)} to run"
                          + (f" ({dropped} failed rows will run again)" if dropped else ""))
            cases = todo
        info = env_mod.collect()
        (out_dir / "env.json").write_text(json.dumps(info, indent=2))
        (out_dir / "suite.yaml").write_text(path.read_text())
        console.print(f"vitbench run {path} on {device}: {len(cases)} cases -> {out_dir}")
        interrupted = False
        try:
            _run_with_progress(runner, cases)
        except KeyboardInterrupt:
            interrupted = True
        code = _finish(runner, out_dir, info, device, interrupted)
    raise typer.Exit(code)


def _run_with_progress(runner: Any, cases: list[Any]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task("starting", total=len(cases))

        def on_start(i: int, c: Any) -> None:
            progress.update(task, description=f"case {i + 1}/{len(cases)} {c.label} {c.compile_mode} "
                                              f"{c.precision} bs{c.batch_size}")

        def on_done(i: int, c: Any, row: dict[str, Any]) -> None:
            progress.advance(task)
            if row["status"] != "ok":
                progress.console.print(f"[red]{row['status']}[/] {c.pair} {c.label} bs{c.batch_size}: {row['error']}",
                                       soft_wrap=True)

        runner.run(cases, on_start, on_done)


def _finish(runner: Any, out_dir: Path, info: dict[str, Any], device: str, interrupted: bool) -> int:
    from . import env as env_mod
    from .report.timm_table import write_timm_tables

    rows = runner.store.rows()
    tables = write_timm_tables(rows, out_dir, info.get("torch", {}).get("version", "unknown"),
                               {device: env_mod.device_tag(device, info)})
    from .report.plots import compile_plot

    plot = compile_plot(rows, out_dir / "compile.png")
    if plot:
        tables.append(plot)
    _summary(rows)
    console.print(f"results: {out_dir / 'cases.csv'}" + "".join(f"\n         {t}" for t in tables))
    if not interrupted:
        import shutil

        shutil.rmtree(out_dir / "artifacts", ignore_errors=True)  # reference weights: only needed to resume
    if interrupted:
        err_console.print(f"[bold red]interrupted:[/] {len(rows)} finished rows kept in {out_dir}; "
                          f"continue with: vitbench run ... --resume {out_dir}")
        return 130
    failed = [r for r in rows if r["status"] != "ok"]
    numerics_failed = [r for r in rows if r.get("numerics_status") in ("fail", "error")]
    if failed:
        err_console.print(f"[bold red]{len(failed)} case(s) failed[/] (status/error in cases.csv, logs in "
                          f"{out_dir / 'logs'})")
        return 2
    if numerics_failed:
        err_console.print(f"[bold red]{len(numerics_failed)} case(s) outside numeric tolerance[/]")
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
    from rich.table import Table

    t = Table(title="vitbench summary", show_lines=False)
    for col in ("implementation", "mode", "prec", "bs", "status", "img/s", "p50 ms", "p99 ms", "vs ref",
                "max|diff|", "GMACs"):
        t.add_column(col, justify="left" if col in ("implementation", "status") else "right")
    ref_speed = {(r["pair"], r["compile_mode"], r["precision"], r["batch_size"]): r.get("samples_per_sec")
                 for r in rows if r["role"] == "reference" and r["status"] == "ok"}
    for r in rows:
        ref = ref_speed.get((r["pair"], r["compile_mode"], r["precision"], r["batch_size"]))
        ratio = ""
        if r["status"] == "ok" and ref and r["role"] == "candidate":
            ratio = f"{float(r['samples_per_sec']) / float(ref):.3f}x"
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]"
        if r.get("numerics_status") == "fail":
            status += " [red](numerics)[/]"
        t.add_row(r["label"], r["compile_mode"], r["precision"], str(r["batch_size"]), status,
                  _fmt(r.get("samples_per_sec")), _fmt(r.get("latency_ms_p50")), _fmt(r.get("latency_ms_p99")),
                  ratio, _fmt(r.get("max_abs_diff")), _fmt(r.get("gmacs")))
    console.print(t)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
