"""The Denoise dock widget: pick a layer and a model, run in the background, cancel.

Why a magicgui Container: every control is a plain value widget that tests can
set, and napari refreshes its choices when layers change. All heavy work runs
in a thread worker (``_workers``); all layer rules live in ``_layers``; the
camera-noise rules (microscopy proposal, readout, range warning) in ``_camera_noise``.

Model proposal: a non-RGB integer layer of 16 bits or more (camera data) gets the
``microscopy`` model, with its reason shown, when that model is installed, unless
the user picked a model for that layer; a model picked for a layer comes back
with it.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning

from src_models.registry import is_camera_data

from ._camera_noise import (
    CAMERA_SIDE,
    MICROSCOPY_CORRELATED_MODEL,
    MICROSCOPY_MODEL,
    CameraNoise,
    centre_crop_index,
    composite_hint,
    correlation_warning,
    estimate_camera_noise,
    finite_range,
    microscopy_reason,
    range_warning,
    read_noise_warning,
    readout_text,
    trained_on_correlated_noise,
    trained_photons_range,
    trained_read_noise_range,
    whole_plane,
)
from ._dock import track_end, wait_ended
from ._image_model_widget import ImageModelWidget
from ._layers import (
    PROVENANCE_KEY,
    LayerError,
    LayerInput,
    add_or_replace_output,
    channel_axis_choices,
    current_index,
    follow_renames,
    guess_channel_axis,
    layer_key,
    preview_fixed,
    read_layer,
)
from ._model_choices import decorate_model_combo, model_tooltip
from ._workers import AUTO, DenoiseJob, DenoiseOutcome, make_worker, resolve_model

__all__ = ["BLACK_AUTO", "BLACK_NONE", "BLACK_VALUE", "NO_AXIS", "DenoiseWidget"]

log = logging.getLogger(__name__)

NO_AXIS = "none"  # combo value for "no channel axis" (magicgui combos treat None as unset)
ESTIMATE_SIDE = 256  # noise is estimated on a centre crop at most this big (fast on any image)
PROGRESS_STEPS = 1000
# noise below this (8-bit scale, as the model sees it) reads as a nearly clean image: there a
# blind model also smooths the image's own fine texture and grain (README, sigma 1 under
# Bundled models: Set12 references with their own sigma above 2 lost 3.3 dB at sigma 1)
NEARLY_CLEAN = 3.0
BLACK_NONE, BLACK_AUTO, BLACK_VALUE = "none", "auto", "value"  # black-level combo values


class DenoiseWidget(ImageModelWidget):
    """Dock widget that denoises an Image layer with a bias-free CNN.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Injected by napari.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._worker = None
        self._pbar = None
        self._axis_memory: dict[int, int | None] = {}  # id(layer) -> channel axis the user chose
        self._updating = False
        self._estimate_timer = None
        self._model_memory: dict[int, str] = {}  # id(layer) -> model the user chose for it
        self._proposed = False  # the model combo holds a proposal, not the user's choice
        self._before_proposal: str = AUTO  # what the combo held before it, restored after
        # id(layer) -> (mode, value) the user chose: a black level is a property of the data,
        # so a value set for one camera must not be subtracted from the next layer
        self._black_memory: dict[int, tuple[str, float]] = {}
        self._export_widget = None  # the Export dock opened from here
        self._setting = False  # the widget itself is changing model / black level
        self._camera: CameraNoise | None = None
        self._camera_data = False  # the current layer holds camera data (12/16-bit, not RGB)
        self._camera_pending = False  # an estimate for the current slice is running
        self._sigma_text = "-"  # the σ line before any note on correlated noise
        # (data id, crop, channel axis, black level) -> (sigma, peak, weak reference to the data)
        self._estimates: dict[tuple, tuple[float, float, Any]] = {}
        self._camera_tag = 0  # newest camera-noise request; older results are dropped
        self._camera_worker = None  # the one camera-noise estimate running, if any
        self._camera_next: tuple | None = None  # (tag, request) waiting for the running one
        self._ended: list = []  # thread_ended events of the workers started
        self._closed = False

        self.model_info = Label(label="", value="")
        self.model_reason = Label(label="", value="")
        self.model_reason.native.setWordWrap(True)  # a hint must not widen the dock
        self.noise_level = Label(label="noise level", value="-")
        self.camera_noise = Label(label="camera noise", value="-")
        self.range_warning = Label(label="", value="")
        self.black_level = ComboBox(
            label="black level",
            choices=[
                ("none (0, or min if negative)", BLACK_NONE),
                ("auto (from the data)", BLACK_AUTO),
                ("value", BLACK_VALUE),
            ],
            value=BLACK_NONE,
        )
        self.black_value = FloatSpinBox(
            label="black level value", value=0.0, min=-1e12, max=1e12, step=1.0, enabled=False
        )
        self.channel_axis = ComboBox(label="channel axis", choices=self._axis_choices)
        self.preview = CheckBox(text="current slice only (preview)", value=False)
        self.add_noise = CheckBox(text="also add removed noise", value=False)
        self.tile = SpinBox(label="tile (0 = auto)", min=0, max=8192, step=64, value=0)
        self.tta = CheckBox(text="average 8 flips/rotations (TTA, 8\u00d7 slower)", value=False)
        self.strength = FloatSlider(label="strength", min=0.0, max=1.0, step=0.05, value=1.0)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.export_button = PushButton(text="Export model…")
        self.progress = ProgressBar(label="progress", min=0, max=PROGRESS_STEPS, value=0)
        self.status = Label(label="", value="")
        buttons = Container(
            widgets=[self.run_button, self.cancel_button, self.export_button],
            layout="horizontal",
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        black = Container(
            widgets=[self.black_level, self.black_value],
            layout="horizontal",
            labels=False,
            label="black level",
        )
        black.margins = (0, 0, 0, 0)
        self.extend(
            [
                self.image,
                self.model,
                self.model_info,
                self.model_reason,
                self.noise_level,
                self.camera_noise,
                self.range_warning,
                black,
                self.channel_axis,
                self.preview,
                self.add_noise,
                self.tta,
                self.strength,
                self.tile,
                buttons,
                self.progress,
                self.status,
            ]
        )
        self._decorate()
        self.model.value = AUTO
        self._style()

        self.image.changed.connect(self._on_layer_changed)
        self.model.changed.connect(self._on_model_changed)
        self.black_level.changed.connect(self._on_black_level_changed)
        self.black_value.changed.connect(self._on_black_level_changed)
        self.channel_axis.changed.connect(self._on_channel_axis_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.export_button.changed.connect(self.open_export)
        self._listen(
            self._on_layers_changed,
            self.reset_choices,  # a model was trained, renamed, deleted
            (napari_viewer.dims.events.current_step, self._schedule_estimate),
        )
        self._follow_active()
        self._on_layer_changed()

    def _disconnect(self, *_args) -> None:
        """Stop listening to the viewer and stop the workers once the dock widget is gone."""
        super()._disconnect()
        self._closed = True
        if self._estimate_timer is not None:
            try:
                self._estimate_timer.stop()
            except RuntimeError:  # Qt already deleted it (interpreter exit): nothing to stop
                pass
        if self._worker is not None:
            self._worker.quit()
        self._camera_next = None
        # the denoising stops after its tile, an estimate takes well under a second: let them
        # end before the widget's Qt objects go (they would emit into deleted objects)
        wait_ended(self._ended)

    # ------------------------------------------------------------------ choices

    def _axis_choices(self, _widget=None) -> list[tuple[str, int | None]]:
        layer = self.image.value if hasattr(self, "image") else None
        axes = channel_axis_choices(layer)
        shape = layer.data.shape if layer is not None else ()
        return [("none", NO_AXIS)] + [
            (f"{ax}  (size {shape[ax]})", ax) for ax in axes if ax is not None
        ]

    def _decorate(self) -> None:
        """Tooltips on model items and controls; models with errors disabled."""
        decorate_model_combo(self.model, self._models)
        self.tile.tooltip = (
            "tile core size in pixels; auto: the whole plane up to 1024 px per side, more "
            "(up to 2080) for wide-margin models such as gray and microscopy"
        )
        self.tta.tooltip = (
            "test-time augmentation: denoise the 8 flips and transposes of each tile and "
            "average them (still bias-free); in the benchmark about +0.1 to +0.25 dB PSNR at "
            "σ 15-50, up to +0.7 dB at σ 1-5, for 8 times the work. The result gets its own "
            "layer, next to a plain run's."
        )
        self.strength.tooltip = (
            "1: the model's output; less blends the input back in (input + strength \u00b7 "
            "(denoised \u2212 input)), keeping part of the noise and fine grain: for nearly "
            "clean images, whose own texture a blind denoiser may take for noise, or a less "
            "smooth look. Still bias-free. A result with another strength gets its own layer."
        )
        self.channel_axis.tooltip = (
            "axis of a multichannel (non-RGB) layer holding channels; each channel is "
            "denoised on its own with a gray model"
        )
        self.noise_level.tooltip = (
            "estimated Gaussian noise sigma of the current slice, in the layer's units "
            "(in brackets: as the model sees it, to compare with its trained range; the "
            "engine maps each plane to 0-1, from its black level, or its minimum if that is "
            "negative, to its largest value, so noise reaching beyond the data's nominal range "
            "makes this smaller than sigma on that range)"
        )
        self.camera_noise.tooltip = (
            "Poisson-Gaussian fit of the current slice (centre crop): variance = "
            "gain \u00b7 (value \u2212 black) + read \u03c3\u00b2, in the layer's units; "
            "photons = (value \u2212 black) / gain"
        )
        self.black_level.tooltip = (
            "camera offset subtracted before denoising and added back after (bias-free "
            "nets are not offset-equivariant): none = 0 (or the minimum of negative "
            "images); auto = estimated per plane (0.5th percentile after a 1-px blur); "
            "value = the number on the right"
        )

    def _style(self) -> None:
        """Left-aligned info lines; controls packed at the top of the dock."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QSizePolicy

        labels = (
            self.model_info,
            self.model_reason,
            self.noise_level,
            self.camera_noise,
            self.range_warning,
            self.status,
        )
        for label in labels:
            label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        layout = self.native.layout()
        if layout is not None:
            layout.addStretch(1)

    def reset_choices(self, *_args) -> None:
        """Refresh layer and model lists (napari calls it when layers change)."""
        self._setting = True  # a model vanishing from the list is not the user's choice
        try:
            super().reset_choices()
        finally:
            self._setting = False
        self._decorate()
        self._update_model_info()

    # ------------------------------------------------------------------ layer state

    @property
    def chosen_channel_axis(self) -> int | None:
        """The channel axis picked in the combo (None: no channel axis)."""
        value = self.channel_axis.value
        return None if value in (None, NO_AXIS) else int(value)

    @property
    def chosen_offset(self) -> float | str | None:
        """The black level for the engine: a number, ``"auto"`` or None."""
        mode = self.black_level.value
        if mode == BLACK_AUTO:
            return "auto"
        if mode == BLACK_VALUE:
            return float(self.black_value.value)
        return None

    def open_export(self, *_args):
        """Dock the Export widget with this widget's model chosen (saves finding it in the menu)."""
        from ._export_widget import ExportWidget

        widget = self._export_widget
        # one Export dock, however often it is asked for; napari unparents a closed dock's widget
        if widget is None or widget.native.parent() is None:
            widget = ExportWidget(self._viewer)
            self._viewer.window.add_dock_widget(widget, name="Export model")
            self._export_widget = widget
        else:
            widget.native.parent().show()
            widget.native.parent().raise_()
        name = self._resolved_name() if self.model.value == AUTO else self.model.value
        if name is not None:  # "auto": the model auto picks for this layer
            with contextlib.suppress(ValueError):
                widget.model.value = name
        return widget

    def _on_layers_changed(self, *_args) -> None:
        follow_renames(self._viewer.layers)
        alive = {layer_key(lyr) for lyr in self._viewer.layers}
        self._axis_memory = {k: v for k, v in self._axis_memory.items() if k in alive}
        self._model_memory = {k: v for k, v in self._model_memory.items() if k in alive}
        self._black_memory = {k: v for k, v in self._black_memory.items() if k in alive}
        self.reset_choices()

    def _follows(self, active, name: str, layer) -> bool:
        """The selected layer itself, unless it is one of our outputs."""
        return PROVENANCE_KEY not in getattr(active, "metadata", {}) and layer == active

    def _current_input(self) -> LayerInput | None:
        layer = self.image.value
        if layer is None:
            return None
        try:
            return read_layer(layer, self.chosen_channel_axis)
        except LayerError:
            return None

    def _on_layer_changed(self, *_args) -> None:
        """New layer: channel-axis choices and guess; keep model and options as they are."""
        layer = self.image.value
        self._updating = True
        try:
            choices = channel_axis_choices(layer)
            self.channel_axis.reset_choices()
            if layer is not None and len(choices) > 1:
                guess = guess_channel_axis(layer.data.shape, getattr(layer, "axis_labels", None))
                axis = self._axis_memory.get(layer_key(layer), guess)
                self.channel_axis.value = NO_AXIS if axis is None else axis
            else:
                self.channel_axis.value = NO_AXIS
            self.channel_axis.enabled = len(choices) > 1
        finally:
            self._updating = False
        self._propose_model()
        self._refresh_layer_state()

    def _on_channel_axis_changed(self, *_args) -> None:
        if self._updating:
            return
        layer = self.image.value
        if layer is not None:
            self._axis_memory[layer_key(layer)] = self.chosen_channel_axis
        self._propose_model()
        self._refresh_layer_state()

    def _refresh_layer_state(self) -> None:
        inp = self._current_input()
        self.preview.enabled = bool(inp is not None and inp.is_stack)
        self._update_model_info()  # also updates the noise estimate
        self._start_camera_estimate()

    # ------------------------------------------------------------------ model proposal

    def _microscopy_usable(self, name: str = MICROSCOPY_MODEL) -> bool:
        info = self._models.get(name)
        return info is not None and info.error is None and name in self.model.choices

    def _propose_model(self, noise: CameraNoise | None = None) -> None:
        """The layer's own model choice, else the microscopy proposal, else leave the combo.

        ``noise``: the layer's camera-noise estimate once it is in; correlated noise
        turns the proposal into the model trained for it.
        """
        layer = self.image.value
        remembered = self._model_memory.get(layer_key(layer)) if layer is not None else None
        correlated = (
            noise is not None
            and noise.estimate.correlated
            and self._microscopy_usable(MICROSCOPY_CORRELATED_MODEL)
        )
        axis = self.chosen_channel_axis
        reason = (
            microscopy_reason(layer, axis, noise if correlated else None)
            if layer is not None
            else ""
        )
        camera = bool(reason)  # the black level follows the data, whichever model denoises
        self._camera_data = camera
        if remembered is not None and remembered in self.model.choices:
            value, reason = remembered, ""
        elif reason and (correlated or self._microscopy_usable()):
            value = MICROSCOPY_CORRELATED_MODEL if correlated else MICROSCOPY_MODEL
            if not self._proposed:
                self._before_proposal = self.model.value
        else:
            value, reason = (self._before_proposal if self._proposed else None), ""
        self._setting = True
        try:
            if value is not None and value in self.model.choices:
                self.model.value = value
            black = self._black_memory.get(layer_key(layer)) if layer is not None else None
            if black is None:  # camera data: their offset must go (fine-tuning removes it too)
                black = self._default_black()
            self.black_level.value, self.black_value.value = black
            self.black_value.enabled = black[0] == BLACK_VALUE
        finally:
            self._setting = False
        self._proposed = bool(reason)
        hint = "" if reason or layer is None else composite_hint(layer)
        self.model_reason.value = reason or hint
        if reason:
            self.model_reason.tooltip = (
                "trained on Poisson-Gaussian (camera) noise"
                + (", also correlated between neighbouring pixels" if correlated else "")
                + "; the black level is set to auto. Pick another model to override it "
                "for this layer."
            )
        else:
            self.model_reason.tooltip = (
                "A hint only: the model stays as chosen. If the channels are fluorophores, "
                "the microscopy model, trained on camera noise, denoises each on its own "
                "(set the black level to auto)."
                if hint
                else ""
            )
        self.model_reason.visible = bool(reason or hint)

    def _on_model_changed(self, *_args) -> None:
        if not self._setting:  # the user's choice (or a script's): remembered for this layer
            layer = self.image.value
            if layer is not None:
                self._model_memory[layer_key(layer)] = self.model.value
            if self._proposed:
                self._proposed = False
                self.model_reason.value = ""
                self.model_reason.visible = False
        # a user's pick (the widget's own proposals set the black level themselves, then
        # start one camera estimate: a second one here would run beside it)
        black_changed = not self._setting and self._apply_default_black()
        self._update_model_info()
        if black_changed:
            self._start_camera_estimate()

    def _default_black(self) -> tuple[str, float]:
        """The black level of a layer the user set none for: the model's own (a fine-tuned
        model records what its training removed), else auto for camera data, else none."""
        from src_models.registry import finetuned_black_level

        info = self._models.get(self.model.value)
        recorded = finetuned_black_level(info) if info is not None else "camera"
        value = float(self.black_value.value)
        if recorded == "camera":
            return (BLACK_AUTO if self._camera_data else BLACK_NONE), value
        if recorded == "auto":
            return BLACK_AUTO, value
        if recorded is None:
            return BLACK_NONE, value
        return BLACK_VALUE, float(recorded)

    def _apply_default_black(self) -> bool:
        """Set :meth:`_default_black` unless the user chose a level for this layer; changed?"""
        layer = self.image.value
        if layer is None or layer_key(layer) in self._black_memory:
            return False
        black = self._default_black()
        if black == (self.black_level.value, float(self.black_value.value)):
            return False
        setting, self._setting = self._setting, True  # may run inside another such block
        try:
            self.black_level.value, self.black_value.value = black
            self.black_value.enabled = black[0] == BLACK_VALUE
        finally:
            self._setting = setting
        return True

    def _on_black_level_changed(self, *_args) -> None:
        self.black_value.enabled = self.black_level.value == BLACK_VALUE
        if not self._setting:
            layer = self.image.value
            if layer is not None:  # the user's choice for this layer, from now on
                self._black_memory[layer_key(layer)] = (
                    self.black_level.value,
                    float(self.black_value.value),
                )
            self._update_estimate()
            self._start_camera_estimate()

    def _update_model_info(self, *_args) -> None:
        name = self.model.value
        inp = self._current_input()
        try:
            resolved = resolve_model(name, inp) if (name == AUTO and inp) else name
        except ValueError as err:
            self.model_info.value = "no usable model"
            self.model_info.tooltip = str(err)
            return
        if name == AUTO and inp is None:
            self.model_info.value = "auto: colour for RGB, microscopy for camera data, else gray"
            self.model_info.tooltip = ""
            return
        info = self._models.get(resolved)
        if info is None:
            self.model_info.value = f"uses {resolved}"
            self.model_info.tooltip = ""
        elif info.error is not None:
            self.model_info.value = f"{info.name}: unavailable (see tooltip)"
            self.model_info.tooltip = info.error
        else:
            lo, hi = info.sigma_range
            prefix = f"\u2192 {info.name}" if name == AUTO else info.name
            trained = f"\u03c3 {lo:g}\u2013{hi:g} /255"
            photons = trained_photons_range(info.path)
            if photons is not None:  # shot noise, most of what a microscopy model learned
                trained += f", {photons[0]:g}\u2013{photons[1]:g} photons"
            self.model_info.value = f"{prefix}  (trained {trained})"
            self.model_info.tooltip = model_tooltip(info)
        self._update_estimate()
        self._show_camera_noise()

    # ------------------------------------------------------------------ noise estimate

    def _schedule_estimate(self, *_args) -> None:
        """Re-estimate shortly after the slider stops (one estimate per burst of steps)."""
        from qtpy.QtCore import QTimer

        if self._estimate_timer is None:
            self._estimate_timer = QTimer()
            self._estimate_timer.setSingleShot(True)
            self._estimate_timer.setInterval(150)
            self._estimate_timer.timeout.connect(self._update_estimate)
            self._estimate_timer.timeout.connect(self._start_camera_estimate)
        self._estimate_timer.start()

    def _crop_index(self, side: int) -> tuple[LayerInput, tuple, int | None] | None:
        """The current input, a centre-crop index of its current slice, the crop's channel axis."""
        from ._planes import plan_planes

        inp = self._current_input()
        if inp is None:
            return None
        fixed = preview_fixed(inp, self.image.value, self._viewer)
        plan = plan_planes(
            inp.data.shape,
            inp.channel_axis,
            joint=inp.channel_axis is not None,
            alpha=inp.alpha,
            fixed=fixed,
        )
        index = centre_crop_index(inp.data.shape, plan.planes[0][0], inp.channel_axis, side)
        return inp, index, plan.plane_channel_axis

    def estimate_noise(self) -> float | None:
        """Noise sigma of the current slice in layer units (centre crop, so always fast)."""
        from src_models import estimate_sigma

        request = self._crop_index(ESTIMATE_SIDE)
        if request is None:
            return None
        inp, index, crop_axis = request
        offset = self.chosen_offset
        # layer events, model and black-level changes ask again for the same crop: on a
        # lazy (dask, zarr) layer every read computes whole chunks in the GUI thread
        key = (id(inp.data), str(index), crop_axis, str(offset))
        cached = self._estimates.get(key)
        if cached is not None and cached[2]() is inp.data:  # the same array, not a reused id
            sigma, self._crop_scale, _ = cached
            return sigma
        crop = np.asarray(inp.data[index])
        sigma = float(estimate_sigma(crop, channel_axis=crop_axis))
        # the engine scales by the whole plane's peak
        self._crop_scale = self._peak(crop, offset, crop_axis, whole_plane(inp.data, index))
        with contextlib.suppress(TypeError):  # data that cannot be weakly referenced: no cache
            self._estimates[key] = (sigma, self._crop_scale, weakref.ref(inp.data))
            while len(self._estimates) > 16:
                self._estimates.pop(next(iter(self._estimates)))
        return sigma

    @staticmethod
    def _peak(
        crop: np.ndarray,
        offset: float | str | None = None,
        channel_axis: int | None = None,
        plane: np.ndarray | None = None,
    ) -> float:
        """The engine's per-plane scale: largest magnitude after subtracting the black level.

        From the whole ``plane``'s range when given (data in memory), else the crop's: a
        bright cell off the centre of a big frame sets the scale the model sees.
        """
        source = crop if plane is None else plane
        lo, hi = finite_range(source)
        if lo is None:
            return 0.0
        if offset == BLACK_AUTO:
            from src_models.noise_model import black_level

            # channels share one level here: a readout, the engine takes each channel's
            off = black_level(crop if channel_axis is None else np.moveaxis(crop, channel_axis, -1))
        else:
            off = min(lo, 0.0) if offset is None else float(offset)
        return max(hi - off, off - lo)

    def _update_estimate(self, *_args) -> None:
        try:
            sigma = self.estimate_noise()
        except Exception as err:  # the label must never raise into Qt
            log.debug("noise estimate failed: %s", err)
            sigma = None
        if sigma is None or not np.isfinite(sigma):
            self._sigma_text = "-"
            self._show_noise_level()
            return
        text = f"\u03c3 \u2248 {sigma:.3g}"
        peak = getattr(self, "_crop_scale", 0.0)
        if peak > 0:
            rel = 255.0 * sigma / peak
            text += f"  (= {rel:.0f}/255 for the model)"
            info = self._models.get(self._resolved_name() or "")
            gaussian_only = info is not None and trained_photons_range(info.path) is None
            # a shot-noise model's range is in photons: the camera readout judges that one
            if gaussian_only and info.error is None and rel > info.sigma_range[1]:
                text += ", above its range"
            elif gaussian_only and info.error is None and rel < NEARLY_CLEAN:
                text += "\nnearly clean: fine texture may be smoothed too (strength < 1 keeps it)"
        self._sigma_text = text
        self._show_noise_level()

    def _show_noise_level(self) -> None:
        """The σ line, flagged once the camera estimate finds the noise correlated.

        Why: the σ estimate reads the finest wavelet scale, where noise correlated between
        neighbours has lost much of its energy, so it can read several times too low.
        """
        text = self._sigma_text
        camera = None if self._camera_pending else self._camera
        if text != "-" and camera is not None and camera.estimate.correlated:
            text += "\n(understated: the noise is correlated, see below)"
        self.noise_level.value = text

    # ------------------------------------------------------------------ camera noise

    def _camera_request(self) -> tuple[Any, tuple, float | None] | None:
        """Data, crop index and known black level for a camera-noise estimate, or None.

        Non-RGB slices only, one channel: the Poisson-Gaussian model is per channel, so a
        multichannel layer is estimated on the channel the viewer shows (its slider's).
        """
        request = self._crop_index(CAMERA_SIDE)
        if request is None:
            return None
        inp, index, crop_axis = request
        if inp.rgb:
            return None
        if inp.channel_axis is not None:
            channel = current_index(self.image.value, self._viewer)[inp.channel_axis]
            index = tuple(
                channel if ax == inp.channel_axis else ix for ax, ix in enumerate(index)
            )
        if not is_camera_data(getattr(inp.data, "dtype", np.float64)):
            # camera counts only (12/16-bit): 8-bit and float layers are photos or processed
            # data, where a shot-noise readout means little and its worker is only a cost
            return None
        offset = self.chosen_offset
        return inp.data, index, (offset if isinstance(offset, float) else None)

    def estimate_camera_noise(self) -> CameraNoise | None:
        """Gain, read noise and black level of the current slice (centre crop), synchronously."""
        request = self._camera_request()
        if request is None:
            return None
        return _estimate_crop(*request)

    def _start_camera_estimate(self, *_args) -> None:
        """Estimate the camera noise in a worker; only the newest request updates the label.

        Why one worker at a time: a layer change, a model proposal and a slice move each
        ask for one; while one runs, the newest request waits and runs after it (older
        ones are dropped), so stale estimates never pile up in the thread pool.
        """
        self._camera_tag += 1
        request = self._camera_request()
        self._camera = None
        self._camera_pending = request is not None
        self._show_camera_noise()
        self._camera_next = (self._camera_tag, request) if request is not None else None
        if self._camera_worker is None:
            self._run_camera_estimate()

    def _run_camera_estimate(self) -> None:
        from napari.qt.threading import create_worker

        if self._closed or self._camera_next is None:
            return
        tag, (data, index, offset) = self._camera_next
        self._camera_next = None
        worker = create_worker(_estimate_crop, data, index, offset, _start_thread=False)
        track_end(self._ended, worker)
        self._camera_worker = worker
        worker.returned.connect(lambda noise, t=tag: self._on_camera_noise(t, noise))
        worker.finished.connect(self._on_camera_worker_finished)
        worker.start()

    def _on_camera_worker_finished(self, *_args) -> None:
        self._camera_worker = None
        self._run_camera_estimate()  # the newest request that waited, if any

    def _on_camera_noise(self, tag: int, noise: CameraNoise | None) -> None:
        if self._closed or tag != self._camera_tag:
            return
        self._camera = noise
        self._camera_pending = False
        if self._proposed:  # the proposal may turn to the model for correlated noise
            self._propose_model(noise)
        self._show_camera_noise()

    @property
    def camera_estimating(self) -> bool:
        """Whether the camera-noise estimate of the current slice is still running."""
        return self._camera_pending

    def _show_camera_noise(self) -> None:
        """Readout of the last estimate, and a warning if it is outside the model's training."""
        pending = "estimating\u2026"
        self.camera_noise.value = pending if self._camera_pending else readout_text(self._camera)
        self._show_noise_level()
        name = self._resolved_name()
        info = self._models.get(name or "")
        path = info.path if info is not None and not info.error else None
        warnings = (
            range_warning(self._camera, name or "", trained_photons_range(path)),
            read_noise_warning(self._camera, name or "", trained_read_noise_range(path)),
            correlation_warning(self._camera, name or "", trained_on_correlated_noise(path)),
        )
        warning = "\n".join(w for w in warnings if w)
        self.range_warning.value = warning
        self.range_warning.visible = bool(warning)

    def _resolved_name(self) -> str | None:
        inp = self._current_input()
        try:
            return resolve_model(self.model.value, inp) if inp is not None else None
        except ValueError:
            return None

    # ------------------------------------------------------------------ run / cancel

    @property
    def running(self) -> bool:
        """Whether a denoising run is in progress."""
        return self._worker is not None

    def run(self, *_args):
        """Denoise the chosen layer in the background; returns the worker (or None)."""
        layer = self.image.value
        if layer is None:
            show_error("No Image layer to denoise: open or add an image first.")
            return None
        return self.denoise_layer(layer)

    def denoise_layer(self, layer, channel_axis: Any = "widget"):
        """Check ``layer`` and start denoising it; errors become notifications.

        Parameters
        ----------
        layer : napari.layers.Layer
            Any layer; anything but a usable Image layer gives an error notification.
        channel_axis : int or None, optional
            Overrides the widget's channel-axis choice.

        Returns
        -------
        GeneratorWorker or None
            The started worker, or None if nothing was started.
        """
        if self.running:
            show_warning("Denoising is already running: wait or press Cancel.")
            return None
        if channel_axis == "widget":
            channel_axis = self.chosen_channel_axis if layer == self.image.value else None
        try:
            inp = read_layer(layer, channel_axis)
        except LayerError as err:
            show_error(str(err))
            return None
        name = self.model.value
        info = self._models.get(name)
        if info is not None and info.error is not None:
            show_error(f"Model '{name}' cannot be used: {info.error}")
            return None
        fixed = preview_fixed(inp, layer, self._viewer) if self.preview.value else {}
        job = DenoiseJob(
            inp=inp,
            model=name,
            tile=int(self.tile.value) or None,
            fixed=fixed,
            with_noise=bool(self.add_noise.value),
            offset=self.chosen_offset,
            tta=8 if self.tta.value else 1,
            strength=float(self.strength.value),
        )
        worker = make_worker(job)
        track_end(self._ended, worker)
        worker.yielded.connect(self._on_progress)
        source = layer.data  # what this run reads; a replacement makes its result stale
        worker.returned.connect(
            lambda outcome, lyr=layer, src=source: self._on_returned(lyr, outcome, src)
        )
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._start_progress(layer.name)
        worker.start()
        return worker

    def cancel(self, *_args) -> None:
        """Stop the running job after the current tile."""
        if self._worker is not None:
            self.status.value = "cancelling..."
            self._worker.quit()

    def _start_progress(self, name: str) -> None:
        from napari.utils import progress

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = f"denoising {name}..."
        self._pbar = progress(total=PROGRESS_STEPS, desc=f"Denoising {name}")

    def _on_progress(self, fraction: float) -> None:
        steps = int(round(min(max(fraction, 0.0), 1.0) * PROGRESS_STEPS))
        self.progress.value = steps
        if self._pbar is not None and steps > self._pbar.n:
            self._pbar.update(steps - self._pbar.n)

    def _on_returned(self, layer, outcome: DenoiseOutcome, source: Any = None) -> None:
        if outcome.error is not None:
            self.status.value = "failed"
            show_error(outcome.error)
            return
        result = outcome.result
        if layer not in self._viewer.layers:
            self.status.value = "source layer was removed; result discarded"
            return
        if source is not None and layer.data is not source:
            self.status.value = "source data were replaced during the run; result discarded"
            show_warning(
                f"The data of '{layer.name}' were replaced while it was being denoised: "
                "the result, of the old data, was discarded. Run again."
            )
            return
        add_or_replace_output(
            self._viewer, layer, result.denoised, outcome.model, fixed=outcome.fixed
        )
        if result.noise is not None:
            add_or_replace_output(
                self._viewer, layer, result.noise, outcome.model, kind="noise", fixed=outcome.fixed
            )
        if result.skipped:
            show_warning(
                f"{len(result.skipped)} plane(s) of '{layer.name}' had no finite pixel and "
                "were passed through unchanged"
            )
        what = "current slice" if outcome.fixed else "all planes"
        self.status.value = f"done in {outcome.seconds:.1f} s ({what})"

    def _on_aborted(self, *_args) -> None:
        self.status.value = "cancelled"
        show_info("Denoising cancelled.")

    def _on_finished(self, *_args) -> None:
        self._worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None


def _estimate_crop(data: Any, index: tuple, offset: float | None) -> CameraNoise | None:
    """Worker body: read one crop (lazy arrays too) and estimate its camera noise.

    Why it catches everything: the result only feeds a label; a lazy array whose read
    fails (a moved zarr, a broken dask graph) shows "-" instead of a traceback dialog,
    and the label does not stay at "estimating...".
    """
    try:
        crop = np.asarray(data[index])
    except Exception as err:  # noqa: BLE001 - any reader's error
        log.warning("reading the crop for the camera-noise estimate failed: %s", err)
        return None
    plane = whole_plane(data, index)  # in memory: the whole plane's peak, the engine's scale
    return estimate_camera_noise(crop, offset, None if plane is None else finite_range(plane)[1])
