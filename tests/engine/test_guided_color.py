"""The guided colour U-Net: one shared gray trunk per channel, guided by the channel mean.

Why these checks: the bundled ``color`` model is fine-tuned from the gray U-Net, which is
only sound if the guided model starts as exactly "gray per channel", treats the three
channels alike, and really uses the other channels once trained.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_factory import exact_float32, randomize_weights
from skimage import data as skdata
from skimage.transform import resize

from src_models.architectures import build_model, init_guided_from_gray
from src_models.config import ConfigError, UNetConfig, parse_recipe
from src_models.modelfile import load_keras_model, read_card
from src_models.train import train

SHAPE = dict(scales=2, width=8, convs=1, unshuffle=2)


def _gray_and_guided(seed: int = 0):
    exact_float32()
    gray = build_model(UNetConfig(channels=1, **SHAPE))
    randomize_weights(gray, seed=seed)
    guided = build_model(UNetConfig(channels=3, channel_mode="guided", **SHAPE))
    return gray, guided


def _rgb(seed: int = 1, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (2, size, size, 3)).astype("float32")


def test_guided_unet_starts_as_the_gray_unet_applied_to_each_channel():
    gray, guided = _gray_and_guided()
    assert init_guided_from_gray(guided, gray, unshuffle=2) == len(
        [layer for layer in gray.layers if layer.get_weights()]
    )
    y = _rgb()
    per_channel = np.concatenate(
        [np.asarray(gray(y[..., c : c + 1], training=False)) for c in range(3)], axis=-1
    )
    out = np.asarray(guided(y, training=False))
    assert np.abs(out - y).max() > 1e-2  # it filters
    np.testing.assert_allclose(out, per_channel, atol=1e-5)


def test_trained_guided_unet_uses_the_other_channels_and_treats_them_alike():
    exact_float32()
    guided = build_model(UNetConfig(channels=3, channel_mode="guided", **SHAPE))
    randomize_weights(guided, seed=4)
    y = _rgb()
    out = np.asarray(guided(y, training=False))
    changed = y.copy()
    changed[..., 1:] *= 0.5  # only the other channels change
    assert np.abs(np.asarray(guided(changed, training=False))[..., 0] - out[..., 0]).max() > 1e-3
    order = [2, 0, 1]
    permuted = np.asarray(guided(y[..., order], training=False))
    np.testing.assert_allclose(permuted, out[..., order], atol=1e-5)


def test_guided_mode_on_a_one_channel_model_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="channel_mode='guided' needs channels >= 2"):
        parse_recipe(
            {"name": "x", "architecture": {"kind": "unet", "channels": 1, "channel_mode": "guided"}}
        )


def test_guided_model_saves_and_loads_with_identical_outputs(tmp_path):
    gray, guided = _gray_and_guided(seed=2)
    init_guided_from_gray(guided, gray, unshuffle=2)
    guided.save(tmp_path / "g.keras")
    import keras

    loaded = keras.models.load_model(tmp_path / "g.keras", compile=False)
    y = _rgb(seed=5, size=48)
    np.testing.assert_array_equal(np.asarray(loaded(y)), np.asarray(guided(y)))


def _tiny_recipe(
    name: str, architecture: dict, steps: int, init_from: str | None = None, lr: float = 1e-3
):
    return parse_recipe(
        {
            "name": name,
            "init_from": init_from,
            "architecture": {"kind": "unet", **SHAPE, **architecture},
            "corruption": {"sigma_range": [20, 30], "clean_prob": 0.0},
            "data": {"patch_size": 32, "color": architecture.get("channels", 1) == 3},
            "training": {
                "steps": steps,
                "batch_size": 4,
                "learning_rate": lr,
                "warmup_steps": 1,
                "val_every": steps,
                "checkpoint_every": steps,
                "log_every": steps,
                "val_sigmas": [25],
            },
        }
    )


@pytest.fixture(scope="module")
def colour_images():
    ims = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    return [resize(im, (64, 64), anti_aliasing=True).astype("float32") for im in ims]


@pytest.mark.parametrize("mode", ["guided", "opponent"])
def test_fine_tuning_a_colour_model_from_a_gray_model_file(tmp_path, colour_images, mode):
    gray_imgs = [im.mean(-1, keepdims=True) for im in colour_images]
    gray = train(
        _tiny_recipe("tiny-gray", {"channels": 1}, steps=80, lr=3e-3),
        tmp_path / "gray", images=gray_imgs[:2], val_images=gray_imgs[2:],
    )
    recipe = _tiny_recipe(
        "tiny-color", {"channels": 3, "channel_mode": mode}, steps=4,
        init_from=str(gray.model_path),
    )
    result = train(recipe, tmp_path / "color", images=colour_images[:2],
                   val_images=colour_images[2:])
    # step 0 is the gray model per channel (guided) or per opponent plane: already well
    # above the noisy input (~20.2 dB)
    assert result.val_psnr_initial["25"] > 22.0
    card = read_card(result.model_path)
    assert card.channels == 3 and card.base_model == str(gray.model_path)
    model, _ = load_keras_model(result.model_path)
    assert model.output_shape[-1] == 3


def test_guided_model_from_a_gray_model_of_another_shape_names_the_difference(
    tmp_path, colour_images
):
    gray_imgs = [im.mean(-1, keepdims=True) for im in colour_images]
    gray = train(
        _tiny_recipe("tiny-gray", {"channels": 1, "width": 4}, steps=1),
        tmp_path / "gray", images=gray_imgs[:2], val_images=gray_imgs[2:],
    )
    recipe = _tiny_recipe(
        "tiny-color", {"channels": 3, "channel_mode": "guided"}, steps=1,
        init_from=str(gray.model_path),
    )
    with pytest.raises(ConfigError, match="differs from the recipe's U-Net in width"):
        train(recipe, tmp_path / "color", images=colour_images[:2], val_images=colour_images[2:])
