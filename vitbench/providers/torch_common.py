"""What torch providers share: the ``TorchProvider`` base (port with strict=True, MACs by the torch counter, the
model's pretrained_cfg), building with an optional img_size, unknown-name messages."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..port import PortError


def unknown_model(kind: str, name: str, known: list[str]) -> str:
    """'unknown <kind> model 'x' (did you mean 'y'?)'."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown {kind} model '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def build_with_img_size(factory: Callable[..., Any], kwargs: dict[str, Any], img_size: int | None) -> Any:
    """Pass ``img_size`` to the constructor when given; models without that argument get it as input size only."""
    if img_size is None or "img_size" in kwargs:
        return factory(**kwargs)
    try:
        return factory(**kwargs, img_size=img_size)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return factory(**kwargs)


def state_dict_to_numpy(model) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def load_numpy_state(model, state: dict[str, np.ndarray], filter_fn=None) -> None:  # type: ignore[no-untyped-def]
    """Load a reference's weights with strict=True: a key or shape mismatch is an error naming them."""
    import torch

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise PortError.of_keys(missing, unexpected)
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise PortError(f"weight port: shape mismatch at {bad[0]}: ours {tuple(own[bad[0]].shape)} "
                        f"vs reference {tuple(sd[bad[0]].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def default_img_size(model, fallback: int = 224) -> int:  # type: ignore[no-untyped-def]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return int(cfg["input_size"][-1])
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if isinstance(size, (tuple, list)):
        return int(size[-1])
    return int(size) if size else fallback


class TorchProvider:
    """Base of the torch providers: ``build``/``check``/``list_names`` are theirs; ``port`` loads strictly through the
    model family's ``checkpoint_filter_fn`` when its module has one."""

    name = ""
    framework = "torch"

    def port(self, model: Any, state: dict[str, np.ndarray]) -> str:
        import importlib

        family = importlib.import_module(type(model).__module__)
        load_numpy_state(model, state, getattr(family, "checkpoint_filter_fn", None))
        return "strict"

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None:
        from ..measure import flops

        macs, acts = flops.count_macs_acts(model, x)
        return macs, acts, flops.METHOD

    def preprocessing(self, model: Any) -> dict[str, Any] | None:
        return dict(getattr(model, "pretrained_cfg", None) or {}) or None


def needs_reference_package(provider: str, model: str, *packages: tuple[str, str],
                            install: str = "pip install 'vitbench[references]'") -> None:
    """Raise one line naming what to install (``install``: the command) when an optional implementation's packages
    (``(module, pip name)`` pairs, found without importing them) are missing: its side's row fails with it; the
    other sides run."""
    import importlib.util

    missing = [pip for module, pip in packages if importlib.util.find_spec(module) is None]
    if missing:
        raise RuntimeError(f"{provider} {model} needs {', '.join(missing)} ({install})")
