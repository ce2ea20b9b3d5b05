"""keras-hub (0.32) as a side: its ViT, Swin Transformer and ViTDet (SAM's image encoder) built from config under
timm's names, with timm's weights ported in. Nothing is downloaded (the constructors, never ``from_preset``).

Names and the keras-hub model each builds:

- ``vit_{tiny,small,base,large}_patch16_224``, ``vit_base_patch32_224``: ``ViTImageClassifier`` (token pooling,
  ``Dense`` head) on a ``ViTBackbone``; output timm's logits (B, num_classes).
- ``swin_{tiny,small,base}_patch4_window7_224``: ``SwinTransformerImageClassifier`` (mean of the tokens, ``Dense``
  head) on a ``SwinTransformerBackbone``; output timm's logits.
- ``samvit_{base,large,huge}_patch16``: ``ViTDetBackbone`` (patch embedding, absolute and decomposed relative
  positions, windowed/global blocks, neck); output the neck's map (B, H, W, 256), compared with timm's
  ``forward_features`` (suites say ``output: features``; the Keras worker moves it to NCHW).

kwargs in timm's words override the config (ViT: embed_dim, depth, num_heads, patch_size, mlp_ratio, num_classes;
Swin: embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio, num_classes; SAM: embed_dim, depth,
num_heads, global_attn_indexes, window_size, patch_size, mlp_ratio, neck_chans); ``img_size`` sets the fixed input
size of the functional model (224 for ViT/Swin, 1024 for SAM when not given).

The ports are strict both ways (every keras-hub variable filled, every timm key used; see the ``*_port_table``
functions). ViT and Swin are timm's architecture exactly (LayerNorm eps 1e-6 / 1e-5, exact erf GELU, the same
relative-position index and patch-merging order as timm's), so their ports are plain. keras-hub's ViTDet differs
from timm's samvit in two places the port makes good (``differences`` says so, and the worker writes it into the
row's ``numerics_error``): it normalises its input with ImageNet's mean/std inside the model (folded into the patch
embedding here), and its blocks' LayerNorm eps is fixed at 1e-6 (its ``layer_norm_epsilon`` is not passed to
them) where timm's samvit uses 1e-5: left as keras-hub ships it, so the row measures keras-hub's ViTDet as users
get it (about 2e-5 at ViT-B, 256 px, within the Keras rows' 1e-4).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .keras_common import KERAS_MACS_METHOD, KerasProvider
from .torch_common import needs_reference_package, unknown_model

VIT = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_base_patch32_224",
       "vit_large_patch16_224")
SWIN = ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224")
SAM = ("samvit_base_patch16", "samvit_large_patch16", "samvit_huge_patch16")
NAMES = VIT + SWIN + SAM
KWARGS = {
    "vit": {"embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "num_classes", "img_size"},
    "swin": {"embed_dim", "depths", "num_heads", "window_size", "patch_size", "mlp_ratio", "num_classes", "img_size"},
    "sam": {"embed_dim", "depth", "num_heads", "global_attn_indexes", "window_size", "patch_size", "mlp_ratio",
            "neck_chans", "img_size"},
}
SAM_DIFFERENCES = ("keras-hub ViTDet normalises its input by ImageNet mean/std inside the model (timm's samvit "
                   "does not): folded into the patch-embedding conv (kernel*std, bias+sum(kernel*mean)); its block "
                   "LayerNorm eps is 1e-6 whatever layer_norm_epsilon says (not passed on to the blocks), timm's "
                   "is 1e-5: kept as keras-hub ships it (what that costs is this row's max_abs_diff)")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ViTDetBackbone's built-in ones


def family(model: str) -> str:
    return "vit" if model in VIT else "swin" if model in SWIN else "sam"


def _config(model: str, kwargs: dict[str, Any], img_size: int | None) -> dict[str, Any]:
    """The timm-words config of ``model`` with ``kwargs`` on top."""
    from vitbench.models.configs import SAM_CONFIGS, SWIN_CONFIGS, VIT_CONFIGS

    fam = family(model)
    extra = sorted(set(kwargs) - KWARGS[fam])
    if extra:
        raise ValueError(f"keras_hub: unsupported kwargs {extra} for {model} (supported: {sorted(KWARGS[fam])})")
    base = {"vit": {"mlp_ratio": 4.0, "num_classes": 1000, **VIT_CONFIGS.get(model, {})},
            "swin": {"img_size": 224, "patch_size": 4, "window_size": 7, "mlp_ratio": 4.0, "num_classes": 1000,
                     **SWIN_CONFIGS.get(model, {})},
            "sam": {"img_size": 1024, "patch_size": 16, "window_size": 14, "mlp_ratio": 4.0, "neck_chans": 256,
                    **SAM_CONFIGS.get(model, {})}}[fam]
    cfg = {**base, **kwargs}
    if img_size:
        cfg["img_size"] = img_size
    if fam != "sam" and cfg["num_classes"] < 1:
        raise ValueError(f"keras_hub: {model} is built with its classifier (num_classes >= 1)")
    return cfg


class KerasHubProvider(KerasProvider):
    name = "keras_hub"

    def check(self, model: str) -> str | None:
        return None if model in NAMES else unknown_model("keras_hub", model, list(NAMES))

    def check_kwargs(self, model: str, kwargs: dict[str, Any]) -> str | None:
        extra = sorted(set(kwargs) - KWARGS[family(model)]) if model in NAMES else []
        return f"keras_hub: unsupported kwargs {extra} for {model}" if extra else None

    def build(self, model: str, kwargs: dict[str, Any], img_size: int | None) -> tuple[Any, int | None]:
        needs_reference_package("keras_hub", model, ("keras_hub", "keras-hub"))
        import keras_hub

        from vitbench.models.configs import pretrained_cfg

        cfg = _config(model, kwargs, img_size)
        fam, size = family(model), int(cfg["img_size"])
        if fam == "vit":
            backbone = keras_hub.models.ViTBackbone(
                image_shape=(size, size, 3), patch_size=cfg["patch_size"], num_layers=cfg["depth"],
                num_heads=cfg["num_heads"], hidden_dim=cfg["embed_dim"],
                mlp_dim=int(cfg["embed_dim"] * cfg["mlp_ratio"]), layer_norm_epsilon=1e-6, name=f"{model}_backbone")
            m = keras_hub.models.ViTImageClassifier(backbone, cfg["num_classes"], pooling="token", name=model)
        elif fam == "swin":
            res = size // cfg["patch_size"]
            for i in range(len(cfg["depths"])):  # keras-hub shrinks the window but not its rel-pos table
                if res >> i < cfg["window_size"]:
                    raise ValueError(f"keras_hub: Swin stage {i} is {res >> i}x{res >> i}, smaller than the window "
                                     f"{cfg['window_size']}: keras-hub's Swin cannot run it (timm shrinks the window)")
            backbone = keras_hub.models.SwinTransformerBackbone(
                image_shape=(size, size, 3), embed_dim=cfg["embed_dim"], depths=tuple(cfg["depths"]),
                num_heads=tuple(cfg["num_heads"]), window_size=cfg["window_size"], patch_size=cfg["patch_size"],
                mlp_ratio=cfg["mlp_ratio"], drop_path=0.0, name=f"{model}_backbone")
            m = keras_hub.models.SwinTransformerImageClassifier(backbone, cfg["num_classes"], name=model)
        else:
            m = keras_hub.models.ViTDetBackbone(
                hidden_size=cfg["embed_dim"], num_layers=cfg["depth"],
                intermediate_dim=int(cfg["embed_dim"] * cfg["mlp_ratio"]), num_heads=cfg["num_heads"],
                global_attention_layer_indices=list(cfg["global_attn_indexes"]), image_shape=(size, size, 3),
                patch_size=cfg["patch_size"], num_output_channels=cfg["neck_chans"], window_size=cfg["window_size"],
                layer_norm_epsilon=1e-5, name=model)
        m.pretrained_cfg = pretrained_cfg(model, size, cfg.get("num_classes", 0))
        m.vitbench_cfg = {"name": model, **cfg}
        backbone = m if fam == "sam" else m.backbone
        m.forward_features = lambda x: backbone(x)  # SAM: the neck map; ViT/Swin: the final-norm tokens
        return m, size

    def port(self, model: Any, state: dict[str, np.ndarray]) -> None:
        from vitbench.port import assign_strict

        assign_strict(model, port_table(model, state), state)

    def export_state(self, model: Any) -> dict[str, np.ndarray]:
        """The weights under timm's names (the port table read backwards; SAM's folded normalisation does not
        invert, so a keras-hub SAM reference hands out its variable paths)."""
        from vitbench.port import export_state

        return export_state(port_table(model, {}))

    def differences(self, model: Any) -> str | None:
        """One line on where keras-hub's model is not timm's and what the port does about it (None: identical)."""
        return SAM_DIFFERENCES if family(model.vitbench_cfg["name"]) == "sam" else None

    def count_macs(self, model: Any, x: Any) -> tuple[float, float, str] | None:
        """Our Keras twin's analytic counter on the same config (ViT, Swin: the same network); SAM: not counted."""
        from vitbench.measure.keras_macs import count_macs_acts

        cfg = dict(model.vitbench_cfg)
        name = cfg.pop("name")
        if family(name) == "sam":
            return None
        from vitbench.models.keras import model_entry  # registers the families

        cls, base = model_entry(name)
        twin = cls(**{**base, **cfg}, name=f"{name}_count")  # not built: the counter reads its config
        counted = count_macs_acts(twin)
        return None if counted is None else (*counted, KERAS_MACS_METHOD)

    def list_names(self) -> list[str]:
        return list(NAMES)


def port_table(model: Any, state: dict[str, np.ndarray]) -> list[tuple[Any, str, Any]]:
    fam = family(model.vitbench_cfg["name"])
    return {"vit": vit_port_table, "swin": swin_port_table, "sam": sam_port_table}[fam](model, state)


def vit_port_table(model: Any, state: dict[str, np.ndarray]) -> list[tuple[Any, str, Any]]:
    """(keras-hub ViT variable, timm key, transform): timm's fused qkv (3C, C) is split by row blocks into the
    MultiHeadAttention's query/key/value EinsumDense kernels (C, heads, head_dim) and biases (heads, head_dim);
    its output kernel is (heads, head_dim, C); the position table drops timm's batch axis."""
    from vitbench.port import Reshaped, conv, dense_rows, first, linear, ln_rows, qkv_part, same

    bb = model.backbone
    emb, enc = bb.get_layer("vit_patching_and_embedding"), bb.get_layer("vit_encoder")
    C, H = bb.hidden_dim, bb.num_heads
    rows: list[tuple[Any, str, Any]] = [
        (emb.patch_embedding.kernel, "patch_embed.proj.weight", conv),
        (emb.patch_embedding.bias, "patch_embed.proj.bias", same),
        (emb.class_token, "cls_token", same),
        (emb.position_embedding.embeddings, "pos_embed", first),
    ]
    for i, blk in enumerate(enc.encoder_layers):
        p, mha = f"blocks.{i}.", blk.mha
        rows += ln_rows(blk.layer_norm_1, p + "norm1")
        for part, dense in enumerate((mha.query_dense, mha.key_dense, mha.value_dense)):
            rows += [(dense.kernel, p + "attn.qkv.weight", qkv_part(part, Reshaped((C, H, C // H), linear, (C, C)))),
                     (dense.bias, p + "attn.qkv.bias", qkv_part(part, Reshaped((H, C // H), same, (C,))))]
        rows += [(mha.output_dense.kernel, p + "attn.proj.weight", Reshaped((H, C // H, C), linear, (C, C))),
                 (mha.output_dense.bias, p + "attn.proj.bias", same)]
        rows += ln_rows(blk.layer_norm_2, p + "norm2")
        rows += dense_rows(blk.mlp.dense_1, p + "mlp.fc1") + dense_rows(blk.mlp.dense_2, p + "mlp.fc2")
    rows += ln_rows(enc.layer_norm, "norm") + dense_rows(model.output_dense, "head")
    return rows


def swin_port_table(model: Any, state: dict[str, np.ndarray]) -> list[tuple[Any, str, Any]]:
    """(keras-hub Swin variable, timm key, transform). keras-hub merges patches at the end of stage i where timm
    does at the start of stage i+1 (``layers.{i+1}.downsample``); both concatenate the 2x2 neighbours in the order
    (0,0), (1,0), (0,1), (1,1) and build the same relative-position index, so the reduction and the bias tables
    are taken as they are."""
    from vitbench.port import conv, dense_rows, ln_rows, same

    bb = model.backbone
    rows: list[tuple[Any, str, Any]] = [
        (bb.patch_embedding.proj.kernel, "patch_embed.proj.weight", conv),
        (bb.patch_embedding.proj.bias, "patch_embed.proj.bias", same),
        *ln_rows(bb.patch_embedding.norm, "patch_embed.norm"),
    ]
    for i, stage in enumerate(bb.stages):
        for j, blk in enumerate(stage.blocks):
            p = f"layers.{i}.blocks.{j}."
            rows += ln_rows(blk.norm1, p + "norm1") + dense_rows(blk.attn.qkv, p + "attn.qkv")
            rows += [(blk.attn.relative_position_bias_table, p + "attn.relative_position_bias_table", same)]
            rows += dense_rows(blk.attn.proj, p + "attn.proj") + ln_rows(blk.norm2, p + "norm2")
            rows += dense_rows(blk.mlp.fc1, p + "mlp.fc1") + dense_rows(blk.mlp.fc2, p + "mlp.fc2")
        if stage.downsample is not None:
            p = f"layers.{i + 1}.downsample."
            rows += ln_rows(stage.downsample.norm, p + "norm") + dense_rows(stage.downsample.reduction, p + "reduction")
    rows += ln_rows(bb.norm, "norm") + dense_rows(model.output_dense, "head.fc")
    return rows


def _sam_blocks(model: Any) -> list[Any]:
    from keras_hub.src.models.vit_det.vit_layers import WindowedTransformerEncoder

    return [layer for layer in model.layers if isinstance(layer, WindowedTransformerEncoder)]


def _sam_layer(model: Any, cls_name: str) -> Any:
    (layer,) = [la for la in model.layers if type(la).__name__ == cls_name]
    return layer


class _ScaleIn:
    """The patch conv OIHW -> HWIO, times the std of its input channel: keras-hub feeds it (x - mean) / std."""

    def __call__(self, w: np.ndarray) -> np.ndarray:
        from vitbench.port import conv

        return conv(w) * np.asarray(IMAGENET_STD, w.dtype)[None, None, :, None]


class _ShiftBias:
    """The patch conv's bias plus sum(kernel * mean): undoes keras-hub's ``- mean`` (the kernel is timm's)."""

    def __init__(self, kernel: np.ndarray) -> None:
        self.kernel = np.asarray(kernel, np.float64)

    def __call__(self, b: np.ndarray) -> np.ndarray:
        shift = np.einsum("oihw,i->o", self.kernel, np.asarray(IMAGENET_MEAN, np.float64))
        return (b.astype(np.float64) + shift).astype(b.dtype)


def sam_port_table(model: Any, state: dict[str, np.ndarray]) -> list[tuple[Any, str, Any]]:
    """(keras-hub ViTDet variable, timm key, transform): keras-hub's in-model ImageNet normalisation is folded into
    the patch embedding (``_ScaleIn``, ``_ShiftBias``); the fused qkv is one Dense as in timm (same (3, heads,
    head_dim) split); rel_pos_h/w and pos_embed (1, h, w, C) are taken as they are; the neck is Conv2D (1x1),
    LayerNormalization, Conv2D (3x3, same), LayerNormalization, as timm's Conv2d/LayerNorm2d."""
    from vitbench.port import conv, dense_rows, ln_rows, same

    proj = _sam_layer(model, "ViTDetPatchingAndEmbedding").projection
    rows: list[tuple[Any, str, Any]] = [
        (proj.kernel, "patch_embed.proj.weight", _ScaleIn()),
        (proj.bias, "patch_embed.proj.bias", _ShiftBias(state.get("patch_embed.proj.weight", np.zeros(1)))),
        (_sam_layer(model, "AddPositionalEmbedding").pos_embed, "pos_embed", same),
    ]
    for i, blk in enumerate(_sam_blocks(model)):
        p, att, mlp = f"blocks.{i}.", blk.attention, blk.mlp_block.dense_net.layers
        rows += ln_rows(blk.layer_norm1, p + "norm1") + dense_rows(att.qkv, p + "attn.qkv")
        rows += dense_rows(att.projection, p + "attn.proj")
        rel = att.add_decomposed_relative_pe
        rows += [(rel.rel_pos_h, p + "attn.rel_pos_h", same), (rel.rel_pos_w, p + "attn.rel_pos_w", same)]
        rows += ln_rows(blk.layer_norm2, p + "norm2")
        rows += dense_rows(mlp[0], p + "mlp.fc1") + dense_rows(mlp[2], p + "mlp.fc2")
    neck = model.neck.layers
    rows += [(neck[0].kernel, "neck.0.weight", conv), *ln_rows(neck[1], "neck.1"),
             (neck[2].kernel, "neck.2.weight", conv), *ln_rows(neck[3], "neck.3")]
    return rows


PROVIDER = KerasHubProvider()
