"""Denoise widget on camera data: microscopy proposal, camera-noise readout, black level."""

from __future__ import annotations

import numpy as np
import pytest

from napari_bfcnn._denoise_widget import BLACK_AUTO, BLACK_NONE, BLACK_VALUE, DenoiseWidget

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000
REASON = "16-bit single-channel data: microscopy model proposed"
TRAINED_PHOTONS = (100.0, 2000.0)  # the test model's photons_range at full scale


def _save_microscopy(
    folder, photons_range=TRAINED_PHOTONS, name="microscopy", correlated_prob=0.0
) -> None:
    """A tiny one-channel model named like a bundled microscopy model, with its recipe."""
    from src_models.architectures import build_model, parameter_count, receptive_field
    from src_models.config import (
        CorruptionConfig,
        DataConfig,
        DnCNNConfig,
        ModelCard,
        RecipeConfig,
    )
    from src_models.modelfile import save_model

    arch = DnCNNConfig(channels=1, depth=3, width=8)
    model = build_model(arch, name=name)
    corruption = CorruptionConfig(
        poisson_gaussian_prob=0.85, photons_range=photons_range, correlated_prob=correlated_prob
    )
    recipe = RecipeConfig(
        name=name, architecture=arch, corruption=corruption, data=DataConfig(color=False)
    )
    card = ModelCard(
        name=name,
        description="tiny stand-in for the bundled microscopy model",
        channels=1,
        kind="dncnn",
        parameters=parameter_count(model),
        receptive_field=receptive_field(model),
        recipe=recipe,
    )
    save_model(model, folder / f"{name}.keras", card)


@pytest.fixture(scope="session")
def microscopy_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundled")
    _save_microscopy(folder)
    _save_microscopy(folder, name="microscopy-correlated", correlated_prob=0.35)
    return folder


@pytest.fixture
def bundled_microscopy(microscopy_dir, monkeypatch):
    """The bundled models are just the tiny microscopy model (whatever ships in the repo)."""
    from src_models import registry

    monkeypatch.setattr(registry, "BUNDLED_DIR", microscopy_dir)
    registry.clear_cache()
    yield microscopy_dir
    registry.clear_cache()


@pytest.fixture
def no_bundled(tmp_path, monkeypatch):
    """No bundled models at all: no microscopy model to propose."""
    from src_models import registry

    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path)
    registry.clear_cache()
    yield
    registry.clear_cache()


def _widget(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Denoise")
    return viewer, widget


def _cell(**kwargs) -> np.ndarray:
    from napari_bfcnn._sample_data import cell_sample

    return cell_sample(**kwargs)[1][0]


def _wait_for_camera_noise(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.camera_estimating, timeout=TIMEOUT_MS)


# ------------------------------------------------------------------ proposal


def test_uint16_layer_gets_the_microscopy_model_with_its_reason(
    bundled_microscopy, make_napari_viewer, qtbot
):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(_cell(), name="cell")
    assert widget.model.value == "microscopy"
    assert widget.model_reason.value == REASON
    assert widget.model_info.value.startswith("microscopy")
    assert widget.black_level.value == BLACK_AUTO  # camera data: the offset is removed
    _wait_for_camera_noise(qtbot, widget)


def _correlated_camera_frame() -> np.ndarray:
    """uint16 counts (offset 100, gain 4, read noise 8) whose noise neighbours correlate 0.58."""
    from scipy import ndimage

    from src_models.corruptions import correlate_noise

    rng = np.random.default_rng(0)
    clean = 3000.0 * ndimage.gaussian_filter(rng.random((256, 256)), 6.0) ** 2 * 16
    noise = 4.0 * rng.poisson(clean / 4.0) + rng.normal(0.0, 8.0, clean.shape) - clean
    noise = correlate_noise(noise[..., None].astype(np.float32), 0.7, 0.7)[..., 0]
    return np.clip(np.rint(clean + noise + 100.0), 0, 65535).astype(np.uint16)


def test_correlated_camera_noise_turns_the_proposal_to_the_model_trained_for_it(
    bundled_microscopy, make_napari_viewer, qtbot
):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(_correlated_camera_frame(), name="widefield")
    assert widget.model.value == "microscopy"  # until the estimate is in
    _wait_for_camera_noise(qtbot, widget)
    assert widget.model.value == "microscopy-correlated"
    assert widget.model_reason.value.startswith(
        "16-bit single-channel data, noise correlated between neighbours (0.5"
    )
    assert widget.model_reason.value.endswith(": microscopy-correlated model proposed")
    assert "correlated between neighbours" in widget.camera_noise.value
    assert widget.noise_level.value.startswith("\u03c3 \u2248 ")
    assert widget.noise_level.value.endswith("(understated: the noise is correlated, see below)")
    assert not widget.range_warning.value.startswith("\u26a0 noise correlated")  # trained for it
    viewer.add_image(_cell(), name="cell")  # white camera noise: back to the white model
    _wait_for_camera_noise(qtbot, widget)
    assert widget.model.value == "microscopy" and widget.model_reason.value == REASON
    assert "understated" not in widget.noise_level.value


def test_multichannel_camera_data_are_read_out_on_the_channel_in_view(
    bundled_microscopy, make_napari_viewer, qtbot
):
    viewer, widget = _widget(make_napari_viewer)
    white = _cell()[:256, :256]
    data = np.stack([white, _correlated_camera_frame()[: white.shape[0], : white.shape[1]]])
    viewer.add_image(data, name="two channels")
    assert widget.chosen_channel_axis == 0 and widget.chosen_offset == "auto"
    _wait_for_camera_noise(qtbot, widget)
    assert widget.noise_level.value.startswith("\u03c3 \u2248 ")  # was "-" with a channel axis
    assert widget.camera_noise.value.startswith("gain ")
    assert "correlated" not in widget.camera_noise.value  # channel 0 in view: white noise
    viewer.dims.set_point(0, 1)  # the slider to channel 1
    widget._start_camera_estimate()  # what the slider's debounce timer does
    _wait_for_camera_noise(qtbot, widget)
    assert "correlated between neighbours" in widget.camera_noise.value
    assert widget.model.value == "microscopy-correlated"


@pytest.mark.parametrize(
    ("data", "rgb"),
    [
        (np.zeros((32, 32), np.float32), False),
        (np.zeros((32, 32), np.uint8), False),
        (np.zeros((32, 32, 3), np.uint16), True),
    ],
    ids=["float", "uint8", "rgb16"],
)
def test_photos_and_rgb_layers_get_no_proposal(
    bundled_microscopy, make_napari_viewer, qtbot, data, rgb
):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(data, rgb=rgb)
    assert widget.model.value == "auto"
    assert widget.model_reason.value == ""
    assert widget.black_level.value == BLACK_NONE
    _wait_for_camera_noise(qtbot, widget)


def test_a_model_chosen_for_a_layer_is_not_overridden(
    bundled_microscopy, make_napari_viewer, qtbot
):
    viewer, widget = _widget(make_napari_viewer)
    photo = viewer.add_image(np.zeros((32, 32), np.float32), name="photo")
    cell = viewer.add_image(_cell(), name="cell")
    assert widget.model.value == "microscopy"
    widget.model.value = "tiny-gray"  # the user's choice for this layer
    assert widget.model_reason.value == ""
    widget.image.value = photo
    assert widget.model.value == "tiny-gray"  # kept when switching, as any setting
    widget.image.value = cell
    assert widget.model.value == "tiny-gray" and widget.model_reason.value == ""
    assert widget.black_level.value == BLACK_AUTO  # camera data, whichever model: offset goes
    other = viewer.add_image(_cell(photons=30.0), name="other cell")
    assert widget.image.value is other
    assert widget.model.value == "microscopy"  # a new camera layer: proposed again
    widget.image.value = photo
    assert widget.model.value == "tiny-gray"  # the proposal goes; what was there comes back
    assert widget.black_level.value == BLACK_NONE
    _wait_for_camera_noise(qtbot, widget)


def test_a_black_level_set_for_one_layer_stays_with_that_layer(
    bundled_microscopy, make_napari_viewer, qtbot
):
    viewer, widget = _widget(make_napari_viewer)
    cell = viewer.add_image(_cell(), name="cell")
    assert widget.black_level.value == BLACK_AUTO
    widget.black_level.value = BLACK_VALUE
    widget.black_value.value = 100.0  # this camera's known offset
    photo = viewer.add_image(np.random.default_rng(0).uniform(0, 1, (32, 32)), name="photo")
    assert widget.image.value is photo
    assert widget.black_level.value == BLACK_NONE  # never 100 subtracted from a 0-1 photo
    assert widget.chosen_offset is None and not widget.black_value.enabled
    other = viewer.add_image(_cell(photons=30.0), name="other cell")
    assert widget.image.value is other and widget.chosen_offset == "auto"  # its own default
    widget.image.value = cell
    assert widget.chosen_offset == 100.0 and widget.black_value.enabled
    _wait_for_camera_noise(qtbot, widget)


def test_a_crop_that_cannot_be_read_gives_no_estimate_instead_of_an_error():
    from napari_bfcnn._denoise_widget import _estimate_crop

    class Broken:
        shape, dtype, ndim = (64, 64), np.dtype(np.uint16), 2

        def __getitem__(self, index):
            raise OSError("zarr store moved")

    assert _estimate_crop(Broken(), (slice(0, 64), slice(0, 64)), None) is None


def test_without_a_microscopy_model_nothing_is_proposed(no_bundled, make_napari_viewer, qtbot):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(_cell(), name="cell")
    assert widget.model.value == "auto"
    assert widget.model_reason.value == ""
    _wait_for_camera_noise(qtbot, widget)


# ------------------------------------------------------------------ readout


def test_camera_noise_of_the_cell_sample_is_read_out_in_a_worker(
    bundled_microscopy, make_napari_viewer, qtbot
):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(_cell(), name="cell")
    assert widget.camera_estimating  # not computed on the UI thread
    assert widget.camera_noise.value == "estimating\u2026"
    _wait_for_camera_noise(qtbot, widget)
    text = widget.camera_noise.value
    assert text.startswith("gain ") and "read \u03c3" in text and "SNR" in text
    est = widget.estimate_camera_noise().estimate  # the same numbers, synchronously
    assert est.gain == pytest.approx(8.0, rel=0.1)  # the sample's 8 ADU per electron
    assert f"gain {est.gain:.3g}/photon" in text
    assert 8 < est.photons_median < 20  # 15 photons at the median, black level estimated
    # 57 photons at the peak: below the model's trained 100-2000
    assert widget.range_warning.value.startswith("\u26a0")
    assert "below microscopy's trained range (100\u20132000)" in widget.range_warning.value
    # the model line names the shot-noise range too; the Gaussian σ flag is left to this readout
    assert "100\u20132000 photons" in widget.model_info.value
    assert "above its range" not in widget.noise_level.value


def test_a_known_black_level_is_used_and_bright_data_give_no_warning(
    bundled_microscopy, make_napari_viewer, qtbot
):
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(_cell(photons=150.0), name="bright cell")  # about 570 photons at the peak
    widget.black_level.value = BLACK_VALUE
    widget.black_value.value = 100.0
    _wait_for_camera_noise(qtbot, widget)
    noise = widget.estimate_camera_noise()
    assert noise.estimate.offset == 100.0
    assert noise.estimate.read_sigma == pytest.approx(16.0, rel=0.25)  # 2 e- at 8 ADU/e-
    assert noise.estimate.photons_median == pytest.approx(150.0, rel=0.1)
    assert widget.range_warning.value == ""


def test_gaussian_uint16_layer_reads_as_no_shot_noise(no_bundled, make_napari_viewer, qtbot):
    from skimage import data

    viewer, widget = _widget(make_napari_viewer)
    clean = data.camera().astype(np.float32) + 1000.0
    noisy = clean + np.random.default_rng(0).normal(0, 20, clean.shape).astype(np.float32)
    viewer.add_image(np.round(noisy).astype(np.uint16))
    _wait_for_camera_noise(qtbot, widget)
    assert widget.camera_noise.value.startswith("no shot noise: Gaussian, \u03c3 2")
    assert widget.range_warning.value == ""


def test_float_and_8bit_layers_get_no_camera_readout(no_bundled, make_napari_viewer):
    from skimage import data

    viewer, widget = _widget(make_napari_viewer)
    for image in (data.camera(), data.camera().astype(np.float32)):
        viewer.add_image(image)
        assert widget._camera_request() is None  # photos: no shot-noise worker at all
        assert not widget._camera_pending


# ------------------------------------------------------------------ black level


@pytest.mark.parametrize(
    ("mode", "value", "offset"), [(BLACK_AUTO, 0.0, "auto"), (BLACK_VALUE, 100.0, 100.0)]
)
def test_black_level_choice_reaches_the_engine(
    no_bundled, make_napari_viewer, qtbot, mode, value, offset
):
    from src_models import load_model

    viewer, widget = _widget(make_napari_viewer)
    data = _cell()[200:264, 200:280].astype(np.float32)  # float: small differences show
    viewer.add_image(data, name="crop")
    widget.model.value = "tiny-gray"
    widget.black_level.value = mode
    widget.black_value.value = value
    assert widget.chosen_offset == offset
    assert widget.black_value.enabled == (mode == BLACK_VALUE)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    out = viewer.layers["crop [denoised: tiny-gray]"].data
    model = load_model("tiny-gray")
    np.testing.assert_allclose(out, model.denoise(data, offset=offset), rtol=1e-6, atol=1e-3)
    assert np.abs(out - model.denoise(data)).max() > 0.01  # the black level made a difference
    _wait_for_camera_noise(qtbot, widget)


def test_a_model_fine_tuned_with_a_black_level_is_denoised_with_it(
    no_bundled, make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """Choosing it sets its recorded level on a layer the user set none for; another model
    brings back the data's default; a level the user set for the layer stays."""
    from src_models import registry
    from src_models.modelfile import copy_with_card, read_card

    folder = tmp_path / "models"
    src = registry._resolve("tiny-gray")
    card = read_card(src)
    notes = {**card.notes, registry.BLACK_LEVEL_NOTE: "12.5"}
    copy_with_card(src, folder / "tuned.keras", card.model_copy(update={"name": "tuned",
                                                                         "notes": notes}))
    copy_with_card(src, folder / "tiny-gray.keras", card)
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(folder))
    registry.clear_cache()
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(np.full((40, 40), 50, np.uint8), name="photo")
    widget.model.value = "tiny-gray"
    assert widget.black_level.value == BLACK_NONE  # 8-bit data: no black level by default
    widget.model.value = "tuned"
    assert (widget.black_level.value, widget.black_value.value) == (BLACK_VALUE, 12.5)
    assert widget.chosen_offset == 12.5 and widget.black_value.enabled
    widget.model.value = "tiny-gray"
    assert widget.black_level.value == BLACK_NONE
    widget.black_level.value = BLACK_AUTO  # the user's choice for this layer
    widget.model.value = "tuned"
    assert widget.black_level.value == BLACK_AUTO
    _wait_for_camera_noise(qtbot, widget)


def test_camera_estimates_run_one_at_a_time_and_closing_waits_for_the_running_one(
    no_bundled, make_napari_viewer, qtbot, monkeypatch
):
    """Stale estimates piled up in the thread pool, and one still running when the dock
    went emitted into deleted Qt objects (napari aborted at exit; a test run hung)."""
    import time

    import napari_bfcnn._denoise_widget as dw

    real = dw._estimate_crop
    running, most = [], []

    def slow(*args):
        running.append(1)
        most.append(len(running))
        time.sleep(0.3)
        running.pop()
        return real(*args)

    monkeypatch.setattr(dw, "_estimate_crop", slow)
    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(_cell(), name="cell")
    for _ in range(3):  # three quick requests: the last waits, the middle one is dropped
        widget._start_camera_estimate()
    _wait_for_camera_noise(qtbot, widget)
    assert max(most) == 1 and len(most) <= 3
    widget._start_camera_estimate()
    qtbot.waitUntil(lambda: bool(running), timeout=TIMEOUT_MS)
    widget._disconnect()  # the dock closed mid-estimate
    assert not running  # it waited for the estimate to end


def test_closing_after_qt_deleted_the_estimate_timer_does_not_raise(
    bundled_microscopy, make_napari_viewer, qtbot
):
    from qtpy import sip

    viewer, widget = _widget(make_napari_viewer)
    viewer.add_image(_cell(), name="cell")
    _wait_for_camera_noise(qtbot, widget)
    widget._schedule_estimate()  # the timer exists once a slider moved
    timer = widget._estimate_timer
    timer.stop()
    sip.delete(timer)  # what interpreter exit does to an unparented QTimer
    widget._disconnect()  # used to raise "wrapped C/C++ object ... has been deleted"
    assert widget._closed


def test_a_dark_rgb_composite_gets_a_hint_but_keeps_the_chosen_model(
    bundled_microscopy, make_napari_viewer, qtbot
):
    from skimage import data

    viewer, widget = _widget(make_napari_viewer)
    yy, xx = np.mgrid[:128, :128]
    comp = np.zeros((128, 128, 3), np.uint8)
    comp[..., 0] = 220 * (np.hypot(yy - 40, xx - 40) < 12)  # a red and a green cell, dark ground
    comp[..., 1] = 180 * (np.hypot(yy - 90, xx - 80) < 15)
    viewer.add_image(comp, rgb=True, name="composite")
    assert widget.model.value == "auto"  # a hint, not a proposal
    assert widget.model_reason.value.startswith("mostly dark RGB")
    assert "microscopy" in widget.model_reason.value
    assert widget.black_level.value == BLACK_NONE
    widget.model.value = "tiny-gray"
    assert widget.model_reason.value.startswith("mostly dark RGB")  # still true of the layer
    viewer.add_image(data.astronaut(), rgb=True, name="photo")
    assert widget.model_reason.value == ""
    _wait_for_camera_noise(qtbot, widget)


def test_readouts_scale_by_the_whole_planes_peak_as_the_engine_does(make_napari_viewer, qtbot):
    viewer, widget = _widget(make_napari_viewer)
    rng = np.random.default_rng(4)
    frame = (100 + 8 * rng.poisson(20, (1024, 1024))).astype(np.uint16)
    frame[10:20, 10:20] = 4000  # a bright cell far from the centre crop
    viewer.add_image(frame, name="frame")
    _wait_for_camera_noise(qtbot, widget)
    assert widget.estimate_camera_noise().peak == 4000.0  # not the crop's ~400
    assert 3500 < widget._crop_scale < 4000  # the peak above the estimated black level
