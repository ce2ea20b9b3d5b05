"""Keras 3 Swin Transformer, the twin of ``vitbench.models.torch.swin`` (timm's ``swin_transformer.py``: same
configs, same names, same order).

"Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" - https://arxiv.org/abs/2103.14030

Channels-last (B, H, W, C) throughout. Each block attends inside (ws x ws) windows; every second block rolls the
map by -ws//2 first (then pads to whole windows) and masks pairs that were not neighbours before the roll. Logits
get a learned relative position bias, gathered from a ((2ws-1)^2, heads) table by a constant index. Stages 2-4
start with PatchMerging (2x2 -> 1, C -> 2C). Index and masks are numpy constants computed from the static map
size (the torch twin's non-persistent buffers), so the port has no buffers to skip.

timm's model API as the torch twin has it: ``forward_intermediates`` (stage outputs, NCHW by default),
``forward_features`` / ``forward_head``, ``get_classifier`` / ``reset_classifier`` and ``pretrained_cfg`` (its
helpers, after ClassifierHead, serve the SwinV2-cr and Hiera twins too).

The port tables (``vitbench.port.keras``) bring a timm (or our torch) Swin state_dict in: Dense kernels are
transposed, the patch conv goes OIHW -> HWIO, the bias tables are taken as they are. Strict both ways.
"""
from __future__ import annotations

import keras
from keras import ops

from ..configs import SWIN_CONFIGS, pretrained_cfg
from ..features import check_output_fmt, feature_take_indices
from ._registry import register_configs
from .layers import Mlp, replace_sublayer
from .windows import (
    add_window_mask,
    block_windows,
    pair,
    relative_position_index,
    shift_window_mask,
    shifted_window_attention,
)

PACKAGE = "vitbench.swin"  # class names are the torch twin's; a package of their own keeps Keras' registry unique
LN_EPS = 1e-5  # Swin uses torch's default LayerNorm eps


def layer_norm(name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=LN_EPS, name=name)


def dense(units: int, name: str, use_bias: bool = True) -> keras.layers.Dense:
    return keras.layers.Dense(units, use_bias=use_bias, name=name,
                              kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbed(keras.layers.Layer):
    """(B, H, W, in_chans) -> (B, H/p, W/p, embed_dim): strided conv, then LayerNorm (timm's ``norm_layer``)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.proj = keras.layers.Conv2D(embed_dim, patch_size, strides=patch_size, name="proj")
        self.norm = layer_norm("norm")

    def build(self, input_shape):
        self.proj.build((input_shape[0], None, None, self.in_chans))
        self.norm.build((input_shape[0], None, None, self.embed_dim))

    def call(self, x):
        return self.norm(self.proj(x))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "in_chans": self.in_chans,
                "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WindowAttention(keras.layers.Layer):
    """Multi-head attention inside windows, with a relative position bias (and the shift mask when given)."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int], qkv_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.window_size, self.qkv_bias = dim, num_heads, pair(window_size), qkv_bias
        self.head_dim = dim // num_heads
        self.window_area = self.window_size[0] * self.window_size[1]
        self.index = relative_position_index(*self.window_size)
        self.qkv = dense(dim * 3, "qkv", qkv_bias)
        self.proj = dense(dim, "proj")

    def build(self, input_shape):
        wh, ww = self.window_size
        self.relative_position_bias_table = self.add_weight(
            shape=((2 * wh - 1) * (2 * ww - 1), self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02), name="relative_position_bias_table")
        self.qkv.build((None, self.dim))
        self.proj.build((None, self.dim))

    def rel_pos_bias(self):
        n = self.window_area
        bias = ops.reshape(ops.take(self.relative_position_bias_table, self.index, axis=0), (n, n, -1))
        return ops.transpose(bias, (2, 0, 1))[None]  # (1, heads, N, N)

    def call(self, x, attn_mask=None):
        N = x.shape[1]  # x: (B * nW, N, C)
        qkv = ops.transpose(ops.reshape(self.qkv(x), (-1, N, 3, self.num_heads, self.head_dim)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]  # (Bw, heads, N, D)
        attn = ops.matmul(q * self.head_dim**-0.5, ops.swapaxes(k, -1, -2)) + self.rel_pos_bias()
        attn = ops.softmax(add_window_mask(attn, attn_mask, self.num_heads), axis=-1)
        y = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))  # (Bw, N, heads, D)
        return self.proj(ops.reshape(y, (-1, N, self.dim)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "window_size": self.window_size, "qkv_bias": self.qkv_bias}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwinTransformerBlock(keras.layers.Layer):
    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.input_resolution, self.num_heads = dim, pair(input_resolution), num_heads
        self.cfg = dict(window_size=window_size, shift=shift, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        self.window_size, self.shift_size = block_windows(self.input_resolution, window_size, shift)
        self.attn_mask = shift_window_mask(self.input_resolution, self.window_size, self.shift_size)
        self.norm1 = layer_norm("norm1")
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, name="attn")
        self.norm2 = layer_norm("norm2")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), name="mlp")

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build((None, self.dim))

    def call(self, x):
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + shifted_window_attention(self.norm1(x), self.attn, self.window_size, self.shift_size,
                                         self.attn_mask)
        return x + self.mlp(self.norm2(x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "input_resolution": self.input_resolution,
                "num_heads": self.num_heads, **self.cfg}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchMerging(keras.layers.Layer):
    """(B, H, W, C) -> (B, H/2, W/2, out_dim): concatenate each 2x2 neighbourhood (timm's order), norm, project."""

    def __init__(self, dim: int, out_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.out_dim = dim, out_dim
        self.norm = layer_norm("norm")
        self.reduction = dense(out_dim, "reduction", use_bias=False)

    def build(self, input_shape):
        self.norm.build((None, 4 * self.dim))
        self.reduction.build((None, 4 * self.dim))

    def call(self, x):
        H, W, C = x.shape[1], x.shape[2], x.shape[3]
        if H % 2 or W % 2:
            x = ops.pad(x, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
            H, W = H + H % 2, W + W % 2
        x = ops.reshape(x, (-1, H // 2, 2, W // 2, 2, C))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 4, 2, 5)), (-1, H // 2, W // 2, 4 * C))  # (w, h, C) order
        return self.reduction(self.norm(x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "out_dim": self.out_dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwinTransformerStage(keras.layers.Layer):
    def __init__(self, dim: int, out_dim: int, input_resolution: tuple[int, int], depth: int, downsample: bool,
                 num_heads: int, window_size: int, mlp_ratio: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        self.cfg = dict(dim=dim, out_dim=out_dim, input_resolution=pair(input_resolution), depth=depth,
                        downsample=downsample, num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio)
        res = tuple((r + 1) // 2 for r in pair(input_resolution)) if downsample else pair(input_resolution)
        self.downsample = PatchMerging(dim, out_dim, name="downsample") if downsample else None
        self.blocks = [SwinTransformerBlock(out_dim, res, num_heads, window_size, shift=i % 2 == 1,
                                            mlp_ratio=mlp_ratio, name=f"blocks_{i}") for i in range(depth)]

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
class ClassifierHead(keras.layers.Layer):
    """Average over (H, W) of channels-last features, then ``fc`` (timm's key names; only ``global_pool='avg'``)."""

    def __init__(self, dim: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_classes = dim, num_classes
        self.fc = dense(num_classes, "fc") if num_classes > 0 else None

    def build(self, input_shape):
        if self.fc is not None:
            self.fc.build((None, self.dim))

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``fc`` for ``num_classes`` (0: none); the pooling stays 'avg' (timm's ``reset``)."""
        check_global_pool(global_pool)
        self.num_classes = num_classes
        replace_sublayer(self, "fc", dense(num_classes, "fc") if num_classes > 0 else None, (None, self.dim))

    def call(self, x, pre_logits: bool = False):
        x = ops.mean(x, axis=(1, 2))  # (B, C)
        return x if pre_logits or self.fc is None else self.fc(x)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_classes": self.num_classes}


# --- timm's model API on a Keras twin (shared by Swin, SwinV2-cr and Hiera) ------------------------------------

def to_output_fmt(x, output_fmt: str):
    """A channels-last (B, H, W, C) map in the layout ``output_fmt`` names ('NCHW' or 'NHWC')."""
    return ops.transpose(x, (0, 3, 1, 2)) if output_fmt == "NCHW" else x


def check_global_pool(global_pool: str | None) -> None:
    if global_pool not in (None, "avg"):
        raise ValueError(f"reset_classifier: global_pool {global_pool!r} is not supported (only 'avg')")


def classes_changed(model: keras.Model, num_classes: int) -> None:
    """Bookkeeping after ``reset_classifier``: ``num_classes`` and the config follow (``get_config`` rebuilds the new
    head); traced predict/train/test functions hold the old head, so they are dropped (retraced on the next call).
    Compile again before ``fit``: the optimizer was built for the old weights."""
    model.num_classes = model.cfg["num_classes"] = num_classes
    model.train_function = model.test_function = model.predict_function = None


def family_pretrained_cfg(model: keras.Model, configs: dict[str, dict]) -> dict:
    """timm-style ``pretrained_cfg`` of a Keras twin (the torch registry attaches the same dict on create): input
    size and classes as built, the preprocessing of its registered name (a model named otherwise gets its family's,
    from the family's first config)."""
    name = model.name if model.name in configs else next(iter(configs))
    cfg = pretrained_cfg(name, model.img_size, model.initial_num_classes, model.in_chans)
    return {**cfg, "architecture": model.name}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwinTransformer(keras.Model):
    """patch_embed -> stages (PatchMerging + shifted-window blocks) -> norm -> head; input (B, H, W, in_chans)."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 4, num_classes: int = 1000, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, in_chans: int = 3, **kwargs):
        super().__init__(**kwargs)
        depths, num_heads = tuple(depths), tuple(num_heads)
        self.cfg = dict(img_size=img_size, patch_size=patch_size, num_classes=num_classes, embed_dim=embed_dim,
                        depths=depths, num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
                        in_chans=in_chans)
        self.img_size, self.num_classes, self.in_chans = img_size, num_classes, in_chans
        self.initial_num_classes = num_classes  # pretrained_cfg's, kept by reset_classifier (as the torch twin's)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, name="patch_embed")
        dims = [embed_dim * 2**i for i in range(len(depths))]
        res = (img_size // patch_size, img_size // patch_size)
        self.layers_ = []  # timm's ``layers`` (a name keras.Model reserves)
        for i, depth in enumerate(depths):
            self.layers_.append(SwinTransformerStage(
                dims[max(i - 1, 0)], dims[i], res, depth, downsample=i > 0, num_heads=num_heads[i],
                window_size=window_size, mlp_ratio=mlp_ratio, name=f"layers_{i}"))
            if i > 0:
                res = tuple((r + 1) // 2 for r in res)
        self.num_features = dims[-1]
        self.norm = layer_norm("norm")
        self.head = ClassifierHead(dims[-1], num_classes, name="head")

    def build(self, input_shape):
        self.patch_embed.build(input_shape)
        for stage in self.layers_:
            stage.build((None, None, None, stage.cfg["dim"]))
        self.norm.build((None, self.num_features))
        self.head.build(None)
        self.built = True

    @property
    def pretrained_cfg(self) -> dict:
        return family_pretrained_cfg(self, SWIN_CONFIGS)

    def forward_intermediates(self, x, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's API over the stages: each picked stage's output as (B, C, H, W) (``'NHWC'``: channels-last, as
        the torch twin allows); ``norm`` applies the final norm to the last stage only (it is sized for it).
        Returns ``(final features (B, H, W, C), intermediates)`` or the intermediates alone."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, last = feature_take_indices(len(self.layers_), indices)
        stages = self.layers_[: last + 1] if stop_early else self.layers_
        x, inter, final = self.patch_embed(x), [], len(self.layers_) - 1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                inter.append(to_output_fmt(self.norm(x) if norm and i == final else x, output_fmt))
        if intermediates_only:
            return inter
        return (self.norm(x) if len(stages) - 1 == final else x), inter

    def forward_features(self, x):
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        for stage in self.layers_:
            x = stage(x)
        return self.norm(x)  # (B, H/32, W/32, 8C)

    def forward_head(self, x, pre_logits: bool = False):
        """(B, H, W, C) -> logits, or the pooled (B, C) with ``pre_logits`` (timm's ClassifierHead, NHWC)."""
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


register_configs(SWIN_CONFIGS, SwinTransformer)
