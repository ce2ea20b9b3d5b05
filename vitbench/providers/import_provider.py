"""Any model by import path: ``package.module:Name`` where Name is an nn.Module class or a factory function.

If the module defines ``checkpoint_filter_fn(state_dict, model)``, it is used to port reference weights.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ._torch_common import build_with_img_size, default_img_size, load_numpy_state

FRAMEWORK = "torch"


def _split(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"import target '{target}' must look like 'package.module:Name'")
    return module, attr


def check(target: str) -> str | None:
    try:
        module, attr = _split(target)
        if importlib.util.find_spec(module) is None:
            return f"cannot import module '{module}' (from '{target}')"
    except (ValueError, ImportError) as e:
        return str(e)
    return None


def build(target: str, kwargs: dict[str, Any], img_size: int | None) -> Any:
    module_name, attr = _split(target)
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise AttributeError(f"module '{module_name}' has no attribute '{attr}'")
    model = build_with_img_size(getattr(module, attr), kwargs, img_size)
    return model, img_size or default_img_size(model)


def port(model: Any, state: dict) -> None:
    family = importlib.import_module(type(model).__module__)
    load_numpy_state(model, state, getattr(family, "checkpoint_filter_fn", None))


def list_names() -> list[str]:
    return ["<package.module:Name>"]
