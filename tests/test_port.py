"""vitbench.port: the helpers port functions use, and port tables read backwards (how a Keras reference hands its
weights out under timm's names)."""
from __future__ import annotations

import numpy as np
import pytest

from vitbench.port import (
    PortError,
    Reshaped,
    assign_strict,
    conv,
    export_state,
    first,
    fuse_qkv,
    linear,
    nhwc,
    qkv_part,
    rename,
    same,
    split_qkv,
)


class Var:
    """A stand-in for a Keras variable: a path, a shape, a value assigned once."""

    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.path, self.shape, self.value = path, shape, None

    def assign(self, v: np.ndarray) -> None:
        self.value = np.array(v)

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001
        return self.value


class Model:
    def __init__(self, *weights: Var) -> None:
        self.weights = list(weights)


@pytest.mark.parametrize("t,shape", [(linear, (4, 3)), (conv, (8, 3, 2, 2)), (same, (5,)), (first, (1, 6, 4)),
                                     (nhwc, (1, 4, 3, 3)), (Reshaped((4, 2, 2), linear, (4, 4)), (4, 4))])
def test_every_transform_inverts(t, shape):
    w = np.random.default_rng(0).standard_normal(shape)
    assert np.array_equal(t.inverse(t(w)), w)


def test_a_table_fills_strictly_and_reads_back_as_the_reference():
    rng = np.random.default_rng(1)
    state = {"qkv.weight": rng.standard_normal((6, 2)), "qkv.bias": rng.standard_normal(6),
             "proj.weight": rng.standard_normal((2, 2)), "patch.weight": rng.standard_normal((2, 3, 4, 4))}
    q, k, v = (Var(f"{n}/kernel", (2, 2)) for n in "qkv")
    qb, kb, vb = (Var(f"{n}/bias", (2,)) for n in "qkv")
    proj, patch = Var("proj/kernel", (2, 2)), Var("patch/kernel", (4, 4, 3, 2))
    table = [(proj, "proj.weight", linear), (patch, "patch.weight", conv)]
    for part, (kern, bias) in enumerate(((q, qb), (k, kb), (v, vb))):
        table += [(kern, "qkv.weight", qkv_part(part, linear)), (bias, "qkv.bias", qkv_part(part, same))]
    model = Model(q, k, v, qb, kb, vb, proj, patch)
    assign_strict(model, table, state)
    assert np.array_equal(k.value, state["qkv.weight"][2:4].T)  # the key's second third, transposed
    back = export_state(table)
    assert set(back) == set(state) and all(np.array_equal(back[n], state[n]) for n in state)
    with pytest.raises(PortError) as e:  # a reference key the table does not use, a variable none fills
        assign_strict(Model(*model.weights, Var("extra", (1,))), table, {**state, "head.weight": np.zeros(1)})
    assert e.value.missing == ["extra"] and e.value.unexpected == ["head.weight"]
    with pytest.raises(PortError, match="does not fit"):
        assign_strict(model, table, {**state, "proj.weight": np.zeros((3, 2))})
    with pytest.raises(PortError, match="no inverse"):
        export_state([(proj, "proj.weight", lambda w: w * 2)])


def test_qkv_and_rename_helpers():
    w = np.arange(12).reshape(6, 2)
    q, k, v = split_qkv(w)
    assert np.array_equal(fuse_qkv(q, k, v), w) and q.shape == (2, 2)
    assert rename({"blocks.0.attn.qkv.weight": 1, "norm.bias": 2}, [("blocks.", "layers."), (".attn.qkv.", ".qkv.")]) \
        == {"layers.0.qkv.weight": 1, "norm.bias": 2}
