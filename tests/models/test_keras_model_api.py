"""timm's model API on the Keras ViT (class token and avg pool) and SAM ViT, checked against timm itself on tiny
configs with perturbed weights, as test_model_api.py does for the torch families: forward_intermediates (indices,
norm, stop_early, output_fmt, prefix tokens, intermediates_only), forward_features / forward_head, the argument
errors, get/reset_classifier and pretrained_cfg. Keras' TensorFlow backend; inputs channels-last, and NHWC maps
are moved to NCHW before they meet timm's."""
from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import timm  # torch/timm before TensorFlow: see conftest
import torch

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from vitbench.models import torch as tours  # noqa: E402
from vitbench.models.configs import PREPROCESSING  # noqa: E402
from vitbench.models.keras import sam as ksam  # noqa: E402
from vitbench.models.keras import vit as kvit  # noqa: E402
from vitbench.models.keras._registry import create_model, load_timm_state_dict  # noqa: E402

IMG = 64
# (timm / our name, kwargs for both) - tiny: SAM's windows (3 on an 8x8 map) still pad, blocks 1 and 3 are global
FAMILIES = {
    "vit": ("test_vit", dict(img_size=IMG, depth=3, num_classes=5)),
    "vit_avg": ("test_vit", dict(img_size=IMG, depth=2, class_token=False, global_pool="avg", num_classes=5)),
    "sam": ("samvit_base_patch16", dict(img_size=IMG, patch_size=8, embed_dim=32, depth=4, num_heads=2,
                                        window_size=3, global_attn_indexes=(1, 3), neck_chans=16, num_classes=5)),
}
# forward_intermediates arguments (timm's ViT: NCHW / NLC, SAM: NCHW; NHWC is ours, compared after a transpose)
CALLS = {
    "vit": [dict(indices=[0, -1]), dict(indices=2, output_fmt="NLC", norm=True), dict(indices=1, stop_early=True),
            dict(indices=[1], output_fmt="NHWC", norm=True), dict(indices=[-2], return_prefix_tokens=True),
            dict(indices=[0], output_fmt="NHWC", return_prefix_tokens=True, stop_early=True)],
    "sam": [{**call, "output_fmt": fmt} for call in (dict(indices=[1, 3]), dict(indices=1, norm=True),
                                                     dict(indices=[0, -2], stop_early=True))
            for fmt in ("NCHW", "NHWC")],
}
CALLS["vit_avg"] = CALLS["vit"]


def _pair(family: str) -> tuple[torch.nn.Module, keras.Model, torch.Tensor, np.ndarray]:
    """timm's model with perturbed weights (timm zeroes biases and tables), its Keras twin with those weights, an
    NCHW batch for timm and the same batch NHWC for Keras."""
    name, kw = FAMILIES[family]
    torch.manual_seed(0)
    theirs = timm.create_model(name, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    mine = create_model(name, **kw)
    load_timm_state_dict(mine, {k: v.numpy() for k, v in theirs.state_dict().items()})
    x = torch.randn(2, 3, IMG, IMG)
    return theirs.eval(), mine, x, x.permute(0, 2, 3, 1).numpy()


def _np(y) -> np.ndarray:
    return keras.ops.convert_to_numpy(y)


def _default_fmt(model) -> str:
    return inspect.signature(model.forward_intermediates).parameters["output_fmt"].default


def _as_timm(y, fmt: str):
    """Keras output -> numpy in timm's layout: NHWC maps transposed to NCHW (tokens stay), lists/tuples kept."""
    if isinstance(y, (list, tuple)):
        return type(y)(_as_timm(v, fmt) for v in y)
    y = _np(y)
    return y.transpose(0, 3, 1, 2) if fmt == "NHWC" and y.ndim == 4 else y


def _close(got, want) -> None:
    if isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _close(g, w)
        return
    want = want.detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_intermediates_match_timm(family):
    theirs, mine, x, xk = _pair(family)
    for call in [*CALLS[family], dict(indices=2)]:  # the last one in the default output_fmt
        fmt = call.get("output_fmt", _default_fmt(mine))
        their_call = {**call, "output_fmt": "NCHW"} if fmt == "NHWC" else call
        with torch.inference_mode():
            want = theirs.forward_intermediates(x, **their_call)
            want_only = theirs.forward_intermediates(x, intermediates_only=True, **their_call)
        got = mine.forward_intermediates(xk, **call)
        assert isinstance(got, tuple) and isinstance(got[1], list)
        _close(_as_timm(got, fmt), want)
        _close(_as_timm(mine.forward_intermediates(xk, intermediates_only=True, **call), fmt), want_only)
    with torch.inference_mode():
        feats = theirs.forward_features(x)
        pre, logits = theirs.forward_head(feats, pre_logits=True), theirs.forward_head(feats)
    f = mine.forward_features(xk)  # ViT: tokens (B, N, C); SAM: the neck map, channels-last
    _close(_as_timm(f, "NHWC"), feats)
    _close(_np(mine.forward_head(f, pre_logits=True)), pre)
    _close(_np(mine.forward_head(f)), logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_intermediates_argument_errors(family):
    _, mine, _, xk = _pair(family)
    for indices in ([99], [0, -99], 0, 99):
        with pytest.raises(ValueError, match="out of range"):
            mine.forward_intermediates(xk, indices=indices)
    for fmt in ("NWHC", "nchw", *(("NLC",) if family == "sam" else ())):  # timm's SAM has no token format
        with pytest.raises(ValueError, match="output_fmt"):
            mine.forward_intermediates(xk, output_fmt=fmt)


@pytest.mark.parametrize("family", ["vit", "sam"])
def test_output_fmt_default_is_the_torch_twins(family):
    name, kw = FAMILIES[family]
    assert _default_fmt(create_model(name, **kw)) == _default_fmt(tours.create_model(name, **kw))


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_api_matches_timm(family):
    theirs, mine, x, xk = _pair(family)

    def their_fc() -> torch.nn.Module:  # timm's SAM gives its whole head module, the ViT the Linear
        head = theirs.get_classifier()
        return getattr(head, "fc", head)

    fc = mine.get_classifier()
    assert isinstance(fc, keras.layers.Dense) and fc.units == 5
    np.testing.assert_array_equal(_np(fc.kernel), their_fc().weight.detach().numpy().T)
    path, n_weights = fc.kernel.path, len(mine.weights)
    for n in (3, 0):
        mine.reset_classifier(n)
        theirs.reset_classifier(n)
        fc = mine.get_classifier()
        if n:  # a new head in the old one's place; timm's fresh weights copied in to compare outputs
            assert fc.units == n and fc.kernel.path == path and len(mine.weights) == n_weights
            fc.kernel.assign(their_fc().weight.detach().numpy().T)
            fc.bias.assign(their_fc().bias.detach().numpy())
        else:  # no head: the old head's weights are gone, the model gives pooled features
            assert fc is None and len(mine.weights) == n_weights - 2
        with torch.inference_mode():
            want = theirs(x)
        y = _np(mine(xk))
        _close(y, want)
        assert y.shape == ((2, 3) if n else (2, mine.num_features)) and mine.num_classes == n
        clone = type(mine).from_config(mine.get_config())  # the config says what the model now is
        clone.build((None, IMG, IMG, 3))
        assert [w.path for w in clone.weights] == [w.path for w in mine.weights]
        assert mine.pretrained_cfg["num_classes"] == n
    cfg = mine.pretrained_cfg
    assert cfg["input_size"] == (3, IMG, IMG) and cfg["crop_pct"] > 0 and cfg["architecture"] == FAMILIES[family][0]
    assert (cfg["mean"], cfg["std"]) == (theirs.pretrained_cfg["mean"], theirs.pretrained_cfg["std"])


def test_vit_reset_classifier_global_pool_as_timm():
    """A new pooling keeps the final norm where it was (timm records ``fc_norm``), and the config rebuilds it."""
    theirs, mine, x, xk = _pair("vit")
    mine.reset_classifier(3, global_pool="avg")
    theirs.reset_classifier(3, global_pool="avg")
    mine.head.kernel.assign(theirs.head.weight.detach().numpy().T)
    mine.head.bias.assign(theirs.head.bias.detach().numpy())
    with torch.inference_mode():
        want = theirs(x)
    _close(_np(mine(xk)), want)
    config = mine.get_config()
    assert (config["global_pool"], config["fc_norm"], config["num_classes"]) == ("avg", False, 3)
    clone = kvit.VisionTransformer.from_config(config)
    clone.build((None, IMG, IMG, 3))
    assert [w.path for w in clone.weights] == [w.path for w in mine.weights]
    for a, b in zip(clone.weights, mine.weights, strict=True):
        a.assign(b.value)
    _close(_np(clone(xk)), want)
    with pytest.raises(ValueError, match="global_pool"):
        _pair("vit_avg")[1].reset_classifier(3, global_pool="token")  # no class token
    with pytest.raises(ValueError, match="global_pool"):
        _pair("sam")[1].reset_classifier(3, global_pool="max")


def test_pretrained_cfg_of_unregistered_names_is_the_familys():
    vit = kvit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=4)
    sam = ksam.VisionTransformerSAM(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, neck_chans=8)
    for model, family in ((vit, "vit_base_patch16_224"), (sam, "samvit_base_patch16")):
        want = PREPROCESSING[family]
        cfg = model.pretrained_cfg
        assert cfg["input_size"] == (3, 32, 32) and cfg["architecture"] == model.name
        assert {k: cfg[k] for k in ("mean", "std", "crop_pct")} == {k: want[k] for k in ("mean", "std", "crop_pct")}


def test_rsbuilding_backbone_levels_are_the_intermediates():
    """The RSBuilding backbone inherits the API: its levels are forward_intermediates' maps (the last one the
    neck's), and both equal timm's SAM."""
    theirs, _, x, xk = _pair("sam")
    kw = {k: v for k, v in FAMILIES["sam"][1].items() if k != "num_classes"}
    rs = create_model("rsbuilding_vit_base", **kw, out_indices=(1, -1))
    load_timm_state_dict(rs, {k: v.numpy() for k, v in theirs.state_dict().items()})  # head.fc dropped
    with torch.inference_mode():
        feats, (block1,) = theirs.forward_intermediates(x, indices=[1])
    levels = rs(xk)
    _close(_as_timm(levels, "NHWC"), [block1, feats])
    _close(_as_timm(rs.forward_intermediates(xk, indices=[1], output_fmt="NCHW"), "NCHW"), (feats, [block1]))
    assert rs.get_classifier() is None and rs.pretrained_cfg["crop_pct"] == 1.0
