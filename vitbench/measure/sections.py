"""What a set-up job returns, in typed sections; field names are cases.csv columns, so ``columns()`` is the flat
row part the store writes (None = not measured: an empty cell). Timing columns come from the paired rounds
(executor/rounds), not from here."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


class _Section:
    def columns(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}  # type: ignore[call-overload]


@dataclass
class Provenance(_Section):
    """Where and with what a case ran."""

    device_name: str | None = None
    threads: int | None = None
    tf32: bool | None = None
    torch_version: str | None = None
    timm_version: str | None = None
    keras_version: str | None = None
    tf_version: str | None = None


@dataclass
class Size(_Section):
    img_size: int | None = None
    param_count_m: float | None = None
    gmacs: float | None = None
    macts_m: float | None = None
    flops_method: str | None = None  # how MACs were counted, or why they were not


@dataclass
class Numerics(_Section):
    """Agreement with the pair's reference (measure.numerics); status ok | fail | error | port_failed | skipped |
    reference."""

    numerics_status: str | None = None
    numerics_error: str | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    rel_err: float | None = None
    cosine_sim: float | None = None
    top1_agreement: float | None = None
    tolerance_max_abs: float | None = None
    port_method: str | None = None  # strict (names line up) | hook (the module's port function) | auto (aligned)
    port_tensors: int | None = None  # reference tensors ported
    first_divergence: str | None = None  # the first block beyond the tolerance: 'blocks.3 (max|diff| 0.21)'


@dataclass
class Compile(_Section):
    """Compile cost: the cold start (fresh process and cache) and, for torch.compile, the warm start (second
    launch, Inductor's cache kept). ``frames_after_first_call`` is kept to count recompiles while timing; it is
    not a column."""

    eager_first_call_s: float | None = None
    compile_first_call_cold_s: float | None = None
    compile_cold_s: float | None = None
    compile_cache_hits_cold: int | None = None
    compile_steal_pct_cold: float | None = None
    compile_first_call_warm_s: float | None = None
    compile_warm_s: float | None = None
    compile_cache_hits_warm: int | None = None
    compile_steal_pct_warm: float | None = None
    compile_attempts: int | None = None
    regions: str | None = None
    graph_breaks: int | None = None
    recompiles: int | None = None
    compiled_max_abs_diff: float | None = None
    frames_after_first_call: int | None = field(default=None, metadata={"column": False})

    def columns(self) -> dict[str, Any]:
        out = super().columns()
        out.pop("frames_after_first_call", None)
        return out

    def warm_columns(self) -> dict[str, Any]:
        return {k: v for k, v in self.columns().items() if k.endswith(("_warm", "_warm_s"))}


@dataclass
class Memory(_Section):
    forward_rss_delta_mb: float | None = None  # one eager forward at the case's batch size, before anything else
    peak_rss_mb: float | None = None
    cuda_peak_allocated_mb: float | None = None
    cuda_peak_reserved_mb: float | None = None
    nvml_used_mb: float | None = None


@dataclass
class SetupResult:
    """A case measured but for its timing: the sections, the first call and the warm-up's seconds per call."""

    provenance: Provenance = field(default_factory=Provenance)
    size: Size = field(default_factory=Size)
    numerics: Numerics = field(default_factory=Numerics)
    compile: Compile = field(default_factory=Compile)
    memory: Memory = field(default_factory=Memory)
    first_call_s: float | None = None
    phase_s: dict[str, float] = field(default_factory=dict)  # wall seconds of each phase: build, numerics, ...

    def columns(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in (self.provenance, self.size, self.numerics, self.compile, self.memory):
            out.update(part.columns())
        if self.first_call_s is not None:
            out["first_call_s"] = self.first_call_s
        out.update({f"phase_{k}_s": v for k, v in self.phase_s.items()})
        return out

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase ``name`` (build, flops_memory, numerics, compile, warmup)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_s[name] = self.phase_s.get(name, 0.0) + time.perf_counter() - t0
