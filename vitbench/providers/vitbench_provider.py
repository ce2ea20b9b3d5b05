"""Our own PyTorch models (``vitbench.models.torch``), weight-compatible with their timm twins."""
from __future__ import annotations

from typing import Any

from .torch_common import TorchProvider, build_with_img_size, default_img_size, unknown_model


class VitbenchProvider(TorchProvider):
    name = "vitbench"

    def check(self, model: str) -> str | None:
        from vitbench.models import torch as ours

        return None if ours.is_model(model) else unknown_model("vitbench", model, ours.list_models())

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        from vitbench.models import torch as ours

        m = build_with_img_size(lambda **kw: ours.create_model(model, **kw), kwargs, img_size)
        return m, img_size or default_img_size(m)

    def list_names(self) -> list[str]:
        from vitbench.models import torch as ours

        return ours.list_models()


PROVIDER = VitbenchProvider()
