"""Numeric agreement of a candidate's output with the reference's, on numpy arrays (framework-neutral)."""
from __future__ import annotations

import numpy as np


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """max/mean abs diff, relative error, cosine similarity and top-1 agreement (outputs (B, classes))."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    diff = np.abs(ref - cand)
    r, c = ref.reshape(ref.shape[0], -1), cand.reshape(cand.shape[0], -1)
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    cos = np.where(denom > 0, (r * c).sum(axis=1) / np.where(denom > 0, denom, 1), 1.0)
    out = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "rel_err": float(np.linalg.norm(ref - cand) / max(np.linalg.norm(ref), 1e-30)),
        "cosine_sim": float(cos.min()),
    }
    if ref.ndim == 2 and ref.shape[1] > 1:
        out["top1_agreement"] = float((ref.argmax(1) == cand.argmax(1)).mean())
    return out
