"""Measuring one PyTorch case: build, port, numerics, FLOPs, precision, compile, timing, memory."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..env import pkg_version
from ..measure import flops, memory
from ..measure.compile import output_tensor
from ..measure.timing import time_loop, time_loop_quiet
from ..providers import get_provider
from .worker import artifact_path, compare_candidate

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "amp": torch.float16, "amp_bf16": torch.bfloat16}


def _setup(case: dict[str, Any]) -> torch.device:
    torch.backends.cuda.matmul.allow_tf32 = False  # numerics and "fp32" timings are true fp32 (timm uses TF32)
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(case["device"])
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available in the worker")
        torch.cuda.set_device(dev)
    return dev


def _build(case: dict[str, Any], dev: torch.device, side: dict[str, Any] | None = None) -> tuple[Any, int | None]:
    side = side or case
    torch.manual_seed(case["seed"])
    model, img = get_provider(side["provider"]).build(side["model"], dict(side["kwargs"]), case["img_size"])
    building_reference = side is not case or case["role"] == "reference"  # prepare() passes the reference side
    if case.get("perturb_std") and building_reference:
        g = torch.Generator().manual_seed(case["seed"] + 2)  # the reference's weights, the same in every worker
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * case["perturb_std"])
    if side.get("output") == "features":
        model.forward = model.forward_features  # compare and time the feature map, not the classifier
    return model.eval().to(dev), (int(img) if img and not case.get("tokens") else None)


def _input(case: dict[str, Any], batch: int, img: int | None, dev: torch.device) -> torch.Tensor:
    """Image (B, 3, H, W), or tokens (B, N, C) when the case sets tokens/dim. Seeded: the same in every worker."""
    g = torch.Generator().manual_seed(case["seed"] + 1)
    shape = (batch, case["tokens"], case["dim"]) if case.get("tokens") else (batch, 3, img, img)
    return torch.randn(*shape, generator=g).to(dev)


def _write_artifact(path: Path, model: Any, img: int | None, case: dict[str, Any], dev: torch.device) -> None:
    x = _input(case, case["numerics_batch"], img, dev)
    with torch.inference_mode():
        y = output_tensor(model(x))
    weights = {f"w/{k}": v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x.cpu().numpy(), y=y.float().cpu().numpy(), **weights)
    os.replace(tmp, path)


def prepare(case: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Build the pair's reference at fp32 and save weights, input and output for the candidates."""
    dev = _setup(case)
    ref_case = {**case, **case["reference"]} if case["role"] == "candidate" else case
    model, img = _build(case, dev, ref_case)
    _write_artifact(artifact_path(run_dir, case["pair"], case["device"]), model, img, case, dev)
    return {"img_size": img}


def _numerics(case: dict[str, Any], model: Any, run_dir: str, dev: torch.device, img: int | None) -> dict[str, Any]:
    path = artifact_path(run_dir, case["pair"], case["device"])
    if case["role"] == "reference":
        if not path.exists():
            _write_artifact(path, model, img, case, dev)
        return {"numerics_status": "reference"}

    def run_candidate(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        get_provider(case["provider"]).port(model, state)
        with torch.inference_mode():
            return output_tensor(model(torch.from_numpy(x).to(dev))).float().cpu().numpy()

    return compare_candidate(case, run_dir, run_candidate)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _with_precision(model: Any, x: torch.Tensor, precision: str, dev: torch.device):  # type: ignore[no-untyped-def]
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    if precision in ("fp16", "bf16"):
        model, x = model.to(DTYPES[precision]), x.to(DTYPES[precision])
    elif precision in ("amp", "amp_bf16"):
        autocast = torch.autocast(device_type=dev.type, dtype=DTYPES[precision])
    return model, x, autocast


def warm_compile(case: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Second launch: same compile, Inductor's on-disk cache kept from the cold worker. First call only."""
    from ..measure import compile as compile_mod

    dev = _setup(case)
    model, img = _build(case, dev)
    model, x, autocast = _with_precision(model, _input(case, case["batch_size"], img, dev),
                                         case["precision"], dev)
    _, row = compile_mod.prepare(model, {**case, "_compile_phase": "warm"}, x, autocast)
    return {k: v for k, v in row.items() if k.endswith("_warm") or k.endswith("_warm_s")}


def measure(case: dict[str, Any], run_dir: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    dev = _setup(case)
    model, img = _build(case, dev)
    row: dict[str, Any] = {
        "img_size": img,
        "param_count_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "device_name": _device_name(dev),
        "threads": torch.get_num_threads(),
        "tf32": False,
        "torch_version": torch.__version__,
    }
    row["timm_version"] = pkg_version("timm")  # from metadata: importing timm costs seconds per worker
    if dev.type == "cpu":
        # memory first, before any other phase has allocated: freed memory that the C allocator keeps would
        # otherwise hide what a forward pass needs (eager, fp32, the case's batch size)
        x0 = _input(case, case["batch_size"], img, dev)
        with torch.inference_mode(), memory.RssSampler(0.002) as rss:
            model(x0)
        row["forward_rss_delta_mb"] = rss.peak_delta_mb
        del x0
    row.update(_numerics(case, model, run_dir, dev, img))

    try:
        macs, acts = flops.count_macs_acts(model, _input(case, 1, img, dev))
        row.update(gmacs=macs / 1e9, macts_m=acts / 1e6, flops_method=flops.METHOD)
    except Exception as e:  # noqa: BLE001
        row["flops_method"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    model, x, autocast = _with_precision(model, _input(case, case["batch_size"], img, dev),
                                         case["precision"], dev)

    from ..measure import compile as compile_mod

    runner, compile_row = compile_mod.prepare(model, case, x, autocast)
    row.update(compile_row)

    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def timed() -> Any:
        with torch.inference_mode(), autocast:
            return time_loop(lambda: runner(x), sync, batch_size=case["batch_size"],
                             warmup_iters=case["warmup_iters"], min_iters=case["min_iters"],
                             min_seconds=case["min_seconds"], max_iters=case["max_iters"])

    t, row["cpu_steal_pct"], row["timing_attempts"] = time_loop_quiet(timed, case["max_steal_pct"],
                                                                      case["timing_attempts"])
    recompiles = compile_mod.recompiles_since(row)
    if recompiles is not None:
        row["recompiles"] = recompiles
    row.update(t.stats())
    row.update(samples_per_sec=t.samples_per_sec, step_time_ms=t.step_time_ms, iters=t.iters, timed_s=t.loop_s,
               first_call_s=t.first_call_s, latencies_ms=t.latencies_ms)
    if dev.type == "cuda":
        row.update(cuda_peak_allocated_mb=torch.cuda.max_memory_allocated(dev) / 1e6,
                   cuda_peak_reserved_mb=torch.cuda.max_memory_reserved(dev) / 1e6,
                   nvml_used_mb=memory.nvml_used_mb(dev.index or 0))
    row["peak_rss_mb"] = memory.peak_rss_mb()
    row["duration_s"] = time.perf_counter() - t_start
    return row
