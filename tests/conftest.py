"""Test-wide setup, loaded before any test module is collected.

Why: engine tests import TensorFlow at collection time and plugin tests later
open napari viewers (OpenGL). On Linux with Mesa drivers (Xvfb in CI) the two
crash each other unless TensorFlow is imported through the plugin's guard, so
the guard is installed before anything else imports TensorFlow.
"""

from napari_bfcnn._tf_guard import install

install()
