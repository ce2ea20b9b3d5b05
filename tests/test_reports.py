"""diff, scan and plot on small CSV fixtures (timm-format tables and hand-made run directories)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vitbench.report.diff import diff
from vitbench.report.results import load
from vitbench.scan import family_of

DATA = Path(__file__).parent / "data"
EAGER, COMPILED = DATA / "timm_eager.csv", DATA / "timm_compiled.csv"


def test_diff_names_exactly_the_slower_models(cli):
    res = cli("diff", EAGER, COMPILED, "--threshold", "5")
    print(res.output)
    assert res.exit_code == 1
    regressed = set(diff(load(EAGER), load(COMPILED), 5).regressions.case)
    # swin -12.5%, resnet50@288 -16.7%; resnet50@224 is -2% (under threshold); others got faster
    assert regressed == {"swin_tiny_patch4_window7_224 224", "resnet50 288"}
    assert "swin_tiny_patch4_window7_224" in res.output and "resnet50 288" in res.output
    assert "vit_small_patch16_224" not in res.output.split("regressions")[-1].split("added")[0]
    assert "added: eva02_tiny_patch14_224 224" in res.output
    assert "removed: convnext_tiny 224" in res.output


def test_diff_same_file_is_clean_and_threshold_applies(cli):
    assert cli("diff", EAGER, EAGER).exit_code == 0
    assert cli("diff", EAGER, COMPILED, "--threshold", "20").exit_code == 0


def test_diff_markdown_and_csv(cli, tmp_path):
    out = tmp_path / "d.csv"
    res = cli("diff", EAGER, COMPILED, "--markdown", "--csv", out)
    assert res.exit_code == 1
    assert "| swin_tiny_patch4_window7_224 224 | samples_per_sec |" in res.output
    rows = list(csv.DictReader(out.open()))
    assert {r["verdict"] for r in rows} >= {"regression", "improvement", "unchanged"}


def test_diff_bad_input_exits_2(cli, tmp_path):
    bogus = tmp_path / "x.csv"
    bogus.write_text("a,b\n1,2\n")
    for args in ((EAGER, tmp_path / "missing.csv"), (EAGER, bogus), (tmp_path, EAGER)):
        res = cli("diff", *args)
        assert res.exit_code == 2 and res.output.startswith("error:"), res.output


def _run_dir(path: Path, sps: float, block_sps: list[float], torch_version: str) -> Path:
    """A run dir whose case 'mine' was timed in blocks of 10 calls at the given samples/s (batch 1)."""
    path.mkdir()
    cols = ["case_id", "label", "framework", "device", "precision", "compile_mode", "batch_size", "img_size",
            "status", "samples_per_sec", "latency_ms_p50", "provider", "role", "pair", "error"]
    with (path / "cases.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerow(["c1", "mine", "torch", "cpu", "fp32", "eager", 1, 224, "ok", sps, 1e3 / sps, "vitbench",
                    "candidate", "p", ""])
        w.writerow(["c2", "other", "torch", "cpu", "fp32", "eager", 1, 224, "ok", 10, 100, "timm", "reference", "p",
                    ""])
    blocks = [{"iters": 10, "wall_s": 10 / v} for v in block_sps]
    lat = [1e3 / v for v in block_sps for _ in range(10)]
    (path / "latencies.jsonl").write_text(json.dumps({"case_id": "c1", "latencies_ms": lat, "blocks": blocks}) + "\n")
    (path / "env.json").write_text(json.dumps({"versions": {"torch": torch_version}, "cpu": "x"}))
    return path


def test_diff_noise_comes_from_rounds_and_reports_environment(cli, tmp_path):
    noisy = [100, 80, 120, 95, 110, 70, 125, 90, 105, 100]  # between-round spread of +-25%
    noisy_old = _run_dir(tmp_path / "a", 100, noisy, "2.5")
    noisy_new = _run_dir(tmp_path / "b", 90, [v * 0.9 for v in noisy], "2.6")
    res = cli("diff", noisy_old, noisy_new)
    print(res.output)
    assert res.exit_code == 0  # 10% slower, but within the rounds' own spread
    assert "environment: versions.torch: 2.5 -> 2.6" in res.output
    tight = [100, 100.5, 99.5, 100.2, 99.8, 100.1, 99.9, 100.3, 99.7, 100]
    tight_old = _run_dir(tmp_path / "c", 100, tight, "2.5")
    tight_new = _run_dir(tmp_path / "d", 90, [v * 0.9 for v in tight], "2.5")
    res = cli("diff", tight_old, tight_new)
    assert res.exit_code == 1 and "mine" in res.output


def test_diff_change_is_symmetric_and_5x_slower_is_a_regression(tmp_path):
    from vitbench.report.diff import diff

    tight = [100, 100.5, 99.5, 100.2, 99.8, 100.1, 99.9, 100.3, 99.7, 100]
    base = load(_run_dir(tmp_path / "base", 100, tight, "2.5"))
    slow = load(_run_dir(tmp_path / "slow", 20, [v / 5 for v in tight], "2.5"))
    fast = load(_run_dir(tmp_path / "fast", 500, [v * 5 for v in tight], "2.5"))
    down = diff(base, slow).rows.set_index(["label", "metric"]).loc[("mine", "samples_per_sec")]
    up = diff(base, fast).rows.set_index(["label", "metric"]).loc[("mine", "samples_per_sec")]
    assert down.verdict == "regression" and up.verdict == "improvement"
    assert down.change_pct == pytest.approx(-up.change_pct) == pytest.approx(-100 * np.log(5))
    assert down.factor == pytest.approx(0.2) and up.factor == pytest.approx(5.0)


def test_diff_other_batch_size_is_not_comparable_and_unrelated_is_refused(cli, tmp_path):
    a = _run_dir(tmp_path / "a", 100, [100] * 5, "2.5")
    b = _run_dir(tmp_path / "b", 40, [40] * 5, "2.5")
    text = (b / "cases.csv").read_text().replace(",1,224,ok,40", ",6,224,ok,40")  # 'mine' now at batch 6
    (b / "cases.csv").write_text(text)
    rep = diff(load(a), load(b))
    # slower at the new batch size: listed with its samples/s, but not a regression
    assert rep.not_comparable == ["p mine torch eager 224: not comparable (batch 1 -> 6); samples/s 100 -> 40 (0.40x)"]
    assert rep.slower_elsewhere == 1 and not len(rep.regressions)
    res = cli("diff", a, b)
    assert res.exit_code == 0 and "not comparable (batch 1 -> 6)" in res.output
    c = _run_dir(tmp_path / "c", 100, [100] * 5, "2.5")
    (c / "cases.csv").write_text((c / "cases.csv").read_text().replace("mine", "yours").replace("other", "x"))
    res = cli("diff", a, c)
    assert res.exit_code == 2 and "not about the same models" in res.output


def test_diff_matches_one_device_under_two_names_and_says_so(cli, tmp_path):
    """timm renamed its RTX 4090 'rtx4090' -> '4090' between releases: the same device under another name is
    matched (each decision printed); --device-map says two names are one device; batch changes stay apart."""
    from vitbench.report.diff import normalize_device

    assert normalize_device("rtx4090") == normalize_device("4090") == normalize_device("NVIDIA GeForce RTX 4090")
    assert normalize_device("a100-sxm4-40gb") != normalize_device("h100")
    old = tmp_path / "benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv"
    old.write_text(EAGER.read_text())
    new = tmp_path / "benchmark-infer-amp-nchw-pt291-cu130-4090.csv"
    new.write_text(EAGER.read_text().replace("vit_small_patch16_224,224,1000.0,256.0,256",
                                             "vit_small_patch16_224,224,500.0,256.0,128"))
    rep = diff(load(old), load(new))
    assert len(rep.rows) and rep.device_decisions == [
        "device 'rtx4090' (old) and '4090' (new) taken as one device: the same name normalised (4090)"]
    assert any("vit_small_patch16_224" in n and "batch 256 -> 128" in n for n in rep.not_comparable)
    other = tmp_path / "benchmark-infer-amp-nchw-pt291-cu130-h100.csv"
    other.write_text(EAGER.read_text())
    assert not diff(load(old), load(other)).device_decisions  # another GPU: not matched ...
    res = cli("diff", old, other, "--device-map", "rtx4090=h100")  # ... unless the user says so
    assert res.exit_code == 0 and "'rtx4090' (old) and 'h100' (new) taken as one device: --device-map" in res.output
    assert "matched cases" in res.output and not res.output.startswith("0 matched")
    assert cli("diff", old, other, "--device-map", "rtx4090").exit_code == 2


@pytest.mark.parametrize("name,family", [
    ("swin_tiny_patch4_window7_224", "swin"), ("swinv2_cr_tiny_ns_224", "swinv2"), ("resnet50d", "resnet"),
    ("tf_efficientnet_b0.ns_jft_in1k", "efficientnet"), ("samvit_base_patch16", "samvit"),
    ("maxvit_tiny_tf_224", "maxvit"), ("vgg16", "vgg"), ("deit3_small_patch16_224", "deit3"),
])
def test_family_name_rule(name, family):
    assert family_of(name) == family


def test_scan_marks_new_families_and_emits_a_valid_suite(cli, tmp_path):
    prev = tmp_path / "prev.csv"
    prev.write_text("\n".join(line for line in EAGER.read_text().splitlines()
                              if not line.startswith(("swin", "maxvit"))))
    suite = tmp_path / "new.yaml"
    out_csv = tmp_path / "scan.csv"
    res = cli("scan", EAGER, "--previous", prev, "--emit-suite", suite, "--csv", out_csv)
    print(res.output)
    assert res.exit_code == 0
    assert "new families since --previous: " in res.output
    new_line = next(line for line in res.output.splitlines() if line.startswith("new families"))
    assert set(new_line.split(": ")[1].split(", ")) == {"swin", "maxvit"}
    assert "covered" in res.output  # vit and swin are in our shipped suites
    from vitbench.suite import load_suite

    emitted = load_suite(suite)  # new and not yet covered: maxvit only (swin is new but our suites cover it)
    assert {p.reference.model for p in emitted.pairs} == {"maxvit_tiny_tf_224"}
    res2 = cli("scan", EAGER, "--previous", out_csv, "--csv", tmp_path / "scan2.csv")  # a scan CSV as --previous
    assert res2.exit_code == 0 and "0 new" in res2.output


def test_scan_url_without_network_is_a_clear_error(cli):
    res = cli("scan", "http://127.0.0.1:9/benchmark.csv")
    assert res.exit_code == 2 and "cannot fetch" in res.output


def test_plot_timm_tables_and_run_dir(cli, tmp_path, kept_figures):
    res = cli("plot", EAGER, COMPILED, "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "throughput_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    ax = kept_figures[-1].axes[0]
    assert "param" in ax.get_xlabel() and "samples" in ax.get_ylabel()
    assert len(ax.get_legend().get_texts()) == 2  # one series per table (eager, dynamo)
    run = _run_dir(tmp_path / "run", 100, [10, 11, 12], "2.5")
    res = cli("plot", run, "--out", tmp_path / "q")
    assert res.exit_code == 0, res.output
    (ax,) = next(f for f in kept_figures if "latency" in f.axes[0].get_title()).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == ["p99", "p90", "p50"]
    assert len(ax.patches) == 3 * 2  # three percentile bars for each of the two cases
    assert {t.get_text().split()[0] for t in ax.get_yticklabels()} == {"mine", "other"}


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures plot functions draw, kept open for inspection instead of closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitbench.report import figfit, plots

    figs = []

    class Keep:
        def __getattr__(self, name):
            return getattr(plt, name)

        def close(self, fig):
            figs.append(fig)

    monkeypatch.setattr(plots, "_plt", lambda: Keep())
    monkeypatch.setattr(figfit, "close", figs.append)
    yield figs
    plt.close("all")


def test_plots_draw_intervals_verdicts_and_failures(tmp_path, kept_figures):
    from vitbench.report import plots

    pair = {"pair": "p", "compile_mode": "eager", "batch_size": 1, "reference_compile_mode": "eager",
            "threshold_pct": 2.0}
    pairs = [{**pair, "label": "a", "speed_ratio": 1.2, "speed_ratio_ci_low": 1.1, "speed_ratio_ci_high": 1.3,
              "speed_verdict": "faster"},
             {**pair, "label": "b", "speed_ratio": 0.7, "speed_ratio_ci_low": 0.6, "speed_ratio_ci_high": 0.8,
              "speed_verdict": "slower"},
             {**pair, "label": "c", "speed_ratio": None, "speed_verdict": "not measured"}]
    assert plots.speed_ratio(pairs, tmp_path / "s.png")
    ax = kept_figures[-1].axes[0]
    assert len(ax.containers) == 2  # one error bar per measured candidate, none invented for 'c'
    xs = sorted(float(c.lines[0].get_xdata()[0]) for c in ax.containers)
    assert xs == [0.7, 1.2]
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"faster", "slower"}

    rows = [{"role": "candidate", "pair": "p", "label": "ok", "max_abs_diff": 1e-7, "numerics_status": "ok",
             "tolerance_max_abs": 1e-5},
            {"role": "candidate", "pair": "p", "label": "nan", "max_abs_diff": None, "numerics_status": "fail",
             "numerics_error": "candidate output has 4 NaN", "tolerance_max_abs": 1e-5},
            {"role": "candidate", "pair": "p", "label": "port", "max_abs_diff": None,
             "numerics_status": "port_failed", "numerics_error": "weight port failed: 3 missing keys"}]
    assert plots.numeric_diff(rows, tmp_path / "n.png")
    ax = kept_figures[-1].axes[0]
    assert len(ax.patches) == 3  # a bar per candidate, the failed ones empty ...
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 2  # ... and marked
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "candidate output has 4 NaN" in notes and "port_failed" in notes


def test_throughput_plot_colours_by_implementation_and_lists_what_it_leaves_out(tmp_path, kept_figures):
    import pandas as pd

    from vitbench.report import plots
    from vitbench.report.results import Results

    df = pd.DataFrame([
        {"label": "t", "provider": "timm", "status": "ok", "param_count_m": 22, "samples_per_sec": 10,
         "samples_per_sec_ci_low": 9, "samples_per_sec_ci_high": 11, "batch_size": 1},
        {"label": "o", "provider": "vitbench", "status": "ok", "param_count_m": 22, "samples_per_sec": 11,
         "batch_size": 1},
        {"label": "bad", "provider": "import", "status": "error", "param_count_m": None, "samples_per_sec": None,
         "batch_size": 1}])
    assert plots.throughput_vs_params([Results(str(tmp_path / "run" / "cases.csv"), "cases", df)],
                                      tmp_path / "t.png")
    fig = kept_figures[-1]
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"timm (1)", "vitbench (1)"}
    assert len({tuple(c.lines[0].get_color()) if not isinstance(c.lines[0].get_color(), str)
                else c.lines[0].get_color() for c in ax.containers}) == 2
    bars = ax.containers[0].lines[2][0].get_segments()  # timm's error bar spans its interval
    assert [round(float(v), 6) for v in bars[0][:, 1]] == [9.0, 11.0]
    assert any("not drawn (1)" in t.get_text() and "bad" in t.get_text() for t in fig.texts)


def test_calibrate_prints_the_noise_floor(cli, tmp_path):
    res = cli("calibrate", "--model", "test_vit", "--img-size", "64", "--rounds", "6", "--processes", "2",
              "--seconds", "2", "--cross-process", "--out", tmp_path / "cal")
    print(res.output)
    suite = (tmp_path / "cal" / "suite.yaml").read_text()
    assert "min_seconds: 2" in suite and "own_process: true" in suite  # --seconds, --cross-process reached it
    assert "A/A test_vit bs1 on cpu (cross-process" in res.output
    (pair,) = list(csv.DictReader((tmp_path / "cal" / "pairs.csv").open()))
    assert int(pair["rounds_run"]) >= 1 and pair["processes"] in ("1", "2")
    # each instance in its own timing session: two torch sessions in each timing process
    assert len(list((tmp_path / "cal" / "logs").glob("timing-*-0.log"))) == 2
    contains = pair["speed_ratio_ci_low"] != "" and float(pair["speed_ratio_ci_low"]) <= 1.0 <= float(
        pair["speed_ratio_ci_high"])
    good = contains and pair["speed_verdict"] != "contended"
    assert res.exit_code == (0 if good else 1), res.output  # exit 1 exactly when the A/A fails or the machine was busy
    assert ("noise floor" in res.output) == good or pair["speed_verdict"] == "contended"
    assert cli("calibrate", "--model", "vit_smal", "--out", tmp_path / "x").exit_code == 2
