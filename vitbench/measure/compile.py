"""torch.compile modes for a case: ``eager``, ``full`` (torch.compile(model)), ``regional`` (each repeated
block compiled in place, so state_dict keys do not change) and ``hierarchical`` (the whole model compiled, each
repeated block marked ``torch.compiler.nested_compile_region``: traced once, its graph reused by the others).

Cold compile time = first compiled call (fresh private Inductor cache dir, set by the runner before torch is
imported, plus ``torch.compiler.reset()``) minus the eager first call. The warm figure comes from a second
worker process that reuses the same cache dir: what a user sees on the second launch.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..modes import TORCH_COMPILED
from .sections import Compile


def find_regions(model: nn.Module, attr: str | None = None) -> tuple[str, list[nn.Module]]:
    """The repeated blocks to compile: ``attr`` (dotted path) if given, else ``model.compile_regions``, else the
    ModuleList/Sequential of same-class children that holds the most parameters."""
    names: list[str]
    if attr:
        names = [attr]
    elif getattr(model, "compile_regions", None):
        names = list(model.compile_regions)
    else:
        best, best_params = None, 0
        for name, mod in model.named_modules():
            kids = list(mod.children())
            if not name or not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(kids) < 2:
                continue
            if len({type(k) for k in kids}) != 1:
                continue
            n = sum(p.numel() for p in mod.parameters())
            if n > best_params:
                best, best_params = name, n
        if best is None:
            raise ValueError(f"regional compile: no repeated blocks found in {type(model).__name__}; "
                             "name them with 'regions:' in the suite")
        names = [best]
    blocks: list[nn.Module] = []
    for n in names:
        try:
            container = model.get_submodule(n)
        except AttributeError:
            raise ValueError(f"regional compile: {type(model).__name__} has no submodule '{n}'") from None
        blocks.extend(container.children())
    return ",".join(names), blocks


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "frames": counters["frames"]["total"],
        "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
        "cache_misses": counters["inductor"]["fxgraph_cache_miss"],
    }


def _timed_call(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    y = fn()
    sync()
    return time.perf_counter() - t0, y


def output_tensor(y: Any) -> torch.Tensor:
    """The tensor of a model's output that is compared: the output itself, the last of a list/tuple (e.g. the
    deepest level of a multi-level backbone), or the first value of a dict."""
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, (list, tuple)) and y:
        return output_tensor(y[-1])
    if isinstance(y, dict) and y:
        return output_tensor(next(iter(y.values())))
    raise TypeError(f"cannot compare a model output of type {type(y).__name__}")


def _nested_region_class(cls: type) -> type:
    """A subclass of a block's class whose ``forward`` is ``torch.compiler.nested_compile_region``'s, as the
    decorator on the class would make it. Only the blocks given it change (their state_dict keys do not). Marking
    each block's bound ``forward`` instead is wrong on torch 2.14: the reused graph kept the first block's
    weights (max|diff| 0.41 on a 2-block ViT), so the mark goes on the class's function, as documented."""
    return type(cls.__name__, (cls,), {"forward": torch.compiler.nested_compile_region(cls.forward),
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def apply_compile(
    model: nn.Module, case: Any, x: torch.Tensor, autocast: contextlib.AbstractContextManager,
    fresh: bool = True, phase: str = "cold",
) -> tuple[Callable[[torch.Tensor], Any], Compile]:
    """Apply the case's compile mode; returns the callable to time and the compile section (``phase``: 'cold', a
    fresh process and cache, or 'warm', the second launch). ``fresh``: reset dynamo first; a timing session
    hosting several compiled sides keeps what the sides before compiled."""
    mode = case.compile_mode
    if mode == "eager":
        return model, Compile()
    if mode not in TORCH_COMPILED:
        raise ValueError(f"compile mode '{mode}' is not a torch.compile mode ({', '.join(TORCH_COMPILED)})")
    dev = x.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    opts = {k: v for k, v in case.settings.compile_options.model_dump().items() if v is not None}
    with torch.inference_mode(), autocast:
        eager_first, y_eager = _timed_call(lambda: model(x), sync)
    from torch._dynamo.utils import counters

    if fresh:
        torch.compiler.reset()
        counters.clear()
    sec = Compile(eager_first_call_s=eager_first)
    if mode == "full":
        runner: Callable[[torch.Tensor], Any] = torch.compile(model, **opts)
    elif mode == "hierarchical":
        if not hasattr(torch.compiler, "nested_compile_region"):
            raise ValueError(f"compile mode hierarchical needs torch.compiler.nested_compile_region (torch >= 2.8; "
                             f"this is {torch.__version__})")
        where, blocks = find_regions(model, case.settings.regions)
        marked: dict[type, type] = {}
        for blk in blocks:  # each block a nested region: traced once, its graph stamped out for the others
            blk.__class__ = marked.setdefault(type(blk), _nested_region_class(type(blk)))
        runner = torch.compile(model, **opts)
        sec.regions = f"{where} x{len(blocks)} (nested)"
    else:
        where, blocks = find_regions(model, case.settings.regions)
        for blk in blocks:
            blk.compile(**opts)  # in place: the module tree and state_dict keys stay as they were
        runner = model
        sec.regions = f"{where} x{len(blocks)}"
    from .contention import cpu_times, steal_pct

    cpu0 = cpu_times()
    with torch.inference_mode(), autocast:
        first, y_comp = _timed_call(lambda: runner(x), sync)
    c = _counters()
    setattr(sec, f"compile_first_call_{phase}_s", first)
    setattr(sec, f"compile_{phase}_s", first - eager_first)
    setattr(sec, f"compile_cache_hits_{phase}", c["cache_hits"])
    setattr(sec, f"compile_steal_pct_{phase}", steal_pct(cpu0, cpu_times()))
    from torch._dynamo.utils import compile_times

    print(f"compile ({mode}, {phase}) first call {first:.2f}s; dynamo/inductor phases:\n"
          f"{compile_times(repr='str')}", flush=True)
    sec.graph_breaks = c["graph_breaks"]
    sec.frames_after_first_call = c["frames"]
    sec.compiled_max_abs_diff = (output_tensor(y_comp).float() - output_tensor(y_eager).float()).abs().max().item()
    # numerics are compared on the eager model: a compiled model that computes something else must not be timed
    # as if it were the same network (10x the suite's tolerance: inductor may reorder float sums)
    limit = 10 * (getattr(getattr(case.settings, "tolerance", None), "max_abs", None) or 1e-4)
    if not sec.compiled_max_abs_diff <= limit:
        raise ValueError(f"{mode} torch.compile changed the output: max|compiled - eager| = "
                         f"{sec.compiled_max_abs_diff:.3g} > {limit:.3g} (10x the suite's max_abs)")
    return runner, sec


def frames_compiled() -> int:
    """Frames dynamo has compiled in this process (after the first compiled call, each new one is a recompile)."""
    return _counters()["frames"]
