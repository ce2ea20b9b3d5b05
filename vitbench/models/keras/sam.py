"""Keras 3 twin of ``vitbench.models.torch.sam``: SAM's ViT image encoder (timm's ``samvit_*``) and the RSBuilding
backbone (the same encoder with multi-level outputs, position-embedding resize and frozen stages).

"Segment Anything" - https://arxiv.org/abs/2304.02643 ; RSBuilding - https://arxiv.org/abs/2403.07564

Channels-last throughout: images (B, H, W, 3), token maps (B, H, W, C), the neck output (B, H/p, W/p, neck_chans)
(timm's is NCHW). Most blocks attend inside (ws x ws) windows (the map zero-padded to a multiple of ws after
norm1); the blocks in ``global_attn_indexes`` attend over the whole map. Attention gets MViTv2's decomposed
relative position bias (height term + width term from the ``rel_pos_h`` / ``rel_pos_w`` tables indexed by q-k
offset; a table is linearly resized when the map differs from the one it was made for). The absolute ``pos_embed``
(made for ``img_size``) is resized bicubic with antialias, as ``F.interpolate(..., antialias=True)``, when the input
grid differs, and when a timm checkpoint of another size is ported. Both resizes are constant matrices computed
in numpy from static shapes, applied with ``keras.ops``. The neck is conv 1x1 -> LayerNorm2d -> conv 3x3 ->
LayerNorm2d; channels-last, LayerNorm2d is a LayerNorm over the last axis (eps 1e-6).

Block LayerNorm eps is the config value ``ln_eps`` (timm's 1e-5 by default). The classes are registered as
``vitbench.sam>Name``: ``Attention`` / ``Block`` would otherwise replace ``vitbench>Attention`` / ``vitbench>Block``
of ``layers.py`` / ``vit.py`` in Keras' registry.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ..configs import PREPROCESSING, SAM_CONFIGS, pretrained_cfg
from ..features import check_output_fmt, feature_take_indices
from ._registry import register_configs
from .layers import PACKAGE, Mlp, PatchEmbed, replace_sublayer

SAM_PACKAGE = f"{PACKAGE}.sam"  # see the module docstring: keeps SAM's Attention/Block apart from ViT's


def window_partition(x, ws: int):
    """(B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H and W up to multiples of ws; also returns (Hp, Wp)."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    ph, pw = (-H) % ws, (-W) % ws
    if ph or pw:
        x = ops.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    Hp, Wp = H + ph, W + pw
    x = ops.transpose(ops.reshape(x, (-1, Hp // ws, ws, Wp // ws, ws, C)), (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, ws, ws, C)), (Hp, Wp)


def window_unpartition(windows, ws: int, hw: tuple[int, int], pad_hw: tuple[int, int]):
    """(B * nW, ws, ws, C) -> (B, H, W, C), padding removed."""
    (Hp, Wp), (H, W) = pad_hw, hw
    C = windows.shape[-1]
    x = ops.reshape(windows, (-1, Hp // ws, Wp // ws, ws, ws, C))
    x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, Hp, Wp, C))
    return x[:, :H, :W, :] if (Hp, Wp) != (H, W) else x


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of ``F.interpolate(mode='linear', align_corners=False)`` along one axis."""
    scale, m = n_in / n_out, np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1, lam = min(i0 + 1, n_in - 1), src - i0
        m[i, i0] += 1.0 - lam
        m[i, i1] += lam
    return m


def rel_pos(q_size: int, k_size: int, table):
    """(q_size, k_size, D) embeddings of every q-k offset; the table is linearly resized if its length differs."""
    n = 2 * max(q_size, k_size) - 1
    if table.shape[0] != n:
        table = ops.matmul(ops.convert_to_tensor(_linear_matrix(table.shape[0], n), table.dtype), table)  # (n, D)
    q = np.arange(q_size, dtype=np.float32)[:, None] * max(k_size / q_size, 1.0)
    k = np.arange(k_size, dtype=np.float32)[None, :] * max(q_size / k_size, 1.0)
    idx = ((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).astype(np.int32)  # (q_size, k_size), constant
    return ops.take(table, idx, axis=0)


def decomposed_rel_pos_bias(q, table_h, table_w, size: tuple[int, int]):
    """q (B, heads, H*W, D) -> additive attention bias (B, heads, H*W, H*W) = height term + width term."""
    H, W = size
    Rh, Rw = rel_pos(H, H, table_h), rel_pos(W, W, table_w)  # (H, H, D), (W, W, D)
    heads, D = q.shape[1], q.shape[-1]
    r_q = ops.reshape(q, (-1, heads, H, W, D))
    rel_h = ops.einsum("bnhwc,hkc->bnhwk", r_q, Rh)  # (B, heads, H, W, H)
    rel_w = ops.einsum("bnhwc,wkc->bnhwk", r_q, Rw)  # (B, heads, H, W, W)
    return ops.reshape(rel_h[..., :, None] + rel_w[..., None, :], (-1, heads, H * W, H * W))


@keras.saving.register_keras_serializable(package=SAM_PACKAGE)
class Attention(keras.layers.Layer):
    """Multi-head attention over a (B, H, W, C) map with optional decomposed relative position bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_rel_pos: bool = False,
                 input_size: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        if use_rel_pos and input_size is None:
            raise ValueError("Attention: relative positions need input_size")
        self.dim, self.num_heads, self.qkv_bias, self.use_rel_pos = dim, num_heads, qkv_bias, use_rel_pos
        self.input_size = None if input_size is None else tuple(input_size)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(dim * 3, use_bias=qkv_bias, name="qkv")
        self.proj = keras.layers.Dense(dim, name="proj")

    def build(self, input_shape):
        self.qkv.build((None, self.dim))
        self.proj.build((None, self.dim))
        if self.use_rel_pos:
            self.rel_pos_h = self.add_weight(shape=(2 * self.input_size[0] - 1, self.head_dim), initializer="zeros",
                                             name="rel_pos_h")
            self.rel_pos_w = self.add_weight(shape=(2 * self.input_size[1] - 1, self.head_dim), initializer="zeros",
                                             name="rel_pos_w")

    def call(self, x):
        H, W = x.shape[1], x.shape[2]
        N = H * W
        qkv = ops.reshape(self.qkv(x), (-1, N, 3, self.num_heads, self.head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, D), Keras' attention layout
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(ops.transpose(q, (0, 2, 1, 3)), self.rel_pos_h, self.rel_pos_w, (H, W))
        y = ops.dot_product_attention(q, k, v, bias=bias, scale=self.scale)  # (B, N, heads, D)
        return ops.reshape(self.proj(ops.reshape(y, (-1, N, self.dim))), (-1, H, W, self.dim))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "use_rel_pos": self.use_rel_pos, "input_size": self.input_size}


@keras.saving.register_keras_serializable(package=SAM_PACKAGE)
class Block(keras.layers.Layer):
    """Pre-norm block; windowed attention unless ``window_size`` is 0 (global)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos: bool = False, window_size: int = 0, input_size: tuple[int, int] = (14, 14),
                 ln_eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_ratio, self.qkv_bias = dim, num_heads, mlp_ratio, qkv_bias
        self.use_rel_pos, self.window_size, self.input_size, self.ln_eps = (
            use_rel_pos, window_size, tuple(input_size), ln_eps)
        self.norm1 = keras.layers.LayerNormalization(epsilon=ln_eps, name="norm1")
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos,
                              self.input_size if window_size == 0 else (window_size, window_size), name="attn")
        self.norm2 = keras.layers.LayerNormalization(epsilon=ln_eps, name="norm2")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), name="mlp")

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build((None, self.dim))

    def call(self, x):
        H, W = x.shape[1], x.shape[2]
        y = self.norm1(x)
        if self.window_size > 0:
            y, pad_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, (H, W), pad_hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))  # the Dense layers act on the last axis: no (B, N, C) reshape needed

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "use_rel_pos": self.use_rel_pos, "window_size": self.window_size,
                "input_size": self.input_size, "ln_eps": self.ln_eps}


def LayerNorm2d(channels: int, eps: float = 1e-6, name: str | None = None) -> keras.layers.LayerNormalization:
    """timm's LayerNorm2d (over the channels of an NCHW map) is, channels-last, a LayerNorm over the last axis."""
    return keras.layers.LayerNormalization(axis=-1, epsilon=eps, name=name)


def _cubic_aa(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The cubic kernel torch's antialiased bicubic uses (a = -0.5, as PIL; plain bicubic uses -0.75)."""
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _bicubic_aa_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of ``F.interpolate(mode='bicubic', antialias=True, align_corners=False)`` along one
    axis: the kernel is stretched by the scale when shrinking, and each row's weights are normalised."""
    scale = n_in / n_out
    support, inv = (2.0 * scale, 1.0 / scale) if scale >= 1.0 else (2.0, 1.0)
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        w = _cubic_aa((np.arange(lo, hi) - center + 0.5) * inv)
        m[i, lo:hi] = w / w.sum()
    return m


def resize_pos_embed(pos_embed, size: tuple[int, int]):
    """(1, h, w, C) absolute position embedding -> (1, H, W, C), bicubic (antialiased when shrinking)."""
    h, w = pos_embed.shape[1], pos_embed.shape[2]
    if (h, w) == tuple(size):
        return pos_embed
    mh = ops.convert_to_tensor(_bicubic_aa_matrix(h, size[0]), "float32")  # (H, h)
    mw = ops.convert_to_tensor(_bicubic_aa_matrix(w, size[1]), "float32")  # (W, w)
    return ops.einsum("Hh,bhwc,Ww->bHWc", mh, ops.cast(pos_embed, "float32"), mw)


@keras.saving.register_keras_serializable(package=SAM_PACKAGE)
class VisionTransformerSAM(keras.Model):
    """patch_embed (B, H/p, W/p, C) + pos_embed -> windowed/global blocks -> neck (B, H/p, W/p, neck_chans) ->
    average pool -> head (when ``num_classes`` > 0).

    timm's model API: ``forward_features``, ``forward_head``, ``forward_intermediates``, ``get_classifier``,
    ``reset_classifier`` and ``pretrained_cfg``, as the torch twin (inputs channels-last; maps NCHW unless
    ``output_fmt`` asks for NHWC)."""

    def __init__(self, *, img_size: int = 1024, patch_size: int = 16, num_classes: int = 0, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos: bool = True, window_size: int = 14, global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
                 neck_chans: int = 256, ln_eps: float = 1e-5, in_chans: int = 3, **kwargs):
        super().__init__(**kwargs)
        if img_size % patch_size:
            raise ValueError(f"VisionTransformerSAM: img_size {img_size} is not a multiple of patch {patch_size}")
        global_attn_indexes = tuple(global_attn_indexes)
        self.cfg = dict(img_size=img_size, patch_size=patch_size, num_classes=num_classes, embed_dim=embed_dim,
                        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                        use_rel_pos=use_rel_pos, window_size=window_size, global_attn_indexes=global_attn_indexes,
                        neck_chans=neck_chans, ln_eps=ln_eps, in_chans=in_chans)
        self.img_size, self.patch_size, self.embed_dim, self.in_chans = img_size, patch_size, embed_dim, in_chans
        self.num_classes = num_classes
        grid = (img_size // patch_size, img_size // patch_size)
        self.grid_size = grid
        # built for img_size; _embed calls its conv directly, so any multiple of patch_size gives a (h, w) map
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, name="patch_embed")
        self.blocks = [Block(embed_dim, num_heads, mlp_ratio, qkv_bias, use_rel_pos,
                             0 if i in global_attn_indexes else window_size, grid, ln_eps, name=f"blocks_{i}")
                       for i in range(depth)]
        self.neck = [keras.layers.Conv2D(neck_chans, 1, use_bias=False, name="neck_0"), LayerNorm2d(neck_chans,
                     name="neck_1"), keras.layers.Conv2D(neck_chans, 3, padding="same", use_bias=False, name="neck_2"),
                     LayerNorm2d(neck_chans, name="neck_3")]
        self.num_features = neck_chans
        self.head = keras.layers.Dense(num_classes, name="head_fc") if num_classes > 0 else None  # timm's head.fc

    def build(self, input_shape):
        self.patch_embed.build(input_shape)
        self.pos_embed = self.add_weight(shape=(1, *self.grid_size, self.embed_dim), initializer="zeros",
                                         name="pos_embed")
        for blk in self.blocks:
            blk.build((None, None, None, self.embed_dim))
        self.neck[0].build((None, None, None, self.embed_dim))
        for layer in self.neck[1:]:
            layer.build((None, None, None, self.num_features))
        if self.head is not None:
            self.head.build((None, self.num_features))
        self.built = True

    def _embed(self, x):
        x = self.patch_embed.proj(x)  # (B, H/p, W/p, C)
        return x + ops.cast(resize_pos_embed(self.pos_embed, (x.shape[1], x.shape[2])), x.dtype)

    def _neck(self, x):
        for layer in self.neck:
            x = layer(x)
        return x

    def forward_intermediates(self, x, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's API over the blocks ``indices`` picks (None: all, n: the last n, a list: those, negative from the
        end): each one's output, through the neck with ``norm`` (as timm: the neck holds the norms). Returns
        ``(neck features, intermediates)`` or the intermediates alone, every map (B, H, W, C) (``'NHWC'``) or
        (B, C, H, W) (``'NCHW'``, timm's default and ours). ``stop_early`` skips the blocks after the last one
        picked."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, last = feature_take_indices(len(self.blocks), indices)
        x, inter = self._embed(x), []
        for i, blk in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = blk(x)
            if i in take:
                inter.append(self._neck(x) if norm else x)
        maps = inter if intermediates_only else [self._neck(x), *inter]
        if output_fmt == "NCHW":
            maps = [ops.transpose(y, (0, 3, 1, 2)) for y in maps]
        return maps if intermediates_only else (maps[0], maps[1:])

    def get_classifier(self):
        """The classifier Dense (timm's ``head.fc``), or None without one."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none, the model then gives pooled features); the pooling stays 'avg'
        (the only one the torch twin's head has). Weights of the old head leave the model."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"reset_classifier: global_pool {global_pool!r} is not supported (only 'avg')")
        self.num_classes = self.cfg["num_classes"] = num_classes
        replace_sublayer(self, "head", keras.layers.Dense(num_classes, name="head_fc") if num_classes > 0 else None,
                         (None, self.num_features))

    @property
    def pretrained_cfg(self) -> dict:
        """timm-style ``pretrained_cfg``: this model's input size and classes, the preprocessing of its registered
        name (``create_model`` names the model), else of ``samvit_base_patch16``."""
        cfg = pretrained_cfg(self.name, self.img_size, self.num_classes, self.in_chans)
        return cfg if self.name in PREPROCESSING else {**cfg, **PREPROCESSING["samvit_base_patch16"]}

    def forward_features(self, x):
        """(B, H, W, 3) -> neck features (B, H/p, W/p, neck_chans)."""
        x = self._embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self._neck(x)

    def forward_head(self, x, pre_logits: bool = False):
        """(B, H, W, C) neck features -> logits (B, num_classes), or pooled features with ``pre_logits``."""
        x = ops.mean(x, axis=(1, 2))  # timm's ClassifierHead: global average pool, then fc
        return x if pre_logits or self.head is None else self.head(x)

    def call(self, x, training=None):
        return self.forward_head(self.forward_features(x))

    def get_config(self):
        return {**super().get_config(), **self.cfg}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package=SAM_PACKAGE)
class RSBuildingBackbone(VisionTransformerSAM):
    """RSBuilding's backbone: SAM's ViT returning multi-level features for a decoder.

    ``out_indices`` picks blocks whose outputs (B, H, W, C) are returned as a list; the last block's output goes
    through the neck (the SAM image embedding). ``frozen_stages`` freezes (non-trainable) the patch embedding and
    ``pos_embed`` (0), then blocks 0..n-1. Position embeddings are resized (bicubic) to any input size that is a
    multiple of the patch size.
    """

    def __init__(self, *, out_indices: tuple[int, ...] = (2, 5, 8, 11), frozen_stages: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.cfg = {**self.cfg, "out_indices": tuple(out_indices), "frozen_stages": frozen_stages}
        self.out_indices = tuple(i % len(self.blocks) for i in out_indices)
        self.frozen_stages = frozen_stages
        self._freeze()

    def build(self, input_shape):
        super().build(input_shape)
        self._freeze()

    def _freeze(self) -> None:
        if self.frozen_stages >= 0:
            self.patch_embed.trainable = False
            if getattr(self, "pos_embed", None) is not None:
                self.pos_embed.trainable = False
        for blk in self.blocks[: max(self.frozen_stages, 0)]:
            blk.trainable = False

    def call(self, x, training=None):
        x, outs = self._embed(x), []
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.out_indices:
                outs.append(self._neck(x) if i == last else x)
        return outs


register_configs(SAM_CONFIGS, VisionTransformerSAM)
register_configs({"rsbuilding_vit_base": SAM_CONFIGS["samvit_base_patch16"]}, RSBuildingBackbone)
