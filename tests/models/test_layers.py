import pytest
import torch
import torch.nn.functional as F

from vitbench.models.torch import Attention, sdpa


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 7, 16, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("scale", [None, 0.05, 0.25, 1.0, 3.0])
def test_sdpa_matches_torch_for_any_scale(qkv, scale):
    q, k, v = qkv
    ours = sdpa(q, k, v, scale=scale)
    ref = F.scaled_dot_product_attention(q, k, v, scale=scale)
    diff = (ours - ref).abs().max().item()
    print(f"scale={scale} max abs diff {diff:.2e}")
    assert diff < 1e-12


def test_sdpa_bool_and_float_masks(qkv):
    q, k, v = qkv
    bool_mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    bool_mask.fill_diagonal_(True)  # every row attends somewhere
    float_mask = torch.randn(2, 1, 7, 7, dtype=torch.float64)
    for mask in (bool_mask, float_mask):
        ours = sdpa(q, k, v, attn_mask=mask, scale=0.3)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        assert (ours - ref).abs().max().item() < 1e-12


def test_sdpa_causal_and_cross_lengths():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64)
    for causal in (False, True):
        ours = sdpa(q, k, v, is_causal=causal, scale=0.7)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.7)
        assert ours.shape == (1, 2, 5, 4)
        assert (ours - ref).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="not both"):
        sdpa(q, k, v, attn_mask=torch.ones(5, 9, dtype=torch.bool), is_causal=True)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_sdpa_equals_the_full_map_path(chunk):
    """Queries in blocks (a last partial block, chunk > L too): the rows of ``sdpa`` (to BLAS rounding: a block's
    matmul may sum in another order), with every mask kind."""
    from vitbench.models.torch.layers import SDPA, sdpa_chunked

    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 20, 8, generator=g)
    k, v = torch.randn(2, 3, 11, 8, generator=g), torch.randn(2, 3, 11, 5, generator=g)
    masks = [None, torch.rand(20, 11, generator=g) > 0.3, torch.randn(2, 1, 20, 11, generator=g),
             torch.randn(1, 1, 1, 11, generator=g)]
    for mask in masks:
        full = sdpa(q, k, v, attn_mask=mask, scale=0.4)
        got = sdpa_chunked(q, k, v, attn_mask=mask, scale=0.4, chunk_size=chunk)
        assert torch.allclose(got, full, atol=1e-6, rtol=0)
    causal = sdpa_chunked(q, q, q, is_causal=True, chunk_size=chunk)
    assert torch.allclose(causal, F.scaled_dot_product_attention(q, q, q, is_causal=True), atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        sdpa_chunked(q, k, v, attn_mask=masks[1], is_causal=True)
    x = torch.randn(2, 20, 3 * 24, generator=g)
    ref = SDPA(num_heads=3, impl="torch")(x)
    assert torch.allclose(SDPA(num_heads=3, impl="chunked", chunk_size=chunk)(x), ref, atol=1e-6)


def test_sdpa_returns_attention_map(qkv):
    q, k, v = qkv
    out, attn = sdpa(q, k, v, return_attn=True)
    assert attn.shape == (2, 3, 7, 7)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64))
    torch.testing.assert_close(out, attn @ v)


def test_attention_fused_and_manual_paths_agree():
    torch.manual_seed(0)
    fused = Attention(32, num_heads=4, qkv_bias=True, fused_attn=True).eval()
    manual = Attention(32, num_heads=4, qkv_bias=True, fused_attn=False).eval()
    manual.load_state_dict(fused.state_dict())
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        a, b = fused(x), manual(x)
        c, attn = fused(x, return_attn=True)
    print(f"fused vs manual max abs diff {(a - b).abs().max().item():.2e}")
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)
    assert attn.shape == (2, 4, 10, 10)


def test_attention_uses_timm_names():
    keys = set(Attention(16, num_heads=2, qkv_bias=True, qk_norm=True).state_dict())
    assert {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "q_norm.weight", "k_norm.weight"} <= keys
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, num_heads=3)
