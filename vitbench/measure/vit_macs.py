"""MACs and activations of a plain ViT from its config alone (no framework imported): shared by our Keras ViT's
counter and by providers whose models are ViTs of another library (TF Model Garden's, in a tf-keras worker that
must not import our Keras 3 models)."""
from __future__ import annotations

from typing import Any


def vit_config_macs_acts(c: dict[str, Any], prefix_tokens: int = 1) -> tuple[int, int]:
    """MACs and activations per image of a ViT config (timm's words: img_size, patch_size, in_chans, embed_dim,
    depth, num_heads, mlp_ratio, num_classes), counted as the torch counter counts our torch twin (patch conv,
    qkv, q@k^T, attn@v, proj, MLP, head; activations = outputs of those ops; norms, LayerScale and pooling are not
    counted)."""
    C, H = c["embed_dim"], c["num_heads"]
    P = (c["img_size"] // c["patch_size"]) ** 2
    N, hidden = P + prefix_tokens, int(C * c.get("mlp_ratio", 4.0))
    classes = max(c.get("num_classes", 1000), 0)
    macs = P * C * c.get("in_chans", 3) * c["patch_size"] ** 2 + C * classes
    acts = P * C + classes
    macs += c["depth"] * (N * C * 3 * C + 2 * N * N * C + N * C * C + 2 * N * C * hidden)
    acts += c["depth"] * (3 * N * C + H * N * N + N * C + N * C + N * hidden + N * C)
    return macs, acts
