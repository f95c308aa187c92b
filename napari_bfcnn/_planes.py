"""Split an image into the planes the engine denoises and assemble the results.

Why in the plugin and not the engine: layers may be lazy dask or zarr stacks, so
the plugin reads one plane at a time (``np.asarray(data[index])``) and never
materialises a whole stack. Pure numpy: no napari or Qt import, so the function
contribution and tests use it directly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PlanePlan",
    "PlaneResult",
    "ResultTooLarge",
    "check_memory",
    "iter_denoise",
    "output_dtype",
    "plan_planes",
    "run_to_end",
]

Index = tuple  # tuple of int | slice, one entry per array axis


@dataclass(frozen=True)
class PlanePlan:
    """Which planes to read from the input and where each result goes.

    Attributes
    ----------
    in_shape, out_shape : tuple of int
        Shapes of the input and of the output (loop axes fixed by ``fixed`` have size 1).
    channel_axis : int or None
        Non-negative channel axis of the input, if any.
    joint : bool
        Channels go to the model together (colour model); otherwise one plane per channel.
    alpha : bool
        The last channel is RGBA alpha: copied, never denoised.
    fixed : dict
        Axis -> index for axes restricted to one position (current-slice preview).
    planes : list of (Index, Index)
        Input index and output index of each plane.
    plane_channel_axis : int or None
        Channel axis inside one extracted plane (joint mode only).
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    channel_axis: int | None
    joint: bool
    alpha: bool
    fixed: dict[int, int] = field(default_factory=dict)
    planes: list[tuple[Index, Index]] = field(default_factory=list)
    plane_channel_axis: int | None = None

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of the removed-noise array: the output without the alpha channel."""
        if not self.alpha:
            return self.out_shape
        return self.out_shape[:-1] + (self.out_shape[-1] - 1,)

    def alpha_indices(self) -> tuple[Index, Index]:
        """Input and output index of the alpha channel (restricted to the fixed axes)."""
        src = [slice(None)] * len(self.in_shape)
        dst = [slice(None)] * len(self.in_shape)
        for ax, ix in self.fixed.items():
            src[ax] = slice(ix, ix + 1)
            dst[ax] = slice(0, 1)
        src[-1] = dst[-1] = self.in_shape[-1] - 1
        return tuple(src), tuple(dst)


def spatial_axes(ndim: int, channel_axis: int | None) -> tuple[int, int]:
    """The last two axes that are not the channel axis."""
    axes = [a for a in range(ndim) if a != channel_axis]
    return axes[-2], axes[-1]


def plan_planes(
    shape: tuple[int, ...],
    channel_axis: int | None = None,
    *,
    joint: bool = False,
    alpha: bool = False,
    fixed: dict[int, int] | None = None,
) -> PlanePlan:
    """Plan the per-plane reads and writes for an image of ``shape``.

    Parameters
    ----------
    shape : tuple of int
    channel_axis : int, optional
        Axis holding channels (non-negative or negative).
    joint : bool
        Keep the channels together in each plane (a colour model); otherwise
        every channel is its own gray plane.
    alpha : bool
        The channel axis is last and its last entry is alpha (copied untouched).
    fixed : dict, optional
        Loop axes restricted to one index (preview of the current slice).

    Returns
    -------
    PlanePlan
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise ValueError(
                f"channel_axis={channel_axis} is out of range for an image with {ndim} dimensions"
            )
        channel_axis %= ndim
    if alpha and channel_axis != ndim - 1:
        raise ValueError("alpha needs the channel axis last (RGBA)")
    if joint and channel_axis is None:
        raise ValueError("joint (colour) denoising needs a channel axis")
    sy, sx = spatial_axes(ndim, channel_axis)
    fixed = {a % ndim: int(i) for a, i in (fixed or {}).items() if a % ndim not in (sy, sx)}
    fixed.pop(channel_axis, None)
    n_colour = shape[channel_axis] - (1 if alpha else 0) if channel_axis is not None else 0

    ranges: list[list[int | slice]] = []
    for ax in range(ndim):
        if ax in (sy, sx):
            ranges.append([slice(None)])
        elif ax == channel_axis:
            ranges.append([slice(0, n_colour)] if joint else list(range(n_colour)))
        elif ax in fixed:
            ranges.append([fixed[ax]])
        else:
            ranges.append(list(range(shape[ax])))
    planes = []
    for src in itertools.product(*ranges):
        dst = tuple(0 if ax in fixed else ix for ax, ix in enumerate(src))
        planes.append((tuple(src), dst))
    out_shape = tuple(1 if ax in fixed else s for ax, s in enumerate(shape))
    plane_channel_axis = None
    if joint:
        plane_channel_axis = sorted((channel_axis, sy, sx)).index(channel_axis)
    return PlanePlan(
        shape, out_shape, channel_axis, joint, alpha, fixed, planes, plane_channel_axis
    )


def output_dtype(dtype: np.dtype) -> np.dtype:
    """Integers keep their dtype; everything else becomes float32 (the engine's rule)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.kind in "iu" else np.dtype(np.float32)


@dataclass
class PlaneResult:
    """Assembled output of :func:`iter_denoise`."""

    denoised: np.ndarray
    noise: np.ndarray | None = None
    skipped: list[Index] = field(default_factory=list)  # planes with no finite pixel


MEMORY_SHARE = 0.8  # results may take at most this share of the memory available now


class ResultTooLarge(MemoryError):
    """The results would not fit in the memory free now; the message says what to do."""


def check_memory(plan: PlanePlan, dtype, with_noise: bool = False) -> None:
    """Raise :class:`ResultTooLarge`, saying what to do, if the results would not fit in RAM.

    Why before allocating: numpy's ``empty`` succeeds on Linux whatever the size
    (memory is overcommitted), and the process is killed later, halfway through,
    taking napari and every unsaved layer with it.
    """
    need = math.prod(plan.out_shape) * np.dtype(dtype).itemsize
    if with_noise:
        need += math.prod(plan.noise_shape) * 4
    check_free_memory(
        need,
        "the result",
        "preview the current slice, or denoise the file chunk by chunk into zarr with the "
        "command line (napari-bfcnn denoise FILE --out DIR)",
    )


def check_free_memory(need: float, what: str, advice: str) -> None:
    """Raise :class:`ResultTooLarge` if ``need`` bytes exceed the share of free memory we allow."""
    try:
        import psutil  # napari's dependency
    except ImportError:  # without it, no check: the allocation decides
        return
    available = psutil.virtual_memory().available
    if need > MEMORY_SHARE * available:
        raise ResultTooLarge(
            f"{what} would take {need / 2**30:.1f} GiB and {available / 2**30:.1f} GiB "
            f"of memory are free: {advice}"
        )


def iter_denoise(
    denoiser,
    data,
    plan: PlanePlan,
    *,
    tile: int | None = None,
    with_noise: bool = False,
    offset: float | str | None = None,
    tta: int = 1,
    strength: float = 1.0,
) -> Generator[float, None, PlaneResult]:
    """Denoise ``data`` plane by plane; yield the fraction done, return a :class:`PlaneResult`.

    Each yield is a point where a Qt worker may stop (cancel between tiles).
    Non-finite pixels are filled with the plane median for the model and put
    back afterwards; planes with no finite pixel are passed through and listed
    in ``skipped``. ``offset`` is the engine's black level (a number, ``"auto"``
    or None), applied to every plane; ``tta`` the engine's test-time augmentation,
    ``strength`` its blend of input and output.
    """
    dtype = output_dtype(data.dtype)
    check_memory(plan, dtype, with_noise)
    out = np.empty(plan.out_shape, dtype=dtype)
    noise = np.empty(plan.noise_shape, dtype=np.float32) if with_noise else None
    skipped: list[Index] = []
    n = max(len(plan.planes), 1)
    for i, (src, dst) in enumerate(plan.planes):
        plane = np.asarray(data[src])
        bad = None
        if plane.dtype.kind == "f":
            finite = np.isfinite(plane)
            if not finite.any():
                out[dst] = plane
                if noise is not None:
                    noise[dst] = np.nan
                skipped.append(src)
                yield (i + 1) / n
                continue
            if not finite.all():
                bad = ~finite
                plane_in = _fill_per_channel(plane, finite, plan.plane_channel_axis)
            else:
                plane_in = plane
        else:
            plane_in = plane
        result = None
        for item in denoiser.denoise_iter(
            plane_in, channel_axis=plan.plane_channel_axis, tile=tile or None, offset=offset,
            tta=tta, strength=strength,
        ):
            if isinstance(item, np.ndarray):
                result = item
            else:
                yield (i + min(item.done / max(item.total, 1), 1.0)) / n
        if result is None:  # pragma: no cover - engine contract
            raise RuntimeError("the model returned no result")
        if bad is not None:
            result = result.astype(np.float32, copy=True)
            result[bad] = plane[bad]
        out[dst] = result
        if noise is not None:
            noise[dst] = plane.astype(np.float32) - result.astype(np.float32)
        yield (i + 1) / n
    if plan.alpha:
        a_src, a_dst = plan.alpha_indices()
        out[a_dst] = np.asarray(data[a_src])
    return PlaneResult(out, noise, skipped)


def _fill_per_channel(plane: np.ndarray, finite: np.ndarray, axis: int | None) -> np.ndarray:
    """NaN/inf replaced by the median of the finite values of their own channel.

    Why per channel: a bright channel's median in a dim channel's holes would raise
    that channel's scale (the engine normalises each by its peak) and leave halos. A
    channel without any finite value takes the whole plane's median.
    """
    from src_models.inference import _fill_non_finite  # the engine's own fill

    hwc = plane[..., None] if axis is None else np.moveaxis(plane, axis, -1)
    filled, _ = _fill_non_finite(hwc, "", empty=float(np.median(plane[finite])))
    return filled[..., 0] if axis is None else np.moveaxis(filled, -1, axis)


def run_to_end(gen: Generator, on_yield: Callable[[Any], Any] | None = None):
    """Drive a generator to its end and return its return value (synchronous use).

    ``on_yield`` receives each yielded item (e.g. the fraction done, for a progress bar).
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_yield is not None:
            on_yield(item)
