"""Keras SAM2 Hiera (HieraDet) vs timm's ``sam2_hiera_*`` on a tiny config: parity on each Keras backend, config and
``.keras`` round trip, a strict port that bites, MACs vs the torch counter, and training on TensorFlow."""
from __future__ import annotations

import os

import numpy as np
import pytest
import timm  # torch/timm before TensorFlow: see conftest
import torch
from keras_backends import BACKENDS, run_on_backend  # tests/models is on sys.path (rootdir-less test dir)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras

from vitbench.measure import keras_macs  # noqa: E402
from vitbench.models.keras import hiera as khiera  # noqa: E402
from vitbench.port import keras as kport  # noqa: E402

# 64 px -> maps 16, 8, 4, 2. Block 0: 4x4 windows; block 1: q-pooled 4x4 windows (-> 2x2) at stage 2;
# block 2: q-pooled 4x4 windows on the 8x8 map; block 3 global; block 4: 3x3 windows on the 4x4 map (padded to
# 6x6); block 5: q-pooled padded 3x3 windows (-> 1x1). 2 heads at first, 5x5 global table resized to 16x16.
# (timm fails on a global block that also q-pools, so global blocks sit inside a stage, as in the real configs.)
TINY = dict(embed_dim=16, num_heads=2, stages=(1, 1, 3, 1), global_att_blocks=(3,), window_spec=(4, 4, 3, 2),
            global_pos_size=(5, 5), num_classes=10)
IMG = 64


def _timm_tiny(std: float = 0.05) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = timm.create_model("sam2_hiera_tiny", **TINY)  # timm's HieraDet takes no img_size
    with torch.no_grad():  # timm zeroes biases and the head: perturb every parameter so each one matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * std)
    return ref.eval()


def _state(ref: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in ref.state_dict().items()}


def _ours() -> khiera.HieraDet:
    model = khiera.HieraDet(img_size=IMG, **TINY)
    model.build((None, IMG, IMG, 3))
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_hiera_matches_timm(backend):
    run_on_backend(backend, f"""
        from vitbench.models.keras import hiera as khiera
        from vitbench.models.keras._registry import create_model, load_timm_state_dict
        KW = {TINY!r}
        ref = perturbed(timm.create_model("sam2_hiera_tiny", **KW))
        ours = create_model("sam2_hiera_tiny", img_size={IMG}, **KW)
        load_timm_state_dict(ours, state_of(ref))
        x = torch.randn(2, 3, {IMG}, {IMG})
        with torch.no_grad():
            want, feats = ref(x), ref.forward_features(x)
            pre = ref.forward_head(feats, pre_logits=True)
        xk = nhwc(x)
        f = ours.forward_features(xk)
        check("forward_features (B, 2, 2, 128)", keras.ops.convert_to_numpy(f), feats, 1e-4)
        check("forward_head(pre_logits)", keras.ops.convert_to_numpy(ours.forward_head(f, pre_logits=True)), pre)
        check("forward", keras.ops.convert_to_numpy(ours(xk)), want, 1e-4)
        if keras.backend.backend() == "tensorflow":
            for jit in (False, True):
                ours.compile(jit_compile=jit)
                check(f"predict_on_batch jit_compile={{jit}}", np.asarray(ours.predict_on_batch(xk)), want, 1e-4)
    """)


def test_config_and_keras_file_round_trip(tmp_path):
    model = _ours()
    kport.load_timm_state_dict(model, _state(_timm_tiny()))
    x = np.random.default_rng(0).standard_normal((2, IMG, IMG, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x))
    clone = khiera.HieraDet.from_config(model.get_config())
    clone.build((None, IMG, IMG, 3))
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    for a, b in zip(clone.weights, model.weights, strict=True):
        a.assign(b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), y, atol=1e-6)
    for blk in model.blocks:  # each block's config rebuilds the same block
        again = khiera.MultiScaleBlock.from_config(blk.get_config())
        assert again.get_config() == blk.get_config()
    path = tmp_path / "hiera.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, khiera.HieraDet)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), y, atol=1e-6)


def test_port_is_strict_and_swapped_biases_change_the_output():
    ref = _timm_tiny()
    state = _state(ref)
    model = _ours()
    kport.load_timm_state_dict(model, state)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        want = ref(x).numpy()
    xk = x.permute(0, 2, 3, 1).numpy()
    assert np.abs(keras.ops.convert_to_numpy(model(xk)) - want).max() <= 1e-4

    dropped = {k: v for k, v in state.items() if k != "blocks.2.proj.bias"}
    with pytest.raises(ValueError, match="1 missing") as err:
        kport.load_timm_state_dict(_ours(), dropped)
    assert err.value.missing == ["blocks.2.proj.bias"] and err.value.unexpected == []
    with pytest.raises(ValueError, match="1 unexpected") as err:
        kport.load_timm_state_dict(_ours(), {**state, "blocks.0.attn.relative_position_index": np.zeros(3)})
    assert err.value.unexpected == ["blocks.0.attn.relative_position_index"] and err.value.missing == []
    with pytest.raises(ValueError, match="does not fit"):
        kport.load_timm_state_dict(_ours(), {**state, "pos_embed": np.zeros((1, 16, 7, 7), "float32")})

    a, b = "blocks.0.attn.proj.bias", "blocks.0.mlp.fc2.bias"  # same shape: only the output can tell
    swapped = {**state, a: state[b], b: state[a]}
    model = _ours()
    kport.load_timm_state_dict(model, swapped)
    diff = np.abs(keras.ops.convert_to_numpy(model(xk)) - want).max()
    assert diff > 1e-2, f"swapped biases went unnoticed (max abs diff {diff:.2e})"


def test_macs_formula_matches_the_torch_counter():
    from vitbench.measure.flops import count_macs_acts
    from vitbench.models import torch as tours

    macs, acts = keras_macs.count_macs_acts(_ours())
    twin = tours.create_model("sam2_hiera_tiny", img_size=IMG, **TINY).eval()
    t_macs, t_acts = count_macs_acts(twin, torch.randn(1, 3, IMG, IMG))
    assert (macs, acts) == (int(t_macs), t_acts)


@pytest.mark.slow
def test_tiny_hiera_trains_on_tensorflow():
    """compile(adam, sparse CE from logits) + fit on one fixed batch repeated: the loss falls."""
    run_on_backend("tensorflow", f"""
        from vitbench.models.keras import hiera as khiera
        assert keras.backend.backend() == "tensorflow"
        keras.utils.set_random_seed(0)
        model = khiera.HieraDet(img_size={IMG}, **{{**{TINY!r}, "num_classes": 4}})
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, {IMG}, {IMG}, 3)).astype("float32")
        y = rng.integers(0, 4, size=8)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer="adam", loss=loss_fn)
        before = float(loss_fn(y, model(x)))
        hist = model.fit(x, y, batch_size=8, epochs=10, shuffle=False, verbose=0).history["loss"]  # 1 step/epoch
        after = float(loss_fn(y, model(x)))
        print("losses", before, [round(v, 4) for v in hist], after)
        assert hist[-1] < 0.5 * hist[0] and after < 0.5 * before, "the loss did not fall"
    """)
