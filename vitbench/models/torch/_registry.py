"""Name -> constructor registry for our torch models (names match their timm twins)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def register_configs(configs: dict[str, dict], cls: Callable[..., nn.Module]) -> None:
    """Register one entry point per config: ``create_model(name, **overrides)`` builds ``cls(**config, **overrides)``.
    Configs are data; the entry points are generated, as timm's one-line ``@register_model`` functions are."""
    for name, cfg in configs.items():
        def make(_cfg: dict = cfg, **kwargs) -> nn.Module:
            return cls(**{**_cfg, **kwargs})

        make.__name__ = name
        make.__doc__ = f"{cls.__name__}: {cfg}"
        register_model(make)


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise KeyError(f"unknown vitbench model '{name}'")
    return _MODELS[name](**kwargs)
