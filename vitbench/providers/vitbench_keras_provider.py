"""Our Keras 3 models (``vitbench.models.keras``) on a chosen backend: every family of the Keras package by its
timm name, and the attention layers ``Attention`` (kwargs dim, num_heads, qkv_bias) and ``SDPA`` (kwargs
num_heads, impl). Names are checked without importing Keras (from the shared config tables)."""
from __future__ import annotations

from typing import Any

from .keras_common import KerasProvider
from .torch_common import unknown_model

LAYERS = ("Attention", "SDPA")


def _names() -> list[str]:
    from vitbench.models.configs import KERAS_MODELS

    return sorted(KERAS_MODELS) + list(LAYERS)


class VitbenchKerasProvider(KerasProvider):
    name = "vitbench_keras"

    def check(self, model: str) -> str | None:
        return None if model in _names() else unknown_model("vitbench_keras", model, _names())

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        from vitbench.models import keras as ours

        if model in LAYERS:
            return getattr(ours, model)(**kwargs), None
        m = ours.create_model(model, **({"img_size": img_size} if img_size else {}), **kwargs)
        return m, m.img_size

    def port(self, model: Any, state: dict) -> None:
        from vitbench.models import keras as ours
        from vitbench.port.keras import load_timm_attention

        if isinstance(model, ours.Attention):
            load_timm_attention(model, state)
        elif isinstance(model, ours.SDPA):
            if state:
                raise ValueError("SDPA has no weights to port")
        else:
            ours.load_timm_state_dict(model, state)

    def export_state(self, model: Any) -> dict:
        """The model's weights under timm's names (its family's port table read backwards)."""
        from vitbench.port import export_state
        from vitbench.port.keras import port_table

        return export_state(port_table(model))

    def list_names(self) -> list[str]:
        return _names()


PROVIDER = VitbenchKerasProvider()
