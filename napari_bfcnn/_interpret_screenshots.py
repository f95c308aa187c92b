"""README screenshots of the Interpret widget: filters at two noise levels, and the maps.

Why a script: the maps of a 512 x 512 photo take minutes with the default
model on a CPU, too long for a test; the tests run the same functions with a
tiny model. Run it under a display or Xvfb::

    xvfb-run -a python -m napari_bfcnn._interpret_screenshots --out docs/images

It writes ``interpret_filters_sigma10_50.png`` (the same pixels' filters on the
camera photo at two noise levels, side by side, one colour scale) and
``interpret_maps.png`` (the noisy photo with its centre-weight, energy and
width maps).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["FILTERS_PNG", "MAPS_PNG", "filters_screenshot", "main", "maps_screenshot"]

FILTERS_PNG = "interpret_filters_sigma10_50.png"
MAPS_PNG = "interpret_maps.png"
SIGMAS = (10.0, 50.0)
# the tripod's head, a leg and its post: edges; the last one is enlarged in the dock
PIXELS = ((318, 300), (440, 262), (392, 293))
VIEW_CENTRE = (380.0, 285.0)  # data coordinates shown at the centre of each grid cell
VIEW_SIDE = 100.0  # data pixels across the narrower side of each grid cell
WINDOW = (1800, 1000)
SOURCE_OPACITY = 0.45  # a darker photo: the filters' colours stand out
POINT_SIZE = 11.0  # thin circles around the pixels, leaving the filter's core visible
MAPS_SHOWN = ("centre_weight", "energy", "width")
TAIL_GAIN = 4.0  # colour limits this much below the widget's: the filters' far weights show


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _wait(done: Callable[[], bool], timeout: float = 1800.0) -> None:
    """Run the Qt event loop until ``done()`` (workers report through it)."""
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while not done():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"still running after {timeout:.0f} s")
    for _ in range(10):  # let the canvas catch up
        QApplication.processEvents()
        time.sleep(0.02)


def noisy_camera(sigma: float, seed: int = 0) -> np.ndarray:
    """The camera photo (float32, 0-255) plus ``sigma`` times one fixed noise pattern."""
    from skimage import data

    clean = data.camera().astype(np.float32)
    z = np.random.default_rng(seed).standard_normal(clean.shape).astype(np.float32)
    return clean + np.float32(sigma) * z


def _dock(viewer, model: str):
    """Resize the window to WINDOW and dock an Interpret widget set to ``model``."""
    from ._interpret_widget import InterpretWidget

    viewer.window._qt_window.resize(*WINDOW)
    widget = InterpretWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Interpret (adaptive filters)", area="right")
    widget.model.value = model
    return widget


def _thin_circles(points) -> None:
    """Mark the points with thin yellow circles instead of the widget's thick rings."""
    points.symbol = "disc"
    points.size = POINT_SIZE
    points.face_color = "transparent"
    points.border_color = "yellow"
    points.border_width_is_relative = True
    points.border_width = 0.07


def _nice(limit: float) -> float:
    """The largest 1, 2 or 5 times a power of ten up to ``limit``: colorbar ticks at the ends."""
    power = 10.0 ** np.floor(np.log10(limit))
    return float(max(m * power for m in (1.0, 2.0, 5.0) if m * power <= limit))


def _grid(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` from napari 0.7, else ``viewer.grid``)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if hasattr(canvas, "grid") else viewer.grid


def _zoom_cells(viewer, centre: tuple[float, float], side: float) -> None:
    """Show ``side`` data pixels around ``centre`` in every grid cell."""
    from qtpy.QtWidgets import QApplication

    viewer.reset_view()
    QApplication.processEvents()
    h, w = viewer.canvas.viewbox_size(viewer.layers)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9: viewer.scene.camera
    camera = scene.camera if hasattr(scene, "camera") else viewer.camera
    camera.center = (0.0, *centre)
    camera.zoom = min(w, h) / side


def filters_screenshot(
    viewer,
    model: str = "auto",
    sigmas: Sequence[float] = SIGMAS,
    pixels: Sequence[tuple[int, int]] = PIXELS,
    centre: tuple[float, float] = VIEW_CENTRE,
    side: float = VIEW_SIDE,
) -> np.ndarray:
    """The same pixels' filters at each noise level, one grid cell each (RGBA screenshot).

    ``viewer`` is an empty, shown viewer. Every overlay gets the same symmetric
    colour limits (the widget's smallest over TAIL_GAIN, rounded to 1, 2 or 5
    times a power of ten), so one colour means one weight in every cell.
    """
    widget = _dock(viewer, model)
    overlays = []
    for sigma in sigmas:
        src = viewer.add_image(
            noisy_camera(sigma), name=f"camera σ{sigma:g}", contrast_limits=(0.0, 255.0)
        )
        points = widget.pick_pixels(layer=src)
        points.data = np.asarray(pixels, dtype=float)
        _thin_circles(points)
        src.opacity = SOURCE_OPACITY
        _log(f"filters at sigma {sigma:g}")
        _wait(lambda: not widget.busy)
        overlay = next(lyr for lyr in viewer.layers if lyr.name.startswith(f"{src.name} [filter"))
        overlays.append(overlay)
        for lyr in (src, overlay, points):  # each level's layers together: one grid cell
            viewer.layers.move(viewer.layers.index(lyr), len(viewer.layers))
    limit = _nice(min(float(o.contrast_limits[1]) for o in overlays) / TAIL_GAIN)
    for o in overlays:
        o.contrast_limits = (-limit, limit)
        o.colorbar.visible = True
    _grid(viewer).stride = 3
    _grid(viewer).spacing = 0.02
    _grid(viewer).enabled = True
    _zoom_cells(viewer, centre, side)
    return _shot(viewer)


def maps_screenshot(
    viewer, model: str = "auto", sigma: float = 25.0, probes: int = 16
) -> np.ndarray:
    """The noisy camera and its centre-weight, energy and width maps in a 2 x 2 grid.

    ``viewer`` is an empty, shown viewer; the residual map is left out.
    """
    widget = _dock(viewer, model)
    src = viewer.add_image(
        noisy_camera(sigma), name=f"camera σ{sigma:g}", contrast_limits=(0.0, 255.0)
    )
    widget.image.value = src
    widget.probes.value = probes
    _log(f"maps at sigma {sigma:g}, {probes} probes")
    if widget.compute_maps() is None:
        raise RuntimeError("the Interpret widget did not start the maps")
    _wait(lambda: not widget.running)
    for lyr in [x for x in viewer.layers if "[residual:" in x.name]:
        viewer.layers.remove(lyr)
    for name in MAPS_SHOWN:  # after the source, in this order: one grid cell each
        lyr = next(x for x in viewer.layers if f"[{name}:" in x.name)
        viewer.layers.move(viewer.layers.index(lyr), len(viewer.layers))
        lyr.colorbar.visible = True
    _grid(viewer).stride = 1
    _grid(viewer).spacing = 0.02
    _grid(viewer).enabled = True
    viewer.reset_view()
    return _shot(viewer)


def _shot(viewer) -> np.ndarray:
    """A screenshot of the whole window, without notification toasts."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    _wait(lambda: True)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _wait(lambda: True)
    return viewer.screenshot(canvas_only=False, flash=False)


def _save(path: Path, shot: np.ndarray) -> None:
    """Write an RGB(A) screenshot as a 256-colour PNG (a third of the size, no visible change)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(shot[..., :3], dtype=np.uint8))
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(path, optimize=True)
    _log(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Write the Interpret widget's README screenshots; return the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m napari_bfcnn._interpret_screenshots",
        description="Screenshots of the Interpret widget for the README (needs a display).",
    )
    p.add_argument("--out", default="docs/images", help="folder (default docs/images)")
    p.add_argument("--model", default="auto", help="model name (default: auto, as the widget)")
    p.add_argument("--probes", type=int, default=16, help="probes of the maps (default 16)")
    p.add_argument("--only", choices=("filters", "maps"), default=None, help="one image only")
    args = p.parse_args(argv)
    import napari

    out = Path(args.out)
    jobs = {
        "filters": (FILTERS_PNG, lambda v: filters_screenshot(v, args.model)),
        "maps": (MAPS_PNG, lambda v: maps_screenshot(v, args.model, probes=args.probes)),
    }
    for what, (name, shoot) in jobs.items():
        if args.only in (None, what):
            viewer = napari.Viewer(show=True)
            try:
                _save(out / name, shoot(viewer))
            finally:
                viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
