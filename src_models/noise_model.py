"""Poisson-Gaussian noise of a camera image, estimated from the image alone; its black level.

Why: microscopy data arrive in camera counts with an unknown gain, read noise and
offset, and a bias-free network is scale- but not offset-equivariant. Knowing the
black level (offset) lets the engine remove it before denoising; knowing gain and
read noise tells the user how many photons the image holds and whether a model was
trained for that regime.

Model: ``var(y) = gain * (E[y] - offset) + read_sigma**2``, all in the data's units
(``gain`` is data units per photon).

Method (after Foi et al., *Practical Poissonian-Gaussian noise modeling and fitting
for single-image raw-data*, IEEE TIP 2008, simplified):

1. per pixel, a high-pass residual ``r`` (separable second difference ``[1,-2,1]``
   in Y and X, unit norm: ``E[r^2]`` is the local noise variance wherever the signal
   has no ``x^2 y^2`` term, ramps and parabolas included) and a local mean ``m``
   (5x5 box);
2. a texture measure ``t``: gradient magnitude of the Laplacian of Gaussian. Its
   kernels are odd, those of ``r`` and ``m`` even, so for noise ``t`` is
   uncorrelated with ``r`` and ``m``: selecting pixels by ``t`` does not bias the
   variance, and ramps do not count as texture;
3. pixels binned by ``m`` (equal counts). A first pass keeps the smoother half of
   each bin; later passes keep the pixels whose ``t`` is what noise of the fitted
   variance gives (edges and texture drop out). Each bin's variance is the trimmed
   mean of ``r^2`` (within 3.5 MAD-sigmas, corrected for the trimming);
4. a weighted straight-line fit of variance against level (weights from the
   standard error of each bin's variance), iteratively reweighted with a bisquare
   on the standardised residuals, so bins still inflated by texture drop out; gain
   and read variance are kept non-negative.

Spatially correlated noise (resampled widefield frames, scan-line amplifiers) has
little energy at the highest frequencies, so ``r`` alone would see a fraction of it
(a tenth for a neighbour correlation of 0.6). Per axis, the same residual with the
second difference taken at a spacing of 2 pixels sees white noise equally but
correlated noise more; the ratio of the two variances on the smooth pixels gives the
width of a Gaussian correlation per axis (the family of
:func:`src_models.corruptions.correlate_noise`), and the bins' variances and the
texture threshold are corrected by the filters' gains for that correlation. Ratios
within what white noise on real images gives (below 1.3) count as white.

The line gives slope (gain) and intercept; splitting the intercept into read noise
and offset needs the offset, given or estimated by :func:`black_level` (then the
read noise is the noise at that level, which includes the shot noise of any
signal there). Read noise is only well determined when the image has regions near
the black level; gain needs a spread of intensities.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CORRELATED_MIN",
    "PoissonGaussian",
    "black_level",
    "black_levels",
    "correlation_kernel",
    "estimate_centre_crop",
    "estimate_poisson_gaussian",
]

MIN_SIDE = 16  # smallest plane side the estimator accepts
CORRELATED_MIN = 0.2  # neighbour correlation from which noise counts as correlated
CENTRE_CROP = 512  # estimate_centre_crop: crop side
MIN_PIXELS = 2048  # usable pixels needed (after NaN and border removal)
MAX_PLANE_PIXELS = 1 << 22  # larger planes are sampled in windows (speed and memory)
PASSES = 3  # fits: the first on the smoother half of each bin, then on noise-flat pixels
BLACK_PERCENTILE = 0.5  # black level: this percentile of the lightly smoothed plane
BLACK_SMOOTH = 1.0  # Gaussian sigma (px) of that smoothing
# Denoising keeps 1 px although its level sits up to ~0.6 read sigma under a flat dark
# background: on synthetic camera frames with a known offset the microscopy model scores as
# well with it as with the true offset, and 2-3 px (closer to the background) score lower
# (tools/black_level_choice.py).
ESTIMATE_BLACK_SMOOTH = 3.0  # ... for the noise estimate's offset, which must be unbiased
_MAD = 1.482602218505602  # sigma = _MAD * median(|x|) for Gaussian x
_TRIM = 3.5  # residuals beyond this many sigmas are texture outliers
_TRIM_FACTOR = 1.0 - 2.0 * _TRIM * math.exp(-(_TRIM**2) / 2) / math.sqrt(2 * math.pi) / math.erf(
    _TRIM / math.sqrt(2)
)  # E[r^2 | |r| <= TRIM sigma] / sigma^2 for Gaussian r
_TEXTURE_SIGMA = 1.5  # Gaussian sigma (px) of the texture measure's smoothing
_FLAT_TEXTURE = 2.0 * math.log(10.0)  # chi2(2) 90 % quantile: flat pixels kept
_SECOND = np.array([1.0, -2.0, 1.0])  # second difference; with spacing 2: [1, 0, -2, 0, 1]
_WHITE_RATIO = 1.3  # spacing-2 / spacing-1 residual variance below this: white noise
_MAX_WIDTH = 2.0  # widest noise correlation resolved (px): the ratio saturates beyond


def correlation_kernel(sigma: float) -> np.ndarray:
    """1-D Gaussian of width ``sigma`` px and radius ceil(3 sigma), with unit energy.

    Why unit energy (sum of squares 1): white noise filtered by it keeps its variance,
    so ``sigma`` changes only how neighbours correlate. ``[1.]`` for sigma 0.
    """
    if sigma <= 0:
        return np.ones(1)
    r = int(np.ceil(3.0 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / np.sqrt(np.sum(k**2))


@dataclass(frozen=True)
class PoissonGaussian:
    """Estimated camera noise, all in the data's own units.

    Attributes
    ----------
    gain : float
        Data units per photon (slope of variance against signal); 0 when the noise
        does not depend on the signal (pure Gaussian).
    read_sigma : float
        Standard deviation of the signal-independent (read) noise.
    offset : float
        Black level: the data value of zero signal (given or estimated).
    median_signal : float
        Median of ``data - offset`` over the pixels looked at.
    correlation_width : tuple of float
        (y, x) widths in pixels of a Gaussian correlation of the noise between
        neighbouring pixels; (0, 0) for white noise.
    """

    gain: float
    read_sigma: float
    offset: float
    median_signal: float = 0.0
    correlation_width: tuple[float, float] = (0.0, 0.0)

    @property
    def neighbour_correlation(self) -> tuple[float, float]:
        """Correlation of the noise of two neighbouring pixels along (y, x); 0 for white noise."""
        return tuple(_lag1(w) for w in self.correlation_width)

    @property
    def correlated(self) -> bool:
        """Whether neighbouring pixels' noise is correlated (:data:`CORRELATED_MIN` or more)."""
        return max(self.neighbour_correlation) >= CORRELATED_MIN

    def variance(self, value: Any) -> Any:
        """Noise variance at data value(s) ``value`` (signal below the offset counts as 0)."""
        signal = np.maximum(np.asarray(value, dtype=np.float64) - self.offset, 0.0)
        out = self.gain * signal + self.read_sigma**2
        return float(out) if np.ndim(out) == 0 else out

    def photons_at(self, value: float) -> float:
        """Photons behind data value ``value``: ``(value - offset) / gain`` (inf if gain is 0)."""
        signal = float(value) - self.offset
        if self.gain <= 0:
            return math.inf if signal > 0 else 0.0
        return signal / self.gain

    @property
    def photons_median(self) -> float:
        """Photons at the median signal (0 where the median lies below the black level)."""
        return max(self.photons_at(self.offset + self.median_signal), 0.0)

    def snr_at(self, value: float) -> float:
        """Signal-to-noise ratio at data value ``value``: ``signal / noise sigma``."""
        signal = max(float(value) - self.offset, 0.0)
        var = self.variance(value)
        if var <= 0:
            return math.inf if signal > 0 else 0.0
        return signal / math.sqrt(var)

    def shot_fraction_at(self, value: float) -> float:
        """Share of the noise variance at data value ``value`` that is shot noise (0: Gaussian)."""
        var = self.variance(value)
        return 0.0 if var <= 0 else self.gain * max(float(value) - self.offset, 0.0) / var

    @property
    def snr_median(self) -> float:
        """Signal-to-noise ratio at the median signal."""
        return self.snr_at(self.offset + self.median_signal)

    @property
    def shot_fraction(self) -> float:
        """Share of the noise variance at the median signal that is shot noise (0: Gaussian)."""
        return self.shot_fraction_at(self.offset + self.median_signal)


# --------------------------------------------------------------------------- black level


def black_level(plane: np.ndarray, smooth: float = BLACK_SMOOTH) -> float:
    """The black level of a plane: a low percentile of its lightly smoothed pixels.

    Why smoothed: the percentile of raw pixels would sit several noise sigmas below
    the dark background; a Gaussian (sigma 1 px) cuts the noise about 3.5-fold first.
    Smoothing with a unit-sum kernel and taking a percentile both commute with adding
    a constant, so ``black_level(y + c) == black_level(y) + c`` (to rounding).
    Non-finite pixels are ignored. Planes above 4 Mpixels are smoothed in strips and
    sampled on a regular grid, so memory stays small; a lazy (dask, zarr) plane is
    read strip by strip, never whole.

    Parameters
    ----------
    plane : array-like
        2-D plane, or (H, W, C): the channels share one level.
    smooth : float
        Gaussian sigma (px) of the smoothing; more sits closer to the background's
        mean level, less stays under the darkest structures.

    Returns
    -------
    float
    """
    if not (hasattr(plane, "shape") and hasattr(plane, "ndim") and hasattr(plane, "dtype")):
        plane = np.asarray(plane)
    if plane.ndim not in (2, 3):
        raise ValueError(f"black_level needs a 2-D plane or (H, W, C) (got shape {plane.shape})")
    chunks = getattr(plane, "chunks", None)
    return float(
        _black_levels(
            lambda lo, hi: np.asarray(plane[lo:hi], dtype=np.float64)[None],
            lambda i: np.asarray(plane),
            1, plane.shape, smooth, int(chunks[0][0]) if chunks else 0,
        )[0]
    )


def black_levels(planes: Any, smooth: float = BLACK_SMOOTH) -> np.ndarray:
    """:func:`black_level` of every plane of an (N, H, W) or (N, H, W, C) stack.

    Why together: the planes are read strip by strip all at once, so a lazy stack
    chunked over several planes (a zarr of 64-plane chunks) is decompressed once
    per strip, not once per plane and strip. Same values as plane by plane. Memory
    stays bounded: planes go in groups whose samples fit 256 MiB (one 2048² plane
    holds 32 MiB of them), strips are at most 64 MiB, so a chunk of many large
    planes is read once per group and strip.

    Returns
    -------
    ndarray
        float64 (N,).
    """
    if not (hasattr(planes, "shape") and hasattr(planes, "ndim") and hasattr(planes, "dtype")):
        planes = np.asarray(planes)
    if planes.ndim not in (3, 4):
        raise ValueError(f"black_levels needs (N, H, W) or (N, H, W, C) (got shape {planes.shape})")
    chunks = getattr(planes, "chunks", None)
    n, plane_shape = int(planes.shape[0]), tuple(planes.shape[1:])
    h, w = plane_shape[:2]
    step = _sample_step(h, w)
    channels = plane_shape[2] if len(plane_shape) == 3 else 1
    kept = math.ceil(h / step) * math.ceil(w / step) * channels
    group = max(1, _SAMPLE_VALUES // kept)  # planes whose samples are held together
    levels = []
    for g0 in range(0, n, group):
        sub = planes[g0 : g0 + group]
        levels.append(
            _black_levels(
                lambda lo, hi, sub=sub: np.asarray(sub[:, lo:hi], dtype=np.float64),
                lambda i, sub=sub: np.asarray(sub[i]),
                int(sub.shape[0]), plane_shape, smooth,
                int(chunks[1][0]) if chunks else 0,
            )
        )
    return np.concatenate(levels)


def _sample_step(h: int, w: int) -> int:
    """Grid step of the black level's samples: planes above MAX_PLANE_PIXELS are subsampled."""
    return max(1, math.ceil(math.sqrt(h * w / MAX_PLANE_PIXELS)))


_STRIP_VALUES = 1 << 23  # values per strip of all planes read together (64 MiB as float64)
_SAMPLE_VALUES = 1 << 25  # smoothed samples kept for the percentiles (256 MiB as float64)


def _black_levels(
    read, whole, n: int, plane_shape: tuple, smooth: float, chunk_rows: int
) -> np.ndarray:
    """The strip loop of :func:`black_level` over ``n`` planes read together.

    ``read(lo, hi)`` gives rows lo:hi of every plane as float64 (n, rows, W[, C]);
    ``whole(i)`` plane i (only for the fill of non-finite pixels). Strips overlap by
    the smoothing's reach and the sample grid is global, so the levels do not depend
    on how the rows are split.
    """
    from scipy import ndimage

    h, w = plane_shape[:2]
    per_row = n * w * (plane_shape[2] if len(plane_shape) == 3 else 1)
    step = _sample_step(h, w)
    halo = 3 * math.ceil(smooth)
    rows = max(256, step, chunk_rows)  # a lazy stack: strips as tall as its chunks
    rows = min(rows, max(step, 16, _STRIP_VALUES // max(1, per_row)))  # ... memory allowing
    rows = max(step, rows - rows % step)
    sigma = (0.0, smooth, smooth, 0.0)[: len(plane_shape) + 1]
    fills: list[float | None] = [None] * n
    samples: list[list[np.ndarray]] = [[] for _ in range(n)]
    for r0 in range(0, h, rows):
        lo, hi = max(r0 - halo, 0), min(r0 + rows + halo, h)
        strip = read(lo, hi)
        valid = np.isfinite(strip)
        if not valid.all():  # rare: NaN in the data; their fill needs the plane
            for i in range(n):
                if fills[i] is None and not valid[i].all():
                    plane = np.asarray(whole(i), dtype=np.float64)
                    finite = plane[np.isfinite(plane)]
                    if finite.size == 0:
                        raise ValueError(
                            "cannot find the black level of a plane with no finite pixel"
                        )
                    fills[i] = float(np.median(finite))
            fill = np.array([f or 0.0 for f in fills]).reshape((n,) + (1,) * (strip.ndim - 1))
            strip = np.where(valid, strip, fill)  # a new array: the strip may view the input
        smoothed = ndimage.gaussian_filter(strip, sigma, mode="reflect", truncate=3.0)
        core = slice(r0 - lo, r0 - lo + min(rows, h - r0))
        smoothed = smoothed[:, core][:, ::step, ::step]
        kept = valid[:, core][:, ::step, ::step]
        for i in range(n):
            samples[i].append(smoothed[i][kept[i]])
    levels = np.empty(n, dtype=np.float64)
    for i in range(n):
        values = np.concatenate(samples[i])
        if values.size == 0:
            raise ValueError("cannot find the black level of a plane with no finite pixel")
        levels[i] = np.percentile(values, BLACK_PERCENTILE)
    return levels


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class _Samples:
    """Per-pixel local mean, high-pass residual and texture of the usable pixels."""

    mean: np.ndarray  # ring mean (5x5 box without its 3x3 centre): what pixels are binned by
    residual: np.ndarray
    texture: np.ndarray
    residual_y2: np.ndarray  # the residual with the Y second difference at spacing 2
    residual_x2: np.ndarray  # ... with the X second difference at spacing 2
    level: np.ndarray  # 3x3 mean: the signal under the residual's own pixels


def _windows(plane: np.ndarray, max_pixels: int) -> list[np.ndarray]:
    """The plane, or evenly spread square windows of it with ``max_pixels`` in all."""
    h, w = plane.shape
    if h * w <= max_pixels:
        return [plane]
    side = 256
    n = max(1, max_pixels // (side * side))
    per_axis = max(1, math.isqrt(n))
    ys = np.linspace(0, max(h - side, 0), per_axis).round().astype(int)
    xs = np.linspace(0, max(w - side, 0), per_axis).round().astype(int)
    return [plane[y : y + side, x : x + side] for y in ys for x in xs]


def _texture(y: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the Laplacian of Gaussian: blind to ramps and curvature, odd."""
    from scipy import ndimage

    log = ndimage.gaussian_laplace(y, _TEXTURE_SIGMA, mode="reflect")
    diff = np.array([-0.5, 0.0, 0.5])
    return np.hypot(ndimage.correlate1d(log, diff, axis=0), ndimage.correlate1d(log, diff, axis=1))


@functools.lru_cache(maxsize=64)
def _texture_gain(width: tuple[float, float] = (0.0, 0.0)) -> float:
    """Variance of one component of :func:`_texture` per unit noise variance (mean of Y, X).

    ``width``: the noise's Gaussian correlation widths (y, x); (0, 0) for white noise.
    """
    from scipy import ndimage

    impulse = np.zeros((49, 49))
    impulse[24, 24] = 1.0
    noise = ndimage.correlate1d(impulse, correlation_kernel(width[0]), axis=0, mode="constant")
    noise = ndimage.correlate1d(noise, correlation_kernel(width[1]), axis=1, mode="constant")
    log = ndimage.gaussian_laplace(noise, _TEXTURE_SIGMA, mode="constant")
    diff = np.array([-0.5, 0.0, 0.5])
    return float(np.mean([(ndimage.correlate1d(log, diff, axis=a) ** 2).sum() for a in (0, 1)]))


def _spaced(kernel: np.ndarray, spacing: int) -> np.ndarray:
    out = np.zeros((kernel.size - 1) * spacing + 1)
    out[::spacing] = kernel
    return out


@functools.lru_cache(maxsize=512)
def _axis_gains(width: float) -> tuple[float, float]:
    """Variance of the unit-norm second difference at spacing 1 and 2 along one axis, for
    unit-variance noise with a Gaussian correlation of ``width`` px along it."""
    k = correlation_kernel(width)
    h = _SECOND / math.sqrt(6.0)
    return (
        float(np.sum(np.convolve(h, k) ** 2)),
        float(np.sum(np.convolve(_spaced(h, 2), k) ** 2)),
    )


def _width_from_ratio(ratio: float) -> float:
    """Correlation width (px) whose spacing-2 / spacing-1 variance ratio is ``ratio``."""
    if not ratio >= _WHITE_RATIO:
        return 0.0

    def q(w: float) -> float:
        g1, g2 = _axis_gains(w)
        return g2 / g1

    lo, hi = 0.0, _MAX_WIDTH
    if ratio >= q(hi):
        return hi
    for _ in range(30):  # q increases with the width
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if q(mid) < ratio else (lo, mid)
    return round(0.5 * (lo + hi), 3)


def _lag1(width: float) -> float:
    k = correlation_kernel(width)
    return float(np.sum(k[1:] * k[:-1]))


def _plane_samples(plane: np.ndarray) -> _Samples:
    """Local statistics of one 2-D plane; pixels near NaN, clipping or the border dropped."""
    from scipy import ndimage

    y = np.asarray(plane, dtype=np.float64)
    valid = np.isfinite(y)
    if valid.any() and not valid.all():
        y = np.where(valid, y, np.median(y[valid]))
    for value in (y[valid].max(initial=-np.inf), y[valid].min(initial=np.inf)):
        at = valid & (y == value)
        if np.count_nonzero(at) > max(8, 1e-3 * y.size):  # a clipped (saturated) level
            valid &= ~at
    second, second2 = _SECOND, _spaced(_SECOND, 2)
    along_y, along_y2 = (ndimage.correlate1d(y, k, axis=0) for k in (second, second2))
    residual = ndimage.correlate1d(along_y, second, axis=1) / 6.0
    residual_y2 = ndimage.correlate1d(along_y2, second, axis=1) / 6.0
    residual_x2 = ndimage.correlate1d(along_y, second2, axis=1) / 6.0
    # Bin by a mean that shares no pixel with the residual's 3x3 support, and place each
    # bin at the 3x3 mean of its pixels. Why: a 5x5 mean holds the residual's own noise, so
    # at a few photons per pixel a bin collects pixels whose noise fell into its range and
    # its level is noise-shifted; the dark end of the variance line flattened and the gain
    # came out 20-40 % low (near 0 on images that are mostly dark background).
    box5 = ndimage.uniform_filter(y, 5, mode="reflect")
    box3 = ndimage.uniform_filter(y, 3, mode="reflect")
    ring = (25.0 * box5 - 9.0 * box3) / 16.0
    texture = _texture(y)
    usable = ndimage.binary_erosion(valid, np.ones((7, 7), bool), border_value=0)
    return _Samples(
        ring[usable],
        residual[usable],
        texture[usable],
        residual_y2[usable],
        residual_x2[usable],
        box3[usable],
    )


def _pooled_samples(planes: list[np.ndarray]) -> _Samples:
    """Samples of all planes (windows of big ones) together, sorted by local mean."""
    parts = [_plane_samples(win) for p in planes for win in _windows(p, MAX_PLANE_PIXELS)]
    mean = np.concatenate([s.mean for s in parts])
    order = np.argsort(mean, kind="stable")

    def pooled(name: str) -> np.ndarray:
        return np.concatenate([getattr(s, name) for s in parts])[order]

    return _Samples(
        mean[order],
        pooled("residual"),
        pooled("texture"),
        pooled("residual_y2"),
        pooled("residual_x2"),
        pooled("level"),
    )


def _robust_variance(r: np.ndarray, expected: float | None = None) -> float:
    """Variance of mostly-Gaussian residuals: mean square within 3.5 MAD-sigmas, corrected.

    Why not the MAD alone: the trimmed mean square is more efficient (about 2/n vs
    2.7/n relative variance) and still ignores the few texture outliers.

    ``expected``: the variance a previous fit predicts. Residuals are then kept within
    6 of its sigmas. Why: below one photon per pixel with a gain well above the read
    noise, the MAD measures the read noise alone and a 3.5-sigma trim drops the photon
    events themselves (half the variance at 0.05 photons); texture is screened already.
    """
    r = r[np.isfinite(r)]
    if expected is not None and expected > 0:
        kept = r[np.abs(r) <= 6.0 * math.sqrt(expected)]
        return float(np.mean(kept * kept)) if kept.size else 0.0
    sigma = _MAD * float(np.median(np.abs(r)))
    if sigma == 0:
        return float(np.mean(r * r))
    kept = r[np.abs(r) <= _TRIM * sigma]
    return float(np.mean(kept * kept)) / _TRIM_FACTOR


def _bins(s: _Samples) -> list[np.ndarray]:
    """Indices of bins of equal count by local mean (the samples are sorted by it)."""
    n = s.mean.size
    return np.array_split(np.arange(n), int(np.clip(n // 4000, 8, 48)))


def _binned_variances(
    s: _Samples,
    line: tuple[float, float, float] | None = None,
    width: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins of equal count by local mean: (mean level, robust variance, pixels used) each.

    Without ``line``, each bin keeps its smoother half by texture. With a first fit
    ``var = a * level + b``, it keeps the pixels whose texture is within what noise of
    that variance gives (90 % of flat pixels pass; edges and ramps do not). The line is
    ``(a, b, x0)``: ``var = a * (level - x0) + b``. ``width``: the noise's correlation
    widths (y, x), whose filter gains turn residual variances into noise variances.
    """
    residual_gain = _axis_gains(width[0])[0] * _axis_gains(width[1])[0]
    levels, variances, counts = [], [], []
    for idx in _bins(s):
        tex = s.texture[idx]
        if line is None:
            keep = idx[tex <= np.median(tex)]
        else:
            a, b, x0 = line
            var = max(a * (float(np.mean(s.level[idx])) - x0) + b, 0.0)
            keep = idx[tex**2 <= _FLAT_TEXTURE * _texture_gain(width) * var]
            if keep.size < 64:
                continue
        r = s.residual[keep]
        levels.append(float(np.mean(s.level[keep])))
        expected = None if line is None else var * residual_gain
        variances.append(_robust_variance(r, expected) / residual_gain)
        counts.append(keep.size)
    return np.array(levels), np.array(variances), np.array(counts, dtype=float)


def _noise_width(s: _Samples) -> tuple[float, float]:
    """Gaussian correlation widths (y, x) of the noise, from the smoother half of each bin.

    Per bin, the variance of the spacing-2 residual over the spacing-1 residual along
    each axis; the median over bins (textured bins are the outliers) gives the width.
    """
    ratios: list[tuple[float, float]] = []
    for idx in _bins(s):
        keep = idx[s.texture[idx] <= np.median(s.texture[idx])]
        v = _robust_variance(s.residual[keep])
        if v > 0:
            ratios.append(
                (
                    _robust_variance(s.residual_y2[keep]) / v,
                    _robust_variance(s.residual_x2[keep]) / v,
                )
            )
    if not ratios:
        return (0.0, 0.0)
    qy, qx = np.median(np.array(ratios), axis=0)
    return (_width_from_ratio(float(qy)), _width_from_ratio(float(qx)))


# --------------------------------------------------------------------------- line fit


def _weighted_line(x: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares ``v = a x + b`` with ``a >= 0`` and ``b >= 0``."""
    sw = w.sum()
    xm, vm = (w * x).sum() / sw, (w * v).sum() / sw
    sxx = (w * (x - xm) ** 2).sum()
    a = (w * (x - xm) * (v - vm)).sum() / sxx if sxx > 0 else 0.0
    b = vm - a * xm
    if a < 0:  # no signal dependence: a constant
        return 0.0, max(vm, 0.0)
    if b < 0:  # through the origin
        sxx0 = (w * x * x).sum()
        return (max((w * x * v).sum() / sxx0, 0.0) if sxx0 > 0 else 0.0), 0.0
    return float(a), float(b)


def _robust_line(x: np.ndarray, v: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """Iteratively reweighted line fit; bins far above or below it (texture) drop out.

    The standard error of a bin's variance from ``n`` (neighbour-correlated) residuals
    is taken as ``var * sqrt(2.72 / n)``; weights are ``1 / se**2`` times a bisquare of
    the residual in standard errors (cut at 6, or 6 robust spreads when bins scatter
    more).
    """
    # a floor for the bins' variances: dark bins of integer data can hold one value
    # (variance 0), whose weight 1/0 would swamp the fit and make it NaN
    positive = v[v > 0]
    floor = 1e-3 * float(np.median(positive)) if positive.size else 1e-300
    a, b = _weighted_line(x, v, n / np.maximum(v, floor) ** 2)
    for _ in range(20):
        pred = np.maximum(a * x + b, floor)
        se = pred * np.sqrt(2.72 / n)
        z = (v - pred) / se
        spread = max(1.0, _MAD * float(np.median(np.abs(z))))
        u = z / (6.0 * spread)
        bisquare = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        if np.count_nonzero(bisquare) < 2:
            break
        a_new, b_new = _weighted_line(x, v, bisquare / se**2)
        done = math.isclose(a_new, a, rel_tol=1e-6) and math.isclose(b_new, b, rel_tol=1e-6)
        a, b = a_new, b_new
        if done:
            break
    return a, b


# --------------------------------------------------------------------------- public


def _planes(image: Any, max_planes: int) -> list[np.ndarray]:
    """Up to ``max_planes`` evenly spaced 2-D planes (last two axes) as float64."""
    if not all(hasattr(image, a) for a in ("shape", "dtype", "__getitem__")):
        image = np.asarray(image)
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "iuf":
        raise TypeError(
            f"cannot estimate the noise of an image of dtype {dtype}: expected real numbers"
        )
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise ValueError(f"an image needs at least 2 dimensions (got shape {shape})")
    if min(shape[-2:]) < MIN_SIDE:
        raise ValueError(
            f"image of shape {shape} is too small to estimate its noise: the last two axes "
            f"must be at least {MIN_SIDE} pixels"
        )
    leads = list(np.ndindex(*shape[:-2]))
    if not leads:
        raise ValueError(f"cannot estimate the noise of an empty image (shape {shape})")
    if len(leads) > max_planes:
        leads = [leads[i] for i in np.linspace(0, len(leads) - 1, max_planes).round().astype(int)]
    return [np.asarray(image[lead], dtype=np.float64) for lead in leads]


def estimate_poisson_gaussian(
    image: Any, *, offset: float | None = None, max_planes: int = 8
) -> PoissonGaussian:
    """Estimate gain, read noise and black level of a camera image from the image alone.

    Why: it turns "some counts" into photons, which says how noisy the data really
    are and whether a model was trained for them (see the module docstring for the
    method). Accurate to a few per cent on images with smooth regions at several
    intensity levels; heavily textured images give upper bounds.

    Parameters
    ----------
    image : array-like
        2-D plane or a stack (the last two axes are Y, X; one channel only). Stacks
        are sampled at up to ``max_planes`` evenly spaced planes, whose pixels are
        pooled into one fit. NaN and inf pixels are ignored.
    offset : float, optional
        Known black level in data units (a camera's offset). None: estimated with
        :func:`black_level` (median over the planes looked at).
    max_planes : int
        Planes of a stack to look at.

    Returns
    -------
    PoissonGaussian
        ``gain`` is 0 for noise that does not depend on the signal.

    Raises
    ------
    ValueError
        For images smaller than 16 px per side, or with too few finite pixels.
    """
    if offset is not None and not math.isfinite(float(offset)):
        raise ValueError(f"offset must be a finite number or None (got {offset!r})")
    planes = _planes(image, max(1, int(max_planes)))
    samples = _pooled_samples(planes)
    if samples.mean.size < MIN_PIXELS:
        raise ValueError(
            f"too few usable pixels to estimate the noise ({samples.mean.size}; need "
            f"{MIN_PIXELS} away from NaN, saturation and borders)"
        )
    width = _noise_width(samples)
    levels, variances, counts = _binned_variances(samples, width=width)
    for _ in range(PASSES - 1):  # refits on noise-flat pixels, variance from the last fit
        x0 = float(levels.min())
        line = (*_robust_line(levels - x0, variances, counts), x0)
        flat = _binned_variances(samples, line, width)
        if flat[0].size < 2:
            break
        levels, variances, counts = flat
    if offset is None:
        # smoothed more than the denoising black level: a 1-px smoothing leaves the 0.5th
        # percentile about 0.6 read sigmas under the background, which the line's intercept
        # (read^2 - gain * that gap) turned into a read noise of 0 whenever gain > 1.5 read
        blacks = [black_level(p, ESTIMATE_BLACK_SMOOTH) for p in planes if np.isfinite(p).any()]
        offset = float(np.median(blacks))
    offset = float(offset)
    gain, intercept = _robust_line(levels - offset, variances, counts)
    finite = np.concatenate([p[np.isfinite(p)] for p in planes])
    return PoissonGaussian(
        gain=float(gain),
        read_sigma=float(math.sqrt(max(intercept, 0.0))),
        offset=offset,
        median_signal=float(np.median(finite)) - offset,
        correlation_width=width,
    )


def estimate_centre_crop(
    data: Any, channel_axis: int | None = None, side: int = CENTRE_CROP
) -> PoissonGaussian | None:
    """The noise of a centre crop of the middle plane (first channel); None if not estimable.

    Why a crop: choosing a model for a file or a layer needs the kind of noise, not
    the best estimate; a crop of one plane reads little of a big lazy (dask, zarr)
    array and takes a fraction of a second.

    Parameters
    ----------
    data : array-like
        Image or stack; the last two non-channel axes are Y, X.
    channel_axis : int, optional
        Channel axis (its first channel is used).
    side : int
        Largest crop side.
    """
    shape = tuple(int(n) for n in data.shape)
    if len(shape) < 2:
        return None
    if channel_axis is not None:
        channel_axis = int(channel_axis) % len(shape)
    spatial = [a for a in range(len(shape)) if a != channel_axis][-2:]
    index: list[Any] = [0 if a == channel_axis else n // 2 for a, n in enumerate(shape)]
    for a in spatial:
        start = max(0, (shape[a] - side) // 2)
        index[a] = slice(start, start + min(shape[a], side))
    try:
        crop = np.asarray(data[tuple(index)], dtype=np.float64)
        return estimate_poisson_gaussian(crop)
    except (ValueError, TypeError):
        return None
