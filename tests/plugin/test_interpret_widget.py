"""The Interpret dock widget in a real viewer: exact overlay filters, maps, spectrum, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import napari_bfcnn._interpret_widget as iw
from napari_bfcnn._interpret_jobs import compose_overlay, filter_image, spectrum_job
from napari_bfcnn._interpret_widget import InterpretWidget
from napari_bfcnn._layers import LayerInput

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000
ROOT = Path(__file__).resolve().parents[2]
MAPS = ("residual", "centre_weight", "energy", "width")


def _checksum(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()


def _filter(model: str, plane, pixel, channel_axis=None):
    from src_models import load_model
    from src_models.interpret import pixel_filter

    return pixel_filter(load_model(model), plane, pixel, channel_axis=channel_axis)


def _denoise(model: str, plane) -> np.ndarray:
    from src_models import load_model

    return load_model(model).denoise(plane)


@pytest.fixture
def notes(capture_notes):
    """Notifications the widget shows, by kind."""
    return capture_notes(iw)


@pytest.fixture
def viewer_widget(docked, notes):
    return docked(InterpretWidget, "Interpret")


def _points(qtbot, widget, layer, coords, model="tiny-gray"):
    """Pick pixels on ``layer`` and set the points' data; wait for the filters."""
    widget.model.value = model
    points = widget.pick_pixels(layer=layer)
    assert points is not None
    points.data = np.asarray(coords, dtype=float)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    return points


def _wait_job(qtbot, widget, worker):
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_widget_docks_and_lists_models_like_the_denoise_widget(viewer_widget):
    from napari_bfcnn._denoise_widget import DenoiseWidget

    viewer, widget = viewer_widget
    assert "Interpret" in viewer.window.dock_widgets
    combo = widget.model.native
    texts = [combo.itemText(i) for i in range(combo.count())]
    other = DenoiseWidget(viewer).model.native
    assert texts == [other.itemText(i) for i in range(other.count())]
    assert texts[0].startswith("auto") and any(t.startswith("tiny-gray  (gray") for t in texts)
    assert not combo.model().item(texts.index("broken  (unavailable)")).isEnabled()
    assert widget.points_layer is None and len(viewer.layers) == 0


def test_model_list_follows_models_saved_elsewhere(viewer_widget, model_dir):
    import shutil

    from napari_bfcnn._model_events import notify_models_changed

    _, widget = viewer_widget
    copy = model_dir / "tiny-copy.keras"
    shutil.copy(model_dir / "tiny-gray.keras", copy)
    try:
        notify_models_changed()
        assert "tiny-copy" in [value for value in widget.model.choices]
    finally:
        copy.unlink()
        notify_models_changed()
    assert "tiny-copy" not in [value for value in widget.model.choices]


def test_a_point_shows_its_exact_filter_over_the_image(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    data = np.random.default_rng(0).uniform(0, 200, (40, 36)).astype(np.float32)
    before = _checksum(data)
    src = viewer.add_image(data, name="img", scale=(0.5, 0.25), translate=(10, -3))
    points = _points(qtbot, widget, src, [[20, 15]])
    assert points.name == "img [filter points]" and points.mode == "add"
    overlay = viewer.layers["img [filter: tiny-gray]"]
    pf = _filter("tiny-gray", data, (20, 15))
    rows, cols = pf.window
    assert (rows.start, cols.start) == (20 - 3, 15 - 3)  # receptive field 3: a 7x7 window
    np.testing.assert_array_equal(overlay.data[rows, cols], pf.weights)
    outside = overlay.data.copy()
    outside[rows, cols] = 0
    assert not outside.any()
    np.testing.assert_allclose(overlay.scale, src.scale)
    np.testing.assert_allclose(overlay.translate, src.translate)
    lo, hi = overlay.contrast_limits
    assert lo == -hi and hi > 0
    assert overlay.blending == "translucent" and overlay.opacity == pytest.approx(0.8)
    assert overlay.colormap.map(np.array([0.5]))[0, 3] == 0  # zero weight is transparent
    layers = list(viewer.layers)
    assert layers.index(src) < layers.index(overlay) < layers.index(points)
    assert viewer.layers.selection.active is points  # the user keeps adding points
    assert widget.latest_filter.pixel == (20, 15)
    assert f"weight sum {float(pf.weight_sum):.3f}" in widget.readout.value
    assert f"width {float(pf.width):.2f} px" in widget.readout.value
    assert widget.filter_plot.figure.axes[0].images[0].get_array().shape[0] > 1
    assert src.data is data and _checksum(data) == before
    assert notes["error"] == []
    assert widget.pick_pixels(layer=overlay) is None  # its own layers are not sources
    assert "made by the Interpret widget" in notes["error"][0]


def test_two_points_two_windows_and_a_moved_point_moves_its_window(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(1).uniform(0, 1, (40, 40)).astype(np.float32)
    src = viewer.add_image(data, name="img")
    points = _points(qtbot, widget, src, [[10, 10], [30, 25]])
    overlay = viewer.layers["img [filter: tiny-gray]"]
    expected, _ = compose_overlay(
        data.shape, [(p, _filter("tiny-gray", data, p)) for p in [(10, 10), (30, 25)]]
    )
    np.testing.assert_array_equal(overlay.data, expected)
    assert np.count_nonzero(overlay.data[:20]) and np.count_nonzero(overlay.data[20:])

    points.data = np.array([[10.0, 10.0], [12.4, 13.6]])  # rounds to pixel (12, 14): overlaps
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    expected, _ = compose_overlay(
        data.shape, [(p, _filter("tiny-gray", data, p)) for p in [(10, 10), (12, 14)]]
    )
    np.testing.assert_allclose(overlay.data, expected, atol=1e-7)  # summed where they overlap
    assert not overlay.data[20:].any()
    assert [lyr.name for lyr in viewer.layers].count("img [filter: tiny-gray]") == 1
    assert widget.latest_filter.pixel == (12, 14)

    # a drag: napari moves the point in place and refreshes, data events come at the end
    points.selected_data = {0}
    with points.events.data.blocker():
        points.data[0] = (33.0, 5.0)
        points.refresh()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    expected, _ = compose_overlay(
        data.shape, [(p, _filter("tiny-gray", data, p)) for p in [(33, 5), (12, 14)]]
    )
    np.testing.assert_allclose(overlay.data, expected, atol=1e-7)
    assert widget.latest_filter.pixel == (33, 5)

    widget.clear_points()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert not overlay.data.any() and widget.latest_filter is None


def test_points_on_a_stack_show_filters_on_their_own_slice(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(2).uniform(0, 1, (3, 24, 24)).astype(np.float32)
    src = viewer.add_image(data, name="stack", scale=(2, 1, 1))
    _points(qtbot, widget, src, [[2, 12, 12]])
    overlay = viewer.layers["stack [filter: tiny-gray]"]
    assert overlay.data.shape == data.shape
    pf = _filter("tiny-gray", data[2], (12, 12))
    np.testing.assert_array_equal(overlay.data[2][pf.window], pf.weights)
    assert not overlay.data[:2].any()


def test_a_plane_without_finite_pixels_leaves_out_only_its_own_points(
    viewer_widget, qtbot, notes
):
    viewer, widget = viewer_widget
    data = np.random.default_rng(12).uniform(0, 1, (2, 32, 32)).astype(np.float32)
    data[0] = np.nan
    data[1, 3:6, 4:9] = np.nan  # some NaN in the plane that works: filled as the Denoiser does
    src = viewer.add_image(data, name="stack")
    _points(qtbot, widget, src, [[0, 10, 10], [1, 12, 12]])
    overlay = viewer.layers["stack [filter: tiny-gray]"]
    pf = _filter("tiny-gray", data[1], (12, 12))
    np.testing.assert_array_equal(overlay.data[1][pf.window], pf.weights)
    assert not overlay.data[0].any()
    assert widget.latest_filter is not None
    assert any("plane (0,) has no finite values" in m for m in notes["error"])
    assert "1 of 2 filter(s) shown" in widget.status.value


def test_the_overlay_of_a_large_stack_is_lazy_and_holds_only_the_clicked_planes(
    viewer_widget, qtbot, monkeypatch
):
    import dask.array as da

    import napari_bfcnn._interpret_jobs as ij

    monkeypatch.setattr(ij, "DENSE_OVERLAY_BYTES", 0)  # as a 500 x 2048 x 2048 time-lapse
    viewer, widget = viewer_widget
    data = np.random.default_rng(2).uniform(0, 1, (4, 24, 24)).astype(np.float32)
    src = viewer.add_image(data, name="movie")
    _points(qtbot, widget, src, [[1, 12, 12], [3, 5, 6]])
    overlay = viewer.layers["movie [filter: tiny-gray]"]
    assert isinstance(overlay.data, da.Array) and overlay.data.shape == data.shape
    dense = np.asarray(overlay.data)
    for t, pixel in ((1, (12, 12)), (3, (5, 6))):
        pf = _filter("tiny-gray", data[t], pixel)
        np.testing.assert_array_equal(dense[t][pf.window], pf.weights)
    assert not dense[0].any() and not dense[2].any()


def test_the_overlay_of_a_huge_plane_covers_only_the_filters_and_lies_over_them(
    viewer_widget, qtbot, monkeypatch
):
    import napari_bfcnn._interpret_jobs as ij

    monkeypatch.setattr(ij, "DENSE_OVERLAY_BYTES", 0)  # as a 20000^2 plane
    viewer, widget = viewer_widget
    data = np.random.default_rng(4).uniform(0, 1, (60, 50)).astype(np.float32)
    src = viewer.add_image(data, name="big", scale=(2.0, 0.5), translate=(7.0, -3.0))
    _points(qtbot, widget, src, [[20, 15], [40, 30]])
    overlay = viewer.layers["big [filter: tiny-gray]"]
    a, b = (_filter("tiny-gray", data, p) for p in [(20, 15), (40, 30)])
    y0, x0 = a.window[0].start, a.window[1].start
    assert overlay.data.shape == (b.window[0].stop - y0, b.window[1].stop - x0)
    dense = np.zeros(data.shape, np.float32)
    for pf in (a, b):
        dense[pf.window] += filter_image(pf)
    h, w = overlay.data.shape
    np.testing.assert_allclose(overlay.data, dense[y0 : y0 + h, x0 : x0 + w], atol=1e-7)
    # the overlay's pixel (0, 0) lies over the source's pixel (y0, x0) in the world
    np.testing.assert_allclose(overlay.data_to_world((0, 0)), src.data_to_world((y0, x0)))


def test_renaming_the_source_keeps_its_points_and_overlay(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(5).uniform(0, 1, (32, 30)).astype(np.float32)
    src = viewer.add_image(data, name="img")
    points = _points(qtbot, widget, src, [[10, 12]])
    overlay = viewer.layers["img [filter: tiny-gray]"]
    src.name = "cells"
    assert widget.pick_pixels(layer=src) is points  # found again, not a second points layer
    points.data = np.asarray([[20, 8]], dtype=float)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert overlay in viewer.layers and len(viewer.layers) == 3  # the same overlay, updated
    pf = _filter("tiny-gray", data, (20, 8))
    np.testing.assert_array_equal(overlay.data[pf.window], pf.weights)


def test_removing_the_points_layer_removes_their_filters(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(6).uniform(0, 1, (32, 30)).astype(np.float32)
    src = viewer.add_image(data, name="img")
    points = _points(qtbot, widget, src, [[10, 12]])
    assert "img [filter: tiny-gray]" in viewer.layers and widget.latest_filter is not None
    viewer.layers.remove(points)
    assert "img [filter: tiny-gray]" not in viewer.layers  # no filters of points that are gone
    assert widget.latest_filter is None and widget.readout.value == iw.HINT
    assert [lyr.name for lyr in viewer.layers] == ["img"]


def test_switching_the_model_replaces_the_overlay_instead_of_leaving_a_stale_one(
    viewer_widget, qtbot
):
    viewer, widget = viewer_widget
    data = np.random.default_rng(16).uniform(0, 1, (32, 30)).astype(np.float32)
    src = viewer.add_image(data, name="img")
    points = _points(qtbot, widget, src, [[10, 12]])
    assert "img [filter: tiny-gray]" in viewer.layers
    widget.model.value = "tiny-color"
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    points.data = np.asarray([[20, 8]], dtype=float)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert "img [filter: tiny-gray]" not in viewer.layers  # it no longer followed the points
    overlay = viewer.layers["img [filter: tiny-color]"]
    pf = _filter("tiny-color", data, (20, 8))
    np.testing.assert_allclose(overlay.data[pf.window], filter_image(pf), rtol=1e-6, atol=1e-7)
    viewer.layers.remove(points)
    assert [lyr.name for lyr in viewer.layers] == ["img"]


def test_auto_explains_camera_data_with_the_model_that_denoises_them():
    from napari.layers import Image

    from napari_bfcnn._layers import read_layer
    from napari_bfcnn._workers import AUTO, resolve_model

    camera = Image(np.full((2, 16, 16), 300, np.uint16))
    photo = Image(np.zeros((16, 16), np.float32))
    assert resolve_model(AUTO, read_layer(camera)) == "microscopy"  # as the Denoise widget
    assert resolve_model(AUTO, read_layer(photo)) == "gray"
    assert resolve_model("tiny-gray", read_layer(camera)) == "tiny-gray"


def test_camera_data_show_the_filter_of_the_output_denoised_without_its_black_level(
    viewer_widget, qtbot
):
    from src_models import load_model
    from src_models.interpret import pixel_filter
    from src_models.noise_model import black_level

    viewer, widget = viewer_widget
    rng = np.random.default_rng(3)
    data = (100 + rng.poisson(rng.uniform(5, 300, (2, 32, 30)))).astype(np.uint16)
    src = viewer.add_image(data, name="cam")
    _points(qtbot, widget, src, [[1, 12, 11]])
    overlay = viewer.layers["cam [filter: tiny-gray]"]
    expected = pixel_filter(load_model("tiny-gray"), data[1], (12, 11), offset="auto")
    assert expected.offset == pytest.approx(black_level(data[1])) and expected.offset > 90
    np.testing.assert_array_equal(overlay.data[1][expected.window], expected.weights)
    denoised = load_model("tiny-gray").denoise(data[1], offset="auto")  # the Denoise widget's
    assert expected.output_value == pytest.approx(float(denoised[12, 11]), abs=0.6)
    assert widget.latest_filter.offset == expected.offset


def test_rgb_points_show_the_same_channel_filters_averaged_over_channels(viewer_widget, qtbot):
    """Each channel's weights on itself, so the drawn centre is the readout's centre weight."""
    viewer, widget = viewer_widget
    data = np.random.default_rng(3).integers(0, 255, (24, 28, 4), dtype=np.uint8)
    src = viewer.add_image(data, name="rgba", rgb=True)
    _points(qtbot, widget, src, [[8, 9]], model="tiny-color")
    overlay = viewer.layers["rgba [filter: tiny-color]"]
    assert overlay.data.shape == (24, 28) and not overlay.rgb
    pf = _filter("tiny-color", data[..., :3], (8, 9), channel_axis=-1)
    same_channel = (pf.weights[0, ..., 0] + pf.weights[1, ..., 1] + pf.weights[2, ..., 2]) / 3
    np.testing.assert_allclose(overlay.data[pf.window], same_channel, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(filter_image(pf), overlay.data[pf.window])
    centre = float(np.mean(pf.centre_weight))
    cy, cx = 8 - pf.window[0].start, 9 - pf.window[1].start
    assert overlay.data[8, 9] == pytest.approx(centre, rel=1e-6)
    summed_inputs = float(pf.weights[:, cy, cx].sum(axis=-1).mean())
    assert abs(summed_inputs - centre) > 1e-5 * abs(centre)  # channels mix at the pixel
    assert f"centre weight {centre:.3f}" in widget.readout.value
    assert "mean over colours" in widget.readout.value
    image = widget.filter_plot.figure.axes[0].images[0]  # the enlarged filter in the dock
    x0, y0 = image.get_extent()[0] + 0.5, image.get_extent()[3] + 0.5
    zoom = image.get_array()
    assert zoom[int(8 - y0), int(9 - x0)] == pytest.approx(centre, rel=1e-6)


def test_maps_button_adds_four_maps_and_a_rerun_replaces_them(viewer_widget, qtbot, notes):
    from src_models import load_model
    from src_models.interpret import filter_maps

    viewer, widget = viewer_widget
    data = np.random.default_rng(4).uniform(0, 100, (32, 30)).astype(np.float32)
    src = viewer.add_image(data, name="img", translate=(5, 5))
    decoy = viewer.add_image(np.zeros((32, 30), np.float32), name="img [energy: tiny-gray]")
    widget.image.value = src
    widget.model.value = "tiny-gray"
    widget.probes.value = 4
    _wait_job(qtbot, widget, widget.compute_maps())
    engine = filter_maps(load_model("tiny-gray"), data, MAPS, 4)
    made = {}
    for name in MAPS:
        out = next(
            lyr
            for lyr in viewer.layers
            if lyr.name.startswith(f"img [{name}: tiny-gray]") and lyr is not decoy
        )
        assert out.data.shape == (32, 30)
        np.testing.assert_allclose(out.data, engine[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.translate, (5, 5))
        made[name] = out
    assert made["centre_weight"].colormap.name == "viridis"
    assert made["energy"].colormap.name == "magma"
    assert made["width"].colormap.name == "plasma"
    lo, hi = made["residual"].contrast_limits
    assert lo == -hi
    n = len(viewer.layers)
    _wait_job(qtbot, widget, widget.compute_maps())
    assert len(viewer.layers) == n and all(lyr in viewer.layers for lyr in made.values())
    np.testing.assert_array_equal(decoy.data, 0)
    assert notes["error"] == [] and widget.status.value.startswith("maps done")


def test_maps_of_a_stack_are_of_the_viewed_slice(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(5).uniform(0, 1, (2, 32, 30)).astype(np.float32)
    src = viewer.add_image(data, name="stack", scale=(3, 1, 1))
    viewer.dims.set_point(0, 3 * 1)
    widget.image.value = src
    widget.model.value = "tiny-gray"
    widget.probes.value = 1
    _wait_job(qtbot, widget, widget.compute_maps())
    residual = viewer.layers["stack [residual: tiny-gray]"]
    assert residual.data.shape == (1, 32, 30)
    np.testing.assert_allclose(residual.translate, (3, 0, 0))
    np.testing.assert_allclose(
        residual.data[0], data[1] - _denoise("tiny-gray", data[1]), atol=1e-5
    )
    assert all(f"stack [{name}: tiny-gray]" in viewer.layers for name in MAPS)


def test_spectrum_button_plots_singular_values_and_adds_the_vectors(viewer_widget, qtbot, notes):
    from src_models import load_model
    from src_models.interpret import jacobian_spectrum

    viewer, widget = viewer_widget
    data = np.random.default_rng(6).uniform(0, 1, (40, 40)).astype(np.float32)
    src = viewer.add_image(data, name="img", scale=(0.5, 0.5), translate=(1, 2))
    _points(qtbot, widget, src, [[3, 30], [20, 20]])
    widget.crop.value = 8
    widget.vectors.value = 4
    _wait_job(qtbot, widget, widget.compute_spectrum())
    crop = data[0:8, 26:34]  # 8x8 around the first point, shifted inside the image
    engine = jacobian_spectrum(load_model("tiny-gray"), crop, 4)
    line = widget.spectrum_plot.figure.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), engine.singular_values, rtol=1e-5, atol=1e-7)
    assert len(line.get_ydata()) == 64
    vectors = viewer.layers["img [singular vectors: tiny-gray]"]
    assert vectors.data.shape == (4, 8, 8)
    np.testing.assert_allclose(vectors.data, engine.vectors, atol=1e-5)
    np.testing.assert_allclose(vectors.scale, (1, 0.5, 0.5))
    np.testing.assert_allclose(vectors.translate, (0, 1 + 0 * 0.5, 2 + 26 * 0.5))
    lo, hi = vectors.contrast_limits
    assert lo == -hi
    assert widget.spectrum.effective_dimension == pytest.approx(engine.effective_dimension)
    assert notes["error"] == []


def test_singular_vectors_lie_over_their_crop_of_a_rotated_sheared_source(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(6).uniform(0, 1, (40, 40)).astype(np.float32)
    affine = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    src = viewer.add_image(data, name="img", scale=(0.5, 2), rotate=30, shear=[0.2], affine=affine)
    points = _points(qtbot, widget, src, [[3, 30]])
    widget.crop.value = 8
    widget.vectors.value = 2
    _wait_job(qtbot, widget, widget.compute_spectrum())
    vectors = viewer.layers["img [singular vectors: tiny-gray]"]
    for y, x in [(0, 0), (7, 0), (3, 5)]:  # the crop starts at (0, 26)
        np.testing.assert_allclose(
            vectors.data_to_world((1, y, x))[1:], src.data_to_world((y, 26 + x)), atol=1e-9
        )
    src.scale = points.scale = (1, 1)  # the source corrected: a new spectrum follows it
    _wait_job(qtbot, widget, widget.compute_spectrum())
    assert viewer.layers["img [singular vectors: tiny-gray]"] is vectors
    np.testing.assert_allclose(
        vectors.data_to_world((0, 7, 7))[1:], src.data_to_world((7, 33)), atol=1e-9
    )


def test_spectrum_of_a_crop_uses_the_whole_planes_offset(model_dir):
    """The crop's own minimum is not what the Denoiser subtracts from the plane."""
    from src_models import load_model
    from src_models.interpret import jacobian_spectrum

    rng = np.random.default_rng(9)
    data = rng.uniform(0, 1, (24, 24)).astype(np.float32)
    data[20:, 20:] -= 30  # negative pixels far from the crop: the plane's offset is their minimum
    box = (0, 8, 0, 8)
    outcome = spectrum_job(LayerInput("img", data, None, False, False), "tiny-gray", (), box, 2)
    assert outcome.error is None
    den = load_model("tiny-gray")
    plane = jacobian_spectrum(den, data[:8, :8], 2, offset=float(data.min()))
    own = jacobian_spectrum(den, data[:8, :8], 2)  # the crop's own offset, 0
    np.testing.assert_allclose(outcome.value.jacobian, plane.jacobian, rtol=1e-5, atol=1e-7)
    off_centre = plane.jacobian - np.diag(np.diag(plane.jacobian))
    assert np.abs(own.jacobian - plane.jacobian).max() > 0.3 * np.abs(off_centre).max()

    # a gray model runs on each colour channel alone, each with its own offset
    rgb = rng.uniform(0, 1, (24, 24, 3)).astype(np.float32)
    rgb[20:, 20:, 1] -= 30
    outcome = spectrum_job(LayerInput("rgb", rgb, 2, True, False), "tiny-gray", (), box, 2)
    assert outcome.error is None
    blocks = outcome.value.jacobian.reshape(8, 8, 3, 8, 8, 3)
    for c in range(3):
        alone = jacobian_spectrum(den, rgb[:8, :8, c], 0, offset=float(rgb[..., c].min(initial=0)))
        np.testing.assert_allclose(
            blocks[:, :, c, :, :, c].reshape(64, 64), alone.jacobian, rtol=1e-5, atol=1e-7
        )


@pytest.fixture
def tuned_model(tmp_path, monkeypatch):
    """Make a model folder holding 'tuned': tiny-gray whose card records a fine-tuning
    black level (call it with the setting)."""
    from src_models import registry
    from src_models.modelfile import copy_with_card, read_card

    def make(black_level: str) -> None:
        src = registry._resolve("tiny-gray")
        card = read_card(src)
        notes = {**card.notes, registry.BLACK_LEVEL_NOTE: black_level}
        copy_with_card(src, tmp_path / "tuned.keras", card.model_copy(update={"notes": notes}))
        monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(tmp_path))
        registry.clear_cache()

    yield make
    registry.clear_cache()


def test_filters_of_a_model_fine_tuned_with_a_black_level_use_that_level(tuned_model):
    """The Denoise widget denoises with the recorded level: the filters must be of that run."""
    from napari_bfcnn._interpret_jobs import filters_job, plane_offset
    from src_models import load_model
    from src_models.interpret import pixel_filter

    tuned_model("20")
    data = np.random.default_rng(3).uniform(30, 90, (24, 24)).astype(np.float32)
    inp = LayerInput("img", data, None, False, False)
    assert plane_offset(inp, data, "tuned") == 20.0 and plane_offset(inp, data) is None
    ((_, pf),) = list(filters_job(inp, "tuned", [(12, 12)]))
    engine = pixel_filter(load_model("tuned"), data, (12, 12), offset=20.0)
    assert pf.offset == 20.0
    np.testing.assert_array_equal(pf.weights, engine.weights)


def test_filters_of_a_gray_model_fine_tuned_with_auto_on_rgb_take_each_channels_level(
    tuned_model,
):
    """The Denoiser runs a gray model on each colour channel, each with its own black level
    (after NaN filling): the filters' outputs must be that denoised image's pixels."""
    from napari_bfcnn._interpret_jobs import filters_job
    from src_models import load_model

    tuned_model("auto")
    rgb = np.random.default_rng(8).uniform(0, 1, (40, 40, 3)).astype(np.float32)
    rgb += np.array([10.0, 40.0, 90.0], np.float32)  # a different pedestal per channel
    rgb[5, 7, 1] = np.nan
    inp = LayerInput("img", rgb, -1, True, False)
    pixels = [(12, 12), (30, 20)]
    want = load_model("tuned").denoise(rgb, channel_axis=-1, offset="auto")
    for pixel, pf in list(filters_job(inp, "tuned", pixels)):
        np.testing.assert_allclose(pf.output_value, want[pixel], rtol=1e-5, atol=1e-4)


def test_spectrum_without_a_point_asks_for_one(viewer_widget, notes):
    viewer, widget = viewer_widget
    src = viewer.add_image(np.ones((16, 16), np.float32), name="img")
    assert widget.compute_spectrum(layer=src) is None
    assert "Add a point on 'img' first" in notes["error"][0]
    assert len(viewer.layers) == 1


def _start_long_maps(viewer, widget):
    """Maps with 1024 probes on a layer 'big': a job that runs long enough to stop."""
    data = np.random.default_rng(7).uniform(0, 1, (32, 30)).astype(np.float32)
    viewer.add_image(data, name="big")
    widget.model.value = "tiny-gray"
    widget.probes.value = 1024
    worker = widget.compute_maps()
    assert worker is not None and widget.cancel_button.enabled
    return worker


def test_cancel_stops_the_maps_and_adds_nothing(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    worker = _start_long_maps(viewer, widget)
    widget.cancel()
    _wait_job(qtbot, widget, worker)
    assert widget.status.value == "cancelled"
    assert notes["info"] == ["Filter maps of big cancelled."]
    assert [lyr.name for lyr in viewer.layers] == ["big"]
    assert widget.maps_button.enabled and not widget.cancel_button.enabled


def test_closing_the_dock_mid_job_stops_it_and_waits_for_its_thread(viewer_widget, qtbot):
    """A job still running once the dock's Qt objects are gone would emit into them."""
    import threading

    viewer, widget = viewer_widget
    _start_long_maps(viewer, widget)
    qtbot.waitUntil(lambda: widget._job_fraction > 0, timeout=TIMEOUT_MS)  # it is running
    widget._disconnect()  # the dock closed
    assert widget._ended and all(isinstance(e, threading.Event) for e in widget._ended)
    assert all(e.is_set() for e in widget._ended)  # its thread had ended when close returned


def test_bad_layers_show_an_error_and_add_nothing(viewer_widget, notes):
    viewer, widget = viewer_widget
    bad = {
        "Labels layer": viewer.add_labels(np.zeros((16, 16), np.int32)),
        "Points layer": viewer.add_points(np.zeros((3, 2))),
        "2x2": viewer.add_image(np.zeros((2, 2), np.float32)),
        "boolean": viewer.add_image(np.zeros((16, 16), bool)),
    }
    n_layers = len(viewer.layers)
    for words, layer in bad.items():
        notes["error"].clear()
        assert widget.pick_pixels(layer=layer) is None
        assert widget.compute_maps(layer=layer) is None
        assert widget.compute_spectrum(layer=layer) is None
        assert len(notes["error"]) == 3 and all(words in e for e in notes["error"]), words
    assert len(viewer.layers) == n_layers and not widget.running


def test_unusable_model_shows_one_error_while_points_move(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    src = viewer.add_image(np.ones((16, 16), np.float32), name="img")
    points = _points(qtbot, widget, src, [[4, 4]], model="broken")
    points.data = np.array([[5.0, 5.0]])
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert len(notes["error"]) == 1 and "not a .keras model file" in notes["error"][0]
    assert "img [filter: broken]" not in viewer.layers
    assert widget.compute_maps() is None and len(notes["error"]) == 2


@pytest.fixture
def plugin(npe2pm):
    """This repository's manifest registered with napari's test plugin manager."""
    with npe2pm.tmp_plugin(manifest=str(ROOT / "napari.yaml")) as plugin:
        yield plugin


def test_widget_opens_through_the_plugin_menu(make_napari_viewer, qtbot, plugin):
    """napari hands plugins a public-only proxy of the viewer; the widget must work with it."""
    viewer = make_napari_viewer()
    data = np.random.default_rng(8).uniform(0, 1, (24, 24)).astype(np.float32)
    viewer.add_image(data, name="a")
    _, widget = viewer.window.add_plugin_dock_widget("napari-bfcnn", "Interpret (adaptive filters)")
    assert widget.image.value.name == "a"
    points = _points(qtbot, widget, None, [[12, 12]])
    assert points.name == "a [filter points]"
    pf = _filter("tiny-gray", data, (12, 12))
    np.testing.assert_array_equal(
        viewer.layers["a [filter: tiny-gray]"].data[pf.window], pf.weights
    )


def test_readme_screenshots_show_both_noise_levels_and_the_maps(make_napari_viewer, qtbot):
    """The functions behind docs/images/interpret_*.png, with a tiny model (nothing written).

    The README images come from ``python -m napari_bfcnn._interpret_screenshots``
    with the default model (the maps take minutes on a CPU).
    """
    from napari_bfcnn._interpret_screenshots import (
        MAPS_SHOWN,
        PIXELS,
        SIGMAS,
        _grid,
        filters_screenshot,
        maps_screenshot,
        noisy_camera,
    )

    viewer = make_napari_viewer(show=True)
    shot = filters_screenshot(viewer, "tiny-gray")
    assert shot.ndim == 3 and shot.shape[2] == 4 and shot[..., :3].std() > 10
    overlays = [lyr for lyr in viewer.layers if "[filter:" in lyr.name]
    assert [o.name for o in overlays] == [f"camera σ{s:g} [filter: tiny-gray]" for s in SIGMAS]
    for sigma, overlay in zip(SIGMAS, overlays, strict=True):
        plane = noisy_camera(sigma)
        filters = [(p, _filter("tiny-gray", plane, p)) for p in PIXELS]
        expected, _ = compose_overlay(plane.shape, filters)
        np.testing.assert_allclose(overlay.data, expected, atol=1e-7)
        lo, hi = overlay.contrast_limits
        assert lo == -hi and hi == overlays[0].contrast_limits[1]  # one colour scale, zero centred
        assert overlay.colorbar.visible
    assert _grid(viewer).enabled and _grid(viewer).actual_shape(viewer.layers) == (1, len(SIGMAS))

    viewer = make_napari_viewer(show=True)
    shot = maps_screenshot(viewer, "tiny-gray", probes=1)
    assert shot[..., :3].std() > 10
    names = [lyr.name for lyr in viewer.layers]
    assert names == ["camera σ25"] + [f"camera σ25 [{m}: tiny-gray]" for m in MAPS_SHOWN]
    assert _grid(viewer).actual_shape(viewer.layers) == (2, 2)


def test_map_probes_count_per_channel_a_colour_model_sees_together(monkeypatch):
    from napari.layers import Image

    import src_models.interpret as interpret
    from napari_bfcnn._interpret_jobs import maps_job
    from napari_bfcnn._layers import read_layer

    asked = []
    monkeypatch.setattr(
        interpret, "filter_maps", lambda den, plane, maps, probes, **kw: asked.append(probes) or {}
    )
    rgb = read_layer(Image(np.zeros((16, 16, 3), np.float32), rgb=True))
    gray = read_layer(Image(np.zeros((16, 16), np.float32)))
    for inp, model in ((rgb, "tiny-color"), (rgb, "tiny-gray"), (gray, "tiny-gray")):
        assert maps_job(inp, model, (), 16).error is None
    assert asked == [48, 16, 16]  # the same 4-px probe classes whichever the model
