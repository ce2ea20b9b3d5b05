"""Vision Transformer (ViT), weight-compatible with timm's ``VisionTransformer``.

"An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale" - https://arxiv.org/abs/2010.11929

Keys of our state_dict equal timm's for the registered configs, so
``ours.load_state_dict(timm_model.state_dict(), strict=True)`` is the whole port (see ``checkpoint_filter_fn``
for other image sizes). Shapes: B batch, N tokens (1 class token + patches), C embed dim, H heads.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import VIT_CONFIGS
from ._registry import register_configs
from .layers import Attention, LayerScale, Mlp, PatchEmbed, check_output_fmt, feature_take_indices


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)  # timm's ViT LayerNorm eps (PyTorch's default is 1e-5)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)). The region we compile regionally."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        fused_attn: bool = True,
        attn: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = attn or Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm,
                                      norm_layer=_layer_norm, fused_attn=fused_attn)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(
        self, x: torch.Tensor, return_attn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if return_attn:
            y, attn = self.attn(self.norm1(x), return_attn=True)
            x = x + self.ls1(y)
            return x + self.ls2(self.mlp(self.norm2(x))), attn
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT classifier: patch_embed -> [cls] + pos_embed -> blocks -> norm -> pool -> head."""

    compile_regions = ("blocks",)  # repeated blocks for regional torch.compile

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: Literal["token", "avg"] = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        class_token: bool = True,
        fused_attn: bool = True,
        attention: str = "exact",
        attention_kwargs: dict | None = None,
    ) -> None:
        """``attention``: exact | linformer | performer | nystrom | atrous | hybrid (efficient_attention.py);
        ``attention_kwargs`` go to the variant (e.g. k, nb_features, num_landmarks, window, rates)."""
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"VisionTransformer: global_pool must be 'token' or 'avg', not {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("VisionTransformer: global_pool='token' needs class_token=True")
        self.global_pool = global_pool
        self.img_size, self.num_classes = img_size, num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim))
        self.attention = attention

        def attn() -> nn.Module | None:
            if attention == "exact":
                return None
            from .efficient_attention import VARIANTS

            if attention not in VARIANTS:
                raise ValueError(f"VisionTransformer: attention must be exact or one of {sorted(VARIANTS)}, "
                                 f"not {attention!r}")
            kw = dict(attention_kwargs or {})
            if attention == "linformer":
                kw.setdefault("seq_len", self.patch_embed.num_patches + self.num_prefix_tokens)
            if attention in ("atrous", "hybrid"):
                kw.setdefault("grid", self.patch_embed.grid_size)
                kw.setdefault("num_prefix_tokens", self.num_prefix_tokens)
            return VARIANTS[attention](embed_dim, num_heads, qkv_bias, **kw)

        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
                  init_values=init_values, fused_attn=fused_attn, attn=attn())
            for _ in range(depth)
        ])
        use_fc_norm = global_pool == "avg"  # timm: with avg pooling the final norm moves after the pool
        self.norm = nn.Identity() if use_fc_norm else _layer_norm(embed_dim)
        self.fc_norm = _layer_norm(embed_dim) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N-1, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, C)
        return x + self.pos_embed

    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (as timm's): the learned tokens and position table."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normed tokens (B, N, C)."""
        return self.norm(self.blocks(self._embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, C) -> logits (B, num_classes), or pooled features with ``pre_logits``."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, return_prefix_tokens: bool = False,
        norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """timm's API: the outputs of the blocks ``indices`` picks (None: all, n: the last n, a list: those),
        prefix tokens split off, as (B, C, H, W) (``output_fmt='NCHW'``) or tokens (B, N, C) (``'NLC'``); with
        ``norm`` through the final norm; with ``return_prefix_tokens`` each as (spatial, prefix). Returns
        ``(normed final tokens, intermediates)``, or the intermediates alone."""
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        take, last = feature_take_indices(len(self.blocks), indices)
        x, inter = self._embed(x), []
        for i, blk in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = blk(x)
            if i in take:
                inter.append(self.norm(x) if norm else x)
        p = self.num_prefix_tokens
        prefix, inter = [y[:, :p] for y in inter], [y[:, p:] for y in inter]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.grid_size
            inter = [y.reshape(y.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
        if return_prefix_tokens and p:
            inter = list(zip(inter, prefix, strict=True))
        return inter if intermediates_only else (self.norm(x), inter)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none, forward gives pooled features); optionally a new pooling."""
        if global_pool is not None:
            if global_pool not in ("token", "avg") or (global_pool == "token" and self.cls_token is None):
                raise ValueError(f"reset_classifier: global_pool {global_pool!r} does not fit this model")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Softmax attention of every block, each (B, H, N, N)."""
        x, maps = self._embed(x), []
        for blk in self.blocks:
            x, attn = blk(x, return_attn=True)
            maps.append(attn)
        return maps


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubic resize of (1, prefix + h*w, C) position embeddings to a new patch grid (prefix tokens kept)."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(math.sqrt(grid.shape[1]))
    if (old, old) == tuple(new_grid):
        return pos_embed
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """timm ViT state_dict -> ours: keys are identical; strip compile wrappers, resize pos_embed if needed; with an
    efficient attention variant, its extra parameters (Linformer's E/F, the atrous gate) keep their own init."""
    from .efficient_attention import checkpoint_filter_fn as variant_filter

    out = {}
    for k, v in state_dict.items():
        k = k.replace("_orig_mod.", "")
        if k == "pos_embed" and v.shape != model.pos_embed.shape:
            v = resample_pos_embed(v, model.patch_embed.grid_size, model.num_prefix_tokens)
        out[k] = v
    return variant_filter(out, model)


# Configs are data (vitbench.models.configs, shared with the Keras twin); each becomes a registered entry point.
register_configs(VIT_CONFIGS, VisionTransformer)
