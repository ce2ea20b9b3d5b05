"""A ViT-S/16 written the way someone might write their own: module names of its own (``layers.3.qkv_proj``, not
timm's ``blocks.3.attn.qkv``), the same network as timm's ``vit_small_patch16_224``.

``checkpoint_filter_fn(state_dict, model)`` is how vitbench ports timm's weights into it: it renames timm's keys to
ours. vitbench calls it because this module (the one the suite names) defines it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitbench.port import rename


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv_proj(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, c))


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_a = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.ln_b = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_a(x))
        return x + self.ffn(self.ln_b(x))


class MyViT(nn.Module):
    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6,
                 classes: int = 1000) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (img_size // patch) ** 2 + 1, dim))
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(depth))
        self.final_ln = nn.LayerNorm(dim, eps=1e-6)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patchify(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.final_ln(x)[:, 0])


def my_vit_small(**kwargs) -> MyViT:
    """ViT-S/16: what the suite names (``my_vit_torch:my_vit_small``); kwargs (img_size, depth, ...) pass on."""
    return MyViT(**kwargs)


# timm's names -> ours, applied in this order to every key of timm's state_dict
TIMM_TO_MINE = [("patch_embed.proj.", "patchify."), ("cls_token", "cls"), ("pos_embed", "pos"), ("blocks.", "layers."),
                (".norm1.", ".ln_a."), (".norm2.", ".ln_b."), (".attn.qkv.", ".attn.qkv_proj."),
                (".attn.proj.", ".attn.out_proj."), (".mlp.fc1.", ".ffn.0."), (".mlp.fc2.", ".ffn.2."),
                ("norm.", "final_ln."), ("head.", "classifier.")]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """timm's ViT state_dict under this model's names (vitbench then loads it with strict=True)."""
    return rename(state_dict, TIMM_TO_MINE)
