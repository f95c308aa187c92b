"""The one place where napari layers become arrays and arrays become layers.

Why one place: every rule about axes (RGB, RGBA alpha, channel axis, stacks)
and about what an output layer inherits (scale, translate, units, colormap, ...)
lives here, so the widget and the function contribution cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_NONCHANNEL_DIMS",
    "MIN_SIDE",
    "LayerError",
    "LayerInput",
    "add_or_replace_output",
    "channel_axis_choices",
    "current_index",
    "find_output",
    "find_outputs",
    "follow_renames",
    "guess_channel_axis",
    "layer_key",
    "output_kwargs",
    "output_name",
    "provenance",
    "preview_fixed",
    "read_array",
    "read_layer",
]

MIN_SIDE = 4  # smallest height / width worth denoising
MAX_NONCHANNEL_DIMS = 4  # y, x and at most two looped axes (e.g. t, z)
PROVENANCE_KEY = "bfcnn"


class LayerError(ValueError):
    """A layer cannot be denoised; the message is shown to the user as is."""


@dataclass(frozen=True)
class LayerInput:
    """What the plugin needs to know about a source layer.

    Attributes
    ----------
    name : str
        The source layer's name.
    data : array-like
        ``layer.data`` itself (numpy, dask, zarr): read plane by plane, never written.
    channel_axis : int or None
        Non-negative axis of ``data`` holding channels.
    rgb : bool
        The layer is displayed as RGB(A); channels are the last axis.
    alpha : bool
        RGBA: the last channel is alpha and is copied untouched.
    """

    name: str
    data: Any
    channel_axis: int | None
    rgb: bool
    alpha: bool

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    @property
    def channels(self) -> int:
        """Channels to denoise (alpha excluded); 1 for a gray image."""
        if self.channel_axis is None:
            return 1
        return int(self.data.shape[self.channel_axis]) - (1 if self.alpha else 0)

    @property
    def loop_axes(self) -> tuple[int, ...]:
        """Axes looped over as separate planes (not channel, not the last two spatial)."""
        axes = [a for a in range(self.ndim) if a != self.channel_axis]
        return tuple(axes[:-2])

    @property
    def is_stack(self) -> bool:
        return len(self.loop_axes) > 0


def layer_key(layer) -> int:
    """Identity of a layer, also through napari's public-only viewer proxy."""
    return id(getattr(layer, "__wrapped__", layer))


def _shape_txt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def read_layer(layer, channel_axis: int | None = None) -> LayerInput:
    """Check a layer and describe how to denoise it.

    Parameters
    ----------
    layer : napari.layers.Layer
        Anything; only 2-D+ numeric Image layers pass.
    channel_axis : int, optional
        Channel axis for non-RGB layers (ignored for RGB layers: channels are last).

    Returns
    -------
    LayerInput

    Raises
    ------
    LayerError
        With a message naming the layer and what is wrong.
    """
    from napari.layers import Image

    name = getattr(layer, "name", repr(layer))
    if not isinstance(layer, Image):
        kind = type(layer).__name__
        raise LayerError(f"'{name}' is a {kind} layer; BF-CNN denoising works on Image layers only")
    if layer.multiscale:
        raise LayerError(
            f"'{name}' is a multiscale (pyramid) image; denoising multiscale layers is not "
            "supported yet: add its full-resolution level as a separate layer"
        )
    return read_array(layer.data, name=name, rgb=bool(layer.rgb), channel_axis=channel_axis)


def read_array(
    data, *, name: str = "image", rgb: bool = False, channel_axis: int | None = None
) -> LayerInput:
    """Check an array and describe how to denoise it (the rules of :func:`read_layer`).

    Parameters
    ----------
    data : array-like
        numpy, dask or zarr array; not read except for an all-NaN check on numpy.
    name : str
        Used in messages.
    rgb : bool
        Channels are the last axis (3 = RGB, 4 = RGBA with alpha kept).
    channel_axis : int, optional
        Channel axis when not ``rgb``.
    """
    dtype = np.dtype(data.dtype)
    if dtype.kind == "b":
        raise LayerError(f"'{name}' is a boolean (mask) image; there is no noise to remove")
    if dtype.kind not in "iuf":
        raise LayerError(f"'{name}' has data type {dtype}; only integer and float images work")
    shape = tuple(int(s) for s in data.shape)
    ndim = len(shape)
    if 0 in shape:
        raise LayerError(f"'{name}' is empty (shape {_shape_txt(shape)})")

    alpha = False
    if rgb:
        if ndim < 3 or shape[-1] not in (3, 4):
            raise LayerError(f"'{name}' is marked RGB but its last axis is not 3 or 4 long")
        channel_axis = ndim - 1
        alpha = shape[-1] == 4
    elif channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise LayerError(
                f"channel_axis={channel_axis} is out of range for an image with {ndim} dimensions"
            )
        channel_axis %= ndim
        if ndim < 3:
            raise LayerError(
                f"'{name}' is 2-D ({_shape_txt(shape)}); it has no room for a channel axis"
            )

    spatial_ndim = ndim - (channel_axis is not None)
    if spatial_ndim < 2:
        raise LayerError(f"'{name}' is 1-D ({_shape_txt(shape)}); denoising needs 2-D images")
    if spatial_ndim > MAX_NONCHANNEL_DIMS:
        hint = "choose a channel axis" if channel_axis is None else "remove an axis"
        raise LayerError(
            f"'{name}' has {ndim} dimensions ({_shape_txt(shape)}) and "
            f"{'no channel axis' if channel_axis is None else 'one channel axis'}: {hint}. "
            f"Planes are 2-D and at most {MAX_NONCHANNEL_DIMS - 2} further axes (e.g. t, z) "
            "are looped over"
        )
    inp = LayerInput(name, data, channel_axis, rgb, alpha)
    axes = [a for a in range(ndim) if a != channel_axis]
    h, w = shape[axes[-2]], shape[axes[-1]]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise LayerError(
            f"'{name}' planes are {h}x{w} pixels; denoising needs at least {MIN_SIDE}x{MIN_SIDE}"
        )
    if isinstance(data, np.ndarray) and dtype.kind == "f" and not _has_finite(data):
        raise LayerError(f"'{name}' has no finite pixel (all NaN or infinite)")
    return inp


def _has_finite(data: np.ndarray, chunk: int = 1 << 20) -> bool:
    """Whether any value is finite, stopping at the first finite block.

    Why blocks: this runs on every slider move and layer event; one ``np.isfinite``
    over a 2 GB stack would allocate 500 MB and freeze the viewer for seconds.
    """
    if data.size <= chunk or data.ndim == 1:
        return bool(np.isfinite(data).any())
    return any(_has_finite(part, chunk) for part in data)


CHANNEL_LABELS = frozenset({"c", "ch", "channel", "channels"})
LOOP_LABELS = frozenset({"t", "time", "z", "depth", "slice", "frame"})


def guess_channel_axis(shape, labels=None) -> int | None:
    """The channel axis of a 3-D+ image: the one labelled so, else a small one (at most 4
    long) that is first or last and not labelled as time or depth; else None.

    Why labels first: a 3-slice z-stack and a 3-channel image have the same shape;
    napari's ``axis_labels`` (or an OME file's axes) tell them apart when they are set.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        return None
    names = [str(x).strip().lower() for x in labels] if labels is not None else []
    if len(names) == len(shape):
        for ax, name in enumerate(names):
            if name in CHANNEL_LABELS:
                return ax
    else:
        names = [""] * len(shape)
    if shape[-1] <= 4 and min(shape[:-1][-2:]) > 4 and names[-1] not in LOOP_LABELS:
        return len(shape) - 1
    if shape[0] <= 4 and min(shape[-2:]) > 4 and names[0] not in LOOP_LABELS:
        return 0
    return None


def channel_axis_choices(layer) -> list[int | None]:
    """Channel axes the user may pick for a layer: None, then every axis (non-RGB, 3-D+)."""
    if layer is None or getattr(layer, "rgb", False):
        return [None]
    ndim = len(layer.data.shape)
    if ndim < 3:
        return [None]
    return [None, *range(ndim)]


def current_index(layer, viewer) -> tuple[int, ...]:
    """Data index of the viewer's current slice along each layer dimension.

    Uses the viewer's world position (``viewer.dims.point``, which follows
    ``viewer.dims.current_step``) mapped through the layer's transforms, so
    layers with a different scale or translate get their own plane index.
    """
    ndim = layer.ndim
    point = np.asarray(viewer.dims.point, dtype=float)[-ndim:]
    if point.size < ndim:
        point = np.concatenate([np.zeros(ndim - point.size), point])
    idx = np.round(layer.world_to_data(point)).astype(int)
    shape = np.asarray(layer.data.shape[:ndim])
    return tuple(int(i) for i in np.clip(idx, 0, shape - 1))


def preview_fixed(inp: LayerInput, layer, viewer) -> dict[int, int]:
    """Loop axes fixed to the viewer's current slice (empty for a single plane)."""
    if not inp.is_stack:
        return {}
    idx = current_index(layer, viewer)
    return {ax: idx[ax] for ax in inp.loop_axes}


def output_name(source: str, model: str, kind: str = "denoised") -> str:
    """``"<source> [denoised: <model>]"`` or ``"<source> [noise: <model>]"``."""
    return f"{source} [{kind}: {model}]"


def provenance(source, model: str, kind: str) -> dict:
    """What an output records about how it was made: source name and id, model, kind.

    Why the id too: outputs are found by their source's name, and :func:`follow_renames`
    uses the id (napari's ``unique_id``) to keep that name right when the user renames it.
    """
    prov = {"source": source.name, "model": model, "kind": kind}
    uid = getattr(source, "unique_id", None)
    if uid is not None:
        prov["source_id"] = str(uid)
    return prov


def follow_renames(layers) -> int:
    """Point outputs at their source's current name after a rename; returns how many changed.

    Why: a re-run must still replace its own earlier output, and the Interpret widget must
    still find its points, after ``img`` was renamed ``cells``.
    """
    names = {str(lyr.unique_id): lyr.name for lyr in layers if hasattr(lyr, "unique_id")}
    changed = 0
    for lyr in layers:
        prov = lyr.metadata.get(PROVENANCE_KEY)
        if not isinstance(prov, dict) or prov.get("source_id") not in names:
            continue
        name = names[prov["source_id"]]
        if prov.get("source") != name:
            lyr.metadata = {**lyr.metadata, PROVENANCE_KEY: {**prov, "source": name}}
            changed += 1
    return changed


def _offset_translate(layer, fixed: dict[int, int] | None) -> np.ndarray:
    """Translate that puts index 0 of a one-slice output at the source's fixed indices.

    Goes through scale, rotate and shear, so the slice lands where the source's
    slice is in world space.
    """
    from napari.utils.transforms import CompositeAffine

    translate = np.asarray(layer.translate, dtype=float)
    if not fixed:
        return translate
    ndim = layer.ndim
    transform = CompositeAffine(
        scale=layer.scale, translate=translate, rotate=layer.rotate, shear=layer.shear, ndim=ndim
    )
    k = np.zeros(ndim)
    for ax, ix in fixed.items():
        if ax < ndim:
            k[ax] = ix
    return np.asarray(transform(k), dtype=float)


def _symmetric_limits(noise: np.ndarray) -> tuple[float, float]:
    """±the 99.5th percentile of |noise| on about a million samples.

    Why sample first: a finite-mask of a whole noise stack copies it (GiBs, in the GUI
    thread, right after a run that was allowed most of the free memory).
    """
    flat = noise.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (-1.0, 1.0)
    m = float(np.percentile(np.abs(sample), 99.5)) or 1.0
    return (-m, m)


def output_kwargs(
    layer,
    data: np.ndarray,
    model: str,
    *,
    kind: str = "denoised",
    fixed: dict[int, int] | None = None,
) -> dict:
    """Keyword arguments for ``viewer.add_image`` of an output derived from ``layer``.

    Copies scale, translate, rotate, shear, affine, metadata, colormap, contrast
    limits, blending, units and axis labels; adds provenance in
    ``metadata["bfcnn"]``. ``fixed`` (preview) shifts the translate to the slice.
    The removed noise gets a gray colormap with limits symmetric around zero.
    """
    metadata = dict(layer.metadata)
    prov = provenance(layer, model, kind)
    prov["planes"] = "current" if fixed else "all"
    metadata[PROVENANCE_KEY] = prov
    rgb = bool(layer.rgb) and data.ndim == layer.data.ndim and data.shape[-1] in (3, 4)
    kw: dict[str, Any] = {
        "name": output_name(layer.name, model, kind),
        "rgb": rgb,
        "scale": tuple(layer.scale),
        "translate": tuple(_offset_translate(layer, fixed)),
        "rotate": np.array(layer.rotate),
        "shear": np.array(layer.shear),
        "affine": np.array(layer.affine.affine_matrix),
        "metadata": metadata,
        "blending": layer.blending,
    }
    for attr in ("units", "axis_labels"):  # napari >= 0.6
        if hasattr(layer, attr):
            kw[attr] = tuple(getattr(layer, attr))
    if kind == "noise":
        kw["colormap"] = "gray"
        kw["contrast_limits"] = _symmetric_limits(data)
    else:
        if not rgb:
            kw["colormap"] = layer.colormap
        kw["contrast_limits"] = tuple(layer.contrast_limits)
    return kw


def find_output(layers, source, model: str, kind: str = "denoised", source_id: str | None = None):
    """The output layer made earlier from ``source`` with ``model`` (matched on provenance).

    ``source`` is the source layer, or its name. Why the id as well as the name: after
    the source was deleted and another layer took its name (even its own output,
    renamed), a name match alone would overwrite a result, or the input, that this run
    did not make. Outputs recording no id match by name; the source is never returned.
    """
    return next(find_outputs(layers, source, kind, model, source_id), None)


def find_outputs(
    layers, source, kind: str, model: str | None = None, source_id: str | None = None
) -> Iterator:
    """Every output layer of ``kind`` made from ``source``, with ``model`` (None: any model).

    Matched as in :func:`find_output`.
    """
    from napari.layers import Image

    if isinstance(source, str):
        name, itself = source, None
    else:
        name, itself = source.name, layer_key(source)
        uid = getattr(source, "unique_id", None)
        source_id = str(uid) if uid is not None and source_id is None else source_id
    for lyr in list(layers):
        prov = lyr.metadata.get(PROVENANCE_KEY) if isinstance(lyr, Image) else None
        if not isinstance(prov, dict) or layer_key(lyr) == itself:
            continue
        if (prov.get("source"), prov.get("kind")) != (name, kind):
            continue
        if model is not None and prov.get("model") != model:
            continue
        if source_id is not None and prov.get("source_id") not in (None, source_id):
            continue  # made from another layer of that name
        yield lyr


def add_or_replace_output(
    viewer,
    layer,
    data: np.ndarray,
    model: str,
    *,
    kind: str = "denoised",
    fixed: dict[int, int] | None = None,
):
    """Show ``data`` as the output of ``layer`` + ``model``; replace the earlier one if any.

    Only a layer whose provenance names the same source, model and kind is
    replaced (its data updated in place); no other layer is touched.

    Returns
    -------
    napari.layers.Image
    """
    kw = output_kwargs(layer, data, model, kind=kind, fixed=fixed)
    old = find_output(viewer.layers, layer, model, kind)
    if old is not None and old.rgb == kw["rgb"] and old.data.ndim == data.ndim:
        old.data = data
        # the source's transform may have been corrected since (z-step, affine): follow it
        for attr in ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels"):
            if attr in kw:
                setattr(old, attr, kw[attr])
        old.metadata = kw["metadata"]
        if kind == "noise":
            old.contrast_limits = kw["contrast_limits"]
        return old
    if old is not None:  # layout changed (e.g. another channel axis): same place, new layer
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        new = viewer.add_image(data, **kw)
        viewer.layers.move(viewer.layers.index(new), index)
        return new
    return viewer.add_image(data, **kw)
