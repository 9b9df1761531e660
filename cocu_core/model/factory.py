"""Building models: a registered config by name (with overrides), a model from it, or from a checkpoint's dict."""

from __future__ import annotations

from typing import Any

import cocu_core.model.configs  # noqa: F401  (registers the named configs)
from cocu_core.model.groupvit import GroupViT, GroupViTConfig
from cocu_core.model.registry import registered


def build_model(config: GroupViTConfig | dict[str, Any]) -> GroupViT:
    """Why: rebuild a model from a checkpoint's config dict (or a config)."""
    if isinstance(config, dict):
        config = GroupViTConfig.from_dict(config)
    return GroupViT(config)


def get_config(name: str, /, **overrides: Any) -> GroupViTConfig:
    """Why: a registered config with overrides applied, without building the model."""
    return registered(name)().replace(**overrides)


def create_model(name: str, /, **overrides: Any) -> GroupViT:
    """Why: build a registered GroupViT, e.g. create_model("groupvit-toy", drop_path_rate=0.1)."""
    return GroupViT(get_config(name, **overrides))
