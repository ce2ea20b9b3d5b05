"""Our Keras 3 models (``vitbench.models.keras``) on a chosen backend: the ViT configs (timm names) and the
attention layers ``Attention`` (kwargs dim, num_heads, qkv_bias) and ``SDPA`` (kwargs num_heads, impl)."""
from __future__ import annotations

from typing import Any

from .torch_common import unknown_model

FRAMEWORK = "keras"
LAYERS = ("Attention", "SDPA")


def _names() -> list[str]:
    from vitbench.models.configs import VIT_CONFIGS

    return sorted(VIT_CONFIGS) + list(LAYERS)


def check(name: str) -> str | None:
    if name in _names():
        return None
    return unknown_model("vitbench_keras", name, _names())


def build(name: str, kwargs: dict[str, Any], img_size: int | None) -> Any:
    from vitbench.models import keras as ours

    if name == "Attention":
        return ours.Attention(**kwargs), None
    if name == "SDPA":
        return ours.SDPA(**kwargs), None
    model = ours.create_model(name, **({"img_size": img_size} if img_size else {}), **kwargs)
    return model, model.img_size


def port(model: Any, state: dict) -> None:
    from vitbench.models import keras as ours

    if isinstance(model, ours.VisionTransformer):
        ours.load_timm_state_dict(model, state)
    elif isinstance(model, ours.Attention):
        ours.load_timm_attention(model, state)
    elif state:
        raise ValueError(f"no weight port for {type(model).__name__}")


def list_names() -> list[str]:
    return _names()
