"""MACs and activations per image, counted as timm's tables report them (GMACs incl. attention matmuls).

``torch.utils.flop_counter`` counts FLOPs (2 x MACs) and does not see the CPU fused SDPA kernel, so the count
runs with SDPA forced onto the math backend, where attention decomposes into counted matmuls. Activations
follow fvcore's ActivationCountAnalysis (timm's ``infer_macts``): output elements of conv / matmul ops.
"""
from __future__ import annotations

METHOD = "torch.utils.flop_counter, sdpa=math, batch 1; macts=outputs of conv/mm/bmm/addmm"


def count_macs_acts(model, example):  # type: ignore[no-untyped-def]
    """Return (MACs, activations) for one forward pass of ``model(example)``."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    act_ops = {aten.convolution.default, aten.mm.default, aten.bmm.default, aten.addmm.default,
               aten._convolution.default}

    class _ActCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.acts = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            if func in act_ops:
                self.acts += out.numel()
            return out

    counter = FlopCounterMode(display=False)
    acts = _ActCounter()
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter, acts:
        model(example)
    return counter.get_total_flops() / 2, acts.acts


TRAIN_METHOD = "torch.utils.flop_counter, sdpa=math, forward + backward of batch 2 / 2"


def count_train_macs(model, loss_of, batch: int) -> float:  # type: ignore[no-untyped-def]
    """MACs per image of one training step's forward and backward (optimizer update not included): ``loss_of()``
    runs the forward pass and returns the loss of a batch of ``batch`` images. Clears the gradients it made
    (``zero_grad(set_to_none=True)``): run it between steps or after training."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel([SDPBackend.MATH]), counter:
        loss_of().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / batch
