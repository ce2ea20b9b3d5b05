"""The Ray executor on a local Ray (2 CPUs, started in this process): the same case set as the local executor, all
ok, ``host`` on every row, env.json's ``nodes``, resume without duplicates; a Ray worker killed mid-case gives a
``crashed`` row naming the node and the run goes on; what one unit reserves per node; one-line errors for a
missing ray and an address nobody answers at. (The CLI through ``--address`` on a ``ray start --head`` cluster,
with Ctrl-C and --resume, is ../shared/checks/check-ray.sh.)"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

FAST = "rounds: 6, processes: 1, warmup_iters: 1, min_iters: 2, min_seconds: 0, img_size: 32, batch_sizes: [1]"
TINY = f"""
name: tiny
defaults: {{{FAST}, batch_sizes: [1, 2], timeout_s: 120}}
pairs:
  - name: a
    reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
    candidates: [{{provider: import, model: "vitbench.testing:TinyNet", label: mine}}]
"""
HANG_FIRST = f"""
name: hang
defaults: {{{FAST}, timeout_s: 600}}
pairs:
  - name: hang
    reference: {{provider: import, model: "vitbench.testing:Hanging"}}
  - name: b
    reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
    candidates: [{{provider: import, model: "vitbench.testing:TinyNet", label: mine}}]
"""


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs started by this process (ray.shutdown ends it and only it). Token auth off: no token file
    is written to ~/.ray for it."""
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = old


@pytest.mark.slow
def test_a_suite_through_ray_runs_the_local_case_set_with_hosts_and_resumes(cli, write_suite, tmp_path, local_ray):
    from vitbench.suite import expand, load_suite

    path = write_suite(TINY)
    out = tmp_path / "o"
    res = cli("run", path, "--executor", "ray", "--out", out)
    assert res.exit_code == 0, res.output
    got = rows(out)
    assert {r["case_id"] for r in got} == {c.case_id for c in expand(load_suite(path), "cpu")} and len(got) == 4
    assert all(r["status"] == "ok" for r in got)
    assert {r["host"] for r in got} == {socket.gethostname()}
    assert all(r["numerics_status"] in ("ok", "reference") for r in got)
    nodes = json.loads((out / "env.json").read_text())["nodes"]
    assert len(nodes) == 1 and nodes[0]["host"] == socket.gethostname() and nodes[0]["ray_resources"]["CPU"] == 2
    assert nodes[0]["torch"]["version"]  # the node's own environment, as `vitbench env` reports it
    assert len(list((out / "logs").glob("*.log"))) >= 4  # each case's log came back from the node
    with open(out / "pairs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    res = cli("run", "--resume", out, "--executor", "ray")
    assert res.exit_code == 0 and "4 cases done, 0 to run" in res.output, res.output
    assert len(rows(out)) == 4


def _ray_task_worker(timeout: float = 180.0) -> tuple[psutil.Process, psutil.Process]:
    """The Ray worker (a descendant of this process) running ``run_unit``, once its case's worker has run for 2 s,
    and that case worker."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in me.children(recursive=True):
            try:
                if " ".join(p.cmdline()).startswith("ray::run_unit"):
                    kids = p.children()
                    if kids and time.time() - kids[0].create_time() > 2:
                        return p, kids[0]
            except psutil.Error:
                continue
        time.sleep(0.5)
    raise AssertionError("no Ray worker ran the unit")


@pytest.mark.slow
def test_a_killed_ray_worker_gives_a_crashed_row_naming_the_node_and_the_run_goes_on(write_suite, tmp_path,
                                                                                        local_ray):
    from vitbench.env import row_versions
    from vitbench.runner.executor import Runner
    from vitbench.runner.ray_executor import RayRunner
    from vitbench.suite import expand, load_suite

    cases = expand(load_suite(write_suite(HANG_FIRST)), "cpu")
    runner = RayRunner(tmp_path / "o", row_versions(), Runner, "cpu", None)
    killed: dict[str, psutil.Process] = {}

    def kill() -> None:  # the hanging case runs first (one unit per node: the node's 2 CPUs are all it holds)
        task, case_worker = _ray_task_worker()
        killed["case_worker"] = case_worker
        os.kill(task.pid, signal.SIGKILL)

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    runner.run(cases)
    t.join(5)
    got = {r["pair"] + "/" + r["role"]: r for r in rows(tmp_path / "o")}
    assert got["hang/reference"]["status"] == "crashed"
    assert f"ray task died on node {socket.gethostname()}" in got["hang/reference"]["error"]
    assert got["hang/reference"]["host"] == socket.gethostname()
    assert got["b/reference"]["status"] == "ok" and got["b/candidate"]["status"] == "ok"  # the run went on
    assert len(got) == 3
    time.sleep(1)
    w = killed["case_worker"]
    assert not w.is_running() or w.status() == psutil.STATUS_ZOMBIE  # died with the Ray worker (PDEATHSIG)


FT = """
name: ft
defaults: {img_size: 16}
finetune: {dataset: animal-shape, steps: 8, batch_size: 32, eval_every: 4, log_every: 4, warmup_steps: 2,
           timing_warmup_steps: 2, timeout_s: 300}
pairs:
  - name: tiny
    reference: {provider: timm, model: vit_tiny_patch16_224,
                kwargs: {patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}}
    candidates:
      - {provider: vitbench, model: vit_tiny_patch16_224,
         kwargs: {patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}}
"""


@pytest.mark.slow
def test_finetune_through_ray_shares_the_initial_weights_and_brings_the_files_back(cli, write_suite, tmp_path,
                                                                                  local_ray):
    out = tmp_path / "o"
    res = cli("finetune", write_suite(FT), "--executor", "ray", "--out", out)
    assert res.exit_code == 0, res.output
    got = {r["role"]: r for r in rows(out)}
    ref, cand = got["reference"], got["candidate"]
    assert ref["status"] == cand["status"] == "ok" and ref["host"] == cand["host"] == socket.gethostname()
    # the candidate's unit got the reference's initial weights (made by the first unit) through the object store
    assert cand["init"] == "reference"
    assert float(cand["train_loss_first"]) == pytest.approx(float(ref["train_loss_first"]), abs=1e-5)
    for r in (ref, cand):  # what the node wrote is in the driver's run dir, at the paths the rows give
        assert (out / r["weights_path"]).stat().st_size > 0 and list((out / r["events_dir"]).glob("events.*"))
    assert (out / "curves.csv").exists() and not (out / "artifacts").exists()


def test_timm_tables_split_by_device_name_on_a_mixed_cluster(tmp_path):
    from vitbench.report.outputs import by_device_name

    info = {"torch": {"cuda_version": "13.2", "gpus": []}}
    row = {"status": "ok", "task": "infer", "device": "cuda", "precision": "fp32", "compile_mode": "eager",
           "framework": "torch", "label": "m", "torch_version": "2.14.1"}
    mixed = [{**row, "device_name": "NVIDIA H100 80GB HBM3"}, {**row, "device_name": "NVIDIA A100-SXM4-40GB"}]
    rows_, _, _, tags = by_device_name(mixed, "cuda", info, tmp_path, "2.14.1")
    assert sorted(tags.values()) == ["cu132-a100-sxm4-40gb", "cu132-h100"]
    assert {r["device"] for r in rows_} == {"cuda@NVIDIA H100 80GB HBM3", "cuda@NVIDIA A100-SXM4-40GB"}
    _, _, _, one = by_device_name(mixed[:1], "cuda", info, tmp_path, "2.14.1")  # one GPU kind: as before
    assert one == {"cuda": "cu132-h100"}


def _nodes(monkeypatch, *resources: dict[str, float]) -> None:
    fake = [{"NodeID": f"n{i}", "Alive": True, "NodeManagerHostname": f"h{i}", "NodeManagerAddress": f"10.0.0.{i}",
             "Resources": r} for i, r in enumerate(resources)]
    monkeypatch.setattr(ray, "nodes", lambda: fake)


def test_a_unit_reserves_a_whole_node_declared_cpus_or_one_gpu_with_its_cpu_share(monkeypatch):
    from vitbench.runner.ray_cluster import cluster_nodes

    _nodes(monkeypatch, {"CPU": 16.0}, {"CPU": 64.0, "GPU": 8.0}, {"CPU": 4.0})
    whole = cluster_nodes("cpu", None)  # CPU cases: one unit per node, all its CPUs
    assert [(n.slots, n.num_cpus, n.num_gpus) for n in whole.values()] == [(1, 16, 0), (1, 64, 0), (1, 4, 0)]
    declared = cluster_nodes("cpu", 8)  # --ray-cpus 8: as many units as 8-CPU shares fit; none on the 4-CPU node
    assert [(n.slots, n.num_cpus) for n in declared.values()] == [(2, 8), (8, 8), (0, 8)]
    gpu = cluster_nodes("cuda", None)  # one GPU per unit, the node's CPUs split among its GPUs
    assert [(n.slots, n.num_cpus, n.num_gpus) for n in gpu.values()][1] == (8, 8, 1)
    assert gpu["n0"].slots == 0


def test_ray_missing_or_no_cluster_at_the_address_is_one_line_exit_2(cli, write_suite, tmp_path, monkeypatch):
    import importlib.util

    path = write_suite(TINY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli("run", path, "--executor", "ray", "--address", f"127.0.0.1:{port}", "--out", tmp_path / "o")
    assert res.exit_code == 2 and res.output.startswith(f"error: --address 127.0.0.1:{port}: no Ray cluster"), \
        res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    res = cli("run", path, "--address", "auto", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "go with --executor ray" in res.output
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find(name, *a))
    res = cli("run", path, "--executor", "ray", "--out", tmp_path / "o")
    assert res.exit_code == 2 and textwrap.dedent(res.output).strip() == (
        "error: --executor ray: ray is not installed (pip install 'vitbench[ray]')")


def test_a_keras_rows_device_string_is_not_a_device_name_of_its_own(tmp_path):
    """The Keras worker writes 'cuda' as device_name: a one-GPU run with Keras sides stays one table."""
    from vitbench.report.outputs import by_device_name

    info = {"torch": {"cuda_version": "13.2", "gpus": ["NVIDIA H100 80GB HBM3"]}}
    row = {"status": "ok", "task": "infer", "device": "cuda", "precision": "fp32", "compile_mode": "eager",
           "framework": "torch", "label": "m", "torch_version": "2.14.1"}
    rows = [{**row, "device_name": "NVIDIA H100 80GB HBM3"}, {**row, "framework": "keras", "device_name": "cuda"}]
    rows_, _, _, tags = by_device_name(rows, "cuda", info, tmp_path, "2.14.1")
    assert tags == {"cuda": "cu132-h100"} and {r["device"] for r in rows_} == {"cuda"}
