"""Denoise arrays of any shape with a bias-free model: planes, channels, tiles, dtypes.

Why it looks like this:

* **Tiles give exactly the untiled result.** Each 2-D plane is reflect-padded by a
  margin ``M`` (at least the model's receptive field, a multiple of its size
  multiple) and cut into windows whose cores start at multiples of the size
  multiple, so every core pixel sees the same inputs it would in one pass. The
  padded plane is never built: each window is read from the plane through
  reflected row and column indices and normalised on its own, so the memory on
  top of the input and output is one batch of windows (an 8192^2 plane would
  otherwise add a 256 MiB float32 copy).
* **Scale and offset (black level).** Bias-free nets satisfy ``D(a*y) = a*D(y)``
  for ``a > 0`` but are not offset-equivariant, and were trained on non-negative
  intensities whose zero is "no signal". A camera adds a constant black level
  (offset, e.g. 100 counts), which the net would take for signal. Each plane is
  shifted by an offset and divided by its largest magnitude, denoised in float32,
  then scaled and shifted back. The offset is ``offset=`` when given (a camera's
  known black level); ``"auto"``: the plane's black level from
  :func:`~src_models.noise_model.black_level` (0.5th percentile of the plane after
  a 1-px Gaussian), so ``D(y + c) == D(y) + c`` for any constant ``c``; None: the
  plane minimum when negative, else 0. Scaling is exact by homogeneity and keeps
  float ranges from 1e-30 to 1e30 inside float32.
* **Non-finite pixels** (NaN, inf) are replaced by the median of the finite
  values of their plane and channel before denoising, with a warning, so the
  output never holds NaN.
* **Test-time augmentation** (``tta=``): the output can be the average of the model
  on 2, 4 or 8 flips and transposes of each tile, each mapped back. An average of
  homogeneous maps is homogeneous, so the result stays bias-free; tiles still give
  the untiled result (windows are multiples of the size multiple, so a flip keeps
  the pooling grid). Measured (bench, 8 transforms): +0.1 to +0.25 dB
  at σ 15-50, up to +0.7 dB at σ 1-5, for 8 times the work.
* **Strength** (``strength=``): the output can be ``y + s * (D(y) - y)``, a blend of the
  input and the denoised image (``s`` in [0, 1]; 1, the default, is the model alone). A
  blind denoiser removes whatever looks like noise, the fine grain of a nearly clean image
  included; a lower strength keeps part of it. The blend is homogeneous too, and its
  adaptive filter is ``(1 - s) I + s J(y)``.
* **Progress and cancel.** :meth:`Denoiser.denoise_iter` is a generator that
  yields a :class:`Progress` after every batch of at most one tile's worth of
  pixels and the result last, so a GUI worker can report and stop it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # keras is imported lazily: importing this module stays cheap
    import keras

    from .config import ModelCard

__all__ = [
    "AUTO_OFFSET",
    "TTA_CHOICES",
    "Cancelled",
    "Denoiser",
    "Progress",
    "blend",
    "estimate_sigma",
]

MAX_CORE = 1024  # automatic tiling: cores at most this many pixels per side (at least, see below)
# automatic tiling of denoise(): the largest window (core + both margins) whose pixels times
# the model's channels stay within this. Sized so that gray U-Nets denoise 2048^2 in one tile
# instead of four: 2048 + 2 * 160, the margin of `gray` with noise biases (one window costs
# 1.34x the image, four of 1344^2 cost 1.72x; at 2304^2, 2048^2 ran as four windows and 25 %
# slower than the same U-Net without noise biases, margin 112, in one). An 8192^2 gray image
# is then sixteen 2368^2 windows (bench memory run: peak in README)
WINDOW_PIXELS = 2368 * 2368
# ... but only for models whose margins would make 1024-px windows this much larger than their
# cores (gray U-Nets: (1024 + 2*112)^2 / 1024^2 = 1.49). Models with small margins (1.1 for
# gray-dncnn) gain nothing from bigger tiles and lose cache locality and memory: gray-fast, with
# a margin of 32 then, ran at 4.9 Mpix/s on 2048^2 with one tile against 6.6 with four (bench
# speed). Noise biases widened its margin to 72 (1.30) and gray's to 160.
GROW_OVERHEAD = 1.25
BATCH_PIXELS = 1 << 20  # windows per model call: about one large tile's worth of pixels
MIN_SIDE = 4  # smallest spatial size accepted
_CHUNK = 1 << 18  # pixels per float64 chunk while normalising a plane

TileArg = int | tuple[int, int] | None
OffsetArg = float | str | None  # a black level, "auto", or None
AUTO_OFFSET = "auto"
TTA_CHOICES = (1, 2, 4, 8)  # transforms averaged: none, + vertical flip, + both flips, + transposes


@dataclass(frozen=True)
class Progress:
    """How many tiles of the whole call are done."""

    done: int
    total: int


class Cancelled(Exception):
    """Raised by :meth:`Denoiser.denoise` when its ``cancel`` callback returns True."""


# --------------------------------------------------------------------------- input layout


@dataclass(frozen=True)
class _Layout:
    """Which axes are channels, looped planes and the two spatial axes."""

    shape: tuple[int, ...]
    channel_axis: int | None
    lead_axes: tuple[int, ...]
    spatial_axes: tuple[int, int]

    @property
    def channels(self) -> int:
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def height(self) -> int:
        return self.shape[self.spatial_axes[0]]

    @property
    def width(self) -> int:
        return self.shape[self.spatial_axes[1]]

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.lead_axes)

    def index(self, lead: tuple[int, ...], chans: slice, ys: slice, xs: slice) -> tuple:
        """Index into the original array for one plane's channels and a spatial box."""
        idx: list[Any] = [slice(None)] * len(self.shape)
        for a, i in zip(self.lead_axes, lead, strict=True):
            idx[a] = i
        idx[self.spatial_axes[0]] = ys
        idx[self.spatial_axes[1]] = xs
        if self.channel_axis is not None:
            idx[self.channel_axis] = chans
        return tuple(idx)

    def to_hwc(self, block: np.ndarray) -> np.ndarray:
        """Indexed block (original axis order) -> (H, W, C)."""
        if self.channel_axis is None:
            return block[..., None]
        return np.moveaxis(block, self._channel_pos(), -1)

    def from_hwc(self, block: np.ndarray) -> np.ndarray:
        """(H, W, C) -> the indexed block's axis order."""
        if self.channel_axis is None:
            return block[..., 0]
        return np.moveaxis(block, -1, self._channel_pos())

    def _channel_pos(self) -> int:
        return sorted((self.channel_axis, *self.spatial_axes)).index(self.channel_axis)


def _as_array_like(array: Any) -> Any:
    """Keep arrays and lazy arrays (anything with shape, dtype and indexing); convert the rest."""
    if all(hasattr(array, a) for a in ("shape", "dtype", "__getitem__")):
        return array
    return np.asarray(array)


def _layout(array: Any, channel_axis: int | None) -> _Layout:
    """Validate dtype, shape and channel axis; raise naming the bad value."""
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "iuf":
        raise TypeError(
            f"cannot denoise an image of dtype {dtype}: expected integers or real floats"
        )
    shape = tuple(int(s) for s in array.shape)
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"an image needs at least 2 dimensions (got shape {shape})")
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
            raise TypeError(f"channel_axis must be an int or None (got {channel_axis!r})")
        if not -ndim <= channel_axis < ndim:
            raise ValueError(
                f"channel_axis={channel_axis} is out of range for an image with {ndim} dimensions"
            )
        channel_axis = int(channel_axis) % ndim
    others = [a for a in range(ndim) if a != channel_axis]
    if len(others) < 2:
        raise ValueError(
            f"an image of shape {shape} with channel_axis={channel_axis} has fewer than "
            "2 spatial axes"
        )
    if 0 in shape:
        raise ValueError(f"cannot denoise an empty image (shape {shape})")
    spatial = (others[-2], others[-1])
    if channel_axis is None and ndim >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        raise ValueError(
            f"an image of shape {shape} looks like {shape[-1]} channels last (RGB, RGBA): pass "
            "channel_axis=-1; without it the last two axes are the planes' height and width"
        )
    if min(shape[a] for a in spatial) < MIN_SIDE:
        raise ValueError(
            f"image of shape {shape} is too small: its spatial axes "
            f"({shape[spatial[0]]}, {shape[spatial[1]]}) must be at least {MIN_SIDE} pixels"
        )
    return _Layout(shape, channel_axis, tuple(others[:-2]), spatial)


# --------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class _Tiling:
    """Geometry shared by every plane of one call (all planes have the same size)."""

    margin: int
    core: tuple[int, int]  # core size (multiple of size_multiple)
    padded: tuple[int, int]  # padded plane size
    extra: tuple[int, int]  # bottom/right padding up to a multiple of size_multiple
    starts: tuple[tuple[int, ...], tuple[int, ...]]  # core starts per axis (original coords)

    @property
    def window(self) -> tuple[int, int]:
        return self.core[0] + 2 * self.margin, self.core[1] + 2 * self.margin

    @property
    def count(self) -> int:
        return len(self.starts[0]) * len(self.starts[1])

    def boxes(self) -> Iterator[tuple[int, int]]:
        for y in self.starts[0]:
            for x in self.starts[1]:
                yield y, x


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def auto_core(receptive_field: int, multiple: int, channels: int) -> int:
    """Automatic core side: MAX_CORE, or up to :data:`WINDOW_PIXELS` for wide-margin models.

    Why: a window costs (core + 2 margin)^2; bigger cores pay off only where the margins are
    a large share of that (see :data:`GROW_OVERHEAD`).
    """
    margin = _round_up(receptive_field, multiple)
    if ((MAX_CORE + 2 * margin) / MAX_CORE) ** 2 < GROW_OVERHEAD:
        return MAX_CORE
    side = math.isqrt(WINDOW_PIXELS // max(1, int(channels))) - 2 * margin
    return max(MAX_CORE, side)


def _core_size(length: int, tile: int | None, multiple: int, max_core: int = MAX_CORE) -> int:
    """Core size along one axis of aligned length ``length`` (a multiple of ``multiple``)."""
    if tile is None:
        n = math.ceil(length / max_core)
        tile = math.ceil(length / n)
    return min(_round_up(max(int(tile), 1), multiple), length)


def _starts(length: int, core: int) -> tuple[int, ...]:
    """Core starts k*core, the last one moved back so its window stays inside the plane."""
    n = math.ceil(length / core)
    return tuple(min(k * core, length - core) for k in range(n))


def _tiling(
    height: int,
    width: int,
    tile: TileArg,
    receptive_field: int,
    multiple: int,
    max_core: int = MAX_CORE,
) -> _Tiling:
    if tile is None or isinstance(tile, (int, np.integer)):
        tiles = (tile, tile)
    else:
        tiles = tuple(tile)
        if len(tiles) != 2:
            raise ValueError(f"tile must be an int or a (height, width) pair (got {tile!r})")
    for t in tiles:
        if t is not None and (isinstance(t, bool) or int(t) < 1):
            raise ValueError(f"tile sizes must be positive integers (got tile={tile!r})")
    margin = _round_up(receptive_field, multiple)
    extra = ((-height) % multiple, (-width) % multiple)
    lengths = (height + extra[0], width + extra[1])
    core = tuple(
        _core_size(n, t, multiple, max_core) for n, t in zip(lengths, tiles, strict=True)
    )
    return _Tiling(
        margin=margin,
        core=core,
        padded=(lengths[0] + 2 * margin, lengths[1] + 2 * margin),
        extra=extra,
        starts=(_starts(lengths[0], core[0]), _starts(lengths[1], core[1])),
    )


# --------------------------------------------------------------------------- augmentation


def _check_tta(tta: Any) -> int:
    if isinstance(tta, bool) or tta not in TTA_CHOICES:
        raise ValueError(
            f"tta must be one of {', '.join(map(str, TTA_CHOICES))} "
            f"(transforms averaged; 1 = off), got {tta!r}"
        )
    return int(tta)


def _check_strength(strength: Any) -> float:
    """A number in [0, 1]; raise naming the bad value."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(strength, (bool, str)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"strength must be a number from 0 (the input unchanged) to 1 (the model's "
            f"output), got {strength!r}"
        )
    return value


def blend(noisy: np.ndarray, denoised: np.ndarray, strength: float) -> np.ndarray:
    """``noisy + strength * (denoised - noisy)``; ``denoised`` itself at strength 1.

    Why a blend and not a weaker model: it is linear in both images, so the result stays
    homogeneous (bias-free) and tiles still give the untiled result.
    """
    if strength == 1.0:
        return denoised
    return noisy + np.float32(strength) * (denoised - noisy)


def _transform(batch: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform ``k`` (0-7) of an (N, H, W, C) batch: bit 2 transposes, then bit 0
    flips rows and bit 1 flips columns."""
    if k & 4:
        batch = batch.transpose(0, 2, 1, 3)
    if k & 1:
        batch = batch[:, ::-1]
    if k & 2:
        batch = batch[:, :, ::-1]
    return np.ascontiguousarray(batch)


def _untransform(batch: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`_transform` (a view)."""
    if k & 2:
        batch = batch[:, :, ::-1]
    if k & 1:
        batch = batch[:, ::-1]
    if k & 4:
        batch = batch.transpose(0, 2, 1, 3)
    return batch


def predict_transformed(
    predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, k: int
) -> np.ndarray:
    """``predict`` on dihedral transform ``k`` of an (N, H, W, C) batch, mapped back."""
    return _untransform(predict(_transform(batch, k)), k)


def _averaging(
    predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, tta: int
) -> Generator[None, None, np.ndarray]:
    """Sum :func:`predict_transformed` over the first ``tta`` transforms, yielding between
    them (points to report and cancel at); returns the float32 mean."""
    total = None
    for k in range(tta):
        pred = predict_transformed(predict, batch, k)
        total = pred.astype(np.float32) if total is None else total + pred
        if k < tta - 1:
            yield
    return total / tta if tta > 1 else total


def predict_averaged(
    predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, tta: int
) -> np.ndarray:
    """The mean of :func:`predict_transformed` over the first ``tta`` transforms (float32)."""
    steps = _averaging(predict, batch, tta)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


# --------------------------------------------------------------------------- one plane


def padded_index(length: int, margin: int, extra: int) -> np.ndarray:
    """Plane index of every row (or column) of the reflect-padded plane the windows tile."""
    return np.pad(np.arange(length), (margin, margin + extra), mode="reflect")


def _window_rows(index: np.ndarray, start: int, size: int) -> slice | np.ndarray:
    """Rows ``start:start + size`` of the padded plane: a slice where no reflection falls."""
    rows = index[start : start + size]
    if rows[-1] - rows[0] == size - 1 and (size == 1 or bool(np.all(np.diff(rows) == 1))):
        return slice(int(rows[0]), int(rows[0]) + size)
    return rows


@dataclass
class _Plane:
    """One (H, W, c) plane as given (never copied unless it had NaN/inf) and its normalisation."""

    lead: tuple[int, ...]
    chans: slice
    pixels: np.ndarray  # (H, W, c), the caller's dtype
    rows: np.ndarray  # plane row of each padded row (padded_index)
    cols: np.ndarray
    offset: float
    scale: float
    repeat: int  # >1: channel fed `repeat` times, outputs averaged

    def window(self, y: int, x: int, size: tuple[int, int]) -> np.ndarray:
        """Padded rows y.., columns x.. as normalised float32 (one window's copy only)."""
        r = _window_rows(self.rows, y, size[0])
        c = _window_rows(self.cols, x, size[1])
        both = not isinstance(r, slice) and not isinstance(c, slice)
        src = self.pixels[np.ix_(r, c)] if both else self.pixels[r, c]
        return _normalise(src, self.offset, self.scale)


def _fill_non_finite(
    plane: np.ndarray, where: str, empty: float | None = None
) -> tuple[np.ndarray, int]:
    """Replace NaN/inf by the median of the finite values of each channel of an (H, W, C) plane.

    ``empty``: the value for a channel without any finite value; None raises instead.
    """
    finite = np.isfinite(plane)
    bad = int(finite.size - np.count_nonzero(finite))
    if not bad:
        return plane, 0
    filled = np.array(plane, copy=True)
    for c in range(plane.shape[-1]):
        ok = finite[..., c]
        if not ok.any() and empty is None:
            raise ValueError(
                f"{where} has no finite values (all NaN or inf): nothing to fill it from"
            )
        filled[..., c][~ok] = np.median(plane[..., c][ok]) if ok.any() else empty
    return filled, bad


def _normalise(plane: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """(plane - offset) / scale as float32, in float64 chunks (exact, bounded memory)."""
    out = np.empty(plane.shape, dtype=np.float32)
    rows = max(1, _CHUNK // max(1, plane[0].size))
    for r in range(0, plane.shape[0], rows):
        out[r : r + rows] = (plane[r : r + rows].astype(np.float64) - offset) / scale
    return out


def _check_offset(offset: Any) -> OffsetArg:
    """A finite number, ``"auto"`` or None; raise naming the bad value."""
    if offset is None or (isinstance(offset, str) and offset == AUTO_OFFSET):
        return offset
    try:
        value = float(offset)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(offset, (bool, str)) or not math.isfinite(value):
        raise ValueError(f"offset must be a finite number, 'auto' or None (got {offset!r})")
    return value


def channel_groups(image_channels: int, model_channels: int) -> list[tuple[slice, int]]:
    """The image channels each model pass sees, as ``(channel slice, repeat)``.

    Why one rule for every caller (denoising, lazy denoising, interpretation): a
    model with as many channels as the image runs on all of them jointly; otherwise
    each channel runs alone, repeated ``repeat`` times to fill the model's input and
    the outputs averaged. The filters shown must come from the same passes.
    """
    if image_channels == model_channels:
        return [(slice(None), 1)]
    return [(slice(c, c + 1), model_channels) for c in range(image_channels)]


def read_prepared_plane(
    array: Any, layout: _Layout, lead: tuple[int, ...], chans: slice, offset: OffsetArg
) -> tuple[np.ndarray, float, float, int]:
    """One plane's channels as (H, W, c), NaN/inf filled, with its offset and scale.

    Why shared: the Denoiser and the interpretation must subtract and divide by the
    very same numbers, or ``D(y) = J(y) y`` would describe another output. Returns
    (plane, offset, scale, count of non-finite pixels filled).
    """
    full = slice(None)
    plane = layout.to_hwc(np.asarray(array[layout.index(lead, chans, full, full)]))
    bad = 0
    if plane.dtype.kind == "f":
        plane, bad = _fill_non_finite(plane, f"plane {lead}" if lead else "the image")
    if offset == AUTO_OFFSET:
        from .noise_model import black_level

        offset = black_level(plane)
    off, scale = _offset_and_scale(plane, offset)
    return plane, off, scale, bad


def _offset_and_scale(plane: np.ndarray, offset: float | None) -> tuple[float, float]:
    """The plane's offset (given, else its minimum if negative, else 0) and largest magnitude."""
    lo, hi = float(plane.min()), float(plane.max())
    if offset is None:
        offset = min(lo, 0.0)
    scale = max(hi - offset, offset - lo)
    if scale == 0:
        scale = 1.0
    elif not math.isfinite(scale):  # only for float64 values near its overflow limit
        scale = float(np.finfo(np.float64).max)
    return float(offset), scale


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 -> the output dtype: rounded and clipped for integers, float32 otherwise."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        hi = float(info.max)
        if int(hi) > info.max:  # 64-bit: float64 rounds the max up; step below so it never wraps
            hi = float(np.nextafter(hi, 0.0))
        return np.clip(np.rint(values), float(info.min), hi).astype(dtype)
    big = float(np.finfo(np.float32).max)
    return np.clip(values, -big, big).astype(np.float32)


ENV_XLA = "NAPARI_BFCNN_XLA"  # "1" / "0": compile every model with XLA / none (TensorFlow)
XLA_MIN_WIDTH = 32


def use_xla(card: Any) -> bool:
    """Whether TensorFlow should compile this model's inference with XLA.

    Why by width: on a 2-core CPU at 2048^2, XLA made the 32-channel ``gray`` 27 %
    and ``gray-dncnn`` 45 % faster (fused scale and activation ops), but the
    16-channel ``gray-fast`` 14 % and ``color-fast`` 11 % slower (its convolutions
    lose to oneDNN's at that width): ``python -m src_models.bench --sections speed``
    with ``NAPARI_BFCNN_XLA`` = 0 / 1 against the default (bench_out/s7, s7_xla_off,
    s7_xla_on). That variable overrides the rule for every model.
    """
    forced = os.environ.get(ENV_XLA, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    recipe = getattr(card, "recipe", None)
    width = getattr(getattr(recipe, "architecture", None), "width", None)
    return isinstance(width, int) and width >= XLA_MIN_WIDTH


# --------------------------------------------------------------------------- the denoiser


class Denoiser:
    """A bias-free model plus its card, applied to arrays of any shape.

    Parameters
    ----------
    model : keras.Model
        Maps (N, H, W, channels) float32 images to denoised images.
    card : ModelCard
        Its card: channels, receptive_field (half-width, px), size_multiple.
    name : str, optional
        Display name; defaults to ``card.name``.
    """

    def __init__(self, model: keras.Model, card: ModelCard, name: str | None = None):
        self.model = model
        self.card = card
        self.name = name or card.name
        self.channels = int(card.channels)
        model_channels = model.input_shape[-1] if hasattr(model, "input_shape") else None
        if model_channels is not None and int(model_channels) != self.channels:
            raise ValueError(
                f"model {self.name!r} takes {model_channels} channels but its card says "
                f"{self.channels}"
            )
        self._predict: Callable[[np.ndarray], np.ndarray] | None = None

    def __repr__(self) -> str:
        c = self.card
        return (
            f"Denoiser(name={self.name!r}, channels={self.channels}, kind={c.kind!r}, "
            f"receptive_field={c.receptive_field}, size_multiple={c.size_multiple})"
        )

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an (N, H, W, channels) float32 batch (H, W: multiples of the card's)."""
        if self._predict is None:
            from .backend import compiled_predict

            self._predict = compiled_predict(self.model, xla=use_xla(self.card))
        return self._predict(batch)

    # ------------------------------------------------------------------ public API

    def denoise(
        self,
        array: Any,
        *,
        channel_axis: int | None = None,
        tile: TileArg = None,
        offset: OffsetArg = None,
        tta: int = 1,
        strength: float = 1.0,
        progress: Callable[[int, int], Any] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Denoise an image or stack; see :meth:`denoise_iter` for the arguments.

        Parameters
        ----------
        progress : callable, optional
            Called as ``progress(done, total)`` after every batch of tiles (and transform).
        cancel : callable, optional
            Polled after every batch; returning True raises :class:`Cancelled`.

        Returns
        -------
        np.ndarray
            Same shape; same dtype for integers, float32 for floats.
        """
        gen = self.denoise_iter(
            array, channel_axis=channel_axis, tile=tile, offset=offset, tta=tta, strength=strength
        )
        try:
            for item in gen:
                if not isinstance(item, Progress):
                    return item
                if progress is not None:
                    progress(item.done, item.total)
                if cancel is not None and cancel():
                    raise Cancelled(f"denoising cancelled after {item.done} of {item.total} tiles")
        finally:
            gen.close()
        raise RuntimeError("denoise_iter ended without a result")  # pragma: no cover

    def denoise_iter(
        self,
        array: Any,
        *,
        channel_axis: int | None = None,
        tile: TileArg = None,
        offset: OffsetArg = None,
        tta: int = 1,
        strength: float = 1.0,
    ) -> Iterator[Progress | np.ndarray]:
        """Denoise step by step: yield :class:`Progress` per batch, then the result array.

        Parameters
        ----------
        array : array-like
            Any real numeric dtype. The last two non-channel axes are Y, X; all
            other axes (Z, T, ...) are looped over plane by plane. Lazy arrays
            (dask, zarr) are read one plane at a time.
        channel_axis : int, optional
            Axis holding channels (may be negative); None for a single channel.
            A model with as many channels as the image runs on all jointly;
            otherwise each channel runs alone, repeated to the model's channel
            count and the outputs averaged (a 3-channel model on gray).
        tile : int or (int, int), optional
            Tile core size in pixels (rounded up to the size multiple). None
            chooses: the whole plane up to :func:`auto_core` px per side (2080 for
            the bundled gray U-Nets, 1024 for the others), else near-equal cores
            of at most that size.
        offset : float or "auto", optional
            Black level, subtracted before and added back after denoising (in the
            data's units, one value for all planes). ``"auto"``: estimated per
            plane (see the module docstring), right for camera data with an
            unknown offset. None: 0 for planes whose minimum is >= 0, else the
            plane minimum (negative images are shifted to start at 0 and back).
        tta : {1, 2, 4, 8}
            Test-time augmentation: average the model over this many flips and
            transposes of each tile (1: off; 4: the flips; 8: flips and transposes,
            +0.1 to +0.25 dB at σ 15-50 and up to +0.7 dB at σ 1-5 in the benchmark,
            for 8 times the work). Stays homogeneous.
        strength : float
            From 0 to 1: the output is ``y + strength * (D(y) - y)`` (1: the model's
            output; less keeps part of the input's noise and fine grain, for nearly
            clean images or a less smooth look). Stays homogeneous.

        Returns
        -------
        Iterator[Progress | np.ndarray]
            A generator yielding ``Progress(0, total)`` first, ``Progress(done,
            total)`` after every batch (at most one tile's worth of pixels
            apart), and the result array last: same shape, same dtype for
            integers (rounded, clipped), float32 for floats. Stopping it (or
            dropping it) between yields cancels the work. Bad arguments raise
            at the call, before any yield.
        """
        # validated here, eagerly: a bad call fails when made, not at the first next()
        array = _as_array_like(array)
        layout = _layout(array, channel_axis)
        offset = _check_offset(offset)
        tta = _check_tta(tta)
        strength = _check_strength(strength)
        rf, multiple = int(self.card.receptive_field), int(self.card.size_multiple)
        tiling = _tiling(
            layout.height,
            layout.width,
            tile,
            rf,
            multiple,
            auto_core(rf, multiple, self.channels),
        )
        return self._iterate(array, layout, tiling, offset, tta, strength)

    # ------------------------------------------------------------------ internals

    def _iterate(
        self,
        array: Any,
        layout: _Layout,
        tiling: _Tiling,
        offset: OffsetArg,
        tta: int,
        strength: float = 1.0,
    ) -> Iterator[Progress | np.ndarray]:
        in_dtype = np.dtype(array.dtype)
        out_dtype = in_dtype if in_dtype.kind in "iu" else np.dtype(np.float32)
        groups = channel_groups(layout.channels, self.channels)
        n_planes = math.prod(layout.lead_shape) * len(groups)
        total = n_planes * tiling.count * tta  # one step: a tile through one transform
        wy, wx = tiling.window
        batch_size = max(1, BATCH_PIXELS // (wy * wx))

        out = np.empty(layout.shape, dtype=out_dtype)
        done = 0
        warned = False
        batch: list[tuple[_Plane, int, int]] = []
        yield Progress(0, total)
        for lead in np.ndindex(*layout.lead_shape):
            for chans, repeat in groups:
                plane, bad = self._prepare(array, layout, tiling, lead, chans, repeat, offset)
                if bad and not warned:
                    warnings.warn(
                        f"the image has non-finite pixels (NaN or inf; {bad} in plane {lead}): "
                        "they are replaced by the median of the finite values of their plane "
                        "before denoising",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    warned = True
                for y, x in tiling.boxes():
                    batch.append((plane, y, x))
                    if len(batch) == batch_size:
                        for _ in self._run(batch, tiling, layout, out, tta, strength):
                            done += len(batch)
                            yield Progress(done, total)
                        batch = []
        if batch:
            for _ in self._run(batch, tiling, layout, out, tta, strength):
                done += len(batch)
                yield Progress(done, total)
            batch = []
        yield out

    def _prepare(
        self,
        array: Any,
        layout: _Layout,
        tiling: _Tiling,
        lead: tuple[int, ...],
        chans: slice,
        repeat: int,
        offset: OffsetArg,
    ) -> tuple[_Plane, int]:
        """Read one plane, fill non-finite pixels, find its offset and scale."""
        plane, off, scale, bad = read_prepared_plane(array, layout, lead, chans, offset)
        m = tiling.margin
        rows = padded_index(layout.height, m, tiling.extra[0])
        cols = padded_index(layout.width, m, tiling.extra[1])
        return _Plane(lead, chans, plane, rows, cols, off, scale, repeat), bad

    def _run(
        self,
        batch: list[tuple[_Plane, int, int]],
        tiling: _Tiling,
        layout: _Layout,
        out: np.ndarray,
        tta: int = 1,
        strength: float = 1.0,
    ) -> Iterator[None]:
        """Run one batch of equal-size windows and write their cores into ``out``.

        Yields once per transform of ``tta`` (the last after the cores are written): the
        points to report progress and cancel at.
        """
        wy, wx = tiling.window
        windows = [p.window(y, x0, (wy, wx)) for p, y, x0 in batch]
        x = windows[0][None] if len(windows) == 1 else np.stack(windows)
        del windows
        repeat = batch[0][0].repeat
        y_hat = yield from _averaging(
            self.predict_batch, np.repeat(x, repeat, axis=-1) if repeat > 1 else x, tta
        )
        if repeat > 1:
            y_hat = y_hat.mean(axis=-1, keepdims=True)
        y_hat = blend(x, y_hat, strength)
        m = tiling.margin
        cy, cx = tiling.core
        for (plane, y0, x0), pred in zip(batch, y_hat, strict=True):
            h = min(cy, layout.height - y0)
            w = min(cx, layout.width - x0)
            if h <= 0 or w <= 0:  # a core lying wholly in the size-multiple padding
                continue
            core = pred[m : m + h, m : m + w].astype(np.float64) * plane.scale + plane.offset
            idx = layout.index(plane.lead, plane.chans, slice(y0, y0 + h), slice(x0, x0 + w))
            out[idx] = layout.from_hwc(_cast_like(core, out.dtype))
        yield


# --------------------------------------------------------------------------- noise level


def estimate_sigma(array: Any, channel_axis: int | None = None, max_planes: int = 8) -> float:
    """Estimate the Gaussian noise sigma in the array's own units (wavelet MAD).

    Why: the plugin shows it next to the model's trained sigma range. Uses
    :func:`skimage.restoration.estimate_sigma` per 2-D plane and channel,
    averaged; stacks are sampled at up to ``max_planes`` evenly spaced planes.

    Parameters
    ----------
    array : array-like
        Image or stack, any real dtype.
    channel_axis : int, optional
        Channel axis, averaged over.
    max_planes : int
        Planes of a stack to look at.

    Returns
    -------
    float
    """
    from skimage.restoration import estimate_sigma as _skimage_sigma

    array = _as_array_like(array)
    layout = _layout(array, channel_axis)
    leads = list(np.ndindex(*layout.lead_shape))
    if len(leads) > max_planes:
        leads = [leads[i] for i in np.linspace(0, len(leads) - 1, max_planes).round().astype(int)]
    full = slice(None)
    sigmas = []
    for lead in leads:
        plane = layout.to_hwc(np.asarray(array[layout.index(lead, full, full, full)]))
        plane = plane.astype(np.float64)
        plane, _ = _fill_non_finite(plane, f"plane {lead}" if lead else "the image")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for c in range(plane.shape[-1]):
                sigmas.append(float(_skimage_sigma(plane[..., c], channel_axis=None)))
    return float(np.mean(sigmas))
