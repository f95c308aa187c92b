"""Poisson-Gaussian noise estimate and black level: known cameras are recovered from one image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src_models.noise_model import (
    PoissonGaussian,
    black_level,
    black_levels,
    estimate_poisson_gaussian,
)

OFFSET = 100.0
FULL_SCALE = 4000.0  # counts of the brightest clean pixel


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    """skimage's camera, lightly smoothed (its own noise out of the way), float in [0, 1]."""
    from scipy import ndimage
    from skimage import data

    return ndimage.gaussian_filter(data.camera().astype(np.float64), 1.0) / 255.0


def camera_counts(clean01: np.ndarray, gain: float, read: float, seed: int = 0) -> np.ndarray:
    """uint16 camera counts: ``gain * Poisson(signal / gain) + N(0, read) + OFFSET``, rounded."""
    rng = np.random.default_rng(seed)
    signal = FULL_SCALE * clean01
    counts = gain * rng.poisson(signal / gain) + rng.normal(0.0, read, signal.shape) + OFFSET
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


# (gain in counts per photon, read noise in counts): from 4000 down to 200 photons at full scale
CAMERAS = [(1.0, 5.0), (2.0, 10.0), (5.0, 20.0), (10.0, 30.0), (20.0, 30.0), (3.0, 50.0)]


@pytest.mark.parametrize(("gain", "read"), CAMERAS)
def test_known_gain_and_read_noise_are_recovered_within_10_percent(camera, gain, read):
    # fluorescence-like: squaring makes a dark background, where read noise shows
    image = camera_counts(camera**2, gain, read, seed=int(gain))
    est = estimate_poisson_gaussian(image, offset=OFFSET)
    assert est.gain == pytest.approx(gain, rel=0.1)
    assert est.read_sigma == pytest.approx(read, rel=0.1)
    assert est.offset == OFFSET
    assert est.correlation_width == (0.0, 0.0)  # white noise is not taken for correlated


def _sparse_cells(n: int = 512, spots: int = 15, seed: int = 0) -> np.ndarray:
    """Gaussian spots on an empty background (about 90 % of the pixels dark), peak 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.zeros((n, n))
    for _ in range(spots):
        cy, cx = rng.uniform(0, n, 2)
        r, a = rng.uniform(4, 20), rng.uniform(0.2, 1)
        img += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return img / img.max()


@pytest.mark.parametrize(
    ("photons", "gain", "read"), [(3, 1.0, 1.5), (3, 20.0, 10.0), (10, 20.0, 2.0), (100, 20.0, 2.0)]
)
def test_gain_is_recovered_at_a_few_photons_on_a_mostly_dark_image(photons, gain, read):
    # a bin chosen by a mean holding the residual's own noise flattened the variance line
    # (gain -90 % at 3 photons), and a MAD trim dropped the photon events (gain 0 at 20 ADU
    # per photon and 2 ADU of read noise)
    rng = np.random.default_rng(0)
    counts = rng.poisson(_sparse_cells() * photons)
    frame = 100.0 + gain * counts + rng.normal(0.0, read, counts.shape)
    est = estimate_poisson_gaussian(frame, offset=100.0)
    assert est.gain == pytest.approx(gain, rel=0.15)
    assert est.read_sigma == pytest.approx(read, rel=0.15)


@pytest.mark.parametrize(("gain", "read"), [(0.5, 3.0), (2.0, 10.0), (20.0, 30.0)])
def test_gain_is_recovered_on_a_photo_with_texture_and_no_dark_background(camera, gain, read):
    est = estimate_poisson_gaussian(camera_counts(camera, gain, read), offset=OFFSET)
    assert est.gain == pytest.approx(gain, rel=0.1)


def test_unknown_offset_leaves_read_noise_above_zero_when_gain_dwarfs_it():
    # a 1-px smoothing put the black level 0.6 read sigmas low, and the intercept
    # read^2 - gain * gap came out negative: read noise 0, gain -28 %
    rng = np.random.default_rng(0)
    counts = rng.poisson(_sparse_cells() * 10)
    frame = 100.0 + 20.0 * counts + rng.normal(0.0, 10.0, counts.shape)
    est = estimate_poisson_gaussian(frame)
    assert est.offset == pytest.approx(100.0, abs=3.0)
    assert est.gain == pytest.approx(20.0, rel=0.1)
    assert est.read_sigma == pytest.approx(10.0, rel=0.35)


@pytest.mark.parametrize(("gain", "read"), [(2.0, 10.0), (10.0, 30.0)])
def test_unknown_offset_is_estimated_near_the_true_black_level(camera, gain, read):
    est = estimate_poisson_gaussian(camera_counts(camera**2, gain, read))
    assert est.gain == pytest.approx(gain, rel=0.1)
    assert abs(est.offset - OFFSET) < 0.5 * read  # a low percentile: a little below
    assert est.read_sigma == pytest.approx(read, rel=0.2)


@pytest.mark.parametrize(
    ("width", "fluorescence"),
    [((0.7, 0.7), True), ((0.0, 1.0), True), ((1.0, 0.5), False)],
    ids=["resampled", "scan-line", "anisotropic-photo"],
)
def test_correlated_noise_is_measured_and_its_gain_and_read_noise_recovered(
    camera, width, fluorescence
):
    from src_models.corruptions import correlate_noise

    gain, read = 2.0, 10.0
    clean = FULL_SCALE * (camera**2 if fluorescence else camera)
    rng = np.random.default_rng(5)
    noise = gain * rng.poisson(clean / gain) + rng.normal(0.0, read, clean.shape) - clean
    noise = correlate_noise(noise[..., None].astype(np.float32), *width)[..., 0]
    est = estimate_poisson_gaussian(clean + noise + OFFSET, offset=OFFSET)
    assert est.correlation_width == pytest.approx(width, abs=0.05)
    # filtering a residual at this correlation keeps 7 % of the variance: without the
    # correction the gain came out about 14 times too low
    assert est.gain == pytest.approx(gain, rel=0.2)
    assert est.read_sigma == pytest.approx(read, rel=0.2)
    n = noise / noise.std()
    measured = [float((n[1:] * n[:-1]).mean()), float((n[:, 1:] * n[:, :-1]).mean())]
    assert est.neighbour_correlation == pytest.approx(measured, abs=0.07)


@pytest.mark.parametrize("sigma", [2.0, 10.0, 25.0])
def test_pure_gaussian_noise_gives_zero_gain_and_its_sigma(camera, sigma):
    rng = np.random.default_rng(int(sigma))
    image = 255.0 * camera + rng.normal(0.0, sigma, camera.shape)
    est = estimate_poisson_gaussian(image)
    assert est.read_sigma == pytest.approx(sigma, rel=0.05)
    assert est.shot_fraction < 0.02
    assert est.gain * 255.0 < 0.02 * sigma**2  # shot variance at full scale: negligible


def test_stack_planes_are_pooled(camera):
    stack = np.stack([camera_counts(camera**2, 5.0, 20.0, seed=s) for s in range(3)])
    est = estimate_poisson_gaussian(stack, offset=OFFSET)
    assert est.gain == pytest.approx(5.0, rel=0.05)
    assert est.read_sigma == pytest.approx(20.0, rel=0.1)
    only_first = estimate_poisson_gaussian(stack, offset=OFFSET, max_planes=1)
    assert only_first == estimate_poisson_gaussian(stack[0], offset=OFFSET)


def test_nan_pixels_are_ignored(camera):
    image = camera_counts(camera**2, 5.0, 20.0).astype(np.float32)
    image[100:200, 50:300] = np.nan
    image[::37, ::41] = np.inf
    est = estimate_poisson_gaussian(image, offset=OFFSET)
    assert est.gain == pytest.approx(5.0, rel=0.1)
    assert est.read_sigma == pytest.approx(20.0, rel=0.1)
    assert math.isfinite(est.median_signal)


def test_snr_and_photons_follow_from_the_model():
    est = PoissonGaussian(gain=4.0, read_sigma=6.0, offset=100.0, median_signal=80.0)
    assert est.photons_at(180.0) == pytest.approx(20.0)
    assert est.photons_median == pytest.approx(20.0)
    assert est.variance(180.0) == pytest.approx(4.0 * 80.0 + 36.0)
    assert est.snr_median == pytest.approx(80.0 / math.sqrt(356.0))
    assert est.shot_fraction == pytest.approx(320.0 / 356.0)
    assert est.variance(50.0) == pytest.approx(36.0)  # below the black level: read noise only
    gaussian = PoissonGaussian(gain=0.0, read_sigma=5.0, offset=0.0, median_signal=100.0)
    assert gaussian.photons_at(100.0) == math.inf
    assert gaussian.snr_median == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((10, 200), r"too small to estimate its noise"), ((20, 20), r"too few usable pixels")],
)
def test_tiny_images_are_refused_with_a_clear_error(shape, message):
    image = np.random.default_rng(0).normal(100, 5, shape)
    with pytest.raises(ValueError, match=message):
        estimate_poisson_gaussian(image)


def test_all_nan_and_bad_dtypes_are_refused():
    with pytest.raises(ValueError, match="too few usable pixels"):
        estimate_poisson_gaussian(np.full((64, 64), np.nan))
    with pytest.raises(TypeError, match="dtype bool"):
        estimate_poisson_gaussian(np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match=r"offset must be a finite number or None \(got nan\)"):
        estimate_poisson_gaussian(np.zeros((64, 64)), offset=float("nan"))


# ------------------------------------------------------------------ black level


def test_black_level_moves_exactly_with_a_constant(camera):
    image = camera_counts(camera**2, 5.0, 20.0).astype(np.float64)
    base = black_level(image)
    for c in (-250.0, 0.5, 1e4):
        assert black_level(image + c) == pytest.approx(base + c, abs=1e-9 * (1 + abs(c)))


def test_black_level_sits_at_the_dark_background_not_at_the_noise_floor(camera):
    image = camera_counts(camera**2, 5.0, 20.0)
    level = black_level(image)
    assert OFFSET - 20.0 < level < OFFSET + 5.0  # within one read sigma below the true offset
    assert level > float(np.percentile(image, 0.5)) + 20.0  # raw percentile: far in the noise


def test_black_level_ignores_nan_and_shares_one_level_across_channels():
    rng = np.random.default_rng(1)
    plane = rng.normal(100.0, 5.0, (64, 64))
    with_nan = plane.copy()
    with_nan[:8] = np.nan
    assert abs(black_level(with_nan) - black_level(plane[8:])) < 1.0
    rgb = np.stack([plane, plane + 50.0, plane + 100.0], axis=-1)
    assert black_level(rgb) == pytest.approx(black_level(plane), abs=1.0)


def test_dark_integer_data_with_noise_free_background_gives_a_finite_estimate():
    """Regression (FMD Confocal_BPAE channel 0): a background of one exact value.

    A bin whose pixels all hold the same integer has variance 0; its weight 1/0
    used to make the fit NaN. The estimate must stay finite and near the truth.
    """
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    signal = np.where(xx < 96, 0.0, 40.0 * (1 + np.sin(yy / 40.0)) + 5.0)  # dark third: no light
    gain = 3.0
    noisy = 3.0 + gain * rng.poisson(signal / gain)  # no read noise: the background is exactly 3
    noisy[::17, 100::13] = 2  # a few darker pixels, so the background is not a clipping floor
    est = estimate_poisson_gaussian(noisy.astype(np.uint8))
    assert math.isfinite(est.gain) and math.isfinite(est.read_sigma)
    assert est.gain == pytest.approx(gain, rel=0.2)


def test_centre_crop_estimate_reads_the_middle_plane_and_first_channel(camera):
    from synthetic import correlated_counts

    from src_models.noise_model import estimate_centre_crop

    white = camera_counts(camera**2, 2.0, 10.0)
    stack = np.stack([white, correlated_counts(white.shape), white])  # (Z, Y, X)
    est = estimate_centre_crop(stack)
    assert est.correlated and est.neighbour_correlation[1] == pytest.approx(0.58, abs=0.1)
    channels_last = np.stack([white, correlated_counts(white.shape)], axis=-1)
    assert not estimate_centre_crop(channels_last, channel_axis=-1).correlated  # channel 0
    assert estimate_centre_crop(np.zeros((8, 8))) is None  # too small: no estimate, no error


@pytest.mark.parametrize("group", [None, 3])  # all planes' samples together, or 3 at a time
def test_black_levels_of_a_stack_equal_each_planes_and_leave_the_input_alone(group, monkeypatch):
    import dask.array as da

    from src_models import noise_model

    if group is not None:
        monkeypatch.setattr(noise_model, "_SAMPLE_VALUES", group * 90 * 300)

    rng = np.random.default_rng(3)
    stack = 100.0 + rng.poisson(20.0, (4, 90, 300)) * np.arange(1, 5)[:, None, None]
    stack[1, 5, 7] = np.nan
    stack[3, :, :10] = np.inf
    before = stack.copy()
    each = np.array([black_level(p) for p in stack])
    assert len(set(each.tolist())) == 4
    np.testing.assert_array_equal(black_levels(stack), each)
    lazy = da.from_array(stack, chunks=(4, 32, 64))  # chunks spanning every plane
    np.testing.assert_array_equal(black_levels(lazy), each)
    np.testing.assert_array_equal(stack, before)  # the NaN fill never writes into the input
    rgb = rng.normal(50.0, 2.0, (2, 40, 30, 3))
    np.testing.assert_array_equal(black_levels(rgb), [black_level(p) for p in rgb])
