"""Name -> (class, config) registry for our Keras models (names match their timm twins): each family module
registers its configs, so ``create_model`` works for every family by name. ``load_timm_state_dict`` ports a timm
state_dict into any of them through their port tables (``vitbench.port.keras``)."""
from __future__ import annotations

import fnmatch
from typing import Any

_MODELS: dict[str, tuple[type, dict]] = {}


def register_configs(configs: dict[str, dict], cls: type) -> None:
    for name, cfg in configs.items():
        _MODELS[name] = (cls, cfg)


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
    """Port a timm (or our torch twin's) state_dict, as numpy arrays, into any registered model, strictly."""
    from ...port.keras import load_timm_state_dict as load  # the port tables import the families

    load(model, state)
