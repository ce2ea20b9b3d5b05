"""Ray executor: the local executor's units of work, each run as one Ray task on a node of a Ray cluster.

A unit is what the local executor runs in one go: an inference group (a reference and the candidates timed with
it in paired rounds - they stay together, on one node and one device, so the ratio stays paired) or one fine-tune
case. Its task runs the local runner's ``run_unit`` (``Runner.run_group``, ``FinetuneRunner.run_case``) on that
node, in a private run directory: the same spawned workers, timeouts, memory cap and timing sessions. Everything
the unit wrote there (rows, blocks, pair rows, curves, logs, artifacts, weights) comes back with the task's result;
the driver appends it to the run's result store (fsync per row) and files, as the local executor does.

Isolation: the driver schedules. It pins each task to the node it chose (hard node affinity) and asks Ray for the
unit's resources there: CPU cases reserve all of a node's CPUs (or ``ray_cpus`` of them), CUDA cases one GPU and
their share of the node's CPUs. Ray's accounting then keeps any other task (ours or another job's) off what a unit
holds, and the driver never puts more units on a node than fit. Reference artifacts of a pair reach a node through
the object store: the first unit of a pair makes them on its node and returns them; later units of that pair get
them as task arguments (they wait until then, so a pair's weights, input and output are made once).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import DeviceError, InputError, VitbenchError
from .artifacts import pair_dir
from .executor import Runner
from .pairing import pair_row, plan_groups, reference_side
from .ray_cluster import Node, cluster_nodes, connect, first_line
from .rounds import RoundsResult
from .signals import Interrupted, deferred_signals, noting_signals
from .store import ResultStore

NO_NODE_S = 120.0  # queued units that no node can take for this long become crashed rows
REFRESH_S = 5.0  # how often the driver re-reads the cluster's nodes


def executor_for(base: Any, executor: str, address: str | None, ray_cpus: int | None, device: str) -> Any:
    """The runner a command builds: ``base`` (``Runner`` or ``FinetuneRunner``) for ``local``, else a factory of
    RayRunners on the cluster at ``address``, connected now (a bad address or device fails before a run dir is
    made). Raises InputError / DeviceError with one line."""
    from .. import env as env_mod

    if executor == "local":
        if address is not None or ray_cpus is not None:
            raise InputError("--address and --ray-cpus go with --executor ray")
        env_mod.check_device(device)
        return base
    if executor != "ray":
        raise InputError(f"--executor {executor}: expected local or ray")
    if device not in ("cpu", "cuda", "cuda:0"):
        raise DeviceError(f"--device {device} with --executor ray: use cpu or cuda (Ray gives each task one GPU, "
                          "which the task sees as cuda:0)")
    connect(address)
    nodes = cluster_nodes(device, ray_cpus)
    if not any(n.slots for n in nodes.values()):
        have = "; ".join(f"{n.host}: {n.cpus:g} CPU, {n.gpus:g} GPU" for n in nodes.values()) or "no node alive"
        need = "1 GPU" if device != "cpu" else f"{ray_cpus} CPUs" if ray_cpus else "a node with CPUs"
        raise DeviceError(f"--executor ray --device {device}: no node of the Ray cluster has {need} ({have})")
    return lambda out, env_row: RayRunner(out, env_row, base, device, ray_cpus)


@dataclass
class _Unit:
    payload: Any  # a group (list of executor._Side) or a FinetuneCase
    cases: list[Any]  # the cases it records rows for
    key: str  # its pair's artifacts folder, relative to the run dir (shared by the pair's units)


class _Memory:
    """The result store's writing side, kept in memory: what a task's unit wrote, to send back to the driver."""

    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, Any], Any]] = []
        self.pairs: list[dict[str, Any]] = []
        self.curves: list[tuple[str, str, list[dict[str, Any]]]] = []

    def append(self, row: dict[str, Any], blocks: list[dict[str, Any]] | None = None) -> None:
        self.rows.append((dict(row), blocks))

    def append_pair(self, row: dict[str, Any]) -> None:
        self.pairs.append(dict(row))

    def append_curve(self, case_id: str, label: str, points: list[dict[str, Any]]) -> None:
        self.curves.append((case_id, label, points))


def run_unit(base: Any, payload: Any, names: list[str], ctx: dict[str, Any], want_env: bool,
             *blobs: bytes) -> dict[str, Any]:
    """The Ray task, on its node: the unit run by the local executor's code in a private run dir holding the
    files ``names`` (their bytes: ``blobs``, resolved from the object store by Ray). Returns its rows, pair rows,
    curves, every file it wrote (``files``: path relative to the run dir -> bytes), and, if ``want_env``, the
    node's environment. ``ctx``: the driver's import paths and working directory, ``threads`` (OMP_NUM_THREADS for
    the workers; None: unset, torch's default as in a local run), ``keep_artifacts`` (send the pair's artifacts
    back: other units of the pair are queued; a zoo sweep's reference-only pairs never ship their weights),
    ``cpus`` (what the unit reserved: contention is measured against it, ``VITBENCH_CPUS``)."""
    from .. import env as env_mod

    for d in reversed(ctx["paths"]):
        if os.path.isdir(d) and d not in sys.path:
            sys.path.insert(0, d)  # spawned workers inherit sys.path: models kept beside the suite import there
    if os.path.isdir(ctx["cwd"]):
        os.chdir(ctx["cwd"])
    if ctx["threads"] is None:
        os.environ.pop("OMP_NUM_THREADS", None)  # Ray sets it to the task's CPUs; a local run leaves it unset
    else:
        os.environ["OMP_NUM_THREADS"] = str(ctx["threads"])
    if ctx.get("cpus"):
        os.environ["VITBENCH_CPUS"] = str(ctx["cpus"])  # contention is judged against the CPUs the unit holds
    tmp = Path(tempfile.mkdtemp(prefix="vitbench-ray-"))
    try:
        for rel, data in zip(names, blobs, strict=True):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        mem = _Memory()
        base(tmp, env_mod.row_versions()).run_unit(payload, mem)
        files = {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(tmp.rglob("*"))
                 if p.is_file() and str(p.relative_to(tmp)) not in names and not p.name.startswith(".")
                 and (ctx["keep_artifacts"] or not str(p.relative_to(tmp)).startswith("artifacts"))}
        return {"run_dir": str(tmp), "rows": mem.rows, "pairs": mem.pairs, "curves": mem.curves, "files": files,
                "env": {**env_mod.collect(), "host": socket.gethostname()} if want_env else None}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RayRunner:
    """Runs a command's cases as Ray tasks (see the module's docstring) with the local runners' interface: ``run``,
    ``store``, ``on_progress``. ``base``: the local runner class whose units it runs (its ``task``, infer |
    finetune; ``run_unit`` on the node; ``case_columns`` for a crashed unit's rows). env.json gains ``nodes``, one
    entry per node that ran a unit (its versions, CPU, GPUs, driver, as ``vitbench env`` reports them, and its Ray
    resources)."""

    def __init__(self, out_dir: Path, env_row: dict[str, Any], base: Any = Runner, device: str = "cpu",
                 ray_cpus: int | None = None) -> None:
        self.out = Path(out_dir)
        self.store = ResultStore(self.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env_row, self.base, self.device, self.ray_cpus = env_row, base, device, ray_cpus
        self.on_progress: Callable[[str], None] | None = None
        self.nodes: dict[str, Node] = {}
        self.described = {n["node_id"]: n for n in _env(self.out).get("nodes", []) if n.get("node_id")}  # resume
        self._asked: set[str] = set()
        self._settled: set[str] = set()  # pairs whose first unit has ended: their artifacts are made, or never
        self._blobs: dict[str, Any] = {}
        self._refreshed = 0.0
        self._remote: Any = None

    def run(self, cases: list[Any], on_start: Callable[[int, Any], None] | None = None,
            on_done: Callable[[int, Any, dict[str, Any]], None] | None = None,
            partners: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run ``cases`` (``partners``: the suite's, so a resumed candidate is timed beside its reference). Ctrl-C
        or SIGTERM cancels every unit in flight (``ray.cancel(force=True)``: its workers die with it) and raises;
        rows already written stay."""
        ray = connect(None)  # connected already when the CLI built this runner: then it only returns ray
        self._remote = self._remote or ray.remote(run_unit)
        index = {c.case_id: i for i, c in enumerate(cases)}
        if self.base.task == "infer":
            queue = [_Unit(g, [s.case for s in g if s.record], _key(g[0].case)) for g in plan_groups(
                cases, partners or cases)]
        else:
            queue = [_Unit(c, [c], _key(c)) for c in cases]
        flight: dict[Any, tuple[_Unit, Node, float]] = {}
        rows: list[dict[str, Any]] = []
        idle_since: float | None = None
        got: list[int] = []  # signals are noted, then raised here: raised inside Ray's C code they become errors
        try:
            with noting_signals(got):
                while queue or flight:
                    if got:
                        raise Interrupted(got[0])
                    self._refresh()
                    self._submit(queue, flight, on_start, index)
                    if not flight:  # no node can take a unit now (nodes gone): wait for one, then give up
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > NO_NODE_S:
                            why = RuntimeError(f"no node of the Ray cluster could take it for {NO_NODE_S:g} s")
                            for u in queue:
                                rows += self._record(u, None, why, time.time(), on_done, index)
                            break
                        time.sleep(1.0)
                        continue
                    idle_since = None
                    self._say(flight, queue)
                    done, _ = ray.wait(list(flight), num_returns=1, timeout=0.5)
                    for ref in done:
                        unit, node, t0 = flight.pop(ref)
                        node.busy -= 1
                        try:
                            result = ray.get(ref)
                        except Exception as e:  # noqa: BLE001  (the worker or node died, or the task raised)
                            result = e
                        rows += self._record(unit, node, result, t0, on_done, index)
                        if not any(u.key == unit.key for u in queue) and not any(
                                u.key == unit.key for u, _, _ in flight.values()):
                            self._forget(unit.key)  # the pair is done: its artifacts leave the object store
        except BaseException as e:  # Ctrl-C, SIGTERM, a lost cluster: nothing more runs; finished rows are on disk
            for ref in flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if isinstance(e, Exception) and not isinstance(e, (Interrupted, VitbenchError)):
                raise DeviceError(f"ray: the run stopped, the cluster failed the driver ({type(e).__name__}: "
                                  f"{first_line(e)}); finished rows are kept: --resume {self.out}") from None
            raise
        finally:
            self._write_nodes()
        return rows

    def _say(self, flight: dict[Any, tuple[_Unit, Node, float]], queue: list[_Unit]) -> None:
        if self.on_progress:
            used = {n.id for _, n, _ in flight.values()}
            self.on_progress(f"ray: {len(flight)} unit(s) running on {len(used)} node(s), {len(queue)} queued")

    def _refresh(self) -> None:
        """Re-read the cluster's nodes (every REFRESH_S): new nodes get units, dead ones no more."""
        if time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        fresh = cluster_nodes(self.device, self.ray_cpus)
        for nid, n in fresh.items():
            if nid in self.nodes:  # the same object: units in flight hold it and give their slot back to it
                old = self.nodes[nid]
                vars(old).update(vars(n) | {"busy": old.busy})
                fresh[nid] = old
        self.nodes = fresh

    def _submit(self, queue: list[_Unit], flight: dict[Any, tuple[_Unit, Node, float]],
                on_start: Callable[[int, Any], None] | None, index: dict[str, int]) -> None:
        """Start every queued unit a node has room for, in order; a unit whose pair's first unit is still making
        the artifacts waits for them."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        making = {u.key for u, _, _ in flight.values() if u.key not in self._settled}
        for unit in list(queue):
            free = [n for n in self.nodes.values() if n.busy < n.slots]
            if not free:
                return
            names, refs = self._artifacts(unit.key)
            if names:
                self._settled.add(unit.key)  # made already (by an earlier unit, or the run this one resumes)
            if unit.key in making and unit.key not in self._settled:
                continue
            node = min(free, key=lambda n: n.busy / n.slots)
            want_env = node.id not in self.described and node.id not in self._asked
            threads = os.environ.get("OMP_NUM_THREADS") or (
                None if self.device == "cpu" and self.ray_cpus is None else int(node.num_cpus))
            ctx = {"paths": [p for p in sys.path if p and os.path.isdir(p)], "cwd": os.getcwd(), "threads": threads,
                   "keep_artifacts": any(u.key == unit.key for u in queue if u is not unit),
                   "cpus": node.num_cpus}
            ref = self._remote.options(
                num_cpus=node.num_cpus, num_gpus=node.num_gpus, max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
            ).remote(self.base, unit.payload, names, ctx, want_env, *refs)
            flight[ref] = (unit, node, time.time())
            node.busy += 1
            queue.remove(unit)
            if unit.key not in self._settled:
                making.add(unit.key)
            if want_env:
                self._asked.add(node.id)
            for c in unit.cases:
                if on_start:
                    on_start(index[c.case_id], c)

    def _forget(self, key: str) -> None:
        for rel in [r for r in self._blobs if r.startswith(key.rstrip("/") + "/")]:
            del self._blobs[rel]  # the driver's ref was the last one: Ray frees the object

    def _artifacts(self, key: str) -> tuple[list[str], list[Any]]:
        """The pair's artifact files the driver holds, as object-store refs (put once each)."""
        import ray

        names, refs = [], []
        folder = self.out / key
        for p in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
            if p.name.endswith(".tmp.npz"):
                continue
            rel = str(p.relative_to(self.out))
            if rel not in self._blobs:
                self._blobs[rel] = ray.put(p.read_bytes())
            names.append(rel)
            refs.append(self._blobs[rel])
        return names, refs

    def _record(self, unit: _Unit, node: Node | None, result: Any, t0: float,
                on_done: Callable[[int, Any, dict[str, Any]], None] | None, index: dict[str, int]
                ) -> list[dict[str, Any]]:
        """A unit's result into the run dir: files first (logs appended), then rows, blocks, pair rows and curves
        in one signal-deferred write. A unit whose task died becomes ``crashed`` rows naming the node."""
        if isinstance(result, BaseException):
            rows, pairs, curves = self._crashed(unit, node, result, t0), [], []
            if self.base.task == "infer":
                pairs = _untimed_pairs(unit.payload, rows)
        else:
            tmp = result["run_dir"]

            def here(v: Any) -> Any:  # paths in errors ("see .../logs/x.log") name the driver's run dir
                return v.replace(tmp, str(self.out)) if isinstance(v, str) else v

            self._write_files(result["files"])
            rows = [({k: here(v) for k, v in r.items()}, b) for r, b in result["rows"]]
            pairs = [{k: here(v) for k, v in p.items()} for p in result["pairs"]]
            curves = result["curves"]
            if result["env"] is not None and node is not None:
                self.described[node.id] = {"node_id": node.id, "host": node.host, "ip": node.ip,
                                           "ray_resources": {"CPU": node.cpus, "GPU": node.gpus}, **result["env"]}
        with deferred_signals():  # a unit's rows land whole, or not at all
            for row, blocks in rows:
                self.store.append(row, blocks)
            for p in pairs:
                self.store.append_pair(p)
            for case_id, label, points in curves:
                self.store.append_curve(case_id, label, points)
        self._settled.add(unit.key)
        by_id = {c.case_id: c for c in unit.cases}
        for row, _ in rows:
            if on_done and row["case_id"] in by_id:
                on_done(index[row["case_id"]], by_id[row["case_id"]], row)
        return [r for r, _ in rows]

    def _write_files(self, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            path = self.out / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab" if rel.startswith("logs/") else "wb") as f:  # a resumed case's log goes on
                f.write(data)

    def _crashed(self, unit: _Unit, node: Node | None, err: BaseException, t0: float
                 ) -> list[tuple[dict[str, Any], None]]:
        where = node.where() if node else "no node"
        cause = getattr(err, "cause", None) or err
        msg = f"ray task died on {where}: {type(cause).__name__}: {first_line(cause)}"
        row = {**self.env_row, "host": node.host if node else "", "status": "crashed", "error": msg,
               "started_at": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="seconds"),
               "duration_s": time.time() - t0}
        return [({**row, **self.base.case_columns(c)}, None) for c in unit.cases]

    def _write_nodes(self) -> None:
        """env.json's ``nodes``: one entry per node that ran a unit of this run (a resumed run's included)."""
        if not self.described:
            return
        info = _env(self.out)
        info["nodes"] = sorted(self.described.values(), key=lambda n: (n.get("host", ""), n["node_id"]))
        (self.out / "env.json").write_text(json.dumps(info, indent=2))


def _untimed_pairs(group: list[Any], rows: list[tuple[dict[str, Any], None]]) -> list[dict[str, Any]]:
    """pairs.csv rows for a crashed group's candidates (not measured), as the local executor writes them."""
    by_id = {r["case_id"]: r for r, _ in rows}
    out = []
    for s in group:
        if s.record and s.case.role == "candidate":
            s.row = by_id[s.case.case_id]
            out.append(pair_row(s, reference_side(s, group), None, RoundsResult(len(group))))
    return out


def _key(case: Any) -> str:
    return str(pair_dir("", case.pair, case.device))


def _env(out: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((out / "env.json").read_text()))
    except (OSError, ValueError):
        return {}
