"""Our own PyTorch models (``vitbench.models.torch``), weight-compatible with their timm twins."""
from __future__ import annotations

from typing import Any

from .torch_common import build_with_img_size, default_img_size, load_numpy_state, unknown_model

FRAMEWORK = "torch"


def check(name: str) -> str | None:
    from vitbench.models import torch as ours

    if ours.is_model(name):
        return None
    return unknown_model("vitbench", name, ours.list_models())


def build(name: str, kwargs: dict[str, Any], img_size: int | None) -> Any:
    from vitbench.models import torch as ours

    model = build_with_img_size(lambda **kw: ours.create_model(name, **kw), kwargs, img_size)
    return model, img_size or default_img_size(model)


def port(model: Any, state: dict) -> None:
    import importlib

    family = importlib.import_module(type(model).__module__)
    load_numpy_state(model, state, getattr(family, "checkpoint_filter_fn", None))


def list_names() -> list[str]:
    from vitbench.models import torch as ours

    return ours.list_models()
