"""Efficient attention variants: shapes, determinism, weight reuse from timm, per-sample independence,
atrous attention against a brute-force reference, and FLOPs below exact attention at 3137 tokens."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from vitbench.measure.flops import count_macs_acts
from vitbench.models import torch as ours
from vitbench.models.torch import Attention
from vitbench.models.torch import efficient_attention as ea
from vitbench.models.torch.vit import checkpoint_filter_fn

DIM, HEADS = 32, 4


def make(name: str, grid=(14, 14), **kw) -> torch.nn.Module:
    n = grid[0] * grid[1] + 1
    extra = {"linformer": {"seq_len": n, "k": 16}, "performer": {"nb_features": 64}, "nystrom": {"num_landmarks": 8},
             "atrous": {"grid": grid, "window": 7, "rates": (1, 2)},
             "hybrid": {"grid": grid, "window": 7, "rates": (1, 2)}}[name]
    torch.manual_seed(0)
    return ea.VARIANTS[name](DIM, HEADS, True, **{**extra, **kw}).eval()


@pytest.mark.parametrize("name", sorted(ea.VARIANTS))
def test_shapes_and_determinism(name):
    m = make(name)
    x = torch.randn(3, 197, DIM)
    with torch.no_grad():
        a, b = m(x), m(x)
    assert a.shape == (3, 197, DIM) and torch.isfinite(a).all()
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(ea.VARIANTS))
def test_each_sample_is_independent_of_the_rest_of_the_batch(name):
    m = make(name)
    x = torch.randn(4, 197, DIM)
    with torch.no_grad():
        alone = m(x[:1])
        batched = m(torch.cat([x[:1], 100 * x[1:]]))[:1]  # wildly different neighbours in the batch
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-4)


def test_performer_features_are_fixed_until_redrawn():
    m = make("performer")
    f = m.features.clone()
    x = torch.randn(1, 197, DIM)
    with torch.no_grad():
        y = m(x)
        assert torch.equal(make("performer").features, f)  # same seed, same features
        m.redraw_features()
        assert not torch.equal(m.features, f)
        assert not torch.equal(m(x), y)


def test_performer_and_nystrom_approach_exact_attention():
    exact = Attention(DIM, num_heads=HEADS, qkv_bias=True).eval()
    x = torch.randn(2, 197, DIM)
    with torch.no_grad():
        ref = exact(x)
        for name, kw in (("performer", {"nb_features": 4096}), ("nystrom", {"num_landmarks": 98})):
            m = make(name, **kw)
            m.load_state_dict(ea.checkpoint_filter_fn(exact.state_dict(), m), strict=True)
            cos = F.cosine_similarity(m(x).flatten(1), ref.flatten(1)).min().item()
            print(f"{name} cosine to exact {cos:.4f}")
            assert cos > 0.99


def _brute_force_atrous(q, k, v, grid, rate, win):
    """Per query token: softmax over exactly the tokens in its window of its rate sub-grid."""
    gh, gw = grid
    out = torch.zeros_like(q)
    for i in range(gh):
        for j in range(gw):
            members = [a * gw + b for a in range(gh) for b in range(gw)
                       if a % rate == i % rate and b % rate == j % rate
                       and (a // rate) // win == (i // rate) // win and (b // rate) // win == (j // rate) // win]
            t = i * gw + j
            att = torch.softmax(q[:, :, t:t + 1] @ k[:, :, members].transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
            out[:, :, t] = (att @ v[:, :, members])[:, :, 0]
    return out


@pytest.mark.parametrize("rate,win,grid", [(1, 4, (8, 8)), (2, 4, (8, 8)), (2, 3, (6, 12)), (4, 2, (8, 8))])
def test_atrous_attention_matches_brute_force(rate, win, grid):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, grid[0] * grid[1], 8, generator=g, dtype=torch.float64) for _ in range(3))
    got = ea.atrous_window_attention(q, k, v, grid, rate, win)
    want = _brute_force_atrous(q, k, v, grid, rate, win)
    print(f"rate {rate} win {win} grid {grid}: max abs diff {(got - want).abs().max().item():.2e}")
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="not a multiple"):
        ea.atrous_window_attention(q, k, v, grid, rate, win + 1)


@pytest.mark.parametrize("name", sorted(ea.VARIANTS))
def test_vit_variant_starts_from_timm_weights(name):
    theirs = timm.create_model("vit_small_patch16_224", depth=2).eval()
    kw = {"linformer": {"k": 32}, "performer": {"nb_features": 64}}.get(name, {})
    mine = ours.create_model("vit_small_patch16_224", depth=2, attention=name, attention_kwargs=kw).eval()
    mine.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), mine), strict=True)
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.attn.proj.bias", "blocks.1.mlp.fc2.weight", "head.weight"):
        assert torch.equal(mine.state_dict()[key], theirs.state_dict()[key])
    own = set(ea.new_parameter_names(mine))  # only these kept their own init; everything else came from timm
    assert own == {k for k in mine.state_dict() if k not in theirs.state_dict()}
    assert bool(own) == (name in ea.NEW_PARAMETERS)
    other = timm.create_model("vit_small_patch16_224", depth=2).eval()  # the same architecture, other weights
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        cos = F.cosine_similarity(mine(x), theirs(x)).item()
        baseline = F.cosine_similarity(other(x), theirs(x)).item()
    print(f"{name}: cosine of logits to timm's exact ViT {cos:.4f} (another ViT's: {baseline:.4f})")
    # measured (2 seeds): 0.985-1.0 for every variant, |baseline| < 0.1: an approximation of the same network
    assert cos > 0.97 and abs(baseline) < 0.5


def test_every_variant_counts_fewer_flops_than_exact_at_3137_tokens():
    exact = Attention(384, num_heads=6, qkv_bias=True).eval()
    x = torch.randn(1, 3137, 384)
    ref, _ = count_macs_acts(exact, x)
    for name, kw in {"linformer": {"seq_len": 3137, "k": 64}, "performer": {"nb_features": 128},
                     "nystrom": {"num_landmarks": 32}, "atrous": {"grid": (56, 56), "window": 7, "rates": (1, 2)},
                     "hybrid": {"grid": (56, 56), "window": 7, "rates": (1, 2)}}.items():
        macs, _ = count_macs_acts(ea.VARIANTS[name](384, 6, True, **kw).eval(), x)
        print(f"{name}: {macs / 1e9:.2f} GMACs vs exact {ref / 1e9:.2f}")
        assert macs < ref / 2
