"""A screenshot of the docked widget next to a denoised sample, for the README."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "denoise_widget.png"


def test_screenshot_of_widget_and_denoised_sample(make_napari_viewer, qtbot):
    from napari_bfcnn import DenoiseWidget, camera_sample

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1300, 720)
    for data, kwargs, _ in camera_sample():
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
    assert shot.ndim == 3 and shot.shape[2] == 4 and shot[..., :3].std() > 10
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    from skimage.io import imsave

    imsave(IMAGE, shot, check_contrast=False)
    assert IMAGE.stat().st_size > 10_000
    assert np.isfinite(outputs[0].data).all()
