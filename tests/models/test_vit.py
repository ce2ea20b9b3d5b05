"""Our ViT vs timm's: strict weight import for every registered config, and output parity on tiny ones."""
import pytest
import timm
import torch

from vitbench.models import torch as ours
from vitbench.models.configs import VIT_CONFIGS
from vitbench.models.torch.vit import checkpoint_filter_fn


@pytest.mark.parametrize("name", sorted(VIT_CONFIGS))
def test_every_registered_config_loads_timm_weights_strictly(name):
    with torch.device("meta"):  # shapes and names only: no memory, no init time
        theirs = timm.create_model(name, img_size=160) if name == "test_vit" else timm.create_model(name)
        mine = ours.create_model(name)
    sd = theirs.state_dict()
    own = mine.state_dict()
    assert set(sd) == set(own)
    assert all(sd[k].shape == own[k].shape for k in sd)
    mine.load_state_dict(sd, strict=True, assign=True)


@pytest.mark.parametrize(
    "name,kwargs,img",
    [
        ("test_vit", {}, 160),
        ("vit_small_patch16_224", {"depth": 2}, 224),
        ("vit_tiny_patch16_224", {"depth": 2, "global_pool": "avg"}, 224),
        ("vit_base_patch32_224", {"depth": 1, "num_classes": 10}, 224),
    ],
)
def test_parity_with_timm(name, kwargs, img):
    torch.manual_seed(0)
    theirs = timm.create_model(name, img_size=img, **kwargs).eval()
    mine = ours.create_model(name, img_size=img, **kwargs).eval()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, img, img)
    with torch.inference_mode():
        diff = (theirs(x) - mine(x)).abs().max().item()
        feat = (theirs.forward_features(x) - mine.forward_features(x)).abs().max().item()
    print(f"{name} {kwargs}: logits max abs diff {diff:.2e}, features {feat:.2e}")
    assert diff <= 1e-5 and feat <= 1e-5


def test_attention_maps_are_softmax_rows_per_block():
    mine = ours.create_model("test_vit", depth=3).eval()
    with torch.inference_mode():
        maps = mine.attention_maps(torch.randn(1, 3, 160, 160))
    assert len(maps) == 3 and maps[0].shape == (1, 2, 101, 101)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(1, 2, 101))


def test_pos_embed_resized_on_import_to_other_img_size():
    theirs = timm.create_model("test_vit", img_size=160, depth=1).eval()
    mine = ours.create_model("test_vit", img_size=224, depth=1).eval()
    mine.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), mine), strict=True)
    assert mine.pos_embed.shape == (1, 197, 64)
    with pytest.raises(ValueError, match="does not match the model's img_size"):
        mine(torch.randn(1, 3, 160, 160))
