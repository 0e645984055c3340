"""Registry of architectures: ``build_model(name, **kwargs)`` instead of if/elif chains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register an ``nn.Module`` class under ``name`` (class decorator)."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"Architecture name {name!r} is already registered.")
        _MODELS[name] = cls
        return cls

    return decorator


def get_model_class(name: str) -> type[nn.Module]:
    """Return the architecture class registered under ``name``."""
    try:
        return _MODELS[name]
    except KeyError:
        known = ", ".join(sorted(_MODELS)) or "none"
        raise KeyError(f"Unknown architecture {name!r}; known architectures: {known}.") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the architecture ``name`` with keyword arguments from its config."""
    return get_model_class(name)(**kwargs)
