"""Keras 3 Vision Transformer, the twin of ``vitbench.models.torch.vit`` (same configs, same argument and weight
names, the same ``norm`` / ``fc_norm`` split and init).

Input (B, H, W, in_chans) channels-last; logits (B, num_classes). ``port_table`` / ``load_timm_state_dict`` bring a
timm (or our torch) ViT state_dict in, strictly both ways: Dense kernels are transposed, the patch conv goes
OIHW -> HWIO, LayerNorm eps is 1e-6 as in timm (Keras' default is 1e-3), GELU is the exact erf form.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ...port import Row, assign_strict, conv, dense_rows, ln_rows, same
from ..configs import PREPROCESSING, VIT_CONFIGS, pretrained_cfg
from ..features import check_output_fmt, feature_take_indices
from ._registry import register_configs
from .layers import PACKAGE, Attention, LayerScale, Mlp, PatchEmbed

LN_EPS = 1e-6  # timm's ViT LayerNorm eps


def _ln(name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=LN_EPS, name=name)


def replace_sublayer(model: keras.Layer, attr: str, layer: keras.Layer | None, input_shape: tuple) -> None:
    """``model.<attr> = layer`` (a new head, or None) on a model that may be built: Keras locks a built layer's state
    against new sublayers, so the lock is lifted for the swap; the old layer is untracked (its weights leave
    ``model.weights``) and the new one built in the model's name scope (the same weight paths). Compiled step
    functions are dropped: they traced the old layer."""
    tracker = model._tracker  # no public Keras API swaps a sublayer of a built model
    locked = tracker.locked
    tracker.unlock()
    try:
        old = getattr(model, attr, None)
        if old is not None:
            tracker.untrack(old)
        setattr(model, attr, layer)
        if layer is not None and model.built:
            with keras.name_scope(model.name, caller=model):
                layer.build(input_shape)
    finally:
        if locked:
            tracker.lock()
    if hasattr(model, "_torch_params"):  # Keras' torch backend: the model's ParameterDict still holds the old head
        model._track_variables()
    for fn in ("train_function", "test_function", "predict_function"):
        if getattr(model, fn, None) is not None:
            setattr(model, fn, None)


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
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim, in_chans=in_chans, name="patch_embed")
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


# --- weight port: timm / our torch state_dict -> this model ------------------------------------------------------

def attention_rows(layer: Attention, prefix: str = "") -> list[Row]:
    """An Attention's rows from timm's ``{prefix}qkv``, ``q_norm``, ``k_norm``, ``proj``."""
    rows = dense_rows(layer.qkv, prefix + "qkv")
    if layer.qk_norm:
        rows += ln_rows(layer.q_norm, prefix + "q_norm") + ln_rows(layer.k_norm, prefix + "k_norm")
    return rows + dense_rows(layer.proj, prefix + "proj")


def port_table(model: VisionTransformer) -> list[Row]:
    """(our variable, timm key, transform) for every weight, in a reviewable table."""
    rows = [(model.patch_embed.proj.kernel, "patch_embed.proj.weight", conv),
            (model.patch_embed.proj.bias, "patch_embed.proj.bias", same)]
    if model.cls_token is not None:
        rows.append((model.cls_token, "cls_token", same))
    rows.append((model.pos_embed, "pos_embed", same))
    for i, b in enumerate(model.blocks):
        p = f"blocks.{i}."
        rows += ln_rows(b.norm1, p + "norm1") + attention_rows(b.attn, p + "attn.")
        rows += ln_rows(b.norm2, p + "norm2") + dense_rows(b.mlp.fc1, p + "mlp.fc1")
        rows += dense_rows(b.mlp.fc2, p + "mlp.fc2")
        for name in ("ls1", "ls2"):
            if getattr(b, name) is not None:
                rows.append((getattr(b, name).gamma, p + name + ".gamma", same))
    for name in ("norm", "fc_norm"):
        if getattr(model, name) is not None:
            rows += ln_rows(getattr(model, name), name)
    if model.head is not None:
        rows += dense_rows(model.head, "head")
    return rows


def load_timm_state_dict(model: VisionTransformer, state: dict[str, np.ndarray]) -> None:
    """Assign every weight from a timm ViT state_dict (numpy arrays), strictly both ways (``PortError``)."""
    if not model.built:
        model.build((1, model.img_size, model.img_size, model.in_chans))
    assign_strict(model, port_table(model), state)


def load_timm_attention(layer: Attention, state: dict[str, np.ndarray]) -> None:
    """timm ``Attention`` state_dict (qkv, q_norm/k_norm, proj) -> our Keras Attention, strictly."""
    if not layer.built:
        layer.build((1, 1, layer.dim))
    assign_strict(layer, attention_rows(layer), state)


def count_macs_acts(model: VisionTransformer) -> tuple[int, int]:
    """MACs and activations per image from the config, counted as the torch counter counts our torch twin
    (patch conv, qkv, q@k^T, attn@v, proj, MLP, head; activations = outputs of those ops; norms, LayerScale and
    pooling are not counted)."""
    c = model.cfg
    C, H = c["embed_dim"], c["num_heads"]
    P = (c["img_size"] // c["patch_size"]) ** 2
    N, hidden = P + model.num_prefix_tokens, int(C * c["mlp_ratio"])
    classes = max(c["num_classes"], 0)
    macs = P * C * c["in_chans"] * c["patch_size"] ** 2 + C * classes
    acts = P * C + classes
    macs += c["depth"] * (N * C * 3 * C + 2 * N * N * C + N * C * C + 2 * N * C * hidden)
    acts += c["depth"] * (3 * N * C + H * N * N + N * C + N * C + N * hidden + N * C)
    return macs, acts


register_configs(VIT_CONFIGS, VisionTransformer, load_timm_state_dict)
