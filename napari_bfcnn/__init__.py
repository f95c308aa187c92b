"""napari-bfcnn: denoise napari layers with bias-free CNNs (Mohan et al., ICLR 2020).

Names are imported lazily (PEP 562): ``import napari_bfcnn`` stays fast and
loads neither Qt nor TensorFlow until a widget or sample is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._tf_guard import install as _install_tf_guard

_install_tf_guard()  # TensorFlow and OpenGL (Mesa) must not share LLVM symbols: see _tf_guard

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-bfcnn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "DenoiseWidget",
    "InterpretWidget",
    "TrainWidget",
    "astronaut_sample",
    "camera_sample",
    "cell_sample",
    "denoise_image",
    "zstack_sample",
]

_WHERE = {
    "DenoiseWidget": "_denoise_widget",
    "InterpretWidget": "_interpret_widget",
    "TrainWidget": "_train_widget",
    "denoise_image": "_function",
    "astronaut_sample": "_sample_data",
    "camera_sample": "_sample_data",
    "cell_sample": "_sample_data",
    "zstack_sample": "_sample_data",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_bfcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
