"""SAM's ViT image encoder, weight-compatible with timm's ``vision_transformer_sam.py``, and the RSBuilding
backbone (Open-CD's ``vit_sam_normal``: the same encoder with multi-level outputs, position-embedding resize and
frozen stages).

"Segment Anything" - https://arxiv.org/abs/2304.02643 ; RSBuilding - https://arxiv.org/abs/2403.07564

Tokens are channels-last (B, H, W, C). Most blocks attend inside (ws x ws) windows (padded to a multiple of ws);
the blocks in ``global_attn_indexes`` attend over the whole map. Attention gets MViTv2's decomposed relative
position bias (a height term plus a width term, each from a learned table indexed by q-k offset). A neck
(1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) maps C -> ``neck_chans``.

LayerNorm eps: timm builds the blocks with ``nn.LayerNorm`` (eps 1e-5); SAM's original code uses 1e-6. It is
the config value ``ln_eps`` (timm's 1e-5 by default, so timm weights port exactly); the neck's LayerNorm2d is
1e-6 in both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import SAM_CONFIGS
from ._registry import register_configs
from .layers import Mlp, PatchEmbed, check_output_fmt, feature_take_indices
from .swin import ClassifierHead


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C), padding H and W up to multiples of ws; also returns (Hp, Wp)."""
    B, H, W, C = x.shape
    ph, pw = (-H) % ws, (-W) % ws
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    Hp, Wp = H + ph, W + pw
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, C), (Hp, Wp)


def window_unpartition(windows: torch.Tensor, ws: int, hw: tuple[int, int], pad_hw: tuple[int, int]) -> torch.Tensor:
    """(B * nW, ws, ws, C) -> (B, H, W, C), padding removed."""
    (Hp, Wp), (H, W) = pad_hw, hw
    B = windows.shape[0] // (Hp * Wp // ws // ws)
    x = windows.view(B, Hp // ws, Wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :]


def rel_pos(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """(q_size, k_size, D) embeddings of every q-k offset; the table is linearly resized if its length differs."""
    n = 2 * max(q_size, k_size) - 1
    if table.shape[0] != n:
        table = F.interpolate(table.T.unsqueeze(0), size=n, mode="linear").squeeze(0).T
    q = torch.arange(q_size, dtype=torch.float32)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, dtype=torch.float32)[None, :] * max(q_size / k_size, 1.0)
    return table[((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


def decomposed_rel_pos_bias(q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor,
                            size: tuple[int, int]) -> torch.Tensor:
    """q (B*heads, H*W, D) -> additive attention bias (B*heads, H*W, H*W) = height term + width term."""
    H, W = size
    Rh, Rw = rel_pos(H, H, table_h), rel_pos(W, W, table_w)  # (H, H, D), (W, W, D)
    r_q = q.reshape(q.shape[0], H, W, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(-1, H * W, H * W)


class Attention(nn.Module):
    """Multi-head attention over a (B, H, W, C) map with optional decomposed relative position bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_rel_pos: bool = False,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("Attention: relative positions need input_size")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        N = H * W
        qkv = self.qkv(x.reshape(B, N, -1)).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, N, -1).unbind(0)  # (B*heads, N, D)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (H, W)) if self.use_rel_pos else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x.view(B, self.num_heads, N, -1).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x).view(B, H, W, -1)


class Block(nn.Module):
    """Pre-norm block; windowed attention unless ``window_size`` is 0 (global)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos: bool = False, window_size: int = 0, input_size: tuple[int, int] = (14, 14),
                 ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos,
                              input_size if window_size == 0 else (window_size, window_size))
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        y = self.norm1(x)
        if self.window_size > 0:
            y, pad_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, (H, W), pad_hw)
        else:
            y = self.attn(y)
        x = (x + y).reshape(B, H * W, -1)
        x = x + self.mlp(self.norm2(x))
        return x.reshape(B, H, W, -1)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, H, W) map (eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def resize_pos_embed(pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, h, w, C) absolute position embedding -> (1, H, W, C), bicubic (antialiased when shrinking)."""
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    x = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=size, mode="bicubic", antialias=True,
                      align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype)


class VisionTransformerSAM(nn.Module):
    def __init__(self, *, img_size: int = 1024, patch_size: int = 16, num_classes: int = 0, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos: bool = True, window_size: int = 14, global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
                 neck_chans: int = 256, ln_eps: float = 1e-5, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        if img_size % patch_size:
            raise ValueError(f"VisionTransformerSAM: img_size {img_size} is not a multiple of patch {patch_size}")
        self.img_size = img_size
        grid = (img_size // patch_size, img_size // patch_size)
        self.grid_size = grid
        self.patch_embed = PatchEmbed(None, patch_size, in_chans, embed_dim, flatten=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], embed_dim))
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, use_rel_pos,
                  0 if i in global_attn_indexes else window_size, grid, ln_eps)
            for i in range(depth)])
        self.neck = nn.Sequential(nn.Conv2d(embed_dim, neck_chans, 1, bias=False), LayerNorm2d(neck_chans),
                                  nn.Conv2d(neck_chans, neck_chans, 3, padding=1, bias=False), LayerNorm2d(neck_chans))
        self.num_features = neck_chans
        self.head = ClassifierHead(neck_chans, num_classes, pool_dims=(2, 3))  # the neck map is NCHW
        self.compile_regions = ("blocks",)  # windowed and global blocks differ: dynamo keeps a graph for each kind

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        return x + resize_pos_embed(self.pos_embed, tuple(x.shape[1:3]))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """timm's API over the blocks: each picked block's output as (B, C, H, W); ``norm`` sends each through the
        neck (as timm: the neck holds the norms). Returns ``(neck features, intermediates)`` or the latter alone."""
        check_output_fmt(output_fmt, ("NCHW",))
        take, last = feature_take_indices(len(self.blocks), indices)
        x, inter = self._embed(x), []
        for i, blk in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = blk(x)
            if i in take:
                y = x.permute(0, 3, 1, 2)
                inter.append(self.neck(y) if norm else y)
        return inter if intermediates_only else (self.neck(x.permute(0, 3, 1, 2)), inter)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (as timm's): the absolute position table."""
        return {"pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> neck features (B, neck_chans, H/p, W/p)."""
        return self.neck(self.blocks(self._embed(x)).permute(0, 3, 1, 2))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class RSBuildingBackbone(VisionTransformerSAM):
    """RSBuilding's backbone: SAM's ViT returning multi-level features for a decoder.

    ``out_indices`` picks blocks whose outputs (B, C, H, W) are returned; the last block's output goes through the
    neck (the SAM image embedding). ``frozen_stages`` freezes the patch embedding (0), then blocks 0..n-1.
    Position embeddings are resized (bicubic) to any input size that is a multiple of the patch size.
    """

    def __init__(self, *, out_indices: tuple[int, ...] = (2, 5, 8, 11), frozen_stages: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_indices = tuple(i % len(self.blocks) for i in out_indices)
        self.frozen_stages = frozen_stages
        self._freeze()

    def _freeze(self) -> None:
        if self.frozen_stages >= 0:
            for p in [*self.patch_embed.parameters(), self.pos_embed]:
                p.requires_grad = False
        for blk in list(self.blocks)[: max(self.frozen_stages, 0)]:
            blk.eval()
            for p in blk.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> RSBuildingBackbone:
        super().train(mode)
        self._freeze()  # frozen blocks stay in eval mode
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x, outs = self._embed(x), []
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.out_indices:
                y = x.permute(0, 3, 1, 2)
                outs.append(self.neck(y) if i == last else y)
        return outs


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionTransformerSAM) -> dict[str, torch.Tensor]:
    """timm SAM ViT state_dict -> ours: identical keys; pos_embed resized to our grid; for the RSBuilding
    backbone the classifier head is dropped when ours has none."""
    out, own = {}, model.state_dict()
    for k, v in state_dict.items():
        k = k.replace("_orig_mod.", "")
        if k.startswith("head.") and k not in own:
            continue  # a backbone without a classifier takes no head weights
        if k == "pos_embed" and v.shape[1:3] != model.pos_embed.shape[1:3]:
            v = resize_pos_embed(v, tuple(model.pos_embed.shape[1:3]))
        out[k] = v
    return out


register_configs(SAM_CONFIGS, VisionTransformerSAM)
register_configs({"rsbuilding_vit_base": SAM_CONFIGS["samvit_base_patch16"]}, RSBuildingBackbone)
