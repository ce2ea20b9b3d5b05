"""Peak memory: process RSS (CPU) and CUDA allocator / NVML figures (GPU), in MB (1e6 bytes)."""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1e3 if sys.platform != "darwin" else kb / 1e6


def nvml_used_mb(index: int) -> float | None:
    """Device memory in use (all processes), from NVML; None where NVML is not available."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            return info.used / 1e6
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001  (no driver, no NVML: the column stays empty)
        return None
