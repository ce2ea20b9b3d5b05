"""Aligning two implementations' weights: which tensor of the reference feeds which parameter of the candidate,
found from names, shapes, known layout changes and block structure, framework-neutral (numpy shapes only).

How it decides, per tensor:

1. **name**: the same name (and a shape that fits) in both.
2. Both sides are cut into *modules* (a name without its last part: ``blocks.3.attn.qkv``), each with a kind read
   from its tensors (linear: a 2-D weight; conv: 4-D; norm: 1-D weight and bias; param: a bare tensor such as
   ``cls_token``), and grouped by *block path*: the whole-number parts of the name (``blocks.3`` -> (3,),
   ``layers.1.blocks.2`` -> (1, 2)). Groups pair up by equal paths (or, when both sides number their blocks
   differently, by their order).
3. Within a pair of groups, a fused ``qkv`` linear (3C x C) pairs with three C x C linears named q/k/v (``to_q``,
   ``query``, ``q_proj``...): **qkv**, each taking its third.
4. The rest is bucketed by kind and shape (after the layout change between frameworks: a torch Linear (out, in) is
   a Keras Dense kernel (in, out), a conv OIHW is HWIO): one reference module and one candidate module in a bucket
   pair up by **shape**; several pair up by **role** when the names say which is which (the LayerNorm before
   attention vs the one before the MLP: ``norm1``/``ln_1``/``ln_attn`` vs ``norm2``/``ln_2``/``ln_ff``; the
   attention output vs q/k/v). Where two modules are interchangeable and the names do not decide, nothing is
   guessed: both are reported ``ambiguous``.

The result lists every match with how it was made and a confidence, and what is left: reference tensors no
parameter takes (``unexpected``), parameters no tensor fills (``missing``), and ambiguous ones. A port is only made
from a ``complete`` alignment (one-to-one, nothing left).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

LEAF_ALIASES = {"kernel": "weight", "gamma": "weight", "scale": "weight", "beta": "bias", "embeddings": "weight"}

# roles a module name can say it plays, per kind; a word of its name (split on . and _) from these lists
ROLES: dict[str, dict[str, set[str]]] = {
    "linear": {
        "qkv": {"qkv", "to_qkv", "in_proj", "qkv_proj", "wqkv", "c_attn"},
        "q": {"q", "query", "to_q", "wq", "q_proj", "queries"},
        "k": {"k", "key", "to_k", "wk", "k_proj", "keys"},
        "v": {"v", "value", "to_v", "wv", "v_proj", "values"},
        "attn_out": {"proj", "out_proj", "o", "o_proj", "to_out", "wo", "merge", "attn_out", "c_proj"},
        "mlp_in": {"fc1", "up", "up_proj", "ff_in", "w1", "lin1", "fc_in", "intermediate", "c_fc", "gate"},
        "mlp_out": {"fc2", "down", "down_proj", "ff_out", "w2", "lin2", "fc_out"},
        "head": {"head", "classifier", "fc", "logits", "cls_head"},
    },
    "norm": {
        "norm_attn": {"norm1", "ln1", "ln_1", "ln_a", "norm_a", "attn", "attention", "pre", "before", "sa",
                      "attn_norm", "norm_attn", "ln_attn", "input_layernorm", "layernorm_before"},
        "norm_mlp": {"norm2", "ln2", "ln_2", "ln_b", "norm_b", "ff", "ffn", "mlp", "post", "after", "ffn_norm",
                     "norm_mlp", "ln_ff", "post_attention_layernorm", "layernorm_after"},
        "norm_final": {"norm", "final_ln", "ln_f", "final_norm", "ln_post", "encoder_norm", "fc_norm", "ln_final"},
    },
}

KERAS_LAYOUT = ("automatic port: not tried: the reference's weights are a Keras model's own variables (its provider "
                "cannot name them as timm's), in Keras layout; define port_weights (Keras) or checkpoint_filter_fn "
                "(torch) in the candidate's module")


@dataclass(frozen=True)
class Tensor:
    """One named tensor of a side: its full name, shape (in its own layout) and registration order."""

    name: str
    shape: tuple[int, ...]
    order: int


@dataclass
class Module:
    name: str  # the tensor names' common prefix ('' for a bare tensor: then ``tensors`` has one, named as it)
    kind: str  # linear | conv | norm | param
    tensors: dict[str, Tensor]  # leaf (weight, bias, or the bare tensor's own name) -> tensor
    path: tuple[int, ...]  # block path: the whole-number parts of the name
    order: int

    def shape(self, framework: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The tensors' shapes in torch's layout, by leaf: what two modules must share to pair up."""
        out = []
        for leaf, t in sorted(self.tensors.items()):
            s = t.shape
            if framework == "keras" and self.kind == "linear" and leaf == "weight" and len(s) == 2:
                s = (s[1], s[0])
            elif framework == "keras" and self.kind == "conv" and leaf == "weight" and len(s) == 4:
                s = (s[3], s[2], s[0], s[1])
            out.append((leaf, s))
        return tuple(out)

    def roles(self) -> set[str]:
        words = {w for part in self.name.lower().split(".") if not part.isdigit() for w in (part, *part.split("_"))}
        words |= {w for part in re.split(r"[./]", self.name.lower()) for w in (part,) if not part.isdigit()}
        return {role for role, names in ROLES.get(self.kind, {}).items() if words & names}


@dataclass
class Match:
    """``reference`` feeds ``candidate`` through ``transform`` (``same``, ``linear``, ``conv``, ``qkv_part N``);
    ``how``: name | qkv | shape | role; ``confidence`` in (0, 1]."""

    reference: str
    candidate: str
    transform: str
    how: str
    confidence: float


@dataclass
class Alignment:
    matches: list[Match] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # candidate tensors no reference tensor fills
    unexpected: list[str] = field(default_factory=list)  # reference tensors no candidate tensor takes
    ambiguous: list[str] = field(default_factory=list)  # interchangeable and undecided: 'ref a, b ~ cand x, y'

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.ambiguous)

    def by_how(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for m in self.matches:
            out[m.how] += 1
        return dict(out)

    def summary(self) -> str:
        counts = ", ".join(f"{n} by {how}" for how, n in sorted(self.by_how().items()))
        left = [f"{len(self.missing)} missing (e.g. {', '.join(self.missing[:3])})" if self.missing else "",
                f"{len(self.unexpected)} unexpected (e.g. {', '.join(self.unexpected[:3])})" if self.unexpected
                else "", f"{len(self.ambiguous)} ambiguous ({'; '.join(self.ambiguous[:2])})" if self.ambiguous
                else ""]
        return f"{len(self.matches)} matched ({counts or 'none'})" + "".join(f"; {x}" for x in left if x)


def _leaf(name: str) -> tuple[str, str]:
    """(module prefix, leaf) of a tensor name, with '/' (Keras paths) read as '.'."""
    name = name.replace("/", ".")
    prefix, _, leaf = name.rpartition(".")
    return prefix, LEAF_ALIASES.get(leaf, leaf)


def modules(tensors: list[Tensor], framework: str = "torch") -> list[Module]:
    """A side's tensors grouped into modules (by name prefix), each with a kind."""
    groups: dict[str, dict[str, Tensor]] = {}
    for t in tensors:
        prefix, leaf = _leaf(t.name)
        if leaf not in ("weight", "bias"):  # a bare tensor (cls_token, pos_embed, a table): a module of its own
            groups.setdefault(t.name.replace("/", "."), {})["value"] = t
        else:
            groups.setdefault(prefix, {})[leaf] = t
    stacks = _keras_stacks(groups) if framework == "keras" else {}
    out = []
    for name, ts in groups.items():
        w = ts.get("weight")
        if w is not None and len(w.shape) == 2:
            kind = "linear"
        elif w is not None and len(w.shape) == 4:
            kind = "conv"
        elif w is not None and len(w.shape) == 1 and "bias" in ts and ts["bias"].shape == w.shape:
            kind = "norm"
        else:
            kind = "param"
        path = _keras_path(name, stacks) if framework == "keras" else block_path(name)
        out.append(Module(name, kind, ts, path, min(t.order for t in ts.values())))
    return sorted(out, key=lambda m: m.order)


def block_path(name: str) -> tuple[int, ...]:
    """The whole-number parts of a module name: ``blocks.3.attn`` -> (3,), ``layers.1.blocks.2.mlp`` -> (1, 2)."""
    return tuple(int(p) for p in name.split(".") if p.isdigit())


_NUMBERED = re.compile(r"^(.*?)(?:_(\d+))?$")


def _keras_stacks(groups: dict[str, Any]) -> dict[tuple[int, str], int]:
    """Keras names its layers ``block``, ``block_1``, ``block_2``...: (depth, name without the number) -> how many
    distinct layers at that depth share it. Two or more make a stack of blocks."""
    seen: dict[tuple[int, str], set[str]] = defaultdict(set)
    for name in groups:
        for depth, part in enumerate(name.split(".")):
            seen[(depth, _NUMBERED.match(part).group(1))].add(part)  # type: ignore[union-attr]
    return {k: len(v) for k, v in seen.items()}


def _keras_path(name: str, stacks: dict[tuple[int, str], int]) -> tuple[int, ...]:
    """A Keras module's block: the first part of its path that is one of a stack (``block`` is 0, ``block_3`` 3)."""
    for depth, part in enumerate(name.split(".")):
        m = _NUMBERED.match(part)
        if m and stacks.get((depth, m.group(1)), 0) >= 2:
            return (int(m.group(2) or 0),)
    return ()


def _transform(kind: str, leaf: str, framework: str) -> str:
    if framework == "keras" and leaf == "weight" and kind in ("linear", "conv"):
        return kind
    return "same"


def _pair(ref: Module, cand: Module, framework: str, how: str, confidence: float, out: Alignment) -> None:
    for leaf, t in sorted(cand.tensors.items()):
        out.matches.append(Match(ref.tensors[leaf].name, t.name, _transform(cand.kind, leaf, framework), how,
                                 confidence))


def align(reference: list[Tensor], candidate: list[Tensor], framework: str = "torch") -> Alignment:
    """Align a reference's tensors (torch layout, its names) with a candidate's (``framework``'s layout)."""
    out = Alignment()
    ref_by_name = {t.name: t for t in reference}
    rest_ref = list(reference)
    rest_cand = []
    for t in candidate:  # 1. the same name, a shape that fits
        r = ref_by_name.get(t.name)
        if r is not None and framework == "torch" and r.shape == t.shape:
            out.matches.append(Match(r.name, t.name, "same", "name", 1.0))
            rest_ref.remove(r)
        else:
            rest_cand.append(t)
    rmods, cmods = modules(rest_ref), modules(rest_cand, framework)
    rgroups, cgroups = _groups(rmods), _groups(cmods)
    rkeys, ckeys = sorted(rgroups), sorted(cgroups)
    if set(rkeys) != set(ckeys) and len(rkeys) == len(ckeys):
        pairing = list(zip(rkeys, ckeys, strict=True))  # numbered differently (from 1, say): pair in order
    else:
        pairing = [(k, k) for k in rkeys if k in cgroups]
    paired_r, paired_c = {r for r, _ in pairing}, {c for _, c in pairing}
    for rk, ck in pairing:
        _align_group(rgroups[rk], cgroups[ck], framework, out)
    for k in rkeys:
        if k not in paired_r:
            out.unexpected += [t.name for m in rgroups[k] for t in m.tensors.values()]
    for k in ckeys:
        if k not in paired_c:
            out.missing += [t.name for m in cgroups[k] for t in m.tensors.values()]
    return out


def _groups(mods: list[Module]) -> dict[tuple[int, ...], list[Module]]:
    g: dict[tuple[int, ...], list[Module]] = defaultdict(list)
    for m in mods:
        g[m.path].append(m)
    return dict(g)


def _align_group(rmods: list[Module], cmods: list[Module], framework: str, out: Alignment) -> None:
    rmods, cmods = list(rmods), list(cmods)
    # 3. a fused qkv against separate q, k, v
    for r in [m for m in rmods if m.kind == "linear" and "qkv" in m.roles()]:
        w = r.tensors.get("weight")
        if w is None or w.shape[0] % 3 or any(m.kind == "linear" and m.shape(framework) == r.shape("torch")
                                              for m in cmods):
            continue
        part_shape = tuple((leaf, (s[0] // 3, *s[1:])) for leaf, s in r.shape("torch"))
        picked = []
        for role in ("q", "k", "v"):
            hits = [m for m in cmods if m.kind == "linear" and role in m.roles() and m.shape(framework) == part_shape]
            if len(hits) == 1:
                picked.append(hits[0])
        if len(picked) == 3:
            for part, c in enumerate(picked):
                for leaf, t in sorted(c.tensors.items()):
                    base = _transform(c.kind, leaf, framework)
                    out.matches.append(Match(r.tensors[leaf].name, t.name, f"qkv_part {part} {base}", "qkv", 0.9))
                cmods.remove(c)
            rmods.remove(r)
    # 4. by kind and shape; several of one shape by the roles their names say
    buckets: dict[tuple, tuple[list[Module], list[Module]]] = defaultdict(lambda: ([], []))
    for m in rmods:
        buckets[(m.kind, m.shape("torch"))][0].append(m)
    for m in cmods:
        buckets[(m.kind, m.shape(framework))][1].append(m)
    for (_, _), (rs, cs) in buckets.items():
        if len(rs) == 1 and len(cs) == 1:
            _pair(rs[0], cs[0], framework, "shape", 0.8, out)
            continue
        rs, cs = list(rs), list(cs)
        for r in list(rs):
            roles = r.roles()
            hits = [c for c in cs if roles and c.roles() & roles]
            back = [x for x in rs if roles and hits and x.roles() & hits[0].roles()]
            if len(hits) == 1 and back == [r]:
                _pair(r, hits[0], framework, "role", 0.7, out)
                rs.remove(r)
                cs.remove(hits[0])
        if len(rs) == 1 and len(cs) == 1:
            _pair(rs[0], cs[0], framework, "shape", 0.6, out)  # the last of its kind and shape: by elimination
            continue
        if rs and cs:
            out.ambiguous.append(f"reference {', '.join(m.name for m in rs)} ~ candidate "
                                 f"{', '.join(m.name for m in cs)} (same kind and shape, names do not decide)")
        elif rs:
            out.unexpected += [t.name for m in rs for t in m.tensors.values()]
        else:
            out.missing += [t.name for m in cs for t in m.tensors.values()]


# --- using an alignment: a port, and the port function a user can keep -------------------------------------------

def _take(w, transform: str):  # noqa: ANN001, ANN202  (numpy arrays or torch tensors)
    """The reference tensor ``w`` as the candidate's parameter needs it (``transform`` of a Match)."""
    parts = transform.split()
    if parts[0] == "qkv_part":
        n = w.shape[0] // 3
        w = w[int(parts[1]) * n:(int(parts[1]) + 1) * n]
        parts = parts[2:]
    if parts[0] == "linear":
        return w.T
    if parts[0] == "conv":
        return w.transpose(2, 3, 1, 0)
    return w


def ported_state(alignment: Alignment, state: dict) -> dict:
    """The candidate's state under its own names, from the reference's ``state`` through a complete alignment."""
    if not alignment.complete:
        raise ValueError(f"the alignment is not complete: {alignment.summary()}")
    return {m.candidate: _take(state[m.reference], m.transform) for m in alignment.matches}


def auto_port(strict: Exception, state: dict, candidate: list[Tensor], framework: str) -> dict:
    """The automatic port a provider falls back on when its strict port raised ``strict`` (a ``PortError``): the
    candidate's state under its own names through a complete alignment; else ``strict`` again (its missing and
    unexpected names kept) with the hint of what was tried. Not tried on a Keras reference's own variables (names
    with '/': Keras layout, not the torch layout the alignment reads)."""
    from .port import PortError

    missing, unexpected = getattr(strict, "missing", []), getattr(strict, "unexpected", [])
    if any("/" in k for k in state):
        raise PortError(str(strict), missing, unexpected, hint=KERAS_LAYOUT) from None
    a = align(reference_tensors(state), candidate, framework)
    if not a.complete:
        raise PortError(str(strict), missing, unexpected, hint=f"automatic port: {a.summary()}; `vitbench port "
                        "SUITE --only PAIR` shows the table and writes a port function") from None
    return ported_state(a, state)


def torch_tensors(model) -> list[Tensor]:  # noqa: ANN001
    """A torch model's state_dict entries in registration order."""
    return [Tensor(k, tuple(v.shape), i) for i, (k, v) in enumerate(model.state_dict().items())]


def keras_tensors(model) -> list[Tensor]:  # noqa: ANN001
    """A Keras model's variables (paths) in creation order."""
    return [Tensor(v.path, tuple(v.shape), i) for i, v in enumerate(model.weights)]


def reference_tensors(state: dict) -> list[Tensor]:
    return [Tensor(k, tuple(v.shape), i) for i, (k, v) in enumerate(state.items())]


def function_source(alignment: Alignment, framework: str, reference: str, candidate: str) -> str:
    """A port function for the candidate's module, from a complete alignment: ``checkpoint_filter_fn`` (torch) or
    ``port_weights`` (Keras), with the mapping written out as a table the user can read and edit."""
    rows = "\n".join(f"    ({m.candidate!r}, {m.reference!r}, {m.transform!r}),  # {m.how}" for m in alignment.matches)
    head = (f'# written by `vitbench port` for {candidate} from {reference}: {alignment.summary()}\n'
            f"# (candidate name, reference name, transform): 'same', 'linear' (transpose), 'conv' (OIHW -> HWIO),\n"
            f"# 'qkv_part i ...' (the i-th third of a fused qkv, then the rest)\nPORT_TABLE = [\n{rows}\n]\n\n\n")
    take = '''def _take(w, transform):
    parts = transform.split()
    if parts[0] == "qkv_part":
        n = w.shape[0] // 3
        w = w[int(parts[1]) * n:(int(parts[1]) + 1) * n]
        parts = parts[2:]
    return w.T if parts[0] == "linear" else w.transpose(2, 3, 1, 0) if parts[0] == "conv" else w


'''
    if framework == "torch":
        return head + take + '''def checkpoint_filter_fn(state_dict, model):
    """The reference's state_dict under this model's names (vitbench loads it with strict=True)."""
    return {mine: _take(state_dict[theirs], how) for mine, theirs, how in PORT_TABLE}
'''
    return head + take + '''def port_weights(model, state_dict):
    """The reference's tensors (numpy, torch layout) into this model's variables; every one checked."""
    import numpy as np

    variables = {v.path: v for v in model.weights}
    missing = sorted(set(variables) - {mine for mine, _, _ in PORT_TABLE})
    if missing:
        raise ValueError(f"no reference tensor for {missing[:3]}")
    for mine, theirs, how in PORT_TABLE:
        w = np.asarray(_take(np.asarray(state_dict[theirs]), how))
        if tuple(variables[mine].shape) != w.shape:
            raise ValueError(f"{theirs} {w.shape} does not fit {mine} {tuple(variables[mine].shape)}")
        variables[mine].assign(w)
'''
