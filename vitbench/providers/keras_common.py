"""What Keras providers share: MACs from the model family's analytic counter (TF's profiler does not count Einsum,
and one count must serve every backend), preprocessing from the model's ``pretrained_cfg``."""
from __future__ import annotations

import importlib
from typing import Any

KERAS_MACS_METHOD = "analytic from the model config (conv/matmul MACs incl. attention, as the torch counter counts)"


class KerasProvider:
    name = ""
    framework = "keras"

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None:
        """The family module's ``count_macs_acts(model)`` (per image), or None where a family has none."""
        fn = getattr(importlib.import_module(type(model).__module__), "count_macs_acts", None)
        if fn is None:
            return None
        macs, acts = fn(model)
        return macs, acts, KERAS_MACS_METHOD

    def preprocessing(self, model: Any) -> dict[str, Any] | None:
        return dict(getattr(model, "pretrained_cfg", None) or {}) or None
