"""Named GroupViT configs, registered the way timm/open_clip register architectures.

A registered entry is a function returning a ``GroupViTConfig``; ``create_model(name, **overrides)`` builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from cocu_core.model.groupvit import GroupViT, GroupViTConfig

_REGISTRY: dict[str, Callable[[], "GroupViTConfig"]] = {}


class UnknownModelError(ValueError):
    """A model name that is not registered; the message lists the registered ones."""


def register_model(name: str) -> Callable[[Callable[[], "GroupViTConfig"]], Callable[[], "GroupViTConfig"]]:
    """Why: decorator adding a config factory under `name` (a second registration of a name is refused)."""
    def deco(fn: Callable[[], "GroupViTConfig"]) -> Callable[[], "GroupViTConfig"]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    """Why: the names `create_model` accepts (for the CLI and error messages)."""
    return sorted(_REGISTRY)


def get_config(name: str, /, **overrides: Any) -> "GroupViTConfig":
    """Why: a registered config with overrides applied, without building the model."""
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {list_models()}")
    return _REGISTRY[name]().replace(**overrides)


def create_model(name: str, /, **overrides: Any) -> "GroupViT":
    """Why: build a registered GroupViT, e.g. create_model("groupvit-toy", drop_path_rate=0.1)."""
    from cocu_core.model.groupvit import GroupViT

    return GroupViT(get_config(name, **overrides))
