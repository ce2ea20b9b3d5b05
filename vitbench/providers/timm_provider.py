"""timm models by registry name (random init: pretrained weights are never fetched)."""
from __future__ import annotations

from typing import Any

from .torch_common import build_with_img_size, default_img_size, load_numpy_state, unknown_model

FRAMEWORK = "torch"


def check(name: str) -> str | None:
    import timm

    if timm.is_model(name):
        return None
    return unknown_model("timm", name, timm.list_models())


def build(name: str, kwargs: dict[str, Any], img_size: int | None) -> Any:
    import timm

    def factory(**kw: Any) -> Any:
        return timm.create_model(name, pretrained=False, **kw)

    model = build_with_img_size(factory, kwargs, img_size)
    return model, img_size or default_img_size(model)


def port(model: Any, state: dict) -> None:
    load_numpy_state(model, state)


def list_names() -> list[str]:
    return ["<any timm model name: timm.list_models()>"]
