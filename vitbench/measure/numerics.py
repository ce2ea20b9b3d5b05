"""Numeric agreement of a candidate's output with the reference's, on numpy arrays (framework-neutral).

A broken output can never pass: NaN/Inf anywhere, or an all-zero row where the reference's is not, is a
``problem`` (and so a failure with that reason); cosine similarity is undefined (None, a blank cell) wherever a
row has zero norm, never 1.0.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _nonfinite(a: np.ndarray) -> str | None:
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    if not nan and not inf:
        return None
    return f"{nan} NaN and {inf} Inf of {a.size} values"


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """max/mean abs diff, relative error, cosine similarity (lowest over the batch) and top-1 agreement (outputs
    (B, classes)); ``problem`` names why the comparison cannot pass, when it cannot."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    bad_ref, bad_cand = _nonfinite(ref), _nonfinite(cand)
    if bad_ref:
        return {"problem": f"reference output has {bad_ref}: nothing to compare against", "reference_broken": True}
    if bad_cand:
        return {"problem": f"candidate output has {bad_cand}"}
    diff = np.abs(ref - cand)
    r, c = ref.reshape(ref.shape[0], -1), cand.reshape(cand.shape[0], -1)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    out: dict[str, Any] = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "rel_err": float(np.linalg.norm(ref - cand) / np.linalg.norm(ref)) if np.linalg.norm(ref) > 0 else None,
    }
    defined = (nr > 0) & (nc > 0)
    out["cosine_sim"] = float(((r * c).sum(axis=1)[defined] / (nr * nc)[defined]).min()) if defined.all() else None
    if ref.ndim == 2 and ref.shape[1] > 1:
        out["top1_agreement"] = float((ref.argmax(1) == cand.argmax(1)).mean())
    zero_ref, zero_cand = int((nr == 0).sum()), int((nc == 0).sum())
    if zero_ref:
        out["problem"] = (f"reference output is all zeros in {zero_ref} of {len(nr)} samples: a comparison "
                          "would prove nothing (set perturb_std for zero-initialised heads)")
        out["reference_broken"] = True
    elif zero_cand:
        out["problem"] = f"candidate output is all zeros in {zero_cand} of {len(nc)} samples (the reference's is not)"
    return out


def judge(res: dict[str, Any], max_abs: float | None, min_cosine: float | None, max_rel: float | None = None,
          where: str = "") -> dict[str, Any]:
    """numerics_status (ok | fail | error) and, when not ok, numerics_error saying why (``where``: e.g. 'at bf16',
    appended to the reason)."""
    at = f" {where}" if where else ""
    if res.get("problem"):
        return {"numerics_status": "error" if res.get("reference_broken") else "fail",
                "numerics_error": res["problem"] + at}
    why = []
    if max_abs is not None and res["max_abs_diff"] > max_abs:
        why.append(f"max|diff| {res['max_abs_diff']:.3g} > tolerance {max_abs:g}")
    if max_rel is not None and (res.get("rel_err") is None or res["rel_err"] > max_rel):
        why.append(f"relative error {res.get('rel_err')} > tolerance {max_rel:g}"
                   if res.get("rel_err") is None else f"relative error {res['rel_err']:.3g} > tolerance {max_rel:g}")
    if min_cosine is not None and (res.get("cosine_sim") is None or res["cosine_sim"] < min_cosine):
        why.append(f"cosine {res.get('cosine_sim')} < min_cosine {min_cosine:g}")
    if why:
        return {"numerics_status": "fail", "numerics_error": "; ".join(why) + at}
    return {"numerics_status": "ok"}
