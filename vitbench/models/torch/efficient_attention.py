"""Efficient attention variants, drop-in for our ViT's ``Attention`` (same ``qkv`` / ``proj`` weights as timm, so a
variant starts from a timm ViT's weights; variant-only parameters are listed by ``new_parameter_names``).

Shapes: B batch, H heads, N tokens (P prefix tokens + grid), D head dim, C = H * D channels.

- ``LinformerAttention``  (Wang et al. 2020): keys and values projected along the sequence, N -> k, by learned
  E, F (N x k). O(N k D). Ties the model to one N.
- ``PerformerAttention``  (Choromanski et al. 2021, FAVOR+): positive orthogonal random features phi with
  phi(q) . phi(k) ~ exp(q . k / sqrt(D)); O(N m D). Features are fixed until ``redraw_features()`` is called.
- ``NystromAttention``   (Xiong et al. 2021): m landmarks = segment means of Q and K (per sample), softmax
  kernels F (N x m), A (m x m), B (m x N), A^+ by 6 Newton-Schulz-type iterations; O(N m D).
- ``AtrousAttention``    (ACC-ViT's atrous attention): the patch grid is split into rate^2 interleaved sub-grids
  (rate 1 = Swin-style regional windows, larger rates = sparser, wider); exact attention inside w x w windows
  of each view; the views are mixed by a per-token softmax gate. Prefix (class) tokens attend globally and are
  attended by nobody else, so the class readout still sees every token. O(N w^2 D) per rate.
- ``HybridAttention``    (ours): a head split. Some heads run atrous window attention (exact softmax, local and
  dilated); the other heads run global linear attention with the elu+1 kernel feature map.

Why the hybrid: atrous windows give exact, sharp attention over a neighbourhood and its dilated copies - the
regional and sparse structure images have - but no token ever sees the whole image in one layer except through
the class token. Linear attention (the kernel trick: softmax(q.k) replaced by phi(q).phi(k), so
sum_j phi(k_j) v_j^T is computed once and shared by every query) sees everything at O(N) but blurs: it cannot
express sharp, local peaks. Giving some heads each mechanism keeps both at linear cost, with no extra
parameters: the qkv and proj weights are timm's, split by heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _QKVAttention(nn.Module):
    """Shared parts: timm's ``qkv`` and ``proj``; subclasses implement ``attend(q, k, v)`` on (B, H, N, D)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{type(self).__name__}: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # each variant defines its attention

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> torch.Tensor:
        if return_attn:
            raise ValueError(f"{type(self).__name__} forms no attention matrix to return")
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = self.attend(q, k, v)  # (B, H, N, D)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


def segment_mean_matrix(n: int, m: int, device=None, dtype=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """(m, n) matrix whose rows average m contiguous, near-equal segments of n tokens (no padding needed)."""
    edges = [round(i * n / m) for i in range(m + 1)]
    avg = torch.zeros(m, n, device=device, dtype=dtype)
    for i in range(m):
        avg[i, edges[i]:edges[i + 1]] = 1.0 / (edges[i + 1] - edges[i])
    return avg


class LinformerAttention(_QKVAttention):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, seq_len: int, k: int = 64) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.seq_len, self.k = seq_len, k
        # E, F: (N, k), learned. They start as segment means (k contiguous pools of keys / values), so a Linformer
        # made from a timm ViT begins as pooled-key attention instead of random projections.
        self.proj_k = nn.Parameter(segment_mean_matrix(seq_len, k).T.contiguous())
        self.proj_v = nn.Parameter(segment_mean_matrix(seq_len, k).T.contiguous())

    def attend(self, q, k, v):  # type: ignore[no-untyped-def]
        if k.shape[-2] != self.seq_len:
            raise ValueError(f"Linformer was built for {self.seq_len} tokens, got {k.shape[-2]}")
        k = torch.einsum("bhnd,nk->bhkd", k, self.proj_k)  # (B, H, k, D)
        v = torch.einsum("bhnd,nk->bhkd", v, self.proj_v)
        return F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D): N queries over k projected keys


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(m, d) rows: orthogonal blocks from QR of Gaussian matrices, each row rescaled to a chi(d) norm."""
    blocks = []
    for _ in range(math.ceil(m / d)):
        qmat, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)
    return w * norms


class PerformerAttention(_QKVAttention):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, nb_features: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.nb_features = nb_features or int(self.head_dim * math.log(self.head_dim))
        self.seed = seed
        # derived from the seed, so not saved: a timm checkpoint ports without it
        self.register_buffer("features", torch.empty(self.nb_features, self.head_dim), persistent=False)
        self.redraw_features(seed)

    def redraw_features(self, seed: int | None = None) -> None:
        """New random features (explicit: nothing redraws behind the user's back, eval stays deterministic)."""
        self.seed = self.seed + 1 if seed is None else seed
        g = torch.Generator().manual_seed(self.seed)
        self.features.copy_(orthogonal_gaussian(self.nb_features, self.head_dim, g))

    def _phi(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """Positive features exp(w.x - |x|^2/2) / sqrt(m), x scaled by D^-1/4; max subtracted for stability."""
        x = x.float() * self.head_dim**-0.25
        proj = x @ self.features.T  # (B, H, N, m)
        sq = (x**2).sum(-1, keepdim=True) / 2
        stab = proj.amax(dim=-1, keepdim=True) if is_query else proj.amax(dim=(-1, -2), keepdim=True)
        return (torch.exp(proj - sq - stab) + 1e-6) / math.sqrt(self.nb_features)

    def attend(self, q, k, v):  # type: ignore[no-untyped-def]
        qp, kp = self._phi(q, True), self._phi(k, False)  # (B, H, N, m)
        kv = kp.transpose(-2, -1) @ v.float()  # (B, H, m, D)
        norm = qp @ kp.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, H, N, 1)
        return ((qp @ kv) / norm).to(v.dtype)


def _pinv(a: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose inverse (Razavi et al.), per matrix of a (..., m, m) batch."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    norm = a.abs().sum(-1).amax(-1, keepdim=True) * a.abs().sum(-2).amax(-1, keepdim=True)  # per matrix
    z = a.transpose(-1, -2) / norm.unsqueeze(-1)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(_QKVAttention):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, num_landmarks: int = 32,
                 pinv_iters: int = 6) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.num_landmarks, self.pinv_iters = num_landmarks, pinv_iters

    def attend(self, q, k, v):  # type: ignore[no-untyped-def]
        N = q.shape[-2]
        avg = segment_mean_matrix(N, min(self.num_landmarks, N), q.device, q.dtype)  # (m, N)
        q_l, k_l = avg @ q, avg @ k  # landmarks (B, H, m, D): means within each sample, never across the batch
        s = self.scale
        f = torch.softmax((q @ k_l.transpose(-1, -2)) * s, dim=-1)  # (B, H, N, m)
        a = torch.softmax((q_l @ k_l.transpose(-1, -2)) * s, dim=-1)  # (B, H, m, m)
        b = torch.softmax((q_l @ k.transpose(-1, -2)) * s, dim=-1)  # (B, H, m, N)
        return f @ (_pinv(a, self.pinv_iters) @ (b @ v))  # right to left: never N x N


def _subgrid_windows(t: torch.Tensor, rate: int, win: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, H, gh, gw, D) -> (B * rate^2 * nWin, H, win*win, D): split into rate x rate interleaved sub-grids
    (token (i, j) goes to sub-grid (i % rate, j % rate)), then into win x win windows of each sub-grid."""
    B, Hh, gh, gw, D = t.shape
    sh, sw = gh // rate, gw // rate
    t = t.reshape(B, Hh, sh, rate, sw, rate, D).permute(0, 3, 5, 1, 2, 4, 6)  # (B, r, r, H, sh, sw, D)
    t = t.reshape(B, rate, rate, Hh, sh // win, win, sw // win, win, D).permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    return t.reshape(-1, Hh, win * win, D), (B, Hh, gh, gw, D, sh, sw)


def _subgrid_unwindows(y: torch.Tensor, rate: int, win: int, shape: tuple[int, ...]) -> torch.Tensor:
    B, Hh, gh, gw, D, sh, sw = shape
    y = y.reshape(B, rate, rate, sh // win, sw // win, Hh, win, win, D).permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    y = y.reshape(B, rate, rate, Hh, sh, sw, D).permute(0, 3, 4, 1, 5, 2, 6)  # (B, H, sh, r, sw, r, D)
    return y.reshape(B, Hh, gh * gw, D)


def atrous_window_attention(q, k, v, grid: tuple[int, int], rate: int, win: int):  # type: ignore[no-untyped-def]
    """Exact softmax attention of grid tokens (B, H, gh*gw, D) within win x win windows of each rate-dilated
    sub-grid. The grid must be a multiple of rate * win."""
    gh, gw = grid
    if gh % (rate * win) or gw % (rate * win):
        raise ValueError(f"atrous attention: grid {gh}x{gw} is not a multiple of rate*window = {rate * win}")
    views = [t.reshape(t.shape[0], t.shape[1], gh, gw, t.shape[-1]) for t in (q, k, v)]
    (qw, shape), (kw, _), (vw, _) = (_subgrid_windows(t, rate, win) for t in views)
    return _subgrid_unwindows(F.scaled_dot_product_attention(qw, kw, vw), rate, win, shape)


class AtrousAttention(_QKVAttention):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, grid: tuple[int, int],
                 window: int = 7, rates: tuple[int, ...] = (1, 2), num_prefix_tokens: int = 1) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.grid, self.window, self.rates = tuple(grid), window, tuple(rates)
        self.num_prefix_tokens = num_prefix_tokens
        for r in self.rates:
            if grid[0] % (r * window) or grid[1] % (r * window):
                raise ValueError(f"AtrousAttention: grid {grid} is not a multiple of rate {r} x window {window}")
        self.gate = nn.Linear(dim, len(self.rates))  # per-token mix of the rate branches (ACC-ViT's gating)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # starts as an even mix

    def grid_attention(self, q, k, v):  # type: ignore[no-untyped-def]
        """(B, H, P+G, D) -> per-rate outputs for grid tokens [(B, H, G, D)] and prefix outputs (B, H, P, D)."""
        P = self.num_prefix_tokens
        prefix = F.scaled_dot_product_attention(q[:, :, :P], k, v) if P else q[:, :, :0]  # global rows
        gq, gk, gv = q[:, :, P:], k[:, :, P:], v[:, :, P:]
        return [atrous_window_attention(gq, gk, gv, self.grid, r, self.window) for r in self.rates], prefix

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> torch.Tensor:
        if return_attn:
            raise ValueError("AtrousAttention forms no attention matrix to return")
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        branches, prefix = self.grid_attention(q, k, v)
        g = torch.softmax(self.gate(x[:, self.num_prefix_tokens:]), dim=-1)  # (B, G, R)
        grid_out = sum(br.transpose(1, 2).reshape(B, -1, C) * g[..., i:i + 1] for i, br in enumerate(branches))
        y = torch.cat([prefix.transpose(1, 2).reshape(B, -1, C), grid_out], dim=1)
        return self.proj(y)


def elu_feature(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def linear_attention(q, k, v):  # type: ignore[no-untyped-def]
    """Global linear attention (Katharopoulos et al. 2020): phi(q) (phi(k)^T v) / phi(q) (phi(k)^T 1)."""
    qf, kf = elu_feature(q.float()), elu_feature(k.float())
    kv = kf.transpose(-2, -1) @ v.float()  # (B, H, D, D): shared by every query
    norm = qf @ kf.sum(dim=-2, keepdim=True).transpose(-2, -1)
    return ((qf @ kv) / norm).to(v.dtype)


class HybridAttention(AtrousAttention):
    """Head split: the first ``atrous_heads`` heads run gated atrous window attention (+ global prefix rows);
    the rest run global linear attention over all tokens (prefix included)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, grid: tuple[int, int],
                 window: int = 7, rates: tuple[int, ...] = (1, 2), num_prefix_tokens: int = 1,
                 atrous_heads: int | None = None) -> None:
        super().__init__(dim, num_heads, qkv_bias, grid=grid, window=window, rates=rates,
                         num_prefix_tokens=num_prefix_tokens)
        self.atrous_heads = num_heads // 2 if atrous_heads is None else atrous_heads
        if not 0 < self.atrous_heads < num_heads:
            raise ValueError(f"HybridAttention: atrous_heads must be in 1..{num_heads - 1}")

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> torch.Tensor:
        if return_attn:
            raise ValueError("HybridAttention forms no attention matrix to return")
        B, N, C = x.shape
        ha, D = self.atrous_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D).permute(2, 0, 3, 1, 4).unbind(0)
        branches, prefix = self.grid_attention(q[:, :ha], k[:, :ha], v[:, :ha])
        g = torch.softmax(self.gate(x[:, self.num_prefix_tokens:]), dim=-1)
        local = sum(br * g.unsqueeze(1)[..., i:i + 1] for i, br in enumerate(branches))  # (B, ha, G, D)
        local = torch.cat([prefix, local], dim=2)  # (B, ha, N, D)
        glob = linear_attention(q[:, ha:], k[:, ha:], v[:, ha:])  # (B, H - ha, N, D)
        y = torch.cat([local, glob], dim=1)  # heads in timm's order
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


VARIANTS = {"linformer": LinformerAttention, "performer": PerformerAttention, "nystrom": NystromAttention,
            "atrous": AtrousAttention, "hybrid": HybridAttention}

# variant -> parameters a timm checkpoint does not have (they keep their own init when porting)
NEW_PARAMETERS = {"linformer": ("proj_k", "proj_v"), "atrous": ("gate.weight", "gate.bias"),
                  "hybrid": ("gate.weight", "gate.bias")}


def new_parameter_names(model: nn.Module) -> list[str]:
    """The state_dict keys of ``model`` that only a variant has (no timm counterpart: they keep their own init)."""
    suffixes = tuple(f".{name}" for names in NEW_PARAMETERS.values() for name in names)
    return [k for k in model.state_dict() if f".{k}".endswith(suffixes)]


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``Attention`` (or ViT) weights -> a model with variant attention: ``qkv``/``proj`` are reused as they
    are; parameters timm has no counterpart for (``new_parameter_names``) keep the model's own init."""
    own = model.state_dict()
    out = {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}
    for k in new_parameter_names(model):
        out.setdefault(k, own[k])
    return out
