"""Measuring one PyTorch case: build, port, numerics, FLOPs, precision, compile, timing, memory."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..env import device_name, pkg_version, torch_device
from ..measure import divergence, memory, numerics
from ..measure.compile import output_tensor
from ..measure.sections import Memory, Numerics, Provenance, SetupResult, Size
from ..providers import get_provider
from ..suite import Case, SideSpec
from .artifacts import artifact_path, load_arrays, reference_state, save_npz
from .worker import Timed, compare_candidate, judged, one_line

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "amp": torch.float16, "amp_bf16": torch.bfloat16}


def setup_device(case: Any) -> torch.device:
    """The case's device, ready (TF32 off: fp32 means fp32)."""
    return torch_device(case.device)


def build(case: Case, dev: torch.device, side: SideSpec | None = None) -> tuple[Any, int | None]:
    """The case's model (or ``side``: the pair's reference, for its artifacts), seeded; a reference's weights
    perturbed by ``perturb_std``."""
    spec, st = side or case.side, case.settings
    torch.manual_seed(st.seed)
    model, img = get_provider(spec.provider).build(spec.model, dict(spec.kwargs), st.img_size)
    if st.perturb_std and (side is not None or case.role == "reference"):
        g = torch.Generator().manual_seed(st.seed + 2)  # the reference's weights, the same in every worker
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * st.perturb_std)
    if spec.output == "features":
        model.forward = model.forward_features  # compare and time the feature map, not the classifier
    return model.eval().to(dev), (int(img) if img and not st.tokens else None)


def _input(case: Case, batch: int, img: int | None, dev: torch.device) -> torch.Tensor:
    """Image (B, 3, H, W), or tokens (B, N, C) when the case sets tokens/dim. Seeded: the same in every worker."""
    st = case.settings
    g = torch.Generator().manual_seed(st.seed + 1)
    shape = (batch, st.tokens, st.dim) if st.tokens else (batch, 3, img, img)
    return torch.randn(*shape, generator=g).to(dev)


def _write_artifact(path: Path, model: Any, img: int | None, case: Case, dev: torch.device) -> None:
    """The reference's weights, input and output, and its block outputs, attention maps and forward_intermediates
    (``b/``, ``a/``, ``i/``) for the candidates' per-block comparison."""
    x = _input(case, case.settings.numerics_batch, img, dev)
    try:
        blocks, y = divergence.record_output(model, x)  # the block outputs from the forward that gives y
    except Exception as e:  # noqa: BLE001  (no per-block table then; the output comparison stands)
        print(f"per-block outputs not recorded: {type(e).__name__}: {e}", flush=True)
        with torch.inference_mode():
            blocks, y = {}, model(x)
    y = output_tensor(y)
    weights = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    try:
        if hasattr(model, "forward_intermediates"):  # first sample only: a diagnosis, kept cheap
            with torch.inference_mode():
                inter = model.forward_intermediates(x[:1], intermediates_only=True)
            blocks.update(divergence.intermediates(inter, lambda t: t.float().cpu().numpy()))
    except Exception as e:  # noqa: BLE001  (no intermediates then; the blocks and the output stand)
        print(f"forward_intermediates not recorded: {type(e).__name__}: {e}", flush=True)
    save_npz(path, weights, x=x.cpu().numpy(), y=y.float().cpu().numpy(), **blocks)


def write_reference(case: Case, run_dir: str) -> dict[str, Any]:
    """Job 'reference': build the pair's reference at fp32 and save its weights, input and output for the
    candidates (run for a candidate whose reference is not in this run)."""
    dev = setup_device(case)
    model, img = build(case, dev, case.reference)
    _write_artifact(artifact_path(run_dir, case.pair, case.device), model, img, case, dev)
    return {"img_size": img}


def _numerics(case: Case, model: Any, run_dir: str, dev: torch.device, img: int | None) -> Numerics:
    """At the precision the case is timed at: a candidate against the reference's fp32 output; a reference timed
    below fp32 against its own fp32 output (so NaN or overflow in fp16/bf16 shows on whichever side has it)."""
    path = artifact_path(run_dir, case.pair, case.device)

    def run(x: np.ndarray) -> np.ndarray:
        return _at_precision(model, torch.from_numpy(x).to(dev), case.precision, dev).cpu().numpy()

    seen: dict[str, Any] = {}

    def run_recording(x: np.ndarray) -> np.ndarray:
        """The candidate's output, with its block outputs taken in the same forward (for ``_per_block``)."""
        try:
            seen["names"] = _block_pairs(case, model, run_dir)
        except Exception as e:  # noqa: BLE001  (the table is a diagnosis: its failure is logged, not the row's)
            print(f"per-block names not found: {type(e).__name__}: {e}", flush=True)
            return run(x)
        seen["blocks"], y = divergence.record_output(
            model, torch.from_numpy(x).to(dev), list(seen["names"].values()),
            run=lambda t: _at_precision(model, t, case.precision, dev))
        return y.cpu().numpy()

    if case.role == "reference":
        if not path.exists():
            _write_artifact(path, model, img, case, dev)
        if case.precision == "fp32":
            return Numerics(numerics_status="reference")
        art = load_arrays(path)
        try:
            res = numerics.compare(art["y"], run(art["x"]))
        except Exception as e:  # noqa: BLE001
            return Numerics("error", one_line(e))
        return judged(case, res, whose="the reference's own output")

    res = compare_candidate(case, run_dir, lambda state: get_provider(case.provider).port(model, state),
                            run_recording)
    if res.numerics_status in ("ok", "fail"):
        try:
            res.first_divergence = _per_block(case, model, run_dir, dev, seen)
        except Exception as e:  # noqa: BLE001  (the table is a diagnosis: its failure is logged, not the row's)
            print(f"per-block comparison failed: {type(e).__name__}: {e}", flush=True)
    return res


def _block_pairs(case: Case, model: Any, run_dir: str) -> dict[str, str]:
    """For each block the reference recorded, the candidate's module: the same name, or the one the weight
    alignment puts in its place (only computed when the names differ)."""
    from ..align import align, reference_tensors, torch_tensors

    art = load_arrays(artifact_path(run_dir, case.pair, case.device))
    ref_names = [k[2:] for k in art.files if k.startswith("b/")]
    pairs = None
    if any(n not in dict(model.named_modules()) for n in ref_names):
        state = {k[2:]: art[k] for k in art.files if k.startswith("w/")}
        pairs = [(m.reference, m.candidate) for m in align(reference_tensors(state), torch_tensors(model)).matches]
    return divergence.candidate_names(ref_names, model, pairs)


def _per_block(case: Case, model: Any, run_dir: str, dev: torch.device, seen: dict[str, Any]) -> str | None:
    """The candidate's block outputs (and attention maps), taken in its numerics forward (``seen``), against the
    reference's, in order: the table goes to ``DIR/numerics/<case_id>.csv``; returns the first block beyond the
    tolerance (None: all within). A Keras reference's blocks are its forward_intermediates."""

    art = load_arrays(artifact_path(run_dir, case.pair, case.device))
    ref = {k: art[k] for k in art.files if k.startswith(("b/", "a/", "i/"))}
    rows, first = [], None
    ok = lambda r: judged(case, r).numerics_status == "ok"  # noqa: E731
    if seen.get("names"):
        rows, first = divergence.compare_blocks(ref, seen["blocks"], seen["names"], ok)
    if not rows and hasattr(model, "forward_intermediates") and any(k.startswith("i/") for k in ref):
        with torch.inference_mode():
            inter = model.forward_intermediates(torch.from_numpy(art["x"][:1]).to(dev), intermediates_only=True)
        rows, first = divergence.compare_intermediates(
            ref, divergence.intermediates(inter, lambda t: t.float().cpu().numpy()), ok)
    if rows:
        divergence.write_table(run_dir, case.case_id, rows)
    return first


def _at_precision(model: Any, x: torch.Tensor, precision: str, dev: torch.device) -> torch.Tensor:
    """The model's output for ``x`` at ``precision`` (fp16/bf16: weights and input cast, put back to fp32 after;
    amp: autocast), as fp32."""
    with torch.inference_mode():
        if precision in ("fp16", "bf16"):
            try:
                return output_tensor(model.to(DTYPES[precision])(x.to(DTYPES[precision]))).float()
            finally:
                model.float()
        with torch.autocast(device_type=dev.type, dtype=DTYPES[precision]) if precision in DTYPES else \
                contextlib.nullcontext():
            return output_tensor(model(x)).float()


def _with_precision(model: Any, x: torch.Tensor, precision: str, dev: torch.device):  # type: ignore[no-untyped-def]
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    if precision in ("fp16", "bf16"):
        model, x = model.to(DTYPES[precision]), x.to(DTYPES[precision])
    elif precision in ("amp", "amp_bf16"):
        autocast = torch.autocast(device_type=dev.type, dtype=DTYPES[precision])
    return model, x, autocast


def warm_compile(case: Case, run_dir: str) -> dict[str, Any]:
    """Job 'warm', the second launch: same compile, Inductor's on-disk cache kept from the cold worker. First call
    only; returns the warm compile columns."""
    from ..measure.compile import apply_compile

    dev = setup_device(case)
    model, img = build(case, dev)
    model, x, autocast = _with_precision(model, _input(case, case.batch_size, img, dev), case.precision, dev)
    _, sec = apply_compile(model, case, x, autocast, phase="warm")
    return sec.warm_columns()


def setup(case: Case, run_dir: str, timing_only: bool = False) -> tuple[SetupResult, Timed]:
    """Everything but the timed blocks: build, memory of one forward, numerics, FLOPs, precision, compile, warm-up.
    ``timing_only`` (a timing session): build (a candidate with the reference's weights where they port), precision,
    compile and warm-up only. Returns the sections measured so far and what to time."""
    dev = setup_device(case)
    res = SetupResult()
    with res.phase("build"):
        model, img = build(case, dev)
    if timing_only:
        _port_quietly(case, model, run_dir)
        return res, _timed(case, model, img, dev, res, fresh=False)
    provider = get_provider(case.provider)
    res.provenance = Provenance(device_name=device_name(dev), threads=torch.get_num_threads(), tf32=False,
                                torch_version=torch.__version__,
                                timm_version=pkg_version("timm"))  # metadata: importing timm costs seconds
    res.size = Size(img_size=img, param_count_m=sum(p.numel() for p in model.parameters()) / 1e6)
    if dev.type == "cpu":
        # memory first, before any other phase has allocated: freed memory that the C allocator keeps would
        # otherwise hide what a forward pass needs (eager, fp32, the case's batch size)
        x0 = _input(case, case.batch_size, img, dev)
        with res.phase("flops_memory"), torch.inference_mode(), memory.RssSampler(0.002) as rss:
            model(x0)
        res.memory.forward_rss_delta_mb = rss.peak_delta_mb
        del x0
    with res.phase("numerics"):
        res.numerics = _numerics(case, model, run_dir, dev, img)
    try:
        with res.phase("flops_memory"):
            counted = provider.count_macs(model, _input(case, 1, img, dev))
        if counted is None:
            res.size.flops_method = f"not counted for {type(model).__name__}"
        else:
            res.size.gmacs, res.size.macts_m, res.size.flops_method = counted[0] / 1e9, counted[1] / 1e6, counted[2]
    except Exception as e:  # noqa: BLE001
        res.size.flops_method = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return res, _timed(case, model, img, dev, res)


def _port_quietly(case: Case, model: Any, run_dir: str) -> None:
    """A timing session's candidate runs with the reference's weights, as in the set-up job, where they port (a
    failed port is reported by the set-up job; the timing goes on with the candidate's own weights)."""
    state = reference_state(case, run_dir)
    if state is not None:
        with contextlib.suppress(Exception):
            get_provider(case.provider).port(model, state)


def _timed(case: Case, model: Any, img: int | None, dev: torch.device, res: SetupResult,
           fresh: bool = True) -> Timed:
    """Precision and compile mode applied, the first call timed apart, the warm-up run."""
    model, x, autocast = _with_precision(model, _input(case, case.batch_size, img, dev), case.precision, dev)

    from ..measure import compile as compile_mod

    with res.phase("compile"):
        runner, res.compile = compile_mod.apply_compile(model, case, x, autocast, fresh)
    frames_after_first_call = res.compile.frames_after_first_call
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def context() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast)
        return stack

    def step() -> Any:
        return runner(x)

    n = case.settings.warmup_iters
    with res.phase("warmup"), context():  # the first call (compiled: after compile) timed apart, then the warm-up
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        res.first_call_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
    iter_s = (time.perf_counter() - t0) / n if n else res.first_call_s
    _stop_compile_workers()
    if fresh:  # a set-up job: its peaks span every forward it ran (numerics, FLOPs, compile, warm-up)
        def finish() -> dict[str, Any]:
            mem = Memory(peak_rss_mb=memory.peak_rss_mb())
            if dev.type == "cuda":
                mem = Memory(peak_rss_mb=mem.peak_rss_mb,
                             cuda_peak_allocated_mb=torch.cuda.max_memory_allocated(dev) / 1e6,
                             cuda_peak_reserved_mb=torch.cuda.max_memory_reserved(dev) / 1e6,
                             nvml_used_mb=memory.nvml_used_mb(dev.index or 0))
            out = mem.columns()
            if frames_after_first_call is not None:
                out["recompiles"] = compile_mod.frames_compiled() - frames_after_first_call
            return out

        return Timed(step=step, sync=sync, iter_s=iter_s, context=context, finish=finish)
    return _tracked(Timed(step=step, sync=sync, iter_s=iter_s, context=context), dev,
                    frames_after_first_call is not None)


def _tracked(t: Timed, dev: torch.device, compiled: bool) -> Timed:
    """A timing session's side, watched block by block: frames dynamo compiled during its timed blocks (a
    recompile while timing) and, on CUDA, the memory its forwards allocated beyond what was resident when each of
    its blocks began (other sides of the session keep their weights on the device). ``finish`` reports both."""
    from ..measure import compile as compile_mod

    state: dict[str, Any] = {"recompiles": 0, "peak": None}

    def before() -> None:
        state["frames"] = compile_mod.frames_compiled() if compiled else None
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            state["resident"] = torch.cuda.memory_allocated(dev)

    def after() -> None:
        if state.get("frames") is not None:
            state["recompiles"] += compile_mod.frames_compiled() - state["frames"]
        if dev.type == "cuda":
            extra = (torch.cuda.max_memory_allocated(dev) - state["resident"]) / 1e6
            state["peak"] = extra if state["peak"] is None else max(state["peak"], extra)
            torch.cuda.empty_cache()  # the next side (on the same GPU) finds the memory free

    def finish() -> dict[str, Any]:
        return {"timing_recompiles": state["recompiles"] if compiled else None, "cuda_forward_peak_mb": state["peak"]}

    t.before_block, t.after_block, t.finish = before, after, finish
    return t


def _stop_compile_workers() -> None:
    """Inductor's compile-worker pool is idle once compiled; end it so it holds no CPU or memory while timing."""
    with contextlib.suppress(Exception):
        from torch._inductor import async_compile

        async_compile.shutdown_compile_workers()
