"""Keras' own implementations as references: ``MultiHeadAttention`` (keras.layers, kwargs num_heads, key_dim;
timm's fused qkv weights are split into its query/key/value kernels), and ``dot_product_attention``
(keras.ops, wrapped as a layer, kwargs num_heads)."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .keras_common import KerasProvider

NAMES = ("MultiHeadAttention", "dot_product_attention")


class KerasLibraryProvider(KerasProvider):
    name = "keras"

    def check(self, model: str) -> str | None:
        return None if model in NAMES else f"unknown keras model '{model}' (known: {', '.join(NAMES)})"

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        import keras

        from vitbench.models import keras as ours

        if model == "MultiHeadAttention":
            return KerasMHA(keras.layers.MultiHeadAttention(**kwargs)), None
        return ours.SDPA(impl="keras", **kwargs), None

    def port(self, model: Any, state: dict) -> None:
        if getattr(model, "mha", None) is not None:
            port_mha(model.mha, state)
        elif state:
            raise ValueError(f"no weight port for {type(model).__name__}")

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None:
        return None  # Keras' own layers: not counted

    def list_names(self) -> list[str]:
        return list(NAMES)


def port_mha(mha: Any, state: dict[str, np.ndarray]) -> None:
    """timm Attention (qkv (3C, C), proj (C, C)) -> keras.layers.MultiHeadAttention's EinsumDense kernels."""
    w, b = state["qkv.weight"], state.get("qkv.bias")
    c = w.shape[1]
    h, d = mha.num_heads, mha.key_dim
    if not mha.built:
        mha.build((1, 1, c), (1, 1, c), (1, 1, c))
    for i, dense in enumerate((mha.query_dense, mha.key_dense, mha.value_dense)):
        dense.kernel.assign(w[i * c:(i + 1) * c].T.reshape(c, h, d))
        if b is not None:
            dense.bias.assign(b[i * c:(i + 1) * c].reshape(h, d))
    mha.output_dense.kernel.assign(state["proj.weight"].T.reshape(h, d, c))
    mha.output_dense.bias.assign(state["proj.bias"])


@functools.cache
def _mha_wrapper(module: Any = None):  # type: ignore[no-untyped-def]  (one class per Keras, made on first use)
    """``module``: the Keras whose Layer it subclasses (Keras 3 by default; tf-keras for TF Model Garden's MHA)."""
    if module is None:
        import keras as module

    class _KerasMHA(module.layers.Layer):
        """Self-attention call of a MultiHeadAttention layer: mha(x, x)."""

        def __init__(self, mha: Any, **kw: Any) -> None:
            super().__init__(**kw)
            self.mha = mha

        def call(self, x: Any) -> Any:
            return self.mha(x, x)

    return _KerasMHA


def KerasMHA(mha: Any, module: Any = None) -> Any:  # noqa: N802  (a factory that reads like the class it makes)
    return _mha_wrapper(module)(mha)


PROVIDER = KerasLibraryProvider()
