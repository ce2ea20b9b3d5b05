"""SAM2's Hiera image encoder (HieraDet), weight-compatible with timm's ``hieradet_sam2.py``.

"Hiera: A Hierarchical Vision Transformer without the Bells-and-Whistles" - https://arxiv.org/abs/2306.00989
"SAM 2: Segment Anything in Images and Videos" - https://arxiv.org/abs/2408.00714

Channels-last (B, H, W, C) throughout. A 7x7/4 conv embeds patches; position = a bicubic-resized global table
plus a window table tiled over the map. Stages of MultiScaleBlocks: windowed attention (window size per stage;
some blocks global), and at the first block of stages 2-4 the query and the shortcut are max-pooled 2x2
(dim x2, heads x2). As in timm, the first block of a stage still uses the previous stage's window size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import HIERA_CONFIGS
from ._registry import register_configs
from .layers import Mlp, PatchEmbed, check_output_fmt, feature_take_indices


def _ln(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)  # timm's LayerNorm


def window_partition(x: torch.Tensor, ws: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws_h, ws_w, C); H, W already multiples of ws."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws[0], ws[0], W // ws[1], ws[1], C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws[0], ws[1], C)


def window_unpartition(windows: torch.Tensor, ws: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    H, W = hw
    B = windows.shape[0] // (H * W // ws[0] // ws[1])
    x = windows.view(B, H // ws[0], W // ws[1], ws[0], ws[1], -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


def _padded(H: int, W: int, ws: tuple[int, int]) -> tuple[int, int, int, int]:
    ph, pw = (-H) % ws[0], (-W) % ws[1]
    return H + ph, W + pw, ph, pw


class MultiScaleAttention(nn.Module):
    """Attention whose queries may be max-pooled (q_stride), shrinking the output map."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = nn.MaxPool2d(q_stride, q_stride) if q_stride else None
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1), 2)  # (B, N, heads, D)
        if self.q_pool is not None:
            q = self.q_pool(q.reshape(B, H, W, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            H, W = q.shape[1:3]
            q = q.reshape(B, H * W, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(B, H, W, -1))


class MultiScaleBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0,
                 q_stride: tuple[int, int] | None = None, window_size: int = 0) -> None:
        super().__init__()
        self.window_size = (window_size, window_size)
        self.q_stride = q_stride
        self.dim, self.dim_out = dim, dim_out
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else nn.Identity()
        self.pool = nn.MaxPool2d(q_stride, q_stride) if q_stride else None
        self.norm1 = _ln(dim)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = _ln(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = self.pool(shortcut.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        ws = self.window_size
        H, W = x.shape[1:3]
        windowed = ws[0] > 0
        Hp, Wp = H, W
        if windowed:
            Hp, Wp, ph, pw = _padded(H, W, ws)
            x = window_partition(F.pad(x, (0, 0, 0, pw, 0, ph)), ws)
        x = self.attn(x)
        if self.q_stride is not None:
            ws = (ws[0] // self.q_stride[0], ws[1] // self.q_stride[1])
            H, W = shortcut.shape[1:3]
            Hp, Wp, _, _ = _padded(H, W, ws)
        if windowed:
            x = window_unpartition(x, ws, (Hp, Wp))[:, :H, :W, :]
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ClNormHead(nn.Module):
    """Average over (H, W) of channels-last features, LayerNorm, ``fc`` (timm's ClNormMlpClassifierHead keys)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = _ln(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(1, 2)))
        return x if pre_logits else self.fc(x)


class HieraDet(nn.Module):
    def __init__(self, *, img_size: int = 224, num_classes: int = 0, embed_dim: int = 96, num_heads: int = 1,
                 q_pool: int = 3, q_stride: tuple[int, int] = (2, 2), stages: tuple[int, ...] = (2, 3, 16, 3),
                 global_pos_size: tuple[int, int] = (7, 7), window_spec: tuple[int, ...] = (8, 4, 14, 7),
                 global_att_blocks: tuple[int, ...] = (12, 16, 20), in_chans: int = 3) -> None:
        super().__init__()
        self.img_size, self.num_classes = img_size, num_classes
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(None, 4, in_chans, embed_dim, flatten=False, kernel_size=7, stride=4, padding=3)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_window, std=0.02)
        blocks, stage = [], 0
        for i in range(sum(stages)):
            dim_out = embed_dim
            window = 0 if i in global_att_blocks else window_spec[stage]  # read before the stage advances
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = embed_dim * 2, num_heads * 2, stage + 1
            blocks.append(MultiScaleBlock(embed_dim, dim_out, num_heads,
                                          q_stride=q_stride if i in q_pool_blocks else None, window_size=window))
            embed_dim = dim_out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = embed_dim
        self.head = ClNormHead(embed_dim, num_classes)
        self.compile_regions = ("blocks",)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile((pos.shape[-2] // win.shape[-2], pos.shape[-1] // win.shape[-1]))
        return x + pos.permute(0, 2, 3, 1)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = True,
        output_fmt: str = "NCHW", intermediates_only: bool = False, coarse: bool = True,
    ) -> list | tuple[torch.Tensor, list]:
        """timm's API: with ``coarse`` the indices count stages (taken at each stage's last block), else blocks;
        each as (B, C, H, W) or channels-last (``'NHWC'``). No ``norm`` (as timm: the norm is in the head)."""
        if norm:
            raise ValueError("forward_intermediates: norm is not supported by Hiera (its norm is in the head)")
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        if coarse:
            take, last = feature_take_indices(len(self.stage_ends), indices)
            take, last = [self.stage_ends[i] for i in take], self.stage_ends[last]
        else:
            take, last = feature_take_indices(len(self.blocks), indices)
        x, inter = self._pos_embed(self.patch_embed(x)), []
        for i, blk in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = blk(x)
            if i in take:
                inter.append(x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x)
        return inter if intermediates_only else (x, inter)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``fc`` (the head's norm is kept, as timm's ClNormMlpClassifierHead.reset does)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"reset_classifier: global_pool {global_pool!r} is not supported (only 'avg')")
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (as timm's Hiera): the position tables."""
        return {"pos_embed", "pos_embed_window"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self._pos_embed(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_configs(HIERA_CONFIGS, HieraDet)
