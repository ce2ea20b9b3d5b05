"""timm's model API on the Keras Swin, SwinV2-cr and Hiera twins, checked against timm itself (as test_model_api does
for the torch twins): the same tiny configs with perturbed timm weights ported in, forward_intermediates for the
same argument combinations (indices, norm, stop_early, output_fmt, coarse, intermediates_only), forward_head,
the index and output_fmt errors, get/reset_classifier and pretrained_cfg. Keras inputs are channels-last; the maps
come back in the layout asked for, so they are compared with timm's as they are, except the final features, which
the Keras twins keep channels-last (SwinV2-cr's timm gives NCHW)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import timm  # torch/timm before TensorFlow: see conftest
import torch
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras

from vitbench.models import keras as kmodels

# as test_model_api's FAMILIES: (timm name, kwargs for both, img, timm's layout of the final features)
FAMILIES = {
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5), 64,
             "NHWC"),
    "swinv2_cr": ("swinv2_cr_tiny_224",
                  dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5), 64,
                  "NCHW"),
    "hiera": ("sam2_hiera_tiny", dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 2), global_att_blocks=(4,),
                                      window_spec=(4, 2, 4, 3), global_pos_size=(4, 4), num_classes=5), 128, "NHWC"),
}
# as test_model_api's CALLS for these families
CALLS = {
    "swin": [dict(), dict(indices=[-1], norm=True), dict(indices=1)],
    "swinv2_cr": [dict(), dict(indices=[0])],
    "hiera": [dict(), dict(indices=[0, 2], output_fmt="NHWC"), dict(indices=3, coarse=False)],
}


def _perturbed(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _pair(family: str) -> tuple[nn.Module, keras.Model, torch.Tensor, np.ndarray]:
    """timm's model with perturbed weights, our Keras twin with them ported in, an input as NCHW and NHWC."""
    name, kw, img, _ = FAMILIES[family]
    torch.manual_seed(0)
    timm_kw = {k: v for k, v in kw.items() if not (family == "hiera" and k == "img_size")}  # timm's Hiera takes none
    theirs = _perturbed(timm.create_model(name, **timm_kw))
    mine = kmodels.create_model(name, **({"img_size": img} if family == "hiera" else {}), **kw)
    kmodels.load_timm_state_dict(mine, _state(theirs))
    x = torch.randn(2, 3, img, img)
    return theirs, mine, x, x.permute(0, 2, 3, 1).numpy()


def _close(got, want, what: str = "") -> None:
    """Keras output(s) vs timm's, as numpy, within 1e-5."""
    if isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), what
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _close(a, b, f"{what}[{i}]")
        return
    got = keras.ops.convert_to_numpy(got)
    want = want.detach().numpy()
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=what)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_intermediates_match_timm(family):
    theirs, mine, x, xk = _pair(family)
    final_fmt = FAMILIES[family][3]
    with torch.inference_mode():
        for call in CALLS[family]:
            final, inter = theirs.forward_intermediates(x, **call)
            if final_fmt == "NCHW":  # the Keras twin keeps its final features channels-last
                final = _nhwc(final)
            _close(mine.forward_intermediates(xk, **call), (final, inter), f"{family} {call}")
            _close(mine.forward_intermediates(xk, intermediates_only=True, **call),
                   theirs.forward_intermediates(x, intermediates_only=True, **call), f"{family} {call} only")
        pre = theirs.forward_head(theirs.forward_features(x), pre_logits=True)
        _close(mine.forward_head(mine.forward_features(xk), pre_logits=True), pre, f"{family} pre_logits")
    with pytest.raises(ValueError, match="out of range"):
        mine.forward_intermediates(xk, indices=[99])
    with pytest.raises(ValueError, match="out of range"):
        mine.forward_intermediates(xk, indices=99)
    with pytest.raises(ValueError, match="output_fmt"):
        mine.forward_intermediates(xk, output_fmt="NWHC")


@pytest.mark.parametrize("family", ["swin", "swinv2_cr"])
def test_swin_nhwc_intermediates_and_stop_early(family):
    """NHWC, which the torch twins allow (timm's Swins give NCHW only), and stop_early, whose final features are
    those of the last stage run (no final norm unless that is the last stage)."""
    theirs, mine, x, xk = _pair(family)
    with torch.inference_mode():
        want = theirs.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        _close(mine.forward_intermediates(xk, indices=[0, 1], output_fmt="NHWC", intermediates_only=True),
               [_nhwc(t) for t in want], f"{family} NHWC")
        final, inter = theirs.forward_intermediates(x, indices=[0], stop_early=True)
        if FAMILIES[family][3] == "NCHW":
            final = _nhwc(final)
        _close(mine.forward_intermediates(xk, indices=[0], stop_early=True), (final, inter), f"{family} stop_early")


def test_hiera_rejects_norm():
    _, mine, _, xk = _pair("hiera")
    with pytest.raises(ValueError, match="norm"):
        mine.forward_intermediates(xk, norm=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_api_matches_timm(family):
    theirs, mine, x, xk = _pair(family)
    fc = mine.get_classifier()
    assert isinstance(fc, keras.layers.Dense) and fc.units == 5
    _close(fc.kernel, theirs.get_classifier().weight.T)
    mine.predict_on_batch(xk)  # a traced predict function holds the head: reset_classifier must drop it
    for n in (3, 0):
        mine.reset_classifier(n)
        theirs.reset_classifier(n)
        # the old head's weights are gone and the new ones in place: a strict port of timm's state fills them all
        kmodels.load_timm_state_dict(mine, _state(theirs))
        with torch.inference_mode():
            want = theirs(x)
        _close(mine(xk), want, f"{family} {n} classes")
        _close(mine.predict_on_batch(xk), want, f"{family} {n} classes, predict_on_batch")
        assert mine.num_classes == n and mine.get_config()["num_classes"] == n
        assert want.shape == ((2, 3) if n else (2, mine.num_features))
        assert (mine.get_classifier() is None) == (n == 0)
    mine.reset_classifier(4)
    head_paths = [w.path for w in mine.get_classifier().weights]
    assert all(p.startswith(f"{mine.name}/head/fc/") for p in head_paths), head_paths
    clone = type(mine).from_config(mine.get_config())
    clone.build((None, *xk.shape[1:]))
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in mine.weights]
    with pytest.raises(ValueError, match="global_pool"):
        mine.reset_classifier(2, global_pool="max")
    cfg = mine.pretrained_cfg
    assert cfg["input_size"] == (3, x.shape[-1], x.shape[-1]) and cfg["num_classes"] == 5 and cfg["crop_pct"] > 0
    assert (cfg["mean"], cfg["std"]) == (theirs.pretrained_cfg["mean"], theirs.pretrained_cfg["std"])
    assert cfg["architecture"] == FAMILIES[family][0]
