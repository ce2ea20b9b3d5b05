"""The port assistant: aligning a renamed model with timm's (fused vs separate q/k/v, its own names, another
registration order), the automatic port, `vitbench port` and the function it writes, and where two models part
(per-block table, first divergence, attention maps)."""
from __future__ import annotations

import csv
import textwrap

import pytest
import timm
import torch

from vitbench.align import align, function_source, ported_state, reference_tensors, torch_tensors

THEIRS = '''
import torch
from torch import nn
import torch.nn.functional as F


class Unit(nn.Module):
    def __init__(self, d, h, extra_norm=False):
        super().__init__()
        self.h = h
        self.ln_attn = nn.LayerNorm(d, eps=1e-6)
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.merge = nn.Linear(d, d)
        self.ln_ff = nn.LayerNorm(d, eps=1e-6)
        self.ff_in, self.ff_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.post = nn.LayerNorm(d, eps=1e-6) if extra_norm else nn.Identity()

    def forward(self, x):
        b, n, d = x.shape
        y = self.ln_attn(x)
        q, k, v = (f(y).reshape(b, n, self.h, d // self.h).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        x = x + self.merge(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return self.post(x + self.ff_out(F.gelu(self.ff_in(self.ln_ff(x)))))


class TheirViT(nn.Module):
    """Names of its own, separate q/k/v, the head registered before the blocks."""

    def __init__(self, img_size=32, patch=16, d=192, depth=2, h=3, num_classes=1000, extra_norm=False):
        super().__init__()
        self.classifier = nn.Linear(d, num_classes)
        self.final_ln = nn.LayerNorm(d, eps=1e-6)
        self.patchify = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, (img_size // patch) ** 2 + 1, d))
        self.units = nn.ModuleList(Unit(d, h, extra_norm and i == 1) for i in range(depth))

    def forward(self, x):
        t = self.patchify(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        for u in self.units:
            t = u(t)
        return self.classifier(self.final_ln(t)[:, 0])


def with_extra_norm(**kw):
    return TheirViT(extra_norm=True, **kw)


def nudged_timm(**kw):
    import timm
    m = timm.create_model("vit_tiny_patch16_224", **kw)
    m.blocks[2].register_forward_hook(lambda mod, inp, out: out + 5e-2 * torch.linspace(-1, 1, out.shape[-1]))
    return m
'''


def torch_tensors_dict(model: torch.nn.Module) -> dict:
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture
def theirs(tmp_path, monkeypatch):
    (tmp_path / "theirs.py").write_text(THEIRS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import theirs as mod

    return importlib.reload(mod)


def _timm(depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=depth)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m.eval()


def test_a_renamed_vit_aligns_completely_and_computes_what_timm_computes(theirs):
    ref = _timm()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    mine = theirs.TheirViT().eval()
    a = align(reference_tensors(state), torch_tensors(mine))
    assert a.complete, a.summary()
    assert {m.how for m in a.matches} == {"qkv", "role", "shape"}  # nothing shares a name with timm's
    qkv = [m for m in a.matches if m.candidate == "units.1.to_k.weight"]
    assert [(m.reference, m.transform) for m in qkv] == [("blocks.1.attn.qkv.weight", "qkv_part 1 same")]
    mine.load_state_dict({k: torch.as_tensor(v) for k, v in ported_state(a, state).items()}, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(mine(x), ref(x), atol=1e-5, rtol=1e-5)
    # the function `vitbench port` writes does the same when it lives in the module
    ns: dict = {}
    exec(function_source(a, "torch", "timm", "theirs"), ns)  # noqa: S102
    again = theirs.TheirViT().eval()
    again.load_state_dict(ns["checkpoint_filter_fn"]({k: torch.as_tensor(v) for k, v in state.items()}, again))
    with torch.inference_mode():
        torch.testing.assert_close(again(x), ref(x), atol=1e-5, rtol=1e-5)


def test_an_extra_layer_or_interchangeable_tensors_are_never_guessed(theirs):
    state = {k: v.numpy() for k, v in _timm().state_dict().items()}
    extra = align(reference_tensors(state), torch_tensors(theirs.with_extra_norm()))
    assert not extra.complete and (extra.missing or extra.ambiguous)
    blind = {k.replace("ln_attn", "n_x").replace("ln_ff", "n_y"): v for k, v in  # names that do not say which
             torch_tensors_dict(theirs.TheirViT()).items()}
    a = align(reference_tensors(state), [t for t in reference_tensors(blind)])
    assert not a.complete and any("n_x" in x and "n_y" in x for x in a.ambiguous), a.summary()


@pytest.mark.slow
def test_automatic_port_port_command_and_first_divergence(cli, write_suite, tmp_path, theirs):
    suite = write_suite("""
    name: portcheck
    defaults: {img_size: 32, batch_sizes: [1], min_seconds: 0, rounds: 2, processes: 1, warmup_iters: 1,
               min_iters: 2, tolerance: {max_abs: 1.0e-5}}
    pairs:
      - name: renamed
        reference: {provider: timm, model: vit_tiny_patch16_224, kwargs: {depth: 2}}
        candidates: [{provider: import, model: "theirs:TheirViT"}]
      - name: extra_norm
        reference: {provider: timm, model: vit_tiny_patch16_224, kwargs: {depth: 2}}
        candidates: [{provider: import, model: "theirs:with_extra_norm"}]
      - name: nudged
        reference: {provider: timm, model: vit_tiny_patch16_224, kwargs: {depth: 4}}
        candidates: [{provider: import, model: "theirs:nudged_timm", kwargs: {depth: 4}}]
      - name: ours
        reference: {provider: timm, model: vit_tiny_patch16_224, kwargs: {depth: 2}}
        candidates: [{provider: vitbench, model: vit_tiny_patch16_224, kwargs: {depth: 2}}]
    """)
    (tmp_path / "theirs.py").write_text(THEIRS)
    res = cli("run", suite, "--device", "cpu", "--out", tmp_path / "o")
    with open(tmp_path / "o" / "cases.csv", newline="") as f:
        c = {r["pair"]: r for r in csv.DictReader(f) if r["role"] == "candidate"}
    assert c["renamed"]["numerics_status"] == "ok" and c["renamed"]["port_method"] == "auto", c["renamed"]
    assert c["ours"]["port_method"] == "strict" and c["ours"]["numerics_status"] == "ok"
    assert c["extra_norm"]["numerics_status"] == "port_failed" and "vitbench port" in c["extra_norm"]["numerics_error"]
    nudged = c["nudged"]
    assert nudged["numerics_status"] == "fail" and nudged["first_divergence"].startswith("blocks.2 ("), nudged
    with open(tmp_path / "o" / "numerics" / f"{nudged['case_id']}.csv", newline="") as f:
        table = list(csv.DictReader(f))
    early = [r for r in table if r["block"] in ("blocks.0", "blocks.1")]
    assert len(early) == 2 and all(float(r["max_abs_diff"]) <= 1e-5 for r in early)
    with open(tmp_path / "o" / "numerics" / f"{c['ours']['case_id']}.csv", newline="") as f:
        ours = list(csv.DictReader(f))
    assert ours and all(r["attn_max_abs_diff"] != "" and float(r["attn_max_abs_diff"]) < 1e-5
                        for r in ours if r["block"].startswith("blocks."))
    with open(tmp_path / "o" / "numerics" / f"{c['renamed']['case_id']}.csv", newline="") as f:
        assert [r["candidate_module"] for r in csv.DictReader(f)] == ["units.0", "units.1"]
    assert "fails from blocks.2" in res.output and (tmp_path / "o" / "divergence.png").exists()
    # vitbench port: the table, the function it writes, and that function used as the module's hook
    out = cli("port", suite, "--only", "renamed", "--write", tmp_path / "fn.py")
    assert out.exit_code == 0 and "qkv_part 1" in out.output, out.output
    assert cli("port", suite, "--only", "extra_norm").exit_code == 1
    (tmp_path / "hooked.py").write_text(THEIRS + "\n\n" + (tmp_path / "fn.py").read_text())
    again = write_suite(textwrap.dedent(suite.read_text()).replace("theirs:TheirViT", "hooked:TheirViT"), "s2.yaml")
    res = cli("run", again, "--device", "cpu", "--only", "renamed", "--out", tmp_path / "o2")
    with open(tmp_path / "o2" / "cases.csv", newline="") as f:
        (cand,) = [r for r in csv.DictReader(f) if r["role"] == "candidate"]
    assert cand["port_method"] == "hook" and cand["numerics_status"] == "ok"


KERAS_NUDGED = '''
from vitbench.models.keras import create_model
from vitbench.port.keras import load_timm_state_dict


def nudged_vit(**kw):
    return create_model("vit_tiny_patch16_224", **kw)


def port_weights(model, state):
    load_timm_state_dict(model, state)
    bias = model.blocks[2].mlp.fc2.bias
    b = bias.numpy()
    b[0] += 0.5  # block 2 computes something else (one channel: a shift of every channel the norms would undo)
    bias.assign(b)
'''


def test_keras_sides_are_compared_block_by_block_through_forward_intermediates(cli, write_suite, tmp_path):
    """A Keras candidate's forward_intermediates against the torch reference's: our Keras ViT agrees at every block,
    one nudged at block 2 fails from intermediates.2 with blocks 0-1 within tolerance."""
    (tmp_path / "kn.py").write_text(KERAS_NUDGED)
    suite = write_suite("""
    name: kblocks
    defaults: {img_size: 32, batch_sizes: [1], min_seconds: 0, rounds: 2, processes: 1, warmup_iters: 1,
               min_iters: 2, tolerance: {max_abs: 1.0e-4}}
    pairs:
      - name: k
        reference: {provider: timm, model: vit_tiny_patch16_224, kwargs: {depth: 4}}
        candidates:
          - {provider: vitbench_keras, model: vit_tiny_patch16_224, kwargs: {depth: 4}}
          - {provider: keras_import, model: "kn:nudged_vit", kwargs: {depth: 4}, label: nudged}
    """)
    cli("run", suite, "--device", "cpu", "--out", tmp_path / "o")
    with open(tmp_path / "o" / "cases.csv", newline="") as f:
        c = {r["label"]: r for r in csv.DictReader(f) if r["role"] == "candidate"}

    def table(row: dict[str, str]) -> list[dict[str, str]]:
        with open(tmp_path / "o" / "numerics" / f"{row['case_id']}.csv", newline="") as f:
            return list(csv.DictReader(f))

    ours = c["vitbench_keras/vit_tiny_patch16_224"]
    assert ours["numerics_status"] == "ok" and ours["first_divergence"] == ""
    assert [r["block"] for r in table(ours)] == [f"intermediates.{i}" for i in range(4)]
    assert all(float(r["max_abs_diff"]) < 1e-4 for r in table(ours))
    nudged = c["nudged"]
    assert nudged["numerics_status"] == "fail" and nudged["first_divergence"].startswith("intermediates.2 ("), nudged
    assert all(float(r["max_abs_diff"]) < 1e-4 for r in table(nudged)[:2])
