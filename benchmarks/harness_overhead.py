"""What vitbench's timed loop adds to a forward: the same calls timed by ``measure.timing.time_block`` (a clock read
before and after each call, its latency kept, contention read around the block) against a bare loop timed as a
whole, in alternating blocks, for an empty model, a tiny ViT and timm's ViT-S at batch 1 (CPU, fp32, inference mode,
as a timing session runs them). Prints the overhead per call (median over pairs of blocks) in microseconds and as a
share of the call, with the median's interval (a difference the machine's noise hides shows as an interval
across zero). Run it alone: ``python benchmarks/harness_overhead.py [--pairs 15]``."""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from vitbench.measure.stats import median_ci
from vitbench.measure.timing import time_block


def bare(step, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters


def measure(name: str, model: torch.nn.Module, x: torch.Tensor, block_s: float, pairs: int) -> None:
    model.eval()
    with torch.inference_mode():
        def step():
            return model(x)

        for _ in range(3):
            step()
        t0 = time.perf_counter()
        step()
        iters = max(1, int(block_s / max(time.perf_counter() - t0, 1e-7)))
        diffs, calls = [], []
        for i in range(pairs):
            for first in ((0, 1) if i % 2 == 0 else (1, 0)):
                if first == 0:
                    b = bare(step, iters)
                else:
                    h = time_block(step, lambda: None, iters, warmup=0)
                    h_call = h.wall_s / h.iters
            diffs.append(h_call - b)
            calls.append(b)
    c = statistics.median(calls)
    d, lo, hi, cov = median_ci(diffs)
    print(f"{name:30s} call {c * 1e3:9.4f} ms  harness {d * 1e6:+8.2f} us/call [{lo * 1e6:+.2f}, {hi * 1e6:+.2f}]  "
          f"({100 * d / c:+.3f}% [{100 * lo / c:+.3f}, {100 * hi / c:+.3f}], {100 * cov:.0f}% interval of the "
          f"median over {pairs} pairs of {iters}-call blocks)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    measure("empty (nn.Identity, 1 value)", torch.nn.Identity(), torch.zeros(1), 0.05, args.pairs)
    measure("tiny (timm test_vit, 160 px)", timm.create_model("test_vit", img_size=160), torch.randn(1, 3, 160, 160),
            0.3, args.pairs)
    measure("ViT-S/16 (timm, 224 px, bs 1)", timm.create_model("vit_small_patch16_224"),
            torch.randn(1, 3, 224, 224), 1.0, args.pairs)


if __name__ == "__main__":
    main()
