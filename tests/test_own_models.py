"""Your own model in either framework: the shipped examples (a torch ViT with its checkpoint_filter_fn, a Keras
ViT with its port_weights) against timm and keras-hub, a Keras reference handing its weights to torch and Keras
candidates, and a provider plug-in installed through an entry point."""
from __future__ import annotations

import csv
import shutil
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = "rounds: 2, processes: 1, warmup_iters: 1, min_iters: 2, min_seconds: 0"


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_shipped_examples_run_at_tiny_sizes(cli, tmp_path):
    """examples/my_models.yaml as shipped, shrunk (2 blocks, 32 px, few rounds): every row ok, every port ok."""
    for f in ("my_vit_torch.py", "my_vit_keras.py"):
        shutil.copy(ROOT / "examples" / f, tmp_path / f)
    text = (ROOT / "examples" / "my_models.yaml").read_text()
    assert cli("validate", ROOT / "examples" / "my_models.yaml").exit_code == 0
    text = text.replace("img_size: 224", "img_size: 32").replace("rounds: 24", "rounds: 2").replace(
        "processes: 6", "processes: 1").replace("min_seconds: 6", "min_seconds: 0")
    for model in ('model: vit_small_patch16_224}', 'model: vit_small_patch16_224,'):
        text = text.replace(model, model[:-1] + ", kwargs: {depth: 2}" + model[-1])
    text = text.replace('model: "my_vit_torch:my_vit_small"', 'model: "my_vit_torch:my_vit_small", kwargs: {depth: 2}')
    text = text.replace('model: "my_vit_keras:MyViT"', 'model: "my_vit_keras:MyViT", kwargs: {depth: 2}')
    (tmp_path / "my_models.yaml").write_text(text)
    res = cli("run", tmp_path / "my_models.yaml", "--device", "cpu", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    got = rows(tmp_path / "o")
    assert len(got) == 7 and all(r["status"] == "ok" for r in got)  # the A/A control has no cases.csv row
    cands = [r for r in got if r["role"] == "candidate"]
    assert {r["numerics_status"] for r in cands} == {"ok"} and max(float(r["max_abs_diff"]) for r in cands) < 1e-4
    with open(tmp_path / "o" / "pairs.csv", newline="") as f:
        assert "control" in {p["comparison"] for p in csv.DictReader(f)}


@pytest.mark.slow
def test_a_keras_reference_hands_its_weights_to_torch_and_keras_candidates(cli, write_suite, tmp_path):
    """keras-hub's ViT as the reference: its weights go out under timm's names, so timm's own torch ViT and our
    Keras twin both port from it and agree with its output."""
    suite = write_suite(f"""
    name: kref
    defaults: {{{FAST}, img_size: 32, perturb_std: 0.02, tolerance: {{max_abs: 1.0e-4}}}}
    pairs:
      - name: k
        reference: {{provider: keras_hub, model: vit_small_patch16_224, backend: tensorflow,
                     kwargs: {{depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8, num_classes: 10}}}}
        candidates:
          - {{provider: vitbench_keras, model: vit_small_patch16_224,
              kwargs: {{depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8, num_classes: 10}}}}
          - {{provider: timm, model: vit_small_patch16_224,
              kwargs: {{depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8, num_classes: 10}}}}
    """)
    res = cli("run", suite, "--device", "cpu", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    got = {r["provider"]: r for r in rows(tmp_path / "o")}
    assert got["keras_hub"]["numerics_status"] == "reference"
    for p in ("vitbench_keras", "timm"):
        assert got[p]["numerics_status"] == "ok" and float(got[p]["max_abs_diff"]) < 1e-4, got[p]


def test_a_provider_plug_in_from_an_installed_package(cli, write_suite, tmp_path, monkeypatch):
    """A package declaring the entry-point group vitbench.providers adds a provider: accepted by the schema, shown
    by vitbench list with its package, run in the workers; a broken one is one line naming its package."""
    from vitbench import providers

    plug = tmp_path / "plug"
    (plug / "vb_demo_provider-0.1.dist-info").mkdir(parents=True)
    (plug / "vb_demo_provider-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vb-demo-provider\nVersion: 0.1\n")
    (plug / "vb_demo_provider-0.1.dist-info" / "entry_points.txt").write_text(
        "[vitbench.providers]\ndemo = vb_demo_provider:PROVIDER\nbroken = vb_demo_missing:PROVIDER\n")
    (plug / "vb_demo_provider.py").write_text(textwrap.dedent('''
        class Demo:
            """vitbench's own test network under the name 'tiny', through the documented protocol only."""
            name, framework = "demo", "torch"

            def check(self, model):
                return None if model == "tiny" else f"demo: unknown model {model!r}"

            def build(self, model, kwargs, img_size):
                from vitbench.testing import TinyNet
                return TinyNet(img_size=img_size or 32), img_size or 32

            def port(self, model, state):
                import torch
                model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)

            def count_macs(self, model, x):
                return None

            def preprocessing(self, model):
                return None

            def list_names(self):
                return ["tiny"]


        PROVIDER = Demo()
    '''))
    monkeypatch.syspath_prepend(str(plug))
    monkeypatch.setenv("PYTHONPATH", str(plug))
    providers.reset_plugins()
    try:
        listed = cli("list").output
        assert "demo (plug-in, vb-demo-provider 0.1): tiny" in listed
        assert "broken (plug-in): provider plug-in 'broken' (vb-demo-provider 0.1) failed to load" in listed
        suite = write_suite(f"""
        name: plug
        defaults: {{{FAST}, img_size: 32}}
        pairs:
          - name: demo
            reference: {{provider: import, model: "vitbench.testing:TinyNet"}}
            candidates: [{{provider: demo, model: tiny}}]
        """)
        res = cli("run", suite, "--device", "cpu", "--out", tmp_path / "o")
        assert res.exit_code == 0, res.output
        cand = [r for r in rows(tmp_path / "o") if r["role"] == "candidate"][0]
        assert cand["status"] == "ok" and cand["numerics_status"] == "ok"
        bad = cli("validate", write_suite(suite.read_text().replace("provider: demo", "provider: broken"), "b.yaml"))
        assert bad.exit_code == 2 and "(vb-demo-provider 0.1) failed to load: ModuleNotFoundError" in bad.output
        unknown = cli("validate", write_suite(suite.read_text().replace("provider: demo", "provider: nope"), "u.yaml"))
        assert unknown.exit_code == 2 and "built-in: timm" in unknown.output
        assert "plug-ins: demo, broken" in unknown.output
    finally:
        providers.reset_plugins()
