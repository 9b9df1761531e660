"""The `cocu-tiny` open_clip architecture: a CLIP small enough to train on 2 CPU cores in minutes.

It is an ordinary open_clip model config (CLIP's ModifiedResNet image tower by default, or a ViT, and a
text transformer), registered with ``open_clip.add_model_config`` so open_clip, clip-retrieval and our
loaders treat it like any other architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cocu_core.compat import ensure_torchvision
from cocu_core.config import EncoderConfig
from cocu_core.io import write_json_atomic

TOY_MODEL = "cocu-tiny"


def toy_model_config(enc: EncoderConfig, image_size: int) -> dict[str, Any]:
    """Why: one place defines the tiny architecture; its width/depth are part of the encoder cache key."""
    if enc.toy_vision == "resnet":
        if image_size % 32:
            raise ValueError(f"the ResNet image tower needs an image size divisible by 32, got {image_size}")
        # A list of stage depths makes open_clip build CLIP's ModifiedResNet (attention-pool head), as for RN50.
        vision: dict[str, Any] = {
            "image_size": image_size,
            "layers": list(enc.toy_resnet_layers),
            "width": enc.toy_resnet_width,
            "head_width": 32,
        }
    else:
        patch = enc.toy_patch_size
        if image_size % patch:
            raise ValueError(f"encoder.toy_patch_size {patch} does not divide the image size {image_size}")
        vision = {
            "image_size": image_size,
            "layers": enc.toy_vision_layers,
            "width": enc.toy_vision_width,
            "head_width": 32,
            "patch_size": patch,
            "mlp_ratio": 2.0,
        }
    return {
        "embed_dim": enc.embed_dim,
        "vision_cfg": vision,
        "text_cfg": {
            "context_length": enc.toy_context_length,
            "vocab_size": 49408,
            "width": enc.toy_text_width,
            "heads": max(1, enc.toy_text_width // 32),
            "layers": enc.toy_text_layers,
            "mlp_ratio": 2.0,
        },
    }


def register_toy_model(enc: EncoderConfig, image_size: int, folder: str | Path) -> Path:
    """Why: open_clip names a model after its JSON file; write `cocu-tiny.json` and register it."""
    ensure_torchvision()
    import open_clip

    path = Path(folder) / f"{TOY_MODEL}.json"
    cfg = toy_model_config(enc, image_size)
    if not path.is_file() or _read(path) != cfg:
        write_json_atomic(path, cfg)
    open_clip.add_model_config(path)
    return path


def _read(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
