"""Our Keras 3 layers: sdpa, build, weights, serialization round trip, timm port parity, masks on every backend.
The ViT itself: test_keras_vit.py."""
from __future__ import annotations

import os

import numpy as np
import pytest
import timm  # noqa: E402  (torch/timm before TensorFlow: see conftest)
import torch  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
from keras_backends import BACKENDS  # noqa: E402  (tests/models is on sys.path)

from vitbench.models import keras as kours  # noqa: E402
from vitbench.port import keras as kport  # noqa: E402
from vitbench.providers.keras_provider import port_mha  # noqa: E402


def _np_sdpa(q, k, v, scale, mask=None):
    a = (q * scale) @ np.swapaxes(k, -1, -2)
    if mask is not None:
        a = np.where(mask, a, -np.inf)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return a @ v


@pytest.mark.parametrize("scale", [None, 0.1, 1.0])
def test_keras_sdpa_matches_reference_for_any_scale_and_masks(scale):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 7, 8)).astype("float32") for _ in range(3))
    s = 8**-0.5 if scale is None else scale
    got = keras.ops.convert_to_numpy(kours.sdpa(q, k, v, scale=scale))
    np.testing.assert_allclose(got, _np_sdpa(q, k, v, s), atol=1e-5)
    causal = np.tril(np.ones((7, 7), bool))
    got = keras.ops.convert_to_numpy(kours.sdpa(q, k, v, is_causal=True, scale=scale))
    np.testing.assert_allclose(got, _np_sdpa(q, k, v, s, causal), atol=1e-5)
    out, attn = kours.sdpa(q, k, v, attn_mask=causal, scale=scale, return_attn=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(attn).sum(-1), 1.0, atol=1e-5)


def _roundtrip(layer, x):
    y = keras.ops.convert_to_numpy(layer(x))
    clone = layer.__class__.from_config(layer.get_config())
    clone(x)
    assert len(clone.weights) == len(layer.weights)
    for a, b in zip(clone.weights, layer.weights, strict=True):
        assert a.shape == b.shape
        a.assign(b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), y, atol=1e-6)
    return y


def test_layers_build_weights_and_config_round_trip():
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
    attn = kours.Attention(16, num_heads=2, qkv_bias=True)
    assert _roundtrip(attn, x).shape == (2, 5, 16)
    assert {w.path.split("/")[-2] for w in attn.weights} == {"qkv", "proj"}
    assert _roundtrip(kours.Mlp(16, 32), x).shape == (2, 5, 16)
    assert _roundtrip(kours.Block(16, num_heads=2), x).shape == (2, 5, 16)
    qk = kours.Attention(16, num_heads=2, qk_norm=True, norm_eps=1e-6)
    assert _roundtrip(qk, x).shape == (2, 5, 16)
    assert {w.path.split("/")[-2] for w in qk.weights} == {"qkv", "q_norm", "k_norm", "proj"}
    assert qk.q_norm.epsilon == 1e-6 and kours.Attention(16, qk_norm=True).k_norm.epsilon == 1e-5  # torch's default
    block = kours.Block(16, num_heads=2, qk_norm=True, init_values=0.1)
    assert _roundtrip(block, x).shape == (2, 5, 16)
    assert block.ls1.gamma.path.endswith("ls1/gamma") and block.ls2.gamma.path.endswith("ls2/gamma")
    img = np.zeros((1, 32, 32, 3), "float32")
    assert _roundtrip(kours.PatchEmbed(32, 16, embed_dim=8), img).shape == (1, 4, 8)
    assert _roundtrip(kours.PatchEmbed(32, 16, 4, 8), np.zeros((1, 32, 32, 4), "float32")).shape == (1, 4, 8)
    fused, manual = kours.Attention(16, 2, True, fused_attn=True), kours.Attention(16, 2, True, fused_attn=False)
    fused(x), manual(x)
    for a, b in zip(manual.weights, fused.weights, strict=True):
        a.assign(b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fused(x)), keras.ops.convert_to_numpy(manual(x)), atol=1e-5)


def test_attention_port_matches_timm_and_keras_mha():
    torch.manual_seed(0)
    ref = timm.layers.Attention(64, num_heads=4, qkv_bias=True).eval()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    ours = kours.Attention(64, num_heads=4, qkv_bias=True)
    ours.build((1, 1, 64))
    kport.load_timm_attention(ours, state)
    mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=16)
    port_mha(mha, state)
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        want = ref(x).numpy()
    a = keras.ops.convert_to_numpy(ours(x.numpy()))
    b = keras.ops.convert_to_numpy(mha(x.numpy(), x.numpy()))
    print(f"ours vs timm {np.abs(a - want).max():.2e}, MHA vs timm {np.abs(b - want).max():.2e}, "
          f"ours vs MHA {np.abs(a - b).max():.2e}")
    assert np.abs(a - want).max() <= 1e-5 and np.abs(b - want).max() <= 1e-5 and np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_boolean_mask_gives_exactly_zero_weight_on_every_backend(backend):
    """A boolean mask is a mask, not 0/1 added to the logits (on Keras' torch backend it was added)."""
    from keras_backends import run_on_backend

    run_on_backend(backend, """
        from vitbench.models import keras as kours
        q = keras.ops.convert_to_tensor(np.random.default_rng(0).random((1, 4, 8)).astype("float32"))
        m = keras.ops.convert_to_tensor(np.tril(np.ones((4, 4), bool)))
        _, a = kours.sdpa(q, q, q, attn_mask=m, return_attn=True)
        a = keras.ops.convert_to_numpy(a)
        assert float(np.abs(a[0][np.triu_indices(4, 1)]).max()) == 0.0, a
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-6)
    """)
