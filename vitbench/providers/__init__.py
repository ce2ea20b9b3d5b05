"""Providers build the model of a suite side. Every provider implements ``Provider``; the registry maps a suite's
``provider:`` name to its module, imported lazily so ``--help`` and suite validation stay fast (a provider imports
its framework only inside ``build``/``port``/``count_macs``)."""
from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

PROVIDERS = {
    "timm": "vitbench.providers.timm_provider",
    "vitbench": "vitbench.providers.vitbench_provider",
    "import": "vitbench.providers.import_provider",
    "vitbench_keras": "vitbench.providers.vitbench_keras_provider",
    "keras": "vitbench.providers.keras_provider",
    "keras_import": "vitbench.providers.keras_import_provider",
    "keras_hub": "vitbench.providers.keras_hub_provider",
    "vit_keras": "vitbench.providers.vit_keras_provider",
    "vit_pytorch": "vitbench.providers.vit_pytorch_provider",
}


class Provider(Protocol):
    """What the harness asks of a provider. ``framework`` ('torch' | 'keras') picks the worker that runs its sides.

    - ``check(model)``: None, or one line saying what is wrong with the name (validation, in the parent);
    - ``build(model, kwargs, img_size)``: ``(model, img_size)``, the size the model was built for (None: tokens);
    - ``port(model, state)``: load a reference's state_dict (numpy arrays, timm's keys); raise naming the keys;
    - ``count_macs(model, x)``: ``(macs, activations, method)`` per image for input ``x``, or None if not counted;
    - ``preprocessing(model)``: the model's mean/std/interpolation/crop (its ``pretrained_cfg``), or None;
    - ``list_names()``: what ``vitbench models`` shows;
    - optional ``check_kwargs(model, kwargs)``: None, or one line saying what is wrong with a side's kwargs.
    """

    name: str
    framework: str

    def check(self, model: str) -> str | None: ...

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]: ...

    def port(self, model: Any, state: dict[str, np.ndarray]) -> None: ...

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None: ...

    def preprocessing(self, model: Any) -> dict[str, Any] | None: ...

    def list_names(self) -> list[str]: ...


def get_provider(name: str) -> Provider:
    if name not in PROVIDERS:
        raise KeyError(f"unknown provider '{name}' (known: {', '.join(PROVIDERS)})")
    return importlib.import_module(PROVIDERS[name]).PROVIDER  # type: ignore[no-any-return]


def framework_of(provider: str) -> str:
    """'torch' or 'keras': the worker kind that runs this provider's models."""
    return get_provider(provider).framework


def check_side(side) -> str | None:  # type: ignore[no-untyped-def]
    """A message naming what is wrong with a suite side's model, or None."""
    try:
        provider = get_provider(side.provider)
    except KeyError as e:
        return str(e.args[0])
    check_kwargs = getattr(provider, "check_kwargs", None)
    return provider.check(side.model) or (check_kwargs(side.model, side.kwargs) if check_kwargs else None)
