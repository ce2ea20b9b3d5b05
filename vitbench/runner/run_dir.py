"""A run's directory as the commands see it: choosing it (``--out`` / ``--resume``), making it writable or saying
why not in one line, locking it against a second run, the cases still to run on ``--resume``, and the files that
describe the run (env.json, the suite as run). Also where a suite name or path resolves to (a file, else an
embedded suite of the same name)."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import InputError

LOCK = ".vitbench.lock"


def embedded_suites_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "suites"


def embedded_suites() -> list[str]:
    return sorted(p.stem for p in embedded_suites_dir().glob("*.yaml"))


def resolve_suite(path: Path | None, default: str) -> tuple[Path, str | None]:
    """(the suite file to load, a note when it is an embedded suite the user did not spell as a path). A path that
    exists wins; ``vit``, ``vit.yaml`` or ``suites/vit.yaml`` that does not exist here is the embedded ``vit``
    (what ``pip install .`` users have)."""
    if path is None:
        local = Path("suites") / f"{default}.yaml"
        return (local, None) if local.is_file() else (embedded_suites_dir() / f"{default}.yaml", None)
    if path.is_file():
        return path, None
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    embedded = embedded_suites_dir() / f"{name}.yaml"
    if embedded.is_file() and (path.parent in (Path("."), Path("suites")) or path.suffix == ""):
        return embedded, f"{path} not found here: using the embedded suite '{name}' ({embedded})"
    return path, None


def _writable_dir(path: Path, flag: str) -> None:
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: it is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".vitbench-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot write there ({e.strerror or type(e).__name__})") from None


@dataclass
class RunDir:
    path: Path
    resumed: bool
    _lock: Any = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.path / LOCK).unlink(missing_ok=True)  # before the lock goes: nobody locks a deleted file
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None


def _lock(path: Path, flag: str) -> Any:
    """An exclusive lock on the run dir for as long as the run lives (released by the OS if it dies)."""
    import fcntl

    f = (path / LOCK).open("a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise InputError(f"{flag} {path}: another vitbench run (pid {holder}) is writing there; wait for it or "
                         "choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def open_run_dir(out: Path | None, resume: Path | None, default_name: str) -> RunDir:
    """The run's directory, created, writable and locked. ``--resume DIR`` needs a previous run there."""
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise InputError("give --resume DIR or --out DIR, not both")
        if not (resume / "cases.csv").is_file():
            raise InputError(f"--resume {resume}: no cases.csv there to resume")
        _writable_dir(resume, "--resume")
        return RunDir(resume, True, _lock(resume, "--resume"))
    if out is None:
        out = Path("results") / f"{default_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out.is_dir() and (out / "cases.csv").exists():
        raise InputError(f"--out {out}: it already holds results (cases.csv); use --resume {out} or another --out")
    _writable_dir(out, "--out")
    return RunDir(out, False, _lock(out, "--out"))


def suite_for_resume(resume: Path, suite: Path | None) -> Path:
    """``--resume DIR`` runs DIR/suite.yaml, the suite as first run; naming a different suite is refused. The
    first run's suite directory and working directory are importable again (models kept beside the suite)."""
    from ..providers.import_provider import add_import_paths

    if not (resume / "cases.csv").is_file():
        raise InputError(f"--resume {resume}: no cases.csv there to resume")
    kept = resume / "suite.yaml"
    if not kept.is_file():
        raise InputError(f"--resume {resume}: no suite.yaml there (the suite the run was started with)")
    if suite is not None and suite.is_file() and suite.read_text() != kept.read_text():
        raise InputError(f"--resume {resume}: that run was started with another suite ({kept}), not {suite}; "
                         f"resume without naming a suite, or start a new run with --out")
    first = run_settings(resume)
    add_import_paths(*[d for d in (first.get("suite_dir"), first.get("cwd")) if d and Path(d).is_dir()])
    return kept


def run_settings(run_dir: Path) -> dict[str, Any]:
    """What the first run of DIR was started with (run.json): suite and working directories, device, options."""
    try:
        return dict(json.loads((run_dir / "run.json").read_text()))
    except (OSError, ValueError):
        return {}


def resumed_option(run_dir: Path | None, name: str, given: Any, default: Any) -> Any:
    """An option's value: on --resume the first run's (a different one given now is refused), else the given
    one or the default."""
    if run_dir is None:
        return default if given is None else given
    first = run_settings(run_dir).get(name, default)
    if given is not None and given != first:
        raise InputError(f"--resume {run_dir}: it was run with --{name.replace('_', '-')} {first}, not {given}; "
                         "resume with the same options, or start a new run with --out")
    return first


def cases_to_run(store: Any, cases: list[Any]) -> tuple[list[Any], str]:
    """On --resume: rows that did not end ok are forgotten (they run again); the cases not yet done, and a line
    saying so."""
    dropped = store.drop_unfinished()
    done = store.done_ids()
    todo = [c for c in cases if c.case_id not in done]
    line = f"{len(cases) - len(todo)} cases done, {len(todo)} to run" + (
        f" ({dropped} failed rows will run again)" if dropped else "")
    return todo, line


def write_run_files(run_dir: RunDir, suite_path: Path, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """env.json (this machine, now) and, for a new run, the suite as run and run.json (suite and working
    directories, options), which a resumed run keeps from the first."""
    from .. import env as env_mod

    info = env_mod.collect()
    (run_dir.path / "env.json").write_text(json.dumps(info, indent=2))
    if not run_dir.resumed:
        (run_dir.path / "suite.yaml").write_text(suite_path.read_text())
        first = {"suite": str(suite_path.resolve()), "suite_dir": str(suite_path.resolve().parent),
                 "cwd": os.getcwd(), **(options or {})}
        (run_dir.path / "run.json").write_text(json.dumps(first, indent=2))
    return info


def start_run(runner_cls: Any, cases: list[Any], suite: Any, path: Path, only: str | None, out: Path | None,
              resume: Path | None, name: str, options: dict[str, Any] | None = None
              ) -> tuple[Any, list[Any], RunDir, dict[str, Any], str | None]:
    """A run session's start: the run dir (created, writable, locked) and its runner; on --resume only the cases
    still to run (and a line saying how many); env.json and the suite as run."""
    from .. import env as env_mod

    if not cases:
        raise InputError(f"--only '{only}': no pair of {path.name} matches "
                         f"(pairs: {', '.join(p.name for p in suite.pairs)})")
    rd = open_run_dir(out, resume, name)
    runner = runner_cls(rd.path, env_mod.row_versions())
    line = None
    if rd.resumed:
        cases, done = cases_to_run(runner.store, cases)
        line = f"resuming {rd.path}: {done}"
    return runner, cases, rd, write_run_files(rd, path, options), line


def run_options(resume: Path | None, device: str | None, only: str | None, batch_sizes: str | None
                ) -> tuple[str, str | None, list[int] | None]:
    """``run``'s device, --only and --batch-sizes: given (or defaults), or on --resume the first run's."""
    from ..suite import parse_batch_sizes

    return (resumed_option(resume, "device", device, "cpu"), resumed_option(resume, "only", only, None),
            resumed_option(resume, "batch_sizes", parse_batch_sizes(batch_sizes), None))
