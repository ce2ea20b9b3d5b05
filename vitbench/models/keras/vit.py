"""Keras 3 Vision Transformer, the twin of ``vitbench.models.torch.vit`` (same configs, same names).

Input (B, H, W, 3) channels-last; logits (B, num_classes). ``port_table`` / ``load_timm_state_dict`` bring a
timm (or our torch) ViT state_dict in: Dense kernels are transposed, the patch conv goes OIHW -> HWIO,
LayerNorm eps is 1e-6 as in timm (Keras' default is 1e-3), GELU is the exact erf form.
"""
from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from ..configs import VIT_CONFIGS
from ._registry import register_configs
from .layers import PACKAGE, Attention, Mlp, PatchEmbed

LN_EPS = 1e-6  # timm's ViT LayerNorm eps


@keras.saving.register_keras_serializable(package=PACKAGE)
class Block(keras.layers.Layer):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 fused_attn: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.mlp_ratio, self.qkv_bias, self.fused_attn = (
            dim, num_heads, mlp_ratio, qkv_bias, fused_attn)
        self.norm1 = keras.layers.LayerNormalization(epsilon=LN_EPS, name="norm1")
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, fused_attn=fused_attn, name="attn")
        self.norm2 = keras.layers.LayerNormalization(epsilon=LN_EPS, name="norm2")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), name="mlp")

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build(input_shape)

    def call(self, x, return_attn: bool = False):
        if return_attn:
            y, attn = self.attn(self.norm1(x), return_attn=True)
            x = x + y
            return x + self.mlp(self.norm2(x)), attn
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "fused_attn": self.fused_attn}


@keras.saving.register_keras_serializable(package=PACKAGE)
class VisionTransformer(keras.Model):
    """ViT classifier: patch_embed -> [cls] + pos_embed -> blocks -> norm -> pool -> head."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_classes: int = 1000, global_pool: str = "token",
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, fused_attn: bool = True, **kwargs):
        super().__init__(**kwargs)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"VisionTransformer: global_pool must be 'token' or 'avg', not {global_pool!r}")
        self.cfg = dict(img_size=img_size, patch_size=patch_size, num_classes=num_classes, global_pool=global_pool,
                        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias, fused_attn=fused_attn)
        self.img_size, self.embed_dim, self.global_pool = img_size, embed_dim, global_pool
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim, name="patch_embed")
        self.blocks = [Block(embed_dim, num_heads, mlp_ratio, qkv_bias, fused_attn, name=f"blocks_{i}")
                       for i in range(depth)]
        # timm: with avg pooling the final norm moves after the pool (fc_norm)
        self.norm = keras.layers.LayerNormalization(epsilon=LN_EPS, name="fc_norm" if global_pool == "avg" else "norm")
        self.head = keras.layers.Dense(num_classes, name="head") if num_classes > 0 else None

    def build(self, input_shape):
        n = self.patch_embed.num_patches + 1
        self.cls_token = self.add_weight(shape=(1, 1, self.embed_dim), initializer=keras.initializers.RandomNormal(
            stddev=1e-6), name="cls_token")
        self.pos_embed = self.add_weight(shape=(1, n, self.embed_dim), initializer=keras.initializers.TruncatedNormal(
            stddev=0.02), name="pos_embed")
        self.patch_embed.build(input_shape)
        tokens = (input_shape[0], n, self.embed_dim)
        for blk in self.blocks:
            blk.build(tokens)
        self.norm.build(tokens)
        if self.head is not None:
            self.head.build((input_shape[0], self.embed_dim))
        self.built = True

    def _embed(self, x):
        x = self.patch_embed(x)  # (B, N-1, C)
        cls = ops.broadcast_to(self.cls_token, (ops.shape(x)[0], 1, self.embed_dim))
        return ops.concatenate([cls, x], axis=1) + self.pos_embed  # (B, N, C)

    def forward_features(self, x):
        x = self._embed(x)
        for blk in self.blocks:
            x = blk(x)
        return x if self.global_pool == "avg" else self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 0] if self.global_pool == "token" else self.norm(ops.mean(x[:, 1:], axis=1))
        return x if pre_logits or self.head is None else self.head(x)

    def call(self, x, training=None):
        return self.forward_head(self.forward_features(x))

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


# --- weight port: timm / our torch state_dict -> this model ------------------------------------------------------

def _t(w: np.ndarray) -> np.ndarray:
    return w.T


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _same(w: np.ndarray) -> np.ndarray:
    return w


def port_table(model: VisionTransformer) -> list[tuple[keras.Variable, str, Callable[[np.ndarray], np.ndarray]]]:
    """(our variable, timm key, transform) for every weight, in a reviewable table."""
    rows = [
        (model.patch_embed.proj.kernel, "patch_embed.proj.weight", _conv),
        (model.patch_embed.proj.bias, "patch_embed.proj.bias", _same),
        (model.cls_token, "cls_token", _same),
        (model.pos_embed, "pos_embed", _same),
    ]
    for i, b in enumerate(model.blocks):
        p = f"blocks.{i}."
        rows += [
            (b.norm1.gamma, p + "norm1.weight", _same), (b.norm1.beta, p + "norm1.bias", _same),
            (b.attn.qkv.kernel, p + "attn.qkv.weight", _t),
            (b.attn.proj.kernel, p + "attn.proj.weight", _t), (b.attn.proj.bias, p + "attn.proj.bias", _same),
            (b.norm2.gamma, p + "norm2.weight", _same), (b.norm2.beta, p + "norm2.bias", _same),
            (b.mlp.fc1.kernel, p + "mlp.fc1.weight", _t), (b.mlp.fc1.bias, p + "mlp.fc1.bias", _same),
            (b.mlp.fc2.kernel, p + "mlp.fc2.weight", _t), (b.mlp.fc2.bias, p + "mlp.fc2.bias", _same),
        ]
        if b.attn.qkv.use_bias:
            rows.append((b.attn.qkv.bias, p + "attn.qkv.bias", _same))
    norm = "fc_norm" if model.global_pool == "avg" else "norm"
    rows += [(model.norm.gamma, f"{norm}.weight", _same), (model.norm.beta, f"{norm}.bias", _same)]
    if model.head is not None:
        rows += [(model.head.kernel, "head.weight", _t), (model.head.bias, "head.bias", _same)]
    return rows


def load_timm_state_dict(model: VisionTransformer, state: dict[str, np.ndarray]) -> None:
    """Assign every weight from a timm ViT state_dict (numpy arrays). Every timm key must be used exactly once."""
    if not model.built:
        model.build((1, model.img_size, model.img_size, 3))
    table = port_table(model)
    used = {key for _, key, _ in table}
    missing = sorted(used - set(state))
    unexpected = sorted(set(state) - used)
    if missing or unexpected:
        raise ValueError(f"weight port: {len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for var, key, fn in table:
        w = fn(np.asarray(state[key]))
        if tuple(var.shape) != w.shape:
            raise ValueError(f"weight port: {key} {w.shape} does not fit {var.path} {tuple(var.shape)}")
        var.assign(w)


def load_timm_attention(layer: Attention, state: dict[str, np.ndarray]) -> None:
    """timm ``Attention`` state_dict (qkv, proj) -> our Keras Attention."""
    if not layer.built:
        layer.build((1, 1, layer.dim))
    table = [(layer.qkv.kernel, "qkv.weight", _t), (layer.proj.kernel, "proj.weight", _t),
             (layer.proj.bias, "proj.bias", _same)] + ([(layer.qkv.bias, "qkv.bias", _same)] if layer.qkv_bias else [])
    extra = sorted(set(state) - {k for _, k, _ in table})
    if extra:
        raise ValueError(f"weight port: unexpected keys {extra[:3]}")
    for var, key, fn in table:
        var.assign(fn(np.asarray(state[key])))


def count_macs_acts(model: VisionTransformer) -> tuple[int, int]:
    """MACs and activations per image from the config, counted as the torch counter counts our torch twin
    (patch conv, qkv, q@k^T, attn@v, proj, MLP, head; activations = outputs of those ops)."""
    c = model.cfg
    C, H = c["embed_dim"], c["num_heads"]
    P = (c["img_size"] // c["patch_size"]) ** 2
    N, hidden, classes = P + 1, int(C * c["mlp_ratio"]), c["num_classes"]
    macs = P * C * 3 * c["patch_size"] ** 2 + C * classes
    acts = P * C + classes
    macs += c["depth"] * (N * C * 3 * C + 2 * N * N * C + N * C * C + 2 * N * C * hidden)
    acts += c["depth"] * (3 * N * C + H * N * N + N * C + N * C + N * hidden + N * C)
    return macs, acts


register_configs(VIT_CONFIGS, VisionTransformer, load_timm_state_dict)
