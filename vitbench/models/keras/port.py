"""Porting a timm (or our torch twin's) state_dict into a Keras model: the transforms a port table names, and the
strict assignment every family uses - every timm key used once, every Keras variable assigned, every shape
checked; a mismatch raises ``PortError`` carrying the key names."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> Dense kernel (in, out)."""
    return w.T


def conv(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight OIHW -> Keras Conv2D kernel HWIO."""
    return w.transpose(2, 3, 1, 0)


def same(w: np.ndarray) -> np.ndarray:
    return w


class PortError(ValueError):
    """A strict port failed: ``missing`` (timm keys our model needs, or our variables no key fills) and
    ``unexpected`` (timm keys it does not use)."""

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None):
        super().__init__(message)
        self.missing, self.unexpected = missing or [], unexpected or []


def assign_strict(model: Any, table: list[tuple[Any, str, Transform]], state: dict[str, np.ndarray]) -> None:
    """Assign every row ``(variable, timm key, transform)`` of ``table`` from ``state``. Each variable is filled once;
    a key may feed several rows only through transforms that take a ``part`` of it (a fused qkv split in three)."""
    used = [key for _, key, _ in table]
    covered = [id(var) for var, _, _ in table]
    missing = sorted(set(used) - set(state)) + sorted(v.path for v in model.weights if id(v) not in set(covered))
    unexpected = sorted(set(state) - set(used))
    if missing or unexpected:
        raise PortError(f"weight port: {len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} "
                        f"unexpected (e.g. {unexpected[:3]})", missing, unexpected)
    twice = sorted({var.path for var, _, _ in table if covered.count(id(var)) > 1}
                   | {k for _, k, fn in table if used.count(k) > 1 and not hasattr(fn, "part")})
    if twice:
        raise PortError(f"weight port table: {twice[:3]} used more than once")
    for var, key, fn in table:
        w = fn(np.asarray(state[key]))
        if tuple(var.shape) != w.shape:
            raise PortError(f"weight port: {key} {w.shape} does not fit {var.path} {tuple(var.shape)}")
        var.assign(w)


Row = tuple[Any, str, Transform]


def ln_rows(layer: Any, key: str) -> list[Row]:
    """A LayerNormalization's gamma/beta from timm's ``key.weight`` / ``key.bias``."""
    return [(layer.gamma, key + ".weight", same), (layer.beta, key + ".bias", same)]


def dense_rows(layer: Any, key: str) -> list[Row]:
    """A Dense kernel (transposed) and, if it has one, its bias from timm's ``key.weight`` / ``key.bias``."""
    return [(layer.kernel, key + ".weight", linear)] + ([(layer.bias, key + ".bias", same)] if layer.use_bias else [])
