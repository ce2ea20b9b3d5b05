"""What workers leave for each other in the run directory, in one place: a pair's reference artifacts (its
weights, input and output, for the candidates' port and numerics) and a fine-tune pair's initial weights, as
``.npz`` files written atomically; weights are stored under ``w/<state_dict key>``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = "reference.npz"
FINETUNE_INIT = "finetune-init.npz"


def safe_name(text: str) -> str:
    """``text`` usable as a file or folder name: anything but letters, digits and -_. becomes _."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def pair_dir(run_dir: str | Path, pair: str, device: str) -> Path:
    return Path(run_dir) / "artifacts" / f"{safe_name(pair)}-{device.replace(':', '')}"


def artifact_path(run_dir: str | Path, pair: str, device: str) -> Path:
    """The pair's reference artifacts: ``x`` (input), ``y`` (output), ``w/...`` (weights)."""
    return pair_dir(run_dir, pair, device) / REFERENCE


def init_path(run_dir: str | Path, pair: str, device: str) -> Path:
    """A fine-tune pair's initial weights (its reference, freshly built) while the run lasts."""
    return pair_dir(run_dir, pair, device) / FINETUNE_INIT


def save_npz(path: Path, weights: dict[str, np.ndarray], **arrays: np.ndarray) -> None:
    """Write ``arrays`` and ``weights`` (as ``w/<key>``) to ``path`` atomically (a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays, **{f"w/{k}": v for k, v in weights.items()})
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, np.ndarray]:
    art = np.load(path)
    return {k[2:]: art[k] for k in art.files if k.startswith("w/")}


def load_arrays(path: Path) -> Any:
    """The whole file (``x``, ``y`` and the weights), opened lazily."""
    return np.load(path)


def reference_state(case: Any, run_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The reference's weights a candidate is ported from (None: a reference, ``port: false``, or none written)."""
    path = artifact_path(run_dir, case.pair, case.device)
    if case.role != "candidate" or not case.port or not path.exists():
        return None
    return load_weights(path)
