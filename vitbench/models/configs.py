"""Framework-neutral model configs: one table per family, read by the torch and the Keras twins (names are
timm's), and each model's preprocessing (``pretrained_cfg``: what timm's twin of the same name was trained with)."""
from __future__ import annotations

VIT_CONFIGS: dict[str, dict] = {
    "test_vit": dict(img_size=160, patch_size=16, embed_dim=64, depth=6, num_heads=2, mlp_ratio=3),
    "vit_tiny_patch16_224": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch32_224": dict(img_size=224, patch_size=32, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch16_384": dict(img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16),
}

# Swin (v1), timm's names; window 7, patch 4, img 224
SWIN_CONFIGS: dict[str, dict] = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_small_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_base_patch4_window7_224": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}

# SwinV2 in timm's 'cr' port: the original SwinV2 sizes (Liu et al. 2022, Table 1)
SWINV2_CR_CONFIGS: dict[str, dict] = {
    "swinv2_cr_tiny_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swinv2_cr_tiny_ns_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), extra_norm_stage=True),
    "swinv2_cr_small_224": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swinv2_cr_base_224": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}

# SAM's ViT image encoder (timm's samvit_*; 1024 px, window 14, neck 256)
SAM_CONFIGS: dict[str, dict] = {
    "samvit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "samvit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "samvit_huge_patch16": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}

# SAM2's Hiera image encoder (timm's sam2_hiera_*)
HIERA_CONFIGS: dict[str, dict] = {
    "sam2_hiera_tiny": dict(stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
    "sam2_hiera_small": dict(stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
}


# the models our Keras package implements (the provider checks names here without importing Keras)
KERAS_MODELS: tuple[str, ...] = (*VIT_CONFIGS, *SWIN_CONFIGS, *SWINV2_CR_CONFIGS, *SAM_CONFIGS, "rsbuilding_vit_base",
                                  *HIERA_CONFIGS)

# Preprocessing of each model (timm's pretrained_cfg of its twin): carried by our models as ``pretrained_cfg``
IMAGENET_DEFAULT = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic", crop_pct=0.9)
IMAGENET_INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.9)
PREPROCESSING: dict[str, dict] = {
    **{name: IMAGENET_INCEPTION for name in VIT_CONFIGS},
    "test_vit": {**IMAGENET_INCEPTION, "crop_pct": 0.95},
    "vit_base_patch16_384": {**IMAGENET_INCEPTION, "crop_pct": 1.0},
    **{name: IMAGENET_DEFAULT for name in (*SWIN_CONFIGS, *SWINV2_CR_CONFIGS)},
    **{name: {**IMAGENET_DEFAULT, "crop_pct": 1.0} for name in (*SAM_CONFIGS, "rsbuilding_vit_base", *HIERA_CONFIGS)},
}


def pretrained_cfg(name: str, img_size: int, num_classes: int, in_chans: int = 3) -> dict:
    """timm-style ``pretrained_cfg`` of our model ``name`` as built (its own input size and classes)."""
    return {"architecture": name, "input_size": (in_chans, img_size, img_size), "num_classes": num_classes,
            **PREPROCESSING.get(name, IMAGENET_DEFAULT)}
