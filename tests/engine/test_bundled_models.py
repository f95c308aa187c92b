"""Every model shipped in src_models/pretrained loads, is bias-free in fact, and denoises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

BUNDLED = sorted(
    (Path(__file__).resolve().parents[2] / "src_models" / "pretrained").glob("*.keras")
)
pytestmark = pytest.mark.skipif(not BUNDLED, reason="no bundled models yet")


@pytest.fixture(scope="module", params=BUNDLED, ids=lambda p: p.stem)
def bundled(request):
    from src_models.registry import load_model

    return load_model(request.param)


def _test_image(channels: int, crop: bool = False) -> np.ndarray:
    im = (skdata.astronaut() if channels == 3 else skdata.camera()).astype("float32")
    return im[128:320, 128:320] if crop else im  # 512x512 whole, or a 192x192 crop


def test_bundled_model_card_is_complete_and_file_is_small(bundled):
    card = bundled.card
    assert card.receptive_field > 0 and card.parameters > 0 and card.recipe is not None
    corruption = card.recipe.corruption
    if corruption.poisson_gaussian_prob > 0.5:  # microscopy: shot noise over a wide photon range
        assert corruption.photons_range[1] / corruption.photons_range[0] >= 100
    else:  # photo models are blind over the standard additive range
        assert card.sigma_range == (0.0, 75.0)
    path = Path(__file__).resolve().parents[2] / "src_models" / "pretrained" / f"{card.name}.keras"
    assert path.is_file(), "a bundled model's card names its own file"
    assert path.stat().st_size <= 10 * 1024 * 1024
    # the card names its data as the repository does, never the training machine's folder
    # (it becomes the README of exported bioimage.io packages)
    for folder in [*card.training_data, *card.recipe.data.train]:
        assert folder.startswith("../shared/data/train/"), folder


def test_bundled_model_is_homogeneous(bundled):
    rng = np.random.default_rng(0)
    m = bundled.card.size_multiple
    y = rng.uniform(0, 1, size=(1, 8 * m, 8 * m, bundled.channels)).astype("float32")
    d = bundled.predict_batch(y)
    for a in (1e-6, 0.25, 2.0, 10.0, 1e4):  # the raw model, without the engine's scaling
        ad = np.float32(a) * d
        da = bundled.predict_batch(np.float32(a) * y)
        assert np.abs(da - ad).max() / np.abs(ad).max() < 1e-4, a


def test_bundled_model_removes_noise_at_sigma_25_by_at_least_6_db(bundled):
    clean = _test_image(bundled.channels)
    noisy = clean + np.random.default_rng(25).normal(0, 25, clean.shape).astype("float32")
    out = bundled.denoise(noisy, channel_axis=-1 if bundled.channels == 3 else None, offset=0.0)

    def psnr(x):
        return 10 * np.log10(255.0**2 / np.mean((np.clip(x, 0, 255) - clean) ** 2))

    assert psnr(out) - psnr(noisy) >= 6.0


def test_bundled_model_output_is_exactly_its_adaptive_filter(bundled):
    from src_models.interpret import pixel_filter

    clean = _test_image(bundled.channels, crop=True)
    noisy = clean + np.random.default_rng(1).normal(0, 25, clean.shape).astype("float32")
    axis = -1 if bundled.channels == 3 else None
    for pixel in ((96, 96), (3, 150)):
        f = pixel_filter(bundled, noisy, pixel, channel_axis=axis)
        assert np.max(f.identity_error) < 1e-4


def test_bundling_refuses_a_model_with_a_conv_bias_and_leaves_the_destination_alone(tmp_path):
    """The homogeneity gate of bundle_model: a bias makes D(a y) != a D(y) at small a."""
    import keras

    from src_models.bundle import bundle_model
    from src_models.config import ModelCard
    from src_models.modelfile import save_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="biased")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", use_bias=False)(h))
    card = ModelCard(name="biased", description="a conv bias", channels=1, kind="dncnn",
                     parameters=model.count_params(), receptive_field=2, size_multiple=1)
    dest = tmp_path / "pretrained"
    dest.mkdir()
    (dest / "biased.keras").write_bytes(b"the shipped model")

    model.get_layer("biased").bias.assign(np.full(4, 0.1, "float32"))
    save_model(model, tmp_path / "biased.keras", card)
    with pytest.raises(ValueError, match=r"not homogeneous at scale 1e-06 .*refusing to ship"):
        bundle_model(tmp_path / "biased.keras", dest=dest)
    assert [p.name for p in dest.iterdir()] == ["biased.keras"]  # no staged file either
    assert (dest / "biased.keras").read_bytes() == b"the shipped model"

    # the same network with a zero bias is homogeneous: it ships, replacing the old file
    model.get_layer("biased").bias.assign(np.zeros(4, "float32"))
    save_model(model, tmp_path / "zero-bias.keras", card)
    shipped = bundle_model(tmp_path / "zero-bias.keras", dest=dest)
    assert shipped == dest / "biased.keras" and shipped.read_bytes()[:2] == b"PK"
