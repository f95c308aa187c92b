"""Denoise dask arrays chunk by chunk, equal to the in-memory :class:`Denoiser` result.

Why it looks like this:

* **Same numbers as in memory.** :meth:`Denoiser.denoise` shifts each plane by an
  offset (its minimum when negative) and divides it by its largest magnitude.
  The offset matters (bias-free nets are scale- but not offset-equivariant), so
  chunk-wise statistics would change the result. The per-plane minimum and
  maximum (and, for float images with NaN/inf, the fill median) are computed
  first by one dask reduction and passed to every chunk explicitly.
* **Overlap = receptive field.** Chunks overlap by ``M`` (the receptive field
  rounded up to the size multiple) with ``map_overlap``; chunk boundaries are
  moved to multiples of the size multiple, so each window sees its pixels on
  the same pooling grid as the untiled plane. At the plane border each chunk is
  padded by numpy ``reflect`` as :class:`Denoiser` does; dask's own
  ``boundary="reflect"`` repeats the edge pixel (numpy ``symmetric``), which
  would change the border pixels, so the overlap uses ``boundary="none"``.
* **The model is loaded once per process.** Chunks carry a small picklable
  reference (a model file path); each worker loads the model on its first
  chunk through the registry's cache and reuses it, never unpickling weights
  per chunk.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .inference import (
    AUTO_OFFSET,
    BATCH_PIXELS,
    MAX_CORE,
    _cast_like,
    _check_offset,
    _check_strength,
    _check_tta,
    _layout,
    _normalise,
    _offset_and_scale,
    _round_up,
    blend,
    channel_groups,
    predict_averaged,
)

if TYPE_CHECKING:
    import dask.array as da

    from .config import ModelCard
    from .inference import Denoiser

__all__ = ["chunk_side", "denoise_dask", "measure_dask"]

# pixels of one task's planes (cores only, per channel): ~64 MiB as float32, before the
# windows' margins and the model's activations
BLOCK_PIXELS = 1 << 24

_LIVE: weakref.WeakValueDictionary[str, Denoiser] = weakref.WeakValueDictionary()


# --------------------------------------------------------------------------- model reference


class _ModelRef:
    """A picklable handle on a model: a ``.keras`` path, or an in-memory Denoiser of this process.

    Why: chunks must not carry the weights. A path is loaded once per process
    (``registry.load_model`` caches it); an in-memory Denoiser is looked up by key,
    which works for the threaded scheduler and in-process (``processes=False``)
    workers only.
    """

    def __init__(self, model: str | Path | Denoiser):
        self._den: Denoiser | None = None
        if isinstance(model, (str, Path)):
            from .registry import _resolve

            self.path: str | None = str(_resolve(model))
            self.key: str | None = None
        else:
            self.path, self.key = None, uuid.uuid4().hex
            self._den = model
            _LIVE[self.key] = model

    def card(self) -> ModelCard:
        if self._den is not None:
            return self._den.card
        from .modelfile import read_card

        return read_card(self.path)

    def get(self) -> Denoiser:
        """The Denoiser, loaded on first use in this process."""
        if self._den is None:
            if self.key is not None:
                den = _LIVE.get(self.key)
                if den is None:
                    raise RuntimeError(
                        "this worker cannot see the in-memory model: with worker processes, "
                        "pass a model name or a .keras path instead of a Denoiser"
                    )
                self._den = den
            else:
                from .registry import load_model

                self._den = load_model(self.path)
        return self._den

    def __getstate__(self) -> dict:
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict) -> None:
        self.path, self.key, self._den = state["path"], state["key"], None

    def __dask_tokenize__(self) -> tuple:
        return ("bfcnn-model", self.path, self.key)


# --------------------------------------------------------------------------- chunk geometry


def _tile_step(tile: int, multiple: int, min_size: int) -> int:
    """The chunk side a given tile becomes: at least the overlap, on the size multiple."""
    return _round_up(max(int(tile), min_size, 1), multiple)


def chunk_side(model: Any, tile: int) -> int:
    """The spatial chunk side :func:`denoise_dask` uses for ``tile`` with ``model``.

    Why public: a reader chunking its input to it (the command line's TIFF bands)
    gives every engine chunk exactly one input chunk, so none is computed twice.
    Reads only the model's card.
    """
    card = _ModelRef(model).card()
    multiple = int(card.size_multiple)
    margin = _round_up(int(card.receptive_field), multiple)
    return _tile_step(tile, multiple, max(margin, multiple, 1))


def _aligned_chunks(
    chunks: Sequence[int],
    multiple: int,
    min_size: int,
    tile: int | None,
    max_core: int = MAX_CORE,
) -> tuple[int, ...]:
    """Chunk sizes along one spatial axis: boundaries on multiples of ``multiple``, none small.

    ``tile`` given: regular chunks of ``tile`` (rounded up). Else chunks longer than
    ``max_core`` are split into near-equal parts and neighbouring input chunks are
    merged while they fit in ``max_core``, so chunks stay on the input's boundaries
    (rounded up; each input chunk read once) without small cores: 64-px chunks
    denoised alone cost ~7x the network work of their pixels, for the margins.
    Every chunk is at least ``min_size`` (the overlap), so the last one is merged
    into its neighbour when short.
    """
    length = int(sum(chunks))
    if tile is not None:
        step = _tile_step(tile, multiple, min_size)
        bounds = list(range(step, length, step))
    else:
        cuts, start = [], 0
        for c in chunks:
            n = math.ceil(c / max_core)
            piece = math.ceil(c / n)
            cuts += [start + k * piece for k in range(1, n)] + [start + c]
            start += c
        bounds, start = [], 0
        for b, after in zip(cuts[:-1], cuts[1:], strict=True):
            if after - start > max_core:  # the next input chunk would not fit: cut here
                bounds.append(b)
                start = b
        bounds = [_round_up(b, multiple) for b in bounds]
    out, start = [], 0
    for b in sorted(set(bounds)):
        if b - start >= min_size and length - b >= min_size:
            out.append(b - start)
            start = b
    out.append(length - start)
    return tuple(out)


@dataclass(frozen=True)
class _PlaneStats:
    """Per-plane normalisation, indexed by (lead..., group) and fill by (lead..., channel)."""

    offset: np.ndarray
    scale: np.ndarray
    fill: np.ndarray | None  # median of finite values; None: no non-finite pixels anywhere


def _plane_stats(
    t: da.Array,
    groups: tuple[tuple[slice, int], ...],
    offset: float | str | None,
    source: da.Array | None = None,
) -> _PlaneStats:
    """One dask pass: per-plane min and max (of finite values) -> offset and scale, as Denoiser.

    ``offset="auto"`` (a camera black level per plane, :func:`noise_model.black_level`)
    needs whole planes: they are read once more, strip by strip, all planes of a chunk
    of the stack together (each stored chunk decompressed once per strip, not once per
    plane). ``source``: ``t`` as stored, before its spatial rechunk (read for the black
    levels, so a strip reads only the stored chunks it overlaps).
    """
    import dask
    import dask.array as da

    nl = t.ndim - 3
    joint = len(groups) == 1 and groups[0][1] == 1
    spatial = (nl, nl + 1)
    axes = (*spatial, nl + 2) if joint else spatial
    if t.dtype.kind == "f":
        finite = da.isfinite(t)
        lo = da.where(finite, t, np.inf).min(axis=axes)
        hi = da.where(finite, t, -np.inf).max(axis=axes)
        bad = (~finite).sum(axis=spatial)
        lo, hi, bad = dask.compute(lo, hi, bad)
    else:
        lo, hi = dask.compute(t.min(axis=axes), t.max(axis=axes))
        bad = np.zeros(t.shape[:nl] + t.shape[-1:], dtype=np.int64)
    if joint:
        lo, hi = lo[..., None], hi[..., None]
    plane_pixels = t.shape[nl] * t.shape[nl + 1]
    fill = None
    if bad.any():
        fill = np.zeros(bad.shape, dtype=np.float64)
        for idx in zip(*np.nonzero(bad), strict=True):
            if bad[idx] == plane_pixels:
                where = f"plane {idx[:-1]}" if nl else "the image"
                raise ValueError(
                    f"{where} has no finite values (all NaN or inf): nothing to fill it from"
                )
            values = np.asarray(t[idx[:-1] + (slice(None), slice(None), idx[-1])])
            fill[idx] = np.median(values[np.isfinite(values)])
        first = tuple(int(i) for i in np.argwhere(bad)[0][:-1])
        warnings.warn(
            f"the image has non-finite pixels (NaN or inf; {int(bad.sum())} in all, first in "
            f"plane {first}): they are replaced by the median of the finite values of their "
            "plane before denoising",
            RuntimeWarning,
            stacklevel=3,
        )
    levels = None
    if offset == AUTO_OFFSET:
        levels = _black_levels(t if source is None else source, groups, fill)
    offsets = np.empty(lo.shape, dtype=np.float64)
    scales = np.empty(lo.shape, dtype=np.float64)
    for idx in np.ndindex(*lo.shape):
        level = offset if levels is None else levels[idx]
        pair = np.array([lo[idx], hi[idx]])
        offsets[idx], scales[idx] = _offset_and_scale(pair, level)
    return _PlaneStats(offsets, scales, fill)


def _black_levels(
    t: da.Array, groups: tuple[tuple[slice, int], ...], fill: np.ndarray | None
) -> np.ndarray:
    """The black level of every (lead..., group) plane of ``t``, read a stack chunk at a time."""
    from .noise_model import black_level, black_levels

    nl = t.ndim - 3
    levels = np.empty(t.shape[:nl] + (len(groups),), dtype=np.float64)
    if fill is not None:  # rare: non-finite pixels, filled as denoising fills them
        for idx in np.ndindex(*levels.shape):
            chans = groups[idx[-1]][0]
            plane = _filled(np.asarray(t[idx[:-1]][..., chans]), fill[idx[:-1]][chans])
            levels[idx] = black_level(plane)
        return levels
    starts = [np.cumsum((0, *c)) for c in t.chunks[:nl]]
    for block in np.ndindex(*(len(c) for c in t.chunks[:nl])):
        where = tuple(slice(int(s[b]), int(s[b + 1])) for s, b in zip(starts, block, strict=True))
        lead = tuple(w.stop - w.start for w in where)
        stack = t[where].reshape((-1, *t.shape[nl:]))  # the chunk's planes; lazy
        for g, (chans, _) in enumerate(groups):
            levels[where + (g,)] = black_levels(stack[..., chans]).reshape(lead)
    return levels


def _filled(plane: np.ndarray, fills: np.ndarray) -> np.ndarray:
    """A copy of an (H, W, C) plane with non-finite pixels set to each channel's fill value."""
    if np.isfinite(plane).all():
        return plane
    plane = np.array(plane, copy=True)
    for c in range(plane.shape[-1]):
        plane[..., c][~np.isfinite(plane[..., c])] = fills[c]
    return plane


# --------------------------------------------------------------------------- one chunk


def _denoise_block(
    block: np.ndarray,
    *,
    ref: _ModelRef,
    stats: _PlaneStats,
    groups: tuple[tuple[slice, int], ...],
    margin: int,
    extra: tuple[int, int],
    window: tuple[int, int],
    out_dtype: np.dtype,
    tta: int = 1,
    strength: float = 1.0,
    block_info: dict | None = None,
) -> np.ndarray:
    """Denoise one overlapped chunk (lead..., h, w, C) and return its core (no overlap)."""
    info = block_info[0]
    nl = block.ndim - 3
    loc, num = info["chunk-location"], info["num-chunks"]
    lead0 = tuple(int(start) for start, _ in info["array-location"][:nl])
    pads, cores = [], []
    for i, ax in enumerate((nl, nl + 1)):
        first, last = loc[ax] == 0, loc[ax] == num[ax] - 1
        pads.append((margin if first else 0, margin + extra[i] if last else 0))
        cores.append(block.shape[ax] - (0 if first else margin) - (0 if last else margin))
    out = np.empty(block.shape[:nl] + tuple(cores) + block.shape[-1:], dtype=out_dtype)
    den = ref.get()
    repeat = groups[0][1]
    per_batch = max(1, BATCH_PIXELS // (window[0] * window[1]))
    jobs: list[tuple[tuple, slice, float, float, np.ndarray]] = []

    def run() -> None:
        x = np.stack([j[-1] for j in jobs])
        y = predict_averaged(
            den.predict_batch, np.repeat(x, repeat, axis=-1) if repeat > 1 else x, tta
        )
        if repeat > 1:
            y = y.mean(axis=-1, keepdims=True)
        y = blend(x, y, strength)
        for (li, chans, off, scale, _), pred in zip(jobs, y, strict=True):
            core = pred[margin : margin + cores[0], margin : margin + cores[1]]
            out[li + (slice(None), slice(None), chans)] = _cast_like(
                core.astype(np.float64) * scale + off, out.dtype
            )
        jobs.clear()

    for li in np.ndindex(*block.shape[:nl]):
        lead = tuple(a + b for a, b in zip(lead0, li, strict=True))
        for g, (chans, _) in enumerate(groups):
            plane = block[li][..., chans]
            if stats.fill is not None:
                plane = _filled(plane, stats.fill[lead][chans])
            off, scale = float(stats.offset[lead + (g,)]), float(stats.scale[lead + (g,)])
            x = np.pad(_normalise(plane, off, scale), (*pads, (0, 0)), mode="reflect")
            x = np.pad(x, ((0, window[0] - x.shape[0]), (0, window[1] - x.shape[1]), (0, 0)))
            jobs.append((li, chans, off, scale, x))
            if len(jobs) == per_batch:
                run()
    if jobs:
        run()
    return out


# --------------------------------------------------------------------------- public API


def denoise_dask(
    array: Any,
    model: str | Path | Denoiser,
    *,
    channel_axis: int | None = None,
    tile: int | None = None,
    offset: float | str | None = None,
    tta: int = 1,
    strength: float = 1.0,
    input_chunks: bool = True,
) -> da.Array:
    """Denoise a (lazy) array chunk by chunk; equal to ``Denoiser.denoise`` up to float rounding.

    Why: images larger than memory (zarr, big TIFFs) and dask clusters. Reads
    the input once now for the per-plane offsets and scales; the result is lazy.

    Parameters
    ----------
    array : array-like
        dask array, zarr array or numpy array; same axis rules as
        :meth:`Denoiser.denoise` (last two non-channel axes are Y, X).
    model : str, Path or Denoiser
        Model name or ``.keras`` path (loaded once per worker process), or an
        in-memory Denoiser (threads or in-process workers only).
    channel_axis : int, optional
        Axis holding channels; None for a single channel.
    tile : int, optional
        Spatial chunk (core) size. None follows the input's chunks: long ones split,
        small neighbours merged, up to 1024 px (less when a chunk holds many planes,
        see ``BLOCK_PIXELS``). Rounded up to the size multiple; never below the overlap.
    offset : float or "auto", optional
        As in :meth:`Denoiser.denoise`; None: each plane's minimum when negative;
        ``"auto"``: each plane's black level, which reads the input once more, strip
        by strip, the planes of a stored chunk together.
    tta : {1, 2, 4, 8}
        Test-time augmentation, as in :meth:`Denoiser.denoise_iter`.
    strength : float
        Blend of input and output, as in :meth:`Denoiser.denoise_iter`.
    input_chunks : bool
        Give dask input's chunks back (default). False: the engine's own chunks, so
        a writer computing one row of chunks at a time computes each exactly once.

    Returns
    -------
    dask.array.Array
        Same shape and axis order; for dask input its chunks (see ``input_chunks``);
        same dtype for integers, float32 for floats.
    """
    import dask.array as da

    if not isinstance(array, da.Array) and not hasattr(array, "shape"):
        array = np.asarray(array)
    layout = _layout(array, channel_axis)
    given_chunks = array.chunks if isinstance(array, da.Array) else None
    if not isinstance(array, da.Array):  # numpy: one plane per chunk, split below
        chunks = tuple(1 if a in layout.lead_axes else -1 for a in range(len(layout.shape)))
        if type(array).__module__.startswith("zarr"):  # keep whole zarr chunks per task
            chunks = tuple(array.chunks)
        array = da.from_array(array, chunks=chunks)
    offset = _check_offset(offset)
    tta = _check_tta(tta)
    strength = _check_strength(strength)
    if tile is not None and (isinstance(tile, bool) or int(tile) < 1):
        raise ValueError(f"tile must be a positive integer or None (got {tile!r})")
    ref = _ModelRef(model)
    card = ref.card()
    k, multiple = int(card.channels), int(card.size_multiple)
    margin = _round_up(int(card.receptive_field), multiple)
    out_dtype = np.dtype(array.dtype) if array.dtype.kind in "iu" else np.dtype(np.float32)

    # canonical (lead..., Y, X, C): channels in one chunk, spatial chunks aligned
    axes = (*layout.lead_axes, *layout.spatial_axes)
    if layout.channel_axis is None:
        t = array.transpose(axes)[..., None]
    else:
        t = array.transpose((*axes, layout.channel_axis))
    nl = len(layout.lead_axes)
    min_size = max(margin, multiple, 1)
    # a chunk holding many planes (a 64-plane zarr chunk) gets smaller cores: bounded memory
    planes_per_chunk = math.prod(max(c) for c in t.chunks[:nl])
    side = math.isqrt(BLOCK_PIXELS // planes_per_chunk)
    max_core = min(MAX_CORE, max(min_size, _round_up(side, multiple)))
    spatial_chunks = [
        _aligned_chunks(t.chunks[nl + i], multiple, min_size, tile, max_core) for i in (0, 1)
    ]
    stored, t = t, t.rechunk((*t.chunks[:nl], *spatial_chunks, -1))

    groups = tuple(channel_groups(layout.channels, k))
    stats = _plane_stats(t, groups, offset, source=stored)
    extra = ((-layout.height) % multiple, (-layout.width) % multiple)
    # one window shape for every chunk (a multiple of the size multiple): one traced graph
    window = tuple(
        2 * margin + max(*spatial_chunks[i][:-1], spatial_chunks[i][-1] + extra[i], 0)
        for i in (0, 1)
    )
    depth = {nl: margin if len(spatial_chunks[0]) > 1 else 0,
             nl + 1: margin if len(spatial_chunks[1]) > 1 else 0}
    result = da.map_overlap(
        _denoise_block,
        t,
        depth=depth,
        boundary="none",
        trim=False,
        chunks=t.chunks,
        dtype=out_dtype,
        meta=np.empty((0,) * t.ndim, dtype=out_dtype),
        ref=ref,
        stats=stats,
        groups=groups,
        margin=margin,
        extra=extra,
        window=window,
        out_dtype=out_dtype,
        tta=tta,
        strength=strength,
    )
    if layout.channel_axis is None:
        result = result[..., 0].transpose(tuple(int(a) for a in np.argsort(axes)))
    else:
        result = result.transpose(tuple(int(a) for a in np.argsort((*axes, layout.channel_axis))))
    return result if given_chunks is None or not input_chunks else result.rechunk(given_chunks)


# --------------------------------------------------------------------------- clusters


def local_client(workers: int | None = None, scheduler: str | None = None, threads: int = 1):
    """A dask.distributed Client: on ``scheduler`` (address), else a LocalCluster of processes.

    Why the environment: each worker runs TensorFlow; its intra-op threads are
    limited to its share of the cores so ``workers`` processes do not fight.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    n = max(1, int(workers or 1))
    share = str(max(1, (os.cpu_count() or 1) // n))
    env = {"TF_NUM_INTRAOP_THREADS": share, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": share}
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=threads, processes=True, env=env, dashboard_address=None
    )
    return Client(cluster)


# --------------------------------------------------------------------------- timing / memory


def _maxrss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM: a child's own, unlike ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 2**20  # kB on Linux, B on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _warm(path: str, window: tuple[int, ...]) -> str:
    """Load a model into this worker's cache and trace one window shape; returns its name."""
    from .registry import load_model

    den = load_model(path)
    den.predict_batch(np.zeros(window, dtype=np.float32))
    return den.name


def _test_chunk(block_info: dict | None = None, channels: int = 1) -> np.ndarray:
    """One chunk of a uint8 test image like the benchmark's: smooth structure plus noise."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"][:2]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    base = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    rng = np.random.default_rng((y0, x0))
    shape = base.shape + ((channels,) if channels > 1 else ())
    img = (base[..., None] if channels > 1 else base) + rng.normal(0, 20, shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def measure_dask(
    model: str, size: int = 8192, workers: int = 0, tile: int = 1024, folder: str | None = None
) -> dict:
    """Seconds, Mpix/s and peak memory of ``denoise_dask`` from zarr to zarr on a square image.

    Why zarr to zarr: that is the command's out-of-core path, so neither the input
    nor the output is ever whole in memory. The test image is written first
    (untimed); a one-chunk warm-up loads and traces the model on every worker.

    Parameters
    ----------
    model : str
        Model name or ``.keras`` path.
    size : int
        Side of the square uint8 image (RGB for colour models).
    workers : int
        0: dask's threaded scheduler in this process; N: a LocalCluster of N
        single-threaded worker processes.
    tile : int
        Chunk size.
    folder : str, optional
        Where the zarr stores go (a temporary folder by default).

    Returns
    -------
    dict
        Keys: method, shape, workers, seconds, mpix_s, peak_rss_mb (this process plus
        the sum of the workers' peaks), client_peak_rss_mb, worker_peak_rss_mb (list).
    """
    import tempfile

    import dask
    import dask.array as da

    ref = _ModelRef(model)
    channels = int(ref.card().channels)
    shape = (size, size) + ((channels,) if channels > 1 else ())
    chunks = (tile, tile) + ((channels,) if channels > 1 else ())
    axis = -1 if channels > 1 else None
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = da.map_blocks(_test_chunk, chunks=da.core.normalize_chunks(chunks, shape),
                            dtype=np.uint8, channels=channels)
        src.to_zarr(f"{tmp}/in.zarr")
        client = local_client(workers) if workers else None
        try:
            with dask.config.set(scheduler=client or "threads"):
                warm = da.from_zarr(f"{tmp}/in.zarr")[:tile, :tile]
                if client:  # load and trace the window shape once on every worker
                    m = _round_up(int(ref.card().receptive_field), int(ref.card().size_multiple))
                    side = _round_up(tile, int(ref.card().size_multiple)) + 2 * m
                    client.run(_warm, ref.path, (1, side, side, channels))
                denoise_dask(warm, ref.path, channel_axis=axis, tile=tile).compute()
                t0 = time.perf_counter()
                data = da.from_zarr(f"{tmp}/in.zarr")
                out = denoise_dask(data, ref.path, channel_axis=axis, tile=tile)
                out.to_zarr(f"{tmp}/out.zarr")  # the input's chunks: regular
                sec = time.perf_counter() - t0
            worker_peaks = sorted(client.run(_maxrss_mb).values()) if client else []
        finally:
            if client is not None:
                cluster = client.cluster
                client.close()
                if cluster is not None:
                    cluster.close()
    client_peak = _maxrss_mb()
    return {
        "method": Path(ref.path).stem,
        "shape": f"{size}x{size}",
        "workers": int(workers),
        "seconds": sec,
        "mpix_s": size * size / 1e6 / sec,
        "peak_rss_mb": client_peak + sum(worker_peaks),
        "client_peak_rss_mb": client_peak,
        "worker_peak_rss_mb": worker_peaks,
    }


def _child(argv: list[str] | None = None) -> int:
    """``python -m src_models.dask_inference MODEL --size N --workers W``: one JSON line."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Time denoise_dask zarr -> zarr (internal).")
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--tile", type=int, default=1024)
    args = parser.parse_args(argv)
    print(json.dumps(measure_dask(args.model, args.size, args.workers, args.tile)))
    return 0


if __name__ == "__main__":  # run the importable module, not __main__: workers unpickle by name
    from src_models.dask_inference import _child as child

    sys.exit(child())
