"""Keras 3 SAM2 Hiera image encoder (HieraDet), the twin of ``vitbench.models.torch.hiera`` (timm's
``hieradet_sam2.py``: same configs, same names).

"Hiera: A Hierarchical Vision Transformer without the Bells-and-Whistles" - https://arxiv.org/abs/2306.00989
"SAM 2: Segment Anything in Images and Videos" - https://arxiv.org/abs/2408.00714

Channels-last (B, H, W, C) throughout. A 7x7/4 conv (padding 3) embeds patches; position = the global table
resized bicubically (torch's ``F.interpolate(mode="bicubic")``, as a constant (out, in) weight matrix per axis
computed from the static map size) plus a window table tiled over the map. Stages of MultiScaleBlocks: windowed
attention (window size per stage, map zero-padded to a multiple of it; some blocks global), and at the first block
of stages 2-4 the query and the shortcut are max-pooled 2x2 (dim x2, heads x2). As in timm, the first block of a
stage still uses the previous stage's window size. The head averages over (H, W), LayerNorms, then ``fc``.
timm's model API as the torch twin has it (``forward_intermediates`` with ``coarse``: stage ends or blocks).

The port tables (``vitbench.port.keras``) bring a timm (or our torch) HieraDet state_dict in: Dense kernels are
transposed, the patch conv goes OIHW -> HWIO, the two position tables go NCHW -> NHWC. Hiera has no buffers, so
the port is strict both ways with nothing skipped. Spatial sizes must be static (known when ``call`` traces).
"""
from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from ..configs import HIERA_CONFIGS
from ..features import check_output_fmt, feature_take_indices
from ._registry import register_configs
from .layers import PACKAGE, Mlp, replace_sublayer
from .swin import check_global_pool, classes_changed, family_pretrained_cfg, to_output_fmt
from .vit import LN_EPS


def _ln(name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=LN_EPS, name=name)  # timm's LayerNorm eps


def window_partition(x, ws: tuple[int, int]):
    """(B, H, W, C) -> (B * nW, ws_h, ws_w, C); H, W already multiples of ws."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    x = ops.reshape(x, (-1, H // ws[0], ws[0], W // ws[1], ws[1], C))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, nH, nW, ws_h, ws_w, C)
    return ops.reshape(x, (-1, ws[0], ws[1], C))


def window_unpartition(windows, ws: tuple[int, int], hw: tuple[int, int]):
    """(B * nW, ws_h, ws_w, C) -> (B, H, W, C) for the padded size ``hw``."""
    H, W = hw
    C = windows.shape[-1]
    x = ops.reshape(windows, (-1, H // ws[0], W // ws[1], ws[0], ws[1], C))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, nH, ws_h, nW, ws_w, C)
    return ops.reshape(x, (-1, H, W, C))


def padded(H: int, W: int, ws: tuple[int, int]) -> tuple[int, int, int, int]:
    ph, pw = (-H) % ws[0], (-W) % ws[1]
    return H + ph, W + pw, ph, pw


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) weights of torch's ``F.interpolate(mode="bicubic", align_corners=False)`` along one axis:
    Keys' cubic with A = -0.75, source index (o + 0.5) * in / out - 0.5 (not clamped), taps clamped to the border."""
    A = -0.75

    def near(t: float) -> float:  # |t| <= 1
        return ((A + 2) * t - (A + 3)) * t * t + 1

    def far(t: float) -> float:  # 1 < |t| < 2
        return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A

    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for o in range(out_size):
        src = (o + 0.5) * scale - 0.5
        i0 = math.floor(src)
        t = src - i0
        for k, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t)), strict=True):
            m[o, min(max(i0 + k, 0), in_size - 1)] += w
    return m.astype("float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class HieraPatchEmbed(keras.layers.Layer):
    """(B, H, W, in_chans) -> (B, H', W', embed_dim) by a strided conv with symmetric zero padding (torch's
    ``Conv2d(padding=p)``; Keras' 'same' pads asymmetrically, so the padding is explicit)."""

    def __init__(self, kernel_size: int = 7, stride: int = 4, padding: int = 3, in_chans: int = 3,
                 embed_dim: int = 768, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.proj = keras.layers.Conv2D(embed_dim, kernel_size, strides=stride, padding="valid", name="proj")

    def build(self, input_shape):
        self.proj.build((input_shape[0], None, None, self.in_chans))

    def call(self, x):
        p = self.padding
        return self.proj(ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0))))  # (B, H/4, W/4, C)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "in_chans": self.in_chans, "embed_dim": self.embed_dim}


def _pair(v) -> tuple[int, int] | None:
    return None if not v else (int(v[0]), int(v[1]))


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleAttention(keras.layers.Layer):
    """Attention whose queries may be max-pooled (q_stride), shrinking the output map."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dim_out, self.num_heads, self.q_stride = dim, dim_out, num_heads, _pair(q_stride)
        self.head_dim = dim_out // num_heads
        self.q_pool = (keras.layers.MaxPooling2D(self.q_stride, self.q_stride, name="q_pool")
                       if self.q_stride else None)
        self.qkv = keras.layers.Dense(dim_out * 3, name="qkv")
        self.proj = keras.layers.Dense(dim_out, name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build((*input_shape[:-1], self.dim_out))

    def call(self, x):
        H, W = x.shape[1], x.shape[2]
        qkv = ops.reshape(self.qkv(x), (-1, H * W, 3, self.num_heads, self.head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, D)
        if self.q_pool is not None:
            q = self.q_pool(ops.reshape(q, (-1, H, W, self.dim_out)))  # (B, H/s, W/s, heads * D)
            H, W = H // self.q_stride[0], W // self.q_stride[1]
            q = ops.reshape(q, (-1, H * W, self.num_heads, self.head_dim))
        x = ops.dot_product_attention(q, k, v)  # (B, N_q, heads, D), scale D^-0.5
        return self.proj(ops.reshape(x, (-1, H, W, self.dim_out)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "dim_out": self.dim_out, "num_heads": self.num_heads,
                "q_stride": self.q_stride}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleBlock(keras.layers.Layer):
    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0,
                 q_stride: tuple[int, int] | None = None, window_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dim_out, self.num_heads, self.mlp_ratio = dim, dim_out, num_heads, mlp_ratio
        self.q_stride, self.window_size = _pair(q_stride), (window_size, window_size)
        self.proj = keras.layers.Dense(dim_out, name="proj") if dim != dim_out else None
        self.pool = keras.layers.MaxPooling2D(self.q_stride, self.q_stride, name="pool") if self.q_stride else None
        self.norm1 = _ln("norm1")
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, self.q_stride, name="attn")
        self.norm2 = _ln("norm2")
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), name="mlp")

    def build(self, input_shape):
        self.norm1.build(input_shape)
        self.attn.build(input_shape)
        if self.proj is not None:
            self.proj.build(input_shape)
        out = (*input_shape[:-1], self.dim_out)
        self.norm2.build(out)
        self.mlp.build(out)

    def call(self, x):
        shortcut = x  # (B, H, W, dim)
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = self.pool(shortcut)  # (B, H/s, W/s, dim_out)
        ws = self.window_size
        H, W = x.shape[1], x.shape[2]
        windowed = ws[0] > 0
        Hp, Wp = H, W
        if windowed:
            Hp, Wp, ph, pw = padded(H, W, ws)
            x = window_partition(ops.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0))), ws)  # (B * nW, ws, ws, dim)
        x = self.attn(x)
        if self.q_stride is not None:
            ws = (ws[0] // self.q_stride[0], ws[1] // self.q_stride[1])
            H, W = shortcut.shape[1], shortcut.shape[2]
            Hp, Wp, _, _ = padded(H, W, ws)
        if windowed:
            x = window_unpartition(x, ws, (Hp, Wp))[:, :H, :W, :]
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "dim_out": self.dim_out, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "q_stride": self.q_stride, "window_size": self.window_size[0]}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClNormHead(keras.layers.Layer):
    """Average over (H, W) of channels-last features, LayerNorm, ``fc`` (timm's ClNormMlpClassifierHead keys)."""

    def __init__(self, dim: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_classes = dim, num_classes
        self.norm = _ln("norm")
        self.fc = keras.layers.Dense(num_classes, name="fc") if num_classes > 0 else None

    def build(self, input_shape):
        self.norm.build((input_shape[0], self.dim))
        if self.fc is not None:
            self.fc.build((input_shape[0], self.dim))

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``fc`` for ``num_classes`` (0: none); the norm is kept (timm's ClNormMlpClassifierHead.reset)."""
        check_global_pool(global_pool)
        self.num_classes = num_classes
        fc = keras.layers.Dense(num_classes, name="fc") if num_classes > 0 else None
        replace_sublayer(self, "fc", fc, (None, self.dim))

    def call(self, x, pre_logits: bool = False):
        x = self.norm(ops.mean(x, axis=(1, 2)))  # (B, C)
        return x if pre_logits or self.fc is None else self.fc(x)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HieraDet(keras.Model):
    """patch_embed -> + pos (bicubic global + tiled window) -> MultiScaleBlocks -> head; input (B, H, W, in_chans)."""

    def __init__(self, *, img_size: int = 224, num_classes: int = 0, embed_dim: int = 96, num_heads: int = 1,
                 q_pool: int = 3, q_stride: tuple[int, int] = (2, 2), stages: tuple[int, ...] = (2, 3, 16, 3),
                 global_pos_size: tuple[int, int] = (7, 7), window_spec: tuple[int, ...] = (8, 4, 14, 7),
                 global_att_blocks: tuple[int, ...] = (12, 16, 20), in_chans: int = 3, **kwargs):
        super().__init__(**kwargs)
        q_stride, stages, global_pos_size = tuple(q_stride), tuple(stages), tuple(global_pos_size)
        window_spec, global_att_blocks = tuple(window_spec), tuple(global_att_blocks)
        self.cfg = dict(img_size=img_size, num_classes=num_classes, embed_dim=embed_dim, num_heads=num_heads,
                        q_pool=q_pool, q_stride=q_stride, stages=stages, global_pos_size=global_pos_size,
                        window_spec=window_spec, global_att_blocks=global_att_blocks, in_chans=in_chans)
        self.img_size, self.num_classes, self.in_chans, self.embed_dim = img_size, num_classes, in_chans, embed_dim
        self.initial_num_classes = num_classes  # pretrained_cfg's, kept by reset_classifier (as the torch twin's)
        self.global_pos_size, self.window_spec = global_pos_size, window_spec
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = HieraPatchEmbed(7, 4, 3, in_chans, embed_dim, name="patch_embed")
        self.blocks, stage = [], 0
        for i in range(sum(stages)):
            dim_out = embed_dim
            window = 0 if i in global_att_blocks else window_spec[stage]  # read before the stage advances
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = embed_dim * 2, num_heads * 2, stage + 1
            self.blocks.append(MultiScaleBlock(embed_dim, dim_out, num_heads,
                                               q_stride=q_stride if i in q_pool_blocks else None,
                                               window_size=window, name=f"blocks_{i}"))
            embed_dim = dim_out
        self.num_features = embed_dim
        self.head = ClNormHead(embed_dim, num_classes, name="head")

    def build(self, input_shape):
        C, ws = self.embed_dim, self.window_spec[0]
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.pos_embed = self.add_weight(shape=(1, *self.global_pos_size, C), initializer=init, name="pos_embed")
        self.pos_embed_window = self.add_weight(shape=(1, ws, ws, C), initializer=init, name="pos_embed_window")
        self.patch_embed.build(input_shape)
        for blk in self.blocks:
            blk.build((input_shape[0], None, None, blk.dim))
        self.head.build((input_shape[0], None, None, self.num_features))
        self.built = True

    def _pos_embed(self, x):
        h, w = x.shape[1], x.shape[2]
        gh, gw = self.global_pos_size
        mh, mw = _bicubic_matrix(h, gh), _bicubic_matrix(w, gw)
        pos = ops.einsum("hi,bijc,wj->bhwc", mh, self.pos_embed, mw)  # (1, h, w, C)
        win = self.pos_embed_window
        pos = pos + ops.tile(win, (1, h // win.shape[1], w // win.shape[2], 1))
        return x + pos

    @property
    def pretrained_cfg(self) -> dict:
        return family_pretrained_cfg(self, HIERA_CONFIGS)

    def forward_intermediates(self, x, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = True, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              coarse: bool = True):
        """timm's API: with ``coarse`` the indices count stages (taken at each stage's last block), else blocks;
        each as (B, C, H, W) or channels-last (``'NHWC'``). No ``norm`` (as timm: the norm is in the head).
        Returns ``(final features (B, H, W, C), intermediates)`` or the intermediates alone."""
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
                inter.append(to_output_fmt(x, output_fmt))
        return inter if intermediates_only else (x, inter)

    def forward_features(self, x):
        x = self._pos_embed(self.patch_embed(x))  # (B, H/4, W/4, C)
        for blk in self.blocks:
            x = blk(x)
        return x  # (B, H/32, W/32, 8C)

    def forward_head(self, x, pre_logits: bool = False):
        """(B, H, W, C) -> logits, or the pooled, normed (B, C) with ``pre_logits`` (timm's ClNormMlpClassifierHead)."""
        return self.head(x, pre_logits=pre_logits)

    def get_classifier(self) -> keras.layers.Dense | None:
        """The head's ``fc`` (None without classes; the torch twin gives an ``nn.Identity``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head ``fc`` for ``num_classes`` (0: none, the model then returns the normed pooled features); the
        head's norm is kept, as timm's."""
        self.head.reset(num_classes, global_pool)
        classes_changed(self, num_classes)

    def call(self, x, training=None):
        return self.forward_head(self.forward_features(x))

    def get_config(self):
        return {**super().get_config(), **self.cfg}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


register_configs(HIERA_CONFIGS, HieraDet)
