"""Recorrupted-to-Recorrupted: uncorrelated input/target noise, the noise model, wiring."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import fluorescent_cells

from src_models.config import ConfigError
from src_models.corruptions import poisson_gaussian
from src_models.finetune import FinetuneSettings, finetune
from src_models.finetune_data import SourceImage
from src_models.modelfile import read_card
from src_models.noise_model import PoissonGaussian
from src_models.r2r import Recorrupted2RecorruptedSampler, estimate_noise, validation_pairs


def _ramp(shape=(96, 96)) -> np.ndarray:
    """A smooth clean image in [0.2, 0.8], (H, W, 1)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (0.5 + 0.3 * np.sin(yy / 9.0) * np.cos(xx / 13.0))[..., None].astype("float32")


def test_gaussian_recorruption_gives_uncorrelated_input_and_target_noise_of_the_right_variance():
    sigma, alpha = 0.05, 0.5
    x = _ramp()
    y = x + np.random.default_rng(0).normal(0, sigma, x.shape).astype("float32")
    sampler = Recorrupted2RecorruptedSampler([y], 32, 64, seed=1, alpha=alpha, noise=sigma)
    clean = Recorrupted2RecorruptedSampler([x], 32, 64, seed=1, alpha=alpha, noise=sigma)
    inp, target = sampler.batch(3)
    x_crops, _ = clean.crops(3)  # same seed and step: the same crops, flips and rotations
    assert inp.shape == target.shape == (64, 32, 32, 1) and inp.dtype == np.float32
    a, b = (inp - x_crops).ravel(), (target - x_crops).ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02  # n + alpha z and n - z / alpha
    assert a.var() == pytest.approx((1 + alpha**2) * sigma**2, rel=0.04)
    assert b.var() == pytest.approx((1 + 1 / alpha**2) * sigma**2, rel=0.04)
    # the recorruption itself: input - y = alpha z, target - y = -z / alpha
    y_crops, _ = sampler.crops(3)
    np.testing.assert_allclose((inp - y_crops) * -(1 / alpha**2), target - y_crops, atol=1e-5)


def test_correlated_noise_gets_a_recorruption_correlated_alike_so_pair_noises_stay_uncorrelated():
    from src_models.corruptions import correlate_noise

    sigma, alpha, width = 0.05, 0.5, (0.7, 0.7)
    x = _ramp((128, 128))
    white = np.random.default_rng(0).normal(0, sigma, x.shape).astype("float32")
    y = x + correlate_noise(white, *width)
    noise = PoissonGaussian(0.0, sigma, 0.0, correlation_width=width)
    sampler = Recorrupted2RecorruptedSampler([y], 48, 64, seed=1, alpha=alpha, noise=noise)
    clean = Recorrupted2RecorruptedSampler([x], 48, 64, seed=1, alpha=alpha, noise=noise)
    inp, target = sampler.batch(2)
    x_crops, _ = clean.crops(2)
    a, b = inp - x_crops, target - x_crops

    def cross(u, v, shift):  # correlation of u with v shifted by ``shift`` pixels along x
        u, v = u[:, :, : u.shape[2] - shift].ravel(), v[:, :, shift:].ravel()
        return float(np.corrcoef(u, v)[0, 1])

    # with white z the neighbours' covariances would be rho * sigma^2 apart (rho = 0.58)
    assert abs(cross(a, b, 0)) < 0.03 and abs(cross(a, b, 1)) < 0.03
    assert cross(a, a, 1) == pytest.approx(0.58, abs=0.05)  # the input's noise: correlated
    assert "correlated: width 0.7, 0.7 px" in sampler.describe_noise()


def test_poisson_gaussian_recorruption_variance_is_gain_times_signal_plus_read_squared():
    gain, read, black = 0.01, 0.02, 0.1
    levels = np.array([0.2, 0.35, 0.5, 0.65, 0.8, 0.95], dtype=np.float32)
    x = np.repeat(levels, 32)[None, :, None] * np.ones((192, 1, 1), np.float32)  # vertical steps
    noise = PoissonGaussian(gain=gain, read_sigma=read, offset=black)
    y = x + np.random.default_rng(0).normal(0, 1, x.shape).astype("float32") * np.sqrt(
        noise.variance(x)
    ).astype("float32")
    sampler = Recorrupted2RecorruptedSampler([y], 16, 256, seed=2, augment=False, noise=noise)
    clean = Recorrupted2RecorruptedSampler([x], 16, 256, seed=2, augment=False, noise=noise)
    inp, _ = sampler.batch(0)
    y_crops, _ = sampler.crops(0)
    x_crops, _ = clean.crops(0)
    z = (inp - y_crops) / 0.5
    signal, variance = [], []
    for level in levels:
        at = np.isclose(x_crops, level)
        if at.sum() > 2000:
            signal.append(level)
            variance.append(z[at].var())
    assert len(signal) >= 4
    slope, intercept = np.polyfit(signal, variance, 1)
    assert slope == pytest.approx(gain, rel=0.1)
    assert intercept == pytest.approx(read**2 - gain * black, abs=2e-4)


def test_shot_noise_recorruption_matches_its_skew_so_the_loss_has_no_third_order_bias():
    # a flat frame of 2 photons per pixel: the shot noise is strongly skewed
    gain, photons, alpha = 0.05, 2.0, 0.5
    x = np.full((128, 128, 1), gain * photons, np.float32)
    rng = np.random.default_rng(0)
    y = (gain * rng.poisson(photons, x.shape)).astype("float32")
    noise = PoissonGaussian(gain=gain, read_sigma=0.0, offset=0.0)

    class Truth:  # the signal estimate: the true mean
        def predict_on_batch(self, crops):
            return np.full_like(crops, gain * photons)

    sampler = Recorrupted2RecorruptedSampler([y], 64, 64, seed=0, alpha=alpha, noise=noise)
    sampler.bind(Truth())
    a, b = [], []
    for step in range(4):
        inp, target = sampler.batch(step)
        a.append((inp - x[:64, :64]).ravel())
        b.append((target - x[:64, :64]).ravel())
    a, b = np.concatenate(a), np.concatenate(b)
    kappa3 = gain**3 * photons  # third cumulant of the frame's own noise
    # the loss's E[D''] term: Cum(input noise, input noise, target noise); Gaussian z leaves kappa3
    assert abs(np.mean(a * a * b)) < 0.15 * kappa3
    assert abs(np.mean(a * b)) < 0.03 * gain**2 * photons
    assert a.var() == pytest.approx((1 + alpha**2) * gain**2 * photons, rel=0.05)


def test_bound_model_prediction_is_the_signal_of_the_noise_variance():
    class Constant:  # D(y) = 0.6 everywhere
        def predict_on_batch(self, y):
            return np.full_like(y, 0.6)

    noise = PoissonGaussian(gain=0.02, read_sigma=0.01, offset=0.1)
    y = np.random.default_rng(0).uniform(0, 1, (64, 64, 1)).astype("float32")
    sampler = Recorrupted2RecorruptedSampler([y], 32, 32, seed=0, alpha=0.5, noise=noise)
    sampler.bind(Constant())
    inp, _ = sampler.batch(0)
    y_crops, _ = sampler.crops(0)
    z = (inp - y_crops) / 0.5
    assert z.var() == pytest.approx(0.02 * 0.5 + 0.01**2, rel=0.03)


def test_same_seed_and_step_give_the_same_batch_and_other_steps_differ():
    y = _ramp() + np.random.default_rng(0).normal(0, 0.05, (96, 96, 1)).astype("float32")
    a = Recorrupted2RecorruptedSampler([y, y[:60]], 32, 4, seed=5)
    b = Recorrupted2RecorruptedSampler([y, y[:60]], 32, 4, seed=5)
    for step in (0, 7):
        for u, v in zip(a.batch(step), b(step), strict=True):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.batch(0)[0], a.batch(1)[0])
    assert not np.array_equal(a.batch(0)[0], Recorrupted2RecorruptedSampler([y], 32, 4).batch(0)[0])


def test_crops_know_their_source_image_and_its_noise():
    dark = np.zeros((40, 40, 1), np.float32)
    bright = np.ones((40, 40, 1), np.float32)
    sampler = Recorrupted2RecorruptedSampler([dark, bright], 16, 32, seed=0, noise=[0.01, 0.1])
    y, which = sampler.crops(0)
    assert set(which.tolist()) == {0, 1}
    np.testing.assert_array_equal(y[:, 0, 0, 0], which.astype(np.float32))  # dark 0, bright 1
    inp, _ = sampler.batch(0)
    z = (inp - y) / 0.5
    assert z[which == 0].std() == pytest.approx(0.01, rel=0.1)
    assert z[which == 1].std() == pytest.approx(0.1, rel=0.1)


def test_repeated_gray_channels_get_the_same_recorruption_in_every_channel():
    gray = _ramp() + np.random.default_rng(0).normal(0, 0.05, (96, 96, 1)).astype("float32")
    sampler = Recorrupted2RecorruptedSampler([np.repeat(gray, 3, axis=-1)], 32, 4, noise=0.05)
    inp, target = sampler.batch(0)
    assert np.array_equal(inp[..., 0], inp[..., 2])
    assert np.array_equal(target[..., 1], target[..., 2])


def test_noise_estimate_finds_poisson_gaussian_parameters_and_falls_back_to_gaussian_sigma():
    clean = _ramp((256, 256))
    y = poisson_gaussian(clean, 200.0, 0.0, np.random.default_rng(0))  # gain 1/200
    found = estimate_noise(y)
    assert found.gain == pytest.approx(1 / 200, rel=0.15)
    narrow = 0.5 + np.random.default_rng(1).normal(0, 0.04, (14, 64, 1))  # too small for the fit
    fallback = estimate_noise(narrow)
    assert fallback.gain == 0.0 and fallback.read_sigma == pytest.approx(0.04, rel=0.2)


def test_validation_pairs_are_fixed_and_recorrupt_at_the_crop_noise():
    y = _ramp() + np.random.default_rng(0).normal(0, 0.05, (96, 96, 1)).astype("float32")
    first = validation_pairs(y, PoissonGaussian(0.0, 0.05, 0.0), 0.5, seed=3)
    again = validation_pairs(y, PoissonGaussian(0.0, 0.05, 0.0), 0.5, seed=3)
    assert len(first) == 4
    for (a, b), (c, d) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert ((first[0][0] - y) / 0.5).std() == pytest.approx(0.05, rel=0.05)


def test_r2r_fine_tuning_runs_scores_the_held_out_crop_and_names_the_method_on_the_card(
    bundled_only,
):
    from src_models.data import psnr
    from src_models.registry import load_model

    clean = fluorescent_cells()
    noisy = poisson_gaussian(clean[..., None], 30.0, 5.0, np.random.default_rng(0))[..., 0]
    settings = FinetuneSettings(name="r2r", mode="noisy", noisy_method="r2r", base=None,
                                architecture="tiny", steps=150, learning_rate=3e-3,
                                val_every=50, patch_size=32)
    result = finetune(settings, [SourceImage("noisy cells", noisy)])
    assert result.steps_done == 150 and set(result.val_psnr_best) == {"r2r"}
    assert result.val_psnr_best["r2r"] > result.val_psnr_initial["r2r"]
    card = read_card(result.model_path)
    assert card.notes["mode"] == "noisy" and card.notes["noisy_method"] == "r2r"
    assert "Recorrupted-to-Recorrupted" in card.description
    assert "Recorrupted-to-Recorrupted" in card.notes["validation_score"]
    assert card.notes["r2r_alpha"] == "0.5" and "gain" in card.notes["r2r_noise"]
    denoised = load_model("r2r").denoise(noisy)
    assert psnr(clean, denoised) > psnr(clean, noisy) + 5.0  # about 21.7 dB noisy


def test_unknown_noisy_method_or_bad_alpha_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"noisy_method='n3n' is not one of n2n, r2r"):
        FinetuneSettings(name="x", mode="noisy", noisy_method="n3n").check()
    with pytest.raises(ConfigError, match="r2r_alpha=0 must be > 0"):
        FinetuneSettings(name="x", mode="noisy", noisy_method="r2r", r2r_alpha=0).check()
    FinetuneSettings(name="x", mode="noisy", noisy_method="r2r").check()  # the valid one passes
