"""Noisy sample images, each with its clean reference, made at load time.

Why made, not shipped: the clean images come with scikit-image (no download),
and a fixed seed gives the same noise every time, so results are comparable.
Every sample returns the clean reference first (hidden) and the noisy image on
top, so the Denoise widget picks the noisy one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["astronaut_sample", "camera_sample", "cell_sample", "zstack_sample"]

SEED = 0


def _pair(
    name: str,
    clean: np.ndarray,
    noisy: np.ndarray,
    noise: str,
    meta: dict | None = None,
    **kwargs,
) -> list[tuple]:
    meta = {"sample": name, "noise": noise, "seed": SEED, **(meta or {})}
    clean_kw = {"name": f"{name} (clean reference)", "visible": False, "metadata": dict(meta)}
    noisy_kw = {"name": f"{name} (noisy)", "metadata": dict(meta)}
    clean_kw.update(kwargs)
    noisy_kw.update(kwargs)
    return [(clean, clean_kw, "image"), (noisy, noisy_kw, "image")]


def _gaussian(clean: np.ndarray, sigma: float, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)


def _gaussian_pair(
    name: str, clean: np.ndarray, sigma: float, note: str = "", **kwargs
) -> list[tuple]:
    """A 0-255 clean image and its copy with Gaussian noise (not clipped), as layers.

    Why one place: the Gaussian samples describe their noise and set their
    contrast the same way; ``note`` adds to the description.
    """
    noise = f"Gaussian, sigma {sigma:g} (0-255){note}"
    return _pair(
        name, clean, _gaussian(clean, sigma), noise, contrast_limits=(0.0, 255.0), **kwargs
    )


def camera_sample() -> list[tuple]:
    """Camera (gray, 512x512) with Gaussian noise, sigma 25 on the 0-255 scale (not clipped)."""
    from skimage import data

    return _gaussian_pair("camera", data.camera().astype(np.float32), 25.0)


def astronaut_sample() -> list[tuple]:
    """Astronaut (RGB, 512x512) with Gaussian noise, sigma 25 per channel (not clipped)."""
    from skimage import data

    clean = data.astronaut().astype(np.float32)
    return _gaussian_pair("astronaut", clean, 25.0, ", independent per channel", rgb=True)


def cell_sample(photons: float = 15.0, read_noise: float = 2.0) -> list[tuple]:
    """Fluorescence-like cell image with low-light camera noise, as uint16 with an offset.

    Why this low: about ``photons`` photons at the median pixel (57 at the brightest,
    SNR about 3.5 at the median) is where shot noise dominates and denoising matters
    most in live-cell imaging. Poisson shot noise, ``read_noise`` electrons of
    Gaussian read noise, then gain 8 ADU per electron and an offset (black level) of
    100 ADU, like a scientific camera. The clean reference is the expected value in
    the same ADU (float32); the camera parameters are in the layers' metadata.
    """
    from skimage import data

    gain, offset = 8.0, 100.0
    cell = data.cell().astype(np.float64)
    signal = cell / np.median(cell) * photons  # expected electrons
    rng = np.random.default_rng(SEED)
    electrons = rng.poisson(signal) + rng.normal(0.0, read_noise, signal.shape)
    noisy = np.clip(np.rint(offset + gain * electrons), 0, 65535).astype(np.uint16)
    clean = (offset + gain * signal).astype(np.float32)
    camera = {
        "gain": gain,
        "offset": offset,
        "read_sigma": gain * read_noise,
        "photons_median": photons,
        "photons_peak": float(signal.max()),
    }
    return _pair(
        "cell",
        clean,
        noisy,
        f"Poisson-Gaussian: {photons:g} photons at the median ({signal.max():.0f} at peak), "
        f"read noise {read_noise:g} e-, gain {gain:g} ADU/e-, offset {offset:g} ADU",
        meta={"camera": camera},
        contrast_limits=(offset, offset + gain * float(np.percentile(signal, 99.5))),
        colormap="gray",
    )


def zstack_sample(slices: int = 8, sigma: float = 20.0) -> list[tuple]:
    """A small Z-stack (8 x 160 x 192) of coins, defocused and drifting through Z, sigma 20."""
    from scipy import ndimage
    from skimage import data

    base = data.coins().astype(np.float32)[40:200, 60:252]
    mid = (slices - 1) / 2
    planes = []
    for z in range(slices):
        blurred = ndimage.gaussian_filter(base, sigma=0.3 + 0.7 * abs(z - mid))
        planes.append(ndimage.shift(blurred, (0.8 * (z - mid), -0.6 * (z - mid)), mode="nearest"))
    clean = np.stack(planes).astype(np.float32)
    labels = {"axis_labels": ("z", "y", "x")} if _has_axis_labels() else {}
    return _gaussian_pair("coins z-stack", clean, sigma, scale=(3.0, 1.0, 1.0), **labels)


def _has_axis_labels() -> bool:
    """Whether image layers take ``axis_labels`` (napari >= 0.6; the sample functions also run
    without napari)."""
    try:
        from napari.layers import Image
    except ImportError:  # the sample functions also work without napari
        return False
    return hasattr(Image, "axis_labels")
