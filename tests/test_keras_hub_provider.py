"""keras-hub as a side: ViT, Swin and ViTDet (SAM) built from config under timm's names, timm's weights ported
(tiny configs, nothing downloaded), strict both ways, differences stated."""
from __future__ import annotations

import os

import numpy as np
import pytest
import timm  # torch/timm before TensorFlow: see conftest
import torch

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
import keras_hub  # noqa: F401  (a dev dependency: a broken install fails, never skips)

from vitbench.port import PortError  # noqa: E402
from vitbench.providers import get_provider  # noqa: E402

VIT = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, num_classes=10)
# 64 / 4 = 16x16 tokens, then 8x8: window 4 with shifted (masked) windows in both stages, one patch merging
SWIN = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=10)
# 96 / 16 = 6x6 map, 4x4 windows: blocks 0 and 2 pad to 8x8; block 1 is global (11-long rel-pos tables)
SAM = dict(embed_dim=32, depth=3, num_heads=2, window_size=4, global_attn_indexes=(1,), neck_chans=16)
CASES = {  # family: (name, kwargs, img_size, output)
    "vit": ("vit_small_patch16_224", VIT, 32, "logits"),
    "swin": ("swin_tiny_patch4_window7_224", SWIN, 64, "logits"),
    "sam": ("samvit_base_patch16", SAM, 96, "features"),
}


def _timm(name: str, kwargs: dict, img: int) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = timm.create_model(name, img_size=img, **kwargs)
    with torch.no_grad():  # timm zeroes biases, heads and position tables: perturb every parameter so each counts
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref.eval()


def _state(ref: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("fam", list(CASES))
def test_keras_hub_takes_timm_weights(fam):
    name, kw, img, output = CASES[fam]
    provider = get_provider("keras_hub")
    assert provider.framework == "keras" and provider.check(name) is None and name in provider.list_names()
    ref = _timm(name, kw, img)
    model, size = provider.build(name, kw, img)
    assert size == img and model.pretrained_cfg["input_size"] == (3, img, img)
    provider.port(model, _state(ref))
    x = torch.randn(2, 3, img, img)
    xk = x.permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        want = (ref.forward_features(x) if output == "features" else ref(x)).numpy()
    got = keras.ops.convert_to_numpy(model.forward_features(xk) if output == "features" else model(xk))
    if got.ndim == 4:
        got = got.transpose(0, 3, 1, 2)  # the neck's NHWC map in timm's NCHW
    assert got.shape == want.shape
    # ViT and Swin are timm's network exactly; SAM's in-model normalisation, folded into the patch conv, rounds
    assert np.abs(got - want).max() <= (1e-5 if fam == "sam" else 1e-6)
    note = provider.differences(model)
    assert (note is None) == (fam != "sam")
    if fam == "sam":
        assert "normalises its input" in note and "1e-5" in note and "\n" not in note
    counted = provider.count_macs(model, xk[:1])
    assert (counted is None) == (fam == "sam")


@pytest.mark.parametrize("fam", list(CASES))
def test_keras_hub_port_is_strict(fam):
    name, kw, img, _ = CASES[fam]
    provider = get_provider("keras_hub")
    state = _state(_timm(name, kw, img))
    model, _ = provider.build(name, kw, img)
    key = {"vit": "blocks.1.attn.qkv.bias", "swin": "layers.1.downsample.reduction.weight",
           "sam": "blocks.1.attn.rel_pos_w"}[fam]
    with pytest.raises(PortError, match="1 missing") as err:
        provider.port(model, {k: v for k, v in state.items() if k != key})
    assert err.value.missing == [key]
    with pytest.raises(PortError, match="1 unexpected") as err:
        provider.port(model, {**state, "fc_norm.weight": np.zeros(kw["embed_dim"], np.float32)})
    assert err.value.unexpected == ["fc_norm.weight"]
    wrong, _ = provider.build(name, {**kw, "embed_dim": kw["embed_dim"] * 2}, img)
    with pytest.raises(PortError, match="does not fit"):
        provider.port(wrong, state)


def test_keras_hub_names_and_kwargs_are_checked():
    provider = get_provider("keras_hub")
    msg = provider.check("vit_small_patch16_244")
    assert "\n" not in msg and "did you mean 'vit_small_patch16_224'" in msg
    assert provider.check("swin_tiny_patch4_window7_224") is None and provider.check("samvit_base_patch16") is None
    assert "qk_norm" in provider.check_kwargs("vit_small_patch16_224", {"qk_norm": True})
    assert provider.check_kwargs("samvit_base_patch16", {"neck_chans": 64}) is None
    with pytest.raises(ValueError, match="unsupported kwargs"):
        provider.build("swin_tiny_patch4_window7_224", {"qkv_bias": False}, 224)
    with pytest.raises(ValueError, match="smaller than the window"):  # 128 / 4 = 32 -> 4x4 in the last stage
        provider.build("swin_tiny_patch4_window7_224", {}, 128)


@pytest.mark.parametrize("fam", list(CASES))
def test_keras_hub_hands_its_weights_back_under_timm_names(fam):
    """As a reference, keras-hub's weights go to the candidates under timm's names: its port table read backwards
    gives timm's state_dict again; SAM's folded normalisation does not invert (its variable paths are used)."""
    name, kw, img, _ = CASES[fam]
    provider = get_provider("keras_hub")
    state = _state(_timm(name, kw, img))
    model, _ = provider.build(name, kw, img)
    provider.port(model, state)
    if fam == "sam":
        with pytest.raises(PortError, match="no inverse"):
            provider.export_state(model)
        return
    back = provider.export_state(model)
    assert set(back) == set(state)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    ours = get_provider("vitbench_keras")  # our Keras twin reads its table backwards too
    twin, _ = ours.build(name, kw, img)
    ours.port(twin, back)
    assert all(np.array_equal(v, state[k]) for k, v in ours.export_state(twin).items())
