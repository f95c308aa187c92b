"""The Interpret dock widget: the adaptive linear filter behind each denoised pixel.

Why: a bias-free denoiser computes ``D(y) = J(y) y`` exactly, so every output
pixel is a weighted average of input pixels (Mohan et al., ICLR 2020). Click
pixels (a Points layer) and see their weights over the image, enlarged in the
dock with their numbers; compute whole-image maps of how the filters behave;
or the spectrum of the full Jacobian on a small crop.

All model work runs in napari thread workers (``_interpret_jobs``); layer
placement and provenance live in ``_interpret_layers``. Filters are cached per
(source, model, pixel), so moving one point recomputes one filter.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning

from ._dock import track_end, wait_ended
from ._image_model_widget import ImageModelWidget
from ._interpret_jobs import (
    JobOutcome,
    compose_overlay,
    crop_box,
    filter_image,
    filter_summary,
    filters_job,
    largest_side,
    maps_job,
    overlay_limit,
    spectrum_job,
)
from ._interpret_layers import (
    FILTER,
    MAP_COLORMAPS,
    POINTS,
    VECTORS,
    filter_colormap_on_white,
    find_points,
    make_points_layer,
    map_kwargs,
    nonchannel_shape,
    overlay_kwargs,
    point_pixels,
    put_layer,
    vectors_kwargs,
)
from ._layers import (
    PROVENANCE_KEY,
    LayerError,
    LayerInput,
    current_index,
    find_output,
    find_outputs,
    follow_renames,
    layer_key,
    read_layer,
)
from ._model_choices import decorate_model_combo
from ._model_events import Connection, connect_all, disconnect_all
from ._planes import ResultTooLarge, check_free_memory
from ._workers import AUTO, resolve_model

__all__ = ["InterpretWidget"]

THROTTLE_MS = 150  # point edits are gathered for this long before filters are computed
PROGRESS_STEPS = 1000
CACHE_SIZE = 256  # pixel filters kept
ZOOM_RADIUS = (4, 40)  # the enlarged filter shows 3 widths around the pixel, within these
OWN_KINDS = (FILTER, VECTORS, *MAP_COLORMAPS)
HINT = "Press 'Pick pixels', then click on the image (drag points to move them)."


def _theme_colours(viewer) -> tuple[str, str]:
    """Background and text colours of the viewer's theme (for the plots)."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:  # an unknown theme: napari's dark default
        return "#262930", "#f0f1f2"


class _Plot:
    """A small matplotlib figure in the dock, drawn in the viewer's theme colours."""

    def __init__(self, viewer, height: int):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.bg, self.fg = _theme_colours(viewer)
        self.figure = Figure(figsize=(3.2, height / 100), dpi=100, facecolor=self.bg)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(height)
        self.canvas.setMaximumHeight(height)

    def clear(self, message: str = "") -> None:
        self.figure.clear()
        if message:
            self.figure.text(0.5, 0.5, message, ha="center", va="center", color=self.fg, wrap=True)
        self.canvas.draw_idle()

    def axes(self, rect=(0.17, 0.2, 0.78, 0.68)):
        """A fresh axes in theme colours."""
        self.figure.clear()
        ax = self.figure.add_axes(rect)
        ax.set_facecolor(self.bg)
        ax.tick_params(colors=self.fg, labelsize=7)
        for spine in ax.spines.values():
            spine.set_color(self.fg)
        return ax

    def title(self, ax, text: str) -> None:
        ax.set_title(text, color=self.fg, fontsize=8)


class InterpretWidget(ImageModelWidget):
    """Dock widget showing the adaptive filters of a bias-free denoiser.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        Injected by napari.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        from qtpy.QtCore import QTimer

        self._source = None  # the Image layer the points belong to
        self._points = None  # its filter-points layer
        self._links: list[Connection] = []  # event connections to source and points
        self._cache: OrderedDict[tuple, Any] = OrderedDict()  # (source key, model, pixel) -> filter
        self._wanted: list[tuple[int, tuple]] = []  # (point index, pixel) last asked for
        self._wanted_for: tuple | None = None  # (source key, model, shape) of that request
        self._shown: tuple | None = None  # request whose filters are all on screen
        self._latest: int | None = None  # index of the point edited last
        self._drawn: tuple | None = None  # what the filter plot shows
        self._left_out = 0  # points outside the image or over the limit
        self._reported = ""  # last automatic error shown (not repeated)
        self._generation = 0
        self._cache_epoch = 0  # bumped when the cache is cleared: late filters are dropped
        self._filter_worker = None
        self._pending = False
        self._job_worker = None
        self._ended: list = []  # thread_ended events of the workers started
        self._job_cancel: threading.Event | None = None
        self._job_fraction = 0.0
        self._pbar = None
        self.latest_filter = None  # the PixelFilter shown enlarged
        self.spectrum = None  # the last Spectrum computed

        self.pick_button = PushButton(text="Pick pixels")
        self.clear_button = PushButton(text="Clear points")
        self.readout = Label(label="", value=HINT)
        self.probes = SpinBox(label="map probes", min=1, max=1024, value=16)
        self.crop = SpinBox(label="spectrum crop (px)", min=4, max=64, value=32)
        self.vectors = SpinBox(label="singular vectors", min=1, max=64, value=8)
        self.maps_button = PushButton(text="Compute maps")
        self.spectrum_button = PushButton(text="Jacobian spectrum")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=PROGRESS_STEPS, value=0)
        self.status = Label(label="", value="")
        self.extend(
            [
                self.image,
                self.model,
                self._row(self.pick_button, self.clear_button),
                self.readout,
                self.probes,
                self.crop,
                self.vectors,
                self._row(self.maps_button, self.spectrum_button, self.cancel_button),
                self.progress,
                self.status,
            ]
        )
        self.filter_plot = _Plot(napari_viewer, 230)
        self.spectrum_plot = _Plot(napari_viewer, 190)
        self._insert_after(self.readout, self.filter_plot.canvas, before=True)
        self._insert_after(self.status, self.spectrum_plot.canvas)
        self.filter_plot.clear("no pixel picked yet")
        self.spectrum_plot.clear("Jacobian spectrum: add a point,\nthen press 'Jacobian spectrum'")
        self._decorate()
        self.model.value = AUTO

        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(THROTTLE_MS)
        self._timer.timeout.connect(self.update_filters)
        self._poll = QTimer()
        self._poll.setInterval(100)
        self._poll.timeout.connect(self._poll_progress)

        self.image.changed.connect(self._on_source_changed)
        self.model.changed.connect(self._on_model_changed)
        self.pick_button.changed.connect(self.pick_pixels)
        self.clear_button.changed.connect(self.clear_points)
        self.maps_button.changed.connect(self.compute_maps)
        self.spectrum_button.changed.connect(self.compute_spectrum)
        self.cancel_button.changed.connect(self.cancel)
        self._listen(self._on_layers_changed, self._on_models_changed)
        self._follow_active()
        self._on_source_changed()

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _row(*buttons) -> Container:
        row = Container(widgets=list(buttons), layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        return row

    def _insert_after(self, widget, qwidget, before: bool = False) -> None:
        """Put a plain Qt widget (a plot) into the layout next to a magicgui widget."""
        layout = self.native.layout()
        target = widget.native
        for i in range(layout.count()):
            item = layout.itemAt(i).widget()
            if item is not None and (item is target or item.isAncestorOf(target)):
                layout.insertWidget(i if before else i + 1, qwidget)
                return
        layout.addWidget(qwidget)

    def _decorate(self) -> None:
        from qtpy.QtCore import Qt

        decorate_model_combo(self.model, self._models)
        self.readout.native.setWordWrap(True)
        for label in (self.readout, self.status):
            label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.pick_button.tooltip = (
            "add (or select) a Points layer over the image; each point shows the weights "
            "with which the denoiser averages the image into that pixel"
        )
        self.probes.tooltip = (
            "random probe vectors for the maps (centre weight, energy, width), per channel "
            "a colour model sees together (it gets 3x as many): more is slower and more "
            "exact; 256 is exact for filters under 16 px"
        )
        self.crop.tooltip = (
            "side of the square crop around the first point whose full Jacobian is "
            "computed (at most 64 gray, 36 colour; costs one backward pass per pixel)"
        )
        self.vectors.tooltip = "top singular vectors shown as a stack layer"

    def _disconnect(self, *_args) -> None:
        """Stop listening to the viewer and layers, and stop the workers, once the dock is gone."""
        super()._disconnect()
        self._unlink()
        self._timer.stop()
        self._poll.stop()
        for worker in (self._filter_worker, self._job_worker):
            if worker is not None:
                worker.quit()
        if self._job_cancel is not None:
            self._job_cancel.set()
        wait_ended(self._ended)  # they stop at their next step

    # ------------------------------------------------------------------ choices

    def _offers(self, layer) -> bool:
        """Not our own outputs: the overlay, maps and vectors are not images to interpret."""
        prov = layer.metadata.get(PROVENANCE_KEY)
        return not (isinstance(prov, dict) and prov.get("kind") in OWN_KINDS)

    def _follows(self, active, name: str, layer) -> bool:
        """The selected image, or the image of a selected filter-points layer."""
        if layer == active:
            return True
        prov = active.metadata.get(PROVENANCE_KEY)
        return isinstance(prov, dict) and prov.get("kind") == POINTS and prov.get("source") == name

    def reset_choices(self, *_args) -> None:
        """Refresh layer and model lists (napari calls it when layers change)."""
        super().reset_choices()
        self._decorate()

    # ------------------------------------------------------------------ source and points

    @property
    def points_layer(self):
        """The Points layer whose points are shown (None before 'Pick pixels')."""
        return self._points

    @property
    def busy(self) -> bool:
        """Whether pixel filters are waiting or being computed."""
        return self._timer.isActive() or self._filter_worker is not None or self._pending

    def _on_layers_changed(self, *_args) -> None:
        follow_renames(self._viewer.layers)
        alive = {layer_key(lyr) for lyr in self._viewer.layers}
        for key in [k for k in self._cache if k[0] not in alive]:  # a removed layer's filters:
            del self._cache[key]  # never shown for a new layer that reuses its id
        self.reset_choices()
        layers = self._viewer.layers
        if self._points is not None and self._points not in layers:
            self._link(self._source, None)
            self._points_removed()
        if self._source is not None and self._source not in layers:
            self._link(None, None)
        if self._source is not None and self._points is None:
            points = find_points(layers, self._source.name)
            if points is not None:
                self._link(self._source, points)
                self._schedule()

    def _points_removed(self) -> None:
        """The points are gone: so are their filters (overlay, enlarged plot, readout)."""
        source = self._source
        self._wanted, self._generation = [], self._generation + 1
        if source is not None:  # the overlays of every model: none follows points any more
            for overlay in find_outputs(self._viewer.layers, source, FILTER):
                self._viewer.layers.remove(overlay)
        self._show_latest()
        self.status.value = "points removed: press 'Pick pixels' to add new ones"

    def _on_source_changed(self, *_args) -> None:
        layer = self.image.value
        points = find_points(self._viewer.layers, layer.name) if layer is not None else None
        self._link(layer, points)
        self._schedule()

    def _on_models_changed(self, *_args) -> None:
        """Model files changed: list them again and forget filters (a name may mean a new model)."""
        self.reset_choices()
        self._clear_cache()
        self._shown = None
        self._schedule()

    def _on_model_changed(self, *_args) -> None:
        self._shown = None
        self._schedule()

    def _link(self, source, points) -> None:
        """Listen to ``source`` (data changes) and ``points`` (edits) instead of the old pair."""
        same = [
            layer_key(a) == layer_key(b)
            for a, b in ((source, self._source), (points, self._points))
        ]
        if all(same):
            return
        self._unlink()
        self._source, self._points = source, points
        self._shown = None
        self._latest = None
        links: list[Connection] = []
        if source is not None:
            links.append((source.events.data, self._on_source_data))
        if points is not None:
            links += [
                (points.events.data, self._on_points_data),
                (points.events.set_data, self._on_points_moved),
            ]
        self._links = connect_all(links)

    def _unlink(self) -> None:
        disconnect_all(self._links)

    def _on_source_data(self, *_args) -> None:
        self._clear_cache()
        self._shown = None
        self._schedule()

    def _clear_cache(self) -> None:
        """Forget every filter, including those still being computed for the old data or model."""
        self._cache.clear()
        self._cache_epoch += 1

    def _on_points_data(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action in ("adding", "removing", "changing"):
            return
        n = len(self._points.data) if self._points is not None else 0
        indices = getattr(event, "data_indices", ()) or ()
        if action in ("added", "changed") and n and len(indices):
            self._latest = max(int(i) % n for i in indices)
        elif action == "removed":
            self._latest = None
        self._schedule()

    def _on_points_moved(self, *_args) -> None:
        """A refresh of the points layer, e.g. while dragging (data events come at the end)."""
        selected = self._points.selected_data if self._points is not None else set()
        if selected:
            self._latest = max(selected)
        self._schedule()

    def _schedule(self, *_args) -> None:
        """Compute filters at most every THROTTLE_MS: the timer is not restarted while running."""
        if not self._timer.isActive():
            self._timer.start()

    def pick_pixels(self, *_args, layer=None):
        """Add (or select) the Points layer of ``layer`` in add mode; returns it, or None.

        Parameters
        ----------
        layer : napari.layers.Layer, optional
            The source image (default: the one chosen in the widget). Anything
            but a usable Image layer gives an error notification.
        """
        layer = self.image.value if layer is None else layer
        if layer is None:
            show_error("No Image layer to interpret: open or add an image first.")
            return None
        try:
            read_layer(layer, None)
        except LayerError as err:
            show_error(str(err))
            return None
        if not any(lyr == layer for _, lyr in self._image_choices()):
            show_error(
                f"'{layer.name}' was made by the Interpret widget; pick pixels on the image "
                "it was made from"
            )
            return None
        points = find_points(self._viewer.layers, layer.name)
        if points is None:
            points = make_points_layer(self._viewer, layer)
        if self.image.value != layer:
            self.image.value = layer
        self._link(layer, points)
        self._viewer.layers.selection.active = points
        points.mode = "add"
        self.status.value = "click on the image to add points"
        return points

    def clear_points(self, *_args) -> None:
        """Remove every point (the overlay empties; other layers stay)."""
        if self._points is not None and len(self._points.data):
            self._points.data = np.empty((0, self._points.ndim))

    # ------------------------------------------------------------------ pixel filters

    def _prepare(self, layer, quiet: bool = False) -> tuple[LayerInput, str] | None:
        """The layer's input and the resolved model name; errors become notifications."""
        try:
            inp = read_layer(layer, None)
            model = resolve_model(self.model.value, inp)
        except (LayerError, ValueError) as err:
            self._error(str(err), quiet)
            return None
        info = self._models.get(model)
        if info is not None and info.error is not None:
            self._error(f"Model '{model}' cannot be used: {info.error}", quiet)
            return None
        return inp, model

    def _error(self, message: str, quiet: bool = False) -> None:
        """Show an error; automatic updates show each message once, not on every point move."""
        self.status.value = "failed"
        if quiet and message == self._reported:
            return
        self._reported = message if quiet else ""
        show_error(message)

    def update_filters(self, *_args) -> None:
        """Compute the filters of the current points (missing ones in a worker) and show them.

        Called by the throttle timer after point edits; a running job made stale
        is stopped after its current pixel and the newest request runs next.
        """
        source, points = self._source, self._points
        layers = self._viewer.layers
        if source is None or points is None or source not in layers or points not in layers:
            return
        prepared = self._prepare(source, quiet=True)
        if prepared is None:
            return
        inp, model = prepared
        shape = nonchannel_shape(inp)
        wanted, left_out = point_pixels(points, source, shape)
        self._wanted, self._wanted_for = wanted, (layer_key(source), model, shape)
        self._left_out = left_out
        request = (self._wanted_for, tuple(wanted))
        if request == self._shown:
            self._show_latest()
            return
        self._generation += 1
        key = self._wanted_for[:2]
        missing = list(dict.fromkeys(p for _, p in wanted if (*key, p) not in self._cache))
        if not missing:
            self._render()
        elif self._filter_worker is not None:
            self._pending = True
            self._filter_worker.quit()
        else:
            self._start_filters(inp, model, missing, key)

    def _start_filters(self, inp: LayerInput, model: str, pixels: list, key: tuple) -> None:
        from napari.qt.threading import create_worker

        generation = self._generation
        worker = create_worker(filters_job, inp, model, pixels, _start_thread=False)
        epoch = self._cache_epoch
        worker.yielded.connect(lambda item: self._on_filter(key, generation, item, epoch))
        worker.returned.connect(lambda err: self._on_filters_returned(generation, err))
        worker.finished.connect(self._on_filters_finished)
        track_end(self._ended, worker)
        self._filter_worker = worker
        self.status.value = f"computing {len(pixels)} filter(s) with {model}..."
        worker.start()

    def _on_filter(self, key: tuple, generation: int, item, epoch: int) -> None:
        if epoch != self._cache_epoch:
            return  # computed on data or a model that has changed since
        pixel, pf = item
        self._cache[(*key, pixel)] = pf
        self._cache.move_to_end((*key, pixel))
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        if generation == self._generation:
            self._render()

    def _on_filters_returned(self, generation: int, error: str | None) -> None:
        if error is not None and generation == self._generation:
            shown = self.status.value
            self._error(error, quiet=True)
            if self._filters_shown():  # the other points' filters came: say so, not "failed"
                self.status.value = f"{shown}; some point(s) left out (see the message)"

    def _on_filters_finished(self, *_args) -> None:
        self._filter_worker = None
        if self._pending:
            self._pending = False
            self.update_filters()

    def _filters_shown(self) -> list[tuple[int, tuple, Any]]:
        """(point index, pixel, filter) of the requested points whose filter is known."""
        if self._wanted_for is None:
            return []
        key = self._wanted_for[:2]
        return [(i, p, self._cache[(*key, p)]) for i, p in self._wanted if (*key, p) in self._cache]

    def _render(self) -> None:
        """Put every known filter of the current points into the overlay layer."""
        source, points = self._source, self._points
        if source is None or points is None or source not in self._viewer.layers:
            return
        _, model, shape = self._wanted_for
        have = self._filters_shown()
        overlay, origin = compose_overlay(shape, [(p, pf) for _, p, pf in have])
        if have or find_output(self._viewer.layers, source, model, FILTER) is not None:
            limit = overlay_limit(pf for _, _, pf in have)
            kw = overlay_kwargs(source, overlay, model, limit, origin)
            put_layer(self._viewer, overlay, kw, below=points, keep_active=True)
        for stale in find_outputs(self._viewer.layers, source, FILTER):
            if stale.metadata[PROVENANCE_KEY].get("model") != model:  # another model's:
                self._viewer.layers.remove(stale)  # it would no longer follow the points
        if len(have) == len(self._wanted):
            self._shown = (self._wanted_for, tuple(self._wanted))
        text = f"{len(have)} of {len(self._wanted)} filter(s) shown ({model})"
        if self._left_out:
            text += f"; {self._left_out} point(s) outside the image or over the limit"
        self.status.value = text
        self._show_latest()

    # ------------------------------------------------------------------ the enlarged filter

    def _show_latest(self) -> None:
        """Draw the filter of the point edited last (else the last point) and its numbers."""
        have = self._filters_shown()
        if not have:
            self.latest_filter = None
            if self._drawn is not None:
                self._drawn = None
                self.filter_plot.clear("no pixel picked yet")
                self.readout.value = HINT
            return
        chosen = next((h for h in have if h[0] == self._latest), have[-1])
        _, pixel, pf = chosen
        if self._drawn == (id(pf), pixel):
            return
        self._drawn = (id(pf), pixel)
        self.latest_filter = pf
        self._draw_filter(pixel, pf)
        s = filter_summary(pf)
        mean = " (mean over colours)" if np.ndim(pf.weight_sum) else ""
        self.readout.value = (
            f"pixel {pixel}: weight sum {s['weight_sum']:.3f} \u00b7 centre weight "
            f"{s['centre_weight']:.3f}\nwidth {s['width']:.2f} px \u00b7 identity error "
            f"{s['identity_error']:.1e}{mean}"
        )

    def _draw_filter(self, pixel: tuple, pf) -> None:
        img = filter_image(pf)
        (r0, c0), (py, px) = pf.origin, pf.pixel[-2:]
        lo, hi = ZOOM_RADIUS
        radius = int(np.clip(math.ceil(3 * float(np.mean(pf.width))) + 2, lo, hi))
        y0, y1 = max(py - radius, r0), min(py + radius + 1, r0 + img.shape[0])
        x0, x1 = max(px - radius, c0), min(px + radius + 1, c0 + img.shape[1])
        zoom = img[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
        m = overlay_limit([pf])
        plot = self.filter_plot
        ax = plot.axes((0.1, 0.1, 0.7, 0.78))
        im = ax.imshow(
            zoom,
            cmap=filter_colormap_on_white(),
            vmin=-m,
            vmax=m,
            interpolation="nearest",
            extent=(x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5),
        )
        cax = plot.figure.add_axes((0.83, 0.1, 0.04, 0.78))
        bar = plot.figure.colorbar(im, cax=cax)
        bar.ax.tick_params(colors=plot.fg, labelsize=7)
        bar.outline.set_edgecolor(plot.fg)
        plot.title(ax, f"filter of pixel {pixel} (core saturates)")
        plot.canvas.draw_idle()

    # ------------------------------------------------------------------ long jobs

    @property
    def running(self) -> bool:
        """Whether maps or a spectrum are being computed."""
        return self._job_worker is not None

    def _current_lead(self, layer, inp: LayerInput) -> tuple[int, ...]:
        """Index of the viewed plane along the source's leading (stack) axes."""
        n = len(nonchannel_shape(inp)) - 2
        return tuple(current_index(layer, self._viewer)[:n]) if n else ()

    def _start_job(self, what: str, fn, *args, done) -> Any:
        from napari.qt.threading import create_worker
        from napari.utils import progress

        cancel = threading.Event()
        self._job_fraction = 0.0

        def report(finished: int, total: int) -> None:  # worker thread: the poll timer shows it
            self._job_fraction = finished / total if total else 0.0

        worker = create_worker(
            fn, *args, progress=report, cancel=cancel.is_set, _start_thread=False
        )
        worker.returned.connect(lambda outcome: self._on_job_returned(what, outcome, done))
        worker.finished.connect(self._on_job_finished)
        track_end(self._ended, worker)
        self._job_worker, self._job_cancel = worker, cancel
        self.maps_button.enabled = self.spectrum_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = f"{what}..."
        self._pbar = progress(total=PROGRESS_STEPS, desc=what)
        self._poll.start()
        worker.start()
        return worker

    def _poll_progress(self) -> None:
        steps = int(round(min(max(self._job_fraction, 0.0), 1.0) * PROGRESS_STEPS))
        self.progress.value = steps
        if self._pbar is not None and steps > self._pbar.n:
            self._pbar.update(steps - self._pbar.n)

    def cancel(self, *_args) -> None:
        """Stop the running maps or spectrum job at its next step."""
        if self._job_cancel is not None:
            self.status.value = "cancelling..."
            self._job_cancel.set()

    def _on_job_returned(self, what: str, outcome: JobOutcome, done) -> None:
        if outcome.cancelled:
            self.status.value = "cancelled"
            show_info(f"{what} cancelled.")
        elif outcome.error is not None:
            self.status.value = "failed"
            show_error(outcome.error)
        else:
            self._poll_progress()
            done(outcome)

    def _on_job_finished(self, *_args) -> None:
        self._poll.stop()
        self._job_worker = self._job_cancel = None
        self.maps_button.enabled = self.spectrum_button.enabled = True
        self.cancel_button.enabled = False
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _job_layer(self, layer, what: str):
        """The layer a long job runs on, checked; None (after a notification) if unusable."""
        if self.running:
            show_warning(f"{what} waits: another computation is running (or press Cancel).")
            return None
        layer = self.image.value if layer is None else layer
        if layer is None:
            show_error("No Image layer to interpret: open or add an image first.")
            return None
        return layer

    def compute_maps(self, *_args, layer=None):
        """Filter maps (residual, centre weight, energy, width) of the viewed plane, as layers.

        Returns
        -------
        FunctionWorker or None
            The started worker, or None if nothing was started.
        """
        layer = self._job_layer(layer, "Filter maps")
        prepared = self._prepare(layer) if layer is not None else None
        if prepared is None:
            return None
        inp, model = prepared
        lead = self._current_lead(layer, inp)
        fixed = dict(enumerate(lead))

        def done(outcome: JobOutcome) -> None:
            if layer not in self._viewer.layers:
                self.status.value = "source layer was removed; maps discarded"
                return
            for name, values in outcome.value.items():
                data = values.reshape((1,) * len(lead) + values.shape)
                put_layer(self._viewer, data, map_kwargs(layer, data, outcome.model, name, fixed))
            self.status.value = f"maps done in {outcome.seconds:.1f} s"

        probes = int(self.probes.value)
        info = self._models.get(model)
        if info is None:  # a model file given by path: its card alone
            from src_models.modelfile import read_card
            from src_models.registry import _resolve

            try:
                info = read_card(_resolve(model))
            except (ValueError, OSError):  # reported when the job loads it
                info = None
        if info is not None and getattr(info, "error", None) is None:
            from src_models.interpret import filter_maps_bytes

            h, w = nonchannel_shape(inp)[-2:]
            joint = info.channels if inp.channels == info.channels else 1
            need = filter_maps_bytes(info, h, w, max(1, inp.channels), probes * joint)
            try:
                check_free_memory(
                    need,
                    "the maps of this plane",
                    "compute them on a crop of the image added as its own layer",
                )
            except ResultTooLarge as err:
                show_error(str(err))
                return None
        return self._start_job(
            f"Filter maps of {layer.name}", maps_job, inp, model, lead, probes, done=done
        )

    def compute_spectrum(self, *_args, layer=None):
        """Full Jacobian on a crop around the first point: singular values plot + vectors layer.

        Returns
        -------
        FunctionWorker or None
            The started worker, or None if nothing was started.
        """
        layer = self._job_layer(layer, "Jacobian spectrum")
        prepared = self._prepare(layer) if layer is not None else None
        if prepared is None:
            return None
        inp, model = prepared
        shape = nonchannel_shape(inp)
        points = find_points(self._viewer.layers, layer.name)
        pixels = point_pixels(points, layer, shape)[0] if points is not None else []
        if not pixels:
            show_error(
                f"Add a point on '{layer.name}' first: press 'Pick pixels' and click on the "
                "image; the spectrum is computed on a crop around the first point."
            )
            return None
        pixel = pixels[0][1]
        lead = pixel[:-2]
        side = min(int(self.crop.value), largest_side(3 if inp.rgb else 1))
        box = crop_box(pixel[-2:], shape[-2:], side)
        k = int(self.vectors.value)

        def done(outcome: JobOutcome) -> None:
            self.spectrum = outcome.value
            self._draw_spectrum(outcome.value, box, pixel)
            if layer not in self._viewer.layers:
                self.status.value = "source layer was removed; vectors discarded"
                return
            vectors = outcome.value.vectors
            if inp.rgb:  # signed colours shown around mid-gray
                peak = np.abs(vectors).reshape(len(vectors), -1).max(axis=1)
                vectors = 0.5 + vectors / (2 * np.where(peak > 0, peak, 1.0))[:, None, None, None]
            data = vectors.reshape((len(vectors),) + (1,) * len(lead) + vectors.shape[1:])
            nd = len(shape)
            fixed = {**dict(enumerate(lead)), nd - 2: box[0], nd - 1: box[2]}
            kw = vectors_kwargs(layer, data, outcome.model, fixed, inp.rgb)
            put_layer(self._viewer, data.astype(np.float32), kw)
            self.status.value = f"spectrum done in {outcome.seconds:.1f} s"

        return self._start_job(
            f"Jacobian spectrum of {layer.name}", spectrum_job, inp, model, lead, box, k, done=done
        )

    def _draw_spectrum(self, spectrum, box: tuple[int, int, int, int], pixel: tuple) -> None:
        s = spectrum.singular_values
        k = len(spectrum.vectors)
        plot = self.spectrum_plot
        ax = plot.axes((0.17, 0.22, 0.78, 0.62))
        index = np.arange(1, len(s) + 1)
        ax.plot(index, s, color="#5fa8d3", lw=1.2)
        ax.plot(index[:k], s[:k], "o", ms=3, color="#f4a259", label=f"top {k}: vectors layer")
        ax.set_xlabel("index", color=plot.fg, fontsize=7)
        ax.set_ylabel("singular value", color=plot.fg, fontsize=7)
        ax.set_ylim(bottom=0)
        legend = ax.legend(fontsize=7, frameon=False)
        for text in legend.get_texts():
            text.set_color(plot.fg)
        h, w = box[1] - box[0], box[3] - box[2]
        plot.title(
            ax,
            f"J on {h}x{w} crop at {pixel}: trace {spectrum.effective_dimension:.1f} of {len(s)}",
        )
        plot.canvas.draw_idle()
