"""timm's model API on every torch family, checked against timm itself on tiny configs with perturbed weights:
forward_intermediates (indices, norm, output_fmt, intermediates_only), forward_head, get/reset_classifier,
pretrained_cfg; and parity checks that bite (a state_dict with two biases swapped must fail)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vitbench.models import torch as ours

# (our name, kwargs for both, img, timm-only kwargs) - tiny: windows, shifts, padding and q-pooling still happen
FAMILIES = {
    "vit": ("test_vit", dict(img_size=64, depth=3, num_classes=5), 64),
    "vit_avg": ("test_vit", dict(img_size=64, depth=2, class_token=False, global_pool="avg", num_classes=5), 64),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5), 64),
    "swinv2_cr": ("swinv2_cr_tiny_224",
                  dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5), 64),
    "sam": ("samvit_base_patch16", dict(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=2, window_size=3,
                                        global_attn_indexes=(1, 3), neck_chans=16, num_classes=5), 64),
    "hiera": ("sam2_hiera_tiny", dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 2), global_att_blocks=(4,),
                                      window_spec=(4, 2, 4, 3), global_pos_size=(4, 4), num_classes=5), 128),
}
# forward_intermediates arguments each family's timm model accepts (ViT: NLC too; Hiera: no norm)
CALLS = {
    "vit": [dict(indices=[0, -1]), dict(indices=2, output_fmt="NLC", norm=True), dict(indices=1, stop_early=True)],
    "swin": [dict(), dict(indices=[-1], norm=True), dict(indices=1)],
    "swinv2_cr": [dict(), dict(indices=[0])],
    "sam": [dict(indices=[1, 3]), dict(indices=1, norm=True)],
    "hiera": [dict(), dict(indices=[0, 2], output_fmt="NHWC"), dict(indices=3, coarse=False)],
}
CALLS["vit_avg"] = CALLS["vit"]


def _perturbed(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _pair(family: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    name, kw, img = FAMILIES[family]
    torch.manual_seed(0)
    timm_kw = {k: v for k, v in kw.items() if not (family == "hiera" and k == "img_size")}
    theirs = _perturbed(timm.create_model(name, **timm_kw))
    mine = ours.create_model(name, **({"img_size": img} if family == "hiera" else {}), **kw).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, mine, torch.randn(2, 3, img, img)


def _close(a: torch.Tensor | list | tuple, b: torch.Tensor | list | tuple) -> None:
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
        return
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_intermediates_match_timm(family):
    theirs, mine, x = _pair(family)
    with torch.inference_mode():
        for call in CALLS[family]:
            _close(mine.forward_intermediates(x, **call), theirs.forward_intermediates(x, **call))
            _close(mine.forward_intermediates(x, intermediates_only=True, **call),
                   theirs.forward_intermediates(x, intermediates_only=True, **call))
        _close(mine.forward_head(mine.forward_features(x), pre_logits=True),
               theirs.forward_head(theirs.forward_features(x), pre_logits=True))
    with pytest.raises(ValueError, match="out of range"):
        mine.forward_intermediates(x, indices=[99])
    with pytest.raises(ValueError, match="output_fmt"):
        mine.forward_intermediates(x, output_fmt="NWHC")


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_api_matches_timm(family):
    theirs, mine, x = _pair(family)

    def their_fc() -> nn.Module:  # timm's SAM gives its whole head module, the others the Linear
        head = theirs.get_classifier()
        return getattr(head, "fc", head)

    assert isinstance(mine.get_classifier(), nn.Linear) and mine.get_classifier().out_features == 5
    _close(mine.get_classifier().weight, their_fc().weight)
    for n in (3, 0):
        mine.reset_classifier(n)
        theirs.reset_classifier(n)
        mine.get_classifier().load_state_dict(their_fc().state_dict())
        with torch.inference_mode():
            y = mine(x)
            _close(y, theirs(x))
        assert y.shape == ((2, 3) if n else (2, mine.num_features)) and mine.num_classes == n
    cfg = mine.pretrained_cfg
    assert cfg["input_size"][-1] == x.shape[-1] and len(cfg["mean"]) == 3 and cfg["crop_pct"] > 0
    assert (cfg["mean"], cfg["std"]) == (theirs.pretrained_cfg["mean"], theirs.pretrained_cfg["std"])


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_check_catches_two_swapped_biases(family):
    """The parity tests compare perturbed weights: a port that swaps two same-shaped biases must show."""
    theirs, mine, x = _pair(family)
    sd = theirs.state_dict()
    biases = [k for k, v in sd.items() if k.endswith(".bias") and v.ndim == 1]
    a, b = next((a, b) for i, a in enumerate(biases) for b in biases[i + 1:] if sd[a].shape == sd[b].shape)
    bad = {**sd, a: sd[b], b: sd[a]}
    mine.load_state_dict(bad, strict=True)
    with torch.inference_mode():
        diff = (mine(x) - theirs(x)).abs().max().item()
    print(f"{family}: {a} <-> {b} swapped: max abs diff {diff:.2e}")
    assert diff > 1e-3
