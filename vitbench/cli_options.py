"""The command line's shared options (Typer annotations), used by several commands of ``cli``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SuiteArg = Annotated[Path | None, typer.Argument(help="Suite YAML (default: the embedded suites/quick.yaml).",
                                                 show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="cpu, cuda or cuda:N.")]
RunDeviceOpt = Annotated[str | None, typer.Option("--device", "-d", help="cpu, cuda or cuda:N [default: cpu]")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default results/<suite>-<time>).")]
OnlyOpt = Annotated[str | None, typer.Option("--only", help="Run only pairs whose name matches this glob.")]
BatchOpt = Annotated[str | None, typer.Option("--batch-sizes", "-b", help="Comma-separated, overrides the suite.")]
ResumeOpt = Annotated[Path | None, typer.Option("--resume", help="Continue the run in DIR, skipping done cases.")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="local (this machine) or ray (a Ray cluster).")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray: auto, HOST:PORT or ray://HOST:PORT "
                                                "(default: start a local Ray).")]
RayCpusOpt = Annotated[int | None, typer.Option("--ray-cpus", min=1, help="Ray: CPUs a task reserves (default: a "
                                                "whole node for CPU cases, its share of a GPU node for CUDA).")]
SuitePath = Annotated[Path, typer.Argument(help="Suite YAML (or an embedded suite's name).")]
