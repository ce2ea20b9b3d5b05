"""Providers build the model of a suite side. Every provider implements ``Provider``; the registry maps a suite's
``provider:`` name to its module, imported lazily so ``--help`` and suite validation stay fast (a provider imports
its framework only inside ``build``/``port``/``count_macs``).

Plug-ins: an installed package adds providers through the entry-point group ``vitbench.providers`` (name -> an
object implementing ``Provider``, or a class making one), e.g. in its pyproject.toml::

    [project.entry-points."vitbench.providers"]
    mylab = "mylab_zoo.vitbench:PROVIDER"

A plug-in that fails to import fails its sides (and ``validate``) in one line naming its package; the other
providers still work. A plug-in cannot take a built-in's name.
"""
from __future__ import annotations

import functools
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
    "tf_models": "vitbench.providers.tf_models_provider",
}


class Provider(Protocol):
    """What the harness asks of a provider. ``framework`` ('torch' | 'keras') picks the worker that runs its sides.

    - ``check(model)``: None, or one line saying what is wrong with the name (validation, in the parent);
    - ``build(model, kwargs, img_size)``: ``(model, img_size)``, the size the model was built for (None: tokens);
    - ``port(model, state)``: load a reference's state_dict (numpy arrays, timm's keys); raise naming the keys;
      may return how it ported (``strict``: names line up, the default; ``hook``: the user's port function;
      ``auto``: an alignment of the two models, ``vitbench.align``);
    - ``count_macs(model, x)``: ``(macs, activations, method)`` per image for input ``x``, or None if not counted;
    - ``preprocessing(model)``: the model's mean/std/interpolation/crop (its ``pretrained_cfg``), or None;
    - ``list_names()``: what ``vitbench list`` shows;
    - optional ``check_kwargs(model, kwargs)``: None, or one line saying what is wrong with a side's kwargs.
    """

    name: str
    framework: str

    def check(self, model: str) -> str | None: ...

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]: ...

    def port(self, model: Any, state: dict[str, np.ndarray]) -> str | None: ...

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None: ...

    def preprocessing(self, model: Any) -> dict[str, Any] | None: ...

    def list_names(self) -> list[str]: ...


ENTRY_POINT_GROUP = "vitbench.providers"


@functools.lru_cache(maxsize=1)
def plugins() -> dict[str, Any]:
    """Installed provider plug-ins: name -> entry point (not loaded). Built-in names cannot be taken."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in PROVIDERS}


def plugin_package(name: str) -> str:
    """'package version' of the distribution that installed plug-in ``name``."""
    dist = getattr(plugins()[name], "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown package"


def known() -> list[str]:
    return [*PROVIDERS, *plugins()]


def unknown_provider(name: str) -> str:
    more = f"; plug-ins: {', '.join(plugins())}" if plugins() else " (no plug-ins installed)"
    return f"unknown provider '{name}' (built-in: {', '.join(PROVIDERS)}{more})"


class PluginError(KeyError):
    """A provider plug-in that could not be loaded; its one-line message names the package."""

    def __str__(self) -> str:
        return str(self.args[0])


@functools.cache
def _load_plugin(name: str) -> Any:
    try:
        obj = plugins()[name].load()
        provider = obj() if isinstance(obj, type) else obj
    except Exception as e:  # noqa: BLE001  (a broken plug-in: one line, the others work)
        raise PluginError(f"provider plug-in '{name}' ({plugin_package(name)}) failed to load: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    missing = [a for a in ("framework", "check", "build", "port") if not hasattr(provider, a)]
    if missing:
        raise PluginError(f"provider plug-in '{name}' ({plugin_package(name)}) does not implement the Provider "
                          f"protocol: no {', '.join(missing)}")
    return provider


def reset_plugins() -> None:
    """Forget the plug-ins found and loaded so far (after installing one in a running process)."""
    plugins.cache_clear()
    _load_plugin.cache_clear()


def get_provider(name: str) -> Provider:
    if name in PROVIDERS:
        return importlib.import_module(PROVIDERS[name]).PROVIDER  # type: ignore[no-any-return]
    if name in plugins():
        return _load_plugin(name)  # type: ignore[no-any-return]
    raise KeyError(unknown_provider(name))


def framework_of(provider: str) -> str:
    """'torch', 'keras' (Keras 3) or 'tf_keras' (Keras 2, TF Model Garden): the worker kind that runs this
    provider's models."""
    return get_provider(provider).framework


def check_side(side) -> str | None:  # type: ignore[no-untyped-def]
    """A message naming what is wrong with a suite side's model, or None."""
    try:
        provider = get_provider(side.provider)
    except KeyError as e:
        return str(e.args[0])
    check_kwargs = getattr(provider, "check_kwargs", None)
    backends = getattr(provider, "backends", None)  # a provider bound to some Keras backends (tf-keras: TensorFlow)
    if backends and side.backend and side.backend not in backends:
        return f"provider {side.provider} runs on backend {' or '.join(backends)} only, not '{side.backend}'"
    return provider.check(side.model) or (check_kwargs(side.model, side.kwargs) if check_kwargs else None)
