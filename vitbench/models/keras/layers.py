"""Keras 3 twins of ``vitbench.models.torch.layers``: sdpa, multi-head self-attention, MLP, LayerScale, patch
embedding.

Keras conventions: settings in ``__init__``, weights in ``build``, only ``keras.ops`` in ``call``, and
``get_config`` round-trips. Layout is channels-last: images (B, H, W, C), tokens (B, N, C).
Sublayer names follow timm (``qkv``, ``q_norm``, ``k_norm``, ``proj``, ``fc1``, ``fc2``, ``gamma``, ``proj`` of
the patch embed) so the port table reads one to one.
"""
from __future__ import annotations

import copy
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


def _initializer_spec(initializer) -> dict:
    """An initializer as its serialized config: each Dense then gets a fresh instance (``_initializer``), so an
    unseeded initializer is never shared (Keras would give every layer the same values) and configs stay JSON."""
    if isinstance(initializer, dict):
        initializer = copy.deepcopy(initializer)
    return keras.initializers.serialize(keras.initializers.get(initializer))


def _initializer(spec: dict):
    return keras.initializers.get(copy.deepcopy(spec))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Attention(keras.layers.Layer):
    """Multi-head self-attention with a fused qkv projection (timm's layout: [q heads, k heads, v heads]).

    ``fused_attn=True`` uses ``keras.ops.dot_product_attention``; ``False`` uses our ``sdpa``. ``qk_norm`` adds
    LayerNorms over the head dim of q and k (``q_norm`` / ``k_norm``, eps ``norm_eps``: torch's ``nn.LayerNorm``
    default 1e-5 as timm's standalone Attention; the ViT passes 1e-6), on both paths. ``kernel_initializer`` is
    that of ``qkv`` and ``proj`` (biases start at zero).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, fused_attn: bool = True,
                 qk_norm: bool = False, norm_eps: float = 1e-5, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.qkv_bias, self.fused_attn = dim, num_heads, qkv_bias, fused_attn
        self.qk_norm, self.norm_eps = qk_norm, norm_eps
        self.kernel_initializer = _initializer_spec(kernel_initializer)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(dim * 3, use_bias=qkv_bias, kernel_initializer=_initializer(
            self.kernel_initializer), name="qkv")
        self.q_norm = keras.layers.LayerNormalization(epsilon=norm_eps, name="q_norm") if qk_norm else None
        self.k_norm = keras.layers.LayerNormalization(epsilon=norm_eps, name="k_norm") if qk_norm else None
        self.proj = keras.layers.Dense(dim, kernel_initializer=_initializer(self.kernel_initializer), name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        if self.qk_norm:
            self.q_norm.build((None, None, None, self.head_dim))
            self.k_norm.build((None, None, None, self.head_dim))
        self.proj.build((*input_shape[:-1], self.dim))

    def call(self, x, return_attn: bool = False):
        B, N = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(self.qkv(x), (B, N, 3, self.num_heads, self.head_dim))
        attn = None
        if self.fused_attn and not return_attn:
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, D), Keras' attention layout
            if self.qk_norm:  # over D, the last axis in either layout
                q, k = self.q_norm(q), self.k_norm(k)
            y = ops.dot_product_attention(q, k, v, scale=self.scale)  # (B, N, H, D)
        else:
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, H, N, D)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            y, attn = sdpa(q, k, v, scale=self.scale, return_attn=True)  # (B, H, N, D)
            y = ops.transpose(y, (0, 2, 1, 3))  # (B, N, H, D)
        y = self.proj(ops.reshape(y, (B, N, self.dim)))
        return (y, attn) if return_attn else y

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "fused_attn": self.fused_attn, "qk_norm": self.qk_norm, "norm_eps": self.norm_eps,
                "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mlp(keras.layers.Layer):
    """fc1 -> exact (erf) GELU -> fc2. Note ``keras.ops.gelu`` defaults to the tanh approximation: not used."""

    def __init__(self, dim: int, hidden: int, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.hidden = dim, hidden
        self.kernel_initializer = _initializer_spec(kernel_initializer)
        self.fc1 = keras.layers.Dense(hidden, kernel_initializer=_initializer(self.kernel_initializer), name="fc1")
        self.fc2 = keras.layers.Dense(dim, kernel_initializer=_initializer(self.kernel_initializer), name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden))

    def call(self, x):
        return self.fc2(ops.gelu(self.fc1(x), approximate=False))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": self.hidden,
                "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(keras.layers.Layer):
    """x * gamma, a learned per-channel scale starting at ``init_values`` (timm's ``ls1`` / ``ls2``)."""

    def __init__(self, dim: int, init_values: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.init_values = dim, init_values

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(self.dim,), initializer=keras.initializers.Constant(self.init_values),
                                     name="gamma")

    def call(self, x):
        return x * self.gamma

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "init_values": self.init_values}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbed(keras.layers.Layer):
    """(B, img_size, img_size, in_chans) -> (B, N, embed_dim) by a strided convolution. ``in_chans=None`` takes the
    channels from the shape ``build`` is given; a number fixes them (a differing input shape is an error).
    Arguments in the torch twin's order (img_size, patch_size, in_chans, embed_dim)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int | None = None, embed_dim: int = 768, **kwargs):
        super().__init__(**kwargs)
        if img_size % patch_size:
            raise ValueError(f"PatchEmbed: img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.embed_dim, self.in_chans = img_size, patch_size, embed_dim, in_chans
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = keras.layers.Conv2D(embed_dim, patch_size, strides=patch_size, name="proj")

    def build(self, input_shape):
        c = input_shape[-1]
        if self.in_chans is not None:
            if c is not None and c != self.in_chans:
                raise ValueError(f"PatchEmbed: input has {c} channels, in_chans is {self.in_chans}")
            c = self.in_chans
        self.proj.build((*input_shape[:-1], c))

    def call(self, x):
        if x.shape[1] is not None and tuple(x.shape[1:3]) != (self.img_size, self.img_size):
            raise ValueError(f"PatchEmbed: input {x.shape[1]}x{x.shape[2]} does not match img_size {self.img_size}")
        x = self.proj(x)  # (B, H/p, W/p, C)
        return ops.reshape(x, (ops.shape(x)[0], self.num_patches, self.embed_dim))

    def get_config(self):
        return {**super().get_config(), "img_size": self.img_size, "patch_size": self.patch_size,
                "embed_dim": self.embed_dim, "in_chans": self.in_chans}


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


def replace_sublayer(owner: keras.layers.Layer, attr: str, new: keras.layers.Layer | None, input_shape) -> None:
    """``owner.<attr> = new`` (built for ``input_shape``; None removes it) on an ``owner`` that may be built, as
    ``reset_classifier`` needs. Keras locks a built layer's state, so the lock is lifted meanwhile (as Keras' own
    ``quantize`` does; no public API swaps a sub-layer) and the old sub-layer untracked: its weights leave
    ``weights``, so a strict port still covers every variable. The new weights get the paths the old ones had
    (built under ``owner``'s path). Traced predict/train/test functions of ``owner`` are dropped (they hold the old
    layer); on Keras' torch backend the owner's parameter list is rebuilt."""
    if new is not None:
        parent, _, name = (owner.path or owner.name).rpartition("/")
        with keras.name_scope(name, override_parent=parent):
            new.build(input_shape)
    tracker = owner._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        old = getattr(owner, attr, None)
        if old is not None:
            tracker.untrack(old)
        setattr(owner, attr, new)
    finally:
        if locked:
            tracker.lock()
    if hasattr(owner, "_torch_params"):
        owner._track_variables()
    for fn in ("train_function", "test_function", "predict_function"):
        if getattr(owner, fn, None) is not None:
            setattr(owner, fn, None)
