"""Our PyTorch models. Importing this package registers every model family."""
from . import hiera, sam, swin, swinv2_cr, vit  # noqa: F401  (registers models)
from ._registry import create_model, is_model, list_models, register_model
from .layers import SDPA, Attention, Mlp, PatchEmbed, sdpa, sdpa_chunked
from .vit import Block, VisionTransformer, checkpoint_filter_fn

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "VisionTransformer", "checkpoint_filter_fn", "create_model",
           "is_model", "list_models", "register_model", "sdpa", "sdpa_chunked", "SDPA"]
