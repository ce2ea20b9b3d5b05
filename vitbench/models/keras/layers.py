"""Keras 3 twins of ``vitbench.models.torch.layers``: sdpa, multi-head self-attention, MLP, patch embedding.

Keras conventions: settings in ``__init__``, weights in ``build``, only ``keras.ops`` in ``call``, and
``get_config`` round-trips. Layout is channels-last: images (B, H, W, C), tokens (B, N, C).
Sublayer names follow timm (``qkv``, ``proj``, ``fc1``, ``fc2``, ``proj`` of the patch embed) so the port table
reads one to one.
"""
from __future__ import annotations

import math

import keras
from keras import ops

PACKAGE = "vitbench"


def sdpa(q, k, v, attn_mask=None, is_causal: bool = False, scale: float | None = None, return_attn: bool = False):
    """Scaled dot-product attention on (..., L, D) tensors, as ``F.scaled_dot_product_attention``.

    ``attn_mask`` is boolean (True = may attend) or additive, broadcastable to (..., L, S). With ``return_attn`` the
    softmax weights (..., L, S) are returned beside the output.
    """
    d = ops.shape(q)[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    attn = ops.matmul(q * scale, ops.swapaxes(k, -1, -2))  # (..., L, S)
    if is_causal:
        if attn_mask is not None:
            raise ValueError("sdpa: give attn_mask or is_causal, not both")
        L, S = ops.shape(q)[-2], ops.shape(k)[-2]
        attn_mask = ops.tril(ops.ones((L, S), dtype="bool"))
    if attn_mask is not None:
        # standardize: on Keras' torch backend a torch.bool tensor's dtype is not equal to the string "bool"
        if keras.backend.standardize_dtype(attn_mask.dtype) == "bool":
            attn = ops.where(attn_mask, attn, ops.full_like(attn, float("-inf")))
        else:
            attn = attn + ops.cast(attn_mask, attn.dtype)
    attn = ops.softmax(attn, axis=-1)
    out = ops.matmul(attn, v)  # (..., L, Dv)
    return (out, attn) if return_attn else out


@keras.saving.register_keras_serializable(package=PACKAGE)
class Attention(keras.layers.Layer):
    """Multi-head self-attention with a fused qkv projection (timm's layout: [q heads, k heads, v heads]).

    ``fused_attn=True`` uses ``keras.ops.dot_product_attention``; ``False`` uses our ``sdpa``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, fused_attn: bool = True, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.qkv_bias, self.fused_attn = dim, num_heads, qkv_bias, fused_attn
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(dim * 3, use_bias=qkv_bias, name="qkv")
        self.proj = keras.layers.Dense(dim, name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build((*input_shape[:-1], self.dim))

    def call(self, x, return_attn: bool = False):
        B, N = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(self.qkv(x), (B, N, 3, self.num_heads, self.head_dim))
        attn = None
        if self.fused_attn and not return_attn:
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, D), Keras' attention layout
            y = ops.dot_product_attention(q, k, v, scale=self.scale)  # (B, N, H, D)
        else:
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, H, N, D)
            y, attn = sdpa(qkv[0], qkv[1], qkv[2], scale=self.scale, return_attn=True)  # (B, H, N, D)
            y = ops.transpose(y, (0, 2, 1, 3))  # (B, N, H, D)
        y = self.proj(ops.reshape(y, (B, N, self.dim)))
        return (y, attn) if return_attn else y

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "fused_attn": self.fused_attn}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mlp(keras.layers.Layer):
    """fc1 -> exact (erf) GELU -> fc2. Note ``keras.ops.gelu`` defaults to the tanh approximation: not used."""

    def __init__(self, dim: int, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.hidden = dim, hidden
        self.fc1 = keras.layers.Dense(hidden, name="fc1")
        self.fc2 = keras.layers.Dense(dim, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden))

    def call(self, x):
        return self.fc2(ops.gelu(self.fc1(x), approximate=False))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": self.hidden}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbed(keras.layers.Layer):
    """(B, H, W, 3) -> (B, N, embed_dim) by a strided convolution."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, **kwargs):
        super().__init__(**kwargs)
        if img_size % patch_size:
            raise ValueError(f"PatchEmbed: img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.embed_dim = img_size, patch_size, embed_dim
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = keras.layers.Conv2D(embed_dim, patch_size, strides=patch_size, name="proj")

    def build(self, input_shape):
        self.proj.build(input_shape)

    def call(self, x):
        x = self.proj(x)  # (B, H/p, W/p, C)
        return ops.reshape(x, (ops.shape(x)[0], self.num_patches, self.embed_dim))

    def get_config(self):
        return {**super().get_config(), "img_size": self.img_size, "patch_size": self.patch_size,
                "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SDPA(keras.layers.Layer):
    """Attention kernel alone, for kernel benchmarks: (B, N, 3C) -> split q, k, v into heads -> (B, N, C).

    ``impl='ours'`` runs our ``sdpa``; ``impl='keras'`` runs ``keras.ops.dot_product_attention``.
    """

    def __init__(self, num_heads: int = 8, impl: str = "ours", scale: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if impl not in ("ours", "keras"):
            raise ValueError(f"SDPA: impl must be 'ours' or 'keras', not {impl!r}")
        self.num_heads, self.impl, self.scale = num_heads, impl, scale

    def call(self, x):
        B, N, C3 = ops.shape(x)
        C = C3 // 3
        qkv = ops.reshape(x, (B, N, 3, self.num_heads, C // self.num_heads))  # (B, N, 3, H, D)
        if self.impl == "keras":
            y = ops.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], scale=self.scale)  # (B, N, H, D)
        else:
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, H, N, D)
            y = ops.transpose(sdpa(qkv[0], qkv[1], qkv[2], scale=self.scale), (0, 2, 1, 3))
        return ops.reshape(y, (B, N, C))

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "impl": self.impl, "scale": self.scale}
