"""Camera-noise rules of the Denoise widget, without Qt: proposal, readout, range warning."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_bfcnn._camera_noise import (
    CameraNoise,
    centre_crop_index,
    correlation_warning,
    microscopy_reason,
    range_warning,
    read_noise_warning,
    readout_text,
    trained_on_correlated_noise,
    trained_photons_range,
    trained_read_noise_range,
)
from src_models.noise_model import PoissonGaussian


def _layer(dtype, shape=(32, 32), rgb=False):
    return SimpleNamespace(data=np.zeros(shape, dtype), rgb=rgb)


@pytest.mark.parametrize(
    ("dtype", "rgb", "axis", "reason"),
    [
        (np.uint16, False, None, "16-bit single-channel data: microscopy model proposed"),
        (np.int32, False, None, "32-bit single-channel data: microscopy model proposed"),
        (np.uint16, False, 0, "16-bit multichannel data: microscopy model proposed"),
        (np.uint8, False, None, ""),
        (np.float32, False, None, ""),
        (np.uint16, True, None, ""),
    ],
)
def test_microscopy_is_proposed_for_camera_integers_only(dtype, rgb, axis, reason):
    shape = (32, 32, 3) if rgb else (32, 32)
    assert microscopy_reason(_layer(dtype, shape, rgb), axis) == reason


def test_centre_crop_index_keeps_loop_indices_and_centres_the_crop():
    index = centre_crop_index((5, 1000, 300), (2, slice(None), slice(None)), None, 256)
    assert index == (2, slice(372, 628), slice(22, 278))
    with_channels = centre_crop_index((600, 3, 600), (slice(None), 1, slice(None)), 1, 512)
    assert with_channels == (slice(44, 556), 1, slice(44, 556))


def _noise(gain, read, median_signal, peak, offset=100.0) -> CameraNoise:
    return CameraNoise(PoissonGaussian(gain, read, offset, median_signal), peak)


def test_readout_gives_camera_parameters_then_snr_and_photons():
    text = readout_text(_noise(8.0, 16.0, 120.0, 560.0))
    assert text == (
        "gain 8/photon, read \u03c3 16, black 100\n"
        "SNR 3.44 at median (\u2248 15 photons), 7.33 at peak (\u2248 57.5)"
    )
    gaussian = readout_text(_noise(0.0, 20.0, 150.0, 255.0, offset=0.0))
    assert gaussian == "no shot noise: Gaussian, \u03c3 20\nSNR 7.5 at median, 12.8 at peak"
    assert readout_text(None) == "-"


def test_shot_noise_is_judged_where_the_signal_is_not_at_a_dark_median():
    sparse = _noise(2.0, 3.0, 0.0, 100.0 + 2.0 * 87)  # 90 % background, 87 photons at the peak
    assert sparse.estimate.shot_fraction == 0.0  # the median pixel holds no signal
    assert sparse.shot_noise and sparse.shot_fraction_peak > 0.9
    assert readout_text(sparse).startswith("gain 2/photon")
    assert "below m's trained range" in range_warning(sparse, "m", (100.0, 2000.0))
    below = CameraNoise(PoissonGaussian(2.0, 3.0, 100.0, -5.0), 150.0)
    assert below.estimate.photons_median == 0.0  # a median under the black level: no photons


def test_readout_mentions_noise_correlated_between_neighbours_only_when_it_is():
    correlated = PoissonGaussian(8.0, 16.0, 100.0, 120.0, correlation_width=(0.7, 0.0))
    text = readout_text(CameraNoise(correlated, 560.0))
    assert text.splitlines()[-1] == "noise correlated between neighbours: 0.58 (y), 0.00 (x)"
    assert len(readout_text(_noise(8.0, 16.0, 120.0, 560.0)).splitlines()) == 2


@pytest.mark.parametrize(
    ("photons", "warning"),
    [
        (57, "\u26a0 \u2248 57 photons at full scale: below m's trained range (100\u20132000)"),
        (500, ""),
        (5e3, "\u26a0 \u2248 5e+03 photons at full scale: above m's trained range (100\u20132000)"),
    ],
)
def test_range_warning_compares_photons_at_full_scale(photons, warning):
    peak = 100.0 + 8.0 * photons
    assert range_warning(_noise(8.0, 16.0, 120.0, peak), "m", (100.0, 2000.0)) == warning


def test_no_range_warning_without_shot_noise_or_a_range():
    assert range_warning(_noise(0.0, 20.0, 150.0, 255.0), "m", (100.0, 2000.0)) == ""
    assert range_warning(_noise(8.0, 16.0, 120.0, 200.0), "m", None) == ""


def test_read_noise_warning_compares_read_sigma_relative_to_full_scale():
    # gain 8, 15 photons at the peak: signal 120 above the black level of 100
    low = _noise(8.0, 6.0, 60.0, 220.0)  # read 6 of 120: 12.75/255 of full scale
    high = _noise(8.0, 12.0, 60.0, 220.0)  # 25.5/255
    assert low.read_noise_full_scale == pytest.approx(12.75)
    assert read_noise_warning(low, "m", (0.0, 15.0)) == ""
    assert read_noise_warning(high, "m", (0.0, 15.0)) == (
        "\u26a0 read noise \u2248 25.5/255 of full scale: above m's trained range (up to 15)"
    )
    assert read_noise_warning(_noise(0.0, 12.0, 60.0, 220.0), "m", (0.0, 15.0)) == ""  # Gaussian
    assert read_noise_warning(high, "m", None) == ""


def test_trained_photons_range_is_none_for_models_not_trained_on_shot_noise(tmp_path):
    from src_models.architectures import build_model
    from src_models.config import DataConfig, DnCNNConfig, ModelCard, RecipeConfig
    from src_models.modelfile import save_model

    arch = DnCNNConfig(channels=1, depth=3, width=8)
    model = build_model(arch, name="g")
    gaussian = RecipeConfig(name="g", architecture=arch, data=DataConfig(color=False))
    save_model(model, tmp_path / "g.keras", ModelCard(name="g", recipe=gaussian))
    save_model(model, tmp_path / "bare.keras", ModelCard(name="bare"))
    assert trained_photons_range(tmp_path / "g.keras") is None  # default range, never used
    assert trained_read_noise_range(tmp_path / "g.keras") is None
    assert trained_photons_range(tmp_path / "bare.keras") is None
    assert trained_photons_range(tmp_path / "missing.keras") is None
    assert trained_photons_range(None) is None


def test_correlation_warning_only_for_correlated_noise_and_a_white_noise_model():
    correlated = CameraNoise(PoissonGaussian(8.0, 16.0, 100.0, 120.0, (0.7, 0.7)), 560.0)
    white = _noise(8.0, 16.0, 120.0, 560.0)
    assert correlation_warning(correlated, "gray", False) == (
        "\u26a0 noise correlated between neighbours (0.58): gray was trained on white noise "
        "and may keep it as texture"
    )
    assert correlation_warning(correlated, "m", True) == ""  # trained for it
    assert correlation_warning(correlated, "m", None) == ""  # unknown training
    assert correlation_warning(white, "gray", False) == ""
    assert correlation_warning(None, "gray", False) == ""


def test_bundled_cards_say_whether_a_model_was_trained_on_correlated_noise():
    from pathlib import Path

    import src_models

    gray = Path(src_models.__file__).parent / "pretrained" / "gray.keras"
    assert trained_on_correlated_noise(gray) is False
    assert trained_on_correlated_noise(None) is None
