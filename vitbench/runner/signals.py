"""Signals that end a run. SIGTERM and SIGHUP (a closed terminal) raise ``Interrupted`` in the parent, as
Ctrl-C raises KeyboardInterrupt, so the same clean-up runs: workers ended, finished rows kept, the --resume hint.
Workers die with the parent even when it is killed outright (``die_with_parent``)."""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any


class Interrupted(BaseException):
    """The run was stopped by a signal; ``signal_no`` says which (exit code 128 + signal_no). Not a
    KeyboardInterrupt, so no library maps it to 130 on the way out."""

    def __init__(self, signal_no: int) -> None:
        super().__init__(signal.Signals(signal_no).name)
        self.signal_no = signal_no


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def install() -> None:
    """In the parent: SIGTERM and SIGHUP interrupt like Ctrl-C; Ctrl-C itself reports signal 2."""
    signal.signal(signal.SIGINT, _raise)
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, _raise)


@contextlib.contextmanager
def noting_signals(got: list[int]) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP appended to ``got`` while the block runs (the caller acts on them); the handlers
    before it come back after. Outside the main thread signals are not ours to handle: nothing is noted."""
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    try:
        old = {s: signal.signal(s, lambda n, f: got.append(n)) for s in sigs}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while a block of writes runs (a group's rows and pair rows land whole), then
    act on the first one that came."""
    got: list[int] = []
    with noting_signals(got):
        yield
    if got:
        raise Interrupted(got[0])


def die_with_parent(parent_pid: int | None, run_pid: int | None = None) -> None:
    """In a worker: the kernel sends SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG), so no worker
    outlives a parent that was killed with SIGKILL; if the parent (``parent_pid``: the run, or the fork server that
    forked this worker) or the run (``run_pid``) is already gone, exit now."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    if run_pid is not None:
        try:
            os.kill(run_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass
