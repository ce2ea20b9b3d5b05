"""The CLI end to end on tiny suites: results files, bad input, failing/hanging cases, interrupt + resume."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

TIMM_HEADER = "model,infer_img_size,infer_samples_per_sec,infer_step_time,infer_batch_size,param_count,infer_gmacs," \
              "infer_macts"

TINY_VIT = """
name: tiny
defaults: {batch_sizes: [1, 2], rounds: 12, processes: 6, sequential: false, warmup_iters: 1, min_iters: 3,
           min_seconds: 0.1, timeout_s: 120,
           tolerance: {max_abs: 1.0e-5}}
pairs:
  - name: test_vit
    img_size: 160
    reference: {provider: timm, model: test_vit, kwargs: {depth: 2}}
    candidates:
      - {provider: vitbench, model: test_vit, kwargs: {depth: 2}}
"""


def rows(out):
    with open(out / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_tiny_suite_end_to_end(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    res = cli("run", write_suite(TINY_VIT), "--device", "cpu", "--out", out)
    print(res.output)
    assert res.exit_code == 0, res.output
    rs = rows(out)
    # a group per batch size: the reference and its candidate set up, then timed together in paired rounds
    assert [(r["role"], r["batch_size"], r["status"]) for r in rs] == [
        ("reference", "1", "ok"), ("candidate", "1", "ok"), ("reference", "2", "ok"), ("candidate", "2", "ok")]
    for r in rs:
        assert float(r["samples_per_sec"]) > 0 and float(r["latency_ms_p99"]) >= float(r["latency_ms_p50"]) > 0
        assert float(r["param_count_m"]) > 0 and float(r["gmacs"]) > 0
    cands = [r for r in rs if r["role"] == "candidate"]
    assert all(r["numerics_status"] == "ok" and float(r["max_abs_diff"]) <= 1e-5 for r in cands)
    assert all(r["rounds"] == "12" and r["timing_processes"] == "6" and float(r["speed_ratio_ci_low"])
               <= float(r["speed_ratio"]) <= float(r["speed_ratio_ci_high"]) and r["speed_verdict"] for r in cands)
    assert all(float(r["samples_per_sec_ci_low"]) <= float(r["samples_per_sec_ci_high"]) for r in rs)
    with open(out / "pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    assert [(p["label"], p["batch_size"], p["reference_label"]) for p in pairs] == [
        ("vitbench/test_vit", "1", "test_vit"), ("vitbench/test_vit", "2", "test_vit")]
    assert {p["speed_verdict"] for p in pairs} <= {"faster", "slower", "same", "inconclusive", "contended"}
    tables = list(out.glob("benchmark-infer-fp32-nchw-pt*-cpu.csv"))
    assert len(tables) == 1
    raw = tables[0].read_bytes().decode()
    assert raw.startswith(TIMM_HEADER + "\r\n")
    body = raw.splitlines()[1:]
    assert len(body) == 4 and {line.split(",")[0] for line in body} == {"test_vit", "vitbench/test_vit"}
    env = json.loads((out / "env.json").read_text())
    assert env["versions"]["torch"] and env["worker_allocator"].startswith("glibc mmap threshold 32 MiB")
    # every worker forked with a memory layout of its own (a random heap and mapped offset), as a spawned one has
    layouts = [ln for f in (out / "logs").glob("timing-*.log") for ln in f.read_text().splitlines() if "layout:" in ln]
    assert len(layouts) == 12 and len({ln.split("layout: ")[1] for ln in layouts}) == 12
    lat = [json.loads(line) for line in (out / "latencies.jsonl").read_text().splitlines()]
    assert len(lat) == 4 and all(len(x["latencies_ms"]) >= 3 and len(x["blocks"]) == 12 for x in lat)
    assert all(sorted({b["process"] for b in x["blocks"]}) == list(range(6)) for x in lat)  # 2 rounds in each
    assert not (out / "artifacts").exists()
    assert "vitbench summary" in res.output


def test_a_clear_difference_stops_at_the_first_look(cli, write_suite, tmp_path):
    """Sequential stopping end to end: a candidate 4x deeper is settled `slower` after 3 of at most 6 timing
    processes (99% t interval), the group stops there, and pairs.csv says where and why."""
    out = tmp_path / "out"
    suite = TINY_VIT.replace("batch_sizes: [1, 2]", "batch_sizes: [1]").replace("sequential: false",
                                                                                 "sequential: true")
    suite = suite.replace("- {provider: vitbench, model: test_vit, kwargs: {depth: 2}}",
                          "- {provider: timm, model: test_vit, kwargs: {depth: 8}, label: deeper, port: false}")
    res = cli("run", write_suite(suite), "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    with open(out / "pairs.csv", newline="") as f:
        (p,) = list(csv.DictReader(f))
    assert p["speed_verdict"] == "slower" and float(p["speed_ratio_ci_high"]) < 1, p
    assert (p["stopped_at_process"], p["processes"], p["stopped_at_round"]) == ("3", "3", "6")
    assert p["stop_reason"].startswith("settled at look 1") and p["interval_method"] == "t"
    assert float(p["confidence"]) == pytest.approx(0.99)
    assert len(list((out / "logs").glob("timing-*.log"))) == 3  # no process beyond the look that settled it
    assert "sequential stopping: 1 of 1 comparisons settled (after 3 timing processes)" in res.output
    assert "done in" in res.output


def _one_clean_line(res):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.output.strip().startswith("error:")
    return res.output


def test_bad_inputs_give_one_line_and_exit_2(cli, write_suite, tmp_path):
    bad_model = write_suite(
        "name: b\npairs:\n  - name: x\n    reference: {provider: timm, model: vit_smal_patch16_224}\n", "bad.yaml")
    assert "bad.yaml: pairs.0.reference.model: unknown timm model" in _one_clean_line(cli("validate", bad_model))
    bad_yaml = write_suite("name: [unclosed\n", "broken.yaml")
    assert "broken.yaml:" in _one_clean_line(cli("run", bad_yaml, "--out", tmp_path / "o1"))
    good = write_suite(TINY_VIT)
    import torch

    missing = f"cuda:{torch.cuda.device_count() + 7}"
    assert "CUDA" in _one_clean_line(cli("run", good, "--device", missing, "--out", tmp_path / "o2"))
    assert "--device 'tpu'" in _one_clean_line(cli("run", good, "--device", "tpu", "--out", tmp_path / "o3"))
    assert "no pair" in _one_clean_line(cli("run", good, "--only", "resnet*", "--out", tmp_path / "o4"))
    assert "--batch-sizes" in _one_clean_line(cli("run", good, "--batch-sizes", "one", "--out", tmp_path / "o5"))
    assert "no cases.csv" in _one_clean_line(cli("run", good, "--resume", tmp_path / "nothing"))
    assert "not found" in _one_clean_line(cli("validate", tmp_path / "missing.yaml"))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "cases.csv").write_text("case_id\n")
    assert "already holds results" in _one_clean_line(cli("run", good, "--out", tmp_path / "used"))


FAULTS = """
name: faults
defaults: {batch_sizes: [1], rounds: 6, processes: 1, warmup_iters: 1, min_iters: 3, min_seconds: 0.1,
           timeout_s: 60, img_size: 32}
pairs:
  - name: faults
    reference: {provider: import, model: "vitbench.testing:TinyNet"}
    candidates:
      - {provider: import, model: "vitbench.testing:Failing"}
      - {provider: import, model: "vitbench.testing:Hanging", timeout_s: 8}
      - {provider: import, model: "vitbench.testing:Allocating"}
"""


def test_failing_hanging_and_oom_cases_become_rows(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    res = cli("run", write_suite(FAULTS), "--out", out)
    print(res.output)
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    by_model = {r["model"].split(":")[1]: r for r in rows(out)}
    assert by_model["TinyNet"]["status"] == "ok"
    assert by_model["Failing"]["status"] == "error"
    assert "RuntimeError: Failing: this model always fails" in by_model["Failing"]["error"]
    assert by_model["Hanging"]["status"] == "timeout" and "timed out after 8 s" in by_model["Hanging"]["error"]
    assert by_model["Allocating"]["status"] == "oom" and by_model["Allocating"]["error"]
    for r in by_model.values():
        if r["status"] != "ok":
            assert r["samples_per_sec"] == ""  # never a silent zero
    table = next(out.glob("benchmark-infer-*.csv")).read_text().splitlines()
    assert len(table) == 2  # timm's table keeps the measured rows only; cases.csv keeps the failures
    log = (out / "logs" / f"{by_model['Failing']['case_id']}.log").read_text()
    assert "Traceback" in log


def test_weight_port_mismatch_is_port_failed_exit_1(cli, write_suite, tmp_path):
    suite = write_suite("""
    name: port
    defaults: {batch_sizes: [1], rounds: 6, processes: 1, warmup_iters: 1, min_iters: 2, min_seconds: 0,
               img_size: 32}
    pairs:
      - name: p
        reference: {provider: import, model: "vitbench.testing:TinyNet"}
        candidates:
          - {provider: import, model: "vitbench.testing:TinyNet", kwargs: {dim: 8}}
    """)
    out = tmp_path / "out"
    res = cli("run", suite, "--out", out)
    assert res.exit_code == 1, res.output
    cand = rows(out)[1]
    assert cand["status"] == "ok" and cand["numerics_status"] == "port_failed"  # timed all the same
    assert float(cand["samples_per_sec"]) > 0 and cand["speed_verdict"]
    assert "shape mismatch at stem.weight" in cand["numerics_error"]
    assert "port failed: p: import/vitbench.testing:TinyNet" in " ".join(res.output.split())


RESUMABLE = """
name: resumable
defaults: {batch_sizes: [1, 2, 3], rounds: 6, processes: 1, warmup_iters: 1, min_iters: 3, min_seconds: 1.0,
           timeout_s: 60, img_size: 32}
pairs:
  - name: tiny
    reference: {provider: import, model: "vitbench.testing:TinyNet"}
    candidates:
      - {provider: import, model: "vitbench.testing:TinyNet"}
"""


@pytest.mark.slow
def test_ctrl_c_keeps_finished_rows_and_resume_skips_them(write_suite, tmp_path):
    suite = write_suite(RESUMABLE)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vitbench.cli", "run", str(suite), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "cases.csv").exists() and len(rows(out)) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    print(output)
    assert proc.returncode == 130
    assert "--resume" in output and "Traceback" not in output
    before = rows(out)
    assert 2 <= len(before) < 6
    # resumed without naming the suite, from another directory: the run dir's own suite.yaml is used
    res = subprocess.run([sys.executable, "-m", "vitbench.cli", "run", "--resume", str(out)], cwd=tmp_path.parent,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    print(res.stdout, res.stderr)
    assert res.returncode == 0
    assert f"{len(before)} cases done" in res.stdout
    after = rows(out)
    assert len(after) == 6 and len({r["case_id"] for r in after}) == 6 and {r["suite"] for r in after} == {"resumable"}
    assert after[: len(before)] == before  # finished rows untouched


KERAS = """
name: keras
defaults: {batch_sizes: [2], rounds: 6, processes: 1, warmup_iters: 1, min_iters: 3, min_seconds: 0, img_size: 160,
           timeout_s: 300,
           tolerance: {max_abs: 1.0e-4}}
pairs:
  - name: test_vit
    reference: {provider: timm, model: test_vit, kwargs: {depth: 1}}
    candidates:
      - {provider: vitbench_keras, model: test_vit, backend: tensorflow, kwargs: {depth: 1},
         compile: [eager, graph, xla]}
  - name: mhsa
    tokens: 20
    dim: 32
    reference: {provider: import, model: "timm.layers:Attention", kwargs: {dim: 32, num_heads: 2, qkv_bias: true}}
    candidates:
      - {provider: keras, model: MultiHeadAttention, backend: tensorflow, kwargs: {num_heads: 2, key_dim: 16},
         tolerance: {max_abs: 1.0e-5}}
"""


@pytest.mark.slow
def test_keras_candidates_in_eager_graph_and_xla(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    res = cli("run", write_suite(KERAS), "--out", out)
    print(res.output)
    assert res.exit_code == 0, res.output
    k = [r for r in rows(out) if r["framework"] == "keras"]
    assert [r["compile_mode"] for r in k] == ["eager", "graph", "xla", "eager"]
    for r in k:
        assert r["status"] == "ok" and r["numerics_status"] == "ok", r
        assert float(r["samples_per_sec"]) > 0 and r["keras_version"]
    assert float(k[2]["compile_cold_s"]) > 0 and float(k[2]["compiled_max_abs_diff"]) < 1e-4
    assert float(k[0]["gmacs"]) > 0  # analytic count for our Keras ViT
    names = {p.name for p in out.glob("benchmark-infer-*.csv")}
    assert any(n.endswith("-xla.csv") for n in names) and any(n.endswith("-graph.csv") for n in names)


SAM_KW = ("{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, window_size: 3, global_attn_indexes: [1], "
          "neck_chans: 16}")
KERAS_FEATURES_SUITE = f"""
name: kfeat
defaults: {{batch_sizes: [1], rounds: 4, processes: 1, min_seconds: 1, warmup_iters: 1, perturb_std: 0.02,
            tolerance: {{max_abs: 1.0e-4}}, img_size: 64}}
pairs:
  - name: sam
    reference: {{provider: timm, model: samvit_base_patch16, output: features, kwargs: {SAM_KW}}}
    candidates:
      - {{provider: vitbench_keras, model: samvit_base_patch16, backend: tensorflow, output: features,
          compile: [graph], kwargs: {SAM_KW}}}
      - {{provider: vitbench_keras, model: rsbuilding_vit_base, backend: tensorflow,
          kwargs: {{out_indices: [0, 1], patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, window_size: 3,
                   global_attn_indexes: [1], neck_chans: 16}}}}
"""


@pytest.mark.slow
def test_keras_feature_maps_and_multi_level_outputs_compare_in_torch_layout(cli, write_suite, tmp_path):
    """output: features under graph mode (a Model around forward_features), and a list of NHWC levels whose last
    one is compared with timm's NCHW neck features."""
    out = tmp_path / "o"
    res = cli("run", write_suite(KERAS_FEATURES_SUITE), "--out", out)
    assert res.exit_code == 0, res.output
    k = [r for r in rows(out) if r["framework"] == "keras"]
    assert [(r["status"], r["numerics_status"]) for r in k] == [("ok", "ok")] * 2
    assert all(float(r["max_abs_diff"]) < 1e-4 for r in k)


def test_help_validate_and_torch_paths_do_not_import_tensorflow():
    code = ("import sys; from typer.testing import CliRunner; from vitbench.cli import app; "
            "from vitbench.suite import expand, load_suite; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "expand(load_suite('vitbench/suites/vit.yaml'), 'cpu'); "
            "from vitbench.runner import torch_worker, executor; "
            "bad = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]; assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr[-2000:]


def test_numerics_are_taken_at_the_precision_timed(cli, write_suite, tmp_path):
    """A candidate that is NaN only in bf16 fails at bf16 and passes at fp32; the reference timed at bf16 is held
    to its own fp32 output."""
    (tmp_path / "bf16mods.py").write_text(textwrap.dedent("""
        import torch
        from vitbench.testing import TinyNet


        class NaNInBf16(TinyNet):
            def forward(self, x):
                y = super().forward(x)
                return y * float("nan") if x.dtype == torch.bfloat16 else y
    """))
    suite = write_suite("""
    name: prec
    defaults: {batch_sizes: [1], rounds: 2, processes: 1, warmup_iters: 1, min_iters: 2, min_seconds: 0,
               img_size: 32, precision: [fp32, bf16]}
    pairs:
      - name: p
        reference: {provider: import, model: "vitbench.testing:TinyNet"}
        candidates: [{provider: import, model: "bf16mods:NaNInBf16"}]
    """)
    res = cli("run", suite, "--device", "cpu", "--out", tmp_path / "o")
    assert res.exit_code == 1, res.output  # a numeric check failed
    got = {(r["role"], r["precision"]): r for r in rows(tmp_path / "o")}
    assert got["candidate", "fp32"]["numerics_status"] == "ok"
    bad = got["candidate", "bf16"]
    assert bad["numerics_status"] == "fail" and "NaN" in bad["numerics_error"] and "at bf16" in bad["numerics_error"]
    ref = got["reference", "bf16"]  # its bf16 output against its fp32 one: bf16 rounding, within the bf16 limits
    assert ref["numerics_status"] == "ok" and 0 < float(ref["rel_err"]) < 0.05
    assert got["reference", "fp32"]["numerics_status"] == "reference"
    assert "numerics fail: p: import/bf16mods:NaNInBf16 eager bf16 bs1" in res.output


KERAS_GRAPH_BUG = '''
import keras
import tensorflow as tf
from keras import layers


class GraphOnlyBug(keras.Model):
    """A dense head that is right eagerly and off by 0.5 inside tf.function."""

    def __init__(self, img_size=32, **kw):
        super().__init__(**kw)
        self.pool = layers.GlobalAveragePooling2D()
        self.fc = layers.Dense(10)
        self.fc.build((None, 3))

    def call(self, x):
        y = self.fc(self.pool(x))
        return y if tf.executing_eagerly() else y + 0.5


def port_weights(model, sd):
    model.fc.kernel.assign(sd["head.weight"].T)
    model.fc.bias.assign(sd["head.bias"])
'''


def test_keras_import_side_and_compiled_modes_checked_against_eager(cli, write_suite, tmp_path):
    """A Keras model of one's own by import path, ported by its module's port_weights; a graph/XLA output far from
    eager fails its row (as torch.compile's does); without the hook the weights are aligned automatically
    (port_method auto), and a model with a layer the reference lacks is port_failed naming what is left over."""
    (tmp_path / "kmods.py").write_text(KERAS_GRAPH_BUG)
    (tmp_path / "nohook.py").write_text(KERAS_GRAPH_BUG.split("def port_weights")[0])
    (tmp_path / "extra.py").write_text(KERAS_GRAPH_BUG.split("def port_weights")[0].replace(
        "self.fc.build((None, 3))", "self.fc.build((None, 3))\n        self.extra = layers.Dense(10)\n"
        "        self.extra.build((None, 10))"))
    (tmp_path / "tref.py").write_text(textwrap.dedent("""
        from torch import nn


        class Head(nn.Module):
            def __init__(self, img_size=32):
                super().__init__()
                self.head = nn.Linear(3, 10)

            def forward(self, x):
                return self.head(x.mean((2, 3)))
    """))
    suite = write_suite("""
    name: kimport
    defaults: {batch_sizes: [1], rounds: 2, processes: 1, warmup_iters: 1, min_iters: 2, min_seconds: 0, img_size: 32}
    pairs:
      - name: k
        reference: {provider: import, model: "tref:Head"}
        candidates:
          - {provider: keras_import, model: "kmods:GraphOnlyBug", compile: [eager, graph, xla]}
          - {provider: keras_import, model: "nohook:GraphOnlyBug", label: nohook}
          - {provider: keras_import, model: "extra:GraphOnlyBug", label: extra}
    """)
    assert cli("validate", suite).exit_code == 0
    assert "defines no 'Nope'" in cli("validate", write_suite(suite.read_text().replace(
        "nohook:GraphOnlyBug", "nohook:Nope"), "bad.yaml")).output
    res = cli("run", suite, "--device", "cpu", "--out", tmp_path / "o")
    got = {(r["label"], r["compile_mode"]): r for r in rows(tmp_path / "o") if r["role"] == "candidate"}
    eager = got["keras_import/kmods:GraphOnlyBug", "eager"]
    assert eager["status"] == "ok" and eager["numerics_status"] == "ok" and float(eager["max_abs_diff"]) < 1e-5
    assert eager["tf32"] == "False"
    for mode in ("graph", "xla"):
        r = got["keras_import/kmods:GraphOnlyBug", mode]
        assert r["status"] == "error" and f"max|{mode} - eager| = 0.5" in r["error"], r
    nohook = got["nohook", "eager"]
    assert nohook["numerics_status"] == "ok" and nohook["port_method"] == "auto" and nohook["port_tensors"] == "2"
    extra = got["extra", "eager"]
    assert extra["numerics_status"] == "port_failed" and "vitbench port" in extra["numerics_error"], extra
    assert "dense_1/kernel" in extra["numerics_error"], extra["numerics_error"]
    assert res.exit_code == 2, res.output  # failed cases
