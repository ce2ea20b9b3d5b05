"""CUDA paths, run where a GPU exists (marked ``gpu``: skipped elsewhere, see conftest): the allocator's peaks over
the set-up's forward passes and over every timed block, recompiles while timing, GPU contention from NVML."""
from __future__ import annotations

import csv

import pytest

SUITE = """
name: gpu
defaults: {batch_sizes: [4], rounds: 4, processes: 2, warmup_iters: 1, min_iters: 2, min_seconds: 0, img_size: 64,
           timeout_s: 300}
pairs:
  - name: vit
    reference: {provider: timm, model: test_vit}
    candidates:
      - {provider: vitbench, model: test_vit}
      - {provider: timm, model: test_vit, label: compiled, compile: [full], compile_options: {backend: aot_eager}}
"""


@pytest.mark.gpu
def test_cuda_memory_recompiles_and_gpu_contention_are_measured(cli, write_suite, tmp_path):
    import torch

    res = cli("run", write_suite(SUITE), "--device", "cuda", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    with open(tmp_path / "o" / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    weights_mb = sum(p.numel() for p in __import__("timm").create_model("test_vit", img_size=64).parameters()) * 4e-6
    for r in rows:
        assert r["status"] == "ok" and r["tf32"] == "False", r
        # set-up: weights + input + the activations of its forward passes, not weights + input alone
        assert float(r["cuda_peak_allocated_mb"]) > weights_mb
        assert float(r["cuda_forward_peak_mb"]) > 0  # what a timed forward allocated beyond the resident weights
        assert r["gpu_contention"] in ("none", "unknown") or r["gpu_contention"].startswith("other processes")
        if r["compile_mode"] == "full":
            assert r["recompiles"] == "0"  # counted over the timed blocks too: none for one input shape
    assert torch.cuda.is_available()
