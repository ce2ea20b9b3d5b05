"""Swin Transformer, weight-compatible with timm's ``swin_transformer.py``.

"Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" - https://arxiv.org/abs/2103.14030

Tokens stay channels-last (B, H, W, C) between blocks. Each block attends inside (ws x ws) windows; every second
block shifts the windows by ws // 2 (a cyclic roll) and masks pairs that were not neighbours before the roll.
Attention logits get a learned relative position bias. Stages 2-4 start with PatchMerging (2x2 -> 1, C -> 2C).
State_dict keys equal timm's, so ``load_state_dict(timm_model.state_dict(), strict=True)`` is the whole port.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import SWIN_CONFIGS
from ._registry import register_configs
from .layers import Mlp, PatchEmbed, check_output_fmt, feature_take_indices


def window_partition(x: torch.Tensor, ws: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws_h * ws_w, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws[0], ws[0], W // ws[1], ws[1], C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws[0] * ws[1], C)


def window_reverse(windows: torch.Tensor, ws: tuple[int, int], H: int, W: int) -> torch.Tensor:
    """(B * nW, ws_h * ws_w, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws[0], W // ws[1], ws[0], ws[1], C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shifted_window_attention(x: torch.Tensor, attn: nn.Module, ws: tuple[int, int], shift: tuple[int, int],
                             mask: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W, C) -> (B, H, W, C): roll the real map by -shift, then pad to whole windows (the order timm's
    pretrained weights expect), attend per window, crop, roll back. Swin and SwinV2-cr share it."""
    B, H, W, C = x.shape
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    ph, pw = (-H) % ws[0], (-W) % ws[1]
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    y = attn(window_partition(x, ws), mask=mask)
    x = window_reverse(y, ws, H + ph, W + pw)[:, :H, :W, :]
    if any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """(wh*ww, wh*ww) index into a ((2wh-1)(2ww-1), heads) bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)


def shift_window_mask(feat: tuple[int, int], ws: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor | None:
    """(nW, N, N) additive mask (0 / -100) for shifted windows over the map padded to multiples of ws: after the
    cyclic roll, tokens that were not neighbours (different regions) must not attend to each other."""
    if not any(shift):
        return None
    (wh, ww), (sh, sw) = ws, shift
    H, W = -(-feat[0] // wh) * wh, -(-feat[1] // ww) * ww
    region, label = torch.zeros(1, H, W, 1), 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for wsl in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[:, hs, wsl, :] = label
            label += 1
    win = window_partition(region, ws).squeeze(-1)  # (nW, N)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head attention inside windows, with a relative position bias (and the shift mask when given)."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.window_area = window_size[0] * window_size[1]
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(*window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def rel_pos_bias(self) -> torch.Tensor:
        n = self.window_area
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, H, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        Bw, N, C = x.shape  # Bw = B * num_windows
        q, k, v = self.qkv(x).reshape(Bw, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (Bw, H, N, D)
        bias = self.rel_pos_bias()
        if mask is not None:  # (nW, N, N) of 0 / -100, repeated over the batch
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.view(1, nw, 1, N, N)).expand(Bw // nw, -1, -1, -1, -1)
            bias = bias.reshape(Bw, self.num_heads, N, N)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(Bw, N, C))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        # a window never exceeds the feature map; then nothing is shifted (as timm without always_partition)
        ws = tuple(min(r, window_size) for r in input_resolution)
        self.window_size = ws
        shift_size = tuple(0 if r <= w else w // 2 for r, w in zip(input_resolution, ws, strict=True))
        self.shift_size = shift_size if shift else (0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, ws, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shift_window_mask(input_resolution, ws, self.shift_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        x = x + shifted_window_attention(self.norm1(x), self.attn, self.window_size, self.shift_size, self.attn_mask)
        x = x.reshape(B, -1, C)
        x = x + self.mlp(self.norm2(x))
        return x.reshape(B, H, W, C)


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): concatenate each 2x2 neighbourhood, norm, project."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H, W = x.shape[1:3]
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)  # timm's channel order
        return self.reduction(self.norm(x))


class SwinTransformerStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, input_resolution: tuple[int, int], depth: int, downsample: bool,
                 num_heads: int, window_size: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        res = tuple((r + 1) // 2 for r in input_resolution) if downsample else input_resolution
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(out_dim, res, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ClassifierHead(nn.Module):
    """Average over the spatial axes ((1, 2) for channels-last, (2, 3) for NCHW), then ``fc`` (timm's key names).
    Only timm's ``global_pool='avg'`` is implemented."""

    def __init__(self, dim: int, num_classes: int, pool_dims: tuple[int, int] = (1, 2),
                 global_pool: str = "avg") -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"ClassifierHead: global_pool {global_pool!r} is not supported (only 'avg')")
        self.pool_dims, self.global_pool, self.dim = pool_dims, global_pool, dim
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``fc`` for ``num_classes`` (0: none); the pooling stays 'avg' (timm's ``reset``)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"ClassifierHead: global_pool {global_pool!r} is not supported (only 'avg')")
        self.fc = nn.Linear(self.dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=self.pool_dims)
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    def __init__(self, *, img_size: int = 224, patch_size: int = 4, num_classes: int = 1000, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, in_chans: int = 3) -> None:
        super().__init__()
        self.img_size, self.num_classes = img_size, num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, flatten=False, norm=True)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        res = self.patch_embed.grid_size
        stages = []
        for i, depth in enumerate(depths):
            stages.append(SwinTransformerStage(dims[max(i - 1, 0)], dims[i], res, depth, downsample=i > 0,
                                               num_heads=num_heads[i], window_size=window_size, mlp_ratio=mlp_ratio))
            if i > 0:
                res = tuple((r + 1) // 2 for r in res)
        self.layers = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes)
        # regional compile: the blocks of every stage (shapes differ per stage, so one graph each)
        self.compile_regions = tuple(f"layers.{i}.blocks" for i in range(len(depths)))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """timm's API over the stages: each picked stage's output as (B, C, H, W) (``'NHWC'``: channels-last);
        ``norm`` applies the final norm to the last stage only (it is sized for it). Returns ``(final features,
        intermediates)`` or the intermediates alone."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, last = feature_take_indices(len(self.layers), indices)
        x, inter, final = self.patch_embed(x), [], len(self.layers) - 1
        for i, stage in enumerate(self.layers[: last + 1] if stop_early else self.layers):
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == final else x
                inter.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return inter
        return (self.norm(x) if i == final else x), inter

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (as timm's): every relative-position bias table."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self.patch_embed(x)))  # (B, H/32, W/32, C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SwinTransformer) -> dict[str, torch.Tensor]:
    """timm Swin state_dict -> ours: identical keys; drop timm's non-persistent buffers if a checkpoint has them."""
    return {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()
            if not k.endswith(("relative_position_index", "attn_mask"))}


register_configs(SWIN_CONFIGS, SwinTransformer)
