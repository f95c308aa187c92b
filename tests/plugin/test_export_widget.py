"""The Export dock widget in a real viewer: export in a worker, refuse bad requests, notify."""

from __future__ import annotations

import zipfile

import pytest
import yaml

import napari_bfcnn._export_widget as ew
from napari_bfcnn._export_widget import ExportWidget
from napari_bfcnn._workers import AUTO

pytestmark = pytest.mark.gui

TIMEOUT_MS = 180_000


@pytest.fixture
def notes(monkeypatch):
    """Notifications the export widget shows, by kind."""
    captured = {"error": [], "info": []}
    for kind in captured:
        monkeypatch.setattr(ew, f"show_{kind}", captured[kind].append)
    return captured


@pytest.fixture
def widget(make_napari_viewer, notes, tmp_path):
    viewer = make_napari_viewer()
    w = ExportWidget(viewer)
    viewer.window.add_dock_widget(w, name="Export")
    w.folder.value = str(tmp_path)
    return w


def _values(combo) -> list:
    return [combo.native.itemData(i) for i in range(combo.native.count())]


def test_export_writes_every_format_in_a_worker_and_notifies(widget, qtbot, notes, tmp_path):
    values = _values(widget.model)
    assert values[-3:] == ["broken", "tiny-color", "tiny-gray"] and "gray" in values
    assert AUTO not in values  # "auto (by layer)" means nothing without a layer
    broken = widget.model.native.model().item(values.index("broken"))
    assert not broken.isEnabled()
    widget.model.value = "tiny-gray"
    widget.authors.value = "Ada Lovelace, Grace Hopper"  # a user model: its makers, its terms
    widget.license.value = "CC-BY-4.0"

    assert widget.run() is not None
    assert widget.running and not widget.run_button.enabled
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    assert notes["error"] == []
    assert (tmp_path / "tiny-gray_saved_model" / "saved_model.pb").is_file()
    assert (tmp_path / "tiny-gray.tflite").stat().st_size > 1000
    with zipfile.ZipFile(tmp_path / "tiny-gray.bioimageio.zip") as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Grace Hopper"]
    assert rdf["license"] == "CC-BY-4.0"
    assert widget.status.value.startswith(f"written to {tmp_path}: saved_model")
    (info,) = notes["info"]
    assert "tflite (tiny-gray.tflite)" in info and "matches the model to" in info
    assert widget.run_button.enabled


def test_existing_file_is_not_replaced_and_the_error_is_shown(widget, qtbot, notes, tmp_path):
    (tmp_path / "tiny-color.tflite").write_bytes(b"keep")
    widget.model.value = "tiny-color"
    for fmt, box in widget.formats.items():
        box.value = fmt == "tflite"

    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)

    assert len(notes["error"]) == 1 and "tiny-color.tflite exist" in notes["error"][0]
    assert widget.status.value == "failed"
    assert (tmp_path / "tiny-color.tflite").read_bytes() == b"keep"

    widget.overwrite.value = True
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert (tmp_path / "tiny-color.tflite").read_bytes() != b"keep"
    assert len(notes["info"]) == 1


def test_cancel_stops_after_the_format_being_written(widget, qtbot, notes, tmp_path):
    widget.model.value = "tiny-gray"
    widget.authors.value = "Ada Lovelace"
    assert widget.run() is not None and widget.cancel_button.enabled
    assert widget.progress.max == 3
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.status.value.startswith("cancelled") and not widget.cancel_button.enabled
    assert not (tmp_path / "tiny-gray.bioimageio.zip").exists()  # the last format never began
    written = [p for p in tmp_path.iterdir() if p.name.startswith("tiny-gray")]
    assert widget.progress.value == len(written) < 3
    assert notes["error"] == [] and notes["info"][-1].startswith("Export cancelled")
    assert widget.run_button.enabled


def test_no_format_chosen_is_refused_without_a_worker(widget, notes):
    for box in widget.formats.values():
        box.value = False
    assert widget.run() is None
    assert notes["error"] == ["choose at least one export format"]
    assert not widget.running


def test_broken_model_fails_with_its_reason(widget, qtbot, notes):
    widget.model.value = "broken"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert len(notes["error"]) == 1 and "broken.keras" in notes["error"][0]


def test_a_package_of_your_own_model_needs_its_authors_and_a_valid_license(widget, notes):
    widget.model.value = "tiny-gray"
    assert not widget.authors.native.isHidden() and not widget.license.native.isHidden()
    assert widget.run() is None and not widget.running
    assert "is your model: type its authors" in notes["error"][-1]
    widget.authors.value = "Ada Lovelace"
    widget.license.value = "my own terms"
    assert widget.run() is None
    assert "not an SPDX license id" in notes["error"][-1]
    widget.formats["bioimageio"].value = False  # other formats name nobody
    assert widget.authors.native.isHidden() and widget.license.native.isHidden()
    assert widget.job() is not None and widget.job().info is None
    widget.formats["bioimageio"].value = True
    widget.model.value = "gray"  # bundled: the project's authors by default
    widget.authors.value = ""
    widget.license.value = "MIT"
    assert widget.job().info.authors == ("napari-bfcnn developers",)


def test_closing_the_dock_mid_export_stops_it_and_waits_for_its_thread(
    widget, qtbot, monkeypatch
):
    """An export still running once the dock's Qt objects are gone would emit into them."""
    import threading
    import time

    began, left = threading.Event(), threading.Event()

    def slow_export(job):  # one long format that checks the stop flag, as the real job does
        began.set()
        try:
            while not job.stop.is_set():
                time.sleep(0.2)
                yield 0, "writing…"
            return ew.ExportOutcome(cancelled=True)
        finally:
            left.set()

    monkeypatch.setattr(ew, "export_job", slow_export)
    widget.model.value = "tiny-gray"
    widget.authors.value = "Ada Lovelace"
    assert widget.run() is not None
    qtbot.waitUntil(began.is_set, timeout=TIMEOUT_MS)
    widget._disconnect()  # the dock closed
    assert left.is_set()  # the job had returned when close returned
    assert widget._ended and all(e.is_set() for e in widget._ended)  # and its thread had ended
