"""Camera noise of a layer for the Denoise widget: model proposal, estimate, readout text.

Why its own module: the widget only wires controls; the rules (which layers are
offered the microscopy model, how the Poisson-Gaussian estimate reads, when it
warns) are plain functions, testable without Qt. No napari import.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src_models.registry import (  # one rule for widget and CLI
    MICROSCOPY_CORRELATED_MODEL,
    MICROSCOPY_MODEL,
    is_camera_data,
    looks_like_fluorescence_composite,
)

__all__ = [
    "CAMERA_SIDE",
    "MICROSCOPY_CORRELATED_MODEL",
    "MICROSCOPY_MODEL",
    "CameraNoise",
    "centre_crop_index",
    "composite_hint",
    "correlation_warning",
    "estimate_camera_noise",
    "finite_range",
    "microscopy_reason",
    "range_warning",
    "read_noise_warning",
    "readout_text",
    "trained_on_correlated_noise",
    "trained_photons_range",
    "trained_read_noise_range",
    "whole_plane",
]

log = logging.getLogger(__name__)

CAMERA_SIDE = 512  # the camera noise is estimated on a centre crop at most this big
# below this share of shot noise at the peak, the noise reads as Gaussian: a Gaussian frame's
# fitted slope leaves about 0.1 there (a few per cent of the slope's own uncertainty), while
# fluorescence at tens to thousands of photons gives 0.5 or more
SHOT_MIN = 0.25


def microscopy_reason(
    layer: Any, channel_axis: int | None, noise: CameraNoise | None = None
) -> str:
    """Why a microscopy model suits ``layer`` (and which), or "" if none does.

    Why these layers: camera data come as 12- to 16-bit integers in one channel
    per fluorophore; 8-bit gray and RGB layers are mostly photos. ``noise``: the
    layer's estimate when it found correlated noise and the model for it is proposed.
    """
    data = getattr(layer, "data", None)
    if data is None or not hasattr(data, "dtype"):
        return ""
    dtype = np.dtype(data.dtype)
    if not is_camera_data(dtype, rgb=bool(getattr(layer, "rgb", False))):
        return ""
    kind = "single-channel" if channel_axis is None else "multichannel"
    text = f"{8 * dtype.itemsize}-bit {kind} data"
    if noise is not None and noise.estimate.correlated:
        rho = max(noise.estimate.neighbour_correlation)
        text += f", noise correlated between neighbours ({rho:.2f})"
        return f"{text}: {MICROSCOPY_CORRELATED_MODEL} model proposed"
    return f"{text}: {MICROSCOPY_MODEL} model proposed"


def composite_hint(layer: Any) -> str:
    """A hint for RGB layers that look like fluorescence composites, or "".

    Why a hint, not a proposal: an RGB layer may be a photo taken in the dark; the
    user knows, and the colour model stays chosen unless they pick another.
    """
    if not getattr(layer, "rgb", False):
        return ""
    data = getattr(layer, "data", None)
    if getattr(layer, "multiscale", False) and data is not None:
        data = data[-1]  # the smallest level is enough for a look
    try:
        composite = data is not None and looks_like_fluorescence_composite(data)
    except Exception:  # a hint must never break the widget  # noqa: BLE001
        log.debug("composite check failed", exc_info=True)
        return ""
    if not composite:
        return ""
    return f"mostly dark RGB: if fluorescence, {MICROSCOPY_MODEL} (per channel) suits it better"


def centre_crop_index(
    shape: tuple[int, ...], plane_index: tuple, channel_axis: int | None, side: int
) -> tuple:
    """Index of a centre crop, at most ``side`` pixels per spatial axis, of one plane.

    ``plane_index`` is a plane's index from :func:`~napari_bfcnn._planes.plan_planes`
    (loop axes fixed, spatial axes ``slice(None)``).
    """
    index = list(plane_index)
    spatial = [a for a in range(len(shape)) if a != channel_axis][-2:]
    for ax in spatial:
        n = int(shape[ax])
        start = max(0, (n - side) // 2)
        index[ax] = slice(start, start + min(n, side))
    return tuple(index)


@dataclass(frozen=True)
class CameraNoise:
    """A Poisson-Gaussian estimate of one crop and the crop's peak (data units)."""

    estimate: Any  # src_models.noise_model.PoissonGaussian
    peak: float  # the plane's largest value (the crop's for lazy data): the engine's full scale

    @property
    def photons_full_scale(self) -> float:
        """Photons at the peak: the engine's full scale, in the units of a model's photons_range."""
        return self.estimate.photons_at(self.peak)

    @property
    def read_noise_full_scale(self) -> float:
        """Read-noise sigma on the 8-bit scale of the signal at the peak (a recipe's read_noise
        units: ``read_sigma / (peak - offset) * 255``); inf without signal."""
        signal = self.peak - self.estimate.offset
        return math.inf if signal <= 0 else self.estimate.read_sigma / signal * 255.0

    @property
    def shot_fraction_peak(self) -> float:
        """Share of the noise variance at the peak that is shot noise (0: Gaussian)."""
        return self.estimate.shot_fraction_at(self.peak)

    @property
    def snr_peak(self) -> float:
        """Signal-to-noise ratio at the peak."""
        return self.estimate.snr_at(self.peak)

    @property
    def shot_noise(self) -> bool:
        """Whether shot noise is a real part of the noise where the signal is (at the peak).

        Why not at the median: in a fluorescence image mostly of dark background the
        median pixel holds no signal, so shot noise would never count there.
        """
        return self.estimate.gain > 0 and self.shot_fraction_peak >= SHOT_MIN


def estimate_camera_noise(
    crop: np.ndarray, offset: float | None = None, peak: float | None = None
) -> CameraNoise | None:
    """Estimate gain, read noise and black level of a 2-D crop; None if it cannot be done.

    ``peak``: the whole plane's largest value, which the engine scales to 1 (default:
    the crop's). Why None, not an exception: it runs in a worker for a label; a crop
    that is too small or all NaN just shows "-".
    """
    from src_models.noise_model import estimate_poisson_gaussian

    try:
        est = estimate_poisson_gaussian(crop, offset=offset)
    except (ValueError, TypeError) as err:
        log.debug("camera noise estimate failed: %s", err)
        return None
    if peak is None:
        peak = finite_range(crop)[1]
    return CameraNoise(est, float(peak))


def finite_range(data: np.ndarray) -> tuple[float | None, float | None]:
    """(min, max) over the finite values, (None, None) if there are none."""
    if data.dtype.kind == "f":
        data = data[np.isfinite(data)]
    if data.size == 0:
        return None, None
    return float(data.min()), float(data.max())


def whole_plane(data: Any, crop_index: tuple) -> np.ndarray | None:
    """The plane a crop index cuts from, for data in memory (None for lazy data).

    Why only in memory: the engine scales each plane by its whole range, which costs
    milliseconds on a numpy array but whole chunks on a dask or zarr one.
    """
    if not isinstance(data, np.ndarray):
        return None
    return data[tuple(slice(None) if isinstance(i, slice) else i for i in crop_index)]


def readout_text(noise: CameraNoise | None) -> str:
    """The camera model (gain, read noise, black level), then SNR and photons; a third line
    when neighbouring pixels' noise is correlated (white-noise models may leave it)."""
    if noise is None:
        return "-"
    est = noise.estimate
    snr = est.snr_median
    if not noise.shot_noise:
        text = (
            f"no shot noise: Gaussian, \u03c3 {est.read_sigma:.3g}\n"
            f"SNR {snr:.3g} at median, {noise.snr_peak:.3g} at peak"
        )
    else:
        text = (
            f"gain {est.gain:.3g}/photon, read \u03c3 {est.read_sigma:.3g}, "
            f"black {est.offset:.5g}\n"
            f"SNR {snr:.3g} at median (\u2248 {est.photons_median:.3g} photons), "
            f"{noise.snr_peak:.3g} at peak (\u2248 {noise.photons_full_scale:.3g})"
        )
    if est.correlated:
        rho_y, rho_x = est.neighbour_correlation
        text += f"\nnoise correlated between neighbours: {rho_y:.2f} (y), {rho_x:.2f} (x)"
    return text


def range_warning(noise: CameraNoise | None, model: str, photons_range: Any) -> str:
    """A warning when the photons at full scale lie outside the model's trained range, else ""."""
    if noise is None or photons_range is None or not noise.shot_noise:
        return ""
    lo, hi = (float(v) for v in photons_range)
    photons = noise.photons_full_scale
    if not math.isfinite(photons) or lo <= photons <= hi:
        return ""
    side = "below" if photons < lo else "above"
    return (
        f"\u26a0 \u2248 {photons:.3g} photons at full scale: {side} {model}'s trained range "
        f"({lo:g}\u2013{hi:g})"
    )


def read_noise_warning(noise: CameraNoise | None, model: str, read_range: Any) -> str:
    """A warning when the read noise, relative to full scale, is above the model's trained
    range, else "". Why: at a few photons a camera's 1-2 electrons of read noise are a
    large share of the signal, and a model never shown that much leaves it in."""
    if noise is None or read_range is None or not noise.shot_noise:
        return ""
    hi = float(read_range[1])
    read = noise.read_noise_full_scale
    if not math.isfinite(read) or read <= hi:
        return ""
    return (
        f"\u26a0 read noise \u2248 {read:.3g}/255 of full scale: above {model}'s trained range "
        f"(up to {hi:g})"
    )


def correlation_warning(noise: CameraNoise | None, model: str, trained: bool | None) -> str:
    """A warning when the noise is correlated between neighbours and ``model`` was trained
    on white noise only (``trained`` False), else ""."""
    if noise is None or trained is not False or not noise.estimate.correlated:
        return ""
    rho = max(noise.estimate.neighbour_correlation)
    return (
        f"\u26a0 noise correlated between neighbours ({rho:.2f}): {model} was trained on "
        "white noise and may keep it as texture"
    )


def trained_photons_range(path: str | Path | None) -> tuple[float, float] | None:
    """``card.recipe.corruption.photons_range`` of a model file trained on Poisson-Gaussian noise.

    None for models without a recipe or never trained on shot noise (their
    photons_range is only a default), and for unreadable files.
    """
    corruption = _shot_noise_corruption(path)
    if corruption is None:
        return None
    lo, hi = corruption.photons_range
    return float(lo), float(hi)


def trained_read_noise_range(path: str | Path | None) -> tuple[float, float] | None:
    """``card.recipe.corruption.read_noise_range`` (8-bit scale of full scale) of a model file
    trained on Poisson-Gaussian noise; None otherwise (see :func:`trained_photons_range`)."""
    corruption = _shot_noise_corruption(path)
    if corruption is None:
        return None
    lo, hi = corruption.read_noise_range
    return float(lo), float(hi)


def trained_on_correlated_noise(path: str | Path | None) -> bool | None:
    """Whether a model file's recipe includes spatially correlated noise; None if unknown."""
    corruption = _trained_corruption(path)
    return None if corruption is None else corruption.correlated_prob > 0


def _shot_noise_corruption(path: str | Path | None) -> Any:
    """:func:`_trained_corruption` of a model trained on Poisson-Gaussian noise, else None."""
    corruption = _trained_corruption(path)
    if corruption is None or corruption.poisson_gaussian_prob <= 0:
        return None
    return corruption


def _trained_corruption(path: str | Path | None) -> Any:
    """``card.recipe.corruption`` of a model file; None without a recipe or when unreadable."""
    if path is None:
        return None
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _corruption(str(path), mtime)


@functools.lru_cache(maxsize=32)
def _corruption(path: str, _mtime: int) -> Any:
    from src_models.modelfile import ModelFileError, read_card

    try:
        card = read_card(path)
    except ModelFileError:
        return None
    return None if card.recipe is None else card.recipe.corruption
