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
        """Our families' analytic counts (``measure.keras_macs``), else the model module's own
        ``count_macs_acts(model)`` (per image), else None."""
        from ..measure.keras_macs import count_macs_acts

        counted = count_macs_acts(model)
        fn = getattr(importlib.import_module(type(model).__module__), "count_macs_acts", None)
        if counted is None and fn is not None:
            counted = fn(model)
        return None if counted is None else (*counted, KERAS_MACS_METHOD)

    def preprocessing(self, model: Any) -> dict[str, Any] | None:
        return dict(getattr(model, "pretrained_cfg", None) or {}) or None
