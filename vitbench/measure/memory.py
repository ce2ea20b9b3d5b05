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


class RssSampler:
    """Samples this process's RSS in a thread while a block runs: ``peak_delta_mb`` is the highest RSS seen minus
    the RSS at the start. Meaningful only before the process has freed large buffers (the C allocator keeps some
    and reuses them without RSS growth), so the worker takes it first."""

    def __init__(self, interval_s: float = 0.01) -> None:
        import threading

        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline = self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_delta_mb(self) -> float:
        return (self.peak - self.baseline) / 1e6
