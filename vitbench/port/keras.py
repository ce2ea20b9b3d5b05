"""Port tables of our Keras models: (variable, timm key, transform) for every weight of each family, read forwards
to load a timm (or our torch twin's) state_dict strictly both ways, and backwards (``export_state``) to hand a
Keras model's weights out under timm's names. They sit here, beside the port helpers they use, so that
``vitbench.models`` holds the networks only (as the torch families, whose ports are timm's state_dict names).

``load_timm_state_dict(model, state)`` and ``port_table(model)`` work for every family; the registry of
``vitbench.models.keras`` calls the former. Importing this module imports Keras."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from ..models.keras.hiera import HieraDet
from ..models.keras.layers import Attention
from ..models.keras.sam import VisionTransformerSAM, resize_pos_embed
from ..models.keras.swin import PatchMerging, SwinTransformer
from ..models.keras.swinv2_cr import SwinTransformerV2Cr
from ..models.keras.vit import VisionTransformer
from . import Row, assign_strict, conv, dense_rows, linear, ln_rows, nhwc, same

# --- ViT ---------------------------------------------------------------------------------------------------------

# --- weight port: timm / our torch state_dict -> this model ------------------------------------------------------

def attention_rows(layer: Attention, prefix: str = "") -> list[Row]:
    """An Attention's rows from timm's ``{prefix}qkv``, ``q_norm``, ``k_norm``, ``proj``."""
    rows = dense_rows(layer.qkv, prefix + "qkv")
    if layer.qk_norm:
        rows += ln_rows(layer.q_norm, prefix + "q_norm") + ln_rows(layer.k_norm, prefix + "k_norm")
    return rows + dense_rows(layer.proj, prefix + "proj")


def vit_table(model: VisionTransformer) -> list[Row]:
    """(our variable, timm key, transform) for every weight, in a reviewable table."""
    rows = [(model.patch_embed.proj.kernel, "patch_embed.proj.weight", conv),
            (model.patch_embed.proj.bias, "patch_embed.proj.bias", same)]
    if model.cls_token is not None:
        rows.append((model.cls_token, "cls_token", same))
    rows.append((model.pos_embed, "pos_embed", same))
    for i, b in enumerate(model.blocks):
        p = f"blocks.{i}."
        rows += ln_rows(b.norm1, p + "norm1") + attention_rows(b.attn, p + "attn.")
        rows += ln_rows(b.norm2, p + "norm2") + dense_rows(b.mlp.fc1, p + "mlp.fc1")
        rows += dense_rows(b.mlp.fc2, p + "mlp.fc2")
        for name in ("ls1", "ls2"):
            if getattr(b, name) is not None:
                rows.append((getattr(b, name).gamma, p + name + ".gamma", same))
    for name in ("norm", "fc_norm"):
        if getattr(model, name) is not None:
            rows += ln_rows(getattr(model, name), name)
    if model.head is not None:
        rows += dense_rows(model.head, "head")
    return rows


def load_vit(model: VisionTransformer, state: dict[str, np.ndarray]) -> None:
    """Assign every weight from a timm ViT state_dict (numpy arrays), strictly both ways (``PortError``)."""
    if not model.built:
        model.build((1, model.img_size, model.img_size, model.in_chans))
    assign_strict(model, vit_table(model), state)


def load_timm_attention(layer: Attention, state: dict[str, np.ndarray]) -> None:
    """timm ``Attention`` state_dict (qkv, q_norm/k_norm, proj) -> our Keras Attention, strictly."""
    if not layer.built:
        layer.build((1, 1, layer.dim))
    assign_strict(layer, attention_rows(layer), state)


# --- SAM's ViT (and the RSBuilding backbone) ----------------------------------------------------------------

def sam_checkpoint_filter_fn(state_dict: dict[str, np.ndarray], model: VisionTransformerSAM) -> dict[str, np.ndarray]:
    """timm SAM ViT state_dict -> the keys our port reads (as the torch twin's): ``_orig_mod.`` prefixes dropped;
    ``head.*`` dropped when ours has no classifier; ``pos_embed`` resized (bicubic, antialiased) to our grid."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace("_orig_mod.", "")
        if k.startswith("head.") and model.head is None:
            continue  # a backbone without a classifier takes no head weights
        if k == "pos_embed" and tuple(v.shape[1:3]) != tuple(model.grid_size):
            v = ops.convert_to_numpy(resize_pos_embed(np.asarray(v, np.float32), model.grid_size))
        out[k] = v
    return out


# --- weight port: timm / our torch state_dict -> this model ------------------------------------------------------

def sam_table(model: VisionTransformerSAM) -> list[tuple[keras.Variable, str, Callable[[np.ndarray], np.ndarray]]]:
    """(our variable, timm key, transform) for every weight, in a reviewable table. SAM has no derived buffers
    (no relative_position_index / attn_mask): every timm key is a parameter."""
    rows = [
        (model.patch_embed.proj.kernel, "patch_embed.proj.weight", conv),
        (model.patch_embed.proj.bias, "patch_embed.proj.bias", same),
        (model.pos_embed, "pos_embed", same),
    ]
    for i, b in enumerate(model.blocks):
        p = f"blocks.{i}."
        rows += [
            (b.norm1.gamma, p + "norm1.weight", same), (b.norm1.beta, p + "norm1.bias", same),
            (b.attn.qkv.kernel, p + "attn.qkv.weight", linear),
            (b.attn.proj.kernel, p + "attn.proj.weight", linear), (b.attn.proj.bias, p + "attn.proj.bias", same),
            (b.norm2.gamma, p + "norm2.weight", same), (b.norm2.beta, p + "norm2.bias", same),
            (b.mlp.fc1.kernel, p + "mlp.fc1.weight", linear), (b.mlp.fc1.bias, p + "mlp.fc1.bias", same),
            (b.mlp.fc2.kernel, p + "mlp.fc2.weight", linear), (b.mlp.fc2.bias, p + "mlp.fc2.bias", same),
        ]
        if b.attn.qkv_bias:
            rows.append((b.attn.qkv.bias, p + "attn.qkv.bias", same))
        if b.attn.use_rel_pos:
            rows += [(b.attn.rel_pos_h, p + "attn.rel_pos_h", same), (b.attn.rel_pos_w, p + "attn.rel_pos_w", same)]
    n0, n1, n2, n3 = model.neck
    rows += [
        (n0.kernel, "neck.0.weight", conv),
        (n1.gamma, "neck.1.weight", same), (n1.beta, "neck.1.bias", same),
        (n2.kernel, "neck.2.weight", conv),
        (n3.gamma, "neck.3.weight", same), (n3.beta, "neck.3.bias", same),
    ]
    if model.head is not None:
        rows += [(model.head.kernel, "head.fc.weight", linear), (model.head.bias, "head.fc.bias", same)]
    return rows


def load_sam(model: VisionTransformerSAM, state: dict[str, np.ndarray]) -> None:
    """Assign every weight from a timm SAM ViT state_dict (numpy arrays), after ``checkpoint_filter_fn`` (head keys
    dropped for a model without a classifier, ``pos_embed`` resized to our grid). Strict otherwise."""
    if not model.built:
        model.build((None, model.img_size, model.img_size, model.in_chans))
    assign_strict(model, sam_table(model), sam_checkpoint_filter_fn(state, model))


# --- Swin and SwinV2-cr ------------------------------------------------------------------------------------------

# --- weight port: timm / our torch state_dict -> this model ------------------------------------------------------

def stem_rows(model) -> list[Row]:
    """Patch embedding (conv + norm), shared by Swin and SwinV2-cr."""
    pe = model.patch_embed
    return [(pe.proj.kernel, "patch_embed.proj.weight", conv), (pe.proj.bias, "patch_embed.proj.bias", same),
            *ln_rows(pe.norm, "patch_embed.norm")]


def merge_rows(merge: PatchMerging | None, key: str) -> list[Row]:
    if merge is None:
        return []
    return [*ln_rows(merge.norm, key + ".norm"), *dense_rows(merge.reduction, key + ".reduction")]


def swin_table(model: SwinTransformer) -> list[Row]:
    """(our variable, timm key, transform) for every weight, in a reviewable table."""
    rows = stem_rows(model)
    for i, stage in enumerate(model.layers_):
        rows += merge_rows(stage.downsample, f"layers.{i}.downsample")
        for j, b in enumerate(stage.blocks):
            p = f"layers.{i}.blocks.{j}."
            rows += [*ln_rows(b.norm1, p + "norm1"),
                     (b.attn.relative_position_bias_table, p + "attn.relative_position_bias_table", same),
                     *dense_rows(b.attn.qkv, p + "attn.qkv"), *dense_rows(b.attn.proj, p + "attn.proj"),
                     *ln_rows(b.norm2, p + "norm2"),
                     *dense_rows(b.mlp.fc1, p + "mlp.fc1"), *dense_rows(b.mlp.fc2, p + "mlp.fc2")]
    rows += ln_rows(model.norm, "norm")
    if model.head.fc is not None:
        rows += dense_rows(model.head.fc, "head.fc")
    return rows


def load_swin(model: SwinTransformer, state: dict[str, np.ndarray]) -> None:
    """Assign every weight from a timm Swin state_dict (numpy arrays), strictly both ways."""
    if not model.built:
        model.build((None, model.img_size, model.img_size, model.in_chans))
    assign_strict(model, swin_table(model), state)


# --- weight port: timm / our torch state_dict -> this model ------------------------------------------------------

def swinv2_cr_table(model: SwinTransformerV2Cr) -> list[Row]:
    """(our variable, timm key, transform) for every weight, in a reviewable table."""
    rows = stem_rows(model)
    for i, stage in enumerate(model.stages):
        rows += merge_rows(stage.downsample, f"stages.{i}.downsample")
        for j, b in enumerate(stage.blocks):
            p = f"stages.{i}.blocks.{j}."
            rows += [(b.attn.logit_scale, p + "attn.logit_scale", same),
                     *dense_rows(b.attn.qkv, p + "attn.qkv"), *dense_rows(b.attn.proj, p + "attn.proj"),
                     *dense_rows(b.attn.meta_mlp.fc1, p + "attn.meta_mlp.fc1"),
                     *dense_rows(b.attn.meta_mlp.fc2, p + "attn.meta_mlp.fc2"),
                     *ln_rows(b.norm1, p + "norm1"),
                     *dense_rows(b.mlp.fc1, p + "mlp.fc1"), *dense_rows(b.mlp.fc2, p + "mlp.fc2"),
                     *ln_rows(b.norm2, p + "norm2")]
            if b.norm3 is not None:
                rows += ln_rows(b.norm3, p + "norm3")
    if model.head.fc is not None:
        rows += dense_rows(model.head.fc, "head.fc")
    return rows


def load_swinv2_cr(model: SwinTransformerV2Cr, state: dict[str, np.ndarray]) -> None:
    """Assign every weight from a timm SwinV2-cr state_dict (numpy arrays), strictly both ways."""
    if not model.built:
        model.build((None, model.img_size, model.img_size, model.in_chans))
    assign_strict(model, swinv2_cr_table(model), state)


# --- Hiera ------------------------------------------------------------------------------------------------------

# --- weight port: timm / our torch state_dict -> this model ------------------------------------------------------

def hiera_table(model: HieraDet) -> list[tuple[keras.Variable, str, Callable[[np.ndarray], np.ndarray]]]:
    """(our variable, timm key, transform) for every weight, in a reviewable table."""
    rows = [
        (model.patch_embed.proj.kernel, "patch_embed.proj.weight", conv),
        (model.patch_embed.proj.bias, "patch_embed.proj.bias", same),
        (model.pos_embed, "pos_embed", nhwc),
        (model.pos_embed_window, "pos_embed_window", nhwc),
    ]
    for i, b in enumerate(model.blocks):
        p = f"blocks.{i}."
        rows += [
            (b.norm1.gamma, p + "norm1.weight", same), (b.norm1.beta, p + "norm1.bias", same),
            (b.attn.qkv.kernel, p + "attn.qkv.weight", linear), (b.attn.qkv.bias, p + "attn.qkv.bias", same),
            (b.attn.proj.kernel, p + "attn.proj.weight", linear), (b.attn.proj.bias, p + "attn.proj.bias", same),
            (b.norm2.gamma, p + "norm2.weight", same), (b.norm2.beta, p + "norm2.bias", same),
            (b.mlp.fc1.kernel, p + "mlp.fc1.weight", linear), (b.mlp.fc1.bias, p + "mlp.fc1.bias", same),
            (b.mlp.fc2.kernel, p + "mlp.fc2.weight", linear), (b.mlp.fc2.bias, p + "mlp.fc2.bias", same),
        ]
        if b.proj is not None:  # shortcut projection at a stage change
            rows += [(b.proj.kernel, p + "proj.weight", linear), (b.proj.bias, p + "proj.bias", same)]
    rows += [(model.head.norm.gamma, "head.norm.weight", same), (model.head.norm.beta, "head.norm.bias", same)]
    if model.head.fc is not None:
        rows += [(model.head.fc.kernel, "head.fc.weight", linear), (model.head.fc.bias, "head.fc.bias", same)]
    return rows


def load_hiera(model: HieraDet, state: dict[str, np.ndarray]) -> None:
    """Assign every weight from a timm HieraDet state_dict (numpy arrays), strictly (Hiera has no buffers)."""
    if not model.built:
        model.build((1, model.img_size, model.img_size, model.in_chans))
    assign_strict(model, hiera_table(model), state)


_FAMILIES: list[tuple[type, Callable[[Any], list[Row]], Callable[[Any, dict[str, np.ndarray]], None]]] = [
    (VisionTransformerSAM, sam_table, load_sam),  # before ViT: neither derives from the other, order for clarity
    (VisionTransformer, vit_table, load_vit),
    (SwinTransformerV2Cr, swinv2_cr_table, load_swinv2_cr),
    (SwinTransformer, swin_table, load_swin),
    (HieraDet, hiera_table, load_hiera),
]


def _family(model: Any) -> tuple[Callable[[Any], list[Row]], Callable[[Any, dict[str, np.ndarray]], None]]:
    for cls, table, load in _FAMILIES:
        if isinstance(model, cls):
            return table, load
    raise ValueError(f"no weight port for {type(model).__name__}")


def port_table(model: Any) -> list[Row]:
    """The port table of any of our Keras models (or, for ``Attention``, of the layer)."""
    if isinstance(model, Attention):
        return attention_rows(model)
    return _family(model)[0](model)


def load_timm_state_dict(model: Any, state: dict[str, np.ndarray]) -> None:
    """Port a timm (or our torch twin's) state_dict, as numpy arrays, into any of our Keras models, strictly."""
    _family(model)[1](model, state)
