"""The curation CLIP: any open_clip model, or the toy world's own `cocu-tiny` trained with InfoNCE."""

from cocu_core.encoder.load import (LoadedEncoder, encode_images, encode_text, load_encoder, make_text_encoder,
                                    resolve_weights)
from cocu_core.encoder.toy_model import TOY_MODEL, register_toy_model, toy_model_config

__all__ = [
    "LoadedEncoder", "encode_images", "encode_text", "load_encoder", "make_text_encoder", "resolve_weights",
    "TOY_MODEL", "register_toy_model", "toy_model_config",
]
