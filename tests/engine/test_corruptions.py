"""Training corruptions: noise statistics, reproducibility and the config's switches."""

from __future__ import annotations

import numpy as np
import pytest

from src_models.config import CorruptionConfig
from src_models.corruptions import (
    add_gaussian,
    blur3x3,
    correlate_noise,
    corrupt,
    corrupt_batch,
    poisson_gaussian,
    subsample,
)


def _flat(value: float, size: int = 128, channels: int = 1) -> np.ndarray:
    return np.full((size, size, channels), value, dtype=np.float32)


def _gaussian_only(**kw) -> CorruptionConfig:
    base = dict(clean_prob=0.0, per_channel_prob=0.0, poisson_gaussian_prob=0.0)
    base.update(kw)
    return CorruptionConfig(**base)


def test_add_gaussian_measured_sigma_within_3_percent():
    clean = _flat(0.5, 256)
    noisy = add_gaussian(clean, 25.0, np.random.default_rng(0))
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    measured = (noisy - clean).std() * 255
    assert measured == pytest.approx(25.0, rel=0.03)
    assert (noisy - clean).mean() == pytest.approx(0.0, abs=0.01 * 25 / 255)


def test_corrupt_gaussian_sigma_matches_info_over_many_samples():
    config = _gaussian_only(sigma_range=(5.0, 75.0))
    clean = _flat(0.5, 128)
    sigmas = []
    for i in range(12):
        noisy, info = corrupt(clean, config, np.random.default_rng(i))
        assert info["noise"] == "gaussian" and info["kinds"] == ["gaussian"]
        s = info["sigma"][0]
        assert 5.0 <= s <= 75.0
        assert (noisy - clean).std() * 255 == pytest.approx(s, rel=0.03)
        sigmas.append(s)
    assert np.ptp(sigmas) > 20  # sigma is really drawn per sample


def test_corrupt_fixed_sigma_25_within_3_percent():
    noisy, info = corrupt(_flat(0.5, 256), _gaussian_only(sigma_range=(25.0, 25.0)),
                          np.random.default_rng(1))
    assert info["sigma"] == [25.0]
    assert (noisy - 0.5).std() * 255 == pytest.approx(25.0, rel=0.03)


def test_same_sigma_mode_uses_one_sigma_for_all_channels():
    clean = _flat(0.5, 128, 3)
    noisy, info = corrupt(clean, _gaussian_only(sigma_range=(5.0, 75.0)), np.random.default_rng(3))
    assert len(set(info["sigma"])) == 1 and len(info["sigma"]) == 3
    measured = (noisy - clean).std(axis=(0, 1)) * 255
    np.testing.assert_allclose(measured, info["sigma"], rtol=0.03)


def test_per_channel_mode_gives_independent_channels_with_different_sigmas():
    config = _gaussian_only(sigma_range=(5.0, 75.0), per_channel_prob=1.0)
    clean = _flat(0.5, 128, 3)
    noisy, info = corrupt(clean, config, np.random.default_rng(4))
    assert info["kinds"] == ["gaussian_per_channel"]
    sig = np.array(info["sigma"])
    assert len(np.unique(sig)) == 3
    noise = (noisy - clean).reshape(-1, 3)
    np.testing.assert_allclose(noise.std(axis=0) * 255, sig, rtol=0.03)
    corr = np.corrcoef(noise.T)
    off_diag = corr[~np.eye(3, dtype=bool)]
    assert np.abs(off_diag).max() < 0.05


@pytest.mark.parametrize("signal", [0.1, 0.4, 0.8])
def test_poisson_gaussian_variance_is_signal_over_photons_plus_read_squared(signal):
    photons, read = 50.0, 5.0
    noisy = poisson_gaussian(_flat(signal, 256), photons, read, np.random.default_rng(7))
    expected = signal / photons + (read / 255.0) ** 2
    assert noisy.var() == pytest.approx(expected, rel=0.03)
    assert noisy.mean() == pytest.approx(signal, abs=3 * np.sqrt(expected / noisy.size) + 1e-6)


def test_corrupt_poisson_gaussian_uses_drawn_photons_and_read_noise():
    config = CorruptionConfig(clean_prob=0.0, poisson_gaussian_prob=1.0,
                              photons_range=(20.0, 20.0), read_noise_range=(3.0, 3.0))
    noisy, info = corrupt(_flat(0.3, 256), config, np.random.default_rng(8))
    assert info["noise"] == "poisson_gaussian"
    assert info["photons"] == pytest.approx(20.0) and info["read_sigma"] == 3.0
    expected_var = 0.3 / 20.0 + (3.0 / 255.0) ** 2
    assert noisy.var() == pytest.approx(expected_var, rel=0.03)
    assert info["sigma"][0] == pytest.approx(np.sqrt(expected_var) * 255, rel=1e-3)


def test_photons_are_log_uniform_within_range():
    config = CorruptionConfig(clean_prob=0.0, poisson_gaussian_prob=1.0,
                              photons_range=(2.0, 200.0))
    tiny = _flat(0.5, 4)
    photons = np.array([corrupt(tiny, config, np.random.default_rng(i))[1]["photons"]
                        for i in range(400)])
    assert photons.min() >= 2.0 and photons.max() <= 200.0
    # log-uniform: the median is near the geometric mean 20, not the arithmetic mean 101
    assert 14.0 < np.median(photons) < 28.0


def test_same_seed_reproduces_exactly_and_other_seed_differs():
    config = CorruptionConfig(blur_prob=0.5, subsample_prob=0.5, multiplicative_prob=0.5,
                              poisson_gaussian_prob=0.3, per_channel_prob=0.5)
    batch = np.random.default_rng(0).random((6, 32, 32, 3), dtype=np.float32)
    a, infos_a = corrupt_batch(batch, config, seed=11)
    b, infos_b = corrupt_batch(batch, config, seed=11)
    c, _ = corrupt_batch(batch, config, seed=12)
    np.testing.assert_array_equal(a, b)
    assert infos_a == infos_b
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == batch.shape


def test_corrupt_batch_sample_depends_only_on_seed_and_index():
    config = CorruptionConfig()
    batch = np.random.default_rng(0).random((5, 16, 16, 1), dtype=np.float32)
    full, _ = corrupt_batch(batch, config, seed=3)
    first_two, _ = corrupt_batch(batch[:2], config, seed=3)
    np.testing.assert_array_equal(full[:2], first_two)
    assert not np.array_equal(full[0], full[1])


def test_corrupt_batch_rejects_negative_seed():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        corrupt_batch(np.zeros((1, 4, 4, 1), np.float32), CorruptionConfig(), seed=-1)


def test_clean_prob_one_keeps_sigma_below_clean_sigma_max():
    config = CorruptionConfig(clean_prob=1.0, clean_sigma_max=2.0, sigma_range=(50.0, 75.0))
    clean = _flat(0.5, 64)
    for i in range(10):
        noisy, info = corrupt(clean, config, np.random.default_rng(i))
        assert info["noise"] == "clean"
        assert 0.0 <= info["sigma"][0] <= 2.0
        assert (noisy - clean).std() * 255 <= 2.0 * 1.05


def test_quantize_gives_multiples_of_1_over_255_and_clip_bounds():
    config = CorruptionConfig(clean_prob=0.0, sigma_range=(30.0, 30.0), clip=True, quantize=True)
    clean = np.random.default_rng(0).random((32, 32, 1), dtype=np.float32)
    noisy, _ = corrupt(clean, config, np.random.default_rng(0))
    levels = noisy.astype(np.float64) * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert noisy.min() == 0.0 and noisy.max() == 1.0  # sigma 30 does reach both bounds


def test_without_clip_noise_goes_outside_unit_range():
    noisy, _ = corrupt(_flat(0.02, 32), _gaussian_only(sigma_range=(30.0, 30.0)),
                       np.random.default_rng(0))
    assert noisy.min() < 0.0


def test_corrupt_does_not_modify_the_clean_image():
    clean = np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)
    before = clean.copy()
    corrupt(clean, CorruptionConfig(blur_prob=1.0, subsample_prob=1.0, multiplicative_prob=1.0),
            np.random.default_rng(0))
    np.testing.assert_array_equal(clean, before)


def test_blur_keeps_flat_images_and_smooths_a_checkerboard():
    np.testing.assert_allclose(blur3x3(_flat(0.3, 16), 1.0), 0.3, rtol=1e-6)
    board = (np.indices((16, 16)).sum(axis=0) % 2).astype(np.float32)[..., None]
    out = blur3x3(board, 1.0)
    assert out.std() < 0.5 * board.std()
    assert out.mean() == pytest.approx(board.mean(), abs=1e-3)
    np.testing.assert_allclose(blur3x3(board, 0.0), board, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_subsample_averages_blocks_and_keeps_the_size(mode):
    board = (np.indices((16, 24)).sum(axis=0) % 2).astype(np.float32)[..., None]
    np.testing.assert_allclose(subsample(board, 2, mode), 0.5, atol=1e-6)
    odd = np.random.default_rng(0).random((31, 33, 3), dtype=np.float32)
    out = subsample(odd, 4, mode)
    assert out.shape == odd.shape and out.dtype == np.float32


def test_subsample_nearest_keeps_block_constant_images():
    blocks = np.repeat(np.repeat(np.arange(16, dtype=np.float32).reshape(4, 4) / 16, 2, 0), 2, 1)
    np.testing.assert_allclose(subsample(blocks[..., None], 2, "nearest")[..., 0], blocks)


def test_blur_and_subsample_are_recorded_in_info():
    config = CorruptionConfig(blur_prob=1.0, subsample_prob=1.0, subsample_factors=(3,),
                              multiplicative_prob=1.0, clean_prob=0.0)
    _, info = corrupt(_flat(0.5, 24), config, np.random.default_rng(0))
    assert info["kinds"][:2] == ["blur", "subsample"] and info["kinds"][-1] == "multiplicative"
    assert 0.3 <= info["blur_sigma"] <= 1.0
    assert info["subsample_factor"] == 3 and info["upsample"] in ("bilinear", "nearest")
    assert 0.0 <= info["multiplicative_sigma"] <= 0.3


def test_multiplicative_noise_scales_with_signal():
    config = CorruptionConfig(clean_prob=0.0, sigma_range=(0.0, 0.0), multiplicative_prob=1.0,
                              multiplicative_range=(0.2, 0.2))
    low, _ = corrupt(_flat(0.1, 128), config, np.random.default_rng(0))
    high, _ = corrupt(_flat(0.8, 128), config, np.random.default_rng(0))
    assert low.std() == pytest.approx(0.1 * 0.2, rel=0.03)
    assert high.std() == pytest.approx(0.8 * 0.2, rel=0.03)


def _lag1(noise: np.ndarray, axis: int) -> float:
    a = noise[..., 0]
    n = a.shape[axis]
    x, y = np.take(a, np.arange(n - 1), axis=axis), np.take(a, np.arange(1, n), axis=axis)
    return float((x * y).mean() / a.var())


def test_correlated_noise_keeps_variance_and_correlates_neighbours_as_a_gaussian():
    white = np.random.default_rng(0).standard_normal((512, 512, 1)).astype(np.float32)
    out = correlate_noise(white, 0.7, 0.7)
    assert out.std() == pytest.approx(1.0, rel=0.02)
    # Gaussian-filtered white noise: lag-1 correlation exp(-1 / (4 sigma^2)) per axis.
    expected = np.exp(-1.0 / (4 * 0.7**2))
    assert _lag1(out, 0) == pytest.approx(expected, abs=0.03)
    assert _lag1(out, 1) == pytest.approx(expected, abs=0.03)
    assert abs(_lag1(white, 1)) < 0.02


def test_correlated_noise_along_one_axis_only_leaves_the_other_white():
    white = np.random.default_rng(1).standard_normal((256, 256, 1)).astype(np.float32)
    scan_line = correlate_noise(white, 0.0, 1.0)
    assert _lag1(scan_line, 1) > 0.7
    assert abs(_lag1(scan_line, 0)) < 0.03


def test_corrupt_correlated_noise_is_recorded_and_keeps_the_noise_level():
    config = _gaussian_only(sigma_range=(25.0, 25.0), correlated_prob=1.0,
                            correlated_sigma_range=(1.0, 1.0))
    clean = _flat(0.5, 256)
    noisy, info = corrupt(clean, config, np.random.default_rng(3))
    assert info["kinds"] == ["gaussian", "correlated"]
    assert info["correlated_sigma"] == [1.0, 1.0]
    residual = noisy - clean
    assert residual.std() * 255 == pytest.approx(25.0, rel=0.05)
    assert _lag1(residual, 0) > 0.7


@pytest.mark.parametrize(
    "seed, total", [(0, 526.925930211044), (1, 524.1620917287655), (3, 513.1908053657971)]
)
def test_correlated_prob_zero_keeps_the_sample_stream_of_older_recipes(seed, total):
    # Golden sums from the code before correlated noise existed: older recipes must
    # resume onto identical samples.
    config = CorruptionConfig(poisson_gaussian_prob=0.5, multiplicative_prob=0.5, blur_prob=0.5)
    clean = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
    noisy, info = corrupt(clean, config, np.random.default_rng(seed))
    assert float(noisy.astype(np.float64).sum()) == pytest.approx(total, rel=1e-9)
    assert "correlated" not in info["kinds"]


def test_correlated_noise_rejects_negative_width():
    with pytest.raises(ValueError, match="sigma_y and sigma_x must be >= 0"):
        correlate_noise(np.zeros((8, 8, 1), np.float32), -1.0, 0.5)
    with pytest.raises(ValueError, match="correlated_sigma_range"):
        CorruptionConfig(correlated_sigma_range=(1.0, 0.5))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"shape \(H, W, C\)"):
        corrupt(np.zeros((8, 8), np.float32), CorruptionConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="photons must be > 0"):
        poisson_gaussian(_flat(0.5, 4), 0.0, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="2 values but the image has 3 channels"):
        add_gaussian(_flat(0.5, 4, 3), [1.0, 2.0], np.random.default_rng(0))
    # refused by the config itself, not at the first step that draws the Poisson branch
    with pytest.raises(ValueError, match="photons_range must start above 0"):
        CorruptionConfig(clean_prob=0.0, poisson_gaussian_prob=1.0, photons_range=(0.0, 5.0))


def test_correlated_noise_keeps_its_variance_up_to_the_border():
    # reflected padding reused the same noise values: 1.8 times the variance at the edge
    white = np.random.default_rng(0).normal(0, 1, (20000, 12, 1)).astype(np.float32)
    per_column = correlate_noise(white, 0.0, 1.0)[..., 0].var(axis=0)
    np.testing.assert_allclose(per_column, 1.0, atol=0.05)
