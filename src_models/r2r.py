"""Recorrupted-to-Recorrupted: train a denoiser from noisy images alone (Pang et al., CVPR 2021).

Why a second noisy-only method: Neighbor2Neighbor (:mod:`src_models.n2n`) trains on
half-resolution sub-images, so it adapts the network at the wrong scale; fine-tuning
a bundled model on one real noisy frame with it does not beat the base model.
Recorrupted-to-Recorrupted (R2R) trains on full-resolution crops, in the regime the
network denoises in, with the plain supervised step of the other modes (no custom
gradient code), so the bias-free network stays positively homogeneous.

How: for a noisy ``y = x + n`` with ``n ~ N(0, S)``, draw ``z ~ N(0, S)`` and train
on the pair::

    input  = y + alpha * z
    target = y - z / alpha

The input's noise ``n + alpha z`` and the target's noise ``n - z / alpha`` have
covariance ``S - S = 0``: for Gaussian noise they are independent, so
``E ||D(input) - target||^2 = E ||D(input) - x||^2 + const``, the supervised loss at
the noise level ``(1 + alpha^2) S`` (1.25 S for ``alpha = 0.5``). The models are blind
(trained across noise levels), so training slightly above the data's level is fine.

The noise covariance is diagonal, per pixel, from a Poisson-Gaussian model of the
image (:func:`src_models.noise_model.estimate_poisson_gaussian`, estimated once per
image on the whole image, in the normalised units the sampler receives)::

    S = gain * max(s - black, 0) + read^2

with ``s`` a signal estimate: the bound model's own no-gradient prediction ``D(y)``
of the crop (the noisy crop itself while no model is bound). Where that estimate
fails or finds no noise, ``S = sigma^2`` with the Gaussian sigma of
:func:`src_models.inference.estimate_sigma`. For the camera-like noise this is an
approximation (Poisson noise is not Gaussian), as in the paper's own experiments.
Where the estimate finds the noise correlated between neighbouring pixels, ``z`` is
correlated the same way (:func:`src_models.corruptions.correlate_noise`): with white
``z`` the pair's noises would not cancel in covariance, and the model would learn to
keep the correlated part.

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


def recorrupt(
    y: np.ndarray,
    variance: np.ndarray,
    alpha: float,
    rng: np.random.Generator,
    shared: np.ndarray | None = None,
    widths: Sequence[tuple[float, float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The R2R pair of noisy images: ``(y + alpha z, y - z / alpha)`` with ``z ~ N(0, variance)``.

    Parameters
    ----------
    y : ndarray
        float (B, H, W, C) noisy images.
    variance : ndarray
        Noise variance, broadcastable to ``y``.
    alpha : float
        > 0.
    rng : numpy.random.Generator
    shared : ndarray of bool, optional
        (B,): images whose channels are copies of one channel get one ``z`` for all channels.
    widths : sequence of (float, float), optional
        (B,) Gaussian correlation widths (y, x) of each image's noise; ``z`` is
        correlated alike (white where (0, 0) or None).

    Returns
    -------
    input, target : ndarray
        float32, the shape of ``y``.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 4:
        raise ValueError(f"y must have shape (B, H, W, C), got shape {y.shape}")
    z = rng.standard_normal(y.shape, dtype=np.float32)
    if shared is not None and np.any(shared):
        z[shared] = z[shared][..., :1]
    for b, width in enumerate(widths or ()):
        if any(w > 0 for w in width):
            z[b] = correlate_noise(z[b], *width)
    z *= np.sqrt(np.maximum(np.broadcast_to(variance, y.shape), 0.0), dtype=np.float32)
    a = np.float32(alpha)
    return y + a * z, y - z / a


def validation_pairs(
    crop: np.ndarray, noise: PoissonGaussian, alpha: float, seed: int, draws: int = 4
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed R2R pairs of a held-out crop, to score a model without a clean image.

    ``E ||D(input) - target||^2`` is the true error of ``D`` at the noise level
    ``(1 + alpha^2) S`` plus a constant, so the PSNR against the targets rises as the
    true error falls. The variance map uses a model-independent signal (the crop
    smoothed with a Gaussian of 2 px), so scores of different models are comparable.

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

    Returns
    -------
    list of (input, target)
        float32 (H, W, C) each.
    """
    from scipy import ndimage

    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim != 3:
        raise ValueError(f"crop must have shape (H, W, C), got shape {crop.shape}")
    signal = ndimage.gaussian_filter(crop, (VAL_SIGNAL_SMOOTH, VAL_SIGNAL_SMOOTH, 0.0))
    variance = noise_variance(signal, noise)[None]
    shared = np.array([_shared_channels(crop)])
    out = []
    for k in range(int(draws)):
        rng = np.random.default_rng([check_seed(seed), _R2R_VAL_STREAM, k])
        a, b = recorrupt(crop[None], variance, alpha, rng, shared, [noise.correlation_width])
        out.append((a[0], b[0]))
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

    def variance(self, y: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Noise variance of crops ``y`` of images ``which``; the signal is ``D(y)`` (or ``y``)."""
        signal = y if self._model is None else self._model.predict_on_batch(y)
        signal = np.asarray(signal, dtype=np.float32)
        pairs = zip(signal, which, strict=True)
        return np.stack([noise_variance(s, self.noise[k]) for s, k in pairs])

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step``: input ``y + alpha z``, target ``y - z / alpha``; float32 (B, P, P, C)."""
        y, which = self.crops(step)
        rng = np.random.default_rng([self.seed, step, _R2R_STREAM])
        widths = [self.noise[k].correlation_width for k in which]
        return recorrupt(y, self.variance(y, which), self.alpha, rng, self._shared[which], widths)

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
