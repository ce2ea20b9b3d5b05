"""Frameworks and compile modes, defined once (suite validation, workers, tables and plots read them here).

A compile mode belongs to a framework (Keras: to a backend); its suffix is the one timm's benchmark tables use
(``-dynamo`` for a full ``torch.compile``)."""
from __future__ import annotations

from typing import Literal, get_args

Framework = Literal["torch", "keras", "tf_keras"]  # tf_keras: Keras 2 (TF Model Garden), TensorFlow only
CompileMode = Literal["eager", "full", "regional", "hierarchical", "graph", "xla", "jit"]

# which modes a side may run: torch, or Keras on a backend
MODES: dict[str, tuple[str, ...]] = {
    "torch": ("eager", "full", "regional", "hierarchical"),
    "keras/tensorflow": ("eager", "graph", "xla"),
    "keras/jax": ("eager", "jit"),
    "keras/torch": ("eager",),
}
# the torch.compile modes (cold/warm compile measured, Inductor cache); hierarchical = full, blocks as nested regions
TORCH_COMPILED = ("full", "regional", "hierarchical")
KERAS_JIT = ("xla", "jit")  # Keras modes compiled with jit_compile=True
# timm table file suffix of each mode
MODE_SUFFIX = {"eager": "", "full": "-dynamo", "regional": "-regional", "hierarchical": "-hierarchical",
               "graph": "-graph", "xla": "-xla", "jit": "-jit"}
KERAS_DEFAULT_BACKEND = "tensorflow"
# what a compiled mode is compared with, on the same implementation, in a pair's timing group (pairs.csv rows with
# comparison "compile"): every mode against eager; regional and hierarchical also against full
MODE_BASELINES: dict[str, tuple[str, ...]] = {"full": ("eager",), "regional": ("eager", "full"),
                                              "hierarchical": ("eager", "full"), "graph": ("eager",),
                                              "xla": ("eager",), "jit": ("eager",)}
MODE_ORDER = tuple(get_args(CompileMode))

assert set(MODE_SUFFIX) == set(get_args(CompileMode)) == {m for ms in MODES.values() for m in ms}


def modes_for(framework: str, backend: str | None = None) -> tuple[str, ...]:
    if framework == "tf_keras":  # tf-keras runs on TensorFlow only: its modes are Keras-on-TensorFlow's
        return MODES["keras/tensorflow"]
    return MODES["torch"] if framework == "torch" else MODES[f"keras/{backend or KERAS_DEFAULT_BACKEND}"]


def layout(framework: str) -> str:
    """The input layout a framework's rows were measured in (timm tables name it: nchw / nhwc)."""
    return "nchw" if framework == "torch" else "nhwc"
