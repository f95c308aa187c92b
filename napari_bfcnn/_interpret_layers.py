"""Layers of the Interpret widget: its points, the filter overlay, the maps, the singular vectors.

Why one place: each layer the widget makes lies where its values belong in
world space (the source's scale and translate, a stack's slice, a crop's
corner), carries provenance in ``metadata["bfcnn"]`` and is found again by it,
so re-running updates the widget's own layers and never touches another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._layers import (
    PROVENANCE_KEY,
    LayerInput,
    _offset_translate,
    _symmetric_limits,
    find_output,
    output_kwargs,
    output_name,
    provenance,
)

__all__ = [
    "FILTER",
    "MAP_COLORMAPS",
    "POINTS",
    "VECTORS",
    "filter_colormap",
    "filter_colormap_on_white",
    "filter_colours",
    "find_points",
    "make_points_layer",
    "map_kwargs",
    "nonchannel_shape",
    "overlay_kwargs",
    "point_pixels",
    "put_layer",
    "vectors_kwargs",
]

FILTER = "filter"  # provenance kind of the overlay
POINTS = "filter points"  # provenance kind of the points layer
VECTORS = "singular vectors"
MAP_COLORMAPS = {
    "residual": "gray",
    "centre_weight": "viridis",
    "energy": "magma",
    "width": "plasma",
}
OVERLAY_OPACITY = 0.8
MAX_POINTS = 64  # filters computed for at most this many points

# PiYG's mid and dark colours for |weight| up to half and full; zero is transparent
_NEGATIVE = np.array([[0.87, 0.47, 0.68], [0.56, 0.00, 0.32]])
_POSITIVE = np.array([[0.50, 0.74, 0.25], [0.15, 0.39, 0.10]])
FILTER_GAMMA = 0.5  # colour and opacity grow as |w| ** 0.5: the small far weights show


def filter_colours(n: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """Controls in [0, 1] and RGBA colours of the filter colormap (0.5 is a zero weight).

    Why a square-root ramp: a filter's few central weights are ten to a hundred
    times its many outer ones; with opacity growing as ``sqrt(|w|)`` (and the
    colour darkening in the upper half) the filter's extent shows, and the
    colour still grows monotonically with the weight on both sides of zero.
    """
    controls = np.linspace(0.0, 1.0, n)
    u = np.abs(2.0 * controls - 1.0) ** FILTER_GAMMA
    colours = np.empty((n, 4))
    for i, (t, s) in enumerate(zip(controls, u, strict=True)):
        mid, end = _NEGATIVE if t < 0.5 else _POSITIVE
        rgb = mid + max(0.0, 2 * s - 1) * (end - mid)
        colours[i] = [*rgb, s]
    return controls, colours


def filter_colormap():
    """Diverging PiYG-like colormap for filter weights, transparent at zero.

    Why transparent: with translucent blending the image shows through wherever
    the weights are small, and outside every window.
    """
    from napari.utils.colormaps import Colormap

    controls, colours = filter_colours()
    return Colormap(colours, controls=controls, name="bfcnn filter (PiYG)")


def filter_colormap_on_white():
    """The filter colormap for matplotlib, its transparency composited over white."""
    from matplotlib.colors import ListedColormap

    _, colours = filter_colours(255)
    alpha = colours[:, 3:]
    return ListedColormap(colours[:, :3] * alpha + (1.0 - alpha), name="bfcnn_filter")


def nonchannel_shape(inp: LayerInput) -> tuple[int, ...]:
    """The source's shape without its RGB(A) channel axis: ``(*lead, H, W)``."""
    shape = tuple(int(s) for s in inp.data.shape)
    return shape[:-1] if inp.rgb else shape


# --------------------------------------------------------------------------- points


def find_points(layers, source: str):
    """The filter-points layer made for the layer named ``source``, or None."""
    from napari.layers import Points

    for lyr in layers:
        prov = lyr.metadata.get(PROVENANCE_KEY) if isinstance(lyr, Points) else None
        if isinstance(prov, dict) and (prov.get("source"), prov.get("kind")) == (source, POINTS):
            return lyr
    return None


def make_points_layer(viewer, source):
    """Add an empty Points layer lying exactly over ``source``, in add mode.

    Returns
    -------
    napari.layers.Points
    """
    ndim = int(source.ndim)
    shape = tuple(int(s) for s in source.data.shape[:ndim])
    kw: dict[str, Any] = {
        "ndim": ndim,
        "name": f"{source.name} [{POINTS}]",
        "scale": tuple(source.scale),
        "translate": tuple(source.translate),
        "rotate": np.array(source.rotate),
        "shear": np.array(source.shear),
        "affine": np.array(source.affine.affine_matrix),
        "size": max(3.0, min(shape[-2:]) / 128.0),
        "symbol": "ring",
        "face_color": "yellow",
        "border_width": 0.0,
        "metadata": {PROVENANCE_KEY: provenance(source, "", POINTS)},
    }
    for attr in ("units", "axis_labels"):  # napari >= 0.6
        if hasattr(source, attr):
            kw[attr] = tuple(getattr(source, attr))
    points = viewer.add_points(None, **kw)
    points.mode = "add"
    return points


def point_pixels(points, source, shape: Sequence[int]) -> tuple[list[tuple[int, tuple]], int]:
    """Source pixel under each point, through world coordinates.

    Parameters
    ----------
    points : napari.layers.Points
    source : napari.layers.Image
    shape : sequence of int
        The source's non-channel shape.

    Returns
    -------
    list of (int, tuple of int)
        ``(point index, (*lead, y, x))`` for the first :data:`MAX_POINTS` points inside the image.
    int
        How many points were left out (outside the image or beyond the limit).
    """
    data = np.asarray(points.data, dtype=float)
    found: list[tuple[int, tuple]] = []
    for i, p in enumerate(data):
        d = np.asarray(source.world_to_data(points.data_to_world(p)), dtype=float)
        idx = np.floor(d[-len(shape) :] + 0.5).astype(int)
        if all(0 <= v < n for v, n in zip(idx, shape, strict=True)):
            found.append((i, tuple(int(v) for v in idx)))
    kept = found[:MAX_POINTS]
    return kept, len(data) - len(kept)


# --------------------------------------------------------------------------- image layers


def overlay_kwargs(
    source, data: np.ndarray, model: str, limit: float, origin: tuple[int, int] = (0, 0)
) -> dict:
    """``add_image`` arguments of the filter overlay: over the source, diverging, translucent.

    ``origin``: the source's (row, column) under the overlay's index 0 (a bounding box).
    """
    fixed = {source.ndim - 2: origin[0], source.ndim - 1: origin[1]} if any(origin) else None
    kw = output_kwargs(source, data, model, kind=FILTER, fixed=fixed)
    kw.update(
        colormap=filter_colormap(),
        contrast_limits=(-float(limit), float(limit)),
        blending="translucent",
        opacity=OVERLAY_OPACITY,
    )
    return kw


def _robust_limits(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def map_kwargs(source, data: np.ndarray, model: str, name: str, fixed: dict[int, int]) -> dict:
    """``add_image`` arguments of one filter map (a slice of ``source`` when ``fixed``)."""
    kw = output_kwargs(source, data, model, kind=name, fixed=fixed)
    kw["colormap"] = MAP_COLORMAPS[name]
    kw["contrast_limits"] = _symmetric_limits(data) if name == "residual" else _robust_limits(data)
    return kw


def vectors_kwargs(source, data: np.ndarray, model: str, fixed: dict[int, int], rgb: bool) -> dict:
    """``add_image`` arguments of the singular vectors: a stack over the crop's place.

    ``data`` is (k, *ones, h, w) or, colour, (k, *ones, h, w, 3); ``fixed`` maps
    every axis of ``source`` (slice and crop corner) to its index. The source's
    scale, rotation, shear and affine place the crop; the leading "vector" axis
    gets none of them.
    """
    translate = _offset_translate(source, fixed)
    n = int(source.ndim)
    rotate, shear = np.eye(n + 1), np.eye(n + 1)
    rotate[1:, 1:] = np.asarray(source.rotate, dtype=float)
    given = np.asarray(source.shear, dtype=float)
    if given.ndim == 2:  # napari gives the full matrix when it is not upper triangular
        shear[1:, 1:] = given
    else:
        shear[1:, 1:][np.triu_indices(n, 1)] = given
    affine = np.eye(n + 2)
    affine[1:, 1:] = np.asarray(source.affine.affine_matrix, dtype=float)
    metadata = {PROVENANCE_KEY: provenance(source, model, VECTORS)}
    metadata[PROVENANCE_KEY]["crop_start"] = [int(fixed[a]) for a in sorted(fixed)]
    kw: dict[str, Any] = {
        "name": output_name(source.name, model, VECTORS),
        "rgb": rgb,
        "scale": (1.0, *(float(s) for s in source.scale)),
        "translate": (0.0, *(float(t) for t in translate)),
        "rotate": rotate,
        "shear": shear,
        "affine": affine,
        "metadata": metadata,
    }
    if hasattr(source, "axis_labels"):
        kw["axis_labels"] = ("vector", *(str(a) for a in source.axis_labels))
    if hasattr(source, "units"):
        kw["units"] = ("pixel", *(str(u) for u in source.units))
    if rgb:
        kw["contrast_limits"] = (0.0, 1.0)
    else:
        m = float(np.abs(data).max(initial=0.0)) or 1.0
        kw["colormap"] = "PiYG"
        kw["contrast_limits"] = (-m, m)
    return kw


def put_layer(viewer, data: np.ndarray, kwargs: dict, below=None, keep_active: bool = False):
    """Show ``data``: update the widget's earlier layer of the same provenance, else add one.

    The earlier layer (same source, model and kind) keeps its place and the
    user's colormap, opacity and blending; its data, placement, metadata and
    contrast limits are updated. A new layer goes just below ``below`` if given,
    and becomes the active layer unless ``keep_active`` (the overlay: adding
    points goes on).

    Returns
    -------
    napari.layers.Image
    """
    prov = kwargs["metadata"][PROVENANCE_KEY]
    keys = (prov["source"], prov["model"], prov["kind"], prov.get("source_id"))
    old = find_output(viewer.layers, *keys)
    if old is not None and old.data.ndim == data.ndim and bool(old.rgb) == kwargs["rgb"]:
        old.data = data
        # the source's transform may have been corrected since (z-step, affine): follow it
        for attr in ("scale", "translate", "rotate", "shear", "affine"):
            if attr in kwargs:
                setattr(old, attr, kwargs[attr])
        old.metadata = kwargs["metadata"]
        if "contrast_limits" in kwargs:
            old.contrast_limits = kwargs["contrast_limits"]
        return old
    active = viewer.layers.selection.active
    index = None
    if old is not None:  # another layout: a new layer in the old one's place
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
    new = viewer.add_image(data, **kwargs)
    if index is None and below is not None and below in viewer.layers:
        index = viewer.layers.index(below)
    if index is not None:
        viewer.layers.move(viewer.layers.index(new), index)
    if keep_active and active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return new
