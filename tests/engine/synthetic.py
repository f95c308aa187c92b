"""Synthetic test images shared by engine tests (a helper module, not a test file)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def fluorescent_cells(shape=(160, 160), n=40, seed=0) -> np.ndarray:
    """Synthetic fluorescence: blurred blobs on a dim background, in [0.05, 0.95]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 9)
        img += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = ndi.gaussian_filter(img, 1.0)
    return (0.05 + 0.9 * img / img.max()).astype("float32")


def correlated_counts(shape=(256, 256), seed=0) -> np.ndarray:
    """uint16 camera counts (gain 4, read noise 8, offset 100) whose noise neighbours correlate
    about 0.58 along both axes (Gaussian correlation of width 0.7 px)."""
    from src_models.corruptions import correlate_noise

    rng = np.random.default_rng(seed)
    clean = 48000.0 * ndi.gaussian_filter(rng.random(shape[-2:]), 6.0) ** 2
    noise = 4.0 * rng.poisson(clean / 4.0) + rng.normal(0.0, 8.0, clean.shape) - clean
    noise = correlate_noise(noise[..., None].astype(np.float32), 0.7, 0.7)[..., 0]
    return np.clip(np.rint(clean + noise + 100.0), 0, 65535).astype(np.uint16)
