"""GroupViT (Xu et al., CVPR 2022) for CoCu: model, named configs and the Hugging Face weight adapter."""

from cocu_core.compat import ensure_torchvision

ensure_torchvision()  # timm and open_clip import torchvision; patch a CUDA-wheel torchvision beside CPU torch first

from cocu_core.model.factory import build_model, create_model, get_config  # noqa: E402
from cocu_core.model.groupvit import GroupViT, GroupViTConfig, ImageFeatures, ModelConfigError  # noqa: E402
from cocu_core.model.registry import UnknownModelError, list_models, register_model  # noqa: E402
from cocu_core.model.text import tokenize  # noqa: E402
from cocu_core.model.vision import compose_assignments  # noqa: E402

__all__ = [
    "GroupViT",
    "GroupViTConfig",
    "ImageFeatures",
    "ModelConfigError",
    "UnknownModelError",
    "build_model",
    "compose_assignments",
    "create_model",
    "get_config",
    "list_models",
    "register_model",
    "tokenize",
]
