"""vit-pytorch sides (lucidrains): its ViT / SimpleViT and efficient.ViT with Nystromformer, Linformer, Performer
built through the ``vit_pytorch`` provider at two token counts; the nested ``transformer: {type: ...}`` kwargs read
from a suite file; no weight port (and a clear error when a suite forgets ``port: false``); the shipped suites that
use them validate; fine-tuning's defaults for a model with no preprocessing config."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from vitbench.errors import SuiteError
from vitbench.providers import get_provider
from vitbench.suite import expand, load_suite

TINY = {"patch_size": 8, "dim": 32, "heads": 2}
SIDES = {  # label -> (model, kwargs): every vit-pytorch side the suites use, at tiny sizes
    "ViT": ("ViT", {**TINY, "depth": 2}),
    "SimpleViT": ("SimpleViT", {**TINY, "depth": 2}),
    "nystromformer": ("nystromformer", {**TINY, "depth": 1, "num_landmarks": 8}),
    "linformer": ("linformer", {**TINY, "depth": 1, "k": 8}),
    "performer": ("performer", {**TINY, "depth": 1, "nb_features": 16}),
    "efficient.ViT/nystromformer": ("efficient.ViT", {"patch_size": 8, "dim": 32, "transformer": {
        "type": "nystromformer", "depth": 2, "heads": 2, "num_landmarks": 8}}),
    "efficient.ViT/linformer": ("efficient.ViT", {"patch_size": 8, "dim": 32, "transformer": {
        "type": "linformer", "depth": 2, "heads": 2, "k": 8}}),
    "efficient.ViT/performer": ("efficient.ViT", {"patch_size": 8, "dim": 32, "transformer": {
        "type": "performer", "depth": 2, "heads": 2, "nb_features": 16}}),
}


@pytest.mark.parametrize("label", list(SIDES))
def test_each_side_builds_and_runs_at_two_token_counts(label):
    provider = get_provider("vit_pytorch")
    model_name, kwargs = SIDES[label]
    assert provider.framework == "torch" and provider.check(model_name) is None
    assert provider.check_kwargs(model_name, kwargs) is None
    for img, patches in ((32, 16), (64, 64)):  # 17 and 65 tokens with the class token (SimpleViT: 16, 64)
        torch.manual_seed(0)
        model, size = provider.build(model_name, {**kwargs, "num_classes": 5}, img)
        assert size == img
        x = torch.randn(2, 3, img, img)
        with torch.no_grad():
            y = model.eval()(x)
        assert y.shape == (2, 5) and torch.isfinite(y).all()
        if "linformer" in label:  # E/F sized by the sequence: patches + the class token, filled from img/patch
            assert {m.seq_len for m in model.modules() if hasattr(m, "seq_len")} == {patches + 1}
        macs, acts, method = provider.count_macs(model, x[:1])
        assert macs > 0 and acts > 0 and method
    assert kwargs == SIDES[label][1]  # the suite's kwargs are not changed by building (nested dict copied)


def test_filled_defaults_match_timm_sizes():
    from vitbench.providers.vit_pytorch_provider import attention_of, resolve

    vit, spec = resolve("performer", {"patch_size": 16, "dim": 384, "depth": 12, "heads": 6}, 224)
    assert vit == {"patch_size": 16, "dim": 384, "image_size": 224, "num_classes": 1000}
    assert spec == {"type": "performer", "dim": 384, "depth": 12, "heads": 6, "dim_head": 64}
    exact, _ = resolve("ViT", {"patch_size": 16, "dim": 384, "depth": 12, "heads": 6, "image_size": 448}, 224)
    assert exact["image_size"] == 448 and exact["dim_head"] == 64 and exact["mlp_dim"] == 1536  # a kwarg wins
    _, lin = resolve("efficient.ViT", {"patch_size": 16, "dim": 384, "transformer": {"type": "linformer",
                                                                                      "depth": 1, "heads": 6}}, 896)
    assert lin["seq_len"] == 56 * 56 + 1
    with pytest.raises(ValueError, match="transformer dim 64 != ViT dim 32"):
        resolve("efficient.ViT", {"patch_size": 8, "dim": 32, "transformer": {"type": "linformer", "dim": 64,
                                                                              "depth": 1}}, 32)
    assert attention_of("ViT", {}) == "exact"
    assert attention_of("efficient.ViT", {"transformer": {"type": "nystromformer"}}) == "nystromformer"


def test_check_names_and_kwargs_without_building():
    provider = get_provider("vit_pytorch")
    assert "did you mean 'nystromformer'" in provider.check("nystromformr")
    assert "did you mean 'SimpleViT'" in provider.check("SimpleVit")
    assert "kwargs.transformer.type: unknown transformer 'nystrom'" in provider.check_kwargs(
        "efficient.ViT", {"transformer": {"type": "nystrom"}})
    assert "must be a mapping" in provider.check_kwargs("efficient.ViT", {"transformer": "performer"})
    assert "the transformer is named by the model" in provider.check_kwargs(
        "linformer", {"transformer": {"type": "linformer"}})
    assert "takes no 'transformer'" in provider.check_kwargs("ViT", {"transformer": {"type": "linformer"}})


NESTED = """
name: nested
defaults: {batch_sizes: [1], img_size: 32}
pairs:
  - name: p
    reference: {provider: timm, model: test_vit}
    candidates:
      - provider: vit_pytorch
        model: efficient.ViT
        port: false
        kwargs:
          patch_size: 8
          dim: 32
          transformer: {type: linformer, depth: 1, heads: 2, k: 8}
      - {provider: vit_pytorch, model: nystromformer, port: false,
         kwargs: {patch_size: 8, dim: 32, depth: 1, heads: 2, num_landmarks: 8}}
"""


def test_nested_yaml_kwargs_reach_the_builder(write_suite):
    suite = load_suite(write_suite(NESTED))
    cases = expand(suite, "cpu")
    linf, nys = (c for c in cases if c.provider == "vit_pytorch")
    assert linf.kwargs["transformer"] == {"type": "linformer", "depth": 1, "heads": 2, "k": 8}
    assert not linf.port and linf.label == "vit_pytorch/efficient.ViT" and nys.label == "vit_pytorch/nystromformer"
    model, img = get_provider("vit_pytorch").build(linf.model, dict(linf.kwargs), linf.settings.img_size)
    assert type(model.transformer).__name__ == "Linformer" and img == 32
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    bad = NESTED.replace("type: linformer", "type: linformr")
    with pytest.raises(SuiteError, match=r"pairs\.0\.candidates\.0.*kwargs\.transformer\.type: unknown transformer "
                                         "'linformr'"):
        load_suite(write_suite(bad, "bad.yaml"))


def test_port_with_a_state_raises_and_says_port_false():
    provider = get_provider("vit_pytorch")
    model, _ = provider.build("ViT", {**SIDES["ViT"][1], "num_classes": 5}, 32)
    state = {k: v.numpy() for k, v in model.state_dict().items()}  # even its own keys: no port is defined
    with pytest.raises(ValueError, match="set 'port: false' on this side"):
        provider.port(model, state)


def test_finetune_builds_them_with_the_datasets_classes_and_imagenet_preprocessing():
    from vitbench.finetune import data as D
    from vitbench.finetune.job import build_classifier
    from vitbench.suite import SideSpec

    side = SideSpec("vit_pytorch", "performer", dict(SIDES["performer"][1]), "vit_pytorch/performer", port=False)
    model, img = build_classifier(side, 32, 10, seed=0)
    assert img == 32 and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert get_provider("vit_pytorch").preprocessing(model) is None
    cfg = D.data_config(model)  # no pretrained_cfg: ImageNet's, and the config says where it came from
    assert cfg["mean"] == D.IMAGENET_MEAN and cfg["std"] == D.IMAGENET_STD and cfg["crop_pct"] == 0.875
    assert cfg["source"].startswith("ImageNet defaults")


@pytest.mark.parametrize("suite", ["efficient_attention.yaml", "finetune.yaml"])
def test_shipped_suites_with_vit_pytorch_sides_validate(cli, suite):
    path = Path(__file__).resolve().parent.parent / "suites" / suite
    res = cli("validate", path)
    assert res.exit_code == 0, res.output
    sides = [c for p in load_suite(path).pairs for c in p.candidates if c.provider == "vit_pytorch"]
    assert len(sides) >= 3 and all(not c.port for c in sides)


FORGOT = """
name: forgot
defaults: {batch_sizes: [1], img_size: 32, rounds: 4, processes: 1, warmup_iters: 1, min_iters: 2,
           min_seconds: 0.1, timeout_s: 120}
pairs:
  - name: p
    reference: {provider: timm, model: test_vit, kwargs: {depth: 1}}
    candidates:
      - {provider: vit_pytorch, model: ViT, label: vp-ok, port: false,
         kwargs: {patch_size: 8, dim: 32, depth: 1, heads: 2}}
      - {provider: vit_pytorch, model: ViT, label: vp-forgot, kwargs: {patch_size: 8, dim: 32, depth: 1, heads: 2}}
"""


@pytest.mark.slow
def test_run_reports_skipped_numerics_and_a_forgotten_port_false(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    res = cli("run", write_suite(FORGOT), "--device", "cpu", "--out", out)
    with open(out / "cases.csv", newline="") as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}
    assert res.exit_code == 1, res.output  # the forgotten port is a failed check
    ok, forgot = rows["vp-ok"], rows["vp-forgot"]
    assert ok["status"] == "ok" and ok["numerics_status"] == "skipped" and "port: false" in ok["numerics_error"]
    assert float(ok["samples_per_sec"]) > 0 and float(ok["gmacs"]) > 0 and ok["attention"] == "exact"
    assert forgot["status"] == "ok" and forgot["numerics_status"] == "port_failed"
    assert "set 'port: false' on this side" in forgot["numerics_error"]


def test_a_missing_package_fails_the_side_in_one_line_naming_what_to_install(monkeypatch):
    import importlib.util

    from vitbench.providers.vit_pytorch_provider import VitPytorchProvider

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "linformer" else real(m, *a))
    kw = {"dim": 32, "patch_size": 8, "num_classes": 10, "transformer": {"type": "linformer", "depth": 1,
                                                                          "heads": 2, "k": 16}}
    with pytest.raises(RuntimeError, match=r"^vit_pytorch efficient.ViT needs linformer "
                                           r"\(pip install 'vitbench\[references\]'\)$"):
        VitPytorchProvider().build("efficient.ViT", kw, 32)
