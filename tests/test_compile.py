"""Compile modes: region discovery, zero graph breaks for our ViT, and cold-cache isolation between runs."""
from __future__ import annotations

import contextlib
import csv

import pytest
import timm
import torch
from torch import nn

from vitbench.measure.compile import apply_compile, find_regions
from vitbench.models import torch as ours
from vitbench.testing import make_case


def _case(mode: str, backend: str = "aot_eager"):  # type: ignore[no-untyped-def]
    return make_case(compile_mode=mode, compile_options={"backend": backend})


def test_find_regions_declared_found_and_named():
    mine = ours.create_model("test_vit", depth=3)
    assert find_regions(mine) == ("blocks", list(mine.blocks))
    theirs = timm.create_model("test_vit", depth=3)
    where, blocks = find_regions(theirs)  # timm declares nothing: the largest same-class ModuleList/Sequential
    assert where == "blocks" and len(blocks) == 3
    assert find_regions(theirs, "blocks")[0] == "blocks"
    with pytest.raises(ValueError, match="no submodule 'layers'"):
        find_regions(theirs, "layers")
    with pytest.raises(ValueError, match="no repeated blocks"):
        find_regions(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("mode", ["full", "regional", "hierarchical"])
def test_our_vit_compiles_with_zero_graph_breaks(mode):
    torch.manual_seed(0)
    model = ours.create_model("test_vit", depth=2).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 160, 160)
    runner, sec = apply_compile(model, _case(mode), x, contextlib.nullcontext())
    row = sec.columns()
    with torch.inference_mode():
        y = runner(x)
    print(mode, row)
    assert row["graph_breaks"] == 0
    assert row["compiled_max_abs_diff"] < 1e-5
    assert y.shape == (2, 1000)
    assert list(model.state_dict()) == keys  # regional compile happens in place: the port keys do not change
    if mode == "regional":
        assert row["regions"] == "blocks x2"
    if mode == "hierarchical":  # one whole-model graph; the blocks are nested regions inside it
        assert row["regions"] == "blocks x2 (nested)"


COMPILE_SUITE = """
name: tinycompile
defaults: {batch_sizes: [1], rounds: 6, processes: 1, warmup_iters: 1, min_iters: 3, min_seconds: 0,
           timeout_s: 600, img_size: 32, compile: [regional]}
pairs:
  - name: tiny
    reference: {provider: import, model: "vitbench.testing:TinyBlocks"}
"""


@pytest.mark.slow
def test_two_cold_measurements_both_compile_from_scratch(cli, write_suite, tmp_path):
    suite = write_suite(COMPILE_SUITE)
    got = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        res = cli("run", suite, "--out", out)
        assert res.exit_code == 0, res.output
        with open(out / "cases.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
        got.append(row)
        assert (out / "compile.png").stat().st_size > 5000
        assert next(out.glob("benchmark-infer-fp32-*-regional.csv"))
    for row in got:
        print({k: row[k] for k in ("compile_cold_s", "compile_warm_s", "compile_cache_hits_cold",
                                   "compile_cache_hits_warm", "graph_breaks", "recompiles")})
        assert row["compile_cache_hits_cold"] == "0"  # fresh private Inductor cache: nothing to hit
        assert int(row["compile_cache_hits_warm"]) > 0  # second launch reuses the cold run's on-disk cache
        assert float(row["compile_cold_s"]) > 0
        assert row["recompiles"] == "0"


def test_cold_compile_is_rerun_while_the_vm_steals_cpu(monkeypatch, tmp_path, write_suite):
    from vitbench.runner import executor
    from vitbench.suite import expand, load_suite

    (case,) = expand(load_suite(write_suite(COMPILE_SUITE)), "cpu")
    calls = []
    steals = iter([30.0, 12.0, 20.0])  # every attempt contended: all 3 run, the least-contended is kept

    def fake_run_job(case_dict, run_dir, job, timeout_s, log_path, env=None, **kw):
        calls.append((job, env["TORCHINDUCTOR_CACHE_DIR"]))
        if job == "warm":
            return executor.JobOutcome("ok", {"compile_warm_s": 1.0})
        s = next(steals)
        return executor.JobOutcome("ok", {"compile_steal_pct_cold": s, "compile_cold_s": s})

    monkeypatch.setattr(executor, "run_job", fake_run_job)
    out = executor.Runner(tmp_path / "out", {})._setup(case)
    assert [job for job, _ in calls] == ["setup"] * 3 + ["warm"]
    assert len({d for job, d in calls if job == "setup"}) == 3  # a fresh cache dir for every cold attempt
    assert calls[-1][1] == calls[1][1]  # the warm start reuses the kept (least-contended) attempt's cache
    res = out.result
    assert res["compile_steal_pct_cold"] == 12.0 and res["compile_attempts"] == 3 and res["compile_warm_s"] == 1.0


def test_a_compiled_model_that_computes_something_else_is_refused(monkeypatch):
    """Numerics are compared on the eager model: a miscompiled one (here: faked, output + 1) must fail, not be timed."""
    import vitbench.measure.compile as comp

    model = ours.create_model("test_vit", depth=1).eval()
    monkeypatch.setattr(comp.torch, "compile", lambda m, **kw: (lambda x: m(x) + 1))
    with pytest.raises(ValueError, match="changed the output"):
        apply_compile(model, _case("full"), torch.randn(1, 3, 160, 160), contextlib.nullcontext())


MODES_SUITE = """
name: tinymodes
defaults: {batch_sizes: [1], rounds: 6, processes: 6, sequential: false, warmup_iters: 1, min_iters: 3, min_seconds: 0,
           timeout_s: 600, img_size: 32, compile: [eager, full, regional], compile_options: {backend: aot_eager}}
pairs:
  - name: tiny
    reference: {provider: import, model: "vitbench.testing:TinyBlocks"}
    candidates:
      - {provider: import, model: "vitbench.testing:TinyBlocks"}
"""


def test_a_pairs_compile_modes_are_one_group_references_first(write_suite):
    from vitbench.runner.pairing import mode_baselines, plan_groups, reference_side
    from vitbench.suite import expand, load_suite

    cases = expand(load_suite(write_suite(MODES_SUITE)), "cpu")
    (group,) = plan_groups(cases, cases)  # every mode of the pair timed together, in the same rounds
    assert [(s.case.role, s.case.compile_mode) for s in group] == [
        ("reference", "eager"), ("reference", "full"), ("reference", "regional"),
        ("candidate", "eager"), ("candidate", "full"), ("candidate", "regional")]
    cand_regional = group[5]
    assert reference_side(cand_regional, group) is group[2]
    assert [s.case.compile_mode for s in mode_baselines(cand_regional, group)] == ["eager", "full"]
    assert mode_baselines(cand_regional, group)[0] is group[3]  # the same implementation, not the reference
    assert mode_baselines(group[0], group) == []
    # resuming only the candidate's regional case: the reference it is compared with joins, not recorded
    (only,) = plan_groups([cand_regional.case], cases)
    assert [(s.case.role, s.case.compile_mode, s.record) for s in only] == [
        ("reference", "regional", False), ("candidate", "regional", True)]


@pytest.mark.slow
def test_compile_modes_get_paired_ratios_against_eager_and_full(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    res = cli("run", write_suite(MODES_SUITE), "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    with open(out / "cases.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert [(r["role"], r["compile_mode"], r["status"]) for r in cases] == [
        ("reference", m, "ok") for m in ("eager", "full", "regional")] + [
        ("candidate", m, "ok") for m in ("eager", "full", "regional")]
    assert len(list((out / "logs").glob("timing-*-torch-0.log"))) == 1  # one timing session hosted all six
    assert len(list((out / "logs").glob("timing-*-torch-5.log"))) == 1  # ... in each of the six processes
    with open(out / "pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    role = {r["case_id"]: r["role"] for r in cases}
    got = [(p["comparison"], role[p["case_id"]], role[p["reference_case_id"]], p["compile_mode"],
            p["reference_compile_mode"]) for p in pairs]
    assert got == [("reference", "candidate", "reference", m, m) for m in ("eager", "full", "regional")] + [
        ("compile", r, r, m, b) for r in ("reference", "candidate")
        for m, b in (("full", "eager"), ("regional", "eager"), ("regional", "full"))]
    for p in pairs:
        assert p["rounds"] == "6" and float(p["speed_ratio_ci_low"]) <= float(p["speed_ratio"]) \
            <= float(p["speed_ratio_ci_high"]), p
        if p["comparison"] == "compile":
            assert p["max_abs_diff"] == "" and p["numerics_status"] == ""  # numerics belong to reference rows
    cand = [r for r in cases if r["role"] == "candidate"]
    assert all(r["speed_ratio"] for r in cand)  # cases.csv carries only the vs-reference ratio
    # recompiles cover the timed blocks of every timing process too (none here: one input shape)
    assert all(r["recompiles"] == "0" for r in cases if r["compile_mode"] != "eager")


def test_recompiles_while_timing_are_counted(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    suite = write_suite("""
    name: recompiles
    defaults: {batch_sizes: [1], rounds: 4, processes: 2, warmup_iters: 1, min_iters: 2, min_seconds: 0,
               img_size: 32, compile: [full], compile_options: {backend: aot_eager}}
    pairs:
      - name: r
        reference: {provider: import, model: "vitbench.testing:Recompiling"}
    """)
    res = cli("run", suite, "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    with open(out / "cases.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["recompiles"]) >= 2  # at least one in each timing process's blocks (set-up saw none)
