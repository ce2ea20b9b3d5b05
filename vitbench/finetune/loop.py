"""One reusable training loop for any classifier nn.Module: optimizer, schedule, timed steps, evaluation,
top-k accuracy (percent, as timm's ``accuracy`` and its results tables)."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Percent of rows whose target is among the k highest logits, per k. A k above the number of classes is
    left out (it would be 100% by construction). Ties go to the lower class index, as ``torch.topk``."""
    n_classes = logits.shape[-1]
    ks = [k for k in ks if k <= n_classes]
    if not ks or len(targets) == 0:
        return {}
    top = logits.topk(max(ks), dim=-1).indices  # (B, kmax), best first
    hit = top.eq(targets.view(-1, 1))
    return {k: 100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters without weight decay: biases, norm scales (ndim <= 1) and what the model's
    ``no_weight_decay()`` names (pos_embed, cls_token, ...), as timm's optimizer factory does."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n in skip or n.split(".")[-1] in skip}


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
                   ) -> torch.optim.Optimizer:
    skip = no_decay_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if n not in skip], "weight_decay": weight_decay},
              {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer '{name}' (adamw, sgd)")


def lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr before optimizer step ``step`` (0-based): linear warm-up from 1/(warmup+1), then
    cosine or linear decay to 0 at ``steps``, or constant."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "linear":
        return max(0.0, 1.0 - t)
    raise ValueError(f"unknown schedule '{schedule}' (cosine, linear, constant)")


def make_scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int, schedule: str
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup_steps, schedule))


def logits_of(out: Any) -> torch.Tensor:
    """A classifier's output: the tensor itself, or the first tensor of a tuple/list/dict (e.g. HF-style outputs)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for v in out:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"model output {type(out).__name__} holds no tensor")


@dataclass
class Step:
    step: int  # 1-based: optimizer steps taken
    loss: float
    lr: float
    data_s: float  # fetching and preparing the batch
    step_s: float  # forward + backward + optimizer, synchronised


def train(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, steps: int,
          optimizer: torch.optim.Optimizer, scheduler: Any | None, loss_fn: Callable[..., torch.Tensor],
          to_input: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
          autocast: contextlib.AbstractContextManager | None = None, grad_clip: float | None = None,
          scaler: Any | None = None, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """``steps`` optimizer steps over ``batches`` (uint8 images, labels). Each step is timed apart from its data
    (synchronised on CUDA), so samples/s can be reported as timm does (model time) and with data waits.
    ``scaler``: a ``torch.amp.GradScaler`` for fp16 autocast."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    model.train()
    history: list[Step] = []
    for i in range(steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        x = to_input(x.to(device, non_blocking=True))
        y = y.to(device, non_blocking=True)
        sync()
        t1 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        with autocast or contextlib.nullcontext():
            loss = loss_fn(logits_of(model(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = loss.item()  # waits for the device
        sync()
        s = Step(i + 1, value, lr, t1 - t0, time.perf_counter() - t1)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {i + 1} (lr {lr:.3g}): training diverged")
        history.append(s)
        if on_step:
            on_step(s)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, ks: Sequence[int],
             to_input: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None,
             loss_fn: Callable[..., torch.Tensor] | None = None) -> dict[str, Any]:
    """Loss (when ``loss_fn`` is given) and top-k accuracy (percent) over every batch."""
    was_training = model.training
    model.eval()
    loss_sum, n = 0.0, 0
    logits_all, targets_all = [], []
    for x, y in batches:
        x = to_input(x.to(device))
        y = y.to(device)
        with autocast or contextlib.nullcontext():
            logits = logits_of(model(x)).float()
        if loss_fn is not None:
            loss_sum += loss_fn(logits, y).item() * len(y)
        n += len(y)
        logits_all.append(logits.cpu())
        targets_all.append(y.cpu())
    model.train(was_training)
    if not n:
        raise ValueError("evaluation: the validation split is empty")
    acc = topk_accuracy(torch.cat(logits_all), torch.cat(targets_all), ks)
    return {"loss": loss_sum / n if loss_fn is not None else None, "n": n, "topk": acc}
