"""Any model by import path: ``package.module:Name`` where Name is an nn.Module class or a factory function.

If that module (the one named in the suite, not the one the returned model's class lives in) defines
``checkpoint_filter_fn(state_dict, model)``, it is used to port reference weights; else the model class's own
module's (a timm or vitbench family's).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import weakref
from pathlib import Path
from typing import Any

from .torch_common import PortError, TorchProvider, build_with_img_size, default_img_size, load_numpy_state


def add_import_paths(*dirs: str | Path) -> None:
    """Make ``dirs`` importable for import sides (first on sys.path, as ``python -m`` puts the current directory);
    spawned workers inherit sys.path, so the models a user keeps beside the suite are found there too."""
    for d in reversed([os.path.abspath(x) for x in dirs]):
        if d not in sys.path:
            sys.path.insert(0, d)


def split_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"import target '{target}' must look like 'package.module:Name'")
    return module, attr


def check(target: str) -> str | None:
    """The module imports (from the current directory or the suite's too, as ``python -m`` would) and names a
    callable; else what is wrong, in one line."""
    try:
        module, attr = split_target(target)
        if importlib.util.find_spec(module) is None:
            return (f"cannot import module '{module}' (from '{target}'; looked in the current directory, the suite's "
                    "directory and sys.path)")
        mod = importlib.import_module(module)
    except ValueError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001  (the user's module failed to import: say how)
        return f"importing '{target.partition(':')[0]}' failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if not hasattr(mod, attr):
        return f"module '{module}' has no attribute '{attr}'"
    if not callable(getattr(mod, attr)):
        return f"'{target}' is not callable (a model class or a factory function is needed)"
    return None


# the module named in the suite of each model built here: where its port function is looked up
BUILT_FROM: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def import_target(target: str) -> tuple[Any, Any]:
    """(module, the callable) that ``package.module:Name`` names."""
    module_name, attr = split_target(target)
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise AttributeError(f"module '{module_name}' has no attribute '{attr}'")
    return module, getattr(module, attr)


def port_function(model: Any, name: str) -> Any:
    """``name`` (checkpoint_filter_fn, port_weights) from the module the suite named for ``model``, else from its
    class's module; None where neither defines it."""
    for module in (BUILT_FROM.get(model), importlib.import_module(type(model).__module__)):
        fn = getattr(module, name, None) if module is not None else None
        if fn is not None:
            return fn
    return None


def build(target: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
    module, factory = import_target(target)
    model = build_with_img_size(factory, kwargs, img_size)
    BUILT_FROM[model] = module
    return model, img_size or default_img_size(model)


class ImportProvider(TorchProvider):
    """A torch model by import path; its module's ``checkpoint_filter_fn`` ports weights when it has one."""

    name = "import"
    check = staticmethod(check)
    build = staticmethod(build)

    def port(self, model: Any, state: dict[str, Any]) -> str:
        """The module's checkpoint_filter_fn ('hook'); else the reference's names as they are ('strict'); else the
        alignment of the two models' tensors when it is complete ('auto': ``vitbench.align``); else PortError
        with the alignment's summary."""
        hook = port_function(model, "checkpoint_filter_fn")
        if hook is not None:
            load_numpy_state(model, state, hook)
            return "hook"
        try:
            load_numpy_state(model, state)
            return "strict"
        except PortError as strict:
            from ..align import auto_port, torch_tensors

            load_numpy_state(model, auto_port(strict, state, torch_tensors(model), "torch"))
            return "auto"

    def list_names(self) -> list[str]:
        return ["<package.module:Name>"]


PROVIDER = ImportProvider()
