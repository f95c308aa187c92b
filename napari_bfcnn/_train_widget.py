"""The Fine-tune dock widget: train a model on your own layers, watch it learn, keep the best.

Why it looks like this: every choice the engine needs (data kind, layers, base
model, noise, optimisation) is a plain magicgui value widget, so tests set them
directly; the run itself is :func:`src_models.finetune.finetune` in a background
thread (``_train_jobs``), drawn live in a matplotlib plot and as a preview of the
current model on the held-out validation crop. Saved models appear in every
model list at once (``_model_events``); your own models can be renamed or deleted
here, and files that cannot be loaded are listed with the reason.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import threading
from typing import Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QSize
from qtpy.QtWidgets import QScrollArea

from ._dock import on_close
from ._layers import LayerError, current_index, read_layer
from ._model_choices import decorate_model_combo, model_label
from ._model_events import connect_all, disconnect_all, notify_models_changed, refresh_events
from ._planes import ResultTooLarge, check_free_memory
from ._train_jobs import TrainJob, TrainOutcome, make_train_worker
from ._train_plot import TrainingPlot

__all__ = ["TrainWidget", "layer_source"]

log = logging.getLogger(__name__)

NEW_PREFIX = "new:"
TAG = "bfcnn_train"  # metadata key of the layers this widget adds
PROGRESS_STEPS = 1000
MODE_CHOICES = [
    ("clean + synthetic noise", "clean"),
    ("noisy / clean pairs", "pairs"),
    ("noisy only (self-supervised)", "noisy"),
]

LR_CHOICES = [
    ("auto", 0.0),
    ("1e-3", 1e-3),
    ("5e-4", 5e-4),
    ("2e-4", 2e-4),
    ("1e-4", 1e-4),
    ("5e-5", 5e-5),
]
SCORE_LABELS = {
    "clean": "validation PSNR (dB)",
    "pairs": "validation PSNR vs clean (dB)",
    "noisy": "self-supervised score (dB)",
}

# one training per napari process: two would share (and halve) the same CPU or GPU
_TRAINING = threading.Lock()
_ACTIVE: list[TrainJob] = []  # the job holding _TRAINING, seen by every Fine-tune widget


def _noisy_methods() -> tuple[list[tuple[str, str]], str]:
    """The engine's self-supervised methods as (label, value) choices, and its default one."""
    from dataclasses import fields

    from src_models.finetune import NOISY_METHODS, FinetuneSettings

    default = next(f.default for f in fields(FinetuneSettings) if f.name == "noisy_method")
    return [(label, key) for key, label in NOISY_METHODS.items()], default


class _VerticalScrollArea(QScrollArea):
    """Scrolls vertically only and is always as wide as its content needs (nothing clipped)."""

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is not None:
            bar = self.verticalScrollBar().sizeHint().width()
            hint.setWidth(inner.minimumSizeHint().width() + bar + 2 * self.frameWidth())
        return hint


def _confirm(parent, question: str) -> bool:
    """Ask yes/no in a dialog (tests replace this function)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(parent, "napari-bfcnn", question)
    return answer == QMessageBox.StandardButton.Yes


def layer_source(layer):
    """An Image layer as the engine's :class:`~src_models.finetune_data.SourceImage`.

    RGB(A) layers keep their colours together; every other axis of a non-RGB layer
    is looped over, so each slice (and each channel) of a stack is a sample.

    Raises
    ------
    LayerError
        Not a usable Image layer (the message names it and why).
    """
    from src_models.finetune_data import SourceImage

    inp = read_layer(layer, None)
    return SourceImage(name=layer.name, data=layer.data, channel_axis=None, rgb=inp.rgb)


def _reason(info) -> str:
    """Why a model cannot be loaded, with its folder left out (the tooltip has the full text)."""
    return str(info.error).replace(str(info.path), info.path.name)


def _user_label(info) -> str:
    """A user model's list text: its name, or why it cannot be loaded."""
    if info.error is None:
        return info.name
    return f"{info.name}  (unavailable: {_short(_reason(info), 40)})"


def _fmt_eta(seconds: float) -> str:
    return str(_dt.timedelta(seconds=int(max(0.0, seconds))))


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


class TrainWidget(Container):
    """Dock widget that fine-tunes (or trains) a denoiser on image layers.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Injected by napari.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self._worker = None
        self._job: TrainJob | None = None
        self._closed = False  # the dock was closed: a running job still reports, to no widget
        self._job_layers: list[Any] = []  # the layers of the run's images, in their order
        self._models: dict[str, Any] = {}
        self._user_infos: dict[str, Any] = {}

        # data
        self.mode = ComboBox(label="training data", choices=MODE_CHOICES, value="clean")
        choices, default = _noisy_methods()
        self.noisy_method = ComboBox(label="method", choices=choices, value=default)
        self.layers = Select(label="clean layers", choices=self._image_choices)
        self.noisy = ComboBox(label="noisy layer", choices=self._image_choices)
        self.clean = ComboBox(label="clean layer", choices=self._image_choices)
        self.base = ComboBox(label="start from", choices=self._base_choices)
        self.model_name = LineEdit(label="new model name", value="my-model")
        # synthetic noise (clean layers only)
        sigma = dict(min=0, max=255, step=1)
        self.sigma_min = FloatSpinBox(label="noise \u03c3 min (/255)", value=0, **sigma)
        self.sigma_max = FloatSpinBox(label="noise \u03c3 max (/255)", value=50, **sigma)
        self.poisson = FloatSpinBox(label="Poisson-Gaussian share", min=0, max=1, step=0.05)
        self.photons_min = FloatSpinBox(label="photons at peak, min", min=0.1, max=1e6, value=2)
        self.photons_max = FloatSpinBox(label="photons at peak, max", min=0.1, max=1e6, value=200)
        self.read_noise = FloatSpinBox(label="read noise max (/255)", min=0, max=255, value=10)
        self.preview_button = PushButton(text="Preview corrupted patch")
        # optimisation
        self.patch = SpinBox(label="patch (0: auto)", min=0, max=1024, step=8, value=0)
        self.batch = SpinBox(label="batch (0: auto)", min=0, max=512, value=0)
        self.steps = SpinBox(label="steps (0: auto)", min=0, max=1_000_000, step=100, value=0)
        self.learning_rate = ComboBox(label="learning rate", choices=LR_CHOICES, value=0.0)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        # run
        self.run_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.resume_button = PushButton(text="Resume")
        self.progress = ProgressBar(label="progress", min=0, max=PROGRESS_STEPS, value=0)
        self.status = Label(label="status", value="")
        self.plot = TrainingPlot()
        # your models
        self.user_models = ComboBox(label="your models", choices=self._user_model_choices)
        self.rename_to = LineEdit(label="rename to", value="")
        self.rename_button = PushButton(text="Rename")
        self.delete_button = PushButton(text="Delete")
        self.model_status = Label(label="", value="")
        self._noise_rows: list = []

        self._noise_widgets = [
            self.sigma_min,
            self.sigma_max,
            self.poisson,
            self.photons_min,
            self.photons_max,
            self.read_noise,
            self.preview_button,
        ]
        self._body = self._build_body()
        self._decorate()
        self._on_mode()
        self._on_user_model()

        self.mode.changed.connect(self._on_mode)
        self.preview_button.changed.connect(self.preview_corruption)
        self.run_button.changed.connect(lambda *_: self.run())
        self.resume_button.changed.connect(lambda *_: self.run(resume=True))
        self.stop_button.changed.connect(self.stop)
        self.user_models.changed.connect(self._on_user_model)
        self.rename_button.changed.connect(lambda *_: self.rename_model())
        self.delete_button.changed.connect(lambda *_: self.delete_model())
        events = refresh_events(napari_viewer, self.reset_choices, self.reset_choices)
        self._connections = connect_all(events)
        on_close(self.native, self._disconnect)

    # ------------------------------------------------------------------ layout

    def _build_body(self) -> Container:
        """All controls in one column inside a vertical scroll area (the widget is tall)."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QComboBox, QFrame

        for combo in (
            self.mode,
            self.noisy,
            self.clean,
            self.base,
            self.learning_rate,
            self.user_models,
        ):  # long model names must not widen the dock
            combo.native.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.native.setMinimumContentsLength(16)

        def row(*widgets, label: str = "") -> Container:
            box = Container(widgets=list(widgets), layout="horizontal", labels=False, label=label)
            box.margins = (0, 0, 0, 0)
            return box

        def header(text: str) -> Label:
            label = Label(value=text)
            label.native.setStyleSheet("font-weight: bold; padding-top: 4px;")
            return label

        self.sigma_min.label = self.sigma_max.label = ""
        self.photons_min.label = self.photons_max.label = ""
        self.patch.label = self.batch.label = ""
        run_box = Container(
            labels=False,
            widgets=[
                row(self.run_button, self.stop_button, self.resume_button),
                self.progress,
                self.status,
            ],
        )
        run_box.margins = (0, 0, 0, 0)
        run_box.native.layout().addWidget(self.plot.native)
        noise_header = header("Synthetic noise")
        sigma_row = row(self.sigma_min, self.sigma_max, label="\u03c3 min, max (/255)")
        photons_row = row(self.photons_min, self.photons_max, label="photons min, max")
        self._noise_rows = [noise_header, sigma_row, photons_row]
        body = Container(
            labels=True,
            widgets=[
                header("Data"),
                self.mode,
                self.noisy_method,
                self.layers,
                self.noisy,
                self.clean,
                self.base,
                self.model_name,
                noise_header,
                sigma_row,
                self.poisson,
                photons_row,
                self.read_noise,
                self.preview_button,
                header("Training"),
                row(self.patch, self.batch, label="patch, batch (0: auto)"),
                self.steps,
                self.learning_rate,
                self.seed,
            ],
        )
        tail = Container(
            labels=True,
            widgets=[
                header("Your models"),
                self.user_models,
                row(self.rename_to, self.rename_button, self.delete_button, label="rename to"),
                self.model_status,
            ],
        )
        column = Container(labels=False, widgets=[body, run_box, tail])
        column.native.layout().addStretch(1)
        scroll = _VerticalScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(column.native)
        self.native.layout().addWidget(scroll)
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        return column

    def _decorate(self) -> None:
        from qtpy.QtCore import Qt

        decorate_model_combo(self.base, self._models)
        self.layers.native.setMaximumHeight(64)
        self.rename_to.native.setPlaceholderText("new name")
        for label in (self.status, self.model_status):
            label.native.setWordWrap(True)
            label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.mode.tooltip = (
            "clean layers: noise is added on the fly as set below; pairs: a noisy layer and its "
            "registered clean version; noisy only: self-supervised, no clean image needed (the "
            "noise must be independent pixel to pixel)"
        )
        self.noisy_method.tooltip = (
            "Recorrupted-to-Recorrupted: trains at full resolution with camera (Poisson-Gaussian) "
            "noise estimated from each layer; Neighbor2Neighbor: needs no noise model, trains on "
            "half-resolution sub-images"
        )
        self.base.tooltip = "model to fine-tune, or a new model trained from scratch"
        self.sigma_min.tooltip = self.sigma_max.tooltip = (
            "Gaussian noise sigma drawn per patch, on the 0-255 scale of each plane's peak"
        )
        self.poisson.tooltip = (
            "share of patches with Poisson-Gaussian (photon + read) noise instead of Gaussian"
        )
        self.photons_min.tooltip = self.photons_max.tooltip = (
            "Poisson-Gaussian noise: photons at the plane's peak (lower is noisier)"
        )
        self.learning_rate.tooltip = "auto: 2e-4 to fine-tune a model, 1e-3 for a new one"
        self.patch.tooltip = "side of the training patches in pixels; auto: 64 or less"
        self.steps.tooltip = "training steps; auto: about 30 passes over the data, 100-2000"
        self.resume_button.tooltip = "continue the stopped run of the model named above"
        self.user_models.tooltip = "models you trained (bundled models cannot be changed)"

    def reset_choices(self, *_args) -> None:
        """Refresh layer and model lists (layers or models changed)."""
        super().reset_choices()
        self._body.reset_choices()
        self._decorate()
        self._on_user_model()

    def _disconnect(self, *_args) -> None:
        self._closed = True
        disconnect_all(self._connections)
        if self._job is not None:
            self._job.stop.set()

    # ------------------------------------------------------------------ choices

    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [
            (lyr.name, lyr)
            for lyr in self._viewer.layers
            if isinstance(lyr, Image) and TAG not in lyr.metadata
        ]

    def _base_choices(self, _widget=None) -> list[tuple[str, str]]:
        from src_models.finetune import PRESETS
        from src_models.registry import list_models

        try:
            infos = list_models()
        except Exception as err:  # a broken model folder must not break the widget
            log.warning("listing models failed: %s", err)
            infos = []
        self._models = {m.name: m for m in infos}
        usable = sorted(infos, key=lambda m: (m.error is not None, m.name != "gray"))
        return [(model_label(m), m.name) for m in usable] + [
            (f"new {name} model", NEW_PREFIX + name) for name in PRESETS
        ]

    def _user_model_choices(self, _widget=None) -> list[tuple[str, str]]:
        from src_models.registry import list_models

        try:
            infos = [m for m in list_models() if not m.builtin]
        except Exception as err:
            log.warning("listing models failed: %s", err)
            infos = []
        self._user_infos = {m.name: m for m in infos}
        return [(_user_label(m), m.name) for m in infos]

    def _on_mode(self, *_args) -> None:
        mode = self.mode.value
        self.layers.visible = mode != "pairs"
        self.layers.label = "clean layers" if mode == "clean" else "noisy layers"
        self.noisy.visible = self.clean.visible = mode == "pairs"
        self.noisy_method.visible = mode == "noisy"
        for w in [*self._noise_widgets, *self._noise_rows]:
            w.visible = mode == "clean"

    def _on_user_model(self, *_args) -> None:
        info = self._user_infos.get(self.user_models.value)
        has = info is not None
        self.rename_button.enabled = self.delete_button.enabled = has
        if info is None:
            self.model_status.value = "no models of your own yet" if not self._user_infos else ""
        elif info.error is not None:
            self.model_status.value = f"cannot be loaded: {_reason(info)}"
        else:
            self.model_status.value = _short(f"{info.path}: {info.description}", 160)
        self.user_models.tooltip = info.error if has and info.error else None

    # ------------------------------------------------------------------ settings

    def corruption(self):
        """The synthetic-noise settings as a :class:`~src_models.config.CorruptionConfig`."""
        from pydantic import ValidationError

        from src_models.config import ConfigError, CorruptionConfig, format_validation_error

        try:
            return CorruptionConfig(
                sigma_range=(float(self.sigma_min.value), float(self.sigma_max.value)),
                poisson_gaussian_prob=float(self.poisson.value),
                photons_range=(float(self.photons_min.value), float(self.photons_max.value)),
                read_noise_range=(0.0, float(self.read_noise.value)),
            )
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "noise settings")) from None

    def settings(self):
        """The widget's choices as :class:`~src_models.finetune.FinetuneSettings` (checked)."""
        from src_models.finetune import FinetuneSettings

        base = self.base.value or ""
        info = self._models.get(base)
        if info is not None and info.error is not None:
            raise ValueError(f"Model '{base}' cannot be used: {info.error}")
        fresh = base.startswith(NEW_PREFIX)
        settings = FinetuneSettings(
            name=str(self.model_name.value).strip(),
            mode=self.mode.value,
            base=None if fresh else base,
            architecture=base[len(NEW_PREFIX) :] if fresh else "small",
            corruption=self.corruption(),
            patch_size=int(self.patch.value) or None,
            batch_size=int(self.batch.value) or None,
            steps=int(self.steps.value) or None,
            learning_rate=float(self.learning_rate.value) or None,
            noisy_method=str(self.noisy_method.value),
            seed=int(self.seed.value),
        )
        settings.check()
        return settings

    def _data(self) -> tuple[list, list | None]:
        if self.mode.value == "pairs":
            noisy, clean = self.noisy.value, self.clean.value
            if noisy is None or clean is None:
                raise ValueError("Choose a noisy layer and its clean partner.")
            if noisy is clean:
                raise ValueError("The noisy and the clean layer must be different layers.")
            self._job_layers = [noisy]
            return [layer_source(noisy)], [layer_source(clean)]
        layers = list(self.layers.value or [])
        if not layers:
            raise ValueError("Select at least one image layer to train on.")
        self._job_layers = layers  # the region's source index points here, whatever the names
        return [layer_source(lyr) for lyr in layers], None

    # ------------------------------------------------------------------ run / stop

    @property
    def running(self) -> bool:
        """Whether this widget's training is in progress."""
        return self._worker is not None

    def run(self, resume: bool = False):
        """Start training in the background; returns the worker, or None if refused.

        A second training (in this or another Fine-tune widget) is refused with a message.
        """
        if self._worker is not None or not _TRAINING.acquire(blocking=False):
            show_warning("A training is already running: wait for it to finish or press Stop.")
            return None
        try:
            job = self._make_job(resume)
        except (LayerError, ValueError, OSError, ResultTooLarge) as err:  # ConfigError: ValueError
            _TRAINING.release()
            self.status.value = "not started"
            show_error(str(err))
            return None
        if job is None:
            _TRAINING.release()
            return None
        try:
            worker = make_train_worker(job)
            worker.yielded.connect(self._on_report)
            worker.returned.connect(self._on_returned)
            worker.errored.connect(self._on_errored)
            worker.finished.connect(self._on_finished)
            self._worker, self._job = worker, job
            _ACTIVE[:] = [job]
            self._start_ui(job)
            worker.start()
        except Exception as err:  # never leave the lock held: every later Train would be refused
            self._on_finished()
            self.status.value = "not started"
            show_error(f"could not start the training: {err}")
            return None
        return worker

    def _make_job(self, resume: bool) -> TrainJob | None:
        from src_models.config import ConfigError
        from src_models.finetune import _target_path, run_dir
        from src_models.registry import user_model_dir
        from src_models.train import CHECKPOINT

        settings = self.settings()
        images, targets = self._data()
        # refused here, before the last run's plot and preview layers are cleared
        _target_path(settings.name, allow_existing=True)  # a bundled model's name
        if resume and not (run_dir(settings.name) / CHECKPOINT).is_file():
            raise ConfigError(f"nothing to resume: '{settings.name}' has no stopped run")
        # every plane becomes float32 samples and their training split before training starts;
        # R2R adds its noise maps, pairs a joined noisy + clean copy; a colour base repeats a
        # gray plane into its channels
        copies = 2
        if settings.mode == "pairs" or (
            settings.mode == "noisy" and settings.noisy_method == "r2r"
        ):
            copies = 3
        base = self._models.get(settings.base or "")
        repeat = base.channels if base is not None and base.channels > 1 else 1
        pixels = 0
        for src in [*images, *(targets or [])]:
            rgb = bool(getattr(src, "rgb", False))
            pixels += math.prod(src.data.shape) * (1 if rgb else repeat)
        check_free_memory(
            4 * copies * pixels,
            "the training samples",
            "train on fewer planes (e.g. a substack as its own layer) or a crop",
        )
        overwrite = False
        if not resume and (user_model_dir() / f"{settings.name}.keras").exists():
            question = f"A model named '{settings.name}' exists. Replace it with the new one?"
            if not _confirm(self.native, question):
                return None
            overwrite = True
        return TrainJob(settings, images, targets, resume=resume, overwrite=overwrite)

    def stop(self, *_args) -> None:
        """Ask the run to stop; it saves the best model so far within about a step."""
        if self._job is not None:
            self._job.stop.set()
            self.status.value = "stopping (saving the best model so far)..."

    def _start_ui(self, job: TrainJob) -> None:
        self.run_button.enabled = self.resume_button.enabled = False
        self.stop_button.enabled = True
        self.progress.value = 0
        what = "resuming" if job.resume else "preparing"
        self.status.value = f"{what} '{job.settings.name}'..."
        self.plot.clear(SCORE_LABELS[job.settings.mode])
        if not job.resume:
            for layer in [lyr for lyr in self._viewer.layers if TAG in lyr.metadata]:
                if layer.metadata[TAG] in ("region", "input", "preview"):
                    self._viewer.layers.remove(layer)

    def _on_report(self, item) -> None:
        from src_models.finetune import ValidationPreview
        from src_models.train import TrainProgress

        if self._closed:  # its widgets are gone; the run stops at its next step
            return
        if isinstance(item, TrainProgress):
            self.progress.value = int(round(PROGRESS_STEPS * item.step / max(1, item.total)))
            self.status.value = (
                f"step {item.step}/{item.total} \u00b7 loss {item.loss:.2e} \u00b7 "
                f"ETA {_fmt_eta(item.eta_s)}"
            )
            self.plot.add_loss(item.step, item.loss)
            if item.val_psnr:
                self.plot.add_scores(item.step, item.val_psnr)
            self.plot.redraw()
        elif isinstance(item, ValidationPreview):
            self.plot.add_scores(item.step, item.scores)
            self.plot.redraw()
            try:
                self._show_preview(item)
            except Exception as err:  # a preview must never stop a training
                log.warning("validation preview failed: %s", err)

    def _on_returned(self, outcome: TrainOutcome) -> None:
        """Report the result; after the dock was closed, by notification only."""
        live = not self._closed
        if outcome.error is not None:
            if live:
                self.status.value = f"failed: {_short(outcome.error, 200)}"
            show_error(outcome.error)
            return
        if outcome.stopped_early:
            if live:
                self.status.value = "stopped before training began: nothing saved"
            show_info("Training stopped before it began: nothing saved.")
            return
        r = outcome.result
        if not r.saved:
            every = r.recipe.training.val_every
            if live:
                self.status.value = (
                    f"stopped at step {r.steps_done}, before the first validation (every "
                    f"{every} steps): nothing saved; Resume continues"
                )
            show_info(f"Training of '{r.name}' stopped before any validation: nothing saved.")
            return
        key = next(iter(r.val_psnr_best), None)
        score = ""
        if key is not None:
            score = (
                f"; validation {key}: {r.val_psnr_initial[key]:.2f} \u2192 "
                f"{r.val_psnr_best[key]:.2f} dB"
            )
        how = f"stopped at step {r.steps_done}" if r.stopped else f"{r.steps_done} steps"
        if r.steps_done and not r.card.steps_done:
            how += "; kept the starting model: no validation beat it"
        elif "WiSE-FT" in r.card.notes.get("kept", ""):
            how += "; saved the average of the base and the fine-tuned weights"
        notify_models_changed()  # the other docks list it, whether or not this one is open
        if live:
            self.status.value = f"saved '{r.name}' ({how}){score}"
            self.progress.value = PROGRESS_STEPS if not r.stopped else self.progress.value
            self.user_models.value = r.name
        show_info(f"Model '{r.name}' saved ({how}){score}. It is now in the model lists.")

    def _on_errored(self, err) -> None:  # train_job catches everything; this is a last resort
        if not self._closed:
            self.status.value = f"failed: {err}"
        show_error(f"training failed: {err}")

    def _on_finished(self, *_args) -> None:
        if any(job is self._job for job in _ACTIVE):  # identity: jobs hold arrays
            _ACTIVE.clear()
        self._worker = None
        self._job = None
        with contextlib.suppress(RuntimeError):
            _TRAINING.release()
        if self._closed:
            return
        self.run_button.enabled = self.resume_button.enabled = True
        self.stop_button.enabled = False

    # ------------------------------------------------------------------ layers we add

    def _tagged(self, kind: str):
        for layer in self._viewer.layers:
            if layer.metadata.get(TAG) == kind:
                return layer
        return None

    def _source_layer(self, region):
        """The layer the held-out region lies in, followed through renames; None if removed."""
        layers = self._job_layers
        if region.source < len(layers) and layers[region.source] in self._viewer.layers:
            return layers[region.source]
        return None

    @staticmethod
    def _placed(layer, data: np.ndarray, plane: tuple[int, ...], y0: int, x0: int) -> dict:
        """Data expanded to the layer's dimensions and the transform that puts it in place."""
        scale = np.asarray(layer.scale, dtype=float)
        translate = np.asarray(layer.translate, dtype=float)
        lead = len(plane)
        arr = data.reshape((1,) * lead + data.shape)
        offset = np.array([*plane, y0, x0], dtype=float) * scale[: lead + 2]
        # a gray base trains an RGB layer channel by channel: its previews are one channel
        rgb = bool(layer.rgb) and data.ndim == 3 and data.shape[-1] in (3, 4)
        kwargs = dict(scale=scale, translate=translate + offset, rgb=rgb)
        if not rgb:
            kwargs["contrast_limits"] = tuple(float(c) for c in layer.contrast_limits)
        return dict(data=arr, **kwargs)

    def _put_image(self, kind: str, name: str, placed: dict) -> Any:
        layer = self._tagged(kind)
        if layer is not None and layer.data.shape == placed["data"].shape:
            layer.data = placed["data"]
            layer.name = name  # another source or slice: name, place and contrast follow it
            for attr in ("scale", "translate", "contrast_limits"):
                if attr in placed:
                    setattr(layer, attr, placed[attr])
            return layer
        if layer is not None:
            self._viewer.layers.remove(layer)
        return self._viewer.add_image(placed.pop("data"), name=name, metadata={TAG: kind}, **placed)

    def _show_preview(self, pv) -> None:
        """Rectangle on the held-out region, its input, and the current model's output."""
        layer = self._source_layer(pv.region)
        if layer is None:
            return
        r = pv.region
        if self._tagged("region") is None:
            corners = [(r.y0, r.x0), (r.y0, r.x1), (r.y1, r.x1), (r.y1, r.x0)]
            verts = np.array([[*r.plane, y - 0.5, x - 0.5] for y, x in corners], dtype=float)
            self._viewer.add_shapes(
                [verts],
                shape_type="rectangle",
                edge_color="yellow",
                face_color="transparent",
                edge_width=2,
                name=f"{r.name} [validation region]",
                scale=layer.scale,
                translate=layer.translate,
                metadata={TAG: "region"},
            )
        if self._tagged("input") is None:
            self._put_image(
                "input",
                f"{r.name} [validation input]",
                self._placed(layer, pv.noisy, r.plane, r.y0, r.x0),
            )
        self._put_image(
            "preview",
            f"{r.name} [validation: current model]",
            self._placed(layer, pv.denoised, r.plane, r.y0, r.x0),
        )

    def preview_corruption(self, *_args):
        """Add (or replace) a layer showing a centre patch corrupted with the noise settings."""
        from src_models.finetune_data import corrupted_preview

        layers = list(self.layers.value or [])
        if self.mode.value != "clean" or not layers:
            show_warning("Select a clean layer (data: clean images + synthetic noise) to preview.")
            return None
        layer = layers[0]
        try:
            source = layer_source(layer)
            plane = tuple(current_index(layer, self._viewer)[:-2])
            patch = corrupted_preview(
                source,
                self.corruption(),
                patch_size=max(64, int(self.patch.value) * 2 or 128),
                plane=plane,
                seed=int(self.seed.value),  # black level: "camera", as the training uses
            )
        except (LayerError, ValueError) as err:
            show_error(str(err))
            return None
        placed = self._placed(layer, patch.noisy, patch.plane, patch.y0, patch.x0)
        out = self._put_image("corrupted", f"{layer.name} [corrupted patch]", placed)
        sigma = patch.info.get("sigma", [0.0])
        self.status.value = (
            f"preview: {patch.info.get('noise', 'noise')} noise, \u03c3 \u2248 "
            f"{float(np.mean(sigma)):.1f}/255 of the plane's peak"
        )
        return out

    # ------------------------------------------------------------------ your models

    @staticmethod
    def _busy_with(name: str) -> str:
        """Why the running training needs this model name ('' if it does not)."""
        for job in _ACTIVE:
            if job.settings.name == name:
                return "is being trained"
            if job.settings.base == name:
                return "is the base of the running training"
        return ""

    def rename_model(self) -> bool:
        """Rename the chosen user model to the 'rename to' text; True on success."""
        from src_models.finetune import rename_run
        from src_models.registry import rename_user_model

        old, new = self.user_models.value, str(self.rename_to.value).strip()
        if not old or not new:
            show_warning("Choose one of your models and type its new name.")
            return False
        busy = self._busy_with(old) or self._busy_with(new)
        if busy:
            which = old if self._busy_with(old) else new
            show_warning(f"'{which}' {busy}; rename it when the training has ended.")
            return False
        try:
            rename_user_model(old, new)
            rename_run(old, new)
        except (ValueError, OSError) as err:
            show_error(str(err))
            return False
        notify_models_changed()
        self.user_models.value = new
        self.rename_to.value = ""
        self.model_status.value = f"renamed '{old}' to '{new}'"
        return True

    def delete_model(self) -> bool:
        """Delete the chosen user model (after confirmation); True on success."""
        from src_models.finetune import delete_run
        from src_models.registry import delete_user_model

        name = self.user_models.value
        if not name:
            return False
        busy = self._busy_with(name)
        if busy:
            show_warning(f"'{name}' {busy}; stop the training first.")
            return False
        if not _confirm(self.native, f"Delete your model '{name}'? This cannot be undone."):
            return False
        try:
            delete_user_model(name)
            delete_run(name)
        except (ValueError, OSError) as err:
            show_error(str(err))
            return False
        notify_models_changed()
        self.model_status.value = f"deleted '{name}'"
        return True
