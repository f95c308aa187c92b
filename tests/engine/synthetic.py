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
