"""Swin Transformer V2, weight-compatible with timm's ``swin_transformer_v2_cr.py`` (the port closest to the
authors' code).

"Swin Transformer V2: Scaling Up Capacity and Resolution" - https://arxiv.org/abs/2111.09883

Differences from Swin v1: post-norm residual blocks (x + norm(attn(x))), scaled cosine attention with a learned
per-head temperature (logit_scale, clamped at log 100), and a continuous relative position bias made by a small
MLP ("meta MLP") from log-spaced (dy, dx) offsets. Channels-last (B, H, W, C) inside.

timm's FIXMEs, settled here:
- configs (embed_dim, depths, heads, window 7 at 224) are the original SwinV2 ones (``SWINV2_CR_CONFIGS``);
- the meta MLP's dropout (timm: 0.125) is ``meta_drop`` and, like every dropout, off in eval; benchmarks run in
  eval, so it never changes a measured output;
- the shifted-window roll happens on the unpadded map, padding only after it (rolling a padded map would wrap
  padding into real windows, which pretrained SwinV2 never saw); masks are built for the padded size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import SWINV2_CR_CONFIGS
from ._registry import register_configs
from .layers import Mlp, PatchEmbed, check_output_fmt, feature_take_indices
from .swin import ClassifierHead, PatchMerging, shift_window_mask, shifted_window_attention


class MetaMlp(nn.Module):
    """(dy, dx) log offsets -> one bias per head: fc1 -> ReLU -> dropout -> fc2."""

    def __init__(self, hidden: int, num_heads: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.act = nn.ReLU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop1(self.act(self.fc1(x))))


class WindowMultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], meta_hidden_dim: int = 384,
                 meta_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.meta_mlp = MetaMlp(meta_hidden_dim, num_heads, meta_drop)
        self.logit_scale = nn.Parameter(torch.full((num_heads,), math.log(10.0)))
        ys, xs = (torch.arange(w, dtype=torch.float32) for w in window_size)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).flatten(1)  # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2)  # (N*N, 2)
        self.register_buffer("relative_coordinates_log", torch.sign(rel) * torch.log1p(rel.abs()), persistent=False)

    def rel_pos_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        return self.meta_mlp(self.relative_coordinates_log).transpose(1, 0).reshape(1, self.num_heads, n, n)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        Bw, N, C = x.shape
        q, k, v = self.qkv(x).view(Bw, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (Bw, H, N, D)
        scale = torch.clamp(self.logit_scale.reshape(1, -1, 1, 1), max=math.log(100.0)).exp()
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * scale  # cosine attention
        attn = attn + self.rel_pos_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(Bw // nw, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(Bw, N, -1)
        return self.proj(x)


class SwinTransformerV2CrBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, feat_size: tuple[int, int], window_size: tuple[int, int],
                 shift: bool, mlp_ratio: float = 4.0, extra_norm: bool = False, meta_hidden_dim: int = 384,
                 meta_drop: float = 0.0) -> None:
        super().__init__()
        self.window_size = tuple(min(f, w) for f, w in zip(feat_size, window_size, strict=True))
        self.shift_size = (tuple(0 if f <= w else w // 2 for f, w in zip(feat_size, self.window_size, strict=True))
                           if shift else (0, 0))
        self.attn = WindowMultiHeadAttention(dim, num_heads, self.window_size, meta_hidden_dim, meta_drop)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim) if extra_norm else nn.Identity()
        # masks are built for the padded map (the roll happens before padding, see the module docstring)
        self.register_buffer("attn_mask", shift_window_mask(feat_size, self.window_size, self.shift_size),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Post-norm: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        x = x + self.norm1(shifted_window_attention(x, self.attn, self.window_size, self.shift_size, self.attn_mask))
        x = x.reshape(B, -1, C)
        x = self.norm3(x + self.norm2(self.mlp(x)))
        return x.reshape(B, H, W, C)


class SwinTransformerV2CrStage(nn.Module):
    def __init__(self, dim: int, depth: int, downscale: bool, feat_size: tuple[int, int], num_heads: int,
                 window_size: tuple[int, int], mlp_ratio: float = 4.0, extra_norm_period: int = 0,
                 extra_norm_stage: bool = False, meta_hidden_dim: int = 384, meta_drop: float = 0.0) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim, 2 * dim) if downscale else nn.Identity()
        dim = 2 * dim if downscale else dim
        feat = tuple((s + 1) // 2 for s in feat_size) if downscale else feat_size

        def extra(i: int) -> bool:
            return bool(extra_norm_period and i % extra_norm_period == 0) or (extra_norm_stage and i == depth)

        self.blocks = nn.Sequential(*[
            SwinTransformerV2CrBlock(dim, num_heads, feat, window_size, shift=j % 2 == 1, mlp_ratio=mlp_ratio,
                                     extra_norm=extra(j + 1), meta_hidden_dim=meta_hidden_dim, meta_drop=meta_drop)
            for j in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class SwinTransformerV2Cr(nn.Module):
    def __init__(self, *, img_size: int = 224, patch_size: int = 4, num_classes: int = 1000, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int | None = None, window_ratio: int = 8, mlp_ratio: float = 4.0,
                 extra_norm_period: int = 0, extra_norm_stage: bool = False, meta_hidden_dim: int = 384,
                 meta_drop: float = 0.0, in_chans: int = 3) -> None:
        super().__init__()
        self.img_size, self.num_classes = img_size, num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, flatten=False, norm=True)
        grid = self.patch_embed.grid_size
        ws = (window_size, window_size) if window_size else tuple(max(1, g // window_ratio) for g in grid)
        stages, dim, scale = [], embed_dim, 1
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            stages.append(SwinTransformerV2CrStage(
                dim, depth, downscale=i != 0, feat_size=tuple((g + scale - 1) // scale for g in grid),
                num_heads=heads, window_size=ws, mlp_ratio=mlp_ratio, extra_norm_period=extra_norm_period,
                extra_norm_stage=extra_norm_stage or i == len(depths) - 1,  # the last stage ends with a norm
                meta_hidden_dim=meta_hidden_dim, meta_drop=meta_drop))
            if i != 0:
                dim, scale = dim * 2, scale * 2
        self.stages = nn.Sequential(*stages)
        self.num_features = dim
        self.head = ClassifierHead(dim, num_classes, pool_dims=(2, 3))  # features are NCHW, as timm's
        self.compile_regions = tuple(f"stages.{i}.blocks" for i in range(len(depths)))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """timm's API over the stages: each picked stage's output as (B, C, H, W) (``'NHWC'``: channels-last).
        ``norm`` changes nothing (as in timm: the norms live inside the stages)."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, last = feature_take_indices(len(self.stages), indices)
        x, inter = self.patch_embed(x), []
        for i, stage in enumerate(self.stages[: last + 1] if stop_early else self.stages):
            x = stage(x)
            if i in take:
                inter.append(x.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else x)
        return inter if intermediates_only else (x.permute(0, 3, 1, 2), inter)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/32, W/32), NCHW as timm's (the stages run channels-last)."""
        return self.stages(self.patch_embed(x)).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_configs(SWINV2_CR_CONFIGS, SwinTransformerV2Cr)
