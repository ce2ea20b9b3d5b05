"""Keras 3 Swin Transformer V2 (timm's 'cr' port), the twin of ``vitbench.models.torch.swinv2_cr`` (same configs,
same names, same order; timm's FIXMEs settled as there).

"Swin Transformer V2: Scaling Up Capacity and Resolution" - https://arxiv.org/abs/2111.09883

Channels-last (B, H, W, C). Post-norm residual blocks (x + norm(attn(x))), scaled cosine attention with a learned
per-head temperature (``logit_scale``, clamped at log 100) and a continuous relative position bias: a small MLP
("meta MLP") maps log-spaced (dy, dx) window offsets (a numpy constant) to one bias per head. The shifted-window
roll happens before padding, masks are built for the padded map; the last stage ends with an extra norm.

timm's model API as the torch twin has it (``forward_intermediates``: stage outputs, NCHW by default), with one
difference kept from ``forward_features``: the final features are channels-last here (timm's are NCHW), so that
``forward_head`` takes them as they come.

The port tables (``vitbench.port.keras``) bring a timm (or our torch) SwinV2-cr state_dict in, strictly both ways.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from ..configs import SWINV2_CR_CONFIGS
from ..features import check_output_fmt, feature_take_indices
from ._registry import register_configs
from .layers import Mlp
from .swin import (
    ClassifierHead,
    PatchEmbed,
    PatchMerging,
    classes_changed,
    dense,
    family_pretrained_cfg,
    layer_norm,
    to_output_fmt,
)
from .windows import (
    add_window_mask,
    block_windows,
    pair,
    shift_window_mask,
    shifted_window_attention,
)

PACKAGE = "vitbench.swinv2_cr"


def relative_coordinates_log(wh: int, ww: int) -> np.ndarray:
    """(N*N, 2) offsets (dy, dx) between window positions, as sign(d) * log(1 + |d|)."""
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1).astype("float32")
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0).reshape(-1, 2)
    return (np.sign(rel) * np.log1p(np.abs(rel))).astype("float32")


def _l2_normalize(x):
    """torch's ``F.normalize(x, dim=-1)``: x / max(||x||, 1e-12)."""
    return x / ops.maximum(ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True)), 1e-12)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MetaMlp(keras.layers.Layer):
    """(dy, dx) log offsets -> one bias per head: fc1 -> ReLU -> dropout -> fc2."""

    def __init__(self, hidden: int, num_heads: int, drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.num_heads, self.drop = hidden, num_heads, drop
        self.fc1 = dense(hidden, "fc1")
        self.drop1 = keras.layers.Dropout(drop, name="drop1")
        self.fc2 = dense(num_heads, "fc2")

    def build(self, input_shape):
        self.fc1.build((None, 2))
        self.fc2.build((None, self.hidden))

    def call(self, x, training=None):
        return self.fc2(self.drop1(ops.relu(self.fc1(x)), training=training))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "num_heads": self.num_heads, "drop": self.drop}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WindowMultiHeadAttention(keras.layers.Layer):
    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], meta_hidden_dim: int = 384,
                 meta_drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.window_size = dim, num_heads, pair(window_size)
        self.meta_hidden_dim, self.meta_drop = meta_hidden_dim, meta_drop
        self.head_dim = dim // num_heads
        self.coords = relative_coordinates_log(*self.window_size)
        self.qkv = dense(dim * 3, "qkv")
        self.proj = dense(dim, "proj")
        self.meta_mlp = MetaMlp(meta_hidden_dim, num_heads, meta_drop, name="meta_mlp")

    def build(self, input_shape):
        self.logit_scale = self.add_weight(shape=(self.num_heads,), name="logit_scale",
                                           initializer=keras.initializers.Constant(math.log(10.0)))
        self.qkv.build((None, self.dim))
        self.proj.build((None, self.dim))
        self.meta_mlp.build(None)

    def rel_pos_bias(self):
        n = self.window_size[0] * self.window_size[1]
        bias = self.meta_mlp(ops.convert_to_tensor(self.coords))  # (N*N, heads)
        return ops.reshape(ops.transpose(bias, (1, 0)), (1, self.num_heads, n, n))

    def call(self, x, attn_mask=None):
        N = x.shape[1]  # x: (B * nW, N, C)
        qkv = ops.transpose(ops.reshape(self.qkv(x), (-1, N, 3, self.num_heads, self.head_dim)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]  # (Bw, heads, N, D)
        scale = ops.exp(ops.minimum(self.logit_scale, math.log(100.0)))[None, :, None, None]
        attn = ops.matmul(_l2_normalize(q), ops.swapaxes(_l2_normalize(k), -1, -2)) * scale  # cosine attention
        attn = add_window_mask(attn + self.rel_pos_bias(), attn_mask, self.num_heads)
        y = ops.transpose(ops.matmul(ops.softmax(attn, axis=-1), v), (0, 2, 1, 3))  # (Bw, N, heads, D)
        return self.proj(ops.reshape(y, (-1, N, self.dim)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "window_size": self.window_size, "meta_hidden_dim": self.meta_hidden_dim,
                "meta_drop": self.meta_drop}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwinTransformerV2CrBlock(keras.layers.Layer):
    def __init__(self, dim: int, num_heads: int, feat_size: tuple[int, int], window_size: tuple[int, int],
                 shift: bool, mlp_ratio: float = 4.0, extra_norm: bool = False, meta_hidden_dim: int = 384,
                 meta_drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.feat_size = dim, num_heads, pair(feat_size)
        self.cfg = dict(window_size=pair(window_size), shift=shift, mlp_ratio=mlp_ratio, extra_norm=extra_norm,
                        meta_hidden_dim=meta_hidden_dim, meta_drop=meta_drop)
        self.window_size, self.shift_size = block_windows(self.feat_size, window_size, shift)
        self.attn_mask = shift_window_mask(self.feat_size, self.window_size, self.shift_size)  # padded map
        self.attn = WindowMultiHeadAttention(dim, num_heads, self.window_size, meta_hidden_dim, meta_drop,
                                             name="attn")
        self.norm1 = layer_norm("norm1")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), name="mlp")
        self.norm2 = layer_norm("norm2")
        self.norm3 = layer_norm("norm3") if extra_norm else None

    def build(self, input_shape):
        for layer in (self.attn, self.norm1, self.mlp, self.norm2, self.norm3):
            if layer is not None:
                layer.build((None, self.dim))

    def call(self, x):
        """Post-norm: (B, H, W, C) -> (B, H, W, C)."""
        x = x + self.norm1(shifted_window_attention(x, self.attn, self.window_size, self.shift_size,
                                                    self.attn_mask))
        x = x + self.norm2(self.mlp(x))
        return x if self.norm3 is None else self.norm3(x)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "feat_size": self.feat_size, **self.cfg}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwinTransformerV2CrStage(keras.layers.Layer):
    def __init__(self, dim: int, depth: int, downscale: bool, feat_size: tuple[int, int], num_heads: int,
                 window_size: tuple[int, int], mlp_ratio: float = 4.0, extra_norm_period: int = 0,
                 extra_norm_stage: bool = False, meta_hidden_dim: int = 384, meta_drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.cfg = dict(dim=dim, depth=depth, downscale=downscale, feat_size=pair(feat_size), num_heads=num_heads,
                        window_size=pair(window_size), mlp_ratio=mlp_ratio, extra_norm_period=extra_norm_period,
                        extra_norm_stage=extra_norm_stage, meta_hidden_dim=meta_hidden_dim, meta_drop=meta_drop)
        self.downsample = PatchMerging(dim, 2 * dim, name="downsample") if downscale else None
        self.dim = 2 * dim if downscale else dim
        feat = tuple((s + 1) // 2 for s in pair(feat_size)) if downscale else pair(feat_size)

        def extra(i: int) -> bool:
            return bool(extra_norm_period and i % extra_norm_period == 0) or (extra_norm_stage and i == depth)

        self.blocks = [SwinTransformerV2CrBlock(
            self.dim, num_heads, feat, window_size, shift=j % 2 == 1, mlp_ratio=mlp_ratio, extra_norm=extra(j + 1),
            meta_hidden_dim=meta_hidden_dim, meta_drop=meta_drop, name=f"blocks_{j}") for j in range(depth)]

    def build(self, input_shape):
        if self.downsample is not None:
            self.downsample.build(input_shape)
        for blk in self.blocks:
            blk.build(None)

    def call(self, x):
        if self.downsample is not None:
            x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def get_config(self):
        return {**super().get_config(), **self.cfg}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwinTransformerV2Cr(keras.Model):
    """patch_embed -> stages (PatchMerging + post-norm cosine-attention blocks) -> head; input (B, H, W, C)."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 4, num_classes: int = 1000, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int | None = None, window_ratio: int = 8, mlp_ratio: float = 4.0,
                 extra_norm_period: int = 0, extra_norm_stage: bool = False, meta_hidden_dim: int = 384,
                 meta_drop: float = 0.0, in_chans: int = 3, **kwargs):
        super().__init__(**kwargs)
        depths, num_heads = tuple(depths), tuple(num_heads)
        self.cfg = dict(img_size=img_size, patch_size=patch_size, num_classes=num_classes, embed_dim=embed_dim,
                        depths=depths, num_heads=num_heads, window_size=window_size, window_ratio=window_ratio,
                        mlp_ratio=mlp_ratio, extra_norm_period=extra_norm_period, extra_norm_stage=extra_norm_stage,
                        meta_hidden_dim=meta_hidden_dim, meta_drop=meta_drop, in_chans=in_chans)
        self.img_size, self.num_classes, self.in_chans = img_size, num_classes, in_chans
        self.initial_num_classes = num_classes  # pretrained_cfg's, kept by reset_classifier (as the torch twin's)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, name="patch_embed")
        grid = (img_size // patch_size, img_size // patch_size)
        ws = (window_size, window_size) if window_size else tuple(max(1, g // window_ratio) for g in grid)
        self.stages, dim, scale = [], embed_dim, 1
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            self.stages.append(SwinTransformerV2CrStage(
                dim, depth, downscale=i != 0, feat_size=tuple((g + scale - 1) // scale for g in grid),
                num_heads=heads, window_size=ws, mlp_ratio=mlp_ratio, extra_norm_period=extra_norm_period,
                extra_norm_stage=extra_norm_stage or i == len(depths) - 1,  # the last stage ends with a norm
                meta_hidden_dim=meta_hidden_dim, meta_drop=meta_drop, name=f"stages_{i}"))
            if i != 0:
                dim, scale = dim * 2, scale * 2
        self.num_features = dim
        self.head = ClassifierHead(dim, num_classes, name="head")

    def build(self, input_shape):
        self.patch_embed.build(input_shape)
        for stage in self.stages:
            stage.build((None, None, None, stage.cfg["dim"]))
        self.head.build(None)
        self.built = True

    @property
    def pretrained_cfg(self) -> dict:
        return family_pretrained_cfg(self, SWINV2_CR_CONFIGS)

    def forward_intermediates(self, x, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's API over the stages: each picked stage's output as (B, C, H, W) (``'NHWC'``: channels-last, as
        the torch twin allows); ``norm`` changes nothing (as in timm: the norms live inside the stages). Returns
        ``(final features, intermediates)`` or the intermediates alone; the final features are channels-last, as
        ``forward_features`` gives them (timm's are NCHW)."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, last = feature_take_indices(len(self.stages), indices)
        x, inter = self.patch_embed(x), []
        for i, stage in enumerate(self.stages[: last + 1] if stop_early else self.stages):
            x = stage(x)
            if i in take:
                inter.append(to_output_fmt(x, output_fmt))
        return inter if intermediates_only else (x, inter)

    def forward_features(self, x):
        """(B, H, W, 3) -> (B, H/32, W/32, C), channels-last (the torch twin returns it as NCHW)."""
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        """(B, H, W, C) -> logits, or the pooled (B, C) with ``pre_logits`` (timm's head on its NCHW features)."""
        return self.head(x, pre_logits=pre_logits)

    def get_classifier(self) -> keras.layers.Dense | None:
        """The head's ``fc`` (None without classes; the torch twin gives an ``nn.Identity``)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head ``fc`` for ``num_classes`` (0: none, the model then returns pooled features), as timm's."""
        self.head.reset(num_classes, global_pool)
        classes_changed(self, num_classes)

    def call(self, x, training=None):
        return self.forward_head(self.forward_features(x))

    def get_config(self):
        return {**super().get_config(), **self.cfg}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


register_configs(SWINV2_CR_CONFIGS, SwinTransformerV2Cr)
