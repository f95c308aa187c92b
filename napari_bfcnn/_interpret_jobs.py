"""Background work of the Interpret widget: pixel filters, filter maps, Jacobian spectra.

Why a module without Qt: every job is a plain function (or generator) of a
:class:`~napari_bfcnn._layers.LayerInput`, a model name and pixel indices, so
it runs in a napari thread worker and in tests alike. Errors never escape: the
filters generator returns a message, the long jobs a :class:`JobOutcome`.

Pixels are indexed over the source's non-channel axes, ``(*lead, y, x)``:
``lead`` picks the plane of a stack (every non-RGB layer is a stack of gray
planes here; RGB layers are one colour plane per ``lead``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._layers import LayerError, LayerInput

if TYPE_CHECKING:
    from src_models.interpret import Spectrum

__all__ = [
    "JobOutcome",
    "compose_overlay",
    "crop_box",
    "crop_with_plane_offset",
    "default_offsets",
    "filter_image",
    "filter_summary",
    "filters_job",
    "largest_side",
    "maps_job",
    "overlay_limit",
    "plane_offset",
    "read_plane",
    "spectrum_job",
]

log = logging.getLogger(__name__)

Pixel = tuple[int, ...]
# a filter overlay of a stack above this is lazy: a click must not allocate a whole time-lapse
DENSE_OVERLAY_BYTES = 256 * 2**20
LIMIT_MASS = 0.3  # overlay_limit: the largest weights, carrying this much of |w|, saturate


@dataclass
class JobOutcome:
    """What a long job returns: a value on success, a message on failure, or cancelled."""

    model: str
    value: Any = None
    error: str | None = None
    cancelled: bool = False
    seconds: float = 0.0


def channel_axis(inp: LayerInput) -> int | None:
    """The engine's channel axis for one plane of ``inp``: last for RGB(A), else none."""
    return -1 if inp.rgb else None


def read_plane(inp: LayerInput, lead: Pixel) -> np.ndarray:
    """One plane of the source as numpy: (H, W) gray or (H, W, 3) colour (alpha dropped).

    Why read it here: dask or zarr stacks are materialised one plane at a time.
    """
    plane = np.asarray(inp.data[tuple(lead)] if lead else inp.data)
    if inp.alpha:
        plane = plane[..., :3]
    return plane


def plane_offset(
    inp: LayerInput,
    plane: np.ndarray,
    model: str | None = None,
    model_channels: int | None = None,
) -> float | str | None:
    """The black level the Denoise widget subtracts from this (NaN-filled) plane by default.

    Why: camera data (12/16-bit, not RGB) are denoised with the black level of each
    plane removed (``offset="auto"``), and a model fine-tuned with a level set by hand
    with that one (:func:`src_models.registry.default_offset`); the filters shown must
    be those of that same computation, or ``D(y) = J(y) y`` would describe another
    output. Returns a number, None, or ``"auto"`` where the model runs on each channel
    of the plane alone (the engine then takes each channel's own level).
    """
    from src_models.registry import default_offset

    setting = default_offset(model, inp.data.dtype, inp.rgb)
    if setting != "auto":
        return setting
    if plane.ndim == 3 and model_channels is not None and plane.shape[-1] != model_channels:
        return "auto"
    from src_models.noise_model import black_level

    return black_level(plane)


def default_offsets(plane: np.ndarray, joint: bool) -> np.ndarray:
    """The offset the Denoiser subtracts by default (``offset=None``) from each channel.

    ``min(minimum of the finite pixels, 0)`` over the channels it denoises
    together: all of them (``joint``, or a gray plane), or each alone. Why the
    finite pixels: the Denoiser fills NaN/inf with a channel's median, never
    below its minimum. Returns (1,) for a gray plane or a joint colour plane,
    else (C,).
    """
    chans = [plane] if plane.ndim == 2 or joint else list(np.moveaxis(plane, -1, 0))
    return np.array([float(np.min(c[np.isfinite(c)], initial=0.0)) for c in chans])


def crop_with_plane_offset(
    inp: LayerInput,
    plane: np.ndarray,
    box: tuple[int, int, int, int],
    model_channels: int,
    model: str | None = None,
) -> tuple[np.ndarray, float]:
    """A crop of ``plane`` and the offset under which its Jacobian is the denoised plane's.

    Why: the crop's own minimum is not the plane's, and the Jacobian depends on
    the offset; the plane's is what the Denoise widget subtracts (the black
    level for camera data, see :func:`plane_offset`). Where a gray model runs on
    each colour channel with a different offset, the crop is returned shifted by
    them with offset 0: scale does not change ``J``, so it is the same matrix.
    """
    y0, y1, x0, x1 = box
    crop = plane[y0:y1, x0:x1]
    camera = plane_offset(inp, plane, model, model_channels)
    if camera == "auto":  # each channel alone, with its own level: shift the crop by them
        from src_models.noise_model import black_level

        levels = np.array([black_level(plane[..., c]) for c in range(plane.shape[-1])])
        return crop.astype(np.float64) - levels, 0.0
    if camera is not None:
        return crop, camera
    joint = plane.ndim == 2 or plane.shape[-1] == model_channels
    offsets = default_offsets(plane, joint)
    if np.all(offsets == offsets[0]):
        return crop, float(offsets[0])
    return crop.astype(np.float64) - offsets, 0.0


def filter_image(pf) -> np.ndarray:
    """A pixel filter as one (h, w) float32 image.

    Gray: the weights. Colour, weights (C_out, h, w, C_in): the mean over
    channels ``q`` of the same-channel block ``weights[q, :, :, q]`` (what each
    channel takes from itself), so its centre is the readout's mean centre
    weight. Why not sums over input and output channels (``1^T J 1 / C``): that
    keeps only the filter of brightness; a model that filters colour differences
    otherwise (their weights sum to 0 over channels) would show none of it. One
    output channel's weights (h, w, C_in), which do not say which channel they
    are for: summed over input channels.
    """
    w = np.asarray(pf.weights, dtype=np.float32)
    if w.ndim == 2:
        return w
    if w.ndim == 3:  # (h, w, C_in): one output channel
        return w.sum(axis=-1)
    return np.mean([w[q, ..., q] for q in range(w.shape[0])], axis=0, dtype=np.float32)


def filter_summary(pf) -> dict[str, float]:
    """Weight sum, centre weight, width (px) and identity error as floats (colour: means)."""
    return {
        key: float(np.mean(getattr(pf, key)))
        for key in ("weight_sum", "centre_weight", "width", "identity_error")
    }


def compose_overlay(
    shape: Sequence[int], filters: Iterable[tuple[Pixel, Any]]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Every filter's image placed at its window, summed where windows overlap.

    Parameters
    ----------
    shape : sequence of int
        The source's non-channel shape ``(*lead, H, W)``.
    filters : iterable of (pixel, PixelFilter)
        ``pixel`` is the full index ``(*lead, y, x)`` the filter was computed for.

    Returns
    -------
    overlay : np.ndarray or dask array
        float32 of ``shape``, zero outside all windows. A stack larger than
        :data:`DENSE_OVERLAY_BYTES` gets a dask array whose planes without a filter
        are never allocated (napari reads only the slice in view); a single plane
        that large only the bounding box of the windows (napari would read a lazy
        plane whole, on every update).
    origin : (int, int)
        (row, column) of the source where the overlay's index 0 lies: (0, 0) but for
        a bounding box.
    """
    shape = tuple(int(s) for s in shape)
    filters = list(filters)
    if len(shape) == 2 and math.prod(shape) * 4 > DENSE_OVERLAY_BYTES:
        return _bounding_box(filters)
    planes: dict[tuple[int, ...], np.ndarray] = {}
    for pixel, pf in filters:
        plane = planes.setdefault(tuple(pixel[:-2]), np.zeros(shape[-2:], np.float32))
        rows, cols = pf.window
        plane[rows, cols] += filter_image(pf)
    if len(shape) > 2 and math.prod(shape) * 4 > DENSE_OVERLAY_BYTES:
        return _sparse_stack(shape, planes), (0, 0)
    out = np.zeros(shape, dtype=np.float32)
    for lead, plane in planes.items():
        out[lead] = plane
    return out, (0, 0)


def _bounding_box(filters: list[tuple[Pixel, Any]]) -> tuple[np.ndarray, tuple[int, int]]:
    """The filters of one plane summed on the smallest box holding their windows."""
    if not filters:
        return np.zeros((1, 1), np.float32), (0, 0)
    y0 = min(pf.window[0].start for _, pf in filters)
    x0 = min(pf.window[1].start for _, pf in filters)
    y1 = max(pf.window[0].stop for _, pf in filters)
    x1 = max(pf.window[1].stop for _, pf in filters)
    out = np.zeros((y1 - y0, x1 - x0), np.float32)
    for _, pf in filters:
        rows, cols = pf.window
        out[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0] += filter_image(pf)
    return out, (y0, x0)


def _sparse_stack(shape: tuple[int, ...], planes: dict[tuple[int, ...], np.ndarray]):
    """A lazy (*lead, H, W) stack: the given planes, zeros elsewhere (one chunk per plane)."""
    import dask.array as da

    def block(block_info=None) -> np.ndarray:
        lead = tuple(lo for lo, _ in block_info[None]["array-location"][:-2])
        plane = planes.get(lead)
        out = np.zeros(shape[-2:], np.float32) if plane is None else plane
        return out.reshape((1,) * (len(shape) - 2) + shape[-2:])

    chunks = tuple((1,) * n for n in shape[:-2]) + ((shape[-2],), (shape[-1],))
    return da.map_blocks(block, dtype=np.float32, chunks=chunks)


def overlay_limit(filters: Iterable[Any], mass: float = LIMIT_MASS) -> float:
    """Symmetric contrast limit for filters, so that their extent shows.

    The limit is the weight above which the largest weights off the centre
    pixel carry ``mass`` of the filter's absolute weight (its total ``sum |w|``
    off the centre); the largest over ``filters``.

    Why not the largest weight: a filter's centre and its core dwarf its many
    small outer weights, and the filter's extent and shape are what the overlay
    is for; the core saturates (its numbers are in the readout). Falls back to
    the largest weight, then to 1.
    """
    best = 0.0
    biggest = 0.0
    for pf in filters:
        img = np.abs(filter_image(pf)).astype(np.float64)
        r, c = pf.pixel[-2] - pf.window[0].start, pf.pixel[-1] - pf.window[1].start
        biggest = max(biggest, float(img.max(initial=0.0)))
        off = np.sort(np.delete(img.ravel(), r * img.shape[1] + c))[::-1]
        total = float(off.sum())
        if total > 0:
            i = int(np.searchsorted(np.cumsum(off), mass * total))
            best = max(best, float(off[min(i, off.size - 1)]))
    return best or biggest or 1.0


def largest_side(channels: int) -> int:
    """Largest square crop whose full Jacobian the engine computes (64 gray, 36 RGB)."""
    from src_models.interpret import MAX_JACOBIAN_VALUES

    return math.isqrt(MAX_JACOBIAN_VALUES // max(1, channels))


def crop_box(
    centre: tuple[int, int], size: tuple[int, int], side: int
) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a square of ``side`` around ``centre``, shifted to lie in the plane.

    The side shrinks to the plane where the plane is smaller.
    """
    box = []
    for c, n in zip(centre, size, strict=True):
        s = min(int(side), int(n))
        start = min(max(0, int(c) - s // 2), int(n) - s)
        box += [start, start + s]
    return box[0], box[1], box[2], box[3]


def _message(what: str, err: BaseException) -> str:
    """One line for the user; LayerError, ValueError (ModelFileError) and OSError read as is."""
    if isinstance(err, MemoryError):
        return f"{what}: not enough memory"
    if isinstance(err, (LayerError, ValueError, OSError)):
        return str(err)
    log.error("%s", what, exc_info=err)
    return f"{what}: {type(err).__name__}: {err}"


def filters_job(
    inp: LayerInput, model: str, pixels: Sequence[Pixel]
) -> Generator[tuple[Pixel, Any], None, str | None]:
    """Yield ``(pixel, PixelFilter)`` for each pixel; return an error message or None.

    Why a generator: ``worker.quit()`` stops it between pixels, so a job made
    stale by a moved point ends after the pixel it is working on. A pixel that
    fails (a plane without any finite value) is left out and named in the message;
    the other pixels' filters still come. Each plane is read, and its NaN/inf
    filled, once per job, not once per pixel.
    """
    try:
        from src_models import load_model
        from src_models.interpret import pixel_filter

        denoiser = load_model(model)
    except Exception as err:  # shown as a notification, never as a traceback dialog
        return _message("computing the pixel filter failed", err)
    planes: dict[Pixel, tuple[np.ndarray, float | None] | Exception] = {}
    failed: dict[str, int] = {}
    for pixel in pixels:
        lead = tuple(pixel[:-2])
        try:
            if lead not in planes:
                try:
                    filled = _filled_plane(inp, lead)
                    planes[lead] = filled, plane_offset(inp, filled, model, denoiser.channels)
                except Exception as err:
                    planes[lead] = err
            prepared = planes[lead]
            if isinstance(prepared, Exception):
                raise prepared
            plane, offset = prepared
            pf = pixel_filter(
                denoiser, plane, pixel[-2:], channel_axis=channel_axis(inp), offset=offset
            )
        except Exception as err:
            text = _message("computing the pixel filter failed", err)
            failed[text] = failed.get(text, 0) + 1
            continue
        yield tuple(pixel), pf
    if not failed:
        return None
    return "; ".join(f"{text} ({n} point(s) left out)" for text, n in failed.items())


def _filled_plane(inp: LayerInput, lead: Pixel) -> np.ndarray:
    """One plane with NaN/inf filled as the Denoiser fills them (each channel's median).

    Why before its black level: the Denoiser, too, estimates it after filling.
    """
    from src_models.inference import _fill_non_finite

    plane = read_plane(inp, lead)
    if plane.dtype.kind == "f":
        hwc = plane[..., None] if plane.ndim == 2 else plane
        where = f"plane {lead}" if lead else "the image"
        filled, _ = _fill_non_finite(hwc, where)
        plane = filled[..., 0] if plane.ndim == 2 else filled
    return plane


def maps_job(
    inp: LayerInput,
    model: str,
    lead: Pixel,
    probes: int,
    progress: Callable[[int, int], Any] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> JobOutcome:
    """All four filter maps of one plane (``src_models.interpret.filter_maps``).

    ``probes`` counts per channel the model sees together: a colour model gets three
    times as many, so its probe classes are as fine as a gray model's at one setting
    (the engine splits its probes over channels as well as pixels).
    """
    from src_models.interpret import MAP_NAMES, filter_maps

    def compute(denoiser) -> dict[str, np.ndarray]:
        from src_models.registry import default_offset

        plane = read_plane(inp, lead)
        joint = denoiser.channels if inp.channels == denoiser.channels else 1
        return filter_maps(
            denoiser,
            plane,
            MAP_NAMES,
            int(probes) * joint,
            channel_axis=channel_axis(inp),
            # the setting itself: the engine fills and takes each group's level as it denoises
            offset=default_offset(model, inp.data.dtype, inp.rgb),
            progress=progress,
            cancel=cancel,
        )

    return _run_job(model, "filter maps", compute)


def spectrum_job(
    inp: LayerInput,
    model: str,
    lead: Pixel,
    box: tuple[int, int, int, int],
    k: int,
    progress: Callable[[int, int], Any] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> JobOutcome:
    """The Jacobian spectrum of the crop ``box`` = (y0, y1, x0, x1) of one plane."""
    from src_models.interpret import jacobian_spectrum

    y0, y1, x0, x1 = box

    def compute(denoiser) -> Spectrum:
        plane = _filled_plane(inp, lead)
        crop, offset = crop_with_plane_offset(
            inp, plane, (y0, y1, x0, x1), denoiser.channels, model
        )
        return jacobian_spectrum(
            denoiser,
            crop,
            int(k),
            channel_axis=channel_axis(inp),
            offset=offset,
            progress=progress,
            cancel=cancel,
        )

    return _run_job(model, "Jacobian spectrum", compute)


def _run_job(model: str, what: str, compute: Callable[[Any], Any]) -> JobOutcome:
    """Load ``model``, run ``compute(denoiser)`` and time both, as a :class:`JobOutcome`.

    Why: the long jobs run in thread workers, where an exception would be a
    traceback dialog; cancelling and failing become outcomes instead.
    """
    from src_models import Cancelled, load_model

    t0 = time.perf_counter()
    try:
        value = compute(load_model(model))
    except Cancelled:
        return JobOutcome(model, cancelled=True)
    except Exception as err:
        return JobOutcome(model, error=_message(f"computing the {what} failed", err))
    return JobOutcome(model, value, seconds=time.perf_counter() - t0)
