"""Ray, as the Ray executor sees it: connecting (or starting a local Ray), failing in one line when that cannot
work, and the cluster's nodes with what one unit of work reserves on each."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

INSTALL = "pip install 'vitbench[ray]'"


def connect(address: str | None) -> Any:
    """``ray.init()`` (a local Ray, started here) or ``ray.init(address=...)``; one-line InputError when ray is not
    installed or nothing answers at ``address``."""
    if importlib.util.find_spec("ray") is None:
        raise InputError(f"--executor ray: ray is not installed ({INSTALL})")
    if address and address != "auto":
        _probe(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and "RAY_AUTH_MODE" not in os.environ and _have_token():
        # Ray enables token auth on a head started where a token exists, but a driver given an explicit address
        # only sends it when told to (Ray does so by itself for "auto"); a token-mode driver also joins a head
        # without auth. Set before ray is imported: it reads its config then.
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["ray"]._raylet.Config.initialize("")  # already imported (tests): re-read it
    try:
        import ray
    except ImportError:
        raise InputError(f"--executor ray: ray is not installed ({INSTALL})") from None
    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        kw["include_dashboard"] = False
    try:
        ray.init(address=address, **kw)
    except Exception as e:  # noqa: BLE001  (ConnectionError, RuntimeError, ValueError: all one line)
        raise InputError(f"--address {address or '(none: a local Ray)'}: cannot connect to Ray: "
                         f"{first_line(e)}") from None
    return ray


def _probe(address: str) -> None:
    """Fail fast (3 s) when nothing listens at HOST:PORT (``ray://`` included), rather than after Ray's long
    retries."""
    hostport = address.removeprefix("ray://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        raise InputError(f"--address {address}: no Ray cluster answers there ({e.strerror or type(e).__name__}); "
                         f"start one with: ray start --head --port={port}") from None


@dataclass
class Node:
    """A node as the driver schedules it: ``slots`` units at a time, each reserving ``num_cpus`` and
    ``num_gpus`` there."""

    id: str
    host: str
    ip: str
    cpus: float
    gpus: float
    slots: int
    num_cpus: float
    num_gpus: float
    busy: int = 0

    def where(self) -> str:
        return f"node {self.host} ({self.ip}, id {self.id[:12]})"


def cluster_nodes(device: str, ray_cpus: int | None) -> dict[str, Node]:
    """The cluster's live nodes and what one unit reserves on each: CPU cases a whole node (or ``ray_cpus``),
    CUDA cases one GPU with the node's CPUs split among its GPUs (or ``ray_cpus``)."""
    import ray

    out = {}
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        if device == "cpu":
            need_cpu, need_gpu = float(ray_cpus or cpus), 0.0
            slots = int(cpus // need_cpu) if need_cpu >= 1 else 0
        else:
            need_gpu = 1.0
            need_cpu = float(ray_cpus or (max(1, int(cpus // gpus)) if gpus >= 1 else 1))
            slots = min(int(gpus), int(cpus // need_cpu))
        out[n["NodeID"]] = Node(n["NodeID"], n.get("NodeManagerHostname") or "?", n.get("NodeManagerAddress") or "?",
                                cpus, gpus, slots, need_cpu, need_gpu)
    return out


def _have_token() -> bool:
    """A Ray auth token is at hand: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:300]
