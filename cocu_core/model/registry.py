"""The model registry alone (timm's `_registry.py`): a name -> config-factory dict, its decorator and the names.

It imports no model, so `configs.py` (the registered configs) and `factory.py` (building them) can both import
it without a cycle; a registered entry is a function returning a ``GroupViTConfig``.
"""

from __future__ import annotations

from typing import Any, Callable

from cocu_core.errors import CocuError

ConfigFactory = Callable[[], Any]  # returns a GroupViTConfig
_REGISTRY: dict[str, ConfigFactory] = {}


class UnknownModelError(ValueError, CocuError):
    """A model name that is not registered; the message lists the registered ones."""


def register_model(name: str) -> Callable[[ConfigFactory], ConfigFactory]:
    """Why: decorator adding a config factory under `name` (a second registration of a name is refused)."""
    def deco(fn: ConfigFactory) -> ConfigFactory:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    """Why: the names `create_model` accepts (for the CLI and error messages)."""
    return sorted(_REGISTRY)


def registered(name: str) -> ConfigFactory:
    """Why: the factory of one name, or one line listing the registered names."""
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {list_models()}")
    return _REGISTRY[name]
