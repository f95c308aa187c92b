"""The Fine-tune dock widget in a real viewer: train, save, list, denoise, refuse, stop, manage.

The mid-run screenshot goes to the test's temporary folder; set
``NAPARI_BFCNN_WRITE_DOCS_IMAGES=1`` to write it to ``docs/images/train_widget.png`` instead
(to refresh the README).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading

import numpy as np
import pytest
from skimage import data as skdata

import napari_bfcnn._train_widget as tw
from napari_bfcnn._denoise_widget import DenoiseWidget
from napari_bfcnn._train_widget import TAG, TrainWidget
from src_models import load_model
from src_models.registry import list_models

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000
TRAINING_THREAD = "napari-bfcnn-training"  # the thread _train_jobs.train_job runs finetune in


@pytest.fixture(autouse=True)
def _training_is_stopped_and_its_lock_freed(qtbot):
    """After each test: stop the training it left running and free the one-training lock.

    Why: the lock and the active job are module-level (one training per napari); a test
    failing before Stop would leave them held, and every later Fine-tune test would be
    refused with "already running". A test that leaves a training running errors here.
    """
    yield
    left_running = bool(tw._ACTIVE) or tw._TRAINING.locked()
    for job in list(tw._ACTIVE):
        job.stop.set()  # the training ends within a step and saves what it has

    def ended() -> bool:
        threads = [t for t in threading.enumerate() if t.name == TRAINING_THREAD]
        return not threads and not tw._TRAINING.locked()

    with contextlib.suppress(qtbot.TimeoutError):  # the worker's "finished" frees the lock
        qtbot.waitUntil(ended, timeout=TIMEOUT_MS)
    if tw._TRAINING.locked():  # no widget heard its worker finish (it was closed first)
        tw._ACTIVE.clear()
        tw._TRAINING.release()
    assert ended(), "a training thread is still alive after Stop"
    assert not left_running, "the test left a training running (stopped, lock freed)"


@pytest.fixture
def user_models(model_dir, tmp_path, monkeypatch):
    """A writable copy of the tiny-model folder (tiny-gray, tiny-color, broken) for one test."""
    from src_models import registry

    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(folder))
    registry.clear_cache()
    yield folder
    registry.clear_cache()


@pytest.fixture
def notes(capture_notes, monkeypatch):
    """Notifications the training widget shows, by kind; confirmation dialogs answer yes."""
    monkeypatch.setattr(tw, "_confirm", lambda parent, question: True)
    return capture_notes(tw)


@pytest.fixture
def viewer_widgets(make_napari_viewer, user_models, notes):
    viewer = make_napari_viewer()
    train = TrainWidget(viewer)
    denoise = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(train, name="Fine-tune")
    viewer.window.add_dock_widget(denoise, name="Denoise")
    return viewer, train, denoise


def _text(h=96, w=160) -> np.ndarray:
    return skdata.text()[:h, :w].astype(np.float32)


def _setup(train, layer, name="text-ft", steps=12, base="tiny-gray", mode="clean"):
    train.mode.value = mode
    if mode == "pairs":
        train.noisy.value, train.clean.value = layer
    else:
        train.layers.value = [layer]
    train.base.value = base
    train.model_name.value = name
    train.steps.value = steps
    train.patch.value = 32
    train.batch.value = 4


def _combo_values(combo) -> list:
    return [combo.native.itemData(i) for i in range(combo.native.count())]


def test_trained_model_is_saved_listed_by_the_denoise_widget_and_denoises(
    viewer_widgets, qtbot, notes, user_models
):
    viewer, train, denoise = viewer_widgets
    layer = viewer.add_image(_text(), name="text", scale=(2.0, 2.0))
    _setup(train, layer)
    assert "text-ft" not in _combo_values(denoise.model)

    assert train.run() is not None
    qtbot.waitUntil(lambda: not train.running, timeout=TIMEOUT_MS)

    assert notes["error"] == []
    assert train.status.value.startswith("saved 'text-ft' (12 steps")
    assert "validation 15: " in train.status.value
    assert (user_models / "text-ft.keras").is_file()
    assert train.user_models.value == "text-ft"
    # the live plot got losses and the scores of every validation, the first before training
    assert len(train.plot.losses) >= 2 and train.plot.scores["25"][0][0] == 0
    # held-out region: a rectangle, its noisy input and the model's output, placed on the layer
    region = next(lyr for lyr in viewer.layers if lyr.metadata.get(TAG) == "region")
    preview = next(lyr for lyr in viewer.layers if lyr.metadata.get(TAG) == "preview")
    assert preview.data.shape == (20, 160)  # bottom 20 % of 96 rows, full width
    np.testing.assert_allclose(preview.translate, (2.0 * 76, 0.0))
    assert region.data[0][:, 0].min() == pytest.approx(75.5)

    # the denoise widget lists the new model at once, and it denoises
    assert "text-ft" in _combo_values(denoise.model)
    denoise.image.value = layer
    denoise.model.value = "text-ft"
    assert denoise.run() is not None
    qtbot.waitUntil(lambda: not denoise.running, timeout=TIMEOUT_MS)
    out = viewer.layers["text [denoised: text-ft]"].data
    # the saved model, as the engine loads it from the user folder (float data: no black level)
    want = load_model("text-ft").denoise(np.asarray(layer.data), channel_axis=None, offset=None)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    assert np.abs(out - layer.data).max() > 1e-2  # the model ran (clean text: changed little)
    # the fine-tuned weights, not the base's (unless no validation beat the base: then kept)
    base = load_model("tiny-gray").denoise(np.asarray(layer.data))
    if "kept the starting model" in train.status.value:
        np.testing.assert_allclose(out, base, rtol=1e-5, atol=1e-4)
    else:
        assert np.abs(out - base).max() > 1e-3


class _CountingStop(threading.Event):
    """The job's stop flag, counting the steps the training began: one poll per step.

    ``requested_after``: the steps begun (polls answered "go on") when Stop was pressed,
    less the polls made while the data were prepared (``finetune`` checks twice before
    the training loop).
    """

    PREPARATION_POLLS = 2

    def __init__(self) -> None:
        super().__init__()
        self._count_lock = threading.Lock()
        self.steps_begun = 0
        self.requested_after: int | None = None

    def is_set(self) -> bool:
        with self._count_lock:
            stopped = super().is_set()
            self.steps_begun += not stopped
            return stopped

    def set(self) -> None:
        with self._count_lock:
            if self.requested_after is None:
                self.requested_after = self.steps_begun - self.PREPARATION_POLLS
            super().set()


def test_second_training_is_refused_and_stop_ends_the_run_then_resume_finishes(
    viewer_widgets, make_napari_viewer, qtbot, notes, monkeypatch
):
    job_class, stops = tw.TrainJob, []

    def job_with_counted_stop(*args, **kwargs):
        stops.append(_CountingStop())
        return job_class(*args, stop=stops[-1], **kwargs)

    monkeypatch.setattr(tw, "TrainJob", job_with_counted_stop)
    viewer, train, _ = viewer_widgets
    layer = viewer.add_image(_text(), name="text")
    _setup(train, layer, name="long", steps=100_000)
    assert train.run() is not None
    qtbot.waitUntil(lambda: len(train.plot.losses) >= 2, timeout=TIMEOUT_MS)

    assert train.run() is None  # the same widget
    other = TrainWidget(viewer)
    _setup(other, layer, name="other")
    assert other.run() is None  # another widget in the same napari
    assert len(notes["warning"]) == 2 and "already running" in notes["warning"][0]

    # the running job's base and its future name are off limits, from any Fine-tune widget
    other.user_models.value = "tiny-gray"
    other.rename_to.value = "renamed"
    assert not other.rename_model() and not other.delete_model()
    other.user_models.value, other.rename_to.value = "tiny-color", "long"
    assert not other.rename_model()
    assert "base of the running training" in notes["warning"][2]
    assert "'long' is being trained" in notes["warning"][4]
    assert {"tiny-gray", "tiny-color"} <= {m.name for m in list_models()}

    (stop,) = stops
    train.stop()
    assert stop.requested_after is not None
    qtbot.waitUntil(lambda: not train.running, timeout=TIMEOUT_MS)
    assert "stopped at step" in train.status.value
    steps_done = int(re.search(r"stopped at step (\d+)", train.status.value).group(1))
    # the training polls the flag before each step: only the step in progress when Stop was
    # pressed ran to its end, no new one began (whatever the machine's speed)
    assert steps_done == stop.requested_after >= 20
    assert "nothing saved" in train.status.value  # no validation ran: no model named 'long' yet
    assert "long" not in [m.name for m in list_models()]

    train.steps.value = steps_done + 4
    assert train.run(resume=True) is not None
    qtbot.waitUntil(lambda: not train.running, timeout=TIMEOUT_MS)
    # the step count; "; kept the starting model" may follow when no validation beat the base
    assert train.status.value.startswith(f"saved 'long' ({steps_done + 4} steps")
    assert notes["error"] == []


def test_pairs_mode_trains_on_a_noisy_layer_and_its_clean_partner(viewer_widgets, qtbot, notes):
    viewer, train, _ = viewer_widgets
    clean = _text()
    noisy = clean + np.random.default_rng(0).normal(0, 20, clean.shape).astype(np.float32)
    pair = (viewer.add_image(noisy, name="noisy"), viewer.add_image(clean, name="clean"))
    _setup(train, pair, name="paired", steps=6, mode="pairs")
    hidden = {w: w.native.isHidden() for w in (train.layers, train.noisy, train.sigma_min)}
    assert hidden == {train.layers: True, train.noisy: False, train.sigma_min: True}
    assert train.run() is not None
    qtbot.waitUntil(lambda: not train.running, timeout=TIMEOUT_MS)
    assert notes["error"] == []
    assert set(train.plot.scores) == {"pair"}
    assert train.status.value.startswith("saved 'paired' (6 steps")
    assert "validation pair: " in train.status.value


def test_bad_choices_are_reported_not_started(viewer_widgets, notes):
    viewer, train, _ = viewer_widgets
    layer = viewer.add_image(_text(), name="text")
    _setup(train, layer, name="bad name!")
    assert train.run() is None
    assert "not a valid model name" in notes["error"][-1]
    _setup(train, layer)
    train.sigma_min.value, train.sigma_max.value = 40, 10
    assert train.run() is None
    assert "sigma_range" in notes["error"][-1]
    train.sigma_min.value = 0
    train.layers.value = []
    assert train.run() is None
    assert "Select at least one image layer" in notes["error"][-1]
    assert not train.running and train.run_button.enabled


def test_noisy_only_mode_shows_the_method_and_passes_it_to_the_settings(viewer_widgets):
    viewer, train, _ = viewer_widgets
    layer = viewer.add_image(_text(), name="text")
    _setup(train, layer, mode="clean")
    assert train.noisy_method.native.isHidden()  # hidden, whether or not the dock is shown
    _setup(train, layer, mode="noisy")
    assert not train.noisy_method.native.isHidden() and train.sigma_min.native.isHidden()
    for method in ("n2n", "r2r"):
        train.noisy_method.value = method
        assert train.settings().noisy_method == method


def test_preview_adds_a_corrupted_patch_with_the_chosen_noise(viewer_widgets, notes):
    viewer, train, _ = viewer_widgets
    flat = np.full((200, 200), 200, dtype=np.uint8)
    layer = viewer.add_image(flat, name="flat", translate=(10, 20))
    train.layers.value = [layer]
    train.sigma_min.value = train.sigma_max.value = 20
    out = train.preview_corruption()
    assert out is not None and out.name == "flat [corrupted patch]"
    assert out.data.shape == (128, 128)  # patch "auto": 128 px
    np.testing.assert_allclose(out.translate, (10 + 36, 20 + 36))  # the centre patch, in place
    # sigma 20/255 of the plane's peak (200): about 15.7 in the layer's units
    assert np.std(out.data) == pytest.approx(20 / 255 * 200, rel=0.1)
    train.patch.value = 40  # previews twice the training patch
    small = train.preview_corruption()
    assert small.data.shape == (80, 80)
    assert len(viewer.layers) == 2  # replaced, not added
    other = viewer.add_image(np.full((200, 200), 90, np.uint8), name="other", translate=(-5, 0))
    train.layers.value = [other]
    again = train.preview_corruption()  # same patch shape, another layer: name and place follow
    assert again is small and again.name == "other [corrupted patch]"
    np.testing.assert_allclose(again.translate, (-5 + 60, 0 + 60))


def test_user_models_are_renamed_and_deleted_and_broken_ones_show_the_reason(
    viewer_widgets, user_models, notes
):
    _, train, denoise = viewer_widgets
    values = _combo_values(train.user_models)
    assert "broken" in values and "tiny-gray" in values
    i = values.index("broken")
    assert "unavailable: " in train.user_models.native.itemText(i)
    train.user_models.value = "broken"
    assert train.model_status.value.startswith("cannot be loaded:")
    base_i = _combo_values(train.base).index("broken")
    assert not train.base.native.model().item(base_i).isEnabled()

    train.user_models.value = "tiny-color"
    train.rename_to.value = "my-colour"
    assert train.rename_model()
    assert (user_models / "my-colour.keras").is_file()
    assert "my-colour" in _combo_values(denoise.model)
    assert "tiny-color" not in _combo_values(denoise.model)

    train.user_models.value = "my-colour"
    assert train.delete_model()
    assert not (user_models / "my-colour.keras").exists()
    assert "my-colour" not in _combo_values(denoise.model)
    assert "my-colour" not in _combo_values(train.user_models)
    assert notes["error"] == []


def test_screenshot_of_the_training_widget_mid_run(
    make_napari_viewer, qtbot, user_models, notes, screenshot_path, check_window_shot
):
    from skimage.io import imread, imsave

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1440, 1080)
    layer = viewer.add_image(skdata.camera()[::2, ::2].astype(np.float32), name="camera")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Fine-tune", area="right")
    _setup(train, layer, name="camera-ft", steps=400, base="new:tiny")
    assert train.run() is not None
    try:
        qtbot.waitUntil(lambda: len(train.plot.scores.get("25", ((), ()))[0]) >= 5,
                        timeout=TIMEOUT_MS)
        viewer.layers.selection.active = layer
        viewer.reset_view()
        qtbot.wait(300)
        shot = viewer.screenshot(canvas_only=False, flash=False)
    finally:
        train.stop()
        qtbot.waitUntil(lambda: not train.running, timeout=30_000)
    # the window's size; the canvas, the widget and its live plot each show something
    check_window_shot(viewer, shot, train.native, train.plot.native)
    image = screenshot_path("train_widget.png")
    imsave(image, shot, check_contrast=False)
    np.testing.assert_array_equal(imread(image), shot)  # saved losslessly
    assert notes["error"] == []


def test_bundled_names_and_resume_without_a_run_are_refused_before_anything_starts(
    viewer_widgets, notes
):
    viewer, train, _ = viewer_widgets
    layer = viewer.add_image(_text(), name="text")
    _setup(train, layer, name="never-run")
    assert train.run(resume=True) is None and not train.running
    assert "nothing to resume" in notes["error"][-1]
    _setup(train, layer, name="gray")  # a bundled model's name
    assert train.run() is None and not train.running
    assert "bundled model" in notes["error"][-1]
    assert train.status.value == "not started"


def test_training_that_would_not_fit_in_free_memory_is_refused_before_it_starts(
    viewer_widgets, notes, monkeypatch
):
    import types

    import psutil

    viewer, train, _ = viewer_widgets
    layer = viewer.add_image(_text(), name="text")
    _setup(train, layer, name="big")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=10_000))
    assert train.run() is None and not train.running
    assert "the training samples would take" in notes["error"][-1]
    assert "fewer planes" in notes["error"][-1]


def test_memory_check_counts_the_pairs_copy_and_a_colour_bases_channels(
    viewer_widgets, monkeypatch
):
    import napari_bfcnn._train_widget as tw

    viewer, train, _ = viewer_widgets
    asked = []
    monkeypatch.setattr(tw, "check_free_memory", lambda need, *a: asked.append(need))
    monkeypatch.setattr(tw, "TrainJob", lambda *a, **k: None)  # nothing runs
    img = _text()
    gray = viewer.add_image(img, name="gray")
    clean = viewer.add_image(img, name="clean")
    _setup(train, gray, base="tiny-gray")
    train._make_job(resume=False)
    _setup(train, gray, base="tiny-color")  # every gray plane repeated into 3 channels
    train._make_job(resume=False)
    _setup(train, (gray, clean), base="tiny-gray", mode="pairs")  # noisy + clean, joined too
    train._make_job(resume=False)
    assert asked == [4 * 2 * img.size, 4 * 2 * 3 * img.size, 4 * 3 * 2 * img.size]


def test_previews_follow_a_source_renamed_during_training(viewer_widgets, qtbot, notes):
    viewer, train, _ = viewer_widgets
    layer = viewer.add_image(_text(), name="text")
    _setup(train, layer, name="renamed-run", steps=12)
    assert train.run() is not None
    layer.name = "cells"  # before the first preview reaches the viewer
    qtbot.waitUntil(lambda: not train.running, timeout=TIMEOUT_MS)
    tags = {lyr.metadata.get(TAG) for lyr in viewer.layers}
    assert {"region", "input", "preview"} <= tags  # found by the layer, not by its old name
    assert notes["error"] == []


def test_closing_napari_mid_run_stops_the_training_without_touching_deleted_widgets(
    viewer_widgets, qtbot, notes
):
    viewer, train, _ = viewer_widgets
    layer = viewer.add_image(_text(), name="text")
    _setup(train, layer, name="closed", steps=100_000)
    assert train.run() is not None
    qtbot.waitUntil(lambda: len(train.plot.losses) >= 2, timeout=TIMEOUT_MS)
    viewer.close()  # the widgets are deleted; the job still reports until it stops
    qtbot.waitUntil(lambda: not tw._TRAINING.locked(), timeout=TIMEOUT_MS)
    assert not tw._ACTIVE  # the lock and the job are freed for the next training
    assert notes["error"] == []  # and no slot wrote into a deleted widget (pytest-qt fails it)


def test_a_stop_while_the_data_are_prepared_is_reported_as_nothing_saved(viewer_widgets, notes):
    from napari_bfcnn._train_jobs import TrainOutcome

    _, train, _ = viewer_widgets
    train._on_returned(TrainOutcome(stopped_early=True))
    assert train.status.value == "stopped before training began: nothing saved"
    assert notes["info"] == ["Training stopped before it began: nothing saved."]
    assert notes["error"] == []


def test_quitting_the_training_worker_stops_the_training_and_waits_for_its_save(
    qtbot, monkeypatch
):
    """napari quits every worker when it quits; superqt then leaves the generator's loop
    without closing the generator, so the abort itself must stop the training, and the
    worker must not report finished (freeing the lock, letting napari exit) before the
    training has saved and ended."""
    import time

    import src_models.finetune as ft
    from napari_bfcnn._train_jobs import TrainJob, make_train_worker

    saved = []

    def training(settings, images, *, on_progress, should_stop, **_kwargs):
        on_progress("step 1")
        deadline = time.monotonic() + 10.0  # never told to stop: give up, as a failure
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # saving the best model so far
        saved.append(should_stop())
        raise ft.StoppedBeforeTraining("stopped")

    monkeypatch.setattr(ft, "finetune", training)
    job = TrainJob(settings=None, images=[])
    worker = make_train_worker(job)
    with qtbot.waitSignal(worker.yielded, timeout=TIMEOUT_MS):
        worker.start()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        worker.quit()
    assert job.stop.is_set()
    assert saved == [True]  # saved and ended before finished came
    assert not [t for t in threading.enumerate() if t.name == TRAINING_THREAD]
