"""A screenshot of the docked widget next to a denoised sample, for the README.

The image goes to the test's temporary folder; set ``NAPARI_BFCNN_WRITE_DOCS_IMAGES=1`` to
write it to ``docs/images/denoise_widget.png`` instead (to refresh the README), e.g.
``NAPARI_BFCNN_WRITE_DOCS_IMAGES=1 xvfb-run -a python -m pytest tests/plugin/test_screenshot.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_screenshot_of_widget_and_denoised_sample(
    make_napari_viewer, qtbot, screenshot_path, check_window_shot
):
    from skimage.io import imread, imsave

    from napari_bfcnn import DenoiseWidget, camera_sample

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1300, 720)
    (clean, _, _), _ = layers = camera_sample()
    for data, kwargs, _ in layers:
        viewer.add_image(data, **kwargs)
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Denoise", area="right")
    noisy = viewer.layers["camera (noisy)"]
    widget.image.value = noisy
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    outputs = [lyr for lyr in viewer.layers if "bfcnn" in lyr.metadata]
    assert len(outputs) == 1
    viewer.layers.selection.active = outputs[0]
    viewer.grid.enabled = True  # noisy | denoised, side by side
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    check_window_shot(viewer, shot, widget.native)
    image = screenshot_path("denoise_widget.png")
    imsave(image, shot, check_contrast=False)
    np.testing.assert_array_equal(imread(image), shot)  # saved losslessly
    # what the picture shows: the output is much closer to the clean camera than the input
    rmse_in = np.sqrt(np.mean((noisy.data - clean) ** 2))
    rmse_out = np.sqrt(np.mean((outputs[0].data - clean) ** 2))
    assert rmse_in == pytest.approx(25, rel=0.05)
    assert rmse_out < 0.5 * rmse_in
