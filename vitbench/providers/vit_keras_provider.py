"""vit-keras (faustomorales, 0.2.0, Keras 3 via ``keras.ops``) as a side: its ``vit.build_model`` under timm's ViT
names, with timm's weights ported in.

Names: vit-keras's own configs ``vit_base_patch16_224`` (its ``vit_b16``), ``vit_base_patch32_224`` (``vit_b32``),
``vit_large_patch16_224`` (``vit_l16``), and through the same ``build_model`` the smaller timm sizes
``vit_tiny_patch16_224`` and ``vit_small_patch16_224``. kwargs in timm's words (``embed_dim``, ``depth``,
``num_heads``, ``patch_size``, ``mlp_ratio``, ``num_classes``) override the config; ``img_size`` sets the fixed
input size of its functional model. Nothing is downloaded (``build_model``, never ``load_pretrained``).

The architecture is timm's ViT exactly (pre-norm blocks, LayerNorm eps 1e-6, exact erf GELU, class token, learned
position table, final norm, token pooling), so the port is exact: timm's fused ``qkv`` is split into vit-keras's
``query``/``key``/``value`` Dense kernels; see ``port_table``. vit-keras imports OpenCV (``cv2``, for its image
utilities): the ``references`` extra installs ``opencv-python-headless``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .keras_common import KerasProvider
from .torch_common import needs_reference_package, unknown_model

NAMES = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_base_patch32_224",
         "vit_large_patch16_224")
TIMM_KWARGS = {"embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "num_classes", "img_size"}


def vit_config(provider: str, model: str, kwargs: dict[str, Any], img_size: int | None) -> dict[str, Any]:
    """A ViT's config under timm's name, with timm-style ``kwargs`` (``TIMM_KWARGS``) and ``img_size`` over it; for
    the providers that build another library's ViT from timm's words (vit_keras, tf_models)."""
    from vitbench.models.configs import VIT_CONFIGS

    extra = sorted(set(kwargs) - TIMM_KWARGS)
    if extra:
        raise ValueError(f"{provider}: unsupported kwargs {extra} (supported: {sorted(TIMM_KWARGS)})")
    cfg = {"mlp_ratio": 4.0, "num_classes": 1000, "in_chans": 3, **VIT_CONFIGS[model], **kwargs}
    if img_size:
        cfg["img_size"] = img_size
    return cfg


class VitKerasProvider(KerasProvider):
    name = "vit_keras"

    def check(self, model: str) -> str | None:
        return None if model in NAMES else unknown_model("vit_keras", model, list(NAMES))

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        needs_reference_package("vit_keras", model, ("vit_keras", "vit-keras and opencv-python-headless"))
        from vit_keras import vit

        cfg = vit_config("vit_keras", model, kwargs, img_size)
        m = vit.build_model(
            image_size=cfg["img_size"], patch_size=cfg["patch_size"], num_layers=cfg["depth"],
            hidden_size=cfg["embed_dim"], num_heads=cfg["num_heads"], name=model,
            mlp_dim=int(cfg["embed_dim"] * cfg["mlp_ratio"]), classes=cfg["num_classes"], dropout=0.0,
            activation="linear", include_top=cfg["num_classes"] > 0, representation_size=None)
        return m, cfg["img_size"]

    def port(self, model: Any, state: dict[str, np.ndarray]) -> None:
        from vitbench.port import assign_strict

        assign_strict(model, port_table(model, state), state)

    def export_state(self, model: Any) -> dict[str, np.ndarray]:
        """The weights under timm's names (the port table read backwards)."""
        from vitbench.port import export_state

        return export_state(port_table(model, {}))

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None:
        return None  # not counted: vit-keras has no config object to count from (ours counts the same network)

    def list_names(self) -> list[str]:
        return list(NAMES)


def port_table(model: Any, state: dict[str, np.ndarray]) -> list[tuple[Any, str, Any]]:
    """(vit-keras variable, timm key, transform): the fused qkv (3C, C) is split by row blocks into query, key and
    value; Dense kernels are transposed, the patch conv goes OIHW -> HWIO. Rows reading one timm key several times
    (qkv) take their part of it (``qkv_part``)."""
    from vitbench.port import conv, linear, qkv_part, same

    rows: list[tuple[Any, str, Any]] = [
        (model.get_layer("embedding").kernel, "patch_embed.proj.weight", conv),
        (model.get_layer("embedding").bias, "patch_embed.proj.bias", same),
        (model.get_layer("class_token").cls, "cls_token", same),
        (model.get_layer("Transformer_posembed_input").pe, "pos_embed", same),
    ]
    depth = sum(1 for layer in model.layers if layer.name.startswith("Transformer_encoderblock_"))
    for i in range(depth):
        blk, p = model.get_layer(f"Transformer_encoderblock_{i}"), f"blocks.{i}."
        att, mlp = blk.att, blk.mlpblock.layers
        rows += [(blk.layernorm1.gamma, p + "norm1.weight", same), (blk.layernorm1.beta, p + "norm1.bias", same)]
        for part, dense in enumerate((att.query_dense, att.key_dense, att.value_dense)):
            rows += [(dense.kernel, p + "attn.qkv.weight", qkv_part(part, linear)),
                     (dense.bias, p + "attn.qkv.bias", qkv_part(part, same))]
        rows += [(att.combine_heads.kernel, p + "attn.proj.weight", linear),
                 (att.combine_heads.bias, p + "attn.proj.bias", same),
                 (blk.layernorm2.gamma, p + "norm2.weight", same), (blk.layernorm2.beta, p + "norm2.bias", same),
                 (mlp[0].kernel, p + "mlp.fc1.weight", linear), (mlp[0].bias, p + "mlp.fc1.bias", same),
                 (mlp[3].kernel, p + "mlp.fc2.weight", linear), (mlp[3].bias, p + "mlp.fc2.bias", same)]
    norm = model.get_layer("Transformer_encoder_norm")
    rows += [(norm.gamma, "norm.weight", same), (norm.beta, "norm.bias", same)]
    if any(layer.name == "head" for layer in model.layers):
        head = model.get_layer("head")
        rows += [(head.kernel, "head.weight", linear), (head.bias, "head.bias", same)]
    return rows


PROVIDER = VitKerasProvider()
