"""Keras 3 Vision Transformer, the twin of ``vitbench.models.torch.vit`` (same configs, same argument and weight
names, the same ``norm`` / ``fc_norm`` split and init).

Input (B, H, W, in_chans) channels-last; logits (B, num_classes). The port tables (``vitbench.port.keras``) bring a
timm (or our torch) ViT state_dict in, strictly both ways: Dense kernels are transposed, the patch conv goes
OIHW -> HWIO, LayerNorm eps is 1e-6 as in timm (Keras' default is 1e-3), GELU is the exact erf form.
"""
from __future__ import annotations

import keras
from keras import ops

from ..configs import PREPROCESSING, VIT_CONFIGS, pretrained_cfg
from ..features import check_output_fmt, feature_take_indices
from ._registry import register_configs
from .layers import PACKAGE, Attention, LayerScale, Mlp, PatchEmbed, replace_sublayer

LN_EPS = 1e-6  # timm's ViT LayerNorm eps


def _ln(name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=LN_EPS, name=name)


def _trunc_normal() -> keras.initializers.Initializer:
    """torch's ``trunc_normal_(std=0.02)`` cuts at +-2 absolute (100 std), so it is a plain normal; Keras'
    ``TruncatedNormal`` cuts at 2 std (std 0.88 x 0.02): not the same init."""
    return keras.initializers.RandomNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Block(keras.layers.Layer):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))); x + ls2(mlp(norm2(x))) (LayerScale with
    ``init_values``, else none)."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, init_values: float | None = None, fused_attn: bool = True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_ratio, self.qkv_bias, self.fused_attn = (
            dim, num_heads, mlp_ratio, qkv_bias, fused_attn)
        self.qk_norm, self.init_values = qk_norm, init_values
        self.norm1 = _ln("norm1")
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, fused_attn=fused_attn, qk_norm=qk_norm,
                              norm_eps=LN_EPS, kernel_initializer=kernel_initializer, name="attn")
        self.kernel_initializer = self.attn.kernel_initializer  # serialized
        self.ls1 = LayerScale(dim, init_values, name="ls1") if init_values else None
        self.norm2 = _ln("norm2")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), kernel_initializer=self.kernel_initializer, name="mlp")
        self.ls2 = LayerScale(dim, init_values, name="ls2") if init_values else None

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.ls1, self.norm2, self.mlp, self.ls2):
            if layer is not None:
                layer.build(input_shape)

    def _ls(self, ls, x):
        return x if ls is None else ls(x)

    def call(self, x, return_attn: bool = False):
        if return_attn:
            y, attn = self.attn(self.norm1(x), return_attn=True)
            x = x + self._ls(self.ls1, y)
            return x + self._ls(self.ls2, self.mlp(self.norm2(x))), attn
        x = x + self._ls(self.ls1, self.attn(self.norm1(x)))
        return x + self._ls(self.ls2, self.mlp(self.norm2(x)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "qk_norm": self.qk_norm, "init_values": self.init_values,
                "fused_attn": self.fused_attn, "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package=PACKAGE)
class VisionTransformer(keras.Model):
    """ViT classifier: patch_embed -> [cls] + pos_embed -> blocks -> norm -> pool -> fc_norm -> head.

    As timm: ``global_pool='token'`` takes the class token after ``norm`` (no ``fc_norm``); ``'avg'`` averages the
    non-prefix tokens, then ``fc_norm`` (no ``norm``). ``fc_norm`` (timm's argument) fixes that placement instead:
    ``reset_classifier`` records it when it changes the pooling, so the config rebuilds the same layers.

    timm's model API: ``forward_features``, ``forward_head``, ``forward_intermediates``, ``get_classifier``,
    ``reset_classifier`` and ``pretrained_cfg``, as the torch twin (inputs and maps channels-last unless
    ``output_fmt`` asks for NCHW)."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_norm: bool = False,
                 init_values: float | None = None, class_token: bool = True, fused_attn: bool = True,
                 fc_norm: bool | None = None, **kwargs):
        super().__init__(**kwargs)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"VisionTransformer: global_pool must be 'token' or 'avg', not {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("VisionTransformer: global_pool='token' needs class_token=True")
        self.cfg = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                        global_pool=global_pool, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                        mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm, init_values=init_values,
                        class_token=class_token, fused_attn=fused_attn, fc_norm=fc_norm)
        self.img_size, self.in_chans, self.global_pool = img_size, in_chans, global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_classes = num_classes
        self.class_token = class_token
        self.num_prefix_tokens = 1 if class_token else 0
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, name="patch_embed")
        init = keras.initializers.serialize(_trunc_normal())
        self.blocks = [Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
                             init_values=init_values, fused_attn=fused_attn, kernel_initializer=init,
                             name=f"blocks_{i}") for i in range(depth)]
        # timm: with avg pooling the final norm moves after the pool (unless fc_norm says where it goes)
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = None if use_fc_norm else _ln("norm")
        self.fc_norm = _ln("fc_norm") if use_fc_norm else None
        self.head = (keras.layers.Dense(num_classes, kernel_initializer=_trunc_normal(), name="head")
                     if num_classes > 0 else None)
        self.cls_token = None

    def build(self, input_shape):
        n = self.patch_embed.num_patches + self.num_prefix_tokens
        if self.class_token:
            self.cls_token = self.add_weight(shape=(1, 1, self.embed_dim), name="cls_token",
                                             initializer=keras.initializers.RandomNormal(stddev=1e-6))
        self.pos_embed = self.add_weight(shape=(1, n, self.embed_dim), initializer=_trunc_normal(), name="pos_embed")
        self.patch_embed.build((input_shape[0], self.img_size, self.img_size, input_shape[-1]))
        tokens = (input_shape[0], n, self.embed_dim)
        for blk in self.blocks:
            blk.build(tokens)
        if self.norm is not None:
            self.norm.build(tokens)
        for layer in (self.fc_norm, self.head):  # on the pooled (B, C)
            if layer is not None:
                layer.build((input_shape[0], self.embed_dim))
        self.built = True

    def _embed(self, x):
        x = self.patch_embed(x)  # (B, P, C)
        if self.cls_token is not None:
            cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (ops.shape(x)[0], 1, self.embed_dim))
            x = ops.concatenate([cls, x], axis=1)  # (B, N, C)
        return x + self.pos_embed

    def no_weight_decay(self) -> set[str]:
        """Weights trained without weight decay (as timm's): the learned tokens and position table."""
        return {"pos_embed", "cls_token"}

    def _final_norm(self, x):
        return x if self.norm is None else self.norm(x)

    def forward_features(self, x):
        """(B, H, W, in_chans) -> tokens (B, N, C), through ``norm`` unless it moved to ``fc_norm``."""
        x = self._embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self._final_norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        """(B, N, C) -> logits (B, num_classes), or pooled features with ``pre_logits``."""
        x = x[:, 0] if self.global_pool == "token" else ops.mean(x[:, self.num_prefix_tokens:], axis=1)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        return x if pre_logits or self.head is None else self.head(x)

    def call(self, x, training=None):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x, indices: int | list[int] | None = None, return_prefix_tokens: bool = False,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's API: the outputs of the blocks ``indices`` picks (None: all, n: the last n, a list: those, negative
        from the end), prefix tokens split off, as maps (B, C, H, W) (``'NCHW'``, timm's default) or (B, H, W, C)
        (``'NHWC'``), or tokens (B, N, C) (``'NLC'``); with ``norm`` through the final norm; with
        ``return_prefix_tokens`` each as (spatial, prefix). Returns ``(normed final tokens, intermediates)``, or the
        intermediates alone. ``stop_early`` skips the blocks after the last one picked."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC", "NLC"))
        take, last = feature_take_indices(len(self.blocks), indices)
        x, inter = self._embed(x), []
        for i, blk in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = blk(x)
            if i in take:
                inter.append(self._final_norm(x) if norm else x)
        p = self.num_prefix_tokens
        prefix, inter = [y[:, :p] for y in inter], [y[:, p:] for y in inter]
        if output_fmt != "NLC":
            grid = self.img_size // self.cfg["patch_size"]  # PatchEmbed admits img_size inputs only
            inter = [ops.reshape(y, (-1, grid, grid, self.embed_dim)) for y in inter]
            if output_fmt == "NCHW":
                inter = [ops.transpose(y, (0, 3, 1, 2)) for y in inter]
        if return_prefix_tokens and p:
            inter = list(zip(inter, prefix, strict=True))
        return inter if intermediates_only else (self._final_norm(x), inter)

    def get_classifier(self):
        """The classifier Dense (timm's ``head``), or None without one."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none, the model then gives pooled features); optionally a new pooling
        (the final norm stays where it is, as timm's). Weights of the old head leave the model."""
        if global_pool is not None:
            if global_pool not in ("token", "avg") or (global_pool == "token" and not self.class_token):
                raise ValueError(f"reset_classifier: global_pool {global_pool!r} does not fit this model")
            self.global_pool = self.cfg["global_pool"] = global_pool
            self.cfg["fc_norm"] = self.fc_norm is not None
        self.num_classes = self.cfg["num_classes"] = num_classes
        head = (keras.layers.Dense(num_classes, kernel_initializer=_trunc_normal(), name="head")
                if num_classes > 0 else None)
        replace_sublayer(self, "head", head, (None, self.embed_dim))

    @property
    def pretrained_cfg(self) -> dict:
        """timm-style ``pretrained_cfg``: this model's input size and classes, the preprocessing of its registered
        name (``create_model`` names the model), else of ``vit_base_patch16_224``."""
        cfg = pretrained_cfg(self.name, self.img_size, self.num_classes, self.in_chans)
        return cfg if self.name in PREPROCESSING else {**cfg, **PREPROCESSING["vit_base_patch16_224"]}

    def attention_maps(self, x):
        """Softmax attention of every block, each (B, H, N, N)."""
        x, maps = self._embed(x), []
        for blk in self.blocks:
            x, attn = blk(x, return_attn=True)
            maps.append(attn)
        return maps

    def get_config(self):
        return {**super().get_config(), **self.cfg}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


register_configs(VIT_CONFIGS, VisionTransformer)
