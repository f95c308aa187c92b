"""Fixtures for the napari plugin tests: tiny models in a temporary user-model folder.

Why tiny: the tests check wiring (axes, dtypes, layers, notifications), not
denoising quality, so three-layer nets keep the whole suite to seconds on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WRITE_DOCS_IMAGES = "NAPARI_BFCNN_WRITE_DOCS_IMAGES"  # =1: screenshot tests refresh docs/images


def _save_tiny(folder, name: str, channels: int, description: str) -> None:
    from src_models.architectures import build_model, parameter_count, receptive_field
    from src_models.config import DnCNNConfig, ModelCard
    from src_models.modelfile import save_model

    config = DnCNNConfig(channels=channels, depth=3, width=8)
    model = build_model(config, name=name)
    # non-zero last layer: the net must change the image, so tests can tell it ran
    for w in model.trainable_weights:
        w.assign(np.random.default_rng(0).normal(0, 0.05, w.shape).astype("float32"))
    card = ModelCard(
        name=name,
        description=description,
        channels=channels,
        kind="dncnn",
        parameters=parameter_count(model),
        receptive_field=receptive_field(model),
        size_multiple=1,
    )
    save_model(model, folder / f"{name}.keras", card)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A user-model folder with a tiny gray and a tiny colour model and one broken file."""
    folder = tmp_path_factory.mktemp("models")
    _save_tiny(folder, "tiny-gray", 1, "three-layer gray test model")
    _save_tiny(folder, "tiny-color", 3, "three-layer colour test model")
    (folder / "broken.keras").write_bytes(b"not a zip file")
    return folder


@pytest.fixture(autouse=True)
def _use_model_dir(model_dir, monkeypatch):
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(model_dir))


@pytest.fixture
def capture_notes(monkeypatch):
    """A function that records the notifications a widget module shows, by kind.

    Why: the widget tests check their errors and warnings as lists of messages,
    not as pop-ups; ``capture_notes(module)`` patches that module's ``show_*``.
    """

    def capture(module, kinds: tuple[str, ...] = ("error", "warning", "info")) -> dict:
        captured: dict[str, list[str]] = {kind: [] for kind in kinds}
        for kind in kinds:
            monkeypatch.setattr(module, f"show_{kind}", captured[kind].append)
        return captured

    return capture


@pytest.fixture
def docked(make_napari_viewer):
    """A function that makes a viewer with one widget docked; returns (viewer, widget).

    Why: every widget test starts from a fresh viewer with its widget in the dock.
    """

    def dock(widget_class, name: str) -> tuple:
        viewer = make_napari_viewer()
        widget = widget_class(viewer)
        viewer.window.add_dock_widget(widget, name=name)
        return viewer, widget

    return dock


@pytest.fixture
def screenshot_path(tmp_path):
    """A function: an image's file name -> where a screenshot test saves it.

    Why: the README's screenshots are tracked files; a plain test run must not rewrite
    them. They go to the test's tmp_path unless ``NAPARI_BFCNN_WRITE_DOCS_IMAGES=1``
    is set, which writes them into ``docs/images`` to refresh the README.
    """

    def path(name: str) -> Path:
        folder = DOCS_IMAGES if os.environ.get(WRITE_DOCS_IMAGES) == "1" else tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    return path


def window_region(viewer, shot: np.ndarray, qwidget) -> np.ndarray:
    """The pixels of ``qwidget`` in a screenshot of the viewer's whole window."""
    from qtpy.QtCore import QPoint

    window = viewer.window._qt_window
    ratio = window.devicePixelRatioF()
    corner = qwidget.mapTo(window, QPoint(0, 0))
    y0, x0 = round(corner.y() * ratio), round(corner.x() * ratio)
    h, w = round(qwidget.height() * ratio), round(qwidget.width() * ratio)
    assert h > 20 and w > 20 and y0 >= 0 and x0 >= 0  # shown, inside the window
    return shot[y0 : y0 + h, x0 : x0 + w, :3]


@pytest.fixture
def check_window_shot():
    """A function checking a whole-window screenshot: its size is the window's, and the
    canvas and each given widget show something (not one flat colour).

    Why: ``std > 10`` over the whole shot passes for a window whose canvas stayed black.
    """

    def check(viewer, shot: np.ndarray, *qwidgets) -> None:
        window = viewer.window._qt_window
        ratio = window.devicePixelRatioF()
        assert shot.dtype == np.uint8 and shot.ndim == 3 and shot.shape[2] == 4
        assert shot.shape[:2] == (round(window.height() * ratio), round(window.width() * ratio))
        canvas = window_region(viewer, shot, viewer.window._qt_viewer.canvas.native)
        assert canvas.std() > 20, "the canvas is (nearly) uniform"
        for qwidget in qwidgets:
            region = window_region(viewer, shot, qwidget)
            colours = np.unique(region.reshape(-1, 3), axis=0)
            assert region.std() > 10 and len(colours) > 20, f"{qwidget} is (nearly) uniform"

    return check
