"""timm models by registry name (random init: pretrained weights are never fetched)."""
from __future__ import annotations

from typing import Any

from .torch_common import TorchProvider, build_with_img_size, default_img_size, load_numpy_state, unknown_model


class TimmProvider(TorchProvider):
    name = "timm"

    def check(self, model: str) -> str | None:
        import timm

        return None if timm.is_model(model) else unknown_model("timm", model, timm.list_models())

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        import timm

        def factory(**kw: Any) -> Any:
            return timm.create_model(model, pretrained=False, **kw)

        m = build_with_img_size(factory, kwargs, img_size)
        return m, img_size or default_img_size(m)

    def port(self, model: Any, state: dict) -> None:
        load_numpy_state(model, state)  # timm to timm: the same keys

    def list_names(self) -> list[str]:
        return ["<any timm model name: timm.list_models()>"]


PROVIDER = TimmProvider()
