"""Bias-free CNN denoising engine: models, training, inference. Never imports napari or Qt.

Names are imported lazily (PEP 562), so ``import src_models`` is fast and
TensorFlow loads only when a model is built or loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Cancelled",
    "ConfigError",
    "Denoiser",
    "ModelCard",
    "ModelFileError",
    "ModelInfo",
    "Progress",
    "build_model",
    "default_model",
    "estimate_sigma",
    "list_models",
    "load_model",
]

_WHERE = {
    "Cancelled": "inference",
    "Denoiser": "inference",
    "Progress": "inference",
    "estimate_sigma": "inference",
    "ModelInfo": "registry",
    "default_model": "registry",
    "list_models": "registry",
    "load_model": "registry",
    "build_model": "architectures",
    "ConfigError": "config",
    "ModelCard": "config",
    "ModelFileError": "modelfile",
}

if TYPE_CHECKING:
    from .architectures import build_model
    from .config import ConfigError, ModelCard
    from .inference import Cancelled, Denoiser, Progress, estimate_sigma
    from .modelfile import ModelFileError
    from .registry import ModelInfo, default_model, list_models, load_model


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'src_models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
