"""vit-keras as a side: built from config under timm's names, timm's weights ported exactly (tiny configs)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import timm  # torch/timm before TensorFlow: see conftest
import torch

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
import vit_keras  # noqa: F401  (a dev dependency: a broken install fails, never skips)

from vitbench.port import PortError  # noqa: E402
from vitbench.providers import get_provider  # noqa: E402

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, num_classes=10)


def _timm(img: int, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", img_size=img, **{**TINY, **kw})
    with torch.no_grad():  # timm zeroes biases and the head: perturb every parameter so each one matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref.eval()


@pytest.mark.parametrize("img", [32, 48])
def test_vit_keras_takes_timm_weights_exactly(img):
    provider = get_provider("vit_keras")
    assert provider.framework == "keras" and provider.check("vit_small_patch16_224") is None
    ref = _timm(img)
    model, size = provider.build("vit_small_patch16_224", TINY, img)
    assert size == img
    provider.port(model, {k: v.numpy() for k, v in ref.state_dict().items()})
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        want = ref(x).numpy()
    got = keras.ops.convert_to_numpy(model(x.permute(0, 2, 3, 1).numpy()))
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5


def test_vit_keras_port_is_strict_and_names_are_checked():
    provider = get_provider("vit_keras")
    state = {k: v.numpy() for k, v in _timm(32).state_dict().items()}
    model, _ = provider.build("vit_small_patch16_224", TINY, 32)
    with pytest.raises(PortError, match="1 missing") as err:
        provider.port(model, {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.bias"})
    assert err.value.missing == ["blocks.1.attn.qkv.bias"]
    with pytest.raises(PortError, match="1 unexpected"):
        provider.port(model, {**state, "fc_norm.weight": state["norm.weight"]})
    headless, _ = provider.build("vit_small_patch16_224", {**TINY, "num_classes": 0}, 32)
    with pytest.raises(PortError, match="unexpected"):  # timm's head has nowhere to go
        provider.port(headless, state)
    assert "did you mean 'vit_base_patch16_224'" in provider.check("vit_base_patch16_244")
    with pytest.raises(ValueError, match="unsupported kwargs"):
        provider.build("vit_small_patch16_224", {"qk_norm": True}, 32)
