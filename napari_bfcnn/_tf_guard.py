"""Load TensorFlow so that it and napari's OpenGL driver cannot crash each other.

Why: TensorFlow's Linux wheels carry their own copy of LLVM and, loaded the
usual way (``RTLD_GLOBAL``), export it to the whole process. Mesa's OpenGL
drivers (llvmpipe under Xvfb or in VMs, radeonsi, ...) link the system
``libLLVM``. Whichever copy loads second gets some of its LLVM calls bound into
the other one and the process segfaults: on ``import tensorflow`` after a napari
viewer exists, or at the first OpenGL draw after TensorFlow was imported.

The fix, applied only to the import of the ``tensorflow`` package:

* TensorFlow is loaded with ``RTLD_LOCAL`` (its optional RTLD_GLOBAL step is
  skipped, the path TensorFlow itself takes for non-static builds), so its LLVM
  stays private and a later OpenGL driver keeps its own;
* if a system ``libLLVM`` is already loaded, also with ``RTLD_DEEPBIND``, so
  TensorFlow binds to its own LLVM rather than the one loaded before it.

:func:`install` adds a one-shot import hook (nothing is imported until someone
imports TensorFlow). Set ``NAPARI_BFCNN_TF_DLOPEN=default`` to turn it off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator

__all__ = ["install", "isolated_dlopen"]

ENV_SWITCH = "NAPARI_BFCNN_TF_DLOPEN"
_GLOBAL_FLAGS_MODULE = "tensorflow.python.pywrap_dlopen_global_flags"


def _llvm_loaded() -> bool:
    """Whether a system libLLVM (e.g. from a Mesa OpenGL driver) is mapped in this process."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:
        return False


@contextlib.contextmanager
def isolated_dlopen() -> Iterator[None]:
    """Within this block, native modules load privately (and deep-bound if LLVM is loaded)."""
    old_flags = sys.getdlopenflags()
    blocked = _GLOBAL_FLAGS_MODULE not in sys.modules
    if blocked:
        sys.modules[_GLOBAL_FLAGS_MODULE] = None  # type: ignore[assignment]  # ImportError in TF
    flags = os.RTLD_NOW | os.RTLD_LOCAL
    if _llvm_loaded():
        flags |= os.RTLD_DEEPBIND
    sys.setdlopenflags(flags)
    try:
        yield
    finally:
        sys.setdlopenflags(old_flags)
        if blocked and sys.modules.get(_GLOBAL_FLAGS_MODULE, 0) is None:
            del sys.modules[_GLOBAL_FLAGS_MODULE]


class _IsolatingLoader(importlib.abc.Loader):
    """Runs the wrapped loader's ``exec_module`` inside :func:`isolated_dlopen`."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self._inner
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        with isolated_dlopen():
            self._inner.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` the normal way and wraps its loader, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        _remove_hook()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _IsolatingLoader(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TensorFlowFinder)]


def install() -> bool:
    """Add the import hook if it can matter (Linux, TensorFlow not yet imported).

    Returns
    -------
    bool
        Whether the hook is in place.
    """
    if (
        not sys.platform.startswith("linux")
        or "tensorflow" in sys.modules
        or os.environ.get(ENV_SWITCH, "").lower() == "default"
        or not hasattr(os, "RTLD_DEEPBIND")
    ):
        return False
    if not any(isinstance(f, _TensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowFinder())
    return True
