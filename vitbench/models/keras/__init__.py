"""Our Keras 3 models (any backend). Importing this package imports keras: keep it out of torch-only paths."""
from .layers import SDPA, Attention, Mlp, PatchEmbed, sdpa
from .vit import (
                  Block,
                  VisionTransformer,
                  count_macs_acts,
                  create_model,
                  list_models,
                  load_timm_attention,
                  load_timm_state_dict,
                  port_table,
)

__all__ = ["Attention", "Block", "count_macs_acts", "Mlp", "PatchEmbed", "VisionTransformer", "create_model",
           "list_models", "load_timm_attention", "load_timm_state_dict", "port_table", "sdpa", "SDPA"]
