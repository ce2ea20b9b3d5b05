"""Keras SAM ViT / RSBuilding backbone vs timm (and our torch twin) on tiny configs: parity on every Keras backend
(windowed blocks with padding, a global block, decomposed rel-pos, neck, head, levels, resize at other inputs),
config and ``.keras`` round trips, a strict port that bites, and frozen stages."""
from __future__ import annotations

import os

import numpy as np
import pytest
import timm  # noqa: E402  (torch/timm before TensorFlow: see conftest)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from keras_backends import BACKENDS, run_on_backend  # tests/models is on sys.path (rootdir-less test dir)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras

from vitbench.models.keras import sam as ksam  # noqa: E402
from vitbench.models.torch import sam as tsam  # noqa: E402
from vitbench.port import keras as kport  # noqa: E402

# 96 / 16 = 6x6 map, 4x4 windows: the windowed blocks (0, 2) pad to 8x8; block 1 is global (11-long rel-pos tables)
TINY = dict(img_size=96, embed_dim=32, depth=3, num_heads=2, window_size=4, global_attn_indexes=(1,), neck_chans=16,
            num_classes=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_timm_on_every_backend(backend):
    run_on_backend(backend, f"""
        from vitbench.models.keras import sam as ksam
        from vitbench.models.keras._registry import create_model, load_timm_state_dict
        from vitbench.models.torch import sam as tsam
        KW = {TINY!r}
        ref = perturbed(timm.create_model("samvit_base_patch16", **KW))
        state = state_of(ref)
        x = torch.randn(2, 3, 96, 96)
        m = create_model("samvit_base_patch16", **KW)
        load_timm_state_dict(m, state)
        with torch.no_grad():
            feats, inter = ref.forward_intermediates(x, indices=[0, 1, 2])
            logits = ref(x)
        xk = nhwc(x)
        check("forward_features", nchw(m.forward_features(xk)), feats)
        check("logits", nchw(m(xk)), logits)
        k_feats, k_inter = m.forward_intermediates(xk, indices=[0, 2], output_fmt="NHWC")
        check("forward_intermediates neck", nchw(k_feats), feats)
        for i, (a, b) in enumerate(zip(k_inter, [inter[0], inter[2]], strict=True)):
            check(f"intermediate {{i}}", nchw(a), b)

        kw = {{k: v for k, v in KW.items() if k != "num_classes"}}
        rs = create_model("rsbuilding_vit_base", **kw, out_indices=(0, 1, -1), frozen_stages=1)
        load_timm_state_dict(rs, state)  # timm's head.fc is dropped: the backbone has no classifier
        levels = rs(xk)
        assert isinstance(levels, list) and len(levels) == 3
        for i, (a, b) in enumerate(zip(levels, [inter[0], inter[1], feats], strict=True)):
            check(f"rsbuilding level {{i}}", nchw(a), b)

        # another input size: pos_embed resized (bicubic, antialias) and the global block's rel-pos tables
        # interpolated at call time, as our torch twin does
        twin = tsam.RSBuildingBackbone(**kw, out_indices=(0, 1, 2)).eval()
        twin.load_state_dict(tsam.checkpoint_filter_fn({{k: torch.from_numpy(v) for k, v in state.items()}}, twin))
        x2 = torch.randn(1, 3, 112, 80)
        with torch.no_grad():
            want = twin(x2)
        for i, (a, b) in enumerate(zip(rs(nhwc(x2)), want, strict=True)):
            check(f"rsbuilding 112x80 level {{i}}", nchw(a), b)
    """)


def _tiny_pair(**kw):
    torch.manual_seed(0)
    ref = timm.create_model("samvit_base_patch16", **{**TINY, **kw})
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref.eval(), {k: v.numpy().copy() for k, v in ref.state_dict().items()}


def _np(y):
    return keras.ops.convert_to_numpy(y)


def _x(img=96, n=2):
    return np.random.default_rng(1).standard_normal((n, img, img, 3)).astype("float32")


def test_config_and_keras_file_round_trip(tmp_path):
    _, state = _tiny_pair()
    x = _x()
    kw = {k: v for k, v in TINY.items() if k != "num_classes"}
    for model in (ksam.VisionTransformerSAM(**TINY), ksam.RSBuildingBackbone(**kw, out_indices=(1, 2),
                                                                               frozen_stages=1)):
        model.build((None, 96, 96, 3))
        kport.load_timm_state_dict(model, state)
        y = keras.tree.map_structure(_np, model(x))
        clone = type(model).from_config(model.get_config())
        clone.build((None, 96, 96, 3))
        assert [w.path for w in clone.weights] == [w.path for w in model.weights]
        for a, b in zip(clone.weights, model.weights, strict=True):
            a.assign(b.value)
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        for other in (clone, loaded):
            assert type(other) is type(model) and other.get_config() == model.get_config()
            assert len(other.trainable_weights) == len(model.trainable_weights)
            keras.tree.map_structure(lambda a, b: np.testing.assert_allclose(_np(a), b, atol=1e-6), other(x), y)


def test_port_is_strict_and_a_swapped_port_fails():
    ref, state = _tiny_pair()
    x = _x()
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()

    def run(st):
        model = ksam.VisionTransformerSAM(**TINY)
        kport.load_timm_state_dict(model, st)
        return float(np.abs(_np(model(x)) - want).max())

    assert run(state) <= 1e-5
    swapped = dict(state)  # two biases of the same shape trade places: loads, but the output must be wrong
    swapped["blocks.0.attn.proj.bias"], swapped["blocks.0.mlp.fc2.bias"] = (state["blocks.0.mlp.fc2.bias"],
                                                                           state["blocks.0.attn.proj.bias"])
    assert run(swapped) > 1e-3
    hw = dict(state)  # the global block's height and width tables swapped (same shape on a square map)
    hw["blocks.1.attn.rel_pos_h"], hw["blocks.1.attn.rel_pos_w"] = state["blocks.1.attn.rel_pos_w"], \
        state["blocks.1.attn.rel_pos_h"]
    assert run(hw) > 1e-3
    with pytest.raises(ValueError, match="1 missing") as err:
        run({k: v for k, v in state.items() if k != "neck.1.bias"})
    assert err.value.missing == ["neck.1.bias"] and err.value.unexpected == []
    with pytest.raises(ValueError, match="1 unexpected") as err:
        run({**state, "blocks.0.attn.relative_position_index": np.zeros(3)})
    assert err.value.unexpected == ["blocks.0.attn.relative_position_index"] and err.value.missing == []
    with pytest.raises(ValueError, match="does not fit"):
        run({**state, "blocks.1.attn.rel_pos_h": state["blocks.0.attn.rel_pos_h"]})


def test_port_resizes_pos_embed_as_the_torch_twin():
    # timm's 8x8 pos_embed -> our 6x6 grid; windowed blocks only: a global block's rel-pos tables follow the grid,
    # and neither twin resizes those on import (the torch twin's strict load_state_dict fails, so does our port)
    with pytest.raises(ValueError, match="rel_pos_h"):
        kport.load_timm_state_dict(ksam.VisionTransformerSAM(**TINY), _tiny_pair(img_size=128)[1])
    ref, state = _tiny_pair(img_size=128, global_attn_indexes=())
    kw = {k: v for k, v in TINY.items() if k != "num_classes"} | {"global_attn_indexes": ()}
    twin = tsam.RSBuildingBackbone(**kw, out_indices=(2,)).eval()
    twin.load_state_dict(tsam.checkpoint_filter_fn(ref.state_dict(), twin))
    ours = ksam.RSBuildingBackbone(**kw, out_indices=(2,))
    kport.load_timm_state_dict(ours, state)
    np.testing.assert_allclose(_np(ours.pos_embed.value), twin.pos_embed.detach().numpy(), atol=1e-6)
    x = _x()
    with torch.no_grad():
        (want,) = twin(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(_np(ours(x)[0]).transpose(0, 3, 1, 2), want.numpy(), atol=1e-4)


@pytest.mark.parametrize("n_in,n_out", [(16, 6), (6, 16), (14, 64), (7, 5)])
def test_resize_weights_match_torch_interpolate(n_in, n_out):
    pe = torch.randn(1, n_in, n_in + 1, 8)
    want = F.interpolate(pe.permute(0, 3, 1, 2), size=(n_out, n_out + 2), mode="bicubic", antialias=True)
    got = _np(ksam.resize_pos_embed(pe.numpy(), (n_out, n_out + 2)))
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    table = torch.randn(2 * n_in - 1, 4)
    np.testing.assert_allclose(_np(ksam.rel_pos(n_out, n_out, table.numpy())),
                               tsam.rel_pos(n_out, n_out, table).numpy(), atol=1e-5)


def test_frozen_stages_freeze_what_they_say():
    kw = {k: v for k, v in TINY.items() if k != "num_classes"}

    def frozen(stages):
        m = ksam.RSBuildingBackbone(**kw, frozen_stages=stages)
        m.build((None, 96, 96, 3))
        trainable = {v.path for v in m.trainable_weights}
        return m, {v.path for v in m.weights} - trainable

    m, off = frozen(-1)
    assert off == set()
    m, off = frozen(0)
    assert off == {m.pos_embed.path, *(v.path for v in m.patch_embed.weights)}
    m, off = frozen(2)
    assert off == {m.pos_embed.path, *(v.path for layer in (m.patch_embed, *m.blocks[:2]) for v in layer.weights)}
    assert all(v.trainable for v in m.blocks[2].weights) and not m.blocks[1].trainable
    for layer in m.neck:
        assert all(v.path not in off for v in layer.weights)
