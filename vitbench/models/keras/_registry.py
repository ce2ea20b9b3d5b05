"""Name -> (class, config, weight port) registry for our Keras models (names match their timm twins).

Each family module registers its configs with the function that ports a timm state_dict into that class, so
``create_model`` and ``load_timm_state_dict`` work for every family by name or by instance."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

_MODELS: dict[str, tuple[type, dict]] = {}
_PORTS: dict[type, Callable[[Any, dict], None]] = {}


def register_configs(configs: dict[str, dict], cls: type, port: Callable[[Any, dict], None]) -> None:
    for name, cfg in configs.items():
        _MODELS[name] = (cls, cfg)
    _PORTS[cls] = port


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> tuple[type, dict]:
    """The class and config registered for ``name`` (nothing built)."""
    if name not in _MODELS:
        raise KeyError(f"unknown vitbench Keras model '{name}'")
    return _MODELS[name]


def create_model(name: str, **kwargs: Any) -> Any:
    """Build ``name`` with its config and ``kwargs`` on top, weights created (``model.img_size`` square input)."""
    cls, cfg = model_entry(name)
    model = cls(**{**cfg, **kwargs}, name=name)
    model.build((None, model.img_size, model.img_size, getattr(model, "in_chans", 3)))
    return model


def load_timm_state_dict(model: Any, state: dict) -> None:
    """Port a timm (or our torch twin's) state_dict, as numpy arrays, into any registered model."""
    for cls in type(model).__mro__:
        if cls in _PORTS:
            _PORTS[cls](model, state)
            return
    raise ValueError(f"no weight port for {type(model).__name__}")
