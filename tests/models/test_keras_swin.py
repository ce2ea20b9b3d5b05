"""Keras Swin and SwinV2-cr vs timm on tiny configs: parity on each Keras backend (incl. padded windows and odd
maps), config and ``.keras`` round trips, a strict port that bites, MACs vs the torch counter, training on
TensorFlow with ``model.compile`` + ``fit``."""
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
from vitbench.models.keras import swin as kswin  # noqa: E402
from vitbench.models.keras import swinv2_cr as kv2  # noqa: E402
from vitbench.models.keras import windows as kwin  # noqa: E402
from vitbench.port import keras as kport  # noqa: E402

# 3 stages, window 4: at 64 px maps 16, 8, 4 (the last stage: one window, no shift); at 72 px maps 18, 9, 5 (padded
# windows, shifted masks over padded maps, odd patch merging)
SWIN = dict(embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4, num_classes=10)
FAMILIES = {  # family -> (timm name, Keras module, class name, tiny config)
    "swin": ("swin_tiny_patch4_window7_224", "swin", "SwinTransformer", SWIN),
    "swinv2_cr": ("swinv2_cr_tiny_224", "swinv2_cr", "SwinTransformerV2Cr", SWIN),
    # window from window_ratio (16 // 8 = 2) and an extra norm every block
    "swinv2_cr_ns": ("swinv2_cr_tiny_ns_224", "swinv2_cr", "SwinTransformerV2Cr",
                     {**{k: v for k, v in SWIN.items() if k != "window_size"}, "extra_norm_period": 1}),
}
MODULES = {"swin": kswin, "swinv2_cr": kv2}


def _timm(family: str, img: int, std: float = 0.05) -> torch.nn.Module:
    name, _, _, cfg = FAMILIES[family]
    torch.manual_seed(0)
    ref = timm.create_model(name, img_size=img, **cfg)
    with torch.no_grad():  # timm zeroes biases and tables: perturb every parameter so each one matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * std)
    return ref.eval()


def _state(ref: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in ref.state_dict().items()}


def _ours(family: str, img: int):
    _, mod, cls, cfg = FAMILIES[family]
    model = getattr(MODULES[mod], cls)(img_size=img, **cfg)
    model.build((None, img, img, 3))
    return model


# jax dispatches op by op on the CPU (about twice TensorFlow's time here): it gets the padded size only; the
# clamped one-window stage at 64 px is shape logic the other two backends cover
IMGS = {"jax": (72,), "tensorflow": (64, 72), "torch": (64, 72)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_swin_families_match_timm(backend):
    run_on_backend(backend, f"""
        from vitbench.models.keras import load_timm_state_dict, create_model
        FAMILIES = {FAMILIES!r}
        for family, (name, _, _, cfg) in FAMILIES.items():
            for img in {IMGS[backend]!r}:
                ref = perturbed(timm.create_model(name, img_size=img, **cfg))
                ours = create_model(name, img_size=img, **cfg)
                load_timm_state_dict(ours, state_of(ref))
                x = torch.randn(2, 3, img, img)
                with torch.no_grad():
                    want, feats = ref(x), ref.forward_features(x)
                    pre = ref.forward_head(feats, pre_logits=True)
                xk = nhwc(x)
                f = ours.forward_features(xk)  # channels-last; timm's Swin is NHWC, SwinV2-cr NCHW
                got = keras.ops.convert_to_numpy(f)
                check(f"{{family}} {{img}} forward_features", got if feats.shape[-1] == got.shape[-1] else nchw(f),
                      feats, 1e-4)
                check(f"{{family}} {{img}} pre_logits", keras.ops.convert_to_numpy(ours.forward_head(f, True)), pre)
                check(f"{{family}} {{img}} forward", keras.ops.convert_to_numpy(ours(xk)), want, 1e-4)
                if keras.backend.backend() == "tensorflow" and img == 72:
                    for jit in (False, True):
                        ours.compile(jit_compile=jit)
                        check(f"{{family}} predict_on_batch jit_compile={{jit}}",
                              np.asarray(ours.predict_on_batch(xk)), want, 1e-4)
    """)


@pytest.mark.parametrize("family", ["swin", "swinv2_cr"])
def test_config_and_keras_file_round_trip(family, tmp_path):
    model = _ours(family, 72)
    kport.load_timm_state_dict(model, _state(_timm(family, 72)))
    x = np.random.default_rng(0).standard_normal((2, 72, 72, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x))
    clone = type(model).from_config(model.get_config())
    clone.build((None, 72, 72, 3))
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    for a, b in zip(clone.weights, model.weights, strict=True):
        a.assign(b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), y, atol=1e-6)
    stages = model.layers_ if family == "swin" else model.stages
    for layer in (*stages, *stages[1].blocks, stages[1].blocks[1].attn):  # each layer's config rebuilds it
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()
    path = tmp_path / f"{family}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), y, atol=1e-6)


@pytest.mark.parametrize("family,key,other", [
    ("swin", "layers.1.blocks.1.attn.relative_position_bias_table",
     "layers.1.blocks.0.attn.relative_position_bias_table"),
    ("swinv2_cr", "stages.1.blocks.1.attn.logit_scale", "stages.1.blocks.0.attn.logit_scale"),
])
def test_port_is_strict_and_swapped_tables_change_the_output(family, key, other):
    ref = _timm(family, 64)
    state = _state(ref)
    load = kport.load_timm_state_dict
    model = _ours(family, 64)
    load(model, state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref(x).numpy()
    xk = x.permute(0, 2, 3, 1).numpy()
    assert np.abs(keras.ops.convert_to_numpy(model(xk)) - want).max() <= 1e-4

    with pytest.raises(ValueError, match="1 missing") as err:
        load(_ours(family, 64), {k: v for k, v in state.items() if k != key})
    assert err.value.missing == [key] and err.value.unexpected == []
    with pytest.raises(ValueError, match="1 unexpected") as err:
        load(_ours(family, 64), {**state, "layers.0.blocks.0.attn.relative_position_index": np.zeros(3)})
    assert err.value.unexpected == ["layers.0.blocks.0.attn.relative_position_index"]
    with pytest.raises(ValueError, match="does not fit"):
        load(_ours(family, 64), {**state, key: np.zeros((3, 1), "float32")})

    model = _ours(family, 64)  # same shape: only the output can tell
    load(model, {**state, key: state[other], other: state[key]})
    diff = np.abs(keras.ops.convert_to_numpy(model(xk)) - want).max()
    assert diff > 1e-3, f"swapped {key} went unnoticed (max abs diff {diff:.2e})"


@pytest.mark.parametrize("family", ["swin", "swinv2_cr", "swinv2_cr_ns"])
@pytest.mark.parametrize("img", [64, 72])
def test_macs_formula_matches_the_torch_counter(family, img):
    from vitbench.measure.flops import count_macs_acts
    from vitbench.models import torch as tours

    name, _, _, cfg = FAMILIES[family]
    macs, acts = keras_macs.count_macs_acts(_ours(family, img))
    twin = tours.create_model(name, img_size=img, **cfg).eval()
    t_macs, t_acts = count_macs_acts(twin, torch.randn(1, 3, img, img))
    assert (macs, acts) == (int(t_macs), t_acts)


def test_shift_mask_blocks_only_pairs_from_different_regions():
    mask = kwin.shift_window_mask((8, 8), (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16) and set(np.unique(mask)) == {0.0, -100.0}
    assert not mask[0].any()  # the top-left window holds one region
    assert (mask == mask.transpose(0, 2, 1)).all() and (np.diagonal(mask, axis1=1, axis2=2) == 0).all()
    assert kwin.shift_window_mask((8, 8), (4, 4), (0, 0)) is None


@pytest.mark.slow
def test_tiny_swin_trains_on_tensorflow():
    """compile(adam, sparse CE from logits) + fit on one fixed batch repeated: the loss falls (Swin and SwinV2-cr,
    in one TensorFlow process)."""
    fams = {f: (FAMILIES[f][1], FAMILIES[f][2], FAMILIES[f][3]) for f in ("swin", "swinv2_cr")}
    run_on_backend("tensorflow", f"""
        import importlib
        assert keras.backend.backend() == "tensorflow"
        for family, (mod, cls, cfg) in {fams!r}.items():
            fam = importlib.import_module("vitbench.models.keras." + mod)
            keras.utils.set_random_seed(0)
            model = getattr(fam, cls)(img_size=64, **{{**cfg, "num_classes": 4}})
            rng = np.random.default_rng(0)
            x = rng.standard_normal((8, 64, 64, 3)).astype("float32")
            y = rng.integers(0, 4, size=8)
            loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss_fn)
            before = float(loss_fn(y, model(x)))
            hist = model.fit(x, y, batch_size=8, epochs=40, shuffle=False, verbose=0).history["loss"]  # 1 step/epoch
            after = float(loss_fn(y, model(x)))
            print(family, "losses", before, [round(v, 4) for v in hist], after)
            assert hist[-1] < 0.5 * hist[0] and after < 0.5 * before, f"{{family}}: the loss did not fall"
    """)
