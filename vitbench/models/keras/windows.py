"""Shifted-window helpers shared by the Keras Swin and SwinV2-cr twins (channels-last; ``keras.ops`` only).

The torch twins keep theirs in ``models/torch/swin.py``; shapes and order are the same: roll the real map by -shift,
then pad to whole windows, attend per window, crop, roll back. Index and masks are numpy constants computed from
the static map size.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


def window_partition(x, ws: tuple[int, int]):
    """(B, H, W, C) -> (B * nW, ws_h * ws_w, C); H, W multiples of ws."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    x = ops.reshape(x, (-1, H // ws[0], ws[0], W // ws[1], ws[1], C))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, nH, nW, ws_h, ws_w, C)
    return ops.reshape(x, (-1, ws[0] * ws[1], C))


def window_reverse(windows, ws: tuple[int, int], H: int, W: int):
    """(B * nW, ws_h * ws_w, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = ops.reshape(windows, (-1, H // ws[0], W // ws[1], ws[0], ws[1], C))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, nH, ws_h, nW, ws_w, C)
    return ops.reshape(x, (-1, H, W, C))


def shifted_window_attention(x, attn: keras.layers.Layer, ws: tuple[int, int], shift: tuple[int, int], mask):
    """(B, H, W, C) -> (B, H, W, C): roll the real map by -shift, pad to whole windows, attend per window, crop,
    roll back (the torch twin's order). Swin and SwinV2-cr share it."""
    H, W = x.shape[1], x.shape[2]
    if any(shift):
        x = ops.roll(x, shift=(-shift[0], -shift[1]), axis=(1, 2))
    ph, pw = (-H) % ws[0], (-W) % ws[1]
    if ph or pw:
        x = ops.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    y = attn(window_partition(x, ws), attn_mask=mask)
    x = window_reverse(y, ws, H + ph, W + pw)[:, :H, :W, :]
    if any(shift):
        x = ops.roll(x, shift=shift, axis=(1, 2))
    return x


def relative_position_index(wh: int, ww: int) -> np.ndarray:
    """(wh*ww * wh*ww,) flat index into a ((2wh-1)(2ww-1), heads) bias table."""
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # (N, N, 2)
    return ((rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)).reshape(-1).astype("int32")


def shift_window_mask(feat: tuple[int, int], ws: tuple[int, int], shift: tuple[int, int]) -> np.ndarray | None:
    """(nW, N, N) additive mask (0 / -100) over the map padded to multiples of ws: after the cyclic roll, tokens of
    different regions must not attend to each other."""
    if not any(shift):
        return None
    (wh, ww), (sh, sw) = ws, shift
    H, W = -(-feat[0] // wh) * wh, -(-feat[1] // ww) * ww
    region, label = np.zeros((H, W), "float32"), 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for wsl in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[hs, wsl] = label
            label += 1
    win = region.reshape(H // wh, wh, W // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)  # (nW, N)
    return np.where(win[:, None, :] != win[:, :, None], -100.0, 0.0).astype("float32")


def add_window_mask(attn, mask, num_heads: int):
    """(B*nW, heads, N, N) logits + the (nW, N, N) mask, repeated over the batch."""
    if mask is None:
        return attn
    nw, n = mask.shape[0], mask.shape[1]
    attn = ops.reshape(attn, (-1, nw, num_heads, n, n)) + ops.convert_to_tensor(mask)[None, :, None]
    return ops.reshape(attn, (-1, num_heads, n, n))


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def block_windows(res: tuple[int, int], window_size, shift: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """A window never exceeds the feature map; then nothing is shifted (timm without ``always_partition``)."""
    ws = tuple(min(r, w) for r, w in zip(res, pair(window_size), strict=True))
    shift_size = tuple(0 if r <= w else w // 2 for r, w in zip(res, ws, strict=True))
    return ws, (shift_size if shift else (0, 0))


def window_attention_macs(tokens_padded: int, n: int, dim: int, heads: int) -> tuple[int, int]:
    """qkv, q@k^T, attn@v and proj of windowed attention over ``tokens_padded`` tokens in windows of ``n``."""
    windows = tokens_padded // n
    macs = tokens_padded * dim * 3 * dim + windows * 2 * n * n * dim + tokens_padded * dim * dim
    acts = tokens_padded * 3 * dim + windows * (heads * n * n + n * dim) + tokens_padded * dim
    return macs, acts
