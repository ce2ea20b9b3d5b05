"""Measuring one Keras case on one backend (``KERAS_BACKEND`` is fixed before keras is imported; torch is never
imported here unless the backend is torch). Modes: eager (a plain call), graph (tf.function), xla
(tf.function(jit_compile=True)) on TensorFlow; jit (jax.jit) on JAX — through Keras' own predict function.
tf-keras sides (Keras 2: TF Model Garden's) run here too, in workers of their own: ``keras_module`` is then tf_keras
and Keras 3 is never imported."""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from ..env import cpu_name, pkg_version
from ..measure import memory
from ..measure.sections import Compile, Numerics, Provenance, SetupResult, Size
from ..modes import KERAS_DEFAULT_BACKEND, KERAS_JIT
from ..suite import Case
from .artifacts import artifact_path, load_arrays, save_npz
from .worker import Timed, compare_candidate, judged


def _setup(case: Case, backend: str | None = None) -> str:
    backend = backend or case.backend or KERAS_DEFAULT_BACKEND
    os.environ["KERAS_BACKEND"] = backend
    dev = case.device
    # one device per worker: hide the others (and every GPU for a cpu case)
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if dev == "cpu" else (dev.partition(":")[2] or "0")
    if dev != "cpu" and backend == "tensorflow":
        raise RuntimeError("the tensorflow backend runs on cpu here; use backend: jax or torch for cuda")
    return backend


def prepare(case: Case) -> str:
    """Before Keras is imported: the case's backend and device fixed, then TF32 off. Returns the backend."""
    backend = _setup(case)
    tf32_off(backend)
    return backend


def keras_module(framework: str) -> Any:
    """Keras 3, or tf-keras (Keras 2) for a ``tf_keras`` side: one of them per process, never both."""
    if framework == "tf_keras":
        if "keras" in sys.modules:
            raise RuntimeError("Keras 3 was imported in this tf-keras worker: a tf-keras side runs in a process "
                               "of its own")
        import tf_keras

        return tf_keras
    import keras

    return keras


def tf32_off(backend: str) -> None:
    """fp32 means fp32 on every backend, as on the torch side: TF32 matmuls and convolutions off (TensorFlow turns
    them on by default on Ampere and newer GPUs; JAX's default matmul precision may use them too)."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


# a timing session's models by implementation (label, model, kwargs, input, role): its eager, graph and XLA sides of
# one model share one instance and its weights; two labels (an A/A pair) never do; every mode compiles a wrapper
_SESSION_MODELS: dict[tuple, tuple[Any, int | None]] = {}


def _model_key(case: Case) -> tuple:
    return (case.label, case.provider, case.model, repr(sorted(case.kwargs.items())), case.settings.img_size,
            case.output, case.role, case.batch_size)


def _input(case: Case, batch: int, img: int | None) -> np.ndarray:
    """A seeded input in Keras' channels-last layout (numerics use the reference's saved input, whatever made it)."""
    st = case.settings
    rng = np.random.default_rng(st.seed + 1)
    if st.tokens:
        return rng.standard_normal((batch, st.tokens, st.dim), dtype=np.float32)
    return rng.standard_normal((batch, img, img, 3), dtype=np.float32)


def output_array(y: Any) -> np.ndarray:
    """The output that is compared, as the torch side's: the last of a list (a multi-level backbone's deepest
    level), and a channels-last map (B, H, W, C) back in the torch layout (B, C, H, W)."""
    if isinstance(y, (list, tuple)):
        y = y[-1]
    if isinstance(y, np.ndarray) or type(y).__module__.startswith("tensorflow"):
        y = np.asarray(y)  # TensorFlow's tensors (Keras 3's TF backend, tf-keras): no Keras needed
    else:
        import keras

        y = keras.ops.convert_to_numpy(y)
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def _numerics(case: Case, model: Any, forward: Any, port: Any, run_dir: str) -> Numerics:
    """``model``: what the provider built (``forward`` may be its forward_features, or a function of it)."""
    if case.role == "reference":
        from ..providers import get_provider

        path = artifact_path(run_dir, case.pair, case.device)
        if not path.exists():
            _write_artifact(path, case, model, forward, get_provider(case.provider))
        return Numerics("reference")
    res = compare_candidate(case, run_dir, port, lambda x: output_array(forward(nhwc(x))))
    if res.numerics_status in ("ok", "fail"):
        try:
            res.first_divergence = _per_block(case, model, run_dir)
        except Exception as e:  # noqa: BLE001  (the table is a diagnosis: its failure is logged, not the row's)
            print(f"per-block comparison failed: {type(e).__name__}: {e}", flush=True)
    return res


def _differences(case: Case, provider: Any, model: Any, forward: Any, run_dir: str, num: Numerics) -> None:
    """A provider's note on where its network is not the reference's goes into ``numerics_error``. Where the
    provider can also take that difference out (``without_differences(model)``: a context in which the model, with
    the same ported weights, computes the reference's network, and what it changes), the verdict is the comparison
    without it: the row keeps the as-built max|diff| and says both figures. A wrong port fails either way."""
    differences = getattr(provider, "differences", None)
    note = differences(model) if differences and num.numerics_status in ("ok", "fail") else None
    if not note:
        return
    without = getattr(provider, "without_differences", None)
    if without is not None and case.role == "candidate" and num.max_abs_diff is not None:
        context, what = without(model)
        with context:
            alt = compare_candidate(case, run_dir, lambda state: provider.port(model, state),
                                    lambda x: output_array(forward(nhwc(x))))
        if alt.numerics_status in ("ok", "fail"):
            tol = f"tolerance {alt.tolerance_max_abs:g}" if alt.tolerance_max_abs is not None else "the tolerance"
            verdict = f"within {tol}: the port is exact" if alt.numerics_status == "ok" else alt.numerics_error
            note = (f"{note}: max|diff| {num.max_abs_diff:.3g} as built, {alt.max_abs_diff:.3g} with {what} "
                    f"(the same ported weights), {verdict}")
            num.numerics_status, num.numerics_error = alt.numerics_status, None
    num.numerics_error = "; ".join(filter(None, (num.numerics_error, note)))


def _intermediates(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """``i/<k>``: the model's timm-style ``forward_intermediates`` (NCHW maps) of the first sample of an NHWC input,
    where it has it."""
    if not hasattr(model, "forward_intermediates"):
        return {}
    import keras

    from ..measure import divergence

    values = model.forward_intermediates(x[:1], intermediates_only=True)  # first sample only, as the torch side
    return divergence.intermediates(values, keras.ops.convert_to_numpy)


def _per_block(case: Case, model: Any, run_dir: str) -> str | None:
    """The candidate's forward_intermediates against the reference's, in order (``DIR/numerics/<case_id>.csv``);
    the first beyond the tolerance, None when all agree or there is nothing to compare."""
    from ..measure import divergence

    art = load_arrays(artifact_path(run_dir, case.pair, case.device))
    ref = {k: art[k] for k in art.files if k.startswith("i/")}
    if not ref:
        return None
    rows, first = divergence.compare_intermediates(ref, _intermediates(model, nhwc(art["x"])),
                                                   lambda r: judged(case, r).numerics_status == "ok")
    if rows:
        divergence.write_table(run_dir, case.case_id, rows)
    return first


def nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x  # NCHW (the artifacts' torch layout) -> NHWC


def _write_artifact(path: Any, case: Case, model: Any, forward: Any, provider: Any) -> None:
    """A Keras reference's artifacts, as a torch reference writes them: the input and output in the torch layout
    (NCHW images), and the weights under timm's names where the provider can read its port table backwards
    (``export_state``: then every port from timm works against it), else under the model's variable paths (a
    candidate's port_weights / checkpoint_filter_fn maps them)."""
    st = case.settings
    img = getattr(model, "img_size", None) or st.img_size
    x = _input(case, st.numerics_batch, img)
    y = output_array(forward(x))
    export = getattr(provider, "export_state", None)
    weights = None
    if export is not None:
        try:
            weights = export(model)
        except Exception as e:  # noqa: BLE001  (some tables do not invert, e.g. a folded normalisation)
            print(f"weights under variable paths: {type(e).__name__}: {e}", flush=True)
    if weights is None:
        weights = {getattr(v, "path", None) or v.name: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                   for v in model.weights}  # path: Keras 3; name: tf-keras
    nchw = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
    try:
        inter = _intermediates(model, x)
    except Exception as e:  # noqa: BLE001  (no per-block table then; the output comparison stands)
        print(f"forward_intermediates not recorded: {type(e).__name__}: {e}", flush=True)
        inter = {}
    save_npz(path, {k: np.asarray(v, np.float32) for k, v in weights.items()}, x=nchw, y=y.astype(np.float32),
             **inter)


def _perturb(model: Any, case: Case) -> None:
    """``perturb_std``: seeded N(0, std) added to the reference's weights (as the torch worker does), so zero-
    initialised tables take part in the comparison."""
    std = case.settings.perturb_std
    if not std:
        return
    rng = np.random.default_rng(case.settings.seed + 2)
    for v in model.trainable_weights:
        v.assign(np.asarray(v.numpy()) + rng.standard_normal(tuple(v.shape)).astype(np.float32) * std)


def setup(case: Case, run_dir: str, timing_only: bool = False) -> tuple[SetupResult, Timed]:
    """Build, numerics, MACs, compile (graph/xla/jit) and warm-up; the serve loop then times blocks.
    ``timing_only`` (a timing session): no numerics or MACs."""
    backend = _setup(case)
    keras = keras_module(case.framework)

    from ..providers import get_provider

    tf32_off(backend)
    keras.utils.set_random_seed(case.settings.seed)
    if case.precision != "fp32":
        raise ValueError(f"precision {case.precision} is not supported for Keras cases yet (fp32 only)")
    provider = get_provider(case.provider)
    t0 = time.perf_counter()
    key = _model_key(case)
    if timing_only and key in _SESSION_MODELS:  # the same implementation at another mode: one instance serves both
        model, img = _SESSION_MODELS[key]
    else:
        model, img = provider.build(case.model, dict(case.kwargs), case.settings.img_size)
        if case.role == "reference":
            _perturb(model, case)
        if timing_only:
            _SESSION_MODELS[key] = (model, img)
    forward = model.forward_features if case.output == "features" else model
    x = _input(case, case.batch_size, img)
    forward(x[:1])
    build_s = time.perf_counter() - t0
    res = SetupResult(
        phase_s={"build": build_s},
        provenance=Provenance(device_name=cpu_name() if case.device == "cpu" else case.device,
                              threads=os.cpu_count(), tf32=False, keras_version=keras.__version__,
                              tf_version=pkg_version("tensorflow"),
                              torch_version=pkg_version("torch") if backend == "torch" else None),
        size=Size(img_size=img, param_count_m=sum(int(np.prod(w.shape)) for w in model.weights) / 1e6))
    if not timing_only:
        with res.phase("numerics"):
            res.numerics = _numerics(case, model, forward, lambda state: provider.port(model, state), run_dir)
            _differences(case, provider, model, forward, run_dir, res.numerics)
        with res.phase("flops_memory"):
            counted = provider.count_macs(model, x[:1])
        if counted is None:
            res.size.flops_method = f"not counted for {type(model).__name__}"
        else:
            res.size.gmacs, res.size.macts_m, res.size.flops_method = counted[0] / 1e9, counted[1] / 1e6, counted[2]

    def eager() -> Any:
        return output_array(forward(x))  # materialise: the work is done

    mode = case.compile_mode
    runner = eager
    t_compile = time.perf_counter()
    if mode != "eager":
        t0 = time.perf_counter()
        y_eager = eager() if not timing_only else None  # a timing session's model was checked by its set-up job
        sec = Compile(eager_first_call_s=time.perf_counter() - t0 if not timing_only else None)
        # Keras compiles a Model's predict step: the model itself, or a Model around a bare layer / forward_features
        # (in a timing session always a wrapper: the session's other modes of this model share its instance)
        own = isinstance(model, keras.Model) and case.output == "forward" and not timing_only
        compiled = model if own else _as_model(model, case, keras)
        compiled.compile(jit_compile=mode in KERAS_JIT)

        def runner() -> Any:
            return compiled.predict_on_batch(x)

        t0 = time.perf_counter()
        y_comp = runner()
        sec.compile_first_call_cold_s = time.perf_counter() - t0
        sec.compile_cold_s = sec.compile_first_call_cold_s - (sec.eager_first_call_s or 0)
        if y_eager is not None:
            sec.compiled_max_abs_diff = float(np.abs(output_array(y_comp) - y_eager).max())
        # numerics are compared eagerly: a compiled model that computes something else must not be timed as if it
        # were the same network (10x the suite's tolerance, as for torch.compile: XLA may reorder float sums)
        limit = 10 * case.settings.tolerance.max_abs
        if y_eager is not None and not sec.compiled_max_abs_diff <= limit:
            raise ValueError(f"{mode} changed the output: max|{mode} - eager| = {sec.compiled_max_abs_diff:.3g} > "
                             f"{limit:.3g} (10x the suite's max_abs)")
        res.compile = sec
    res.phase_s["compile"] = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    runner()
    res.first_call_s = time.perf_counter() - t0
    n = case.settings.warmup_iters
    t0 = time.perf_counter()
    for _ in range(n):
        runner()
    iter_s = (time.perf_counter() - t0) / n if n else res.first_call_s
    res.phase_s["warmup"] = time.perf_counter() - t0 + (res.first_call_s or 0)
    return res, Timed(step=runner, sync=lambda: None, iter_s=iter_s,
                      finish=lambda: {"peak_rss_mb": memory.peak_rss_mb()})


def _as_model(layer: Any, case: Case, keras: Any) -> Any:
    class _Forward(keras.Model):
        """A Model whose call is the side's forward (``forward_features`` for ``output: features``)."""

        def __init__(self, inner: Any) -> None:
            super().__init__(name=f"{case.output}_of_{inner.name}")  # Keras' default name is not a valid scope
            self.inner = inner

        def call(self, x: Any) -> Any:
            return self.inner.forward_features(x) if case.output == "features" else self.inner(x)

    return _Forward(layer)


def write_reference(case: Case, run_dir: str) -> dict[str, Any]:
    """Job 'reference': build the pair's (Keras) reference and save its weights, input and output for a candidate
    whose reference is not in this run."""
    import dataclasses

    from ..providers import get_provider

    ref = case.reference
    _setup(case, ref.backend)
    keras = keras_module(ref.framework)

    tf32_off(ref.backend or KERAS_DEFAULT_BACKEND)
    keras.utils.set_random_seed(case.settings.seed)
    provider = get_provider(ref.provider)
    model, img = provider.build(ref.model, dict(ref.kwargs), case.settings.img_size)
    as_ref = dataclasses.replace(case, role="reference", side=ref, reference=None)
    _perturb(model, as_ref)
    forward = model.forward_features if ref.output == "features" else model
    _write_artifact(artifact_path(run_dir, case.pair, case.device), as_ref, model, forward, provider)
    return {"img_size": img}
