"""Name -> constructor registry for our torch models (names match their timm twins)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from ..configs import pretrained_cfg

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def register_configs(configs: dict[str, dict], cls: Callable[..., nn.Module]) -> None:
    """Register one entry point per config: ``create_model(name, **overrides)`` builds ``cls(**config, **overrides)``
    with its ``pretrained_cfg`` (input size, mean/std, crop). Configs are data; the entry points are generated, as
    timm's one-line ``@register_model`` functions are."""
    for name, cfg in configs.items():
        def make(_cfg: dict = cfg, _name: str = name, **kwargs) -> nn.Module:
            model = cls(**{**_cfg, **kwargs})
            model.pretrained_cfg = pretrained_cfg(_name, model.img_size, model.num_classes,
                                                  kwargs.get("in_chans", 3))
            return model

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
