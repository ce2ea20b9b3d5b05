"""Faults and hostile input: resume without the suite, dying parents, markup in text, bad --out, timeouts that
exclude start-up, modules in the current directory, the memory cap, embedded suites, the run-dir lock, and a
property-based fuzz of the suite loader."""
from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitbench.errors import SuiteError
from vitbench.suite import Suite, load_suite

FAST = "rounds: 6, processes: 1, warmup_iters: 1, min_iters: 2, min_seconds: 0, img_size: 32, batch_sizes: [1]"


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


def suite(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


TWO_PAIRS = f"""
name: two
defaults: {{{FAST}, timeout_s: 60}}
pairs:
  - name: a
    reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
    candidates: [{{provider: import, model: "vitbench.testing:TinyNet", label: "mine [/bold] [red]x"}}]
  - name: b
    reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
    candidates: [{{provider: import, model: "vitbench.testing:TinyNet", label: "[lowercase] kept"}}]
"""


@pytest.fixture(scope="module")
def two_pairs_run(tmp_path_factory):
    """TWO_PAIRS run once for the tests that read it (each copies the run dir before changing it)."""
    from typer.testing import CliRunner

    from vitbench.cli import app

    d = tmp_path_factory.mktemp("two_pairs")
    res = CliRunner().invoke(app, ["run", str(suite(d, TWO_PAIRS)), "--out", str(d / "o")])
    assert res.exit_code == 0, res.output
    return d / "o", res.output


def test_markup_in_labels_and_errors_is_printed_as_text(two_pairs_run):
    out, output = two_pairs_run
    assert "mine [/bold] [red]x" in output and "[lowercase] kept" in output
    assert len(rows(out)) == 4


def test_resume_uses_the_run_dirs_suite_and_refuses_another(cli, tmp_path, two_pairs_run):
    out = tmp_path / "o"
    shutil.copytree(two_pairs_run[0], out)
    kept = (out / "suite.yaml").read_text()
    res = cli("run", "--resume", out)  # no suite named: the run's own (not the embedded quick.yaml)
    assert res.exit_code == 0 and "4 cases done, 0 to run" in res.output, res.output
    res = cli("run", suite(tmp_path, TWO_PAIRS), "--resume", out)  # naming the suite it was started with: fine
    assert res.exit_code == 0 and "4 cases done, 0 to run" in res.output, res.output
    assert {r["suite"] for r in rows(out)} == {"two"} and len(rows(out)) == 4
    assert (out / "suite.yaml").read_text() == kept
    other = suite(tmp_path, TWO_PAIRS.replace("name: two", "name: other"), "other.yaml")
    res = cli("run", other, "--resume", out)
    assert res.exit_code == 2 and "started with another suite" in res.output


def test_out_that_is_a_file_or_unwritable_is_one_line_exit_2(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        res = cli("run", suite(tmp_path, TWO_PAIRS), "--out", out)
        assert res.exit_code == 2 and res.output.startswith("error: --out") and "Traceback" not in res.output


def test_a_second_run_into_the_same_dir_is_refused(cli, tmp_path):
    from vitbench.runner.run_dir import open_run_dir

    held = open_run_dir(tmp_path / "o", None, "x")  # a run in progress holds the lock
    res = cli("run", suite(tmp_path, TWO_PAIRS), "--out", tmp_path / "o")
    assert res.exit_code == 2 and "another vitbench run" in res.output
    held.release()


def test_module_in_the_current_directory_and_validate_checks_the_attribute(cli, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mymodels_cwd.py").write_text("from vitbench.testing import TinyNet as Mine\nNOT_CALLABLE = 3\n")
    monkeypatch.chdir(work)
    mine = "vitbench.testing:TinyNet\", label: \"mine"
    ok = suite(work, TWO_PAIRS.replace(mine, "mymodels_cwd:Mine\", label: \"mine"))
    res = cli("run", ok, "--out", work / "o", "--only", "a")
    assert res.exit_code == 0, res.output
    assert any(r["model"] == "mymodels_cwd:Mine" and r["status"] == "ok" for r in rows(work / "o"))
    for attr, words in (("Nope", "has no attribute 'Nope'"), ("NOT_CALLABLE", "is not callable")):
        bad = suite(work, TWO_PAIRS.replace(mine, f"mymodels_cwd:{attr}\", label: \"mine"), f"{attr}.yaml")
        res = cli("validate", bad)
        assert res.exit_code == 2 and f"{attr}.yaml: pairs.0.candidates.0.model" in res.output and words in res.output


def test_timeout_counts_from_start_up_done_and_a_hung_case_fails_alone(cli, tmp_path):
    s = suite(tmp_path, f"""
    name: hung
    defaults: {{{FAST}, timeout_s: 4}}
    pairs:
      - name: healthy
        reference: {{provider: timm, model: test_vit, img_size: 64}}
        candidates: [{{provider: vitbench, model: test_vit, img_size: 64}}]
      - name: hung
        reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
        candidates: [{{provider: import, model: "vitbench.testing:Hanging"}}]
    """)
    res = cli("run", s, "--out", tmp_path / "o")
    assert res.exit_code == 2
    st_ = {(r["pair"], r["role"]): r["status"] for r in rows(tmp_path / "o")}
    assert st_ == {("healthy", "reference"): "ok", ("healthy", "candidate"): "ok", ("hung", "reference"): "ok",
                   ("hung", "candidate"): "timeout"}


def test_memory_cap_ends_a_runaway_worker_as_oom(cli, tmp_path):
    s = suite(tmp_path, f"""
    name: mem
    defaults: {{{FAST}, timeout_s: 120, max_memory_gb: 1.5}}
    pairs:
      - name: m
        reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
        candidates: [{{provider: import, model: "vitbench.testing:Growing", port: false}}]
    """)
    res = cli("run", s, "--out", tmp_path / "o")
    assert res.exit_code == 2
    cand = rows(tmp_path / "o")[1]
    assert cand["status"] == "oom" and "max_memory_gb limit of 1.5 GB" in cand["error"]


def test_nan_candidate_fails_with_a_reason_and_exit_1(cli, tmp_path):
    s = suite(tmp_path, f"""
    name: nan
    defaults: {{{FAST}, timeout_s: 60}}
    pairs:
      - name: n
        reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
        candidates: [{{provider: import, model: "vitbench.testing:NaNOutput"}}]
    """)
    res = cli("run", s, "--out", tmp_path / "o")
    assert res.exit_code == 1, res.output
    cand = rows(tmp_path / "o")[1]
    assert cand["numerics_status"] == "fail" and "NaN" in cand["numerics_error"] and cand["cosine_sim"] == ""


def test_embedded_suites_by_name_and_in_list(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no suites/ here, as after pip install
    res = cli("validate", "vit")
    assert res.exit_code == 0 and "using the embedded suite 'vit'" in res.output
    res = cli("validate", "suites/swin.yaml")
    assert res.exit_code == 0 and "embedded suite 'swin'" in res.output
    res = cli("list")
    assert "embedded suites" in res.output and "quick" in res.output and "sam" in res.output
    debug = [ln for ln in cli("--help").output.splitlines() if "--debug" in ln]
    assert debug and "<bool>" not in debug[0]  # a flag, not a value (click 8.5 still says <bool> for --help)


def _run_in_background(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitbench.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _is_worker(k: psutil.Process, run_pid: int) -> bool:
    """A spawned worker, or one forked by a fork server (the server is the run's child; its children workers)."""
    try:
        cmd = " ".join(k.cmdline() or [])
        return "spawn_main" in cmd or ("multiprocessing.forkserver" in cmd and k.ppid() != run_pid)
    except psutil.Error:
        return False


def _wait_for_workers(pid: int, n: int, timeout: float = 90) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = [k for k in _descendants(pid) if _is_worker(k, pid)]
        if len(kids) >= n:
            time.sleep(2)
            return _descendants(pid)
        time.sleep(0.3)
    raise AssertionError("no worker started")


HUNG_REFERENCE = f"""
name: longhang
defaults: {{{FAST}, timeout_s: 900}}
pairs:
  - name: hung
    reference: {{provider: import, model: "vitbench.testing:Hanging"}}
    candidates: [{{provider: import, model: "vitbench.testing:TinyNet", port: false}}]
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_worker_outlives_a_killed_or_terminated_parent(tmp_path, sig):
    s = suite(tmp_path, HUNG_REFERENCE)
    proc = _run_in_background(["run", str(s), "--out", str(tmp_path / "o")], tmp_path)
    kids = _wait_for_workers(proc.pid, 1)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    gone = psutil.wait_procs(kids, timeout=10)[1]
    for k in gone:
        k.kill()
    assert not gone, f"workers alive after {sig.name}: {[k.pid for k in gone]}"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "--resume" in output and "Traceback" not in output
        assert (tmp_path / "o" / "suite.yaml").exists()


# --- the suite loader never fails in any other way than SuiteError naming the file --------------------------

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "vitbench" / "suites").glob("*.yaml"))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True),
                    st.text(max_size=12))
docs = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                    st.dictionaries(st.text(max_size=10), kids, max_size=4)),
                    max_leaves=20)


def _load_or_suite_error(path: Path, check_models: bool) -> None:
    try:
        assert isinstance(load_suite(path, check_models=check_models), Suite)
    except SuiteError as e:
        assert str(e).startswith(path.name), str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=docs)
def test_fuzz_random_documents(tmp_path, doc):
    p = tmp_path / "fuzz.yaml"
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    _load_or_suite_error(p, check_models=False)


def _paths(d, prefix=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(SHIPPED) - 1), pick=st.integers(0, 10_000), value=scalars,
       action=st.sampled_from(["set", "delete", "text"]))
def test_fuzz_mutated_shipped_suites(tmp_path, which, pick, value, action):
    doc = yaml.safe_load(SHIPPED[which].read_text())
    paths = list(_paths(doc))
    path = paths[pick % len(paths)]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if action == "delete":
        del parent[path[-1]]
    elif action == "set":
        parent[path[-1]] = value
    p = tmp_path / SHIPPED[which].name
    text = yaml.safe_dump(doc)
    if action == "text":  # a broken file, not just a wrong value
        cut = pick % max(len(text), 1)
        text = text[:cut] + "\t: [" + text[cut:]
    p.write_text(text)
    _load_or_suite_error(p, check_models=True)


def test_a_side_failing_mid_timing_fails_alone_and_gives_no_verdict(cli, tmp_path):
    s = suite(tmp_path, f"""
    name: later
    defaults: {{{FAST}, timeout_s: 60, rounds: 8, processes: 2}}
    pairs:
      - name: l
        reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
        candidates: [{{provider: import, model: "vitbench.testing:FailsLater", kwargs: {{calls: 60}}}}]
    """)
    res = cli("run", s, "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    ref, cand = rows(tmp_path / "o")
    assert ref["status"] == "ok" and int(ref["rounds"]) >= 4  # went on in the second timing process, alone
    assert cand["status"] == "error" and "timing: RuntimeError: FailsLater" in cand["error"]
    (pair,) = list(csv.DictReader((tmp_path / "o" / "pairs.csv").open()))
    assert pair["speed_verdict"] == "not measured" and pair["speed_ratio"] == ""


def test_resume_keeps_the_first_runs_options(cli, tmp_path):
    s = suite(tmp_path, TWO_PAIRS)
    out = tmp_path / "o"
    assert cli("run", s, "--out", out, "--only", "a").exit_code == 0
    res = cli("run", "--resume", out, "--only", "b")
    assert res.exit_code == 2 and "it was run with --only a, not b" in res.output
    res = cli("run", "--resume", out)  # nothing left to run for --only a
    assert res.exit_code == 0 and "2 cases done, 0 to run" in res.output
