"""What machine and software a run measured on. Versions come from package metadata (no heavy imports),
except torch, which is imported to ask it about CUDA."""
from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from . import __version__


def pkg_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    return None


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def row_versions() -> dict[str, Any]:
    """Per-row provenance columns that need no heavy import; ``host``: the machine that measured the row (a Ray
    run's rows come from several)."""
    return {"vitbench_version": __version__, "git_sha": git_sha(), "keras_version": pkg_version("keras"),
            "tf_version": pkg_version("tensorflow"), "host": socket.gethostname()}


def _nvml() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001  (no NVIDIA driver)
        return {}
    try:
        n = pynvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(n):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                         "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(h).total / 1e6})
        drv = pynvml.nvmlSystemGetDriverVersion()
        return {"driver": drv.decode() if isinstance(drv, bytes) else drv, "gpus": gpus}
    finally:
        pynvml.nvmlShutdown()


def _worker_allocator() -> str:
    """How workers set glibc's allocator (runner.launch.steady_allocator), as a worker started now would."""
    if os.environ.get("VITBENCH_MALLOC") == "default":
        return "glibc defaults (dynamic mmap threshold)"
    from .runner.launch import MMAP_THRESHOLD

    return f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {2 * MMAP_THRESHOLD >> 20} MiB (fixed)"


def collect() -> dict[str, Any]:
    """The machine and versions of a run (env.json); torch is imported to describe its build (CUDA, cuDNN,
    threads, GPUs)."""
    import psutil

    env: dict[str, Any] = {
        "vitbench": __version__,
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "versions": {p: pkg_version(p) for p in ("torch", "torchvision", "timm", "tensorflow", "keras", "jax",
                                                 "numpy", "nvidia-ml-py")},
        "nvml": _nvml(),
        "worker_allocator": _worker_allocator(),
    }
    import torch

    env["torch"] = {
        "version": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "num_threads": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
    }
    return env


def torch_device(name: str) -> Any:
    """``torch.device(name)``, made current, TF32 off (fp32 means fp32; timm's benchmark allows TF32)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available in the worker")
        torch.cuda.set_device(dev)
    return dev


def device_name(dev: Any) -> str:
    """The GPU's name, or the CPU's model name (the ``device_name`` column)."""
    import torch

    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()


def check_device(device: str) -> None:
    """Raise DeviceError with one line when ``device`` cannot be used here."""
    from .errors import DeviceError

    if device == "cpu":
        return
    kind, _, idx = device.partition(":")
    if kind != "cuda" or (idx and not idx.isdigit()):
        raise DeviceError(f"--device '{device}': expected cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}, {torch.cuda.device_count()} GPUs visible)")
    n = torch.cuda.device_count()
    if idx and int(idx) >= n:
        raise DeviceError(f"--device {device}: only {n} CUDA device(s) visible (cuda:0..cuda:{n - 1})")


def device_tag(device: str, env: dict[str, Any]) -> str:
    """timm's file-name device part: 'cpu', or e.g. 'cu132-h100'."""
    if device == "cpu":
        return "cpu"
    t = env.get("torch", {})
    cu = (t.get("cuda_version") or "").replace(".", "")
    idx = int(device.partition(":")[2] or 0)
    names = t.get("gpus") or ["gpu"]
    name = names[min(idx, len(names) - 1)].lower()
    for word in ("nvidia", "geforce", "rtx", "tesla"):
        name = name.replace(word, " ")
    short = (name.split() or ["gpu"])[0]
    return f"cu{cu}-{short}" if cu else short
