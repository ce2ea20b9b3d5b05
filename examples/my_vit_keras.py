"""A ViT-S/16 in Keras 3, written the way someone might write their own: layers named its own way, separate q/k/v
projections (timm fuses them in one ``qkv``), any backend. The same network as timm's ``vit_small_patch16_224``.

``port_weights(model, state_dict)`` is how vitbench loads a reference's weights into it: ``state_dict`` holds the
reference's tensors as numpy arrays under timm's names, in torch's layout (a keras-hub reference hands out timm's
names too). It is a port table (variable, timm key, transform) filled by ``vitbench.port.assign_strict``, which
checks that every timm tensor is used once, every variable filled, every shape right.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from vitbench.port import assign_strict, conv, dense_rows, linear, ln_rows, qkv_part, same


class Layer(layers.Layer):
    def __init__(self, dim: int, heads: int, **kw) -> None:
        super().__init__(**kw)
        self.dim, self.heads = dim, heads
        self.ln_a = layers.LayerNormalization(epsilon=1e-6, name="ln_a")
        self.q, self.k, self.v = (layers.Dense(dim, name=n) for n in ("q", "k", "v"))
        self.out = layers.Dense(dim, name="out")
        self.ln_b = layers.LayerNormalization(epsilon=1e-6, name="ln_b")
        self.up, self.down = layers.Dense(4 * dim, name="up"), layers.Dense(dim, name="down")

    def call(self, x):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        d = self.dim // self.heads
        h = self.ln_a(x)
        q, k, v = (ops.transpose(ops.reshape(f(h), (b, n, self.heads, d)), (0, 2, 1, 3))
                   for f in (self.q, self.k, self.v))
        a = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / np.sqrt(d), axis=-1)
        x = x + self.out(ops.reshape(ops.transpose(ops.matmul(a, v), (0, 2, 1, 3)), (b, n, self.dim)))
        return x + self.down(ops.gelu(self.up(self.ln_b(x)), approximate=False))


class MyViT(keras.Model):
    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6,
                 classes: int = 1000, **kw) -> None:
        super().__init__(**kw)
        self.dim = dim
        self.img_size = img_size  # vitbench reads the input size from here
        self.patchify = layers.Conv2D(dim, patch, strides=patch, name="patchify")
        self.layers_ = [Layer(dim, heads, name=f"layer_{i}") for i in range(depth)]
        self.final_ln = layers.LayerNormalization(epsilon=1e-6, name="final_ln")
        self.classifier = layers.Dense(classes, name="classifier")
        self.cls = self.add_weight(shape=(1, 1, dim), initializer="zeros", name="cls")
        self.pos = self.add_weight(shape=(1, (img_size // patch) ** 2 + 1, dim), initializer="zeros", name="pos")
        self(np.zeros((1, img_size, img_size, 3), "float32"))  # build every layer

    def call(self, x):
        t = self.patchify(x)
        b = ops.shape(t)[0]
        t = ops.reshape(t, (b, -1, self.dim))
        t = ops.concatenate([ops.broadcast_to(self.cls, (b, 1, self.dim)), t], axis=1) + self.pos
        for layer in self.layers_:
            t = layer(t)
        return self.classifier(self.final_ln(t)[:, 0])


def port_table(model: MyViT) -> list:
    """(our variable, timm key, transform) for every weight: Dense kernels transposed (``linear``), the patch conv
    OIHW -> HWIO (``conv``), timm's fused qkv split into q, k, v (``qkv_part``)."""
    rows = [(model.patchify.kernel, "patch_embed.proj.weight", conv),
            (model.patchify.bias, "patch_embed.proj.bias", same),
            (model.cls, "cls_token", same), (model.pos, "pos_embed", same)]
    for i, layer in enumerate(model.layers_):
        p = f"blocks.{i}."
        rows += ln_rows(layer.ln_a, p + "norm1") + ln_rows(layer.ln_b, p + "norm2")
        for part, dense in enumerate((layer.q, layer.k, layer.v)):
            rows += [(dense.kernel, p + "attn.qkv.weight", qkv_part(part, linear)),
                     (dense.bias, p + "attn.qkv.bias", qkv_part(part, same))]
        rows += dense_rows(layer.out, p + "attn.proj") + dense_rows(layer.up, p + "mlp.fc1")
        rows += dense_rows(layer.down, p + "mlp.fc2")
    return rows + ln_rows(model.final_ln, "norm") + dense_rows(model.classifier, "head")


def port_weights(model: MyViT, state_dict: dict) -> None:
    """timm's ViT weights into ``model``; raises (the row's port_failed reason) naming what does not fit."""
    assign_strict(model, port_table(model), state_dict)
