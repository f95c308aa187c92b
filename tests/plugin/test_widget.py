"""The Denoise dock widget in a real viewer: layouts, dtypes, provenance, cancel, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import napari_bfcnn._denoise_widget as dw
from napari_bfcnn._denoise_widget import NO_AXIS, PROGRESS_STEPS, DenoiseWidget

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


def _checksum(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()


def _engine(model: str, data, channel_axis=None, offset=None) -> np.ndarray:
    from src_models import load_model

    return load_model(model).denoise(np.asarray(data), channel_axis=channel_axis, offset=offset)


@pytest.fixture
def notes(capture_notes):
    """Notifications the widget shows, by kind."""
    return capture_notes(dw)


@pytest.fixture
def viewer_widget(docked, notes):
    return docked(DenoiseWidget, "Denoise")


def _run(qtbot, widget, layer=None, model="tiny-gray"):
    if layer is not None:
        widget.image.value = layer
    if model is not None:
        widget.model.value = model
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_widget_docks_and_lists_models_with_broken_one_disabled(viewer_widget):
    from qtpy.QtCore import Qt

    viewer, widget = viewer_widget
    assert "Denoise" in viewer.window.dock_widgets
    combo = widget.model.native
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert texts[0].startswith("auto")
    assert any(t.startswith("tiny-gray  (gray") for t in texts)
    assert any(t.startswith("tiny-color  (colour") for t in texts)
    i = texts.index("broken  (unavailable)")
    assert not combo.model().item(i).isEnabled()
    assert "not a .keras model file" in combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
    assert widget.model.value == "auto"


def test_gray_2d_is_denoised_with_layer_properties_kept(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    data = np.random.default_rng(0).uniform(0, 200, (48, 40)).astype(np.float32)
    before = _checksum(data)
    layer = viewer.add_image(
        data,
        name="gray",
        scale=(0.5, 0.25),
        translate=(10, -3),
        metadata={"origin": "test"},
        colormap="viridis",
        contrast_limits=(5, 150),
        blending="additive",
        units=("um", "um"),
        axis_labels=("y", "x"),
    )
    _run(qtbot, widget, layer)
    out = viewer.layers["gray [denoised: tiny-gray]"]
    np.testing.assert_allclose(out.data, _engine("tiny-gray", data), rtol=1e-5, atol=1e-4)
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(out.scale, (0.5, 0.25))
    np.testing.assert_allclose(out.translate, (10, -3))
    assert out.metadata["origin"] == "test"
    assert out.metadata["bfcnn"]["source"] == "gray"
    assert out.metadata["bfcnn"]["model"] == "tiny-gray"
    assert out.colormap.name == "viridis"
    assert tuple(out.contrast_limits) == (5, 150)
    assert out.blending == "additive"
    assert tuple(out.axis_labels) == ("y", "x")
    assert [str(u) for u in out.units] == [str(u) for u in layer.units]
    assert layer.data is data and _checksum(data) == before
    assert notes["error"] == []
    assert widget.status.value.startswith("done")


def test_rgb_uint8_is_denoised_jointly_by_the_colour_model(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(1).integers(0, 255, (32, 36, 3), dtype=np.uint8)
    before = _checksum(data)
    layer = viewer.add_image(data, name="rgb", rgb=True)
    _run(qtbot, widget, layer, model="tiny-color")
    out = viewer.layers["rgb [denoised: tiny-color]"]
    assert out.rgb and out.data.dtype == np.uint8
    np.testing.assert_array_equal(out.data, _engine("tiny-color", data, channel_axis=-1))
    assert _checksum(data) == before


def test_rgba_alpha_is_passed_through_unchanged(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(2)
    data = rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)
    before = _checksum(data)
    layer = viewer.add_image(data, name="rgba", rgb=True)
    _run(qtbot, widget, layer, model="tiny-color")
    out = viewer.layers["rgba [denoised: tiny-color]"]
    assert out.data.shape == (32, 32, 4)
    np.testing.assert_array_equal(out.data[..., 3], data[..., 3])
    np.testing.assert_array_equal(
        out.data[..., :3], _engine("tiny-color", data[..., :3], channel_axis=-1)
    )
    assert _checksum(data) == before


def test_multichannel_layer_uses_the_guessed_channel_axis(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(3).uniform(0, 1, (2, 40, 40)).astype(np.float32)
    layer = viewer.add_image(data, name="two channels")
    widget.image.value = layer
    assert widget.channel_axis.value == 0
    _run(qtbot, widget, layer)
    out = viewer.layers["two channels [denoised: tiny-gray]"]
    np.testing.assert_allclose(
        out.data, _engine("tiny-gray", data, channel_axis=0), rtol=1e-5, atol=1e-6
    )


def test_a_three_slice_stack_labelled_z_is_not_taken_for_channels(viewer_widget):
    viewer, widget = viewer_widget
    data = np.zeros((3, 32, 32), np.float32)
    viewer.add_image(data, name="unlabelled")
    assert widget.chosen_channel_axis == 0  # by size alone: three channels
    if not hasattr(viewer.layers[0], "axis_labels"):
        pytest.skip("napari < 0.6 has no axis_labels")
    viewer.add_image(data, name="z", axis_labels=("z", "y", "x"))
    assert widget.chosen_channel_axis is None


def test_zstack_whole_stack_is_denoised_plane_by_plane(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(4).uniform(0, 100, (5, 32, 32)).astype(np.float32)
    layer = viewer.add_image(data, name="stack", scale=(3, 1, 1))
    assert widget.chosen_channel_axis is None
    _run(qtbot, widget, layer)
    out = viewer.layers["stack [denoised: tiny-gray]"]
    assert out.data.shape == data.shape
    np.testing.assert_allclose(out.data, _engine("tiny-gray", data), rtol=1e-5, atol=1e-4)
    assert out.metadata["bfcnn"]["planes"] == "all"


def test_current_slice_preview_denoises_only_the_viewed_plane_in_place(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(5).uniform(0, 100, (6, 32, 32)).astype(np.float32)
    layer = viewer.add_image(data, name="stack", scale=(2, 1, 1), translate=(1, 0, 0))
    _run(qtbot, widget, layer)  # the whole stack first: a preview must not replace it
    viewer.dims.set_point(0, 1 + 2 * 4)  # world z of slice 4
    widget.image.value = layer
    assert widget.preview.enabled
    widget.preview.value = True
    _run(qtbot, widget, layer)
    out = viewer.layers["stack [denoised: tiny-gray, preview]"]
    assert out.data.shape == (1, 32, 32)
    np.testing.assert_allclose(out.translate, (9, 0, 0))
    np.testing.assert_allclose(out.data[0], _engine("tiny-gray", data[4]), rtol=1e-5, atol=1e-4)
    assert out.metadata["bfcnn"]["planes"] == "current"
    whole = viewer.layers["stack [denoised: tiny-gray]"]
    assert whole.data.shape == data.shape and whole.metadata["bfcnn"]["planes"] == "all"
    viewer.dims.set_point(0, 1 + 2 * 2)  # another slice: its preview replaces the first one
    _run(qtbot, widget, layer)
    assert len(viewer.layers) == 3
    np.testing.assert_allclose(out.translate, (5, 0, 0))
    np.testing.assert_allclose(out.data[0], _engine("tiny-gray", data[2]), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("dtype", "out_dtype"), [(np.uint16, np.uint16), (np.float64, np.float32)])
def test_dtype_family_is_kept(viewer_widget, qtbot, dtype, out_dtype):
    viewer, widget = viewer_widget
    data = (np.random.default_rng(6).uniform(0, 4000, (32, 32))).astype(dtype)
    layer = viewer.add_image(data, name="img")
    _run(qtbot, widget, layer)
    out = viewer.layers["img [denoised: tiny-gray]"]
    assert out.data.dtype == out_dtype
    offset = widget.chosen_offset  # "auto" for uint16 when the microscopy model is installed
    expected = _engine("tiny-gray", data, offset=offset)
    np.testing.assert_allclose(out.data, expected, rtol=1e-5, atol=1e-2)


def test_a_rerun_after_renaming_the_source_still_replaces_its_own_output(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(8).uniform(0, 1, (32, 32)).astype(np.float32)
    layer = viewer.add_image(data, name="img")
    _run(qtbot, widget, layer)
    out = viewer.layers["img [denoised: tiny-gray]"]
    layer.name = "cells"
    assert out.metadata["bfcnn"]["source"] == "cells"  # followed the rename
    layer.scale = (2.0, 0.5)  # the pixel size corrected since
    _run(qtbot, widget, layer)
    assert len(viewer.layers) == 2 and out in viewer.layers  # replaced, not added
    np.testing.assert_allclose(out.scale, (2.0, 0.5))  # and still over its source


def test_a_result_of_data_replaced_during_the_run_is_discarded(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    layer = viewer.add_image(np.random.default_rng(9).uniform(0, 1, (32, 32)).astype(np.float32))
    widget.image.value, widget.model.value = layer, "tiny-gray"
    assert widget.run() is not None
    layer.data = np.zeros((32, 32), np.float32)  # e.g. another plugin's step, mid-run
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == 1  # nothing credited to the new data
    assert "replaced during the run" in widget.status.value
    assert "were replaced while it was being denoised" in notes["warning"][-1]


def test_rerun_replaces_only_its_own_output(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(7).uniform(0, 1, (32, 32)).astype(np.float32)
    layer = viewer.add_image(data, name="img")
    decoy = viewer.add_image(np.zeros((32, 32)), name="img [denoised: tiny-gray]")
    _run(qtbot, widget, layer)
    first = [lyr for lyr in viewer.layers if lyr.metadata.get("bfcnn")]
    assert len(first) == 1 and first[0] is not decoy
    out = first[0]
    _run(qtbot, widget, layer)
    assert len(viewer.layers) == 3
    assert [lyr for lyr in viewer.layers if lyr.metadata.get("bfcnn")] == [out]
    np.testing.assert_array_equal(decoy.data, 0)
    widget.image.value = layer
    _run(qtbot, widget, layer, model="tiny-color")
    assert "img [denoised: tiny-color]" in viewer.layers
    assert len(viewer.layers) == 4


def test_removed_noise_layer_is_source_minus_denoised(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    data = np.random.default_rng(8).uniform(0, 255, (32, 32)).astype(np.float32)
    layer = viewer.add_image(data, name="img")
    widget.add_noise.value = True
    _run(qtbot, widget, layer)
    den = viewer.layers["img [denoised: tiny-gray]"].data
    noise = viewer.layers["img [noise: tiny-gray]"]
    np.testing.assert_allclose(noise.data, data - den, atol=1e-4)
    lo, hi = noise.contrast_limits
    assert lo == -hi


def _start_long_run(viewer, widget):
    """Start denoising a 40-plane stack in 16-px tiles: long enough to stop halfway."""
    data = np.random.default_rng(9).uniform(0, 1, (40, 96, 96)).astype(np.float32)
    widget.image.value = viewer.add_image(data, name="big")
    widget.model.value = "tiny-gray"
    widget.tile.value = 16
    worker = widget.run()
    assert worker is not None and widget.cancel_button.enabled
    return worker


def test_cancel_stops_a_run_between_tiles(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    _start_long_run(viewer, widget)
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=TIMEOUT_MS)  # mid-run, not before
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.status.value == "cancelled"
    assert 0 < widget.progress.value < PROGRESS_STEPS
    assert [lyr.name for lyr in viewer.layers] == ["big"]
    assert notes["info"] == ["Denoising cancelled."]
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_closing_the_dock_stops_its_run_and_its_listening(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    _start_long_run(viewer, widget)
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=TIMEOUT_MS)  # closed mid-run
    viewer.window.remove_dock_widget(widget.native)  # the dock's close button does this
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.status.value == "cancelled"
    assert [lyr.name for lyr in viewer.layers] == ["big"]  # no result from a closed widget
    assert widget._closed  # its viewer connections are gone; camera estimates stop
    calls = []
    widget._start_camera_estimate = lambda *a: calls.append(a)
    viewer.add_image(np.zeros((32, 32), np.uint16), name="later")
    viewer.dims.set_point(0, 3)
    assert calls == []


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda v: v.add_labels(np.zeros((16, 16), np.int32)), "Labels layer"),
        (lambda v: v.add_points(np.zeros((3, 2))), "Points layer"),
        (lambda v: v.add_image(np.zeros((1, 1), np.float32)), "1x1"),
        (lambda v: v.add_image(np.zeros((16, 16), bool)), "boolean"),
        (lambda v: v.add_image(np.full((16, 16), np.nan, np.float32)), "no finite pixel"),
        (lambda v: v.add_image(np.zeros((2, 2, 2, 8, 8), np.float32)), "choose a channel axis"),
    ],
    ids=["labels", "points", "1x1", "bool", "all-nan", "5d"],
)
def test_bad_layers_show_an_error_and_add_nothing(viewer_widget, notes, make, words):
    viewer, widget = viewer_widget
    layer = make(viewer)
    n_layers = len(viewer.layers)
    worker = widget.denoise_layer(layer, channel_axis=None)
    assert worker is None
    assert len(notes["error"]) == 1 and words in notes["error"][0]
    assert len(viewer.layers) == n_layers
    assert not widget.running


def test_unusable_model_shows_an_error(viewer_widget, notes):
    viewer, widget = viewer_widget
    layer = viewer.add_image(np.zeros((16, 16), np.float32))
    widget.image.value = layer
    widget.model.value = "broken"
    assert widget.run() is None
    assert "not a .keras model file" in notes["error"][0]


def test_all_nan_plane_in_a_dask_stack_is_reported_after_the_run(viewer_widget, qtbot, notes):
    da = pytest.importorskip("dask.array")
    viewer, widget = viewer_widget
    data = np.random.default_rng(10).uniform(0, 1, (5, 32, 32)).astype(np.float32)
    data[1] = np.nan
    layer = viewer.add_image(da.from_array(data, chunks=(1, 32, 32)), name="lazy")
    _run(qtbot, widget, layer)
    out = viewer.layers["lazy [denoised: tiny-gray]"].data
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2, 3, 4]]).all()
    assert "1 plane(s)" in notes["warning"][0]


def test_dask_stack_is_read_one_plane_at_a_time(viewer_widget, qtbot, monkeypatch):
    da = pytest.importorskip("dask.array")
    viewer, widget = viewer_widget
    data = np.random.default_rng(11).uniform(0, 1, (6, 32, 32)).astype(np.float32)
    layer = viewer.add_image(
        da.from_array(data, chunks=(1, 32, 32)), name="lazy", contrast_limits=(0, 1)
    )
    materialised = []
    original = da.Array.__array__

    def spy(self, *args, **kwargs):
        materialised.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(da.Array, "__array__", spy)
    _run(qtbot, widget, layer)
    out = viewer.layers["lazy [denoised: tiny-gray]"]
    assert isinstance(out.data, np.ndarray)
    np.testing.assert_allclose(out.data, _engine("tiny-gray", data), rtol=1e-5, atol=1e-6)
    assert (32, 32) in materialised
    assert all(len(shape) < 3 or shape[0] == 1 for shape in materialised), materialised


def test_tta_run_gets_its_own_layer_next_to_the_plain_run(viewer_widget, qtbot):
    from src_models import load_model

    viewer, widget = viewer_widget
    data = np.random.default_rng(8).uniform(0, 1, (40, 36)).astype(np.float32)
    layer = viewer.add_image(data, name="img")
    _run(qtbot, widget, layer)
    widget.tta.value = True
    _run(qtbot, widget, layer)
    plain = viewer.layers["img [denoised: tiny-gray]"]
    tta = viewer.layers["img [denoised: tiny-gray, TTA \u00d78]"]
    np.testing.assert_allclose(tta.data, load_model("tiny-gray").denoise(data, tta=8),
                               rtol=1e-5, atol=1e-6)
    assert np.abs(tta.data - plain.data).max() > 1e-4
    _run(qtbot, widget, layer)  # a re-run with TTA replaces only the TTA layer
    assert len(viewer.layers) == 3


def test_a_lower_strength_run_gets_its_own_layer_holding_the_blend(viewer_widget, qtbot):
    from src_models import load_model

    viewer, widget = viewer_widget
    data = np.random.default_rng(9).uniform(0, 1, (40, 36)).astype(np.float32)
    layer = viewer.add_image(data, name="img")
    _run(qtbot, widget, layer)
    widget.strength.value = 0.5
    _run(qtbot, widget, layer)
    plain = viewer.layers["img [denoised: tiny-gray]"]
    half = viewer.layers["img [denoised: tiny-gray, strength 0.5]"]
    np.testing.assert_allclose(half.data, data + 0.5 * (plain.data - data), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(half.data, load_model("tiny-gray").denoise(data, strength=0.5),
                               rtol=1e-5, atol=1e-6)
    assert len(viewer.layers) == 3


def test_settings_are_kept_when_switching_layers(viewer_widget):
    viewer, widget = viewer_widget
    a = viewer.add_image(np.zeros((3, 32, 32), np.float32), name="a")
    b = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="b", rgb=True)
    widget.image.value = a
    widget.model.value = "tiny-color"
    widget.add_noise.value = True
    widget.tile.value = 128
    widget.tta.value = True
    widget.strength.value = 0.6
    widget.channel_axis.value = NO_AXIS  # the user overrides the guess (0) for layer a
    widget.image.value = b
    assert (widget.model.value, widget.add_noise.value, widget.tile.value, widget.tta.value) == (
        "tiny-color",
        True,
        128,
        True,
    )
    assert widget.strength.value == pytest.approx(0.6)
    assert not widget.channel_axis.enabled  # RGB: channels are last, nothing to choose
    widget.image.value = a
    assert widget.chosen_channel_axis is None  # the override is remembered per layer


def test_noise_estimate_is_in_layer_units(viewer_widget):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[0:128, 0:128]
    clean = 1000 + 5 * xx + 3 * yy
    layer = viewer.add_image((clean + rng.normal(0, 40, clean.shape)).astype(np.float32))
    widget.image.value = layer
    assert widget.estimate_noise() == pytest.approx(40, rel=0.15)
    assert widget.noise_level.value.startswith("\u03c3 \u2248 ")
    # the model sees the plane scaled to its largest value (about 1800): 40 -> about 6/255
    assert widget.noise_level.value.endswith("/255 for the model)")
    rel = float(widget.noise_level.value.split("(= ")[1].split("/255")[0])
    assert rel == pytest.approx(255 * 40 / float(layer.data.max()), rel=0.2)


@pytest.mark.parametrize(("sigma", "hint"), [(1.0, True), (25.0, False)])
def test_a_nearly_clean_image_gets_a_hint_about_texture_and_strength(viewer_widget, sigma, hint):
    from skimage import data

    viewer, widget = viewer_widget
    clean = data.camera().astype(np.float32)
    noisy = clean + np.random.default_rng(3).normal(0, sigma, clean.shape).astype(np.float32)
    widget.image.value = viewer.add_image(noisy, name="photo")
    widget.model.value = "tiny-gray"
    assert ("nearly clean" in widget.noise_level.value) == hint
    assert ("strength < 1" in widget.noise_level.value) == hint


def test_auto_model_follows_the_layer_kind(viewer_widget, qtbot):
    from src_models import default_model

    viewer, widget = viewer_widget
    rng = np.random.default_rng(21)
    gray_data = rng.uniform(0, 200, (24, 24)).astype(np.float32)
    rgb_data = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    gray = viewer.add_image(gray_data, name="g")
    rgb = viewer.add_image(rgb_data, name="c", rgb=True)
    _run(qtbot, widget, gray, model="auto")
    _run(qtbot, widget, rgb, model="auto")
    gray_model, rgb_model = default_model(1, False), default_model(3, True)
    assert (gray_model, rgb_model) == ("gray", "color")  # the bundled models
    out = viewer.layers[f"g [denoised: {gray_model}]"].data
    # float and 8-bit data: no black level removed
    np.testing.assert_allclose(out, _engine(gray_model, gray_data), rtol=1e-5, atol=1e-4)
    assert np.abs(out - gray_data).max() > 1  # the model changed the image
    out = viewer.layers[f"c [denoised: {rgb_model}]"].data
    assert out.dtype == np.uint8
    want = _engine(rgb_model, rgb_data, channel_axis=-1)
    np.testing.assert_allclose(out, want, atol=1)  # 8-bit rounding of the same floats
    assert np.abs(out.astype(int) - rgb_data).max() > 1


def test_export_button_docks_the_export_widget_with_the_chosen_model(viewer_widget):
    _viewer, widget = viewer_widget
    widget.model.value = "gray"
    export = widget.open_export()
    assert export.model.value == "gray"
    assert export.native.parent() is not None  # docked in the viewer's window
    widget.model.value = "tiny-gray"
    assert widget.open_export() is export  # the same dock again, not a second one
    assert export.model.value == "tiny-gray"
    _viewer.window.remove_dock_widget(export.native)  # closed by its x
    again = widget.open_export()
    assert again is not export and again.native.parent() is not None


def test_export_from_auto_picks_the_model_auto_chose_for_the_layer(viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((32, 32), np.float32), name="g")
    widget.model.value = "auto"
    assert widget.open_export().model.value == widget._resolved_name() != "auto"


def test_the_noise_estimate_of_a_lazy_layer_reads_its_crop_once_until_the_data_change(
    viewer_widget,
):
    import dask.array as da

    viewer, widget = viewer_widget
    reads = []

    def plane(block_info=None):
        reads.append(block_info[None]["array-location"][0])
        return np.random.default_rng(len(reads)).normal(100, 5, (1, 128, 128)).astype(np.float32)

    lazy = da.map_blocks(plane, dtype=np.float32, chunks=((1,) * 4, (128,), (128,)))
    layer = viewer.add_image(lazy, name="lazy")
    widget.image.value = layer
    first = widget.estimate_noise()
    before = len(reads)
    viewer.add_image(np.zeros((8, 8), np.float32), name="other")  # a layer event: asks again
    widget.image.value = layer
    assert widget.estimate_noise() == first and len(reads) == before  # no chunk computed again
    layer.data = lazy + 1.0  # new data: read anew
    widget.estimate_noise()
    assert len(reads) > before
