"""vit-pytorch (lucidrains) as a side: its exact ViTs and its ``efficient.ViT`` with Nystromformer, Linformer or
Performer as the transformer, so our efficient-attention variants can be timed against the implementations people
usually reach for, at the same width, depth, heads, patch and token count.

Models (kwargs are vit-pytorch's own names: ``image_size, patch_size, num_classes, dim, depth, heads, dim_head,
mlp_dim, pool, channels`` and each transformer's arguments):

- ``ViT``, ``SimpleViT``: ``vit_pytorch.ViT`` (class token, learned positions) / ``vit_pytorch.SimpleViT`` (no class
  token, 2-D sin-cos positions, mean pooling: N = patches, one token fewer than timm's).
- ``efficient.ViT``: ``vit_pytorch.efficient.ViT(image_size, patch_size, num_classes, dim, pool, channels,
  transformer=...)``. The transformer is a nested mapping whose ``type:`` names it, the rest being its constructor
  arguments (YAML builds no objects, so a mapping stands for the call)::

      kwargs: {patch_size: 16, dim: 384,
               transformer: {type: nystromformer, depth: 12, heads: 6, num_landmarks: 32}}

  ``type``: ``nystromformer`` (``nystrom_attention.Nystromformer``), ``linformer`` (``linformer.Linformer``) or
  ``performer`` (``performer_pytorch.Performer``).
- ``nystromformer``, ``linformer``, ``performer``: the same ``efficient.ViT`` written flat: the ViT's own kwargs
  (``image_size, patch_size, num_classes, dim, pool, channels``) go to the ViT, every other kwarg to the
  transformer: ``{model: performer, kwargs: {patch_size: 16, dim: 384, depth: 12, heads: 6, nb_features: 128}}``.

Filled in when absent, so equal sizes are short to write: ``image_size`` = the suite's ``img_size`` (else 224; a
kwarg wins, as ``img_size`` does for timm), ``num_classes`` = 1000, ``dim_head`` = dim // heads (timm's head
width; the libraries' defaults are 64, or required), ``mlp_dim`` = 4 * dim for ``ViT``/``SimpleViT``, the
transformer's ``dim`` = the ViT's, and Linformer's ``seq_len`` = patches + 1 (its E/F projections are sized by the
sequence: efficient.ViT always prepends a class token).

Weights: these networks have their own parameter names and layout (``to_patch_embedding``, ``to_qkv``, pre-norm
wrappers, Linformer's E/F), not timm's, so nothing is ported: candidate sides must set ``port: false`` (they are
compared on speed, memory and FLOPs; fine-tuning trains them from their own seeded init). ``port`` raises a
ValueError saying so, which a run reports as ``port_failed``. They carry no preprocessing config: fine-tuning uses
ImageNet's mean/std, bicubic, crop 0.875 and records that (``preprocessing`` in the weights' .json). Nothing here
imports vit-pytorch or the attention packages until a model is built (``pip install 'vitbench[references]'``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .torch_common import TorchProvider, needs_reference_package, unknown_model

TRANSFORMERS = {  # type: -> (module, class, pip package)
    "nystromformer": ("nystrom_attention", "Nystromformer", "nystrom-attention"),
    "linformer": ("linformer", "Linformer", "linformer"),
    "performer": ("performer_pytorch", "Performer", "performer-pytorch"),
}
EXACT = ("ViT", "SimpleViT")
EFFICIENT = "efficient.ViT"
NAMES = (*EXACT, EFFICIENT, *TRANSFORMERS)
VIT_KWARGS = {"image_size", "patch_size", "num_classes", "dim", "pool", "channels"}  # efficient.ViT's own


def _packages(model: str, transformer: str | None = None) -> list[tuple[str, str]]:
    """``(module, pip name)`` of what ``model`` needs."""
    modules = [("vit_pytorch", "vit-pytorch")]
    kind = transformer or (model if model in TRANSFORMERS else None)
    if kind in TRANSFORMERS:
        modules.append((TRANSFORMERS[kind][0], TRANSFORMERS[kind][2]))
    return modules


def split_kwargs(model: str, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(vit_kwargs, transformer_spec)`` of a side: the ViT's kwargs, and for the efficient models the
    transformer's mapping with its ``type``. Raises ValueError naming the field for a malformed spec."""
    kwargs = dict(kwargs)
    if model in EXACT:
        if "transformer" in kwargs:
            raise ValueError(f"vit_pytorch {model}: takes no 'transformer' (use model efficient.ViT)")
        return kwargs, None
    if model in TRANSFORMERS:
        if "transformer" in kwargs:
            raise ValueError(f"vit_pytorch {model}: the transformer is named by the model; write its arguments "
                             "flat, or use model efficient.ViT with kwargs.transformer")
        vit = {k: v for k, v in kwargs.items() if k in VIT_KWARGS}
        return vit, {"type": model, **{k: v for k, v in kwargs.items() if k not in VIT_KWARGS}}
    spec = kwargs.pop("transformer", None)
    if not isinstance(spec, Mapping):
        raise ValueError(f"vit_pytorch efficient.ViT: kwargs.transformer must be a mapping with 'type: "
                         f"{' | '.join(TRANSFORMERS)}' and its arguments, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in TRANSFORMERS:
        raise ValueError(f"vit_pytorch efficient.ViT: kwargs.transformer.type: unknown transformer '{kind}' "
                         f"(known: {', '.join(TRANSFORMERS)})")
    return kwargs, dict(spec)


def resolve(model: str, kwargs: Mapping[str, Any], img_size: int | None) -> tuple[dict[str, Any], dict | None]:
    """The constructor arguments with the defaults of the module docstring filled in: ``(vit, transformer)``."""
    vit, spec = split_kwargs(model, kwargs)
    vit.setdefault("image_size", img_size or 224)
    if isinstance(vit["image_size"], list):  # YAML [h, w]: vit-pytorch takes an int or a tuple
        vit["image_size"] = tuple(vit["image_size"])
    vit.setdefault("num_classes", 1000)
    if "dim" not in vit or "patch_size" not in vit:
        raise ValueError(f"vit_pytorch {model}: kwargs need 'dim' and 'patch_size'")
    if spec is None:
        if "heads" in vit:
            vit.setdefault("dim_head", vit["dim"] // vit["heads"])
        vit.setdefault("mlp_dim", 4 * vit["dim"])
        return vit, None
    if spec.setdefault("dim", vit["dim"]) != vit["dim"]:
        raise ValueError(f"vit_pytorch {model}: transformer dim {spec['dim']} != ViT dim {vit['dim']}")
    if "heads" in spec:
        spec.setdefault("dim_head", vit["dim"] // spec["heads"])
    if spec["type"] == "linformer":
        size, patch = vit["image_size"], vit["patch_size"]
        h, w = (size, size) if isinstance(size, int) else size
        spec.setdefault("seq_len", (h // patch) * (w // patch) + 1)
    return vit, spec


def attention_of(model: str, kwargs: Mapping[str, Any]) -> str:
    """What the ``attention`` column says of a side: 'exact', or the efficient transformer's type."""
    if model in EXACT:
        return "exact"
    try:
        return f"{split_kwargs(model, kwargs)[1]['type']}"  # type: ignore[index]
    except ValueError:
        return "unknown"


class VitPytorchProvider(TorchProvider):
    name = "vit_pytorch"

    def check(self, model: str) -> str | None:
        # a missing package is not a suite error: the side's row fails, saying what to install (build), and a
        # suite holding such sides (finetune.yaml) still runs its other sides without the references extra
        return unknown_model("vit_pytorch", model, list(NAMES)) if model not in NAMES else None

    def check_kwargs(self, model: str, kwargs: Mapping[str, Any]) -> str | None:
        """The nested transformer spec (validation, in the parent, nothing imported): one line, or None."""
        try:
            split_kwargs(model, kwargs)
        except ValueError as e:
            return str(e)
        return None

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        """``(module, image size)``; the module maps (B, 3, S, S) images to (B, num_classes) logits."""
        import importlib

        vit, spec = resolve(model, kwargs, img_size)
        needs_reference_package("vit_pytorch", model, *_packages(model, spec["type"] if spec else None))
        size = vit["image_size"] if isinstance(vit["image_size"], int) else vit["image_size"][0]
        if spec is None:
            import vit_pytorch

            return getattr(vit_pytorch, model)(**vit), int(size)
        from vit_pytorch.efficient import ViT

        module, cls, _ = TRANSFORMERS[spec.pop("type")]
        transformer = getattr(importlib.import_module(module), cls)(**spec)
        return ViT(**vit, transformer=transformer), int(size)

    def port(self, model: Any, state: dict[str, np.ndarray]) -> None:
        raise ValueError(f"vit_pytorch {type(model).__name__} has its own parameter names (to_patch_embedding, "
                         "to_qkv, ...), not timm's: no weights can be ported into it; set 'port: false' on this side")

    def preprocessing(self, model: Any) -> dict[str, Any] | None:
        return None  # none: fine-tuning falls back to ImageNet's mean/std (finetune.data.data_config) and says so

    def list_names(self) -> list[str]:
        return [*EXACT, f"{EFFICIENT} (kwargs.transformer: {{type: {' | '.join(TRANSFORMERS)}, ...}})",
                *TRANSFORMERS]


PROVIDER = VitPytorchProvider()
