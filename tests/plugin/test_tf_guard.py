"""TensorFlow imported after napari's OpenGL is up must not crash the process (Mesa + LLVM)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import napari_bfcnn  # installs the import guard, as napari does when it loads the plugin
    import napari

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.rand(32, 32))
    viewer.screenshot(canvas_only=False, flash=False)  # OpenGL driver (and its LLVM) loaded
    import keras  # TensorFlow loads now, as on the first Run in a napari session

    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(1, 3)])
    model.predict(np.zeros((1, 8, 8, 1), np.float32), verbose=0)
    viewer.add_image(np.random.rand(32, 32, 3), rgb=True)
    viewer.screenshot(canvas_only=False, flash=False)  # OpenGL again, with TF in the process
    viewer.close()
    print("guard-ok")
    """
)


@pytest.mark.gui
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the clash is Linux-only")
def test_tensorflow_after_opengl_does_not_crash():
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display (run under xvfb-run)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("NAPARI_BFCNN_TF_DLOPEN", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "guard-ok" in proc.stdout


def test_guard_stands_down_once_tensorflow_is_imported(monkeypatch):
    from napari_bfcnn import _tf_guard

    monkeypatch.setitem(sys.modules, "tensorflow", object())
    assert _tf_guard.install() is False
