"""Measuring one Keras case on one backend (``KERAS_BACKEND`` is fixed before keras is imported; torch is never
imported here unless the backend is torch). Modes: eager (a plain call), graph (tf.function), xla
(tf.function(jit_compile=True)) on TensorFlow; jit (jax.jit) on JAX — through Keras' own predict function."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..env import pkg_version
from ..measure import memory
from .worker import Timed, compare_candidate


def _setup(case: dict[str, Any]) -> str:
    backend = case.get("backend") or "tensorflow"
    os.environ["KERAS_BACKEND"] = backend
    dev = case["device"]
    # one device per worker: hide the others (and every GPU for a cpu case)
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if dev == "cpu" else (dev.partition(":")[2] or "0")
    if dev != "cpu" and backend == "tensorflow":
        raise RuntimeError("the tensorflow backend runs on cpu here; use backend: jax or torch for cuda")
    return backend


def _input(case: dict[str, Any], batch: int, img: int | None) -> np.ndarray:
    """Same values as the torch worker's seeded input, in Keras' channels-last layout."""
    rng = np.random.default_rng(case["seed"] + 1)
    if case.get("tokens"):
        return rng.standard_normal((batch, case["tokens"], case["dim"]), dtype=np.float32)
    return rng.standard_normal((batch, img, img, 3), dtype=np.float32)


def _numerics(case: dict[str, Any], model: Any, run_dir: str) -> dict[str, Any]:
    from ..providers import get_provider

    if case["role"] == "reference":
        return {"numerics_status": "reference", "numerics_error": "a Keras reference writes no artifacts yet"}
    import keras

    def nhwc(x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x  # NCHW (torch reference) -> NHWC

    def port(state: dict[str, np.ndarray]) -> None:
        get_provider(case["provider"]).port(model, state)

    return compare_candidate(case, run_dir, port, lambda x: keras.ops.convert_to_numpy(model(nhwc(x))))


def _macs(model: Any, case: dict[str, Any]) -> dict[str, Any]:
    """TF's profiler does not count Einsum, so our Keras models are counted from their configuration."""
    from vitbench.models import keras as ours

    if isinstance(model, ours.VisionTransformer):
        macs, acts = ours.count_macs_acts(model)
        return {"gmacs": macs / 1e9, "macts_m": acts / 1e6, "flops_method": "analytic from the model config "
                "(conv/matmul MACs incl. attention; TF's profiler misses Einsum)"}
    return {"flops_method": "not counted for this Keras layer"}


def setup(case: dict[str, Any], run_dir: str, timing_only: bool = False) -> tuple[dict[str, Any], Timed]:
    """Build, numerics, MACs, compile (graph/xla/jit) and warm-up; the serve loop then times blocks.
    ``timing_only`` (a timing session): no numerics or MACs."""
    backend = _setup(case)
    import keras

    from ..providers import get_provider

    keras.utils.set_random_seed(case["seed"])
    if case["precision"] != "fp32":
        raise ValueError(f"precision {case['precision']} is not supported for Keras cases yet (fp32 only)")
    model, img = get_provider(case["provider"]).build(case["model"], dict(case["kwargs"]), case["img_size"])
    x = _input(case, case["batch_size"], img)
    model(x[:1])
    row: dict[str, Any] = {
        "img_size": img, "device_name": case["device"], "threads": os.cpu_count(), "tf32": False,
        "param_count_m": sum(int(np.prod(w.shape)) for w in model.weights) / 1e6,
        "keras_version": keras.__version__, "tf_version": pkg_version("tensorflow"),
        "torch_version": pkg_version("torch") if backend == "torch" else None,
    }
    if not timing_only:
        row.update(_numerics(case, model, run_dir))
        row.update(_macs(model, case))

    def eager() -> Any:
        return keras.ops.convert_to_numpy(model(x, training=False))  # materialise: the work is done

    mode = case["compile_mode"]
    runner = eager
    if mode != "eager":
        t0 = time.perf_counter()
        y_eager = eager()
        row["eager_first_call_s"] = time.perf_counter() - t0
        if not isinstance(model, keras.Model):  # a bare layer: wrap it so Keras can compile it
            inp = keras.Input(shape=x.shape[1:], batch_size=None)
            model = keras.Model(inp, model(inp))
        model.compile(jit_compile=mode in ("xla", "jit"))

        def runner() -> Any:
            return model.predict_on_batch(x)

        t0 = time.perf_counter()
        y_comp = runner()
        row["compile_first_call_cold_s"] = time.perf_counter() - t0
        row["compile_cold_s"] = row["compile_first_call_cold_s"] - row["eager_first_call_s"]
        row["compiled_max_abs_diff"] = float(np.abs(np.asarray(y_comp) - y_eager).max())
    t0 = time.perf_counter()
    runner()
    row["first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(case["warmup_iters"]):
        runner()
    n = case["warmup_iters"]
    iter_s = (time.perf_counter() - t0) / n if n else row["first_call_s"]
    return row, Timed(step=runner, sync=lambda: None, iter_s=iter_s,
                      finish=lambda: {"peak_rss_mb": memory.peak_rss_mb()})


def prepare(case: dict[str, Any], run_dir: str) -> dict[str, Any]:
    raise NotImplementedError("a Keras reference cannot write artifacts yet: use a torch reference")

