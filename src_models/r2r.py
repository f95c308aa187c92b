"""Recorrupted-to-Recorrupted: train a denoiser from noisy images alone (Pang et al., CVPR 2021).

Why a second noisy-only method: Neighbor2Neighbor (:mod:`src_models.n2n`) trains on
half-resolution sub-images, so it adapts the network at the wrong scale; fine-tuning
a bundled model on one real noisy frame with it does not beat the base model.
Recorrupted-to-Recorrupted (R2R) trains on full-resolution crops, in the regime the
network denoises in, with the plain supervised step of the other modes (no custom
gradient code), so the bias-free network stays positively homogeneous.

How: for a noisy ``y = x + n`` draw a zero-mean ``z`` with the covariance ``S`` of
``n`` and train on the pair::

    input  = y + alpha * z
    target = y - z / alpha

The input's noise ``n + alpha z`` and the target's noise ``n - z / alpha`` have
covariance ``S - S = 0``, so ``E ||D(input) - target||^2 = E ||D(input) - x||^2 +
const`` up to terms of higher order: the supervised loss at the noise level
``(1 + alpha^2) S`` (1.25 S for ``alpha = 0.5``). The models are blind (trained
across noise levels), so training slightly above the data's level is fine.

The noise is Poisson-Gaussian, per pixel
(:func:`src_models.noise_model.estimate_poisson_gaussian`, estimated once per image on
the whole image, in the normalised units the sampler receives)::

    S = gain * max(s - black, 0) + read^2

with ``s`` a signal estimate: the bound model's own no-gradient prediction ``D(y)``
of the crop (the noisy crop itself while no model is bound).

Why ``z`` is not simply Gaussian: shot noise is skewed (third cumulant
``gain * shot variance``), and the loss's next term after the covariance is
``Cum(input noise, input noise, target noise) * E[D'']`` = ``(kappa3(n) - alpha *
kappa3(z)) * E[D'']``. With Gaussian ``z`` it does not vanish, and at a few photons per
pixel it outweighs what there is to learn: with Gaussian ``z``, fine-tuning the
bundled ``microscopy`` model on a synthetic 8-photon frame lost PSNR even with the true
noise parameters, while the held-out score (biased alike) rose
(``tools/r2r_synthetic.py`` is that check). So the shot part of ``z`` is
a scaled Poisson draw, ``(gain / alpha) * (Poisson(alpha^2 lam) - alpha^2 lam)`` with
``lam = max(s - black, 0) / gain`` photons: variance ``gain * max(s - black, 0)`` and
third cumulant ``kappa3(n) / alpha``, so both terms vanish; the read part stays
Gaussian. Where the estimate finds the noise correlated between neighbouring pixels,
``z`` is Gaussian, correlated the same way
(:func:`src_models.corruptions.correlate_noise`; second order only): with white ``z``
the pair's noises would not cancel in covariance, and the model would learn to keep
the correlated part. Where the estimate fails or finds no noise, ``S = sigma^2``
with the Gaussian sigma of :func:`src_models.inference.estimate_sigma`.

Reference: T. Pang, H. Zheng, Y. Quan, H. Ji, *Recorrupted-to-Recorrupted:
Unsupervised Deep Learning for Image Denoising*, CVPR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import CorruptionConfig
from .corruptions import check_seed, correlate_noise
from .data import PatchSampler, check_images
from .noise_model import PoissonGaussian

__all__ = [
    "Recorrupted2RecorruptedSampler",
    "estimate_noise",
    "noise_variance",
    "recorrupt",
    "recorruption",
    "validation_pairs",
]

_R2R_STREAM = 6  # training recorruptions: default_rng([seed, step, 6])
_R2R_VAL_STREAM = 8  # held-out recorruptions: default_rng([seed, 8, draw])
VAL_SIGNAL_SMOOTH = 2.0  # Gaussian sigma (px) of the held-out crop's signal estimate

NoiseSpec = PoissonGaussian | float


def _gaussian(sigma: float) -> PoissonGaussian:
    return PoissonGaussian(gain=0.0, read_sigma=float(sigma), offset=0.0)


def _usable(noise: PoissonGaussian) -> bool:
    values = (noise.gain, noise.read_sigma, noise.offset)
    if not all(math.isfinite(v) for v in values):
        return False
    return noise.gain >= 0 and noise.read_sigma >= 0 and (noise.gain > 0 or noise.read_sigma > 0)


def _shared_channels(image: np.ndarray) -> bool:
    """True when all channels are one channel repeated (a gray plane fed to a colour model)."""
    return image.shape[-1] > 1 and all(
        np.array_equal(image[..., 0], image[..., c]) for c in range(1, image.shape[-1])
    )


def estimate_noise(image: np.ndarray) -> PoissonGaussian:
    """Poisson-Gaussian noise of one normalised (H, W, C) image, in its own units.

    The channels are pooled into one fit (a single channel when they are copies).
    Falls back to Gaussian noise (``gain = 0``, ``read_sigma`` from
    :func:`src_models.inference.estimate_sigma`) when the image is too small for the
    Poisson-Gaussian estimator or it finds no noise.

    Parameters
    ----------
    image : ndarray
        float (H, W, C).

    Returns
    -------
    PoissonGaussian
    """
    from .inference import estimate_sigma
    from .noise_model import estimate_poisson_gaussian

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (H, W, C), got shape {image.shape}")
    planes = image[..., :1] if _shared_channels(image) else image
    try:
        noise = estimate_poisson_gaussian(np.moveaxis(planes, -1, 0))
    except ValueError:
        noise = None
    if noise is not None and _usable(noise):
        return noise
    sigma = estimate_sigma(planes, channel_axis=-1)
    return _gaussian(sigma if math.isfinite(sigma) and sigma > 0 else 0.0)


def noise_variance(signal: Any, noise: PoissonGaussian) -> np.ndarray:
    """Per-pixel noise variance ``gain * max(signal - offset, 0) + read_sigma^2``, float32."""
    signal = np.asarray(signal, dtype=np.float32)
    shot = np.float32(noise.gain) * np.maximum(signal - np.float32(noise.offset), 0.0)
    return shot + np.float32(noise.read_sigma**2)


_GAUSSIAN_SHOT_ABOVE = 1e7  # photons per draw above which a Poisson draw is taken as Gaussian


def recorruption(
    signal: np.ndarray,
    noise: PoissonGaussian,
    alpha: float,
    rng: np.random.Generator,
    shared: bool = False,
) -> np.ndarray:
    """The recorruption ``z`` of one image: the noise's variance and its shot-noise skew.

    Variance ``gain * max(signal - offset, 0) + read_sigma^2`` per pixel; the shot part
    is ``(gain / alpha) * (Poisson(alpha^2 lam) - alpha^2 lam)`` with ``lam = max(signal
    - offset, 0) / gain`` photons, so its third cumulant is ``gain * shot variance /
    alpha`` (the module docstring says why). Gaussian, correlated like the noise, where
    ``noise.correlation_width`` is non-zero; plain Gaussian where ``gain`` is 0.

    Parameters
    ----------
    signal : ndarray
        float (H, W, C) signal estimate, in the noise's units.
    noise : PoissonGaussian
    alpha : float
        > 0.
    rng : numpy.random.Generator
    shared : bool
        The channels are copies of one channel: one ``z`` for all of them.

    Returns
    -------
    ndarray
        float32, the shape of ``signal``.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 3:
        raise ValueError(f"signal must have shape (H, W, C), got shape {signal.shape}")
    channels = signal.shape[-1]
    if shared:
        signal = signal[..., :1]
    correlated = any(w > 0 for w in noise.correlation_width)
    if noise.gain > 0 and not correlated:
        photons = np.maximum(signal.astype(np.float64) - noise.offset, 0.0) / noise.gain
        photons = np.nan_to_num(photons, nan=0.0, posinf=0.0)  # Poisson draws refuse NaN
        mean = alpha**2 * photons
        big = mean > _GAUSSIAN_SHOT_ABOVE
        drawn = np.where(big, 0.0, mean)
        z = (noise.gain / alpha) * (rng.poisson(drawn) - drawn)
        if np.any(big):  # skew ~ 1/sqrt(photons): negligible, and beyond Poisson's range
            gauss = rng.standard_normal(signal.shape) * np.sqrt(noise.gain * noise.gain * photons)
            z = np.where(big, gauss, z)
        z += noise.read_sigma * rng.standard_normal(signal.shape)
        z = z.astype(np.float32)
    else:
        z = rng.standard_normal(signal.shape, dtype=np.float32)
        if correlated:
            z = correlate_noise(z, *noise.correlation_width)
        z *= np.sqrt(noise_variance(signal, noise), dtype=np.float32)
    if shared:
        z = np.repeat(z, channels, axis=-1)
    return z


def recorrupt(y: np.ndarray, z: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The R2R pair ``(y + alpha z, y - z / alpha)``, float32.

    Parameters
    ----------
    y : ndarray
        float noisy image(s).
    z : ndarray
        Recorruption of the shape of ``y`` (:func:`recorruption`).
    alpha : float
        > 0.

    Returns
    -------
    input, target : ndarray
    """
    y = np.asarray(y, dtype=np.float32)
    z = np.asarray(z, dtype=np.float32)
    if z.shape != y.shape:
        raise ValueError(f"z has shape {z.shape}, y {y.shape}")
    a = np.float32(alpha)
    return y + a * z, y - z / a


def validation_pairs(
    crop: np.ndarray,
    noise: PoissonGaussian,
    alpha: float,
    seed: int,
    draws: int = 4,
    signal: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed R2R pairs of a held-out crop, to score a model without a clean image.

    ``E ||D(input) - target||^2`` is the true error of ``D`` at the noise level
    ``(1 + alpha^2) S`` plus a constant, so the PSNR against the targets rises as the
    true error falls. The recorruption uses one signal for every model scored, so
    their scores are comparable: ``signal`` (fine-tuning passes the base model's
    output for the crop), else the crop smoothed with a Gaussian of 2 px.

    Parameters
    ----------
    crop : ndarray
        float (H, W, C) noisy crop.
    noise : PoissonGaussian
        Its noise, in its units.
    alpha : float
    seed : int
    draws : int
        Independent recorruptions (their mean squared error is the score).
    signal : ndarray, optional
        Signal estimate of the crop, its shape.

    Returns
    -------
    list of (input, target)
        float32 (H, W, C) each.
    """
    from scipy import ndimage

    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim != 3:
        raise ValueError(f"crop must have shape (H, W, C), got shape {crop.shape}")
    if signal is None:
        signal = ndimage.gaussian_filter(crop, (VAL_SIGNAL_SMOOTH, VAL_SIGNAL_SMOOTH, 0.0))
    signal = np.asarray(signal, dtype=np.float32)
    if signal.shape != crop.shape:
        raise ValueError(f"signal has shape {signal.shape}, crop {crop.shape}")
    shared = _shared_channels(crop)
    out = []
    for k in range(int(draws)):
        rng = np.random.default_rng([check_seed(seed), _R2R_VAL_STREAM, k])
        out.append(recorrupt(crop, recorruption(signal, noise, alpha, rng, shared), alpha))
    return out


def _noise_list(noise: NoiseSpec | Sequence[NoiseSpec] | None, images: list[np.ndarray]):
    if noise is None:
        return [estimate_noise(im) for im in images]
    if isinstance(noise, (PoissonGaussian, int, float)):
        noise = [noise] * len(images)
    noise = list(noise)
    if len(noise) != len(images):
        raise ValueError(f"{len(noise)} noise models for {len(images)} images: give one per image")
    out = []
    for i, n in enumerate(noise):
        n = n if isinstance(n, PoissonGaussian) else _gaussian(float(n))
        if not (_usable(n) or (n.gain == 0 and n.read_sigma == 0 and math.isfinite(n.offset))):
            raise ValueError(f"noise[{i}] must have finite gain >= 0 and read_sigma >= 0: {n}")
        out.append(n)
    return out


class Recorrupted2RecorruptedSampler:
    """Self-supervised batches ``(y + alpha z, y - z / alpha)``, fixed by (seed, step, model).

    Each image carries one more channel holding its index, so a crop knows its source
    image's noise through the crop, flip and rotation of :class:`~src_models.data.PatchSampler`.

    Parameters
    ----------
    images : list of ndarray
        float (H, W, C) *noisy* images, normalised like the clean ones of other modes.
    patch_size : int
        Side of the network's input patches (full-resolution crops).
    batch_size : int
    seed : int
    augment : bool
        Random flips and 90-degree rotations of the crops.
    alpha : float
        Recorruption strength (> 0; the paper uses 0.5): training runs at
        ``(1 + alpha^2)`` times the data's noise variance.
    noise : PoissonGaussian, float, or a sequence of them (one per image), optional
        The images' noise in their units (a float is a Gaussian sigma). None: estimated
        once per image (:func:`estimate_noise`).
    """

    def __init__(
        self,
        images: list[np.ndarray],
        patch_size: int,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
        alpha: float = 0.5,
        noise: NoiseSpec | Sequence[NoiseSpec] | None = None,
    ) -> None:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be > 0 (got {alpha})")
        imgs = check_images(images)
        self.seed = check_seed(seed)
        self.alpha = float(alpha)
        self.patch_size = int(patch_size)
        self.channels = imgs[0].shape[-1]
        self.noise: tuple[PoissonGaussian, ...] = tuple(_noise_list(noise, imgs))
        self._shared = np.array([_shared_channels(im) for im in imgs])
        tagged = [
            np.concatenate([im, np.full((*im.shape[:2], 1), k, np.float32)], axis=-1)
            for k, im in enumerate(imgs)
        ]
        self._crops = PatchSampler(
            tagged, self.patch_size, batch_size, CorruptionConfig(), seed=seed, augment=augment
        )
        self._model: Any = None

    def bind(self, model: Any) -> None:
        """The model being trained (its no-gradient output is the signal of the noise model)."""
        self._model = model

    def crops(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The noisy crops of batch ``step`` (float32 (B, P, P, C)) and their image indices (B,)."""
        both = self._crops.clean_patches(step)
        which = np.rint(both[:, 0, 0, self.channels]).astype(np.intp)
        return np.ascontiguousarray(both[..., : self.channels]), which

    def signal(self, y: np.ndarray) -> np.ndarray:
        """Signal estimate of crops ``y`` for their noise model: ``D(y)``, or ``y`` unbound."""
        signal = y if self._model is None else self._model.predict_on_batch(y)
        return np.asarray(signal, dtype=np.float32)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step``: input ``y + alpha z``, target ``y - z / alpha``; float32 (B, P, P, C)."""
        y, which = self.crops(step)
        rng = np.random.default_rng([self.seed, step, _R2R_STREAM])
        pairs = zip(self.signal(y), which, strict=True)
        z = [recorruption(s, self.noise[k], self.alpha, rng, self._shared[k]) for s, k in pairs]
        return recorrupt(y, np.stack(z), self.alpha)

    def describe_noise(self, limit: int = 8) -> str:
        """The noise models in use, for model cards (the first ``limit`` images)."""
        parts = []
        for n in self.noise[:limit]:
            if n.gain > 0:
                part = f"gain {n.gain:.3g}, read {n.read_sigma:.3g}, black {n.offset:.3g}"
            else:
                part = f"Gaussian sigma {n.read_sigma:.3g}"
            if any(w > 0 for w in n.correlation_width):
                part += " (correlated: width {:.2g}, {:.2g} px)".format(*n.correlation_width)
            parts.append(part)
        more = len(self.noise) - limit
        return "; ".join(parts) + (f"; ... ({more} more)" if more > 0 else "")

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(step)
