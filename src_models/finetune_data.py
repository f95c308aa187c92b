"""The user's own images as training samples, and the region held out to validate on.

Why its own module: napari layers, TIFF stacks and RGB photos all become the same
thing here, a list of normalised (H, W, C) planes that remember where they came
from, so the training code, the widget's validation rectangle and the preview can
never disagree about pixels.

Rules (the inference engine's, so training sees what denoising will see):

* every plane of a stack is a sample (all axes but the channel axis and the last
  two are looped over); RGB(A) layers keep their colours together (alpha dropped);
* when the model's channel count differs from the image's, each channel is a
  sample of its own, repeated to the model's channel count (a gray model on a
  multichannel image, a colour model on a gray one);
* each sample is shifted by its black level and divided by its largest magnitude,
  exactly like :class:`~src_models.inference.Denoiser` does, and NaN / inf pixels
  are filled with the median of their channel. The black level is what the Denoise
  widget proposes (``black_level="camera"``): estimated per plane for camera data
  (:func:`~src_models.registry.is_camera_data`), else the plane's minimum when that
  is negative. A model trained on planes with their camera offset would meet
  offset-free planes when denoising and, being bias-free, take the difference for
  signal. For a noisy / clean pair, the noisy plane's offset and scale are applied
  to both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import CorruptionConfig
from .corruptions import corrupt

__all__ = [
    "BLACK_LEVELS",
    "CorruptedPatch",
    "Sample",
    "SourceImage",
    "ValidationRegion",
    "check_black_level",
    "choose_validation",
    "corrupted_preview",
    "paired_samples",
    "samples",
    "split_off_validation",
    "to_source_units",
]

VAL_FRACTION = 0.2  # share of the largest image's rows held out
VAL_MAX_SIDE = 256  # the held-out crop is at most this big per side
VAL_MIN_ROWS = 16
MIN_TRAIN_ROWS = 8


@dataclass(frozen=True)
class SourceImage:
    """An image to learn from: pixels of any shape, which axis holds channels.

    Attributes
    ----------
    name : str
        Shown in messages and written to the model card (a layer or file name).
    data : array-like
        numpy, dask or zarr; read one plane at a time.
    channel_axis : int, optional
        Axis holding channels; None for single-channel images and stacks.
    rgb : bool
        Channels are the last axis (RGB or RGBA; alpha is dropped).
    """

    name: str
    data: Any
    channel_axis: int | None = None
    rgb: bool = False

    def describe(self) -> str:
        """``name (shape, dtype)`` for model cards."""
        shape = "x".join(str(int(s)) for s in self.data.shape)
        return f"{self.name} ({shape}, {np.dtype(self.data.dtype)})"


@dataclass(frozen=True)
class Sample:
    """One normalised training plane and where it came from."""

    image: np.ndarray  # float32 (H, W, C)
    source: int  # index into the list of sources
    plane: tuple[int, ...]  # index along the looped axes (neither channel nor Y, X)
    channel: int | None  # source channel when channels are split, else None
    offset: float
    scale: float


@dataclass(frozen=True)
class ValidationRegion:
    """The held-out box: rows ``y0:y1``, columns ``x0:x1`` of one plane of one source.

    Rows ``y0:`` of *every* plane of that source are kept out of training, so a
    z-stack cannot leak the held-out content through its neighbouring slices.
    """

    source: int
    name: str
    plane: tuple[int, ...]
    channel: int | None
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly description (model card notes)."""
        return {
            "source": self.name,
            "plane": list(self.plane),
            "channel": self.channel,
            "rows": [self.y0, self.y1],
            "columns": [self.x0, self.x1],
        }


def _layout(src: SourceImage) -> tuple[int | None, tuple[int, ...], tuple[int, int]]:
    shape = tuple(int(s) for s in src.data.shape)
    ndim = len(shape)
    axis = src.channel_axis
    if src.rgb:
        if ndim < 3 or shape[-1] not in (3, 4):
            raise ValueError(f"'{src.name}' is marked RGB but its last axis is not 3 or 4 long")
        axis = ndim - 1
    if axis is not None:
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"channel_axis={axis} is out of range for '{src.name}' with {ndim} dimensions"
            )
        axis %= ndim
    others = [a for a in range(ndim) if a != axis]
    if len(others) < 2:
        raise ValueError(f"'{src.name}' has shape {shape}; training needs 2-D planes")
    return axis, tuple(others[:-2]), (others[-2], others[-1])


def _read_plane(src: SourceImage, lead: tuple[int, ...]) -> np.ndarray:
    """One plane of a source as float64 (H, W, C); alpha dropped."""
    axis, loop, _ = _layout(src)
    shape = tuple(int(s) for s in src.data.shape)
    idx: list[Any] = [slice(None)] * len(shape)
    for a, i in zip(loop, lead, strict=True):
        idx[a] = int(i)
    block = np.asarray(src.data[tuple(idx)], dtype=np.float64)
    kept = [a for a in range(len(shape)) if a not in loop]  # the block's axes, in order
    hwc = block[..., None] if axis is None else np.moveaxis(block, kept.index(axis), -1)
    if src.rgb and hwc.shape[-1] == 4:
        hwc = hwc[..., :3]
    return hwc


def _planes(src: SourceImage):
    """Yield (plane index, float64 (H, W, C) pixels) for every plane of a source."""
    _, loop, _ = _layout(src)
    dtype = np.dtype(src.data.dtype)
    if dtype.kind not in "iuf":
        raise ValueError(f"'{src.name}' has data type {dtype}; only integer and float images work")
    shape = tuple(int(s) for s in src.data.shape)
    for lead in np.ndindex(*(shape[a] for a in loop)):
        lead = tuple(int(i) for i in lead)
        yield lead, _read_plane(src, lead)


def _groups(hwc: np.ndarray, channels: int) -> list[tuple[int | None, np.ndarray]]:
    c = hwc.shape[-1]
    if c == channels:
        return [(None, hwc)]
    return [(k, np.repeat(hwc[..., k : k + 1], channels, axis=-1)) for k in range(c)]


BLACK_LEVELS = ("camera", "auto", "none")  # or a number


def check_black_level(black_level: Any) -> str | float:
    """``black_level`` as one of :data:`BLACK_LEVELS` or a finite float; ValueError otherwise."""
    if isinstance(black_level, str):
        if black_level not in BLACK_LEVELS:
            raise ValueError(
                f"black_level={black_level!r} must be a number or one of {', '.join(BLACK_LEVELS)}"
            )
        return black_level
    if isinstance(black_level, bool) or not isinstance(black_level, (int, float)):
        raise ValueError(
            f"black_level={black_level!r} must be a number or one of {', '.join(BLACK_LEVELS)}"
        )
    if not math.isfinite(black_level):
        raise ValueError(f"black_level={black_level!r} must be finite")
    return float(black_level)


def _normaliser(
    plane: np.ndarray, where: str, black_level: str | float = "none", camera: bool = False
) -> tuple[np.ndarray, float, float]:
    from .inference import _fill_non_finite, _offset_and_scale
    from .noise_model import black_level as estimate_black_level

    plane, _ = _fill_non_finite(plane, where)
    if black_level == "auto" or (black_level == "camera" and camera):
        offset = estimate_black_level(plane)
    elif isinstance(black_level, float):
        offset = black_level
    else:
        offset = None
    off, scale = _offset_and_scale(plane, offset)
    return plane, off, scale


def _is_camera(src: SourceImage) -> bool:
    from .registry import is_camera_data

    return is_camera_data(np.dtype(src.data.dtype), rgb=src.rgb)


def _norm(plane: np.ndarray, off: float, scale: float) -> np.ndarray:
    return np.ascontiguousarray((plane - off) / scale, dtype=np.float32)


def samples(
    sources: Sequence[SourceImage], channels: int, black_level: str | float = "camera"
) -> list[Sample]:
    """Every plane (and channel, if split) of every source as a normalised sample.

    Parameters
    ----------
    sources : sequence of SourceImage
    channels : int
        The model's channel count.
    black_level : {"camera", "auto", "none"} or float
        Subtracted before scaling: "camera" estimates it per plane for camera data
        and uses "none" for others; "auto" always estimates it; "none" takes the
        plane's minimum when negative, else 0; a number is the black level itself.

    Returns
    -------
    list of Sample
    """
    if not sources:
        raise ValueError("no images to train on: give at least one image")
    black_level = check_black_level(black_level)
    out = []
    empty: list[str] = []
    for i, src in enumerate(sources):
        camera = _is_camera(src)
        for lead, hwc in _planes(src):
            for ch, plane in _groups(hwc, channels):
                where = f"'{src.name}' plane {lead}"
                if _no_data(plane):
                    empty.append(where)
                    continue
                plane, off, scale = _normaliser(plane, where, black_level, camera)
                out.append(Sample(_norm(plane, off, scale), i, lead, ch, off, scale))
    _report_empty(empty, bool(out))
    return out


def _no_data(plane: np.ndarray) -> bool:
    """A channel without a finite value (an empty slice of a registered stack, a lost frame)."""
    return not bool(np.isfinite(plane).any(axis=(0, 1)).all())


def _report_empty(empty: list[str], any_left: bool) -> None:
    """Skipped all-NaN planes are a warning; nothing left to train on is an error."""
    if not empty:
        return
    listed = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
    if not any_left:
        raise ValueError(f"no finite values to train on: {listed} hold only NaN or inf")
    warnings.warn(
        f"skipped {len(empty)} plane(s) without finite values (all NaN or inf): {listed}",
        stacklevel=3,
    )


def paired_samples(
    noisy: Sequence[SourceImage],
    clean: Sequence[SourceImage],
    channels: int,
    black_level: str | float = "camera",
) -> tuple[list[Sample], list[Sample]]:
    """Noisy and clean samples of registered pairs, normalised by the noisy plane.

    ``black_level`` as in :func:`samples`, from the noisy plane.

    Raises
    ------
    ValueError
        Different numbers of images, or a pair whose shapes differ.
    """
    if not noisy:
        raise ValueError("no noisy/clean pair given")
    if len(noisy) != len(clean):
        raise ValueError(f"{len(noisy)} noisy image(s) but {len(clean)} clean one(s): give pairs")
    black_level = check_black_level(black_level)
    out_n: list[Sample] = []
    out_c: list[Sample] = []
    empty: list[str] = []
    for i, (n_src, c_src) in enumerate(zip(noisy, clean, strict=True)):
        if tuple(n_src.data.shape) != tuple(c_src.data.shape):
            raise ValueError(
                f"noisy '{n_src.name}' has shape {tuple(n_src.data.shape)} but clean "
                f"'{c_src.name}' has shape {tuple(c_src.data.shape)}; a pair must match"
            )
        for (lead, n_hwc), (_, c_hwc) in zip(_planes(n_src), _planes(c_src), strict=True):
            for (ch, n_plane), (_, c_plane) in zip(
                _groups(n_hwc, channels), _groups(c_hwc, channels), strict=True
            ):
                if _no_data(n_plane) or _no_data(c_plane):
                    empty.append(f"'{n_src.name}' / '{c_src.name}' plane {lead}")
                    continue
                n_plane, off, scale = _normaliser(
                    n_plane, f"'{n_src.name}' plane {lead}", black_level, _is_camera(n_src)
                )
                c_plane, _, _ = _normaliser(c_plane, f"'{c_src.name}' plane {lead}")
                out_n.append(Sample(_norm(n_plane, off, scale), i, lead, ch, off, scale))
                out_c.append(Sample(_norm(c_plane, off, scale), i, lead, ch, off, scale))
    _report_empty(empty, bool(out_n))
    return out_n, out_c


def _round_up(n: float, m: int) -> int:
    return int(math.ceil(n / m) * m)


def choose_validation(
    items: Sequence[Sample],
    names: Sequence[str],
    multiple: int = 1,
    fraction: float = VAL_FRACTION,
    max_side: int = VAL_MAX_SIDE,
) -> ValidationRegion:
    """The held-out region: a band of rows at the bottom (or top) of the largest plane.

    Deterministic: the largest sample by area, among those of that area the one with the
    widest signal spread (:func:`_signal_spread` of a subsample; the first on ties: why,
    a z-stack or time-lapse often starts with an empty or dark slice, which scores
    nothing but noise), its bottom
    ``fraction`` of rows (at least 16, a multiple of ``lcm(2, multiple)``: model-sized,
    and even so that Neighbor2Neighbor's half-size sub-images are whole; those are
    padded to the model's multiple when validated), at most ``max_side`` rows, and a
    centred span of at most ``max_side`` columns. The top band instead when it holds
    clearly more signal (:data:`TOP_BAND_GAIN` times the spread of its lightly
    smoothed values): why, a fluorescence image with a dark bottom edge would
    otherwise score, and choose, models on background noise alone.

    Parameters
    ----------
    items : sequence of Sample
    names : sequence of str
        Source names, indexed by ``Sample.source``.
    multiple : int
        The model's size multiple.

    Raises
    ------
    ValueError
        The largest plane is too small to give both a validation band (at least 2 columns
        wide) and training rows.
    """
    if not items:
        raise ValueError("no images to train on: give at least one image")
    areas = [s.image.shape[0] * s.image.shape[1] for s in items]
    most = max(areas)
    largest = [s for s, a in zip(items, areas, strict=True) if a == most]
    best = largest[int(np.argmax([_signal_spread(_subsample(s.image)) for s in largest]))]
    h, w = best.image.shape[:2]
    unit = math.lcm(2, int(multiple))
    rows = min(max(_round_up(fraction * h, unit), _round_up(VAL_MIN_ROWS, unit)), max_side)
    rows -= rows % unit
    if rows < unit or h - rows < MIN_TRAIN_ROWS or w < 2:
        raise ValueError(
            f"'{names[best.source]}' is {h}x{w} pixels: too small to hold out a validation band "
            f"of {max(rows, unit)} rows and still train on {MIN_TRAIN_ROWS}; use an image with at "
            f"least {max(rows, unit) + MIN_TRAIN_ROWS} rows and 2 columns"
        )
    cols = min(w, max_side)
    cols -= cols % 2
    x0 = (w - cols) // 2
    top = _signal_spread(best.image[:rows, x0 : x0 + cols])
    bottom = _signal_spread(best.image[h - rows :, x0 : x0 + cols])
    y0 = 0 if top > TOP_BAND_GAIN * bottom else h - rows
    return ValidationRegion(
        source=best.source,
        name=names[best.source],
        plane=best.plane,
        channel=best.channel,
        y0=y0,
        y1=y0 + rows,
        x0=x0,
        x1=x0 + cols,
    )


TOP_BAND_GAIN = 1.5  # the top band is held out instead when its signal spread is this much larger
SPREAD_PIXELS = 128 * 128  # a plane's spread is measured on about this many pixels


def _subsample(image: np.ndarray) -> np.ndarray:
    """Every n-th row and column, n chosen for about :data:`SPREAD_PIXELS` pixels.

    Why: the held-out plane is picked by its spread among every plane of a stack.
    """
    h, w = image.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / SPREAD_PIXELS)))
    return image[::step, ::step]


def _signal_spread(band: np.ndarray) -> float:
    """1st-99th percentile spread of a band after a 3x3 mean (noise cut about 3-fold)."""
    from scipy import ndimage

    smooth = ndimage.uniform_filter(np.asarray(band, dtype=np.float64), size=(3, 3, 1)[: band.ndim])
    lo, hi = np.percentile(smooth, [1, 99])
    return float(hi - lo)


def split_off_validation(
    items: Sequence[Sample], region: ValidationRegion
) -> tuple[list[np.ndarray], np.ndarray, Sample]:
    """Training images without the held-out rows, the validation crop and its sample.

    Returns
    -------
    train : list of ndarray
        Every sample's image; for the region's source, only the rows outside the band
        (``0:y0``, or ``y1:`` for a top band) of each plane.
    crop : ndarray
        float32 (h, w, C): the region of the region's own plane.
    sample : Sample
        The plane the crop comes from (for mapping back to source units).
    """
    train = []
    chosen = None
    for s in items:
        if s.source == region.source:
            rows = s.image[region.y1 :] if region.y0 == 0 else s.image[: region.y0]
            train.append(np.ascontiguousarray(rows))
            if s.plane == region.plane and s.channel == region.channel:
                chosen = s
        else:
            train.append(s.image)
    if chosen is None:
        raise ValueError(f"the validation plane {region.plane} of '{region.name}' is not a sample")
    crop = np.ascontiguousarray(chosen.image[region.y0 : region.y1, region.x0 : region.x1])
    return train, crop, chosen


def to_source_units(image: np.ndarray, sample: Sample) -> np.ndarray:
    """A normalised (H, W, C) model output back in the source's units and channel layout.

    Split channels (repeated for the model) are averaged back to one, as the
    inference engine does; one-channel results lose their channel axis.
    """
    out = np.asarray(image, dtype=np.float64) * sample.scale + sample.offset
    if sample.channel is not None or out.shape[-1] == 1:
        out = out.mean(axis=-1)
    return out.astype(np.float32)


@dataclass(frozen=True)
class CorruptedPatch:
    """A clean patch, its corrupted version (source units) and where the patch lies."""

    clean: np.ndarray
    noisy: np.ndarray
    info: dict[str, Any]
    plane: tuple[int, ...]
    y0: int
    x0: int


def corrupted_preview(
    source: SourceImage,
    corruption: CorruptionConfig,
    patch_size: int = 128,
    plane: tuple[int, ...] | None = None,
    seed: int = 0,
    black_level: str | float = "camera",
) -> CorruptedPatch:
    """The centre patch of one plane of ``source``, corrupted as training would corrupt it.

    Why: the user sees the training noise before committing minutes of training to it.
    Only that plane is read. The patch is normalised like a training sample, corrupted
    (sigmas relative to the plane's peak) and mapped back to the source's units.

    Parameters
    ----------
    source : SourceImage
    corruption : CorruptionConfig
    patch_size : int
        Side of the patch (smaller planes give smaller patches).
    plane : tuple of int, optional
        Index along the looped axes (default: the first plane).
    seed : int
    black_level : {"camera", "auto", "none"} or float
        As for :func:`samples`: camera data lose their black level before the noise is
        added, as in training, so shot noise does not grow on the camera's offset.

    Returns
    -------
    CorruptedPatch
        ``clean`` and ``noisy`` are float32 (P, P) or (P, P, C) for colour sources.
    """
    _, loop, _ = _layout(source)
    lead = tuple(plane) if plane is not None else (0,) * len(loop)
    if len(lead) != len(loop):
        raise ValueError(
            f"plane={lead} must give {len(loop)} index(es) for '{source.name}' "
            f"(shape {tuple(source.data.shape)})"
        )
    hwc, off, scale = _normaliser(
        _read_plane(source, lead),
        f"'{source.name}' plane {lead}",
        check_black_level(black_level),
        _is_camera(source),
    )
    h, w = hwc.shape[:2]
    ph, pw = min(h, int(patch_size)), min(w, int(patch_size))
    y, x = (h - ph) // 2, (w - pw) // 2
    clean = _norm(hwc[y : y + ph, x : x + pw], off, scale)
    noisy, info = corrupt(clean, corruption, np.random.default_rng([int(seed), 7]))
    s = Sample(clean, 0, lead, None, off, scale)
    return CorruptedPatch(to_source_units(clean, s), to_source_units(noisy, s), info, lead, y, x)
