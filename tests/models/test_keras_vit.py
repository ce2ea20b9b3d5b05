"""Keras ViT vs timm's ``VisionTransformer`` (and our torch twin) on tiny configs: parity on each Keras backend for
the default, qk_norm + LayerScale and no-class-token / avg-pool / 4-channel variants, the same argument errors,
config and ``.keras`` round trip, the torch init, a strict port that bites, and MACs vs the torch counter."""
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
from vitbench.models import torch as tours  # noqa: E402
from vitbench.models.keras import vit as kvit  # noqa: E402
from vitbench.models.keras._registry import create_model  # noqa: E402
from vitbench.port import PortError  # noqa: E402
from vitbench.port import keras as kport  # noqa: E402

NAME = "vit_tiny_patch16_224"
KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)  # 16 patches, 2 heads
CONFIGS = {
    "default": {},
    "qk_norm+ls": dict(qk_norm=True, init_values=1e-2),
    "no_cls+avg+4ch": dict(class_token=False, global_pool="avg", in_chans=4),
}


def _timm(extra: dict, std: float = 0.05) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = timm.create_model(NAME, **KW, **extra)
    with torch.no_grad():  # timm zeroes biases and the head, LayerScale starts equal: perturb so each one matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * std)
    return ref.eval()


def _state(ref: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in ref.state_dict().items()}


def _ours(extra: dict, **more) -> kvit.VisionTransformer:
    return create_model(NAME, **KW, **extra, **more)


def _x(extra: dict, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, extra.get("in_chans", 3), KW["img_size"], KW["img_size"])


def _np(y) -> np.ndarray:
    return keras.ops.convert_to_numpy(y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_vit_matches_timm(backend):
    """forward, forward_features, forward_head(pre_logits) vs timm, on the fused and the manual attention path;
    attention maps vs our torch twin's; on TensorFlow also compile(jit_compile=True) + predict_on_batch."""
    run_on_backend(backend, f"""
        from vitbench.models import torch as tours
        from vitbench.models.keras import vit as kvit
        from vitbench.models.keras._registry import create_model, load_timm_state_dict
        KW, CONFIGS = {KW!r}, {CONFIGS!r}
        for tag, extra in CONFIGS.items():
            kw = {{**KW, **extra}}
            ref = perturbed(timm.create_model("{NAME}", **kw))
            x = torch.randn(2, kw.get("in_chans", 3), KW["img_size"], KW["img_size"])
            with torch.no_grad():
                want, feats = ref(x), ref.forward_features(x)
                pre = ref.forward_head(feats, pre_logits=True)
            xk = nhwc(x)
            for fused in (True, False):
                ours = create_model("{NAME}", **kw, fused_attn=fused)
                load_timm_state_dict(ours, state_of(ref))
                name = f"{{tag}} fused_attn={{fused}}"
                f = ours.forward_features(xk)
                check(f"{{name}} forward_features", keras.ops.convert_to_numpy(f), feats)
                check(f"{{name}} forward_head(pre_logits)",
                      keras.ops.convert_to_numpy(ours.forward_head(f, pre_logits=True)), pre)
                check(f"{{name}} forward", keras.ops.convert_to_numpy(ours(xk)), want)
            twin = tours.create_model("{NAME}", **kw).eval()
            twin.load_state_dict(ref.state_dict(), strict=True)
            with torch.no_grad():
                maps = twin.attention_maps(x)
            got = ours.attention_maps(xk)
            assert len(got) == len(maps) == KW["depth"]
            check(f"{{tag}} attention_maps[-1]", keras.ops.convert_to_numpy(got[-1]), maps[-1], 1e-5)
            if keras.backend.backend() == "tensorflow":
                ours.compile(jit_compile=True)
                check(f"{{tag}} predict_on_batch jit_compile=True", np.asarray(ours.predict_on_batch(xk)), want)
    """)


@pytest.mark.parametrize("kwargs", [{"depth": 2}, {"depth": 1, "global_pool": "avg", "num_classes": 7}])
def test_registered_test_vit_ports_from_timm(kwargs):
    """The registered ``test_vit`` (160 px, patch 16, mlp_ratio 3) with its token and avg heads."""
    torch.manual_seed(0)
    ref = timm.create_model("test_vit", img_size=160, **kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = create_model("test_vit", **kwargs)
    kport.load_timm_state_dict(ours, _state(ref))
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = ref(x).numpy()
    diff = np.abs(_np(ours(x.permute(0, 2, 3, 1).numpy())) - want).max()
    print(f"Keras test_vit vs timm {kwargs}: max abs diff {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("kwargs", [dict(global_pool="max"), dict(class_token=False),
                                    dict(class_token=False, global_pool="token")])
def test_bad_pooling_raises_as_torch(kwargs):
    with pytest.raises(ValueError) as want:
        tours.create_model(NAME, **KW, **kwargs)
    with pytest.raises(ValueError) as got:
        _ours(kwargs)
    assert str(got.value) == str(want.value)


def test_in_chans_builds_the_patch_conv_and_checks_the_input():
    model = _ours(dict(in_chans=4, class_token=False, global_pool="avg"))
    assert tuple(model.patch_embed.proj.kernel.shape) == (8, 8, 4, 32)
    assert tuple(model.pos_embed.shape) == (1, 16, 32) and model.cls_token is None
    assert model.num_prefix_tokens == 0 and model.norm is None and model.fc_norm is not None
    assert _np(model(np.zeros((1, 32, 32, 4), "float32"))).shape == (1, 10)
    wrong = kvit.VisionTransformer(**KW, in_chans=4)
    with pytest.raises(ValueError, match="3 channels, in_chans is 4"):
        wrong.build((None, 32, 32, 3))
    with pytest.raises(ValueError, match="does not match img_size"):
        _ours({})(np.zeros((1, 40, 40, 3), "float32"))
    token = _ours({})
    assert token.fc_norm is None and token.norm is not None and tuple(token.cls_token.shape) == (1, 1, 32)


def test_config_and_keras_file_round_trip(tmp_path):
    extra = CONFIGS["qk_norm+ls"]
    model = _ours(extra)
    kport.load_timm_state_dict(model, _state(_timm(extra)))
    x = _x(extra).permute(0, 2, 3, 1).numpy()
    y = _np(model(x))
    config = model.get_config()
    assert {k: config[k] for k in ("qk_norm", "init_values", "class_token", "in_chans")} == {
        "qk_norm": True, "init_values": 1e-2, "class_token": True, "in_chans": 3}
    clone = kvit.VisionTransformer.from_config(config)
    clone.build((None, 32, 32, 3))
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    for a, b in zip(clone.weights, model.weights, strict=True):
        a.assign(b)
    np.testing.assert_allclose(_np(clone(x)), y, atol=1e-6)
    blk = model.blocks[0]
    again = kvit.Block.from_config(blk.get_config())
    assert again.get_config() == blk.get_config() and again.ls1 is not None and again.attn.qk_norm
    path = tmp_path / "vit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kvit.VisionTransformer) and loaded.cfg == model.cfg
    np.testing.assert_allclose(_np(loaded(x)), y, atol=1e-6)
    np.testing.assert_allclose(_np(loaded.attention_maps(x)[0]), _np(model.attention_maps(x)[0]), atol=1e-6)


def test_fresh_model_has_the_torch_init():
    """As torch's ``init_weights``: Dense kernels N(0, 0.02) (torch's trunc_normal_ cuts at +-2, i.e. 100 std),
    zero biases, pos_embed std 0.02, cls_token std 1e-6, LayerScale gamma = init_values, LayerNorms 1 / 0."""
    keras.utils.set_random_seed(0)
    model = create_model(NAME, img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=100,
                         qk_norm=True, init_values=1e-3)
    dense = [d for b in model.blocks for d in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)] + [model.head]
    kernels = []
    for layer in dense:
        k = _np(layer.kernel)
        assert abs(k.std() - 0.02) < 0.02 * 0.06, (layer.path, k.std())  # Keras' TruncatedNormal gives 0.0176
        assert abs(k.mean()) < 0.002 and np.abs(k).max() > 3 * 0.02  # not truncated at 2 std
        np.testing.assert_array_equal(_np(layer.bias), 0.0)
        kernels.append(k.ravel()[:64])
    assert len({k.tobytes() for k in kernels}) == len(kernels), "Dense layers share their initial values"
    assert abs(_np(model.pos_embed).std() - 0.02) < 0.02 * 0.06
    assert 0.5e-6 < _np(model.cls_token).std() < 1.5e-6
    for blk in model.blocks:
        np.testing.assert_allclose(_np(blk.ls1.gamma), 1e-3)
        np.testing.assert_allclose(_np(blk.ls2.gamma), 1e-3)
        for ln in (blk.norm1, blk.norm2, blk.attn.q_norm, blk.attn.k_norm):
            np.testing.assert_array_equal(_np(ln.gamma), 1.0)
            np.testing.assert_array_equal(_np(ln.beta), 0.0)
        assert blk.attn.q_norm.epsilon == blk.norm1.epsilon == kvit.LN_EPS


def test_port_is_strict_and_swapped_biases_change_the_output():
    extra = CONFIGS["qk_norm+ls"]
    ref = _timm(extra)
    state = _state(ref)
    model = _ours(extra)
    assert sorted(k for _, k, _ in kport.port_table(model)) == sorted(state)
    kport.load_timm_state_dict(model, state)
    x = _x(extra, 1)
    with torch.no_grad():
        want = ref(x).numpy()
    xk = x.permute(0, 2, 3, 1).numpy()
    assert np.abs(_np(model(xk)) - want).max() <= 1e-4

    for key in ("blocks.1.attn.q_norm.bias", "blocks.0.ls2.gamma"):
        with pytest.raises(PortError, match="1 missing") as err:
            kport.load_timm_state_dict(_ours(extra), {k: v for k, v in state.items() if k != key})
        assert err.value.missing == [key] and err.value.unexpected == []
    with pytest.raises(PortError, match="1 unexpected") as err:
        kport.load_timm_state_dict(_ours(extra), {**state, "fc_norm.weight": np.ones(32, "float32")})
    assert err.value.unexpected == ["fc_norm.weight"] and err.value.missing == []
    with pytest.raises(PortError, match="does not fit"):
        kport.load_timm_state_dict(_ours(extra), {**state, "pos_embed": np.zeros((1, 16, 32), "float32")})
    with pytest.raises(PortError) as err:  # a state_dict of the other head: norm.* vs fc_norm.*
        kport.load_timm_state_dict(_ours(CONFIGS["no_cls+avg+4ch"]), _state(_timm({})))
    assert "norm.weight" in err.value.unexpected and "fc_norm.weight" in err.value.missing

    # same shapes: only the output can tell. LayerScale 1e-2 damps the branches, hence the smaller bound on the
    # swaps inside attention (still >10x the 1e-4 parity tolerance); q_norm/k_norm gains commute (q.k), so not those
    for a, b, bound in [("blocks.0.attn.proj.bias", "blocks.0.mlp.fc2.bias", 1e-2),
                        ("blocks.0.ls1.gamma", "blocks.0.ls2.gamma", 1e-2),
                        ("blocks.1.attn.k_norm.weight", "blocks.1.attn.k_norm.bias", 1e-3)]:
        model = _ours(extra)
        kport.load_timm_state_dict(model, {**state, a: state[b], b: state[a]})
        diff = np.abs(_np(model(xk)) - want).max()
        print(f"swapped {a} <-> {b}: max abs diff {diff:.2e}")
        assert diff > bound, f"swapping {a} and {b} went unnoticed (max abs diff {diff:.2e})"


def test_attention_port_with_qk_norm_matches_torch_on_both_paths():
    """The standalone Attention vs our torch one (timm's keys; its default q/k norm is ``nn.LayerNorm``, eps 1e-5;
    timm >= 1.0 asks for a norm_layer), fused and manual paths."""
    torch.manual_seed(0)
    ref = tours.Attention(32, num_heads=4, qkv_bias=True, qk_norm=True).eval()
    assert ref.q_norm.eps == 1e-5 and kvit.Attention(32, qk_norm=True).norm_eps == 1e-5
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    state = _state(ref)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        want = ref(x).numpy()
    for fused in (True, False):
        ours = kvit.Attention(32, num_heads=4, qkv_bias=True, qk_norm=True, fused_attn=fused)
        kport.load_timm_attention(ours, state)
        diff = np.abs(_np(ours(x.numpy())) - want).max()
        print(f"Attention qk_norm fused_attn={fused} vs torch: max abs diff {diff:.2e}")
        assert diff <= 1e-5
    with pytest.raises(PortError) as err:
        kport.load_timm_attention(kvit.Attention(32, num_heads=4, qkv_bias=True), state)
    assert sorted(err.value.unexpected) == ["k_norm.bias", "k_norm.weight", "q_norm.bias", "q_norm.weight"]


@pytest.mark.parametrize("name,kwargs", [(NAME, {**KW, **CONFIGS["default"]}),
                                         (NAME, {**KW, **CONFIGS["qk_norm+ls"]}),
                                         (NAME, {**KW, **CONFIGS["no_cls+avg+4ch"]}),
                                         ("test_vit", {})])
def test_macs_formula_matches_the_torch_counter(name, kwargs):
    from vitbench.measure.flops import count_macs_acts

    macs, acts = keras_macs.count_macs_acts(create_model(name, **kwargs))
    twin = tours.create_model(name, **kwargs).eval()
    size = twin.img_size
    t_macs, t_acts = count_macs_acts(twin, torch.randn(1, kwargs.get("in_chans", 3), size, size))
    assert (macs, acts) == (int(t_macs), t_acts)
