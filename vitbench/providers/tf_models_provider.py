"""TF Model Garden (``tf-models-official``'s code, "the official TensorFlow implementation") as a side: its vision
ViT backbone (``official.vision.modeling.backbones.vit.VisionTransformer``) under timm's ViT names, with Model
Garden's own classification head (``ClassificationModel``: the backbone's class token, dropout, Dense) when the
side has classes, and its attention layer (``official.vision.modeling.layers.nn_layers.MultiHeadAttention``) as
``MultiHeadAttention`` (kwargs ``num_heads``, ``key_dim``), called as self-attention.

Model Garden is written in tf-keras (Keras 2), so its sides run in a worker kind of their own (``tf_keras``): never
in a process with Keras 3 models. Built from config, nothing downloaded. kwargs in timm's words (``embed_dim``,
``depth``, ``num_heads``, ``patch_size``, ``mlp_ratio``, ``num_classes``, ``img_size``) override the config.

The network is timm's ViT but for one thing, timed as it is: Model Garden's encoder blocks use the tanh
approximation of GELU (``official.modeling.activations.gelu``), timm the exact erf form. ``differences`` names it
and ``without_differences`` takes it out (exact GELU in every block, the same ported weights): the row's max|diff|
is the network as built, its numerics verdict the comparison without the difference, and ``numerics_error`` says
both figures (measured on ViT-S, perturbed weights: 3.7e-4 as built, 1.9e-6 with exact GELU). Everything else ports
exactly (``port_table``): timm's fused ``qkv`` split into the query/key/value EinsumDense kernels (C, heads, dim),
the output projection as (heads, dim, C), LayerNorm eps 1e-6 as timm's, the class token and the position table
(class token's row first, as timm's).

Install (not in the ``references`` extra: tf-models-official pins an older TensorFlow; its code runs on this one):
``pip install 'vitbench[tf-models]' && pip install --no-deps tf-models-no-deps==2.19.0``.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .keras_common import KERAS_MACS_METHOD, KerasProvider
from .torch_common import needs_reference_package, unknown_model
from .vit_keras_provider import TIMM_KWARGS, vit_config

INSTALL = "pip install 'vitbench[tf-models]' && pip install --no-deps tf-models-no-deps==2.19.0"
VIT_NAMES = ("test_vit", "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
             "vit_base_patch32_224", "vit_base_patch16_384", "vit_large_patch16_224")
NAMES = (*VIT_NAMES, "MultiHeadAttention")
MHA_KWARGS = {"num_heads", "key_dim"}
DIFFERENCES = "TF Model Garden's ViT uses the tanh approximation of GELU (timm: exact erf), timed as it is"

# Model Garden's code and what its vision modules import: (module, pip name)
PACKAGES = (("official", "tf-models-no-deps"), ("tf_keras", "tf-keras"), ("gin", "gin-config"),
            ("immutabledict", "immutabledict"), ("pycocotools", "pycocotools"),
            ("tensorflow_datasets", "tensorflow-datasets"))


class TfModelsProvider(KerasProvider):
    """A Keras provider (preprocessing from ``pretrained_cfg``) whose models are tf-keras: framework ``tf_keras``,
    and MACs counted from the config without our Keras 3 models."""

    name = "tf_models"
    framework = "tf_keras"  # Keras 2: a worker kind of its own
    backends = ("tensorflow",)

    def check(self, model: str) -> str | None:
        return None if model in NAMES else unknown_model("tf_models", model, list(NAMES))

    def check_kwargs(self, model: str, kwargs: dict[str, Any]) -> str | None:
        allowed = MHA_KWARGS if model == "MultiHeadAttention" else TIMM_KWARGS
        extra = sorted(set(kwargs) - allowed)
        return f"tf_models {model}: unsupported kwargs {extra} (supported: {sorted(allowed)})" if extra else None

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        needs_reference_package("tf_models", model, *PACKAGES, install=INSTALL)
        os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras inside Model Garden is tf-keras too
        import tf_keras

        if model == "MultiHeadAttention":
            from official.vision.modeling.layers import nn_layers

            from .keras_provider import KerasMHA  # its self-attention wrapper, as a tf-keras Layer

            return KerasMHA(nn_layers.MultiHeadAttention(**kwargs), tf_keras), None
        from official.vision.modeling.backbones.vit import VisionTransformer
        from official.vision.modeling.classification_model import ClassificationModel

        from vitbench.models.configs import PREPROCESSING

        cfg = vit_config("tf_models", model, kwargs, img_size)
        spec = tf_keras.layers.InputSpec(shape=[None, cfg["img_size"], cfg["img_size"], cfg["in_chans"]])
        backbone = VisionTransformer(
            mlp_dim=int(cfg["embed_dim"] * cfg["mlp_ratio"]), num_heads=cfg["num_heads"], num_layers=cfg["depth"],
            attention_dropout_rate=0.0, dropout_rate=0.0, input_specs=spec, patch_size=cfg["patch_size"],
            hidden_size=cfg["embed_dim"], representation_size=0, pooler="token")
        classes = cfg["num_classes"]
        m = ClassificationModel(backbone, num_classes=max(classes, 1), input_specs=spec, dropout_rate=0.0,
                                skip_logits_layer=classes <= 0, name=model)
        m.vitbench_cfg = dict(cfg)
        m.pretrained_cfg = dict(PREPROCESSING.get(model, {}))
        return m, cfg["img_size"]

    def port(self, model: Any, state: dict[str, np.ndarray]) -> None:
        from vitbench.port import assign_strict

        assign_strict(model, port_table(model, state), state)

    def export_state(self, model: Any) -> dict[str, np.ndarray]:
        """The weights under timm's names (the port table read backwards)."""
        from vitbench.port import export_state

        return export_state(port_table(model, {}))

    def differences(self, model: Any) -> str | None:
        return DIFFERENCES if hasattr(model, "vitbench_cfg") else None

    def without_differences(self, model: Any) -> tuple[Any, str]:
        """A context in which the ViT computes timm's network (exact erf GELU in every block, the same weights),
        and what it changes: the numerics verdict is taken there, the as-built figure stays in the row."""
        return _exact_gelu(model), "exact erf GELU in its place"

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None:
        """The ViT's analytic count from its config (the same count as our ViTs'); the attention layer: None."""
        from vitbench.measure.vit_macs import vit_config_macs_acts

        cfg = getattr(model, "vitbench_cfg", None)
        return None if cfg is None else (*vit_config_macs_acts(dict(cfg)), KERAS_MACS_METHOD)

    def list_names(self) -> list[str]:
        return list(NAMES)


def port_table(model: Any, state: dict[str, np.ndarray]) -> list[tuple[Any, str, Any]]:
    """(Model Garden variable, timm key, transform). Attention: timm's fused qkv (3C, C) split by row blocks into
    query/key/value EinsumDense kernels (C, heads, dim) and biases (heads, dim); proj into the output kernel
    (heads, dim, C). MLP EinsumDense kernels are (in, out): transposed. The patch conv goes OIHW -> HWIO."""
    from vitbench.port import conv, linear, ln_rows, same

    if getattr(model, "mha", None) is not None:
        return _attention_rows(model.mha, "")
    backbone = next(layer for layer in model.layers if type(layer).__name__ == "VisionTransformer")
    rows: list[tuple[Any, str, Any]] = []
    patch = next(layer for layer in backbone.layers if type(layer).__name__ == "Conv2D")
    rows += [(patch.kernel, "patch_embed.proj.weight", conv), (patch.bias, "patch_embed.proj.bias", same),
             (backbone.get_layer("cls").cls, "cls_token", same)]
    encoder = backbone.get_layer("encoder")
    rows.append((encoder._pos_embed.pos_embedding, "pos_embed", same))
    for i, blk in enumerate(encoder._encoder_layers):
        p = f"blocks.{i}."
        rows += ln_rows(blk._attention_layer_norm, p + "norm1") + _attention_rows(blk._attention_layer, p + "attn.")
        rows += ln_rows(blk._output_layer_norm, p + "norm2")
        rows += [(blk._intermediate_dense.kernel, p + "mlp.fc1.weight", linear),
                 (blk._intermediate_dense.bias, p + "mlp.fc1.bias", same),
                 (blk._output_dense.kernel, p + "mlp.fc2.weight", linear),
                 (blk._output_dense.bias, p + "mlp.fc2.bias", same)]
    rows += ln_rows(encoder._norm, "norm")
    heads = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    if heads:
        rows += [(heads[0].kernel, "head.weight", linear), (heads[0].bias, "head.bias", same)]
    return rows


def _attention_rows(mha: Any, p: str) -> list[tuple[Any, str, Any]]:
    from vitbench.port import Reshaped, linear, qkv_part, same

    h, d = mha._num_heads, mha._key_dim
    c = int(mha._query_dense.kernel.shape[0])
    rows: list[tuple[Any, str, Any]] = []
    for part, dense in enumerate((mha._query_dense, mha._key_dense, mha._value_dense)):
        rows += [(dense.kernel, p + "qkv.weight", qkv_part(part, Reshaped((c, h, d), linear, (c, h * d)))),
                 (dense.bias, p + "qkv.bias", qkv_part(part, Reshaped((h, d), same, (h * d,))))]
    out = mha._output_dense
    rows += [(out.kernel, p + "proj.weight", Reshaped((h, d, c), linear, (h * d, c))),
             (out.bias, p + "proj.bias", same)]
    return rows


@contextlib.contextmanager
def _exact_gelu(model: Any) -> Iterator[None]:
    import tf_keras

    backbone = next(layer for layer in model.layers if type(layer).__name__ == "VisionTransformer")
    acts = [blk._intermediate_activation_layer for blk in backbone.get_layer("encoder")._encoder_layers]
    before = [a.activation for a in acts]
    try:
        for a in acts:
            a.activation = functools.partial(tf_keras.activations.gelu, approximate=False)
        yield
    finally:
        for a, fn in zip(acts, before, strict=True):
            a.activation = fn


PROVIDER = TfModelsProvider()
