"""Where two models part: the outputs of every block (and the patch embedding) of a reference and a candidate on
the same input, compared in order, and the attention maps where both can give them.

The reference records, on the numerics input, the output of each *block*: a module whose name ends in a whole
number (``blocks.3``, ``layers.1.blocks.2``: the children of a ModuleList/Sequential), and of ``patch_embed`` when
it has one; for blocks with a timm-style attention (``attn`` with ``qkv`` and ``num_heads``), the attention map of
the first sample, softmax(q k^T * scale), from the output of its fused qkv in the same forward (as vit-pytorch's
Recorder takes the map the model computed).
The candidate records the same at its own names (the same names, or the ones the weight alignment pairs with
them), and each pair is compared: ``first_divergence`` is the first block beyond the tolerance.

Where names cannot pair the two (a Keras side, or a reference of the other framework), the outputs of timm's
``forward_intermediates(x, intermediates_only=True)`` (NCHW maps, timm's default) are compared instead, by index
(``intermediates.<k>``), when both sides have it and give as many. This module imports torch only where a torch
model is recorded.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

BLOCK = re.compile(r"(^|\.)\d+$")


def block_names(model: torch.nn.Module) -> list[str]:
    """The modules compared block by block, in registration order: ``patch_embed``, then the children of every
    ModuleList/Sequential whose children are two or more of one class (stages, and the blocks inside them)."""
    import torch

    stacks = set()
    for name, m in model.named_modules():
        kids = list(m.children())
        if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and len(kids) >= 2 \
                and len({type(k) for k in kids}) == 1:
            stacks.add(name)
    return [n for n, _ in model.named_modules()
            if n == "patch_embed" or (BLOCK.search(n) and n.rpartition(".")[0] in stacks)]


def _attn_map(attn: torch.nn.Module, qkv_out: torch.Tensor) -> torch.Tensor | None:
    """softmax(q k^T * scale) of the first sample, from the output of the attention's fused ``qkv`` Linear in the
    forward being recorded (timm's Attention layout: ``num_heads``, optional ``q_norm``/``k_norm``): the map the
    block computed, without computing qkv again; None where the module is not of that kind."""
    import torch

    heads = getattr(attn, "num_heads", None)
    if not heads or qkv_out.dim() != 3:
        return None
    n = qkv_out.shape[1]
    q, k, _ = qkv_out[:1].reshape(1, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q = getattr(attn, "q_norm", torch.nn.Identity())(q)
    k = getattr(attn, "k_norm", torch.nn.Identity())(k)
    scale = getattr(attn, "scale", q.shape[-1] ** -0.5)
    return (q @ k.transpose(-2, -1) * scale).softmax(-1)[0]


def record(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None,
           run: Callable[[torch.Tensor], Any] | None = None) -> dict[str, np.ndarray]:
    """The outputs of ``names`` (default: ``block_names``) for input ``x`` as ``b/<name>``, and attention maps of
    the blocks that have a timm-style ``attn`` as ``a/<name>`` (float32 numpy)."""
    return record_output(model, x, names, run)[0]


def record_output(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None,
                  run: Callable[[torch.Tensor], Any] | None = None) -> tuple[dict[str, np.ndarray], Any]:
    """``record``, and what the forward returned: the block outputs are taken in the forward whose output is
    compared, not in one more."""
    import torch

    from .compile import output_tensor

    names = block_names(model) if names is None else names
    mods = dict(model.named_modules())
    out: dict[str, np.ndarray] = {}
    handles = []

    def keep(name: str) -> Callable[..., None]:
        def hook(mod: Any, inp: Any, res: Any) -> None:
            try:
                out[f"b/{name}"] = output_tensor(res).detach().float().cpu().numpy()
            except TypeError:
                pass
        return hook

    def keep_attn(name: str, attn: torch.nn.Module) -> Callable[..., None]:
        def hook(mod: Any, inp: Any, res: Any) -> None:  # on attn.qkv: its output is q, k, v
            a = _attn_map(attn, res) if isinstance(res, torch.Tensor) else None
            if a is not None:
                out[f"a/{name}"] = a.detach().float().cpu().numpy()
        return hook

    for name in names:
        m = mods.get(name)
        if m is None:
            continue
        handles.append(m.register_forward_hook(keep(name)))
        attn = getattr(m, "attn", None)
        if isinstance(attn, torch.nn.Module) and isinstance(getattr(attn, "qkv", None), torch.nn.Linear):
            handles.append(attn.qkv.register_forward_hook(keep_attn(name, attn)))
    try:
        with torch.inference_mode():
            result = (run or model)(x)
    finally:
        for h in handles:
            h.remove()
    return out, result


def candidate_names(ref_names: list[str], cand: torch.nn.Module, pairs: list[tuple[str, str]] | None) -> dict[str, str]:
    """For each of the reference's block names, the candidate's module: the same name where the candidate has it,
    else the one the weight alignment's ``pairs`` (reference tensor, candidate tensor) put in its place."""
    mods = dict(cand.named_modules())
    out = {}
    for rn in ref_names:
        if rn in mods:
            out[rn] = rn
            continue
        if not pairs:
            continue
        heads = {_prefix_like(cn, rn) for r, c in pairs if r.startswith(rn + ".") for cn in (c,)}
        heads.discard(None)
        if len(heads) == 1:
            (h,) = heads
            if h in mods:
                out[rn] = h
    return out


def _prefix_like(cand_tensor: str, ref_module: str) -> str | None:
    """The prefix of ``cand_tensor`` with as many numbered parts as ``ref_module`` (``units.3`` of
    ``units.3.to_q.weight`` for ``blocks.3``)."""
    want = sum(p.isdigit() for p in ref_module.split("."))
    parts, seen = [], 0
    for p in cand_tensor.split("."):
        parts.append(p)
        seen += p.isdigit()
        if seen == want and p.isdigit():
            return ".".join(parts)
    return None


def compare_blocks(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], names: dict[str, str],
                   judge: Callable[[dict[str, Any]], bool]) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of the per-block table (reference order) and the first divergence, ``'blocks.3 (max|diff| 0.21)'``:
    the first block ``judge(comparison)`` says is beyond the tolerance."""
    from .numerics import compare

    rows, first = [], None
    for rn, cn in names.items():
        if f"b/{rn}" not in ref or f"b/{cn}" not in cand:
            continue
        if ref[f"b/{rn}"].shape != cand[f"b/{cn}"].shape:  # a row that says so, never a silent gap
            rows.append({"block": rn, "candidate_module": cn, "problem": f"not compared: shape "
                         f"{cand[f'b/{cn}'].shape} vs the reference's {ref[f'b/{rn}'].shape}"})
            continue
        res = compare(ref[f"b/{rn}"], cand[f"b/{cn}"])
        row = {"block": rn, "candidate_module": cn, **{k: res.get(k) for k in (
            "max_abs_diff", "mean_abs_diff", "rel_err", "cosine_sim")}, "attn_max_abs_diff": None,
            "problem": res.get("problem")}
        if f"a/{rn}" in ref and f"a/{cn}" in cand and ref[f"a/{rn}"].shape == cand[f"a/{cn}"].shape:
            row["attn_max_abs_diff"] = float(np.abs(ref[f"a/{rn}"] - cand[f"a/{cn}"]).max())
        rows.append(row)
        if first is None and not judge(res):
            diff = res.get("max_abs_diff")
            first = f"{rn} ({res['problem']})" if res.get("problem") else f"{rn} (max|diff| {diff:.3g})"
    return rows, first


def intermediates(values: Any, to_numpy: Callable[[Any], np.ndarray]) -> dict[str, np.ndarray]:
    """``i/<k>``: the maps a timm-style ``forward_intermediates(x, intermediates_only=True)`` returned, float32
    numpy; empty when it returned something else (tuples of prefix tokens, a dict)."""
    if not isinstance(values, (list, tuple)) or any(isinstance(v, (list, tuple, dict)) for v in values):
        return {}
    return {f"i/{k}": np.asarray(to_numpy(v), np.float32) for k, v in enumerate(values)}


def compare_intermediates(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray],
                          judge: Callable[[dict[str, Any]], bool]) -> tuple[list[dict[str, Any]], str | None]:
    """``compare_blocks`` over the two sides' ``i/<k>`` maps, labelled ``intermediates.<k>``; nothing when one side
    has none, one row saying so when the counts differ (then they are not the same blocks)."""
    def maps(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {f"b/intermediates.{k[2:]}": v for k, v in d.items() if k.startswith("i/")}

    r, c = maps(ref), maps(cand)
    if not r or not c:
        return [], None
    if len(r) != len(c):
        return [{"block": "intermediates", "problem": f"not compared: {len(c)} maps vs the reference's {len(r)}"}], None
    names = {k[2:]: k[2:] for k in sorted(r, key=lambda k: int(k.rpartition(".")[2]))}
    return compare_blocks(r, c, names, judge)


TABLE = ["block", "candidate_module", "max_abs_diff", "mean_abs_diff", "rel_err", "cosine_sim", "attn_max_abs_diff",
         "problem"]


def write_table(run_dir: str | Path, case_id: str, rows: list[dict[str, Any]]) -> None:
    """``DIR/numerics/<case_id>.csv``: the per-block table."""
    out = Path(run_dir) / "numerics" / f"{case_id}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE)
        w.writeheader()
        w.writerows(rows)
