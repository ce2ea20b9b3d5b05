"""Framework-neutral model configs: one table, read by the torch and the Keras twins (names are timm's)."""
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
