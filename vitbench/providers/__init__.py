"""Providers build models for a suite side: ``timm``, ``vitbench`` (our torch models), ``import`` (any
``package.module:Name`` with kwargs). Each provider module is imported lazily so ``--help`` stays instant."""
from __future__ import annotations

import importlib
from types import ModuleType

PROVIDERS = {
    "timm": "vitbench.providers.timm_provider",
    "vitbench": "vitbench.providers.vitbench_provider",
    "import": "vitbench.providers.import_provider",
    "vitbench_keras": "vitbench.providers.vitbench_keras_provider",
    "keras": "vitbench.providers.keras_provider",
}
PLANNED: dict[str, str] = {}


def get_provider(name: str) -> ModuleType:
    if name in PLANNED:
        raise KeyError(f"provider '{name}' is not available yet: {PLANNED[name]}")
    if name not in PROVIDERS:
        raise KeyError(f"unknown provider '{name}' (known: {', '.join(PROVIDERS)})")
    return importlib.import_module(PROVIDERS[name])


def check_side(side) -> str | None:  # type: ignore[no-untyped-def]
    """A message naming what is wrong with a suite side's model, or None."""
    try:
        provider = get_provider(side.provider)
    except KeyError as e:
        return str(e.args[0])
    return provider.check(side.model)
