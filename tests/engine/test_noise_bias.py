"""Noise biases: a local noise estimate that scales with the image, and biases proportional to it.

Why these tests: the biases must keep every network homogeneous (so D(y) = J(y) y stays
exact), tiles must still agree with the whole image, and a trained model must gain them
without its output changing before training.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from model_factory import exact_float32, randomize_vectors, randomize_weights, tiny_model

from src_models.architectures import (
    build_model,
    init_from_without_noise_bias,
    receptive_field,
    size_multiple,
)
from src_models.config import ConfigError, UNetConfig, parse_recipe
from src_models.layers import NoiseLevelMap, _min_filter

SHAPE = {"scales": 3, "width": 8, "max_width": 16, "convs": 1, "unshuffle": 2}


def _map(x: np.ndarray, window: int = 9, factor: int = 4) -> np.ndarray:
    layer = NoiseLevelMap(window, factor)
    return np.asarray(layer(x[None, ..., None].astype("float32")))[0, ..., 0]


@pytest.mark.parametrize("w", [1, 3, 5, 9, 17, 33, 41])
def test_min_filter_equals_min_pooling_ignoring_the_outside(w):
    x = np.random.default_rng(w).uniform(0.5, 2.0, (2, 23, 30, 3)).astype("float32")
    ours = np.asarray(_min_filter(keras.ops.convert_to_tensor(x), w))
    pooled = -np.asarray(keras.ops.max_pool(-x, w, strides=1, padding="same"))
    np.testing.assert_array_equal(ours, pooled)


def test_noise_map_of_white_noise_is_a_stable_fraction_of_sigma():
    rng = np.random.default_rng(0)
    ratios = [
        float(np.median(_map(0.5 + s * rng.standard_normal((256, 256))))) / s
        for s in (0.01, 0.05, 0.2)
    ]
    # the minimum over a neighbourhood reads low, by the same factor at every σ
    assert all(0.5 < r < 1.0 for r in ratios), ratios
    assert max(ratios) - min(ratios) < 0.1, ratios


def test_noise_map_is_zero_on_flat_and_sloping_images_and_ignores_isolated_texture():
    yy, xx = np.mgrid[:128, :128].astype("float32")
    assert np.abs(_map(np.full((128, 128), 0.7))).max() == 0
    assert np.abs(_map(0.2 + 0.003 * yy + 0.001 * xx)).max() < 1e-6  # a ramp: shading, not noise
    # a clean image with a textured stripe: the flat parts around it keep the map at zero
    img = np.full((128, 128), 0.5, dtype="float32")
    img[60:68] += 0.3 * np.random.default_rng(1).standard_normal((8, 128)).astype("float32")
    assert np.abs(_map(img)).max() < 1e-6


def test_noise_map_scales_with_the_image():
    x = 0.4 + 0.1 * np.random.default_rng(2).standard_normal((64, 96))
    base = _map(x)
    for a in (1e-9, 3.0, 1e5):
        np.testing.assert_allclose(_map(a * x), a * base, rtol=1e-5, atol=1e-5 * a * base.max())


def test_noise_map_of_a_crop_equals_the_crop_of_the_map_inside_its_reach():
    x = 0.4 + 0.1 * np.random.default_rng(3).standard_normal((200, 160))
    layer = NoiseLevelMap(9, 4)
    r = layer.reach
    whole = _map(x)
    y0, x0 = 24, 40  # multiples of the factor, as tile cores are
    crop = _map(x[y0 : y0 + 2 * r + 40, x0 : x0 + 2 * r + 44])
    inner = slice(-(-r // 4), -(-r // 4) + 4)
    np.testing.assert_array_equal(
        crop[inner, inner], whole[y0 // 4 :, x0 // 4 :][inner, inner]
    )


MODES = [(1, "joint"), (3, "joint"), (3, "guided"), (3, "opponent")]


def test_noise_bias_unet_is_homogeneous_with_any_weights():
    exact_float32()
    for channels, mode in MODES:
        model = build_model(
            UNetConfig(channels=channels, channel_mode=mode, noise_bias_window=17, **SHAPE)
        )
        randomize_weights(model, seed=1)
        randomize_vectors(model, seed=2)  # the noise biases too
        y = np.random.default_rng(0).uniform(0, 1, (2, 40, 48, channels)).astype("float32")
        base = np.asarray(model(y))
        assert np.linalg.norm(base - y) / np.linalg.norm(y) > 1e-3
        for a in (1e-9, 0.3, 7.0, 1e5):
            out = np.asarray(model(np.float32(a) * y))
            assert np.linalg.norm(out - a * base) / np.linalg.norm(a * base) < 1e-4, (mode, a)


@pytest.mark.parametrize("channels, mode", MODES)
def test_noise_biases_added_to_a_trained_unet_leave_its_output_unchanged(channels, mode):
    # colour modes too: the opponent trunk is the gray U-Net, so `color` can gain them
    exact_float32()
    base = build_model(UNetConfig(channels=channels, channel_mode=mode, **SHAPE))
    randomize_weights(base, seed=4)
    with_bias = build_model(
        UNetConfig(channels=channels, channel_mode=mode, noise_bias_window=17, **SHAPE)
    )
    assert init_from_without_noise_bias(with_bias, base) == len(
        [layer for layer in base.layers if layer.get_weights()]
    )
    y = np.random.default_rng(5).uniform(0, 1, (1, 64, 64, channels)).astype("float32")
    np.testing.assert_array_equal(np.asarray(with_bias(y)), np.asarray(base(y)))
    names = {layer.name for layer in with_bias.layers}
    assert {layer.name for layer in base.layers} <= names  # the base's names are kept


def test_receptive_field_includes_the_noise_map_reach_and_tiles_agree():
    from src_models.inference import Denoiser

    model, card = tiny_model("unet", seed=6, noise_bias_window=17, **SHAPE)
    randomize_vectors(model, seed=7)
    plain = build_model(UNetConfig(**SHAPE))
    reach = next(layer for layer in model.layers if isinstance(layer, NoiseLevelMap)).reach
    assert card.receptive_field >= receptive_field(plain, size_multiple(UNetConfig(**SHAPE)))
    assert card.receptive_field >= reach
    rng = np.random.default_rng(8)
    img = (0.5 + 0.2 * rng.standard_normal((150, 137))).astype("float32")
    den = Denoiser(model, card)
    whole = den.denoise(img)
    tiled = den.denoise(img, tile=(48, 40))
    assert np.abs(tiled - whole).max() <= 1e-5 * np.abs(whole).max()


def test_even_noise_bias_window_is_refused():
    with pytest.raises(ValueError, match="noise_bias_window must be odd"):
        UNetConfig(noise_bias_window=32)


def test_a_recipe_adding_noise_biases_starts_from_its_base_exactly(tmp_path):
    from src_models.modelfile import save_model
    from src_models.registry import load_model
    from src_models.train import _build_or_load

    base_arch = {"kind": "unet", **SHAPE}
    recipe = {
        "name": "base",
        "architecture": base_arch,
        "data": {"train": [str(tmp_path)]},
        "training": {"steps": 1},
    }
    base_model, card = tiny_model("unet", seed=9, name="base", **SHAPE)
    card = card.model_copy(update={"recipe": parse_recipe(recipe)})
    save_model(base_model, tmp_path / "base.keras", card)

    recipe_nb = {
        **recipe,
        "name": "nb",
        "init_from": str(tmp_path / "base.keras"),
        "architecture": {**base_arch, "noise_bias_window": 17},
    }
    model, _, resumed = _build_or_load(parse_recipe(recipe_nb), tmp_path / "none.keras", False)
    assert not resumed
    assert any(isinstance(layer, NoiseLevelMap) for layer in model.layers)
    y = np.random.default_rng(10).uniform(0, 1, (1, 64, 64, 1)).astype("float32")
    base = load_model(str(tmp_path / "base.keras")).model
    np.testing.assert_array_equal(np.asarray(model(y)), np.asarray(base(y)))

    # anything else changed is still refused: a fine-tune continues its base as it is
    recipe_wider = {**recipe_nb, "architecture": {**base_arch, "width": 16}}
    with pytest.raises(ConfigError, match="differs from the recipe"):
        _build_or_load(parse_recipe(recipe_wider), tmp_path / "none.keras", False)
