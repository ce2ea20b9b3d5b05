"""A Keras 3 model of your own by import path: ``package.module:Name``, a class or factory returning a Keras
``Layer`` or ``Model`` (any backend the side names). ``img_size`` is passed when the callable takes it.

Weights: if the module defines ``port_weights(model, state_dict)`` it is called with the reference's tensors as
numpy arrays under the reference's own names (torch layout for a torch reference); whatever it raises is the row's
``port_failed`` reason. Without one, the reference's names must be the model's variable paths (``dense/kernel``),
shapes included; otherwise the row is ``port_failed`` naming what is missing.

``validate`` finds the module and the name without importing it (so without importing Keras or TensorFlow into
the command's process): the module's source must define or import ``Name`` at its top level.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from typing import Any

import numpy as np

from ..port import PortError
from .import_provider import BUILT_FROM, import_target, port_function, split_target
from .keras_common import KerasProvider


def check(target: str) -> str | None:
    """The module is found (current directory, the suite's, sys.path) and binds ``Name`` at its top level: a def,
    a class, an assignment or an import. Nothing is imported."""
    try:
        module, attr = split_target(target)
        spec = importlib.util.find_spec(module)
    except (ValueError, ImportError) as e:
        return str(e)
    if spec is None:
        return (f"cannot import module '{module}' (from '{target}'; looked in the current directory, the suite's "
                "directory and sys.path)")
    if not spec.origin or not spec.origin.endswith(".py"):
        return None  # a compiled or namespace module: found; the worker imports it
    try:
        tree = ast.parse(open(spec.origin, encoding="utf-8").read(), spec.origin)  # noqa: SIM115
    except (OSError, SyntaxError, ValueError) as e:
        return f"reading module '{module}' failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if attr not in _top_level_names(tree):
        return f"module '{module}' ({spec.origin}) defines no '{attr}' at its top level"
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _takes(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _input_size(model: Any) -> int | None:
    """The square input size a built model declares (``img_size``, or a functional model's input shape)."""
    size = getattr(model, "img_size", None)
    if isinstance(size, int):
        return size
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    return shape[1] if isinstance(shape, tuple) and len(shape) == 4 and isinstance(shape[1], int) else None


def port_by_name(model: Any, state: dict[str, np.ndarray]) -> None:
    """The port without a hook: the reference's names are the model's variable paths, shapes equal; anything else
    raises naming the missing and unexpected names."""
    variables = {v.path: v for v in model.weights}
    missing = sorted(set(variables) - set(state))
    unexpected = sorted(set(state) - set(variables))
    if missing or unexpected:
        raise PortError(f"{len(missing)} model variables have no tensor of that name in the reference (e.g. "
                        f"{missing[:3]}); define port_weights(model, state_dict) in the model's module to map "
                        "them", missing, unexpected)
    for name, v in variables.items():
        w = np.asarray(state[name])
        if tuple(v.shape) != w.shape:
            raise PortError(f"{name}: reference {w.shape} does not fit {tuple(v.shape)}")
        v.assign(w)


class KerasImportProvider(KerasProvider):
    """A Keras model by import path; its module's ``port_weights`` ports weights when it has one."""

    name = "keras_import"
    check = staticmethod(check)

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        module, factory = import_target(model)
        call = factory.__init__ if inspect.isclass(factory) else factory
        extra = {"img_size": img_size} if img_size is not None and "img_size" not in kwargs and _takes(
            call, "img_size") else {}
        m = factory(**kwargs, **extra)
        BUILT_FROM[m] = module
        return m, img_size or _input_size(m)

    def port(self, model: Any, state: dict[str, np.ndarray]) -> str:
        """The module's port_weights ('hook'); else the variable paths as the reference's names ('strict'); else
        the alignment of the two models' tensors when it is complete ('auto'); else PortError naming what is
        missing."""
        hook = port_function(model, "port_weights")
        if hook is not None:
            hook(model, state)
            return "hook"
        try:
            port_by_name(model, state)
            return "strict"
        except PortError as strict:
            from ..align import auto_port, keras_tensors

            values = auto_port(strict, state, keras_tensors(model), "keras")
            for v in model.weights:
                v.assign(np.asarray(values[v.path]))
            return "auto"

    def list_names(self) -> list[str]:
        return ["<package.module:Name> (a Keras Layer or Model; optional port_weights(model, state_dict))"]


PROVIDER = KerasImportProvider()
