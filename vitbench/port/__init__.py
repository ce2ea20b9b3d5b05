"""Helpers for porting weights between implementations: what a ``checkpoint_filter_fn(state_dict, model)`` (torch)
or a ``port_weights(model, state_dict)`` (Keras) of your own may use, and what our own Keras port tables are made
of. numpy only: importing this module imports neither torch nor Keras.

A *port table* is a list of rows ``(variable, reference key, transform)``: the Keras variable to fill, the name of
the reference tensor (timm's, torch layout) and how that tensor becomes the variable's value. ``assign_strict``
fills a table: every reference key used, every variable filled once, every shape checked, else ``PortError`` with
the missing and unexpected names. Transforms know their inverse, so a table read backwards gives the reference's
tensors again (``export_state``: how a Keras reference hands its weights to candidates under timm's names).

    from vitbench.port import assign_strict, conv, linear, same, qkv_part

    def port_weights(model, sd):
        rows = [(model.embed.kernel, "patch_embed.proj.weight", conv),
                (model.embed.bias, "patch_embed.proj.bias", same)]
        for i, blk in enumerate(model.blocks):
            for part, dense in enumerate((blk.q, blk.k, blk.v)):  # timm's fused qkv, split in three
                rows += [(dense.kernel, f"blocks.{i}.attn.qkv.weight", qkv_part(part, linear)),
                         (dense.bias, f"blocks.{i}.attn.qkv.bias", qkv_part(part, same))]
            ...
        assign_strict(model, rows, sd)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["PortError", "Reshaped", "Row", "Transform", "assign_strict", "conv", "dense_rows", "export_state", "first",
           "fuse_qkv", "linear", "ln_rows", "nhwc", "qkv_part", "rename", "same", "split_qkv"]


class Transform:
    """A tensor transform with its inverse: ``t(reference_tensor) -> variable value``, ``t.inverse(value)``."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], inverse: Callable[[np.ndarray], np.ndarray],
                 name: str) -> None:
        self.forward, self.inverse_fn, self.__name__ = forward, inverse, name

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return self.forward(w)

    def inverse(self, v: np.ndarray) -> np.ndarray:
        return self.inverse_fn(v)

    def __repr__(self) -> str:
        return self.__name__


linear = Transform(lambda w: w.T, lambda v: v.T, "linear")  # torch Linear (out, in) <-> Keras Dense kernel (in, out)
conv = Transform(lambda w: w.transpose(2, 3, 1, 0), lambda v: v.transpose(3, 2, 0, 1),
                 "conv")  # torch Conv2d OIHW <-> Keras Conv2D kernel HWIO
same = Transform(lambda w: w, lambda v: v, "same")
first = Transform(lambda w: w[0], lambda v: v[None], "first")  # (1, N, C) <-> (N, C): drop a batch axis
nhwc = Transform(lambda w: w.transpose(0, 2, 3, 1), lambda v: v.transpose(0, 3, 1, 2),
                 "nhwc")  # a (1, C, H, W) table <-> (1, H, W, C)


class Reshaped(Transform):
    """``fn`` then a reshape to ``shape``; ``pre``: the shape ``fn`` gives (for the inverse), e.g. a Dense kernel
    (C, C) as MultiHeadAttention's (C, heads, head_dim)."""

    def __init__(self, shape: tuple[int, ...], fn: Transform, pre: tuple[int, ...]) -> None:
        super().__init__(lambda w: fn(w).reshape(shape), lambda v: fn.inverse(v.reshape(pre)),
                         f"reshaped({fn!r}, {shape})")


class qkv_part(Transform):
    """The ``part``-th of ``parts`` equal blocks of a fused tensor along its first axis (timm's qkv: q, k, v), then
    ``fn``. A key may feed several rows only through such parts; ``export_state`` joins them back."""

    def __init__(self, part: int, fn: Transform = same, parts: int = 3) -> None:
        def take(w: np.ndarray) -> np.ndarray:
            n = w.shape[0] // parts
            return fn(w[part * n:(part + 1) * n])

        super().__init__(take, fn.inverse, f"part {part} of {parts}, {fn!r}")
        self.part, self.parts = part, parts


Row = tuple[Any, str, Callable[[np.ndarray], np.ndarray]]


class PortError(ValueError):
    """A port failed: ``missing`` (reference keys the model needs, or variables no key fills) and ``unexpected``
    (reference keys it does not use); ``hint``: what else was tried (the automatic port's summary)."""

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 hint: str = "") -> None:
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.missing, self.unexpected, self.hint = missing or [], unexpected or [], hint

    @classmethod
    def of_keys(cls, missing: list[str], unexpected: list[str], hint: str = "") -> PortError:
        """'weight port: N missing keys (e.g. ...), M unexpected (e.g. ...)'."""
        return cls(f"weight port: {len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                   f"(e.g. {unexpected[:3]})", missing, unexpected, hint)


def _name(var: Any) -> str:
    """A variable's path (Keras 3) or name (tf-keras, TensorFlow)."""
    return getattr(var, "path", None) or var.name


def assign_strict(model: Any, table: list[Row], state: dict[str, np.ndarray]) -> None:
    """Assign every row ``(variable, key, transform)`` of ``table`` from ``state``. Each variable is filled once and
    every variable of ``model.weights`` must be; a key may feed several rows only through ``qkv_part`` transforms;
    every key of ``state`` must be used; shapes must fit. Raises ``PortError`` naming what does not."""
    used = [key for _, key, _ in table]
    covered = [id(var) for var, _, _ in table]
    missing = sorted(set(used) - set(state)) + sorted(_name(v) for v in model.weights if id(v) not in set(covered))
    unexpected = sorted(set(state) - set(used))
    if missing or unexpected:
        raise PortError.of_keys(missing, unexpected)
    twice = sorted({_name(var) for var, _, _ in table if covered.count(id(var)) > 1}
                   | {k for _, k, fn in table if used.count(k) > 1 and not hasattr(fn, "part")})
    if twice:
        raise PortError(f"weight port table: {twice[:3]} used more than once")
    for var, key, fn in table:
        w = fn(np.asarray(state[key]))
        if tuple(var.shape) != w.shape:
            raise PortError(f"weight port: {key} {w.shape} does not fit {_name(var)} {tuple(var.shape)}")
        var.assign(w)


def export_state(table: list[Row], value: Callable[[Any], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A port table read backwards: each variable's value through its transform's inverse, under the reference's
    key (a fused key's parts joined in order). ``value(variable)`` reads a variable (default: ``np.asarray``).
    Raises ``PortError`` where a transform has no inverse."""
    read = value or (lambda v: np.asarray(v))
    parts: dict[str, list[tuple[int, np.ndarray]]] = {}
    out: dict[str, np.ndarray] = {}
    for var, key, fn in table:
        inverse = getattr(fn, "inverse", None)
        if inverse is None:
            raise PortError(f"cannot export {key}: its transform {getattr(fn, '__name__', fn)!r} has no inverse")
        w = inverse(read(var))
        if hasattr(fn, "part"):
            parts.setdefault(key, []).append((fn.part, w))
        else:
            out[key] = w
    for key, ps in parts.items():
        out[key] = np.concatenate([w for _, w in sorted(ps, key=lambda p: p[0])], axis=0)
    return out


def ln_rows(layer: Any, key: str) -> list[Row]:
    """A LayerNormalization's gamma/beta from ``key.weight`` / ``key.bias``."""
    return [(layer.gamma, key + ".weight", same), (layer.beta, key + ".bias", same)]


def dense_rows(layer: Any, key: str) -> list[Row]:
    """A Dense kernel (transposed) and, if it has one, its bias from ``key.weight`` / ``key.bias``."""
    return [(layer.kernel, key + ".weight", linear)] + ([(layer.bias, key + ".bias", same)] if layer.use_bias else [])


def split_qkv(w: np.ndarray, parts: int = 3) -> list[np.ndarray]:
    """timm's fused qkv weight (3C, C) or bias (3C,) as [q, k, v] (torch layout)."""
    return list(np.split(np.asarray(w), parts, axis=0))


def fuse_qkv(*parts: np.ndarray) -> np.ndarray:
    """Separate q, k, v weights or biases (torch layout) as timm's fused qkv."""
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def rename(state: dict[str, Any], pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``state`` with parts of its keys replaced, in order (``[("layers.", "blocks."), (".qkv_proj", ".attn.qkv")]``):
    the usual body of a torch ``checkpoint_filter_fn``. Works on tensors and arrays alike."""
    out = {}
    for k, v in state.items():
        for old, new in pairs:
            k = k.replace(old, new)
        out[k] = v
    return out
