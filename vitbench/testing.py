"""Small models for testing vitbench itself: a tiny network, and ones that fail or hang on purpose.

Use them from a suite with the import provider, e.g. ``{provider: import, model: "vitbench.testing:Hanging"}``.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn


class TinyNet(nn.Module):
    """Patchify conv + mean pool + linear head: a classifier small enough for any unit test."""

    def __init__(self, img_size: int = 32, num_classes: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.img_size = img_size
        self.stem = nn.Conv2d(3, dim, kernel_size=8, stride=8)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).mean(dim=(2, 3)))


class Failing(TinyNet):
    """Raises in forward, like a model with a shape bug."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Failing: this model always fails (vitbench.testing)")


class Hanging(TinyNet):
    """Never returns from forward, like a deadlocked kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            time.sleep(1)


class Allocating(TinyNet):
    """Asks for far more memory than any machine has, like a model that does not fit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.empty(1 << 50, dtype=torch.uint8, device=x.device)


class TinyBlocks(nn.Module):
    """A stem and a stack of identical blocks: the smallest model with something to compile regionally."""

    def __init__(self, img_size: int = 32, num_classes: int = 10, dim: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.img_size = img_size
        self.stem = nn.Conv2d(3, dim, kernel_size=8, stride=8)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
                                      for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.head(self.blocks(x).mean(dim=1))


class Growing(TinyNet):
    """Allocates 256 MB at a time (up to 10 GB), like a runaway allocation: the memory cap must end it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = []
        for _ in range(40):
            keep.append(torch.ones(64, 1024, 1024))
            time.sleep(0.05)
        return super().forward(x)


class NaNOutput(TinyNet):
    """Runs, but every output is NaN, like a model with a broken normalisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


class FailsLater(TinyNet):
    """Works for its first ``calls`` forward passes in a process, then raises: a fault in the middle of timing."""

    def __init__(self, calls: int = 40, **kw: int) -> None:
        super().__init__(**kw)
        self.calls, self.seen = calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        if self.seen > self.calls:
            raise RuntimeError(f"FailsLater: call {self.seen} fails (vitbench.testing)")
        return super().forward(x)


class Recompiling(TinyNet):
    """From its ``switch_at``-th forward pass in a process on, takes another branch: a compiled model recompiles
    once, while it is being timed (after set-up and warm-up)."""

    def __init__(self, switch_at: int = 8, **kw: int) -> None:
        super().__init__(**kw)
        self.switch_at, self.seen = switch_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        y = super().forward(x)
        return y + 1 if self.seen >= self.switch_at else y


def make_case(model: str = "vitbench.testing:TinyNet", provider: str = "import", role: str = "reference",
              compile_mode: str = "eager", batch_size: int = 1, device: str = "cpu", **settings: Any) -> Any:
    """A ``Case`` for tests, as ``expand`` would make it: built-in defaults, then ``settings`` (suite fields,
    e.g. img_size=32, perturb_std=0.02, compile_options={"backend": "aot_eager"})."""
    from .suite import BUILTIN_DEFAULTS, Case, Settings, SideSpec, merge_settings

    side = SideSpec(provider=provider, model=model, kwargs={}, label=model)
    resolved = Settings(**merge_settings(BUILTIN_DEFAULTS, Settings(**settings)))
    return Case(suite="test", pair="p", role=role, index=0 if role == "reference" else 1,  # type: ignore[arg-type]
                side=side, device=device, reference=side if role == "candidate" else None, precision="fp32",
                compile_mode=compile_mode, batch_size=batch_size, settings=resolved)
