"""The opponent colour U-Net: one gray trunk on luminance and lifted colour differences.

Why these checks: the bundled ``color`` model is the gray U-Net run in an orthonormal
opponent basis, its colour-difference planes lifted onto the local mean brightness.
That is only sound if the basis keeps white noise white (same sigma), the pedestal is
linear (so the model stays homogeneous), the pedestal leaves the output (it is added
before the trunk and removed after), tiles still agree although the pedestal widens the
receptive field, and a gray model's weights start the trunk unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_factory import exact_float32, randomize_weights, tiny_model
from scipy.ndimage import uniform_filter

from src_models.architectures import build_model, init_guided_from_gray
from src_models.config import ConfigError, UNetConfig, parse_recipe
from src_models.inference import Denoiser
from src_models.layers import ChromaPedestal, OpponentColor

SHAPE = dict(scales=2, width=8, convs=1, unshuffle=2)
WINDOW = 9  # a small pedestal window keeps the tiny models' receptive field small


def _rgb(seed: int = 1, size: int = 32, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype("float32")


def _box_mean(plane: np.ndarray, window: int) -> np.ndarray:
    """Mean over the window's pixels inside the image (what 'same' average pooling gives)."""
    ones = np.ones_like(plane, dtype=np.float64)
    num = uniform_filter(plane.astype(np.float64), window, mode="constant")
    return num / uniform_filter(ones, window, mode="constant")


def test_opponent_basis_is_orthonormal_and_keeps_white_noise_white():
    noise = np.random.default_rng(0).standard_normal((1, 256, 256, 3)).astype("float32") * 7.0
    opp = np.asarray(OpponentColor()(noise))
    cov = np.cov(opp.reshape(-1, 3).T)
    np.testing.assert_allclose(cov, 49.0 * np.eye(3), atol=1.5)  # white, same sigma
    back = np.asarray(OpponentColor(inverse=True)(opp))
    np.testing.assert_allclose(back, noise, atol=1e-4)
    gray = np.full((1, 4, 4, 3), 90.0, dtype="float32")  # a gray pixel has no colour difference
    opp_gray = np.asarray(OpponentColor()(gray))
    np.testing.assert_allclose(opp_gray[..., 1:], 0.0, atol=1e-4)
    np.testing.assert_allclose(opp_gray[..., 0], 90.0 * np.sqrt(3), rtol=1e-6)


def test_pedestal_is_the_local_mean_brightness_and_linear():
    x = _rgb(seed=3, size=40, n=1)
    opp = np.asarray(OpponentColor()(x))
    ped = np.asarray(ChromaPedestal(window=WINDOW, gain=1.5)(opp))
    expected = 1.5 * _box_mean(x[0].mean(-1), WINDOW)  # luminance / sqrt(3) = mean of R, G, B
    np.testing.assert_allclose(ped[0, ..., 1], expected, rtol=1e-5)
    np.testing.assert_allclose(ped[0, ..., 2], expected, rtol=1e-5)
    assert not ped[..., 0].any()  # the luminance is not lifted
    other = np.asarray(OpponentColor()(_rgb(seed=4, size=40, n=1)))
    both = np.asarray(ChromaPedestal(window=WINDOW)(2.0 * opp + other))
    np.testing.assert_allclose(
        both,
        2.0 * np.asarray(ChromaPedestal(window=WINDOW)(opp))
        + np.asarray(ChromaPedestal(window=WINDOW)(other)),
        rtol=1e-5, atol=1e-6,
    )


def _saturated_rgb(size: int = 48) -> np.ndarray:
    """Dim, strongly coloured: pure red and blue squares on a dark gray ground."""
    x = np.full((1, size, size, 3), 0.05, dtype="float32")
    x[0, 8:24, 8:24] = (0.9, 0.02, 0.02)
    x[0, 26:44, 20:40] = (0.02, 0.02, 0.8)
    return x


def test_chroma_bound_lifts_saturated_colour_differences_above_zero():
    from scipy.ndimage import maximum_filter

    opp = np.asarray(OpponentColor()(_saturated_rgb()))
    brightness_only = np.asarray(ChromaPedestal(window=WINDOW)(opp))
    before = np.minimum(opp[..., 1:] + brightness_only[..., 1:], 0.0)
    assert before.min() < -0.4  # the failure it fixes: planes far below zero
    ped = np.asarray(ChromaPedestal(window=WINDOW, chroma_window=7)(opp))
    assert not ped[..., 0].any()
    for c in (1, 2):
        smooth = np.abs(_box_mean(opp[0, ..., c], 5))
        bound = _box_mean(maximum_filter(smooth, 7, mode="nearest"), 7)
        expected = np.maximum(brightness_only[0, ..., c], bound)
        np.testing.assert_allclose(ped[0, ..., c], expected, rtol=1e-5, atol=1e-6)
        assert (ped[0, ..., c] >= smooth - 1e-6).all()  # at least the smoothed |C| everywhere
    # only the corners, where the 5-px smoothing rounds |C| off, stay a little below zero
    after = np.minimum(opp[..., 1:] + ped[..., 1:], 0.0)
    assert after.min() > -0.1 and (after**2).sum() < 0.01 * (before**2).sum()


@pytest.mark.parametrize("shape", [(2, 37, 50, 3), (1, 5, 7, 2)])
@pytest.mark.parametrize("width", [1, 3, 5, 33, 129])
def test_doubling_box_and_max_filter_equal_keras_pooling_at_any_width(shape, width):
    # the pedestal's windows are built by doubling (log w cost), not by pooling (w cost)
    from keras import ops

    from src_models.layers import _box, _max_filter_nonneg

    x = (np.random.default_rng(width).random(shape) * 255).astype("float32")
    mean = ops.average_pool(x, (width, 1), strides=1, padding="same")
    mean = ops.average_pool(mean, (1, width), strides=1, padding="same")
    np.testing.assert_allclose(np.asarray(_box(x, width)), np.asarray(mean), rtol=2e-6)
    peak = ops.max_pool(x, (width, 1), strides=1, padding="same")
    peak = ops.max_pool(peak, (1, width), strides=1, padding="same")
    np.testing.assert_array_equal(np.asarray(_max_filter_nonneg(x, width)), np.asarray(peak))


def test_doubling_box_gives_a_tile_the_full_image_values_bit_for_bit():
    from src_models.layers import _box

    x = (np.random.default_rng(5).random((1, 90, 80, 1)) * 255).astype("float32")
    full = np.asarray(_box(x, 33))
    tile = np.asarray(_box(x[:, 10:80, 5:75], 33))
    # where the tile holds the whole window, the same sums in the same order
    np.testing.assert_array_equal(tile[:, 16:-16, 16:-16], full[:, 26:64, 21:59])


def test_chroma_bound_is_positively_homogeneous():
    opp = np.asarray(OpponentColor()(_rgb(seed=11, size=40, n=1)))
    layer = ChromaPedestal(window=WINDOW, chroma_window=7)
    base = np.asarray(layer(opp))
    for a in (0.1, 7.0):
        np.testing.assert_allclose(np.asarray(layer(np.float32(a) * opp)), a * base, rtol=1e-5)


def test_opponent_unet_starts_as_the_gray_unet_on_luminance_and_lifted_colour_differences():
    exact_float32()
    gray = build_model(UNetConfig(channels=1, **SHAPE))
    randomize_weights(gray, seed=0)
    opp_model = build_model(
        UNetConfig(channels=3, channel_mode="opponent", pedestal_window=WINDOW, **SHAPE)
    )
    assert init_guided_from_gray(opp_model, gray, unshuffle=2) == len(
        [layer for layer in gray.layers if layer.get_weights()]
    )
    y = _rgb()
    out = np.asarray(opp_model(y, training=False))

    def den(plane):
        return np.asarray(gray(plane[..., None].astype("float32"), training=False))[..., 0]

    m = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=np.float64)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    o = y.astype(np.float64) @ m.T
    p = np.stack([_box_mean(img.mean(-1), WINDOW) for img in y])
    expected_opp = np.stack(
        [den(o[..., 0]), den(o[..., 1] + p) - p, den(o[..., 2] + p) - p], axis=-1
    )
    np.testing.assert_allclose(out, expected_opp @ m, atol=2e-5)
    assert np.abs(out - y).max() > 1e-2  # it filters


@pytest.mark.parametrize("chroma_window", [0, 5])
@pytest.mark.parametrize("residual", [True, False])
def test_opponent_unet_is_homogeneous_and_clean_gray_stays_gray_with_an_identity_trunk(
    residual, chroma_window
):
    exact_float32()
    config = UNetConfig(
        channels=3, channel_mode="opponent", pedestal_window=WINDOW, residual=residual,
        pedestal_chroma_window=chroma_window, **SHAPE
    )
    model = build_model(config)
    if residual:  # a fresh residual model is the identity: pedestal in, pedestal out
        y = _rgb(seed=6)
        np.testing.assert_allclose(np.asarray(model(y, training=False)), y, atol=1e-5)
    randomize_weights(model, seed=5)
    y = _rgb(seed=7)
    base = np.asarray(model(y, training=False))
    for a in (0.25, 10.0):
        scaled = np.asarray(model(np.float32(a) * y, training=False))
        assert np.abs(scaled - a * base).max() / np.abs(a * base).max() < 1e-4


@pytest.mark.parametrize("chroma_window", [0, 21])
def test_opponent_tiles_agree_because_the_receptive_field_includes_the_pedestal(chroma_window):
    model, card = tiny_model(
        "unet", seed=2, name="opp", channels=3, channel_mode="opponent", pedestal_window=31,
        pedestal_chroma_window=chroma_window, scales=2, width=8, convs=1, unshuffle=2,
    )
    trunk, trunk_card = tiny_model("unet", seed=2, channels=1, scales=2, width=8, convs=1,
                                   unshuffle=2)
    # measured, not assumed: the chroma bound reaches 2 + 10 + 10 px, past the box's 15
    reach = 22 if chroma_window else 15
    assert card.receptive_field == trunk_card.receptive_field + reach
    den = Denoiser(model, card)
    grid = np.meshgrid(np.linspace(0, 4, 150), np.linspace(0, 3, 170), indexing="ij")
    img = np.stack([0.5 + 0.3 * np.sin(grid[0] + c * grid[1]) for c in range(3)], axis=-1)
    img = (img + 0.05 * np.random.default_rng(0).standard_normal(img.shape)).astype("float32")
    whole = den.denoise(img, channel_axis=-1, offset=0.0)
    tiled = den.denoise(img, channel_axis=-1, offset=0.0, tile=48)
    assert np.abs(tiled - whole).max() / np.abs(whole).max() < 1e-5


@pytest.mark.parametrize(
    "architecture, message",
    [
        ({"channels": 1, "channel_mode": "opponent"}, "is for RGB: it needs channels = 3"),
        ({"channels": 4, "channel_mode": "opponent"}, "is for RGB: it needs channels = 3"),
        ({"channels": 3, "channel_mode": "opponent", "pedestal_window": 64}, "must be odd"),
        ({"channels": 3, "channel_mode": "opponent", "pedestal_gain": 0}, "pedestal_gain"),
        ({"channels": 3, "channel_mode": "opponent", "pedestal_chroma_window": 8}, "or 0"),
    ],
)
def test_bad_opponent_settings_are_clear_config_errors(architecture, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({"name": "x", "architecture": {"kind": "unet", **architecture}})


def test_opponent_model_saves_and_loads_with_identical_outputs(tmp_path):
    import keras

    exact_float32()
    model = build_model(
        UNetConfig(
            channels=3, channel_mode="opponent", pedestal_window=WINDOW,
            pedestal_chroma_window=5, **SHAPE
        )
    )
    randomize_weights(model, seed=8)
    model.save(tmp_path / "o.keras")
    loaded = keras.models.load_model(tmp_path / "o.keras", compile=False)
    y = _rgb(seed=9, size=48)
    np.testing.assert_array_equal(np.asarray(loaded(y)), np.asarray(model(y)))
