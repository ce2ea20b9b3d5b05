"""Our Keras 3 models (any backend). Importing this package imports keras and registers every model family: keep
it out of torch-only paths."""
from . import hiera, sam, swin, swinv2_cr, vit  # noqa: F401  (registers models)
from ._registry import create_model, list_models, load_timm_state_dict, model_entry, register_configs
from .hiera import HieraDet
from .layers import SDPA, Attention, Mlp, PatchEmbed, sdpa
from .sam import RSBuildingBackbone, VisionTransformerSAM
from .swin import SwinTransformer
from .swinv2_cr import SwinTransformerV2Cr
from .vit import Block, VisionTransformer

__all__ = ["Attention", "Block", "HieraDet", "Mlp", "PatchEmbed", "RSBuildingBackbone", "SDPA", "SwinTransformer",
           "SwinTransformerV2Cr", "VisionTransformer",
           "VisionTransformerSAM", "create_model", "list_models", "load_timm_state_dict", "model_entry",
           "register_configs", "sdpa"]
