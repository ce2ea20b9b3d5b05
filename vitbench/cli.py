"""vitbench command line. Commands parse, call the library, print through report.show, and turn VitbenchError
into one red line and an exit code (0 ok, 1 numerics/regression, 2 bad input or failed cases, 128+signal
interrupted: 130 Ctrl-C, 143 SIGTERM)."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from . import cli_options as o
from .errors import VitbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark vision transformers: your implementation vs timm / Keras / official.")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)
_state = {"debug": False}


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except VitbenchError as e:
        if _state["debug"]:
            raise
        err_console.print("[bold red]error:[/] " + escape(str(e)), soft_wrap=True)
        raise typer.Exit(e.exit_code) from None


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.", metavar="")] = False) -> None:
    _state["debug"] = debug


def _open_run(*args: Any) -> tuple[Any, list[Any], Any, dict[str, Any]]:
    from .runner.run_dir import start_run

    runner, cases, rd, info, line = start_run(*args)
    if line:
        console.print(escape(line))
    return runner, cases, rd, info


def _load_for_run(suite: Path | None, resume: Path | None, default: str) -> tuple[Path, Any]:
    """The suite to run (--resume: the run's own; a name: the embedded one, said in a note) and its contents."""
    from .runner.run_dir import resolve_suite, suite_for_resume
    from .suite import load_suite

    path, note = (suite_for_resume(resume, suite), None) if resume is not None else resolve_suite(suite, default)
    if note:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    return path, load_suite(path)


@app.command()
def validate(suite: o.SuitePath) -> None:
    """Check a suite file: schema, and that every model exists (import sides: the module and the name)."""
    from .suite import expand

    with _errors():
        path, s = _load_for_run(suite, None, "quick")
        console.print(escape(f"{path}: ok ({len(s.pairs)} pairs, {len(expand(s, 'cpu'))} cases per device)"))
        if s.finetune is not None:
            from .finetune.plan import describe

            console.print(escape(describe(s.finetune, path.name)))


@app.command("list")
def list_cmd() -> None:
    """Embedded suites, providers and our registered models."""
    from .report.show import print_list

    print_list(console)


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.", metavar="")] = False) -> None:
    """Framework versions, CPU, GPU, driver, CUDA and threads."""
    from . import env as env_mod
    from .report.show import print_env

    print_env(console, env_mod.collect(), as_json)


@app.command()
def run(
    suite: o.SuiteArg = None,
    device: o.RunDeviceOpt = None,
    out: o.OutOpt = None,
    only: o.OnlyOpt = None,
    batch_sizes: o.BatchOpt = None,
    resume: o.ResumeOpt = None,
    executor: o.ExecutorOpt = "local",
    address: o.AddressOpt = None,
    ray_cpus: o.RayCpusOpt = None,
) -> None:
    """Run a suite: each case set up in its own process, each pair timed in paired rounds; writes cases.csv,
    pairs.csv, timm-format tables, plots and env.json."""
    from .report.outputs import write_run_outputs
    from .report.show import end_of_run, numerics_exit, print_run_summary, run_with_progress
    from .runner.executor import Runner
    from .runner.ray_executor import executor_for
    from .runner.run_dir import run_options
    from .suite import expand

    with _errors():
        path, s = _load_for_run(suite, resume, "quick")
        device, only, bss = run_options(resume, device, only, batch_sizes)
        all_cases = expand(s, device, only=only, batch_sizes=bss)
        runner_cls = executor_for(Runner, executor, address, ray_cpus, device)
        runner, cases, rd, info = _open_run(runner_cls, all_cases, s, path, only, out, resume, s.name,
                                            {"device": device, "only": only, "batch_sizes": bss})
        console.print(escape(f"vitbench run {path} on {device}: {len(cases)} cases -> {rd.path}"))
        signal_no = run_with_progress(console, runner, cases, all_cases)
        rows = runner.store.rows()
        written = write_run_outputs(rows, runner.store.pair_rows(), rd.path, info, device)
        print_run_summary(console, rows, [rd.path / "cases.csv", *written], runner.store.pair_rows())
        code = end_of_run(err_console, rows, rd, signal_no, "run", "case(s)")
        if code is None:
            code = numerics_exit(err_console, rows)
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
    device: o.DeviceOpt = "cpu",
    out: o.OutOpt = None,
    only: o.OnlyOpt = None,
    resume: o.ResumeOpt = None,
    executor: o.ExecutorOpt = "local",
    address: o.AddressOpt = None,
    ray_cpus: o.RayCpusOpt = None,
) -> None:
    """Fine-tune every PyTorch side of a suite's pairs on one dataset: top-k accuracy, loss curve, training
    samples/s, peak memory, FLOPs, params; TensorBoard events, weights and sample grids per model."""
    from .finetune.data import resolve_dataset
    from .finetune.plan import expand, resolve_settings, write_plan
    from .finetune.runner import FinetuneRunner
    from .report.outputs import write_finetune_outputs
    from .report.show import end_of_run, print_finetune_summary, run_with_progress
    from .runner.ray_executor import executor_for

    with _errors():
        path, s = _load_for_run(suite, resume, "finetune")
        settings = resolve_settings(s, dataset=dataset, steps=steps, batch_size=batch_size)
        spec = resolve_dataset(settings.dataset, "--dataset" if dataset else f"{path.name}: finetune.dataset")
        cases = expand(s, settings, spec, device, only=only)
        runner_cls = executor_for(FinetuneRunner, executor, address, ray_cpus, device)
        runner, cases, rd, info = _open_run(runner_cls, cases, s, path, only, out, resume, f"{s.name}-finetune")
        write_plan(rd.path, settings, spec)
        console.print(escape(f"vitbench finetune {path} on {device}: {len(cases)} models x {settings.steps} steps "
                             f"(batch {settings.batch_size}) on {spec.label} ({len(spec.classes)} classes) -> "
                             f"{rd.path}"))
        signal_no = run_with_progress(console, runner, cases)
        rows = [r for r in runner.store.rows() if r.get("task") == "finetune"]
        written = write_finetune_outputs(rows, rd.path, info, device)
        print_finetune_summary(console, rows, len(spec.classes), written, rd.path)
        code = end_of_run(err_console, rows, rd, signal_no, "finetune", "model(s)") or 0
    raise typer.Exit(code)


@app.command()
def calibrate(
    device: o.DeviceOpt = "cpu",
    model: Annotated[str, typer.Option("--model", "-m", help="timm model timed against itself.")]
    = "vit_small_patch16_224",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Batch size.", min=1)] = 1,
    img_size: Annotated[int | None, typer.Option("--img-size", help="Input size (default: model's).", min=1)] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Paired rounds.", min=1)] = None,
    processes: Annotated[int | None, typer.Option("--processes", help="Timing processes.", min=1)] = None,
    seconds: Annotated[float | None, typer.Option("--seconds", help="Timing seconds per side.", min=0)] = None,
    cross: Annotated[bool, typer.Option("--cross-process", help="Each instance in its own timing process.")] = False,
    out: o.OutOpt = None,
) -> None:
    """The machine's noise floor: an A/A pair (a model against itself) timed as run times a pair; prints the
    smallest speed difference this machine resolves in that time (rounds, processes, seconds: run's defaults
    unless given). Exit 1 if the A/A interval excludes 1 or the machine was busy."""
    from . import env as env_mod
    from .calibrate import calibrate as run_calibration
    from .calibrate import summary_lines

    with _errors():
        env_mod.check_device(device)
        console.print(f"calibrating on {device}: {escape(model)} against itself, batch {batch_size} ...")
        cal = run_calibration(model, device, batch_size, img_size, rounds, processes, seconds, out,
                              env_mod.row_versions(), cross)
        for line in [*summary_lines(cal), f"results: {cal.out_dir}"]:
            console.print(escape(line), soft_wrap=True)
    raise typer.Exit(0 if cal.ok else 1)


@app.command()
def port(suite: o.SuitePath, only: o.OnlyOpt = None,
         write: Annotated[Path | None, typer.Option("--write", help="Write the port function to this file.")] = None
         ) -> None:
    """How each candidate's weights come from its reference (a table per candidate) and the port function that does
    it (checkpoint_filter_fn / port_weights). Exit 0: every mapping complete; 1: not; 2: bad input."""
    from .port_assist import port_reports
    from .report.show import print_port_reports

    with _errors():
        _, s = _load_for_run(suite, None, "quick")
        code = print_port_reports(console, port_reports(s, only), write)
    raise typer.Exit(code)


@app.command("diff")
def diff_cmd(
    old: Annotated[str, typer.Argument(help="Results dir, cases.csv, or timm-format table (path or URL).")],
    new: Annotated[str, typer.Argument(help="The same, for the newer results.")],
    threshold: Annotated[float, typer.Option("--threshold", "-t", help="Percent worse that counts.")] = 5.0,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown report.", metavar="")] = False,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write every compared metric to this CSV.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List improvements, unchanged too.", metavar="")] = False,
    device_map: Annotated[list[str] | None, typer.Option("--device-map", help="OLD=NEW: two names, one device.")]
    = None,
) -> None:
    """Compare two result sets. Exit 0: no regression; 1: regressions; 2: bad input."""
    from .report.diff import diff, parse_device_map
    from .report.results import load
    from .report.show import print_diff

    with _errors():
        a, b = load(old), load(new)
        rep = diff(a, b, threshold, parse_device_map(device_map))
        if csv_out:
            rep.rows.to_csv(csv_out, index=False)
        print_diff(console, rep, a.source, b.source, threshold, markdown, show_all)
    raise typer.Exit(1 if len(rep.regressions) else 0)


@app.command("plot")
def plot_cmd(
    results: Annotated[list[str], typer.Argument(help="Results dirs, cases.csv files or timm-format tables.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PNGs.")] = Path("plots"),
) -> None:
    """PNG plots: throughput vs params (log), latency percentiles, paired speed ratios, compile time per mode,
    numeric diff, fine-tune accuracy vs training throughput."""
    from .report.outputs import write_plots
    from .report.results import load

    with _errors():
        for w in write_plots([load(r) for r in results], out):
            console.print(escape(f"wrote {w}"))


@app.command("scan")
def scan_cmd(
    tables: Annotated[list[str], typer.Argument(help="timm benchmark tables (paths or URLs), or vitbench results.")],
    previous: Annotated[str | None, typer.Option("--previous", help="Last quarter's table or scan CSV.")] = None,
    suites: Annotated[Path | None, typer.Option("--suites", help="Suite dir that marks coverage.")] = None,
    top: Annotated[int, typer.Option("--top", help="Families to list (and to emit).")] = 20,
    emit_suite: Annotated[Path | None, typer.Option("--emit-suite", help="Write a suite for the top new families.")]
    = None,
    max_params: Annotated[float | None, typer.Option("--max-params", help="Emit-suite: the largest model (M params) "
                                                     "of each family up to this size (default: the smallest).")]
    = None,
    csv_out: Annotated[Path, typer.Option("--csv", help="Where to write the scan CSV.")]
    = Path("results/scan/vitbench-scan.csv"),
) -> None:
    """Group models into families, mark covered / new ones, rank by throughput at their size."""
    from .report.show import print_scan
    from .scan import scan_to_files

    with _errors():
        res, emitted = scan_to_files(tables, previous, suites, csv_out, emit_suite, top, max_params)
        print_scan(console, res, top, previous, csv_out, emit_suite, emitted)


def main() -> None:
    from .runner.signals import Interrupted, install

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    install()  # SIGTERM and SIGHUP end a run as Ctrl-C does: rows kept, workers ended, non-zero exit
    try:
        app()
    except (KeyboardInterrupt, Interrupted) as e:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(128 + getattr(e, "signal_no", 2))


if __name__ == "__main__":
    main()
