"""Running Keras parity code on each backend: a backend is fixed per process, so each runs in a child.

``run_on_backend(backend, body)`` runs ``PRELUDE + body`` with ``KERAS_BACKEND=backend`` and fails the test with
the child's output when it exits non-zero. The prelude imports torch/timm before keras (TensorFlow after torch,
see tests/conftest.py) and gives the body ``perturbed(ref, std)``, ``state_of(ref)``, ``nhwc(x)`` / ``nchw(y)``
and ``check(name, got, want, tol)``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# TensorFlow in the default run; JAX and torch are the same code on other backends, each a child process that
# imports its framework (20-40 s apiece): marked slow, run by .ci/run (python -m pytest -m slow)
BACKENDS = ("tensorflow", pytest.param("jax", marks=pytest.mark.slow), pytest.param("torch", marks=pytest.mark.slow))

PRELUDE = textwrap.dedent("""
    import numpy as np, torch, timm
    import keras
    torch.manual_seed(0)

    def perturbed(ref, std=0.05):
        # timm's init zeroes biases, tables and pos-embeds: perturb every parameter so each one matters
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(torch.randn_like(p) * std)
        return ref.eval()

    def state_of(ref):
        return {k: v.detach().numpy() for k, v in ref.state_dict().items()}

    def nhwc(x):
        return x.permute(0, 2, 3, 1).numpy() if x.ndim == 4 else x.numpy()

    def nchw(y):
        y = keras.ops.convert_to_numpy(y)
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    def check(name, got, want, tol=1e-4):
        want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
        assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
        diff = float(np.abs(got - want).max())
        print(f"{keras.backend.backend()} {name}: max abs diff {diff:.2e}")
        assert diff <= tol, f"{name}: max abs diff {diff:.2e} > {tol}"
""")


def run_on_backend(backend: str, body: str, timeout: int = 600) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                         env=env, timeout=timeout)
    print(res.stdout)
    assert res.returncode == 0, f"{backend}: {res.stdout[-1500:]}\n{res.stderr[-3000:]}"
    return res.stdout
