"""Training corruptions: blur, subsampling and noise drawn per sample from a CorruptionConfig.

Why numpy only: the data pipeline runs on the CPU for every Keras backend, and a
per-sample ``np.random.Generator`` makes each corrupted sample reproducible from
(seed, index) alone, so a resumed training run sees exactly the same data.

Units: images are float32 (H, W, C) in [0, 1]; noise sigmas and read noise are on
the 8-bit scale (divided by 255 here); photons are counted at signal 1.0.
Blur and subsampling degrade the *input* only: the target stays the clean image,
so the model learns to undo them as well as the noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import CorruptionConfig
from .noise_model import correlation_kernel

__all__ = [
    "add_gaussian",
    "blur3x3",
    "check_seed",
    "correlate_noise",
    "corrupt",
    "corrupt_batch",
    "poisson_gaussian",
    "subsample",
]


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(
            f"{name} must have shape (H, W, C), got shape {image.shape} ({image.ndim} dimensions)"
        )
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must be a float image in [0, 1], got dtype {image.dtype}")
    return image.astype(np.float32, copy=False)


def _channel_sigmas(sigma_8bit: float | Sequence[float], channels: int) -> np.ndarray:
    sig = np.asarray(sigma_8bit, dtype=np.float64).reshape(-1)
    if sig.size == 1:
        sig = np.repeat(sig, channels)
    if sig.size != channels:
        raise ValueError(f"sigma_8bit has {sig.size} values but the image has {channels} channels")
    if np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise ValueError(f"sigma_8bit must be finite and >= 0 (got {sig.tolist()})")
    return sig


def add_gaussian(
    image: np.ndarray, sigma_8bit: float | Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Add white Gaussian noise.

    Parameters
    ----------
    image : ndarray
        float (H, W, C) image in [0, 1].
    sigma_8bit : float or sequence of float
        Noise standard deviation on the 8-bit scale; one value for all channels or one per channel.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        float32 (H, W, C) noisy image (not clipped).
    """
    image = _check_image(image)
    sig = _channel_sigmas(sigma_8bit, image.shape[-1]).astype(np.float32) / np.float32(255.0)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return image + noise * sig


def poisson_gaussian(
    image: np.ndarray, photons: float, read_sigma_8bit: float, rng: np.random.Generator
) -> np.ndarray:
    """Shot noise plus read noise: ``poisson(image * photons) / photons + N(0, read / 255)``.

    The variance in [0, 1] units is ``signal / photons + (read_sigma_8bit / 255) ** 2``.
    Negative input values are treated as 0 for the Poisson part.

    Parameters
    ----------
    image : ndarray
        float (H, W, C) image in [0, 1].
    photons : float
        Expected photon count at signal 1.0 (> 0); lower is noisier.
    read_sigma_8bit : float
        Read-noise standard deviation on the 8-bit scale (>= 0).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        float32 (H, W, C) noisy image (not clipped).
    """
    image = _check_image(image)
    if not (np.isfinite(photons) and photons > 0):
        raise ValueError(f"photons must be > 0 (got {photons})")
    if not (np.isfinite(read_sigma_8bit) and read_sigma_8bit >= 0):
        raise ValueError(f"read_sigma_8bit must be >= 0 (got {read_sigma_8bit})")
    lam = np.maximum(image.astype(np.float64), 0.0) * photons
    shot = (rng.poisson(lam) / photons).astype(np.float32)
    read = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(read_sigma_8bit / 255.0)
    return shot + read


def _gauss3(sigma: float) -> np.ndarray:
    x = np.array([-1.0, 0.0, 1.0])
    k = np.exp(-(x**2) / (2.0 * max(sigma, 1e-6) ** 2))
    return k / k.sum()


def blur3x3(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable 3x3 Gaussian blur with mirrored borders; keeps flat images and the mean level.

    Parameters
    ----------
    image : ndarray
        float (H, W, C).
    sigma : float
        Gaussian standard deviation in pixels (0 leaves the image unchanged).

    Returns
    -------
    ndarray
        float32 (H, W, C).
    """
    image = _check_image(image)
    k = _gauss3(sigma).astype(np.float32)
    p = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="symmetric")
    rows = k[0] * p[:-2] + k[1] * p[1:-1] + k[2] * p[2:]
    return k[0] * rows[:, :-2] + k[1] * rows[:, 1:-1] + k[2] * rows[:, 2:]


def correlate_noise(noise: np.ndarray, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Low-pass a white noise field with a Gaussian, keeping its per-pixel variance.

    Why: real cameras and scanners do not deliver white noise. Resampled widefield
    frames and demosaiced photos correlate neighbouring pixels in both directions,
    and point-scanning amplifiers along the scan line. A denoiser trained only on
    white noise takes such noise for texture and leaves it.

    Parameters
    ----------
    noise : ndarray
        float (H, W, C) zero-mean noise.
    sigma_y, sigma_x : float
        Gaussian widths in pixels along rows and columns (>= 0; 0 keeps that axis white).

    Returns
    -------
    ndarray
        float32 (H, W, C). For white input the output variance equals the input's
        (:func:`correlation_kernel` has unit energy); for signal-dependent noise, locally.
    """
    noise = _check_image(noise, "noise")
    if not (np.isfinite(sigma_y) and np.isfinite(sigma_x) and sigma_y >= 0 and sigma_x >= 0):
        raise ValueError(f"sigma_y and sigma_x must be >= 0 (got {sigma_y}, {sigma_x})")
    from scipy import ndimage

    out = noise
    for axis, sigma in ((0, sigma_y), (1, sigma_x)):
        kernel = correlation_kernel(sigma)
        # zero padding, then each pixel divided by the energy of the taps it had: reflected
        # padding reuses the same noise values, which raised the variance at the borders
        # 1.6-1.9 fold per axis (R2R draws its noise per crop, so every crop border)
        out = ndimage.correlate1d(out, kernel, axis=axis, mode="constant")
        energy = ndimage.correlate1d(np.ones(out.shape[axis]), kernel**2, mode="constant")
        shape = [1] * out.ndim
        shape[axis] = -1
        out = out / np.sqrt(energy).reshape(shape)
    return out.astype(np.float32)


def _upsample_axis_linear(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Linear upsampling along one axis with half-pixel centres (like align_corners=False)."""
    n = x.shape[axis]
    src = (np.arange(n * factor) + 0.5) / factor - 0.5
    src = np.clip(src, 0.0, n - 1)
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(x, lo, axis=axis) * (1.0 - w) + np.take(x, hi, axis=axis) * w


def subsample(image: np.ndarray, factor: int, mode: str = "bilinear") -> np.ndarray:
    """Average ``factor x factor`` blocks, then scale back up to the original size.

    Sizes that are not multiples of ``factor`` are mirror-padded first and cropped after.

    Parameters
    ----------
    image : ndarray
        float (H, W, C).
    factor : int
        Down-sampling factor (>= 1).
    mode : {"bilinear", "nearest"}
        How to scale back up.

    Returns
    -------
    ndarray
        float32 (H, W, C), same shape as ``image``.
    """
    image = _check_image(image)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer (got {factor})")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest' (got {mode!r})")
    factor = int(factor)
    h, w, c = image.shape
    ph, pw = (-h) % factor, (-w) % factor
    x = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="symmetric") if (ph or pw) else image
    hh, ww = x.shape[0] // factor, x.shape[1] // factor
    small = x.reshape(hh, factor, ww, factor, c).mean(axis=(1, 3), dtype=np.float32)
    if mode == "nearest":
        up = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
    else:
        up = _upsample_axis_linear(_upsample_axis_linear(small, factor, 0), factor, 1)
    return np.ascontiguousarray(up[:h, :w], dtype=np.float32)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def corrupt(
    clean: np.ndarray, config: CorruptionConfig, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade one clean image with corruptions drawn from ``config``.

    Steps, each drawn independently per sample: (1) 3x3 Gaussian blur with ``blur_prob``;
    (2) area-average subsampling, scaled back up (bilinear or nearest, 50/50) with
    ``subsample_prob``; (3) noise: with ``clean_prob`` near-clean Gaussian noise
    (sigma uniform in [0, clean_sigma_max]); otherwise with ``poisson_gaussian_prob``
    Poisson-Gaussian noise (photons log-uniform in ``photons_range``, read sigma uniform in
    ``read_noise_range``); otherwise Gaussian noise with sigma uniform in ``sigma_range``
    (one sigma for all channels, or with ``per_channel_prob`` one per channel); then, with
    ``correlated_prob``, that noise is spatially correlated (:func:`correlate_noise`; widths
    uniform in ``correlated_sigma_range``, isotropic or, half the time, one per axis); then, with
    ``multiplicative_prob``, speckle: ``signal * N(0, s)`` added, s uniform in
    ``multiplicative_range``, i.e. the degraded signal is multiplied by ``1 + N(0, s)``;
    (4) optional clip to [0, 1] and 8-bit quantisation. The target stays ``clean``.

    Parameters
    ----------
    clean : ndarray
        float (H, W, C) image in [0, 1]; not modified.
    config : CorruptionConfig
    rng : numpy.random.Generator
        The sample's own generator.

    Returns
    -------
    noisy : ndarray
        float32 (H, W, C).
    info : dict
        JSON-friendly description: ``kinds`` (list of str, in order applied), ``noise``
        ("clean", "gaussian" or "poisson_gaussian"), ``sigma`` (per-channel noise sigma,
        8-bit; for Poisson-Gaussian the effective sigma at the channel's mean signal), and
        ``blur_sigma``, ``subsample_factor``, ``upsample``, ``photons``, ``read_sigma``,
        ``correlated_sigma`` ([y, x]), ``multiplicative_sigma`` when those steps were applied.
    """
    x = _check_image(clean, "clean")
    channels = x.shape[-1]
    info: dict[str, Any] = {"kinds": []}

    if rng.random() < config.blur_prob:
        s = float(rng.uniform(*config.blur_sigma_range))
        x = blur3x3(x, s)
        info["kinds"].append("blur")
        info["blur_sigma"] = s

    if rng.random() < config.subsample_prob:
        factor = int(config.subsample_factors[rng.integers(len(config.subsample_factors))])
        mode = "bilinear" if rng.random() < 0.5 else "nearest"
        x = subsample(x, factor, mode)
        info["kinds"].append("subsample")
        info["subsample_factor"] = factor
        info["upsample"] = mode

    signal = x
    if rng.random() < config.clean_prob:
        s = float(rng.uniform(0.0, config.clean_sigma_max))
        noisy = add_gaussian(signal, s, rng)
        info["kinds"].append("clean")
        info["noise"] = "clean"
        info["sigma"] = [s] * channels
    elif rng.random() < config.poisson_gaussian_prob:
        lo, hi = config.photons_range
        if lo <= 0:
            raise ValueError(
                f"photons_range must be > 0 for Poisson-Gaussian noise (got {config.photons_range})"
            )
        photons = _log_uniform(rng, lo, hi)
        read = float(rng.uniform(*config.read_noise_range))
        noisy = poisson_gaussian(signal, photons, read, rng)
        mean_signal = np.maximum(signal, 0.0).mean(axis=(0, 1), dtype=np.float64)
        eff = np.sqrt(mean_signal / photons + (read / 255.0) ** 2) * 255.0
        info["kinds"].append("poisson_gaussian")
        info["noise"] = "poisson_gaussian"
        info["photons"] = photons
        info["read_sigma"] = read
        info["sigma"] = [float(v) for v in eff]
    else:
        if rng.random() < config.per_channel_prob:
            sig = [float(v) for v in rng.uniform(*config.sigma_range, size=channels)]
            info["kinds"].append("gaussian_per_channel")
        else:
            sig = [float(rng.uniform(*config.sigma_range))] * channels
            info["kinds"].append("gaussian")
        noisy = add_gaussian(signal, sig, rng)
        info["noise"] = "gaussian"
        info["sigma"] = sig

    # Drawn only when enabled, so recipes without it keep their exact sample stream.
    if config.correlated_prob > 0 and rng.random() < config.correlated_prob:
        sy = float(rng.uniform(*config.correlated_sigma_range))
        sx = sy if rng.random() < 0.5 else float(rng.uniform(*config.correlated_sigma_range))
        noisy = signal + correlate_noise(noisy - signal, sy, sx)
        info["kinds"].append("correlated")
        info["correlated_sigma"] = [sy, sx]

    if rng.random() < config.multiplicative_prob:
        s = float(rng.uniform(*config.multiplicative_range))
        noisy = noisy + signal * rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(s)
        info["kinds"].append("multiplicative")
        info["multiplicative_sigma"] = s

    if config.clip:
        noisy = np.clip(noisy, 0.0, 1.0)
    if config.quantize:
        noisy = np.round(noisy * np.float32(255.0)) / np.float32(255.0)
    return np.ascontiguousarray(noisy, dtype=np.float32), info


def check_seed(seed: int, name: str = "seed") -> int:
    """Return ``seed`` as an int, or raise naming it (numpy seed sequences need ints >= 0)."""
    if isinstance(seed, (bool, np.bool_)) or int(seed) != seed or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer (got {seed!r})")
    return int(seed)


def corrupt_batch(
    clean_batch: np.ndarray, config: CorruptionConfig, seed: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Corrupt each image of a batch with its own generator ``default_rng([seed, i])``.

    Why: sample ``i`` then depends only on (seed, i), not on the batch size or order of calls.

    Parameters
    ----------
    clean_batch : ndarray
        float (N, H, W, C) images in [0, 1].
    config : CorruptionConfig
    seed : int
        Non-negative seed.

    Returns
    -------
    noisy : ndarray
        float32 (N, H, W, C).
    infos : list of dict
        One :func:`corrupt` info dict per sample.
    """
    clean_batch = np.asarray(clean_batch)
    if clean_batch.ndim != 4:
        raise ValueError(f"clean_batch must have shape (N, H, W, C), got shape {clean_batch.shape}")
    seed = check_seed(seed)
    noisy = np.empty(clean_batch.shape, dtype=np.float32)
    infos = []
    for i in range(clean_batch.shape[0]):
        noisy[i], info = corrupt(clean_batch[i], config, np.random.default_rng([seed, i]))
        infos.append(info)
    return noisy, infos
