"""MACs and activations of our Keras models, from their configs: TensorFlow's profiler does not count Einsum and
one count must serve every Keras backend, so each family's count is written out, op by op, as the torch counter
(``measure.flops``) counts the family's torch twin (tests compare the two)."""
from __future__ import annotations

from typing import Any

from ..models.keras.hiera import HieraDet, padded
from ..models.keras.swin import SwinTransformer
from ..models.keras.swinv2_cr import SwinTransformerV2Cr
from ..models.keras.vit import VisionTransformer
from ..models.keras.windows import window_attention_macs
from .vit_macs import vit_config_macs_acts


def vit_macs_acts(model: VisionTransformer) -> tuple[int, int]:
    """MACs and activations per image from the config (``vit_macs.vit_config_macs_acts``)."""
    return vit_config_macs_acts(model.cfg, model.num_prefix_tokens)


def swin_macs_acts(model: SwinTransformer) -> tuple[int, int]:
    """MACs and activations per image of ``img_size``, counted as the torch counter counts our torch twin (patch
    conv, merging reduction, windowed attention over the padded map, MLP, head fc)."""
    c = model.cfg
    h = w = c["img_size"] // c["patch_size"]
    C = c["embed_dim"]
    macs, acts = h * w * C * c["in_chans"] * c["patch_size"] ** 2, h * w * C
    for stage in model.layers_:
        if stage.downsample is not None:
            d = stage.cfg["dim"]
            h, w = (h + 1) // 2, (w + 1) // 2
            macs, acts = macs + h * w * 4 * d * stage.cfg["out_dim"], acts + h * w * stage.cfg["out_dim"]
        for b in stage.blocks:
            (wh, ww), d = b.window_size, b.dim
            tp = (-(-h // wh) * wh) * (-(-w // ww) * ww)
            m, a = window_attention_macs(tp, wh * ww, d, b.num_heads)
            hidden = b.mlp.hidden
            macs, acts = macs + m + 2 * h * w * d * hidden, acts + a + h * w * (hidden + d)
    if model.head.fc is not None:
        macs, acts = macs + model.num_features * model.num_classes, acts + model.num_classes
    return macs, acts


def swinv2_cr_macs_acts(model: SwinTransformerV2Cr) -> tuple[int, int]:
    """MACs and activations per image, counted as the torch counter counts our torch twin: as Swin's, plus each
    block's meta MLP over the N*N offsets (recomputed every call)."""
    c = model.cfg
    h = w = c["img_size"] // c["patch_size"]
    C = c["embed_dim"]
    macs, acts = h * w * C * c["in_chans"] * c["patch_size"] ** 2, h * w * C
    for stage in model.stages:
        if stage.downsample is not None:
            d = stage.cfg["dim"]
            h, w = (h + 1) // 2, (w + 1) // 2
            macs, acts = macs + h * w * 4 * d * 2 * d, acts + h * w * 2 * d
        for b in stage.blocks:
            (wh, ww), d = b.window_size, b.dim
            n = wh * ww
            tp = (-(-h // wh) * wh) * (-(-w // ww) * ww)
            m, a = window_attention_macs(tp, n, d, b.num_heads)
            hid, mh = b.mlp.hidden, b.attn.meta_hidden_dim
            macs += m + 2 * h * w * d * hid + n * n * (2 * mh + mh * b.num_heads)
            acts += a + h * w * (hid + d) + n * n * (mh + b.num_heads)
    if model.head.fc is not None:
        macs, acts = macs + model.num_features * model.num_classes, acts + model.num_classes
    return macs, acts


def hiera_macs_acts(model: HieraDet) -> tuple[int, int]:
    """MACs and activations per image of ``img_size`` from the config, counted as the torch counter counts our
    torch twin (patch conv, qkv, q@k^T, attn@v, proj, shortcut proj, MLP, head fc; activations = outputs of those
    ops; windows counted with their zero padding, as they are computed)."""
    c = model.cfg
    h = w = (c["img_size"] + 2 * 3 - 7) // 4 + 1
    C = c["embed_dim"]
    macs, acts = h * w * C * c["in_chans"] * 49, h * w * C
    for b in model.blocks:
        d, do, heads = b.dim, b.dim_out, b.num_heads
        ws = b.window_size[0]
        hp, wp = (padded(h, w, b.window_size)[:2] if ws else (h, w))
        n_win, n_k = (hp // ws) * (wp // ws) if ws else 1, (ws * ws if ws else h * w)
        s = b.q_stride or (1, 1)
        qh, qw = (ws or h) // s[0], (ws or w) // s[1]
        n_q = qh * qw
        oh, ow = h // s[0], w // s[1]
        tok, tok_out = h * w, oh * ow
        qkv_tok = hp * wp if ws else tok
        macs += qkv_tok * d * 3 * do + n_win * (2 * n_q * n_k * do) + n_win * n_q * do * do
        acts += qkv_tok * 3 * do + n_win * (heads * n_q * n_k + n_q * do) + n_win * n_q * do
        if b.proj is not None:
            macs, acts = macs + tok * d * do, acts + tok * do
        hidden = b.mlp.hidden
        macs += 2 * tok_out * do * hidden
        acts += tok_out * (hidden + do)
        h, w = oh, ow
    if model.head.fc is not None:
        macs, acts = macs + model.num_features * model.num_classes, acts + model.num_classes
    return macs, acts


_COUNTERS = [(VisionTransformer, vit_macs_acts), (SwinTransformerV2Cr, swinv2_cr_macs_acts),
             (SwinTransformer, swin_macs_acts), (HieraDet, hiera_macs_acts)]


def count_macs_acts(model: Any) -> tuple[int, int] | None:
    """MACs and activations per image of one of our Keras models (SAM: not counted), or None for another model.
    The model need not be built: the counts read its config."""
    for cls, count in _COUNTERS:
        if isinstance(model, cls):
            return count(model)
    return None
