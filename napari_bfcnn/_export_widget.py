"""The Export dock widget: a model to SavedModel, TFLite and/or a bioimage.io package.

Why a widget: users who fine-tuned a model in napari should be able to hand it
to ilastik, deepImageJ, a phone app or TF Serving without the shell. The work is
the engine's :func:`src_models.export.iter_export` (each file reloaded and
checked) in a napari thread worker; the result or a one-line error is a
notification.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from napari.utils.notifications import show_error, show_info

from ._dock import on_close, track_end, wait_ended
from ._model_choices import decorate_model_combo, model_choices
from ._model_events import model_events
from ._workers import AUTO

__all__ = ["ExportJob", "ExportOutcome", "ExportWidget", "export_job"]

log = logging.getLogger(__name__)

FORMAT_LABELS = {
    "saved_model": "TensorFlow SavedModel",
    "tflite": "TFLite (builtin ops)",
    "bioimageio": "bioimage.io package",
}


@dataclass(frozen=True)
class ExportJob:
    """One export: which model, which formats, where."""

    model: str
    formats: tuple[str, ...]
    folder: Path
    overwrite: bool = False
    info: Any = None  # src_models.export_bioimageio.PackageInfo of a bioimage.io package
    stop: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass
class ExportOutcome:
    """The written files (format, path, max error), or a one-line message."""

    results: list[Any] = field(default_factory=list)  # src_models.export.ExportResult
    error: str | None = None
    cancelled: bool = False  # stopped by Cancel between two formats


def export_job(job: ExportJob) -> Generator[tuple[int, str], None, ExportOutcome]:
    """Export format by format, yielding (formats done, what is being done); never raises.

    Why its own stop flag (``job.stop``), checked between formats, and not
    ``worker.quit()``: the export always returns (an error raised by the format being
    written when Cancel was pressed is still reported), the exporter's temporary folder
    is removed at once, and no file is left half-written.

    Returns
    -------
    ExportOutcome
        ``error`` holds a one-line message if anything failed; the formats
        finished before the failure are in ``results``.
    """
    outcome = ExportOutcome()
    try:
        from src_models.export import iter_export

        yield 0, f"exporting {job.model}: {', '.join(job.formats)}"
        results = iter_export(
            job.model, job.formats, job.folder, overwrite=job.overwrite, info=job.info
        )
        try:
            for result in results:
                outcome.results.append(result)
                yield len(outcome.results), f"{result.format} written to {result.path.name}"
                if job.stop.is_set() and len(outcome.results) < len(job.formats):
                    outcome.cancelled = True
                    break
        finally:
            results.close()  # its staging folder goes now, not when collected
    except (ValueError, OSError, RuntimeError) as err:  # ExportError, ModelFileError included
        outcome.error = str(err)
    except Exception as err:  # a bug: keep the traceback in the log, show one line
        log.exception("export failed")
        outcome.error = f"export failed: {type(err).__name__}: {err}"
    return outcome


class ExportWidget(Container):
    """Dock widget that exports a model for use outside napari.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Injected by napari (unused: exports need no layers).
    """

    def __init__(self, napari_viewer=None):
        super().__init__()
        self._viewer = napari_viewer
        self._worker = None
        self._job: ExportJob | None = None
        self._closed = False  # the dock was closed: a running export reports by notification
        self._ended: list = []  # thread_ended events of the exports started
        self._models: dict[str, Any] = {}
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.formats = {
            f: CheckBox(text=label, value=True) for f, label in FORMAT_LABELS.items()
        }
        self.folder = FileEdit(label="folder", mode="d", value=str(Path.home()))
        self.overwrite = CheckBox(text="replace existing files", value=False)
        # the package names who made the model and its terms: yours, for a model you trained
        self.authors = LineEdit(label="authors", value="")
        self.authors.tooltip = (
            "comma-separated names for the bioimage.io package; empty: 'napari-bfcnn "
            "developers' for bundled models (required for your own)"
        )
        self.authors.native.setPlaceholderText("e.g. Ada Lovelace, Grace Hopper")
        self.license = LineEdit(label="license", value="MIT")
        self.license.tooltip = "an SPDX license id, e.g. MIT, CC-BY-4.0, BSD-3-Clause"
        self.run_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.tooltip = "stop after the format being written (no half-written file)"
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                            labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.extend(
            [self.model, *self.formats.values(), self.authors, self.license, self.folder,
             self.overwrite, buttons, self.progress, self.status]
        )
        decorate_model_combo(self.model, self._models)
        self.formats["bioimageio"].changed.connect(self._show_package_fields)
        self._show_package_fields()
        self.run_button.changed.connect(lambda *_: self.run())
        self.cancel_button.changed.connect(self.cancel)
        model_events.changed.connect(self.reset_choices)
        on_close(self.native, self._disconnect)

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        self._models, choices = model_choices()
        return [(label, value) for label, value in choices if value != AUTO]

    def reset_choices(self, *_args) -> None:
        """Refresh the model list (models were added, renamed or deleted)."""
        super().reset_choices()
        decorate_model_combo(self.model, self._models)

    def _disconnect(self, *_args) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            model_events.changed.disconnect(self.reset_choices)
        if self._job is not None:
            self._job.stop.set()
        wait_ended(self._ended)  # it stops after the format being written; then its thread ends

    @property
    def running(self) -> bool:
        """Whether an export is in progress."""
        return self._worker is not None

    def job(self) -> ExportJob | None:
        """The export the controls describe, or None (with a notification) if incomplete."""
        formats = tuple(f for f, box in self.formats.items() if box.value)
        if not self.model.value:
            show_error("no model to export: none is installed")
            return None
        if not formats:
            show_error("choose at least one export format")
            return None
        info = None
        if "bioimageio" in formats:
            info = self._package_info()
            if info is None:
                return None
        return ExportJob(
            self.model.value, formats, Path(self.folder.value), self.overwrite.value, info
        )

    def _show_package_fields(self, *_args) -> None:
        visible = bool(self.formats["bioimageio"].value)
        self.authors.visible = self.license.visible = visible

    def _package_info(self):
        """Authors and license of the package, checked; None (after a notification) if unusable."""
        from src_models.export_bioimageio import PackageInfo

        names = tuple(n.strip() for n in str(self.authors.value).split(",") if n.strip())
        info = self._models.get(self.model.value)
        usable = info is None or info.error is None  # a broken file: its own error comes first
        if not names and usable and not (info is not None and info.builtin):
            show_error(
                f"'{self.model.value}' is your model: type its authors (comma-separated) "
                "for the bioimage.io package"
            )
            return None
        package = PackageInfo(license=str(self.license.value).strip() or "MIT")
        if names:
            package = PackageInfo(authors=names, license=package.license)
        try:
            package.check()
        except ValueError as err:
            show_error(str(err))
            return None
        return package

    def run(self):
        """Start the export in a worker thread; returns the worker, or None if refused."""
        if self._worker is not None:
            show_info("an export is already running")
            return None
        job = self.job()
        if job is None:
            return None
        from napari.qt.threading import create_worker

        worker = create_worker(export_job, job, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker, self._job = worker, job
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.max, self.progress.value = len(job.formats), 0
        self.status.value = "exporting…"
        track_end(self._ended, worker)
        worker.start()
        return worker

    def cancel(self, *_args) -> None:
        """Stop the export after the format being written."""
        if self._job is not None:
            self.status.value = "cancelling after the current format…"
            self.cancel_button.enabled = False
            self._job.stop.set()

    def _on_yielded(self, item: tuple[int, str]) -> None:
        if self._closed:
            return
        done, message = item
        self.progress.value = done
        if self.cancel_button.enabled:  # keep "cancelling…" once asked
            self.status.value = message


    def _on_returned(self, outcome: ExportOutcome) -> None:
        done = ", ".join(f"{r.format} ({r.path.name})" for r in outcome.results)
        live = not self._closed
        if outcome.error is not None:
            if live:
                self.status.value = "failed" + (f" after {done}" if done else "")
            show_error(outcome.error)
            return
        if outcome.cancelled:
            if live:
                self.status.value = "cancelled" + (f" after {done}" if done else "")
            show_info(f"Export cancelled{' after ' + done if done else ''}.")
            return
        folder = outcome.results[0].path.parent if outcome.results else ""
        if live:
            self.status.value = f"written to {folder}: {done}"
        worst = max((r.max_error for r in outcome.results), default=0.0)
        show_info(f"Exported {done} to {folder}; each matches the model to {worst:.1e}.")

    def _on_finished(self, *_args) -> None:
        self._worker = self._job = None
        if self._closed:
            return
        self.run_button.enabled = True
        self.cancel_button.enabled = False
