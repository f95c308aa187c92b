"""The paper's observations on the bundled gray models, on a real photo (Mohan et al., ICLR 2020).

Why here and not with random models: random weights check the arithmetic
(``test_interpret.py``: Euler's identity, exact Jacobians, Hutchinson within 5 %
of the exact diagonal); only trained denoisers adapt their filters to the noise.
Every assertion compares a model with itself at another noise level, never with
a number typed here, so the tests hold for whichever models are bundled. The
same noise pattern is scaled to each sigma: only the noise level changes.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from src_models.registry import list_models

GRAY = [m for m in list_models() if m.builtin and m.error is None and m.channels == 1]
SIGMAS = (5.0, 25.0, 50.0)
# a 3 x 3 grid over the 512 x 512 camera: sky, hair, coat, grass, tripod
PIXELS = [(y, x) for y in (96, 256, 416) for x in (96, 256, 416)]
CROP = (slice(300, 348), slice(300, 348))  # tripod head and grass: edges and texture
PROBES = 4  # Hutchinson's errors average out over the crop's 2304 pixels: a few % of the trace

pytestmark = pytest.mark.skipif(not GRAY, reason="no bundled gray models")


@pytest.fixture(scope="module", params=GRAY, ids=lambda m: m.name)
def gray_model(request):
    from src_models.registry import load_model

    return load_model(request.param.path)  # by path: a user model may share the name


@pytest.fixture(scope="module")
def camera() -> tuple[np.ndarray, np.ndarray]:
    """The camera photo (float32, 0-255) and one standard-normal noise pattern of its shape."""
    clean = skdata.camera().astype(np.float32)
    z = np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    return clean, z


def effective_side(weights: np.ndarray) -> float:
    """Side in pixels of the square box average with the filter's energy: ``1 / ||w||``.

    Why not :attr:`PixelFilter.width` (the RMS distance under ``w^2``): trained
    U-Nets spread many tiny weights over their whole receptive field, and the
    RMS distance follows those far tails, not the size of the averaging core.
    ``1 / ||w||^2`` counts the pixels averaged (``N`` for a box of ``N``).
    """
    return float(1.0 / np.sqrt(np.sum(np.square(weights, dtype=np.float64))))


def test_filters_grow_and_centre_weight_falls_as_noise_grows(gray_model, camera):
    from src_models.interpret import pixel_filter

    clean, z = camera
    centre, side = [], []
    for sigma in SIGMAS:
        noisy = clean + sigma * z
        filters = [pixel_filter(gray_model, noisy, p) for p in PIXELS]
        errors = [f.identity_error for f in filters]
        assert max(errors) < 1e-4, f"Euler identity at sigma {sigma}: {errors}"
        centre.append(float(np.mean([f.centre_weight for f in filters])))
        side.append(float(np.mean([effective_side(f.weights) for f in filters])))
    report = f"sigma {SIGMAS}: centre weight {np.round(centre, 3)}, side {np.round(side, 2)} px"
    assert centre[0] > centre[1] > centre[2] > 0, report
    assert side[0] < side[1] < side[2], report


def test_effective_dimension_falls_as_noise_grows(gray_model, camera):
    """trace(J) of a 48 x 48 crop, by Hutchinson's probes (the exact spectrum is minutes)."""
    from src_models.interpret import filter_maps

    clean, z = camera
    crop, noise = clean[CROP], z[CROP]
    n = crop.size
    dims = []
    for sigma in SIGMAS:
        maps = filter_maps(gray_model, crop + sigma * noise, maps=("centre_weight",), probes=PROBES)
        dims.append(float(maps["centre_weight"].astype(np.float64).sum()))
    report = f"sigma {SIGMAS}: trace {np.round(dims, 1)} of {n}"
    assert n > dims[0] > dims[1] > dims[2] > 0, report
