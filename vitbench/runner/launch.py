"""How worker processes start: forked from a fork server that has already imported the worker's framework, or
spawned afresh.

Importing torch + timm takes 4-8 s on a small VM, TensorFlow + Keras about as long; a run starts a worker per
set-up job and per timing process, so start-up used to be most of a run's wall time. A fork server (the standard
library's ``forkserver``: a fresh single-threaded interpreter that imports the preload modules and then only forks)
makes each start a fork of a process that has imported the framework and done nothing else: no tensor op, no CUDA
call, no TensorFlow or JAX work, no thread started (torch's OpenMP pool, TensorFlow's thread pools and CUDA
contexts do not survive a fork). Every child is a new process with its own memory, model instances, threads and
CUDA context, as a spawned one is.

One server per kind of worker (torch; Keras on TensorFlow; Keras on torch; tf-keras), so a worker still holds one
framework, and per value of the environment variables read at import (threads, devices, log levels): a run that
changes them gets a new server. Keras on JAX is spawned (JAX warns that fork is incompatible with its threads).

A server lives while this process does: it exits when this process ends (its end of the server's 'alive' pipe
closes; workers close theirs as they start), and the kernel then ends the workers (PR_SET_PDEATHSIG, set in
``worker.main`` against the server, which is their parent).
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import threading
from multiprocessing import context, forkserver, popen_forkserver, process, reduction, spawn, util
from typing import Any

# preload module (imports only) of each kind of worker that starts from a fork server
PRELOAD = {"torch": "vitbench.runner.preload.torch_workers",
           "keras-tensorflow": "vitbench.runner.preload.keras_tensorflow",
           "keras-torch": "vitbench.runner.preload.keras_torch",
           "tf-keras": "vitbench.runner.preload.tf_keras"}
# environment variables read when a framework is imported: a server is only reused while they are unchanged
_IMPORT_ENV = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "CUDA_", "TF_", "XLA_", "KERAS_", "TORCH", "PYTORCH_",
               "NVIDIA_", "LD_", "PYTHON")
_SPAWN = mp.get_context("spawn")
_servers: dict[tuple, _Server] = {}
_lock = threading.Lock()


class _Server(forkserver.ForkServer):
    """The standard library's fork server, one per kind of worker (the module-level one serves one preload list)."""

    def __init__(self, preload: str) -> None:
        super().__init__()
        self.set_forkserver_preload([preload])

    @property
    def pid(self) -> int | None:
        return self._forkserver_pid


class _Popen(popen_forkserver.Popen):
    """Starts a process through the fork server named by the process object (the standard one reads the
    module-level server only). The launch protocol is the standard library's: preparation data and the pickled
    process object written to the child over the server's pipe."""

    def _launch(self, process_obj: Any) -> None:
        server = _servers[process_obj.server_key]
        prep = spawn.get_preparation_data(process_obj._name)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep, buf)
            reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        self.sentinel, w = server.connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # kept open while the child runs: the child's sentinel of this process
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class ForkedProcess(process.BaseProcess):
    """A ``multiprocessing`` process started by one of our fork servers (``server_key``)."""

    _start_method = "forkserver"
    server_key: tuple = ()

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _Popen(process_obj)


def worker_kind(framework: str, backend: str | None) -> str:
    """'torch', 'keras-tensorflow', 'keras-jax', 'keras-torch' or 'tf-keras' (Keras 2 on TensorFlow: never in a
    process with Keras 3)."""
    if framework == "tf_keras":
        return "tf-keras"
    return "torch" if framework == "torch" else f"keras-{backend or 'tensorflow'}"


def _server_key(kind: str) -> tuple:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_IMPORT_ENV)))
    return (kind, env)


def _forked(kind: str) -> bool:
    return kind in PRELOAD and os.environ.get("VITBENCH_START", "fork") != "spawn"


def parent_pid(kind: str) -> int:
    """The pid that will be the parent of a ``kind`` worker started now: its fork server (started here on first
    use; its imports run there, not here), or this process where such workers are spawned."""
    if not _forked(kind):
        return os.getpid()
    with _lock:
        key = _server_key(kind)
        server = _servers.get(key)
        if server is None:
            server = _servers[key] = _Server(PRELOAD[kind])
        server.ensure_running()  # (re)starts it if it died
        assert server.pid is not None
        return server.pid


def new_process(kind: str, target: Any, args: tuple) -> Any:
    """An unstarted daemon process running ``target(*args)``: forked by ``kind``'s fork server (call
    ``parent_pid`` first), else spawned."""
    if not _forked(kind):
        return _SPAWN.Process(target=target, args=args, daemon=True)
    p = ForkedProcess(target=target, args=args, daemon=True)
    p.server_key = _server_key(kind)
    return p


MMAP_THRESHOLD = 32 << 20  # glibc's largest dynamic mmap threshold on 64-bit: what a long-running process settles at


def steady_allocator() -> str:
    """Put glibc's allocator in one fixed state in every worker: mmap threshold 32 MiB, trim threshold twice that
    (``mallopt``; ``VITBENCH_MALLOC=default`` leaves glibc's dynamic thresholds). Why: glibc raises its mmap
    threshold the first time a large block is freed, after which activations come from the heap instead of fresh
    mmaps and page faults. So a timing process that had loaded weights from disk (a ported candidate) ran the
    same network ~4% faster than one that had not (a cross-process A/A pair on this project's VM came out 1.042
    [1.023, 1.063] 'faster'). Fixed thresholds make a process's speed independent of what it happened to free
    before, at the value a long-running process reaches anyway. Returns what was set (env.json says it)."""
    if os.environ.get("VITBENCH_MALLOC") == "default":
        return "glibc defaults (dynamic mmap threshold)"
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, MMAP_THRESHOLD) == 1 and libc.mallopt(-1, 2 * MMAP_THRESHOLD) == 1  # M_MMAP_/M_TRIM_
    except (OSError, AttributeError):
        return "not glibc: allocator left as it is"
    return f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {2 * MMAP_THRESHOLD >> 20} MiB (fixed)" if ok \
        else "glibc mallopt refused: allocator left as it is"


_PADDING: list[object] = []  # kept for the life of the worker


def randomize_layout() -> str:
    """Give this worker a memory layout of its own: a random amount of heap (up to 4 MiB, below the mmap
    threshold) and of mapped memory (up to 1 MiB) taken before any model is built, so its tensors land at
    addresses (and cache sets) that differ from process to process (``VITBENCH_LAYOUT=fixed`` skips it).

    Why: workers forked from one server start from one address-space layout, and allocate in the same order, so
    every timing process of a run put its model instances at the same addresses, and a layout that happened to
    favour one instance favoured it in every process: the interval over processes then missed it (A/A runs of
    Swin-T gave 0.980 [0.966, 0.995] with 9 of 10 processes below 1). A spawned process gets a fresh layout from
    ASLR; this restores that independence at no start-up cost (the idea of layout randomisation in STABILIZER,
    Curtsinger & Berger 2013)."""
    if os.environ.get("VITBENCH_LAYOUT") == "fixed":
        return "fixed (as forked)"
    import mmap
    import random

    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    heap = rng.randrange(16, 4 << 20)
    pages = rng.randrange(1, 257)
    _PADDING.extend([bytearray(heap), mmap.mmap(-1, pages * mmap.PAGESIZE),
                     *(bytearray(rng.randrange(16, 2048)) for _ in range(rng.randrange(1, 256)))])
    return f"heap +{heap} B, mapped +{pages} pages"


def close_inherited_server_fd() -> None:
    """In a worker forked by a server: close the child's copy of the server's 'alive' pipe, so the server exits
    as soon as the run's process does (not when the last worker does), which ends the workers."""
    fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)  # set in the child by the standard library
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
        forkserver._forkserver._forkserver_alive_fd = None
