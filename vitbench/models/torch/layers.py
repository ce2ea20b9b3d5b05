"""Generic transformer layers: scaled dot-product attention, multi-head self-attention, MLP, patch embedding,
and timm's ``forward_intermediates`` index rule.

Submodule names follow timm (``qkv``, ``proj``, ``q_norm``, ``k_norm``, ``fc1``, ``fc2``, ``patch_embed.proj``)
so a timm state_dict loads into our modules unchanged. Shapes in comments: B batch, H heads, N (or L/S) tokens,
D head dim, C channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..features import check_output_fmt, feature_take_indices  # noqa: F401  (the families import them here)


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    return_attn: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out, with the semantics of ``F.scaled_dot_product_attention``.

    q: (..., L, D), k: (..., S, D), v: (..., S, Dv). ``attn_mask`` is boolean (True = may attend) or additive,
    broadcastable to (..., L, S). ``scale`` defaults to 1/sqrt(D). With ``return_attn`` the softmax weights
    (..., L, S), after dropout, are returned beside the output.
    """
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # (..., L, S)
    if is_causal:
        if attn_mask is not None:
            raise ValueError("sdpa: give attn_mask or is_causal, not both (as F.scaled_dot_product_attention)")
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(~attn_mask, float("-inf"))
        else:
            attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p, training=True)
    out = attn @ v  # (..., L, Dv)
    return (out, attn) if return_attn else out


class Attention(nn.Module):
    """Multi-head self-attention, timm-compatible weights.

    ``fused_attn=True`` runs ``F.scaled_dot_product_attention``; ``False`` runs our ``sdpa``. Both give the
    same result; the manual path is taken whenever the attention map is asked for.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        norm_layer = norm_layer or nn.LayerNorm
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, return_attn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        drop = self.attn_drop.p if self.training else 0.0
        attn = None
        if self.fused_attn and not return_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            x, attn = sdpa(q, k, v, dropout_p=drop, scale=self.scale, return_attn=True)  # (B, H, N, D)
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj_drop(self.proj(x))
        return (x, attn) if return_attn else x


class Mlp(nn.Module):
    """fc1 -> GELU (exact, erf) -> fc2, as timm's Mlp."""

    def __init__(self, in_features: int, hidden_features: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patches by a strided convolution (timm's ``patch_embed.proj``), then an optional
    LayerNorm (``patch_embed.norm``; Swin). The families differ only in these arguments:

    - ViT: ``flatten=True`` -> tokens (B, N, C); the input must be ``img_size``;
    - Swin / SwinV2-cr: ``flatten=False, norm=True`` -> (B, H/p, W/p, C); the input must be ``img_size``;
    - SAM: ``img_size=None`` -> (B, H/p, W/p, C) for any input that is a multiple of ``patch_size``;
    - Hiera: ``kernel_size=7, stride=4, padding=3``, ``img_size=None`` (overlapping patches).
    """

    def __init__(self, img_size: int | None, patch_size: int, in_chans: int, embed_dim: int, *, flatten: bool = True,
                 norm: bool = False, kernel_size: int | None = None, stride: int | None = None,
                 padding: int = 0) -> None:
        super().__init__()
        self.patch_size, self.flatten = stride or patch_size, flatten
        self.img_size = img_size
        if img_size is not None:
            if img_size % self.patch_size:
                raise ValueError(f"PatchEmbed: img_size {img_size} is not a multiple of patch_size {self.patch_size}")
            self.grid_size = (img_size // self.patch_size, img_size // self.patch_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size or patch_size,
                              stride=stride or patch_size, padding=padding)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if self.img_size is not None and (H, W) != (self.img_size, self.img_size):
            raise ValueError(f"PatchEmbed: input {H}x{W} does not match the model's img_size {self.img_size}")
        if self.img_size is None and self.proj.padding == (0, 0) and (H % self.patch_size or W % self.patch_size):
            raise ValueError(f"PatchEmbed: input {H}x{W} is not a multiple of patch_size {self.patch_size}")
        x = self.proj(x)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2) if self.flatten else x.permute(0, 2, 3, 1)  # (B, N, C) | (B, H, W, C)
        return self.norm(x)


def sdpa_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """``sdpa`` over blocks of ``chunk_size`` queries: each block's (..., chunk, S) logits, softmax and @ v, so the
    full (..., L, S) matrix never exists (memory O(chunk * S) per head instead of O(L * S)). Every query row sees
    all keys, so each row is ``sdpa``'s row (same ops; BLAS may sum a block in another order). Same arguments as
    ``sdpa`` (no dropout, no returned map)."""
    L, S = q.shape[-2], k.shape[-2]
    if is_causal and attn_mask is not None:
        raise ValueError("sdpa: give attn_mask or is_causal, not both (as F.scaled_dot_product_attention)")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    kt = k.transpose(-2, -1)  # (..., D, S)
    out = []
    for start in range(0, L, chunk_size):
        stop = min(start + chunk_size, L)
        mask = attn_mask
        if is_causal:
            rows = torch.arange(start, stop, device=q.device)[:, None]
            mask = rows >= torch.arange(S, device=q.device)[None, :]  # (chunk, S)
        elif mask is not None and mask.dim() >= 2 and mask.shape[-2] == L:
            mask = mask[..., start:stop, :]
        attn = (q[..., start:stop, :] * scale) @ kt  # (..., chunk, S)
        if mask is not None:
            attn = attn.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else attn + mask
        out.append(attn.softmax(dim=-1) @ v)  # (..., chunk, Dv)
    return torch.cat(out, dim=-2)


class SDPA(nn.Module):
    """Attention kernel alone, for kernel benchmarks: (B, N, 3C) -> split q, k, v into heads -> (B, N, C).

    ``impl='ours'`` runs our ``sdpa`` (the readable reference: the whole N x N map); ``impl='chunked'`` runs
    ``sdpa_chunked`` (queries in blocks of ``chunk_size``); ``impl='torch'`` runs ``F.scaled_dot_product_attention``.
    """

    def __init__(self, num_heads: int = 8, impl: str = "ours", scale: float | None = None,
                 chunk_size: int = 256) -> None:
        super().__init__()
        if impl not in ("ours", "chunked", "torch"):
            raise ValueError(f"SDPA: impl must be 'ours', 'chunked' or 'torch', not {impl!r}")
        self.num_heads, self.impl, self.scale, self.chunk_size = num_heads, impl, scale, chunk_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C3 = x.shape
        q, k, v = x.reshape(B, N, 3, self.num_heads, C3 // 3 // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.impl == "chunked":
            y = sdpa_chunked(q, k, v, scale=self.scale, chunk_size=self.chunk_size)  # (B, H, N, D)
        else:
            y = (sdpa if self.impl == "ours" else F.scaled_dot_product_attention)(q, k, v, scale=self.scale)
        return y.transpose(1, 2).reshape(B, N, C3 // 3)
