"""Fine-tune benchmark: top-k, normalisation, schedule, data (built-in and image folders), the training loop, and
`vitbench finetune` end to end on tiny models."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from vitbench.errors import InputError
from vitbench.finetune import data as D
from vitbench.finetune.loop import evaluate, lr_factor, make_optimizer, make_scheduler, no_decay_names, topk_accuracy
from vitbench.finetune.loop import train as train_loop


def test_topk_accuracy_on_hand_made_logits():
    logits = torch.tensor([
        [0.1, 0.9, 0.0, 0.0],  # target 1: top-1 hit
        [0.5, 0.4, 0.3, 0.2],  # target 1: second -> top-2 hit, top-1 miss
        [0.1, 0.2, 0.3, 0.4],  # target 0: last -> only top-4
        [0.0, 0.0, 0.9, 0.1],  # target 3: second
    ])
    targets = torch.tensor([1, 1, 0, 3])
    acc = topk_accuracy(logits, targets, [1, 2, 3, 4, 5])
    assert acc == {1: 25.0, 2: 75.0, 3: 75.0, 4: 100.0}  # k=5 > 4 classes: left out, not a free 100%
    assert topk_accuracy(logits[:1], targets[:1], [1]) == {1: 100.0}
    assert topk_accuracy(logits[:0], targets[:0], [1]) == {}


def test_normalize_denormalize_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    z = D.normalize(x, mean, std)
    assert torch.allclose(z[:, 0], (x[:, 0] - 0.485) / 0.229)
    assert torch.allclose(D.denormalize(z, mean, std), x, atol=1e-6)
    assert torch.allclose(D.normalize(D.denormalize(z, mean, std), mean, std), z, atol=1e-5)


def test_to_model_input_grey_to_rgb_resized_and_normalised():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    y = D.to_model_input(x, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert y.shape == (2, 3, 32, 32) and y.dtype == torch.float32
    assert torch.allclose(y, torch.ones_like(y))  # white -> (1 - 0.5) / 0.5
    big = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    assert D.to_model_input(big, 16, (0,) * 3, (1,) * 3).shape == (1, 3, 16, 16)


def test_data_config_uses_the_models_own_preprocessing():
    import timm

    augreg = D.data_config(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1))
    assert augreg["mean"] == (0.5, 0.5, 0.5) and augreg["source"] == "model.pretrained_cfg"
    from vitbench.models import torch as ours

    own = D.data_config(ours.create_model("vit_tiny_patch16_224", depth=1))  # ours carry their own config
    assert own["mean"] == (0.5, 0.5, 0.5) and own["crop_pct"] == 0.9 and own["source"] == "model.pretrained_cfg"
    swin = D.data_config(ours.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1)))
    assert swin["mean"] == (0.485, 0.456, 0.406)
    plain = D.data_config(nn.Linear(2, 2))
    assert plain["mean"] == D.IMAGENET_MEAN and plain["std"] == D.IMAGENET_STD
    assert D.data_config(nn.Linear(2, 2), mean=[0.1, 0.2, 0.3], std=[1, 1, 1])["mean"] == (0.1, 0.2, 0.3)


def test_lr_schedule_warmup_then_cosine_linear_constant():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(1 / 11)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(10 / 11)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(50, 100, 0, "step")


def test_no_weight_decay_on_biases_norms_and_named_tokens():
    from vitbench.models import torch as ours

    m = ours.create_model("vit_tiny_patch16_224", depth=1, num_classes=3)
    skip = no_decay_names(m)
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias"} <= skip and "head.weight" not in skip
    opt = make_optimizer(m, "adamw", 1e-3, 0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_builtin_dataset_loads_offline_with_a_stratified_split():
    spec = D.resolve_dataset("animal-shape")
    data = D.load_dataset(spec, 0.2, img_size=32)
    assert len(data.train) == 8000 and len(data.val) == 2000
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(data.val.labels).tolist() == [200] * 10
    assert spec.classes[0] == "bear" and spec.classes[-1] == "zebra"
    again = D.load_dataset(spec, 0.2, img_size=32)  # the split does not move between runs
    assert torch.equal(again.val.labels, data.val.labels) and torch.equal(again.val.images, data.val.images)


@pytest.mark.parametrize("bad", ["/no/such/dir", "animal_shape", "imagenet"])
def test_bad_dataset_name_or_path_is_one_clear_error(bad):
    with pytest.raises(InputError, match="no such directory, and not a built-in dataset"):
        D.resolve_dataset(bad)


def _png_tree(root, classes=("cat", "dog"), per_class=6, size=(40, 30)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True)
        for j in range(per_class):
            noise = rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8)
            a = np.full((size[1], size[0], 3), 40 + 150 * i, dtype=np.uint8) + noise
            Image.fromarray(a).save(d / f"{j}.png")


def test_image_folder_flat_and_train_val_layouts(tmp_path):
    flat = tmp_path / "flat"
    _png_tree(flat)
    spec = D.resolve_dataset(str(flat))
    assert spec.kind == "folder" and spec.classes == ("cat", "dog") and not spec.has_val_split
    data = D.load_dataset(spec, 0.5, img_size=16)
    assert len(data.train) == 6 and len(data.val) == 6
    x, y = next(D.iter_batches(data.train, 4, shuffle=True))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8 and set(y.tolist()) <= {0, 1}
    split = tmp_path / "split"
    _png_tree(split / "train")
    _png_tree(split / "val", per_class=2)
    spec = D.resolve_dataset(str(split))
    assert spec.has_val_split and len(D.load_dataset(spec, 0.2, img_size=8).val) == 4


def test_image_folder_problems_name_the_folder(tmp_path):
    (tmp_path / "one" / "cat").mkdir(parents=True)
    with pytest.raises(InputError, match="one sub-folder per class"):
        D.resolve_dataset(str(tmp_path / "one"))
    (tmp_path / "one" / "dog").mkdir()
    with pytest.raises(InputError, match="without images.*cat, dog"):
        D.resolve_dataset(str(tmp_path / "one"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        D.resolve_dataset(str(tmp_path / "file.txt"))


def test_sample_grid_png(tmp_path):
    x = torch.rand(10, 3, 16, 16)
    path = D.save_sample_grid(x, list(range(10)), [f"c{i}" for i in range(10)], tmp_path / "g.png",
                              preds=[0] * 10, title="t")
    assert path.stat().st_size > 2000 and path.read_bytes()[:4] == b"\x89PNG"


def test_loss_decreases_over_a_few_dozen_steps():
    torch.manual_seed(0)
    data = D.load_dataset(D.resolve_dataset("animal-shape"), 0.2, img_size=16)
    from vitbench.models import torch as ours

    model = ours.create_model("vit_tiny_patch16_224", patch_size=4, embed_dim=32, depth=1, num_heads=2, img_size=16,
                              num_classes=10)
    opt = make_optimizer(model, "adamw", 3e-3, 0.01)
    sched = make_scheduler(opt, 40, 4, "cosine")
    prep = lambda x: D.to_model_input(x, 16, (0.5,) * 3, (0.5,) * 3)  # noqa: E731
    hist = train_loop(model, D.iter_batches(data.train, 64, shuffle=True, seed=1, drop_last=True), steps=40,
                      optimizer=opt, scheduler=sched, loss_fn=nn.CrossEntropyLoss(), to_input=prep,
                      device=torch.device("cpu"), grad_clip=1.0)
    assert [h.step for h in hist] == list(range(1, 41)) and all(h.step_s > 0 for h in hist)
    first, last = np.mean([h.loss for h in hist[:5]]), np.mean([h.loss for h in hist[-5:]])
    assert last < first - 0.2, (first, last)
    assert hist[0].lr < hist[4].lr  # warm-up
    res = evaluate(model, D.iter_batches(data.val, 500, shuffle=False, epochs=1), ks=[1, 5], to_input=prep,
                   device=torch.device("cpu"), loss_fn=nn.CrossEntropyLoss())
    assert res["n"] == 2000 and res["topk"][1] > 20 and res["topk"][5] > 60  # chance: 10% / 50%


def test_diverging_training_stops_with_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    batches = iter([(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))])
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        train_loop(model, batches, steps=1, optimizer=torch.optim.SGD(model.parameters(), 0.1), scheduler=None,
                   loss_fn=nn.CrossEntropyLoss(), to_input=lambda x: x.float(), device=torch.device("cpu"))


def test_finetune_section_is_validated(write_suite):
    from vitbench.errors import SuiteError
    from vitbench.suite import load_suite

    base = "name: t\npairs:\n  - name: p\n    reference: {provider: timm, model: test_vit}\n"
    with pytest.raises(SuiteError, match="finetune.stepz: Extra inputs"):
        load_suite(write_suite(base + "finetune: {stepz: 3}\n"))
    with pytest.raises(SuiteError, match="finetune.topk: .*>= 1"):
        load_suite(write_suite(base + "finetune: {topk: [0, 1]}\n"))
    s = load_suite(write_suite(base + "finetune: {steps: 7, topk: [5, 1, 5]}\n"))
    assert s.finetune.steps == 7 and s.finetune.topk == [1, 5]


def test_old_cases_csv_header_is_upgraded_before_appending(tmp_path):
    from vitbench.runner.store import CASE_COLUMNS, ResultStore

    (tmp_path / "cases.csv").write_text("case_id,label,status\nabc,old,ok\n")
    store = ResultStore(tmp_path)
    store.append({"case_id": "def", "label": "new", "status": "ok", "task": "finetune", "top1": 81.5})
    rows = store.rows()
    assert list(rows[0]) == CASE_COLUMNS
    assert [(r["case_id"], r["label"], r["task"], r["top1"]) for r in rows] == [("abc", "old", "", ""),
                                                                                 ("def", "new", "finetune", "81.5")]


FT_SUITE = """
name: ft
defaults: {img_size: 16}
finetune: {dataset: animal-shape, steps: 12, batch_size: 32, eval_every: 6, log_every: 4, warmup_steps: 2,
           timing_warmup_steps: 2, timeout_s: 300}
pairs:
  - name: tiny
    reference: {provider: timm, model: vit_tiny_patch16_224,
                kwargs: {patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}}
    candidates:
      - {provider: vitbench, model: vit_tiny_patch16_224,
         kwargs: {patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}}
      - {provider: vitbench_keras, model: vit_tiny_patch16_224, backend: tensorflow,
         kwargs: {patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}}
  - name: broken
    reference: {provider: import, model: "vitbench.testing:Failing"}
"""


@pytest.mark.slow
def test_finetune_cli_end_to_end(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    res = cli("finetune", write_suite(FT_SUITE), "--device", "cpu", "--out", out)
    print(res.output)
    assert res.exit_code == 2, res.output  # the Failing model; every other row is kept
    with open(out / "cases.csv", newline="") as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}
    ref, cand = rows["vit_tiny_patch16_224"], rows["vitbench/vit_tiny_patch16_224"]
    keras_row = rows["vitbench_keras-tensorflow/vit_tiny_patch16_224"]
    broken = rows["import/vitbench.testing:Failing"]
    assert broken["status"] == "error" and "Failing: this model always fails" in broken["error"]
    for r in (ref, cand, keras_row):
        assert r["status"] == "ok" and r["task"] == "finetune" and r["dataset"] == "animal-shape"
        assert 0 <= float(r["top1"]) <= float(r["top5"]) <= 100 and r["num_classes"] == "10"
        assert float(r["samples_per_sec"]) > 0 and float(r["train_gmacs"]) > 2 * float(r["gmacs"]) > 0
        assert float(r["peak_rss_mb"]) > 0 and float(r["train_rss_delta_mb"]) >= 0 and r["train_steps"] == "12"
        assert list((out / r["events_dir"]).glob("events.out.tfevents*"))
        assert (out / r["sample_grid"]).stat().st_size > 2000
    # the candidate started from the reference's initial weights: the same first loss
    assert cand["init"] == "reference" and ref["init"].startswith("seed 0")
    assert float(cand["train_loss_first"]) == pytest.approx(float(ref["train_loss_first"]), abs=1e-5)
    # so did the Keras twin, on the same batches with the reference's preprocessing: the same first loss too, and a
    # curve that follows the reference's (float differences only); its weights load back and predict the same
    assert keras_row["init"] == "reference" and keras_row["framework"] == "keras"
    assert float(keras_row["train_loss_first"]) == pytest.approx(float(ref["train_loss_first"]), abs=1e-4)
    assert float(keras_row["curve_gap"]) < 1e-3 and keras_row["curve_gap_steps"] == "12"
    assert keras_row["weights_path"].endswith(".weights.h5")
    keras_meta = json.loads((out / keras_row["weights_path"].removesuffix(".weights.h5")).with_suffix(".json")
                            .read_text())
    assert keras_meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and keras_meta["backend"] == "tensorflow"
    from vitbench.finetune import data as D
    from vitbench.finetune.keras_job import _evaluate
    from vitbench.models import keras as keras_ours
    from vitbench.suite import FinetuneSettings

    km = keras_ours.create_model("vit_tiny_patch16_224", patch_size=4, embed_dim=32, depth=1, num_heads=2,
                                 num_classes=10, img_size=16)
    km.load_weights(str(out / keras_row["weights_path"]))
    st = FinetuneSettings(**keras_meta["settings"])
    data = D.load_dataset(D.DatasetSpec.from_dict(keras_meta["dataset"]), st.val_fraction, 16,
                          keras_meta["preprocessing"]["crop_pct"], keras_meta["preprocessing"]["interpolation"])
    again = _evaluate(km, data.val, st, 16, keras_meta["preprocessing"]["mean"], keras_meta["preprocessing"]["std"],
                      [1])
    assert again["topk"][1] == pytest.approx(float(keras_row["top1"]), abs=1e-6)
    # the saved weights load into a fresh model, strict, and carry what is needed to use them
    from vitbench.models import torch as ours

    m = ours.create_model("vit_tiny_patch16_224", patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=10,
                          img_size=16)
    m.load_state_dict(torch.load(out / cand["weights_path"]), strict=True)
    meta = json.loads((out / cand["weights_path"]).with_suffix(".json").read_text())
    assert meta["classes"][0] == "bear" and meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    with open(out / "curves.csv", newline="") as f:
        curve = [r for r in csv.DictReader(f) if r["case_id"] == cand["case_id"]]
    assert sum(r["metric"] == "train_loss" for r in curve) == 12
    assert [r["step"] for r in curve if r["metric"] == "val_top1"] == ["6", "12"]
    table = next(out.glob("benchmark-train-fp32-nchw-pt*-cpu.csv")).read_bytes().decode()
    assert table.startswith("model,train_samples_per_sec,train_step_time,train_batch_size,train_img_size,"
                            "param_count\r\n") and len(table.splitlines()) == 3
    keras_table = next(out.glob("benchmark-train-fp32-nhwc-keras*-tensorflow-cpu.csv")).read_text()
    assert len(keras_table.splitlines()) == 2 and "vitbench_keras-tensorflow/vit_tiny_patch16_224" in keras_table
    assert (out / "finetune_accuracy_vs_throughput.png").exists() and (out / "finetune_curves.png").exists()
    assert not (out / "artifacts").exists()


def test_finetune_bad_dataset_path_exits_2_with_one_line(cli, write_suite, tmp_path):
    res = cli("finetune", write_suite(FT_SUITE), "--dataset", tmp_path / "nope", "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "--dataset" in res.output and "no such directory" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_diff_flags_an_accuracy_drop_and_never_matches_different_training(tmp_path):
    from vitbench.report.diff import diff
    from vitbench.report.results import load
    from vitbench.runner.store import ResultStore

    base = {"task": "finetune", "label": "mine", "framework": "torch", "device": "cpu", "precision": "fp32",
            "compile_mode": "eager", "batch_size": 64, "img_size": 32, "dataset": "animal-shape", "status": "ok",
            "samples_per_sec": 500.0}
    for name, rows in (("old", [{**base, "case_id": "a", "train_steps": 300, "top1": 62.7},
                                {**base, "case_id": "b", "train_steps": 100, "top1": 36.0, "label": "other"}]),
                       ("new", [{**base, "case_id": "a", "train_steps": 300, "top1": 55.0},
                                {**base, "case_id": "c", "train_steps": 300, "top1": 60.0, "label": "other"}])):
        store = ResultStore(tmp_path / name)
        for r in rows:
            store.append(r)
    rep = diff(load(str(tmp_path / "old")), load(str(tmp_path / "new")), 5.0)
    assert rep.regressions[["label", "metric"]].values.tolist() == [["mine", "top1"]]
    assert len(rep.added) == 1 and len(rep.removed) == 1  # 'other' trained 100 vs 300 steps: not the same case


def test_validate_checks_the_finetune_dataset(cli, write_suite):
    base = "name: t\npairs:\n  - name: p\n    reference: {provider: timm, model: test_vit}\n"
    ok = cli("validate", write_suite(base + "finetune: {dataset: animal-shape, steps: 5}\n"))
    assert ok.exit_code == 0 and "finetune: 5 steps" in ok.output
    bad = cli("validate", write_suite(base + "finetune: {dataset: /no/such/folder}\n"))
    assert bad.exit_code == 2 and "finetune.dataset /no/such/folder: no such directory" in bad.output


FT_RESUMABLE = """
name: ftr
defaults: {img_size: 16}
finetune: {steps: 15, batch_size: 16, eval_every: 100, timing_warmup_steps: 1, timeout_s: 120}
pairs:
  - name: tiny
    reference: {provider: import, model: "vitbench.testing:TinyNet"}
    candidates:
      - {provider: import, model: "vitbench.testing:TinyNet", label: b}
      - {provider: import, model: "vitbench.testing:TinyNet", label: c}
"""


@pytest.mark.slow
def test_finetune_ctrl_c_keeps_rows_and_resume_finishes(write_suite, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    def rows(out):
        with open(out / "cases.csv", newline="") as f:
            return list(csv.DictReader(f))

    suite, out = write_suite(FT_RESUMABLE), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vitbench.cli", "finetune", str(suite), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "cases.csv").exists() and rows(out)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    print(output)
    assert proc.returncode == 130 and "--resume" in output and "Traceback" not in output
    before = rows(out)
    assert 1 <= len(before) < 3 and all(r["status"] == "ok" for r in before)
    res = subprocess.run([sys.executable, "-m", "vitbench.cli", "finetune", str(suite), "--resume", str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    print(res.stdout, res.stderr)
    assert res.returncode == 0 and f"{len(before)} cases done" in res.stdout
    after = rows(out)
    assert len(after) == 3 and after[: len(before)] == before
    assert all(r["init"] == "reference" for r in after if r["role"] == "candidate")


@pytest.mark.slow
def test_keras_sides_train_on_an_image_folder_on_tensorflow_and_torch_backends(cli, write_suite, tmp_path):
    """An image folder (DIR/train/<class>/, DIR/val/<class>/) feeds Keras sides as it feeds torch ones, on the
    TensorFlow and the torch backends of Keras: the same first loss as timm's, from its ported weights."""
    root = tmp_path / "imgs"
    _png_tree(root / "train", per_class=8)
    _png_tree(root / "val", per_class=3)
    kw = "{patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}"
    suite = f"""
name: ftk
defaults: {{img_size: 16}}
finetune: {{steps: 4, batch_size: 4, eval_every: 4, log_every: 2, warmup_steps: 1, timing_warmup_steps: 1,
           timeout_s: 300}}
pairs:
  - name: tiny
    reference: {{provider: timm, model: vit_tiny_patch16_224, kwargs: {kw}}}
    candidates:
      - {{provider: vitbench_keras, model: vit_tiny_patch16_224, backend: tensorflow, kwargs: {kw}}}
      - {{provider: vitbench_keras, model: vit_tiny_patch16_224, backend: torch, kwargs: {kw}}}
"""
    out = tmp_path / "out"
    res = cli("finetune", write_suite(suite), "--dataset", root, "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    with open(out / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ref = rows[0]
    assert [(r["backend"] or "", r["status"], r["val_samples"]) for r in rows] == [
        ("", "ok", "6"), ("tensorflow", "ok", "6"), ("torch", "ok", "6")]
    for r in rows[1:]:
        assert r["init"] == "reference"
        assert float(r["train_loss_first"]) == pytest.approx(float(ref["train_loss_first"]), abs=1e-4)
        assert float(r["curve_gap"]) < 1e-3 and (out / r["weights_path"]).exists()
