"""TF Model Garden as a side (provider tf_models): its ViT and attention layer, in tf-keras workers of their own,
timm's weights ported strictly; tiny configs. Model Garden is installed apart from the dev extra (README
"References"): these tests skip without it, unless VITBENCH_REQUIRE_TF_MODELS=1 (CI) makes a missing install fail."""
from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from vitbench.modes import modes_for
from vitbench.providers import check_side, framework_of, get_provider
from vitbench.runner.launch import worker_kind

INSTALLED = importlib.util.find_spec("official") is not None and importlib.util.find_spec("tf_keras") is not None
needs_tf_models = pytest.mark.skipif(not INSTALLED and os.environ.get("VITBENCH_REQUIRE_TF_MODELS") != "1",
                                     reason="TF Model Garden not installed (README: References)")

TINY = "{embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, num_classes: 10}"
SUITE = f"""
name: tfm
defaults: {{batch_sizes: [1], rounds: 2, processes: 1, warmup_iters: 1, min_iters: 2, min_seconds: 0,
           perturb_std: 0.05, tolerance: {{max_abs: 1.0e-4}}}}
pairs:
  - name: vit
    img_size: 32
    reference: {{provider: timm, model: vit_small_patch16_224, kwargs: {TINY}}}
    candidates:
      - {{provider: tf_models, model: vit_small_patch16_224, backend: tensorflow, kwargs: {TINY},
         compile: [eager, graph, xla]}}
  - name: mhsa
    tokens: 50
    dim: 64
    tolerance: {{max_abs: 1.0e-5}}
    reference: {{provider: import, model: "timm.layers:Attention", kwargs: {{dim: 64, num_heads: 2, qkv_bias: true}}}}
    candidates:
      - {{provider: tf_models, model: MultiHeadAttention, backend: tensorflow, kwargs: {{num_heads: 2, key_dim: 32}}}}
  - name: mg_reference
    img_size: 32
    tolerance: {{max_abs: 1.0e-2}}
    reference: {{provider: tf_models, model: vit_small_patch16_224, backend: tensorflow, kwargs: {TINY}}}
    candidates:
      - {{provider: timm, model: vit_small_patch16_224, kwargs: {TINY}}}
"""


def test_tf_models_sides_get_a_worker_kind_of_their_own_on_tensorflow_only():
    assert framework_of("tf_models") == "tf_keras"
    assert worker_kind("tf_keras", "tensorflow") == "tf-keras" != worker_kind("keras", "tensorflow")
    assert modes_for("tf_keras", "tensorflow") == ("eager", "graph", "xla")
    def side(model: str, backend: str | None = "tensorflow", **kwargs) -> SimpleNamespace:
        return SimpleNamespace(provider="tf_models", model=model, backend=backend, kwargs=kwargs)

    assert check_side(side("vit_small_patch16_224")) is None and check_side(side("MultiHeadAttention", None)) is None
    assert "runs on backend tensorflow only, not 'jax'" in check_side(side("vit_small_patch16_224", "jax"))
    assert "did you mean 'vit_small_patch16_224'" in check_side(side("vit_small_patch16_244"))
    assert "unsupported kwargs ['dim']" in check_side(side("MultiHeadAttention", dim=64))


def test_a_missing_model_garden_fails_in_one_line_naming_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "official" else real(name, *a))
    with pytest.raises(RuntimeError) as err:
        get_provider("tf_models").build("vit_small_patch16_224", {}, 224)
    msg = str(err.value)
    assert "\n" not in msg and "needs tf-models-no-deps (" in msg
    assert "pip install --no-deps tf-models-no-deps==2.19.0" in msg


PORT_CHECK = """
import numpy as np, torch, timm
from vitbench.port import PortError
from vitbench.providers import get_provider
P = get_provider("tf_models")
torch.manual_seed(0)
kw = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, num_classes=10)
ref = timm.create_model("vit_small_patch16_224", img_size=32, **kw).eval()
with torch.no_grad():
    for p in ref.parameters():
        p.add_(torch.randn_like(p) * 0.05)
state = {k: v.numpy() for k, v in ref.state_dict().items()}
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    want = ref(x).numpy()
m, size = P.build("vit_small_patch16_224", kw, 32)
assert size == 32 and m.count_params() == sum(p.numel() for p in ref.parameters())
P.port(m, state)
xk = x.permute(0, 2, 3, 1).numpy()
built = np.abs(np.asarray(m(xk)) - want).max()
context, what = P.without_differences(m)
with context:
    exact = np.abs(np.asarray(m(xk)) - want).max()
again = np.abs(np.asarray(m(xk)) - want).max()
assert exact <= 1e-5 < built == again, (built, exact, again)  # tanh GELU is the only difference; restored after
out = P.export_state(m)
assert sorted(out) == sorted(state) and all(np.array_equal(out[k], state[k]) for k in state)
try:
    P.port(m, {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.bias"})
    raise SystemExit("a port missing a key passed")
except PortError as e:
    assert e.missing == ["blocks.1.attn.qkv.bias"], e.missing
import sys
assert "keras" not in sys.modules, "Keras 3 imported beside tf-keras"
print("PORT-OK", built, exact)
"""


@needs_tf_models
def test_model_garden_vit_takes_timm_weights_exactly_but_for_its_gelu():
    # its own process, as a tf-keras worker would be: Keras 3 must never be imported beside tf-keras
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", PORT_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "PORT-OK" in res.stdout, res.stdout[-2000:] + res.stderr[-3000:]


@pytest.mark.slow
@needs_tf_models
def test_model_garden_sides_run_eager_graph_and_xla_against_timm(cli, write_suite, tmp_path):
    out = tmp_path / "out"
    res = cli("run", write_suite(SUITE), "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    with open(out / "cases.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["role"] == "candidate"]
    assert [(r["pair"], r["compile_mode"], r["status"], r["numerics_status"], r["framework"]) for r in rows] == [
        ("vit", m, "ok", "ok", "tf_keras") for m in ("eager", "graph", "xla")] + [
        ("mhsa", "eager", "ok", "ok", "tf_keras"), ("mg_reference", "eager", "ok", "ok", "torch")]
    vit = rows[0]
    assert "tanh approximation of GELU" in vit["numerics_error"] and "the port is exact" in vit["numerics_error"]
    assert 0 < float(vit["max_abs_diff"]) and float(vit["gmacs"]) > 0 and vit["keras_version"].startswith("2.")
    assert float(rows[3]["max_abs_diff"]) <= 1e-5 and not rows[3]["numerics_error"]
    # Model Garden as the reference: its weights handed out under timm's names, timm differs by the GELU alone
    assert 0 < float(rows[4]["max_abs_diff"]) < 1e-2 and rows[4]["port_method"] == "strict"
