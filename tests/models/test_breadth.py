"""Swin and SAM ViT (and the RSBuilding backbone): ours vs timm on tiny configs, timm weights perturbed so
biases, norms and position tables matter."""
from __future__ import annotations

import pytest
import timm
import torch

from vitbench.models import torch as ours
from vitbench.models.torch.sam import RSBuildingBackbone, checkpoint_filter_fn


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("img,kw", [
    (64, dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)),  # shifted windows with masks
    (56, dict(embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=7)),  # later stages < window
    (72, dict(embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4, num_classes=5)),  # 9x9: padded windows
])
def test_swin_matches_timm(img, kw):
    torch.manual_seed(0)
    theirs = _perturbed(timm.create_model("swin_tiny_patch4_window7_224", img_size=img, **kw))
    mine = ours.create_model("swin_tiny_patch4_window7_224", img_size=img, **kw).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, img, img)
    with torch.inference_mode():
        d = _diff(theirs(x), mine(x))
        stages = mine.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    print(f"swin {img} {kw}: max abs diff {d:.2e}")
    assert d <= 1e-5
    assert len(stages) == len(kw["depths"]) and stages[-1].shape[-1] == kw["embed_dim"] * 2 ** (len(kw["depths"]) - 1)


TWINS = [n for n in ours.list_models() if n.startswith(("swin", "samvit", "sam2_hiera"))]


@pytest.mark.parametrize("name", TWINS)
def test_registered_configs_load_timm_weights_strictly(name):
    with torch.device("meta"):
        theirs = timm.create_model(name)
        mine = ours.create_model(name, num_classes=theirs.num_classes)
    sd = theirs.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in mine.state_dict().items()}


SAM_TINY = dict(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=2, window_size=3,
                global_attn_indexes=(1, 3), neck_chans=16, num_classes=7)


def test_sam_vit_matches_timm_with_windows_padding_and_rel_pos():
    torch.manual_seed(0)
    theirs = _perturbed(timm.create_model("samvit_base_patch16", **SAM_TINY))  # 8x8 map, 3x3 windows: padded
    mine = ours.create_model("samvit_base_patch16", **SAM_TINY).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        d_logits = _diff(theirs(x), mine(x))
        d_feat = _diff(theirs.forward_features(x), mine.forward_features(x))
    print(f"samvit logits {d_logits:.2e} neck features {d_feat:.2e}")
    assert d_logits <= 1e-5 and d_feat <= 1e-5


def test_sam_ln_eps_is_a_config_value():
    mine = ours.create_model("samvit_base_patch16", **{**SAM_TINY, "ln_eps": 1e-6})
    assert mine.blocks[0].norm1.eps == 1e-6 and mine.neck[1].eps == 1e-6
    assert ours.create_model("samvit_base_patch16", **SAM_TINY).blocks[0].norm1.eps == 1e-5  # timm's


def test_rsbuilding_levels_match_timm_intermediates_and_neck():
    torch.manual_seed(0)
    theirs = _perturbed(timm.create_model("samvit_base_patch16", **SAM_TINY))
    kw = {k: v for k, v in SAM_TINY.items() if k != "num_classes"}
    rs = RSBuildingBackbone(**kw, num_classes=0, out_indices=(0, 1, 3), frozen_stages=1).eval()
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("head.")}
    rs.load_state_dict(checkpoint_filter_fn(state, rs), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        levels = rs(x)
        inter = theirs.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        last = theirs.forward_features(x)
    assert len(levels) == 3
    for mine_l, t in zip(levels[:2], inter, strict=True):
        assert _diff(mine_l, t) <= 1e-5
    assert _diff(levels[2], last) <= 1e-5
    assert not rs.patch_embed.proj.weight.requires_grad and not any(p.requires_grad for p in rs.blocks[0].parameters())
    assert all(p.requires_grad for p in rs.blocks[1].parameters())


def test_rsbuilding_resizes_position_embeddings_to_other_inputs():
    kw = {k: v for k, v in SAM_TINY.items() if k != "num_classes"}
    rs = RSBuildingBackbone(**kw, num_classes=0, out_indices=(3,)).eval()
    with torch.inference_mode():
        (feat,) = rs(torch.randn(1, 3, 96, 80))
    assert feat.shape == (1, 16, 12, 10)


# last stage: 3x3 windows on a 4x4 map (padded); block 4 global; q-pooling at the first block of stages 2-4
HIERA_TINY = dict(img_size=128, embed_dim=16, num_heads=1, stages=(1, 2, 2, 2), global_att_blocks=(4,),
                  window_spec=(4, 2, 4, 3), global_pos_size=(4, 4), num_classes=6)


def test_hiera_matches_timm_with_q_pooling_windows_and_padding():
    torch.manual_seed(0)
    theirs = _perturbed(timm.create_model("sam2_hiera_tiny", **{k: v for k, v in HIERA_TINY.items()
                                                                 if k != "img_size"}))
    mine = ours.create_model("sam2_hiera_tiny", **HIERA_TINY).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 128)  # maps 32 -> 16 -> 8 -> 4
    with torch.inference_mode():
        d = _diff(theirs(x), mine(x))
        stages = mine.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    print(f"hiera max abs diff {d:.2e}")
    assert d <= 1e-5
    assert [s.shape[1:] for s in stages] == [(32, 32, 16), (16, 16, 32), (8, 8, 64), (4, 4, 128)]


@pytest.mark.parametrize("img,kw", [
    (64, dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)),
    (64, dict(embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4, extra_norm_stage=True, num_classes=3)),
    # 72/4 = 18x18 map, 4x4 windows: not divisible; the shifted blocks roll first, then pad (as pretrained)
    (72, dict(embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4)),
])
def test_swinv2_cr_matches_timm(img, kw):
    torch.manual_seed(0)
    theirs = _perturbed(timm.create_model("swinv2_cr_tiny_224", img_size=img, **kw))
    mine = ours.create_model("swinv2_cr_tiny_224", img_size=img, **kw).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, img, img)
    with torch.inference_mode():
        d = _diff(theirs(x), mine(x))
    print(f"swinv2_cr {img} {kw}: max abs diff {d:.2e}")
    assert d <= 1e-5


def test_swinv2_cr_meta_dropout_is_off_in_eval():
    mine = ours.create_model("swinv2_cr_tiny_224", img_size=64, embed_dim=16, depths=(2,), num_heads=(2,),
                             window_size=4, meta_drop=0.5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(mine(x), mine(x))
